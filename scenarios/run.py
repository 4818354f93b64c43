"""Run a scenario: build the network, start the probes, hand the MN over N times, record everything.

Usage (inside a kernel that has what the testbed needs; ``make run-scenario`` arranges that)::

    python -m scenarios.run [--scenario FILE] [--results DIR]

Running, computing metrics and plotting are separate steps: this module writes the raw traces
and the record; :mod:`scenarios.metrics` computes; :mod:`scenarios.report` prints and plots, and
can redo both from a stored run without rerunning it.
"""

from __future__ import annotations

import argparse
import datetime
import json
import random
import select
import signal
import sys
import time
from pathlib import Path

from scenarios import config, metrics, record, report
from nodes import probe
from topo import plan
from topo.network import Testbed

REPOSITORY = record.REPOSITORY
READY_TIMEOUT_S = 60.0


class RunError(RuntimeError):
    """The experiment could not be carried out (an agent did not start, a trace is missing)."""


def _wait_ready(process, what: str) -> None:
    """Readiness check: the agent prints READY once its socket is bound and its threads run."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        readable, _, _ = select.select([process.stdout], [], [], 1.0)
        if readable:
            line = process.stdout.readline()
            if line.startswith(b"READY"):
                return
            if not line and process.poll() is not None:
                break
    raise RunError(f"{what} agent did not become ready (exit status {process.poll()})")


def _start_probe(testbed: Testbed, node: str, peer: str, trace: Path, rate: float, size: int,
                 learn_peer: bool):
    command = [sys.executable, "-m", "nodes.probe", "--role", node, "--peer", peer,
               "--rate", str(rate), "--size", str(size), "--out", str(trace)]
    if learn_peer:
        command.append("--learn-peer")
    process = testbed.host(node).popen(command, cwd=str(REPOSITORY), stdout=-1, stderr=None)
    _wait_ready(process, f"probe on {node}")
    return process


def _stop(process, what: str) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)  # by the PID we recorded when starting it
        try:
            process.wait(timeout=30)
        except Exception:
            process.kill()
            process.wait()
            raise RunError(f"{what} did not stop on SIGTERM")


def _pause(milliseconds: float) -> None:
    """Pacing between handovers (the scenario's settle time), not a stand-in for protocol work."""
    time.sleep(milliseconds / 1000)


def start_probes(testbed: Testbed, run_dir: Path, rate: float, size: int) -> tuple:
    """The MN probes the HA; the HA probes the MN's current address, learned from its probes."""
    mn_probe = _start_probe(testbed, plan.MN, plan.HA_ADDRESS, run_dir / "probe-mn.json", rate, size, False)
    ha_probe = _start_probe(testbed, plan.HA, plan.MN_COA[plan.PAR], run_dir / "probe-ha.json", rate, size, True)
    return mn_probe, ha_probe


def stop_probes(probes: tuple) -> None:
    for process, name in zip(probes, ("MN probe", "HA probe")):
        _stop(process, name)


def perform_handovers(testbed: Testbed, schedule: list[tuple[str, float]], settle_ms: float,
                      rng: random.Random, probe_interval_ms: float, progress=print) -> list[dict]:
    """Hand the MN over once per (method, L2 delay) in ``schedule``, alternating between the ARs."""
    handovers = []
    for method, l2_delay_ms in schedule:
        # A random offset within one probe interval keeps the handover instants from locking to
        # the probe schedule; it comes from the scenario's seed.
        _pause(rng.uniform(0, probe_interval_ms))
        handover = testbed.handover(testbed.other_ar(), l2_delay_ms).as_dict()
        handover["method"] = method
        handovers.append(handover)
        progress(f"[{len(handovers):>3}/{len(schedule)}] {method}: {handover['from_ar']} -> "
                 f"{handover['to_ar']} (L2 {l2_delay_ms:.0f} ms, attach took "
                 f"{(handover['attached_ns'] - handover['attach_start_ns']) / 1e6:.1f} ms)")
        _pause(settle_ms)
    return handovers


def run(scenario: config.Scenario, results_root: Path, progress=print) -> Path:
    run_id = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    run_dir = results_root / scenario.name / run_id
    run_dir.mkdir(parents=True, exist_ok=False)
    run_record = record.new_record(scenario.parameters())
    run_record["run_id"] = run_id
    (run_dir / "record.json").write_text(json.dumps(run_record, indent=2))
    rng = random.Random(scenario.seed)
    probe.raise_priority(60)  # the handover steps are timed by this thread
    schedule = [(method, scenario.l2_delay_ms) for method in scenario.methods for _ in range(scenario.handovers)]
    started = time.monotonic()
    with Testbed(scenario.links, initial_ar=plan.PAR) as testbed:
        progress(f"network up in {time.monotonic() - started:.1f} s; starting probes")
        probes = start_probes(testbed, run_dir, scenario.probe_rate, scenario.probe_size)
        try:
            _pause(scenario.warmup_ms)
            handovers = perform_handovers(testbed, schedule, scenario.settle_ms, rng,
                                          1000 / scenario.probe_rate, progress)
        finally:
            stop_probes(probes)
    (run_dir / "handovers.json").write_text(json.dumps(handovers, indent=2))
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
    print(f"scenario {scenario.name} ({scenario.source}): {scenario.handovers} handovers x "
          f"{', '.join(scenario.methods)}, L2 delay {scenario.l2_delay_ms} ms", file=sys.stderr)
    run_dir = run(scenario, Path(arguments.results), progress=lambda line: print(line, file=sys.stderr, flush=True))
    report.show(run_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
