"""report.html in a real browser (Debian's headless Chromium, tests/host/browser.py): the page of
the reference run (as `make report` writes it) and of a merged sweep render with no console
error, request nothing beyond the file, show the numbers of summary.json and per_handover.json,
sort and filter; screenshots of each are kept in results/browser-test/ and named at the end of
the test session's output."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

import sweep_data
from host import browser
from scenarios.analysis import report

REPOSITORY = Path(__file__).resolve().parents[2]
SCREENSHOTS = REPOSITORY / "results" / "browser-test"

pytestmark = pytest.mark.skipif(browser.browser_binary() is None and not os.environ.get("CI"),
                                reason="no chromium (scripts/setup.sh installs it)")

SORT_HEADLINE = """(() => {
  const table = document.getElementById('headline');
  table.tHead.rows[0].cells[2].click();
  return Array.from(table.tBodies[0].rows).map(r => r.cells[2].getAttribute('data-sort'))
    .filter(v => v !== null && v !== '').map(parseFloat);
})()"""


def _filter(table: str, words: str) -> str:
    return f"""(() => {{
  const input = document.querySelector('input[data-filter=text][data-filter-for="{table}"]');
  input.value = {json.dumps(words)};
  input.dispatchEvent(new Event('input'));
  const rows = Array.from(document.getElementById('{table}').tBodies[0].rows).filter(r => !r.hidden);
  return {{shown: rows.length, methods: Array.from(new Set(rows.map(r => r.dataset.method))),
          count: document.getElementById('{table}-count').textContent}};
}})()"""


def test_the_run_report_shows_the_summary_in_a_browser(tmp_path, keep_for_reader):
    run = tmp_path / "reference" / sweep_data.REFERENCE.name
    shutil.copytree(sweep_data.REFERENCE, run, ignore=shutil.ignore_patterns("report.html"))
    assert report.main([str(run)]) == 0  # what `make report RUN=results/reference/...` runs
    page = run / "report.html"
    assert page.stat().st_size < 2_000_000
    result = browser.open_page(page, SCREENSHOTS / "reference-run",
                               expressions={"cells": browser.CELLS, "images": browser.IMAGES,
                                            "commit": "document.getElementById('s-metadata').textContent"},
                               actions={"sorted": SORT_HEADLINE, "filtered": _filter("handovers", "reauth-psk")})
    browser.check_clean(result)
    summary = json.loads((run / "summary.json").read_text())
    rows = json.loads((run / "per_handover.json").read_text())
    record = json.loads((run / "record.json").read_text())
    cells = result.values["cells"]
    browser.check_numbers(cells, {"summary": summary, "per_handover": rows})
    shown = {cell["path"] for cell in cells if cell["src"] == "summary"}
    for key, entry in summary["per_method"].items():  # every figure of the headline table is there
        for direction in ("ha_to_mn", "mn_to_ha"):
            assert f"/per_method/{key}/{direction}/interruption_ms/median" in shown
            assert f"/per_method/{key}/{direction}/interruption_ms/ci95/0" in shown
            if entry[direction].get("overhead_ms"):
                assert f"/per_method/{key}/{direction}/overhead_ms/ci95/1" in shown
    assert {f"/ratios/{i}/mn_to_ha" for i in range(len(summary["ratios"]))} <= shown
    assert "/fidelity/violations" in shown
    assert sum(cell["src"] == "per_handover" for cell in cells) >= len(rows)  # every handover's row
    assert record["git"]["revision"] in result.values["commit"]
    assert len(result.values["images"]) == 3  # the distributions, the in-run sweep, the ladder
    medians = result.values["sorted"]
    assert medians == sorted(medians) and len(medians) == 2 * len(summary["per_method"])
    filtered = result.values["filtered"]
    assert filtered["methods"] == ["reauth-psk"]
    assert filtered["shown"] == sum(row["method"] == "reauth-psk" for row in rows)
    assert filtered["count"] == f"{filtered['shown']} of {len(rows)} rows"
    for path in result.screenshots:
        assert path.stat().st_size > 50_000
        keep_for_reader("screenshot of the reference run's report.html", path)


def test_the_sweep_report_shows_the_merged_summary_in_a_browser(tmp_path, keep_for_reader):
    directory = sweep_data.merged_grid(tmp_path)
    result = browser.open_page(directory / "report.html", SCREENSHOTS / "sweep",
                               expressions={"cells": browser.CELLS, "images": browser.IMAGES},
                               actions={"filtered": _filter("sweepfigures", "reauth-psk")})
    browser.check_clean(result)
    summary = json.loads((directory / "summary.json").read_text())
    cells = result.values["cells"]
    browser.check_numbers(cells, {"summary": summary})
    shown = {cell["path"] for cell in cells}
    for position, point in enumerate(summary["points"]):
        for key in point["per_method"]:
            assert f"/points/{position}/per_method/{key}/mn_to_ha/interruption_ms/median" in shown
    assert len(result.values["images"]) == len(summary["plots"]) == 2  # one figure per swept parameter
    assert result.values["filtered"]["methods"] == ["reauth-psk"]
    for path in result.screenshots:
        keep_for_reader("screenshot of a merged sweep's report.html", path)


def test_the_check_sees_a_request_leaving_the_file_and_a_console_error(tmp_path):
    """The checks above would fail a page that reaches out or logs an error (this one does both:
    to the loopback's discard port, inside the browser's empty network namespace as root)."""
    page = tmp_path / "leaky.html"
    page.write_text('<!DOCTYPE html><html><head><link rel="icon" href="data:,"></head><body>'
                    '<img src="http://127.0.0.1:9/x.png"><script>console.error("boom")</script></body></html>')
    result = browser.open_page(page)
    assert any("boom" in error for error in result.errors)
    assert result.requests_leaving() == ["http://127.0.0.1:9/x.png"]
