"""The Mobile Node agent: CXTP's MN role, its own IPsec state, and Mobile IPv6 binding updates.

At the attach (learnt from the kernel: the route event of the default route through the new AR,
for the move the runner announced with ``expect_move``; ``attached`` is the runner's fall-back
when no event came) the MN, depending on the method:

* re-homes its own SAs and policies to (MN_n, nAR) through XFRM migrate (Tables I and III);
* sends the CTAR to the nAR (RFC 4067 §2.5.1: always, also after a predictive transfer);
* routes what leaves from its home address through the MN-HA tunnel of its new care-of address
  (:mod:`nodes.home_path`);
* sends a Binding Update to the HA, retransmitted from 1 s on until the Binding Ack arrives.

``retry_reactive`` is the fall-back the runner asks for after a failed transfer.

``predictive`` sends the CTAR to the pAR before the move (mobile-initiated predictive).
"""

from __future__ import annotations

import argparse
import errno
import json
import random
import socket
import struct
import sys
import time

from pyroute2.netlink.rtnl import RTM_NEWROUTE, RTMGRP_IPV6_ROUTE
from pyroute2.netlink.rtnl.rtmsg import rtmsg

from cxtp import Config
from cxtp.engine import TRANSPORT_ICMP, MobileNode
from cxtp.errors import CxtpError
from cxtp.events import TransferCompleted, TransferFailed
from cxtp.registry import Registry
from cxtp.state import MnState
from ipsec import IpsecContext, IpsecError, Xfrm, XfrmError, capture_context, install_context, remove_context
from nodes import mn_context, mobility, operator_policy
from nodes.agent import Agent, main_guard
from nodes.contracts import AgentError, MnControl, TraceEvent, serve
from nodes.cxtp_node import CxtpRuntime
from nodes.cxtp_transport import IcmpTransport
from nodes.home_path import HomePathError, MnHomePath

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
    def __init__(self, agent: Agent, address: str, ha: str, identity: str, seed: int,
                 mobility_key: bytes | None = None, home_table: int | None = None,
                 home_address: str | None = None, served: dict[str, MobileNodeAgent] | None = None,
                 home_tunnels: dict[str, str] | None = None) -> None:
        self.agent = agent
        self.home_address = home_address
        #: the home address's tunnels (None: no home address on this testbed)
        self.home = MnHomePath(home_table, tunnels=home_tunnels) if home_table is not None else None
        self.address = address
        self.ha = ha
        self.identity = identity
        #: the MN-HA key of RFC 4285 (Binding Updates and Acks authenticated); None: unauthenticated
        self.mobility_key = mobility_key
        self.ba_unauthenticated = 0
        self._bu_timestamps: set[int] = set()  # those of the pending BU's transmissions
        self._bu_transmissions = 0  # BUs sent: the retransmission timer of the last one is the live one
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
        #: the status of the last Binding Ack that answered the pending BU (None: none yet)
        self.ba_status: int | None = None
        self.ba_refusals = 0
        #: transactions abandoned because the MN attached again before they ended
        self.abandoned = 0
        self._prepared_bu: tuple[int, bytes] | None = None  # the next BU, encoded before the attach
        self.bypass: list = []
        self.mh_decode_errors = 0
        #: every MN this process serves, by identity (shared by the MNs one process hosts)
        self.served = served if served is not None else {}
        self.served[identity] = self
        serve(agent, self, MnControl)

    def _on_event(self, event) -> None:
        if isinstance(event, (TransferCompleted, TransferFailed)):
            self._end_transaction("completed" if isinstance(event, TransferCompleted) else "failed",
                                  getattr(event, "reason", ""),
                                  [(entry.fpt, entry.status) for entry in event.statuses])

    def _end_transaction(self, result: str, reason: str, statuses: list | None = None) -> None:
        """The last CXTP transaction's end, for the runner: it decides on the fall-back."""
        self.outcome = {"transaction": self.transactions, "t_ns": time.monotonic_ns(), "result": result,
                        "reason": reason, "statuses": statuses or []}

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
        self._prepared_bu = (sequence, self._encode_bu(sequence, care_of=new_address))
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
            self._start_transaction(nar, par, attached_ns / 1e9, new_address)
        # The engine names the MN by its previous address; from now on that is the new one
        # (the engine also does this itself when a transfer completes).
        self.engine.moved_to(new_address)
        if ipsec:
            try:
                moved = self.handler.move(previous, new_address, par, nar)
                self.agent.trace(TraceEvent.IPSEC_MOVED, sas=moved)
            except IpsecError as error:  # SAs a second move left half moved: the fall-back's
                self.agent.trace(TraceEvent.IPSEC_MOVE_FAILED, error=str(error))
                self._end_transaction("failed", f"the MN's own SAs could not be moved: {error}")
        self.address = new_address
        self._use_home_path(new_address)
        self._send_bu(first=True)
        if ipsec:
            self.handler.finish_move(self.agent.defer)  # the old SAs and policies, once idle
        return {}

    def _use_home_path(self, care_of: str) -> None:
        """The home address leaves through the tunnel of ``care_of`` from now on."""
        if self.home is None:
            return
        try:
            if self.home.use(care_of):
                self.agent.trace(TraceEvent.HOME_PATH_MOVED, care_of=care_of, tunnel=self.home.current)
        except HomePathError as error:  # the home address is cut off: the traffic check says so
            self.agent.trace(TraceEvent.HOME_PATH_FAILED, care_of=care_of, error=str(error))

    def _start_transaction(self, nar: str, par: str, now: float, new_address: str) -> None:
        """The CTAR to the nAR for this attach. An attach that comes before the last transaction
        ended (the MN moved on, or back, before its CTAA) abandons that one first: its outcome is
        a failure, counted, and the runner's fall-back takes it from there. An event the engine
        refuses (no fresh key for a second move) ends this transaction as failed, never the agent."""
        if self.engine.state is MnState.ATTACHED:
            self.abandoned += 1
            self.engine.cancel(now)  # its outcome: the transaction before this one, failed
        self.transactions += 1
        try:
            self.engine.attached(nar, par, now, new_address=new_address)
        except CxtpError as error:
            self.agent.trace(TraceEvent.CXTP_REFUSED_EVENT, error=str(error), during="attach")
            self._end_transaction("failed", f"the attach could not start a transfer: {error}")
        self.runtime.pump()  # the CTAR leaves first: it is on the critical path

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
        """The initial attach's SAs and policies (static SAs, paper §VI-A). Replaces what an
        earlier run of this agent left, so that a restarted agent can provision again."""
        installation = install_context(self.xfrm, IpsecContext.decode(bytes.fromhex(context)), replace_existing=True)
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
        self._use_home_path(address)
        self._send_bu(first=True)
        return {}

    def signalling_bypass(self, enable: bool) -> dict:
        """ICMPv6 and Mobile IPv6 signalling outside any tunnel (whatever installs the tunnel), and
        nothing else to the HA in clear: between the attach and the moment its SAs serve the new
        address, the protected flow is blocked on the MN instead of leaving it unencrypted."""
        # Replaced, not added, and removed whoever added them: a killed agent leaves its policies in
        # the kernel, and its successor must take them over rather than fail on them (EEXIST).
        if enable:
            self.bypass = list(operator_policy.mn_bypass_policies(self.ha, self.home_address))
            for policy in self.bypass:
                self.xfrm.update_policy(policy)
        else:
            for policy in operator_policy.mn_bypass_policies(self.ha, self.home_address):
                try:
                    self.xfrm.delete_policy(policy.selector, policy.dir, policy.mark, policy.if_id)
                except XfrmError as error:
                    if error.errno != errno.ENOENT:
                        raise
            self.bypass = []
        return {"policies": len(self.bypass)}

    def statuses(self, identities: list[str]) -> dict:
        unknown = [identity for identity in identities if identity not in self.served]
        if unknown:
            raise AgentError(f"no MN {', '.join(unknown)} is served by this process")
        return {"statuses": {identity: self.served[identity].status() for identity in identities}}

    def status(self) -> dict:
        return {"address": self.address, "bu_pending": self.bu_pending is not None,
                "engine": dict(self.engine.counters), "cxtp_in_progress": self.engine.in_progress,
                "transactions": self.transactions, "outcome": self.outcome, "triggers": self.triggers,
                "move_expected": self.expected_move is not None,
                "mh_decode_errors": self.mh_decode_errors,
                "bound": self.bu_pending is None and self.ba_status == mobility.BA_STATUS_ACCEPTED,
                "ba_status": self.ba_status, "ba_refusals": self.ba_refusals, "abandoned": self.abandoned,
                "handler_failures": self.agent.handler_failures, "ba_unauthenticated": self.ba_unauthenticated,
                "idle": self.bu_pending is None and not self.engine.in_progress}

    # -- Mobile IPv6 --------------------------------------------------------------------------------
    def _send_bu(self, first: bool = False) -> None:
        if first:
            self.bu_sequence = (self.bu_sequence + 1) & 0xFFFF
            self.bu_pending = (self.bu_sequence, mobility.INITIAL_BINDACK_TIMEOUT)
            self.ba_status = None
        elif self.bu_pending is None:
            return
        sequence, timeout = self.bu_pending
        prepared, self._prepared_bu = self._prepared_bu, None
        if first:
            self._bu_timestamps = set()
        stamp = mobility.ntp_timestamp(time.time())
        self._bu_timestamps.add(stamp)
        if prepared and prepared[0] == sequence:  # encoded before the attach: stamped and signed now
            message = prepared[1] if self.mobility_key is None else \
                mobility.restamp(prepared[1], self.mobility_key, self.address, self.ha, stamp)
        else:
            message = self._encode_bu(sequence, timestamp=stamp)
        try:
            handed_over = time.monotonic_ns()  # before the send: see Agent.trace
            self.mh.sendto(message, (self.ha, 0))
            self.agent.trace(TraceEvent.BU_SENT, t_ns=handed_over, seq=sequence, source=self.address,
                             retransmission=not first, bytes=len(message))
        except OSError as error:
            self.agent.trace(TraceEvent.BU_SEND_FAILED, seq=sequence, error=str(error))
        self.bu_pending = (sequence, min(timeout * 2, mobility.MAX_BINDACK_TIMEOUT))
        self._bu_transmissions += 1
        # the defaults bind this transmission (mypy cannot type a lambda with them: python/mypy#12557)
        self.agent.call_at(time.monotonic() + timeout,
                           lambda s=sequence, n=self._bu_transmissions: self._bu_timeout(s, n))  # type: ignore[misc]

    def _encode_bu(self, sequence: int, care_of: str | None = None, timestamp: int | None = None) -> bytes:
        """The BU, authenticated for the address it will leave from (RFC 4285)."""
        update = mobility.BindingUpdate(sequence=sequence, identity=self.identity)
        if self.mobility_key is None:
            return update.encode()
        return update.encode(self.mobility_key, care_of or self.address, self.ha, timestamp)

    def _bu_timeout(self, sequence: int, transmission: int) -> None:
        """Retransmit, unless an Ack came or a later transmission took this one's place."""
        if self.bu_pending is not None and self.bu_pending[0] == sequence and transmission == self._bu_transmissions:
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
        message, source = received
        if isinstance(message, mobility.BindingAck):
            self._binding_ack(message, source)

    def _binding_ack(self, message: mobility.BindingAck, source: str) -> None:
        """RFC 6275 §11.7.3 with RFC 4285's options: only an Ack authenticated with the MN-HA key
        and carrying the timestamp of one of the pending BU's own transmissions is believed."""
        if self.bu_pending is None:
            return
        if self.mobility_key is not None and (
                not message.protection.verify(self.mobility_key, self.address, self.ha)
                or message.protection.timestamp not in self._bu_timestamps):
            self.ba_unauthenticated += 1  # not from the HA: believed in nothing, status 135 included
            self.agent.trace(TraceEvent.BA_REFUSED, seq=message.sequence, status=message.status, source=source)
            return
        pending = self.bu_pending[0]
        if message.status == mobility.BA_STATUS_SEQUENCE_OUT_OF_WINDOW:
            # RFC 6275 §11.7.3: the HA names the last sequence number it accepted; continue from
            # there (a restarted agent, or a BU the HA saw from elsewhere)
            self.ba_refusals += 1
            self.agent.trace(TraceEvent.BA_RECEIVED, seq=message.sequence, status=message.status, pending=pending)
            self.bu_sequence = message.sequence
            self._send_bu(first=True)
            return
        if message.sequence != pending:
            return
        if message.status == mobility.BA_STATUS_ID_MISMATCH:
            # RFC 4285 §6: the HA refused that transmission's timestamp (older than one it had
            # accepted, or off its clock: a transmission that waited in a queue longer than the
            # replay window). The BU itself is not refused: the MN sends it again with a fresh
            # timestamp, as its retransmission timer would, and its later transmissions still
            # stand; the binding waits for an Ack to one of them.
            self.ba_refusals += 1
            self.ba_status = message.status
            self._bu_timestamps.discard(message.protection.timestamp)
            self.agent.trace(TraceEvent.BA_RECEIVED, seq=message.sequence, status=message.status, pending=pending)
            if not any(stamp > (message.protection.timestamp or 0) for stamp in self._bu_timestamps):
                self._send_bu()
            return
        self.bu_pending = None
        self.ba_status = message.status
        if message.status != mobility.BA_STATUS_ACCEPTED:
            self.ba_refusals += 1  # refused: not bound; the runner sees it in ``status``
        self.agent.trace(TraceEvent.BA_RECEIVED, seq=message.sequence, status=message.status)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--control", required=True)
    parser.add_argument("--trace", required=True)
    parser.add_argument("--address", required=True, help="the MN's care-of address at start")
    parser.add_argument("--ha", required=True)
    parser.add_argument("--identity", required=True)
    parser.add_argument("--mobility-key", default=None, help="the MN-HA key (hex) of RFC 4285")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--home-table", type=int, default=None,
                        help="the routing table of what leaves from the home address (none: no home address)")
    parser.add_argument("--home-address", default=None, help="the MN's home address (RFC 6275)")
    parser.add_argument("--hosted", default=None,
                        help="a JSON file listing more MNs this process serves, each in its own namespace: "
                             "name, namespace (a path), control, trace, address, identity, mobility_key, "
                             "home_address, seed, home_tunnels (care-of address -> tunnel name)")
    arguments = parser.parse_args(argv)

    def run() -> None:
        agent = Agent("mn", arguments.control, arguments.trace)
        first = MobileNodeAgent(agent, arguments.address, arguments.ha, arguments.identity, arguments.seed,
                                bytes.fromhex(arguments.mobility_key) if arguments.mobility_key else None,
                                arguments.home_table, arguments.home_address)
        if arguments.hosted:
            started = time.monotonic()
            with open(arguments.hosted) as handle:
                hosted_mns = json.load(handle)
            for spec in hosted_mns:  # many MNs, one process (nodes.agent): each in its namespace
                hosted = agent.host(spec["name"], spec["control"], spec["trace"], spec["namespace"])
                with hosted.inside():
                    MobileNodeAgent(hosted, spec["address"], arguments.ha, spec["identity"], int(spec["seed"]),
                                    bytes.fromhex(spec["mobility_key"]) if spec.get("mobility_key") else None,
                                    arguments.home_table, spec["home_address"], served=first.served,
                                    home_tunnels=spec.get("home_tunnels"))
            print(f"hosting {len(hosted_mns)} more MNs took {time.monotonic() - started:.1f} s", flush=True)
        agent.run()

    return main_guard(run)


if __name__ == "__main__":
    sys.exit(main())
