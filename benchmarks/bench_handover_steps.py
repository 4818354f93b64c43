"""The emulation's own handover steps in the testbed's kernel: how long the detach (link down) and
the attach (link up, care-of address, neighbour entry, default route) take, without probes or
agents, so that the figures can say how much of an interruption is emulation.

    make kernel-run CMD='.venv/bin/python benchmarks/bench_handover_steps.py'
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from topo import plan  # noqa: E402
from topo.network import Testbed  # noqa: E402

ROUNDS = 40


def main() -> int:
    with Testbed() as testbed:
        detach, attach = [], []
        for _ in range(ROUNDS):
            record = testbed.handover(testbed.other_ar(), l2_delay_ms=5.0)
            detach.append((record.detached_ns - record.detach_start_ns) / 1e6)
            attach.append((record.attached_ns - record.attach_start_ns) / 1e6)
        for name, values in (("detach", detach), ("attach", attach)):
            ordered = sorted(values)
            print(f"{name}: median {statistics.median(values):.3f} ms, "
                  f"p90 {ordered[int(0.9 * (len(ordered) - 1))]:.3f} ms, "
                  f"max {ordered[-1]:.3f} ms over {len(values)} handovers ({plan.MN})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
