"""Sweeps whose points "ran" without a kernel: each point's run is the reference run's compact
part (results/reference/), its figures shifted per point, so that merging, the figures against
the swept parameters and the sweep's report are tested on real summaries in seconds."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from scenarios import sweep

REPOSITORY = Path(__file__).resolve().parent.parent
REFERENCE = REPOSITORY / "results" / "reference" / "default-20261207T124853Z"

GRID_SCENARIO = """
name = "gridtest"
seed = 3
methods = ["none", "cxtp-predictive", "reauth-psk"]
handovers = 3

[grid]
"links.access.delay_ms" = [2, 10]
profile = ["aes-cbc-sha256", "aes-gcm"]
"""


def _shift(stats: dict[str, Any] | None, by: float) -> None:
    if not stats:
        return
    for key in ("median", "p95", "max", "min", "mean"):
        if isinstance(stats.get(key), (int, float)):
            stats[key] += by
    for key in ("ci95", "mean_ci95"):
        if stats.get(key):
            stats[key] = [bound + by for bound in stats[key]]


def fake_run(directory: Path, point: dict[str, Any], shift_ms: float = 0.0, failed_handovers: int = 0,
             run_id: str = "20260101T000000Z", complete: bool = True) -> Path:
    """A finished run of ``point`` in the sweep ``directory``: the reference run's records and
    figures, the secure methods' interruptions (and so their overheads) ``shift_ms`` later."""
    run = directory / "results" / str(point["index"]) / point["name"] / run_id
    run.mkdir(parents=True)
    record = json.loads((REFERENCE / "record.json").read_text())
    record["seed"] = point["seed"]
    record["parameters"].update(name=point["name"], seed=point["seed"])
    record["failed_handovers"] = failed_handovers
    record["wall_time_s"] = 60.0 + point["index"]
    (run / "record.json").write_text(json.dumps(record))
    if not complete:
        return run
    summary = json.loads((REFERENCE / "summary.json").read_text())
    for entry in summary["per_method"].values():
        if entry["method"] == "none":
            continue
        for direction in ("ha_to_mn", "mn_to_ha"):
            _shift(entry[direction]["interruption_ms"], shift_ms)
            _shift(entry[direction].get("overhead_ms"), shift_ms)
    (run / "summary.json").write_text(json.dumps(summary))
    for name in ("per_handover.json", "handovers.json", "interruption_by_method.png", "timeline_by_method.png"):
        shutil.copy2(REFERENCE / name, run / name)
    return run


def status(directory: Path, index: int, exit_status: int = 0, started: str = "2026-01-01T00:00:00+00:00",
           finished: str | None = "2026-01-01T00:01:00+00:00", wall: float = 60.0) -> None:
    data: dict[str, Any] = {"index": index, "state": "done" if finished else "running", "started_utc": started,
                            "host": "node1", "user": "someone", "slurm": {"job_id": str(100 + index)}}
    if finished:
        data.update(exit_status=exit_status, finished_utc=finished, wall_time_s=wall)
    path = directory / "results" / str(index) / sweep.STATUS
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def planned_grid(tmp_path: Path) -> tuple[Path, dict[str, Any]]:
    """The grid above, planned: 2 x 2 points."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    scenario = tmp_path / "grid.toml"
    scenario.write_text(GRID_SCENARIO)
    directory = sweep.plan(scenario, tmp_path / "sweep")
    return directory, sweep.load_manifest(directory)


def merged_grid(tmp_path: Path) -> Path:
    """The grid with every point run (shifted 0, 2, 4, 6 ms) and merged."""
    directory, manifest = planned_grid(tmp_path)
    for number, point in enumerate(manifest["points"]):
        fake_run(directory, point, shift_ms=2.0 * number)
        status(directory, point["index"], started=f"2026-01-01T00:0{number}:00+00:00",
               finished=f"2026-01-01T00:0{number + 1}:00+00:00")
    sweep.merge(directory)
    return directory
