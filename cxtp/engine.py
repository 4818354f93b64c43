"""Role engines for MN, pAR and nAR (RFC 4067 §2.1, §2.5, §3.2, §5, §6.3), without I/O.

Modelled on aioquic: bytes and ``now`` come in through ``receive()``/API calls/``handle_timer()``;
datagrams, a timer deadline and events go out through ``datagrams_to_send()``, ``get_timer()``
and ``next_event()``. Engines never read a clock or open a socket, and take their randomness
from an injected :class:`random.Random`, so every run can be replayed.

Datagrams carry bare CXTP messages; the transport adds the ICMP wrapper on the "icmp" leg.
"""

from __future__ import annotations

import random
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Iterable, Sequence

from . import constants as c
from .config import Config
from .errors import DecodeError, ProtocolError
from .events import (
    MODE_PREDICTIVE, MODE_REACTIVE, ROLE_MN, ROLE_NAR, ROLE_PAR, Cancelled, ContextActivated,
    ContextInstalled, CtaaReceived, DecodeFailed, DuplicateIgnored, RateLimited, RequestIgnored,
    TokenRejected, TransferCompleted, TransferFailed, TransferStarted,
)
from .messages import (
    CTAA, CTAR, CTC, CTD, CTDR, PCTD, AnyMessage, ContextDataBlock, CTReq, StatusEntry, decode,
    normalize_address,
)
from .registry import Registry, TransferInfo
from .token import compute_token, key_fingerprint, verify_token

TRANSPORT_ICMP = "icmp"  # MN <-> AR, ICMP Experimental Mobility (§3.2)
TRANSPORT_AR = "ar"  # AR <-> AR, SCTP (or TCP) (§3.1)
TRANSPORTS = (TRANSPORT_ICMP, TRANSPORT_AR)

_ICMP_MESSAGES = (CTAR, CTAA)


@dataclass(frozen=True)
class Datagram:
    """One encoded CXTP message for the owner to send."""

    data: bytes
    destination: str
    transport: str


def _requested_fpts(blocks: Iterable[ContextDataBlock]) -> tuple[int, ...]:
    return tuple(dict.fromkeys(b.fpt for b in blocks))


def _request_blocks(fpts: Sequence[int] | None) -> tuple[ContextDataBlock, ...]:
    return tuple(ContextDataBlock.request(f) for f in dict.fromkeys(fpts or ()))


def _pad4(data: bytes) -> bytes:
    return bytes(data) + bytes(-len(data) % 4)


class _Engine:
    """Output queues, counters, decoding and the dispatch shared by every role."""

    def __init__(self, address: str, registry: Registry | None = None, config: Config | None = None,
                 rng: random.Random | None = None) -> None:
        self.address = normalize_address(address)
        self.registry = registry if registry is not None else Registry()
        self.config = config if config is not None else Config()
        self.rng = rng if rng is not None else random.Random()
        self.counters: Counter[str] = Counter()
        self._datagrams: list[Datagram] = []
        self._events: deque = deque()

    # -- outputs -------------------------------------------------------------------------------
    def datagrams_to_send(self) -> list[Datagram]:
        out, self._datagrams = self._datagrams, []
        return out

    def next_event(self):
        return self._events.popleft() if self._events else None

    def get_timer(self) -> float | None:
        raise NotImplementedError

    def handle_timer(self, now: float) -> None:
        raise NotImplementedError

    # -- helpers -------------------------------------------------------------------------------
    def _emit(self, event) -> None:
        self._events.append(event)

    def _send(self, message: AnyMessage, destination: str, transport: str) -> bytes:
        data = message.encode()
        self._datagrams.append(Datagram(data, destination, transport))
        self.counters[f"sent_{type(message).__name__.lower()}"] += 1
        return data

    def receive(self, data: bytes, source: str, transport: str, now: float) -> None:
        """Feed one received CXTP message (without ICMP wrapper)."""
        if transport not in TRANSPORTS:
            raise ProtocolError(f"transport must be one of {TRANSPORTS}, got {transport!r}")
        try:
            message = decode(data)
        except DecodeError as exc:
            self.counters["decode_errors"] += 1
            self._emit(DecodeFailed(source, transport, str(exc)))
            return
        expected = TRANSPORT_ICMP if isinstance(message, _ICMP_MESSAGES) else TRANSPORT_AR
        if transport != expected:
            self.counters["wrong_transport"] += 1
            return
        self.counters[f"received_{type(message).__name__.lower()}"] += 1
        self._dispatch(message, normalize_address(source), now)

    def _dispatch(self, message: AnyMessage, source: str, now: float) -> None:
        raise NotImplementedError

    def _unexpected(self, message: AnyMessage, source: str, role: str) -> None:
        self.counters["unexpected_messages"] += 1
        self._emit(RequestIgnored(message.mn_previous_address, role,
                                  f"unexpected {type(message).__name__}", source))


# ================================================================================================
# Mobile node
# ================================================================================================

@dataclass
class _MnTransaction:
    """One CXTP transaction of the MN: a fresh key, one sequence number, one token (§3.2)."""

    mode: str
    previous_address: str
    par: str
    nar: str | None
    sequence_number: int
    token: bytes
    requested: tuple[ContextDataBlock, ...]
    ack_requested: bool
    phase: str = "predictive"  # "predictive": CTAR went to the pAR; "attached": CTAR went to the nAR
    ctar_bytes: bytes = b""
    destination: str = ""
    first_sent: float = 0.0
    next_retry: float | None = None
    retry_interval: float = 0.0
    give_up_at: float | None = None
    new_address: str | None = None


class MobileNode(_Engine):
    """MN role: sends CTARs (predictive to the pAR, always to the nAR after attaching), retransmits
    them when A = 1 (§3.2) and hands the CTAA's per-FPT entries to the registered handlers."""

    def __init__(self, address: str, registry: Registry | None = None, config: Config | None = None,
                 rng: random.Random | None = None) -> None:
        super().__init__(address, registry, config, rng)
        self._key: bytes | None = None
        self._used_keys: set[bytes] = set()
        self._recent_sequences: dict[int, float] = {}
        self._tx: _MnTransaction | None = None

    # -- API -------------------------------------------------------------------------------------
    def set_key(self, key: bytes) -> None:
        """Provide the fresh key shared with the current AR for the next transaction (§6.3)."""
        if not isinstance(key, (bytes, bytearray)) or not key:
            raise ProtocolError("the CXTP key must be non-empty bytes")
        if key_fingerprint(key) in self._used_keys:
            raise ProtocolError("this key was already used: the MN must establish a new key (§6.3)")
        self._key = bytes(key)

    @property
    def in_progress(self) -> bool:
        return self._tx is not None

    @property
    def sequence_number(self) -> int | None:
        return self._tx.sequence_number if self._tx else None

    def request_predictive(self, par: str, nar: str, now: float, fpts: Sequence[int] | None = None) -> None:
        """Send a CTAR to the pAR naming the nAR: mobile-initiated predictive transfer (§2.5.1)."""
        if self._tx is not None:
            raise ProtocolError("a CXTP transaction is already in progress for this MN (§2)")
        par, nar = normalize_address(par), normalize_address(nar)
        self._tx = self._new_transaction(MODE_PREDICTIVE, par, nar, fpts, now)
        self._send_ctar(nar_field=nar, destination=par, now=now)
        self._emit(TransferStarted(self._tx.previous_address, ROLE_MN, MODE_PREDICTIVE, par))

    def attached(self, nar: str, par: str, now: float, new_address: str | None = None,
                 fpts: Sequence[int] | None = None) -> None:
        """The MN is on the nAR's link: always send it a CTAR (§2.5.1), same seq as a predictive one."""
        nar, par = normalize_address(nar), normalize_address(par)
        tx = self._tx
        if tx is not None and tx.phase != "predictive":
            raise ProtocolError("the CTAR to the nAR was already sent for this transaction")
        if tx is None:
            tx = self._tx = self._new_transaction(MODE_REACTIVE, par, nar, fpts, now)
            self._emit(TransferStarted(tx.previous_address, ROLE_MN, MODE_REACTIVE, nar))
        tx.phase, tx.nar, tx.par = "attached", nar, par
        tx.new_address = normalize_address(new_address) if new_address else None
        self._send_ctar(nar_field=par, destination=nar, now=now)
        if not tx.ack_requested:
            self._finish(TransferCompleted(tx.previous_address, ROLE_MN, (), acknowledged=False))

    def cancel(self, now: float) -> None:
        """Abandon the current transaction locally (e.g. the handover was aborted)."""
        if self._tx is None:
            raise ProtocolError("no transaction to cancel")
        self._finish(TransferFailed(self._tx.previous_address, ROLE_MN, "cancelled by the MN"))

    # -- internals -------------------------------------------------------------------------------
    def _new_transaction(self, mode: str, par: str, nar: str | None, fpts, now: float) -> _MnTransaction:
        if self._key is None:
            raise ProtocolError("no fresh key: call set_key() before each transaction (§6.3)")
        key, self._key = self._key, None
        self._used_keys.add(key_fingerprint(key))
        requested = _request_blocks(fpts)
        cdb_octets = b"".join(b.encode() for b in requested)
        horizon = now - self.config.sequence_reuse_time
        self._recent_sequences = {s: t for s, t in self._recent_sequences.items() if t > horizon}
        while True:  # random, unused within 7 s (§3.2), and never a token of zero (means "no CTAR")
            seq = self.rng.getrandbits(32)
            if seq in self._recent_sequences:
                continue
            token = compute_token(key, self.address, seq, cdb_octets)
            if token != bytes(4):
                break
        self._recent_sequences[seq] = now
        return _MnTransaction(mode, self.address, par, nar, seq, token, requested,
                              self.config.request_ctaa)

    def _send_ctar(self, nar_field: str, destination: str, now: float) -> None:
        tx = self._tx
        assert tx is not None
        ctar = CTAR(tx.previous_address, nar_field, tx.sequence_number, tx.token, tx.requested,
                    tx.ack_requested)
        tx.ctar_bytes = self._send(ctar, destination, TRANSPORT_ICMP)
        tx.destination = destination
        tx.first_sent = now
        if tx.ack_requested:  # retransmission only when A = 1 (§3.2)
            tx.retry_interval = self.config.ct_request_retry
            tx.next_retry = now + tx.retry_interval
            tx.give_up_at = now + self.config.ct_retry_max
        else:
            tx.next_retry = tx.give_up_at = None

    def _finish(self, event) -> None:
        tx, self._tx = self._tx, None
        if tx is not None and tx.new_address and isinstance(event, TransferCompleted):
            self.address = tx.new_address
        self._emit(event)

    def get_timer(self) -> float | None:
        tx = self._tx
        if tx is None:
            return None
        times = [t for t in (tx.next_retry, tx.give_up_at) if t is not None]
        return min(times) if times else None

    def handle_timer(self, now: float) -> None:
        tx = self._tx
        if tx is None:
            return
        if tx.give_up_at is not None and now >= tx.give_up_at:
            tx.next_retry = tx.give_up_at = None
            self.counters["ctar_gave_up"] += 1
            if tx.phase == "attached":
                self._finish(TransferFailed(tx.previous_address, ROLE_MN,
                                            "no CTAA within CT_RETRY_MAX"))
            return  # predictive phase: keep the transaction for attached()
        if tx.next_retry is not None and now >= tx.next_retry:
            self._datagrams.append(Datagram(tx.ctar_bytes, tx.destination, TRANSPORT_ICMP))
            self.counters["ctar_retransmissions"] += 1
            tx.retry_interval *= 2  # exponential back-off: 2, 4, 8 s ... (§3.2)
            tx.next_retry += tx.retry_interval
            if tx.give_up_at is not None and tx.next_retry >= tx.give_up_at:
                tx.next_retry = None

    def _dispatch(self, message: AnyMessage, source: str, now: float) -> None:
        tx = self._tx
        if not isinstance(message, CTAA) or tx is None \
                or message.mn_previous_address != tx.previous_address:
            self._unexpected(message, source, ROLE_MN)
            return
        self._emit(CtaaReceived(message.mn_previous_address, source, message.statuses))
        final = tx.phase == "attached" and (source == tx.nar or source != tx.par)
        if not final:  # the pAR's informative CTAA of a predictive transfer
            if source == tx.destination:
                tx.next_retry = tx.give_up_at = None
            return
        for entry in message.statuses:
            handler = self.registry.get(entry.fpt)
            if handler is not None:
                handler.acknowledged(tx.previous_address, entry.status, entry.data)
        self._finish(TransferCompleted(tx.previous_address, ROLE_MN, message.statuses))


# ================================================================================================
# Access router (pAR and nAR roles)
# ================================================================================================

@dataclass
class _SourceTransfer:
    """pAR side of one MN's transfer: the cached context until CTDR, CTC or timeout (§2.5.3)."""

    mn: str
    nar: str
    mode: str
    sequence_number: int | None
    key: bytes
    contexts: tuple[ContextDataBlock, ...]
    fpts: tuple[int, ...]
    first_sent: float
    deadline: float
    ack_requested: bool


@dataclass
class _TargetTransfer:
    """nAR side of one MN's transfer: requested, then installed (inactive) until the CTAR verifies."""

    mn: str
    par: str
    mode: str
    state: str  # "requested" (CT-Req sent) or "installed" (contexts held inactive)
    deadline: float
    sequence_number: int = 0
    token: bytes = bytes(4)
    requested: tuple[ContextDataBlock, ...] = ()
    key: bytes | None = None
    algorithm: int = c.HMAC_SHA1
    install_status: dict[int, int] = field(default_factory=dict)
    ctd_ack_requested: bool = False
    pending_ctar: tuple[CTAR, str] | None = None


class AccessRouter(_Engine):
    """An AR: pAR for the MNs it holds keys for, nAR for the others, both at once (§2).

    Keys shared with attached MNs come in through :meth:`set_mn_key`; the pAR burns a key once a
    transfer used it, and refuses it afterwards (§6.3).
    """

    def __init__(self, address: str, registry: Registry | None = None, config: Config | None = None,
                 rng: random.Random | None = None) -> None:
        super().__init__(address, registry, config, rng)
        self._mn_keys: dict[str, bytes] = {}
        self._used_keys: set[bytes] = set()
        self._source: dict[str, _SourceTransfer] = {}
        self._target: dict[str, _TargetTransfer] = {}
        self._seen: dict[tuple[int, str], float] = {}
        self._ctaa_cache: dict[tuple[int, str], tuple[bytes, str]] = {}
        self._ctar_arrivals: deque[float] = deque()

    # -- key management ------------------------------------------------------------------------
    def set_mn_key(self, mn_address: str, key: bytes) -> None:
        """Install the key this AR shares with an attached MN (how it was agreed is out of scope)."""
        if not isinstance(key, (bytes, bytearray)) or not key:
            raise ProtocolError("the CXTP key must be non-empty bytes")
        if key_fingerprint(key) in self._used_keys:
            raise ProtocolError("this key was already used for a transfer and must not be reused (§6.3)")
        self._mn_keys[normalize_address(mn_address)] = bytes(key)

    def has_mn_key(self, mn_address: str) -> bool:
        return normalize_address(mn_address) in self._mn_keys

    def _burn_key(self, mn: str, key: bytes | None) -> None:
        if key is not None:
            self._used_keys.add(key_fingerprint(key))
            if self._mn_keys.get(mn) == key:
                del self._mn_keys[mn]

    # -- state inspection (tests, diagnostics) --------------------------------------------------
    def source_transfer(self, mn_address: str) -> _SourceTransfer | None:
        return self._source.get(normalize_address(mn_address))

    def target_transfer(self, mn_address: str) -> _TargetTransfer | None:
        return self._target.get(normalize_address(mn_address))

    # -- API: network-initiated transfers (§5.1, §5.2) ------------------------------------------
    def trigger_predictive(self, mn_address: str, nar: str, now: float,
                           fpts: Sequence[int] | None = None) -> None:
        """pAR, on its own CT trigger: PCTD with key material, without a CTAR (§5.1)."""
        mn, nar = normalize_address(mn_address), normalize_address(nar)
        if mn in self._source:
            raise ProtocolError(f"a transfer for {mn} is already in progress (§2)")
        key = self._mn_keys.get(mn)
        if key is None:
            raise ProtocolError(f"no key for {mn}: cannot authorize a transfer")
        contexts, fpts_sent, _ = self._collect(mn, _request_blocks(fpts))
        self._start_source(mn, nar, MODE_PREDICTIVE, None, key, contexts, fpts_sent, now,
                           with_key=True, lifetime=self.config.ct_max_handover_time)

    def trigger_reactive(self, mn_address: str, par: str, now: float,
                         fpts: Sequence[int] | None = None) -> None:
        """nAR, on its own CT trigger before any CTAR: CT-Req with a zero token (§5.2)."""
        mn, par = normalize_address(mn_address), normalize_address(par)
        if mn in self._target:
            raise ProtocolError(f"a transfer for {mn} is already in progress (§2)")
        requested = _request_blocks(fpts)
        self._target[mn] = _TargetTransfer(mn, par, MODE_REACTIVE, "requested",
                                           now + self.config.ct_max_transfer_time, requested=requested)
        self._send(CTReq(mn, 0, bytes(4), requested), par, TRANSPORT_AR)
        self._emit(TransferStarted(mn, ROLE_NAR, MODE_REACTIVE, par))

    def cancel(self, mn_address: str, now: float) -> None:
        """nAR: give up the MN's transfer and send CTC to the pAR (§2.5.5)."""
        mn = normalize_address(mn_address)
        target = self._target.get(mn)
        if target is None:
            raise ProtocolError(f"no nAR-side transfer for {mn} to cancel")
        self._fail_target(target, "cancelled locally", c.STATUS_TRANSFER_TIMEOUT, send_ctc=True)
        self._emit(Cancelled(mn, ROLE_NAR, self.address))

    # -- timers ----------------------------------------------------------------------------------
    def get_timer(self) -> float | None:
        deadlines = [s.deadline for s in self._source.values()]
        deadlines += [t.deadline for t in self._target.values()]
        return min(deadlines) if deadlines else None

    def handle_timer(self, now: float) -> None:
        for source in [s for s in self._source.values() if now >= s.deadline]:
            # CT_MAX_TRANSFER_TIME / CT_MAX_HANDOVER_TIME: delete the cached context (§2.5.3, §2.5.6)
            del self._source[source.mn]
            self._burn_key(source.mn, source.key)
            self.counters["par_cache_expired"] += 1
            if source.ack_requested:
                self._emit(TransferFailed(source.mn, ROLE_PAR, "no CTDR before the cache expired"))
            else:
                self._emit(TransferCompleted(source.mn, ROLE_PAR, (), acknowledged=False))
        for target in [t for t in self._target.values() if now >= t.deadline]:
            # the transfer cannot finish in time: cancel it (§2.5.5)
            self.counters["nar_timeouts"] += 1
            reason = ("no context from the pAR within CT_MAX_TRANSFER_TIME" if target.state == "requested"
                      else "no valid CTAR before the inactive context expired")
            self._fail_target(target, reason, c.STATUS_TRANSFER_TIMEOUT, send_ctc=True)

    # -- dispatch --------------------------------------------------------------------------------
    def _dispatch(self, message: AnyMessage, source: str, now: float) -> None:
        if isinstance(message, CTAR):
            self._on_ctar(message, source, now)
        elif isinstance(message, (CTD, PCTD)):
            self._on_ctd(message, source, now)
        elif isinstance(message, CTReq):
            self._on_ct_req(message, source, now)
        elif isinstance(message, CTDR):
            self._on_ctdr(message, source, now)
        elif isinstance(message, CTC):
            self._on_ctc(message, source, now)
        else:  # a CTAA is for MNs
            self._unexpected(message, source, "ar")

    # -- CTAR (§2.5.1, §3.2, §6.3) -----------------------------------------------------------------
    def _rate_limited(self, now: float) -> bool:
        """CT_REQUEST_RATE: above it, drop CTARs at random (§6.3), with probability 1 - rate/observed."""
        window = self._ctar_arrivals
        while window and window[0] <= now - self.config.rate_window:
            window.popleft()
        window.append(now)
        observed = len(window) / self.config.rate_window
        if observed <= self.config.ct_request_rate:
            return False
        return self.rng.random() < 1.0 - self.config.ct_request_rate / observed

    def _prune_seen(self, now: float) -> None:
        horizon = now - self.config.sequence_reuse_time
        if self._seen and next(iter(self._seen.values())) <= horizon:
            self._seen = {k: t for k, t in self._seen.items() if t > horizon}
            self._ctaa_cache = {k: v for k, v in self._ctaa_cache.items() if k in self._seen}

    def _on_ctar(self, ctar: CTAR, source: str, now: float) -> None:
        mn = ctar.mn_previous_address
        if self._rate_limited(now):
            self.counters["rate_limited"] += 1
            self._emit(RateLimited(mn, source))
            return
        self._prune_seen(now)
        pair = (ctar.sequence_number, mn)
        if pair in self._seen:  # (sequence number, MN address) already received: ignore (§3.2)
            self.counters["duplicates"] += 1
            self._emit(DuplicateIgnored(mn, ctar.sequence_number, source))
            cached = self._ctaa_cache.get(pair)
            if cached is not None and self.config.resend_ctaa_on_duplicate:
                self._datagrams.append(Datagram(cached[0], cached[1], TRANSPORT_ICMP))
                self.counters["ctaa_resent"] += 1
            return
        self._seen[pair] = now
        if mn in self._target:
            self._nar_on_ctar(self._target[mn], ctar, source, now)
        elif mn in self._mn_keys or mn in self._source:
            self._par_on_ctar(ctar, source, now)
        else:
            self._nar_start_reactive(ctar, source, now)

    def _par_on_ctar(self, ctar: CTAR, source: str, now: float) -> None:
        """pAR: mobile-initiated predictive transfer; verify, then PCTD to the nAR (§2.5.1, §2.5.3)."""
        mn = ctar.mn_previous_address
        if mn in self._source:
            self.counters["busy"] += 1
            self._emit(RequestIgnored(mn, ROLE_PAR, "a transfer for this MN is in progress", source))
            return
        key = self._mn_keys[mn]
        if not verify_token(key, mn, ctar.sequence_number, ctar.requested_octets(), ctar.token):
            self.counters["token_failures"] += 1
            self._emit(TokenRejected(mn, ROLE_PAR, source))
            return
        contexts, fpts_sent, failures = self._collect(mn, ctar.requested)
        self._start_source(mn, ctar.ar_address, MODE_PREDICTIVE, ctar.sequence_number, key, contexts,
                           fpts_sent, now, with_key=True, lifetime=self.config.ct_max_handover_time)
        if ctar.ack_requested and self.config.par_sends_ctaa:
            self._send_ctaa(CTAA(mn, failures), ctar.sequence_number, source)

    def _nar_start_reactive(self, ctar: CTAR, source: str, now: float) -> None:
        """nAR without context for the MN: ask the pAR with a CT-Req copying the CTAR (§2.5.6)."""
        mn = ctar.mn_previous_address
        target = _TargetTransfer(mn, ctar.ar_address, MODE_REACTIVE, "requested",
                                 now + self.config.ct_max_transfer_time, ctar.sequence_number,
                                 ctar.token, ctar.requested, pending_ctar=(ctar, source))
        self._target[mn] = target
        self._send(CTReq(mn, ctar.sequence_number, ctar.token, ctar.requested), target.par, TRANSPORT_AR)
        self._emit(TransferStarted(mn, ROLE_NAR, MODE_REACTIVE, target.par))

    def _nar_on_ctar(self, target: _TargetTransfer, ctar: CTAR, source: str, now: float) -> None:
        if target.state == "requested":
            if target.pending_ctar is None:  # network-initiated CT-Req outstanding: keep it for later
                target.pending_ctar = (ctar, source)
            else:
                self.counters["busy"] += 1
                self._emit(RequestIgnored(target.mn, ROLE_NAR, "a transfer for this MN is in progress",
                                          source))
            return
        self._verify_and_activate(target, ctar, source)

    def _verify_and_activate(self, target: _TargetTransfer, ctar: CTAR, source: str) -> None:
        """nAR: check the token with the transferred key, discard the key, activate (§2.5.1, §6.3)."""
        key, target.key = target.key, None  # the nAR MUST discard the key after using it (§6.3)
        ok = (key is not None and target.algorithm == c.HMAC_SHA1
              and verify_token(key, ctar.mn_previous_address, ctar.sequence_number,
                               ctar.requested_octets(), ctar.token))
        if not ok:
            self.counters["token_failures"] += 1
            self._emit(TokenRejected(target.mn, ROLE_NAR, source))
            self._fail_target(target, "authorization token rejected", c.STATUS_AUTHORIZATION_FAILED,
                              ctar=(ctar, source))
            return
        self._activate(target, ctar, source)

    # -- CT-Req at the pAR (§2.5.6) ----------------------------------------------------------------
    def _on_ct_req(self, req: CTReq, source: str, now: float) -> None:
        mn = req.mn_previous_address
        cached = self._source.get(mn)
        if cached is not None:
            # recovery of a lost/corrupted PCTD: same sequence number, or a zero-token request (§2.5.3)
            if not req.zero_token and cached.sequence_number not in (None, req.sequence_number):
                self.counters["busy"] += 1
                self._emit(RequestIgnored(mn, ROLE_PAR, "a transfer for this MN is in progress", source))
                return
            if not req.zero_token and not verify_token(cached.key, mn, req.sequence_number,
                                                       req.requested_octets(), req.token):
                self.counters["token_failures"] += 1
                self._emit(TokenRejected(mn, ROLE_PAR, source))
                return
            cached.nar = source
            cached.deadline = now + (self.config.ct_max_handover_time if req.zero_token
                                     else self.config.ct_max_transfer_time)
            self.counters["recoveries"] += 1
            self._send_context(cached, now, with_key=req.zero_token)
            return
        key = self._mn_keys.get(mn)
        if key is None:
            self.counters["no_key"] += 1
            self._emit(RequestIgnored(mn, ROLE_PAR, "no key for this MN", source))
            return
        if not req.zero_token and not verify_token(key, mn, req.sequence_number,
                                                   req.requested_octets(), req.token):
            self.counters["token_failures"] += 1
            self._emit(TokenRejected(mn, ROLE_PAR, source))
            return
        contexts, fpts_sent, _ = self._collect(mn, req.requested)
        lifetime = self.config.ct_max_handover_time if req.zero_token else self.config.ct_max_transfer_time
        self._start_source(mn, source, MODE_REACTIVE, None if req.zero_token else req.sequence_number,
                           key, contexts, fpts_sent, now, with_key=req.zero_token, lifetime=lifetime)

    # -- pAR helpers -----------------------------------------------------------------------------
    def _collect(self, mn: str, requested: Sequence[ContextDataBlock]):
        """Ask each handler for the MN's context: (CDBs, FPTs sent, failure statuses)."""
        explicit = _requested_fpts(requested)
        contexts: list[ContextDataBlock] = []
        sent: list[int] = []
        failures: list[StatusEntry] = []
        for fpt in explicit or self.registry.fpts():
            handler = self.registry.get(fpt)
            if handler is None:
                failures.append(StatusEntry(fpt, c.STATUS_UNSUPPORTED_FPT))
                continue
            try:
                data = handler.collect(mn)
            except Exception:  # a faulty context type must not stop the others
                self.counters["handler_errors"] += 1
                failures.append(StatusEntry(fpt, c.STATUS_HANDLER_ERROR))
                continue
            if data is None:
                if explicit:
                    failures.append(StatusEntry(fpt, c.STATUS_CONTEXT_UNAVAILABLE))
                continue
            items = [data] if isinstance(data, (bytes, bytearray)) else list(data)
            try:
                blocks = [ContextDataBlock(fpt, bytes(item)) for item in items]
            except ProtocolError:
                failures.append(StatusEntry(fpt, c.STATUS_CONTEXT_TOO_LARGE))
                continue
            contexts.extend(blocks)
            sent.append(fpt)
        return tuple(contexts), tuple(sent), tuple(failures)

    def _start_source(self, mn: str, nar: str, mode: str, seq: int | None, key: bytes,
                      contexts, fpts_sent, now: float, with_key: bool, lifetime: float) -> None:
        source = _SourceTransfer(mn, nar, mode, seq, key, contexts, fpts_sent, now, now + lifetime,
                                 self.config.request_ctdr)
        self._source[mn] = source
        self._emit(TransferStarted(mn, ROLE_PAR, mode, nar))
        self._send_context(source, now, with_key)

    def _send_context(self, source: _SourceTransfer, now: float, with_key: bool) -> None:
        elapsed = min(int(round((now - source.first_sent) * 1000)), 0xFFFFFFFF)
        if with_key:
            message = PCTD(source.mn, source.key, source.contexts, elapsed, source.ack_requested,
                           self.config.key_algorithm)
        else:
            message = CTD(source.mn, source.contexts, elapsed, source.ack_requested)
        self._send(message, source.nar, TRANSPORT_AR)

    def _on_ctdr(self, ctdr: CTDR, source: str, now: float) -> None:
        mn = ctdr.mn_previous_address
        cached = self._source.get(mn)
        if cached is None:  # the MN's address names the transfer: one per MN (§2.5)
            self._unexpected(ctdr, source, ROLE_PAR)
            return
        del self._source[mn]
        self._burn_key(mn, cached.key)  # the pAR drops context and key after the transfer (§6.3)
        if ctdr.success:
            for fpt in cached.fpts:
                handler = self.registry.get(fpt)
                if handler is not None:
                    handler.release(mn)
            self._emit(TransferCompleted(mn, ROLE_PAR, ctdr.statuses))
        else:
            self._emit(TransferFailed(mn, ROLE_PAR, "the nAR reported a failure", ctdr.statuses))

    def _on_ctc(self, ctc: CTC, source: str, now: float) -> None:
        mn = ctc.mn_previous_address
        cached = self._source.get(mn)
        if cached is None:  # the MN's address names the transfer: one per MN (§2.5)
            self._unexpected(ctc, source, ROLE_PAR)
            return
        del self._source[mn]
        self._burn_key(mn, cached.key)
        self.counters["cancelled"] += 1
        self._emit(Cancelled(mn, ROLE_PAR, source))

    # -- nAR: CTD / PCTD (§2.5.3) ------------------------------------------------------------------
    def _on_ctd(self, ctd: CTD | PCTD, source: str, now: float) -> None:
        mn = ctd.mn_previous_address
        target = self._target.get(mn)
        has_key = isinstance(ctd, PCTD)
        if target is None:
            if not has_key:  # nothing to verify a later CTAR with, and nobody asked
                self._unexpected(ctd, source, ROLE_NAR)
                return
            target = _TargetTransfer(mn, source, MODE_PREDICTIVE, "requested", now)
            self._target[mn] = target
            self._emit(TransferStarted(mn, ROLE_NAR, MODE_PREDICTIVE, source))
        elif target.state != "requested":
            self.counters["duplicates"] += 1
            self._emit(RequestIgnored(mn, ROLE_NAR, "context already received for this MN", source))
            return
        # the pAR may answer from its AR-link address rather than the one the MN named: reply there
        target.par = source
        target.ctd_ack_requested = ctd.ack_requested
        pending = target.pending_ctar
        info = TransferInfo(mn, target.par, self.address, pending[1] if pending else None)
        self._install(target, ctd.contexts, info)
        target.state = "installed"
        target.deadline = now + self.config.ct_max_handover_time
        if has_key:
            target.key, target.algorithm = ctd.key, ctd.algorithm
        if pending is not None and has_key:
            # key material: verify the CTAR here (a PCTD may also cross our CT-Req, unverified)
            self._verify_and_activate(target, *pending)
        elif pending is not None and target.token != bytes(4):
            # a plain CTD answers our CT-Req: the pAR verified the copied token first (§2.1.2, §6.3)
            self._activate(target, *pending)
        elif not has_key:
            self._fail_target(target, "CTD without key material for a zero-token request",
                              c.STATUS_AUTHORIZATION_FAILED)

    def _install(self, target: _TargetTransfer, contexts, info: TransferInfo) -> None:
        for block in contexts:
            handler = self.registry.get(block.fpt)
            if handler is None:
                status = c.STATUS_UNSUPPORTED_FPT
            else:
                try:
                    status = int(handler.install(target.mn, block.data, info))
                except Exception:
                    self.counters["handler_errors"] += 1
                    status = c.STATUS_HANDLER_ERROR
            if not target.install_status.get(block.fpt):  # keep the first failure per FPT
                target.install_status[block.fpt] = status & 0xFF
        self._emit(ContextInstalled(target.mn, tuple(StatusEntry(f, s)
                                                     for f, s in target.install_status.items())))

    def _activate(self, target: _TargetTransfer, ctar: CTAR, ctar_source: str) -> None:
        info = TransferInfo(target.mn, target.par, self.address, ctar_source)
        statuses: list[StatusEntry] = []
        for fpt, install_status in target.install_status.items():
            handler = self.registry.get(fpt)
            if install_status or handler is None:
                if handler is not None:
                    handler.discard(target.mn)
                statuses.append(StatusEntry(fpt, install_status or c.STATUS_UNSUPPORTED_FPT))
                continue
            try:
                status, data = handler.activate(target.mn, info)
                statuses.append(StatusEntry(fpt, int(status) & 0xFF, _pad4(data)))
            except Exception:
                self.counters["handler_errors"] += 1
                statuses.append(StatusEntry(fpt, c.STATUS_HANDLER_ERROR))
        for fpt in _requested_fpts(ctar.requested):
            if fpt not in target.install_status:
                statuses.append(StatusEntry(fpt, c.STATUS_CONTEXT_UNAVAILABLE))
        result = tuple(statuses)
        del self._target[target.mn]
        self._emit(ContextActivated(target.mn, result))
        if ctar.ack_requested:
            self._send_ctaa(CTAA(target.mn, result), ctar.sequence_number, ctar_source)
        if target.ctd_ack_requested:
            success = all(s.status == c.STATUS_SUCCESS for s in result)
            self._send(CTDR(target.mn, success, tuple(StatusEntry(s.fpt, s.status) for s in result)),
                       target.par, TRANSPORT_AR)
        self._emit(TransferCompleted(target.mn, ROLE_NAR, result))

    def _fail_target(self, target: _TargetTransfer, reason: str, status: int, send_ctc: bool = False,
                     ctar: tuple[CTAR, str] | None = None) -> None:
        """Drop inactive contexts and the key; tell the pAR (CTC or CTDR S = 0) and the MN (CTAA)."""
        self._target.pop(target.mn, None)
        target.key = None
        for fpt, install_status in target.install_status.items():
            handler = self.registry.get(fpt)
            if handler is not None:
                handler.discard(target.mn)
        fpts = tuple(target.install_status) or _requested_fpts(target.requested) or self.registry.fpts()
        statuses = tuple(StatusEntry(f, status) for f in fpts)
        if send_ctc:
            self._send(CTC(target.mn), target.par, TRANSPORT_AR)
        elif target.state == "installed" and target.ctd_ack_requested:
            self._send(CTDR(target.mn, False, statuses), target.par, TRANSPORT_AR)
        ctar = ctar or target.pending_ctar
        if ctar is not None and ctar[0].ack_requested:
            self._send_ctaa(CTAA(target.mn, statuses), ctar[0].sequence_number, ctar[1])
        self._emit(TransferFailed(target.mn, ROLE_NAR, reason, statuses))

    def _send_ctaa(self, ctaa: CTAA, sequence_number: int, destination: str) -> None:
        data = self._send(ctaa, destination, TRANSPORT_ICMP)
        self._ctaa_cache[(sequence_number, ctaa.mn_previous_address)] = (data, destination)
