"""report.html without a browser (tests/host/test_report_browser.py opens it in one): one
self-contained file, what a run has is linked (captures) or shown (failures), and the stored
reference run's page is the one `make report` writes."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import sweep_data
from scenarios.analysis import htmlreport


def _copy(tmp_path: Path) -> Path:
    run = tmp_path / "default" / "20260101T000000Z"
    shutil.copytree(sweep_data.REFERENCE, run, ignore=shutil.ignore_patterns("report.html"))
    return run


def test_the_page_is_self_contained(tmp_path):
    run = _copy(tmp_path)
    page = htmlreport.write(run).read_text()
    assert f'content="{htmlreport.CSP}"' in page and "default-src 'none'" in page
    # nothing to fetch: every image inline, no stylesheet, script or font from elsewhere
    assert not re.search(r"""(src|href)=["']?(https?:|//)""", page)
    assert not re.search(r"<link[^>]+stylesheet|<script[^>]+src=", page)
    assert page.count('src="data:image/png;base64,') == 3
    assert "@import" not in page and "url(" not in page


def test_captures_are_linked_and_failures_explained(tmp_path):
    run = _copy(tmp_path)
    (run / "captures").mkdir()
    (run / "captures" / "par-par-nar.pcapng").write_bytes(b"\0" * 64)
    (run / "wireshark").mkdir()
    handovers = json.loads((run / "handovers.json").read_text())
    handovers[4]["failure"] = {"reason": "no CTAA within CT_RETRY_MAX <&>", "problems": [], "t_ns": 0, "state": {}}
    (run / "handovers.json").write_text(json.dumps(handovers))
    page = htmlreport.write(run).read_text()
    assert '<a href="captures/par-par-nar.pcapng">' in page and '<a href="wireshark/">' in page
    assert "no CTAA within CT_RETRY_MAX &lt;&amp;&gt;" in page  # escaped


def test_the_stored_reference_page_is_what_make_report_writes():
    stored = sweep_data.REFERENCE / "report.html"
    assert stored.is_file(), "make report RUN=results/reference/... writes it; it is kept in the repository"
    assert stored.read_text() == htmlreport.render_run(sweep_data.REFERENCE)
