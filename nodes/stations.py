"""Which stations an access router has, from what its own configuration told the kernel.

An AR knows a station (an MN associated on its access network) as an access point does: its
association made a permanent neighbour entry (care-of address -> link-layer address) and, on a
cell shared by many MNs (a bridge), a static forwarding entry (link-layer address -> the
station's port). Nothing here is learnt from packets, which any host on the link can send.
Whether a station is still there is its own port's carrier: the AR's end of a point-to-point
access link, or the station's port of the cell; never a link that other MNs share.
"""

from __future__ import annotations

import ipaddress
import socket

from pyroute2 import IPRoute

#: <linux/neighbour.h>: entries an AR's own configuration made (the stations associated on its
#: access link), as opposed to what neighbour discovery learnt from packets anyone can send
NUD_NOARP, NUD_PERMANENT = 0x40, 0x80


def _normal(address: str) -> str:
    return str(ipaddress.IPv6Address(address))


def _link(ipr: IPRoute, name: str):
    indices = ipr.link_lookup(ifname=name)
    return ipr.get_links(indices[0])[0] if indices else None


def _carrier(link) -> bool:
    return link.get_attr("IFLA_CARRIER") == 1 and link.get_attr("IFLA_OPERSTATE") == "UP"


def _is_bridge(link) -> bool:
    info = link.get_attr("IFLA_LINKINFO")
    return info is not None and info.get_attr("IFLA_INFO_KIND") == "bridge"


def associated(ipr: IPRoute, access_interface: str) -> dict[str, str]:
    """The stations the AR's configuration made on ``access_interface``: address -> link-layer
    address."""
    link = _link(ipr, access_interface)
    if link is None:
        return {}
    stations = {}
    for entry in ipr.get_neighbours(family=socket.AF_INET6, ifindex=link["index"]):
        address, lladdr = entry.get_attr("NDA_DST"), entry.get_attr("NDA_LLADDR")
        # (the kernel's own NOARP entries for multicast groups are no stations)
        if (address and lladdr and entry["state"] & (NUD_PERMANENT | NUD_NOARP)
                and not ipaddress.IPv6Address(address).is_multicast):
            stations[_normal(address)] = lladdr.lower()
    return stations


def station_port(ipr: IPRoute, bridge: int, lladdr: str) -> int | None:
    """The port of ``bridge`` whose static forwarding entry holds ``lladdr`` (None: none does)."""
    for entry in ipr.get_neighbours(family=socket.AF_BRIDGE):
        if ((entry.get_attr("NDA_LLADDR") or "").lower() == lladdr and entry.get_attr("NDA_MASTER") == bridge
                and entry["state"] & (NUD_NOARP | NUD_PERMANENT)):
            return entry["ifindex"]
    return None


def attached(ipr: IPRoute, access_interface: str, address: str) -> bool:
    """Whether the station holding ``address`` is associated: its own port has carrier."""
    link = _link(ipr, access_interface)
    if link is None:
        return False
    if not _is_bridge(link):  # a point-to-point access link: its one station's port is the link
        return _carrier(link)
    lladdr = associated(ipr, access_interface).get(_normal(address))
    if lladdr is None:
        return False
    port = station_port(ipr, link["index"], lladdr)
    return port is not None and _carrier(ipr.get_links(port)[0])
