"""The figures issue 10 sets as targets, checked on stored runs: a benchmark's verdict, not a test.

    python -m scenarios.targets results/default/<run-a> [results/default/<run-b>]

Each line: the target, the value each run gives, the limit, and whether it is met. With two
runs, also whether they agree (every method's median within 5 ms or 10%, whichever is larger).
Limits that depend on the network are computed from the run's own link parameters. Exit status
0 when every target is met, 1 otherwise, 2 when a run cannot be read.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

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


def _overhead(summary: dict, key: str, direction: str) -> dict | None:
    return (summary["per_method"].get(key, {}).get(direction) or {}).get("overhead_ms")


def checks(summary: dict, record: dict) -> list[tuple[str, float | None, float, bool]]:
    """(target, value, limit, met) for one run."""
    links = record["parameters"]["links"]
    access, ar_ar = links["access"]["delay_ms"], links["ar_ar"]["delay_ms"]
    rows = []

    def at_most(name: str, value: float | None, limit: float) -> None:
        rows.append((name, value, limit, value is not None and value <= limit))

    for method in ("cxtp-predictive", "cxtp-network"):
        for direction, label in DIRECTIONS:
            overhead = _overhead(summary, method, direction)
            at_most(f"{method} security overhead, {label} (ms)", overhead and overhead["median"], 2.0)
    overhead = _overhead(summary, "cxtp-reactive", "mn_to_ha")
    at_most("cxtp-reactive security overhead, uplink (ms)", overhead and overhead["median"], access + 2 * ar_ar + 3.0)
    overhead = _overhead(summary, "cxtp-reactive", "ha_to_mn")
    at_most("cxtp-reactive security overhead, downlink (ms)", overhead and overhead["median"], 2.0)
    signalling = summary["per_method"].get("cxtp-predictive", {}).get("signalling_ms", {}).get("ctar_to_ctaa_ms", {})
    at_most("cxtp-predictive CTAR -> CTAA at the MN (ms)", signalling.get("median"), 2 * access + 2.0)
    for direction, label in DIRECTIONS:
        eap = _overhead(summary, "reauth-eap@20", direction)
        predictive = _overhead(summary, "cxtp-predictive", direction)
        upper = predictive["ci95"][1] if predictive and predictive.get("ci95") else None
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
    rows = []
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
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
