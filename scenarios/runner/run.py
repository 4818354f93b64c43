"""Run a scenario: build the network, start the probes, hand the MN over N times, record everything.

Usage (inside a kernel that has what the testbed needs; ``make run-scenario`` arranges that)::

    python -m scenarios.runner.run [--scenario FILE] [--results DIR]

Running, computing metrics and plotting are separate steps: this module writes the raw traces
and the record; :mod:`scenarios.analysis.metrics` computes; :mod:`scenarios.analysis.report` prints and plots, and
can redo both from a stored run without rerunning it.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import datetime
import json
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

from ipsec import Xfrm
from nodes import netns, provisioning
from nodes.agent import raise_agent_priority
from nodes.capture import Capture
from scenarios import config, records
from scenarios.analysis import metrics, report, wireshark
from scenarios.records import Failure, HandoverRecord
from scenarios.runner import methods, storm
from scenarios.runner.experiment import STEP_ERRORS, Experiment, HandoverFailed, pause
from topo import plan
from topo.network import Testbed

REPOSITORY = records.REPOSITORY


def warm_up_crypto(testbed: Testbed, profile: str) -> None:
    """Pay the first SA of the run's algorithms (seconds in a fresh UML kernel) before measuring."""
    with netns.entered(testbed.pid(plan.MN)):
        xfrm = Xfrm()
    try:
        provisioning.warm_up_crypto(xfrm, (profile,))
    finally:
        xfrm.close()


def _apply_sweep(testbed: Testbed, scenario: config.Scenario, value: float | None) -> tuple[float, float | None]:
    """Set the swept parameter; return the L2 delay and the ping-pong gap (None: none) to use."""
    if value is None:
        return scenario.l2_delay_ms, scenario.ping_pong_ms
    if scenario.sweep_parameter == "l2_delay_ms":
        return value, scenario.ping_pong_ms
    if scenario.sweep_parameter == "ping_pong_ms":
        return scenario.l2_delay_ms, value
    _, link_class, field = scenario.sweep_parameter.split(".")
    change: dict[str, Any] = {field: value or (None if field == "rate_mbit" else 0.0)}
    params = dataclasses.replace(testbed.link_params[link_class], **change)
    testbed.set_link_params(link_class, params)
    return scenario.l2_delay_ms, scenario.ping_pong_ms


def _progress_line(handover: HandoverRecord, total: int, scenario: config.Scenario) -> str:
    value = handover.sweep_value
    line = (f"[{handover.index:>3}/{total}] {handover.method:<16} {handover.from_ar}->{handover.to_ar}"
            + (f" {scenario.sweep_parameter}={value:g}" if value is not None else "")
            + (" (warm-up)" if handover.warmup else ""))
    violations = (handover.fidelity or {}).get("violations")
    if violations:
        line += f" FIDELITY: {'; '.join(violations)}" + (", repeated" if handover.repeated else "")
    if handover.outcome == "ok":
        return line + (" tables ok" if handover.tables_check is not None else "")
    if handover.outcome == "recovered":
        return line + f" RECOVERED by {handover.restored_by}: {handover.transfer_failure}"
    return line + f" FAILED: {handover.failure.reason if handover.failure else '?'}"


def capture_points(link_classes) -> list[tuple[str, str, str]]:
    """(node, interface, link) of every capture point of the chosen link classes: both ends of
    the AR-AR link, the AR's end of every other link. (The MN's end of an access link is taken
    down at each detach, and a capture cannot outlive its interface going down; the AR's end
    stays up, without carrier, and sees the same wire.)"""
    points = []
    for link in plan.LINKS:
        if link.link_class not in link_classes:
            continue
        ends = (link.a, link.b) if link.link_class == plan.AR_AR else \
            tuple(node for node in (link.a, link.b) if node in plan.ACCESS_ROUTERS)
        points += [(node, link.interface(node), link.name) for node in ends]
    return points


def start_captures(testbed: Testbed, run_dir: Path, link_classes) -> list[Capture]:
    captures = []
    try:
        for node, interface, link in capture_points(link_classes):
            capture = Capture(testbed.host(node), run_dir / "captures", node, interface, link)
            capture.start()
            captures.append(capture)
    except BaseException:
        for capture in captures:
            capture.stop()
        raise
    return captures


def cpu_times() -> tuple[float, float]:
    """(idle CPU seconds, all CPUs together; monotonic seconds) of this kernel (the guest's one
    virtual CPU in UML). The idle time is measured when a CPU enters and leaves idle; the busy
    fields of /proc/stat are sampled at each tick instead, and the probes' timers, at a fixed
    phase to the 10 ms tick, made them read 0% or 98% for the same load."""
    with open("/proc/uptime") as uptime:
        idle = float(uptime.read().split()[1])
    return idle, time.monotonic()


def _busy_share(before: tuple[float, float], after: tuple[float, float]) -> float | None:
    idle, elapsed = after[0] - before[0], (after[1] - before[1]) * (os.cpu_count() or 1)
    return min(1.0, max(0.0, 1.0 - idle / elapsed)) if elapsed > 0 else None


def emulation_fidelity(handover: HandoverRecord, busy: float | None, tolerances: dict, settled: float | None = None,
                       probe_late: dict | None = None) -> dict:
    """How far the emulation kept its own timing during one handover: the L2 delay as it happened
    against the scenario's, the detach and attach steps, the kernel's busy share over the
    handover (``guest_busy``: the method's own work included, IKE's Diffie-Hellman for one) and
    once it settled (``guest_busy_settled``: the probes, the agents idle: the load the emulator
    carries to measure at all, which is what the tolerance judges), and the p99 of the probes'
    send lateness over the handover's window (``probe_late``, per end, as the probes answered;
    the report reads the same from their traces). Violations of the scenario's tolerances are
    listed: the runner repeats a handover that has any."""
    result: dict = {"guest_busy": busy, "guest_busy_settled": settled, "violations": []}
    for end, late in (probe_late or {}).items():
        result[f"probe_late_p99_ms_{end}"] = late
    if handover.attached_ns is None:
        return result
    assert handover.attach_start_ns is not None and handover.detached_ns is not None
    assert handover.detach_start_ns is not None
    l2_actual = (handover.attach_start_ns - handover.detached_ns) / 1e6
    result.update(l2_delay_actual_ms=l2_actual, l2_drift_ms=l2_actual - handover.l2_delay_ms,
                  detach_ms=(handover.detached_ns - handover.detach_start_ns) / 1e6,
                  attach_ms=(handover.attached_ns - handover.attach_start_ns) / 1e6)
    result["violations"] = metrics.emulation_violations(result, tolerances)
    return result


def run_handover(experiment: Experiment, method, l2_delay: float, scenario: config.Scenario,
                 release_timeout_s: float, *, index: int | None = None, warmup: bool = False,
                 sweep_value: float | None = None, back_after_ms: float | None = None) -> HandoverRecord:
    """One handover (a ping-pong with ``back_after_ms``: :meth:`Experiment.handover`) that always
    ends in a defined state: ``ok``; ``recovered`` (the method's transfer
    failed and the MN's fall-back restored the traffic); or ``failed``, recorded with its reason and
    every node's SAD/SPD, after which the testbed is brought back to a clean state and a fresh
    attach (``restored_by``)."""
    cpu_before = cpu_times()
    try:
        handover = experiment.handover(method, l2_delay, index=index, warmup=warmup, sweep_value=sweep_value,
                                       back_after_ms=back_after_ms)
        problems = None
    except HandoverFailed as failure:
        assert failure.record is not None
        handover, problems = failure.record, [failure.reason]
    if problems is None:
        settle_before = cpu_times()
        pause(scenario.settle_ms)
        # The handover's measurement window ends here: what the runner does next (a check, a
        # change of method or of a swept parameter) is not its doing.
        handover.window_end_ns = time.monotonic_ns()
        now = cpu_times()
        try:
            late = experiment.probe_lateness(*metrics.lateness_window(handover))
            experiment.ha.checkpoint()  # the probe records so far survive the HA agent's death
        except STEP_ERRORS:
            late = None  # judged from the traces when the run is reported, as before
        handover.fidelity = emulation_fidelity(handover, _busy_share(cpu_before, now), scenario.fidelity,
                                               settled=_busy_share(settle_before, now), probe_late=late)
        try:
            problems = experiment.verify(method, handover, release_timeout_s)
        except STEP_ERRORS as error:
            problems = [f"checking the state failed: {type(error).__name__}: {error}"]
        if method.cxtp:
            handover.tables_check = problems
    else:
        handover.window_end_ns = time.monotonic_ns()
    if not problems:
        handover.outcome = "recovered" if handover.restored_by == "cxtp-retry" else "ok"
        return handover
    handover.outcome = "failed"
    handover.failure = Failure(reason=problems[0], problems=problems, t_ns=time.monotonic_ns(),
                               state=experiment.snapshot())
    handover.recovery = experiment.recover(method.security)
    pause(scenario.settle_ms)
    return handover


def run(scenario: config.Scenario, results_root: Path, progress=print) -> Path:
    run_id = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    run_dir = results_root / scenario.name / run_id
    run_dir.mkdir(parents=True, exist_ok=False)
    run_record = records.new_record(scenario.parameters())
    run_record["run_id"] = run_id
    # pcapng timestamps are wall-clock; every record here is on the monotonic clock
    run_record["realtime_minus_monotonic_ns"] = time.time_ns() - time.monotonic_ns()
    run_record["method_notes"] = {name: methods.get(name).note for name in scenario.methods if methods.get(name).note}
    (run_dir / "record.json").write_text(json.dumps(run_record, indent=2))
    rng = random.Random(scenario.seed)
    raise_agent_priority()  # the runner times the handover steps: as the agents, ahead of the rest
    started = time.monotonic()
    handovers: list[HandoverRecord] = []
    schedule = scenario.schedule()
    total = len(schedule) * (scenario.handovers + scenario.warmup_handovers)
    stats_before = stats_after = {}
    try:
        with Testbed(scenario.links, initial_ar=plan.PAR, mns=scenario.mns) as testbed:
            warm_up_crypto(testbed, scenario.profile)
            progress(f"network of {scenario.mns} MN{'s' if scenario.mns > 1 else ''} up in "
                     f"{time.monotonic() - started:.1f} s; starting agents")
            experiment = Experiment(testbed, run_dir, scenario.probe_rate, scenario.probe_size, scenario.profile,
                                    scenario.ar_transport, scenario.anticipation_ms, scenario.seed,
                                    scenario.cxtp_timers(scenario.links), scenario.tcp_interval_ms,
                                    storm_probe_rate=scenario.storm["probe_rate"])
            captures: list[Capture] = []
            try:
                if scenario.captures:
                    # Every SA that exists during the run goes into the profile, before it can go
                    # away: after each change of security state and after each handover.
                    profile = wireshark.write_profile(run_dir / "wireshark")
                    experiment.on_state_change = lambda: wireshark.export_testbed_sas(profile, testbed)
                    experiment.on_state_change()
                    captures = start_captures(testbed, run_dir, scenario.captures)
                    progress(f"capturing on {len(captures)} interfaces into {run_dir / 'captures'}")
                stats_before = {node: experiment.xfrm_stat(node) for node in experiment.counted_nodes()}
                pause(scenario.warmup_ms)
                if scenario.storms:
                    storms = storm.Storm(experiment, scenario.seed, scenario.storm["probe_rate"],
                                         scenario.storm["probe_budget"])
                    handovers.extend(storm.run_storms(storms, scenario, progress, cpu_times, _busy_share,
                                                      emulation_fidelity))
                    schedule = []  # the storms were the run
                applied: object = "unset"
                for value, name in schedule:
                    method = methods.get(name)
                    if value != applied:
                        l2_delay, ping_pong = _apply_sweep(testbed, scenario, value)
                        experiment.configure_timers(scenario.cxtp_timers(testbed.link_params, l2_delay))
                        applied = value
                    timers = experiment.timers
                    release_timeout_s = timers["release_hold"] + timers["late_ctdr_grace"]
                    index = repeats = 0
                    while index < scenario.warmup_handovers + scenario.handovers:
                        # A random offset within one probe interval keeps handover instants from
                        # locking to the probe schedule; it comes from the scenario's seed.
                        pause(rng.uniform(0, 1000 / scenario.probe_rate))
                        warmup = index < scenario.warmup_handovers
                        handover = run_handover(experiment, method, l2_delay, scenario, release_timeout_s,
                                                index=len(handovers) + 1, warmup=warmup, sweep_value=value,
                                                back_after_ms=ping_pong)
                        handovers.append(handover)
                        violated = (handover.fidelity or {}).get("violations")
                        # the emulator slipped: this one does not count, another runs in its place
                        handover.repeated = bool(violated and not warmup and handover.outcome == "ok"
                                                 and repeats < scenario.fidelity["max_repeats"])
                        progress(_progress_line(handover, total, scenario))
                        if handover.repeated:
                            repeats += 1
                            continue
                        index += 1
                stats_after = {node: experiment.xfrm_stat(node) for node in experiment.counted_nodes()}
            finally:
                for capture in captures:
                    capture.stop()
                experiment.stop()
    finally:
        # Whatever happened, the run leaves its records behind.
        run_record["xfrm_stat_delta"] = {
            node: {name: stats_after[node][name] - stats_before.get(node, {}).get(name, 0)
                   for name in stats_after[node] if stats_after[node][name] != stats_before.get(node, {}).get(name, 0)}
            for node in stats_after}
        run_record["failed_handovers"] = sum(h.outcome != "ok" for h in handovers)
        records.write_handovers(run_dir / "handovers.json", handovers)
        run_record["wall_time_s"] = round(time.monotonic() - started, 2)
        (run_dir / "record.json").write_text(json.dumps(run_record, indent=2))
    report.compute(run_dir)
    return run_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scenario", default=None, help="TOML file; built-in defaults when omitted")
    parser.add_argument("--results", default=str(REPOSITORY / "results"))
    arguments = parser.parse_args(argv)
    try:
        scenario = config.load(arguments.scenario)
    except config.ScenarioError as error:
        print(f"scenario error: {error}", file=sys.stderr)
        return 2
    what = (f"storms of K = {', '.join(map(str, scenario.storm['sizes']))} of {scenario.mns} MNs, "
            f"{scenario.storm['repeats']} each x" if scenario.storms else f"{scenario.handovers} handovers x")
    print(f"scenario {scenario.name} ({scenario.source}): {what} "
          f"{', '.join(scenario.methods)}, L2 delay {scenario.l2_delay_ms} ms"
          + (f", sweep {scenario.sweep_parameter} over {list(scenario.sweep_values)}"
             if scenario.sweep_parameter else ""),
          file=sys.stderr)
    try:
        run_dir = run(scenario, Path(arguments.results), progress=lambda line: print(line, file=sys.stderr, flush=True))
    except STEP_ERRORS as error:  # the testbed could not be set up; what was recorded is kept
        print(f"run failed before its handovers could run: {type(error).__name__}: {error}", file=sys.stderr)
        return 2
    report.show(run_dir)
    handovers = records.read_handovers(run_dir)
    failed = [h for h in handovers if h.outcome != "ok"]
    if failed:
        by_method = ", ".join(f"{name} {count}" for name, count in
                              collections.Counter(h.method for h in failed).items())
        print(f"{len(failed)} of {len(handovers)} handovers failed ({by_method}): see 'failure' and "
              f"'transfer_failure' in {run_dir / 'handovers.json'}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
