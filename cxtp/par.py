"""The pAR side of an access router: the source of a transfer (RFC 4067 §2.5.1, §2.5.3-§2.5.6).

One :class:`_SourceRecord` per MN (by its previous address), moved only through the
``SourceState`` table of :mod:`cxtp.state`. Every transfer ends in a recorded success or failure;
one that did not succeed keeps a release hold and ends in :class:`~cxtp.events.ReleaseDue`, so
nothing is stranded on the pAR.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from . import constants as c
from .datagram import TRANSPORT_AR
from .errors import ProtocolError
from .events import (
    MODE_PREDICTIVE,
    MODE_REACTIVE,
    ROLE_PAR,
    Cancelled,
    ReleaseDue,
    RequestIgnored,
    TransferCompleted,
    TransferFailed,
    TransferStarted,
)
from .messages import CTAA, CTAR, CTC, CTD, CTDR, PCTD, ContextDataBlock, CTReq, StatusEntry
from .options import Bound, OptionError, Options, Transfer, ctaa_key, split_statuses
from .state import Machine, SourceEvent, SourceState, transition
from .token import is_zero_token

if TYPE_CHECKING:
    from .engine import AccessRouter, Handlers


@dataclass(eq=False)
class _SourceRecord:
    """pAR side of one MN's transfer: the cached context until CTDR, CTC or the deadline, then
    (unless it succeeded) the release hold."""

    mn: str
    nar: str  # where the context went; a verified CT-Req moves it to the CT-Req's source
    mode: str
    sequence_number: int | None  # None: network-initiated (trigger_predictive), no CTAR
    key: bytes
    contexts: tuple[ContextDataBlock, ...]
    fpts: tuple[int, ...]  # the context types sent: what release() / ReleaseDue cover
    first_sent: float
    deadline: float
    ack_requested: bool
    machine: Machine[SourceState, SourceEvent] = field(
        default_factory=lambda: Machine(ROLE_PAR, SourceState.IDLE))
    release_at: float | None = None  # when ReleaseDue is emitted (EXPIRED, RELEASE_HOLD)
    late_until: float | None = None  # until when a late CTDR still releases (EXPIRED, LATE_WINDOW)
    end_reason: str = ""
    #: departures (0 / empty in RFC-exact mode): this transfer's id (the PCTD's, or the CT-Req's
    #: that started it) and every id it answers to (the CT-Reqs it answered as a recovery): a
    #: CTDR or CTC naming another one belongs to another transfer
    transfer_id: int = 0
    ids: set[int] = field(default_factory=set)

    @property
    def state(self) -> SourceState:
        return self.machine.state

    def next_time(self) -> float | None:
        state = self.state
        if state is SourceState.SENT:
            return self.deadline
        times = [t for t in (self.release_at, self.late_until) if t is not None]
        return min(times) if times else None


class _SourceRole:
    """pAR role of an :class:`~cxtp.engine.AccessRouter`; shares its keys, counters and output."""

    def __init__(self, ar: AccessRouter) -> None:
        self.ar = ar
        self._records: dict[str, _SourceRecord] = {}
        self._done: dict[str, tuple[str, float]] = {}  # MN: (nAR, end): recognises duplicate CTDRs

    def handlers(self) -> Handlers:
        return {CTReq: self.on_ct_req, CTDR: self.on_ctdr, CTC: self.on_ctc}

    # -- inspection ----------------------------------------------------------------------------
    def record(self, mn: str) -> _SourceRecord | None:
        return self._records.get(mn)

    def active(self, mn: str) -> _SourceRecord | None:
        record = self._records.get(mn)
        return record if record is not None and record.state is SourceState.SENT else None

    def state(self, mn: str) -> SourceState:
        record = self._records.get(mn)
        return record.state if record is not None else SourceState.IDLE

    def records(self) -> tuple[_SourceRecord, ...]:
        return tuple(self._records.values())

    # -- starting a transfer -------------------------------------------------------------------
    def trigger_predictive(self, mn: str, nar: str, now: float, fpts: Sequence[int] | None) -> None:
        """pAR, on its own CT trigger: PCTD with key material, without a CTAR (§5.1)."""
        # a transfer in progress for this MN: IllegalTransition (an ended one's hold is replaced)
        transition(ROLE_PAR, SourceState.SENT if self.active(mn) else SourceState.IDLE,
                   SourceEvent.START)
        key = self.ar._mn_keys.get(mn)
        if key is None:
            raise ProtocolError(f"no key for {mn}: cannot authorize a transfer")
        contexts, sent, _ = self._collect(mn, tuple(ContextDataBlock.request(f)
                                                    for f in dict.fromkeys(fpts or ())))
        self._start(mn, nar, MODE_PREDICTIVE, None, key, contexts, sent, now,
                    lifetime=self.ar.config.ct_max_handover_time, with_key=True)

    def on_ctar(self, ctar: CTAR, source: str, now: float) -> None:
        """Mobile-initiated predictive transfer: verify, then PCTD to the nAR (§2.5.1, §2.5.3)."""
        ar, mn = self.ar, ctar.mn_previous_address
        if self.active(mn) is not None:
            ar.counters["busy"] += 1
            ar._emit(RequestIgnored(mn, ROLE_PAR, "a transfer for this MN is in progress", source))
            ar._forget_ctar(ctar, source)
            return
        parts = ar._ctar_parts(ctar, ROLE_PAR, source)
        if parts is None:
            ar._forget_ctar(ctar, source)
            return
        plain, options = parts
        key = ar._mn_keys.get(mn)
        # departures: the CTAR must be bound to the address it came from and to this AR
        failure = "token" if key is None else ar._verify_request(key, ctar, plain, options, source, ar.address)
        if key is None or failure is not None:
            ar._refuse_request(failure or "token", mn, ROLE_PAR, source)
            ar._forget_ctar(ctar, source)
            return
        contexts, sent, failures = self._collect(mn, plain)
        self._start(mn, ctar.ar_address, MODE_PREDICTIVE, ctar.sequence_number, key, contexts, sent,
                    now, lifetime=ar.config.ct_max_handover_time, with_key=True)
        if ctar.ack_requested and ar.config.par_sends_ctaa:
            ar._send_ctaa(CTAA(mn, failures), ctar, source, None if ar.config.rfc_exact else ctaa_key(key))

    def on_ct_req(self, req: CTReq, source: str, now: float) -> None:
        """CT-Req (§2.5.6): the nAR copies the MN's CTAR; verify its token, then CTD. Outside
        RFC-exact mode the CT-Req names its transfer (TRANSFER), the address the CTAR came from
        and the AR it went to (BOUND, verified with the CTAR's BINDING), and the CTD echoes both,
        with the key the nAR authenticates its CTAA with."""
        ar, mn = self.ar, req.mn_previous_address
        if is_zero_token(req.token):  # never a substitute for a token (network-initiated: §5.1 only)
            ar.counters["zero_token"] += 1
            ar._emit(RequestIgnored(mn, ROLE_PAR, "CT-Req without an authorization token", source))
            return
        parts = ar._ctar_parts(req, ROLE_PAR, source)
        if parts is None:
            return
        plain, options = parts
        answer: tuple[Transfer, Bound] | None = None
        bound_source, bound_ar = source, source  # RFC-exact: not part of what is verified
        if not ar.config.rfc_exact:
            if options.transfer is None or options.bound is None:
                ar._option_error(req, ROLE_PAR, source, "a CT-Req needs TRANSFER and BOUND")
                return
            # no freshness check here: the CT-Req's TRANSFER is echoed in the CTD, and the nAR that
            # made it installs the CTD only while that request is live (by its own clock)
            if ar.peers is not None and not ar.peers.same_ar(source, options.bound.ar_address):
                ar.counters["not_transfer_peer"] += 1
                ar._emit(RequestIgnored(mn, ROLE_PAR, f"the CT-Req names {options.bound.ar_address} as the "
                                                      "AR the CTAR went to, not its sender", source))
                return
            answer = (options.transfer, options.bound)
            bound_source, bound_ar = options.bound.address, options.bound.ar_address
        cached = self.active(mn)
        if cached is not None:
            # recovery of a lost or late PCTD: the same CTAR (sequence number, token) (§2.5.3)
            if cached.sequence_number not in (None, req.sequence_number):
                ar.counters["busy"] += 1
                ar._emit(RequestIgnored(mn, ROLE_PAR, "a transfer for this MN is in progress", source))
                return
            failure = ar._verify_request(cached.key, req, plain, options, bound_source, bound_ar)
            if failure is not None:
                ar._refuse_request(failure, mn, ROLE_PAR, source)  # the cached transfer is not disturbed
                return
            cached.machine.fire(SourceEvent.RECOVER)
            cached.nar = source  # the MN is there: answer where the verified request came from
            # never shorten the hold: the CTDR of the anticipated handover may be on its way
            cached.deadline = max(cached.deadline, now + ar.config.ct_max_transfer_time)
            ar.counters["recoveries"] += 1
            if answer is not None:
                cached.ids.add(answer[0].transfer_id)
            self._send_context(cached, now, with_key=False, answer=answer)
            return
        key = ar._mn_keys.get(mn)
        if key is None:
            ar.counters["no_key"] += 1
            ar._emit(RequestIgnored(mn, ROLE_PAR, "no key for this MN", source))
            return
        failure = ar._verify_request(key, req, plain, options, bound_source, bound_ar)
        if failure is not None:
            ar._refuse_request(failure, mn, ROLE_PAR, source)
            return
        contexts, sent, _ = self._collect(mn, plain)
        self._start(mn, source, MODE_REACTIVE, req.sequence_number, key, contexts, sent, now,
                    lifetime=ar.config.ct_max_transfer_time, with_key=False, answer=answer)

    def _start(self, mn: str, nar: str, mode: str, seq: int | None, key: bytes,
               contexts: tuple[ContextDataBlock, ...], fpts_sent: tuple[int, ...], now: float,
               lifetime: float, with_key: bool, answer: tuple[Transfer, Bound] | None = None) -> None:
        self.supersede(mn)  # an ended transfer's hold: the MN is back, this transfer replaces it
        record = _SourceRecord(mn, nar, mode, seq, key, contexts, fpts_sent, now, now + lifetime,
                               self.ar.config.request_ctdr)
        if not self.ar.config.rfc_exact:  # the CT-Req's id, or a fresh one for a PCTD
            record.transfer_id = answer[0].transfer_id if answer is not None else self.ar._new_transfer_id()
            record.ids.add(record.transfer_id)
        record.machine.fire(SourceEvent.START)
        self._records[mn] = record
        self.ar._emit(TransferStarted(mn, ROLE_PAR, mode, nar))
        self._send_context(record, now, with_key, answer)

    def _collect(self, mn: str, requested: Sequence[ContextDataBlock]
                 ) -> tuple[tuple[ContextDataBlock, ...], tuple[int, ...], tuple[StatusEntry, ...]]:
        """Ask each handler for the MN's context: (CDBs, FPTs sent, failure statuses)."""
        ar = self.ar
        explicit = tuple(dict.fromkeys(b.fpt for b in requested))
        contexts: list[ContextDataBlock] = []
        sent: list[int] = []
        failures: list[StatusEntry] = []
        for fpt in explicit or ar.registry.fpts():
            handler = ar.registry.get(fpt)
            if handler is None:
                failures.append(StatusEntry(fpt, c.STATUS_UNSUPPORTED_FPT))
                continue
            try:
                data = handler.collect(mn)
            except Exception:  # a faulty context type must not stop the others
                ar.counters["handler_errors"] += 1
                failures.append(StatusEntry(fpt, c.STATUS_HANDLER_ERROR))
                continue
            if data is None:
                if explicit:
                    failures.append(StatusEntry(fpt, c.STATUS_CONTEXT_UNAVAILABLE))
                continue
            try:
                items = [data] if isinstance(data, (bytes, bytearray)) else list(data)
                blocks = [ContextDataBlock(fpt, bytes(item)) for item in items]
            except Exception:  # too large for a CDB, or not bytes at all
                failures.append(StatusEntry(fpt, c.STATUS_CONTEXT_TOO_LARGE))
                continue
            contexts.extend(blocks)
            sent.append(fpt)
        return tuple(contexts), tuple(sent), tuple(failures)

    def _send_context(self, record: _SourceRecord, now: float, with_key: bool,
                      answer: tuple[Transfer, Bound] | None = None) -> None:
        """PCTD (with the key) or CTD. Outside RFC-exact mode, after the contexts: a PCTD names
        its transfer (TRANSFER: id, start, the hold as lifetime); a CTD answering a CT-Req echoes
        its TRANSFER and BOUND and carries CTAA_KEY."""
        elapsed = min(max(int(round((now - record.first_sent) * 1000)), 0), 0xFFFFFFFF)
        contexts = record.contexts
        if not self.ar.config.rfc_exact:
            if answer is not None:
                options = Options(transfer=answer[0], bound=answer[1], ctaa_key=ctaa_key(record.key))
            else:
                options = Options(transfer=Transfer(record.transfer_id, Transfer.ms(record.first_sent),
                                                    min(Transfer.ms(record.deadline - record.first_sent),
                                                        0xFFFFFFFF)))
            contexts = contexts + options.blocks()
        message: PCTD | CTD
        if with_key:
            message = PCTD(record.mn, record.key, contexts, elapsed, record.ack_requested,
                           self.ar.config.key_algorithm)
        else:
            message = CTD(record.mn, contexts, elapsed, record.ack_requested)
        self.ar._send(message, record.nar, TRANSPORT_AR)

    # -- answers from the nAR --------------------------------------------------------------------
    def _lookup(self, message: CTDR | CTC, source: str, now: float) -> _SourceRecord | None:
        """The transfer a CTDR/CTC names, if it came from that transfer's nAR; else counted."""
        ar, mn = self.ar, message.mn_previous_address
        kind = type(message).__name__
        record = self._records.get(mn)
        if record is None:
            done = self._done.get(mn)
            horizon = now - max(ar.config.ct_max_handover_time, ar.config.sequence_reuse_time)
            if done is not None and done[1] > horizon and self._from_nar(done[0], source):
                ar.counters["duplicates"] += 1
                ar._emit(RequestIgnored(mn, ROLE_PAR, f"duplicate {kind}: the transfer completed",
                                        source))
            else:
                ar._unexpected(message, source, ROLE_PAR)
            return None
        if not self._from_nar(record.nar, source):
            ar.counters["not_transfer_peer"] += 1
            reason = f"{kind} from {source}, not this transfer's nAR {record.nar}"
            if ar.peers is not None and not ar.peers.grouped:
                reason += " (peers lists no aliases: pass a mapping access address -> link address)"
            ar._emit(RequestIgnored(mn, ROLE_PAR, reason, source))
            return None
        return record

    def _from_nar(self, nar: str, source: str) -> bool:
        peers = self.ar.peers
        return True if peers is None else peers.same_ar(source, nar)

    def _names_transfer(self, record: _SourceRecord, message: CTDR | CTC, source: str
                        ) -> tuple[StatusEntry, ...] | None:
        """The plain status tuples of a CTDR or CTC (none for a CTC) if it names ``record``'s
        transfer (departures: its TRANSFER id is one the transfer answers to); else None,
        counted: a late one of another transfer for the same MN."""
        ar = self.ar
        entries = message.statuses if isinstance(message, CTDR) else message.options
        if ar.config.rfc_exact:
            return entries if isinstance(message, CTDR) else ()
        kind = type(message).__name__
        try:
            plain, options = split_statuses(entries)
        except OptionError as error:
            ar._option_error(message, ROLE_PAR, source, str(error))
            return None
        if options.transfer is None:
            ar._option_error(message, ROLE_PAR, source, f"a {kind} needs TRANSFER")
            return None
        if options.transfer.transfer_id not in record.ids:
            ar._stale(record.mn, ROLE_PAR, f"{kind} names another transfer than the one in progress", source)
            return None
        return plain if isinstance(message, CTDR) else ()

    def on_ctdr(self, ctdr: CTDR, source: str, now: float) -> None:
        ar = self.ar
        record = self._lookup(ctdr, source, now)
        if record is None:
            return
        statuses = self._names_transfer(record, ctdr, source)
        if statuses is None:
            return
        ctdr = CTDR(ctdr.mn_previous_address, ctdr.success, statuses)
        mn, state = record.mn, record.state
        if state is SourceState.SENT:
            ar._burn_key(mn, record.key)  # the pAR drops context and key after the transfer (§6.3)
            if ctdr.success:
                record.machine.fire(SourceEvent.CTDR_SUCCESS)
                self._release(record)
                self._finish(record, now)
                ar._emit(TransferCompleted(mn, ROLE_PAR, ctdr.statuses))
            else:
                record.machine.fire(SourceEvent.CTDR_FAILURE)
                self._hold(record, now, "the nAR reported a failure")
                ar._emit(TransferFailed(mn, ROLE_PAR, "the nAR reported a failure", ctdr.statuses))
            return
        if state in (SourceState.EXPIRED, SourceState.LATE_WINDOW):
            if record.late_until is None or now > record.late_until:
                ar.counters["late_ctdr_ignored"] += 1
                ar._emit(RequestIgnored(mn, ROLE_PAR, "CTDR after the late grace", source))
                return
            if ctdr.success:  # the nAR did activate: release what we sent, cancel the ReleaseDue
                record.machine.fire(SourceEvent.CTDR_SUCCESS)
                ar.counters["late_ctdr"] += 1
                self._release(record)
                self._finish(record, now)
                ar._emit(TransferCompleted(mn, ROLE_PAR, ctdr.statuses, late=True))
            else:
                ar.counters["late_ctdr_failure"] += 1
                self._end_grace(record, SourceEvent.CTDR_FAILURE, now)
            return
        ar.counters["duplicates"] += 1  # RELEASE_HOLD: the transfer already ended (S = 0 or CTC)
        ar._emit(RequestIgnored(mn, ROLE_PAR, "CTDR for a transfer that already ended", source))

    def on_ctc(self, ctc: CTC, source: str, now: float) -> None:
        ar = self.ar
        record = self._lookup(ctc, source, now)
        if record is None or self._names_transfer(record, ctc, source) is None:
            return
        mn, state = record.mn, record.state
        if state is SourceState.SENT:
            record.machine.fire(SourceEvent.CTC)
            ar._burn_key(mn, record.key)
            ar.counters["cancelled"] += 1
            self._hold(record, now, "cancelled by the nAR")
            ar._emit(Cancelled(mn, ROLE_PAR, source))
        elif state in (SourceState.EXPIRED, SourceState.LATE_WINDOW):
            ar.counters["cancelled"] += 1  # the expiry was already reported; no late CTDR will come
            self._end_grace(record, SourceEvent.CTC, now)
        else:
            ar.counters["duplicates"] += 1
            ar._emit(RequestIgnored(mn, ROLE_PAR, "CTC for a transfer that already ended", source))

    def _end_grace(self, record: _SourceRecord, event: SourceEvent, now: float) -> None:
        """A late CTDR S = 0 or CTC: nothing more will come from the nAR."""
        if record.machine.fire(event) is SourceState.DONE:  # LATE_WINDOW: ReleaseDue already out
            self._records.pop(record.mn, None)
        else:
            record.late_until = None

    def _release(self, record: _SourceRecord) -> None:
        for fpt in record.fpts:
            handler = self.ar.registry.get(fpt)
            if handler is None:
                continue
            try:
                handler.release(record.mn)
            except Exception:
                self.ar.counters["handler_errors"] += 1

    def _hold(self, record: _SourceRecord, now: float, reason: str) -> None:
        record.release_at = now + self.ar.config.release_hold_time
        record.late_until = None
        record.end_reason = reason

    def _finish(self, record: _SourceRecord, now: float) -> None:
        self._records.pop(record.mn, None)
        self._done.pop(record.mn, None)  # re-insert: insertion order stays time order
        self._done[record.mn] = (record.nar, now)

    # -- timers ----------------------------------------------------------------------------------
    def next_time(self) -> float | None:
        times = [t for t in (r.next_time() for r in self._records.values()) if t is not None]
        return min(times) if times else None

    def handle_timer(self, now: float) -> None:
        ar = self.ar
        for record in list(self._records.values()):
            if record.state is SourceState.SENT and now >= record.deadline:
                # CT_MAX_HANDOVER_TIME / CT_MAX_TRANSFER_TIME: delete the cached context (§2.5.3)
                record.machine.fire(SourceEvent.EXPIRE)
                ar._burn_key(record.mn, record.key)
                ar.counters["par_cache_expired"] += 1
                expired = record.deadline
                record.release_at = expired + ar.config.release_hold_time
                if record.ack_requested:
                    record.late_until = expired + ar.config.late_ctdr_grace_time
                    record.end_reason = "no CTDR before the cache expired"
                    ar._emit(TransferFailed(record.mn, ROLE_PAR, record.end_reason))
                else:
                    record.late_until = expired  # no CTDR was asked for: no grace to wait out
                    record.end_reason = "expired without a CTDR (none requested)"
                    ar._emit(TransferCompleted(record.mn, ROLE_PAR, (), acknowledged=False))
            if (record.state in (SourceState.EXPIRED, SourceState.LATE_WINDOW)
                    and record.late_until is not None and now >= record.late_until):
                record.late_until = None
                if record.machine.fire(SourceEvent.GRACE_OVER) is SourceState.DONE:
                    self._records.pop(record.mn, None)  # ReleaseDue was emitted already
                    continue
            if (record.state in (SourceState.EXPIRED, SourceState.RELEASE_HOLD)
                    and record.release_at is not None and now >= record.release_at):
                record.release_at = None
                ar.counters["release_due"] += 1
                if record.machine.fire(SourceEvent.RELEASE_DUE) is SourceState.DONE:
                    self._records.pop(record.mn, None)
                ar._emit(ReleaseDue(record.mn, ROLE_PAR, record.fpts, record.end_reason))
        self.prune(now)

    def prune(self, now: float) -> None:
        """Forget completed transfers once a duplicate CTDR can no longer come (amortised)."""
        if not self._done:
            return
        first = next(iter(self._done.values()))[1]  # insertion order is time order
        horizon = now - max(self.ar.config.ct_max_handover_time, self.ar.config.sequence_reuse_time)
        if first <= horizon:
            self._done = {mn: d for mn, d in self._done.items() if d[1] > horizon}

    # -- the owner's view of the MN --------------------------------------------------------------
    def supersede(self, mn: str) -> None:
        """The MN is back (a new key, a new transfer): an ended transfer's hold and pending
        ReleaseDue are cancelled. A transfer in progress is left alone."""
        self._done.pop(mn, None)
        record = self._records.get(mn)
        if record is None or record.state is SourceState.SENT:
            return
        record.machine.fire(SourceEvent.SUPERSEDE)
        del self._records[mn]
        self.ar.counters["release_hold_cancelled"] += 1

    def forget(self, mn: str) -> None:
        self._done.pop(mn, None)
        record = self._records.pop(mn, None)
        if record is not None:
            record.machine.fire(SourceEvent.SUPERSEDE)
            self.ar._burn_key(mn, record.key)
