"""Every tunable of the engines in one frozen value, so a run records exactly what it used."""

from __future__ import annotations

from dataclasses import dataclass

from . import constants as c
from .errors import ConfigError


@dataclass(frozen=True)
class Config:
    """RFC 4067 §4 constants plus the local choices the RFC leaves open. Times are seconds."""

    ct_request_rate: float = c.CT_REQUEST_RATE
    ct_max_transfer_time: float = c.CT_MAX_TRANSFER_TIME
    ct_request_retry: float = c.CT_REQUEST_RETRY
    ct_retry_max: float = c.CT_RETRY_MAX
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

    def __post_init__(self) -> None:
        for name in ("ct_request_rate", "ct_max_transfer_time", "ct_request_retry",
                     "ct_retry_max", "ct_max_handover_time", "sequence_reuse_time", "rate_window"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ConfigError(f"{name} must be a positive number, got {value!r}")
        if self.ct_retry_max < self.ct_request_retry:
            raise ConfigError("ct_retry_max must not be shorter than ct_request_retry")
        if not 0 <= self.key_algorithm <= 0xFFFF:
            raise ConfigError("key_algorithm must fit in 16 bits")
