"""Turn probe traces and handover records into per-handover interruption figures.

Definitions (per handover and per direction, measured at the receiver):

* the *interruption* is the longest silence at the receiver that starts with the last probe
  received at or before the detach instant (or later) and ends within the handover's window
  (which the runner closes ``settle_ms`` after the handover completed); its
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
import dataclasses
import random
import statistics
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

from nodes import probe
from nodes.contracts import TraceEvent
from scenarios.records import HandoverRecord
from scenarios.runner import methods
from topo import plan


class MetricsError(ValueError):
    """A trace is too short or inconsistent to measure a handover from."""


def _by_arrival(trace: dict) -> tuple[list[tuple[int, int, int]], list[int]]:
    """(arrival, seq, ifindex) sorted by arrival, and the arrivals alone; computed once per trace.
    Traces written before the probe recorded interfaces have ifindex 0."""
    cached = trace.get("_by_arrival")
    if cached is None:
        received = trace["received"]
        interfaces = received.get("ifindex") or [0] * len(received["seq"])
        rows = sorted(zip(received["rx_ns"], received["seq"], interfaces))
        cached = trace["_by_arrival"] = (rows, [row[0] for row in rows])
    return cached


def path_ifindexes(trace: dict, interface: str) -> set[int]:
    """The interface indexes of ``interface`` in the receiver's trace (empty if not recorded)."""
    return {int(index) for index, name in trace.get("interfaces", {}).items() if name == interface}


def interruption(receiver_trace: dict, detach_ns: int, horizon_ns: int | None = None,
                 new_path: set[int] | None = None) -> dict[str, Any]:
    """Measure one direction of one handover from the receiver's trace.

    With ``new_path`` (the receiver's interface towards the new AR, when the trace records
    interfaces): from the last in-order probe received before the detach to the first probe
    received through the new path; probes the old path delivers late in between do not split
    the silence (``late_old_path`` counts them). Without it (older traces): the longest silence
    that starts at that probe. ``lost`` counts every probe after the last in-order one, up to the
    newest received within the window, that never arrived.
    """
    rows, arrivals = _by_arrival(receiver_trace)
    start = bisect.bisect_right(arrivals, detach_ns) - 1
    if start < 0:
        raise MetricsError("no probe was received before the handover")
    end = len(rows) if horizon_ns is None else bisect.bisect_left(arrivals, horizon_ns)
    # Probes older than the last one received before the detach (queued in a router during an
    # earlier handover and delivered when the MN came back) do not end an interruption.
    last_before = max(rows[: start + 1], key=lambda row: (row[1], -row[0]))
    newest_before = last_before[1]
    after = [row for row in rows[start + 1:end] if row[1] > newest_before]
    if new_path:
        first_after = next((row for row in after if row[2] in new_path), None)
        if first_after is None:
            raise MetricsError("no probe was received through the new path")
        late_old_path = sum(1 for row in after if row[0] < first_after[0] and row[2] not in new_path)
    else:
        window = [rows[start]] + after
        if len(window) < 2:
            raise MetricsError("no probe was received after the handover")
        gap_index = max(range(len(window) - 1), key=lambda i: window[i + 1][0] - window[i][0])
        last_before, first_after = window[gap_index], window[gap_index + 1]
        late_old_path = None
    newest = max((row[1] for row in after), default=newest_before)
    received = {row[1] for row in rows[:end]}
    return {
        "interruption_ms": (first_after[0] - last_before[0]) / 1e6,
        "lost": sum(1 for seq in range(newest_before + 1, newest + 1) if seq not in received),
        "last_before_seq": last_before[1],
        "first_after_seq": first_after[1],
        "last_before_rx_ns": last_before[0],
        "first_after_rx_ns": first_after[0],
        "late_old_path": late_old_path,
    }


def _first(events: list[dict], after_ns: int, before_ns: float, **match) -> dict | None:
    for event in events:
        if after_ns <= event["t_ns"] < before_ns and all(event.get(k) == v for k, v in match.items()):
            return event
    return None


def _span_ms(start: dict | None, end: dict | None) -> float | None:
    if start is None or end is None:
        return None
    return (end["t_ns"] - start["t_ns"]) / 1e6


LINK_NAMES = {"icmp": "access", "ar": "ar_ar"}


def signalling(handover: HandoverRecord, traces: dict[str, list[dict]], horizon_ns: float) -> dict[str, Any]:
    """Signalling of one handover from the agents' traces: durations, messages and bytes per link."""
    start = handover.start_ns or 0
    attached = handover.attached_ns or start
    mn = traces.get(plan.MN, [])
    par = traces.get(handover.from_ar, [])
    ctar = _first(mn, attached, horizon_ns, event=TraceEvent.CXTP_SENT, type="CTAR")
    ctaa = _first(mn, ctar["t_ns"], horizon_ns, event=TraceEvent.CXTP_RECEIVED, type="CTAA") if ctar else None
    data = next((e for e in par if start <= e["t_ns"] < horizon_ns and e["event"] == TraceEvent.CXTP_SENT
                 and e["type"] in ("PCTD", "CTD")), None)
    ctdr = _first(par, data["t_ns"], horizon_ns, event=TraceEvent.CXTP_RECEIVED, type="CTDR") if data else None
    bu = _first(mn, attached, horizon_ns, event=TraceEvent.BU_SENT, retransmission=False)
    ba = _first(mn, bu["t_ns"], horizon_ns, event=TraceEvent.BA_RECEIVED) if bu else None
    per_link: dict[str, dict[str, int]] = {}
    for events in traces.values():
        for event in events:
            if not start <= event["t_ns"] < horizon_ns:
                continue
            if event["event"] == TraceEvent.CXTP_SENT:
                link = LINK_NAMES.get(event["link"], event["link"])
            elif event["event"] in (TraceEvent.BU_SENT, TraceEvent.BA_SENT):
                link = "mobility"
            else:
                continue
            entry = per_link.setdefault(link, {"messages": 0, "bytes": 0})
            entry["messages"] += 1
            entry["bytes"] += event.get("bytes", 0)
    reauth = handover.reauth
    if reauth:
        # Counted on the wire by the baseline (scenarios/baseline.py): IKE on the access link, RADIUS on
        # the AR-AAA link, for this attach only.
        per_link["ike"] = {"messages": reauth.get("ike_messages", 0), "bytes": reauth.get("ike_bytes", 0)}
        if "radius_messages" in reauth:
            per_link["radius"] = {"messages": reauth["radius_messages"], "bytes": reauth.get("radius_bytes", 0)}
        # a pre-authentication spent on a handover that did not happen (then cancelled) counts too
        cancelled = reauth.get("cancelled_preauth") or {}
        for link, prefix in (("ike", "preauth_ike"), ("radius", "preauth_radius")):
            if f"{prefix}_messages" in cancelled:
                entry = per_link.setdefault(link, {"messages": 0, "bytes": 0})
                entry["messages"] += cancelled[f"{prefix}_messages"]
                entry["bytes"] += cancelled.get(f"{prefix}_bytes", 0)
    aaa = None if not reauth else reauth.get("aaa_access_requests", reauth.get("radius_requests"))
    return {"ctar_to_ctaa_ms": _span_ms(ctar, ctaa), "ctd_to_ctdr_ms": _span_ms(data, ctdr),
            "ctd_type": data["type"] if data else None, "bu_to_ba_ms": _span_ms(bu, ba),
            "ike_to_child_ms": reauth["elapsed_ms"] if reauth else None, "per_link": per_link,
            #: RADIUS Access-Requests this handover cost, a cancelled pre-authentication's included
            "aaa_transactions": aaa or 0}


@dataclasses.dataclass(frozen=True)
class TimelineStep:
    """One step of a handover's timeline read from an agent's trace: the first ``event`` (with the
    fields of ``match``) that node ``role`` traced, searched from the handover's start or from the
    attach. ``methods`` says which handovers must have it: the analysis's contract with the agents,
    checked by a kernel test that runs a handover of each method."""

    role: str
    event: TraceEvent
    match: tuple[tuple[str, Any], ...]
    name: str
    origin: str
    methods: str  # "all", "cxtp", "predictive" (MN-initiated), "network" (pAR-initiated), "reactive"


def _step(role: str, event: TraceEvent, name: str, origin: str = "start", methods: str = "all",
          **match: Any) -> TimelineStep:
    return TimelineStep(role, event, tuple(match.items()), name, origin, methods)


#: the agents' trace events that make a handover's timeline
TIMELINE_STEPS = (
    _step("mn", TraceEvent.CXTP_SENT, "ctar_predictive_sent", methods="predictive", type="CTAR"),
    _step("mn", TraceEvent.ATTACHED, "mn_trigger"),
    _step("mn", TraceEvent.CXTP_SENT, "ctar_sent", "attached", methods="cxtp", type="CTAR"),
    _step("mn", TraceEvent.IPSEC_MOVED, "mn_rehomed", methods="cxtp"),
    _step("mn", TraceEvent.CXTP_RECEIVED, "ctaa_received", "attached", methods="cxtp", type="CTAA"),
    _step("mn", TraceEvent.BU_SENT, "bu_sent", retransmission=False),
    _step("mn", TraceEvent.BA_RECEIVED, "ba_received"),
    _step("par", TraceEvent.CXTP_RECEIVED, "par_ctar_received", methods="predictive", type="CTAR"),
    _step("par", TraceEvent.CXTP_SENT, "pctd_sent", methods="predictive network", type="PCTD"),
    _step("par", TraceEvent.CXTP_SENT, "ctd_sent", methods="reactive", type="CTD"),
    _step("par", TraceEvent.CXTP_RECEIVED, "ct_req_received", methods="reactive", type="CT-Req"),
    _step("par", TraceEvent.CXTP_RECEIVED, "ctdr_received", methods="cxtp", type="CTDR"),
    _step("par", TraceEvent.IPSEC_RELEASED, "par_released", methods="cxtp"),
    _step("nar", TraceEvent.CXTP_RECEIVED, "pctd_received", methods="predictive network", type="PCTD"),
    _step("nar", TraceEvent.CXTP_RECEIVED, "ctd_received", methods="reactive", type="CTD"),
    _step("nar", TraceEvent.CXTP_SENT, "ct_req_sent", methods="reactive", type="CT-Req"),
    _step("nar", TraceEvent.CXTP_RECEIVED, "nar_ctar_received", "attached", methods="cxtp", type="CTAR"),
    _step("nar", TraceEvent.IPSEC_ACTIVATED, "nar_activated", methods="cxtp"),
    _step("nar", TraceEvent.CXTP_SENT, "ctaa_sent", "attached", methods="cxtp", type="CTAA"),
    _step("nar", TraceEvent.CXTP_SENT, "ctdr_sent", methods="cxtp", type="CTDR"),
    _step("ha", TraceEvent.BU_RECEIVED, "ha_bu_received"),
    _step("ha", TraceEvent.BA_SENT, "ha_ba_sent"),
)


def required_steps(kinds: set[str]) -> list[str]:
    """The timeline steps a handover of a method of these kinds must show (``all`` always; a
    CXTP method adds ``cxtp`` and its mode)."""
    return [step.name for step in TIMELINE_STEPS
            if step.methods == "all" or set(step.methods.split()) & kinds]


def timeline(handover: HandoverRecord, traces: dict[str, list[dict]], row: dict, horizon_ns: float) -> dict[str, float]:
    """Every step of one handover on the one monotonic clock, in ms from the detach: the runner's
    steps, the agents' messages and kernel work, IKE, and the first probe through the new path
    in each direction."""
    detach = handover.detach_start_ns
    assert detach is not None
    start = handover.start_ns or detach
    restored = handover.restored_ns or (handover.recovery.fresh_attach_ns if handover.recovery else None)
    steps: dict[str, float] = {}
    for name, value in (("anticipation_start", handover.anticipation_start_ns), ("detach_start", detach),
                        ("detached", handover.detached_ns), ("attach_start", handover.attach_start_ns),
                        ("attached", handover.attached_ns), ("retry_sent", handover.retry_sent_ns),
                        ("restored", restored)):
        if value:
            steps[name] = (value - detach) / 1e6
    nodes = {"mn": plan.MN, "par": handover.from_ar, "nar": handover.to_ar, "ha": plan.HA}
    origins = {"start": start, "attached": handover.attached_ns or start}
    for step in TIMELINE_STEPS:
        found = _first(traces.get(nodes[step.role], []), origins[step.origin], horizon_ns, event=step.event,
                       **dict(step.match))
        if step.name == "ctar_predictive_sent" and found is not None and found["t_ns"] >= detach:
            continue  # no CTAR before the detach: not a predictive transfer
        if found is not None:
            steps[step.name] = (found["t_ns"] - detach) / 1e6
    reauth = handover.reauth or {}
    for name in ("initiate_sent_ns", "child_installed_ns"):
        if reauth.get(name):
            steps[f"ike_{name[:-3]}"] = (reauth[name] - detach) / 1e6
    for direction in ("ha_to_mn", "mn_to_ha"):
        first = row.get(direction, {}).get("first_after_rx_ns")
        if first:
            steps[f"first_{direction}"] = (first - detach) / 1e6
    return dict(sorted(steps.items(), key=lambda item: item[1]))


def lateness_window(handover: HandoverRecord) -> tuple[int, int]:
    """The instants the probes' send lateness is judged between for one handover: from the
    anticipation (or the detach) to the end of its measurement window. The runner asks the probes
    over it and the report reads their traces over it: one window, one verdict."""
    start = handover.start_ns or 0
    return start, handover.window_end_ns or start


def probe_lateness_ms(sender_trace: dict, start_ns: int, end_ns: int) -> float | None:
    """The p99 of how late the sender's probes left, against their schedule, between two instants
    (None for traces that do not record it), as the probe answers it during the run."""
    sent = sender_trace.get("sent", {})
    late = sent.get("late_us")
    if not late:
        return None
    return probe.send_lateness_ms(sent["ns"], late, start_ns, end_ns)


def emulation_violations(fidelity: dict, tolerances: dict) -> list[str]:
    """What of the runner's fidelity record (L2 delay as it happened, the detach and attach steps,
    the guest's busy share once the handover settled) is outside the tolerances. A guest kept
    busy nearly all the time by the measurement itself (the probes, with the agents idle) is not
    keeping up: every process, the agents' and the kernel's own work included, then waits for
    the CPU, and the figures measure the emulator's load, not the protocol. (The share over the
    handover is recorded too, but not judged: it includes the method's own work.)"""
    violations = []
    if fidelity.get("l2_drift_ms") is not None and abs(fidelity["l2_drift_ms"]) > tolerances["max_l2_drift_ms"]:
        violations.append(f"L2 delay off by {fidelity['l2_drift_ms']:.1f} ms")
    for step in ("detach_ms", "attach_ms"):
        if fidelity.get(step) is not None and fidelity[step] > tolerances["max_step_ms"]:
            violations.append(f"{step[:-3]} took {fidelity[step]:.1f} ms")
    busy = fidelity.get("guest_busy_settled")
    if busy is not None and busy > tolerances.get("max_guest_busy", 1.0):
        violations.append(f"guest busy {busy:.0%} with the probes alone")
    for end in ("mn", "ha"):
        late = fidelity.get(f"probe_late_p99_ms_{end}")
        if late is not None and late > tolerances["max_probe_late_ms"]:
            violations.append(f"{end} probes up to {late:.1f} ms late (p99)")
    return violations


def fidelity_of(handover: HandoverRecord, mn_trace: dict, ha_trace: dict, tolerances: dict | None) -> dict:
    """The runner's fidelity record, completed with the probes' send lateness (p99) over the
    handover, and judged against the scenario's tolerances."""
    result = dict(handover.fidelity or {})
    start, end = lateness_window(handover)
    for name, trace in (("mn", mn_trace), ("ha", ha_trace)):
        # the same function the probe answered the runner with: the same value (a trace that
        # does not record lateness leaves the runner's)
        late = probe_lateness_ms(trace, start, end)
        if late is not None or f"probe_late_p99_ms_{name}" not in result:
            result[f"probe_late_p99_ms_{name}"] = late
    # judged here, from the values, against the run's tolerances (a report with other
    # tolerances judges the same run again)
    result["violations"] = emulation_violations(result, tolerances) if tolerances else []
    return result


def tcp_recovery(trace: dict, detach_ns: int, attached_ns: int, horizon_ns: int | None) -> dict[str, Any]:
    """One direction of the TCP connection from the MN's home address across one handover: its
    stall (the longest silence from its last record before the detach, as :func:`interruption`
    measures the probes') and its recovery, from the attach to the first record received after
    it (what an application waits for once the MN is on the new link; it includes the sender's
    retransmission timer). Resolution: the records' interval."""
    stall = interruption(trace, detach_ns, horizon_ns)
    interval_ns = trace.get("interval_ns", 0)
    if interval_ns and detach_ns - stall["last_before_rx_ns"] > 10 * interval_ns:
        raise MetricsError(f"the TCP stream was not flowing before the handover (its last data "
                           f"{(detach_ns - stall['last_before_rx_ns']) / 1e6:.0f} ms before the detach)")
    arrivals = sorted(trace["received"]["rx_ns"])
    first = next((rx for rx in arrivals[bisect.bisect_right(arrivals, attached_ns):]
                  if horizon_ns is None or rx < horizon_ns), None)
    if first is None:
        raise MetricsError("no TCP data was received after the attach")
    return {"stall_ms": stall["interruption_ms"], "recovery_ms": (first - attached_ns) / 1e6}


def per_handover(handovers: list[HandoverRecord], mn_trace: dict, ha_trace: dict,
                 traces: dict[str, list[dict]] | None = None, tolerances: dict | None = None,
                 tcp: dict[str, dict] | None = None,
                 path: Callable[[str], dict[str, str]] | None = None) -> list[dict[str, Any]]:
    """Both directions (and, with agent traces, the signalling and timeline; with the TCP traces,
    by receiving end, the TCP connection's stall and recovery) for every handover of one MN, with
    its emulation fidelity. ``path``: where that MN's traffic arrives through a new AR, by probe
    end (default: the method's, for MN 0)."""
    results = []
    for position, handover in enumerate(handovers):
        following = handovers[position + 1] if position + 1 < len(handovers) else None
        horizon = handover.window_end_ns
        if horizon is None and following is not None:
            horizon = following.start_ns
        row: dict[str, Any] = {"index": handover.index, "mn": handover.mn, "method": handover.method,
                               "from": handover.from_ar, "to": handover.to_ar,
                               "l2_delay_ms": handover.l2_delay_ms, "sweep_value": handover.sweep_value,
                               "warmup": handover.warmup, "outcome": handover.outcome or "ok",
                               "restored_by": handover.restored_by}
        if handover.detach_start_ns is None:  # failed before the MN moved: nothing to measure
            results.append(row)
            continue
        # Downlink HA -> MN is received by the MN; uplink MN -> HA by the HA.
        new_ar = handover.to_ar
        # where the method's traffic arrives (the Mobile IPv6 tunnel's ends, for all but a gateway's
        # ESP tunnel); in runs made before the home address, the interfaces towards the new AR
        declared = methods.METHODS.get(handover.method)
        interfaces = ((path(new_ar) if path else declared.path_interfaces(new_ar) if declared
                       else plan.new_path_interfaces(new_ar)) if new_ar in plan.ACCESS_LINK else {})
        legacy = plan.access_path_interfaces(new_ar) if new_ar in plan.ACCESS_LINK else {}
        receivers = (("ha_to_mn", mn_trace, plan.MN), ("mn_to_ha", ha_trace, plan.HA))
        for direction, trace, end in receivers:
            try:
                new_path = (path_ifindexes(trace, interfaces[end]) or path_ifindexes(trace, legacy[end])) \
                    if end in interfaces else None
                row[direction] = interruption(trace, handover.detach_start_ns, horizon, new_path or None)
            except MetricsError as error:
                row[direction] = {"error": str(error)}
        if tcp and handover.attached_ns is not None:
            row["tcp"] = {}
            for direction, receiver in (("ha_to_mn", "mn"), ("mn_to_ha", "ha")):
                try:
                    row["tcp"][direction] = tcp_recovery(tcp[receiver], handover.detach_start_ns,
                                                         handover.attached_ns, horizon)
                except MetricsError as error:
                    row["tcp"][direction] = {"error": str(error)}
        if traces is not None:
            row["signalling"] = signalling(handover, traces, horizon if horizon is not None else float("inf"))
            row["timeline"] = timeline(handover, traces, row, horizon if horizon is not None else float("inf"))
        row["fidelity"] = fidelity_of(handover, mn_trace, ha_trace, tolerances)
        row["fidelity_ok"] = not row["fidelity"]["violations"]
        if handover.tables_check is not None:
            row["tables_ok"] = not handover.tables_check
            row["tables_problems"] = handover.tables_check
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


def _group_key(row: dict) -> str:
    return row["method"] if row.get("sweep_value") is None else f"{row['method']}@{row['sweep_value']:g}"


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per method (and swept value): interruption (ms) and lost probes per direction, signalling.

    Warm-up handovers are left out: they pay first-use costs (an SCTP association, a neighbour
    cache entry) that a running network has already paid. Handovers that did not succeed by the
    method's own path (``outcome`` other than ``ok``) are counted, per way they were restored, and
    left out of the figures: their interruption measures a fall-back, not the method.
    """
    summary: dict[str, Any] = {}
    measured = [row for row in rows if not row.get("warmup")]
    for key in sorted({_group_key(row) for row in measured}, key=lambda k: (k.split("@")[0], k)):
        everything = [row for row in measured if _group_key(row) == key]
        succeeded = [row for row in everything if row.get("outcome", "ok") == "ok"]
        group = [row for row in succeeded if row.get("fidelity_ok", True)]
        entry: dict[str, Any] = {"method": everything[0]["method"], "sweep_value": everything[0].get("sweep_value"),
                                 "handovers": len(everything), "failed_handovers": len(everything) - len(succeeded),
                                 "fidelity_violations": len(succeeded) - len(group),
                                 "restored_by": dict(Counter(row.get("restored_by") for row in everything
                                                             if row.get("outcome", "ok") != "ok"))}
        for direction in ("ha_to_mn", "mn_to_ha"):
            good = [row[direction] for row in group if "interruption_ms" in row.get(direction, {})]
            entry[direction] = {
                "interruption_ms": statistics_of(item["interruption_ms"] for item in good),
                "lost": statistics_of(item["lost"] for item in good),
                "failed": len(group) - len(good),
            }
        tcp_rows = [row["tcp"] for row in group if "tcp" in row]
        if tcp_rows:
            entry["tcp"] = {direction: {name: statistics_of(r[direction][name] for r in tcp_rows
                                                            if name in r.get(direction, {}))
                                        for name in ("stall_ms", "recovery_ms")}
                            for direction in ("ha_to_mn", "mn_to_ha")}
        signalling_rows = [row["signalling"] for row in group if "signalling" in row]
        if signalling_rows:
            entry["signalling_ms"] = {
                name: statistics_of(s[name] for s in signalling_rows if s.get(name) is not None)
                for name in ("ctar_to_ctaa_ms", "ctd_to_ctdr_ms", "bu_to_ba_ms", "ike_to_child_ms")}
            entry["aaa_transactions"] = statistics_of(s.get("aaa_transactions", 0) for s in signalling_rows)
            links = sorted({link for s in signalling_rows for link in s["per_link"]})
            entry["signalling_per_link"] = {
                link: {"messages": statistics_of(s["per_link"].get(link, {}).get("messages", 0)
                                                 for s in signalling_rows),
                       "bytes": statistics_of(s["per_link"].get(link, {}).get("bytes", 0) for s in signalling_rows)}
                for link in links}
        checked = [row for row in group if "tables_ok" in row]
        if checked:
            entry["tables_ok"] = sum(row["tables_ok"] for row in checked)
            entry["tables_checked"] = len(checked)
        summary[key] = entry
    return summary


#: bootstrap resamples per interval, and the fixed seed that makes a report reproducible
BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 4067


def _resampled(values: list[float], rng: random.Random, resamples: int, statistic) -> list[float]:
    n = len(values)
    return [statistic(rng.choices(values, k=n)) for _ in range(resamples)]


def bootstrap_interval(values: list[float], *, against: list[float] | None = None, ratio: bool = False,
                       resamples: int = BOOTSTRAP_RESAMPLES, level: float = 0.95,
                       seed: int = BOOTSTRAP_SEED, statistic=statistics.median) -> tuple[float, float] | None:
    """Percentile bootstrap interval of the median (or ``statistic``) of ``values``; with
    ``against``, of the difference (or, with ``ratio``, the quotient) of the two, each sample
    resampled on its own. None when a sample is too small to say anything (fewer than 3 values)."""
    if len(values) < 3 or (against is not None and len(against) < 3):
        return None
    rng = random.Random(seed)
    estimates = _resampled(list(values), rng, resamples, statistic)
    if against is not None:
        others = _resampled(list(against), rng, resamples, statistic)
        if ratio:
            estimates = [a / b for a, b in zip(estimates, others) if b > 0]
        else:
            estimates = [a - b for a, b in zip(estimates, others)]
    tail = (1 - level) / 2
    return percentile(estimates, tail), percentile(estimates, 1 - tail)


def counts(row: dict) -> bool:
    """Whether a handover counts in the figures: measured (not a warm-up), succeeded, and the
    emulation kept its timing."""
    return not row.get("warmup") and row.get("outcome", "ok") == "ok" and row.get("fidelity_ok", True)


def interruptions(rows: list[dict], method: str, sweep_value, direction: str) -> list[float]:
    """The interruptions that count (see :func:`counts`) of one group."""
    return [row[direction]["interruption_ms"] for row in rows
            if row["method"] == method and row.get("sweep_value") == sweep_value and counts(row)
            and "interruption_ms" in row.get(direction, {})]


def add_intervals(summary: dict[str, Any], rows: list[dict], reference: str) -> None:
    """Per group and direction: a 95% interval of the median interruption and, against the
    reference method of the same run (the one without security), the security overhead (the
    difference of the medians) with its interval; and the difference of the means, with its.

    An interruption is measured between probe arrivals, so each one is a whole number of probe
    intervals (2 ms at 500/s) give or take the links' jitter, and so is a median: an overhead of
    2.3 ms reads 2 in one run and 4 in the next. Each handover starts at a random point of the
    probe interval (the scenario's seed), so the rounding is uniform and averages out: the mean
    resolves what the median cannot (dithering)."""
    for entry in summary.values():
        for direction in ("ha_to_mn", "mn_to_ha"):
            values = interruptions(rows, entry["method"], entry.get("sweep_value"), direction)
            stats = entry[direction]["interruption_ms"]
            stats["ci95"] = bootstrap_interval(values)
            base = interruptions(rows, reference, None, direction)
            if entry["method"] != reference and values and base:
                entry[direction]["overhead_ms"] = {
                    "median": statistics.median(values) - statistics.median(base),
                    "ci95": bootstrap_interval(values, against=base),
                    "mean": statistics.fmean(values) - statistics.fmean(base),
                    "mean_ci95": bootstrap_interval(values, against=base, statistic=statistics.fmean)}


def ratios(summary: dict[str, Any], baselines: Iterable[str], methods: Iterable[str],
           rows: list[dict] | None = None) -> list[dict[str, Any]]:
    """Median interruption of each re-authentication group over each CXTP method, per direction,
    from one run (a CXTP method run once at the base parameters serves every swept value)."""
    def groups(method: str) -> list[dict]:
        return [entry for entry in summary.values() if entry["method"] == method]

    per_handover_rows = rows
    result = []
    for baseline in baselines:
        for reference in groups(baseline):
            for method in methods:
                for entry in groups(method):
                    if entry.get("sweep_value") not in (None, reference.get("sweep_value")):
                        continue
                    row = {"baseline": baseline, "sweep_value": reference.get("sweep_value"), "method": method}
                    for direction in ("ha_to_mn", "mn_to_ha"):
                        top = reference[direction]["interruption_ms"]
                        bottom = entry[direction]["interruption_ms"]
                        row[direction] = (top["median"] / bottom["median"]
                                          if top.get("n") and bottom.get("n") and bottom["median"] > 0 else None)
                        if per_handover_rows is not None and row[direction] is not None:
                            row[f"{direction}_ci95"] = bootstrap_interval(
                                interruptions(per_handover_rows, baseline, reference.get("sweep_value"), direction),
                                against=interruptions(per_handover_rows, method, entry.get("sweep_value"), direction),
                                ratio=True)
                    result.append(row)
    return result
