"""Metrics, table and plots from a stored run; never reruns the experiment.

    python -m scenarios.report results/<scenario>/<run-id>
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from scenarios import metrics

DIRECTIONS = (("ha_to_mn", "HA->MN"), ("mn_to_ha", "MN->HA"))


def compute(run_dir: Path) -> dict:
    """Compute per-handover figures and the summary from the traces; write both."""
    handovers = json.loads((run_dir / "handovers.json").read_text())
    mn_trace = json.loads((run_dir / "probe-mn.json").read_text())
    ha_trace = json.loads((run_dir / "probe-ha.json").read_text())
    rows = metrics.per_handover(handovers, mn_trace, ha_trace)
    summary = {"per_method": metrics.summarize(rows), "units": "milliseconds; lost in probes",
               "probe_decode_errors": {"mn": mn_trace["decode_errors"], "ha": ha_trace["decode_errors"]}}
    (run_dir / "per_handover.json").write_text(json.dumps(rows, indent=2))
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    plot(run_dir, rows)
    return summary


def table(run_dir: Path) -> str:
    rows = json.loads((run_dir / "per_handover.json").read_text())
    summary = json.loads((run_dir / "summary.json").read_text())
    lines = [f"run {run_dir}", "",
             f"{'#':>3} {'method':<10} {'move':<10} {'L2 ms':>6} | {'HA->MN ms':>9} {'lost':>5} | {'MN->HA ms':>9} {'lost':>5}"]
    for row in rows:
        cells = []
        for direction, _ in DIRECTIONS:
            item = row[direction]
            if "interruption_ms" in item:
                cells.append(f"{item['interruption_ms']:>9.1f} {item['lost']:>5}")
            else:
                cells.append(f"{'failed':>9} {'-':>5}")
        lines.append(f"{row['index']:>3} {row['method']:<10} {row['from'] + '->' + row['to']:<10} "
                     f"{row['l2_delay_ms']:>6.0f} | {cells[0]} | {cells[1]}")
    lines += ["", f"{'method':<10} {'direction':<8} {'median':>8} {'p95':>8} {'min':>8} {'max':>8} {'n':>4} {'lost med':>8}"]
    for method, entry in summary["per_method"].items():
        for direction, label in DIRECTIONS:
            stats = entry[direction]["interruption_ms"]
            lost = entry[direction]["lost"]
            if stats.get("n"):
                lines.append(f"{method:<10} {label:<8} {stats['median']:>8.1f} {stats['p95']:>8.1f} "
                             f"{stats['min']:>8.1f} {stats['max']:>8.1f} {stats['n']:>4} {lost['median']:>8.0f}")
            else:
                lines.append(f"{method:<10} {label:<8} {'no data':>8}")
    return "\n".join(lines)


def plot(run_dir: Path, rows: list[dict]) -> None:
    """Per-method distribution of the interruption, one panel per direction."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = sorted({row["method"] for row in rows})
    figure, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for axis, (direction, label) in zip(axes, DIRECTIONS):
        data = [[row[direction]["interruption_ms"] for row in rows
                 if row["method"] == method and "interruption_ms" in row[direction]] for method in methods]
        axis.boxplot(data, showfliers=True)
        axis.set_xticks(range(1, len(methods) + 1), methods)
        for position, values in enumerate(data, start=1):
            axis.scatter([position] * len(values), values, s=8, alpha=0.5)
        axis.set_title(f"{label} interruption")
        axis.set_ylabel("ms")
        axis.grid(axis="y", alpha=0.3)
    figure.suptitle(run_dir.parent.name + " / " + run_dir.name)
    figure.tight_layout()
    figure.savefig(run_dir / "interruption_by_method.png", dpi=100)
    plt.close(figure)


def show(run_dir: Path) -> None:
    print(table(run_dir))
    print(f"\nfiles: {', '.join(sorted(p.name for p in run_dir.iterdir()))}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run_dir", help="results/<scenario>/<run-id>")
    arguments = parser.parse_args(argv)
    run_dir = Path(arguments.run_dir)
    if not (run_dir / "handovers.json").exists():
        print(f"{run_dir}: not a run directory (no handovers.json)", file=sys.stderr)
        return 2
    compute(run_dir)
    show(run_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
