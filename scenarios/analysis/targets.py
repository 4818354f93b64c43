"""The handover targets (security overheads, CTAR -> CTAA, re-authentication against CXTP,
fidelity, run agreement), checked on stored runs: a benchmark's verdict, not a test.

    python -m scenarios.analysis.targets results/default/<run-a> [results/default/<run-b>]

Each line: the target, the value each run gives, the limit, and whether it is met. With two
runs, also whether they agree (every method's median within 5 ms or 10%, whichever is larger).
Limits that depend on the network are computed from the run's own link parameters. Exit status
0 when every target is met, 1 otherwise, 2 when a run cannot be read.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypedDict

from scenarios.analysis import metrics

DIRECTIONS = (("mn_to_ha", "uplink"), ("ha_to_mn", "downlink"))
#: at most this share of a quiet run's handovers marked as fidelity violations
MAX_VIOLATION_SHARE = 0.02
AGREEMENT_MS, AGREEMENT_SHARE = 5.0, 0.10
EAP_FACTOR = 20.0


class TargetsError(RuntimeError):
    """A run directory that cannot be judged (missing or unreadable files)."""


def _load(run_dir: Path) -> tuple[dict, dict]:
    try:
        return (json.loads((run_dir / "summary.json").read_text()),
                json.loads((run_dir / "record.json").read_text()))
    except (OSError, ValueError) as error:
        raise TargetsError(f"{run_dir}: {error}") from None


def _rows(run_dir: Path) -> list[dict]:
    """The run's per-handover rows (the report writes them); [] for a run without them."""
    try:
        return json.loads((run_dir / "per_handover.json").read_text())
    except (OSError, ValueError):
        return []


class _Overhead(TypedDict):
    """A method's security overhead in one direction, as the summary holds it (ms; see
    :func:`scenarios.analysis.metrics.add_intervals`)."""

    median: float
    ci95: list[float] | None
    mean: float
    mean_ci95: list[float] | None


def _overhead(summary: dict, key: str, direction: str) -> _Overhead | None:
    return (summary["per_method"].get(key, {}).get(direction) or {}).get("overhead_ms")


def uplink_limit(method: str, links: dict) -> float:
    """The uplink security overhead a CXTP method may have: 2 ms predictive and network-initiated;
    reactive, one access one-way delay plus one AR-AR round trip plus 3 ms."""
    if method == "cxtp-reactive":
        return links["access"]["delay_ms"] + 2 * links["ar_ar"]["delay_ms"] + 3.0
    return 2.0


def checks(summary: dict, record: dict) -> list[tuple[str, float | None, float, bool]]:
    """(target, value, limit, met) for one run."""
    links = record["parameters"]["links"]
    access = links["access"]["delay_ms"]
    rows: list[tuple[str, float | None, float, bool]] = []

    def at_most(name: str, value: float | None, limit: float) -> None:
        rows.append((name, value, limit, value is not None and value <= limit))

    for method in ("cxtp-predictive", "cxtp-network"):
        for direction, label in DIRECTIONS:
            overhead = _overhead(summary, method, direction)
            at_most(f"{method} security overhead, {label} (ms)", overhead and overhead["median"],
                    uplink_limit(method, links) if direction == "mn_to_ha" else 2.0)
    overhead = _overhead(summary, "cxtp-reactive", "mn_to_ha")
    at_most("cxtp-reactive security overhead, uplink (ms)", overhead and overhead["median"],
            uplink_limit("cxtp-reactive", links))
    overhead = _overhead(summary, "cxtp-reactive", "ha_to_mn")
    at_most("cxtp-reactive security overhead, downlink (ms)", overhead and overhead["median"], 2.0)
    signalling = summary["per_method"].get("cxtp-predictive", {}).get("signalling_ms", {}).get("ctar_to_ctaa_ms", {})
    at_most("cxtp-predictive CTAR -> CTAA at the MN (ms)", signalling.get("median"), 2 * access + 2.0)
    for direction, label in DIRECTIONS:
        eap = _overhead(summary, "reauth-eap@20", direction)
        predictive = _overhead(summary, "cxtp-predictive", direction)
        interval = predictive.get("ci95") if predictive else None
        upper = interval[1] if interval else None
        value = eap["median"] if eap else None
        limit = EAP_FACTOR * upper if upper is not None else float("nan")
        rows.append((f"reauth-eap@20 overhead over {EAP_FACTOR:.0f}x cxtp-predictive's upper bound, {label} (ms)",
                     value, limit, value is not None and upper is not None and value >= limit))
    counted = sum(entry.get("handovers", 0) for entry in summary["per_method"].values())
    violations = summary.get("fidelity", {}).get("violations", 0)
    share = violations / (counted + violations) if counted + violations else None
    at_most("handovers marked as fidelity violations (share)", share, MAX_VIOLATION_SHARE)
    return rows


def agreement(first: dict, second: dict) -> list[tuple[str, float | None, float, bool]]:
    """Every method's median interruption in the two runs, per direction."""
    rows: list[tuple[str, float | None, float, bool]] = []
    for key, entry in first["per_method"].items():
        for direction, label in DIRECTIONS:
            a = entry.get(direction, {}).get("interruption_ms", {}).get("median")
            b = second["per_method"].get(key, {}).get(direction, {}).get("interruption_ms", {}).get("median")
            if a is None or b is None:
                rows.append((f"{key} {label}: the runs agree (|difference| ms)", None, AGREEMENT_MS, False))
                continue
            limit = max(AGREEMENT_MS, AGREEMENT_SHARE * max(a, b))
            rows.append((f"{key} {label}: the runs agree (|difference| ms)", abs(a - b), limit, abs(a - b) <= limit))
    return rows


#: The uplink's critical path after the attach, step by step: (from, to, what happens, the link
#: whose nominal one-way delay the step contains, or None for a node's own work). In ``none`` the
#: first probe crosses the nAR one access one-way delay after the attach; with CXTP it waits for
#: the context to be active there, so the overhead is the whole path less that delay.
_ATTACH = (("attached", "mn_trigger", "MN: the kernel's attach event reaches the agent", None),
           ("mn_trigger", "ctar_sent", "MN: CTAR built and sent", None),
           ("ctar_sent", "nar_ctar_received", "access link: the CTAR", "access"))
UPLINK_PATHS = {
    "cxtp-predictive": _ATTACH + (("nar_ctar_received", "nar_activated", "nAR: token checked, context active", None),),
    "cxtp-network": _ATTACH + (("nar_ctar_received", "nar_activated", "nAR: token checked, context active", None),),
    "cxtp-reactive": _ATTACH + (("nar_ctar_received", "ct_req_sent", "nAR: CT-Req built and sent", None),
                                ("ct_req_sent", "ct_req_received", "AR-AR link: the CT-Req", "ar_ar"),
                                ("ct_req_received", "ctd_sent", "pAR: token checked, context read, CTD sent", None),
                                ("ctd_sent", "ctd_received", "AR-AR link: the CTD", "ar_ar"),
                                ("ctd_received", "nar_activated", "nAR: context installed and active", None)),
}


def _measured(rows: list[dict], method: str) -> list[dict]:
    return [row for row in rows if row.get("method") == method and row.get("timeline") and metrics.counts(row)]


def uplink_paths(rows: list[dict], links: dict) -> dict[str, dict]:
    """Where each CXTP method's uplink overhead goes, from the run's per-handover timelines: the
    median of every step, the network's nominal share of it, and the median of the whole path
    (attach -> context active at the nAR) with the overhead it implies. What is beyond the
    nominal delays is the nodes' work and the emulator's: the part a target's budget bounds."""
    result = {}
    for method, steps in UPLINK_PATHS.items():
        handovers = [row["timeline"] for row in _measured(rows, method)
                     if all(step in row["timeline"] for first, second, *_ in steps for step in (first, second))]
        if not handovers:
            continue
        lines = []
        for first, second, label, link in steps:
            nominal = links[link]["delay_ms"] if link else 0.0
            lines.append((label, statistics.median(t[second] - t[first] for t in handovers), nominal))
        whole = statistics.median(t[steps[-1][1]] - t[steps[0][0]] for t in handovers)
        network = sum(nominal for _, _, nominal in lines)
        result[method] = {"n": len(handovers), "steps": lines, "whole_ms": whole, "network_ms": network,
                          "implied_overhead_ms": whole - links["access"]["delay_ms"],
                          "limit_ms": uplink_limit(method, links)}
    return result


def _print_paths(paths: dict[str, dict], summary: dict, width: int) -> None:
    print("where the uplink's overhead goes: median per step over the measured handovers; network = the")
    print("link's nominal one-way delay, beyond = the nodes' work and the emulator's on top of it")
    for method, path in paths.items():
        measured: Mapping[str, Any] = _overhead(summary, method, "mn_to_ha") or {}
        print(f"  {method} (n {path['n']})")
        for label, median, nominal in path["steps"]:
            extra = f"   network {nominal:.1f}, beyond {median - nominal:.2f}" if nominal else ""
            print(f"    {label:<{width}} {median:6.2f}{extra}")
        print(f"    {'attach -> context active at the nAR':<{width}} {path['whole_ms']:6.2f}   network "
              f"{path['network_ms']:.1f}, beyond {path['whole_ms'] - path['network_ms']:.2f}")
        print(f"    {'overhead it implies (less one access delay)':<{width}} {path['implied_overhead_ms']:6.2f}"
              f"   target {path['limit_ms']:.1f}; measured: median {_format(measured.get('median'))}, "
              f"mean {_format(measured.get('mean'))}")


def _format(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}" if abs(value) < 1 else f"{value:.1f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", help="one or two run directories")
    arguments = parser.parse_args(argv)
    if len(arguments.runs) > 2:
        parser.error("one or two runs")
    try:
        loaded = [_load(Path(run)) for run in arguments.runs]
    except TargetsError as error:
        print(f"targets: {error}", file=sys.stderr)
        return 2
    per_run = [checks(summary, record) for summary, record in loaded]
    met = True
    width = max(len(name) for name, *_ in per_run[0])
    header = "  ".join(f"{'run ' + str(i + 1):>9}" for i in range(len(per_run)))
    print(f"{'target':<{width}}  {header}  {'limit':>9}  met")
    for lines in zip(*per_run):
        name, limit = lines[0][0], lines[0][2]
        values = "  ".join(f"{_format(value):>9}" for _, value, _, _ in lines)
        ok = all(line[3] for line in lines)
        met &= ok
        print(f"{name:<{width}}  {values}  {_format(limit):>9}  {'yes' if ok else 'NO'}")
    if len(loaded) == 2:
        print()
        for name, value, limit, ok in agreement(loaded[0][0], loaded[1][0]):
            met &= ok
            print(f"{name:<{width}}  {_format(value):>9}  {_format(limit):>9}  {'yes' if ok else 'NO'}")
    for number, (run, (summary, record)) in enumerate(zip(arguments.runs, loaded), 1):
        paths = uplink_paths(_rows(Path(run)), record["parameters"]["links"])
        if paths:
            print(f"\nrun {number}: ", end="")
            _print_paths(paths, summary, 48)
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
