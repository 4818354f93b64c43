"""Capture, install, remove and move an MN's IPsec context in the kernel.

These are the only functions of the package that touch XFRM for a handover;
they take an ``Xfrm`` (already in the right namespace) and context values.
The CXTP glue in ``nodes/`` calls them; nothing here knows CXTP.
"""

from __future__ import annotations

import errno
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from functools import partial
from typing import TypeVar

from .addresses import normalise_address, same_address
from .context import IpsecContext, Mark, SecurityAssociation, SecurityPolicy, Selector, SpiChange
from .errors import IpsecError, XfrmError
from .rewrite import (
    DEFAULT_OSEQ_MARGIN,
    AddressMap,
    advance_oseq,
    carry_lifetime,
    rewrite_policy,
    rewrite_sa,
)
from .xfrm import Migration, Xfrm
from .xfrm_messages import XFRM_POLICY_IN


def _policy_addresses(policy: SecurityPolicy) -> set[str]:
    """The addresses a policy names: its selector's and its templates'
    (canonical text, as read from the kernel)."""
    ends = {policy.selector.saddr, policy.selector.daddr}
    for tmpl in policy.templates:
        ends |= {tmpl.saddr, tmpl.daddr}
    return ends


def _now(now: int | None) -> int:
    return int(time.time()) if now is None else now


def capture_context(
    xfrm: Xfrm, mn_addresses: str | Iterable[str], now: int | None = None
) -> IpsecContext:
    """Everything of one MN: its SAs and the policies that mention it.

    ``mn_addresses`` is the MN's address, or several (all its care-of
    addresses): the context holds the SAs whose source or destination is one
    of them and the policies whose selector or a template names one of them,
    each once.  SAs come from kernel-filtered dumps (XFRMA_ADDRESS_FILTER)
    with keys, replay state and used lifetime; ``captured_at`` is this
    node's clock.
    """
    if isinstance(mn_addresses, str):
        mn_addresses = (mn_addresses,)
    wanted = {normalise_address(a): a for a in mn_addresses}
    sas: list[SecurityAssociation] = []
    for address in wanted:
        sas += xfrm.dump_sas(daddr=address) + xfrm.dump_sas(saddr=address)
    policies = [
        p for p in xfrm.dump_policies(mentioning=tuple(wanted)) if _policy_addresses(p) & wanted.keys()
    ]
    return IpsecContext(tuple(dict.fromkeys(sas)), tuple(policies), captured_at=_now(now))


def context_concerning(ctx: IpsecContext, *addresses: str) -> IpsecContext:
    """The part of ``ctx`` that ``capture_context(xfrm, addresses)`` would return: the SAs from or
    to one of ``addresses`` and the policies that name one of them."""
    wanted = {normalise_address(address) for address in addresses}
    return replace(ctx,
                   sas=tuple(sa for sa in ctx.sas
                             if wanted & {normalise_address(sa.saddr), normalise_address(sa.daddr)}),
                   policies=tuple(p for p in ctx.policies
                                  if wanted & {normalise_address(a) for a in _policy_addresses(p)}))


def refresh_context(xfrm: Xfrm, ctx: IpsecContext, now: int | None = None) -> IpsecContext:
    """``ctx`` as the kernel holds it now, without a dump: each SA read again (XFRM_MSG_GETSA:
    keys, replay state, used lifetime), the policies as known (they carry no state a transfer
    needs). What a node installed itself, it knows; a dump parses every entry of the tables.
    Raises XfrmError (ENOENT, ESRCH) when an SA is gone: the caller then captures."""
    return replace(ctx, sas=tuple(xfrm.get_sas(ctx.sas)), captured_at=_now(now))


_Entry = TypeVar("_Entry", SecurityAssociation, SecurityPolicy)


def lookup_context(
    xfrm: Xfrm, mn_addresses: str | Iterable[str], known: IpsecContext, now: int | None = None,
    kernel_filter: bool = True,
) -> IpsecContext:
    """What :func:`capture_context` returns, without dumping the SPD (a dump reads and parses every
    policy of every MN: 40 ms for one MN among 10^4 in the UML guest; this, 0.5-0.7 ms).

    ``known`` is what this node installed for the MN (an index kept by its caller): its policies
    that name one of ``mn_addresses`` are read back by their kernel keys (XFRM_MSG_GETPOLICY, all
    in one write); those gone are left out. The kernel cannot filter a policy dump (its policy
    walk takes no filter), so a policy the caller did not install is not found: the caller's
    index must hold every policy naming the MN, as an access router's does (it installs them).
    The SAs come, with ``kernel_filter``, from the kernel's filtered dumps (XFRMA_ADDRESS_FILTER:
    every SA from or to the address, indexed or not, exactly as :func:`capture_context`); without
    it, ``known``'s SAs are read back by XFRM_MSG_GETSA in the same write as the policies (one
    round trip, nothing found that was not indexed). ``captured_at`` is this node's clock."""
    if isinstance(mn_addresses, str):
        mn_addresses = (mn_addresses,)
    wanted = {normalise_address(a) for a in mn_addresses}
    known = context_concerning(known, *wanted)
    if kernel_filter:
        sas: list[SecurityAssociation] = []
        for address in wanted:
            sas += xfrm.dump_sas(daddr=address) + xfrm.dump_sas(saddr=address)
        _, policies = xfrm.get_entries((), known.policies)
    else:
        found, policies = xfrm.get_entries(known.sas, known.policies)
        sas = _present(found)
    return IpsecContext(tuple(dict.fromkeys(sas)), tuple(_present(policies)), captured_at=_now(now))


def _present(answers: list[_Entry | XfrmError]) -> list[_Entry]:
    """The entries found; one gone (ENOENT, ESRCH) is left out, any other refusal raised."""
    for answer in answers:
        if isinstance(answer, XfrmError) and answer.errno not in (errno.ENOENT, errno.ESRCH):
            raise answer
    return [answer for answer in answers if not isinstance(answer, XfrmError)]


def _sa_key(sa: SecurityAssociation) -> tuple[str, int, int, Mark | None]:
    return normalise_address(sa.daddr), sa.spi, sa.proto, sa.mark


def _policy_key(policy: SecurityPolicy) -> tuple[Selector, int, Mark | None, int]:
    selector = replace(policy.selector, saddr=normalise_address(policy.selector.saddr),
                       daddr=normalise_address(policy.selector.daddr))
    return selector, policy.dir, policy.mark, policy.if_id


def context_without(ctx: IpsecContext, *others: IpsecContext) -> IpsecContext:
    """``ctx`` less the SAs and policies (by their kernel keys) that one of ``others`` holds."""
    sa_keys = {_sa_key(sa) for other in others for sa in other.sas}
    policy_keys = {_policy_key(p) for other in others for p in other.policies}
    return replace(ctx, sas=tuple(sa for sa in ctx.sas if _sa_key(sa) not in sa_keys),
                   policies=tuple(p for p in ctx.policies if _policy_key(p) not in policy_keys))


def capture_contexts(
    xfrm: Xfrm, mn_addresses: Iterable[str], now: int | None = None
) -> dict[str, IpsecContext]:
    """Many MNs at once: one SA dump and one policy dump for all of them."""
    wanted = {normalise_address(a): a for a in mn_addresses}
    sas: dict[str, list[SecurityAssociation]] = {a: [] for a in wanted}
    policies: dict[str, list[SecurityPolicy]] = {a: [] for a in wanted}
    for sa in xfrm.dump_sas():
        for end in {sa.daddr, sa.saddr} & wanted.keys():
            sas[end].append(sa)
    for policy in xfrm.dump_policies():
        for end in _policy_addresses(policy) & wanted.keys():
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
        normalise_address(t.daddr)
        for p in ctx.policies
        if p.dir == XFRM_POLICY_IN
        for t in p.templates
    }


def _delete_quietly(action: Callable[..., object], *args: object) -> None:
    try:
        action(*args)
    except XfrmError as error:
        if error.errno not in (errno.ENOENT, errno.ESRCH):
            raise


def _delete_sa(xfrm: Xfrm, sa: SecurityAssociation) -> None:
    _delete_quietly(xfrm.delete_sa, sa.daddr, sa.spi, sa.proto, sa.mark)


def _delete_policy(xfrm: Xfrm, policy: SecurityPolicy) -> None:
    _delete_quietly(xfrm.delete_policy, policy.selector, policy.dir, policy.mark, policy.if_id)


_Undo = list[Callable[[], None]]


def _install_sa(
    xfrm: Xfrm, sa: SecurityAssociation, inbound: bool, replace_existing: bool, undo: _Undo
) -> SecurityAssociation:
    """Add ``sa``.  On EEXIST, with ``replace_existing``, replace the SA there
    if it is the same one (an outbound SA: the MN chose its SPI; an inbound
    one: from the same source); otherwise, if ``sa`` is inbound, give it a
    fresh SPI.  Each step that changed the kernel leaves its undo in ``undo``."""
    try:
        xfrm.add_sa(sa)
    except XfrmError as error:
        if error.errno != errno.EEXIST or not (replace_existing or inbound):
            raise
        existing = xfrm.get_sa(sa.daddr, sa.spi, sa.proto, sa.mark) if replace_existing else None
        if existing is None or (inbound and not same_address(existing.saddr, sa.saddr)):
            # SPI collision on an inbound SA with another peer's: the receiver
            # chooses the SPI.
            new_spi = xfrm.allocate_spi(sa.daddr, sa.saddr, sa.proto, sa.mode, sa.reqid, mark=sa.mark)
            sa = replace(sa, spi=new_spi)
            undo.append(partial(_delete_sa, xfrm, sa))  # the larval SA must go if the update fails
            xfrm.update_sa(sa)
            return sa
        # The same SA, left from before.  Keys and reqid cannot be updated in
        # place (UPDSA keeps them): delete, then add.
        xfrm.delete_sa(existing.daddr, existing.spi, existing.proto, existing.mark)
        undo.append(partial(xfrm.add_sa, existing))
        xfrm.add_sa(sa)
    undo.append(partial(_delete_sa, xfrm, sa))
    return sa


def _install_policy(xfrm: Xfrm, policy: SecurityPolicy, replace_existing: bool, undo: _Undo) -> None:
    try:
        xfrm.add_policy(policy)
    except XfrmError as error:
        if error.errno != errno.EEXIST or not replace_existing:
            raise
        existing = xfrm.get_policy(policy.selector, policy.dir, policy.mark, policy.if_id)
        xfrm.update_policy(policy)
        undo.append(partial(xfrm.update_policy, existing))
        return
    undo.append(partial(_delete_policy, xfrm, policy))


def install_context(
    xfrm: Xfrm, ctx: IpsecContext, now: int | None = None, *, replace_existing: bool = False
) -> Installation:
    """Install a (rewritten) context on the nAR: all of it or nothing.

    SAs go in with their replay state and reduced lifetimes (``carry_lifetime``);
    an inbound SA whose SPI another peer holds gets a fresh one from
    XFRM_MSG_ALLOCSPI and is reported in ``spi_changes``.  With
    ``replace_existing``, SAs (same daddr, SPI, proto; for an inbound SA also
    the same source) and policies (same selector, dir, mark, if_id) already in
    the kernel are replaced instead of failing with EEXIST.  If any step
    fails, what was added is removed, what was replaced is restored, and the
    XfrmError is raised.
    """
    now = _now(now)
    inbound = _inbound_destinations(ctx)
    undo: _Undo = []
    sas: list[SecurityAssociation] = []
    policies: list[SecurityPolicy] = []
    try:
        for original in ctx.sas:
            sa = carry_lifetime(original, ctx.captured_at, now)
            is_inbound = normalise_address(sa.daddr) in inbound
            sas.append(_install_sa(xfrm, sa, is_inbound, replace_existing, undo))
        changes = tuple(SpiChange(o.spi, s.spi) for o, s in zip(ctx.sas, sas) if o.spi != s.spi)
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
            _install_policy(xfrm, policy, replace_existing, undo)
            policies.append(policy)
    except XfrmError as error:
        for step in reversed(undo):
            try:
                step()
            except XfrmError as failure:
                error.add_note(f"rollback step failed: {failure}")
        raise
    installed = replace(ctx, sas=tuple(sas), policies=tuple(policies))
    return Installation(installed, changes)


@dataclass(frozen=True)
class PreparedInstall:
    """A context's installation encoded ahead of time (what the nAR can do when the context
    arrives, before the MN does): the SAs (lifetimes carried as of the preparation) and
    policies, as netlink requests ready to be sent in one write."""

    context: IpsecContext
    requests: tuple[bytes, ...]


def prepare_install(xfrm: Xfrm, ctx: IpsecContext, now: int | None = None) -> PreparedInstall:
    now = _now(now)
    sas = tuple(carry_lifetime(sa, ctx.captured_at, now) for sa in ctx.sas)
    policies = tuple(replace(policy, index=0) for policy in ctx.policies)
    requests = tuple(xfrm.encode_add_sa(sa) for sa in sas) + tuple(xfrm.encode_add_policy(p) for p in policies)
    return PreparedInstall(replace(ctx, sas=sas, policies=policies), requests)


def install_prepared(xfrm: Xfrm, prepared: PreparedInstall) -> Installation:
    """Install a prepared context in one netlink write, SAs then policies, all of it or nothing:
    if the kernel refuses any part (an SPI taken, an entry already there), what it accepted is
    removed (policies first) and the first refusal is raised; the caller then takes the careful
    path, ``install_context``, which resolves SPI collisions and leftovers one request at a time."""
    _send_all_or_nothing(xfrm, prepared.requests,
                         [*(partial(_delete_sa, xfrm, sa) for sa in prepared.context.sas),
                          *(partial(_delete_policy, xfrm, policy) for policy in prepared.context.policies)])
    return Installation(prepared.context, ())


def install_prepared_sas(xfrm: Xfrm, prepared: PreparedInstall) -> None:
    """The SAs of a prepared context, in one write, all or nothing. SAs alone are inactive: no
    policy sends traffic through them, and the kernel drops what an SA decapsulates unless a
    policy admits it (``XfrmInNoPols``); the policies are the activation."""
    count = len(prepared.context.sas)
    _send_all_or_nothing(xfrm, prepared.requests[:count],
                         [partial(_delete_sa, xfrm, sa) for sa in prepared.context.sas])


def install_prepared_policies(xfrm: Xfrm, prepared: PreparedInstall) -> None:
    """The policies of a prepared context, in one write, all or nothing (its SAs are there)."""
    count = len(prepared.context.sas)
    _send_all_or_nothing(xfrm, prepared.requests[count:],
                         [partial(_delete_policy, xfrm, policy) for policy in prepared.context.policies])


def _send_all_or_nothing(xfrm: Xfrm, requests: Iterable[bytes], undo: list[Callable[[], None]]) -> None:
    outcomes = xfrm.send_batch(list(requests))
    failures = [outcome for outcome in outcomes if outcome is not None]
    if failures:
        for undo_one, outcome in reversed(list(zip(undo, outcomes))):
            if outcome is None:
                undo_one()
        raise failures[0]


def remove_context(xfrm: Xfrm, ctx: IpsecContext) -> None:
    """Delete the context's policies, then its SAs (pAR side, after the nAR
    confirmed).  Entries already gone are not an error."""
    for policy in reversed(ctx.policies):
        _delete_policy(xfrm, policy)
    for sa in reversed(ctx.sas):
        _delete_sa(xfrm, sa)


# --- the MN side ---------------------------------------------------------------------


def apply_mn_handover(
    xfrm: Xfrm,
    ctx: IpsecContext,
    mn_prev: str,
    mn_new: str,
    par: str,
    nar: str,
    spi_changes: Iterable[SpiChange] = (),
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


@dataclass(frozen=True)
class PreparedMove:
    """The MN's re-homing for one expected move, done ahead as far as the kernel allows.

    At preparation (before the detach) the MN's SAs are copied under the new addresses and
    installed: the copies are inactive, since no policy refers to them (an SA is found by
    destination and SPI, so a copy for the nAR does not disturb the original for the pAR). The
    outbound copy's sequence number is ahead of the original's by ``oseq_margin``, so that no
    number the original sends until the detach is sent again. At the attach, ``activation``
    adds the policies with their new selectors and templates (or replaces them in place when
    the selector does not name a moving address): one write, and the MN's traffic uses the
    copies. ``cleanup`` then deletes the old policies and SAs, off the critical path.
    """

    mn_prev: str
    mn_new: str
    par: str
    nar: str
    copies: tuple[SecurityAssociation, ...]
    moved: IpsecContext
    activation: tuple[bytes, ...]
    cleanup: tuple[bytes, ...]

    def matches(self, mn_prev: str, mn_new: str, par: str, nar: str) -> bool:
        return all(same_address(a, b) for a, b in ((self.mn_prev, mn_prev), (self.mn_new, mn_new),
                                                   (self.par, par), (self.nar, nar)))


def prepare_mn_handover(xfrm: Xfrm, ctx: IpsecContext, mn_prev: str, mn_new: str, par: str, nar: str,
                        oseq_margin: int = DEFAULT_OSEQ_MARGIN) -> PreparedMove:
    """Install the copies of the MN's SAs under (MN_n, nAR) and encode the rest of the move
    (see :class:`PreparedMove`); the SAs' state (replay, lifetime) is the kernel's, read now.
    All or nothing: a refused copy removes the others and raises."""
    addresses = AddressMap({mn_prev: mn_new, par: nar})
    for sa in ctx.sas:
        if addresses.touches(sa.selector.saddr) or addresses.touches(sa.selector.daddr):
            raise IpsecError(f"SA {sa.spi:#x} has a selector naming a moving address")
    copies = []
    for current in refresh_context(xfrm, ctx).sas:
        copy = rewrite_sa(current, addresses)
        if same_address(current.saddr, mn_prev):  # the MN sends on it
            copy = advance_oseq(copy, oseq_margin)
        copies.append(copy)
    moved_policies = tuple(replace(rewrite_policy(policy, addresses), index=0) for policy in ctx.policies)
    activation = tuple(xfrm.encode_update_policy(policy) for policy in moved_policies)
    cleanup = tuple(xfrm.encode_delete_policy(old.selector, old.dir, old.mark, old.if_id)
                    for old, new in zip(ctx.policies, moved_policies) if new.selector != old.selector)
    cleanup += tuple(xfrm.encode_delete_sa(sa) for sa in ctx.sas)
    _send_all_or_nothing(xfrm, [xfrm.encode_add_sa(copy) for copy in copies],
                         [partial(_delete_sa, xfrm, copy) for copy in copies])
    moved = replace(ctx, sas=tuple(copies), policies=moved_policies)
    return PreparedMove(mn_prev, mn_new, par, nar, tuple(copies), moved, activation, cleanup)


def apply_prepared_move(xfrm: Xfrm, prepared: PreparedMove) -> None:
    """The attach: the policies in one write. A refusal removes what it accepted and the copies,
    and is raised; the caller then moves the MN request by request (:func:`apply_mn_handover`)."""
    try:
        _send_all_or_nothing(xfrm, prepared.activation,
                             [partial(_delete_policy, xfrm, policy) for policy in prepared.moved.policies])
    except XfrmError:
        discard_prepared_move(xfrm, prepared)
        raise


def finish_prepared_move(xfrm: Xfrm, prepared: PreparedMove) -> None:
    """After the attach, off its critical path: the old policies and SAs go (entries already
    gone are not an error)."""
    for outcome in xfrm.send_batch(list(prepared.cleanup)):
        if outcome is not None and outcome.errno != errno.ENOENT:
            raise outcome


def discard_prepared_move(xfrm: Xfrm, prepared: PreparedMove) -> None:
    """The expected move did not happen as prepared: its inactive copies go."""
    for copy in prepared.copies:
        _delete_sa(xfrm, copy)


def apply_spi_changes(
    xfrm: Xfrm,
    spi_changes: Iterable[SpiChange],
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
