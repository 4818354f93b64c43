"""The contracts between processes, each declared once: the control commands of every agent (the
runner's typed client and the agent's served commands are the same declaration) and the names of
the trace events the agents write and the analysis reads.

A command is a method of a client class marked with :func:`command`: its name is the wire name,
its keyword parameters the request's fields. The runner calls it (``mn.set_key(key=...)``); the
agent serves it with :func:`serve`, which finds the agent's method of the same name and refuses to
start if one is missing. Renaming a command is one edit here; a typo in a caller is a type error.
"""

from __future__ import annotations

import enum
import functools
import inspect
import json
import socket
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypedDict, TypeVar, cast

if TYPE_CHECKING:
    from nodes.agent import Agent

Reply = dict[str, Any]


class AgentError(RuntimeError):
    """A control command failed; the message goes back to the runner."""


class AgentClient:
    """The runner's side of an agent's control socket. The typed clients of
    :mod:`nodes.contracts` declare each agent's commands on top of it."""

    def __init__(self, path: str, timeout: float = 30.0, name: str | None = None) -> None:
        self.path = path
        self.name = name or path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        self._file = self.sock.makefile("rb")
        self._one_at_a_time = threading.Lock()  # a request and its reply are never interleaved

    def request(self, cmd: str, **arguments: Any) -> dict[str, Any]:
        """Send one command; its reply, or :class:`AgentError` naming the agent and the command
        (a refusal, a closed socket, a reply that is not JSON). Safe to call from several threads."""
        with self._one_at_a_time:
            return self._request(cmd, arguments)

    def _request(self, cmd: str, arguments: dict[str, Any]) -> dict[str, Any]:
        try:
            self.sock.sendall(json.dumps({"cmd": cmd, **arguments}).encode() + b"\n")
            line = self._file.readline()
            if not line:
                raise AgentError(f"{self.name}: {cmd}: the agent closed its control socket")
            reply = json.loads(line)
        except (OSError, ValueError) as error:
            raise AgentError(f"{self.name}: {cmd}: {type(error).__name__}: {error}") from None
        if not reply.get("ok"):
            raise AgentError(f"{self.name}: {cmd}: {reply.get('error')}")
        return reply

    def close(self) -> None:
        self._file.close()
        self.sock.close()


_Declaration = TypeVar("_Declaration", bound=Callable[..., Any])
_COMMAND = "__agent_command__"


def command(declaration: _Declaration) -> _Declaration:
    """Declares one control command: the client sends the method's name and keyword arguments;
    the declaration's body is never run."""
    name = declaration.__name__

    @functools.wraps(declaration)
    def send(self: AgentClient, **arguments: Any) -> Reply:
        return self.request(name, **arguments)

    setattr(send, _COMMAND, True)
    return cast(_Declaration, send)


def commands_of(contract: type) -> dict[str, inspect.Signature]:
    """Every command a client class declares (its own and inherited), with its signature as
    declared."""
    found = {}
    for klass in reversed(contract.__mro__):
        for name, value in vars(klass).items():
            if getattr(value, _COMMAND, False):
                found[name] = inspect.signature(inspect.unwrap(value))
    return found


class ContractError(TypeError):
    """An agent does not implement a command its contract declares, or not with its parameters."""


def parameters(signature: inspect.Signature) -> dict[str, bool]:
    """A signature's request fields (name -> has a default), ``**`` as ``"**"``; ``self`` left out."""
    fields = {}
    for parameter in signature.parameters.values():
        if parameter.name == "self":
            continue
        if parameter.kind is inspect.Parameter.VAR_KEYWORD:
            fields["**"] = True
        else:
            fields[parameter.name] = parameter.default is not inspect.Parameter.empty
    return fields


def serve(agent: Agent, implementation: object, contract: type) -> None:
    """Serve every command of ``contract`` with ``implementation``'s method of the same name and
    request fields; a missing or different method stops the agent before it is ready."""
    kind: Any = type(implementation)  # a class: hashable, whatever mypy infers of type(object)
    for name in _kept(kind, contract):
        agent.command(name, getattr(implementation, name))


@functools.cache
def _kept(implementation: type, contract: type) -> tuple[str, ...]:
    """The commands ``implementation`` serves of ``contract``, checked once per class (a process
    serving a hundred MNs checks its class once, not a hundred times)."""
    names = []
    for name, declared in commands_of(contract).items():
        if name == "ping":
            continue  # every agent's own
        handler = getattr(implementation, name, None)
        if handler is None:
            raise ContractError(f"{implementation.__name__} does not implement {contract.__name__}.{name}")
        signature = inspect.signature(handler)
        if parameters(signature) != parameters(declared):
            raise ContractError(f"{implementation.__name__}.{name}{signature} does not "
                                f"match {contract.__name__}.{name}{declared}")
        names.append(name)
    return tuple(names)


# -- the commands ---------------------------------------------------------------------------------
class ControlClient(AgentClient):
    """What every agent answers."""

    @command
    def ping(self) -> Reply: ...


class MnStatus(TypedDict):
    """The MN agent's answer to ``status``: where its handover stands."""

    ok: bool
    address: str
    bu_pending: bool
    engine: dict[str, int]
    cxtp_in_progress: bool
    transactions: int
    #: the last CXTP transaction's end: transaction, t_ns, result, reason, statuses
    outcome: dict[str, Any] | None
    triggers: int
    move_expected: bool
    mh_decode_errors: int
    #: the HA accepted the last Binding Update (a refused one is never taken as bound)
    bound: bool
    ba_status: int | None
    ba_refusals: int
    #: transactions abandoned because the MN attached again before they ended
    abandoned: int
    #: inputs or timers whose handler raised (traced; the agent went on)
    handler_failures: int
    #: Binding Acks refused for want of the MN-HA authentication
    ba_unauthenticated: int
    idle: bool


class MnControl(ControlClient):
    """The Mobile Node agent (:mod:`nodes.mn_agent`)."""

    @command
    def set_key(self, *, key: str) -> Reply:
        """The CXTP key shared with the current AR for the next transaction (hex)."""

    @command
    def predictive(self, *, par: str, nar: str) -> Reply:
        """Send the predictive CTAR to the pAR now."""

    @command
    def expect_move(self, *, interface: str, nar: str, par: str, new_address: str, cxtp: bool,
                    ipsec: bool) -> Reply:
        """What to do at the next attach on ``interface``, which the MN learns from its kernel."""

    @command
    def attached(self, *, nar: str, par: str, new_address: str, cxtp: bool, ipsec: bool,
                 trigger: str = "runner") -> Reply:
        """The runner's fall-back when the kernel's attach event did not come."""

    @command
    def retry_reactive(self, *, par: str, nar: str, previous: str) -> Reply:
        """A reactive transaction for the context the pAR still holds, after a failed transfer."""

    @command
    def provision(self, *, context: str) -> Reply:
        """Install an initial attach's SAs and policies (an encoded IPsec context, hex)."""

    @command
    def clear(self, *, addresses: list[str] | None = None) -> Reply:
        """Remove the MN's SAs and policies under each address and end any CXTP transaction."""

    @command
    def fresh_attach(self, *, address: str) -> Reply:
        """After a failed handover: take ``address`` and tell the HA."""

    @command
    def signalling_bypass(self, *, enable: bool) -> Reply:
        """Signalling outside any tunnel, and nothing else to the HA in clear."""

    def status(self) -> MnStatus:
        return cast(MnStatus, self.request("status"))

    @command
    def statuses(self, *, identities: list[str]) -> Reply:
        """``status`` of each MN this agent's process serves, by identity (many MNs, one question:
        ``{"statuses": {identity: status}}``)."""


# ``status`` has a typed answer: declared by hand, with the same wire name
setattr(MnControl.status, _COMMAND, True)


class ArControl(ControlClient):
    """An access router's agent (:mod:`nodes.ar_agent`)."""

    @command
    def set_mn_key(self, *, mn: str, key: str) -> Reply:
        """The CXTP key of the MN at ``mn`` for its next transaction (hex)."""

    @command
    def trigger_predictive(self, *, mn: str, nar: str) -> Reply:
        """Network-initiated predictive transfer of the context of the MN at ``mn`` to ``nar``."""

    @command
    def provision(self, *, context: str) -> Reply:
        """Install an IPsec context (hex): an MN's initial SAs or the AR-AR protection."""

    @command
    def access_policy(self, *, prefix: str, enable: bool) -> Reply:
        """The operator's policy on the access prefix: nothing forwarded in clear."""

    @command
    def clear_mn(self, *, mn: str) -> Reply:
        """Forget everything of the MN at ``mn``: SAs, policies, transfers, keys."""

    @command
    def counters(self) -> Reply:
        """The engine's and the transports' counters (refusals, decode errors, ...)."""

    @command
    def configure(self, **timers: float) -> Reply:
        """The CXTP timers, derived from the scenario's links."""

    @command
    def fault(self, *, message: str, action: str, count: int = 1, delay_ms: float = 0.0) -> Reply:
        """Drop or delay this AR's next outgoing messages of a type (fault-injection tests)."""

    @command
    def install_fault(self, *, after: int, action: str) -> Reply:
        """Fail, or die, after ``after`` kernel writes of the next install (fault-injection tests)."""


class HaControl(ControlClient):
    """The home agent's agent (:mod:`nodes.ha_agent`), with both probe ends."""

    @command
    def binding(self, *, identity: str | None = None) -> Reply:
        """The care-of address of MN ``identity`` (None: the first MN) in the binding cache, and the
        decode errors so far."""

    @command
    def lateness(self, *, start_ns: int, end_ns: int, identity: str | None = None) -> Reply:
        """The p99 send lateness of each probe end of MN ``identity`` (None: the first MN) between
        two instants (ms, None if no probe)."""

    @command
    def arrivals(self, *, since_ns: int, identity: str | None = None) -> Reply:
        """Per probe end of MN ``identity`` (None: the first MN), the probes it received since
        ``since_ns``, per interface of its namespace: which router's path the traffic takes now."""

    @command
    def pace_probes(self, *, identities: list[str], every: int) -> Reply:
        """The listed MNs' probes in one slot of ``every`` of their sender from now on (0: none):
        many MNs' probes within the emulator's budget."""

    @command
    def checkpoint(self) -> Reply:
        """Append the probe records since the last checkpoint to disk, so that a killed agent's
        successor continues them."""

    @command
    def tcp_reconnect(self) -> Reply:
        """A new TCP connection from the home address in place of the one running (after a change
        of the MN's security state); ``connections``: how many there have been."""


# -- the trace events -------------------------------------------------------------------------------
class TraceEvent(str, enum.Enum):
    """The ``event`` of a trace line. The analysis reads the protocol ones; the rest are evidence
    for a person reading a trace (failures, refusals, lifecycle)."""

    # lifecycle and control
    READY = "ready"
    STOPPED = "stopped"
    COMMAND_FAILED = "command_failed"
    CONTROL_CLIENT_LOST = "control_client_lost"
    DEFERRED_FAILED = "deferred_failed"
    #: a handler of an input or a timer raised: traced and counted, the agent goes on
    HANDLER_FAILED = "handler_failed"
    # CXTP messages and the runtime around the engine
    CXTP_SENT = "cxtp_sent"
    CXTP_RECEIVED = "cxtp_received"
    CXTP_SEND_FAILED = "cxtp_send_failed"
    CXTP_TRANSPORT_ERROR = "cxtp_transport_error"
    CXTP_DROPPED_BY_TRANSPORT = "cxtp_dropped_by_transport"
    CXTP_FAULT = "cxtp_fault"
    CXTP_TIMER_ERROR = "cxtp_timer_error"
    #: an event the engine's state table does not allow here (counted and handled, never fatal)
    CXTP_REFUSED_EVENT = "cxtp_refused_event"
    # the MN's move and Mobile IPv6
    ATTACHED = "attached"
    ROUTE_EVENTS_ERROR = "route_events_error"
    BU_SENT = "bu_sent"
    BU_SEND_FAILED = "bu_send_failed"
    BU_RECEIVED = "bu_received"
    BA_SENT = "ba_sent"
    BA_RECEIVED = "ba_received"
    #: a Binding Ack (MN) or Update (HA) without the MN-HA authentication, or replayed: refused
    BA_REFUSED = "ba_refused"
    BU_REFUSED = "bu_refused"
    MH_DECODE_ERROR = "mh_decode_error"
    HOME_PATH_MOVED = "home_path_moved"
    HOME_PATH_FAILED = "home_path_failed"
    TCP_FLOW_FAILED = "tcp_flow_failed"
    # IPsec context handling
    IPSEC_MOVED = "ipsec_moved"
    IPSEC_COLLECTED = "ipsec_collected"
    IPSEC_ACTIVATED = "ipsec_activated"
    IPSEC_RELEASED = "ipsec_released"
    IPSEC_INSTALL_FAILED = "ipsec_install_failed"
    IPSEC_INSTALL_CAREFUL = "ipsec_install_careful"
    IPSEC_PREPARE_SKIPPED = "ipsec_prepare_skipped"
    IPSEC_PREPARED_REFUSED = "ipsec_prepared_refused"
    IPSEC_LEFTOVER_REPLACED = "ipsec_leftover_replaced"
    IPSEC_JOURNAL_RECOVERED = "ipsec_journal_recovered"
    IPSEC_SPI_CHANGED = "ipsec_spi_changed"
    IPSEC_MOVE_FAILED = "ipsec_move_failed"
    #: an SA too near the end of its sequence space to be moved with the margin: not transferred
    IPSEC_NOT_TRANSFERABLE = "ipsec_not_transferable"
    RELEASE_SKIPPED = "release_skipped"

    def __str__(self) -> str:
        return self.value


def engine_event(event: object) -> str:
    """The trace event of a CXTP engine event (:mod:`cxtp.events`): ``cxtp_`` and its class name,
    so that a new engine event is traced without a declaration here."""
    return "cxtp_" + type(event).__name__
