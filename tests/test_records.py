"""The handover record: one type, its JSON serialisation, and the runs stored before it existed."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from scenarios import records
from scenarios.records import Failure, HandoverRecord, RecordError, Recovery
from topo import plan

FORMAT_1_RUN = Path(__file__).resolve().parent / "data" / "format1-run"


def _record(**fields) -> HandoverRecord:
    base = dict(index=3, mn=plan.MN_IDENTITY, method="cxtp-reactive", from_ar=plan.PAR, to_ar=plan.NAR,
                mn_previous=plan.MN_COA[plan.PAR], mn_new=plan.MN_COA[plan.NAR], l2_delay_ms=20.0)
    return HandoverRecord(**{**base, **fields})


def test_how_the_traffic_came_back_follows_from_what_happened():
    assert _record().restored_by is None  # not over
    assert _record(completed=True).restored_by == "method"
    assert _record(completed=True, retry_sent_ns=5).restored_by == "cxtp-retry"
    failed = _record(completed=False, recovery=Recovery(["par"], 9, True), outcome="failed")
    assert failed.restored_by == "fresh-attach"


def test_a_record_round_trips_through_its_json(tmp_path):
    written = [_record(completed=True, detach_start_ns=1, attached_ns=2, fidelity={"violations": []}),
               _record(index=4, outcome="failed", failure=Failure("why", ["why"], 7, {"mn": ["sa"]}),
                       recovery=Recovery(["nar"], 8, True))]
    (tmp_path / "record.json").write_text(json.dumps({"format_version": records.FORMAT_VERSION}))
    records.write_handovers(tmp_path / "handovers.json", written)
    assert records.read_handovers(tmp_path) == written
    stored = json.loads((tmp_path / "handovers.json").read_text())
    assert stored[1]["restored_by"] == "fresh-attach" and stored[1]["mn"] == plan.MN_IDENTITY


def test_an_unknown_field_is_named():
    data = _record().to_json() | {"colour": "blue"}
    with pytest.raises(RecordError, match="handover 3: unknown fields \\['colour'\\]"):
        HandoverRecord.from_json(data)
    del data["colour"], data["method"]
    with pytest.raises(RecordError, match="handover 3: .*method"):
        HandoverRecord.from_json(data)


def test_runs_stored_before_the_format_read_as_the_one_mn_they_had():
    """Format 1: no MN named, the analysis's timeline in the raw records, and a handover that
    failed before the move without its ARs."""
    read = records.read_handovers(FORMAT_1_RUN)
    assert {record.mn for record in read} == {records.FORMAT_1_MN}
    assert all(record.outcome == "ok" and record.restored_by == "method" for record in read[:-1])
    failed = read[-1]
    assert failed.outcome == "failed" and failed.restored_by == "fresh-attach" and not failed.moved
    assert failed.recovery == Recovery(["par"], 7, True) and failed.restored_ns is None
    assert failed.failure is not None and failed.failure.reason == "OSError: boom"


def test_a_run_newer_than_the_code_is_refused(tmp_path):
    shutil.copytree(FORMAT_1_RUN, tmp_path / "run")
    (tmp_path / "run" / "record.json").write_text(json.dumps({"format_version": records.FORMAT_VERSION + 1}))
    with pytest.raises(RecordError, match="newer than this code"):
        records.read_handovers(tmp_path / "run")
