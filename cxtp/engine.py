"""Role engines for MN, pAR and nAR (RFC 4067 §2.1, §2.5, §3.2, §5, §6.3), without I/O.

Modelled on aioquic: bytes and ``now`` come in through ``receive()``/API calls/``handle_timer()``;
datagrams, a timer deadline and events go out through ``datagrams_to_send()``, ``get_timer()``
and ``next_event()``. Engines never read a clock or open a socket, and take their randomness
from an injected :class:`random.Random`, so every run can be replayed.

Each role's states and legal transitions are one table in :mod:`cxtp.state`; each role's
message handlers are one table keyed by message class. An :class:`AccessRouter` composes the
pAR role (:mod:`cxtp.par`) and the nAR role (:mod:`cxtp.nar`), which share its keys, counters
and output queue.

Every received message first passes the bounds of :mod:`cxtp.limits`, in this order: per-source
octet rate (ICMP leg) or peer check (AR leg), size before decoding, decoding, transport, number
of CDBs; only then a role handles it. Datagrams carry bare CXTP messages; the transport adds the
ICMP wrapper on the "icmp" leg.
"""

from __future__ import annotations

import random
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from . import constants as c
from .config import Config
from .constants import MessageType
from .datagram import TRANSPORT_AR, TRANSPORT_ICMP, TRANSPORTS, Datagram
from .errors import DecodeError, ProtocolError
from .events import (
    MODE_PREDICTIVE,
    MODE_REACTIVE,
    ROLE_MN,
    ROLE_NAR,
    ROLE_PAR,
    AnyEvent,
    BindingRejected,
    CtaaReceived,
    CtaaRejected,
    CtReqLimited,
    DecodeFailed,
    DuplicateIgnored,
    MessageDropped,
    RateLimited,
    RequestIgnored,
    StaleTransfer,
    TokenRejected,
    TransferCompleted,
    TransferFailed,
    TransferStarted,
)
from .limits import OctetBuckets, PeersArgument, PeerSet, RequestBudget, RequestRate
from .messages import (
    CTAA,
    CTAR,
    CTD,
    CTDR,
    PCTD,
    AnyMessage,
    ContextDataBlock,
    CTReq,
    HeaderPeek,
    StatusEntry,
    decode,
    normalize_address,
    peek_header,
)
from .nar import _TargetRecord, _TargetRole
from .options import (
    OptionError,
    Options,
    Transfer,
    binding_key,
    binding_mac,
    ctaa_key,
    ctaa_mac,
    split_blocks,
    split_statuses,
)
from .par import _SourceRecord, _SourceRole
from .registry import Registry
from .state import Machine, MnEvent, MnState, SourceState, TargetState, transition
from .token import compute_token, is_zero_token, key_fingerprint, tokens_equal, verify_token

__all__ = ["TRANSPORT_AR", "TRANSPORT_ICMP", "TRANSPORTS", "AccessRouter", "Datagram", "MobileNode"]

if TYPE_CHECKING:
    #: message class -> handler(message, source, now). Each handler takes the class that keys it,
    #: which one dict type cannot say: the message parameter is Any.
    Handlers = dict[type[AnyMessage], Callable[[Any, str, float], None]]

_ICMP_MESSAGES = (CTAR, CTAA)
_ICMP_TYPES = (MessageType.CTAR, MessageType.CTAA)
_NAR_BOUND = (MessageType.CTD, MessageType.PCTD)  # AR messages handled by the nAR role


def _request_blocks(fpts: Sequence[int] | None) -> tuple[ContextDataBlock, ...]:
    return tuple(ContextDataBlock.request(f) for f in dict.fromkeys(fpts or ()))


def _block_count(message: AnyMessage) -> tuple[int, str]:
    """(number of CDBs or status tuples, the Config field bounding it). Our options are not
    counted: each kind may appear once (:mod:`cxtp.options` refuses a repeated one)."""
    entries: tuple[ContextDataBlock | StatusEntry, ...]
    if isinstance(message, (CTAR, CTReq)):
        entries, field_name = message.requested, "max_request_blocks"
    elif isinstance(message, (CTD, PCTD)):
        entries, field_name = message.contexts, "max_context_blocks"
    elif isinstance(message, (CTAA, CTDR)):
        entries, field_name = message.statuses, "max_context_blocks"
    else:
        return 0, "max_context_blocks"  # a CTC holds options only
    return sum(1 for entry in entries if entry.fpt not in c.OPTION_FPTS), field_name


class _Engine:
    """Output queues, counters, the receive pipeline and the dispatch shared by every role."""

    ROLE = "?"

    def __init__(self, address: str, registry: Registry | None = None, config: Config | None = None,
                 rng: random.Random | None = None) -> None:
        self.address = normalize_address(address)
        self.registry = registry if registry is not None else Registry()
        self.config = config if config is not None else Config()
        self.rng = rng if rng is not None else random.Random()
        self.counters: Counter[str] = Counter()
        self._datagrams: list[Datagram] = []
        self._events: deque[AnyEvent] = deque()
        #: message class -> handler(message, source, now); anything else is "unexpected"
        self._handlers: Handlers = {}

    # -- outputs -------------------------------------------------------------------------------
    def datagrams_to_send(self) -> list[Datagram]:
        out, self._datagrams = self._datagrams, []
        return out

    def next_event(self) -> AnyEvent | None:
        return self._events.popleft() if self._events else None

    def get_timer(self) -> float | None:
        raise NotImplementedError

    def handle_timer(self, now: float) -> None:
        raise NotImplementedError

    # -- helpers -------------------------------------------------------------------------------
    def _emit(self, event: AnyEvent) -> None:
        self._events.append(event)

    def _send(self, message: AnyMessage, destination: str, transport: str) -> bytes:
        data = message.encode()
        self._datagrams.append(Datagram(data, destination, transport))
        self.counters[f"sent_{type(message).__name__.lower()}"] += 1
        return data

    # -- the receive pipeline --------------------------------------------------------------------
    def receive(self, data: bytes, source: str, transport: str, now: float) -> None:
        """Feed one received CXTP message (without ICMP wrapper). Input from the wire never
        raises: whatever does not fit is dropped and counted."""
        if transport not in TRANSPORTS:
            raise ProtocolError(f"transport must be one of {TRANSPORTS}, got {transport!r}")
        source = normalize_address(source)
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise ProtocolError(f"data must be bytes, got {type(data).__name__}")
        data = bytes(data)
        self._housekeeping(now)
        if not self._admit(data, source, transport, now):
            return
        limit = self.config.max_icmp_message if transport == TRANSPORT_ICMP else self.config.max_ar_message
        if len(data) > limit:
            field_name = "max_icmp_message" if transport == TRANSPORT_ICMP else "max_ar_message"
            self._oversize(data, None, source, transport, f"{len(data)} octets exceed {field_name} ({limit})")
            return
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
        count, field_name = _block_count(message)
        limit = getattr(self.config, field_name)
        if count > limit:
            self._oversize(data, message, source, transport, f"{count} blocks exceed {field_name} ({limit})")
            return
        handler = self._handlers.get(type(message))
        if handler is None:
            self._unexpected(message, source, self.ROLE)
            return
        handler(message, source, now)

    def _housekeeping(self, now: float) -> None:
        """Drop what has aged out (amortised: nothing is scanned unless something is due)."""

    def _admit(self, data: bytes, source: str, transport: str, now: float) -> bool:
        """Role-specific checks before any decoding."""
        return True

    def _oversize(self, data: bytes, message: AnyMessage | None, source: str, transport: str,
                  reason: str) -> None:
        self.counters["oversize"] += 1
        peek = peek_header(data)
        mn: str | None
        if message is not None:
            mn = message.mn_previous_address
        else:
            mn = peek.mn_previous_address if peek is not None else None
        if mn is None:
            self._emit(MessageDropped(source, transport, reason))
        else:
            self._emit(RequestIgnored(mn, self.ROLE, reason, source))
        self._answer_oversize(peek, mn, source, transport)

    def _answer_oversize(self, peek: HeaderPeek | None, mn: str | None, source: str, transport: str) -> None:
        """AR: an oversized CTAR that asked for a CTAA gets one (no further work)."""

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
    ctar_bytes: bytes = b""
    destination: str = ""
    first_sent: float = 0.0
    next_retry: float | None = None
    retry_interval: float = 0.0
    give_up_at: float | None = None
    new_address: str | None = None
    #: departures only (None in RFC-exact mode): the keys derived from the transaction's key for
    #: the CTAR's binding and the CTAA's authentication, and the address the last CTAR was bound to
    binding_key: bytes | None = None
    ctaa_key: bytes | None = None
    bound_source: str | None = None


def _failure_reason(statuses: Sequence[StatusEntry]) -> str:
    failures = (f"FPT {s.fpt:#06x} status {c.status_name(s.status)}"
                for s in statuses if s.status != c.STATUS_SUCCESS)
    return "the CTAA reports a failure: " + "; ".join(failures)


class MobileNode(_Engine):
    """MN role: sends CTARs (predictive to the pAR, always to the nAR after attaching), retransmits
    them when A = 1 (§3.2) and hands the CTAA's per-FPT entries to the registered handlers.

    The transaction ends with TransferCompleted when the nAR's CTAA reports success for every
    context, TransferFailed otherwise (a failure status, no CTAA within CT_RETRY_MAX, cancel)."""

    ROLE = ROLE_MN

    def __init__(self, address: str, registry: Registry | None = None, config: Config | None = None,
                 rng: random.Random | None = None) -> None:
        super().__init__(address, registry, config, rng)
        self._key: bytes | None = None
        self._used_keys: set[bytes] = set()
        self._recent_sequences: dict[int, float] = {}
        self._machine: Machine[MnState, MnEvent] = Machine(ROLE_MN, MnState.IDLE)
        self._tx: _MnTransaction | None = None
        self._handlers = {CTAA: self._on_ctaa}

    # -- API -------------------------------------------------------------------------------------
    def set_key(self, key: bytes) -> None:
        """Provide the fresh key shared with the current AR for the next transaction (§6.3)."""
        if not isinstance(key, (bytes, bytearray)) or not key:
            raise ProtocolError("the CXTP key must be non-empty bytes")
        if key_fingerprint(key) in self._used_keys:
            raise ProtocolError("this key was already used: the MN must establish a new key (§6.3)")
        self._key = bytes(key)

    @property
    def state(self) -> MnState:
        return self._machine.state

    @property
    def in_progress(self) -> bool:
        return self._machine.state is not MnState.IDLE

    @property
    def sequence_number(self) -> int | None:
        return self._tx.sequence_number if self._tx else None

    def moved_to(self, address: str) -> None:
        """The MN's own address from now on: the next transaction names the MN by it (its
        "previous address" then). A transaction in progress keeps the address it started with."""
        self.address = normalize_address(address)

    def request_predictive(self, par: str, nar: str, now: float, fpts: Sequence[int] | None = None) -> None:
        """Send a CTAR to the pAR naming the nAR: mobile-initiated predictive transfer (§2.5.1)."""
        transition(ROLE_MN, self.state, MnEvent.REQUEST_PREDICTIVE)  # one transaction at a time (§2)
        par, nar = normalize_address(par), normalize_address(nar)
        self._tx = self._new_transaction(MODE_PREDICTIVE, par, nar, fpts, now)
        self._machine.fire(MnEvent.REQUEST_PREDICTIVE)
        self._send_ctar(nar_field=nar, destination=par, now=now, source=self._tx.previous_address)
        self._emit(TransferStarted(self._tx.previous_address, ROLE_MN, MODE_PREDICTIVE, par))

    def attached(self, nar: str, par: str, now: float, new_address: str | None = None,
                 fpts: Sequence[int] | None = None) -> None:
        """The MN is on the nAR's link: always send it a CTAR (§2.5.1), same seq as a predictive one."""
        transition(ROLE_MN, self.state, MnEvent.ATTACH)
        nar, par = normalize_address(nar), normalize_address(par)
        if self.state is MnState.IDLE:
            self._tx = self._new_transaction(MODE_REACTIVE, par, nar, fpts, now)
            self._emit(TransferStarted(self._tx.previous_address, ROLE_MN, MODE_REACTIVE, nar))
        tx = self._tx
        assert tx is not None
        self._machine.fire(MnEvent.ATTACH)
        tx.nar, tx.par = nar, par
        tx.new_address = normalize_address(new_address) if new_address else None
        # the CTAR leaves from the MN's new address (its current one if it keeps it)
        self._send_ctar(nar_field=par, destination=nar, now=now, source=tx.new_address or self.address)
        if not tx.ack_requested:
            self._finish(MnEvent.UNACKNOWLEDGED,
                         TransferCompleted(tx.previous_address, ROLE_MN, (), acknowledged=False))

    def cancel(self, now: float) -> None:
        """Abandon the current transaction locally (e.g. the handover was aborted)."""
        transition(ROLE_MN, self.state, MnEvent.CANCEL)
        assert self._tx is not None
        self._finish(MnEvent.CANCEL,
                     TransferFailed(self._tx.previous_address, ROLE_MN, "cancelled by the MN"))

    # -- internals -------------------------------------------------------------------------------
    def _new_transaction(self, mode: str, par: str, nar: str | None, fpts: Sequence[int] | None,
                         now: float) -> _MnTransaction:
        if self._key is None:
            raise ProtocolError("no fresh key: call set_key() before each transaction (§6.3)")
        key, self._key = self._key, None
        self._used_keys.add(key_fingerprint(key))
        requested = _request_blocks(fpts)
        cdb_octets = b"".join(b.encode() for b in requested)
        horizon = now - self.config.sequence_reuse_time
        self._recent_sequences = {s: t for s, t in self._recent_sequences.items() if t > horizon}
        while True:  # random, unused within 7 s (§3.2), and never the zero token (refused by ARs)
            seq = self.rng.getrandbits(32)
            if seq in self._recent_sequences:
                continue
            token = compute_token(key, self.address, seq, cdb_octets)
            if not is_zero_token(token):
                break
        self._recent_sequences[seq] = now
        tx = _MnTransaction(mode, self.address, par, nar, seq, token, requested, self.config.request_ctaa)
        if not self.config.rfc_exact:  # one key per purpose; the transaction's key itself is dropped
            tx.binding_key, tx.ctaa_key = binding_key(key), ctaa_key(key)
        return tx

    def _send_ctar(self, nar_field: str, destination: str, now: float, source: str) -> None:
        """The CTAR to ``destination``, sent from ``source``; outside RFC-exact mode with the
        BINDING option: a MAC that binds it to that source and that AR."""
        tx = self._tx
        assert tx is not None
        requested = tx.requested
        if tx.binding_key is not None:
            cdbs = b"".join(b.encode() for b in tx.requested)
            mac = binding_mac(tx.binding_key, tx.previous_address, tx.sequence_number, tx.token, cdbs,
                              source, destination)
            requested = requested + Options(binding=mac).blocks()
            tx.bound_source = source
        ctar = CTAR(tx.previous_address, nar_field, tx.sequence_number, tx.token, requested,
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

    def _finish(self, mn_event: MnEvent, event: TransferCompleted | TransferFailed) -> None:
        self._machine.fire(mn_event)
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
            if self.state is MnState.ATTACHED:
                self._finish(MnEvent.RETRIES_EXHAUSTED,
                             TransferFailed(tx.previous_address, ROLE_MN, "no CTAA within CT_RETRY_MAX"))
            else:  # predictive phase: keep the transaction for attached()
                self._machine.fire(MnEvent.RETRIES_EXHAUSTED)
            return
        if tx.next_retry is not None and now >= tx.next_retry:
            self._datagrams.append(Datagram(tx.ctar_bytes, tx.destination, TRANSPORT_ICMP))
            self.counters["ctar_retransmissions"] += 1
            tx.retry_interval *= 2  # exponential back-off: 2, 4, 8 s ... (§3.2)
            tx.next_retry += tx.retry_interval
            if tx.give_up_at is not None and tx.next_retry >= tx.give_up_at:
                tx.next_retry = None

    def _authenticated(self, ctaa: CTAA, source: str) -> tuple[CTAA, bool] | None:
        """Departures: the CTAA without its authenticator, and whether it is the nAR's final one
        (else the pAR's informative one), if its MAC verifies with the key of the AR that holds
        the MN's context for the CTAR it answers; None (counted, reported) otherwise."""
        tx = self._tx
        assert tx is not None and tx.ctaa_key is not None
        try:
            statuses, options = split_statuses(ctaa.statuses)
        except OptionError as error:
            self._reject_ctaa(ctaa, source, f"malformed options: {error}")
            return None
        if options.ctaa_auth is None:
            self._reject_ctaa(ctaa, source, "no authenticator")
            return None
        plain = CTAA(ctaa.mn_previous_address, statuses)
        encoded = plain.encode()
        candidates = []
        if self.state is MnState.ATTACHED and tx.nar is not None and tx.bound_source is not None:
            candidates.append((tx.nar, tx.bound_source, True))
        if tx.mode == MODE_PREDICTIVE:
            candidates.append((tx.par, tx.previous_address, False))
        for ar, destination, final in candidates:
            expected = ctaa_mac(tx.ctaa_key, ar, destination, tx.sequence_number, encoded)
            if tokens_equal(expected, options.ctaa_auth):
                return plain, final
        self._reject_ctaa(ctaa, source, "the authenticator does not verify")
        return None

    def _reject_ctaa(self, ctaa: CTAA, source: str, reason: str) -> None:
        self.counters["ctaa_unauthenticated"] += 1
        self._emit(CtaaRejected(ctaa.mn_previous_address, source, reason))

    def _on_ctaa(self, ctaa: CTAA, source: str, now: float) -> None:
        tx = self._tx
        if tx is None or ctaa.mn_previous_address != tx.previous_address:
            self._unexpected(ctaa, source, ROLE_MN)
            return
        if tx.ctaa_key is not None:  # departures: only the AR holding the context is believed
            verified = self._authenticated(ctaa, source)
            if verified is None:
                return
            ctaa, final = verified
        else:
            final = self.state is MnState.ATTACHED and (source == tx.nar or source != tx.par)
        self._emit(CtaaReceived(ctaa.mn_previous_address, source, ctaa.statuses))
        if not final:  # the pAR's informative CTAA of a predictive transfer
            if self._machine.can(MnEvent.INFORMATIVE_CTAA):
                self._machine.fire(MnEvent.INFORMATIVE_CTAA)
                if source == tx.destination:
                    tx.next_retry = tx.give_up_at = None
            else:
                self.counters["ignored_ctaa"] += 1
            return
        for entry in ctaa.statuses:
            handler = self.registry.get(entry.fpt)
            if handler is None:
                continue
            try:
                handler.acknowledged(tx.previous_address, entry.status, entry.data)
            except Exception:
                self.counters["handler_errors"] += 1
        if all(s.status == c.STATUS_SUCCESS for s in ctaa.statuses):
            self._finish(MnEvent.FINAL_CTAA, TransferCompleted(tx.previous_address, ROLE_MN, ctaa.statuses))
        else:
            self.counters["failed_ctaa"] += 1
            self._finish(MnEvent.FINAL_CTAA, TransferFailed(tx.previous_address, ROLE_MN,
                                                            _failure_reason(ctaa.statuses), ctaa.statuses))


# ================================================================================================
# Access router: the pAR role and the nAR role, composed
# ================================================================================================

@dataclass
class _SeenCtar:
    """One accepted CTAR of the duplicate filter (§3.2), with the CTAA it was answered with."""

    token: bytes
    time: float
    ctaa: tuple[bytes, str] | None = None
    #: departures: the address it came from (a copy from elsewhere is another CTAR); None in
    #: RFC-exact mode, where the source is not part of what a CTAR is
    source: str | None = None


@dataclass
class _SeenPair:
    entries: list[_SeenCtar] = field(default_factory=list)


class AccessRouter(_Engine):
    """An AR: pAR for the MNs it holds keys for, nAR for the others, both at once (§2).

    ``peers``, when given, is the set of other ARs (see :class:`cxtp.limits.PeerSet`: a mapping
    access address -> AR-AR link address(es), or addresses): AR-AR messages from anyone else are
    dropped, a CTAR naming an AR that is neither this one nor a peer is refused, and a CTDR or
    CTC acts only on a transfer whose nAR sent it. ``None`` accepts every source.

    Keys shared with attached MNs come in through :meth:`set_mn_key`; the pAR burns a key once a
    transfer used it, and refuses it afterwards (§6.3).

    ``source_preference``, when the owner sets it, is ``(mn_previous_address, source) -> bool``:
    whether the owner vouches for a CTAR's source address (a station associated on the access
    link, the address in its neighbour cache). Such CTARs are never dropped by the CTAR rate
    limit, may take the CT-Req budget's last token, and displace unvouched ones held for the
    same MN: a flood of CTARs from other sources cannot starve the MN's own.
    """

    ROLE = "ar"

    def __init__(self, address: str, registry: Registry | None = None, config: Config | None = None,
                 rng: random.Random | None = None, peers: PeersArgument | None = None) -> None:
        super().__init__(address, registry, config, rng)
        self.peers = PeerSet(peers) if peers is not None else None
        self._mn_keys: dict[str, bytes] = {}
        self._used_keys: set[bytes] = set()
        self._seen: dict[tuple[int, str], _SeenPair] = {}
        self._seen_prune_at: float | None = None
        self._octets = OctetBuckets()
        self._ctar_rate = RequestRate()
        self._ct_req_budget = RequestBudget()
        self.source_preference: Callable[[str, str], bool] | None = None
        self._source = _SourceRole(self)
        self._target = _TargetRole(self)
        self._handlers = {CTAR: self._on_ctar, **self._source.handlers(), **self._target.handlers()}

    # -- key management ------------------------------------------------------------------------
    def set_mn_key(self, mn_address: str, key: bytes) -> None:
        """Install the key this AR shares with an attached MN (how it was agreed is out of scope).
        The MN is (back) here: an ended transfer's hold and pending ReleaseDue are cancelled."""
        if not isinstance(key, (bytes, bytearray)) or not key:
            raise ProtocolError("the CXTP key must be non-empty bytes")
        if key_fingerprint(key) in self._used_keys:
            raise ProtocolError("this key was already used for a transfer and must not be reused (§6.3)")
        mn = normalize_address(mn_address)
        self._mn_keys[mn] = bytes(key)
        self._source.supersede(mn)

    def has_mn_key(self, mn_address: str) -> bool:
        return normalize_address(mn_address) in self._mn_keys

    def _burn_key(self, mn: str, key: bytes | None) -> None:
        if key is not None:
            self._used_keys.add(key_fingerprint(key))
            current = self._mn_keys.get(mn)
            if current is not None and tokens_equal(current, key):  # constant time: a secret
                del self._mn_keys[mn]

    def forget(self, mn_address: str, now: float | None = None) -> None:
        """Drop everything the engine holds for an MN (the owner cleared it): its key, any pAR
        or nAR transfer and release hold, its CTARs in the duplicate filter. Nothing is sent,
        no handler is called and no event is emitted. With ``now`` (departures only), the nAR
        keeps a tombstone: a PCTD or CTD of a transfer that started before is never installed,
        however late it arrives."""
        mn = normalize_address(mn_address)
        self._mn_keys.pop(mn, None)
        self._source.forget(mn)
        self._target.forget(mn, None if self.config.rfc_exact else now)
        for pair in [p for p in self._seen if p[1] == mn]:
            del self._seen[pair]
        self.counters["forgotten"] += 1

    # -- state inspection (tests, diagnostics) --------------------------------------------------
    def source_transfer(self, mn_address: str) -> _SourceRecord | None:
        """The pAR transfer in progress for the MN (context sent, waiting for its CTDR)."""
        return self._source.active(normalize_address(mn_address))

    def target_transfer(self, mn_address: str) -> _TargetRecord | None:
        """The nAR transfer in progress for the MN (requested or installed, not yet activated)."""
        return self._target.live(normalize_address(mn_address))

    def source_state(self, mn_address: str) -> SourceState:
        return self._source.state(normalize_address(mn_address))

    def target_state(self, mn_address: str) -> TargetState:
        return self._target.state(normalize_address(mn_address))

    def source_records(self) -> tuple[_SourceRecord, ...]:
        return self._source.records()

    def target_records(self) -> tuple[_TargetRecord, ...]:
        return self._target.records()

    # -- API -----------------------------------------------------------------------------------
    def trigger_predictive(self, mn_address: str, nar: str, now: float,
                           fpts: Sequence[int] | None = None) -> None:
        """pAR, on its own CT trigger: PCTD with key material, without a CTAR (§5.1). The only
        network-initiated transfer: an nAR never starts one from a message (no zero token)."""
        mn, nar = normalize_address(mn_address), normalize_address(nar)
        if self.peers is not None and nar not in self.peers:
            raise ProtocolError(f"{nar} is not a peer AR")
        self._source.trigger_predictive(mn, nar, now, fpts)

    def cancel(self, mn_address: str, now: float) -> None:
        """nAR: give up the MN's transfer and send CTC to the pAR (§2.5.5)."""
        self._target.cancel(normalize_address(mn_address), now)

    # -- timers ----------------------------------------------------------------------------------
    def get_timer(self) -> float | None:
        times = [t for t in (self._source.next_time(), self._target.next_time()) if t is not None]
        return min(times) if times else None

    def handle_timer(self, now: float) -> None:
        self._source.handle_timer(now)
        self._target.handle_timer(now)

    # -- admission before decoding ---------------------------------------------------------------
    def _housekeeping(self, now: float) -> None:
        self._prune_seen(now)
        self._source.prune(now)
        self._target.prune(now)

    def _admit(self, data: bytes, source: str, transport: str, now: float) -> bool:
        if transport == TRANSPORT_ICMP:
            # the work of one source is bounded in octets, not only in messages
            config = self.config
            if not self._octets.allow(source, len(data), now, config.ct_request_octet_rate,
                                      config.ct_request_octet_burst):
                self.counters["rate_limited"] += 1
                self._emit(MessageDropped(source, transport, "over ct_request_octet_rate"))
                return False
            return True
        if self.peers is not None and source not in self.peers:
            self.counters["not_peer"] += 1
            peek = peek_header(data)
            reason = "the source is not a peer AR"
            if peek is None or peek.mn_previous_address is None:
                self._emit(MessageDropped(source, transport, reason))
            else:
                role = ROLE_NAR if peek.type in _NAR_BOUND else ROLE_PAR
                self._emit(RequestIgnored(peek.mn_previous_address, role, reason, source))
            return False
        return True

    def _answer_oversize(self, peek: HeaderPeek | None, mn: str | None, source: str, transport: str) -> None:
        if (transport == TRANSPORT_ICMP and mn is not None and peek is not None
                and peek.type is MessageType.CTAR and peek.flag):
            try:
                ctaa = CTAA(mn, (StatusEntry(c.FPT_RESERVED, c.STATUS_CONTEXT_TOO_LARGE),))
            except ProtocolError:
                return
            self._send(ctaa, source, TRANSPORT_ICMP)

    # -- CTAR intake (§2.5.1, §3.2, §6.3) ----------------------------------------------------------
    def _preferred(self, mn: str, source: str) -> bool:
        """Whether the owner vouches for ``source`` as the MN's (``source_preference``)."""
        prefer = self.source_preference
        if prefer is None:
            return False
        try:
            return bool(prefer(mn, source))
        except Exception:  # the owner's lookup failed: no preference, never a crash
            self.counters["handler_errors"] += 1
            return False

    def _on_ctar(self, ctar: CTAR, source: str, now: float) -> None:
        mn, config = ctar.mn_previous_address, self.config
        if self._ctar_rate.limited(now, config.ct_request_rate, config.rate_window, self.rng,
                                   exempt=lambda: self._preferred(mn, source)):
            self.counters["rate_limited"] += 1
            self._emit(RateLimited(mn, source))
            return
        if is_zero_token(ctar.token):
            self.counters["zero_token"] += 1
            self._emit(RequestIgnored(mn, self.ROLE, "CTAR without an authorization token", source))
            return
        if (self.peers is not None and ctar.ar_address != self.address
                and ctar.ar_address not in self.peers):
            self.counters["unknown_ar"] += 1
            self._emit(RequestIgnored(mn, self.ROLE, f"the CTAR names {ctar.ar_address}, not a peer AR",
                                      source))
            return
        self._prune_seen(now)
        seen = self._find_seen(ctar, source)
        if seen is not None:  # (sequence number, MN address) already received: ignore (§3.2)
            self.counters["duplicates"] += 1
            self._emit(DuplicateIgnored(mn, ctar.sequence_number, source))
            if seen.ctaa is not None and config.resend_ctaa_on_duplicate:
                self._datagrams.append(Datagram(seen.ctaa[0], seen.ctaa[1], TRANSPORT_ICMP))
                self.counters["ctaa_resent"] += 1
            return
        self._remember_ctar(ctar, source, now)  # a role that refuses it takes it out again
        target = self._target.live(mn)
        if target is not None:
            self._target.on_ctar(target, ctar, source, now)
        elif mn in self._mn_keys or self._source.active(mn) is not None:
            self._source.on_ctar(ctar, source, now)
        else:
            self._target.start_reactive(ctar, source, now)

    def _seen_source(self, source: str) -> str | None:
        return None if self.config.rfc_exact else source

    def _find_seen(self, ctar: CTAR, source: str) -> _SeenCtar | None:
        pair = self._seen.get((ctar.sequence_number, ctar.mn_previous_address))
        if pair is None:
            return None
        origin = self._seen_source(source)
        for entry in pair.entries:
            if entry.source == origin and tokens_equal(entry.token, ctar.token):
                return entry
        return None

    def _remember_ctar(self, ctar: CTAR, source: str, now: float) -> None:
        key = (ctar.sequence_number, ctar.mn_previous_address)
        entry = _SeenCtar(ctar.token, now, source=self._seen_source(source))
        self._seen.setdefault(key, _SeenPair()).entries.append(entry)
        if self._seen_prune_at is None:
            self._seen_prune_at = now + self.config.sequence_reuse_time

    def _forget_ctar(self, ctar: CTAR, source: str) -> None:
        """A refused CTAR leaves the duplicate filter: only the one that proves itself counts."""
        key = (ctar.sequence_number, ctar.mn_previous_address)
        pair = self._seen.get(key)
        if pair is None:
            return
        origin = self._seen_source(source)
        pair.entries = [e for e in pair.entries
                        if not (e.source == origin and tokens_equal(e.token, ctar.token))]
        if not pair.entries:
            del self._seen[key]

    def _prune_seen(self, now: float) -> None:
        if self._seen_prune_at is None or now < self._seen_prune_at:
            return
        horizon = now - self.config.sequence_reuse_time
        oldest: float | None = None
        for key in list(self._seen):
            pair = self._seen[key]
            pair.entries = [e for e in pair.entries if e.time > horizon]
            if not pair.entries:
                del self._seen[key]
                continue
            first = min(e.time for e in pair.entries)
            oldest = first if oldest is None else min(oldest, first)
        self._seen_prune_at = None if oldest is None else oldest + self.config.sequence_reuse_time

    def _send_ctaa(self, ctaa: CTAA, ctar: CTAR, destination: str, key: bytes | None = None) -> None:
        """Send a CTAA answering ``ctar`` and keep it for the CTAR's retransmissions. With
        ``key`` (departures: :func:`cxtp.options.ctaa_key` of the MN's key, held by the AR that
        verified the CTAR or got it from the pAR that did), the CTAA carries CTAA_AUTH: the MN
        believes only such a CTAA."""
        if key is not None:
            mac = ctaa_mac(key, self.address, destination, ctar.sequence_number, ctaa.encode())
            ctaa = CTAA(ctaa.mn_previous_address, ctaa.statuses + Options(ctaa_auth=mac).statuses())
        data = self._send(ctaa, destination, TRANSPORT_ICMP)
        entry = self._find_seen(ctar, destination)
        if entry is not None:
            entry.ctaa = (data, destination)

    def _token_rejected(self, mn: str, role: str, source: str) -> None:
        """The one place a token that does not verify is counted and reported."""
        self.counters["token_failures"] += 1
        self._emit(TokenRejected(mn, role, source))

    def _binding_rejected(self, mn: str, role: str, source: str) -> None:
        """The one place a binding that does not verify (or is missing) is counted and reported."""
        self.counters["binding_failures"] += 1
        self._emit(BindingRejected(mn, role, source))

    def _option_error(self, message: AnyMessage, role: str, source: str, reason: str) -> None:
        self.counters["option_errors"] += 1
        self._emit(RequestIgnored(message.mn_previous_address, role, f"options: {reason}", source))

    def _ct_req_allowed(self, mn: str, source: str, now: float, preferred: Callable[[], bool]) -> bool:
        """The CT-Req budget (``ct_request_rate`` per second, all MNs together), whose last token
        only a CTAR from a vouched-for source may take; refused: counted and reported."""
        config = self.config
        # the last token is kept for a vouched-for source only when the owner vouches at all
        reserve = 1.0 if self.source_preference is not None else 0.0
        if self._ct_req_budget.allow(now, config.ct_request_rate, config.ct_request_burst, preferred, reserve):
            return True
        self.counters["ct_req_limited"] += 1
        self._emit(CtReqLimited(mn, source))
        return False

    def _ctar_parts(self, ctar: CTAR | CTReq, role: str, source: str
                   ) -> tuple[tuple[ContextDataBlock, ...], Options] | None:
        """The plain request CDBs of a CTAR or CT-Req and its options (none in RFC-exact mode,
        where every CDB is plain); None, counted, when its options are malformed."""
        if self.config.rfc_exact:
            return ctar.requested, Options()
        try:
            return split_blocks(ctar.requested)
        except OptionError as error:
            self._option_error(ctar, role, source, str(error))
            return None

    def _verify_request(self, key: bytes, ctar: CTAR | CTReq, plain: tuple[ContextDataBlock, ...],
                        options: Options, source: str, ar_address: str,
                        bound_key: bytes | None = None) -> str | None:
        """Check a CTAR (or the CT-Req copying it) with the MN's key: None if it verifies,
        else what failed, "token" or "binding". Outside RFC-exact mode the CTAR must also be
        bound (BINDING) to ``source``, the address it came from, and ``ar_address``, the AR it
        was sent to (``bound_key``: :func:`cxtp.options.binding_key` of ``key``, if derived
        already)."""
        cdbs = b"".join(b.encode() for b in plain)
        if not verify_token(key, ctar.mn_previous_address, ctar.sequence_number, cdbs, ctar.token):
            return "token"
        if self.config.rfc_exact:
            return None
        if options.binding is None:
            return "binding"
        expected = binding_mac(bound_key or binding_key(key), ctar.mn_previous_address, ctar.sequence_number,
                               ctar.token, cdbs, source, ar_address)
        return None if tokens_equal(expected, options.binding) else "binding"

    def _new_transfer_id(self) -> int:
        return self.rng.getrandbits(64) or 1

    def _stale_reason(self, transfer: Transfer, now: float) -> str | None:
        """Why a PCTD's transfer is too old or too new to act on, or None: its origin is the pAR's
        clock, compared with this AR's, which may disagree by ``ar_clock_skew``; its lifetime
        counts at most as long as this AR's own longest hold. (A CTD needs no clock: it must
        answer a CT-Req of this AR that is still live.)"""
        config = self.config
        skew = config.ar_clock_skew
        if transfer.origin > now + skew:
            return f"from the future (started at {transfer.origin:.3f} s, now {now:.3f} s)"
        lifetime = min(transfer.lifetime, max(config.ct_max_handover_time, config.ct_max_transfer_time))
        if now > transfer.origin + lifetime + skew:
            return f"older than its lifetime (started at {transfer.origin:.3f} s, {lifetime:g} s, now {now:.3f} s)"
        return None

    def _stale(self, mn: str, role: str, reason: str, source: str) -> None:
        """The one place a message of an ended, superseded or expired transfer is refused."""
        self.counters["stale_transfer"] += 1
        self._emit(StaleTransfer(mn, role, reason, source))

    def _refuse_request(self, failure: str, mn: str, role: str, source: str) -> None:
        if failure == "binding":
            self._binding_rejected(mn, role, source)
        else:
            self._token_rejected(mn, role, source)
