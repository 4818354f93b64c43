"""The Mobile Node agent: CXTP's MN role, its own IPsec state, and Mobile IPv6 binding updates.

At the attach (learnt from the kernel: the route event of the default route through the new AR,
for the move the runner announced with ``expect_move``; ``attached`` is the runner's fall-back
when no event came) the MN, depending on the method:

* re-homes its own SAs and policies to (MN_n, nAR) through XFRM migrate (Tables I and III);
* sends the CTAR to the nAR (RFC 4067 §2.5.1: always, also after a predictive transfer);
* sends a Binding Update to the HA, retransmitted from 1 s on until the Binding Ack arrives.

``retry_reactive`` is the fall-back the runner asks for after a failed transfer.

``predictive`` sends the CTAR to the pAR before the move (mobile-initiated predictive).
"""

from __future__ import annotations

import argparse
import random
import socket
import struct
import sys
import time

from pyroute2.netlink.rtnl import RTM_NEWROUTE, RTMGRP_IPV6_ROUTE
from pyroute2.netlink.rtnl.rtmsg import rtmsg

from cxtp import Config
from cxtp.engine import TRANSPORT_ICMP, MobileNode
from cxtp.events import TransferCompleted, TransferFailed
from cxtp.registry import Registry
from ipsec import IpsecContext, Xfrm, capture_context, install_context, remove_context
from nodes import mn_context, mobility, operator_policy
from nodes.agent import Agent, main_guard
from nodes.contracts import MnControl, TraceEvent, serve
from nodes.cxtp_node import CxtpRuntime
from nodes.cxtp_transport import IcmpTransport

NETLINK_ROUTE = 0
_NLMSGHDR = struct.Struct("=IHHII")
_RTMSG_HEAD = struct.Struct("=BB")  # rtm_family, rtm_dst_len


def _default_routes(data: bytes):
    """The IPv6 default routes added in one datagram of route events, decoded by pyroute2; the
    rest (the attach's address, prefix and neighbour routes) is skipped on its header alone, as
    decoding each costs more than the MN's whole re-homing."""
    offset = 0
    while offset + _NLMSGHDR.size + _RTMSG_HEAD.size <= len(data):
        length, kind = _NLMSGHDR.unpack_from(data, offset)[:2]
        if length < _NLMSGHDR.size:
            return
        family, dst_len = _RTMSG_HEAD.unpack_from(data, offset + _NLMSGHDR.size)
        if kind == RTM_NEWROUTE and family == socket.AF_INET6 and dst_len == 0:
            message = rtmsg(data[offset:offset + length])
            message.decode()
            yield message
        offset += (length + 3) & ~3


class MobileNodeAgent:
    def __init__(self, agent: Agent, address: str, ha: str, identity: str, seed: int) -> None:
        self.agent = agent
        self.address = address
        self.ha = ha
        self.identity = identity
        self.rng = random.Random(seed)
        self.xfrm = Xfrm()
        self.handler = mn_context.MnIpsecHandler(self.xfrm, agent.trace)
        self.registry = Registry([self.handler])
        self.engine = MobileNode(address, self.registry, Config(), random.Random(seed + 1))
        self.runtime = CxtpRuntime(agent, self.engine, {TRANSPORT_ICMP: IcmpTransport()}, on_event=self._on_event)
        # The last CXTP transaction's end, for the runner: it decides on the fall-back.
        self.transactions = 0
        self.outcome: dict | None = None
        self.mh = mobility.mobility_socket()
        agent.add_reader(self.mh, self._mh_readable)
        # The link-layer trigger, as a real host gets it: the kernel's route events. The attach
        # ends with the default route through the new AR; that event starts the MN's work.
        self.route_events = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE)
        self.route_events.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        self.route_events.bind((0, RTMGRP_IPV6_ROUTE))
        self.route_events.setblocking(False)
        agent.add_reader(self.route_events, self._route_event)
        self.expected_move: dict | None = None
        self.triggers = 0
        self.bu_sequence = self.rng.randrange(1 << 16)
        self.bu_pending: tuple[int, float] | None = None  # (sequence, current timeout)
        self._prepared_bu: tuple[int, bytes] | None = None  # the next BU, encoded before the attach
        self.bypass: list = []
        self.mh_decode_errors = 0
        serve(agent, self, MnControl)

    def _on_event(self, event) -> None:
        if isinstance(event, (TransferCompleted, TransferFailed)):
            self.outcome = {"transaction": self.transactions, "t_ns": time.monotonic_ns(),
                            "result": "completed" if isinstance(event, TransferCompleted) else "failed",
                            "reason": getattr(event, "reason", ""),
                            "statuses": [(entry.fpt, entry.status) for entry in event.statuses]}

    # -- commands ----------------------------------------------------------------------------------
    def set_key(self, key: str) -> dict:
        self.engine.set_key(bytes.fromhex(key))
        return {}

    def predictive(self, par: str, nar: str) -> dict:
        self.engine.request_predictive(par, nar, time.monotonic())
        self.runtime.pump()
        return {}

    def expect_move(self, interface: str, nar: str, par: str, new_address: str, cxtp: bool, ipsec: bool) -> dict:
        """What to do at the next attach on ``interface`` (the scenario's method, known to the MN as
        its configuration is): the attach itself is learnt from the kernel, not from the runner."""
        self.expected_move = {"ifindex": socket.if_nametoindex(interface), "nar": nar, "par": par,
                              "new_address": new_address, "cxtp": cxtp, "ipsec": ipsec}
        prepared = ipsec and self.handler.prepare_move(self.address, new_address, par, nar)
        sequence = (self.bu_sequence + 1) & 0xFFFF
        self._prepared_bu = (sequence, self._encode_bu(sequence))
        return {"prepared": prepared}

    def _route_event(self) -> None:
        while True:
            try:
                data = self.route_events.recv(1 << 16)
            except BlockingIOError:
                return
            except OSError as error:  # ENOBUFS: events were lost; the runner's fall-back covers it
                self.agent.trace(TraceEvent.ROUTE_EVENTS_ERROR, error=str(error))
                return
            move = self.expected_move
            if move is None:
                continue
            for message in _default_routes(data):
                if message.get_attr("RTA_OIF") == move["ifindex"]:
                    self.expected_move = None
                    self.triggers += 1
                    self.attached(move["nar"], move["par"], move["new_address"], move["cxtp"], move["ipsec"],
                                  trigger="kernel")
                    break

    def attached(self, nar: str, par: str, new_address: str, cxtp: bool, ipsec: bool,
                 trigger: str = "runner") -> dict:
        previous = self.address
        self.expected_move = None
        attached_ns = time.monotonic_ns()  # one clock read (a system call in the guest) for both
        self.agent.trace(TraceEvent.ATTACHED, t_ns=attached_ns, nar=nar, par=par, previous=previous, new=new_address,
                         trigger=trigger)
        if cxtp:
            self.transactions += 1
            self.engine.attached(nar, par, attached_ns / 1e9, new_address=new_address)
            self.runtime.pump()  # the CTAR leaves first: it is on the critical path
        # The engine names the MN by its previous address; from now on that is the new one
        # (the engine also does this itself when a transfer completes).
        self.engine.moved_to(new_address)
        if ipsec:
            moved = self.handler.move(previous, new_address, par, nar)
            self.agent.trace(TraceEvent.IPSEC_MOVED, sas=moved)
        self.address = new_address
        self._send_bu(first=True)
        if ipsec:
            self.handler.finish_move(self.agent.defer)  # the old SAs and policies, once idle
        return {}

    def retry_reactive(self, par: str, nar: str, previous: str) -> dict:
        """The fall-back after a failed transfer: a new reactive transaction (with the fresh key the
        runner gave) for the context the pAR still holds under the MN's previous address. The MN's
        own SAs already serve its new address."""
        self.transactions += 1
        self.engine.moved_to(previous)
        self.engine.attached(nar, par, time.monotonic(), new_address=self.address)
        self.runtime.pump()
        return {"transaction": self.transactions}

    def provision(self, context: str) -> dict:
        """The initial attach's SAs and policies (static SAs, paper §VI-A)."""
        installation = install_context(self.xfrm, IpsecContext.decode(bytes.fromhex(context)))
        self.handler.current_ar = None
        self.handler.know(installation.context)
        return {"sas": len(installation.context.sas)}

    def clear(self, addresses: list[str] | None = None) -> dict:
        """Remove the MN's SAs and policies under each of ``addresses`` (its current one by default)
        and end any CXTP transaction: a clean slate between methods, or after a failed handover."""
        removed = 0
        for address in addresses or [self.address]:
            context = capture_context(self.xfrm, address)
            remove_context(self.xfrm, context)
            removed += len(context.sas)
        self.handler.know(None)
        if self.engine.in_progress:
            self.engine.cancel(time.monotonic())
            self.runtime.pump()
        return {"removed_sas": removed}

    def fresh_attach(self, address: str) -> dict:
        """After a failed handover: the MN is where the link layer put it, with nothing of its old
        state; it takes ``address`` and tells the HA (the security state comes from the runner)."""
        self.address = address
        self.engine.moved_to(address)
        self.handler.current_ar = None
        self._send_bu(first=True)
        return {}

    def signalling_bypass(self, enable: bool) -> dict:
        """ICMPv6 and Mobile IPv6 signalling outside any tunnel (whatever installs the tunnel), and
        nothing else to the HA in clear: between the attach and the moment its SAs serve the new
        address, the protected flow is blocked on the MN instead of leaving it unencrypted."""
        if enable and not self.bypass:
            self.bypass = list(operator_policy.mn_bypass_policies(self.ha))
            for policy in self.bypass:
                self.xfrm.add_policy(policy)
        elif not enable:
            for policy in self.bypass:
                self.xfrm.delete_policy(policy.selector, policy.dir, policy.mark, policy.if_id)
            self.bypass = []
        return {"policies": len(self.bypass)}

    def status(self) -> dict:
        return {"address": self.address, "bu_pending": self.bu_pending is not None,
                "engine": dict(self.engine.counters), "cxtp_in_progress": self.engine.in_progress,
                "transactions": self.transactions, "outcome": self.outcome, "triggers": self.triggers,
                "move_expected": self.expected_move is not None,
                "mh_decode_errors": self.mh_decode_errors,
                "idle": self.bu_pending is None and not self.engine.in_progress}

    # -- Mobile IPv6 --------------------------------------------------------------------------------
    def _send_bu(self, first: bool = False) -> None:
        if first:
            self.bu_sequence = (self.bu_sequence + 1) & 0xFFFF
            self.bu_pending = (self.bu_sequence, mobility.INITIAL_BINDACK_TIMEOUT)
        elif self.bu_pending is None:
            return
        sequence, timeout = self.bu_pending
        prepared, self._prepared_bu = self._prepared_bu, None
        message = prepared[1] if prepared and prepared[0] == sequence else self._encode_bu(sequence)
        try:
            handed_over = time.monotonic_ns()  # before the send: see Agent.trace
            self.mh.sendto(message, (self.ha, 0))
            self.agent.trace(TraceEvent.BU_SENT, t_ns=handed_over, seq=sequence, source=self.address,
                             retransmission=not first, bytes=len(message))
        except OSError as error:
            self.agent.trace(TraceEvent.BU_SEND_FAILED, seq=sequence, error=str(error))
        self.bu_pending = (sequence, min(timeout * 2, mobility.MAX_BINDACK_TIMEOUT))
        # the default binds this BU's sequence (mypy cannot type a lambda with one: python/mypy#12557)
        self.agent.call_at(time.monotonic() + timeout, lambda s=sequence: self._bu_timeout(s))  # type: ignore[misc]

    def _encode_bu(self, sequence: int) -> bytes:
        return mobility.BindingUpdate(sequence=sequence, identity=self.identity).encode()

    def _bu_timeout(self, sequence: int) -> None:
        if self.bu_pending is not None and self.bu_pending[0] == sequence:
            self._send_bu()

    def _mh_readable(self) -> None:
        try:
            received = mobility.receive(self.mh)
        except mobility.MobilityDecodeError as error:
            self.mh_decode_errors += 1
            self.agent.trace(TraceEvent.MH_DECODE_ERROR, source=error.source, error=str(error))
            return
        if received is None:
            return
        message, _source = received
        if isinstance(message, mobility.BindingAck) and self.bu_pending and message.sequence == self.bu_pending[0]:
            self.bu_pending = None
            self.agent.trace(TraceEvent.BA_RECEIVED, seq=message.sequence, status=message.status)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--control", required=True)
    parser.add_argument("--trace", required=True)
    parser.add_argument("--address", required=True, help="the MN's care-of address at start")
    parser.add_argument("--ha", required=True)
    parser.add_argument("--identity", required=True)
    parser.add_argument("--seed", type=int, default=1)
    arguments = parser.parse_args(argv)

    def run() -> None:
        agent = Agent("mn", arguments.control, arguments.trace)
        MobileNodeAgent(agent, arguments.address, arguments.ha, arguments.identity, arguments.seed)
        agent.run()

    return main_guard(run)


if __name__ == "__main__":
    sys.exit(main())
