"""Build the paper's network in Mininet from :mod:`topo.plan`, and move the MN between ARs.

Hosts are joined by direct veth links shaped by netem (Mininet's TCLink): no switch, no Open
vSwitch, no controller. Set-up uses the hosts' shells (slow in UML, but outside any
measurement); the handover itself goes through netlink from this process, in the MN's network
namespace, so no process start lands inside a measured interval.
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
import os
import threading
import time
from collections.abc import Callable, Mapping

from mininet.link import TCLink
from mininet.log import setLogLevel
from mininet.net import Mininet

from nodes import netns
from topo import access_steps, plan
from topo.cells import Cells, NamespaceHost, Station
from topo.errors import TopologyError
from topo.shaping import LinkParams

__all__ = ["LinkParams", "MoveTimes", "Station", "Testbed", "TopologyError"]

STEP_PRIORITY = 70  # SCHED_FIFO, above the probe threads' 50 (nodes/probe.py)
#: when an attach first asks again whether the AR's end of the link is operational yet, and the
#: longest pause between two questions: each pause twice the one before, sleeping in between so
#: that the kernel's link-watch work gets the CPU. (Asked every 0.5 ms, 20 MNs attaching at once
#: kept the guest's CPU busy with the questions at real-time priority: the link-watch work then
#: waited up to 1.9 s, and 44 of 480 handovers failed.)
LINK_READY_POLL_S = 0.0005
LINK_READY_POLL_MAX_S = 0.016
#: an attach whose link is not operational after this long goes on without it: its step time
#: then exceeds any fidelity tolerance, and the runner repeats the handover
LINK_READY_LIMIT_S = 2.0


@dataclasses.dataclass
class MoveTimes:
    """Monotonic timestamps (ns, one clock for every namespace) of the emulator's steps of one move
    of the MN: the link to the old AR going down, the L2 delay, the link to the new one coming up
    (``attach_start_ns`` to ``attached_ns``: its end up, the AR's end operational, the care-of
    address and route in place)."""

    detach_start_ns: int = 0
    detached_ns: int = 0
    attach_start_ns: int = 0
    attached_ns: int = 0


class Testbed:
    """The running emulated network. Use as a context manager so it is always torn down."""

    __test__ = False  # not a pytest test class, despite its name

    def __init__(self, link_params: Mapping[str, LinkParams] | None = None, initial_ar: str = plan.PAR,
                 mns: int = 1):
        if not 1 <= mns <= plan.MAX_MNS:
            raise TopologyError(f"a testbed holds 1..{plan.MAX_MNS} MNs, not {mns}")
        self.link_params = {cls: LinkParams() for cls in plan.LINK_CLASSES}
        self.link_params.update(link_params or {})
        self.mns = mns
        #: each MN's AR (None: detached); MN 0's is also ``current_ar``
        self.attached: dict[int, str | None] = dict.fromkeys(range(mns))
        self.initial_ar = initial_ar
        self.net: Mininet | None = None
        self.cells: Cells | None = None
        self._steps: dict[int, access_steps.StepSocket] = {}
        self._mover: Mover | None = None
        self._detach_batch: dict[tuple[int, str], tuple[bytes, ...]] = {}
        self._link_up_batch: dict[tuple[int, str], tuple[bytes, ...]] = {}
        self._attach_batch: dict[tuple[int, str], tuple[bytes, ...]] = {}
        #: per AR, the question whether its end of an MN's link is operational; by MN and AR, that end
        self._link_query: dict[str, access_steps.LinkQuery] = {}
        self._ar_end: dict[tuple[int, str], int] = {}

    @property
    def current_ar(self) -> str | None:
        """MN 0's AR (None while it is detached)."""
        return self.attached[0]

    @current_ar.setter
    def current_ar(self, ar: str | None) -> None:
        self.attached[0] = ar

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
            if self.mns > 1:
                self.cells = Cells({name: self.pid(name) for name in plan.NODES}, self.mns, self.initial_ar,
                                   self.link_params[plan.ACCESS])
                self.cells.build()
            self._prepare_access_steps()
            for index in range(self.mns):
                self._attach(self.initial_ar, index)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self._mover is not None:
            self._mover.stop()
            self._mover = None
        while self._steps:
            self._steps.popitem()[1].close()
        while self._link_query:
            self._link_query.popitem()[1].close()
        if self.cells is not None:
            self.cells.remove()
            self.cells = None
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

    def mn_namespace_file(self, index: int) -> str:
        """A path to MN ``index``'s network namespace that opens in any process of the guest: the
        Mininet hosts have mount namespaces of their own, which do not see the mounts that name the
        cells' MN namespaces, so those are reached through this process's root."""
        target = self.mn_target(index)
        if isinstance(target, int):
            return netns.namespace_path(target)
        return f"/proc/{os.getpid()}/root{netns.namespace_path(target)}"

    def mn_host(self, index: int):
        """Where MN ``index``'s daemons start (``popen``): MN 0's Mininet host, a cell's MN namespace."""
        if index == 0:
            return self.host(plan.MN)
        return NamespaceHost(self.mn_namespace_file(index))

    def mn_target(self, index: int) -> int | str:
        """MN ``index``'s network namespace, for :mod:`nodes.netns`: MN 0's shell's pid, the
        others' namespace names."""
        if not 0 <= index < self.mns:
            raise TopologyError(f"no MN {index} on a testbed of {self.mns}")
        return self.pid(plan.MN) if index == 0 else self.cells.namespace(index)  # type: ignore[union-attr]

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
        # (With several MNs, the cells take the AR's end's MAC for their bridge and make these
        # entries for every MN: topo.cells.)
        self.access_lladdr = {}
        for ar in plan.ACCESS_ROUTERS:
            link = plan.LINKS_BY_NAME[plan.ACCESS_LINK[ar]]
            mn_mac = self.host(plan.MN).intf(link.interface(plan.MN)).MAC()
            self.access_lladdr[ar] = self.host(ar).intf(link.interface(ar)).MAC()
            if self.mns == 1:
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
        """Encode each MN's detach and attach at each AR once (see :mod:`topo.access_steps`); one
        step socket per MN, in its namespace, so that MNs can move at once from several threads."""
        for ar in plan.ACCESS_ROUTERS:
            self._link_query[ar] = access_steps.LinkQuery(self.pid(ar))
            with netns.iproute_in(self.pid(ar)) as ipr:
                for mn in range(self.mns):
                    # the AR's end: of the point-to-point link with one MN, the MN's port of the cell with more
                    indices = ipr.link_lookup(ifname=plan.station_port(ar, mn))
                    if not indices:
                        raise TopologyError(f"{ar} has no port {plan.station_port(ar, mn)}")
                    self._ar_end[mn, ar] = indices[0]
        for mn in range(self.mns):
            target = self.mn_target(mn)
            with netns.iproute_in(target) as ipr:
                for ar in plan.ACCESS_ROUTERS:
                    name = plan.LINKS_BY_NAME[plan.ACCESS_LINK[ar]].interface(plan.MN)  # in every MN's namespace
                    indices = ipr.link_lookup(ifname=name)
                    if not indices:
                        raise TopologyError(f"{plan.mn_node(mn)} has no interface {name}")
                    index = indices[0]
                    self._detach_batch[mn, ar] = (access_steps.link_state(index, up=False),)
                    self._link_up_batch[mn, ar] = (access_steps.link_state(index, up=True),)
                    self._attach_batch[mn, ar] = (
                        access_steps.address(index, plan.mn_coa(mn, ar), 64),
                        # learnt at association (see _configure): no neighbour discovery
                        access_steps.permanent_neighbour(index, plan.AR_ACCESS_ADDRESS[ar], self.access_lladdr[ar]),
                        access_steps.default_route(index, plan.AR_ACCESS_ADDRESS[ar]))
            self._steps[mn] = access_steps.StepSocket(target)

    def _step(self, mn: int, batch: tuple[bytes, ...], what: str) -> None:
        try:
            self._steps[mn].send(batch)
        except (OSError, access_steps.StepError) as error:
            raise TopologyError(f"{what}: {error}") from error

    def _detach(self, ar: str, mn: int = 0) -> None:
        self._step(mn, self._detach_batch[mn, ar], f"detaching {plan.mn_node(mn)} from {ar}")
        self.attached[mn] = None

    def _link_up(self, ar: str, mn: int) -> None:
        self._step(mn, self._link_up_batch[mn, ar], f"bringing up {plan.mn_node(mn)}'s link to {ar}")

    def _link_ready(self, ar: str, mn: int) -> bool:
        """Whether ``ar``'s end of MN ``mn``'s link is operational (see :mod:`topo.access_steps`)."""
        try:
            return self._link_query[ar].operational(self._ar_end[mn, ar])
        except (OSError, access_steps.StepError) as error:
            raise TopologyError(f"asking {ar} for {plan.mn_node(mn)}'s port: {error}") from error

    def _configure_attach(self, ar: str, mn: int) -> None:
        self._step(mn, self._attach_batch[mn, ar], f"attaching {plan.mn_node(mn)} to {ar}")
        self.attached[mn] = ar

    def _attach(self, ar: str, mn: int = 0) -> None:
        """Bring the access link up, take the care-of address from the AR's prefix and route via
        it (what the MN learns the attach from). On a cell, the address and route wait until the
        AR's port is operational: a bridge drops what arrives on a port it does not forward on
        yet. A point-to-point link (one MN) delivers the MN's first packets at once, and the AR's
        end is operational before its first answer (eight default runs, 1,617 handovers: no
        CTAR retransmitted), so a single MN's attach stays one step, as its reference figures
        were measured (waiting there too moved every median by 2-4 ms: the wait, about 1 ms,
        and the probes' interval)."""
        if self.mns == 1:
            self._step(mn, self._link_up_batch[mn, ar] + self._attach_batch[mn, ar],
                       f"attaching {plan.mn_node(mn)} to {ar}")
            self.attached[mn] = ar
            return
        self._link_up(ar, mn)
        deadline, pause_s = time.monotonic() + LINK_READY_LIMIT_S, LINK_READY_POLL_S
        while not self._link_ready(ar, mn) and time.monotonic() < deadline:
            time.sleep(pause_s)
            pause_s = min(2 * pause_s, LINK_READY_POLL_MAX_S)
        self._configure_attach(ar, mn)

    # -- the handover primitive ------------------------------------------------------------------
    def handover(self, to_ar: str, l2_delay_ms: float, mn: int = 0) -> MoveTimes:
        """Detach MN ``mn`` from its AR, wait the L2 handover delay, attach it to ``to_ar``.

        The wait is the emulated radio-level handover, a scenario parameter; every protocol step
        after it (neighbour discovery, CXTP, IKE, ...) happens for real on the emulated links.
        Different MNs may move at once, each from its own thread: with more than one MN every
        step is taken by one mover thread (:class:`Mover`), in time order.
        """
        current = self.attached.get(mn)
        if current is None or to_ar == current or to_ar not in plan.ACCESS_ROUTERS:
            raise TopologyError(f"cannot hand over {plan.mn_node(mn)} from {current} to {to_ar}")
        if self.mns > 1:
            if self._mover is None:
                self._mover = Mover(self)
            return self._mover.move(mn, current, to_ar, l2_delay_ms)
        times = MoveTimes()
        # The emulator's own steps, above the probes' real-time priority: the L2 delay is the
        # scenario's, and neither step waits behind the measurement it is measured by.
        with access_steps.realtime(STEP_PRIORITY):
            times.detach_start_ns = time.monotonic_ns()
            self._detach(current, mn)
            times.detached_ns = time.monotonic_ns()
            deadline = times.detached_ns + int(l2_delay_ms * 1e6)
            while (remaining := deadline - time.monotonic_ns()) > 0:
                time.sleep(remaining / 1e9)
            times.attach_start_ns = time.monotonic_ns()
            self._attach(to_ar, mn)
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
        if link_class == plan.ACCESS and self.cells is not None:
            self.cells.set_access_params(params)

    def other_ar(self, mn: int = 0) -> str:
        return plan.NAR if self.attached[mn] == plan.PAR else plan.PAR


class Mover:
    """The one thread that takes every MN's detach and attach steps when many MNs move at once.

    A step is a netlink write; taken from each MN's own thread, the steps would wait for the
    interpreter's lock behind every other thread of the runner (5 ms each, CPython's switch
    interval) and the L2 delay would drift by tens of milliseconds in a storm. Here one thread, at
    the steps' real-time priority, sleeps until the next step due (a detach as soon as it is
    asked, the attach its L2 delay after that detach) and takes it, a due attach before a due
    detach: an attach's lateness lengthens its MN's L2 delay, a detach's does not (the delay runs
    from the detach as it happened), so when K MNs move at once the emulator's own step rate
    delays the later detaches, not the earlier MNs' attaches. An attach is two steps: the link
    up, then the address and route once the AR's end is operational (asked again after pauses
    from :data:`LINK_READY_POLL_S` doubling to :data:`LINK_READY_POLL_MAX_S`, with the other
    steps due taken in between). Each caller waits for its own attach."""

    def __init__(self, testbed: Testbed) -> None:
        self.testbed = testbed
        # (deadline ns, order, step): the attaches, and the detaches (taken when no attach is due)
        self._attaches: list[tuple[int, int, Callable[[], None]]] = []
        self._detaches: list[tuple[int, int, Callable[[], None]]] = []
        self._order = itertools.count()
        self._wake = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="mover", daemon=True)
        self._thread.start()

    def move(self, mn: int, from_ar: str, to_ar: str, l2_delay_ms: float) -> MoveTimes:
        times, done = MoveTimes(), threading.Event()
        failure: list[BaseException] = []
        poll_ns, ready_by_ns = int(LINK_READY_POLL_S * 1e9), 0

        def configure() -> None:
            nonlocal poll_ns
            try:
                if not self.testbed._link_ready(to_ar, mn) and time.monotonic_ns() < ready_by_ns:
                    # asked again after a pause twice as long, with every other step due in between
                    self._schedule(self._attaches, time.monotonic_ns() + poll_ns, configure)
                    poll_ns = min(2 * poll_ns, int(LINK_READY_POLL_MAX_S * 1e9))
                    return
                self.testbed._configure_attach(to_ar, mn)
                times.attached_ns = time.monotonic_ns()
            except BaseException as error:  # handed to the caller
                failure.append(error)
            done.set()

        def attach() -> None:
            nonlocal ready_by_ns
            try:
                times.attach_start_ns = time.monotonic_ns()
                self.testbed._link_up(to_ar, mn)
            except BaseException as error:  # handed to the caller
                failure.append(error)
                done.set()
                return
            ready_by_ns = time.monotonic_ns() + int(LINK_READY_LIMIT_S * 1e9)
            configure()

        def detach() -> None:
            try:
                times.detach_start_ns = time.monotonic_ns()
                self.testbed._detach(from_ar, mn)
                times.detached_ns = time.monotonic_ns()
            except BaseException as error:  # handed to the caller; no attach follows
                failure.append(error)
                done.set()
                return
            self._schedule(self._attaches, times.detached_ns + int(l2_delay_ms * 1e6), attach)

        self._schedule(self._detaches, time.monotonic_ns(), detach)
        done.wait()
        if failure:
            raise failure[0]
        return times

    def _schedule(self, queue: list, deadline_ns: int, step: Callable[[], None]) -> None:
        with self._wake:
            heapq.heappush(queue, (deadline_ns, next(self._order), step))
            self._wake.notify()

    def _next_due(self) -> Callable[[], None] | None:
        """The attach due first, else the detach due first; None if nothing is due yet."""
        now = time.monotonic_ns()
        for queue in (self._attaches, self._detaches):
            if queue and queue[0][0] <= now:
                return heapq.heappop(queue)[2]
        return None

    def _run(self) -> None:
        with access_steps.realtime(STEP_PRIORITY):
            while True:
                with self._wake:
                    step = None
                    while not self._stopping and (step := self._next_due()) is None:
                        soonest = min((queue[0][0] for queue in (self._attaches, self._detaches) if queue),
                                      default=None)
                        self._wake.wait(None if soonest is None else max(0.0, (soonest - time.monotonic_ns()) / 1e9))
                    if self._stopping:
                        return
                assert step is not None
                step()

    def stop(self) -> None:
        with self._wake:
            self._stopping = True
            self._wake.notify()
        self._thread.join(timeout=5)
