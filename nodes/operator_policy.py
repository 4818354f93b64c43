"""The operator's static XFRM policies, and the priorities that order every policy of ours.

Besides the contexts that move, the nodes hold policies set up once: the ARs' access-link policy
(:func:`access_policies`, the same on every AR: paper §V-A2), CXTP between ARs only under ESP
(:func:`cxtp_requires_esp`, :func:`no_forwarding_as`: RFC 4067 §6.2), and the MN's signalling
outside its tunnel (:func:`mn_bypass_policies`). Their priorities and those of the contexts'
tunnel policies (:mod:`nodes.provisioning`) only make sense together, so they are defined here.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from cxtp.constants import ICMPV6_TYPE_EXPERIMENTAL_MOBILITY
from ipsec import SecurityPolicy, Selector, Template
from ipsec.xfrm_messages import (
    XFRM_MODE_TRANSPORT,
    XFRM_POLICY_BLOCK,
    XFRM_POLICY_FWD,
    XFRM_POLICY_IN,
    XFRM_POLICY_OUT,
)

# Policy priorities: lower wins. MN tunnels beat the operator's access-link block, and the
# bypasses (neighbour discovery, CXTP's ICMPv6, Mobile IPv6 signalling, IKE) beat everything.
PRIORITY_ANTI_SPOOF = 1  # an AR forwards nothing claiming to be its own: before any bypass
PRIORITY_BYPASS = 10
PRIORITY_TUNNEL = 1000
PRIORITY_BLOCK = 0x7FFFF000  # below the priorities charon computes for its own policies

IPPROTO_TCP, IPPROTO_UDP, IPPROTO_SCTP, IPPROTO_ICMPV6, IPPROTO_MH = 6, 17, 132, 58, 135


def cxtp_requires_esp(port: int = 5091) -> tuple[SecurityPolicy, ...]:
    """CXTP between ARs only under ESP, whoever the peer (RFC 4067 §6.2): SCTP and TCP to or from
    the CXTP port, in and out, any address, need an ESP transport SA. The kernel then drops CXTP
    in clear from any host that is not a configured peer AR (it has no SA with us), and never
    sends CXTP in clear to one (no SA: nothing leaves). The per-peer policies of
    :func:`nodes.provisioning.ar_ar_contexts` take precedence for the peers themselves.

    And an AR forwards no CXTP: a host that forges CXTP with this AR's link address as source and
    sends it to the peer through this AR would otherwise have it wrapped in this AR's own SA (the
    per-peer ``out`` policy also selects forwarded packets), and the peer would take it for this
    AR's. Legitimate CXTP never crosses an AR: the ARs speak it to each other directly."""
    transport = (Template(daddr="::", saddr="::", mode=XFRM_MODE_TRANSPORT),)
    policies = []
    for proto in (IPPROTO_SCTP, IPPROTO_TCP):
        for side in ("sport", "dport"):
            ports: dict[str, Any] = {side: port, f"{side}_mask": 0xFFFF}
            selector = Selector(proto=proto, **ports)
            for direction in (XFRM_POLICY_IN, XFRM_POLICY_OUT):
                policies.append(SecurityPolicy(selector=selector, dir=direction, templates=transport,
                                               priority=PRIORITY_TUNNEL + 1))
            policies.append(SecurityPolicy(selector=selector, dir=XFRM_POLICY_FWD, action=XFRM_POLICY_BLOCK,
                                           priority=PRIORITY_BYPASS))
    return tuple(policies)


def no_forwarding_as(addresses) -> tuple[SecurityPolicy, ...]:
    """An AR forwards nothing that claims to come from the AR itself. Its ``out`` policies select
    packets by their addresses, forwarded ones too: a forgery with the AR's link address as source,
    sent to the peer AR through this AR, would be wrapped in this AR's own ESP SA, and the peer
    would take it for this AR's. The port-based block of :func:`cxtp_requires_esp` does not see
    fragments (their flow has no ports); this does, whatever the protocol."""
    return tuple(SecurityPolicy(selector=Selector(saddr=address, prefixlen_s=128), dir=XFRM_POLICY_FWD,
                                action=XFRM_POLICY_BLOCK, priority=PRIORITY_ANTI_SPOOF)
                 for address in dict.fromkeys(addresses) if ipaddress.ip_address(address) != ipaddress.ip_address("::"))


#: ICMPv6 types that stay outside every tunnel: neighbour discovery (RFC 4861: RS, RA, NS, NA,
#: Redirect) and CXTP's Experimental Mobility (CTAR, CTAA; RFC 4067 §3.2). Nothing else: an echo,
#: an error or any other ICMPv6 message between the MN and the HA goes through the tunnel like
#: the rest of their traffic. MLD needs no bypass: its reports and queries go to link-local
#: multicast groups from link-local sources, which no tunnel or block selector here matches.
ND_ICMPV6_TYPES = (133, 134, 135, 136, 137)
CXTP_ICMPV6_TYPE = ICMPV6_TYPE_EXPERIMENTAL_MOBILITY
SIGNALLING_ICMPV6_TYPES = (*ND_ICMPV6_TYPES, CXTP_ICMPV6_TYPE)


def icmpv6_selector(icmp_type: int, **fields) -> Selector:
    """A selector for one ICMPv6 type, any code. XFRM carries the ICMPv6 type in the selector's
    source port and the code in its destination port (the kernel's flow key aliases
    ``fl6_icmp_type`` to the source port, in network order: ``ip xfrm`` shows ``type 135``);
    ``dport_mask`` 0 leaves the code free."""
    return Selector(proto=IPPROTO_ICMPV6, sport=icmp_type, sport_mask=0xFFFF, **fields)


def _signalling_selectors(**fields) -> tuple[Selector, ...]:
    """Neighbour discovery, CXTP's ICMPv6 and the Mobility Header, nothing more."""
    return (*(icmpv6_selector(icmp_type, **fields) for icmp_type in SIGNALLING_ICMPV6_TYPES),
            Selector(proto=IPPROTO_MH, **fields))


def mn_bypass_policies(ha: str | None = None, home_address: str | None = None) -> tuple[SecurityPolicy, ...]:
    """The MN's signalling stays outside the tunnel (paper §VI-A: MIPv6 signalling is not protected
    by it, and the CTAR must not be): neighbour discovery, CXTP's ICMPv6 type 150 and the Mobility
    Header, both directions, any address, so that they are no part of the context that moves.
    Any other ICMPv6 (an echo to the HA, say) is the tunnel's like any other traffic. With ``ha``,
    everything else the MN sends to the HA is blocked unless a tunnel policy (higher priority)
    takes it: the protected flow never leaves the MN in clear, also between an attach and the
    moment its SAs serve the new address. With ``home_address``, what leaves from it goes into the
    MN-HA tunnel (Mobile IPv6): its IPv6-in-IPv6 packet, from the care-of address to the HA, is
    what the guard and the tunnel policies then see."""
    bypass = tuple(SecurityPolicy(selector=selector, dir=direction, priority=PRIORITY_BYPASS)
                   for selector in _signalling_selectors() for direction in (XFRM_POLICY_IN, XFRM_POLICY_OUT))
    if ha is None:
        return bypass
    guard = SecurityPolicy(selector=Selector(daddr=ha, prefixlen_d=128), dir=XFRM_POLICY_OUT,
                           action=XFRM_POLICY_BLOCK, priority=PRIORITY_BLOCK)
    if home_address is None:
        return (*bypass, guard)
    home = SecurityPolicy(selector=Selector(saddr=home_address, prefixlen_s=128, daddr=ha, prefixlen_d=128),
                          dir=XFRM_POLICY_OUT, priority=PRIORITY_BYPASS)
    return (*bypass, home, guard)


def access_policies(access_prefix: str) -> tuple[SecurityPolicy, ...]:
    """The operator's policy, the same on every AR (paper §V-A2: ISPs share one SPD).

    No plaintext leaves the AR towards its access link except signalling: neighbour discovery,
    CXTP's CTAA (ICMPv6 type 150), Mobile IPv6 signalling and IKE's answers. Nothing in clear from
    the access link is forwarded except Mobile IPv6 signalling (the Binding Update to the HA):
    neighbour discovery and the CTAR end at the AR, and an MN's other traffic travels in its
    tunnel. Without it a nAR that has not yet received an MN's context would forward the HA's
    traffic to the MN in clear; with it, that traffic waits for the context (RFC 4067 §3.1: the
    nAR should not process the MN's traffic before the transfer completes).
    """
    network = ipaddress.ip_network(access_prefix)
    prefix, length = network.network_address.compressed, network.prefixlen
    policies = []
    for direction, selector_side in ((XFRM_POLICY_OUT, "daddr"), (XFRM_POLICY_FWD, "saddr")):
        side: dict[str, Any] = {selector_side: prefix, f"prefixlen_{selector_side[0]}": length}
        if direction == XFRM_POLICY_OUT:
            allowed = [*_signalling_selectors(**side),
                       # IKE answers from the AR to the MN
                       *(Selector(proto=IPPROTO_UDP, sport=port, sport_mask=0xFFFF, **side) for port in (500, 4500))]
        else:
            allowed = [Selector(proto=IPPROTO_MH, **side)]
        policies += [SecurityPolicy(selector=selector, dir=direction, priority=PRIORITY_BYPASS)
                     for selector in allowed]
        policies.append(SecurityPolicy(selector=Selector(**side), dir=direction, action=XFRM_POLICY_BLOCK,
                                       priority=PRIORITY_BLOCK))
    return tuple(policies)


# -- a security gateway behind the access routers (MOBIKE to the HA) -------------------------------
IPPROTO_ESP = 50
IKE_PORTS = (500, 4500)
#: the priority of the CHILD_SA an MN keeps with a fixed security gateway (MOBIKE, RFC 4555): it
#: protects what the MN sends from its home address to the HA, which :func:`mn_bypass_policies`
#: lets into the Mobile IPv6 tunnel in clear at PRIORITY_BYPASS; the gateway's SA must win
PRIORITY_GATEWAY_TUNNEL = PRIORITY_BYPASS - 5


def gateway_access_policies(access_prefix: str, gateway: str) -> tuple[SecurityPolicy, ...]:
    """What an AR lets through for MNs on its access link that keep an IPsec tunnel with a security
    gateway beyond it (``gateway``, the HA under MOBIKE), on top of :func:`access_policies`.

    The operator's rule stays: no plaintext between the access link and the rest of the network.
    ESP between an MN's address on this link and the gateway is not plaintext, and IKE with the
    gateway is signalling: both are forwarded, ESP both ways, IKE from the MN (the gateway's
    answers already pass as IKE answers). And only from addresses of this link (ingress
    filtering, RFC 2827): ESP or IKE towards the gateway from any other source is not forwarded,
    so an MN whose SA still names the care-of address of its previous link cannot have this AR
    carry it."""
    network = ipaddress.ip_network(access_prefix)
    prefix, length = network.network_address.compressed, network.prefixlen
    from_link: dict[str, Any] = {"saddr": prefix, "prefixlen_s": length, "daddr": gateway, "prefixlen_d": 128}
    to_gateway: dict[str, Any] = {"daddr": gateway, "prefixlen_d": 128}
    allowed = [Selector(proto=IPPROTO_ESP, **from_link),
               *(Selector(proto=IPPROTO_UDP, dport=port, dport_mask=0xFFFF, **from_link) for port in IKE_PORTS)]
    refused = [Selector(proto=IPPROTO_ESP, **to_gateway),
               *(Selector(proto=IPPROTO_UDP, dport=port, dport_mask=0xFFFF, **to_gateway) for port in IKE_PORTS)]
    to_link = Selector(proto=IPPROTO_ESP, saddr=gateway, prefixlen_s=128, daddr=prefix, prefixlen_d=length)
    return (*(SecurityPolicy(selector=selector, dir=XFRM_POLICY_FWD, priority=PRIORITY_BYPASS) for selector in allowed),
            *(SecurityPolicy(selector=selector, dir=XFRM_POLICY_FWD, action=XFRM_POLICY_BLOCK,
                             priority=PRIORITY_BLOCK) for selector in refused),
            SecurityPolicy(selector=to_link, dir=XFRM_POLICY_OUT, priority=PRIORITY_BYPASS))


# -- pre-authentication with a neighbouring access router (make-before-break) ----------------------
def preauth_access_policies(access_prefix: str, peers: list[tuple[str, str]]) -> tuple[SecurityPolicy, ...]:
    """What an AR lets through, on top of :func:`access_policies`, so that an MN on its access link
    can pre-authenticate with a neighbouring AR before it moves there (IEEE 802.11i
    pre-authentication, RFC 5836): ``peers`` are (the neighbour's access address, its access
    prefix).

    IKE from this link's prefix to each neighbour's access address is forwarded: signalling, like
    the Binding Update. And no ESP whose source lies in a neighbour's access prefix is forwarded,
    from any interface (ingress filtering, RFC 2827): the SAs an MN pre-establishes with the
    neighbour already name its future care-of address there, and an ESP packet under them sent
    before the MN is on the neighbour's link would otherwise cross this AR and the AR-AR link and
    be decrypted by the neighbour. Legitimate traffic from a neighbour's prefix never crosses this
    AR: the MN there reaches the HA through the neighbour, and IKE with this AR ends here."""
    network = ipaddress.ip_network(access_prefix)
    prefix, length = network.network_address.compressed, network.prefixlen
    policies = []
    for peer_address, peer_prefix in peers:
        for port in IKE_PORTS:
            policies.append(SecurityPolicy(
                selector=Selector(proto=IPPROTO_UDP, dport=port, dport_mask=0xFFFF, saddr=prefix, prefixlen_s=length,
                                  daddr=peer_address, prefixlen_d=128),
                dir=XFRM_POLICY_FWD, priority=PRIORITY_BYPASS))
        peer = ipaddress.ip_network(peer_prefix)
        policies.append(SecurityPolicy(
            selector=Selector(proto=IPPROTO_ESP, saddr=peer.network_address.compressed, prefixlen_s=peer.prefixlen),
            dir=XFRM_POLICY_FWD, action=XFRM_POLICY_BLOCK, priority=PRIORITY_ANTI_SPOOF))
    return tuple(policies)
