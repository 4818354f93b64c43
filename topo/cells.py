"""Shared access networks for many MNs: each AR's cell, and the MNs beyond the first.

With more than one MN each AR's access network is a cell (:func:`topo.plan.cell`): a bridge in
the AR's namespace that holds the AR's access address, with one port per MN, as an access point
has one association per station. The AR learns which station a port serves from its own
configuration, as an access point does from the association: a permanent neighbour entry (the
MN's care-of address -> its link-layer address) and a static forwarding entry (that address ->
the port); :mod:`nodes.stations` reads them back.

MN 0 stays the Mininet host ``mn`` (its ``mn-<ar>`` links become ports of the cells). The others
are bare network namespaces made and configured through netlink from this process: a Mininet host
starts a shell and each shaped link several ``tc`` processes, and a process start costs 50-300 ms
in the UML guest, so a hundred MNs built that way would take minutes. Their access links are
shaped as Mininet shapes the others (netem on both ends), the rate by netem's own rate limit
rather than an htb class. Each namespace is named ``tb<pid>c<n>-mn<i>`` (the building process's pid, its n-th cells)
and removed by that name.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import itertools
import os
import socket
import subprocess
import threading
from collections.abc import Iterator

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from nodes import netns
from topo import plan
from topo.errors import TopologyError
from topo.shaping import LinkParams

CLONE_NEWNET = 0x40000000
MS_BIND = 0x1000
MNT_DETACH = 0x2
NETNS_DIR = "/run/netns"
#: <linux/neighbour.h>: NUD_NOARP is a bridge's "static" forwarding entry, NTF_MASTER puts it in
#: the bridge's table rather than the port's own
NUD_NOARP, NUD_PERMANENT, NTF_MASTER = 0x40, 0x80, 0x04
#: <linux/if_tunnel.h>: ``encaplimit none``, as the testbed's other tunnels
IP6_TNL_F_IGN_ENCAP_LIMIT = 0x1
IPPROTO_IPV6 = 41
#: the sysctls every MN namespace gets before its interfaces exist (as :class:`topo.network.Testbed`
#: sets them for the Mininet hosts): no DAD, no router advertisements, no forwarding
MN_SYSCTLS = {
    "net/ipv6/conf/all/disable_ipv6": "0", "net/ipv6/conf/default/disable_ipv6": "0",
    "net/ipv6/conf/all/accept_ra": "0", "net/ipv6/conf/default/accept_ra": "0",
    "net/ipv6/conf/all/accept_dad": "0", "net/ipv6/conf/default/accept_dad": "0",
    "net/ipv6/conf/all/forwarding": "0",
}

_libc = ctypes.CDLL(None, use_errno=True)
#: the cells this process built, so that two testbeds of one process name their MNs apart
_BUILT = itertools.count()


def _check(result: int, what: str) -> None:
    if result != 0:
        error = ctypes.get_errno()
        raise OSError(error, f"{what}: {os.strerror(error)}")


def create_namespace(name: str) -> str:
    """What ``ip netns add`` does, without starting a process: a thread unshares its network
    namespace and bind-mounts it on ``/run/netns/<name>``, which keeps it after the thread ends."""
    os.makedirs(NETNS_DIR, exist_ok=True)
    path = os.path.join(NETNS_DIR, name)
    with open(path, "x"):
        pass
    failure: list[BaseException] = []

    def body() -> None:
        try:
            _check(_libc.unshare(CLONE_NEWNET), "unshare(CLONE_NEWNET)")
            source = f"/proc/self/task/{threading.get_native_id()}/ns/net".encode()
            _check(_libc.mount(source, path.encode(), None, MS_BIND, None), f"bind-mounting {path}")
        except BaseException as error:  # handed back to the caller
            failure.append(error)

    thread = threading.Thread(target=body, name=f"netns-add-{name}")
    thread.start()
    thread.join()
    if failure:
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise failure[0]
    return name


def delete_namespace(name: str) -> None:
    """What ``ip netns delete`` does: the namespace goes with its last reference, and its
    interfaces with it (a veth's peer in another namespace too)."""
    path = os.path.join(NETNS_DIR, name)
    _libc.umount2(path.encode(), MNT_DETACH)  # not mounted (a failed create): nothing to undo
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


@contextlib.contextmanager
def _iproute(target: int | str) -> Iterator[IPRoute]:
    ipr = netns.iproute_in(target)
    try:
        yield ipr
    finally:
        ipr.close()


def _write_sysctls(target: int | str, values: dict[str, str]) -> None:
    """/proc/sys/net is the namespace of the task that opens it: written from a thread inside."""
    def write() -> None:
        for key, value in values.items():
            with open(f"/proc/sys/{key}", "w") as handle:
                handle.write(value)
    netns.call_in(target, write)


def _netem(ipr: IPRoute, index: int, params: LinkParams, replace: bool = False) -> None:
    """``params`` as netem on one end of an access link (always a qdisc, as TCLink leaves one)."""
    arguments: dict = {"delay": int(params.delay_ms * 1000), "jitter": int(params.jitter_ms * 1000),
                       "loss": params.loss_percent}
    if params.rate_mbit:
        arguments["rate"] = f"{params.rate_mbit}mbit"
    ipr.tc("replace" if replace else "add", "netem", index, handle="1:", **arguments)


@dataclasses.dataclass(frozen=True)
class Station:
    """One MN as the cells know it: its namespace and its link-layer address towards each AR."""

    index: int
    target: int | str
    macs: dict[str, str]


class NamespaceHost:
    """A cell's MN namespace as a host to start daemons in (``popen`` as a Mininet host's): the
    command runs in the namespace (``nsenter`` execs it: the PID recorded is the daemon's)."""

    def __init__(self, namespace_file: str) -> None:
        self.namespace_file = namespace_file

    def popen(self, command: list[str], **options) -> subprocess.Popen:
        return subprocess.Popen(["nsenter", f"--net={self.namespace_file}", *command], **options)


class Cells:
    """Builds the cells of ``mns`` MNs on a started Mininet network, and removes what it made."""

    def __init__(self, targets: dict[str, int], mns: int, initial_ar: str, access: LinkParams,
                 tag: str | None = None) -> None:
        if not 2 <= mns <= plan.MAX_MNS:
            raise TopologyError(f"cells are for 2..{plan.MAX_MNS} MNs, not {mns}")
        self.targets = dict(targets)  # node name -> its shell's pid (the Mininet hosts)
        self.mns = mns
        self.initial_ar = initial_ar
        self.access = access
        self.tag = tag or f"tb{os.getpid()}c{next(_BUILT)}"
        self.namespaces: list[str] = []
        self.stations: dict[int, Station] = {}

    def namespace(self, index: int) -> str:
        return f"{self.tag}-{plan.mn_node(index)}"

    # -- building ----------------------------------------------------------------------------------
    def build(self) -> dict[int, Station]:
        try:
            with contextlib.ExitStack() as stack:
                ars = {ar: stack.enter_context(_iproute(self.targets[ar])) for ar in plan.ACCESS_ROUTERS}
                ha = stack.enter_context(_iproute(self.targets[plan.HA]))
                bridges = {ar: self._bridge(ipr, ar) for ar, ipr in ars.items()}
                with _iproute(self.targets[plan.MN]) as mn:
                    macs = {ar: self._mac(mn, plan.LINKS_BY_NAME[plan.ACCESS_LINK[ar]].interface(plan.MN))
                            for ar in plan.ACCESS_ROUTERS}
                self.stations[0] = Station(0, self.targets[plan.MN], macs)
                for ar, ipr in ars.items():
                    self._associate(ipr, ar, bridges[ar], 0, macs[ar])
                ha_links = {link.interface(plan.HA): ha.link_lookup(ifname=link.interface(plan.HA))[0]
                            for link in plan.links_of(plan.HA)}
                for index in range(1, self.mns):
                    self.stations[index] = self._add_mn(index, ars, bridges, ha, ha_links)
        except (OSError, NetlinkError, IndexError) as error:
            self.remove()
            raise TopologyError(f"building the cells of {self.mns} MNs: {error}") from error
        except BaseException:
            self.remove()
            raise
        return self.stations

    @staticmethod
    def _mac(ipr: IPRoute, name: str) -> str:
        return ipr.get_links(ipr.link_lookup(ifname=name)[0])[0].get_attr("IFLA_ADDRESS")

    def _bridge(self, ipr: IPRoute, ar: str) -> int:
        """The AR's cell: a bridge with the MAC and the address its ``<ar>-mn`` end had (what MN 0
        and every station know the router by), that end its first port."""
        port_name = plan.station_port(ar, 0)
        port = ipr.link_lookup(ifname=port_name)[0]
        mac = self._mac(ipr, port_name)
        # no spanning tree (a port forwards as soon as it has carrier), no multicast snooping
        ipr.link("add", ifname=plan.cell(ar), kind="bridge", address=mac, br_stp_state=0,
                 br_mcast_snooping=0, br_forward_delay=0)
        bridge = ipr.link_lookup(ifname=plan.cell(ar))[0]
        prefix_length = int(plan.ACCESS_PREFIX[ar].split("/")[1])
        ipr.addr("del", index=port, address=plan.AR_ACCESS_ADDRESS[ar], prefixlen=prefix_length)
        ipr.link("set", index=port, master=bridge)
        ipr.link("set", index=bridge, state="up")
        ipr.addr("add", index=bridge, address=plan.AR_ACCESS_ADDRESS[ar], prefixlen=prefix_length,
                 flags=0x2)  # IFA_F_NODAD
        return bridge

    @staticmethod
    def _associate(ipr: IPRoute, ar: str, bridge: int, index: int, mac: str) -> None:
        """What the association tells the AR: the station's address and port."""
        port = ipr.link_lookup(ifname=plan.station_port(ar, index))[0]
        ipr.neigh("replace", dst=plan.mn_coa(index, ar), lladdr=mac, ifindex=bridge, state=NUD_PERMANENT,
                  family=socket.AF_INET6)
        ipr.fdb("replace", ifindex=port, lladdr=mac, master=bridge, state=NUD_NOARP, flags=NTF_MASTER)

    def _add_mn(self, index: int, ars: dict[str, IPRoute], bridges: dict[str, int], ha: IPRoute,
                ha_links: dict[str, int]) -> Station:
        name = create_namespace(self.namespace(index))
        self.namespaces.append(name)
        _write_sysctls(name, MN_SYSCTLS)
        macs = {}
        home = plan.mn_home_address(index)
        with _iproute(name) as mn:
            mn.link("set", index=mn.link_lookup(ifname="lo")[0], state="up")
            mn.addr("add", index=mn.link_lookup(ifname="lo")[0], address=home, prefixlen=128, flags=0x2)
            for ar in plan.ACCESS_ROUTERS:
                own = plan.LINKS_BY_NAME[plan.ACCESS_LINK[ar]].interface(plan.MN)  # mn-<ar>, as MN 0's
                port = plan.station_port(ar, index)
                mn.link("add", ifname=own, kind="veth", peer=port)
                mn.link("set", ifname=port, net_ns_pid=self.targets[ar])
                own_index = mn.link_lookup(ifname=own)[0]
                macs[ar] = self._mac(mn, own)
                _netem(mn, own_index, self.access)
                # the MN starts detached (its link down); the testbed attaches it to the initial AR
                ipr = ars[ar]
                port_index = ipr.link_lookup(ifname=port)[0]
                ipr.link("set", index=port_index, master=bridges[ar], state="up")
                _netem(ipr, port_index, self.access)
                self._associate(ipr, ar, bridges[ar], index, macs[ar])
            for tunnel in plan.mn_home_tunnels(index, self.initial_ar):
                target = mn if tunnel.node == plan.MN else ha
                link = {"ip6tnl_link": ha_links[tunnel.link]} if tunnel.link else {}
                target.link("add", ifname=tunnel.name, kind="ip6tnl", ip6tnl_local=tunnel.local,
                            ip6tnl_remote=tunnel.remote, ip6tnl_proto=IPPROTO_IPV6, ip6tnl_ttl=64,
                            ip6tnl_flags=IP6_TNL_F_IGN_ENCAP_LIMIT, **link)
                tunnel_index = target.link_lookup(ifname=tunnel.name)[0]
                target.link("set", index=tunnel_index, mtu=plan.HOME_TUNNEL_MTU, state="up")
            mn.rule("add", family=socket.AF_INET6, src=home, src_len=128, table=plan.HOME_TABLE, priority=100)
            mn.route("add", family=socket.AF_INET6, dst="::/0", table=plan.HOME_TABLE,
                     oif=mn.link_lookup(ifname=plan.home_tunnel(plan.MN, self.initial_ar))[0])
        ha.route("add", family=socket.AF_INET6, dst=f"{home}/128",
                 oif=ha.link_lookup(ifname=plan.ha_home_tunnel(index, self.initial_ar))[0])
        return Station(index, name, macs)

    # -- changes and removal -----------------------------------------------------------------------
    def set_access_params(self, params: LinkParams) -> None:
        """Reshape every port the cells added (MN 0's links are Mininet's, reshaped by it)."""
        self.access = params
        for index, station in self.stations.items():
            if index == 0:
                continue
            for ar in plan.ACCESS_ROUTERS:
                with _iproute(station.target) as mn:
                    _netem(mn, mn.link_lookup(ifname=plan.LINKS_BY_NAME[plan.ACCESS_LINK[ar]].interface(plan.MN))[0],
                           params, replace=True)
                with _iproute(self.targets[ar]) as ipr:
                    _netem(ipr, ipr.link_lookup(ifname=plan.station_port(ar, index))[0], params, replace=True)

    def remove(self) -> None:
        """The MNs' namespaces, by name (their links' AR ends and tunnels' peers go with them; the
        bridges and the HA's tunnels go with the Mininet hosts)."""
        while self.namespaces:
            delete_namespace(self.namespaces.pop())
