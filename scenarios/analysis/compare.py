"""Compare two stored runs: per method (and swept value) and direction, the difference of the
median interruptions (B minus A) with a 95% bootstrap interval; a difference whose interval
excludes zero is marked significant. The way to compare two configurations, or a new build
against the stored reference run.

    python -m scenarios.analysis.compare results/<scenario>/<run-A> results/<scenario>/<run-B>
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from scenarios.analysis import metrics, report

DIRECTIONS = report.DIRECTIONS


def _rows(run_dir: Path) -> list[dict]:
    path = run_dir / "per_handover.json"
    if not path.is_file():
        report.compute(run_dir)  # a run whose figures were never computed (or a partial one: raises)
    return json.loads(path.read_text())


def compare(run_a: Path, run_b: Path) -> list[dict]:
    rows_a, rows_b = _rows(run_a), _rows(run_b)
    groups = sorted({(row["method"], row.get("sweep_value")) for row in rows_a + rows_b if not row.get("warmup")},
                    key=lambda group: (group[0], group[1] if group[1] is not None else -1))
    result = []
    for method, value in groups:
        for direction, label in DIRECTIONS:
            a = metrics.interruptions(rows_a, method, value, direction)
            b = metrics.interruptions(rows_b, method, value, direction)
            entry = {"method": method, "sweep_value": value, "direction": label, "n_a": len(a), "n_b": len(b)}
            if a and b:
                entry["median_a"], entry["median_b"] = statistics.median(a), statistics.median(b)
                entry["difference"] = entry["median_b"] - entry["median_a"]
                entry["ci95"] = metrics.bootstrap_interval(b, against=a)
                entry["significant"] = bool(entry["ci95"] and (entry["ci95"][0] > 0 or entry["ci95"][1] < 0))
            result.append(entry)
    return result


def show(run_a: Path, run_b: Path, entries: list[dict]) -> str:
    lines = [f"A = {run_a}", f"B = {run_b}", "",
             "median interruption (ms), B minus A, 95% bootstrap interval; * = the interval excludes 0",
             f"{'method':<22} {'dir':<7} {'A':>8} {'B':>8} {'B - A':>8} {'95% interval':>18} {'n A/B':>8}"]
    for entry in entries:
        key = entry["method"] + (f"@{entry['sweep_value']:g}" if entry["sweep_value"] is not None else "")
        counts = f"{entry['n_a']}/{entry['n_b']}"
        if "difference" not in entry:
            lines.append(f"{key:<22} {entry['direction']:<7} {'-':>8} {'-':>8} {'-':>8} {'-':>18} {counts:>8}")
            continue
        interval = entry["ci95"]
        cell = f"[{interval[0]:+.1f}, {interval[1]:+.1f}]" if interval else "-"
        lines.append(f"{key:<22} {entry['direction']:<7} {entry['median_a']:>8.1f} {entry['median_b']:>8.1f} "
                     f"{entry['difference']:>+8.1f} {cell:>18} {counts:>8}"
                     + (" *" if entry.get("significant") else ""))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run_a")
    parser.add_argument("run_b")
    arguments = parser.parse_args(argv)
    run_a, run_b = Path(arguments.run_a), Path(arguments.run_b)
    try:
        entries = compare(run_a, run_b)
    except (report.ReportError, ValueError, KeyError, OSError) as error:
        print(f"compare: {error}", file=sys.stderr)
        return 2
    print(show(run_a, run_b, entries))
    return 0


if __name__ == "__main__":
    sys.exit(main())
