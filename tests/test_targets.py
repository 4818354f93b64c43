"""The performance targets (scenarios/analysis/targets.py), judged on synthetic summaries: each limit
at its edge, on both sides."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from scenarios.analysis import targets

LINKS = {"access": {"delay_ms": 2.0}, "ar_ar": {"delay_ms": 5.0}}
RECORD = {"parameters": {"links": LINKS}}


def _direction(median: float, overhead: float | None, upper: float | None = None) -> dict:
    entry: dict[str, Any] = {"interruption_ms": {"median": median, "n": 20}}
    if overhead is not None:
        entry["overhead_ms"] = {"median": overhead,
                                "ci95": [overhead - 0.5, upper if upper is not None else overhead + 0.5]}
    return entry


def _summary(predictive=1.5, network=2.0, reactive_up=15.0, reactive_down=1.0, ctar=6.0, eap=60.0,
             violations=2, handovers=100) -> dict:
    methods = {
        "none": (50.0, None), "cxtp-predictive": (50.0 + predictive, predictive),
        "cxtp-network": (50.0 + network, network), "reauth-eap@20": (50.0 + eap, eap),
    }
    per_method = {key: {"handovers": handovers // 5,
                        "mn_to_ha": _direction(m, o, upper=2.0 if key == "cxtp-predictive" else None),
                        "ha_to_mn": _direction(m, o, upper=2.0 if key == "cxtp-predictive" else None)}
                  for key, (m, o) in methods.items()}
    per_method["cxtp-reactive"] = {"handovers": handovers // 5, "mn_to_ha": _direction(50 + reactive_up, reactive_up),
                                   "ha_to_mn": _direction(50 + reactive_down, reactive_down)}
    per_method["cxtp-predictive"]["signalling_ms"] = {"ctar_to_ctaa_ms": {"median": ctar}}
    total = sum(entry["handovers"] for entry in per_method.values())
    return {"per_method": per_method,
            "fidelity": {"violations": round(violations / 100 * total / (1 - violations / 100))}}


def _met(rows) -> dict[str, bool]:
    return {name: ok for name, _value, _limit, ok in rows}


def test_every_target_met_at_its_edge():
    rows = targets.checks(_summary(), RECORD)
    assert all(ok for _, _, _, ok in rows), rows
    # the reactive uplink limit follows the links: access one-way + AR-AR round trip + 3 ms
    assert next(limit for name, _, limit, _ in rows if "cxtp-reactive security overhead, uplink" in name) == 15.0


def test_each_target_missed_just_beyond_its_edge():
    for arguments, fragment in (({"predictive": 2.01}, "cxtp-predictive security overhead"),
                                ({"network": 2.01}, "cxtp-network security overhead"),
                                ({"reactive_up": 15.01}, "cxtp-reactive security overhead, uplink"),
                                ({"reactive_down": 2.01}, "cxtp-reactive security overhead, downlink"),
                                ({"ctar": 6.01}, "CTAR -> CTAA"),
                                ({"eap": 39.9}, "reauth-eap@20"),
                                ({"violations": 3}, "fidelity violations")):
        missed = [name for name, ok in _met(targets.checks(_summary(**arguments), RECORD)).items() if not ok]
        assert missed and all(fragment in name for name in missed), (arguments, missed)


def test_a_method_missing_from_the_run_is_not_met():
    summary = _summary(violations=0)
    del summary["per_method"]["cxtp-network"]
    missed = [name for name, ok in _met(targets.checks(summary, RECORD)).items() if not ok]
    assert missed == ["cxtp-network security overhead, uplink (ms)", "cxtp-network security overhead, downlink (ms)"]


def test_two_runs_agree_within_5_ms_or_10_percent():
    first = _summary()
    second = copy.deepcopy(first)
    second["per_method"]["none"]["mn_to_ha"]["interruption_ms"]["median"] = 55.0  # 5 ms: agrees
    second["per_method"]["reauth-eap@20"]["ha_to_mn"]["interruption_ms"]["median"] = 121.0  # 11 ms of 121: agrees
    assert all(ok for *_, ok in targets.agreement(first, second))
    second["per_method"]["none"]["mn_to_ha"]["interruption_ms"]["median"] = 56.0  # 6 ms > 5 and > 5.6
    assert [name for name, *_, ok in targets.agreement(first, second) if not ok] == [
        "none uplink: the runs agree (|difference| ms)"]


def test_an_unreadable_run_is_exit_status_2(tmp_path, capsys):
    assert targets.main([str(tmp_path)]) == 2
    assert "targets:" in capsys.readouterr().err


def test_a_kept_reference_holds_the_compact_part_and_reports_from_its_summary(tmp_path, capsys):
    """``make reference``: records, figures, plots and the table; no probe traces; ``make report``
    on it shows the stored table instead of recomputing (which needs the traces)."""
    import json

    from scenarios.analysis import reference, report

    run = tmp_path / "default" / "20261129T000000Z"
    run.mkdir(parents=True)
    summary = _summary()
    for _key, entry in summary["per_method"].items():
        for direction in ("mn_to_ha", "ha_to_mn"):
            entry[direction]["lost"] = {"median": 1, "n": 20}
            entry[direction]["interruption_ms"].update(p95=1.0, max=1.0)
    for name, content in (("record.json", RECORD), ("handovers.json", []), ("summary.json", summary),
                          ("per_handover.json", []), ("probe-mn.json", {}), ("probe-ha.json", {})):
        (run / name).write_text(json.dumps(content))
    (run / "interruption_by_method.png").write_bytes(b"png")
    kept = reference.keep(run, tmp_path / "reference")
    assert kept.name == "default-20261129T000000Z"
    assert sorted(p.name for p in kept.iterdir()) == sorted(
        ["record.json", "handovers.json", "summary.json", "per_handover.json", "interruption_by_method.png",
         "table.txt", "report.html"])
    assert (kept / "table.txt").read_text().startswith(f"run {report.run_name(kept)}\n")
    assert report.is_compact(kept) and not report.is_compact(run)
    assert report.main([str(kept)]) == 0
    assert "cxtp-predictive" in capsys.readouterr().out
    assert targets.main([str(kept)]) == 0


def _row(method: str, steps: dict[str, float], **fields) -> dict:
    return {"method": method, "warmup": False, "outcome": "ok", "fidelity_ok": True, "timeline": steps, **fields}


def test_the_uplink_path_splits_the_overhead_into_network_and_beyond():
    """Medians per step over the measured handovers only (no warm-up, no failure, no fidelity
    violation), the network's nominal share, and the overhead the whole path implies."""
    links = {"access": {"delay_ms": 2.0}, "ar_ar": {"delay_ms": 5.0}}
    predictive = {"attached": 50.0, "mn_trigger": 50.5, "ctar_sent": 50.7, "nar_ctar_received": 53.0,
                  "nar_activated": 53.8}
    later = {step: value + (1.0 if step != "attached" else 0.0) for step, value in predictive.items()}
    reactive = {"attached": 50.0, "mn_trigger": 50.5, "ctar_sent": 50.8, "nar_ctar_received": 53.0,
                "ct_req_sent": 53.3, "ct_req_received": 58.5, "ctd_sent": 59.5, "ctd_received": 64.7,
                "nar_activated": 66.5}
    rows = [_row("cxtp-predictive", predictive), _row("cxtp-predictive", predictive),
            _row("cxtp-predictive", later, warmup=True), _row("cxtp-predictive", later, fidelity_ok=False),
            _row("cxtp-predictive", later, outcome="failed"),
            _row("cxtp-reactive", reactive),
            _row("cxtp-network", {"attached": 50.0, "mn_trigger": 50.5}),  # no CTAR: not a path
            _row("none", {"attached": 50.0, "mn_trigger": 50.4})]
    paths = targets.uplink_paths(rows, links)
    assert set(paths) == {"cxtp-predictive", "cxtp-reactive"}
    path = paths["cxtp-predictive"]
    assert path["n"] == 2
    assert [(label.split(":")[0], round(median, 3), nominal) for label, median, nominal in path["steps"]] == [
        ("MN", 0.5, 0.0), ("MN", 0.2, 0.0), ("access link", 2.3, 2.0), ("nAR", 0.8, 0.0)]
    assert path["whole_ms"] == pytest.approx(3.8) and path["network_ms"] == 2.0
    assert path["implied_overhead_ms"] == pytest.approx(1.8) and path["limit_ms"] == 2.0
    path = paths["cxtp-reactive"]
    assert path["network_ms"] == 12.0 and path["whole_ms"] == pytest.approx(16.5)
    # access one-way + AR-AR round trip + 3 ms; the whole less one access delay
    assert path["limit_ms"] == 15.0 and path["implied_overhead_ms"] == pytest.approx(14.5)


def test_targets_print_the_uplink_paths_of_a_run_that_has_them(tmp_path, capsys):
    import json

    run = tmp_path / "run"
    run.mkdir()
    (run / "summary.json").write_text(json.dumps(_summary()))
    (run / "record.json").write_text(json.dumps(RECORD))
    (run / "per_handover.json").write_text(json.dumps([_row("cxtp-predictive", {
        "attached": 50.0, "mn_trigger": 50.5, "ctar_sent": 50.7, "nar_ctar_received": 53.0, "nar_activated": 53.8})]))
    assert targets.main([str(run)]) == 0
    out = capsys.readouterr().out
    assert "where the uplink's overhead goes" in out and "cxtp-predictive (n 1)" in out
    assert "attach -> context active at the nAR" in out and "target 2.0" in out
