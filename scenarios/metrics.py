"""Turn probe traces and handover records into per-handover interruption figures.

Definitions (per handover and per direction, measured at the receiver):

* the *interruption* is the longest silence at the receiver that starts with the last probe
  received at or before the detach instant (or later) and ends before the next handover; its
  two ends are *last before* and *first after*;
* probes older than the newest one received before the detach (delivered late from a router's
  queue, for example after a ping-pong handover) are received but do not end the silence;
* *lost* counts the probes whose sequence numbers lie between those two and never arrived.

Taking the longest silence, rather than splitting probes at the detach instant by their send
time, keeps probes that were already in flight (or that slipped out between the timestamp and
the link actually going down) from being mistaken for the end of the interruption.
"""

from __future__ import annotations

import bisect
import statistics
from typing import Any, Iterable


class MetricsError(ValueError):
    """A trace is too short or inconsistent to measure a handover from."""


def interruption(receiver_trace: dict, detach_ns: int, horizon_ns: int | None = None) -> dict[str, Any]:
    """Measure one direction of one handover from the receiver's trace."""
    received = receiver_trace["received"]
    rows = sorted(zip(received["rx_ns"], received["seq"]))  # by arrival
    arrivals = [row[0] for row in rows]
    start = bisect.bisect_right(arrivals, detach_ns) - 1
    if start < 0:
        raise MetricsError("no probe was received before the handover")
    end = len(rows) if horizon_ns is None else bisect.bisect_left(arrivals, horizon_ns)
    # Probes older than the last one received before the detach (queued in a router during an
    # earlier handover and delivered when the MN came back) do not end an interruption.
    newest_before = max(seq for _, seq in rows[: start + 1])
    window = [rows[start]] + [row for row in rows[start + 1:end] if row[1] > newest_before]
    if len(window) < 2:
        raise MetricsError("no probe was received after the handover")
    gap_index = max(range(len(window) - 1), key=lambda i: window[i + 1][0] - window[i][0])
    last_before, first_after = window[gap_index], window[gap_index + 1]
    low, high = last_before[1], first_after[1]
    received_between = {seq for _, seq in rows[: end] if low < seq < high}
    return {
        "interruption_ms": (first_after[0] - last_before[0]) / 1e6,
        "lost": max(0, high - low - 1 - len(received_between)),
        "last_before_seq": low,
        "first_after_seq": high,
        "last_before_rx_ns": last_before[0],
        "first_after_rx_ns": first_after[0],
    }


def per_handover(handovers: list[dict], mn_trace: dict, ha_trace: dict) -> list[dict[str, Any]]:
    """Both directions for every handover; the next handover's detach bounds the search."""
    results = []
    for position, handover in enumerate(handovers):
        horizon = handovers[position + 1]["detach_start_ns"] if position + 1 < len(handovers) else None
        row = {"index": handover["index"], "method": handover.get("method", "none"),
               "from": handover["from_ar"], "to": handover["to_ar"], "l2_delay_ms": handover["l2_delay_ms"]}
        # Downlink HA -> MN is received by the MN; uplink MN -> HA by the HA.
        for direction, trace in (("ha_to_mn", mn_trace), ("mn_to_ha", ha_trace)):
            try:
                row[direction] = interruption(trace, handover["detach_start_ns"], horizon)
            except MetricsError as error:
                row[direction] = {"error": str(error)}
        results.append(row)
    return results


def percentile(values: list[float], fraction: float) -> float:
    """Linear-interpolation percentile (numpy's default), without numpy."""
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    position = fraction * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def statistics_of(values: Iterable[float]) -> dict[str, float | int]:
    values = list(values)
    if not values:
        return {"n": 0}
    return {"median": statistics.median(values), "p95": percentile(values, 0.95),
            "min": min(values), "max": max(values), "n": len(values)}


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per method and direction: interruption statistics (ms) and lost probes."""
    summary: dict[str, Any] = {}
    for method in sorted({row["method"] for row in rows}):
        method_rows = [row for row in rows if row["method"] == method]
        entry: dict[str, Any] = {}
        for direction in ("ha_to_mn", "mn_to_ha"):
            good = [row[direction] for row in method_rows if "interruption_ms" in row[direction]]
            entry[direction] = {
                "interruption_ms": statistics_of(item["interruption_ms"] for item in good),
                "lost": statistics_of(item["lost"] for item in good),
                "failed": len(method_rows) - len(good),
            }
        summary[method] = entry
    return summary
