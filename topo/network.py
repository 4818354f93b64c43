"""Build the paper's network in Mininet from :mod:`topo.plan`, and move the MN between ARs.

Hosts are joined by direct veth links shaped by netem (Mininet's TCLink): no switch, no Open
vSwitch, no controller. Set-up uses the hosts' shells (slow in UML, but outside any
measurement); the handover itself goes through netlink from this process, in the MN's network
namespace, so no process start lands inside a measured interval.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping

from mininet.link import TCLink
from mininet.log import setLogLevel
from mininet.net import Mininet

from nodes import netns
from topo import access_steps, plan

STEP_PRIORITY = 70  # SCHED_FIFO, above the probe threads' 50 (nodes/probe.py)


class TopologyError(RuntimeError):
    """Building, configuring or changing the emulated network failed."""


@dataclasses.dataclass(frozen=True)
class LinkParams:
    """netem/htb shaping of a link, applied in each direction (delay is one-way)."""

    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    loss_percent: float = 0.0
    rate_mbit: float | None = None

    def tclink_arguments(self) -> dict:
        # Always a netem qdisc, even at 0 ms, so that a sweep can change the link in place.
        arguments: dict = {"delay": f"{self.delay_ms}ms"}
        if self.jitter_ms:
            arguments["jitter"] = f"{self.jitter_ms}ms"
        if self.loss_percent:
            arguments["loss"] = self.loss_percent
        if self.rate_mbit:
            arguments["bw"] = self.rate_mbit
        return arguments


@dataclasses.dataclass
class MoveTimes:
    """Monotonic timestamps (ns, one clock for every namespace) of the emulator's steps of one move
    of the MN: the link to the old AR going down, the L2 delay, the link to the new one coming up."""

    detach_start_ns: int = 0
    detached_ns: int = 0
    attach_start_ns: int = 0
    attached_ns: int = 0


class Testbed:
    """The running emulated network. Use as a context manager so it is always torn down."""

    __test__ = False  # not a pytest test class, despite its name

    def __init__(self, link_params: Mapping[str, LinkParams] | None = None, initial_ar: str = plan.PAR):
        self.link_params = {cls: LinkParams() for cls in plan.LINK_CLASSES}
        self.link_params.update(link_params or {})
        self.current_ar: str | None = None
        self.initial_ar = initial_ar
        self.net: Mininet | None = None
        self._mn_steps: access_steps.StepSocket | None = None
        self._detach_batch: dict[str, tuple[bytes, ...]] = {}
        self._attach_batch: dict[str, tuple[bytes, ...]] = {}

    # -- life cycle ---------------------------------------------------------------------------
    def start(self) -> Testbed:
        setLogLevel("warning")
        net = Mininet(topo=None, build=False, controller=None, link=TCLink, autoSetMacs=False,
                      autoStaticArp=False, waitConnected=False)
        self.net = net
        try:
            for name in plan.NODES:
                # ip=None: no IPv4 on the testbed; every address comes from the IPv6 plan.
                net.addHost(name, ip=None, inNamespace=True)
            for link in plan.LINKS:
                params = self.link_params[link.link_class].tclink_arguments()
                net.addLink(link.a, link.b, intfName1=link.interface(link.a),
                            intfName2=link.interface(link.b), **params)
            net.build()
            self._configure()
            self._prepare_access_steps()
            self._attach(self.initial_ar)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self._mn_steps is not None:
            self._mn_steps.close()
            self._mn_steps = None
        if self.net is not None:
            self.net.stop()  # ends the host shells Mininet started, by their recorded PIDs
            self.net = None

    def __enter__(self) -> Testbed:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    # -- access ---------------------------------------------------------------------------------
    def host(self, name: str):
        assert self.net is not None, "testbed not started"
        return self.net.get(name)

    def pid(self, name: str) -> int:
        """PID of the node's shell; its /proc/<pid>/ns/net is the node's network namespace."""
        return self.host(name).pid

    def cmd(self, name: str, command: str, check: bool = True) -> str:
        """Run a shell command on a node (slow in UML: set-up and checks only, never measured)."""
        output = self.host(name).cmd(command + "; echo __status=$?")
        body, _, status = output.rpartition("__status=")
        if check and status.strip() != "0":
            raise TopologyError(f"{name}: `{command}` failed ({status.strip()}): {body.strip()}")
        return body

    # -- configuration --------------------------------------------------------------------------
    def _configure(self) -> None:
        for name in plan.NODES:
            forwarding = "1" if name in plan.FORWARDING_NODES else "0"
            # No DAD anywhere (the MN's new care-of address must be usable at once, and so must
            # the link-local source of its Neighbor Solicitations), no router advertisements.
            self.cmd(name, (
                "sysctl -qw net.ipv6.conf.all.disable_ipv6=0 net.ipv6.conf.all.accept_ra=0 "
                "net.ipv6.conf.default.accept_ra=0 net.ipv6.conf.all.accept_dad=0 "
                "net.ipv6.conf.default.accept_dad=0 "
                f"net.ipv6.conf.all.forwarding={forwarding} && "
                "for f in /proc/sys/net/ipv6/conf/*/accept_dad; do echo 0 > $f; done && "
                "for f in /proc/sys/net/ipv6/conf/*/accept_ra; do echo 0 > $f; done && "
                "ip link set lo up"
            ))
        for link in plan.LINKS:
            prefix_length = link.prefix.split("/")[1]
            for node in (link.a, link.b):
                address = link.address_of(node)
                if address:
                    self.cmd(node, f"ip -6 addr add {address}/{prefix_length} dev {link.interface(node)} nodad")
        for node, address in plan.LOOPBACK_ADDRESSES.items():
            self.cmd(node, f"ip -6 addr add {address}/128 dev lo")
        for route in plan.ROUTES:
            interface = plan.LINKS_BY_NAME[route.link].interface(route.node)
            self.cmd(route.node, f"ip -6 route add {route.destination} via {route.via} dev {interface}")
        self._configure_home()
        # Link-layer addresses on the access links are known from the L2 association, as an access
        # point's router knows its stations and a Router Advertisement's source link-layer option
        # tells the MN its router's: no neighbour discovery on the access links, where a veth's
        # carrier change would otherwise delay the first exchange by a 1 s NS retransmission.
        self.access_lladdr = {}
        for ar in plan.ACCESS_ROUTERS:
            link = plan.LINKS_BY_NAME[plan.ACCESS_LINK[ar]]
            mn_mac = self.host(plan.MN).intf(link.interface(plan.MN)).MAC()
            self.access_lladdr[ar] = self.host(ar).intf(link.interface(ar)).MAC()
            self.cmd(ar, f"ip -6 neigh replace {plan.MN_COA[ar]} lladdr {mn_mac} dev {link.interface(ar)} "
                         "nud permanent")
        # The MN starts detached from both access links; start() attaches it to the initial AR.
        for ar in plan.ACCESS_ROUTERS:
            interface = plan.LINKS_BY_NAME[plan.ACCESS_LINK[ar]].interface(plan.MN)
            self.cmd(plan.MN, f"ip link set {interface} down")

    def _configure_home(self) -> None:
        """Mobile IPv6's data path (RFC 6275 §10.4.1, §11.3.1): the MN's home address, the MN-HA
        IPv6-in-IPv6 tunnels (``ip6_tunnel``), the HA's interception of the home address and the
        MN's rule that sends what leaves from it through the tunnel. The agents move them: the
        MN's to the tunnel of its new care-of address at each attach, the HA's to the care-of
        address of each Binding Update it accepts."""
        self.cmd(plan.MN, f"ip -6 addr add {plan.MN_HOME_ADDRESS}/128 dev lo nodad")
        for tunnel in plan.home_tunnels(self.initial_ar):
            bound = f" dev {tunnel.link}" if tunnel.link else ""
            self.cmd(tunnel.node, f"ip -6 tunnel add {tunnel.name} mode ip6ip6 local {tunnel.local} "
                                  f"remote {tunnel.remote}{bound} encaplimit none && "
                                  f"ip link set {tunnel.name} mtu {plan.HOME_TUNNEL_MTU} up")
        self.cmd(plan.MN, f"ip -6 rule add from {plan.MN_HOME_ADDRESS} table {plan.HOME_TABLE} pref 100 && "
                          f"ip -6 route add default dev {plan.home_tunnel(plan.MN, self.initial_ar)} "
                          f"table {plan.HOME_TABLE}")
        self.cmd(plan.HA, f"ip -6 route add {plan.MN_HOME_ADDRESS}/128 "
                          f"dev {plan.home_tunnel(plan.HA, self.initial_ar)}")

    def _prepare_access_steps(self) -> None:
        """Encode each AR's detach and attach once (see :mod:`topo.access_steps`)."""
        with netns.iproute_in(self.pid(plan.MN)) as ipr:
            for ar in plan.ACCESS_ROUTERS:
                name = plan.LINKS_BY_NAME[plan.ACCESS_LINK[ar]].interface(plan.MN)
                indices = ipr.link_lookup(ifname=name)
                if not indices:
                    raise TopologyError(f"MN has no interface {name}")
                index = indices[0]
                self._detach_batch[ar] = (access_steps.link_state(index, up=False),)
                self._attach_batch[ar] = (
                    access_steps.link_state(index, up=True),
                    access_steps.address(index, plan.MN_COA[ar], 64),
                    # learnt at association (see _configure): no neighbour discovery
                    access_steps.permanent_neighbour(index, plan.AR_ACCESS_ADDRESS[ar], self.access_lladdr[ar]),
                    access_steps.default_route(index, plan.AR_ACCESS_ADDRESS[ar]))
        self._mn_steps = access_steps.StepSocket(self.pid(plan.MN))

    def _step(self, batch: tuple[bytes, ...], what: str) -> None:
        assert self._mn_steps is not None
        try:
            self._mn_steps.send(batch)
        except (OSError, access_steps.StepError) as error:
            raise TopologyError(f"{what}: {error}") from error

    def _detach(self, ar: str) -> None:
        self._step(self._detach_batch[ar], f"detaching the MN from {ar}")
        self.current_ar = None

    def _attach(self, ar: str) -> None:
        """Bring the access link up, take the care-of address from the AR's prefix, route via it."""
        self._step(self._attach_batch[ar], f"attaching the MN to {ar}")
        self.current_ar = ar

    # -- the handover primitive ------------------------------------------------------------------
    def handover(self, to_ar: str, l2_delay_ms: float) -> MoveTimes:
        """Detach the MN from its AR, wait the L2 handover delay, attach it to ``to_ar``.

        The wait is the emulated radio-level handover, a scenario parameter; every protocol step
        after it (neighbour discovery, CXTP, IKE, ...) happens for real on the emulated links.
        """
        if self.current_ar is None or to_ar == self.current_ar or to_ar not in plan.ACCESS_ROUTERS:
            raise TopologyError(f"cannot hand over from {self.current_ar} to {to_ar}")
        times = MoveTimes()
        # The emulator's own steps, above the probes' real-time priority: the L2 delay is the
        # scenario's, and neither step waits behind the measurement it is measured by.
        with access_steps.realtime(STEP_PRIORITY):
            times.detach_start_ns = time.monotonic_ns()
            self._detach(self.current_ar)
            times.detached_ns = time.monotonic_ns()
            deadline = times.detached_ns + int(l2_delay_ms * 1e6)
            while (remaining := deadline - time.monotonic_ns()) > 0:
                time.sleep(remaining / 1e9)
            times.attach_start_ns = time.monotonic_ns()
            self._attach(to_ar)
            times.attached_ns = time.monotonic_ns()
        return times

    def set_link_params(self, link_class: str, params: LinkParams) -> None:
        """Change the shaping of every link of a class in place (for sweeps; set-up speed only)."""
        assert self.net is not None
        self.link_params[link_class] = params
        for link in plan.LINKS:
            if link.link_class != link_class:
                continue
            for node in (link.a, link.b):
                interface = self.host(node).intf(link.interface(node))
                interface.config(**params.tclink_arguments())

    def other_ar(self) -> str:
        return plan.NAR if self.current_ar == plan.PAR else plan.PAR
