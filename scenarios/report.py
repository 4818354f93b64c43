"""Metrics, table and plots from a stored run; never reruns the experiment.

    python -m scenarios.report results/<scenario>/<run-id>
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from scenarios import methods, metrics

DIRECTIONS = (("ha_to_mn", "HA->MN"), ("mn_to_ha", "MN->HA"))
REFERENCE = methods.reference_name()
REQUIRED_FILES = ("record.json", "handovers.json", "probe-mn.json", "probe-ha.json")


class ReportError(RuntimeError):
    """A run directory lacks what a report is made from."""


def _read_traces(run_dir: Path) -> dict[str, list[dict]]:
    traces = {}
    for path in sorted(run_dir.glob("trace-*.jsonl")):
        with open(path) as handle:
            traces[path.stem.removeprefix("trace-")] = [json.loads(line) for line in handle if line.strip()]
    return traces


def compute(run_dir: Path) -> dict:
    """Compute per-handover figures and the summary from the traces; write both, and the plots."""
    missing = [name for name in REQUIRED_FILES if not (run_dir / name).is_file()]
    if missing:
        raise ReportError(f"{run_dir}: not a complete run directory (missing {', '.join(missing)})")
    handovers = json.loads((run_dir / "handovers.json").read_text())
    mn_trace = json.loads((run_dir / "probe-mn.json").read_text())
    ha_trace = json.loads((run_dir / "probe-ha.json").read_text())
    rows = metrics.per_handover(handovers, mn_trace, ha_trace, _read_traces(run_dir))
    record = json.loads((run_dir / "record.json").read_text())
    summary = {
        "per_method": metrics.summarize(rows),
        "units": "interruption and signalling in milliseconds; lost in probes; per_link in messages and octets",
        "probe_decode_errors": {"mn": mn_trace["decode_errors"], "ha": ha_trace["decode_errors"]},
        "xfrm_stat_delta": record.get("xfrm_stat_delta"),
        "sweep": record["parameters"].get("sweep"),
    }
    summary["ratios"] = metrics.ratios(summary["per_method"], methods.reauth_names(), methods.cxtp_names())
    (run_dir / "per_handover.json").write_text(json.dumps(rows, indent=2))
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    plot(run_dir, rows, summary)
    return summary


def _cell(stats: dict, key: str = "median", width: int = 8, digits: int = 1) -> str:
    return f"{stats[key]:>{width}.{digits}f}" if stats.get("n") else f"{'-':>{width}}"


def table(run_dir: Path) -> str:
    summary = json.loads((run_dir / "summary.json").read_text())
    per_method = summary["per_method"]
    lines = [f"run {run_dir}", "",
             "interruption at the receiver (ms): median / p95 / min / max over n handovers; lost probes (median)",
             f"{'method':<22} {'dir':<7} {'median':>8} {'p95':>8} {'min':>8} {'max':>8} {'n':>4} {'lost':>6}"
             f" {'vs none':>8}"]
    reference = {direction: per_method.get(REFERENCE, {}).get(direction, {}).get("interruption_ms", {})
                 for direction, _ in DIRECTIONS}
    for key, entry in per_method.items():
        for direction, label in DIRECTIONS:
            stats = entry[direction]["interruption_ms"]
            lost = entry[direction]["lost"]
            extra = ""
            if stats.get("n") and reference[direction].get("n") and entry["method"] != REFERENCE:
                extra = f"{stats['median'] - reference[direction]['median']:>+8.1f}"
            failed = f"  ({entry[direction]['failed']} failed)" if entry[direction]["failed"] else ""
            lines.append(f"{key:<22} {label:<7} {_cell(stats)} {_cell(stats, 'p95')} {_cell(stats, 'min')} "
                         f"{_cell(stats, 'max')} {stats.get('n', 0):>4} {_cell(lost, width=6, digits=0)} {extra}{failed}")
    failed = {key: entry for key, entry in per_method.items() if entry.get("failed_handovers")}
    lines += ["", "failed handovers (left out of the figures above): "
              + ("none" if not failed else "; ".join(
                  f"{key} {entry['failed_handovers']} of {entry['handovers']} (restored by "
                  + ", ".join(f"{how} {count}" for how, count in entry["restored_by"].items()) + ")"
                  for key, entry in failed.items()))]
    lines += ["", "signalling (ms, median): CTAR->CTAA at the MN, (P)CTD->CTDR at the pAR, IKE initiation to"
                  " CHILD_SA installed, BU->BA at the MN;",
              "messages/octets per handover: CXTP on the access and AR-AR links, IKE (access), RADIUS (AR-AAA);"
              " Tables I-IV checks passed",
              f"{'method':<22} {'CTAR-CTAA':>9} {'CTD-CTDR':>9} {'IKE':>7} {'BU-BA':>7} {'access':>11} {'AR-AR':>11}"
              f" {'IKE':>11} {'RADIUS':>11} {'tables':>7}"]
    for key, entry in per_method.items():
        sig = entry.get("signalling_ms", {})
        links = entry.get("signalling_per_link", {})

        def link_cell(name: str) -> str:
            if name not in links or not links[name]["messages"].get("median"):
                return f"{'-':>11}"
            return f"{links[name]['messages']['median']:>4.0f}/{links[name]['bytes']['median']:<6.0f}"

        tables = f"{entry['tables_ok']}/{entry['tables_checked']}" if "tables_checked" in entry else "-"
        lines.append(f"{key:<22} {_cell(sig.get('ctar_to_ctaa_ms', {}), width=9)} "
                     f"{_cell(sig.get('ctd_to_ctdr_ms', {}), width=9)} {_cell(sig.get('ike_to_child_ms', {}), width=7)} "
                     f"{_cell(sig.get('bu_to_ba_ms', {}), width=7)} {link_cell('access')} {link_cell('ar_ar')} "
                     f"{link_cell('ike')} {link_cell('radius')} {tables:>7}")
    if summary.get("ratios"):
        lines += ["", "re-authentication / CXTP, ratio of median interruptions from this run (HA->MN, MN->HA)"]
        for row in summary["ratios"]:
            at = f"@{row['sweep_value']:g}" if row["sweep_value"] is not None else ""
            cells = " ".join(f"{row[d]:>6.2f}" if row[d] is not None else f"{'-':>6}" for d, _ in DIRECTIONS)
            lines.append(f"  {row['baseline'] + at:<22} / {row['method']:<16} {cells}")
    errors = {node: {k: v for k, v in delta.items() if "Error" in k or "No" in k}
              for node, delta in (summary.get("xfrm_stat_delta") or {}).items()}
    errors = {node: delta for node, delta in errors.items() if delta}
    lines += ["", "kernel IPsec error counters during the run (/proc/net/xfrm_stat deltas): "
              + (json.dumps(errors) if errors else "all zero")]
    return "\n".join(lines)


def plot(run_dir: Path, rows: list[dict], summary: dict) -> None:
    """Per-method distribution (one panel per direction); interruption against a swept parameter."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    measured = [row for row in rows if not row.get("warmup")]
    methods = list(dict.fromkeys(row["method"] for row in measured))
    figure, axes = plt.subplots(1, 2, figsize=(max(8, 2.4 * len(methods)), 4.5), sharey=True)
    for axis, (direction, label) in zip(axes, DIRECTIONS):
        data = [[row[direction]["interruption_ms"] for row in measured
                 if row["method"] == method and "interruption_ms" in row[direction]] for method in methods]
        axis.boxplot(data, showfliers=False)
        axis.set_xticks(range(1, len(methods) + 1), methods, rotation=20, ha="right")
        for position, values in enumerate(data, start=1):
            axis.scatter([position] * len(values), values, s=8, alpha=0.5)
        axis.set_title(f"{label} interruption")
        axis.set_ylabel("ms")
        axis.grid(axis="y", alpha=0.3)
    figure.suptitle(f"{run_dir.parent.name} / {run_dir.name}")
    figure.tight_layout()
    figure.savefig(run_dir / "interruption_by_method.png", dpi=100)
    plt.close(figure)

    sweep = summary.get("sweep") or {}
    if not sweep.get("parameter"):
        return
    figure, axes = plt.subplots(1, 2, figsize=(10, 4.5), sharey=True)
    for axis, (direction, label) in zip(axes, DIRECTIONS):
        for method in methods:
            points = sorted(((entry["sweep_value"], entry[direction]["interruption_ms"]["median"])
                            for entry in summary["per_method"].values()
                             if entry["method"] == method and entry[direction]["interruption_ms"].get("n")),
                            key=lambda p: (p[0] is not None, p[0] or 0))
            if len(points) == 1 and points[0][0] is None:
                axis.axhline(points[0][1], linestyle="--", linewidth=1, label=f"{method} (not swept)",
                             color=f"C{methods.index(method)}")
            elif points:
                points = [p for p in points if p[0] is not None]
                axis.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=method,
                          color=f"C{methods.index(method)}")
        axis.set_xlabel(sweep["parameter"])
        axis.set_ylabel("median interruption (ms)")
        axis.set_title(label)
        axis.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(run_dir / f"interruption_vs_{sweep['parameter'].replace('.', '_')}.png", dpi=100)
    plt.close(figure)


def show(run_dir: Path) -> None:
    print(table(run_dir))
    print(f"\nfiles: {', '.join(sorted(p.name for p in run_dir.iterdir()))}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run_dir", help="results/<scenario>/<run-id>")
    arguments = parser.parse_args(argv)
    run_dir = Path(arguments.run_dir)
    try:
        compute(run_dir)
    except (ReportError, ValueError, KeyError) as error:  # ValueError: a file that is not JSON
        print(f"report: {error}", file=sys.stderr)
        return 2
    show(run_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
