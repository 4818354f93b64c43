"""Capture, install, remove and move an MN's IPsec context in the kernel.

These are the only functions of the package that touch XFRM for a handover;
they take an ``Xfrm`` (already in the right namespace) and context values.
The CXTP glue in ``nodes/`` calls them; nothing here knows CXTP.
"""

from __future__ import annotations

import errno
import ipaddress
import time
from dataclasses import dataclass, replace

from .context import IpsecContext, SecurityAssociation, SecurityPolicy, SpiChange
from .errors import IpsecError, XfrmError
from .rewrite import (
    DEFAULT_OSEQ_MARGIN,
    AddressMap,
    advance_oseq,
    carry_lifetime,
    rewrite_policy,
)
from .xfrm import Migration, Xfrm
from .xfrm_messages import XFRM_POLICY_IN


def _same(a: str, b: str) -> bool:
    try:
        return ipaddress.ip_address(a) == ipaddress.ip_address(b)
    except ValueError:
        return False


def _normalise(address: str) -> str:
    return ipaddress.ip_address(address).compressed


def _policy_concerns(policy: SecurityPolicy, address: str) -> bool:
    sel = policy.selector
    if _same(sel.saddr, address) or _same(sel.daddr, address):
        return True
    return any(_same(t.saddr, address) or _same(t.daddr, address) for t in policy.templates)


def _now(now: int | None) -> int:
    return int(time.time()) if now is None else now


def capture_context(xfrm: Xfrm, mn_address: str, now: int | None = None) -> IpsecContext:
    """The SAs to and from ``mn_address`` and the policies that mention it.

    SAs come from two kernel-filtered dumps (XFRMA_ADDRESS_FILTER) with keys,
    replay state and used lifetime; ``captured_at`` is this node's clock.
    """
    sas = xfrm.dump_sas(daddr=mn_address) + xfrm.dump_sas(saddr=mn_address)
    policies = [p for p in xfrm.dump_policies(mentioning=mn_address) if _policy_concerns(p, mn_address)]
    return IpsecContext(tuple(sas), tuple(policies), captured_at=_now(now))


def capture_contexts(
    xfrm: Xfrm, mn_addresses, now: int | None = None
) -> dict[str, IpsecContext]:
    """Many MNs at once: one SA dump and one policy dump for all of them."""
    wanted = {ipaddress.ip_address(a).compressed: a for a in mn_addresses}
    sas: dict[str, list] = {a: [] for a in wanted}
    policies: dict[str, list] = {a: [] for a in wanted}
    for sa in xfrm.dump_sas():
        for end in {sa.daddr, sa.saddr}:
            if end in sas:
                sas[end].append(sa)
    for policy in xfrm.dump_policies():
        ends = {policy.selector.saddr, policy.selector.daddr}
        for tmpl in policy.templates:
            ends |= {tmpl.saddr, tmpl.daddr}
        for end in ends:
            if end in policies:
                policies[end].append(policy)
    captured_at = _now(now)
    return {
        wanted[a]: IpsecContext(tuple(sas[a]), tuple(policies[a]), captured_at=captured_at)
        for a in wanted
    }


@dataclass(frozen=True)
class Installation:
    """What ``install_context`` put in the kernel, and the SPIs it changed."""

    context: IpsecContext
    spi_changes: tuple[SpiChange, ...]


def _inbound_destinations(ctx: IpsecContext) -> set[str]:
    """Destinations of SAs this node receives on: the outer destination of
    its ``in`` policies' templates.  Only there may it pick a new SPI."""
    return {
        ipaddress.ip_address(t.daddr).compressed
        for p in ctx.policies
        if p.dir == XFRM_POLICY_IN
        for t in p.templates
    }


def _delete_quietly(action, *args) -> None:
    try:
        action(*args)
    except XfrmError as error:
        if error.errno not in (errno.ENOENT, errno.ESRCH):
            raise


def install_context(xfrm: Xfrm, ctx: IpsecContext, now: int | None = None) -> Installation:
    """Install a (rewritten) context on the nAR: all of it or nothing.

    SAs go in with their replay state and reduced lifetimes (``carry_lifetime``);
    an inbound SA whose SPI is taken gets a fresh one from XFRM_MSG_ALLOCSPI
    and is reported in ``spi_changes``.  If any step fails, what was added is
    removed again and the XfrmError is raised.
    """
    now = _now(now)
    inbound = _inbound_destinations(ctx)
    added_sas: list[SecurityAssociation] = []
    added_policies: list[SecurityPolicy] = []
    changes: list[SpiChange] = []
    try:
        for original in ctx.sas:
            sa = carry_lifetime(original, ctx.captured_at, now)
            try:
                xfrm.add_sa(sa)
                added_sas.append(sa)
                continue
            except XfrmError as error:
                if error.errno != errno.EEXIST or _normalise(sa.daddr) not in inbound:
                    raise
            # SPI collision on an inbound SA: the receiver chooses the SPI.
            new_spi = xfrm.allocate_spi(sa.daddr, sa.saddr, sa.proto, sa.mode, sa.reqid, mark=sa.mark)
            sa = replace(sa, spi=new_spi)
            added_sas.append(sa)  # the larval SA must go if the update fails
            xfrm.update_sa(sa)
            changes.append(SpiChange(original.spi, new_spi))
        new_spi = {c.old_spi: c.new_spi for c in changes}
        for policy in ctx.policies:
            policy = replace(
                policy,
                index=0,
                templates=tuple(
                    replace(t, spi=new_spi.get(t.spi, t.spi)) if t.spi else t
                    for t in policy.templates
                ),
            )
            xfrm.add_policy(policy)
            added_policies.append(policy)
    except XfrmError:
        _roll_back(xfrm, added_sas, added_policies)
        raise
    installed = replace(ctx, sas=tuple(added_sas), policies=tuple(added_policies))
    return Installation(installed, tuple(changes))


def _roll_back(xfrm: Xfrm, sas, policies) -> None:
    for policy in reversed(policies):
        _delete_quietly(xfrm.delete_policy, policy.selector, policy.dir, policy.mark, policy.if_id)
    for sa in reversed(sas):
        _delete_quietly(xfrm.delete_sa, sa.daddr, sa.spi, sa.proto, sa.mark)


def remove_context(xfrm: Xfrm, ctx: IpsecContext) -> None:
    """Delete the context's policies, then its SAs (pAR side, after the nAR
    confirmed).  Entries already gone are not an error."""
    _roll_back(xfrm, ctx.sas, ctx.policies)


# --- the MN side ---------------------------------------------------------------------


def apply_mn_handover(
    xfrm: Xfrm,
    ctx: IpsecContext,
    mn_prev: str,
    mn_new: str,
    par: str,
    nar: str,
    spi_changes=(),
    oseq_margin: int = DEFAULT_OSEQ_MARGIN,
) -> None:
    """Move the MN's SAs and policies from (MN_p, pAR) to (MN_n, nAR).

    XFRM_MSG_MIGRATE moves each SA in one kernel step (same SPI, keys,
    replay state, lifetime), so the MN never lacks an SA.  Policy selectors
    hold the care-of address (inner header), which MIGRATE does not touch:
    each such policy is added with its new selector before the old one is
    deleted.  Then ``spi_changes`` from the nAR are applied.

    SA selectors must not name the care-of address (tunnel-mode SAs carry a
    wildcard selector, as ``ip xfrm`` and IKE daemons install them): MIGRATE
    keeps them and the kernel would drop inbound packets as mismatched.
    """
    addresses = AddressMap({mn_prev: mn_new, par: nar})
    for sa in ctx.sas:
        if addresses.touches(sa.selector.saddr) or addresses.touches(sa.selector.daddr):
            raise IpsecError(f"SA {sa.spi:#x} has a selector naming a moving address")
    for policy in ctx.policies:
        migrations = [
            Migration(
                old_daddr=t.daddr,
                old_saddr=t.saddr,
                new_daddr=addresses(t.daddr),
                new_saddr=addresses(t.saddr),
                proto=t.proto,
                mode=t.mode,
                reqid=t.reqid,
                old_family=t.family,
                new_family=t.family,
            )
            for t in policy.templates
            if addresses.touches(t.daddr) or addresses.touches(t.saddr)
        ]
        if migrations:
            xfrm.migrate(policy.selector, policy.dir, migrations)
        moved = replace(rewrite_policy(policy, addresses), index=0)
        if moved.selector != policy.selector:
            xfrm.add_policy(moved)
            xfrm.delete_policy(policy.selector, policy.dir, policy.mark, policy.if_id)
    if spi_changes:
        apply_spi_changes(xfrm, spi_changes, nar, oseq_margin)


def apply_spi_changes(
    xfrm: Xfrm,
    spi_changes,
    nar: str,
    oseq_margin: int = DEFAULT_OSEQ_MARGIN,
) -> None:
    """On the MN: give its outbound SA to the nAR the SPI the nAR chose.

    Make before break: the SA with the new SPI is added (state read from the
    kernel just before, sequence number moved ahead by ``oseq_margin`` so a
    number sent on the old SPI meanwhile is not sent again), then the old one
    is deleted; there is never a moment without an outbound SA.
    """
    for change in spi_changes:
        old = xfrm.get_sa(nar, change.old_spi)
        new = advance_oseq(replace(old, spi=change.new_spi), oseq_margin)
        xfrm.add_sa(new)
        xfrm.delete_sa(old.daddr, old.spi, old.proto, old.mark)
