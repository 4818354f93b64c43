"""The layering is a test: every module's imports point only where the README's layout table
allows (cxtp and ipsec import nothing of ours, nodes only those two, topo and the runner only
downwards), and only topo imports Mininet."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parent.parent
OURS = ("cxtp", "ipsec", "nodes", "topo", "scenarios")
#: package -> the packages of ours it may import (itself included)
ALLOWED = {
    "cxtp": {"cxtp"},
    "ipsec": {"ipsec"},
    "nodes": {"nodes", "cxtp", "ipsec"},
    "topo": {"topo", "nodes"},
    "scenarios": {"scenarios", "topo", "nodes", "cxtp", "ipsec"},
}
MININET_ONLY_IN = {"topo"}


def _imports(path: Path) -> set[str]:
    """Top-level names of every module ``path`` imports (also inside functions)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def _modules():
    for package in OURS:
        for path in sorted((REPOSITORY / package).rglob("*.py")):
            yield package, path


@pytest.mark.parametrize("package, path", list(_modules()), ids=lambda value: getattr(value, "name", value))
def test_imports_follow_the_layering(package, path):
    imported = _imports(path)
    ours = imported & set(OURS)
    assert ours <= ALLOWED[package], f"{path.relative_to(REPOSITORY)} imports {sorted(ours - ALLOWED[package])}"
    if package not in MININET_ONLY_IN:
        assert "mininet" not in imported, f"{path.relative_to(REPOSITORY)} imports mininet"


def test_the_checker_sees_a_bad_edge(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from topo import plan\n")
    assert "topo" in _imports(bad)
