"""Every handover ends in a defined state, also under faults.

Each fault below ends with the MN's protected traffic flowing through the nAR again (by the
protocol itself, the MN's reactive retry, or the runner's fresh attach) or with a recorded
failure; and in every case with no SA or policy of the MN left on any node but the one it is
attached to. The handovers run through the runner's own :func:`scenarios.runner.run.run_handover`, so
what is tested is what a scenario run does.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

import pytest

from nodes.agent import read_trace
from scenarios import config
from scenarios.records import HandoverRecord
from scenarios.runner import methods
from scenarios.runner.experiment import Experiment, pause
from scenarios.runner.run import run_handover, warm_up_crypto
from topo import plan
from topo.network import LinkParams, Testbed

pytestmark = pytest.mark.kernel

# The default scenario's timers, derived from the network as a run derives them (short timers
# tuned to a quiet machine would make these tests fail on a busy one, for the wrong reason).
SCENARIO = config.from_dict({"settle_ms": 200})
LINKS = {plan.ACCESS: LinkParams(delay_ms=2.0), plan.AR_AR: LinkParams(delay_ms=5.0),
         plan.AR_HA: LinkParams(delay_ms=10.0), plan.AR_AAA: LinkParams(delay_ms=10.0)}


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("faults")
    with Testbed(LINKS) as testbed:
        warm_up_crypto(testbed, "aes-cbc-sha256")
        experiment = Experiment(testbed, run_dir, timers=SCENARIO.cxtp_timers(testbed.link_params))
        try:
            pause(300)
            yield experiment
        finally:
            experiment.stop()


@pytest.fixture
def clean(experiment):
    """Each test starts from a successful handover and the default timers and links."""
    yield experiment
    for link_class, params in LINKS.items():
        if experiment.testbed.link_params[link_class] != params:
            experiment.testbed.set_link_params(link_class, params)
    experiment.configure_timers(SCENARIO.cxtp_timers(experiment.testbed.link_params))


def _handover(experiment: Experiment, method: str) -> HandoverRecord:
    timers = experiment.timers
    return run_handover(experiment, methods.get(method), 50.0, SCENARIO,
                        timers["release_hold"] + timers["late_ctdr_grace"])


def _assert_only_current_attachment(experiment: Experiment) -> None:
    """Nothing of the MN on any node but its current attachment, and there only the tunnel."""
    current = experiment.mn_address
    other = next(address for address in (plan.MN_COA[ar] for ar in plan.ACCESS_ROUTERS) if address != current)
    assert experiment.leftovers(other) == {}
    holders = experiment.leftovers(current)
    assert set(holders) <= {plan.MN, experiment.testbed.current_ar}, holders


def _assert_traffic_through_current_ar(experiment: Experiment, packets: int = 100, within_s: float = 10.0) -> None:
    """Both of the current AR's SAs for the MN count ``packets`` more probes (1000/s each way:
    a tenth of a second's worth), within a bound far above that: a host that stalls the whole
    guest for a while delays the probes, it does not make this fail."""
    ar, mn = experiment.testbed.current_ar, experiment.mn_address
    assert ar is not None  # the MN is attached while the testbed runs
    before = {sa.spi: sa.current.packets for sa in experiment.xfrm_state(ar, mn).sas}
    deadline = time.monotonic() + within_s
    while True:
        pause(100)
        after = {sa.spi: sa.current.packets for sa in experiment.xfrm_state(ar, mn).sas}
        if len(after) == 2 and all(after[spi] - before.get(spi, 0) > packets for spi in after):
            return
        assert time.monotonic() < deadline, (before, after)


def _events(experiment: Experiment, agent: str, event: str, since_ns: int) -> list[dict]:
    path = experiment.run_dir / f"trace-{agent}.jsonl"
    return [e for e in read_trace(str(path)) if e["event"] == event and e["t_ns"] >= since_ns]


def _ends_well(experiment: Experiment, record: HandoverRecord, outcomes=("ok",)) -> None:
    assert record.outcome in outcomes, (record.failure or record.transfer_failure)
    _assert_only_current_attachment(experiment)
    _assert_traffic_through_current_ar(experiment)


def test_a_plain_handover_passes_first(clean):
    _ends_well(clean, _handover(clean, "cxtp-predictive"))


def test_ctdr_delayed_beyond_the_pars_hold(clean):
    """The pAR's predictive hold runs out before the CTDR (held back half a second longer at the
    nAR): the late CTDR, or the release after the hold, still removes the MN's SAs from the pAR."""
    nar = clean.testbed.other_ar()
    hold_ms = clean.timers["ct_max_handover_time"] * 1000
    clean.ar(nar).fault(message="CTDR", action="delay", delay_ms=hold_ms + 500)
    started = time.monotonic_ns()
    record = _handover(clean, "cxtp-predictive")
    _ends_well(clean, record)
    par = record.from_ar
    assert _events(clean, par, "ipsec_released", started), "the pAR never released the MN's SAs"


def test_pctd_lost_while_the_ar_ar_link_drops_everything(clean):
    """The AR-AR link drops every packet for the duration of the transfer: the PCTD (and the
    nAR's CT-Req) are lost; the nAR gives up that CT-Req. Once the link is back, SCTP's own
    retransmission of the PCTD (within its lifetime), or the MN's CTAR retransmission asking
    again while the pAR still holds the transfer (our departures from RFC 4067: the nAR sends no
    CTC for a CT-Req nobody answered, and a CTAA nothing verified is not believed), completes the
    transfer; or the MN retries reactively, or the runner attaches it afresh."""
    testbed = clean.testbed
    testbed.set_link_params(plan.AR_AR, dataclasses.replace(LINKS[plan.AR_AR], loss_percent=100.0))
    restore = threading.Timer(clean.timers["ct_max_transfer_time"], testbed.set_link_params,
                              (plan.AR_AR, LINKS[plan.AR_AR]))
    restore.start()
    try:
        record = _handover(clean, "cxtp-predictive")
    finally:
        restore.join()
    if record.outcome != "ok":
        assert record.transfer_failure or record.outcome == "failed"
        assert record.restored_by in ("cxtp-retry", "fresh-attach")
    _ends_well(clean, record, outcomes=("ok", "recovered", "failed"))


def test_ctaa_lost(clean):
    """The nAR's CTAA is lost once: the MN retransmits its CTAR (CT_REQUEST_RETRY), the nAR
    answers it from its cache, one activation."""
    nar = clean.testbed.other_ar()
    clean.ar(nar).fault(message="CTAA", action="drop", count=1)
    started = time.monotonic_ns()
    record = _handover(clean, "cxtp-reactive")
    _ends_well(clean, record)
    assert len(_events(clean, nar, "ipsec_activated", started)) == 1
    assert len([e for e in _events(clean, "mn", "cxtp_sent", started) if e["type"] == "CTAR"]) == 2


def test_ctar_reaches_the_nar_before_the_pctd(clean):
    """The PCTD is held back at the pAR: the MN's CTAR reaches the nAR first, which asks the pAR
    (CT-Req); the CTD and the late PCTD converge on exactly one transfer."""
    par, nar = clean.testbed.current_ar, clean.testbed.other_ar()
    clean.ar(par).fault(message="PCTD", action="delay", delay_ms=400)
    started = time.monotonic_ns()
    record = _handover(clean, "cxtp-predictive")
    if record.outcome != "ok":
        # As for the slow AR-AR link below: a host that stalls the guest for longer than the
        # transfer timer (the processing allowance) loses this one transfer, in a defined state
        # (the MN's reactive retry). The same race once more must converge.
        _assert_only_current_attachment(clean)
        par, nar = clean.testbed.current_ar, clean.testbed.other_ar()
        clean.ar(par).fault(message="PCTD", action="delay", delay_ms=400)
        started = time.monotonic_ns()
        record = _handover(clean, "cxtp-predictive")
    _ends_well(clean, record)
    assert len(_events(clean, nar, "ipsec_activated", started)) == 1
    pause(500)  # the held-back PCTD arrives after the activation, and changes nothing
    _assert_only_current_attachment(clean)
    assert len(_events(clean, par, "ipsec_released", started)) == 1


def test_par_agent_killed_before_the_handover_and_restarted(clean):
    par = clean.testbed.current_ar
    old_pid = clean.agents[par].process.pid
    os.kill(old_pid, signal.SIGKILL)
    clean.agents[par].process.wait()
    record = _handover(clean, "cxtp-reactive")
    assert record.outcome == "failed" and record.restored_by == "fresh-attach"
    assert par in record.recovery.restarted_agents and clean.agents[par].process.pid != old_pid
    assert set(record.failure.state) == {plan.MN, *plan.ACCESS_ROUTERS}, "every node's SAD/SPD is recorded"
    _assert_only_current_attachment(clean)
    _assert_traffic_through_current_ar(clean)
    # and the restarted agent serves the next handover as before
    _ends_well(clean, _handover(clean, "cxtp-reactive"))


def test_nar_install_fails_half_way(clean):
    """The kernel refuses the nAR's second write: nothing half-installed stays, the MN is told
    (CTAA with the IPsec context's failure status) and its reactive retry succeeds."""
    nar = clean.testbed.other_ar()
    clean.ar(nar).install_fault(after=1, action="fail")
    record = _handover(clean, "cxtp-reactive")
    assert "0x12" in (record.transfer_failure or ""), record
    _ends_well(clean, record, outcomes=("recovered",))
    assert record.restored_by == "cxtp-retry"


def test_nar_agent_killed_in_the_middle_of_an_install(clean):
    """The nAR dies (SIGKILL) after writing one SA: its restart finds the install journal and
    removes what the dead process left; the MN is attached afresh."""
    nar = clean.testbed.other_ar()
    clean.ar(nar).install_fault(after=1, action="die")
    started = time.monotonic_ns()
    record = _handover(clean, "cxtp-reactive")
    assert record.outcome == "failed" and nar in record.recovery.restarted_agents
    recovered = _events(clean, nar, "ipsec_journal_recovered", started)
    assert recovered and recovered[0]["mns"] == [record.mn_new]
    _assert_only_current_attachment(clean)
    _assert_traffic_through_current_ar(clean)


@pytest.mark.parametrize("delay_ms", (50.0, 100.0))
def test_slow_ar_ar_link_with_timers_from_the_scenario(clean, delay_ms):
    """Legal scenario values: the AR-AR link at 50 and 100 ms one way. The timers that depend on
    the network are derived from it (the default scenario's derivation), and the handover
    succeeds."""
    clean.testbed.set_link_params(plan.AR_AR, LinkParams(delay_ms=delay_ms))
    scenario = config.load(None)
    clean.configure_timers(scenario.cxtp_timers(clean.testbed.link_params))
    record = _handover(clean, "cxtp-reactive")
    if record.outcome != "ok":
        # One transfer may be lost to a host so busy that the emulation slips (the run's fidelity
        # monitor would mark it); it still ended in a defined state. The next one must succeed.
        _assert_only_current_attachment(clean)
        record = _handover(clean, "cxtp-reactive")
    _ends_well(clean, record)


def test_transfer_time_below_the_network_round_trip_fails_cleanly(clean):
    """At the timer's edge: a transfer time shorter than one AR-AR round trip cannot succeed; the
    handover is recorded as failed and restored, and nothing of the MN stays behind."""
    clean.testbed.set_link_params(plan.AR_AR, LinkParams(delay_ms=50.0))
    clean.configure_timers({**clean.timers, "ct_max_transfer_time": 0.05})
    record = _handover(clean, "cxtp-reactive")
    _ends_well(clean, record, outcomes=("recovered", "failed"))


def test_mn_agent_killed_is_recovered_over_the_policies_it_left(clean):
    """A killed MN agent leaves its SAs and its signalling bypass in the kernel: the recovery
    takes them over (replaced, not an EEXIST), and the next handover succeeds."""
    old_pid = clean.agents[plan.MN].process.pid
    os.kill(old_pid, signal.SIGKILL)
    clean.agents[plan.MN].process.wait()
    record = _handover(clean, "cxtp-reactive")
    assert record.outcome == "failed" and record.recovery is not None
    assert plan.MN in record.recovery.restarted_agents and record.recovery.bound
    _assert_only_current_attachment(clean)
    _assert_traffic_through_current_ar(clean)
    _ends_well(clean, _handover(clean, "cxtp-predictive"))


def test_a_killed_ha_agent_keeps_the_probe_records_from_before(clean):
    """The HA agent (both probe ends) is killed: its successor continues the records the runner
    had it checkpoint after each handover, and the sequence numbers go on from there."""
    before = _handover(clean, "cxtp-reactive")
    _ends_well(clean, before)
    window = (before.detach_start_ns, before.window_end_ns)
    old = clean.ha.lateness(start_ns=window[0], end_ns=window[1])
    assert old["mn"] is not None and old["ha"] is not None
    os.kill(clean.agents[plan.HA].process.pid, signal.SIGKILL)
    clean.agents[plan.HA].process.wait()
    record = _handover(clean, "cxtp-reactive")
    assert record.outcome == "failed" and record.recovery is not None
    assert plan.HA in record.recovery.restarted_agents
    # the new process holds the probes sent during the handover before its predecessor died
    assert clean.ha.lateness(start_ns=window[0], end_ns=window[1]) == old
    _ends_well(clean, _handover(clean, "cxtp-reactive"))


def test_a_direction_that_goes_silent_is_a_failed_handover(clean):
    """An outcome is what the traffic says: the downlink blackholed at the nAR right after the
    MN was done makes the handover's check fail, naming the direction."""
    nar = clean.testbed.other_ar()
    record = _handover(clean, "cxtp-reactive")
    _ends_well(clean, record)
    assert clean.traffic_problems(record) == []
    host = clean.testbed.host(nar)
    host.cmd(f"ip -6 route add blackhole {record.mn_new}/128")
    try:
        pause(100)
        since = time.monotonic_ns()
        pause(300)
        silent = dataclasses.replace(record, restored_ns=since)
        problems = clean.traffic_problems(silent)
    finally:
        host.cmd(f"ip -6 route del blackhole {record.mn_new}/128")
    assert len(problems) == 1 and problems[0].startswith(f"no downlink through {nar}"), problems
    _assert_traffic_through_current_ar(clean)


@pytest.mark.parametrize("gap_ms", (0.0, 5.0, 50.0, 300.0))
@pytest.mark.parametrize("method", ("cxtp-reactive", "cxtp-predictive", "cxtp-network"))
def test_moving_back_before_the_handover_ended_ends_ok_or_recovered(clean, method, gap_ms):
    """Ping-pong: the MN moves to the nAR and, ``gap_ms`` after that attach (before its CTAA, for
    the short gaps), back to the pAR. The move back ends ok or recovered (never failed and
    attached afresh), every agent lives, nothing of the MN is left on the AR it left, and its
    traffic flows through the AR it is back at; the next handover then succeeds."""
    started_at = clean.testbed.current_ar
    abandoned = clean.mn.status()["abandoned"]
    timers = clean.timers
    record = run_handover(clean, methods.get(method), 50.0, SCENARIO,
                          timers["release_hold"] + timers["late_ctdr_grace"], back_after_ms=gap_ms)
    assert clean.testbed.current_ar == started_at and record.to_ar == started_at
    assert all(agent.alive for agent in clean.agents.values()), "an agent died"
    _ends_well(clean, record, outcomes=("ok", "recovered"))
    assert record.recovery is None
    print(f"{method} gap {gap_ms}: {record.outcome}, {record.transfer_failure}, "
          f"abandoned {clean.mn.status()['abandoned'] - abandoned}")
    _ends_well(clean, _handover(clean, method))


_BLASTER = """
import os, socket, sys, time
os.nice(19)  # below the agents and the probes: the handover itself must not starve
sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
sock.bind((sys.argv[3], 0))  # the HA's own address: the source the MN's SAs select
payload, destination, until = b"x" * 16, (sys.argv[1], 40001), time.monotonic() + float(sys.argv[2])
sent = 0
while time.monotonic() < until:
    for _ in range(256):
        try:
            sock.sendto(payload, socket.MSG_DONTWAIT, destination)
            sent += 1
        except OSError:
            pass
print(sent)
"""


def test_no_esp_sequence_number_is_sent_twice_across_a_long_predictive_handover(clean, tmp_path):
    """A flow from the HA to the MN as fast as the guest sends it, across a predictive handover
    whose anticipation is long (the pAR keeps sending on the SA for seconds after the context was
    read): on the wire, the nAR's first sequence number on the downlink SA is above every one the
    pAR sent, and no (SPI, sequence number) pair appears twice."""
    from scapy.utils import RawPcapNgReader

    from nodes.capture import Capture

    anticipation_ms = 20_000.0  # long enough for the guest's flow (about 5,000 packets/s) to outrun 65536
    anticipation_before = clean.anticipation_ms
    scenario = config.from_dict({"anticipation_ms": anticipation_ms, "settle_ms": 200})
    clean.configure_timers(scenario.cxtp_timers(clean.testbed.link_params))
    clean.anticipation_ms = anticipation_ms
    par, nar = clean.testbed.current_ar, clean.testbed.other_ar()
    assert par is not None
    captures = [Capture(clean.testbed.host(ar), tmp_path, ar, plan.LINKS_BY_NAME[plan.ACCESS_LINK[ar]].interface(ar),
                        plan.ACCESS_LINK[ar]) for ar in (par, nar)]
    for capture in captures:
        capture.start()
    blaster = clean.testbed.host(plan.HA).popen(
        [sys.executable, "-c", _BLASTER, plan.MN_COA[par], str(anticipation_ms / 1000 + 1.5), plan.HA_ADDRESS],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        record = _handover(clean, "cxtp-predictive")
        sent = int(blaster.communicate(timeout=60)[0].split()[-1])
    finally:
        if blaster.poll() is None:
            blaster.kill()
            blaster.wait()
        for capture in captures:
            capture.stop()
        clean.anticipation_ms = anticipation_before
    _ends_well(clean, record)
    downlink_spi = record.spi_mn_in
    by_sender: dict[str, list[int]] = {}
    for capture in captures:  # streamed and read raw: a flood's capture is too large for scapy's layers
        with RawPcapNgReader(str(capture.path)) as reader:
            for frame, _ in reader:
                # Ethernet (14 octets), IPv6 with ESP as its next header (6), then SPI and sequence
                if len(frame) >= 62 and frame[12:14] == b"\x86\xdd" and frame[20] == 50:
                    spi, sequence = struct.unpack_from("!II", frame, 54)
                    if spi == downlink_spi:
                        by_sender.setdefault(capture.node, []).append(sequence)
    old, new = by_sender.get(par, []), by_sender.get(nar, [])
    assert old and new, (sent, {node: len(seqs) for node, seqs in by_sender.items()})
    print(f"flow: {sent} packets sent; the pAR sent {len(old)} on SA {downlink_spi:#x} (seq {min(old)}-{max(old)}),"
          f" the nAR {len(new)} from seq {min(new)}")
    assert min(new) > max(old), "the nAR reused sequence numbers the pAR had sent"
    pairs = [(downlink_spi, seq) for seq in old + new]
    assert len(pairs) == len(set(pairs)), "an (SPI, sequence number) pair was sent twice"


def _send_mobility_header(experiment: Experiment, source: str, data: bytes) -> None:
    """A Mobility Header message to the HA, from ``source`` on the MN's link (an address the MN's
    namespace holds: another host on the link, or a replay from the MN's own address)."""
    from nodes import mobility, netns

    sock = netns.socket_in(experiment.testbed.pid(plan.MN), socket.AF_INET6, socket.SOCK_RAW, mobility.IPPROTO_MH)
    try:
        sock.setsockopt(socket.IPPROTO_IPV6, mobility.IPV6_CHECKSUM, mobility.MH_CHECKSUM_OFFSET)
        sock.bind((source, 0))
        sock.sendto(data, (plan.HA_ADDRESS, 0))
    finally:
        sock.close()


def _refused(experiment: Experiment) -> dict[str, int]:
    return experiment.ha.binding()["refused"]


def test_binding_updates_not_from_the_mn_move_nothing(clean):
    """Forged Binding Updates for the MN's identity from another address on its link, with
    sequence numbers below, equal to and far above the MN's, and without the MN-HA key: each is
    refused (RFC 4285's MIPV6-AUTH-FAIL, counted), the binding and the sequence window stay the
    MN's, and its next handover binds and carries traffic."""
    from nodes import mobility

    record = _handover(clean, "cxtp-reactive")
    _ends_well(clean, record)
    binding = clean.ha.binding()
    last = binding["sequence"]
    intruder = str(ipaddress.IPv6Address(clean.mn_address) + 0x566)
    interface = plan.LINKS_BY_NAME[plan.ACCESS_LINK[clean.testbed.current_ar]].interface(plan.MN)
    host = clean.testbed.host(plan.MN)
    host.cmd(f"ip -6 addr add {intruder}/64 dev {interface} nodad")
    refused_before = _refused(clean).get("146", 0)
    try:
        for sequence in ((last - 5) & 0xFFFF, last, (last + 0x7FFF) & 0xFFFF):
            for key in (None, os.urandom(20)):
                forged = mobility.BindingUpdate(sequence, plan.MN_IDENTITY)
                _send_mobility_header(clean, intruder, forged.encode(key, intruder, plan.HA_ADDRESS) if key
                                      else forged.encode())
        pause(300)
        after = clean.ha.binding()
    finally:
        host.cmd(f"ip -6 addr del {intruder}/64 dev {interface}")
    assert after["care_of"] == clean.mn_address and after["sequence"] == last, after
    assert after["refused"].get("146", 0) - refused_before == 6, after
    _ends_well(clean, _handover(clean, "cxtp-reactive"))
    assert clean.ha.binding()["care_of"] == clean.mn_address


def test_a_replayed_binding_update_moves_nothing(clean, tmp_path):
    """The MN's own Binding Update, captured at the HA and sent again from the MN's address after
    the MN moved on: its timestamp is not newer than the one the HA last accepted, so it is refused
    (MIPV6-ID-MISMATCH) and the binding stays where the MN is."""
    capture = tmp_path / "mh.pcap"
    dumper = clean.testbed.host(plan.HA).popen(
        # no capture filter: in the guest, libpcap's "ip6" matches nothing on "any" (cooked v2)
        ["tcpdump", "-n", "-i", "any", "--immediate-mode", "-U", "-Z", "root", "-w", str(capture)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        assert dumper.stderr is not None
        started = [dumper.stderr.readline().decode(errors="replace") for _ in range(1)]
        while "listening on" not in started[-1] and started[-1] and len(started) < 4:  # readiness
            started.append(dumper.stderr.readline().decode(errors="replace"))
        assert "listening on" in started[-1], started
        first = _handover(clean, "cxtp-reactive")
        pause(200)
    finally:
        dumper.terminate()
        report = dumper.communicate(timeout=10)[1].decode(errors="replace")
    _ends_well(clean, first)
    messages = [bytes(packet.payload) for packet in _ipv6_packets(capture) if packet.nh == 135]
    updates = [message for message in messages if message[2] == 5]  # MH type 5: Binding Update
    assert updates, ("no Binding Update captured", report, len(messages))
    genuine = updates[-1]
    _ends_well(clean, _handover(clean, "cxtp-reactive"))  # the MN moves on: the old BU is stale
    where = clean.ha.binding()
    refused_before = _refused(clean).get("144", 0)
    # sent again from the address it was made for (the MN's earlier address, back on its link)
    old_address = first.mn_new
    interface = plan.LINKS_BY_NAME[plan.ACCESS_LINK[clean.testbed.current_ar]].interface(plan.MN)
    host = clean.testbed.host(plan.MN)
    host.cmd(f"ip -6 addr add {old_address}/128 dev {interface} nodad")
    try:
        _send_mobility_header(clean, old_address, genuine)
        pause(300)
    finally:
        host.cmd(f"ip -6 addr del {old_address}/128 dev {interface}")
    after = clean.ha.binding()
    assert after["care_of"] == where["care_of"] == clean.mn_address and after["sequence"] == where["sequence"]
    assert after["refused"].get("144", 0) - refused_before == 1, after


def _ipv6_packets(path):
    """The IPv6 packets of a capture on ``any`` (Linux cooked headers)."""
    from scapy.layers.inet6 import IPv6
    from scapy.utils import PcapReader

    with PcapReader(str(path)) as reader:
        return [packet[IPv6] for packet in reader if IPv6 in packet]
