"""An access router's capacity: how many MNs' IPsec contexts it holds, collects and activates.

Run as root in a kernel with ESP (the UML guest), from the repository root:

    make kernel-run CMD='.venv/bin/python benchmarks/bench_capacity.py'
    .venv/bin/python -m topo.kernel run -- .venv/bin/python benchmarks/bench_capacity.py [--sizes 100,1000,10000]

Each MN is what the testbed provisions at an AR (``provisioning.initial_contexts``: two tunnel
SAs, AES-CBC + HMAC-SHA256, three policies in/fwd/out with the inner addresses MN <-> HA). Four
parts, each a small table, all written to ``results/bench/capacity-<UTC>.json``:

(a) nAR burst: K contexts arrive (a PCTD each: decoded, rewritten, SAs installed inactive by
    ``ArIpsecHandler.install``), then K CTARs activate them (``ArIpsecHandler.activate``: the
    policies, one write each); and the reactive path (install and activation at once). Contexts
    per second and CPU time (user + system of this process) per context.
(b) kernel memory per MN: /proc/meminfo (Slab, SUnreclaim, MemFree) and the xfrm lines of
    /proc/slabinfo before and after 10^4 MNs' SAs, then their policies.
(c) pAR: one MN's context looked up among N installed MNs: the old dump (``capture_context``),
    the kernel-filtered SA dumps with the policies read back by key (``lookup_context``, as the
    pAR's deferred release, and its collect when an indexed SA went, do), everything read back
    by key (``kernel_filter=False``), and the SAs alone read back, the policies taken as
    indexed (``refresh_context``, as ``ArIpsecHandler.collect`` does);
    and contexts collected per second (``ArIpsecHandler.collect``: look-up, sequence margin,
    encode) at the largest N.
(d) SA and policy install time (one MN's 2 SAs and 3 policies, one write each) and the kernel's
    policy look-up by selector (XFRM_MSG_GETPOLICY) as the AR holds N MNs, with the policies
    hashed and not: the testbed's /128 selectors are hashed under the kernel's default IPv6
    thresholds (hthresh6 128 128); /127 selectors of the same MNs are not (they go to the
    inexact bins), until ``ip xfrm policy set hthresh6 127 127`` makes them hashed too.

Timings are medians over repetitions; the guest has one CPU, so another guest or load on the host
shows in them: repeat the run and compare.
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import json
import os
import platform
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cxtp.registry import TransferInfo  # noqa: E402
from ipsec import (  # noqa: E402
    IpsecContext,
    Xfrm,
    capture_context,
    lookup_context,
    refresh_context,
    remove_context,
)
from nodes import ar_context, provisioning  # noqa: E402

PAR, NAR, HA = "2001:db8:1::1", "2001:db8:2::1", "2001:db8:3::1"
STATE_ROOT = "/run" if os.path.isdir("/run") else None
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHUNK = 250  # requests per netlink write while populating


def mn_address(index: int, prefix: str = "2001:db8:1::") -> str:
    # even offsets: a /127 of one MN holds no other MN's address
    return str(ipaddress.IPv6Address(prefix) + 0x10000 + 2 * index)


def mn_context(index: int, prefixlen: int = 128, ar: str = PAR, prefix: str = "2001:db8:1::") -> IpsecContext:
    """The AR's side of MN ``index``'s provisioned context; ``prefixlen`` < 128: the same policies
    with shorter selectors (not hashed under the default thresholds)."""
    _, ar_side = provisioning.initial_contexts(mn_address(index, prefix), ar, HA, "aes-cbc-sha256",
                                               0x100000 + 2 * index, 0x100001 + 2 * index, reqid=index + 1)
    if prefixlen == 128:
        return ar_side
    return replace(ar_side, policies=tuple(
        replace(p, selector=replace(p.selector, prefixlen_s=prefixlen if p.selector.saddr != HA else 128,
                                    prefixlen_d=prefixlen if p.selector.daddr != HA else 128))
        for p in ar_side.policies))


def populate(xfrm: Xfrm, contexts: list[IpsecContext], sas: bool = True, policies: bool = True) -> None:
    """Many MNs' SAs and policies, CHUNK requests per write."""
    requests: list[bytes] = []
    for ctx in contexts:
        if sas:
            requests += [xfrm.encode_add_sa(sa) for sa in ctx.sas]
        if policies:
            requests += [xfrm.encode_add_policy(p) for p in ctx.policies]
    for start in range(0, len(requests), CHUNK):
        errors = [e for e in xfrm.send_batch(requests[start:start + CHUNK]) if e is not None]
        if errors:
            raise errors[0]


def ms(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {"median_ms": round(statistics.median(ordered), 4),
            "p90_ms": round(ordered[int(0.9 * (len(ordered) - 1))], 4), "n": len(ordered)}


def timed(action: Callable[[], object], repeat: int) -> list[float]:
    samples = []
    for _ in range(repeat):
        started = time.perf_counter_ns()
        action()
        samples.append((time.perf_counter_ns() - started) / 1e6)
    return samples


class Namespace:
    def __init__(self, role: str) -> None:
        self.name = f"bench-{role}-{os.getpid()}"
        subprocess.run(["ip", "netns", "add", self.name], check=True)

    def ip(self, *args: str) -> None:
        subprocess.run(["ip", "-n", self.name, *args], check=True)

    def close(self) -> None:
        subprocess.run(["ip", "netns", "del", self.name], check=False)


# --- (a) the nAR's burst ---------------------------------------------------------------------


def bench_nar_burst(burst: int, background: int) -> dict:
    namespace = Namespace("nar")
    try:
        with Xfrm(namespace.name) as xfrm, tempfile.TemporaryDirectory(dir=STATE_ROOT) as state:
            provisioning.warm_up_crypto(xfrm, ("aes-cbc-sha256",))
            populate(xfrm, [mn_context(i, ar=NAR, prefix="2001:db8:2::") for i in range(background)])
            handler = ar_context.ArIpsecHandler(xfrm, NAR, state_dir=state)
            # MNs background.. arrive from the pAR: their context as the pAR sends it
            data = {mn_address(i): mn_context(i).encode() for i in range(background, background + burst)}
            result: dict = {"burst": burst, "installed_before": background}
            for path in ("predictive", "reactive"):
                cpu0, wall0 = time.process_time(), time.perf_counter()
                if path == "predictive":
                    for mn, wire in data.items():  # the PCTDs: inactive SAs
                        assert handler.install(mn, wire, TransferInfo(mn, PAR, NAR)) == ar_context.STATUS_OK
                    cpu1, wall1 = time.process_time(), time.perf_counter()
                    assert len(handler.prepared) == burst, "every context prepared"
                    for mn in data:  # the CTARs, from the predicted addresses
                        predicted = handler.prepared[mn][0]
                        status, _ = handler.activate(mn, TransferInfo(mn, PAR, NAR, predicted))
                        assert status == ar_context.STATUS_OK
                else:
                    cpu1, wall1 = cpu0, wall0
                    for mn, wire in data.items():  # CTD answering the CT-Req: install and activate
                        new = str(ipaddress.IPv6Address(mn) + (1 << 64))  # another prefix, same IID
                        transfer = TransferInfo(mn, PAR, NAR, new)
                        assert handler.install(mn, wire, transfer) == ar_context.STATUS_OK
                        status, _ = handler.activate(mn, transfer)
                        assert status == ar_context.STATUS_OK
                cpu2, wall2 = time.process_time(), time.perf_counter()
                result[path] = {
                    "install_per_s": round(burst / (wall1 - wall0), 1) if path == "predictive" else None,
                    "install_cpu_ms": round(1e3 * (cpu1 - cpu0) / burst, 4) if path == "predictive" else None,
                    "activate_per_s": round(burst / (wall2 - wall1), 1),
                    "activate_cpu_ms": round(1e3 * (cpu2 - cpu1) / burst, 4),
                }
                # what this burst put there goes before the next path's
                for mn in list(handler.installed):
                    ctx = handler.installed.pop(mn)
                    remove_context(xfrm, ctx)
            return result
    finally:
        namespace.close()


# --- (b) memory ------------------------------------------------------------------------------


def meminfo() -> dict[str, int]:
    values = {}
    with open("/proc/meminfo") as source:
        for line in source:
            key, value = line.split(":", 1)
            if key in ("MemFree", "Slab", "SUnreclaim", "SReclaimable"):
                values[key] = int(value.split()[0]) * 1024
    return values


def xfrm_slabs() -> dict[str, int]:
    """Octets in slab caches named xfrm* (active objects x object size), where the kernel lists them."""
    octets = {}
    try:
        with open("/proc/slabinfo") as source:
            for line in source:
                fields = line.split()
                if fields and re.match(r"xfrm|kmalloc-(512|1k|2k|4k)$", fields[0]):
                    octets[fields[0]] = int(fields[1]) * int(fields[3])
    except OSError:
        pass
    return octets


def bench_memory(count: int) -> dict:
    namespace = Namespace("mem")
    try:
        with Xfrm(namespace.name) as xfrm:
            provisioning.warm_up_crypto(xfrm, ("aes-cbc-sha256",))
            contexts = [mn_context(i) for i in range(count)]
            stages = [("before", meminfo(), xfrm_slabs())]
            populate(xfrm, contexts, policies=False)
            time.sleep(0.5)
            stages.append(("sas", meminfo(), xfrm_slabs()))
            populate(xfrm, contexts, sas=False)
            time.sleep(0.5)
            stages.append(("policies", meminfo(), xfrm_slabs()))
        result: dict = {"mns": count}
        for (_, before, slabs_before), (name, after, slabs_after) in zip(stages, stages[1:]):
            per_mn = {key: round((before[key] - after[key] if key == "MemFree" else after[key] - before[key]) / count)
                      for key in before}
            per_mn.update({f"slab {key}": round((slabs_after.get(key, 0) - slabs_before.get(key, 0)) / count)
                           for key in slabs_after})
            result[name] = per_mn
        return result
    finally:
        namespace.close()


# --- (c) and (d): the pAR as it holds more MNs -----------------------------------------------


def _measure_at(xfrm: Xfrm, contexts: list[IpsecContext], prefixlen: int, probe: int, repeat: int) -> dict:
    """(c) and (d) with ``len(contexts)`` MNs installed; MNs from ``probe`` on are added and
    removed to time the install."""
    size = len(contexts)
    rng = random.Random(size)
    sa_ms, policy_ms = [], []
    for k in range(min(repeat, 50)):  # one MN's SAs (one write), then its policies (one write)
        ctx = mn_context(probe + k, prefixlen)
        sa_requests = [xfrm.encode_add_sa(sa) for sa in ctx.sas]
        policy_requests = [xfrm.encode_add_policy(p) for p in ctx.policies]
        started = time.perf_counter_ns()
        assert xfrm.send_batch(sa_requests) == [None, None]
        middle = time.perf_counter_ns()
        assert xfrm.send_batch(policy_requests) == [None] * 3
        sa_ms.append((middle - started) / 1e6)
        policy_ms.append((time.perf_counter_ns() - middle) / 1e6)
        remove_context(xfrm, ctx)

    def get_policy() -> None:
        policy = contexts[rng.randrange(size)].policies[0]
        xfrm.get_policy(policy.selector, policy.dir, policy.mark, policy.if_id)

    def capture() -> None:
        capture_context(xfrm, mn_address(rng.randrange(size)))

    index = rng.randrange(size)  # what is looked up is what a capture finds
    looked_up, captured = lookup_context(xfrm, mn_address(index), contexts[index]), \
        capture_context(xfrm, mn_address(index))
    assert set(looked_up.sas) == set(captured.sas) and set(looked_up.policies) == set(captured.policies)
    return {
        "mns": size,
        "sa_install_2": ms(sa_ms),
        "policy_install_3": ms(policy_ms),
        "getpolicy": ms(timed(get_policy, repeat)),
        "lookup_kernel_filter": ms(_lookups(xfrm, contexts, rng, repeat, True)),
        "lookup_by_key": ms(_lookups(xfrm, contexts, rng, repeat, False)),
        "refresh_sas_only": ms(_refreshes(xfrm, contexts, rng, repeat)),
        "capture_dump": ms(timed(capture, max(3, repeat // (10 if size >= 10000 else 2)))),
    }


def bench_scale(sizes: list[int], prefixlen: int, hthresh: int | None, repeat: int, collect: int) -> dict:
    namespace = Namespace("par")
    rows = []
    try:
        if hthresh is not None:
            namespace.ip("xfrm", "policy", "set", "hthresh6", str(hthresh), str(hthresh))
        with Xfrm(namespace.name) as xfrm:
            provisioning.warm_up_crypto(xfrm, ("aes-cbc-sha256",))
            contexts: list[IpsecContext] = []
            for size in sizes:
                new = [mn_context(i, prefixlen) for i in range(len(contexts), size)]
                populate(xfrm, new)
                contexts += new
                row = _measure_at(xfrm, contexts, prefixlen, max(sizes) + 10, repeat)
                rows.append(row)
                print(f"  {size:>6} MNs: " + "  ".join(
                    f"{key} {value['median_ms']:.3f}" for key, value in row.items() if isinstance(value, dict)),
                    flush=True)
            collected = bench_collect(xfrm, contexts, collect) if collect else None
        return {"prefixlen": prefixlen, "hthresh6": hthresh, "rows": rows, "collect": collected}
    finally:
        namespace.close()


def _lookups(xfrm: Xfrm, contexts: list[IpsecContext], rng: random.Random, repeat: int,
             kernel_filter: bool) -> list[float]:
    samples = []
    for _ in range(repeat):
        index = rng.randrange(len(contexts))
        mn, known = mn_address(index), contexts[index]
        started = time.perf_counter_ns()
        found = lookup_context(xfrm, mn, known, kernel_filter=kernel_filter)
        samples.append((time.perf_counter_ns() - started) / 1e6)
        assert len(found.sas) == 2 and len(found.policies) == 3
    return samples


def _refreshes(xfrm: Xfrm, contexts: list[IpsecContext], rng: random.Random, repeat: int) -> list[float]:
    """The pAR's collect's look-up (``refresh_context``): the SAs read back by key, the policies
    taken as indexed, not read."""
    samples = []
    for _ in range(repeat):
        known = contexts[rng.randrange(len(contexts))]
        started = time.perf_counter_ns()
        refresh_context(xfrm, known)
        samples.append((time.perf_counter_ns() - started) / 1e6)
    return samples


def bench_collect(xfrm: Xfrm, contexts: list[IpsecContext], count: int) -> dict:
    """The pAR's collect (look-up, sequence margin, encode) of ``count`` MNs among all installed,
    as ``ArIpsecHandler`` does it for a CT-Req or a PCTD (the index: what it provisioned)."""
    with tempfile.TemporaryDirectory(dir=STATE_ROOT) as state:
        handler = ar_context.ArIpsecHandler(xfrm, PAR, state_dir=state)
        for ctx in contexts:
            handler.know_installed(ctx)
        chosen = random.Random(1).sample(range(len(contexts)), count)
        cpu0, wall0 = time.process_time(), time.perf_counter()
        for index in chosen:
            assert handler.collect(mn_address(index))
        cpu1, wall1 = time.process_time(), time.perf_counter()
    return {"mns_installed": len(contexts), "collected": count,
            "per_s": round(count / (wall1 - wall0), 1), "cpu_ms": round(1e3 * (cpu1 - cpu0) / count, 4)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100,1000,10000")
    parser.add_argument("--repeat", type=int, default=60)
    parser.add_argument("--burst", type=int, default=1000)
    parser.add_argument("--collect", type=int, default=1000)
    parser.add_argument("--parts", default="a,b,c,d", help="which parts to run")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    parts = set(args.parts.split(","))
    report: dict = {"kernel": platform.release(), "python": platform.python_version(),
                    "started": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                    "sizes": sizes, "repeat": args.repeat}
    if "a" in parts:
        burst = bench_nar_burst(args.burst, background=1000)
        report["nar_burst"] = burst
        print(f"(a) nAR burst of {burst['burst']} contexts, {burst['installed_before']} MNs installed before")
        print(f"    {'path':<12}{'install/s':>11}{'cpu ms':>9}{'activate/s':>12}{'cpu ms':>9}")
        for path in ("predictive", "reactive"):
            row = burst[path]
            print(f"    {path:<12}{row['install_per_s'] or '-':>11}{row['install_cpu_ms'] or '-':>9}"
                  f"{row['activate_per_s']:>12}{row['activate_cpu_ms']:>9}")
    if "b" in parts:
        memory = bench_memory(max(sizes))
        report["memory"] = memory
        print(f"(b) kernel memory per MN ({memory['mns']} MNs), octets")
        for stage in ("sas", "policies"):
            print(f"    {stage:<9}" + "  ".join(f"{key} {value}" for key, value in memory[stage].items() if value))
    if "c" in parts or "d" in parts:
        report["scale"] = []
        for prefixlen, hthresh, label in ((128, None, "/128 selectors, default thresholds: hashed (the testbed's)"),
                                          (127, None, "/127 selectors, default thresholds: not hashed"),
                                          (127, 127, "/127 selectors, hthresh6 127 127: hashed")):
            print(f"(c, d) {label}: one write of 2 SAs / 3 policies, GETPOLICY, look-up of one MN (ms)")
            scale = bench_scale(sizes, prefixlen, hthresh, args.repeat, args.collect if prefixlen == 128 else 0)
            scale["label"] = label
            report["scale"].append(scale)
            if scale["collect"]:
                c = scale["collect"]
                print(f"    pAR collect: {c['per_s']} contexts/s, {c['cpu_ms']} ms CPU each "
                      f"({c['collected']} among {c['mns_installed']} MNs)")
    directory = os.path.join(REPO, "results", "bench")
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, f"capacity-{report['started'].replace(':', '').replace('-', '')}.json")
    with open(path, "w") as out:
        json.dump(report, out, indent=1)
    print(f"written: {os.path.relpath(path, REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
