"""What a storm scenario measured: per method, direction and storm size K, the interruption over
every MN's handovers (p50, p95, p99, each with a bootstrap interval), the nAR's activation queue
(the MN's CTAR received -> its context active, per MN), the AAA's queue for re-authentication
(per MN, its first Access-Request's arrival at the AAA node -> its Access-Accept's departure, and
FreeRADIUS's own time on its requests), and the guest's busy share.

Every figure is the emulation's on one CPU: the guest runs every node, so beyond some K the
figures describe the emulator as much as the protocol (``guest_busy`` says how loaded it was;
:mod:`scenarios.analysis.model` predicts beyond it).
"""

from __future__ import annotations

import bisect
import functools
import statistics
from pathlib import Path
from typing import Any

from cxtp.messages import normalize_address
from nodes.contracts import TraceEvent
from scenarios import config
from scenarios.analysis import metrics
from scenarios.records import HandoverRecord
from scenarios.runner import methods

DIRECTIONS = (("ha_to_mn", "HA->MN"), ("mn_to_ha", "MN->HA"))
QUANTILES = (("p50", 0.50), ("p95", 0.95), ("p99", 0.99))


def activation_ms(record: HandoverRecord, nar_trace: list[dict], times: list[int] | None = None) -> float | None:
    """The nAR's CTAR from the MN's new address (its first after the attach) to that MN's context
    active: how long the MN waited in the nAR's queue and for its own activation."""
    declared = methods.METHODS.get(record.method)
    if record.attached_ns is None or declared is None or not declared.cxtp:
        return None
    new = normalize_address(record.mn_new)
    horizon = record.window_end_ns if record.window_end_ns is not None else float("inf")
    # the trace in time order (``summarize`` sorts it): the window by bisection
    times = times if times is not None else [event["t_ns"] for event in nar_trace]
    within = nar_trace[bisect.bisect_left(times, record.attached_ns):bisect.bisect_right(times, horizon)]
    ctar = next((event for event in within if event["event"] == TraceEvent.CXTP_RECEIVED
                 and event.get("type") == "CTAR" and normalize_address(str(event.get("source", "::"))) == new), None)
    if ctar is None:
        return None
    active = next((event for event in within if event["event"] == TraceEvent.IPSEC_ACTIVATED
                   and event["t_ns"] >= ctar["t_ns"] and normalize_address(str(event.get("new", "::"))) == new), None)
    return (active["t_ns"] - ctar["t_ns"]) / 1e6 if active else None


def _at(fraction: float, sample: list[float]) -> float:
    return metrics.percentile(sample, fraction)


def _quantiles(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"n": 0}
    result: dict[str, Any] = {"n": len(values)}
    for name, fraction in QUANTILES:
        result[name] = metrics.percentile(values, fraction)
        interval = metrics.bootstrap_interval(values, statistic=functools.partial(_at, fraction))
        result[f"{name}_ci95"] = list(interval) if interval else None
    return result


def summarize(rows: list[dict], handovers: list[HandoverRecord], traces: dict[str, list[dict]],
              options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Per method and K (``{method: {K: figures}}``, K as text): the counted handovers' interruptions
    (those that succeeded within the emulation's fidelity), the activation queue of the CXTP
    methods, the failures, the guest's median busy share over the storms and, from the run's
    ``[storm]`` ``options``, the probes' interval (the figures' resolution) at that K."""
    by_index = {record.index: record for record in handovers}
    # an event stamped before it was written (a send) can follow a later one: sorted once, by time
    traces = {node: sorted(trace, key=lambda event: event["t_ns"]) for node, trace in traces.items()}
    times = {node: [event["t_ns"] for event in trace] for node, trace in traces.items()}
    summary: dict[str, Any] = {}
    for row in rows:
        if row.get("sweep_value") is None:
            continue
        entry = summary.setdefault(row["method"], {}).setdefault(f"{row['sweep_value']:g}", {
            "handovers": 0, "failed": 0, "counted": 0, "_interruptions": {d: [] for d, _ in DIRECTIONS},
            "_activation": [], "_aaa_span": [], "_aaa_residence": [], "_busy": []})
        entry["handovers"] += 1
        record = by_index.get(row["index"])
        if row.get("outcome") != "ok":
            entry["failed"] += 1
        busy = ((record.fidelity or {}).get("guest_busy") if record else None)
        if busy is not None:
            entry["_busy"].append(busy)
        if not metrics.counts(row):
            continue
        entry["counted"] += 1
        for direction, _ in DIRECTIONS:
            value = (row.get(direction) or {}).get("interruption_ms")
            if value is not None:
                entry["_interruptions"][direction].append(value)
        reauth = (record.reauth if record is not None else None) or {}
        if reauth.get("aaa_span_ms") is not None:
            entry["_aaa_span"].append(reauth["aaa_span_ms"])
            entry["_aaa_residence"].append(reauth["aaa_residence_ms"])
        if record is not None and record.to_ar in traces:
            queued = activation_ms(record, traces[record.to_ar], times[record.to_ar])
            if queued is not None:
                entry["_activation"].append(queued)
    for per_size in summary.values():
        for entry in per_size.values():
            for direction, values in entry.pop("_interruptions").items():
                entry[direction] = _quantiles(values)
            entry["activation_ms"] = _quantiles(entry.pop("_activation"))
            entry["aaa_span_ms"] = _quantiles(entry.pop("_aaa_span"))
            entry["aaa_residence_ms"] = _quantiles(entry.pop("_aaa_residence"))
            busy = entry.pop("_busy")
            entry["guest_busy"] = statistics.median(busy) if busy else None
    for per_size in summary.values():
        for size, entry in per_size.items():
            if options and options.get("probe_rate"):
                budget = options.get("probe_budget") or config.DEFAULTS["storm"]["probe_budget"]
                every = config.storm_probe_every(int(float(size)), options["probe_rate"], budget)
                entry["probe_interval_ms"] = every * 1000.0 / options["probe_rate"]
    return summary


def table(summary: dict[str, Any]) -> str:
    lines = [f"{'method':<18} {'K':>4} {'dir':<7} {'p50':>7} {'p95':>7} {'p95 95% CI':>16} {'p99':>7} "
             f"{'activation p50/p95':>19} {'AAA p50/p95':>13} {'busy':>5} {'failed':>6} {'probes':>7}"]
    for method, per_size in summary.items():
        for size, entry in sorted(per_size.items(), key=lambda item: float(item[0])):
            activation = entry["activation_ms"]
            queued = f"{activation['p50']:.1f}/{activation['p95']:.1f}" if activation.get("n") else "-"
            aaa = entry.get("aaa_span_ms") or {}
            at_aaa = f"{aaa['p50']:.1f}/{aaa['p95']:.1f}" if aaa.get("n") else "-"
            busy = f"{entry['guest_busy']:.2f}" if entry.get("guest_busy") is not None else "-"
            for direction, label in DIRECTIONS:
                figures = entry[direction]
                if not figures.get("n"):
                    cells = f"{'-':>7} {'-':>7} {'-':>16} {'-':>7}"
                else:
                    interval = figures.get("p95_ci95")
                    ci = f"[{interval[0]:.1f}, {interval[1]:.1f}]" if interval else "-"
                    cells = f"{figures['p50']:>7.1f} {figures['p95']:>7.1f} {ci:>16} {figures['p99']:>7.1f}"
                interval = entry.get("probe_interval_ms")
                lines.append(f"{method:<18} {size:>4} {label:<7} {cells} {queued:>19} {at_aaa:>13} {busy:>5} "
                             f"{entry['failed']:>6} {f'{interval:g} ms' if interval else '-':>7}")
    return "\n".join(lines)


def plot(run_dir: Path, summary: dict[str, Any]) -> None:
    """``storm_p95.png``: the interruption's p95 (with its interval) against K, per method and
    direction."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(10, 4.5), sharey=True)
    for axis, (direction, label) in zip(axes, DIRECTIONS):
        for method, per_size in summary.items():
            points = sorted((float(size), entry[direction]) for size, entry in per_size.items()
                            if entry[direction].get("n"))
            if not points:
                continue
            sizes = [size for size, _ in points]
            p95 = [figures["p95"] for _, figures in points]
            low = [figures["p95"] - (figures.get("p95_ci95") or [figures["p95"]] * 2)[0] for _, figures in points]
            high = [(figures.get("p95_ci95") or [figures["p95"]] * 2)[1] - figures["p95"] for _, figures in points]
            axis.errorbar(sizes, p95, yerr=[low, high], marker="o", capsize=3, label=method)
        axis.set_title(f"{label} interruption, p95 over all MNs")
        axis.set_xlabel("MNs moving at once (K)")
        axis.set_ylabel("ms")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    figure.suptitle(f"{run_dir.parent.name} / {run_dir.name}: emulated, one guest CPU")
    figure.tight_layout()
    figure.savefig(run_dir / "storm_p95.png", dpi=100)
    plt.close(figure)
