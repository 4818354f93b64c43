"""Encode + decode rate of CXTP messages (a script, not a test).

    .venv/bin/python benchmarks/bench_cxtp.py [--seconds 1.0]

Measures a CTAR (44 octets, IPv6, no CDB) and a CTD carrying two ~200-octet CDBs, and the
token computation, and prints messages per second and microseconds per operation.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import cxtp  # noqa: E402
from cxtp import CTAR, CTD, ContextDataBlock  # noqa: E402

KEY = bytes(range(20))


def measure(name: str, operation, seconds: float) -> None:
    for _ in range(200):  # warm-up
        operation()
    count, start = 0, time.perf_counter()
    deadline = start + seconds
    while True:
        for _ in range(500):
            operation()
        count += 500
        now = time.perf_counter()
        if now >= deadline:
            break
    elapsed = now - start
    print(f"{name:<44} {count / elapsed:>12,.0f} ops/s {elapsed / count * 1e6:>9.2f} µs/op")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="time per measurement")
    args = parser.parse_args()
    token = cxtp.compute_token(KEY, "2001:db8::100", 0x1A2B3C4D)
    ctar = CTAR("2001:db8::100", "2001:db8:1::1", 0x1A2B3C4D, token)
    ctd = CTD("2001:db8::100", (ContextDataBlock(0x8001, bytes(range(200))),
                                ContextDataBlock(0x8001, bytes(range(196)))), elapsed_time=3)
    ctar_wire, ctd_wire = ctar.encode(), ctd.encode()
    print(f"Python {platform.python_version()} on {platform.machine()}, "
          f"CTAR {len(ctar_wire)} octets, CTD {len(ctd_wire)} octets")
    measure("CTAR encode+decode", lambda: cxtp.decode(ctar.encode()), args.seconds)
    measure("CTD (2 x ~200-octet CDBs) encode+decode", lambda: cxtp.decode(ctd.encode()), args.seconds)
    measure("CTAR encode", ctar.encode, args.seconds)
    measure("CTAR decode", lambda: cxtp.decode(ctar_wire), args.seconds)
    measure("CTD encode", ctd.encode, args.seconds)
    measure("CTD decode", lambda: cxtp.decode(ctd_wire), args.seconds)
    measure("token (HMAC-SHA1, no CDB)", lambda: cxtp.compute_token(KEY, "2001:db8::100", 1), args.seconds)


if __name__ == "__main__":
    main()
