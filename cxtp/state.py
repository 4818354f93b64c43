"""The state machines of the three roles: one enum of states, one of events and ONE transition
table per role (in the way of h11's ``_state.py``). An event a state does not list raises
:class:`~cxtp.errors.IllegalTransition` naming the role, the state and the event.

The engines consult a :class:`Machine` before acting on input from the wire (``can``) and move it
with ``fire``; a local API call that does not fit the state (a second transaction, cancelling
nothing) surfaces the :class:`IllegalTransition` to the caller.

MN (one transaction at a time, §2)::

    IDLE --REQUEST_PREDICTIVE--> PREDICTIVE --ATTACH--> ATTACHED --FINAL_CTAA/...--> IDLE
    IDLE --ATTACH--> ATTACHED

pAR side of one MN's transfer (§2.5.3, §2.5.6)::

    IDLE --START--> SENT --CTDR_SUCCESS--> DONE
                    SENT --CTDR_FAILURE/CTC--> RELEASE_HOLD --RELEASE_DUE--> DONE
                    SENT --EXPIRE--> EXPIRED --CTDR_SUCCESS (late)--> DONE
                                     EXPIRED --GRACE_OVER--> RELEASE_HOLD
                                     EXPIRED --RELEASE_DUE--> LATE_WINDOW --CTDR_SUCCESS/GRACE_OVER--> DONE

nAR side (§2.5.1, §2.5.3, §2.5.6)::

    IDLE --REQUEST (CTAR, CT-Req sent)--> REQUESTED --CONTEXT--> INSTALLED --ACTIVATE--> ACTIVATED
    IDLE --CONTEXT (unsolicited PCTD)--> INSTALLED
    REQUESTED/INSTALLED --TIMEOUT/CANCEL--> FAILED;  IDLE/REQUESTED --REJECT--> FAILED
    ACTIVATED/FAILED are kept a while (tombstones) so that late duplicates are recognised.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import Enum
from typing import Any, Generic, TypeVar

from .errors import IllegalTransition


class MnState(Enum):
    IDLE = "idle"
    PREDICTIVE = "predictive"  # CTAR sent to the pAR, the MN has not attached to the nAR yet
    ATTACHED = "attached"  # CTAR sent to the nAR, waiting for its CTAA


class MnEvent(Enum):
    REQUEST_PREDICTIVE = "request_predictive"  # API: CTAR to the pAR
    ATTACH = "attach"  # API: CTAR to the nAR
    INFORMATIVE_CTAA = "informative_ctaa"  # the pAR's CTAA of a predictive transfer
    FINAL_CTAA = "final_ctaa"  # the nAR's CTAA: the transaction ends (success or failure)
    UNACKNOWLEDGED = "unacknowledged"  # A = 0: nothing will answer, the transaction ends at once
    RETRIES_EXHAUSTED = "retries_exhausted"  # CT_RETRY_MAX passed
    CANCEL = "cancel"  # API


MN_TRANSITIONS: Mapping[MnState, Mapping[MnEvent, MnState]] = {
    MnState.IDLE: {
        MnEvent.REQUEST_PREDICTIVE: MnState.PREDICTIVE,
        MnEvent.ATTACH: MnState.ATTACHED,
    },
    MnState.PREDICTIVE: {
        MnEvent.ATTACH: MnState.ATTACHED,
        MnEvent.INFORMATIVE_CTAA: MnState.PREDICTIVE,
        MnEvent.RETRIES_EXHAUSTED: MnState.PREDICTIVE,  # keep the transaction for attached()
        MnEvent.CANCEL: MnState.IDLE,
    },
    MnState.ATTACHED: {
        MnEvent.FINAL_CTAA: MnState.IDLE,
        MnEvent.UNACKNOWLEDGED: MnState.IDLE,
        MnEvent.RETRIES_EXHAUSTED: MnState.IDLE,
        MnEvent.CANCEL: MnState.IDLE,
    },
}


class SourceState(Enum):
    IDLE = "idle"
    SENT = "sent"  # context sent (PCTD or CTD); cached until CTDR, CTC or the deadline
    EXPIRED = "expired"  # deadline passed: a late CTDR S=1 still releases; the release hold runs
    LATE_WINDOW = "late_window"  # ReleaseDue already emitted; only a late CTDR is still awaited
    RELEASE_HOLD = "release_hold"  # ended without success: ReleaseDue when the hold is over
    DONE = "done"


class SourceEvent(Enum):
    START = "start"  # CTAR to the pAR, trigger_predictive, or a verified CT-Req
    RECOVER = "recover"  # a verified CT-Req for the cached transfer: resend as CTD
    CTDR_SUCCESS = "ctdr_success"
    CTDR_FAILURE = "ctdr_failure"
    CTC = "ctc"
    EXPIRE = "expire"  # CT_MAX_HANDOVER_TIME (predictive) or CT_MAX_TRANSFER_TIME (reactive)
    GRACE_OVER = "grace_over"  # Config.late_ctdr_grace after the expiry
    RELEASE_DUE = "release_due"  # Config.release_hold after the end: emit ReleaseDue
    SUPERSEDE = "supersede"  # the MN is back (new key, new transfer) or the owner forgot it


SOURCE_TRANSITIONS: Mapping[SourceState, Mapping[SourceEvent, SourceState]] = {
    SourceState.IDLE: {
        SourceEvent.START: SourceState.SENT,
    },
    SourceState.SENT: {
        SourceEvent.RECOVER: SourceState.SENT,
        SourceEvent.CTDR_SUCCESS: SourceState.DONE,
        SourceEvent.CTDR_FAILURE: SourceState.RELEASE_HOLD,
        SourceEvent.CTC: SourceState.RELEASE_HOLD,
        SourceEvent.EXPIRE: SourceState.EXPIRED,
        SourceEvent.SUPERSEDE: SourceState.DONE,
    },
    SourceState.EXPIRED: {
        SourceEvent.CTDR_SUCCESS: SourceState.DONE,
        SourceEvent.CTDR_FAILURE: SourceState.RELEASE_HOLD,
        SourceEvent.CTC: SourceState.RELEASE_HOLD,
        SourceEvent.GRACE_OVER: SourceState.RELEASE_HOLD,
        SourceEvent.RELEASE_DUE: SourceState.LATE_WINDOW,
        SourceEvent.SUPERSEDE: SourceState.DONE,
    },
    SourceState.LATE_WINDOW: {
        SourceEvent.CTDR_SUCCESS: SourceState.DONE,
        SourceEvent.CTDR_FAILURE: SourceState.DONE,
        SourceEvent.CTC: SourceState.DONE,
        SourceEvent.GRACE_OVER: SourceState.DONE,
        SourceEvent.SUPERSEDE: SourceState.DONE,
    },
    SourceState.RELEASE_HOLD: {
        SourceEvent.RELEASE_DUE: SourceState.DONE,
        SourceEvent.SUPERSEDE: SourceState.DONE,
    },
    SourceState.DONE: {},
}


class TargetState(Enum):
    IDLE = "idle"
    REQUESTED = "requested"  # a CTAR came first: CT-Req sent, waiting for the pAR's CTD/PCTD
    INSTALLED = "installed"  # contexts held inactive (with the key of a PCTD) until a CTAR verifies
    ACTIVATED = "activated"  # tombstone: contexts live, CTAA and CTDR sent
    FAILED = "failed"  # tombstone: timed out, cancelled or refused


class TargetEvent(Enum):
    REQUEST = "request"  # a CTAR for an MN without context here: CT-Req to the pAR
    HOLD_CTAR = "hold_ctar"  # another CTAR for the MN while the CT-Req is outstanding
    CONTEXT = "context"  # CTD/PCTD received and installed inactive
    REFUSE_CTAR = "refuse_ctar"  # a CTAR whose token does not verify: refused, context kept
    ACTIVATE = "activate"  # a CTAR verified (or the pAR verified it): contexts live
    TIMEOUT = "timeout"
    CANCEL = "cancel"  # API
    REJECT = "reject"  # the context cannot be used at all (unknown token algorithm)
    DUPLICATE = "duplicate"  # a late copy of the CTD/PCTD of an ended transfer
    RETIRE = "retire"  # the tombstone is dropped (aged out, or a new transfer replaces it)
    FORGET = "forget"  # API: the owner cleared the MN


_TARGET_LIVE_EXITS = {
    TargetEvent.TIMEOUT: TargetState.FAILED,
    TargetEvent.CANCEL: TargetState.FAILED,
    TargetEvent.FORGET: TargetState.IDLE,
}

TARGET_TRANSITIONS: Mapping[TargetState, Mapping[TargetEvent, TargetState]] = {
    TargetState.IDLE: {
        TargetEvent.REQUEST: TargetState.REQUESTED,
        TargetEvent.CONTEXT: TargetState.INSTALLED,
        TargetEvent.REJECT: TargetState.FAILED,  # an unsolicited PCTD that cannot be used
    },
    TargetState.REQUESTED: {
        TargetEvent.HOLD_CTAR: TargetState.REQUESTED,
        TargetEvent.CONTEXT: TargetState.INSTALLED,
        TargetEvent.REJECT: TargetState.FAILED,  # the PCTD's key is of no use (unknown algorithm)
        **_TARGET_LIVE_EXITS,
    },
    TargetState.INSTALLED: {
        TargetEvent.REFUSE_CTAR: TargetState.INSTALLED,
        TargetEvent.ACTIVATE: TargetState.ACTIVATED,
        **_TARGET_LIVE_EXITS,
    },
    TargetState.ACTIVATED: {
        TargetEvent.DUPLICATE: TargetState.ACTIVATED,
        TargetEvent.RETIRE: TargetState.IDLE,
        TargetEvent.FORGET: TargetState.IDLE,
    },
    TargetState.FAILED: {
        TargetEvent.DUPLICATE: TargetState.FAILED,
        TargetEvent.RETIRE: TargetState.IDLE,
        TargetEvent.FORGET: TargetState.IDLE,
    },
}

#: role -> its table. Which enums a table takes follows from the role string, which the type system
#: cannot see: keys are typed loosely here, and :func:`transition` and :class:`Machine` give the
#: states back their role's type.
TABLES: Mapping[str, Mapping[Any, Mapping[Any, Enum]]] = {
    "mn": MN_TRANSITIONS,
    "par": SOURCE_TRANSITIONS,
    "nar": TARGET_TRANSITIONS,
}


StateT = TypeVar("StateT", MnState, SourceState, TargetState)
EventT = TypeVar("EventT", MnEvent, SourceEvent, TargetEvent)


def transition(role: str, state: StateT, event: Enum) -> StateT:
    """The state that ``event`` leads to from ``state`` in ``role``'s table, or IllegalTransition."""
    try:
        # a role's table maps its states to its states (TABLES cannot say so; see above)
        return TABLES[role][state][event]  # type: ignore[return-value]
    except KeyError:
        raise IllegalTransition(role, state, event) from None


class Machine(Generic[StateT, EventT]):
    """One role's state for one MN: the table is the only place transitions are defined."""

    __slots__ = ("role", "state")
    role: str
    state: StateT

    def __init__(self, role: str, initial: StateT) -> None:
        if role not in TABLES:
            raise ValueError(f"unknown role {role!r}")
        self.role = role
        self.state = initial

    def can(self, event: EventT) -> bool:
        return event in TABLES[self.role].get(self.state, {})

    def fire(self, event: EventT) -> StateT:
        self.state = transition(self.role, self.state, event)
        return self.state

    def __repr__(self) -> str:
        return f"Machine({self.role}, {self.state.name})"
