"""The access-router agent: CXTP in the pAR and nAR roles, the IPsec context in the kernel.

One process per AR for the whole experiment. CXTP reaches MNs over raw ICMPv6 type 150 on the
access link and the other AR over SCTP port 5091 (or TCP, as the paper's prototype did). The
IPsec context is registered with the node's CXTP registry by :mod:`nodes.ipsec_handler`.

Control commands (JSON lines, see :mod:`nodes.agent`): ``set_mn_key`` (the CXTP key shared with
an MN, distributed out of band: RFC 4067 §6.3 leaves its establishment open),
``trigger_predictive`` / ``trigger_reactive`` (network-initiated transfers), ``provision`` and
``access_policy`` (static state at set-up), ``clear_mn``, ``counters``, ``xfrm_state``.
"""

from __future__ import annotations

import argparse
import random
import sys
import time

from cxtp import Config
from cxtp.engine import TRANSPORT_AR, TRANSPORT_ICMP, AccessRouter
from cxtp.registry import Registry
from ipsec import IpsecContext, Xfrm, install_context, remove_context
from nodes import ipsec_handler
from nodes.agent import Agent, main_guard
from nodes.cxtp_node import CxtpRuntime
from nodes.cxtp_transport import IcmpTransport, SctpTransport, TcpTransport


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
        self.kind = inner.kind
        self.counters = inner.counters

    def send(self, data: bytes, destination: str) -> None:
        self.inner.send(data, self.peers.get(destination, destination))

    def fileno(self) -> int:
        return self.inner.fileno()

    def recv(self):
        return self.inner.recv()

    def close(self) -> None:
        self.inner.close()


class AccessRouterAgent:
    def __init__(self, agent: Agent, address: str, access_interface: str, ar_transport: str, seed: int,
                 link_address: str = "::", peers: dict[str, str] | None = None) -> None:
        self.agent = agent
        self.address = address
        self.xfrm = Xfrm()
        self.handler = ipsec_handler.ArIpsecHandler(self.xfrm, address, agent.trace)
        self.engine = AccessRouter(address, Registry([self.handler]), Config(), random.Random(seed))
        ar_link = (SctpTransport(bind_address=link_address) if ar_transport == "sctp"
                   else TcpTransport(bind_address=link_address))
        transports = {TRANSPORT_ICMP: IcmpTransport(interface=access_interface),
                      TRANSPORT_AR: PeerAddressTransport(ar_link, peers or {})}
        self.runtime = CxtpRuntime(agent, self.engine, transports)
        self.static_policies: list = []
        for name in ("set_mn_key", "trigger_predictive", "trigger_reactive", "provision", "access_policy",
                     "clear_mn", "counters"):
            agent.command(name, getattr(self, name))

    def set_mn_key(self, mn: str, key: str) -> dict:
        self.engine.set_mn_key(mn, bytes.fromhex(key))
        return {}

    def trigger_predictive(self, mn: str, nar: str) -> dict:
        self.engine.trigger_predictive(mn, nar, time.monotonic())
        self.runtime.pump()
        return {}

    def trigger_reactive(self, mn: str, par: str) -> dict:
        self.engine.trigger_reactive(mn, par, time.monotonic())
        self.runtime.pump()
        return {}

    def provision(self, context: str) -> dict:
        """Install an MN's initial context (the static SAs of the paper's attach)."""
        installation = install_context(self.xfrm, IpsecContext.decode(bytes.fromhex(context)))
        return {"sas": len(installation.context.sas)}

    def access_policy(self, prefix: str, enable: bool) -> dict:
        if enable and not self.static_policies:
            for policy in ipsec_handler.access_policies(prefix):
                self.xfrm.add_policy(policy)
                self.static_policies.append(policy)
        elif not enable:
            for policy in self.static_policies:
                self.xfrm.delete_policy(policy.selector, policy.dir, policy.mark, policy.if_id)
            self.static_policies = []
        return {"policies": len(self.static_policies)}

    def clear_mn(self, mn: str) -> dict:
        """Remove whatever the MN has here (between methods of one run)."""
        from ipsec import capture_context

        context = capture_context(self.xfrm, mn)
        remove_context(self.xfrm, context)
        return {"removed_sas": len(context.sas), "removed_policies": len(context.policies)}

    def counters(self) -> dict:
        return {"engine": dict(self.engine.counters)}


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
    arguments = parser.parse_args(argv)
    peers = dict(item.split("=", 1) for item in arguments.peer)

    def run() -> None:
        agent = Agent(arguments.name, arguments.control, arguments.trace)
        AccessRouterAgent(agent, arguments.address, arguments.access_interface, arguments.ar_transport,
                          arguments.seed, arguments.link_address, peers)
        agent.run()

    return main_guard(run)


if __name__ == "__main__":
    sys.exit(main())
