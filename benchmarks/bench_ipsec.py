"""How long it takes to move one MN's IPsec context, and 1000 of them.

Run as root in a kernel with ESP (the UML guest), from the repository root:

    python benchmarks/bench_ipsec.py [--repeat 200] [--mns 1000]

Measures, through XFRM netlink in two namespaces (pAR, nAR):
  extract = capture_context (SA + policy dumps) + IpsecContext.encode
  restore = IpsecContext.decode + rewrite_for_nar + install_context
for one MN (2 tunnel SAs, AES-CBC + HMAC-SHA256, 3 policies: in, fwd, out; the
nAR adds nothing since fwd is already there), and for a batch of MNs
(capture_contexts with one dump for all).  The anchor to beat: 5-15 ms to
extract and 2-22 ms to restore an IKEv2/IPsec session (Palomares et al.).
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import platform
import statistics
import subprocess
import sys
import time
import uuid

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ipsec import (  # noqa: E402
    Algorithm,
    IpsecContext,
    SecurityAssociation,
    SecurityPolicy,
    Selector,
    Template,
    Xfrm,
    capture_context,
    capture_contexts,
    install_context,
    remove_context,
    rewrite_for_nar,
)
from ipsec.xfrm_messages import XFRM_POLICY_FWD, XFRM_POLICY_IN, XFRM_POLICY_OUT  # noqa: E402

PAR, NAR, HA = "2001:db8:1::1", "2001:db8:2::1", "2001:db8:ff::1"


def mn_addresses(index: int) -> tuple[str, str]:
    prev = str(ipaddress.IPv6Address("2001:db8:1::") + 0x1000 + index)
    new = str(ipaddress.IPv6Address("2001:db8:2::") + 0x1000 + index)
    return prev, new


def install_mn_on_par(par: Xfrm, index: int) -> None:
    mn, _ = mn_addresses(index)
    keys = (
        Algorithm("crypt", "cbc(aes)", os.urandom(16)),
        Algorithm("auth_trunc", "hmac(sha256)", os.urandom(32), 128),
    )
    par.add_sa(SecurityAssociation(mn, PAR, 0x10000 + 2 * index, reqid=2 * index + 1, algorithms=keys))
    par.add_sa(SecurityAssociation(PAR, mn, 0x10001 + 2 * index, reqid=2 * index + 2, algorithms=keys))
    from_mn = Selector(daddr=HA, saddr=mn, prefixlen_d=128, prefixlen_s=128)
    to_mn = Selector(daddr=mn, saddr=HA, prefixlen_d=128, prefixlen_s=128)
    inbound = (Template(PAR, mn, reqid=2 * index + 2),)
    par.add_policy(SecurityPolicy(from_mn, XFRM_POLICY_IN, inbound))
    par.add_policy(SecurityPolicy(from_mn, XFRM_POLICY_FWD, inbound))
    par.add_policy(SecurityPolicy(to_mn, XFRM_POLICY_OUT, (Template(mn, PAR, reqid=2 * index + 1),)))


def summary(samples_ms: list[float]) -> str:
    ordered = sorted(samples_ms)
    p95 = ordered[min(len(ordered) - 1, int(round(0.95 * (len(ordered) - 1))))]
    return f"median {statistics.median(ordered):8.3f} ms   p95 {p95:8.3f} ms   (n={len(ordered)})"


def one_mn(par: Xfrm, nar: Xfrm, repeat: int) -> tuple[list[float], list[float], int]:
    install_mn_on_par(par, 0)
    mn_prev, mn_new = mn_addresses(0)
    extract, restore = [], []
    size = 0
    for _ in range(repeat):
        start = time.perf_counter()
        wire = capture_context(par, mn_prev).encode()
        middle = time.perf_counter()
        ctx = rewrite_for_nar(IpsecContext.decode(wire), mn_prev, mn_new, PAR, NAR)
        installation = install_context(nar, ctx)
        end = time.perf_counter()
        extract.append((middle - start) * 1e3)
        restore.append((end - middle) * 1e3)
        size = len(wire)
        remove_context(nar, installation.context)
    return extract, restore, size


def batch(par: Xfrm, nar: Xfrm, count: int, rounds: int):
    for index in range(1, count):  # MN 0 is already there
        install_mn_on_par(par, index)
    addresses = [mn_addresses(i)[0] for i in range(count)]
    extract, restore = [], []
    for _ in range(rounds):
        start = time.perf_counter()
        contexts = capture_contexts(par, addresses)
        wires = {address: ctx.encode() for address, ctx in contexts.items()}
        middle = time.perf_counter()
        installations = []
        for index, address in enumerate(addresses):
            _, mn_new = mn_addresses(index)
            ctx = rewrite_for_nar(IpsecContext.decode(wires[address]), address, mn_new, PAR, NAR)
            installations.append(install_context(nar, ctx))
        end = time.perf_counter()
        extract.append((middle - start) * 1e3)
        restore.append((end - middle) * 1e3)
        nar.flush_policies()
        nar.flush_sas()
    single = []
    for _ in range(20):  # one MN among `count`: the dumps grow with the table
        start = time.perf_counter()
        capture_context(par, addresses[count // 2]).encode()
        single.append((time.perf_counter() - start) * 1e3)
    return extract, restore, single


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=200)
    parser.add_argument("--mns", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    tag = uuid.uuid4().hex[:8]
    names = [f"bench-par-{tag}", f"bench-nar-{tag}"]
    for name in names:
        subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        with Xfrm(names[0]) as par, Xfrm(names[1]) as nar:
            # warm the crypto templates up (first ESP SA costs seconds in a fresh guest)
            install_mn_on_par(nar, 9999)
            nar.flush_policies()
            nar.flush_sas()
            print(f"kernel {platform.release()}  python {platform.python_version()}  machine {platform.machine()}")
            extract, restore, size = one_mn(par, nar, args.repeat)
            print(f"one MN (2 SAs, 3 policies; context {size} octets)")
            print(f"  extract (capture + encode) on pAR:           {summary(extract)}")
            print(f"  restore (decode + rewrite + install) on nAR: {summary(restore)}")
            extract, restore, single = batch(par, nar, args.mns, args.rounds)
            print(f"{args.mns} MNs in one batch ({args.rounds} rounds)")
            print(f"  extract all:  {summary(extract)}   per MN {statistics.median(extract) / args.mns:.3f} ms")
            print(f"  restore all:  {summary(restore)}   per MN {statistics.median(restore) / args.mns:.3f} ms")
            print(f"  extract one MN among {args.mns}: {summary(single)}")
            print("anchor (Palomares et al., IKEv2/IPsec session): extract 5-15 ms, restore 2-22 ms")
    finally:
        for name in names:
            subprocess.run(["ip", "netns", "del", name], check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
