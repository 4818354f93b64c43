"""The CXTP hot paths of a handover, as the agents run them, one MN, in the testbed's kernel:

* nAR: the CTAR's activation (``ArIpsecHandler.activate``: the policies, in one netlink write),
  with the context received (``install``: decoded, rewritten for the predicted care-of address,
  its requests encoded and its SAs installed inactive) beforehand, as a PCTD delivers it before
  the MN arrives;
* nAR, reactive: the CTD's install and activation together (the CTD answers the nAR's CT-Req, so
  the MN's new address is known: one write, nothing prepared);
* MN: the re-homing of its own SAs and policies (``MnIpsecHandler.move``: the policies' new
  selectors and templates, in one write), prepared when the move is expected (``prepare_move``,
  at the runner's ``expect_move``, before the detach: copies of its SAs under the new
  addresses, installed inactive); the old ones go after the Binding Update (``finish_move``).

Each in a scratch network namespace of its own; medians and p90 over many rounds. Run as root in
a kernel with ESP (the UML guest):

    make kernel-run CMD='.venv/bin/python benchmarks/bench_hot_paths.py'
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cxtp.registry import TransferInfo  # noqa: E402
from ipsec import Xfrm, install_context  # noqa: E402
from nodes import ar_context, mn_context, provisioning  # noqa: E402

ROUNDS = 60
#: the install journal lives where the runner puts it: on a tmpfs (a process crash, not a reboot)
STATE_ROOT = "/run" if os.path.isdir("/run") else None
MN_P, MN_N, PAR, NAR, HA = "2001:db8:1::100", "2001:db8:2::100", "2001:db8:1::1", "2001:db8:2::1", "2001:db8:3::1"


def _namespace(name: str) -> str:
    subprocess.run(["ip", "netns", "add", name], check=True)
    return name


def _quantiles(values: list[float]) -> str:
    ordered = sorted(values)
    return (f"median {statistics.median(values):.3f} ms, p90 {ordered[int(0.9 * (len(ordered) - 1))]:.3f} ms "
            f"over {len(values)}")


def bench_nar(namespace: str, reactive: bool = False) -> list[float]:
    """Predictive: the CTAR's activation of a context a PCTD delivered (and the handler prepared)
    beforehand. Reactive: the CTD's install and activation together, the MN's address known."""
    _, ar_side = provisioning.initial_contexts(MN_P, PAR, HA, "aes-cbc-sha256", 0x102, 0x101)
    data = ar_side.encode()
    times = []
    with Xfrm(netns=namespace) as xfrm, tempfile.TemporaryDirectory(dir=STATE_ROOT) as state:
        events = []
        handler = ar_context.ArIpsecHandler(xfrm, NAR, state_dir=state,
                                            trace=lambda name, **fields: events.append((name, fields)))
        provisioning.warm_up_crypto(xfrm, ("aes-cbc-sha256",))
        pctd, ctar = TransferInfo(MN_P, PAR, NAR), TransferInfo(MN_P, PAR, NAR, MN_N)
        for _ in range(ROUNDS):
            if not reactive:
                handler.install(MN_P, data, pctd)  # the PCTD, before the MN arrives
            started = time.perf_counter_ns()
            if reactive:  # the CTAR came first, the CTD answers the nAR's CT-Req
                handler.install(MN_P, data, ctar)
            status, _ = handler.activate(MN_P, ctar)
            times.append((time.perf_counter_ns() - started) / 1e6)
            assert status == ar_context.STATUS_OK, status
            # the path measured is the intended one: prepared (policies only) or one write, never
            # the careful path
            assert events[-1][0] == "ipsec_activated" and events[-1][1].get("prepared", False) != reactive, events[-3:]
            assert not any(name == "ipsec_install_careful" for name, _ in events), events[-3:]
            # as the node does when the MN moves on: it collects (handing on what it installed),
            # then releases
            assert handler.collect(MN_N)
            handler.release(MN_N)
    return times


def bench_mn_rehome(namespace: str) -> list[float]:
    times = []
    with Xfrm(netns=namespace) as xfrm:
        provisioning.warm_up_crypto(xfrm, ("aes-cbc-sha256",))
        handler = mn_context.MnIpsecHandler(xfrm)
        mn_side, _ = provisioning.initial_contexts(MN_P, PAR, HA, "aes-cbc-sha256", 0x102, 0x101)
        here, there = (MN_P, PAR), (MN_N, NAR)
        handler.know(install_context(xfrm, mn_side).context)  # what the MN installed, it knows
        for _ in range(ROUNDS):
            # at the runner's expect_move, before the detach: the attach then sends one write
            assert handler.prepare_move(here[0], there[0], here[1], there[1])
            started = time.perf_counter_ns()
            handler.move(here[0], there[0], here[1], there[1])
            times.append((time.perf_counter_ns() - started) / 1e6)
            handler.finish_move()  # the old SAs and policies, after the Binding Update has left
            here, there = there, here
    return times


def main() -> int:
    suffix = f"{os.getpid()}"
    namespaces = [_namespace(f"bench-nar-{suffix}"), _namespace(f"bench-mn-{suffix}"),
                  _namespace(f"bench-rnar-{suffix}")]
    try:
        print(f"nAR activation (CTAR -> context installed and active): {_quantiles(bench_nar(namespaces[0]))}")
        print(f"nAR, reactive (CTD answering the CT-Req -> context installed and active): "
              f"{_quantiles(bench_nar(namespaces[2], reactive=True))}")
        print(f"MN re-homing (attach -> its SAs and policies serve the new address): "
              f"{_quantiles(bench_mn_rehome(namespaces[1]))}")
    finally:
        for namespace in namespaces:
            subprocess.run(["ip", "netns", "del", namespace], check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
