"""Full re-authentication's capacity: IKE_SA + EAP completions per second with K at once, and where they wait.

Run as root in a kernel with ESP and netem (the UML guest), from the repository root:

    .venv/bin/python -m topo.kernel run -- .venv/bin/python benchmarks/bench_reauth_capacity.py
    make kernel-run CMD='.venv/bin/python benchmarks/bench_reauth_capacity.py --ks 1,4,16 --rounds 3'

What runs is the re-authentication baseline as the scenarios run it (``IkeBaseline``: charon on
the MN and both ARs, FreeRADIUS on the AAA node, the same strongswan.conf, users file and VICI
connections), on the testbed's network (``Testbed``; link delays of the default scenario unless
``--access-delay-ms`` / ``--ar-aaa-delay-ms`` say otherwise). The MN's charon then plays K MNs
at once against one AR: K copies of its connection to the AR (``mn_connection``: same identity,
same credentials), each from its own care-of address on the AR's access prefix
(``<prefix>::2:<i>``, added to the MN's access interface, with a permanent neighbour entry on
the AR as the testbed makes for the MN's own). Distinct addresses give distinct IKE_SAs (charon
reuses an IKE_SA whose configuration matches, so K initiates of one connection would share one)
and keep charon's per-address DoS limit
(``block_threshold``, 5 half-open IKE_SAs per peer address) out of the way; the AR's
``unique = never`` already lets one identity hold many IKE_SAs. No load-tester plugin: Debian's
packages installed by scripts/setup.sh do not ship it.

A round: K VICI ``initiate`` requests with ``timeout = -1`` (charon answers once it has sent
the IKE_SA_INIT), written back to back on K sessions of the MN's charon at SCHED_FIFO, so that
all K are in charon's hands within a millisecond (answered one by one, with this process below
the daemons' priority, they were paced by the CPU: on a busy guest the K-th left when the first
had finished); then wait for each connection's ``child-updown`` (up) event; then every SA is
torn down (not measured) before the next round. Rounds alternate over the K
values (``--ks``), ``--rounds`` times, after one discarded warm-up round at the largest K; the
authentication methods (``--methods``: EAP-MSCHAPv2 through RADIUS, PSK) each get their own
daemons. EAP runs once per ``--radius-sockets`` value (default 1 and 16): the ARs' eap-radius
plugin with that many RADIUS sockets (``sockets = N`` added to the rendered strongswan.conf,
reloaded over VICI). The testbed's configuration leaves it at strongSwan's default of one, and
the plugin holds a socket for a whole Access-Request round trip, each worker thread waiting for
one: with one socket at most one request per AR is ever outstanding at the AAA, whatever K.
``--ar-threads N`` restarts the measured AR's charon with N worker threads instead of the
testbed's 8 (of which charon's receiver, sender, scheduler and watcher keep about half): with
enough sockets and threads, Access-Requests reach the AAA as fast as the MNs cause them.

Measured per completion (``sessions``): ``latency_ms`` from just before its ``initiate`` to the
arrival of its child-updown event in this process (what the scenarios' attach measures);
``wire_ms``, from the MN's charon sending its first IKE_SA_INIT request to its receiving the last
IKE_AUTH response, from kernel timestamps at the MN's interface; the time spent at the AR across
the exchanges (``ar_ms``);
for EAP the RADIUS round trips the AR's worker waited for (``radius_rtt_ms``), FreeRADIUS's own
time from each Access-Request's arrival at the AAA node to its answer's departure (``aaa_ms``,
summed per authentication; per request in ``radius``), and the AR's time from each IKE_AUTH
request's arrival to the Access-Request it causes (``ar_radius_wait_ms``: a free worker thread,
a free RADIUS socket, decryption). Per round: completions per second (K over the time from the
first initiate to the last completion), the guest's busy share over that time (from the idle time
the kernel accounts, /proc/uptime, as the fidelity monitor reads it; /proc/stat's tick-sampled
share beside it), the CPU time (/proc/<pid>/task/*/schedstat) of the MN's charon, the AR's
charon, FreeRADIUS, this process and the rest, per completion (``cpu_bound_per_s``: the rate
the guest's CPU would allow if it were always busy with this work), and the AAA's queue: requests
inside FreeRADIUS (arrived, not yet answered), time-averaged and at most, and the Access-Requests
outstanding at the AR.

The per-process CPU times have the tick's resolution in this UML kernel (10 ms: without a
sched_clock of its own, the scheduler's clock is jiffies), so their split is an estimate that
only many rounds make useful; the busy share (idle time, accounted on the clocksource under
NO_HZ) is not affected.

Packet times come from AF_PACKET sockets with kernel timestamps (SO_TIMESTAMPNS) in the MN's,
the AR's and the AAA node's namespaces, read after each round. A packet leaving a node is
timestamped after its interface's netem delay, i.e. when it enters the peer; the nominal one-way
delays are subtracted where that matters (netem is exact in the guest).

Results go to ``results/bench/reauth-capacity-<UTC>.json`` (every round and session) and a
table per method; figures are medians over rounds (latency percentiles over all completions).
The guest has one CPU, which the MN's charon, the AR's, FreeRADIUS and this process share: the
rate is the whole emulated system's, not an AR's; the CPU split says what each part costs.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import ipaddress
import json
import os
import platform
import queue
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from vici.exception import CommandException, SessionException  # noqa: E402
from vici.protocol import Message  # noqa: E402
from vici.protocol import Packet as ViciPacket  # noqa: E402

from ipsec.xfrm import Xfrm  # noqa: E402
from nodes.agent import raise_agent_priority  # noqa: E402
from nodes.ike import (  # noqa: E402
    ACCESS_ACCEPT,
    ACCESS_REQUEST,
    RADIUS_PORT,
    Charon,
    Packet,
    Tap,
    classify_failure,
    radius_at_aaa,
    request,
    station_address,
)
from scenarios import config  # noqa: E402
from scenarios.runner import baseline as baseline_module  # noqa: E402
from topo import access_steps, plan  # noqa: E402
from topo.network import LinkParams, Testbed  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METHODS = ("eap-mschapv2", "eap-md5", "psk")
SLOT_OFFSET = 0x20000        # slot i's care-of address: <access prefix>::2:<i> (outside ::100-::10ff)
ISSUE_PRIORITY = 60          # SCHED_FIFO while the K initiate requests are written
SETTLE_S = 0.3               # after the clean-up, before the next round
CLEANUP_TIMEOUT_S = 15.0

IKE_PORTS = (500, 4500)

# IKEv2 (RFC 7296) numbers
IKE_SA_INIT, IKE_AUTH = 34, 35
IKE_RESPONSE_FLAG = 0x20
IKE_NOTIFY, NOTIFY_COOKIE = 41, 16390


def ike_header(payload: bytes) -> tuple[bytes, int, bool, int, bool] | None:
    """(initiator SPI, exchange type, response, message ID, a COOKIE notify first) of an IKE message."""
    if len(payload) < 28:
        return None
    cookie = (payload[16] == IKE_NOTIFY and len(payload) >= 36
              and int.from_bytes(payload[34:36], "big") == NOTIFY_COOKIE)
    return (payload[:8], payload[18], bool(payload[19] & IKE_RESPONSE_FLAG),
            int.from_bytes(payload[20:24], "big"), cookie)


# --- what the packets say -------------------------------------------------------------------------


def ike_at_mn(packets: list[Packet], slots: dict[str, str], access_delay_ns: int) -> dict[str, dict[str, Any]]:
    """Per slot, from the MN's side: when its charon sent the first IKE_SA_INIT request (the tap's
    time less the access link's delay) and received the last IKE_AUTH response, requests sent
    (retransmissions and cookie retries included), cookies received."""
    found: dict[str, dict[str, Any]] = {}
    for packet in packets:
        header = ike_header(packet.payload)
        name = slots.get(packet.src if packet.out else packet.dst)
        if header is None or name is None:
            continue
        _, exchange, response, message_id, cookie = header
        entry = found.setdefault(name, {"first_init_ns": None, "last_auth_response_ns": None, "requests": 0,
                                        "distinct_requests": set(), "init_requests": 0, "cookies": 0})
        if packet.out and not response:
            entry["requests"] += 1
            entry["distinct_requests"].add((header[0], message_id))
            if exchange == IKE_SA_INIT:
                entry["init_requests"] += 1
                if entry["first_init_ns"] is None or packet.t_ns - access_delay_ns < entry["first_init_ns"]:
                    entry["first_init_ns"] = packet.t_ns - access_delay_ns
        elif not packet.out and response:
            entry["cookies"] += cookie
            if exchange == IKE_AUTH and (entry["last_auth_response_ns"] is None
                                         or packet.t_ns > entry["last_auth_response_ns"]):
                entry["last_auth_response_ns"] = packet.t_ns
    for entry in found.values():
        entry["exchanges"] = len(entry.pop("distinct_requests"))
    return found


def ike_at_ar(packets: list[Packet], slots: dict[str, str], access_delay_ns: int) -> dict[str, dict[str, Any]]:
    """Per slot, from the AR's side: each exchange's request arrival and the AR's answer (its
    departure less the access link's delay); a retransmitted request while one is open is ignored,
    a cookie round is an exchange of its own."""
    found: dict[str, dict[str, Any]] = {}
    open_requests: dict[tuple[str, bytes, int], int] = {}
    for packet in sorted(packets, key=lambda p: p.t_ns):
        if RADIUS_PORT in (packet.sport, packet.dport):
            continue
        header = ike_header(packet.payload)
        name = slots.get(packet.dst if packet.out else packet.src)
        if header is None or name is None:
            continue
        spi, exchange, response, message_id, _ = header
        entry = found.setdefault(name, {"exchanges": [], "auth_requests_ns": []})
        key = (name, spi, message_id)
        if not packet.out and not response:
            if key not in open_requests:
                open_requests[key] = packet.t_ns
                if exchange == IKE_AUTH:
                    entry["auth_requests_ns"].append(packet.t_ns)
        elif packet.out and response and key in open_requests:
            arrived = open_requests.pop(key)
            entry["exchanges"].append((exchange, arrived, packet.t_ns - access_delay_ns))
    return found


def radius_at_ar(packets: list[Packet], slots: dict[str, str]) -> list[dict[str, Any]]:
    """The AR's Access-Requests (first transmission) with the first answer to each: (slot, sent,
    answered, answer code, the AR's source port). Times as the tap saw them: sent after the AR's
    egress delay, answered on arrival."""
    requests: dict[tuple[int, int], dict[str, Any]] = {}
    done: list[dict[str, Any]] = []
    for packet in sorted(packets, key=lambda p: p.t_ns):
        if RADIUS_PORT not in (packet.sport, packet.dport) or len(packet.payload) < 20:
            continue
        code, identifier = packet.payload[0], packet.payload[1]
        if packet.out and packet.dport == RADIUS_PORT and code == ACCESS_REQUEST:
            key = (packet.sport, identifier)
            if key not in requests:
                address = station_address(packet.payload)
                requests[key] = {"slot": slots.get(address or ""), "sent_ns": packet.t_ns, "port": packet.sport}
        elif not packet.out and packet.sport == RADIUS_PORT:
            pending = requests.pop((packet.dport, identifier), None)
            if pending is not None:
                done.append({**pending, "answered_ns": packet.t_ns, "code": code})
    done += [{**pending, "answered_ns": None, "code": None} for pending in requests.values()]
    return done


def occupancy(intervals: list[tuple[int, int]]) -> dict[str, float]:
    """How many intervals overlap: at most, and time-averaged from the first start to the last end."""
    if not intervals:
        return {"max": 0, "mean": 0.0}
    events = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals],
                    key=lambda event: (event[0], event[1]))
    level = peak = 0
    area, last = 0.0, events[0][0]
    for at, step in events:
        area += level * (at - last)
        last = at
        level += step
        peak = max(peak, level)
    span = events[-1][0] - events[0][0]
    return {"max": peak, "mean": round(area / span, 3) if span > 0 else float(peak)}


# --- CPU ------------------------------------------------------------------------------------------


def process_cpu_ns(pid: int | None) -> int:
    """CPU time of every thread of ``pid`` (schedstat: the scheduler's own ns count, not ticks)."""
    if pid is None:
        return 0
    total = 0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/schedstat") as stat:
                total += int(stat.read().split()[0])
        except (OSError, ValueError, IndexError):
            pass
    return total


def cpu_times() -> tuple[float, float]:
    """(idle CPU seconds, monotonic seconds): the idle time the kernel accounts as the CPU enters
    and leaves idle, as the scenario runner's fidelity monitor reads it (``scenarios.runner.run``)."""
    with open("/proc/uptime") as uptime:
        idle = float(uptime.read().split()[1])
    return idle, time.monotonic()


def busy_share(before: tuple[float, float], after: tuple[float, float]) -> float | None:
    idle, elapsed = after[0] - before[0], (after[1] - before[1]) * (os.cpu_count() or 1)
    return min(1.0, max(0.0, 1.0 - idle / elapsed)) if elapsed > 0 else None


def proc_stat() -> tuple[int, int]:
    """(busy, all) jiffies of /proc/stat's cpu line: sampled at each tick, kept beside the idle time."""
    with open("/proc/stat") as stat:
        fields = [int(value) for value in stat.readline().split()[1:9]]
    return sum(fields) - fields[3] - fields[4], sum(fields)


# --- statistics -----------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float | None:
    """Linear interpolation between the closest ranks (q in 0..100)."""
    ordered = sorted(values)
    if not ordered:
        return None
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def rounded(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else round(value, digits)


def ms(ns: int | float) -> float:
    return ns / 1e6


# --- the bench ------------------------------------------------------------------------------------


def slot_name(index: int) -> str:
    return f"cap-{index}"


def slot_address(ar: str, index: int) -> str:
    return str(ipaddress.ip_network(plan.ACCESS_PREFIX[ar])[SLOT_OFFSET + index])


def add_slot_addresses(testbed: Testbed, ar: str, count: int, workdir: Path) -> None:
    """The slots' care-of addresses on the MN's access interface, and the AR's permanent neighbour
    entries for them (as the testbed makes for the MN's own care-of address): one `ip -batch` each."""
    link = plan.LINKS_BY_NAME[plan.ACCESS_LINK[ar]]
    mn_interface, ar_interface = link.interface(plan.MN), link.interface(ar)
    mac = testbed.host(plan.MN).intf(mn_interface).MAC()
    mn_batch, ar_batch = workdir / "mn-addresses.batch", workdir / "ar-neighbours.batch"
    mn_batch.write_text("".join(f"addr add {slot_address(ar, i)}/64 dev {mn_interface} nodad\n" for i in range(count)))
    ar_batch.write_text("".join(f"neigh replace {slot_address(ar, i)} lladdr {mac} dev {ar_interface} nud permanent\n"
                                for i in range(count)))
    testbed.cmd(plan.MN, f"ip -6 -batch {mn_batch}")
    testbed.cmd(ar, f"ip -6 -batch {ar_batch}")


def xfrm_sa_count(testbed: Testbed, node: str) -> int:
    with Xfrm(netns=f"/proc/{testbed.pid(node)}/ns/net") as xfrm:
        return len(xfrm.dump_sas())


class TunedCharon(Charon):
    """The testbed's charon with another number of worker threads (``threads``, 8 in the rendered
    strongswan.conf; charon reserves several for its receiver, sender, scheduler and watcher)."""

    THREADS_LINE = "\tthreads = 8\n"

    def __init__(self, host: Any, node: str, directory: Path, radius: tuple[str, str] | None, tls: bool,
                 interfaces: tuple[str, ...] | None, threads: int) -> None:
        super().__init__(host, node, directory, radius, tls, interfaces)
        self.threads = threads

    def config_files(self) -> dict[Path, str]:
        text = super().config_files()[self.conf_path]
        if self.THREADS_LINE not in text:
            raise RuntimeError("the rendered strongswan.conf no longer sets threads = 8")
        return {self.conf_path: text.replace(self.THREADS_LINE, f"\tthreads = {self.threads}\n")}


class Bench:
    """One baseline (method) on the testbed, its K slots loaded on the MN, and the taps."""

    def __init__(self, testbed: Testbed, workdir: Path, method: str, ar: str, slots: int, capture: bool,
                 links: dict[str, LinkParams], ar_threads: int | None = None) -> None:
        self.testbed, self.method, self.ar = testbed, method, ar
        self.eap = method.startswith("eap-")
        self.access_delay_ns = int(links[plan.ACCESS].delay_ms * 1e6)
        self.aaa_delay_ns = int(links[plan.AR_AAA].delay_ms * 1e6)
        self.baseline = baseline_module.IkeBaseline(testbed, workdir / method, method=method, aaa=self.eap)
        self.taps: dict[str, Tap] = {}
        self.addresses = {slot_address(ar, i): slot_name(i) for i in range(slots)}
        self.radius_sockets = 1
        self.issuers: list[Any] = []
        baseline = self.baseline
        self.baseline.start(warm_up=True)
        try:
            if ar_threads is not None:
                self._restart_ar(ar_threads)
            self._close_baseline_counters()
            self._load_slots(slots)
            # one VICI session per slot: the K initiate requests are all in charon's hands at once
            self.issuers = [baseline.charons[plan.MN].new_session() for _ in range(slots)]
            if capture:
                self.taps["mn"] = Tap(testbed.pid(plan.MN), IKE_PORTS)
                self.taps["ar"] = Tap(testbed.pid(ar), (*IKE_PORTS, RADIUS_PORT))
                if self.eap:
                    self.taps["aaa"] = Tap(testbed.pid(plan.AAA), (RADIUS_PORT,))
        except BaseException:
            self.stop()
            raise

    def _restart_ar(self, threads: int) -> None:
        """The measured AR's charon again, with ``threads`` worker threads (read only at start), and
        its key, secrets and connection loaded again as the baseline loads them."""
        baseline, params = self.baseline, self.baseline.params
        old = baseline.charons[self.ar]
        old.stop()
        charon = TunedCharon(old.host, self.ar, old.directory, old.radius, old.tls, old.interfaces, threads)
        baseline.charons[self.ar] = charon
        charon.start()
        assert charon.session is not None
        for secret in baseline_module.shared_secrets(self.ar, params):
            request(charon.session, "load-shared", secret)
        cert = None
        if params.eap:
            credential = baseline.certificates[self.ar]
            request(charon.session, "load-key", {"type": "any", "data": credential.key_pem})
            cert = credential.cert_pem
        request(charon.session, "load-conn",
                {baseline_module.AR_CONNECTION: baseline_module.ar_connection(self.ar, params, cert)})

    def _close_baseline_counters(self) -> None:
        """The baseline's own packet counters are only read by its attach, which this bench does not
        use: closed, so that the kernel does not copy every IKE and RADIUS packet to them too."""
        baseline = self.baseline
        for counter in [baseline.ike_counter, *baseline.radius_counters.values()]:
            if counter is not None:
                counter.close()
        baseline.ike_counter, baseline.radius_counters = None, {}

    def _load_slots(self, count: int) -> None:
        baseline, params = self.baseline, self.baseline.params
        cert = baseline.certificates[self.ar].cert_pem if params.eap else None
        session = baseline.charons[plan.MN].session
        assert session is not None
        for index in range(count):
            connection = baseline_module.mn_connection(self.ar, params, cert)
            child = connection["children"].pop(baseline_module.mn_connection_name(self.ar))
            connection["children"] = {slot_name(index): child}
            connection["local_addrs"] = [slot_address(self.ar, index)]
            request(session, "load-conn", {slot_name(index): connection})

    def set_radius_sockets(self, sockets: int) -> None:
        """The ARs' eap-radius plugin with ``sockets`` RADIUS sockets: the testbed's strongswan.conf
        with that one line added (1: unchanged), reloaded over VICI (the plugin re-reads its servers)."""
        if sockets == self.radius_sockets:
            return
        for ar in plan.ACCESS_ROUTERS:
            charon = self.baseline.charons[ar]
            text = charon.config_files()[charon.conf_path]
            anchor = "\t\t\t\t\tauth_port = 1812\n"
            if sockets != 1:
                if anchor not in text:
                    raise RuntimeError("the rendered strongswan.conf has no eap-radius server section to extend")
                text = text.replace(anchor, anchor + f"\t\t\t\t\tsockets = {sockets}\n")
            charon.conf_path.write_text(text)
            assert charon.session is not None
            request(charon.session, "reload-settings")
        self.radius_sockets = sockets

    def pids(self) -> dict[str, int | None]:
        charons = self.baseline.charons
        pids = {"mn_charon": charons[plan.MN].pid, "ar_charon": charons[self.ar].pid}
        if self.baseline.radius is not None:
            pids["freeradius"] = self.baseline.radius.pid
        pids["driver"] = os.getpid()
        return pids

    def run_round(self, k: int, timeout_s: float) -> dict[str, Any]:
        baseline = self.baseline
        mn = baseline.charons[plan.MN]
        listener = baseline.listener
        assert mn.session is not None and listener is not None
        names = [slot_name(i) for i in range(k)]
        listener.clear()
        for tap in self.taps.values():
            tap.drain()
            tap.drops()
        log_offset = mn.log_size()
        pids = self.pids()
        cpu_before, stat_before = cpu_times(), proc_stat()
        process_before = {name: process_cpu_ns(pid) for name, pid in pids.items()}
        realtime_minus_monotonic = time.time_ns() - time.monotonic_ns()
        requests = {name: ViciPacket.request("initiate", Message.serialize(
            {"child": name, "ike": name, "timeout": "-1", "init-limits": "no", "loglevel": "-1"})) for name in names}
        sent: dict[str, int] = {}
        # Written back to back on K sessions, above the daemons' priority (charon answers each once
        # its IKE_SA_INIT is out: waiting for that between requests would pace them by the CPU).
        with access_steps.realtime(ISSUE_PRIORITY):
            for name, session in zip(names, self.issuers):
                sent[name] = time.monotonic_ns()
                session.transport.send(requests[name])
            written_ns = time.monotonic_ns()
        refused = {}
        for name, session in zip(names, self.issuers):
            answer = Message.deserialize(ViciPacket.parse(session.transport.receive()).payload)
            if answer.get("success") != b"yes":
                refused[name] = answer.get("errmsg", b"?").decode(errors="replace")
        answered_ns = time.monotonic_ns()
        installed: dict[str, int] = {}
        ike_up: dict[str, int] = {}
        deadline = time.monotonic() + timeout_s
        while len(installed) < k and time.monotonic() < deadline:
            try:
                arrival, kind, message = listener.events.get(timeout=0.2)
            except queue.Empty:
                continue
            if message.get("up") != "yes":
                continue
            for name in names:
                if name in message:
                    (installed if kind == "child-updown" else ike_up).setdefault(name, arrival)
        cpu_after, stat_after = cpu_times(), proc_stat()
        process_after = {name: process_cpu_ns(pid) for name, pid in pids.items()}
        first_sent = min(sent.values())
        end = max(installed.values()) if len(installed) == k else time.monotonic_ns()
        makespan_ns = end - first_sent
        busy = busy_share(cpu_before, cpu_after)
        stat_busy = ((stat_after[0] - stat_before[0]) / (stat_after[1] - stat_before[1])
                     if stat_after[1] > stat_before[1] else None)
        # the CPU the guest spent between the two samples (its one CPU: elapsed less idle)
        busy_ms = 1e3 * max(0.0, (cpu_after[1] - cpu_before[1]) - (cpu_after[0] - cpu_before[0]))
        cpu_ms = {name: ms(process_after[name] - process_before[name]) for name in pids}
        cpu_ms["other"] = max(0.0, busy_ms - sum(cpu_ms.values()))
        window_ms = ms(makespan_ns)
        result: dict[str, Any] = {
            "k": k,
            "completed": len(installed),
            "issue_ms": round(ms(written_ns - first_sent), 3),
            "initiated_ms": round(ms(answered_ns - first_sent), 2),
            "makespan_ms": round(window_ms, 2),
            "per_s": round(len(installed) / (makespan_ns / 1e9), 2) if installed else 0.0,
            "guest_busy": rounded(busy, 3),
            "guest_busy_proc_stat": rounded(stat_busy, 3),
            "busy_ms": round(busy_ms, 2),
            "cpu_ms": {name: round(value, 2) for name, value in cpu_ms.items()},
        }
        if refused:
            result["refused"] = refused
        if len(installed) < k:
            log = mn.log_since(log_offset)
            _, reason = classify_failure(log)
            result["missing"] = [name for name in names if name not in installed]
            result["failure"] = reason
        packets = {role: tap.drain() for role, tap in self.taps.items()}
        result["capture_drops"] = {role: tap.drops() for role, tap in self.taps.items()}
        result.update(self._analyse(names, sent, installed, ike_up, packets, realtime_minus_monotonic))
        self.clean()
        return result

    def _analyse(self, names: list[str], sent: dict[str, int], installed: dict[str, int], ike_up: dict[str, int],
                 packets: dict[str, list[Packet]], realtime_minus_monotonic: int) -> dict[str, Any]:
        slots = {address: name for address, name in self.addresses.items() if name in names}
        at_mn = ike_at_mn(packets.get("mn", []), slots, self.access_delay_ns)
        at_ar = ike_at_ar(packets.get("ar", []), slots, self.access_delay_ns)
        ar_radius = radius_at_ar(packets.get("ar", []), slots) if self.eap else []
        aaa = radius_at_aaa(packets.get("aaa", []), slots, self.aaa_delay_ns) if self.eap else []
        radius_by_slot: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for entry in ar_radius:
            radius_by_slot[entry["slot"]].append(entry)
        aaa_by_slot: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for entry in aaa:
            aaa_by_slot[entry["slot"]].append(entry)
        sessions = []
        for name in names:
            session: dict[str, Any] = {"slot": name, "completed": name in installed}
            if name in installed:
                session["latency_ms"] = round(ms(installed[name] - sent[name]), 3)
                session["start_ms"] = round(ms(sent[name] - min(sent.values())), 3)
            if name in ike_up:
                session["ike_up_ms"] = round(ms(ike_up[name] - sent[name]), 3)
            mn_side = at_mn.get(name)
            if mn_side is not None:
                if mn_side["first_init_ns"] is not None and mn_side["last_auth_response_ns"] is not None:
                    session["wire_ms"] = round(ms(mn_side["last_auth_response_ns"] - mn_side["first_init_ns"]), 3)
                    session["first_packet_after_initiate_ms"] = round(
                        ms(mn_side["first_init_ns"] - realtime_minus_monotonic - sent[name]), 3)
                session.update(ike_exchanges=mn_side["exchanges"], ike_requests=mn_side["requests"],
                               ike_sa_init_requests=mn_side["init_requests"], cookies=mn_side["cookies"])
            ar_side = at_ar.get(name)
            if ar_side is not None:
                session["ar_ms"] = round(ms(sum(done - arrived for _, arrived, done in ar_side["exchanges"])), 3)
            if self.eap:
                requests = sorted(radius_by_slot.get(name, []), key=lambda entry: entry["sent_ns"])
                answered = [entry for entry in requests if entry["answered_ns"] is not None]
                session["radius_requests"] = len(requests)
                session["radius_rtt_ms"] = round(ms(sum(entry["answered_ns"] - entry["sent_ns"] + self.aaa_delay_ns
                                                        for entry in answered)), 3)
                session["aaa_ms"] = round(ms(sum(entry["answered_ns"] - entry["arrived_ns"]
                                                 for entry in aaa_by_slot.get(name, []))), 3)
                # the IKE_AUTH request each Access-Request answers: the slot's latest one before it left
                waits = []
                auth_requests = ar_side["auth_requests_ns"] if ar_side is not None else []
                for entry in requests:
                    left = entry["sent_ns"] - self.aaa_delay_ns
                    before = [arrived for arrived in auth_requests if arrived <= left]
                    if before:
                        waits.append(left - max(before))
                session["ar_radius_wait_ms"] = round(ms(sum(waits)), 3)
            sessions.append(session)
        result: dict[str, Any] = {"sessions": sessions}
        if self.eap:
            result["radius"] = [{"slot": entry["slot"], "code": entry["code"],
                                 "aaa_ms": round(ms(entry["answered_ns"] - entry["arrived_ns"]), 3)} for entry in aaa]
            result["aaa_queue"] = occupancy([(entry["arrived_ns"], entry["answered_ns"]) for entry in aaa])
            result["ar_radius_outstanding"] = occupancy([(entry["sent_ns"], entry["answered_ns"])
                                                         for entry in ar_radius if entry["answered_ns"] is not None])
            result["radius_client_ports"] = len({entry["port"] for entry in ar_radius})
        return result

    def clean(self) -> None:
        """Every IKE_SA on the MN and the AR gone, and the kernels' SAs with them (not measured): the
        MN terminates its IKE_SAs (its DELETEs end the AR's); whatever is left after a while is
        terminated on both sides."""
        nodes = (plan.MN, self.ar)
        self._terminate(plan.MN)
        started = time.monotonic()
        forced = False
        while True:
            left = [node for node in nodes if self.baseline.charons[node].sas()]
            left += [f"{node} kernel" for node in nodes if xfrm_sa_count(self.testbed, node)]
            if not left:
                break
            elapsed = time.monotonic() - started
            if elapsed > CLEANUP_TIMEOUT_S:
                raise RuntimeError(f"SAs left after {CLEANUP_TIMEOUT_S} s: {left}")
            if elapsed > 2.0 and not forced:
                for node in nodes:
                    self._terminate(node)
                forced = True
            time.sleep(0.05)
        if self.baseline.listener is not None:
            self.baseline.listener.clear()
        time.sleep(SETTLE_S)

    def _terminate(self, node: str) -> None:
        charon = self.baseline.charons[node]
        assert charon.session is not None
        for entry in charon.sas():
            for sa in entry.values():
                try:
                    request(charon.session, "terminate", {"ike-id": sa["uniqueid"], "force": "yes",
                                                          "timeout": "-1", "loglevel": "-1"})
                except (CommandException, SessionException):
                    pass  # gone meanwhile (the peer's DELETE)

    def stop(self) -> None:
        for session in self.issuers:
            try:
                session.transport.socket.close()
            except OSError:
                pass
        self.issuers = []
        for tap in self.taps.values():
            tap.close()
        self.taps = {}
        self.baseline.stop()


# --- summaries ------------------------------------------------------------------------------------


def summarize(rounds: list[dict[str, Any]], eap: bool) -> dict[str, Any]:
    """One K's rounds: medians over rounds, latency percentiles over every completion."""
    sessions = [session for entry in rounds for session in entry["sessions"] if session["completed"]]

    def values(key: str) -> list[float]:
        return [session[key] for session in sessions if session.get(key) is not None]

    latency, wire = values("latency_ms"), values("wire_ms")
    completed = sum(entry["completed"] for entry in rounds)
    makespan = sum(entry["makespan_ms"] for entry in rounds)
    summary: dict[str, Any] = {
        "k": rounds[0]["k"],
        "rounds": len(rounds),
        "completed": completed,
        "failed": sum(entry["k"] - entry["completed"] for entry in rounds),
        "per_s_median": rounded(median([entry["per_s"] for entry in rounds])),
        "per_s_pooled": round(completed / (makespan / 1e3), 2) if makespan else None,
        "latency_p50_ms": rounded(percentile(latency, 50), 1),
        "latency_p95_ms": rounded(percentile(latency, 95), 1),
        "latency_max_ms": rounded(max(latency) if latency else None, 1),
        "wire_p50_ms": rounded(percentile(wire, 50), 1),
        "wire_p95_ms": rounded(percentile(wire, 95), 1),
        "ar_ms_p50": rounded(percentile(values("ar_ms"), 50), 1),
        "ike_exchanges_p50": rounded(percentile(values("ike_exchanges"), 50), 1),
        "cookies": sum(session.get("cookies", 0) for session in sessions),
        "retransmissions": sum(max(0, session.get("ike_requests", 0) - session.get("ike_exchanges", 0)
                                   - session.get("cookies", 0)) for session in sessions),
        "guest_busy_median": rounded(median([entry["guest_busy"] for entry in rounds
                                             if entry["guest_busy"] is not None]), 3),
        "guest_busy_proc_stat_median": rounded(median([entry["guest_busy_proc_stat"] for entry in rounds
                                                       if entry["guest_busy_proc_stat"] is not None]), 3),
        "capture_drops": sum(sum(entry.get("capture_drops", {}).values()) for entry in rounds),
    }
    parts = sorted({name for entry in rounds for name in entry["cpu_ms"]})
    summary["cpu_ms_per_completion"] = {
        name: round(sum(entry["cpu_ms"].get(name, 0.0) for entry in rounds) / completed, 2) if completed else None
        for name in parts}
    busy_ms = sum(entry["busy_ms"] for entry in rounds)
    summary["busy_ms_per_completion"] = round(busy_ms / completed, 2) if completed else None
    # what the guest would sustain with its one CPU always busy on this work
    summary["cpu_bound_per_s"] = round(1e3 * completed / busy_ms, 1) if busy_ms else None
    if eap:
        radius = [entry for round_ in rounds for entry in round_.get("radius", [])]
        aaa_all = [entry["aaa_ms"] for entry in radius]
        aaa_accept = [entry["aaa_ms"] for entry in radius if entry["code"] == ACCESS_ACCEPT]
        shares = [session["aaa_ms"] / session["latency_ms"] for session in sessions
                  if session.get("aaa_ms") is not None and session.get("latency_ms")]
        ar_waits = [session["ar_radius_wait_ms"] / session["latency_ms"] for session in sessions
                    if session.get("ar_radius_wait_ms") is not None and session.get("latency_ms")]
        summary.update({
            "radius_requests_p50": rounded(percentile(values("radius_requests"), 50), 1),
            "aaa_request_p50_ms": rounded(percentile(aaa_all, 50), 2),
            "aaa_request_p95_ms": rounded(percentile(aaa_all, 95), 2),
            "aaa_accept_p50_ms": rounded(percentile(aaa_accept, 50), 2),
            "aaa_per_auth_p50_ms": rounded(percentile(values("aaa_ms"), 50), 1),
            "radius_rtt_per_auth_p50_ms": rounded(percentile(values("radius_rtt_ms"), 50), 1),
            "ar_radius_wait_per_auth_p50_ms": rounded(percentile(values("ar_radius_wait_ms"), 50), 1),
            "aaa_share_p50": rounded(percentile(shares, 50), 3),
            "ar_radius_wait_share_p50": rounded(percentile(ar_waits, 50), 3),
            "aaa_queue_mean": rounded(median([entry["aaa_queue"]["mean"] for entry in rounds]), 2),
            "aaa_queue_max": max((entry["aaa_queue"]["max"] for entry in rounds), default=0),
            "ar_radius_outstanding_max": max((entry["ar_radius_outstanding"]["max"] for entry in rounds), default=0),
            "radius_client_ports": max((entry["radius_client_ports"] for entry in rounds), default=0),
        })
    return summary


def print_table(label: str, summaries: list[dict[str, Any]], eap: bool) -> None:
    print(f"\n{label}")
    head = (f"{'K':>3} {'ok':>4} {'fail':>4} {'done/s':>7} {'pooled':>7} {'lat p50':>8} {'p95':>7} {'wire p50':>8} "
            f"{'AR p50':>7} {'busy':>5} {'cpu/auth':>8}  cpu ms/auth mn/ar/aaa/drv/other")
    print(head)
    for s in summaries:
        cpu = s["cpu_ms_per_completion"]
        split = "/".join(f"{cpu.get(name, 0) or 0:.1f}" for name in ("mn_charon", "ar_charon", "freeradius",
                                                                     "driver", "other"))
        print(f"{s['k']:>3} {s['completed']:>4} {s['failed']:>4} {s['per_s_median'] or 0:>7.1f} "
              f"{s['per_s_pooled'] or 0:>7.1f} {s['latency_p50_ms'] or 0:>8.1f} {s['latency_p95_ms'] or 0:>7.1f} "
              f"{s['wire_p50_ms'] or 0:>8.1f} {s['ar_ms_p50'] or 0:>7.1f} {s['guest_busy_median'] or 0:>5.2f} "
              f"{s['busy_ms_per_completion'] or 0:>8.1f}  {split}")
    if eap:
        print(f"{'K':>3} {'RADIUS':>6} {'AAA/req p50':>11} {'p95':>6} {'Accept p50':>10} {'AAA/auth':>8} "
              f"{'RTT/auth':>8} {'AR wait':>7} {'AAA share':>9} {'AR-wait share':>13} {'AAA queue mean/max':>18} "
              f"{'AR outst.':>9}")
        for s in summaries:
            print(f"{s['k']:>3} {s['radius_requests_p50'] or 0:>6.0f} {s['aaa_request_p50_ms'] or 0:>11.2f} "
                  f"{s['aaa_request_p95_ms'] or 0:>6.2f} {s['aaa_accept_p50_ms'] or 0:>10.2f} "
                  f"{s['aaa_per_auth_p50_ms'] or 0:>8.1f} {s['radius_rtt_per_auth_p50_ms'] or 0:>8.1f} "
                  f"{s['ar_radius_wait_per_auth_p50_ms'] or 0:>7.1f} {s['aaa_share_p50'] or 0:>9.2f} "
                  f"{s['ar_radius_wait_share_p50'] or 0:>13.2f} "
                  f"{s['aaa_queue_mean'] or 0:>12.2f}/{s['aaa_queue_max']:<5} {s['ar_radius_outstanding_max']:>9}")


def verdict(summaries: list[dict[str, Any]]) -> str:
    """Where a completion's time goes as K grows: the first K at which FreeRADIUS's own time (its
    queue and service, summed over the authentication's Access-Requests), or the AR's wait before
    each Access-Request leaves, is over half the median latency."""
    found = []
    for key, what in (("aaa_share_p50", "the AAA's time"), ("ar_radius_wait_share_p50", "the AR's wait to send")):
        first = next((s for s in summaries if (s.get(key) or 0) > 0.5), None)
        found.append(f"{what} is over half the latency from K={first['k']}" if first is not None
                     else f"{what} stays under half the latency")
    shares = "; ".join(f"K={s['k']}: AAA {s.get('aaa_share_p50')}, AR wait {s.get('ar_radius_wait_share_p50')}"
                       for s in summaries)
    return f"{'; '.join(found)} (median shares {shares})"


def git_state() -> dict[str, Any]:
    def git(*arguments: str) -> str:
        try:
            return subprocess.run(["git", "-C", REPO, *arguments], capture_output=True, text=True,
                                  timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""
    return {"revision": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain"))}


def integers(text: str) -> list[int]:
    values = [int(value) for value in text.split(",") if value.strip()]
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"a comma-separated list of positive integers, not {text!r}")
    return values


def run_pass(bench: Bench, sockets: int, args: argparse.Namespace, started_wall: float) -> dict[str, Any]:
    """One configuration: a warm-up round at the largest K, then ``args.rounds`` rounds of each K,
    alternating; its table printed. A round that raises ends the pass, with what was measured kept."""
    eap = bench.eap
    label = bench.method + (f", {sockets} RADIUS socket{'s' if sockets > 1 else ''} per AR" if eap else "")
    if args.ar_threads is not None:
        label += f", AR charon {args.ar_threads} threads"
    rounds: dict[int, list[dict[str, Any]]] = {k: [] for k in args.ks}
    entry: dict[str, Any] = {"method": bench.method, "radius_sockets": sockets if eap else None, "label": label}
    try:
        bench.set_radius_sockets(sockets)
        entry["warm_up"] = bench.run_round(max(args.ks), args.round_timeout_s)
        for index in range(args.rounds):
            if time.monotonic() - started_wall > args.budget_s:
                print(f"  budget of {args.budget_s:.0f} s reached: no more rounds", flush=True)
                entry["budget_reached"] = True
                break
            for k in args.ks:
                result = bench.run_round(k, args.round_timeout_s)
                rounds[k].append(result)
                lost = (f", {k - result['completed']} FAILED ({result.get('failure')})"
                        if result["completed"] < k else "")
                print(f"  {label}: round {index + 1} K={k}: {result['per_s']}/s, makespan "
                      f"{result['makespan_ms']:.0f} ms, busy {result['guest_busy']}{lost}", flush=True)
    except Exception as error:  # kept in the record, with the rounds before it
        entry["error"] = f"{type(error).__name__}: {error}"
        print(f"  {label}: stopped: {entry['error']}", flush=True)
    summaries = [summarize(rounds[k], eap) for k in args.ks if rounds[k]]
    entry.update(summaries=summaries, rounds={str(k): value for k, value in rounds.items()})
    if eap and summaries and not args.no_capture:
        entry["verdict"] = verdict(summaries)
    print_table(label, summaries, eap and not args.no_capture)
    if entry.get("verdict"):
        print(f"  {entry['verdict']}")
    return entry


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--ks", type=integers, default=[1, 2, 4, 8, 16], help="re-authentications at once")
    parser.add_argument("--rounds", type=int, default=5, help="rounds per K (alternating over the K values)")
    parser.add_argument("--methods", default="eap-mschapv2,psk", help=f"from {', '.join(METHODS)}")
    parser.add_argument("--radius-sockets", type=integers, default=[1, 16],
                        help="EAP: the ARs' RADIUS sockets, one pass each (1: the testbed's configuration)")
    parser.add_argument("--ar-threads", type=int, default=None,
                        help="the measured AR's charon with this many worker threads (default: the testbed's 8)")
    parser.add_argument("--access-delay-ms", type=float, default=None, help="default: the default scenario's")
    parser.add_argument("--ar-aaa-delay-ms", type=float, default=None, help="default: the default scenario's")
    parser.add_argument("--round-timeout-s", type=float, default=30.0)
    parser.add_argument("--budget-s", type=float, default=480.0,
                        help="no new round starts after this long (the run stays under the guest's time)")
    parser.add_argument("--no-capture", action="store_true", help="no packet taps (no per-step figures)")
    parser.add_argument("--keep", action="store_true", help="keep the daemons' directory (logs, configuration)")
    args = parser.parse_args()
    methods = [method.strip() for method in args.methods.split(",") if method.strip()]
    unknown = [method for method in methods if method not in METHODS]
    if unknown:
        parser.error(f"unknown methods {unknown}; choose from {METHODS}")
    started_wall = time.monotonic()
    links = dict(config.load(None).links)
    if args.access_delay_ms is not None:
        links[plan.ACCESS] = dataclasses.replace(links[plan.ACCESS], delay_ms=args.access_delay_ms)
    if args.ar_aaa_delay_ms is not None:
        links[plan.AR_AAA] = dataclasses.replace(links[plan.AR_AAA], delay_ms=args.ar_aaa_delay_ms)
    started = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    report: dict[str, Any] = {
        "kernel": platform.release(), "python": platform.python_version(), "started": started,
        "git": git_state(), "arguments": {key: value for key, value in vars(args).items()},
        "links": {name: dataclasses.asdict(value) for name, value in links.items()},
        "passes": [],
    }
    raise_agent_priority()  # as the scenario runner: the daemons it starts inherit it
    workdir = Path(tempfile.mkdtemp(prefix="reauth-cap-"))
    ar = plan.PAR
    slots = max(args.ks)
    status = 0
    try:
        with Testbed(links, initial_ar=ar) as testbed:
            add_slot_addresses(testbed, ar, slots, workdir)
            print(f"network up, {slots} care-of addresses on the MN ({time.monotonic() - started_wall:.0f} s)",
                  flush=True)
            for method in methods:
                eap = method.startswith("eap-")
                if time.monotonic() - started_wall > args.budget_s:
                    print(f"{method}: skipped, the budget of {args.budget_s:.0f} s is spent", flush=True)
                    report["skipped"] = [*report.get("skipped", []), method]
                    continue
                try:
                    bench = Bench(testbed, workdir, method, ar, slots, not args.no_capture, links, args.ar_threads)
                except Exception as error:  # reported; the next method still runs
                    print(f"{method}: the daemons did not start: {error}", flush=True)
                    report["passes"].append({"method": method, "error": f"{type(error).__name__}: {error}"})
                    status = 1
                    continue
                try:
                    print(f"{method}: daemons up ({time.monotonic() - started_wall:.0f} s)", flush=True)
                    for sockets in (args.radius_sockets if eap else [1]):
                        entry = run_pass(bench, sockets, args, started_wall)
                        report["passes"].append(entry)
                        if entry.get("error") or any(s["failed"] for s in entry["summaries"]):
                            status = 1
                        if entry.get("error"):
                            break  # the daemons' state is unknown: the next method starts its own
                finally:
                    bench.stop()
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"daemons' files kept in {workdir}")
        report["wall_s"] = round(time.monotonic() - started_wall, 1)
        directory = os.path.join(REPO, "results", "bench")
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, f"reauth-capacity-{started.replace(':', '').replace('-', '')}.json")
        with open(path, "w") as out:
            json.dump(report, out, indent=1)
        print(f"written: {os.path.relpath(path, REPO)} ({report['wall_s']:.0f} s)")
    return status


if __name__ == "__main__":
    sys.exit(main())
