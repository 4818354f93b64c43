"""The nAR side of an access router: the target of a transfer (RFC 4067 §2.5.1-§2.5.6).

One :class:`_TargetRecord` per MN (by its previous address), moved only through the
``TargetState`` table of :mod:`cxtp.state`. Contexts are installed inactive and activated by
the first CTAR whose token verifies (with the PCTD's key), or, for a CTD answering our CT-Req,
by the CTAR the pAR verified. A CTAR that does not verify is refused without touching the
context, so a forged CTAR cannot deny the real MN its handover. Ended transfers stay a while
as tombstones, so that late copies of their CTD/PCTD are recognised as duplicates.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from . import constants as c
from .datagram import TRANSPORT_AR, TRANSPORT_ICMP
from .errors import IllegalTransition
from .events import (
    MODE_PREDICTIVE,
    MODE_REACTIVE,
    ROLE_NAR,
    Cancelled,
    ContextActivated,
    ContextInstalled,
    RequestIgnored,
    TransferCompleted,
    TransferFailed,
    TransferStarted,
)
from .messages import CTAA, CTAR, CTC, CTD, CTDR, PCTD, ContextDataBlock, CTReq, StatusEntry
from .registry import ContextHandler, TransferInfo
from .state import Machine, TargetEvent, TargetState
from .token import key_fingerprint, tokens_equal, verify_token

if TYPE_CHECKING:
    from .engine import AccessRouter, Handlers

_LIVE = (TargetState.REQUESTED, TargetState.INSTALLED)


def _pad4(data: bytes) -> bytes:
    return bytes(data) + bytes(-len(data) % 4)


@dataclass(eq=False)
class _TargetRecord:
    """nAR side of one MN's transfer."""

    mn: str
    par: str  # the CT-Req went to the AR the CTAR named; then: where the context came from
    mode: str
    deadline: float | None
    requested: tuple[ContextDataBlock, ...] = ()
    machine: Machine[TargetState, TargetEvent] = field(
        default_factory=lambda: Machine(ROLE_NAR, TargetState.IDLE))
    key: bytes | None = None  # from a PCTD; wiped once a CTAR verified, or when the transfer ends
    key_fingerprint: bytes | None = None  # kept after the wipe: recognises a duplicate PCTD
    algorithm: int = c.HMAC_SHA1
    install_status: dict[int, int] = field(default_factory=dict)
    ctd_ack_requested: bool = False
    #: CTARs waiting for the context: pending[0] is the one our CT-Req copied
    pending: list[tuple[CTAR, str]] = field(default_factory=list)
    #: the CTARs that vouch for this transfer (the one copied into the CT-Req, the one that
    #: activated it): a late PCTD whose key verifies one of them is a copy, not a new transfer
    proofs: list[CTAR] = field(default_factory=list)
    ended_at: float | None = None
    #: the ended transfer this one replaced: its late PCTD copies are still duplicates
    previous: _TargetRecord | None = None

    @property
    def state(self) -> TargetState:
        return self.machine.state

    @property
    def live(self) -> bool:
        return self.state in _LIVE


class _TargetRole:
    """nAR role of an :class:`~cxtp.engine.AccessRouter`; shares its keys, counters and output."""

    def __init__(self, ar: AccessRouter) -> None:
        self.ar = ar
        self._records: dict[str, _TargetRecord] = {}
        self._prune_at: float | None = None  # when the oldest tombstone can go

    def handlers(self) -> Handlers:
        return {CTD: self.on_context, PCTD: self.on_context}

    # -- inspection ----------------------------------------------------------------------------
    def live(self, mn: str) -> _TargetRecord | None:
        record = self._records.get(mn)
        return record if record is not None and record.live else None

    def state(self, mn: str) -> TargetState:
        record = self._records.get(mn)
        return record.state if record is not None else TargetState.IDLE

    def records(self) -> tuple[_TargetRecord, ...]:
        return tuple(self._records.values())

    # -- CTARs -------------------------------------------------------------------------------------
    def start_reactive(self, ctar: CTAR, source: str, now: float) -> None:
        """No context for the MN here: ask the pAR the CTAR names, copying the CTAR (§2.5.6)."""
        ar, mn = self.ar, ctar.mn_previous_address
        if ctar.ar_address == ar.address:  # we would be the pAR, but hold no key for the MN
            ar.counters["no_key"] += 1
            ar._emit(RequestIgnored(mn, ROLE_NAR, "the CTAR names this AR, which has no key for the MN",
                                    source))
            ar._forget_ctar(ctar)
            return
        previous = self._retire(mn)
        record = _TargetRecord(mn, ctar.ar_address, MODE_REACTIVE,
                               now + ar.config.ct_max_transfer_time, ctar.requested,
                               pending=[(ctar, source)], proofs=[ctar], previous=previous)
        record.machine.fire(TargetEvent.REQUEST)
        self._records[mn] = record
        ar._send(CTReq(mn, ctar.sequence_number, ctar.token, ctar.requested), record.par, TRANSPORT_AR)
        ar._emit(TransferStarted(mn, ROLE_NAR, MODE_REACTIVE, record.par))

    def on_ctar(self, record: _TargetRecord, ctar: CTAR, source: str, now: float) -> None:
        ar = self.ar
        if record.state is TargetState.REQUESTED:
            # the CT-Req is out; another CTAR for this MN waits for the context with it, so that a
            # forged first CTAR cannot pre-empt the MN (the PCTD's key tells them apart)
            if len(record.pending) >= ar.config.max_pending_ctars:
                self._drop_pending(record, ctar, source, "too many CTARs for this MN in progress")
                return
            record.machine.fire(TargetEvent.HOLD_CTAR)
            record.pending.append((ctar, source))
            ar.counters["held_ctars"] += 1
            return
        self._try_ctars(record, [(ctar, source)], now)

    def _verifies(self, record: _TargetRecord, ctar: CTAR) -> bool:
        return (record.key is not None and record.algorithm == c.HMAC_SHA1
                and verify_token(record.key, ctar.mn_previous_address, ctar.sequence_number,
                                 ctar.requested_octets(), ctar.token))

    def _try_ctars(self, record: _TargetRecord, candidates: list[tuple[CTAR, str]], now: float) -> None:
        """Activate on the first CTAR whose token verifies with the transferred key (§2.5.1);
        refuse the others, keeping the context and key for the MN that can prove itself."""
        for index, (ctar, source) in enumerate(candidates):
            if self._verifies(record, ctar):
                self._activate(record, ctar, source, now)
                for other, other_source in candidates[index + 1:]:
                    self._drop_pending(record, other, other_source, "the transfer was activated")
                return
            self._refuse(record, ctar, source)

    def _refuse(self, record: _TargetRecord, ctar: CTAR, source: str) -> None:
        ar = self.ar
        record.machine.fire(TargetEvent.REFUSE_CTAR)
        ar._token_rejected(record.mn, ROLE_NAR, source)
        ar._forget_ctar(ctar)  # refused: its (seq, MN) pair must not make the real CTAR a duplicate
        if ctar.ack_requested:
            statuses = tuple(StatusEntry(f, c.STATUS_AUTHORIZATION_FAILED) for f in self._fpts(record))
            ar._send(CTAA(record.mn, statuses), source, TRANSPORT_ICMP)

    def _drop_pending(self, record: _TargetRecord, ctar: CTAR, source: str, reason: str) -> None:
        ar = self.ar
        ar.counters["busy"] += 1
        ar._emit(RequestIgnored(record.mn, ROLE_NAR, reason, source))
        ar._forget_ctar(ctar)  # the MN's retransmission gets a fresh start

    # -- CTD / PCTD (§2.5.3) -------------------------------------------------------------------------
    def on_context(self, message: CTD | PCTD, source: str, now: float) -> None:
        ar, mn = self.ar, message.mn_previous_address
        pctd = message if isinstance(message, PCTD) else None  # the key material, if any
        has_key = pctd is not None
        kind = type(message).__name__
        self.prune(now)
        record = self._records.get(mn)
        if record is not None and not record.live:
            if pctd is None or self._copy_of(record, pctd):
                record.machine.fire(TargetEvent.DUPLICATE)
                ar.counters["duplicates"] += 1
                ar._emit(RequestIgnored(mn, ROLE_NAR, f"{kind} after the transfer ended", source))
                return
            self._retire(mn)  # a new key: a new transfer for this MN replaces the tombstone
            record = None
        if record is None:
            if not has_key:  # nobody asked, and nothing to verify a later CTAR with
                ar._unexpected(message, source, ROLE_NAR)
                return
            record = _TargetRecord(mn, source, MODE_PREDICTIVE, None)
            self._records[mn] = record
            ar._emit(TransferStarted(mn, ROLE_NAR, MODE_PREDICTIVE, source))
        elif record.state is TargetState.INSTALLED or (
                pctd is not None and record.previous is not None and self._copy_of(record.previous, pctd)):
            ar.counters["duplicates"] += 1
            ar._emit(RequestIgnored(mn, ROLE_NAR, f"{kind}: context already received for this MN",
                                    source))
            return
        # the pAR may answer from its AR-link address rather than the one the MN named: reply there
        record.par = source
        record.ctd_ack_requested = message.ack_requested
        if pctd is not None and pctd.algorithm != c.HMAC_SHA1:  # no CTAR could ever verify: refuse it all
            ar.counters["unsupported_algorithm"] += 1
            self._fail(record, TargetEvent.REJECT, f"unknown token algorithm {pctd.algorithm}",
                       c.STATUS_UNSUPPORTED_ALGORITHM, now, send_ctc=False)
            return
        record.machine.fire(TargetEvent.CONTEXT)
        if pctd is not None:
            record.key, record.algorithm = pctd.key, pctd.algorithm
            record.key_fingerprint = key_fingerprint(pctd.key)
        # The MN's new address is known only once a CTAR is verified: a plain CTD answers our
        # CT-Req, whose token the pAR verified, so the CTAR that asked for it names the address and
        # the activation follows at once; a PCTD's install comes before any verified CTAR.
        pending, record.pending = record.pending, []
        answered = pending[0][1] if pending and not has_key else None
        self._install(record, message.contexts, TransferInfo(mn, record.par, ar.address, answered))
        record.deadline = now + ar.config.ct_max_handover_time
        if not pending:
            return  # predictive: wait for the MN's CTAR
        if has_key:  # verify every waiting CTAR with the key, the first one that verifies wins
            self._try_ctars(record, pending, now)
            return
        # a plain CTD answers our CT-Req: the pAR verified the token we copied (§2.1.2, §6.3)
        (asked, asked_source), rest = pending[0], pending[1:]
        self._activate(record, asked, asked_source, now)
        for other, other_source in rest:
            self._drop_pending(record, other, other_source, "the transfer was activated")

    def _copy_of(self, record: _TargetRecord, pctd: PCTD) -> bool:
        """Is this PCTD a late copy of the ended transfer's (same key), not a new transfer?"""
        if record.key_fingerprint is not None and tokens_equal(record.key_fingerprint,
                                                               key_fingerprint(pctd.key)):
            return True
        return any(verify_token(pctd.key, proof.mn_previous_address, proof.sequence_number,
                                proof.requested_octets(), proof.token) for proof in record.proofs)

    def _install(self, record: _TargetRecord, contexts: Iterable[ContextDataBlock], info: TransferInfo) -> None:
        ar = self.ar
        for block in contexts:
            handler = ar.registry.get(block.fpt)
            if handler is None:
                status = c.STATUS_UNSUPPORTED_FPT
            else:
                try:
                    status = int(handler.install(record.mn, block.data, info))
                except Exception:
                    ar.counters["handler_errors"] += 1
                    status = c.STATUS_HANDLER_ERROR
            if not record.install_status.get(block.fpt):  # keep the first failure per FPT
                record.install_status[block.fpt] = status & 0xFF
        ar._emit(ContextInstalled(record.mn, tuple(StatusEntry(f, s)
                                                   for f, s in record.install_status.items())))

    def _activate(self, record: _TargetRecord, ctar: CTAR, ctar_source: str, now: float) -> None:
        ar, mn = self.ar, record.mn
        record.machine.fire(TargetEvent.ACTIVATE)
        self._ended(record, now)  # the nAR MUST discard the key after using it (§6.3)
        if all(p is not ctar for p in record.proofs):
            record.proofs.append(ctar)
        info = TransferInfo(mn, record.par, ar.address, ctar_source)
        statuses: list[StatusEntry] = []
        for fpt, install_status in record.install_status.items():
            handler = ar.registry.get(fpt)
            if install_status or handler is None:
                if handler is not None:
                    self._discard(handler, mn)
                statuses.append(StatusEntry(fpt, install_status or c.STATUS_UNSUPPORTED_FPT))
                continue
            try:
                status, data = handler.activate(mn, info)
                statuses.append(StatusEntry(fpt, int(status) & 0xFF, _pad4(data)))
            except Exception:
                ar.counters["handler_errors"] += 1
                statuses.append(StatusEntry(fpt, c.STATUS_HANDLER_ERROR))
        for fpt in dict.fromkeys(b.fpt for b in ctar.requested):
            if fpt not in record.install_status:
                statuses.append(StatusEntry(fpt, c.STATUS_CONTEXT_UNAVAILABLE))
        result = tuple(statuses)
        ar._emit(ContextActivated(mn, result))
        if ctar.ack_requested:
            ar._send_ctaa(CTAA(mn, result), ctar, ctar_source)
        if record.ctd_ack_requested:
            success = all(s.status == c.STATUS_SUCCESS for s in result)
            ar._send(CTDR(mn, success, tuple(StatusEntry(s.fpt, s.status) for s in result)),
                     record.par, TRANSPORT_AR)
        ar._emit(TransferCompleted(mn, ROLE_NAR, result))

    def _discard(self, handler: ContextHandler, mn: str) -> None:
        try:
            handler.discard(mn)
        except Exception:
            self.ar.counters["handler_errors"] += 1

    def _fpts(self, record: _TargetRecord) -> tuple[int, ...]:
        return (tuple(record.install_status) or tuple(dict.fromkeys(b.fpt for b in record.requested))
                or self.ar.registry.fpts())

    def _fail(self, record: _TargetRecord, event: TargetEvent, reason: str, status: int, now: float,
              send_ctc: bool) -> None:
        """Drop inactive contexts and the key; tell the pAR (CTC or CTDR S = 0) and the MN (CTAA)."""
        ar, mn = self.ar, record.mn
        had_context = record.state is TargetState.INSTALLED
        record.machine.fire(event)
        self._ended(record, now)
        for fpt in record.install_status:
            handler = ar.registry.get(fpt)
            if handler is not None:
                self._discard(handler, mn)
        statuses = tuple(StatusEntry(f, status) for f in self._fpts(record))
        if send_ctc:
            ar._send(CTC(mn), record.par, TRANSPORT_AR)
        elif (had_context or event is TargetEvent.REJECT) and record.ctd_ack_requested:
            ar._send(CTDR(mn, False, statuses), record.par, TRANSPORT_AR)
        pending, record.pending = record.pending, []
        if pending:
            asked, asked_source = pending[0]
            if asked.ack_requested:
                ar._send_ctaa(CTAA(mn, statuses), asked, asked_source)
            for other, other_source in pending[1:]:
                self._drop_pending(record, other, other_source, "the transfer failed")
        ar._emit(TransferFailed(mn, ROLE_NAR, reason, statuses))

    # -- timers, API ---------------------------------------------------------------------------------
    def next_time(self) -> float | None:
        times = [r.deadline for r in self._records.values() if r.live and r.deadline is not None]
        return min(times) if times else None

    def handle_timer(self, now: float) -> None:
        for record in [r for r in self._records.values()
                       if r.live and r.deadline is not None and now >= r.deadline]:
            # the transfer cannot finish in time: cancel it (§2.5.5)
            self.ar.counters["nar_timeouts"] += 1
            if record.state is TargetState.REQUESTED:
                # CTC only when our CT-Req stood alone: with other CTARs for this MN the pAR may
                # hold the real MN's transfer, which a CTC would cancel
                self._fail(record, TargetEvent.TIMEOUT,
                           "no context from the pAR within CT_MAX_TRANSFER_TIME",
                           c.STATUS_TRANSFER_TIMEOUT, now, send_ctc=len(record.pending) <= 1)
            else:
                self._fail(record, TargetEvent.TIMEOUT, "no valid CTAR before the inactive context expired",
                           c.STATUS_TRANSFER_TIMEOUT, now, send_ctc=True)
        self.prune(now)

    def cancel(self, mn: str, now: float) -> None:
        """nAR: give up the MN's transfer and send CTC to the pAR (§2.5.5)."""
        record = self._records.get(mn)
        if record is None:
            raise IllegalTransition(ROLE_NAR, TargetState.IDLE, TargetEvent.CANCEL)
        if not record.machine.can(TargetEvent.CANCEL):
            raise IllegalTransition(ROLE_NAR, record.state, TargetEvent.CANCEL)
        self._fail(record, TargetEvent.CANCEL, "cancelled locally", c.STATUS_TRANSFER_TIMEOUT, now,
                   send_ctc=True)
        self.ar._emit(Cancelled(mn, ROLE_NAR, self.ar.address))

    def _tombstone_time(self) -> float:
        return max(self.ar.config.ct_max_handover_time, self.ar.config.sequence_reuse_time)

    def prune(self, now: float) -> None:
        """Tombstones are kept long enough for any late copy, then dropped at the next input or
        timer (no timer of their own). Amortised: the records are scanned only when one is due."""
        if self._prune_at is None or now < self._prune_at:
            return
        horizon = now - self._tombstone_time()
        oldest: float | None = None
        for mn, record in list(self._records.items()):
            if record.live or record.ended_at is None:
                continue
            if record.ended_at <= horizon:
                self._retire(mn)
            else:
                oldest = record.ended_at if oldest is None else min(oldest, record.ended_at)
        self._prune_at = None if oldest is None else oldest + self._tombstone_time()

    def _ended(self, record: _TargetRecord, now: float) -> None:
        record.key, record.deadline, record.ended_at = None, None, now
        due = now + self._tombstone_time()
        self._prune_at = due if self._prune_at is None else min(self._prune_at, due)

    def _retire(self, mn: str) -> _TargetRecord | None:
        """Drop the MN's tombstone (if any) and return it."""
        record = self._records.get(mn)
        if record is None or record.live:
            return None
        record.machine.fire(TargetEvent.RETIRE)
        del self._records[mn]
        record.previous = None  # keep one generation only
        return record

    def forget(self, mn: str) -> None:
        record = self._records.pop(mn, None)
        if record is not None:
            record.machine.fire(TargetEvent.FORGET)
