"""CXTP's trust boundary, attacked from hosts that are not access routers.

Every attack that worked on the old code runs here for real, in the testbed's kernel, from a
namespace that is not an AR: the HA's, an intruder added on the AR-AR segment (``eve``: one
macvlan on each AR's end of the par-nar link, in a namespace of its own), and the MN's; with
spoofed sources where the kernel lets a host forge them (AF_PACKET frames on a link the host is
on, raw IPv6 with the header included). Messages are built with the project's own codec
(:mod:`cxtp.messages`), packets with scapy. For each attack the test asserts that it was

* refused and counted: by the engine (the AR agent's ``counters`` command: engine counters and
  what each transport dropped) or, before any of our code runs, by the kernel (``xfrm_stat``:
  CXTP between ARs only under ESP; ``snmp6``: a CTAR that arrived on another interface);
* without effect: no SA, policy or key changed on any node (SPIs, selectors, templates, keys and
  priorities compared before and after; byte counters move with the probes and are left out);
* without leak: tcpdump on every node (packets each node transmits, ``-Q out``, so every packet
  on every link once, without the clear copies that tunnel decapsulation re-injects) sees no key
  (the CXTP keys, every SA key of every node) and no CXTP between ARs in clear;
* without harm: every agent alive with its PID, and a legitimate handover of each CXTP method
  succeeding right after, through the runner's own :func:`scenarios.runner.run.run_handover`.

Then: the ICMPv6 bypasses let through only what signalling needs, and a capture on the access
links across one handover of each method shows no packet of the protected flow in clear.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
import re
import select
import signal
import socket
import statistics
import struct
import subprocess
import threading
import time
from pathlib import Path

import pytest

# Imported before any traffic starts: loading scapy takes seconds in the guest.
from scapy.layers.inet import TCP
from scapy.layers.inet6 import IPv6, IPv6ExtHdrFragment
from scapy.layers.l2 import Ether
from scapy.layers.sctp import SCTP, SCTPChunkData
from scapy.packet import NoPayload, Raw
from scapy.utils import rdpcap

import cxtp
from cxtp import CTAR, CTC, CTD, CTDR, PCTD, ContextDataBlock, CTReq, StatusEntry
from cxtp.icmp import wrap
from cxtp.options import Options
from ipsec import IPSEC_CONTEXT_FPT, Xfrm, install_context, remove_context
from nodes import netns, operator_policy, provisioning
from nodes.agent import read_trace
from nodes.contracts import ArControl, MnControl
from nodes.cxtp_transport import SctpTransport, TcpTransport
from scenarios import config
from scenarios.records import HandoverRecord
from scenarios.runner import methods
from scenarios.runner.experiment import Experiment, pause
from scenarios.runner.run import run_handover, warm_up_crypto
from topo import plan
from topo.network import LinkParams, Testbed

pytestmark = pytest.mark.kernel

# The default scenario's timers, derived from the network (never tuned to a quiet machine).
SCENARIO = config.from_dict({"settle_ms": 200})
LINKS = {plan.ACCESS: LinkParams(delay_ms=2.0), plan.AR_AR: LinkParams(delay_ms=5.0),
         plan.AR_HA: LinkParams(delay_ms=10.0), plan.AR_AAA: LinkParams(delay_ms=10.0)}
L2_DELAY_MS = 50.0
CXTP_METHODS = ("cxtp-predictive", "cxtp-reactive", "cxtp-network")
#: the intruder on the AR-AR segment
EVE_ADDRESS = "2001:db8:12::66"
#: the attacker's own token key, and the SPIs of the SAs it tries to have installed
ATTACK_KEY = bytes(range(0xA0, 0xB4))
#: a binding (cxtp/options.py) the attacker makes up for its CTARs: without one an nAR refuses a
#: CTAR at once; with it the nAR, which cannot check it, asks the pAR, which refuses it
MADE_UP_BINDING = Options(binding=bytes(range(16))).blocks()
ATTACK_SPIS = (0xBAD1, 0xBAD2)
IPPROTO_SCTP, IPPROTO_RAW = 132, 255
ETH_P_IPV6 = 0x86DD
CXTP_PORT = 5091
#: kernel counters of CXTP refused for want of ESP (an IN policy with a template, no SA used)
ESP_REFUSALS = ("XfrmInTmplMismatch", "XfrmInNoStates", "XfrmInPolBlock", "XfrmInNoPols")
#: a control ping must come back within this even right after an attack
PING_LIMIT_MS = 100.0
#: probes per second each way: the attacks need traffic, not a measurement; the flow test below
#: runs its own testbed at the scenarios' rate (500 per second: at 1000 the guest's one CPU is
#: saturated, and a capture that keeps up starves the agents, or one that does not loses packets,
#: and then "no probe in clear" would prove nothing)
ATTACK_PROBE_RATE = 200.0
FLOW_PROBE_RATE = config.load(None).probe_rate
#: handovers the protected-flow test may repeat when a capture lost packets under a loaded host
CAPTURE_ATTEMPTS = 3


def _sh(command: str, check: bool = True) -> str:
    """Set-up and clean-up only (a process start costs up to 300 ms in the guest)."""
    result = subprocess.run(command, shell=True, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(f"`{command}` failed ({result.returncode}): {result.stderr.strip()}")
    return result.stdout


# -- the intruder on the AR-AR segment --------------------------------------------------------------

class Intruder:
    """A host on the par-nar segment that is not an AR: namespace ``tbadv<pid>-eve`` with a macvlan
    on each AR's end of the link (a macvlan on the pAR's end reaches the nAR, and the other way
    round), address ``EVE_ADDRESS`` on both, a host route to each AR's link address through the
    macvlan that reaches it. Removed by name (deleting the namespace deletes its macvlans)."""

    def __init__(self, testbed: Testbed) -> None:
        self.testbed = testbed
        self.namespace = f"tbadv{os.getpid()}-eve"
        self.interfaces: dict[str, str] = {}  # AR -> the intruder's interface that reaches it
        _sh("modprobe macvlan", check=False)  # built in, or loaded on demand by `ip link add`
        _sh(f"ip netns add {self.namespace}")
        try:
            _sh(f"ip -n {self.namespace} link set lo up && ip netns exec {self.namespace} sysctl -qw "
                "net.ipv6.conf.all.accept_dad=0 net.ipv6.conf.default.accept_dad=0")
            for lower_ar, reached in ((plan.PAR, plan.NAR), (plan.NAR, plan.PAR)):
                name = f"eve-{reached}"
                self._add_macvlan(lower_ar, name)
                _sh(f"ip -n {self.namespace} link set {name} up && "
                    f"ip -n {self.namespace} -6 addr add {EVE_ADDRESS}/64 dev {name} nodad noprefixroute && "
                    f"ip -n {self.namespace} -6 route add {plan.AR_LINK_ADDRESS[reached]}/128 dev {name}")
                self.interfaces[reached] = name
            # neighbour discovery once, at set-up: an attack's first packet leaves at once
            for ar in plan.ACCESS_ROUTERS:
                _sh(f"ip netns exec {self.namespace} ping -6 -c 1 -W 3 {plan.AR_LINK_ADDRESS[ar]}", check=False)
        except BaseException:
            self.remove()
            raise

    def _add_macvlan(self, ar: str, name: str) -> None:
        lower = plan.LINKS_BY_NAME["par-nar"].interface(ar)
        namespace_fd = os.open(netns.namespace_path(self.namespace), os.O_RDONLY)
        try:
            ipr = netns.iproute_in(self.testbed.pid(ar))
            try:
                ipr.link("add", ifname=name, kind="macvlan", link=ipr.link_lookup(ifname=lower)[0],
                         macvlan_mode="bridge")
                ipr.link("set", index=ipr.link_lookup(ifname=name)[0], net_ns_fd=namespace_fd)
            finally:
                ipr.close()
        finally:
            os.close(namespace_fd)

    def mac(self, reached: str) -> str:
        ipr = netns.iproute_in(self.namespace)
        try:
            return ipr.get_links(ipr.link_lookup(ifname=self.interfaces[reached])[0])[0].get_attr("IFLA_ADDRESS")
        finally:
            ipr.close()

    def remove(self) -> None:
        _sh(f"ip netns del {self.namespace}", check=False)
        for ar in plan.ACCESS_ROUTERS:  # a macvlan that never left its AR's namespace
            self.testbed.cmd(ar, "ip link del eve-par 2>/dev/null; ip link del eve-nar 2>/dev/null; true",
                             check=False)


# -- the testbed, as the runner runs it --------------------------------------------------------------

@dataclasses.dataclass
class Bed:
    experiment: Experiment
    intruder: Intruder | None
    directory: Path
    #: every CXTP key handed out (by the runner or by a test): none may appear on a link
    cxtp_keys: list[bytes] = dataclasses.field(default_factory=list)

    @property
    def testbed(self) -> Testbed:
        return self.experiment.testbed

    @property
    def current(self) -> str:
        current = self.testbed.current_ar
        assert current is not None  # the MN is attached while the testbed runs
        return current

    @property
    def other(self) -> str:
        return self.testbed.other_ar()

    @property
    def mn_address(self) -> str:
        return self.experiment.mn_address

    def counters(self, ar: str) -> dict[str, int]:
        reply = self.experiment.ar(ar).counters()
        return {f"{part}.{name}": value for part in ("engine", "icmp", "ar") for name, value in reply[part].items()}

    def arm_key(self) -> bytes:
        """A fresh CXTP key at the MN and its AR, as the runner gives before a handover: the AR can
        authorise a transfer of the MN's context from now on, the state an attacker wants."""
        key = os.urandom(20)
        self.experiment.mn.set_key(key=key.hex())
        self.experiment.ar(self.current).set_mn_key(mn=self.mn_address, key=key.hex())
        return key


@contextlib.contextmanager
def _running_bed(run_dir: Path, probe_rate: float, intruder: bool):
    """The testbed and its agents as the runner starts them, under the static tunnel, warmed up."""
    with Testbed(LINKS) as testbed:
        warm_up_crypto(testbed, "aes-cbc-sha256")
        experiment = Experiment(testbed, run_dir, probe_rate=probe_rate,
                                timers=SCENARIO.cxtp_timers(testbed.link_params))
        eve = None
        keys_sent: dict = {}
        try:
            eve = Intruder(testbed) if intruder else None
            result = Bed(experiment, eve, run_dir)
            # the keys the runner hands out, seen where the typed clients send them
            for contract, name in ((MnControl, "set_key"), (ArControl, "set_mn_key")):
                send = keys_sent[contract, name] = getattr(contract, name)
                setattr(contract, name, _keeping_keys(send, result.cxtp_keys))
            experiment.enter(methods.STATIC_TUNNEL)
            pause(300)
            # Warm-up, as a run's warm-up handovers: the AR-AR association's set-up (with both ARs
            # often starting one at once) and the kernel's first-use costs are paid here, before
            # the tests judge anything (a running network has paid them long ago).
            for name in CXTP_METHODS:
                _handover(result, name)
            yield result
        finally:
            for (contract, name), send in keys_sent.items():
                setattr(contract, name, send)
            if eve is not None:
                eve.remove()
            experiment.stop()


def _keeping_keys(send, keys: list[bytes]):
    def sending(client, **arguments):
        keys.append(bytes.fromhex(arguments["key"]))
        return send(client, **arguments)
    return sending


@pytest.fixture(scope="module")
def bed(tmp_path_factory):
    """For the attacks: a lighter probe stream (the guest has one CPU, shared with five captures),
    and the intruder on the AR-AR segment."""
    with _running_bed(tmp_path_factory.mktemp("adversarial"), ATTACK_PROBE_RATE, intruder=True) as result:
        yield result


@pytest.fixture(autouse=True)
def _sane(request):
    """Each test starts with the MN attached and idle, under the static tunnel: if an earlier test
    left it elsewhere (a failure half way), the runner's own recovery puts it back."""
    if "bed" not in request.fixturenames:
        yield
        return
    bed = request.getfixturevalue("bed")
    experiment = bed.experiment
    # the MN's interface to the other AR is down (a test may have left it up, on the nAR's link)
    _set_link(bed, plan.LINKS_BY_NAME[plan.ACCESS_LINK[bed.other]].interface(plan.MN), up=False)
    status = experiment.mn.status()
    if (not status["idle"] or experiment.security != methods.STATIC_TUNNEL
            or any(not agent.alive for agent in experiment.agents.values())):
        experiment.recover(methods.STATIC_TUNNEL)
    yield


def _handover(bed: Bed, method) -> HandoverRecord:
    timers = bed.experiment.timers
    if isinstance(method, str):
        method = methods.get(method)
    return run_handover(bed.experiment, method, L2_DELAY_MS, SCENARIO,
                        timers["release_hold"] + timers["late_ctdr_grace"])


def _assert_ok(record: HandoverRecord) -> None:
    assert record.outcome == "ok", (record.method, (record.failure.reason if record.failure else None),
                                       record.transfer_failure)


def _legitimate_handovers(bed: Bed) -> list[HandoverRecord]:
    """Right after an attack: one handover of each CXTP method, each must be ``ok``."""
    records = []
    for name in CXTP_METHODS:
        record = _handover(bed, name)
        _assert_ok(record)
        records.append(record)
    return records


# -- what the kernels hold ---------------------------------------------------------------------------

def _xfrm_dump(target) -> tuple[list, list]:
    with netns.entered(target):
        xfrm = Xfrm()
    try:
        return xfrm.dump_sas(), xfrm.dump_policies()
    finally:
        xfrm.close()


def _xfrm_identity(target) -> tuple[frozenset, frozenset]:
    """Everything an attack could change: SAs (addresses, SPI, mode, reqid, algorithms and keys,
    selector, limits) and policies (selector, direction, action, priority, templates, index).
    Not the byte, packet and replay counters, which the probes move."""
    sas, policies = _xfrm_dump(target)
    sa_rows = frozenset((sa.daddr, sa.saddr, sa.spi, sa.proto, sa.mode, sa.reqid, sa.flags,
                         tuple((a.kind, a.name, a.key, a.bits) for a in sa.algorithms),
                         repr(sa.selector), repr(sa.lifetime), repr(sa.mark), sa.if_id) for sa in sas)
    policy_rows = frozenset((p.dir, p.action, p.priority, p.index, repr(p.selector), repr(p.templates),
                             repr(p.mark), p.if_id) for p in policies)
    return sa_rows, policy_rows


def _keys_held(target) -> set[bytes]:
    sas, _ = _xfrm_dump(target)
    return {a.key for sa in sas for a in sa.algorithms if a.key}


def _proc(testbed: Testbed, node: str, name: str) -> dict[str, int]:
    text = Path(f"/proc/{testbed.pid(node)}/net/{name}").read_text()
    return {key: int(value) for key, value in (line.split() for line in text.splitlines() if line.strip())}


def _delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {key: after[key] - before.get(key, 0) for key in after if after[key] != before.get(key, 0)}


NODES = (plan.MN, plan.PAR, plan.NAR, plan.HA)


# -- captures ----------------------------------------------------------------------------------------

class Capture:
    """tcpdump of what one namespace transmits (``-Q out``, every interface): each packet on each
    link is seen once, at its sender, and the clear copies that tunnel decapsulation re-injects
    (inbound) never are. Stopped by its PID."""

    def __init__(self, prefix: list[str], popen, name: str, path: Path, expression: str,
                 interface: str = "any") -> None:
        self.name, self.path = name, path
        # -Z root: Debian's tcpdump would drop to user tcpdump before opening the file; immediate
        # mode and a large buffer keep up in the guest; blocks written at once (see the Wireshark test)
        self.process = popen([*prefix, "tcpdump", "-n", "-i", interface, "-Q", "out", "--immediate-mode", "-B", "8192",
                              "-Z", "root", "-s", "0", "-w", str(path), expression],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        lines = []
        for _ in range(4):  # readiness: "listening on ..."
            line = self.process.stderr.readline().decode(errors="replace")
            lines.append(line)
            if "listening on" in line or not line:
                break
        if not any("listening on" in line for line in lines):
            self.stop()
            raise AssertionError(f"tcpdump in {name} did not start: {''.join(lines)}")

    def stop(self) -> str:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            _, error = self.process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            _, error = self.process.communicate()
        return error.decode(errors="replace")

    def packets(self) -> list:
        return list(rdpcap(str(self.path))) if self.path.exists() and self.path.stat().st_size else []


def _capture_drops(report: str) -> int:
    """Packets tcpdump's kernel ring lost, from its closing report (absent: taken as lost)."""
    dropped = re.search(r"(\d+) packets? dropped by kernel", report)
    return int(dropped.group(1)) if dropped else -1


def _start_captures(bed: Bed, directory: Path, expression: str, nodes=NODES, intruder: bool = True) -> list[Capture]:
    captures = []
    try:
        for node in nodes:
            captures.append(Capture([], bed.testbed.host(node).popen, node, directory / f"{node}.pcap", expression))
        if intruder:
            assert bed.intruder is not None  # asked for where the bed has one
            captures.append(Capture(["ip", "netns", "exec", bed.intruder.namespace], subprocess.Popen, "eve",
                                    directory / "eve.pcap", expression))
    except BaseException:
        for capture in captures:
            capture.stop()
        raise
    return captures


#: chunks that exist only in an association being set up or running: in clear, an AR answered
SCTP_ASSOCIATION_CHUNKS = {2: "INIT ACK", 3: "SACK", 5: "HEARTBEAT ACK", 10: "COOKIE ECHO", 11: "COOKIE ACK"}


def _sctp_chunks(packet):
    chunk = packet[SCTP].payload
    while chunk is not None and not isinstance(chunk, NoPayload) and hasattr(chunk, "type"):
        yield chunk
        chunk = chunk.payload


def _forged_data(data: bytes, attacker_payloads: set[bytes]) -> bool:
    return data in attacker_payloads or any(payload.startswith(data) for payload in attacker_payloads if data)


def _clear_cxtp(packet, attacker_payloads: set[bytes], ar_addresses: set[str]) -> str | None:
    """What is wrong with a clear packet on the CXTP port, or None. ARs speak CXTP to each other
    only in ESP, so in clear there may only be an attacker's own attempts: its forged DATA chunks
    (whatever source they claim), and what its sockets send on their own (INIT, ABORT, SHUTDOWN);
    never an AR's packet, an association being set up, or a CXTP message that is not forged."""
    source = packet[IPv6].src
    if SCTP in packet:
        sctp = packet[SCTP]
        if CXTP_PORT not in (sctp.sport, sctp.dport):
            return None
        chunks = list(_sctp_chunks(packet))
        if chunks and all(isinstance(c, SCTPChunkData) and _forged_data(bytes(c.data), attacker_payloads)
                          for c in chunks):
            return None  # the attacker's forgery (or the first fragment of one)
        for chunk in chunks:
            if isinstance(chunk, SCTPChunkData):
                return "a CXTP message in clear"
            if chunk.type in SCTP_ASSOCIATION_CHUNKS:
                return f"SCTP {SCTP_ASSOCIATION_CHUNKS[chunk.type]} in clear"
        return "an AR's SCTP in clear" if source in ar_addresses else None
    if TCP in packet and CXTP_PORT in (packet[TCP].sport, packet[TCP].dport):
        payload = bytes(packet[TCP].payload)
        if payload and payload in attacker_payloads:
            return None
        flags = str(packet[TCP].flags)
        if "S" in flags and "A" in flags:
            return "a TCP connection accepted in clear"
        if payload:
            return "a CXTP message in clear over TCP"
        return "an AR's TCP in clear" if source in ar_addresses else None
    return None


def _ar_addresses() -> set[str]:
    addresses = set(plan.AR_ACCESS_ADDRESS.values())
    for link in plan.LINKS:
        for node in (link.a, link.b):
            if node in plan.ACCESS_ROUTERS and (address := link.address_of(node)):
                addresses.add(address)
    return addresses


# -- one attack, watched ----------------------------------------------------------------------------

class Watch:
    """Everything an attack must leave as it found it, and the evidence that it was refused."""

    def __init__(self, bed: Bed, directory: Path) -> None:
        self.bed = bed
        self.directory = directory
        self.attacker_payloads: set[bytes] = set()
        self.captures = _start_captures(bed, directory, "not ip6 proto 50 and not udp port 40000")
        try:
            experiment = bed.experiment
            self.pids = {name: agent.pid for name, agent in experiment.agents.items()}
            self.keys = set().union(*(_keys_held(bed.testbed.pid(node)) for node in NODES))
            self.state = self.snapshot()
            self.counters = {ar: bed.counters(ar) for ar in plan.ACCESS_ROUTERS}
            self.mn_counters = bed.experiment.mn.status()["engine"]
            self.xfrm_stat = {node: _proc(bed.testbed, node, "xfrm_stat") for node in NODES}
            self.snmp6 = {node: _proc(bed.testbed, node, "snmp6") for node in NODES}
            self.started_ns = time.monotonic_ns()
        except BaseException:
            self.close()
            raise

    def snapshot(self) -> dict:
        return {node: _xfrm_identity(self.bed.testbed.pid(node)) for node in NODES}

    def assert_unchanged(self, since: dict | None = None) -> None:
        before, after = since or self.state, self.snapshot()
        for node in NODES:
            for label, old, new in (("SA", before[node][0], after[node][0]),
                                    ("policy", before[node][1], after[node][1])):
                assert old == new, (f"{node}: {label}s changed: gone {sorted(old - new, key=str)}, "
                                    f"new {sorted(new - old, key=str)}")

    def counted(self, ar: str) -> dict[str, int]:
        return _delta(self.bed.counters(ar), self.counters[ar])

    def kernel(self, node: str, name: str = "xfrm_stat") -> dict[str, int]:
        before = self.xfrm_stat if name == "xfrm_stat" else self.snmp6
        return _delta(_proc(self.bed.testbed, node, name), before[node])

    def esp_refusals(self, node: str | None = None) -> int:
        """CXTP the kernel refused for want of ESP at ``node`` (both ARs by default: what is sent
        to one AR's link address through the other is refused where it would be forwarded)."""
        nodes = (node,) if node else plan.ACCESS_ROUTERS
        return sum(self.kernel(n).get(name, 0) for n in nodes for name in ESP_REFUSALS)

    def forged(self, payload: bytes) -> bytes:
        """Remember an attacker's payload: it may appear in clear (the attacker sent it)."""
        self.attacker_payloads.add(payload)
        return payload

    def close(self) -> list[str]:
        return [capture.stop() for capture in self.captures]

    def finish(self) -> None:
        """Stop the captures and check them; the agents are the ones that started."""
        self.close()
        keys = (self.keys | set(self.bed.cxtp_keys)
                | set().union(*(_keys_held(self.bed.testbed.pid(n)) for n in NODES)))
        keys.discard(ATTACK_KEY)
        ars = _ar_addresses()
        problems = []
        self.captured = {capture.name: capture.packets() for capture in self.captures}
        for capture in self.captures:
            for packet in self.captured[capture.name]:
                raw = bytes(packet)
                for key in keys:
                    if key in raw:
                        problems.append(f"{capture.name}: key material in clear: {packet.summary()}")
                if IPv6 in packet:
                    wrong = _clear_cxtp(packet, self.attacker_payloads, ars)
                    if wrong:
                        problems.append(f"{capture.name}: {wrong}: {packet.summary()}")
        assert not problems, problems[:10]
        experiment = self.bed.experiment
        now = {name: agent.pid for name, agent in experiment.agents.items()}
        assert now == self.pids and all(agent.alive for agent in experiment.agents.values()), (self.pids, now)


@contextlib.contextmanager
def watched(bed: Bed, name: str):
    directory = bed.directory / name
    directory.mkdir(parents=True, exist_ok=True)
    watch = Watch(bed, directory)
    try:
        yield watch
    except BaseException:
        watch.close()
        raise
    watch.finish()


# -- sending as an attacker -------------------------------------------------------------------------

def _send_frames(target, interface: str, frames: list[bytes]) -> None:
    """Frames as they are, on a link the host is on: any source address (AF_PACKET)."""
    sock = netns.socket_in(target, socket.AF_PACKET, socket.SOCK_RAW, 0)
    try:
        sock.bind((interface, 0))
        for frame in frames:
            sock.send(frame)
    finally:
        sock.close()


def _send_ip(target, packets: list) -> None:
    """IPv6 packets with their own header (IPPROTO_RAW: header included), any source address."""
    sock = netns.socket_in(target, socket.AF_INET6, socket.SOCK_RAW, IPPROTO_RAW)
    try:
        for packet in packets:
            sock.sendto(bytes(packet), (packet[IPv6].dst, 0))
    finally:
        sock.close()


@contextlib.contextmanager
def _sctp_attempt(target, destination: str, payload: bytes, bind: str | None = None):
    """What an AR does, from a host that is not one: a CXTP message on an SCTP socket to port 5091
    (the association is set up on first use). Kept open for the block, then closed."""
    sock = netns.socket_in(target, socket.AF_INET6, socket.SOCK_SEQPACKET, IPPROTO_SCTP)
    try:
        if bind:
            sock.bind((bind, 0))
        try:
            sock.sendto(payload, socket.MSG_DONTWAIT, (destination, CXTP_PORT))
        except OSError as error:  # no route from there: nothing left, which is fine too
            assert error.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EAGAIN), error
        yield sock
    finally:
        sock.close()


def _forged_sctp(source: str, destination: str, payload: bytes, tag: int = 0x5EC0FFEE):
    """An SCTP DATA chunk carrying ``payload`` to the CXTP port, as a peer AR would send it (any
    verification tag: the receiver must refuse it before looking)."""
    return (IPv6(src=source, dst=destination, hlim=64)
            / SCTP(sport=CXTP_PORT, dport=CXTP_PORT, tag=tag)
            / SCTPChunkData(data=payload, tsn=1, stream_id=0, stream_seq=0, proto_id=0, ending=1, beginning=1))


def _ar_ar_attack(bed: Bed, watch: Watch, target: str, messages: list[bytes], spoof: str,
                  wait_s: float = 3.0) -> int:
    """Send each message to ``target``'s CXTP port from the HA, the intruder and the MN: on an SCTP
    socket (as an AR would), and forged with ``spoof`` as source (the peer AR's link address), from
    the HA (raw IPv6) and from the intruder (frames on the AR-AR segment). Returns how many packets
    reached ``target``'s kernel at least (one INIT per socket, one forged packet each)."""
    testbed, intruder = bed.testbed, bed.intruder
    assert intruder is not None  # the AR-AR attacks run on a bed with one
    destination = plan.AR_LINK_ADDRESS[target]
    lower = plan.LINKS_BY_NAME["par-nar"].interface(target)
    target_mac = testbed.host(target).intf(lower).MAC()
    eve_interface = intruder.interfaces[target]
    eve_mac = intruder.mac(target)
    sources = [testbed.pid(plan.HA), intruder.namespace, testbed.pid(plan.MN)]
    reached, refused = 0, watch.esp_refusals()
    with contextlib.ExitStack() as stack:
        for payload in messages:
            watch.forged(payload)
            for source in sources:
                stack.enter_context(_sctp_attempt(source, destination, payload))
                reached += 1
            _send_ip(testbed.pid(plan.HA), [_forged_sctp(spoof, destination, payload)])
            frame = Ether(src=eve_mac, dst=target_mac) / _forged_sctp(spoof, destination, payload)
            _send_frames(intruder.namespace, eve_interface, [bytes(frame)])
            reached += 2
        # the sockets stay open until the kernel has refused what they sent (or the wait ends)
        with contextlib.suppress(AssertionError):
            _wait_for(watch.esp_refusals, lambda n: n - refused >= reached, wait_s, "the kernel's refusals")
    return reached


def _on_link_ctar_frames(bed: Bed, ar: str, source: str, message: bytes, hop_limit: int = 255,
                         fragment: bool = False) -> list[bytes]:
    """A CTAR (or anything) in ICMPv6 type 150 from ``source`` on ``ar``'s access link, as the MN's
    namespace can send it: frames with the AR's link-layer address and hop limit 255."""
    testbed = bed.testbed
    interface = plan.LINKS_BY_NAME[plan.ACCESS_LINK[ar]].interface(plan.MN)
    destination = plan.AR_ACCESS_ADDRESS[ar]
    icmp = wrap(message, ipv4=False, source=source, destination=destination)
    ether = Ether(src=testbed.host(plan.MN).intf(interface).MAC(), dst=testbed.access_lladdr[ar])
    if not fragment:
        return [bytes(ether / IPv6(src=source, dst=destination, hlim=hop_limit, nh=58) / Raw(icmp))]
    return [bytes(ether / part) for part in _fragments(source, destination, 58, icmp, hop_limit)]


def _fragments(source: str, destination: str, next_header: int, payload: bytes, hop_limit: int = 64,
               size: int = 1232, identification: int = 0x1212) -> list:
    """``payload`` (an upper-layer message with its checksum) in IPv6 fragments of ``size`` octets:
    what a host sends for a message larger than the link's MTU, up to 65,535 octets."""
    parts = []
    for offset in range(0, len(payload), size):
        more = int(offset + size < len(payload))
        parts.append(IPv6(src=source, dst=destination, hlim=hop_limit)
                     / IPv6ExtHdrFragment(nh=next_header, offset=offset // 8, m=more, id=identification)
                     / Raw(payload[offset:offset + size]))
    return parts


def _send_on_link(bed: Bed, ar: str, frames: list[bytes]) -> None:
    interface = plan.LINKS_BY_NAME[plan.ACCESS_LINK[ar]].interface(plan.MN)
    _send_frames(bed.testbed.pid(plan.MN), interface, frames)


def _spoofed(ar: str, host: int) -> str:
    """An on-link address of ``ar``'s access prefix that is not the MN's."""
    return plan.ACCESS_PREFIX[ar].split("/")[0] + f"{host:x}"


def _wait_for(read, predicate, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while True:
        value = read()
        if predicate(value):
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out waiting for {what}: {value}")
        pause(20)


def _ping_ms(bed: Bed, agent: str) -> float:
    started = time.monotonic()
    bed.experiment.agents[agent].client.ping()
    return (time.monotonic() - started) * 1000


def _answers_promptly(bed: Bed, agent: str, count: int = 5) -> float:
    """Control pings right after an attack was processed: their median, in milliseconds (one
    answer delayed by the guest's scheduler is noise; a stalled agent delays them all)."""
    return statistics.median(_ping_ms(bed, agent) for _ in range(count))


def _attacker_context(mn: str, ar: str):
    """The SAs an attacker would like an AR to install for ``mn``: its own keys."""
    _, ar_side = provisioning.initial_contexts(mn, plan.AR_ACCESS_ADDRESS[ar], plan.HA_ADDRESS, "aes-cbc-sha256",
                                                *ATTACK_SPIS)
    return (ContextDataBlock(IPSEC_CONTEXT_FPT, ar_side.encode()),)


def _settle(bed: Bed) -> None:
    """Long enough for any transfer an attack started to time out at the ARs (the derived
    transfer time), and for the CTAR rate window to pass."""
    pause(1000 * bed.experiment.timers["ct_max_transfer_time"] + 1000)


def _assert_no_attacker_sas(bed: Bed) -> None:
    for node in NODES:
        sas, _ = _xfrm_dump(bed.testbed.pid(node))
        assert not [sa for sa in sas if sa.spi in ATTACK_SPIS], f"{node} installed the attacker's SAs"
        assert ATTACK_KEY not in _keys_held(bed.testbed.pid(node))


# ====================================================================================================
# The protected flow never leaves the MN in clear (its own testbed, at 1000 probes per second; first,
# so that it is gone before the attacks' testbed starts)
# ====================================================================================================

@pytest.fixture(scope="class")
def flow_bed(tmp_path_factory):
    """Its own testbed at the scenarios' probe rate, torn down with the class below."""
    with _running_bed(tmp_path_factory.mktemp("protected-flow"), FLOW_PROBE_RATE, intruder=False) as result:
        yield result


class TestProtectedFlow:
    @staticmethod
    def _captured_handover(bed, declared, nar, directory, mn_expression, nar_expression):
        """One handover between two captures: what the MN transmits, what the nAR sends to it."""
        # The captures run above the probes' real-time threads and the kernel's packet work, so that
        # they lose nothing (checked by the caller): "no probe in clear" then means none was sent.
        realtime = ["chrt", "-f", "65"]
        mn = Capture(realtime, bed.testbed.host(plan.MN).popen, plan.MN, directory / "mn.pcap", mn_expression)
        try:  # what the nAR sends to the MN's new address: only its access link carries that
            ar = Capture(realtime, bed.testbed.host(nar).popen, nar, directory / "nar.pcap", nar_expression)
        except BaseException:
            mn.stop()
            raise
        try:
            record = _handover(bed, declared)
            pause(800)  # the flow in ESP after the handover
        finally:
            reports = {plan.MN: mn.stop(), nar: ar.stop()}
        return mn, ar, record, reports

    @pytest.mark.parametrize("method", ("cxtp-predictive", "cxtp-reactive", "cxtp-network", "reauth-psk"))
    def test_no_packet_of_the_protected_flow_crosses_the_access_link_in_clear(self, flow_bed, method):
        """Old code: the MN sent 2-20 probes to the HA in clear after every handover, between the attach
        and the re-homing of its SAs. Across one handover of each method, at the scenarios' probe
        rate each way, what the MN transmits (both access links) and what the new AR transmits to the MN
        hold no probe in clear, and the flow is there in ESP."""
        bed = flow_bed
        experiment = bed.experiment
        declared = methods.get(method)
        experiment.enter(declared.security)  # daemons and the first attach, outside the capture
        pause(300)
        expression = "udp port 40000 or ip6 proto 50 or ip6 proto 41"  # 41: the MN-HA tunnel, in clear
        # the MN's tunnel devices carry the inner packets before their encapsulation, on no wire:
        # left out in the kernel (fewer packets to capture in the guest) and again when counting
        indexes = dict(netns.call_in(bed.testbed.pid(plan.MN), socket.if_nameindex))
        tunnels = frozenset(index for index, name in indexes.items()
                            if name in {plan.home_tunnel(plan.MN, ar) for ar in plan.ACCESS_ROUTERS})
        assert len(tunnels) == len(plan.ACCESS_ROUTERS)
        # "outbound" in the filter: the kernel hands the captures only what they keep (``-Q out``
        # alone is applied in tcpdump, after the copy, so every received packet costs a copy too)
        mn_expression = (f"outbound and ({expression}) and "
                         + " and ".join(f"not ifindex {index}" for index in sorted(tunnels)))
        lossy = []
        for attempt in range(CAPTURE_ATTEMPTS):
            nar = bed.other
            directory = bed.directory / f"flow-{method}-{attempt}"
            directory.mkdir(parents=True, exist_ok=True)
            nar_expression = f"outbound and ({expression}) and dst host {plan.MN_COA[nar]}"
            mn, ar, record, reports = self._captured_handover(bed, declared, nar, directory, mn_expression,
                                                              nar_expression)
            # the claim holds whoever restores the traffic: the method, or the MN's own fall-back
            # when the host starves the guest of a transfer
            assert record.outcome in ("ok", "recovered"), ((record.failure.reason if record.failure else None),
                                                              record.transfer_failure)
            mn_clear, mn_esp = _probe_counts(mn.path, tunnels)
            ar_clear, ar_esp = _probe_counts(ar.path)
            assert mn_clear == 0, f"{mn_clear} probes left the MN in clear"
            assert ar_clear == 0, f"{ar_clear} probes went from the nAR to the MN in clear"
            drops = {node: _capture_drops(report) for node, report in reports.items()}
            if not any(drops.values()):
                break
            # a capture that lost packets cannot show that none was in clear: the handover is repeated
            lossy.append(drops)
        else:
            pytest.fail(f"every capture lost packets in the guest's kernel: {lossy}")
        # the flow is there, in ESP, both ways
        assert mn_esp > 200 and ar_esp > 200, (mn_esp, ar_esp)


# ====================================================================================================
# CXTP between ARs, from hosts that are not ARs
# ====================================================================================================

def test_zero_token_ct_req_from_non_ars_gets_nothing(bed):
    """Old code: a CT-Req with a zero token from the HA made the pAR answer a PCTD in clear with the
    CXTP key and the MN's SA keys. Now the kernel refuses CXTP in clear from anyone (no ESP SA):
    nothing reaches the engine, nothing is answered, even with a key armed for the MN."""
    target, other = bed.current, bed.other
    bed.arm_key()
    with watched(bed, "zero-token-ct-req") as watch:
        messages = [CTReq(bed.mn_address, 0x1234, bytes(4)).encode(),
                    CTReq(bed.mn_address, 0x1235, bytes(4), (ContextDataBlock.request(IPSEC_CONTEXT_FPT),)).encode()]
        reached = _ar_ar_attack(bed, watch, target, messages, spoof=plan.AR_LINK_ADDRESS[other])
        watch.assert_unchanged()
        counted = watch.counted(target)
        assert not [name for name in counted if "received" in name or name.startswith("engine.")], counted
        assert watch.esp_refusals() >= reached, {ar: watch.kernel(ar) for ar in plan.ACCESS_ROUTERS}
        _legitimate_handovers(bed)


def _attack_during(base: str, errors: list, before=None, after=None):
    """``base`` with ``before(experiment, move)`` run ahead of its own step before the detach and
    ``after(experiment, move)`` right after it, while a predictive transfer is in progress (the pAR
    holds the context and the key for its CTDR). What a hook raises is kept in ``errors``, to be
    asserted after the handover: the handover itself always runs its course."""
    method = methods.get(base)

    def step(hook, experiment, move):
        if hook is not None:
            try:
                hook(experiment, move)
            except Exception as error:  # noqa: BLE001 - reported by the test after the handover
                errors.append(error)

    def before_detach(experiment, move):
        step(before, experiment, move)
        if method.before_detach is not None:
            method.before_detach(experiment, move)
        step(after, experiment, move)

    return dataclasses.replace(method, before_detach=before_detach)


def _wait_for_pctd(experiment, nar: str, seen_before: int) -> None:
    """Until the nAR has the PCTD (within the time the pAR holds the transfer)."""
    _wait_for(lambda: experiment_counters(experiment, nar).get("engine.received_pctd", 0),
              lambda n: n > seen_before, experiment.timers["ct_max_handover_time"], "the PCTD at the nAR")


def experiment_counters(experiment, ar: str) -> dict[str, int]:
    reply = experiment.ar(ar).counters()
    return {f"{part}.{name}": value for part in ("engine", "icmp", "ar") for name, value in reply[part].items()}


@pytest.mark.parametrize("base", ("cxtp-network", "cxtp-predictive"))
def test_forged_ctdr_and_ctc_during_a_transfer_change_nothing(bed, base) -> None:
    """Old code: a forged CTDR (S = 1) made the pAR delete the MN's SAs while the MN was still
    attached, a forged CTC made it cancel the transfer. Both, from the HA, the intruder and the MN's
    namespace, on sockets and forged as the nAR, while a transfer waits for its CTDR: refused by
    the kernel; the pAR releases only after the real CTDR, once the MN has moved."""
    seen: dict = {}
    errors: list = []

    def attack(experiment, move):
        _wait_for_pctd(experiment, move.nar, seen["pctd"])
        seen["before"] = seen["watch"].snapshot()
        messages = [CTDR(move.mn_previous, True, (StatusEntry(IPSEC_CONTEXT_FPT, 0),)).encode(),
                    CTC(move.mn_previous).encode()]
        seen["reached"] = _ar_ar_attack(bed, seen["watch"], move.par, messages, spoof=plan.AR_LINK_ADDRESS[move.nar],
                                        wait_s=0.5)
        seen["after"] = seen["watch"].snapshot()

    with watched(bed, f"forged-ctdr-ctc-{base}") as watch:
        par = bed.current
        seen.update(watch=watch, pctd=bed.counters(bed.other).get("engine.received_pctd", 0))
        record = _handover(bed, _attack_during(base, errors, after=attack))
        assert not errors, errors
        _assert_ok(record)
        assert seen["before"] == seen["after"], "the forged CTDR/CTC changed a node's SAs or policies"
        _wait_for(watch.esp_refusals, lambda n: n >= seen["reached"], 3.0, "the kernel's refusals")
        counted = watch.counted(par)
        assert counted.get("engine.received_ctdr") == 1 and "engine.received_ctc" not in counted, counted
        assert "engine.cancelled" not in counted and "engine.not_transfer_peer" not in counted, counted
        released = [e for e in read_trace(str(bed.directory / f"trace-{par}.jsonl"))
                    if e["event"] == "ipsec_released" and e["t_ns"] >= watch.started_ns]
        left = record.detached_ns  # the MN left the pAR's link (it triggers itself on the attach)
        assert released and all(e["t_ns"] > left for e in released), \
            ("the pAR released the MN's SAs before the MN left", left, released)
        _legitimate_handovers(bed)


def test_pctd_with_an_attackers_key_then_a_ctar_installs_nothing(bed):
    """Old code: a PCTD with the attacker's key and SAs, then a CTAR from an on-link address with
    a token from that key, installed the attacker's SAs on the nAR. The PCTD (and a CTD) never
    reach the engine; the CTARs find no context: one is refused by the real key's token check, the
    other starts a reactive transfer the pAR refuses (it holds no key for that MN)."""
    target, other = bed.current, bed.other
    victims = {"unknown": plan.MN_COA[other], "the MN": bed.mn_address}
    bed.arm_key()
    with watched(bed, "pctd-attacker-key") as watch:
        messages = [PCTD(mn, ATTACK_KEY, _attacker_context(mn, other)).encode() for mn in victims.values()]
        messages += [CTD(mn, _attacker_context(mn, other)).encode() for mn in victims.values()]
        reached = _ar_ar_attack(bed, watch, target, messages, spoof=plan.AR_LINK_ADDRESS[other])
        frames = []
        for index, mn in enumerate(victims.values()):
            sequence = 0x600D0 + index
            token = cxtp.compute_token(ATTACK_KEY, mn, sequence)
            ctar = CTAR(mn, plan.AR_ACCESS_ADDRESS[other], sequence, token, MADE_UP_BINDING).encode()
            frames += _on_link_ctar_frames(bed, target, _spoofed(target, 0x66 + index), ctar)
        other_before = bed.counters(other)
        _send_on_link(bed, target, frames)
        counted = _wait_for(lambda: watch.counted(target), lambda c: c.get("engine.received_ctar", 0) >= 2,
                            2.0, "the CTARs at the AR")
        _settle(bed)
        watch.assert_unchanged()
        _assert_no_attacker_sas(bed)
        counted = watch.counted(target)
        assert "engine.received_pctd" not in counted and "engine.received_ctd" not in counted, counted
        assert counted.get("engine.token_failures") == 1, counted  # the MN's own address: wrong token
        assert counted.get("engine.sent_ctreq") == 1, counted  # the unknown MN: asked the pAR, in ESP
        assert _delta(bed.counters(other), other_before).get("engine.no_key") == 1
        assert watch.esp_refusals() >= reached, {ar: watch.kernel(ar) for ar in plan.ACCESS_ROUTERS}
        _legitimate_handovers(bed)


def test_ctar_naming_the_ha_as_its_par_and_the_has_ctd(bed):
    """Old code: a CTAR naming the HA as the MN's "pAR" made the nAR ask the HA and accept the CTD
    the HA sent back. The CTAR is refused (not a peer AR), nothing is sent, the CTD never reaches
    the engine."""
    target = bed.current
    victim = plan.MN_COA[bed.other]
    with watched(bed, "ctar-names-ha") as watch:
        ctar = CTAR(victim, plan.HA_ADDRESS, 0x4A, b"\x01\x02\x03\x04").encode()
        _send_on_link(bed, target, _on_link_ctar_frames(bed, target, _spoofed(target, 0x77), ctar))
        _wait_for(lambda: watch.counted(target), lambda c: c.get("engine.unknown_ar") == 1, 2.0, "the refusal")
        ctd = watch.forged(CTD(victim, _attacker_context(victim, bed.other)).encode())
        with _sctp_attempt(bed.testbed.pid(plan.HA), plan.AR_LINK_ADDRESS[target], ctd), \
                _sctp_attempt(bed.testbed.pid(plan.HA), plan.AR_ACCESS_ADDRESS[target], ctd):
            pause(300)
        _settle(bed)
        watch.assert_unchanged()
        _assert_no_attacker_sas(bed)
        counted = watch.counted(target)
        assert (counted.get("engine.unknown_ar") == 1
                and not [n for n in counted if n.startswith("engine.sent_")]), counted
        assert "engine.received_ctd" not in counted, counted
        assert watch.esp_refusals() >= 2, {ar: watch.kernel(ar) for ar in plan.ACCESS_ROUTERS}
        _legitimate_handovers(bed)


def test_zero_token_ctars_are_refused(bed):
    """The zero token was a back door: a CTAR with it, for the attached MN (whose AR holds a key)
    or for an MN the AR does not know, is refused before anything is sent."""
    target = bed.current
    bed.arm_key()
    with watched(bed, "zero-token-ctar") as watch:
        frames = []
        for index, mn in enumerate((bed.mn_address, plan.MN_COA[bed.other])):
            ctar = CTAR(mn, plan.AR_ACCESS_ADDRESS[bed.other], 0x2E40 + index, bytes(4)).encode()
            frames += _on_link_ctar_frames(bed, target, _spoofed(target, 0x88 + index), ctar)
        _send_on_link(bed, target, frames)
        counted = _wait_for(lambda: watch.counted(target), lambda c: c.get("engine.zero_token") == 2, 2.0,
                            "both refusals")
        watch.assert_unchanged()
        assert not [name for name in counted if name.startswith("engine.sent_")], counted
        _legitimate_handovers(bed)


def test_ctar_from_off_link_or_with_a_low_hop_limit_is_dropped(bed):
    """Only an on-link sender can produce hop limit 255 on the access link: a CTAR from the HA
    (hop limit 255, to the AR's access and link addresses) arrives on another interface and never
    reaches the CXTP socket (bound to the access link); one from the intruder likewise; one on the
    access link with hop limit 64 is dropped by the transport."""
    target = bed.current
    bed.arm_key()
    with watched(bed, "off-link-ctar") as watch:
        token = cxtp.compute_token(ATTACK_KEY, bed.mn_address, 7)
        ctar = CTAR(bed.mn_address, plan.AR_ACCESS_ADDRESS[bed.other], 7, token).encode()
        for source, destination in ((bed.testbed.pid(plan.HA), plan.AR_ACCESS_ADDRESS[target]),
                                    (bed.testbed.pid(plan.HA), plan.AR_LINK_ADDRESS[target]),
                                    (bed.intruder.namespace, plan.AR_LINK_ADDRESS[target])):
            sock = netns.socket_in(source, socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
            try:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, 255)
                sock.sendto(wrap(ctar), (destination, 0))
            finally:
                sock.close()
        _send_on_link(bed, target, _on_link_ctar_frames(bed, target, _spoofed(target, 0x99), ctar, hop_limit=64))
        _wait_for(lambda: watch.kernel(target, "snmp6").get("Icmp6InType150", 0), lambda n: n >= 4, 2.0,
                  "the four CTARs at the AR's kernel")
        pause(200)
        counted = watch.counted(target)
        assert counted == {"icmp.hop_limit_drops": 1}, counted
        watch.assert_unchanged()
        _legitimate_handovers(bed)


def test_a_host_with_an_sa_for_another_purpose_is_still_not_a_peer(bed):
    """The kernel lets CXTP through from a host that has an ESP SA with the AR (here: the HA, for
    some other purpose). The AR-AR transport takes CXTP only from configured peers: dropped and
    counted before decoding."""
    target = bed.current
    ha_side, ar_side = provisioning.ar_ar_contexts(plan.HA_ADDRESS, plan.AR_LINK_ADDRESS[target], "aes-cbc-sha256",
                                                    spi_a_to_b=0xAB01, spi_b_to_a=0xAB02)
    bed.arm_key()
    with watched(bed, "sa-for-another-purpose") as watch:
        before = watch.snapshot()
        with netns.entered(bed.testbed.pid(plan.HA)):
            ha_xfrm = Xfrm()
        with netns.entered(bed.testbed.pid(target)):
            ar_xfrm = Xfrm()
        try:
            install_context(ha_xfrm, ha_side)
            install_context(ar_xfrm, ar_side)
            watch.keys |= {a.key for sa in ha_side.sas for a in sa.algorithms}
            message = CTReq(bed.mn_address, 0x77, bytes(4)).encode()
            with _sctp_attempt(bed.testbed.pid(plan.HA), plan.AR_LINK_ADDRESS[target], message, bind=plan.HA_ADDRESS):
                _wait_for(lambda: watch.counted(target), lambda c: c.get("ar.not_peer", 0) >= 1, 5.0,
                          "the transport's refusal")
        finally:
            remove_context(ha_xfrm, ha_side)
            remove_context(ar_xfrm, ar_side)
            ha_xfrm.close()
            ar_xfrm.close()
        counted = watch.counted(target)
        assert counted.get("ar.not_peer") == 1 and not [n for n in counted if n.startswith("engine.")], counted
        watch.assert_unchanged(before)
        _legitimate_handovers(bed)


# ====================================================================================================
# Forged CTARs against the real MN's handover
# ====================================================================================================

def _set_link(bed: Bed, interface: str, up: bool) -> None:
    """The MN's ``interface`` up (once the kernel has it running) or down."""
    ipr = netns.iproute_in(bed.testbed.pid(plan.MN))
    try:
        index = ipr.link_lookup(ifname=interface)[0]
        ipr.link("set", index=index, state="up" if up else "down")
        if up:
            _wait_for(lambda: ipr.get_links(index)[0].get_attr("IFLA_OPERSTATE"), lambda state: state == "UP", 2.0,
                      f"{interface} up")
    finally:
        ipr.close()


def _on_the_nars_link(bed: Bed, nar: str) -> None:
    """The MN's namespace on ``nar``'s access link before the MN moves there: an attacker in the
    cell the MN is about to enter. The interface stays up for the handover to attach the MN on
    (taking it down again just before the attach would make the kernel hold the AR's frames to it
    for a second, its rate limit on link events, and cost the MN's first CTAA)."""
    _set_link(bed, plan.LINKS_BY_NAME[plan.ACCESS_LINK[nar]].interface(plan.MN), up=True)


def _forged_ctar_frames(bed: Bed, nar: str, mn_previous: str, par: str) -> list[bytes]:
    ctar = CTAR(mn_previous, plan.AR_ACCESS_ADDRESS[par], 0xF0F0F0, b"\xde\xad\xbe\xef", MADE_UP_BINDING).encode()
    return _on_link_ctar_frames(bed, nar, _spoofed(nar, 0xAB), ctar)


def _send_forged_ctar(bed: Bed, move, wait_for: str) -> None:
    """The forged CTAR on the nAR's link, sent again (the same one) until the nAR has handled it:
    a link that has just come up may still lose the first frame (its queue is not active yet)."""
    experiment = bed.experiment
    before = experiment_counters(experiment, move.nar).get(wait_for, 0)
    frames = _forged_ctar_frames(bed, move.nar, move.mn_previous, move.par)
    _on_the_nars_link(bed, move.nar)
    for attempt in range(5):
        _send_on_link(bed, move.nar, frames)
        try:
            _wait_for(lambda: experiment_counters(experiment, move.nar).get(wait_for, 0), lambda n: n > before,
                      0.5, f"{wait_for} at the nAR")
            return
        except AssertionError:
            if attempt == 4:
                raise


@pytest.mark.parametrize("order", ("after-the-pctd", "before-the-pctd"))
def test_a_forged_ctar_before_the_real_mn_does_not_deny_a_predictive_handover(bed, order) -> None:
    """Old code: one forged CTAR at the nAR before the real MN's denied the handover. Whether it
    arrives after the PCTD (refused with the transferred key) or before it (held, then refused
    when the PCTD's key arrives), the context and key stay for the real MN, whose first CTAR
    activates it: no retransmission, outcome ok."""
    errors: list = []
    nar = bed.other
    pctd = bed.counters(nar).get("engine.received_pctd", 0)

    def after_the_pctd(experiment, move):
        _wait_for_pctd(experiment, move.nar, pctd)
        _send_forged_ctar(bed, move, "engine.token_failures")

    def before_the_pctd(experiment, move):
        _send_forged_ctar(bed, move, "engine.sent_ctreq")  # the nAR asks the pAR, which refuses

    hooks = {"after": after_the_pctd} if order == "after-the-pctd" else {"before": before_the_pctd}
    with watched(bed, f"forged-ctar-{order}") as watch:
        record = _handover(bed, _attack_during("cxtp-predictive", errors, **hooks))
        assert not errors, errors
        _assert_ok(record)
        counted = watch.counted(nar)
        assert counted.get("engine.token_failures", 0) >= 1, counted
        _assert_activated_by_the_first_ctar(bed, record, nar)
        _legitimate_handovers(bed)


def _assert_activated_by_the_first_ctar(bed: Bed, record: HandoverRecord, nar: str) -> None:
    """The nAR activated the context on the real MN's first CTAR after the attach: the forged one
    cost the MN nothing (a CTAA the emulated link loses right after the attach, which the MN's
    retransmission repairs, is no doing of the attack)."""
    since = record.attach_start_ns
    ctars = [e["t_ns"] for e in read_trace(str(bed.directory / "trace-mn.jsonl"))
             if e["event"] == "cxtp_sent" and e.get("type") == "CTAR" and e["t_ns"] >= since
             and e.get("destination") == plan.AR_ACCESS_ADDRESS[nar]]
    activated = [e["t_ns"] for e in read_trace(str(bed.directory / f"trace-{nar}.jsonl"))
                 if e["event"] == "ipsec_activated" and e.get("new") == record.mn_new and e["t_ns"] >= since]
    assert ctars and activated, (ctars, activated)
    assert len(ctars) == 1 or activated[0] < ctars[1], "the real MN's first CTAR did not activate its context"


def test_a_forged_ctar_before_the_real_mn_costs_a_reactive_handover_at_most_one_retransmission(bed) -> None:
    """Reactive: the forged CTAR reaches the nAR first and its CT-Req is refused by the pAR (the
    token does not verify); the nAR cannot tell which of two CTARs the pAR would answer, so it
    holds the real one until its transfer time ends, and the MN's retransmission (after
    CT_REQUEST_RETRY) gets the transfer. The handover still ends ok, at most one retransmission
    later (none if the forged transfer timed out before the MN arrived)."""
    errors: list = []
    par = bed.current

    def forge(experiment, move):
        _send_forged_ctar(bed, move, "engine.sent_ctreq")

    with watched(bed, "forged-ctar-reactive") as watch:
        record = _handover(bed, _attack_during("cxtp-reactive", errors, before=forge))
        assert not errors, errors
        _assert_ok(record)
        assert watch.counted(par).get("engine.token_failures", 0) >= 1
        mn = _delta(bed.experiment.mn.status()["engine"], watch.mn_counters)
        assert mn.get("ctar_retransmissions", 0) <= 1, mn
        _legitimate_handovers(bed)


# ====================================================================================================
# Bounded work: no message stalls an agent
# ====================================================================================================

def test_ctar_naming_an_ar_that_does_not_answer_costs_no_stall(bed):
    """Old code: a CTAR naming an unreachable address froze the nAR in a blocking SCTP send. A CTAR
    naming a non-peer (2001:db8:2::55) is refused without a send; one naming the peer AR while the
    AR-AR link drops everything leaves a CT-Req in SCTP's queue (MSG_DONTWAIT). Either way the
    agent has handled it at once (its counters say so) and answers control pings within 100 ms
    right after."""
    target, other = bed.current, bed.other
    victim = plan.MN_COA[other]
    with watched(bed, "unanswered-ar") as watch:
        ctar = CTAR(victim, "2001:db8:2::55", 0x55, b"\x05\x05\x05\x05").encode()
        _send_on_link(bed, target, _on_link_ctar_frames(bed, target, _spoofed(target, 0x55), ctar))
        _wait_for(lambda: watch.counted(target), lambda c: c.get("engine.unknown_ar") == 1, 2.0, "the refusal")
        answer = _answers_promptly(bed, target)
        assert answer < PING_LIMIT_MS, f"the agent took {answer:.0f} ms to answer after the CTAR"
        bed.testbed.set_link_params(plan.AR_AR, dataclasses.replace(LINKS[plan.AR_AR], loss_percent=100.0))
        try:
            ctar = CTAR(victim, plan.AR_ACCESS_ADDRESS[other], 0x56, b"\x05\x05\x05\x06", MADE_UP_BINDING).encode()
            _send_on_link(bed, target, _on_link_ctar_frames(bed, target, _spoofed(target, 0x56), ctar))
            _wait_for(lambda: watch.counted(target), lambda c: c.get("engine.sent_ctreq") == 1, 2.0,
                      "the CT-Req into a link that drops everything")
            answer = _answers_promptly(bed, target)
        finally:
            bed.testbed.set_link_params(plan.AR_AR, LINKS[plan.AR_AR])
        assert answer < PING_LIMIT_MS, f"the agent took {answer:.0f} ms to answer after the CTAR"
        _settle(bed)
        watch.assert_unchanged()
        _legitimate_handovers(bed)


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _request_blocks(count: int) -> tuple[ContextDataBlock, ...]:
    return tuple(ContextDataBlock(IPSEC_CONTEXT_FPT, header_only=True) for _ in range(count))


def test_oversized_ctars_cost_no_cpu_and_no_stall(bed):
    """Old code: a 65,524-octet CTAR with 16,370 CDBs cost about 0.5 s of CPU. Now each one that
    reaches the agent is refused before decoding (the per-source octet rate; the size bound is
    behind it), a 2,000-octet CTAR is answered "context too large" and one within the size bound
    but with 300 CDBs is refused for its CDB count: the agent's CPU barely moves and it answers
    pings within 100 ms right after. The same size as a CT-Req from the HA is refused by the
    kernel."""
    target = bed.current
    testbed = bed.testbed
    agent_pid = bed.experiment.agents[target].pid
    victim, named = plan.MN_COA[bed.other], plan.AR_ACCESS_ADDRESS[bed.other]
    with watched(bed, "oversized") as watch:
        huge = [CTAR(victim, named, 0x6000 + i, b"\x0b\x0b\x0b\x0b", _request_blocks(16370)).encode() for i in range(3)]
        assert {len(message) for message in huge} == {65524}
        cpu = _cpu_seconds(agent_pid)
        for index, message in enumerate(huge):
            _send_on_link(bed, target, _on_link_ctar_frames(bed, target, _spoofed(target, 0x200 + index), message,
                                                            fragment=True))
        # reassembled by the AR's kernel; what its CXTP socket's buffer holds reaches the agent
        with contextlib.suppress(AssertionError):
            _wait_for(lambda: watch.kernel(target, "snmp6").get("Icmp6InType150", 0), lambda n: n >= len(huge), 5.0,
                      "the large CTARs at the AR's kernel")
        pause(500)
        counted = watch.counted(target)
        spent = _cpu_seconds(agent_pid) - cpu
        answer = _answers_promptly(bed, target)
        assert counted.get("icmp.received", 0) >= 1, counted
        assert counted.get("engine.rate_limited") == counted["icmp.received"], counted  # all, before decoding
        assert "engine.received_ctar" not in counted and "engine.decode_errors" not in counted, counted
        assert spent < 0.5, f"{counted['icmp.received']} large CTARs cost the agent {spent:.2f} s of CPU"
        assert answer < PING_LIMIT_MS, f"the agent took {answer:.0f} ms to answer after the large CTARs"
        middle = CTAR(victim, named, 0x6100, b"\x0c\x0c\x0c\x0c", _request_blocks(489)).encode()
        many = CTAR(victim, named, 0x6101, b"\x0d\x0d\x0d\x0d", _request_blocks(300)).encode()
        assert len(middle) == 2000 and len(many) == 1244
        _send_on_link(bed, target, _on_link_ctar_frames(bed, target, _spoofed(target, 0x210), middle, fragment=True)
                      + _on_link_ctar_frames(bed, target, _spoofed(target, 0x211), many))
        counted = _wait_for(lambda: watch.counted(target), lambda c: c.get("engine.oversize", 0) >= 2, 3.0,
                            "the two size refusals")
        answer = _answers_promptly(bed, target)
        assert answer < PING_LIMIT_MS, f"the agent took {answer:.0f} ms to answer after the large CTARs"
        assert counted.get("engine.oversize") == 2 and counted.get("engine.received_ctar") == 1, counted
        assert counted.get("engine.sent_ctaa") == 2, counted  # "context too large", nothing else
        assert not [n for n in counted if n.startswith("engine.sent_") and n != "engine.sent_ctaa"], counted
        # the AR-AR leg: a CT-Req of the same kind, from the HA, in fragments
        req = watch.forged(CTReq(bed.mn_address, 0x6200, b"\x0e\x0e\x0e\x0e", _request_blocks(16360)).encode())
        sctp = bytes(SCTP(sport=CXTP_PORT, dport=CXTP_PORT, tag=1)
                     / SCTPChunkData(data=req, tsn=1, ending=1, beginning=1))
        refused = watch.esp_refusals()
        _send_ip(testbed.pid(plan.HA), _fragments(plan.HA_ADDRESS, plan.AR_LINK_ADDRESS[target], IPPROTO_SCTP, sctp,
                                                  identification=0x3434))
        _wait_for(watch.esp_refusals, lambda n: n > refused, 3.0, "the kernel's refusal")
        _settle(bed)
        watch.assert_unchanged()
        _legitimate_handovers(bed)


def test_cxtp_spoofed_as_one_ar_is_not_forwarded_into_esp_by_the_other(bed):
    """The HA forges CXTP with an AR's link address as source and sends it to the other AR through
    the first one (its route to the AR-AR link), or through the second one to the first; whole,
    and in fragments (whose flow has no ports). An AR's own ESP policy for CXTP from its address
    would wrap the forwarded forgery in its SA, and the peer would take it for the AR's. An AR
    forwards nothing that claims to be its own: refused where it would be forwarded, nothing
    reaches the peer's SCTP, nothing leaves in an AR-AR SA."""
    testbed = bed.testbed
    with watched(bed, "spoofed-through-an-ar") as watch:
        sctp_before = {ar: _proc(testbed, ar, "sctp/snmp") for ar in plan.ACCESS_ROUTERS}
        sas_before = {ar: {sa.spi: sa.current.packets for sa in _xfrm_dump(testbed.pid(ar))[0]}
                      for ar in plan.ACCESS_ROUTERS}
        payload = watch.forged(CTDR(bed.mn_address, True).encode() + bytes(1200))  # two fragments

        def forgeries(source: str, destination: str, identification: int) -> list:
            whole = _forged_sctp(source, destination, payload)
            sctp = bytes(whole[SCTP])
            return [whole, *_fragments(source, destination, IPPROTO_SCTP, sctp, size=800,
                                       identification=identification)]

        # through the pAR (the HA's route to the AR-AR link) to the nAR, as the pAR
        _send_ip(testbed.pid(plan.HA), forgeries(plan.AR_LINK_ADDRESS[plan.PAR], plan.AR_LINK_ADDRESS[plan.NAR], 0x77))
        # through the nAR (frames to it on the nAR-HA link) to the pAR, as the nAR
        link = plan.LINKS_BY_NAME["nar-ha"]
        ether = Ether(src=testbed.host(plan.HA).intf(link.interface(plan.HA)).MAC(),
                      dst=testbed.host(plan.NAR).intf(link.interface(plan.NAR)).MAC())
        _send_frames(testbed.pid(plan.HA), link.interface(plan.HA),
                     [bytes(ether / packet) for packet in forgeries(plan.AR_LINK_ADDRESS[plan.NAR],
                                                                    plan.AR_LINK_ADDRESS[plan.PAR], 0x78)])
        for ar in plan.ACCESS_ROUTERS:  # one whole packet and two fragments at each
            # _wait_for calls the lambda before the loop moves on: no late binding
            _wait_for(lambda: watch.kernel(ar).get("XfrmInPolBlock", 0), lambda n: n >= 3, 3.0,  # noqa: B023
                      f"{ar} refusing to forward")
        pause(300)
        for ar in plan.ACCESS_ROUTERS:
            reached = _delta(_proc(testbed, ar, "sctp/snmp"), sctp_before[ar])
            assert not reached.get("SctpOutOfBlues"), (ar, reached)
            after = {sa.spi: sa.current.packets for sa in _xfrm_dump(testbed.pid(ar))[0]}
            grew = {spi: after[spi] - sas_before[ar].get(spi, 0) for spi in (0x5091A, 0x5091B) if spi in after}
            assert sum(grew.values()) <= 2, (ar, grew)  # an SCTP heartbeat may pass, rarely
        watch.assert_unchanged()
        _legitimate_handovers(bed)


# ====================================================================================================
# The bypasses: signalling only
# ====================================================================================================

def _icmpv6(icmp_type: int, body: bytes = b"") -> bytes:
    return struct.pack("!BBH", icmp_type, 0, 0) + body  # raw ICMPv6 sockets: the kernel sums


def _echo(target, destination: str, ident: int, attempts: int = 3, timeout_s: float = 2.0,
          source: str | None = None) -> bool:
    """An ICMPv6 echo from ``target``'s namespace (up to ``attempts`` of them): answered?"""
    sock = netns.socket_in(target, socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
    try:
        if source:
            sock.bind((source, 0))
        for sequence in range(1, attempts + 1):
            sock.sendto(_icmpv6(128, struct.pack("!HH", ident, sequence) + b"attack!!"), (destination, 0))
            deadline = time.monotonic() + timeout_s
            while (left := deadline - time.monotonic()) > 0:
                if select.select([sock], [], [], left)[0]:
                    data, _ = sock.recvfrom(2048)
                    if data[0] == 129 and struct.unpack("!H", data[4:6])[0] == ident:
                        return True
        return False
    finally:
        sock.close()


@contextlib.contextmanager
def _joined(target, interface: str, group: str = "ff02::1:3"):
    """A multicast group joined on ``interface``: the kernel reports it with MLD."""
    index = netns.call_in(target, lambda: socket.if_nametoindex(interface))
    sock = netns.socket_in(target, socket.AF_INET6, socket.SOCK_DGRAM, 0)
    try:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP,
                        socket.inet_pton(socket.AF_INET6, group) + struct.pack("@I", index))
        yield
    finally:
        sock.close()


SIGNALLING_TYPES = set(operator_policy.SIGNALLING_ICMPV6_TYPES) | {143}  # + MLDv2 reports (no bypass needed)


def test_icmpv6_bypass_lets_only_signalling_through(bed):
    """Old code: the MN's and the ARs' bypasses let every ICMPv6 message through in clear. Now only
    neighbour discovery, CXTP's type 150 and the Mobility Header are outside the tunnels: an echo
    between the MN and the HA travels in ESP both ways and is answered; the AR sends no other
    ICMPv6 to the access link in clear (EPERM) and forwards nothing from it but Mobile IPv6
    signalling; MLD reports leave both ends without any bypass."""
    testbed, target, mn = bed.testbed, bed.current, bed.mn_address
    access = plan.LINKS_BY_NAME[plan.ACCESS_LINK[target]]
    with watched(bed, "icmpv6-bypass") as watch:
        assert _echo(testbed.pid(plan.MN), plan.HA_ADDRESS, 0x4242), "the MN's echo to the HA got no answer"
        assert _echo(testbed.pid(plan.HA), mn, 0x4343, source=plan.HA_ADDRESS), "the HA's echo to the MN got no answer"
        blocked = watch.kernel(target).get("XfrmOutPolBlock", 0)
        # from an address of the HA that the MN's tunnel does not cover: not in clear, not at all
        assert not _echo(testbed.pid(plan.HA), mn, 0x4344, attempts=1, timeout_s=1.0), "an echo reached the MN in clear"
        assert watch.kernel(target).get("XfrmOutPolBlock", 0) > blocked
        listener = netns.socket_in(testbed.pid(plan.HA), socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
        sock = netns.socket_in(testbed.pid(plan.MN), socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
        try:  # an ND type off the link, to the HA: the MN lets it out (a bypass), the AR forwards none
            sock.sendto(_icmpv6(135, bytes(4) + socket.inet_pton(socket.AF_INET6, plan.HA_ADDRESS)),
                        (plan.HA_ADDRESS, 0))
            deadline = time.monotonic() + 1.0
            while (left := deadline - time.monotonic()) > 0:  # the HA's own ND with the ARs is no concern
                if select.select([listener], [], [], left)[0]:
                    data, source = listener.recvfrom(2048)
                    assert not (data[0] == 135 and source[0] == mn), "the AR forwarded ND from the MN to the HA"
        finally:
            sock.close()
            listener.close()
        sock = netns.socket_in(testbed.pid(target), socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
        try:
            with pytest.raises(PermissionError):  # blocked by the operator's policy, not sent
                sock.sendto(_icmpv6(128, struct.pack("!HH", 0x4444, 1)), (mn, 0))
            with pytest.raises(PermissionError):  # an ICMPv6 error in clear: neither
                sock.sendto(_icmpv6(1, bytes(4) + bytes(48)), (mn, 0))
            sock.sendto(_icmpv6(136, bytes(4) + socket.inet_pton(socket.AF_INET6, plan.AR_ACCESS_ADDRESS[target])),
                        (mn, 0))  # a neighbour advertisement: signalling
            sock.sendto(_icmpv6(150, bytes(4)), (mn, 0))  # type 150, subtype 0 (not CXTP: the MN drops it)
        finally:
            sock.close()
        with (_joined(testbed.pid(plan.MN), access.interface(plan.MN)),
              _joined(testbed.pid(target), access.interface(target))):
            for node in (plan.MN, target):
                # _wait_for calls the lambda before the loop moves on: no late binding
                _wait_for(lambda: watch.kernel(node, "snmp6").get("Icmp6OutType143", 0),  # noqa: B023
                          lambda n: n >= 1, 3.0, f"an MLD report from {node}")
        pause(200)
        # the ND type to the HA was refused where it would be forwarded (not in the MN's tunnel)
        assert watch.esp_refusals(target) >= 1, watch.kernel(target)
        assert watch.kernel(plan.MN, "snmp6").get("Icmp6OutErrors", 0) == 0
        watch.assert_unchanged()
        _legitimate_handovers(bed)
    # on the access link, in clear: only signalling, from the MN and from the ARs to it (the tunnel
    # ends at the AR: between the AR and the HA the echo is in clear, by design)
    for name, end in ((plan.MN, "src"), (plan.PAR, "dst"), (plan.NAR, "dst")):
        for packet in watch.captured[name]:
            if IPv6 not in packet or packet[IPv6].nh != 58 or getattr(packet[IPv6], end) != mn:
                continue
            icmp_type = bytes(packet[IPv6].payload)[0]
            assert icmp_type in SIGNALLING_TYPES, f"{name} sent ICMPv6 type {icmp_type} in clear: {packet.summary()}"


def _ipv6_packets(path: Path, skip_ifindexes: frozenset[int] = frozenset()):
    """The IPv6 packets of a pcap (Ethernet, Linux cooked v1 or v2), as bytes: scapy would take
    seconds per thousand packets in the guest. With Linux cooked v2 (``-i any``), packets on the
    interfaces ``skip_ifindexes`` are left out (its header names each packet's interface)."""
    data = path.read_bytes() if path.exists() else b""
    if len(data) < 24:
        return
    endian = "<" if data[:4] in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
    link_type = struct.unpack(endian + "I", data[20:24])[0]
    header = {1: 14, 113: 16, 276: 20}[link_type]
    position = 24
    while position + 16 <= len(data):
        length = struct.unpack(endian + "I", data[position + 8:position + 12])[0]
        frame = data[position + 16:position + 16 + length]
        position += 16 + length
        if link_type == 276 and skip_ifindexes and struct.unpack("!I", frame[4:8])[0] in skip_ifindexes:
            continue
        packet = frame[header:]
        if len(packet) >= 48 and packet[0] >> 4 == 6:
            yield packet


def _probe_counts(path: Path, skip_ifindexes: frozenset[int] = frozenset()) -> tuple[int, int]:
    """(probe packets in clear, ESP packets). A probe in clear may also be inside the MN-HA
    tunnel's IPv6-in-IPv6 packet (Mobile IPv6), which is no protection: counted too. The tunnel
    devices themselves (``skip_ifindexes``) carry the inner packet before its encapsulation: not
    on any wire, left out."""
    clear = esp = 0
    for packet in _ipv6_packets(path, skip_ifindexes):
        if packet[6] == 50:
            esp += 1
            continue
        while packet[6] == 41 and len(packet) >= 80:  # IPv6-in-IPv6: the MN-HA tunnel, in clear
            packet = packet[40:]
        if packet[6] == 17 and 40000 in struct.unpack("!HH", packet[40:44]):
            clear += 1
    return clear, esp


# ====================================================================================================
# The transports: a send never waits for a peer
# ====================================================================================================

@pytest.mark.parametrize("kind", ("sctp", "tcp"))
def test_a_send_to_a_peer_that_does_not_answer_never_blocks(veth_pair, kind) -> None:
    """The AR-AR transports send without waiting: to a peer whose answers are all lost, and to an
    address nobody has, a send returns at once (the message waits in the kernel, or fails)."""
    left, right = veth_pair["left"], veth_pair["right"]
    _sh(f"ip netns exec {right} tc qdisc add dev {veth_pair['right_if']} root netem loss 100%")
    transport = SctpTransport(namespace=left) if kind == "sctp" else TcpTransport(namespace=left)
    message = CTReq("2001:db8:ff::100", 1, b"\x01\x02\x03\x04").encode()
    try:
        for destination in (veth_pair["right_address"], "2001:db8:ff::55"):
            outcome: dict = {}

            # runs in this iteration only: the loop goes on once the thread has ended (asserted
            # below), so `destination` and `outcome` are this iteration's
            def send():
                started = time.monotonic()
                try:
                    transport.send(message, destination)  # noqa: B023
                except OSError as error:
                    outcome["error"] = error  # noqa: B023
                outcome["ms"] = (time.monotonic() - started) * 1000  # noqa: B023

            thread = threading.Thread(target=send, daemon=True)
            thread.start()
            thread.join(2.0)
            assert not thread.is_alive(), f"{kind} send to {destination} blocked"
            assert outcome["ms"] < PING_LIMIT_MS, (destination, outcome)
    finally:
        transport.close()
