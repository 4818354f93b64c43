"""The README holds no second copy of a fact that can drift: its addressing tables are checked
against ``topo/plan.py``, and every repository path and make target it names must exist."""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path

import pytest

from topo import plan

REPOSITORY = Path(__file__).resolve().parent.parent
README = (REPOSITORY / "README.md").read_text()

#: the README's node labels, as plan.py names the nodes
NODES = {"MN": plan.MN, "pAR": plan.PAR, "nAR": plan.NAR, "HA": plan.HA, "AAA": plan.AAA}
#: the paper's names (and the AAA node's, which the paper lacks): node and address in the plan
PAPER_NAMES = {
    "MN.par.ipv6.com": (plan.MN, plan.MN_COA[plan.PAR]),
    "MN.nar.ipv6.com": (plan.MN, plan.MN_COA[plan.NAR]),
    "pAR.par.ipv6.com": (plan.PAR, plan.AR_ACCESS_ADDRESS[plan.PAR]),
    "nAR.nar.ipv6.com": (plan.NAR, plan.AR_ACCESS_ADDRESS[plan.NAR]),
    "HA.ha.ipv6.com": (plan.HA, plan.LOOPBACK_ADDRESSES[plan.HA]),
    "(AAA server)": (plan.AAA, plan.LOOPBACK_ADDRESSES[plan.AAA]),
    "(home address)": (plan.MN, plan.MN_HOME_ADDRESS),
}
#: the IPv6 literals of a text: addresses and prefixes (at least two groups, so "::1" suffixes
#: of the link table are left to the row check)
IPV6 = re.compile(r"(?<![\w:])(?:[0-9a-f]{1,4}:){1,7}:?(?:[0-9a-f]{1,4}(?::[0-9a-f]{1,4})*)?(?:/\d{1,3})?(?![\w:])",
                  re.IGNORECASE)


def _section(heading: str) -> str:
    """The text under a heading, up to the next heading of the same or a higher level."""
    match = re.search(rf"^(#+) {re.escape(heading)}\s*$", README, re.MULTILINE)
    assert match, f"README.md has no section {heading!r}"
    level = len(match.group(1))
    end = re.compile(rf"^#{{1,{level}}} ", re.MULTILINE).search(README, match.end())
    return README[match.end():end.start() if end else len(README)]


def _tables(text: str) -> dict[str, list[list[str]]]:
    """Markdown tables of a text, keyed by the first cell of their header row: body rows as cells."""
    tables: dict[str, list[list[str]]] = {}
    current = None
    for line in text.splitlines():
        if not line.startswith("|"):
            current = None
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if current is None:
            current = tables.setdefault(cells[0], [])
        elif not all(set(cell) <= set("-: ") for cell in cells):
            current.append(cells)
    return tables


ADDRESSING = _section("Addressing plan")
TABLES = _tables(ADDRESSING)


def _known_literals() -> set[str]:
    """Every address and prefix the plan holds, compressed, prefixes with their length."""
    known = {ipaddress.ip_network("2001:db8::/32").compressed}  # the documentation range (RFC 3849)
    for link in plan.LINKS:
        known.add(ipaddress.ip_network(link.prefix).compressed)
        known.update(ipaddress.ip_address(a).compressed for a in (link.a_address, link.b_address) if a)
    known.update(ipaddress.ip_address(a).compressed for a in plan.MN_COA.values())
    known.update(ipaddress.ip_address(a).compressed for a in plan.LOOPBACK_ADDRESSES.values())
    known.update({ipaddress.ip_address(plan.MN_HOME_ADDRESS).compressed,
                  ipaddress.ip_network(plan.HOME_PREFIX).compressed})
    return known


def _compressed(literal: str) -> str:
    return (ipaddress.ip_network(literal) if "/" in literal else ipaddress.ip_address(literal)).compressed


def test_the_paper_names_table_matches_the_plan():
    rows = TABLES.get("paper name")
    assert rows, "README.md: no addressing table with a 'paper name' column"
    assert {row[0] for row in rows} == set(PAPER_NAMES), "README.md: the paper names differ from the plan's"
    for name, node, address, where in rows:
        plan_node, plan_address = PAPER_NAMES[name]
        assert NODES.get(node) == plan_node, f"README.md: {name} is on {node}, the plan says {plan_node}"
        assert _compressed(address) == _compressed(plan_address), \
            f"README.md: {name} is {address}, topo/plan.py says {plan_address}"
        for link_name in re.findall(r"\b[a-z]+-[a-z]+\b", where):
            if link_name in plan.LINKS_BY_NAME:
                prefix = ipaddress.ip_network(plan.LINKS_BY_NAME[link_name].prefix)
                assert ipaddress.ip_address(plan_address) in prefix, f"README.md: {name} is not on {link_name}"


def test_the_link_table_matches_the_plan():
    rows = TABLES.get("link")
    assert rows, "README.md: no addressing table with a 'link' column"
    assert [row[0] for row in rows] == [link.name for link in plan.LINKS], \
        "README.md: the links (or their order) differ from topo/plan.py's"
    for name, link_class, prefix, addresses in rows:
        link = plan.LINKS_BY_NAME[name]
        assert link_class == link.link_class, \
            f"README.md: {name} is of class {link_class}, the plan says {link.link_class}"
        network = ipaddress.ip_network(prefix)
        assert network == ipaddress.ip_network(link.prefix), f"README.md: {name} has {prefix}, the plan {link.prefix}"
        stated = {}
        for entry in addresses.split(","):
            label, suffix = entry.split()
            node = NODES[label]
            stated[node] = ipaddress.ip_address(int(network.network_address) + int(ipaddress.ip_address(suffix)))
        planned = {node: ipaddress.ip_address(link.address_of(node))
                   for node in (link.a, link.b) if link.address_of(node)}
        assert stated == planned, f"README.md: the addresses on {name} differ from topo/plan.py's"


def test_every_address_in_the_section_is_the_plans():
    literals = IPV6.findall(ADDRESSING)
    assert len(literals) >= len(PAPER_NAMES)
    unknown = sorted({literal for literal in literals if _compressed(literal) not in _known_literals()})
    assert not unknown, f"README.md's addressing plan names addresses topo/plan.py lacks: {unknown}"


# -- every path and make target the README names exists ------------------------------------------------

#: files at the top of the repository named without a folder
TOP_LEVEL_FILES = {"Makefile", "Containerfile", "pyproject.toml", "requirements.txt", "pytest.ini", "README.md"}


def _paths() -> list[str]:
    """Repository paths in code spans: with a folder, or a known top-level file; placeholders
    (``<run-id>``), absolute paths and anything with spaces or ``=`` are not paths of ours, nor
    are the files of a run directory (the first column of "Where results go")."""
    run_files = {cell for row in _tables(_section("Where results go")).get("file", [])
                 for cell in re.findall(r"`([^`]+)`", row[0])}
    found = []
    for span in set(re.findall(r"`([^`\n]+)`", README)) - run_files:
        if re.search(r"[<>\s=:'\"]", span) or span.startswith(("/", "~", ".venv")):
            continue
        if "/" in span or span in TOP_LEVEL_FILES:
            found.append(span)
    return sorted(set(found))


def _make_targets() -> set[str]:
    makefile = (REPOSITORY / "Makefile").read_text()
    return set(re.findall(r"^([A-Za-z][\w-]*)\s*:(?!=)", makefile, re.MULTILINE))


@pytest.mark.parametrize("path", _paths())
def test_every_path_named_exists(path):
    if any(character in path for character in "*?["):
        assert list(REPOSITORY.glob(path.rstrip("/"))), f"README.md names {path}: nothing matches"
    else:
        target = REPOSITORY / path
        exists = target.is_dir() if path.endswith("/") else target.exists()
        assert exists, f"README.md names {path}, which does not exist"


@pytest.mark.parametrize("target", sorted(set(re.findall(r"\bmake ([a-z][\w-]*)", README))))
def test_every_make_target_named_exists(target):
    assert target in _make_targets(), f"README.md names `make {target}`, which the Makefile does not define"
