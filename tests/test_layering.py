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
    names: set[str] = set()
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


def _scenario_modules(path: Path) -> set[str]:
    """The ``scenarios.*`` modules ``path`` imports, by their full dotted names."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module \
                and node.module.startswith("scenarios"):
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names if alias.name.startswith("scenarios"))
    return names


#: what the analysis may take from the runner: the method declarations, which name what a run
#: holds, and their declared security properties
ANALYSIS_MAY_IMPORT_FROM_RUNNER = {"scenarios.runner", "scenarios.runner.methods", "scenarios.runner.properties"}


@pytest.mark.parametrize("path", sorted((REPOSITORY / "scenarios").glob("*.py"))
                         + sorted((REPOSITORY / "scenarios" / "analysis").glob("*.py")),
                         ids=lambda path: f"{path.parent.name}/{path.name}")
def test_the_analysis_and_the_records_do_not_run_anything(path):
    """A stored run is analysed without the runner: the analysis, the records and the scenario
    parser import nothing of ``scenarios.runner`` but the method declarations."""
    runner = {name for name in _scenario_modules(path) if name.startswith("scenarios.runner")}
    assert runner <= ANALYSIS_MAY_IMPORT_FROM_RUNNER, f"{path.name} imports {sorted(runner)}"
