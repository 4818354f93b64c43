"""Host tests: what they keep for a person to look at (the report screenshots) is named at the
end of the session's output; the tests' shared data (tests/sweep_data.py) is importable."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent.parent
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

KEPT: list[tuple[str, object]] = []


@pytest.fixture
def keep_for_reader():
    """``keep(what, value)``: a file a person should look at (or a figure to read), listed in the
    session's summary."""
    def keep(what: str, value: object) -> None:
        KEPT.append((what, value))
    return keep


def pytest_terminal_summary(terminalreporter) -> None:
    if KEPT:
        terminalreporter.section("kept for a reader")
        for what, value in KEPT:
            terminalreporter.write_line(f"{what}: {value}")
