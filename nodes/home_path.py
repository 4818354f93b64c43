"""Mobile IPv6's data path in the kernel (RFC 6275 §10.4.1, §11.3.1): the MN-HA IPv6-in-IPv6
tunnels (``ip6_tunnel``) that carry the MN's home address, moved by the agents over rtnetlink.

The topology creates the tunnels (one per access router on each end, see ``topo.plan``); the
agents find them by their addresses and only move them:

* the MN, at each attach, routes what leaves from its home address (its own routing table, chosen
  by a rule on the source) through the tunnel whose local end is its new care-of address;
* the HA, at each Binding Update it accepts, points its tunnels at the new care-of address and
  routes the home address through the tunnel bound to the interface that reaches it.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

IP6TNL_KIND = "ip6tnl"
#: the ip6tnl parameters a change must repeat: the kernel rebuilds them all from the request
#: (``ip6_tnl_netlink_parms`` zeroes what is absent)
_PARAMETERS = ("IFLA_IP6TNL_LINK", "IFLA_IP6TNL_LOCAL", "IFLA_IP6TNL_REMOTE", "IFLA_IP6TNL_TTL",
               "IFLA_IP6TNL_TOS", "IFLA_IP6TNL_ENCAP_LIMIT", "IFLA_IP6TNL_FLOWINFO", "IFLA_IP6TNL_FLAGS",
               "IFLA_IP6TNL_PROTO")


class HomePathError(RuntimeError):
    """The kernel refused to move the home address's path (or has no tunnel for it)."""


def _normal(address: str) -> str:
    return str(ipaddress.IPv6Address(address))


def tunnels(ipr: IPRoute) -> dict[int, dict[str, Any]]:
    """Every ip6tnl interface of the namespace: index -> its parameters and ``name``."""
    return _tunnels(ipr)


def _tunnels(ipr: IPRoute, names: set[str] | None = None) -> dict[int, dict[str, Any]]:
    """Every ip6tnl interface of the namespace (of ``names`` only, if given): index -> its parameters."""
    found = {}
    for link in ipr.get_links():
        info = link.get_attr("IFLA_LINKINFO")
        if info is None or info.get_attr("IFLA_INFO_KIND") != IP6TNL_KIND:
            continue
        if names is not None and link.get_attr("IFLA_IFNAME") not in names:
            continue
        data = info.get_attr("IFLA_INFO_DATA")
        parameters = {name: data.get_attr(name) for name in _PARAMETERS}
        parameters["name"] = link.get_attr("IFLA_IFNAME")
        if parameters["IFLA_IP6TNL_LOCAL"] and parameters["IFLA_IP6TNL_REMOTE"]:  # not ip6tnl0
            found[link["index"]] = parameters
    return found


class MnHomePath:
    """The MN's end: which tunnel its home address leaves through."""

    def __init__(self, table: int, ipr: IPRoute | None = None, tunnels: dict[str, str] | None = None) -> None:
        """``tunnels``: care-of address -> tunnel name, when the caller knows them (many MNs: the
        runner does, and a link dump decoded per MN costs the guest most of an MN's start);
        otherwise read from the kernel."""
        self.table = table
        self.ipr = ipr or IPRoute()
        if tunnels is not None:
            self.by_care_of = {_normal(care_of): socket.if_nametoindex(name) for care_of, name in tunnels.items()}
        else:
            self.by_care_of = {_normal(p["IFLA_IP6TNL_LOCAL"]): index for index, p in _tunnels(self.ipr).items()}
        self.current: int | None = None

    def use(self, care_of: str) -> bool:
        """Route the home address through the tunnel of ``care_of``; False if there is none (a
        testbed without a home address)."""
        index = self.by_care_of.get(_normal(care_of))
        if index is None:
            return False
        if index == self.current:
            return True
        try:
            self.ipr.route("replace", family=socket.AF_INET6, dst="::", dst_len=0, table=self.table, oif=index)
        except NetlinkError as error:
            raise HomePathError(f"routing the home address through tunnel {index}: {error}") from error
        self.current = index
        return True

    def close(self) -> None:
        self.ipr.close()


class HaHomePath:
    """The HA's end: its tunnels point at the care-of address of the binding, and the home
    address is routed through the one bound to the interface that reaches it."""

    def __init__(self, local: str, home_address: str, ipr: IPRoute | None = None,
                 names: set[str] | None = None, known: dict[int, dict[str, Any]] | None = None) -> None:
        """``names``: the tunnels of this home address (an HA serving many MNs has a set per MN);
        None: every tunnel from ``local``. ``known``: the namespace's tunnels as :func:`tunnels`
        read them (many MNs share one dump and one ``ipr``)."""
        self.home_address = _normal(home_address)
        self.ipr = ipr or IPRoute()
        found = known if known is not None else _tunnels(self.ipr, names)
        self.tunnels = {index: dict(p) for index, p in found.items()
                        if _normal(p["IFLA_IP6TNL_LOCAL"]) == _normal(local)
                        and (names is None or p.get("name") in names)}
        self.care_of: str | None = None
        self.tunnel: int | None = None
        #: the interface that reaches each care-of address (the routes do not change during a run)
        self._reached_by: dict[str, int] = {}

    def point_to(self, care_of: str) -> int:
        """Move the home address to ``care_of``: the tunnel bound to the interface that reaches it
        points at it and carries the home address. Returns that tunnel. The others follow in
        :meth:`align`, off the critical path. A Binding Update that renews the binding changes
        nothing in the kernel."""
        care_of = _normal(care_of)
        if not self.tunnels:
            raise HomePathError("the HA has no tunnel for the home address")
        if care_of == self.care_of and self.tunnel is not None:
            return self.tunnel
        try:
            reached_by = self._reached_by.get(care_of)
            if reached_by is None:
                reached_by = self._reached_by[care_of] = \
                    self.ipr.route("get", family=socket.AF_INET6, dst=care_of)[0].get_attr("RTA_OIF")
            tunnel = next((index for index, parameters in self.tunnels.items()
                           if parameters["IFLA_IP6TNL_LINK"] == reached_by), None)
            if tunnel is None:
                raise HomePathError(f"no tunnel is bound to interface {reached_by}, which reaches {care_of}")
            self._set_remote(tunnel, care_of)
            self.ipr.route("replace", family=socket.AF_INET6, dst=self.home_address, dst_len=128, oif=tunnel)
        except NetlinkError as error:
            raise HomePathError(f"moving the home address to {care_of}: {error}") from error
        self.care_of, self.tunnel = care_of, tunnel
        return tunnel

    def align(self) -> int:
        """Point the other tunnels at the binding's care-of address too (none then takes the MN's
        packets from its previous one); returns how many changed."""
        if self.care_of is None:
            return 0
        changed = 0
        try:
            for index in self.tunnels:
                changed += self._set_remote(index, self.care_of)
        except NetlinkError as error:
            raise HomePathError(f"aligning the tunnels on {self.care_of}: {error}") from error
        return changed

    def _set_remote(self, index: int, care_of: str) -> bool:
        parameters = self.tunnels[index]
        if _normal(parameters["IFLA_IP6TNL_REMOTE"]) == care_of:
            return False
        parameters["IFLA_IP6TNL_REMOTE"] = care_of
        data = {name[len("IFLA_"):].lower(): parameters[name] for name in _PARAMETERS
                if parameters.get(name) is not None}
        self.ipr.link("set", index=index, kind=IP6TNL_KIND, **data)
        return True

    def close(self) -> None:
        self.ipr.close()
