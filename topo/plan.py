"""The paper's topology (Fig. 4) as plain data: nodes, links, the IPv6 addressing plan, routes.

Nothing here touches a kernel; :mod:`topo.network` turns this plan into a Mininet network. The
data below is the one source of the addressing plan: the builder and the tests read it, and
``tests/test_readme.py`` checks the README's addressing table against it. Prefixes come from the
documentation range 2001:db8::/32 (RFC 3849); the paper's DNS names (MN.par.ipv6.com, ...) are
``MN_COA``, ``AR_ACCESS_ADDRESS`` and ``LOOPBACK_ADDRESSES``.
"""

from __future__ import annotations

import dataclasses
import ipaddress

MN, PAR, NAR, HA, AAA = "mn", "par", "nar", "ha", "aaa"
#: the MN's identity wherever one is asked for: its Binding Updates, IKE and EAP, the records
MN_IDENTITY = "mn@testbed"
ACCESS_ROUTERS = (PAR, NAR)
NODES = (MN, PAR, NAR, HA, AAA)

# Link classes a scenario sets parameters for.
ACCESS, AR_AR, AR_HA, AR_AAA = "access", "ar_ar", "ar_ha", "ar_aaa"
LINK_CLASSES = (ACCESS, AR_AR, AR_HA, AR_AAA)


@dataclasses.dataclass(frozen=True)
class Link:
    """A point-to-point link with a /64 and one address per end (None: no global address)."""

    name: str
    link_class: str
    a: str
    b: str
    prefix: str
    a_address: str | None
    b_address: str | None

    def interface(self, node: str) -> str:
        """Interface names are ``<node>-<peer>``: readable in captures and `ip link`."""
        peer = self.b if node == self.a else self.a
        return f"{node}-{peer}"

    def address_of(self, node: str) -> str | None:
        return self.a_address if node == self.a else self.b_address


@dataclasses.dataclass(frozen=True)
class Route:
    node: str
    destination: str
    via: str
    link: str


# Names of the access links, used by the handover primitive.
ACCESS_LINK = {PAR: "mn-par", NAR: "mn-nar"}

MN_COA = {PAR: "2001:db8:1::100", NAR: "2001:db8:2::100"}
AR_ACCESS_ADDRESS = {PAR: "2001:db8:1::1", NAR: "2001:db8:2::1"}
ACCESS_PREFIX = {PAR: "2001:db8:1::/64", NAR: "2001:db8:2::/64"}
# Each AR's address on the AR-AR link: CXTP between the ARs runs between these, in ESP.
AR_LINK_ADDRESS = {PAR: "2001:db8:12::1", NAR: "2001:db8:12::2"}
HA_ADDRESS = "2001:db8:3::1"
#: the HA's home prefix (RFC 6275): the HA's own address and the MN's home address are on it,
#: and every router routes it to the HA
HOME_PREFIX = "2001:db8:3::/64"
#: the MN's home address: on the MN's loopback; its probes and applications use it wherever the MN
#: is, through the MN-HA tunnel (the HA intercepts it and tunnels it to the care-of address)
MN_HOME_ADDRESS = "2001:db8:3::100"
#: the MN's routing table for what leaves from its home address (a rule "from MN_HOME_ADDRESS"):
#: its default route is the tunnel of the care-of address the MN has
HOME_TABLE = 100
#: the MN-HA tunnels' MTU: an ESP tunnel over the access link must still fit in 1500 octets
HOME_TUNNEL_MTU = 1400
AAA_ADDRESS = "2001:db8:4::1"
LOOPBACK_ADDRESSES = {HA: HA_ADDRESS, AAA: AAA_ADDRESS}

LINKS = (
    # The MN's addresses on the access links are its care-of addresses: configured on attach.
    Link("mn-par", ACCESS, MN, PAR, "2001:db8:1::/64", None, "2001:db8:1::1"),
    Link("mn-nar", ACCESS, MN, NAR, "2001:db8:2::/64", None, "2001:db8:2::1"),
    Link("par-nar", AR_AR, PAR, NAR, "2001:db8:12::/64", "2001:db8:12::1", "2001:db8:12::2"),
    Link("par-ha", AR_HA, PAR, HA, "2001:db8:13::/64", "2001:db8:13::1", "2001:db8:13::3"),
    Link("nar-ha", AR_HA, NAR, HA, "2001:db8:23::/64", "2001:db8:23::2", "2001:db8:23::3"),
    Link("par-aaa", AR_AAA, PAR, AAA, "2001:db8:14::/64", "2001:db8:14::1", "2001:db8:14::4"),
    Link("nar-aaa", AR_AAA, NAR, AAA, "2001:db8:24::/64", "2001:db8:24::2", "2001:db8:24::4"),
)
LINKS_BY_NAME = {link.name: link for link in LINKS}

# Static routes. The MN's default route is set by the handover primitive, towards its current AR.
ROUTES = (
    Route(PAR, HOME_PREFIX, "2001:db8:13::3", "par-ha"),
    Route(PAR, AAA_ADDRESS + "/128", "2001:db8:14::4", "par-aaa"),
    Route(PAR, "2001:db8:2::/64", "2001:db8:12::2", "par-nar"),
    Route(NAR, HOME_PREFIX, "2001:db8:23::3", "nar-ha"),
    Route(NAR, AAA_ADDRESS + "/128", "2001:db8:24::4", "nar-aaa"),
    Route(NAR, "2001:db8:1::/64", "2001:db8:12::1", "par-nar"),
    # The HA reaches each access prefix, and each AR's own addresses, through that AR.
    Route(HA, "2001:db8:1::/64", "2001:db8:13::1", "par-ha"),
    Route(HA, "2001:db8:2::/64", "2001:db8:23::2", "nar-ha"),
    Route(HA, "2001:db8:12::/64", "2001:db8:13::1", "par-ha"),
    Route(HA, "2001:db8:14::/64", "2001:db8:13::1", "par-ha"),
    Route(HA, "2001:db8:24::/64", "2001:db8:23::2", "nar-ha"),
    Route(HA, AAA_ADDRESS + "/128", "2001:db8:13::1", "par-ha"),
    Route(AAA, "2001:db8:1::/64", "2001:db8:14::1", "par-aaa"),
    Route(AAA, "2001:db8:2::/64", "2001:db8:24::2", "nar-aaa"),
    Route(AAA, "2001:db8:12::/64", "2001:db8:14::1", "par-aaa"),
    Route(AAA, "2001:db8:13::/64", "2001:db8:14::1", "par-aaa"),
    Route(AAA, "2001:db8:23::/64", "2001:db8:24::2", "nar-aaa"),
    Route(AAA, HOME_PREFIX, "2001:db8:14::1", "par-aaa"),
)

#: the HA forwards too: it intercepts what any node sends to the MN's home address (RFC 6275 §10.4.1)
FORWARDING_NODES = (PAR, NAR, HA)


def home_tunnel(node: str, ar: str) -> str:
    """The IPv6-in-IPv6 tunnel (``ip6_tunnel``) between the MN's home address and the HA that runs
    over ``ar``: on the MN, the one whose local end is its care-of address on ``ar``'s link; on
    the HA, the one bound to its link towards ``ar`` (the kernel matches a received packet to the
    tunnel of the link it came in on), so the interface a packet arrives on still names its path."""
    return f"{node}-home-{ar}"


@dataclasses.dataclass(frozen=True)
class HomeTunnel:
    node: str
    name: str
    local: str
    remote: str
    #: the underlying interface the tunnel is bound to (None: any)
    link: str | None


def home_tunnels(initial_ar: str) -> tuple[HomeTunnel, ...]:
    """The MN-HA tunnels, one per AR on each end; the HA's start towards the MN's care-of address
    at ``initial_ar`` (its agent points them at each new one a Binding Update brings)."""
    tunnels = []
    for ar in ACCESS_ROUTERS:
        tunnels.append(HomeTunnel(MN, home_tunnel(MN, ar), MN_COA[ar], HA_ADDRESS, None))
        tunnels.append(HomeTunnel(HA, home_tunnel(HA, ar), HA_ADDRESS, MN_COA[initial_ar],
                                  LINKS_BY_NAME[f"{ar}-{HA}"].interface(HA)))
    return tuple(tunnels)


def new_path_interfaces(ar: str) -> dict[str, str]:
    """Where the probes arrive once the MN is attached at ``ar``: its end of the tunnel over
    ``ar`` (the downlink) and the HA's (the uplink), by probe end."""
    return {MN: home_tunnel(MN, ar), HA: home_tunnel(HA, ar)}


def access_path_interfaces(ar: str) -> dict[str, str]:
    """The MN's interface on ``ar``'s access link and the HA's on its link to ``ar``: where the
    probes arrive when no Mobile IPv6 tunnel carries them (an ESP tunnel to the HA, or runs made
    before the home address, whose probes went to the care-of address)."""
    return {MN: LINKS_BY_NAME[ACCESS_LINK[ar]].interface(MN), HA: LINKS_BY_NAME[f"{ar}-{HA}"].interface(HA)}


# -- many mobile nodes -------------------------------------------------------------------------------
# MN 0 is the Mininet host ``mn`` with the addresses above. With more than one MN, each AR's access
# network is a cell: a bridge in the AR's namespace (``cell(ar)``) that holds the AR's access
# address, with one port per MN (``station_port``), as an access point has one association per
# station. MN ``i`` gets ``::100 + i`` on each access prefix and on the home prefix; in its own
# namespace its interfaces carry MN 0's names, so an agent's code is the same for every MN.

#: the most MNs one testbed holds (their addresses stay inside ::100 - ::10ff of each prefix)
MAX_MNS = 4096
_MN_HOST_OFFSET = 0x100


def _nth(prefix: str, index: int) -> str:
    return str(ipaddress.ip_network(prefix)[_MN_HOST_OFFSET + index])


def _check_mn(index: int) -> int:
    if not 0 <= index < MAX_MNS:
        raise ValueError(f"MN index {index} outside 0..{MAX_MNS - 1}")
    return index


def mn_node(index: int) -> str:
    """The MN's name in records and interface names: ``mn`` for MN 0, ``mn<i>`` for the others."""
    return MN if _check_mn(index) == 0 else f"{MN}{index}"


def mn_coa(index: int, ar: str) -> str:
    """MN ``index``'s care-of address on ``ar``'s access prefix (MN 0's is ``MN_COA[ar]``)."""
    return _nth(ACCESS_PREFIX[ar], _check_mn(index))


def mn_home_address(index: int) -> str:
    """MN ``index``'s home address on the HA's home prefix (MN 0's is ``MN_HOME_ADDRESS``)."""
    return _nth(HOME_PREFIX, _check_mn(index))


def mn_identity(index: int) -> str:
    """MN ``index``'s identity for Binding Updates, IKE, EAP and the records."""
    return MN_IDENTITY if _check_mn(index) == 0 else f"{MN}{index}@testbed"


def mn_index(identity: str) -> int:
    """The index of the MN whose identity is ``identity`` (:func:`mn_identity` read back)."""
    if identity == MN_IDENTITY:
        return 0
    name, _, realm = identity.partition("@")
    number = name[len(MN):]
    if not name.startswith(MN) or realm != MN_IDENTITY.partition("@")[2] or not number.isdigit() \
            or number.startswith("0"):
        raise ValueError(f"{identity!r} is no MN's identity of this testbed")
    return _check_mn(int(number))


def cell(ar: str) -> str:
    """The bridge that is ``ar``'s access network when the testbed has more than one MN."""
    return f"{ar}-cell"


def station_port(ar: str, index: int) -> str:
    """``ar``'s port towards MN ``index`` (for MN 0, its end of the ``mn-<ar>`` link)."""
    return f"{ar}-{mn_node(index)}"


def ar_access_interface(ar: str, mns: int) -> str:
    """Where ``ar`` holds its access address: the ``mn-<ar>`` link's end with one MN (a cell of one
    station is a point-to-point link), the cell's bridge with more."""
    return LINKS_BY_NAME[ACCESS_LINK[ar]].interface(ar) if mns == 1 else cell(ar)


def ha_home_tunnel(index: int, ar: str) -> str:
    """The HA's end of MN ``index``'s tunnel over ``ar`` (MN 0's is ``home_tunnel(HA, ar)``)."""
    return home_tunnel(HA, ar) if _check_mn(index) == 0 else f"{HA}-h{index}-{ar}"


def mn_home_tunnels(index: int, initial_ar: str) -> tuple[HomeTunnel, ...]:
    """MN ``index``'s tunnels, as :func:`home_tunnels` gives MN 0's: its own ends carry MN 0's
    names (each MN has its own namespace), the HA's are per MN."""
    tunnels = []
    for ar in ACCESS_ROUTERS:
        tunnels.append(HomeTunnel(MN, home_tunnel(MN, ar), mn_coa(index, ar), HA_ADDRESS, None))
        tunnels.append(HomeTunnel(HA, ha_home_tunnel(index, ar), HA_ADDRESS, mn_coa(index, initial_ar),
                                  LINKS_BY_NAME[f"{ar}-{HA}"].interface(HA)))
    return tuple(tunnels)


def links_of(node: str) -> tuple[Link, ...]:
    return tuple(link for link in LINKS if node in (link.a, link.b))


def addressing_table() -> list[tuple[str, str, str]]:
    """(node, interface or 'lo', address/prefix) for every configured address; for the README."""
    rows = []
    for link in LINKS:
        prefix_length = ipaddress.ip_network(link.prefix).prefixlen
        for node in (link.a, link.b):
            address = link.address_of(node)
            if address:
                rows.append((node, link.interface(node), f"{address}/{prefix_length}"))
    for node, address in LOOPBACK_ADDRESSES.items():
        rows.append((node, "lo", f"{address}/128"))
    rows.append((MN, "lo", f"{MN_HOME_ADDRESS}/128 (home address)"))
    for ar, address in MN_COA.items():
        rows.append((MN, LINKS_BY_NAME[ACCESS_LINK[ar]].interface(MN), f"{address}/64 (when attached to {ar})"))
    return rows
