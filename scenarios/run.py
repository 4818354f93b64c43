"""Run a scenario: build the network, start the probes, hand the MN over N times, record everything.

Usage (inside a kernel that has what the testbed needs; ``make run-scenario`` arranges that)::

    python -m scenarios.run [--scenario FILE] [--results DIR]

Running, computing metrics and plotting are separate steps: this module writes the raw traces
and the record; :mod:`scenarios.metrics` computes; :mod:`scenarios.report` prints and plots, and
can redo both from a stored run without rerunning it.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import random
import sys
import time
from pathlib import Path

from nodes import ipsec_handler
from nodes.agent import raise_agent_priority
from scenarios import checks, config, record, report
from scenarios.experiment import CXTP_METHODS, METHOD_NOTES, SPI_MN_IN, SPI_MN_OUT, Experiment, _pause
from topo import plan
from topo.network import Testbed

REPOSITORY = record.REPOSITORY


def warm_up_crypto(testbed: Testbed, profile: str) -> None:
    """The first SA of an algorithm costs seconds in a fresh UML kernel: pay it before measuring."""
    mn_side, _ = ipsec_handler.initial_contexts("2001:db8:ffff::1", "2001:db8:ffff::2", plan.HA_ADDRESS,
                                                profile, 0xFFF1, 0xFFF2)
    for sa in mn_side.sas:
        arguments = " ".join(f"{'aead' if a.kind == 'aead' else 'enc' if a.kind == 'crypt' else 'auth-trunc'} "
                             f"'{a.name}' 0x{a.key.hex()}" + (f" {a.bits}" if a.kind != "crypt" else "")
                             for a in sa.algorithms)
        testbed.cmd(plan.MN, f"ip xfrm state add src {sa.saddr} dst {sa.daddr} proto esp spi {sa.spi} "
                             f"mode tunnel {arguments} && ip xfrm state delete src {sa.saddr} dst {sa.daddr} "
                             f"proto esp spi {sa.spi}")


def _apply_sweep(testbed: Testbed, scenario: config.Scenario, value: float | None) -> float:
    """Set the swept parameter; return the L2 delay to use."""
    if value is None or scenario.sweep_parameter == "l2_delay_ms":
        return scenario.l2_delay_ms if value is None else value
    _, link_class, field = scenario.sweep_parameter.split(".")
    params = dataclasses.replace(testbed.link_params[link_class], **{field: value or (None if field == "rate_mbit" else 0.0)})
    testbed.set_link_params(link_class, params)
    return scenario.l2_delay_ms


def _check(experiment: Experiment, record: dict) -> None:
    """After a CXTP handover: the MN's and nAR's SAD/SPD against Tables I-IV, the pAR empty."""
    par, nar = record["from_ar"], record["to_ar"]
    problems = checks.check_tables(
        experiment.xfrm_state(plan.MN, record["mn_new"]), experiment.xfrm_state(nar, record["mn_new"]),
        experiment.xfrm_state(par, record["mn_previous"]), record["mn_new"], plan.AR_ACCESS_ADDRESS[nar],
        plan.HA_ADDRESS, record.get("spi_mn_in") or SPI_MN_IN, record.get("spi_mn_out") or SPI_MN_OUT)
    record["tables_check"] = problems


def run(scenario: config.Scenario, results_root: Path, progress=print) -> Path:
    run_id = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    run_dir = results_root / scenario.name / run_id
    run_dir.mkdir(parents=True, exist_ok=False)
    run_record = record.new_record(scenario.parameters())
    run_record["run_id"] = run_id
    run_record["method_notes"] = {method: METHOD_NOTES[method] for method in scenario.methods if method in METHOD_NOTES}
    (run_dir / "record.json").write_text(json.dumps(run_record, indent=2))
    rng = random.Random(scenario.seed)
    raise_agent_priority()  # the runner times the handover steps: as the agents, ahead of the rest
    started = time.monotonic()
    handovers: list[dict] = []
    schedule = scenario.schedule()
    total = len(schedule) * (scenario.handovers + scenario.warmup_handovers)
    with Testbed(scenario.links, initial_ar=plan.PAR) as testbed:
        warm_up_crypto(testbed, scenario.profile)
        progress(f"network up in {time.monotonic() - started:.1f} s; starting agents")
        experiment = Experiment(testbed, run_dir, scenario.probe_rate, scenario.probe_size, scenario.profile,
                                scenario.ar_transport, scenario.anticipation_ms, scenario.seed)
        try:
            stats_before = {node: experiment.xfrm_stat(node) for node in (plan.MN, plan.PAR, plan.NAR)}
            _pause(scenario.warmup_ms)
            applied: object = "unset"
            for value, method in schedule:
                if value != applied:
                    l2_delay = _apply_sweep(testbed, scenario, value)
                    applied = value
                for index in range(scenario.warmup_handovers + scenario.handovers):
                    # A random offset within one probe interval keeps handover instants from
                    # locking to the probe schedule; it comes from the scenario's seed.
                    _pause(rng.uniform(0, 1000 / scenario.probe_rate))
                    handover = experiment.handover(method, l2_delay)
                    handover.update(warmup=index < scenario.warmup_handovers, sweep_value=value,
                                    index=len(handovers) + 1)
                    _pause(scenario.settle_ms)
                    # The handover's measurement window ends here: what the runner does next
                    # (a check, a change of method or of a swept parameter) is not its doing.
                    handover["window_end_ns"] = time.monotonic_ns()
                    if method in CXTP_METHODS:
                        _check(experiment, handover)
                    handovers.append(handover)
                    problems = handover.get("tables_check")
                    progress(f"[{len(handovers):>3}/{total}] {method:<16} {handover['from_ar']}->{handover['to_ar']}"
                             + (f" {scenario.sweep_parameter}={value:g}" if value is not None else "")
                             + (" (warm-up)" if handover["warmup"] else "")
                             + ("" if handover["completed"] else " INCOMPLETE")
                             + ("" if problems is None else " tables ok" if not problems else
                                f" TABLES DIFFER: {problems[0]}"))
            stats_after = {node: experiment.xfrm_stat(node) for node in (plan.MN, plan.PAR, plan.NAR)}
        finally:
            experiment.stop()
    run_record["xfrm_stat_delta"] = {
        node: {name: stats_after[node][name] - stats_before[node].get(name, 0)
               for name in stats_after[node] if stats_after[node][name] != stats_before[node].get(name, 0)}
        for node in stats_after}
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
          f"{', '.join(scenario.methods)}, L2 delay {scenario.l2_delay_ms} ms"
          + (f", sweep {scenario.sweep_parameter} over {list(scenario.sweep_values)}" if scenario.sweep_parameter else ""),
          file=sys.stderr)
    run_dir = run(scenario, Path(arguments.results), progress=lambda line: print(line, file=sys.stderr, flush=True))
    report.show(run_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
