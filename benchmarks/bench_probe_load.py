"""The load of the measurement itself: how busy the probe streams alone keep the guest's one CPU.

The testbed's four nodes with their agents idle and the probes running, first without security
and then through the paper's static ESP tunnel; the guest's busy share over 2 s windows (from
the idle time the kernel accounts, as the fidelity monitor reads it). The agents' protocol steps
run below the probes, so this is the share of the CPU they cannot have. Run as root in a kernel
with ESP and netem (the UML guest):

    make kernel-run CMD='.venv/bin/python benchmarks/bench_probe_load.py [rate ...]'
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from scenarios.runner import methods  # noqa: E402
from scenarios.runner.experiment import Experiment, pause  # noqa: E402
from scenarios.runner.run import _busy_share, cpu_times, warm_up_crypto  # noqa: E402
from topo.network import Testbed  # noqa: E402

WINDOWS = 4
WINDOW_MS = 2000.0


def busy_shares() -> list[float | None]:
    shares = []
    for _ in range(WINDOWS):
        before = cpu_times()
        pause(WINDOW_MS)
        shares.append(_busy_share(before, cpu_times()))
    return shares


def main(argv: list[str]) -> int:
    rates = [float(rate) for rate in argv] or [500.0]
    for rate in rates:
        with Testbed() as testbed, tempfile.TemporaryDirectory() as run_dir:
            warm_up_crypto(testbed, "aes-cbc-sha256")
            experiment = Experiment(testbed, Path(run_dir), probe_rate=rate)
            try:
                for security in (methods.NO_SECURITY, methods.STATIC_TUNNEL):
                    experiment.enter(security)
                    pause(500.0)  # the streams settle after the change
                    shares = ", ".join(f"{share:.0%}" for share in busy_shares())
                    print(f"guest busy with the probes alone, {rate:.0f}/s each way, {security.name}: {shares}")
            finally:
                experiment.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
