"""The IPsec context as a CXTP context type: the glue between the two cores.

``cxtp`` knows nothing of IPsec and ``ipsec`` nothing of CXTP (the paper keeps its CXTP module
and its IPsec module apart for the same reason); this module registers the IPsec context with a
node's CXTP registry and maps the registry's hooks onto kernel operations:

========================  =============================================================
hook (RFC 4067 role)      what happens in the kernel
========================  =============================================================
``collect`` (pAR)          read the MN's SAs (keys, replay state, used lifetime) and policies
``install`` (nAR)          decode and keep the context, inactive (nothing in the kernel yet:
                           the MN's new care-of address is known only from its CTAR)
``activate`` (nAR)         rewrite per Tables II/IV (MN_p -> MN_n, pAR -> nAR, fwd policy),
                           install all-or-nothing; a colliding inbound SPI is replaced and
                           the change goes to the MN in the CTAA
``discard`` (nAR)          forget the inactive context
``release`` (pAR)          delete the MN's SAs and policies (the nAR confirmed with CTDR)
``acknowledged`` (MN)      apply the nAR's SPI changes to the MN's outbound SA
========================  =============================================================

It also builds the static access policies of the ARs and the initial context of an attach (the
paper's Fig. 5: the static SAs of §VI-A, in tunnel mode between the MN's care-of address and its
AR, inner MN <-> HA).
"""

from __future__ import annotations

import ipaddress
import os

from ipsec import (
    IPSEC_CONTEXT_FPT,
    Algorithm,
    IpsecContext,
    IpsecError,
    SecurityAssociation,
    SecurityPolicy,
    Selector,
    Template,
    XfrmError,
    apply_mn_handover,
    apply_spi_changes,
    capture_context,
    decode_spi_changes,
    encode_spi_changes,
    install_context,
    remove_context,
    rewrite_for_nar,
)
from ipsec.xfrm_messages import (
    XFRM_MODE_TRANSPORT,
    XFRM_POLICY_BLOCK,
    XFRM_POLICY_FWD,
    XFRM_POLICY_IN,
    XFRM_POLICY_OUT,
)

# CTAA/CTDR status codes of the IPsec context type (RFC 4067 §2.3 leaves them to the type).
STATUS_OK = 0x00
STATUS_NO_CONTEXT = 0x10        # activate without a context
STATUS_BAD_CONTEXT = 0x11       # the context did not decode
STATUS_INSTALL_FAILED = 0x12    # the kernel refused it (nothing left installed)

# Policy priorities: lower wins. MN tunnels beat the operator's access-link block, and the
# bypasses (neighbour discovery, CXTP's ICMPv6, Mobile IPv6 signalling, IKE) beat everything.
PRIORITY_BYPASS = 10
PRIORITY_TUNNEL = 1000
PRIORITY_BLOCK = 0x7FFFF000  # below the priorities charon computes for its own policies

IPPROTO_TCP, IPPROTO_UDP, IPPROTO_SCTP, IPPROTO_ICMPV6, IPPROTO_MH = 6, 17, 132, 58, 135

# Algorithm profiles for the initial attach: a modern default and the paper's des-cbc.
PROFILES = {
    "aes-gcm": lambda: (Algorithm("aead", "rfc4106(gcm(aes))", os.urandom(20), 128),),
    "aes-cbc-sha256": lambda: (Algorithm("crypt", "cbc(aes)", os.urandom(16), 128),
                               Algorithm("auth_trunc", "hmac(sha256)", os.urandom(32), 128)),
    "des-cbc": lambda: (Algorithm("crypt", "cbc(des)", os.urandom(8), 64),
                        Algorithm("auth_trunc", "hmac(sha1)", os.urandom(20), 96)),
}


def ar_ar_contexts(ar_a: str, ar_b: str, profile: str, spi_a_to_b: int = 0x5091A,
                   spi_b_to_a: int = 0x5091B) -> tuple[IpsecContext, IpsecContext]:
    """ESP in transport mode between two ARs for CXTP over SCTP and TCP (RFC 4067 §6.2: ARs MUST
    protect CXTP with ESP, non-null encryption and authentication; the SAs are set up in advance
    so that no handover waits for a key exchange). Returns (ar_a's context, ar_b's context)."""
    a_to_b = SecurityAssociation(daddr=ar_b, saddr=ar_a, spi=spi_a_to_b, mode=XFRM_MODE_TRANSPORT,
                                 algorithms=PROFILES[profile]())
    b_to_a = SecurityAssociation(daddr=ar_a, saddr=ar_b, spi=spi_b_to_a, mode=XFRM_MODE_TRANSPORT,
                                 algorithms=PROFILES[profile]())
    transport = (Template(daddr="::", saddr="::", mode=XFRM_MODE_TRANSPORT),)

    def policies(local: str, remote: str) -> tuple[SecurityPolicy, ...]:
        result = []
        for proto in (IPPROTO_SCTP, IPPROTO_TCP):
            out = Selector(saddr=local, daddr=remote, prefixlen_s=128, prefixlen_d=128, proto=proto)
            into = Selector(saddr=remote, daddr=local, prefixlen_s=128, prefixlen_d=128, proto=proto)
            result += [SecurityPolicy(selector=out, dir=XFRM_POLICY_OUT, templates=transport, priority=PRIORITY_TUNNEL),
                       SecurityPolicy(selector=into, dir=XFRM_POLICY_IN, templates=transport, priority=PRIORITY_TUNNEL)]
        return tuple(result)

    return (IpsecContext(sas=(a_to_b, b_to_a), policies=policies(ar_a, ar_b)),
            IpsecContext(sas=(a_to_b, b_to_a), policies=policies(ar_b, ar_a)))


def mn_bypass_policies() -> tuple[SecurityPolicy, ...]:
    """The MN's signalling stays outside the tunnel (paper §VI-A: MIPv6 signalling is not protected
    by it, and the CTAR must not be): ICMPv6 and the Mobility Header, both directions, any address,
    so that they are no part of the context that moves."""
    return tuple(SecurityPolicy(selector=Selector(proto=proto), dir=direction, priority=PRIORITY_BYPASS)
                 for proto in (IPPROTO_ICMPV6, IPPROTO_MH) for direction in (XFRM_POLICY_IN, XFRM_POLICY_OUT))


def _same(a: str, b: str) -> bool:
    return ipaddress.ip_address(a) == ipaddress.ip_address(b)


def initial_contexts(mn: str, ar: str, ha: str, profile: str, spi_mn_in: int, spi_mn_out: int,
                     reqid: int = 1) -> tuple[IpsecContext, IpsecContext]:
    """The MN's and the AR's context after the initial attach (paper Fig. 5, Tables I-IV "p").

    SA1 carries AR -> MN (SPI chosen by the MN, its receiver), SA2 MN -> AR. Both are tunnel
    mode with wildcard SA selectors (as IKE daemons install them), so that XFRM migrate can move
    them; the policies carry the inner addresses MN <-> HA.
    """
    if profile not in PROFILES:
        raise IpsecError(f"unknown algorithm profile {profile!r} (known: {', '.join(PROFILES)})")
    sa1 = SecurityAssociation(daddr=mn, saddr=ar, spi=spi_mn_in, reqid=reqid, algorithms=PROFILES[profile]())
    sa2 = SecurityAssociation(daddr=ar, saddr=mn, spi=spi_mn_out, reqid=reqid, algorithms=PROFILES[profile]())
    mn_ha = Selector(saddr=mn, daddr=ha, prefixlen_s=128, prefixlen_d=128)
    ha_mn = Selector(saddr=ha, daddr=mn, prefixlen_s=128, prefixlen_d=128)
    to_ar = Template(daddr=ar, saddr=mn, reqid=reqid)
    to_mn = Template(daddr=mn, saddr=ar, reqid=reqid)
    mn_side = IpsecContext(sas=(sa1, sa2), policies=(
        SecurityPolicy(selector=mn_ha, dir=XFRM_POLICY_OUT, templates=(to_ar,), priority=PRIORITY_TUNNEL),
        SecurityPolicy(selector=ha_mn, dir=XFRM_POLICY_IN, templates=(to_mn,), priority=PRIORITY_TUNNEL),
    ))
    ar_side = IpsecContext(sas=(sa1, sa2), policies=(
        SecurityPolicy(selector=ha_mn, dir=XFRM_POLICY_OUT, templates=(to_mn,), priority=PRIORITY_TUNNEL),
        SecurityPolicy(selector=mn_ha, dir=XFRM_POLICY_IN, templates=(to_ar,), priority=PRIORITY_TUNNEL),
        SecurityPolicy(selector=mn_ha, dir=XFRM_POLICY_FWD, templates=(to_ar,), priority=PRIORITY_TUNNEL),
    ))
    return mn_side, ar_side


def access_policies(access_prefix: str) -> tuple[SecurityPolicy, ...]:
    """The operator's policy, the same on every AR (paper §V-A2: ISPs share one SPD).

    No plaintext leaves the AR towards its access link, and none from it is forwarded, except
    ICMPv6 (neighbour discovery, CXTP's CTAR/CTAA), Mobile IPv6 signalling and IKE. Without it a
    nAR that has not yet received an MN's context would forward the HA's traffic to the MN in
    clear; with it, that traffic waits for the context (RFC 4067 §3.1: the nAR should not
    process the MN's traffic before the transfer completes).
    """
    network = ipaddress.ip_network(access_prefix)
    prefix, length = network.network_address.compressed, network.prefixlen
    policies = []
    for direction, selector_side in ((XFRM_POLICY_OUT, "daddr"), (XFRM_POLICY_FWD, "saddr")):
        side = {selector_side: prefix, f"prefixlen_{selector_side[0]}": length}
        for proto in (IPPROTO_ICMPV6, IPPROTO_MH):
            policies.append(SecurityPolicy(selector=Selector(proto=proto, **side), dir=direction,
                                           priority=PRIORITY_BYPASS))
        if direction == XFRM_POLICY_OUT:
            for port in (500, 4500):  # IKE answers from the AR to the MN
                policies.append(SecurityPolicy(
                    selector=Selector(proto=IPPROTO_UDP, sport=port, sport_mask=0xFFFF, **side),
                    dir=direction, priority=PRIORITY_BYPASS))
        policies.append(SecurityPolicy(selector=Selector(**side), dir=direction, action=XFRM_POLICY_BLOCK,
                                       priority=PRIORITY_BLOCK))
    return tuple(policies)


class ArIpsecHandler:
    """ContextHandler of the IPsec context on an access router (pAR and nAR roles)."""

    fpt = IPSEC_CONTEXT_FPT

    def __init__(self, xfrm, own_address: str, trace=lambda *a, **k: None) -> None:
        self.xfrm = xfrm
        self.own_address = own_address
        self.trace = trace
        self.inactive: dict[str, IpsecContext] = {}
        self.collected: dict[str, IpsecContext] = {}

    def collect(self, mn_address: str) -> bytes | None:
        context = capture_context(self.xfrm, mn_address)
        if not context.sas:
            return None
        self.collected[mn_address] = context
        self.trace("ipsec_collected", mn=mn_address, sas=len(context.sas), policies=len(context.policies))
        return context.encode()

    def install(self, mn_address: str, data: bytes, transfer) -> int:
        try:
            self.inactive[mn_address] = IpsecContext.decode(data)
        except IpsecError as error:
            self.trace("ipsec_install_failed", mn=mn_address, error=str(error))
            return STATUS_BAD_CONTEXT
        return STATUS_OK

    def activate(self, mn_address: str, transfer) -> tuple[int, bytes]:
        context = self.inactive.pop(mn_address, None)
        if context is None or not transfer.mn_new_address:
            return STATUS_NO_CONTEXT, b""
        # The pAR's tunnel end point is the source of the SA that carried traffic to the MN.
        par = next((sa.saddr for sa in context.sas if _same(sa.daddr, mn_address)), transfer.par_address)
        rewritten = rewrite_for_nar(context, mn_address, transfer.mn_new_address, par, self.own_address)
        try:
            installation = install_context(self.xfrm, rewritten)
        except XfrmError as error:
            self.trace("ipsec_install_failed", mn=mn_address, error=str(error))
            return STATUS_INSTALL_FAILED, b""
        changes = installation.spi_changes
        self.trace("ipsec_activated", mn=mn_address, new=transfer.mn_new_address, par=par,
                   spi_changes=[(c.old_spi, c.new_spi) for c in changes])
        return STATUS_OK, encode_spi_changes(changes) if changes else b""

    def discard(self, mn_address: str) -> None:
        self.inactive.pop(mn_address, None)

    def release(self, mn_address: str) -> None:
        context = self.collected.pop(mn_address, None) or capture_context(self.xfrm, mn_address)
        remove_context(self.xfrm, context)
        self.trace("ipsec_released", mn=mn_address)

    def acknowledged(self, mn_address: str, status: int, data: bytes) -> None:
        pass  # only the MN acts on a CTAA


class MnIpsecHandler:
    """ContextHandler of the IPsec context on the MN: re-home its SAs, apply SPI changes."""

    fpt = IPSEC_CONTEXT_FPT

    def __init__(self, xfrm, trace=lambda *a, **k: None) -> None:
        self.xfrm = xfrm
        self.trace = trace
        self.current_ar: str | None = None
        self.last_status: int | None = None

    def move(self, mn_prev: str, mn_new: str, par: str, nar: str) -> int:
        """Tables I and III: the MN's own SAs and policies now name MN_n and the nAR."""
        context = capture_context(self.xfrm, mn_prev)
        apply_mn_handover(self.xfrm, context, mn_prev, mn_new, par, nar)
        self.current_ar = nar
        return len(context.sas)

    # ContextHandler hooks: the MN only receives acknowledgements.
    def collect(self, mn_address):
        return None

    def install(self, mn_address, data, transfer):
        return STATUS_INSTALL_FAILED

    def activate(self, mn_address, transfer):
        return STATUS_NO_CONTEXT, b""

    def discard(self, mn_address):
        pass

    def release(self, mn_address):
        pass

    def acknowledged(self, mn_address: str, status: int, data: bytes) -> None:
        self.last_status = status
        if status == STATUS_OK and data and self.current_ar:
            changes = decode_spi_changes(data)
            apply_spi_changes(self.xfrm, changes, self.current_ar)
            self.trace("ipsec_spi_changed", changes=[(c.old_spi, c.new_spi) for c in changes])

