"""Metrics, table and plots from a stored run; never reruns the experiment.

    python -m scenarios.analysis.report results/<scenario>/<run-id>
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
from pathlib import Path

from scenarios import records
from scenarios.analysis import metrics, model, packets, storms
from scenarios.runner import methods, properties
from topo import plan

DIRECTIONS = (("ha_to_mn", "HA->MN"), ("mn_to_ha", "MN->HA"))
REFERENCE = methods.reference_name()
REQUIRED_FILES = ("record.json", "handovers.json", "probe-mn.json", "probe-ha.json")


class ReportError(RuntimeError):
    """A run directory lacks what a report is made from."""


def read_traces(run_dir: Path) -> dict[str, list[dict]]:
    traces = {}
    for path in sorted(run_dir.glob("trace-*.jsonl")):
        with open(path) as handle:
            traces[path.stem.removeprefix("trace-")] = [json.loads(line) for line in handle if line.strip()]
    return traces


def is_compact(run_dir: Path) -> bool:
    """A run kept without its raw probe traces (``results/reference/``): records, summary,
    per-handover figures and plots only."""
    return (run_dir / "summary.json").is_file() and not (run_dir / "probe-mn.json").is_file()


def compute(run_dir: Path) -> dict:
    """Compute per-handover figures and the summary from the traces; write both, and the plots."""
    missing = [name for name in REQUIRED_FILES if not (run_dir / name).is_file()]
    if missing:
        raise ReportError(f"{run_dir}: not a complete run directory (missing {', '.join(missing)})")
    try:
        handovers = records.read_handovers(run_dir)
    except records.RecordError as error:
        raise ReportError(f"{run_dir}: {error}") from None
    mn_trace = json.loads((run_dir / "probe-mn.json").read_text())
    ha_trace = json.loads((run_dir / "probe-ha.json").read_text())
    record = json.loads((run_dir / "record.json").read_text())
    tolerances = record["parameters"].get("fidelity")
    # the TCP connection's traces (runs made before it existed have none)
    tcp = {role: json.loads((run_dir / f"tcp-{role}.json").read_text()) for role in ("mn", "ha")
           if (run_dir / f"tcp-{role}.json").is_file()}
    traces = read_traces(run_dir)
    rows = _rows(run_dir, handovers, mn_trace, ha_trace, traces, tolerances, tcp if len(tcp) == 2 else None)
    per_method = metrics.summarize(rows)
    metrics.add_intervals(per_method, rows, REFERENCE)
    summary = {
        "per_method": per_method,
        "units": "interruption and signalling in milliseconds; lost in probes; per_link in messages and octets",
        "probe_decode_errors": {"mn": mn_trace["decode_errors"], "ha": ha_trace["decode_errors"]},
        "xfrm_stat_delta": record.get("xfrm_stat_delta"),
        "sweep": record["parameters"].get("sweep"),
    }
    summary["ratios"] = metrics.ratios(summary["per_method"], methods.reauth_names(), methods.cxtp_names(), rows)
    if (record["parameters"].get("storm") or {}).get("sizes"):
        summary["storm"] = storms.summarize(rows, handovers, traces, record["parameters"]["storm"])
        storms.plot(run_dir, summary["storm"])
    summary["fidelity"] = {"tolerances": tolerances,
                           "violations": sum(1 for row in rows if not row.get("warmup") and not row["fidelity_ok"]),
                           "repeated": sum(1 for handover in handovers if handover.repeated)}
    # derived files only: the raw records (handovers.json) stay as the runner wrote them
    (run_dir / "per_handover.json").write_text(json.dumps(rows, indent=2))
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    if summary.get("storm"):  # the queueing model beside the emulated storms (it reads summary.json)
        model.validate(run_dir)
    plot(run_dir, rows, summary)
    if (run_dir / "captures").is_dir():
        try:
            packets.plot(run_dir)
        except packets.PacketsError as error:
            print(f"report: no packet sequences: {error}", file=sys.stderr)
    write_html(run_dir)
    return summary


def _rows(run_dir: Path, handovers: list, mn_trace: dict, ha_trace: dict, traces: dict[str, list[dict]],
          tolerances: dict | None, tcp: dict | None) -> list[dict]:
    """Each handover's figures from its own MN's probes: MN 0's (``probe-mn.json``,
    ``probe-ha.json``) and every other MN's (``probe-mn<i>.json``, ``probe-mn<i>-ha.json``, its
    traffic arriving on its own tunnel at the HA). With several MNs moving, the agents' traces
    hold every MN's messages, so the signalling and timeline (which take the first of each after
    a move) are left out."""
    by_mn: dict[int, list] = {}
    for handover in handovers:
        by_mn.setdefault(plan.mn_index(handover.mn), []).append(handover)
    single = set(by_mn) <= {0}
    rows = []
    for index, own in by_mn.items():
        if index == 0:
            rows += metrics.per_handover(own, mn_trace, ha_trace, traces if single else None, tolerances, tcp)
            continue
        node = plan.mn_node(index)
        mn_own = json.loads((run_dir / f"probe-{node}.json").read_text())
        ha_own = json.loads((run_dir / f"probe-{node}-ha.json").read_text())
        rows += metrics.per_handover(own, mn_own, ha_own, None, tolerances, None,
                                     path=functools.partial(_mn_path, index))
    return sorted(rows, key=lambda row: row["index"])


def _mn_path(index: int, ar: str) -> dict[str, str]:
    """Where MN ``index``'s probes arrive through ``ar``: its tunnel's end there, the HA's of it."""
    return {plan.MN: plan.home_tunnel(plan.MN, ar), plan.HA: plan.ha_home_tunnel(index, ar)}


def write_html(run_dir: Path) -> None:
    """``report.html`` (scenarios.analysis.htmlreport): the run in one page; its failure is told, not raised."""
    from scenarios.analysis import htmlreport  # it imports this module

    try:
        htmlreport.write(run_dir)
    except (OSError, ValueError, KeyError, TypeError) as error:
        print(f"report: report.html not written: {type(error).__name__}: {error}", file=sys.stderr)


def _cell(stats: dict, key: str = "median", width: int = 8, digits: int = 1) -> str:
    return f"{stats[key]:>{width}.{digits}f}" if stats.get("n") else f"{'-':>{width}}"


def _interval(stats: dict | None, width: int = 15) -> str:
    interval = (stats or {}).get("ci95")
    return f"{f'[{interval[0]:.1f}, {interval[1]:.1f}]':>{width}}" if interval else f"{'-':>{width}}"


def _mean_overheads(per_method: dict) -> list[str]:
    """The overhead as the difference of the means, below the table: an interruption moves in
    whole probe intervals, and so does a median; the handovers' random phase makes the mean
    resolve finer (see metrics.add_intervals)."""
    rows = []
    for key, entry in per_method.items():
        cells = []
        for direction, label in DIRECTIONS:
            overhead = entry[direction].get("overhead_ms") or {}
            if "mean" in overhead:
                cells.append(f"{label} {overhead['mean']:>+7.1f} "
                             f"{_interval({'ci95': overhead.get('mean_ci95')}, width=14)}")
        if cells:
            rows.append(f"{key:<22} " + "   ".join(cells))
    if not rows:
        return []
    return ["", "security overhead as the difference of the means, with its 95% interval: each handover starts at a",
            "random point of the probe interval, so the mean resolves below the interval, where a median moves in",
            "whole intervals", *rows]


def _tcp_lines(per_method: dict) -> list[str]:
    """The TCP connection from the MN's home address, per method and direction: recovery (the
    attach to its first data after it) and stall (as the probes' interruption), median and p95."""
    entries = {key: entry["tcp"] for key, entry in per_method.items() if entry.get("tcp")}
    if not entries:
        return []
    lines = ["", "TCP from the MN's home address (ms; median / p95): recovery = the attach to the first new data,",
             "stall = the last data before the detach to the first after it (both include the sender's",
             "retransmission timer; resolution: one record interval)",
             f"{'method':<22} {'dir':<7} {'recovery':>17} {'stall':>17}"]
    for key, tcp in entries.items():
        for direction, label in DIRECTIONS:
            cells = [f"{_cell(tcp[direction][name])} / {_cell(tcp[direction][name], 'p95', width=6)}"
                     for name in ("recovery_ms", "stall_ms")]
            lines.append(f"{key:<22} {label:<7} {cells[0]:>17} {cells[1]:>17}")
    return lines


def choices(per_method: dict) -> list[dict]:
    """One row per method of the run (and per swept value): what an operator chooses from. The
    overhead over the method without security per direction (median, 95% interval); messages and
    octets per handover on the access link (CXTP's or IKE's), the AR-AR link and the AAA link, and
    the AAA transactions (RADIUS Access-Requests); the declared security properties, each checked by
    ``properties.EVIDENCE``. (Summaries written before groups named their method: the key's.)"""
    def method_of(key: str, entry: dict) -> str:
        return entry.get("method") or key.split("@")[0]

    rows = []
    for key, entry in sorted(per_method.items(),
                             key=lambda item: (method_of(*item), item[1].get("sweep_value") or 0)):
        method = method_of(key, entry)
        links = entry.get("signalling_per_link", {})

        def median(link: str, what: str, links: dict = links) -> float:
            return (links.get(link, {}).get(what) or {}).get("median") or 0.0

        declared = properties.METHOD_PROPERTIES.get(method)
        rows.append({
            "method": method, "group": key,
            "overhead": {direction: entry[direction].get("overhead_ms") for direction, _ in DIRECTIONS},
            "access": (median("access", "messages") + median("ike", "messages"),
                       median("access", "bytes") + median("ike", "bytes")),
            "ar_ar": (median("ar_ar", "messages"), median("ar_ar", "bytes")),
            "aaa": (median("radius", "messages"), median("radius", "bytes")),
            # RADIUS Access-Requests per handover (runs before they were counted: round trips)
            "aaa_transactions": (entry.get("aaa_transactions") or {}).get("median",
                                                                           median("radius", "messages") / 2),
            "properties": None if declared is None else {
                "fresh_keys": declared.fresh_keys, "forward_secrecy": declared.forward_secrecy,
                "protects": declared.protects,
                "state_at": ", ".join({"nar": "nAR", "ha": "HA"}.get(where, where) for where in declared.state_at),
                "keys_from": declared.keys_from, "evidence": f"{properties.EVIDENCE}[{method}]"},
        })
    return rows


def _choice_lines(per_method: dict) -> list[str]:
    rows = choices(per_method)
    if not rows:
        return []

    def overhead(row: dict, direction: str) -> str:
        figure = row["overhead"][direction]
        return f"{figure['median']:+7.1f} {_interval(figure, width=15)}" if figure else f"{'-':>7} {'-':>15}"

    def pair(value: tuple[float, float]) -> str:
        return f"{value[0]:.0f}/{value[1]:.0f}" if value[0] else "-"

    lines = ["", "choosing a method: overhead over none (ms, median [95% interval]) per direction; messages/octets",
             "per handover on the access, AR-AR and AAA links; AAA transactions; security properties (each checked",
             f"by {properties.EVIDENCE}[<method>])",
             f"{'method':<22} {'HA->MN overhead':>23} {'MN->HA overhead':>23} {'access':>9} {'AR-AR':>9} {'AAA':>9}"
             f" {'AAA tx':>6}  fresh keys / PFS / protects / state at"]
    for row in rows:
        declared = row["properties"]
        facts = "-" if declared is None else (
            f"{'yes' if declared['fresh_keys'] else 'no'} / {'yes' if declared['forward_secrecy'] else 'no'} / "
            f"{declared['protects']} / {declared['state_at']}")
        lines.append(f"{row['group']:<22} {overhead(row, 'ha_to_mn')} {overhead(row, 'mn_to_ha')} "
                     f"{pair(row['access']):>9} {pair(row['ar_ar']):>9} {pair(row['aaa']):>9} "
                     f"{row['aaa_transactions']:>6.1f}  {facts}")
    return lines


def run_name(run_dir: Path) -> str:
    """A run as a reader of the repository names it: its path in the repository, or (elsewhere,
    a temporary directory) its scenario and run id, never a machine's path."""
    resolved = run_dir.resolve()
    if resolved.is_relative_to(records.REPOSITORY):
        return str(resolved.relative_to(records.REPOSITORY))
    return f"{resolved.parent.name}/{resolved.name}"


def table(run_dir: Path) -> str:
    summary = json.loads((run_dir / "summary.json").read_text())
    per_method = summary["per_method"]
    lines = [f"run {run_name(run_dir)}", "",
             "interruption at the receiver (ms), from the last in-order probe before the detach to the first probe",
             "through the new path: median [95% bootstrap interval], p95, max, n handovers; lost probes (median);",
             f"security overhead = median minus {REFERENCE}'s, from this run, with its 95% interval",
             f"{'method':<22} {'dir':<7} {'median':>8} {'95% interval':>15} {'p95':>8} {'max':>8} {'n':>4} {'lost':>6}"
             f" {'overhead':>9} {'95% interval':>15}"]
    for key, entry in per_method.items():
        for direction, label in DIRECTIONS:
            stats = entry[direction]["interruption_ms"]
            lost = entry[direction]["lost"]
            overhead = entry[direction].get("overhead_ms")
            extra = (f" {overhead['median']:>+9.1f} {_interval(overhead)}" if overhead else "")
            lines.append(f"{key:<22} {label:<7} {_cell(stats)} {_interval(stats)} {_cell(stats, 'p95')} "
                         f"{_cell(stats, 'max')} {stats.get('n', 0):>4} {_cell(lost, width=6, digits=0)}{extra}")
    lines += _mean_overheads(per_method)
    fidelity = summary.get("fidelity") or {}
    violations = {key: entry["fidelity_violations"] for key, entry in per_method.items()
                  if entry.get("fidelity_violations")}
    lines += ["", f"emulation fidelity (tolerances {json.dumps(fidelity.get('tolerances'))}): "
              f"{fidelity.get('violations', 0)} measured handovers outside them, left out of the figures"
              + (f" ({', '.join(f'{key} {count}' for key, count in violations.items())})" if violations else "")
              + f"; {fidelity.get('repeated', 0)} repeated"]
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

        def link_cell(name: str) -> str:  # called in this iteration only: `links` is this entry's
            if name not in links or not links[name]["messages"].get("median"):  # noqa: B023
                return f"{'-':>11}"
            return f"{links[name]['messages']['median']:>4.0f}/{links[name]['bytes']['median']:<6.0f}"  # noqa: B023

        tables = f"{entry['tables_ok']}/{entry['tables_checked']}" if "tables_checked" in entry else "-"
        lines.append(f"{key:<22} {_cell(sig.get('ctar_to_ctaa_ms', {}), width=9)} "
                     f"{_cell(sig.get('ctd_to_ctdr_ms', {}), width=9)} "
                     f"{_cell(sig.get('ike_to_child_ms', {}), width=7)} "
                     f"{_cell(sig.get('bu_to_ba_ms', {}), width=7)} {link_cell('access')} {link_cell('ar_ar')} "
                     f"{link_cell('ike')} {link_cell('radius')} {tables:>7}")
    lines += _tcp_lines(per_method)
    lines += _choice_lines(per_method)
    if summary.get("ratios"):
        lines += ["", "re-authentication / CXTP, ratio of median interruptions from this run, with 95% intervals"]
        for row in summary["ratios"]:
            at = f"@{row['sweep_value']:g}" if row["sweep_value"] is not None else ""
            cells = "  ".join(
                (f"{label} {row[d]:>5.2f} {_interval({'ci95': row.get(d + '_ci95')}, 14)}" if row[d] is not None
                 else f"{label} {'-':>5}") for d, label in DIRECTIONS)
            lines.append(f"  {row['baseline'] + at:<18} / {row['method']:<18} {cells}")
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
        data = [[interruption
                 for value in dict.fromkeys(r.get("sweep_value") for r in measured if r["method"] == method)
                 for interruption in metrics.interruptions(rows, method, value, direction)] for method in methods]
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
    plot_timelines(run_dir, rows, plt)

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


#: the ladder's lanes, and where each timeline step happens
LANES = ("MN", "pAR", "nAR", "HA")
STEP_LANES = {
    "detach_start": "MN", "attached": "MN", "mn_trigger": "MN", "ctar_sent": "MN", "mn_rehomed": "MN",
    "ctar_predictive_sent": "MN",
    "ctaa_received": "MN", "bu_sent": "MN", "ba_received": "MN", "first_ha_to_mn": "MN", "ike_initiate_sent": "MN",
    "ike_child_installed": "MN", "anticipation_start": "MN",
    "par_ctar_received": "pAR", "pctd_sent": "pAR", "ctd_sent": "pAR", "ct_req_received": "pAR",
    "ctdr_received": "pAR", "par_released": "pAR",
    "pctd_received": "nAR", "ctd_received": "nAR", "ct_req_sent": "nAR", "nar_ctar_received": "nAR",
    "nar_activated": "nAR", "ctaa_sent": "nAR", "ctdr_sent": "nAR",
    "ha_bu_received": "HA", "ha_ba_sent": "HA", "first_mn_to_ha": "HA",
}
#: messages: (label, send step, receive step); the CTAR goes to the pAR or to the nAR
MESSAGES = (("CTAR", "ctar_predictive_sent", "par_ctar_received"), ("CTAR", "ctar_sent", "nar_ctar_received"),
            ("PCTD", "pctd_sent", "pctd_received"), ("CT-Req", "ct_req_sent", "ct_req_received"),
            ("CTD", "ctd_sent", "ctd_received"), ("CTAA", "ctaa_sent", "ctaa_received"),
            ("CTDR", "ctdr_sent", "ctdr_received"), ("BU", "bu_sent", "ha_bu_received"),
            ("BA", "ha_ba_sent", "ba_received"))


def median_timelines(rows: list[dict]) -> dict[str, dict[str, float]]:
    """Per method, the median time (ms from the detach) of every step that at least half of its
    measured, successful handovers have: the method's median handover."""
    result = {}
    for method in dict.fromkeys(row["method"] for row in rows):
        timelines = [row["timeline"] for row in rows
                     if row["method"] == method and row.get("timeline") and metrics.counts(row)]
        steps = {step for timeline in timelines for step in timeline}
        result[method] = {step: statistics.median(t[step] for t in timelines if step in t) for step in steps
                          if sum(step in t for t in timelines) * 2 >= len(timelines)}
    return result


def plot_timelines(run_dir: Path, rows: list[dict], plt) -> None:
    """``timeline_by_method.png``: the median handover of each method as a ladder diagram."""
    medians = {method: steps for method, steps in median_timelines(rows).items() if steps}
    if not medians:
        return
    figure, axes = plt.subplots(1, len(medians), figsize=(3.3 * len(medians), 6.5), squeeze=False)
    for axis, (method, steps) in zip(axes[0], medians.items()):
        x = {lane: index for index, lane in enumerate(LANES)}
        for lane in LANES:
            axis.axvline(x[lane], color="0.7", linewidth=1)
        for label, send, receive in MESSAGES:
            if send in steps and receive in steps:
                start = (x[STEP_LANES[send]], steps[send])
                end = (x[STEP_LANES[receive]], steps[receive])
                axis.annotate("", end, start, arrowprops={"arrowstyle": "->", "color": "C0", "linewidth": 1})
                axis.text((start[0] + end[0]) / 2, (start[1] + end[1]) / 2, label, fontsize=6, color="C0",
                          ha="center", va="bottom")
        for step, t in steps.items():
            step_lane = STEP_LANES.get(step)
            if step_lane and not any(step in message[1:] for message in MESSAGES):
                axis.plot([x[step_lane]], [t], marker="s", markersize=3, color="C3")
                axis.text(x[step_lane] + 0.05, t, step.replace("_", " "), fontsize=5, color="C3", va="center")
        if "attached" in steps:
            axis.axhspan(0, steps["attached"], color="0.92")  # the L2 handover
        axis.set_xticks(range(len(LANES)), LANES, fontsize=7)
        axis.set_xlim(-0.4, len(LANES) - 0.2)
        axis.invert_yaxis()
        axis.set_title(method, fontsize=8)
        axis.tick_params(axis="y", labelsize=7)
    axes[0][0].set_ylabel("ms from the detach (median handover; grey: detached)", fontsize=7)
    figure.tight_layout()
    figure.savefig(run_dir / "timeline_by_method.png", dpi=110)
    plt.close(figure)


def show(run_dir: Path) -> None:
    print(table(run_dir))
    storm = json.loads((run_dir / "summary.json").read_text()).get("storm")
    if storm:
        print("\nstorms: K MNs moving at once; interruption (ms) over every MN's counted handovers, p95 with its "
              "95% interval;\nthe nAR's activation queue (CTAR received -> context active, ms); the AAA's queue for "
              "re-authentication (an MN's first Access-Request in -> its Access-Accept out, at the AAA node, ms); "
              "the guest's busy "
              "share over the storms (one CPU runs every node: emulated figures); the moving MNs' probe interval "
              "each way (the figures' resolution)")
        print(storms.table(storm))
        validation = run_dir / "model_validation.json"
        if validation.is_file():
            result = json.loads(validation.read_text())
            print(f"\nthe queueing model beside the emulated storms (scenarios/analysis/model.py: every node on one "
                  f"CPU, as in the guest; service times from {result['service_times_from']}): p50 and p95 within "
                  f"{100 * result['tolerance']:.0f}% in {result['agree']} of {result['judged']} figures judged "
                  f"(K up to {result['validated_up_to']})")
            print(model.validation_table(result))
    print(f"\nfiles: {', '.join(sorted(p.name for p in run_dir.iterdir()))}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run_dir", help="results/<scenario>/<run-id>")
    arguments = parser.parse_args(argv)
    run_dir = Path(arguments.run_dir)
    try:
        if is_compact(run_dir):  # a kept reference run: its figures were computed when it ran
            print(f"report: {run_dir} is a compact run (no probe traces): its stored summary", file=sys.stderr)
            write_html(run_dir)
        else:
            compute(run_dir)
    except (ReportError, ValueError, KeyError) as error:  # ValueError: a file that is not JSON
        print(f"report: {error}", file=sys.stderr)
        return 2
    show(run_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
