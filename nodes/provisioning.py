"""The IPsec state set up in advance, before any handover, and the algorithms that key it.

The contexts of an MN's initial attach (:func:`initial_contexts`, the paper's Fig. 5: the static
SAs of §VI-A, in tunnel mode between the MN's care-of address and its AR, inner MN <-> HA), the
ESP SAs between ARs that protect CXTP (:func:`ar_ar_contexts`, RFC 4067 §6.2), the algorithm
profiles that give their SAs fresh random keys (:data:`PROFILES`), and the crypto warm-up that
keeps a fresh kernel's algorithm set-up out of every measurement (:func:`warm_up_crypto`). The
contexts are only built here (the runner hands them to the agents' ``provision``); the warm-up
is the one function that writes to a kernel.
"""

from __future__ import annotations

import os

from ipsec import (
    Algorithm,
    IpsecContext,
    IpsecError,
    SecurityAssociation,
    SecurityPolicy,
    Selector,
    Template,
    XfrmError,
)
from ipsec.xfrm_messages import (
    XFRM_MODE_TRANSPORT,
    XFRM_POLICY_FWD,
    XFRM_POLICY_IN,
    XFRM_POLICY_OUT,
)
from nodes.operator_policy import IPPROTO_SCTP, IPPROTO_TCP, PRIORITY_TUNNEL

# Algorithm profiles for the initial attach: a modern default and the paper's des-cbc.
PROFILES = {
    "aes-gcm": lambda: (Algorithm("aead", "rfc4106(gcm(aes))", os.urandom(20), 128),),
    "aes-cbc-sha256": lambda: (Algorithm("crypt", "cbc(aes)", os.urandom(16), 128),
                               Algorithm("auth_trunc", "hmac(sha256)", os.urandom(32), 128)),
    "des-cbc": lambda: (Algorithm("crypt", "cbc(des)", os.urandom(8), 64),
                        Algorithm("auth_trunc", "hmac(sha1)", os.urandom(20), 96)),
}


def warm_up_crypto(xfrm, profiles=tuple(PROFILES)) -> dict[str, bool]:
    """Add and delete one SA per algorithm profile: in a fresh UML kernel the first SA of an
    algorithm takes seconds (crypto template set-up), which nothing measured may pay. Returns,
    per profile, whether the kernel took it (DES may be missing from a kernel)."""
    taken = {}
    for spi, profile in enumerate(profiles, start=0x7E57):
        sa = SecurityAssociation(daddr="2001:db8:ff::2", saddr="2001:db8:ff::1", spi=spi,
                                 algorithms=PROFILES[profile]())
        try:
            xfrm.add_sa(sa)
        except XfrmError:
            taken[profile] = False
            continue
        xfrm.delete_sa(sa.daddr, sa.spi)
        taken[profile] = True
    return taken


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
