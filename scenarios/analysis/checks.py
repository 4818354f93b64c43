"""Check the kernel's SAD and SPD after a handover against the paper's Tables I-IV.

The tables are read as ``docs/paper-tables.md`` does (Table II prints its SPIs swapped
and Tables III/IV their "Inner"/"Outer" headers swapped; the content below is the consistent
reading, in XFRM terms). ``spi_out`` is the SPI of SA2 at the nAR: the pAR's unless it collided.
"""

from __future__ import annotations

import ipaddress

from ipsec import IpsecContext
from ipsec.xfrm_messages import XFRM_POLICY_FWD, XFRM_POLICY_IN, XFRM_POLICY_OUT

DIRECTION_NAMES = {XFRM_POLICY_IN: "in", XFRM_POLICY_OUT: "out", XFRM_POLICY_FWD: "fwd"}


def _a(address: str) -> str:
    return ipaddress.ip_address(address).compressed


def _sa_rows(context: IpsecContext) -> set[tuple[str, str, int]]:
    return {(_a(sa.daddr), _a(sa.saddr), sa.spi) for sa in context.sas}


def _policy_rows(context: IpsecContext) -> set[tuple[str, str, str, str, str]]:
    rows = set()
    for policy in context.policies:
        if not policy.templates:
            continue
        template = policy.templates[0]
        rows.add((DIRECTION_NAMES.get(policy.dir, str(policy.dir)), _a(policy.selector.saddr),
                  _a(policy.selector.daddr), _a(template.saddr), _a(template.daddr)))
    return rows


def expected_mn(mn_new: str, nar: str, ha: str, spi_in: int, spi_out: int) -> tuple[set, set]:
    """Tables I and III, "n" rows."""
    sas = {(_a(mn_new), _a(nar), spi_in), (_a(nar), _a(mn_new), spi_out)}
    policies = {("in", _a(ha), _a(mn_new), _a(nar), _a(mn_new)),
                ("out", _a(mn_new), _a(ha), _a(mn_new), _a(nar))}
    return sas, policies


def expected_nar(mn_new: str, nar: str, ha: str, spi_in: int, spi_out: int) -> tuple[set, set]:
    """Tables II and IV (plus the fwd policy Linux needs on a forwarding AR)."""
    sas = {(_a(nar), _a(mn_new), spi_out), (_a(mn_new), _a(nar), spi_in)}
    policies = {("in", _a(mn_new), _a(ha), _a(mn_new), _a(nar)),
                ("fwd", _a(mn_new), _a(ha), _a(mn_new), _a(nar)),
                ("out", _a(ha), _a(mn_new), _a(nar), _a(mn_new))}
    return sas, policies


def compare(name: str, context: IpsecContext, expected: tuple[set, set]) -> list[str]:
    problems = []
    sas, policies = _sa_rows(context), _policy_rows(context)
    # A fwd twin of an expected in policy is Linux's way, not a departure from the tables: the
    # nAR needs it to forward, and strongSwan installs one on every tunnel end point, the MN too.
    policies -= {("fwd", *row[1:]) for row in expected[1] if row[0] == "in"} - expected[1]
    for label, have, want in (("SA", sas, expected[0]), ("policy", policies, expected[1])):
        for row in sorted(want - have, key=str):
            problems.append(f"{name}: missing {label} {row}")
        for row in sorted(have - want, key=str):
            problems.append(f"{name}: unexpected {label} {row}")
    return problems


def same_keys(mn: IpsecContext, nar: IpsecContext) -> list[str]:
    """Each SA has the same keys and algorithms on both ends (SA1 and SA2 survive the move)."""
    by_spi = {(sa.spi, _a(sa.daddr)): sa.algorithms for sa in nar.sas}
    return [f"SA {sa.spi:#x}: keys differ between MN and nAR"
            for sa in mn.sas if by_spi.get((sa.spi, _a(sa.daddr))) not in (None, sa.algorithms)]


def check_tables(mn_context: IpsecContext, nar_context: IpsecContext, par_context: IpsecContext,
                 mn_new: str, nar: str, ha: str, spi_in: int, spi_out: int) -> list[str]:
    """Every difference from Tables I-IV, and anything of the MN still on the pAR; [] if none."""
    problems = compare("MN", mn_context, expected_mn(mn_new, nar, ha, spi_in, spi_out))
    problems += compare("nAR", nar_context, expected_nar(mn_new, nar, ha, spi_in, spi_out))
    problems += same_keys(mn_context, nar_context)
    if par_context.sas or par_context.policies:
        problems.append(f"pAR still holds {len(par_context.sas)} SAs and {len(par_context.policies)} "
                        f"policies of the MN's previous address")
    return problems


def describe(context: IpsecContext) -> list[str]:
    """One line per SA and policy, as ``ip xfrm`` would name them, for a failure's record."""
    lines = [f"sa {_a(sa.saddr)} -> {_a(sa.daddr)} spi {sa.spi:#x}" for sa in context.sas]
    for policy in context.policies:
        selector = policy.selector
        line = (f"policy {DIRECTION_NAMES.get(policy.dir, policy.dir)} {_a(selector.saddr)}/{selector.prefixlen_s} -> "
                f"{_a(selector.daddr)}/{selector.prefixlen_d} proto {selector.proto} priority {policy.priority}")
        if policy.templates:
            line += " tmpl " + ", ".join(f"{_a(t.saddr)} -> {_a(t.daddr)}" for t in policy.templates)
        lines.append(line)
    return lines
