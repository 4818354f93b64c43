"""Pure rewrites of an IPsec context for a handover (paper Tables I-IV).

The consistent reading of the tables (see docs/ipsec-context.md and
docs/paper-tables.md): every occurrence of the MN's previous
care-of address becomes the new one and pAR becomes nAR -- in SA addresses,
SA selectors, policy selectors (inner header) and templates (outer header)
-- while the far end "X" (HA or wildcard) stays.  The nAR also gets a
``fwd`` policy, which Linux needs to forward decapsulated traffic.
"""

from __future__ import annotations

import math
from dataclasses import replace

from .addresses import normalise_address
from .context import (
    IpsecContext,
    LifetimeCurrent,
    SecurityAssociation,
    SecurityPolicy,
    Selector,
    SpiChange,
    Template,
)
from .errors import SequenceSpaceExhausted
from .xfrm_messages import XFRM_POLICY_FWD, XFRM_POLICY_IN, XFRM_STATE_ESN

#: The least the new sender's outbound sequence number jumps ahead of the value
#: captured on the pAR (RFC 6311 does the same on failover); :func:`oseq_margin`
#: adds what the pAR may still send after the capture, from a rate and a time.
DEFAULT_OSEQ_MARGIN = 65536


def oseq_margin(packet_rate: float, horizon_s: float, base: int = DEFAULT_OSEQ_MARGIN) -> int:
    """How far the new sender's outbound sequence numbers must start ahead of the captured ones:
    more than the old sender can send between the capture and the new sender's first packet,
    which is at most ``packet_rate`` (packets/s on the SA) for ``horizon_s`` (the longest a
    captured context can wait before it is activated), plus ``base``."""
    if packet_rate < 0 or horizon_s < 0:
        raise ValueError("a packet rate and a horizon are not negative")
    return base + math.ceil(packet_rate * horizon_s)


class AddressMap:
    """Old address -> new address, comparing addresses, not spellings."""

    def __init__(self, pairs: dict[str, str]) -> None:
        self._map = {normalise_address(old): normalise_address(new) for old, new in pairs.items()}

    def __call__(self, address: str) -> str:
        try:
            return self._map.get(normalise_address(address), address)
        except ValueError:
            return address

    def touches(self, address: str) -> bool:
        return self(address) != address


def _rewrite_selector(sel: Selector, addresses: AddressMap) -> Selector:
    return replace(sel, daddr=addresses(sel.daddr), saddr=addresses(sel.saddr))


def _rewrite_template(tmpl: Template, addresses: AddressMap) -> Template:
    return replace(tmpl, daddr=addresses(tmpl.daddr), saddr=addresses(tmpl.saddr))


def rewrite_sa(sa: SecurityAssociation, addresses: AddressMap) -> SecurityAssociation:
    return replace(
        sa,
        daddr=addresses(sa.daddr),
        saddr=addresses(sa.saddr),
        selector=_rewrite_selector(sa.selector, addresses),
    )


def rewrite_policy(policy: SecurityPolicy, addresses: AddressMap) -> SecurityPolicy:
    return replace(
        policy,
        selector=_rewrite_selector(policy.selector, addresses),
        templates=tuple(_rewrite_template(t, addresses) for t in policy.templates),
    )


def advance_oseq(sa: SecurityAssociation, margin: int) -> SecurityAssociation:
    """Jump the outbound sequence number forward by ``margin`` so that numbers
    the old sender used after the capture are never sent again; an SA whose
    numbers would then run out is :class:`SequenceSpaceExhausted`."""
    limit = 0xFFFFFFFFFFFFFFFF if sa.flags & XFRM_STATE_ESN else 0xFFFFFFFF
    oseq = sa.replay.oseq + margin
    if oseq >= limit:
        raise SequenceSpaceExhausted(
            f"SA {sa.spi:#x} to {sa.daddr}: sequence number {sa.replay.oseq} + margin {margin} reaches the end "
            f"of its {'64' if sa.flags & XFRM_STATE_ESN else '32'}-bit space")
    return replace(sa, replay=replace(sa.replay, oseq=oseq))


def _with_fwd_policies(policies: list[SecurityPolicy]) -> list[SecurityPolicy]:
    """Add a ``fwd`` copy of each ``in`` policy that has none (Linux checks
    forwarded, decapsulated packets against the fwd direction)."""
    have_fwd = {p.selector for p in policies if p.dir == XFRM_POLICY_FWD}
    result = list(policies)
    for policy in policies:
        if policy.dir == XFRM_POLICY_IN and policy.selector not in have_fwd:
            result.append(replace(policy, dir=XFRM_POLICY_FWD, index=0))
            have_fwd.add(policy.selector)
    return result


def rewrite_for_nar(
    ctx: IpsecContext,
    mn_prev: str,
    mn_new: str,
    par: str,
    nar: str,
    oseq_margin: int = DEFAULT_OSEQ_MARGIN,
) -> IpsecContext:
    """The pAR's context for one MN, as the nAR must install it (Tables II, IV).

    SAs sent by the AR (source pAR) get their outbound sequence number moved
    ahead by ``oseq_margin``; policy indexes are dropped (the nAR's kernel
    assigns its own); a ``fwd`` policy is added for every ``in`` policy.
    """
    addresses = AddressMap({mn_prev: mn_new, par: nar})
    par_address = normalise_address(par)
    sas = []
    for sa in ctx.sas:
        moved = rewrite_sa(sa, addresses)
        if normalise_address(sa.saddr) == par_address:
            moved = advance_oseq(moved, oseq_margin)
        sas.append(moved)
    policies = [replace(rewrite_policy(p, addresses), index=0) for p in ctx.policies]
    return replace(ctx, sas=tuple(sas), policies=tuple(_with_fwd_policies(policies)))


def rewrite_for_mn(
    ctx: IpsecContext,
    mn_prev: str,
    mn_new: str,
    par: str,
    nar: str,
    spi_changes: tuple[SpiChange, ...] | list[SpiChange] = (),
) -> IpsecContext:
    """The MN's own context after the handover (Tables I, III).

    The MN keeps its sequence numbers (it is the same sender); an SPI the nAR
    had to replace changes on the MN's outbound SA to the nAR.
    """
    addresses = AddressMap({mn_prev: mn_new, par: nar})
    new_spi = {change.old_spi: change.new_spi for change in spi_changes}
    nar_address = normalise_address(nar)
    sas = []
    for sa in ctx.sas:
        moved = rewrite_sa(sa, addresses)
        if normalise_address(moved.daddr) == nar_address and moved.spi in new_spi:
            moved = replace(moved, spi=new_spi[moved.spi])
        sas.append(moved)
    policies = []
    for policy in ctx.policies:
        moved_policy = rewrite_policy(policy, addresses)
        templates = tuple(
            replace(t, spi=new_spi[t.spi])
            if t.spi in new_spi and normalise_address(t.daddr) == nar_address
            else t
            for t in moved_policy.templates
        )
        policies.append(replace(moved_policy, templates=templates))
    return replace(ctx, sas=tuple(sas), policies=tuple(policies))


# --- lifetimes -------------------------------------------------------------------


def _remaining(limit: int, elapsed: int) -> int:
    """0 means "no limit" in xfrm_lifetime_cfg seconds; a used-up limit
    becomes 1 s, so the SA expires at once instead of living on."""
    if limit == 0:
        return 0
    return max(1, limit - elapsed)


def carry_lifetime(sa: SecurityAssociation, captured_at: int, now: int) -> SecurityAssociation:
    """The SA as the receiver installs it: limits reduced by what was used.

    Byte and packet budgets carry over as they are (``current.bytes`` /
    ``packets`` go in XFRMA_LTIME_VAL against unchanged limits).  Time limits
    are reduced by the SA's age on the sender's clock (``captured_at -
    add_time``), and ``add_time`` becomes the receiver's ``now``, so the
    kernel's timers (relative to add_time / use_time) fire when they would
    have fired on the pAR.  Moving an SA never gives it fresh life.
    """
    cur = sa.current
    lft = sa.lifetime
    added_age = max(0, captured_at - cur.add_time) if cur.add_time else 0
    used_age = max(0, captured_at - cur.use_time) if cur.use_time else 0
    lifetime = replace(
        lft,
        soft_add_expires_seconds=_remaining(lft.soft_add_expires_seconds, added_age),
        hard_add_expires_seconds=_remaining(lft.hard_add_expires_seconds, added_age),
        soft_use_expires_seconds=_remaining(lft.soft_use_expires_seconds, used_age),
        hard_use_expires_seconds=_remaining(lft.hard_use_expires_seconds, used_age),
    )
    current = LifetimeCurrent(
        bytes=cur.bytes,
        packets=cur.packets,
        add_time=now,
        use_time=now if cur.use_time else 0,
    )
    return replace(sa, lifetime=lifetime, current=current)
