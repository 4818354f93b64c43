"""The access-router agent: CXTP in the pAR and nAR roles, the IPsec context in the kernel.

One process per AR for the whole experiment. CXTP reaches MNs over raw ICMPv6 type 150 on the
access link and the other AR over SCTP port 5091 (or TCP, as the paper's prototype did). The
IPsec context is registered with the node's CXTP registry as :mod:`nodes.ar_context`'s handler.

Control commands (JSON lines, see :mod:`nodes.agent`): ``set_mn_key`` (the CXTP key shared with
an MN, distributed out of band: RFC 4067 §6.3 leaves its establishment open),
``trigger_predictive`` (the pAR's own trigger of a network-initiated transfer), ``provision`` and
``access_policy`` (static state at set-up), ``configure`` (engine timers from the scenario),
``clear_mn``, ``counters``, and the fault hooks of the fault tests, ``fault`` and ``install_fault``.
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import json
import random
import sys
import time
from typing import Any

from pyroute2 import IPRoute

from cxtp import Config
from cxtp.engine import TRANSPORT_AR, TRANSPORT_ICMP, AccessRouter
from cxtp.events import ReleaseDue
from cxtp.messages import normalize_address
from cxtp.registry import Registry
from ipsec import IpsecContext, Xfrm, XfrmError, capture_context, install_context, oseq_margin, remove_context
from nodes import ar_context, operator_policy, stations
from nodes.agent import Agent, main_guard
from nodes.contracts import ArControl, TraceEvent, serve
from nodes.cxtp_node import CxtpRuntime
from nodes.cxtp_transport import IcmpTransport, SctpTransport, TcpTransport, Transport
from nodes.install_fault import InstallFault

#: how long the set of known stations is reused before the neighbour table is read again
STATIONS_TTL_S = 1.0

#: The highest packet rate an MN's SA carries, as the sequence-number margin of a transfer assumes
#: (ipsec.oseq_margin): above any access link of the testbed (a 1 Gbit/s link carries under
#: 1.5 million of the smallest ESP packets a second) and far above what the guest forwards; a
#: transfer then uses 0.1% of a 32-bit space per second that the context can wait.
MAX_PACKET_RATE = 1_500_000.0

class PeerAddressTransport:
    """The AR-AR transport, reaching each peer AR at its address on the AR-AR link.

    The CXTP engines name ARs by the addresses MNs know (their access addresses, RFC 4067
    §2.5.1); between ARs CXTP runs between their AR-AR link addresses, where the ESP that
    protects it is set up (RFC 4067 §6.2). This is the neighbour table that CARD (RFC 4066) or
    configuration would give an AR.
    """

    def __init__(self, inner, peers: dict[str, str]) -> None:
        self.inner = inner
        self.peers = peers
        self._allowed = {normalize_address(address) for address in (*peers, *peers.values())}
        self._names = {normalize_address(link): normalize_address(access) for access, link in peers.items()}
        self._links = {access: link for link, access in self._names.items()}
        self.kind = inner.kind
        self.counters = inner.counters

    def send(self, data: bytes, destination: str) -> None:
        self.inner.send(data, self._links.get(normalize_address(destination), destination))

    def fileno(self) -> int:
        return self.inner.fileno()

    def recv(self):
        """Only configured peers speak CXTP to an AR: anything else is dropped and counted (the
        kernel already drops CXTP in clear; this also covers a host that has an SA for another
        purpose)."""
        received = self.inner.recv()
        if received is None:
            return None
        data, source = received
        source = normalize_address(source)
        if source not in self._allowed:
            self.counters["not_peer"] += 1
            return None
        # the engines know a peer AR by one name, the address MNs know it by
        return data, self._names.get(source, source)

    def close(self) -> None:
        self.inner.close()


class AccessRouterAgent:
    def __init__(self, agent: Agent, address: str, access_interface: str, ar_transport: str, seed: int,
                 link_address: str = "::", peers: dict[str, str] | None = None, state_dir: str | None = None,
                 config: dict | None = None, max_packet_rate: float = MAX_PACKET_RATE) -> None:
        self.agent = agent
        self.address = address
        self.max_packet_rate = max_packet_rate
        self.access_interface = access_interface
        self.xfrm = Xfrm()
        self.ipr = IPRoute()
        self.handler = ar_context.ArIpsecHandler(self.xfrm, address, agent.trace, state_dir, defer=agent.defer)
        peers = peers or {}
        self.engine = AccessRouter(address, Registry([self.handler]), Config(**(config or {})), random.Random(seed),
                                   peers=peers)
        ar_link = (SctpTransport(bind_address=link_address) if ar_transport == "sctp"
                   else TcpTransport(bind_address=link_address))
        self.ar_link = ar_link
        transports: dict[str, Transport] = {TRANSPORT_ICMP: IcmpTransport(interface=access_interface),
                                            TRANSPORT_AR: PeerAddressTransport(ar_link, peers)}
        self.transports = transports
        self.runtime = CxtpRuntime(agent, self.engine, transports, on_event=self._on_event)
        self._apply_lifetime()
        # a CTAR from a station associated on the access link is the MN's own: it never waits
        # behind a flood of CTARs from other sources (cxtp.AccessRouter.source_preference)
        self._stations: frozenset[str] = frozenset()
        self._stations_read_at: float | None = None
        self.engine.source_preference = self._known_station
        # CXTP with other ARs only under ESP, from the first moment (RFC 4067 §6.2); and nothing
        # forwarded that claims to be this AR's (it would leave in this AR's own SA)
        require_esp = (*operator_policy.cxtp_requires_esp(), *operator_policy.no_forwarding_as((link_address, address)))
        self._remove_policies(require_esp)
        for policy in require_esp:
            self.xfrm.add_policy(policy)
        self.static_policies: list = []
        serve(agent, self, ArControl)

    # -- events of the engine ------------------------------------------------------------------------
    def _on_event(self, event) -> None:
        if isinstance(event, ReleaseDue):
            # The hold of a transfer that did not complete is over. Its SAs go if the MN has left
            # this AR (its own port has no carrier: the station disassociated); an MN still
            # attached keeps its protection.
            if self.mn_attached(event.mn_previous_address):
                self.agent.trace(TraceEvent.RELEASE_SKIPPED, mn=event.mn_previous_address, reason="MN still attached")
            else:
                self.handler.release(event.mn_previous_address)

    def _known_station(self, mn: str, source: str) -> bool:
        """Whether a CTAR's source is a station this AR knows on its access link: the address of
        a neighbour entry its own configuration made (permanent or NOARP: the association), not
        one neighbour discovery learnt from a packet, which anyone on the link can send. The set
        is read from the kernel at most once a second, so a flood costs no netlink per CTAR."""
        now = time.monotonic()
        if self._stations_read_at is None or now - self._stations_read_at >= STATIONS_TTL_S:
            self._stations_read_at = now
            self._stations = self._read_stations()
        return source in self._stations

    def _read_stations(self) -> frozenset[str]:
        return frozenset(normalize_address(address) for address in stations.associated(self.ipr, self.access_interface))

    def mn_attached(self, mn: str) -> bool:
        """Whether the MN that had ``mn`` here is still associated: its own port's carrier, as an
        access point knows each of its stations (:mod:`nodes.stations`)."""
        return stations.attached(self.ipr, self.access_interface, mn)

    # -- control commands ----------------------------------------------------------------------------
    def set_mn_key(self, mn: str, key: str) -> dict:
        self.engine.set_mn_key(mn, bytes.fromhex(key))
        return {}

    def trigger_predictive(self, mn: str, nar: str) -> dict:
        self.engine.trigger_predictive(mn, nar, time.monotonic())
        self.runtime.pump()
        return {}

    def configure(self, **timers: float) -> dict:
        """Engine timers derived from the scenario (they depend on the network, not on this code)."""
        fields: dict[str, Any] = timers  # timer fields only: not every field of Config is a float
        self.engine.config = dataclasses.replace(self.engine.config, **fields)
        self._apply_lifetime()
        return {"config": dataclasses.asdict(self.engine.config)}

    def _apply_lifetime(self) -> None:
        if hasattr(self.ar_link, "set_lifetime"):  # SCTP: PR-SCTP lifetime = the transfer's limit
            self.ar_link.set_lifetime(int(self.engine.config.ct_max_transfer_time * 1000))
        # A context waits at most the handover time (predictive) for its activation, and its
        # transfer takes at most the transfer time: the old sender can send no longer than that
        # after the capture, at no more than the highest packet rate.
        config = self.engine.config
        self.handler.oseq_margin = oseq_margin(self.max_packet_rate,
                                               config.ct_max_handover_time + config.ct_max_transfer_time)

    def fault(self, message: str, action: str, count: int = 1, delay_ms: float = 0.0) -> dict:
        return self.runtime.inject_fault(message, action, count, delay_ms)

    def install_fault(self, after: int, action: str) -> dict:
        self.handler.install_fault = InstallFault(self.xfrm, after, action)
        return {}

    def provision(self, context: str) -> dict:
        """Install a context set up in advance (an MN's static SAs, the AR-AR SAs). Replaces what
        an earlier run of this agent installed, so that a restarted agent can provision again."""
        decoded = IpsecContext.decode(bytes.fromhex(context))
        remove_context(self.xfrm, decoded)
        installation = install_context(self.xfrm, decoded)
        self.handler.know_installed(installation.context)
        return {"sas": len(installation.context.sas)}

    def access_policy(self, prefix: str, enable: bool) -> dict:
        self._remove_policies([*self.static_policies, *operator_policy.access_policies(prefix)])
        self.static_policies = []
        if enable:
            for policy in operator_policy.access_policies(prefix):
                self.xfrm.add_policy(policy)
                self.static_policies.append(policy)
        return {"policies": len(self.static_policies)}

    def _remove_policies(self, policies) -> None:
        """Idempotent across agent restarts: static policies are removed before they are added."""
        for policy in policies:
            try:
                self.xfrm.delete_policy(policy.selector, policy.dir, policy.mark, policy.if_id)
            except XfrmError as error:
                if error.errno != errno.ENOENT:
                    raise

    def clear_mn(self, mn: str) -> dict:
        """Remove whatever the MN has here, in the kernel and in the engine (between methods, and to
        bring the testbed back to a clean state after a failed handover)."""
        context = capture_context(self.xfrm, mn)
        remove_context(self.xfrm, context)
        self.handler.forget(mn)
        # the MN's state here is superseded (a recovery, a new method): a PCTD or CTD of a
        # transfer that started before is never installed, however late it arrives
        self.engine.forget(mn, time.monotonic())
        return {"removed_sas": len(context.sas), "removed_policies": len(context.policies)}

    def counters(self) -> dict:
        """The engine's counters, and what each transport dropped before the engine saw it."""
        return {"engine": dict(self.engine.counters),
                **{kind: dict(transport.counters) for kind, transport in self.transports.items()}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--name", required=True)
    parser.add_argument("--control", required=True)
    parser.add_argument("--trace", required=True)
    parser.add_argument("--address", required=True, help="the AR's address on its access link")
    parser.add_argument("--access-interface", required=True)
    parser.add_argument("--ar-transport", choices=("sctp", "tcp"), default="sctp")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--link-address", default="::", help="the AR's address for CXTP with other ARs")
    parser.add_argument("--peer", action="append", default=[], metavar="ACCESS=LINK",
                        help="another AR: the address MNs know it by, and its AR-AR link address")
    parser.add_argument("--state-dir", default=None, help="the install journal (rolled back at start)")
    parser.add_argument("--config", default="{}", help="JSON object of cxtp.Config fields")
    parser.add_argument("--max-packet-rate", type=float, default=MAX_PACKET_RATE,
                        help="packets/s an MN's SA can carry at most: sizes the sequence-number margin")
    arguments = parser.parse_args(argv)
    peers = dict(item.split("=", 1) for item in arguments.peer)

    def run() -> None:
        agent = Agent(arguments.name, arguments.control, arguments.trace)
        AccessRouterAgent(agent, arguments.address, arguments.access_interface, arguments.ar_transport,
                          arguments.seed, arguments.link_address, peers, arguments.state_dir,
                          json.loads(arguments.config), arguments.max_packet_rate)
        agent.run()

    return main_guard(run)


if __name__ == "__main__":
    sys.exit(main())
