"""Run a CXTP engine inside an agent: sockets in, engine, datagrams and events out, timers.

The engines in :mod:`cxtp` never touch a socket or a clock; this is the one place where their
inputs (datagrams with their source, ``now``, timer expiry) are fed and their outputs (datagrams,
the next deadline, events) are acted on. Every message sent or received is traced with its type,
size and link, which is where the per-link signalling counts of a run come from.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping

from cxtp.engine import AccessRouter, Datagram, MobileNode
from cxtp.errors import CxtpError
from cxtp.events import AnyEvent
from nodes.agent import Agent
from nodes.contracts import TraceEvent, engine_event
from nodes.cxtp_transport import Transport

MESSAGE_NAMES = {1: "CTAR", 2: "CTAA", 3: "CTD", 4: "PCTD", 5: "CTDR", 6: "CTC", 7: "CT-Req"}


def message_name(data: bytes) -> str:
    return MESSAGE_NAMES.get(data[0] & 0x1F, "?") if data else "?"


@dataclasses.dataclass
class OutgoingFault:
    """A fault injected on this node's outgoing CXTP (tests and fault scenarios only): drop or hold
    back the next ``count`` messages of one type, as a lossy or slow network would."""

    message: str
    action: str  # "drop" or "delay"
    count: int = 1
    delay_ms: float = 0.0

    def __post_init__(self) -> None:
        if self.message not in MESSAGE_NAMES.values() or self.action not in ("drop", "delay"):
            raise ValueError(f"bad fault: {self}")


class CxtpRuntime:
    def __init__(self, agent: Agent, engine: AccessRouter | MobileNode, transports: Mapping[str, Transport],
                 on_event: Callable[[AnyEvent], None] | None = None) -> None:
        self.agent = agent
        self.engine = engine
        self.transports = transports
        self.on_event = on_event
        self.faults: list[OutgoingFault] = []
        self._armed_deadline: float | None = None
        for transport in transports.values():
            # the default binds this transport (mypy cannot type a lambda with one: python/mypy#12557)
            agent.add_reader(transport, lambda transport=transport: self._readable(transport))  # type: ignore[misc]

    def _readable(self, transport: Transport) -> None:
        try:
            received = transport.recv()
        except OSError as error:
            self.agent.trace(TraceEvent.CXTP_TRANSPORT_ERROR, link=transport.kind, error=str(error))
            return
        if received is None:
            self.agent.trace(TraceEvent.CXTP_DROPPED_BY_TRANSPORT, link=transport.kind,
                             counters=dict(getattr(transport, "counters", {})))
            return
        data, source = received
        # one clock read for the trace and the engine: in the guest each read is a system call
        received_ns = time.monotonic_ns()
        self.agent.trace(TraceEvent.CXTP_RECEIVED, t_ns=received_ns, type=message_name(data), bytes=len(data),
                         link=transport.kind, source=source)
        self.engine.receive(data, source, transport.kind, received_ns / 1e9)
        self.pump()

    def _fault_for(self, name: str) -> OutgoingFault | None:
        for fault in self.faults:
            if fault.message == name and fault.count > 0:
                fault.count -= 1
                return fault
        return None

    def _send(self, datagram: Datagram) -> None:
        name = message_name(datagram.data)
        try:
            handed_over = time.monotonic_ns()  # before the send: see Agent.trace
            self.transports[datagram.transport].send(datagram.data, datagram.destination)
            self.agent.trace(TraceEvent.CXTP_SENT, t_ns=handed_over, type=name, bytes=len(datagram.data),
                             link=datagram.transport, destination=datagram.destination)
        except OSError as error:
            self.agent.trace(TraceEvent.CXTP_SEND_FAILED, type=name, link=datagram.transport,
                             destination=datagram.destination, error=str(error))

    def pump(self) -> None:
        """Send what the engine queued, report its events, arm its next timer."""
        for datagram in list(self.engine.datagrams_to_send()):
            fault = self._fault_for(message_name(datagram.data)) if self.faults else None
            if fault is None:
                self._send(datagram)
                continue
            self.agent.trace(TraceEvent.CXTP_FAULT, type=fault.message, action=fault.action, delay_ms=fault.delay_ms)
            if fault.action == "delay":
                self.agent.call_at(time.monotonic() + fault.delay_ms / 1000,
                                   lambda d=datagram: self._send(d))  # type: ignore[misc]  # python/mypy#12557
        reported_ns = None  # the events of one pass share a stamp: one clock read, not one each
        while (event := self.engine.next_event()) is not None:
            reported_ns = reported_ns or time.monotonic_ns()
            fields = dataclasses.asdict(event) if dataclasses.is_dataclass(event) else {"repr": repr(event)}
            self.agent.trace(engine_event(event), t_ns=reported_ns, **fields)
            if self.on_event is not None:
                self.on_event(event)
        deadline = self.engine.get_timer()
        if deadline is not None and deadline != self._armed_deadline:
            self._armed_deadline = deadline
            self.agent.call_at(deadline, self._timer)

    def _timer(self) -> None:
        self._armed_deadline = None
        try:
            self.engine.handle_timer(time.monotonic())
        except CxtpError as error:
            self.agent.trace(TraceEvent.CXTP_TIMER_ERROR, error=str(error))
        self.pump()

    def inject_fault(self, message: str, action: str, count: int = 1, delay_ms: float = 0.0) -> dict:
        """Control command ``fault``: see :class:`OutgoingFault`."""
        self.faults.append(OutgoingFault(message, action, int(count), float(delay_ms)))
        return {"faults": len(self.faults)}


__all__ = ["CxtpRuntime", "OutgoingFault", "message_name"]
