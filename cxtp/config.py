"""Every tunable of the engines in one frozen value, so a run records exactly what it used."""

from __future__ import annotations

from dataclasses import dataclass

from . import constants as c
from .errors import ConfigError


@dataclass(frozen=True)
class Config:
    """RFC 4067 §4 constants plus the local choices the RFC leaves open. Times are seconds,
    sizes octets. ``None`` in ``late_ctdr_grace`` / ``release_hold`` means "as long as
    ``ct_max_handover_time``", resolved when used, so ``dataclasses.replace`` of the handover
    time carries them along."""

    ct_request_rate: float = c.CT_REQUEST_RATE
    ct_max_transfer_time: float = c.CT_MAX_TRANSFER_TIME
    ct_request_retry: float = c.CT_REQUEST_RETRY
    ct_retry_max: float = c.CT_RETRY_MAX
    #: pAR: how long a predictive transfer is held for its CTDR; nAR: how long inactive contexts
    #: wait for the MN's CTAR. Must cover the handover it anticipates (notes §2.4).
    ct_max_handover_time: float = c.CT_MAX_HANDOVER_TIME
    sequence_reuse_time: float = c.CT_SEQUENCE_REUSE_TIME
    #: window over which CTAR arrivals are counted for the rate limit
    rate_window: float = 1.0
    #: MN: set A in CTARs (ask for CTAA, enables retransmission)
    request_ctaa: bool = True
    #: pAR: set A in CTD/PCTD (ask for CTDR)
    request_ctdr: bool = True
    #: AR: resend the cached CTAA when a duplicate CTAR arrives (else a lost CTAA is never repaired)
    resend_ctaa_on_duplicate: bool = True
    #: pAR: answer a CTAR that asked for a CTAA (predictive) right after sending the PCTD
    par_sends_ctaa: bool = True
    #: token algorithm sent in PCTD
    key_algorithm: int = c.HMAC_SHA1
    #: pAR: after its transfer expired, a CTDR S = 1 from the same nAR within this time still
    #: releases the contexts sent (None: ct_max_handover_time)
    late_ctdr_grace: float | None = None
    #: pAR: a transfer that failed, was cancelled or expired is held this long, then ReleaseDue
    #: is emitted for the owner to decide (None: ct_max_handover_time)
    release_hold: float | None = None
    #: largest CXTP message accepted on the MN-AR (ICMP) leg, checked before decoding: CTAR, CTAA
    #: (1280: the IPv6 minimum MTU; §3.2 wants MN-AR messages to fit in one packet)
    max_icmp_message: int = 1280
    #: largest CXTP message accepted on the AR-AR leg, checked before decoding (the Length field's
    #: own bound by default)
    max_ar_message: int = 0xFFFF
    #: most request CDBs accepted in one CTAR or CT-Req
    max_request_blocks: int = 16
    #: most context CDBs accepted in one CTD or PCTD (and status tuples in one CTAA or CTDR)
    max_context_blocks: int = 64
    #: AR: octets per second each source may send on the ICMP leg (token bucket, burst
    #: ``max_icmp_message * 4``), besides the CT_REQUEST_RATE limit on CTARs
    ct_request_octet_rate: float = 16384.0
    #: nAR: CTARs for one MN held while its CT-Req is outstanding (the first one included); a
    #: PCTD that arrives meanwhile verifies them in turn, so a forged first CTAR cannot pre-empt
    max_pending_ctars: int = 4
    #: True: RFC 4067 exactly on the wire (for interoperability), without our departures: no
    #: binding of a CTAR to its source, no CTAA authentication, no transfer identity or freshness
    #: (docs/protocol.md, "Departures from RFC 4067", says what this mode allows)
    rfc_exact: bool = False
    #: how far the ARs' clocks (the ``now`` their engines are fed) may disagree: the slack of the
    #: freshness checks of PCTD and CT-Req (departures only). ARs whose clocks disagree by more
    #: see each other's PCTDs as stale: predictive transfers then complete as reactive ones
    ar_clock_skew: float = 1.0

    def __post_init__(self) -> None:
        for name in ("ct_request_rate", "ct_max_transfer_time", "ct_request_retry",
                     "ct_retry_max", "ct_max_handover_time", "sequence_reuse_time", "rate_window",
                     "ct_request_octet_rate"):
            _positive(name, getattr(self, name))
        for name in ("late_ctdr_grace", "release_hold"):
            value = getattr(self, name)
            if value is not None:
                _positive(name, value)
        for name in ("max_icmp_message", "max_ar_message", "max_request_blocks",
                     "max_context_blocks", "max_pending_ctars"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if self.max_ar_message > 0xFFFF or self.max_icmp_message > 0xFFFF:
            raise ConfigError("message size limits cannot exceed the 16-bit Length field (65535)")
        if self.ct_retry_max < self.ct_request_retry:
            raise ConfigError("ct_retry_max must not be shorter than ct_request_retry")
        if not 0 <= self.key_algorithm <= 0xFFFF:
            raise ConfigError("key_algorithm must fit in 16 bits")
        if not isinstance(self.rfc_exact, bool):
            raise ConfigError(f"rfc_exact must be a bool, got {self.rfc_exact!r}")
        skew = self.ar_clock_skew
        if isinstance(skew, bool) or not isinstance(skew, (int, float)) or not 0 <= skew < float("inf"):
            raise ConfigError(f"ar_clock_skew must be a non-negative number, got {skew!r}")

    @property
    def late_ctdr_grace_time(self) -> float:
        return self.ct_max_handover_time if self.late_ctdr_grace is None else self.late_ctdr_grace

    @property
    def release_hold_time(self) -> float:
        return self.ct_max_handover_time if self.release_hold is None else self.release_hold

    @property
    def ct_request_octet_burst(self) -> int:
        return self.max_icmp_message * 4

    @property
    def ct_request_burst(self) -> float:
        """CT-Reqs an nAR may send at once, all MNs together; then ``ct_request_rate`` per second.
        Three at least: the last token is kept for a CTAR from a source the owner vouches for."""
        return max(3.0, self.ct_request_rate / 4)


def _positive(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ConfigError(f"{name} must be a positive number, got {value!r}")
