"""Events the engines hand to their owner through ``next_event()`` (aioquic style)."""

from __future__ import annotations

from dataclasses import dataclass

from .messages import StatusEntry

ROLE_MN = "mn"
ROLE_PAR = "par"
ROLE_NAR = "nar"
MODE_PREDICTIVE = "predictive"
MODE_REACTIVE = "reactive"


@dataclass(frozen=True)
class Event:
    """Base class; every event names the MN by its previous address."""

    mn_previous_address: str


@dataclass(frozen=True)
class TransferStarted(Event):
    role: str
    mode: str
    peer: str  # the other AR (for the MN: the AR the CTAR went to)


@dataclass(frozen=True)
class ContextInstalled(Event):
    """nAR: contexts stored inactive; per-FPT install status."""

    statuses: tuple[StatusEntry, ...]


@dataclass(frozen=True)
class ContextActivated(Event):
    """nAR: token verified and contexts made live; per-FPT activation status and data."""

    statuses: tuple[StatusEntry, ...]


@dataclass(frozen=True)
class TransferCompleted(Event):
    role: str
    statuses: tuple[StatusEntry, ...] = ()
    acknowledged: bool = True  # MN: False when no CTAA was requested
    #: pAR: the CTDR came after the transfer had expired (within Config.late_ctdr_grace); the
    #: contexts were released all the same, and this supersedes the expiry's TransferFailed
    late: bool = False


@dataclass(frozen=True)
class TransferFailed(Event):
    role: str
    reason: str
    statuses: tuple[StatusEntry, ...] = ()


@dataclass(frozen=True)
class TokenRejected(Event):
    role: str
    source: str


@dataclass(frozen=True)
class BindingRejected(Event):
    """A CTAR (at the pAR or nAR) or CT-Req (at the pAR) whose token verified but whose binding
    to its source address and AR did not, or that carried none (departures only): a copy of the
    MN's CTAR sent from elsewhere."""

    role: str
    source: str


@dataclass(frozen=True)
class StaleTransfer(Event):
    """A PCTD, CTD, CT-Req, CTDR or CTC refused for its transfer identity or freshness
    (departures only): it belongs to a transfer that ended, was superseded, or is older than
    its lifetime, or it answers no request of ours."""

    role: str
    reason: str
    source: str


@dataclass(frozen=True)
class CtaaRejected(Event):
    """MN: a CTAA without a valid authenticator from the AR that holds the MN's context
    (departures only): dropped, nothing acted on."""

    source: str
    reason: str


@dataclass(frozen=True)
class CtReqLimited(Event):
    """nAR: a CTAR not forwarded because the CT-Req budget (``ct_request_rate``, all MNs
    together) is spent; the MN's retransmission tries again."""

    source: str


@dataclass(frozen=True)
class DuplicateIgnored(Event):
    sequence_number: int
    source: str


@dataclass(frozen=True)
class RateLimited(Event):
    source: str


@dataclass(frozen=True)
class RequestIgnored(Event):
    """A request the engine cannot serve now (another transfer for this MN, no key, no state)."""

    role: str
    reason: str
    source: str


@dataclass(frozen=True)
class Cancelled(Event):
    """pAR: a CTC arrived; nAR: the transfer was cancelled locally."""

    role: str
    source: str


@dataclass(frozen=True)
class CtaaReceived(Event):
    source: str
    statuses: tuple[StatusEntry, ...]


@dataclass(frozen=True)
class ReleaseDue(Event):
    """pAR: a transfer ended without success (CTDR S = 0, CTC, or expiry without CTDR) and its
    release hold (Config.release_hold) is over. The engine releases nothing itself here: the
    owner decides (it releases ``fpts`` if the MN is no longer attached to it). Not emitted when
    a late CTDR S = 1 released the contexts, or when the MN came back (new key, new transfer)."""

    role: str
    fpts: tuple[int, ...]
    reason: str


@dataclass(frozen=True)
class MessageDropped:
    """A message refused before it was decoded (size, octet rate, not from a peer), whose MN
    could not be named."""

    source: str
    transport: str
    reason: str


@dataclass(frozen=True)
class DecodeFailed:
    source: str
    transport: str
    reason: str


#: whatever ``next_event()`` hands out
AnyEvent = Event | MessageDropped | DecodeFailed
