"""The nAR side of an access router: the target of a transfer (RFC 4067 §2.5.1-§2.5.6).

One :class:`_TargetRecord` per MN (by its previous address), moved only through the
``TargetState`` table of :mod:`cxtp.state`. Contexts are installed inactive and activated by
the first CTAR whose token verifies (with the PCTD's key), or, for a CTD answering our CT-Req,
by the CTAR the pAR verified. A CTAR that does not verify is refused without touching the
context, so a forged CTAR cannot deny the real MN its handover. Ended transfers stay a while
as tombstones, so that late copies of their CTD/PCTD are recognised as duplicates.

Outside RFC-exact mode (``docs/protocol.md``, "Departures from RFC 4067"): a CTAR must also be
bound to the address it came from (BINDING), so a copy sent from elsewhere binds nothing; each
CTAR waiting for the context has a CT-Req of its own (a candidate, with its TRANSFER id and
BOUND source), so the MN's CTAR never waits behind a forged one; a CTD is installed only when
it answers a live candidate, a PCTD only when it is fresh and younger than anything that ended
the MN's state here (a tombstone, or the owner's :meth:`forget`); the final CTAA carries
CTAA_AUTH and the CTDR and CTC name the transfer.
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
from .options import Bound, OptionError, Options, Transfer, binding_key, ctaa_key, split_blocks
from .registry import ContextHandler, TransferInfo
from .state import Machine, TargetEvent, TargetState
from .token import key_fingerprint, tokens_equal, verify_token

if TYPE_CHECKING:
    from .engine import AccessRouter, Handlers

_LIVE = (TargetState.REQUESTED, TargetState.INSTALLED)


def _pad4(data: bytes) -> bytes:
    return bytes(data) + bytes(-len(data) % 4)


@dataclass(eq=False)
class _Candidate:
    """A CTAR waiting for the MN's context. RFC-exact mode: the record's first one is the CTAR
    its CT-Req copied, the others are held. Otherwise each has a CT-Req of its own, named by
    ``request`` (its TRANSFER), given up at ``deadline``."""

    ctar: CTAR
    source: str
    #: whether the owner vouches for the source (``AccessRouter.source_preference``): asked only
    #: when it matters (a full budget, a full set of candidates), then kept
    vouched: bool | None = None
    #: the plain request CDBs and the options, once split (departures)
    parts: tuple[tuple[ContextDataBlock, ...], Options] | None = None
    request: Transfer | None = None
    deadline: float | None = None


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
    #: CTARs waiting for the context (see :class:`_Candidate`)
    pending: list[_Candidate] = field(default_factory=list)
    #: the CTARs that vouch for this transfer (the one copied into the CT-Req, the one that
    #: activated it): a late PCTD whose key verifies one of them is a copy, not a new transfer
    proofs: list[CTAR] = field(default_factory=list)
    ended_at: float | None = None
    #: the ended transfer this one replaced: its late PCTD copies are still duplicates
    previous: _TargetRecord | None = None
    #: departures: the transfer of the context received (the PCTD's, or the CT-Req's that the CTD
    #: answered), named in the CTDR and CTC; the CTD's CTAA_KEY (wiped with the key)
    transfer: Transfer | None = None
    ctaa_key: bytes | None = None
    #: departures: the binding key derived from the PCTD's key when it came (off the MN's path)
    binding_key: bytes | None = None
    #: departures: the TRANSFER ids of every CT-Req this transfer sent (a late CTD answering one
    #: of them after the transfer ended is a duplicate, not a stale stranger)
    requests: set[int] = field(default_factory=set)
    #: departures: the ids of the CT-Reqs given up (their time over, or displaced): a CTD answering
    #: one of them is stale, whatever the transfer's state
    abandoned: set[int] = field(default_factory=set)
    #: departures, tombstone: a PCTD of a transfer that started before ``ended_at`` is stale (the
    #: MN's context is live here, or the nAR cancelled or refused the transfer)
    refuses_older: bool = False

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
        #: departures: MN -> when the owner forgot it (a recovery): older transfers are stale
        self._superseded: dict[str, float] = {}

    def handlers(self) -> Handlers:
        return {CTD: self.on_context, PCTD: self.on_context}

    @property
    def _exact(self) -> bool:
        return self.ar.config.rfc_exact

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
            ar._forget_ctar(ctar, source)
            return
        candidate = self._candidate(ctar, source, now)
        if candidate is None or not self._budget(candidate, now):
            ar._forget_ctar(ctar, source)
            return
        plain = candidate.parts[0] if candidate.parts is not None else ctar.requested
        previous = self._retire(mn)
        record = _TargetRecord(mn, ctar.ar_address, MODE_REACTIVE, candidate.deadline, plain,
                               pending=[candidate], proofs=[ctar], previous=previous)
        record.machine.fire(TargetEvent.REQUEST)
        self._records[mn] = record
        self._send_request(record, candidate)
        ar._emit(TransferStarted(mn, ROLE_NAR, MODE_REACTIVE, record.par))

    def _candidate(self, ctar: CTAR, source: str, now: float) -> _Candidate | None:
        """A CTAR that may get a CT-Req: its deadline, and outside RFC-exact mode its split
        options and a fresh TRANSFER; None (counted) if it carries no BINDING (the pAR could
        never verify it) or malformed options."""
        ar = self.ar
        deadline = now + ar.config.ct_max_transfer_time
        if self._exact:
            return _Candidate(ctar, source, deadline=deadline)
        parts = ar._ctar_parts(ctar, ROLE_NAR, source)
        if parts is None:
            return None
        if parts[1].binding is None:
            ar._binding_rejected(ctar.mn_previous_address, ROLE_NAR, source)
            return None
        request = Transfer(ar._new_transfer_id(), Transfer.ms(now), Transfer.ms(ar.config.ct_max_transfer_time))
        return _Candidate(ctar, source, None, parts, request, deadline)

    def _vouched(self, candidate: _Candidate) -> bool:
        if candidate.vouched is None:
            candidate.vouched = self.ar._preferred(candidate.ctar.mn_previous_address, candidate.source)
        return candidate.vouched

    def _budget(self, candidate: _Candidate, now: float) -> bool:
        """The CT-Req budget, shared by all MNs (see :class:`cxtp.limits.RequestBudget`)."""
        return self.ar._ct_req_allowed(candidate.ctar.mn_previous_address, candidate.source, now,
                                       lambda: self._vouched(candidate))

    def _send_request(self, record: _TargetRecord, candidate: _Candidate) -> None:
        """The CT-Req for a candidate: RFC 4067 copies the CTAR's sequence number, token and
        CDBs; outside RFC-exact mode with the CTAR's BINDING, the candidate's TRANSFER and BOUND
        (the address the CTAR came from, this AR)."""
        ar, ctar = self.ar, candidate.ctar
        requested = ctar.requested
        if candidate.request is not None:
            record.requests.add(candidate.request.transfer_id)
        if candidate.parts is not None:
            plain, options = candidate.parts
            requested = plain + Options(binding=options.binding, transfer=candidate.request,
                                        bound=Bound(candidate.source, ar.address)).blocks()
        ar._send(CTReq(record.mn, ctar.sequence_number, ctar.token, requested), record.par, TRANSPORT_AR)

    def on_ctar(self, record: _TargetRecord, ctar: CTAR, source: str, now: float) -> None:
        ar = self.ar
        if record.state is TargetState.REQUESTED:
            if self._exact:
                # the CT-Req is out; another CTAR for this MN waits for the context with it, so
                # that a forged first CTAR cannot pre-empt the MN (the PCTD's key tells them apart)
                if len(record.pending) >= ar.config.max_pending_ctars:
                    self._drop_pending(record, _Candidate(ctar, source), "too many CTARs for this MN in progress")
                    return
                record.machine.fire(TargetEvent.HOLD_CTAR)
                record.pending.append(_Candidate(ctar, source))
                ar.counters["held_ctars"] += 1
                return
            self._add_candidate(record, ctar, source, now)
            return
        self._try_ctars(record, [_Candidate(ctar, source)], now)

    def _add_candidate(self, record: _TargetRecord, ctar: CTAR, source: str, now: float) -> None:
        """Departures: another CTAR for the MN while CT-Reqs are out gets a CT-Req of its own, so
        that it never waits for a forged one's to time out. At most ``max_pending_ctars`` per MN;
        one from a vouched-for source displaces the oldest other one."""
        ar = self.ar
        candidate = self._candidate(ctar, source, now)
        if candidate is None:
            ar._forget_ctar(ctar, source)
            return
        if len(record.pending) >= ar.config.max_pending_ctars:
            victim = (next((c for c in record.pending if not self._vouched(c)), None)
                      if self._vouched(candidate) else None)
            if victim is None:
                self._drop_pending(record, candidate, "too many CTARs for this MN in progress")
                return
            record.pending.remove(victim)
            if victim.request is not None:
                record.abandoned.add(victim.request.transfer_id)
            self._drop_pending(record, victim, "displaced by a CTAR from a vouched-for source")
        if not self._budget(candidate, now):
            ar._forget_ctar(ctar, source)
            return
        record.machine.fire(TargetEvent.HOLD_CTAR)
        record.pending.append(candidate)
        ar.counters["held_ctars"] += 1
        record.deadline = min(c.deadline for c in record.pending if c.deadline is not None)
        self._send_request(record, candidate)

    def _verifies(self, record: _TargetRecord, candidate: _Candidate) -> str | None:
        """None if the candidate's CTAR verifies with the transferred key (and outside RFC-exact
        mode is bound to its source and this AR); else what failed: "token", "binding" or
        "options" (already counted)."""
        ar = self.ar
        if not record.key or record.algorithm != c.HMAC_SHA1:  # none, or an empty one: nothing verifies
            return "token"
        parts = candidate.parts or ar._ctar_parts(candidate.ctar, ROLE_NAR, candidate.source)
        if parts is None:
            return "options"
        candidate.parts = None if self._exact else parts
        return ar._verify_request(record.key, candidate.ctar, parts[0], parts[1], candidate.source, ar.address,
                                  record.binding_key)

    def _try_ctars(self, record: _TargetRecord, candidates: list[_Candidate], now: float) -> None:
        """Activate on the first CTAR whose token verifies with the transferred key (§2.5.1);
        refuse the others, keeping the context and key for the MN that can prove itself."""
        for index, candidate in enumerate(candidates):
            failure = self._verifies(record, candidate)
            if failure is None:
                self._activate(record, candidate, now)
                for other in candidates[index + 1:]:
                    self._drop_pending(record, other, "the transfer was activated")
                return
            self._refuse(record, candidate, failure)

    def _refuse(self, record: _TargetRecord, candidate: _Candidate, failure: str) -> None:
        ar, ctar, source = self.ar, candidate.ctar, candidate.source
        record.machine.fire(TargetEvent.REFUSE_CTAR)
        if failure != "options":
            ar._refuse_request(failure, record.mn, ROLE_NAR, source)
        ar._forget_ctar(ctar, source)  # refused: its (seq, MN) pair must not make the real CTAR a duplicate
        if ctar.ack_requested:  # RFC 4067 §6.3's answer; never authenticated: nothing was verified
            statuses = tuple(StatusEntry(f, c.STATUS_AUTHORIZATION_FAILED) for f in self._fpts(record))
            ar._send(CTAA(record.mn, statuses), source, TRANSPORT_ICMP)

    def _drop_pending(self, record: _TargetRecord, candidate: _Candidate, reason: str) -> None:
        ar = self.ar
        ar.counters["busy"] += 1
        ar._emit(RequestIgnored(record.mn, ROLE_NAR, reason, candidate.source))
        ar._forget_ctar(candidate.ctar, candidate.source)  # the MN's retransmission gets a fresh start

    # -- CTD / PCTD (§2.5.3) -------------------------------------------------------------------------
    def on_context(self, message: CTD | PCTD, source: str, now: float) -> None:
        ar, mn = self.ar, message.mn_previous_address
        pctd = message if isinstance(message, PCTD) else None  # the key material, if any
        has_key = pctd is not None
        kind = type(message).__name__
        self.prune(now)
        contexts, options, transfer = message.contexts, Options(), None
        if not self._exact:  # the transfer's identity and freshness (departures)
            try:
                contexts, options = split_blocks(message.contexts)
            except OptionError as error:
                ar._option_error(message, ROLE_NAR, source, str(error))
                return
            transfer = options.transfer
            if transfer is None:
                ar._option_error(message, ROLE_NAR, source, f"a {kind} needs TRANSFER")
                return
            stale = ar._stale_reason(transfer, now) if pctd is not None else None
            superseded = self._superseded.get(mn)
            if stale is None and superseded is not None and transfer.origin < superseded:
                stale = "of a transfer that started before the MN's state here was cleared"
            if stale is not None:
                ar._stale(mn, ROLE_NAR, f"{kind} {stale}", source)
                return
        record = self._records.get(mn)
        if record is not None and not record.live:
            if pctd is None or self._copy_of(record, pctd, transfer):
                if pctd is None and transfer is not None and (transfer.transfer_id in record.abandoned
                                                              or transfer.transfer_id not in record.requests):
                    ar._stale(mn, ROLE_NAR, "CTD answering a request of a transfer that ended", source)
                    return
                record.machine.fire(TargetEvent.DUPLICATE)
                ar.counters["duplicates"] += 1
                ar._emit(RequestIgnored(mn, ROLE_NAR, f"{kind} after the transfer ended", source))
                return
            if (transfer is not None and record.refuses_older and record.ended_at is not None
                    and transfer.origin < record.ended_at):
                ar._stale(mn, ROLE_NAR, f"{kind} of a transfer that started before the last one here ended", source)
                return
            self._retire(mn)  # a new key: a new transfer for this MN replaces the tombstone
            record = None
        if record is None:
            if not has_key:  # nobody asked, and nothing to verify a later CTAR with
                if transfer is not None:
                    ar._stale(mn, ROLE_NAR, "CTD answering no request of this AR", source)
                else:
                    ar._unexpected(message, source, ROLE_NAR)
                return
            record = _TargetRecord(mn, source, MODE_PREDICTIVE, None)
            self._records[mn] = record
            ar._emit(TransferStarted(mn, ROLE_NAR, MODE_PREDICTIVE, source))
        elif record.state is TargetState.INSTALLED or (
                pctd is not None and record.previous is not None
                and self._copy_of(record.previous, pctd, transfer)):
            ar.counters["duplicates"] += 1
            ar._emit(RequestIgnored(mn, ROLE_NAR, f"{kind}: context already received for this MN",
                                    source))
            return
        answering: _Candidate | None = None
        if transfer is not None and pctd is None:  # a CTD must answer one of our live CT-Reqs
            answering = next((p for p in record.pending
                              if p.request is not None and p.request.transfer_id == transfer.transfer_id), None)
            if answering is None:
                ar._stale(mn, ROLE_NAR, "CTD answering no live request of this AR", source)
                return
            if options.bound != Bound(answering.source, ar.address):
                ar._stale(mn, ROLE_NAR, "CTD bound to another address than its request", source)
                return
            if options.ctaa_key is None:
                ar._option_error(message, ROLE_NAR, source, "a CTD needs CTAA_KEY")
                return
        # the pAR may answer from its AR-link address rather than the one the MN named: reply there
        record.par = source
        record.ctd_ack_requested = message.ack_requested
        record.transfer = transfer
        if pctd is not None and pctd.algorithm != c.HMAC_SHA1:  # no CTAR could ever verify: refuse it all
            ar.counters["unsupported_algorithm"] += 1
            self._fail(record, TargetEvent.REJECT, f"unknown token algorithm {pctd.algorithm}",
                       c.STATUS_UNSUPPORTED_ALGORITHM, now, send_ctc=False)
            return
        record.machine.fire(TargetEvent.CONTEXT)
        if pctd is not None:
            record.key, record.algorithm = pctd.key, pctd.algorithm
            record.key_fingerprint = key_fingerprint(pctd.key)
            if not self._exact and pctd.key:  # derived now: the MN's CTAR then costs one HMAC less each
                record.binding_key, record.ctaa_key = binding_key(pctd.key), ctaa_key(pctd.key)
        else:
            record.ctaa_key = options.ctaa_key
        # The MN's new address is known only once a CTAR is verified: a plain CTD answers our
        # CT-Req, whose token the pAR verified, so the CTAR that asked for it names the address and
        # the activation follows at once; a PCTD's install comes before any verified CTAR.
        pending, record.pending = record.pending, []
        if has_key:
            asked, rest = None, pending
        elif answering is not None:
            asked, rest = answering, [p for p in pending if p is not answering]
        else:
            asked, rest = (pending[0], pending[1:]) if pending else (None, [])
        self._install(record, contexts, TransferInfo(mn, record.par, ar.address,
                                                     asked.source if asked is not None else None))
        record.deadline = now + ar.config.ct_max_handover_time
        if has_key:  # verify every waiting CTAR with the key, the first one that verifies wins
            if pending:
                self._try_ctars(record, pending, now)
            return  # predictive: wait for the MN's CTAR
        if asked is None:
            return
        # a plain CTD answers our CT-Req: the pAR verified the token we copied (§2.1.2, §6.3)
        self._activate(record, asked, now)
        for other in rest:
            self._drop_pending(record, other, "the transfer was activated")

    def _copy_of(self, record: _TargetRecord, pctd: PCTD, transfer: Transfer | None = None) -> bool:
        """Is this PCTD a late copy of the ended transfer's (same key, or same TRANSFER id), not
        a new transfer?"""
        if (transfer is not None and record.transfer is not None
                and transfer.transfer_id == record.transfer.transfer_id):
            return True
        if record.key_fingerprint is not None and tokens_equal(record.key_fingerprint,
                                                               key_fingerprint(pctd.key)):
            return True
        return bool(pctd.key) and any(verify_token(pctd.key, proof.mn_previous_address, proof.sequence_number,
                                                   self._plain_octets(proof), proof.token)
                                      for proof in record.proofs)

    def _plain_octets(self, ctar: CTAR) -> bytes:
        """The octets a CTAR's token covers: every CDB in RFC-exact mode, else the plain ones."""
        if self._exact:
            return ctar.requested_octets()
        try:
            plain, _ = split_blocks(ctar.requested)
        except OptionError:
            return ctar.requested_octets()
        return b"".join(b.encode() for b in plain)

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

    def _transfer_options(self, record: _TargetRecord) -> tuple[StatusEntry, ...]:
        """Departures: the TRANSFER that names this transfer in a CTDR or CTC."""
        if self._exact or record.transfer is None:
            return ()
        return Options(transfer=record.transfer).statuses()

    def _activate(self, record: _TargetRecord, candidate: _Candidate, now: float) -> None:
        ar, mn, ctar = self.ar, record.mn, candidate.ctar
        # departures: the CTAA is authenticated with the key the MN derives from its own: from
        # the PCTD's key, or the CTD's CTAA_KEY (the pAR verified the CTAR)
        key = None
        if not self._exact:
            key = record.ctaa_key or (ctaa_key(record.key) if record.key else None)
        record.machine.fire(TargetEvent.ACTIVATE)
        self._ended(record, now)  # the nAR MUST discard the key after using it (§6.3)
        record.refuses_older = True
        if all(p is not ctar for p in record.proofs):
            record.proofs.append(ctar)
        info = TransferInfo(mn, record.par, ar.address, candidate.source)
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
        requested = candidate.parts[0] if candidate.parts is not None else ctar.requested
        for fpt in dict.fromkeys(b.fpt for b in requested):
            if fpt not in record.install_status:
                statuses.append(StatusEntry(fpt, c.STATUS_CONTEXT_UNAVAILABLE))
        result = tuple(statuses)
        ar._emit(ContextActivated(mn, result))
        if ctar.ack_requested:
            ar._send_ctaa(CTAA(mn, result), ctar, candidate.source, key)
        if record.ctd_ack_requested:
            success = all(s.status == c.STATUS_SUCCESS for s in result)
            ar._send(CTDR(mn, success, tuple(StatusEntry(s.fpt, s.status) for s in result)
                          + self._transfer_options(record)), record.par, TRANSPORT_AR)
        ar._emit(TransferCompleted(mn, ROLE_NAR, result))

    def _discard(self, handler: ContextHandler, mn: str) -> None:
        try:
            handler.discard(mn)
        except Exception:
            self.ar.counters["handler_errors"] += 1

    def _fpts(self, record: _TargetRecord) -> tuple[int, ...]:
        return (tuple(record.install_status) or tuple(dict.fromkeys(b.fpt for b in record.requested))
                or self.ar.registry.fpts())

    def _cancels(self, record: _TargetRecord) -> list[tuple[StatusEntry, ...]]:
        """The options of each CTC that cancels this transfer: one naming the context received;
        without one (departures), one per CT-Req out (the pAR may have answered any)."""
        if self._exact:
            return [()]
        if record.transfer is not None:
            return [self._transfer_options(record)]
        return [Options(transfer=p.request).statuses() for p in record.pending if p.request is not None]

    def _fail(self, record: _TargetRecord, event: TargetEvent, reason: str, status: int, now: float,
              send_ctc: bool) -> None:
        """Drop inactive contexts and the key; tell the pAR (CTC or CTDR S = 0) and the MN (CTAA;
        RFC-exact mode only: outside it the MN believes only an authenticated CTAA, and nothing
        here was verified)."""
        ar, mn = self.ar, record.mn
        had_context = record.state is TargetState.INSTALLED
        cancels = self._cancels(record) if send_ctc else []
        record.machine.fire(event)
        self._ended(record, now)
        record.refuses_older = had_context or event in (TargetEvent.CANCEL, TargetEvent.REJECT)
        for fpt in record.install_status:
            handler = ar.registry.get(fpt)
            if handler is not None:
                self._discard(handler, mn)
        statuses = tuple(StatusEntry(f, status) for f in self._fpts(record))
        for options in cancels:
            ar._send(CTC(mn, options), record.par, TRANSPORT_AR)
        if not send_ctc and (had_context or event is TargetEvent.REJECT) and record.ctd_ack_requested:
            ar._send(CTDR(mn, False, statuses + self._transfer_options(record)), record.par, TRANSPORT_AR)
        pending, record.pending = record.pending, []
        if self._exact and pending:
            asked = pending[0]
            if asked.ctar.ack_requested:
                ar._send_ctaa(CTAA(mn, statuses), asked.ctar, asked.source)
            for other in pending[1:]:
                self._drop_pending(record, other, "the transfer failed")
        else:
            for candidate in pending:  # the MN's retransmission starts afresh
                ar._forget_ctar(candidate.ctar, candidate.source)
        ar._emit(TransferFailed(mn, ROLE_NAR, reason, statuses))

    # -- timers, API ---------------------------------------------------------------------------------
    def next_time(self) -> float | None:
        times = [r.deadline for r in self._records.values() if r.live and r.deadline is not None]
        return min(times) if times else None

    def handle_timer(self, now: float) -> None:
        for record in [r for r in self._records.values()
                       if r.live and r.deadline is not None and now >= r.deadline]:
            # the transfer cannot finish in time: cancel it (§2.5.5)
            if record.state is TargetState.REQUESTED:
                if not self._exact and self._expire_candidates(record, now):
                    continue
                self.ar.counters["nar_timeouts"] += 1
                # RFC-exact: CTC only when our CT-Req stood alone (with other CTARs for this MN the
                # pAR may hold the real MN's transfer, which a CTC would cancel). Otherwise none:
                # the CT-Reqs' TRANSFER ids tie every answer to its request, and a pAR transfer
                # that answered a lost one ends at its own hold
                self._fail(record, TargetEvent.TIMEOUT,
                           "no context from the pAR within CT_MAX_TRANSFER_TIME",
                           c.STATUS_TRANSFER_TIMEOUT, now,
                           send_ctc=self._exact and len(record.pending) <= 1)
            else:
                self.ar.counters["nar_timeouts"] += 1
                self._fail(record, TargetEvent.TIMEOUT, "no valid CTAR before the inactive context expired",
                           c.STATUS_TRANSFER_TIMEOUT, now, send_ctc=True)
        self.prune(now)

    def _expire_candidates(self, record: _TargetRecord, now: float) -> bool:
        """Departures: give up the CT-Reqs whose time is over (each CTAR leaves the duplicate
        filter, so the MN's retransmission asks again); True while others are still out."""
        ar = self.ar
        for candidate in [p for p in record.pending if p.deadline is not None and now >= p.deadline]:
            record.pending.remove(candidate)
            if candidate.request is not None:
                record.abandoned.add(candidate.request.transfer_id)
            ar.counters["ct_req_timeouts"] += 1
            ar._forget_ctar(candidate.ctar, candidate.source)
        deadlines = [p.deadline for p in record.pending if p.deadline is not None]
        if not deadlines:
            return False
        record.deadline = min(deadlines)
        return True

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
        config = self.ar.config
        if config.rfc_exact:
            return max(config.ct_max_handover_time, config.sequence_reuse_time)
        # departures: also as long as a transfer that started before could still look fresh
        return max(config.ct_max_handover_time, config.sequence_reuse_time,
                   config.ct_max_transfer_time + config.ar_clock_skew,
                   config.ct_max_handover_time + config.ar_clock_skew)

    def _due(self, when: float) -> None:
        due = when + self._tombstone_time()
        self._prune_at = due if self._prune_at is None else min(self._prune_at, due)

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
        for mn, when in list(self._superseded.items()):
            if when <= horizon:
                del self._superseded[mn]
            else:
                oldest = when if oldest is None else min(oldest, when)
        self._prune_at = None if oldest is None else oldest + self._tombstone_time()

    def _ended(self, record: _TargetRecord, now: float) -> None:
        record.key, record.ctaa_key, record.binding_key = None, None, None
        record.deadline, record.ended_at = None, now
        self._due(now)

    def _retire(self, mn: str) -> _TargetRecord | None:
        """Drop the MN's tombstone (if any) and return it."""
        record = self._records.get(mn)
        if record is None or record.live:
            return None
        record.machine.fire(TargetEvent.RETIRE)
        del self._records[mn]
        record.previous = None  # keep one generation only
        return record

    def forget(self, mn: str, now: float | None = None) -> None:
        """Drop the MN's transfer silently. With ``now`` (departures: the owner cleared the MN, a
        recovery), a PCTD or CTD of any transfer that started before is stale from now on."""
        record = self._records.pop(mn, None)
        if record is not None:
            record.machine.fire(TargetEvent.FORGET)
        if now is not None:
            self._superseded[mn] = now
            self._due(now)
