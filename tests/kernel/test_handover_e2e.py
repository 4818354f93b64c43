"""One full handover per method in the paper's topology: protected traffic resumes through the
nAR, the MN's and nAR's SAD/SPD equal Tables I-IV, the pAR keeps nothing of the MN, and the
access link carries only ESP for the protected flow."""

from __future__ import annotations

import subprocess
import time

import pytest

# Imported before any traffic starts: loading scapy takes seconds in the guest, many more once the
# probe streams keep its one CPU busy.
from scapy.layers.inet6 import IPv6
from scapy.utils import rdpcap

from scenarios import config
from scenarios.analysis import checks, metrics, report
from scenarios.runner import methods
from scenarios.runner.experiment import SPI_MN_IN, Experiment, HandoverFailed, pause
from scenarios.runner.run import warm_up_crypto
from topo import plan
from topo.network import LinkParams, Testbed

pytestmark = pytest.mark.kernel


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("e2e")
    links = {plan.ACCESS: LinkParams(delay_ms=2.0), plan.AR_AR: LinkParams(delay_ms=5.0),
             plan.AR_HA: LinkParams(delay_ms=10.0), plan.AR_AAA: LinkParams(delay_ms=10.0)}
    with Testbed(links) as testbed:
        warm_up_crypto(testbed, "aes-cbc-sha256")
        scenario = config.load(None)
        experiment = Experiment(testbed, run_dir, timers=scenario.cxtp_timers(testbed.link_params))
        try:
            pause(300)
            yield experiment
        finally:
            experiment.stop()


def _wait_released(experiment: Experiment, par: str, mn_previous: str, timeout_s: float = 2.0) -> None:
    """The MN is done once its CTAA arrived; the pAR releases after the CTDR, a moment later."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        context = experiment.xfrm_state(par, mn_previous)
        if not context.sas and not context.policies:
            return
        pause(20)


def _sa_packets(experiment: Experiment, node: str, address: str) -> dict[int, int]:
    return {sa.spi: sa.current.packets for sa in experiment.xfrm_state(node, address).sas}


def _sa_packets_counting(experiment, node: str, address: str, packets: int, within_s: float = 10.0) -> dict:
    """How many packets each SA of ``node`` for ``address`` counted from now until each counted
    more than ``packets`` (1000 probes/s each way: a tenth of a second), or ``within_s`` passed:
    a host that stalls the whole guest delays the probes; it does not make a check fail."""
    before = _sa_packets(experiment, node, address)
    deadline = time.monotonic() + within_s
    while True:
        pause(100)
        after = _sa_packets(experiment, node, address)
        counted = {spi: after[spi] - before.get(spi, 0) for spi in after}
        if (counted and all(value > packets for value in counted.values())) or time.monotonic() > deadline:
            return counted


@pytest.mark.parametrize("method", ("cxtp-predictive", "cxtp-reactive", "cxtp-network"))
def test_cxtp_handover_restores_protected_traffic_through_the_nar(experiment, method):
    record = experiment.handover(methods.get(method), l2_delay_ms=50.0)
    assert record.completed, "the MN's CTAR or binding update never completed"
    par, nar = record.from_ar, record.to_ar
    mn_new = record.mn_new
    _wait_released(experiment, par, record.mn_previous)
    # Tables I-IV, and nothing of the MN left on the pAR.
    problems = checks.check_tables(
        experiment.xfrm_state(plan.MN, mn_new), experiment.xfrm_state(nar, mn_new),
        experiment.xfrm_state(par, record.mn_previous), mn_new, plan.AR_ACCESS_ADDRESS[nar],
        plan.HA_ADDRESS, record.spi_mn_in, record.spi_mn_out)
    assert problems == []
    # Protected traffic flows through the nAR in both directions: its SAs count packets.
    counted = _sa_packets_counting(experiment, nar, mn_new, 100)
    assert counted[record.spi_mn_out] > 100, ("no uplink ESP decrypted at the nAR", counted)
    assert counted[record.spi_mn_in] > 100, ("no downlink ESP encrypted at the nAR", counted)
    assert experiment.ha.binding()["care_of"] == mn_new


def _capture_outbound(host, interface: str, path, count: int) -> str:
    """``tcpdump -Q out``: only what the host puts on the wire, after ESP (an inbound capture
    also sees the kernel's decapsulated copy of each ESP packet, which never crossed the link)."""
    tcpdump = host.popen(["tcpdump", "-U", "-n", "-Q", "out", "-i", interface, "-w", str(path), "-c", str(count),
                          "ip6"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        return tcpdump.communicate(timeout=30)[0].decode(errors="replace")
    finally:
        if tcpdump.poll() is None:
            tcpdump.kill()
            tcpdump.wait()


def test_access_link_carries_only_esp_for_the_protected_flow(experiment, tmp_path):
    """What each end of the MN's access link sends: the probe flow only as ESP, both ways
    (signalling, ND and the Mobility Header are outside the tunnel by design, paper §VI-A)."""
    experiment.enter(methods.STATIC_TUNNEL)
    testbed = experiment.testbed
    ar = testbed.current_ar
    link = plan.LINKS_BY_NAME[plan.ACCESS_LINK[ar]]
    mn_address = experiment.mn_address
    for node, direction in ((plan.MN, "src"), (ar, "dst")):
        capture = tmp_path / f"{node}-out.pcap"
        output = _capture_outbound(testbed.host(node), link.interface(node), capture, 1500)
        packets = [packet for packet in rdpcap(str(capture)) if IPv6 in packet
                   and getattr(packet[IPv6], direction) == mn_address]
        assert len(packets) > 100, (node, output)
        protocols = {packet[IPv6].nh for packet in packets}
        assert 50 in protocols, (node, protocols)
        assert 17 not in protocols, f"a UDP probe crossed the access link in clear, sent by {node}"


def test_none_handover_has_no_ipsec_state(experiment):
    record = experiment.handover(methods.get("none"), l2_delay_ms=50.0)
    assert record.completed
    for node in (plan.MN, plan.PAR, plan.NAR):
        assert experiment.xfrm_state(node, record.mn_new).sas == ()


def test_cxtp_between_the_ars_travels_in_esp(experiment):
    """RFC 4067 §6.2: CXTP between ARs is protected by ESP (transport mode, set up in advance)."""
    nar_link = plan.AR_LINK_ADDRESS[plan.NAR]
    before = {sa.spi: sa.current.packets for sa in experiment.xfrm_state(plan.NAR, nar_link).sas}
    record = experiment.handover(methods.get("cxtp-reactive"), l2_delay_ms=20.0)
    assert record.completed
    after = {sa.spi: sa.current.packets for sa in experiment.xfrm_state(plan.NAR, nar_link).sas}
    assert len(after) == 2
    # CT-Req and CTDR left the nAR, the CTD arrived: both SAs carried SCTP packets.
    assert all(after[spi] > before.get(spi, 0) for spi in after), (before, after)


def test_cxtp_moves_sas_that_ike_negotiated(experiment):
    """Issue: CXTP also starts from SAs IKEv2 negotiated at the pAR; the kernel SAs and policies
    move (Tables I-IV with IKE's SPIs), the IKE SA stays behind at the pAR."""
    record = experiment.handover(methods.get("cxtp-reactive-ike"), l2_delay_ms=50.0)
    assert record.completed and "IKE SA stays behind" in record.note
    assert record.spi_mn_in not in (None, SPI_MN_IN)  # chosen by IKE, not the static ones
    par, nar, mn_new = record.from_ar, record.to_ar, record.mn_new
    _wait_released(experiment, par, record.mn_previous)
    problems = checks.check_tables(
        experiment.xfrm_state(plan.MN, mn_new), experiment.xfrm_state(nar, mn_new),
        experiment.xfrm_state(par, record.mn_previous), mn_new, plan.AR_ACCESS_ADDRESS[nar],
        plan.HA_ADDRESS, record.spi_mn_in, record.spi_mn_out)
    assert problems == []
    counted = _sa_packets_counting(experiment, nar, mn_new, 100)
    assert counted and all(value > 100 for value in counted.values()), counted
    # The IKE SA stayed behind: the pAR's charon still lists it.
    assert experiment.baseline.list_sas(par)


@pytest.mark.parametrize("method", [
    pytest.param(name, marks=pytest.mark.xfail(strict=True, raises=HandoverFailed,
                                                     reason=methods.get(name).unavailable or ""))
    if methods.get(name).unavailable else name for name in methods.names()])
def test_every_timeline_step_the_analysis_needs_is_traced(experiment, method):
    """The contract between the agents and the analysis: a handover of each method traces every
    event its timeline needs (``metrics.TIMELINE_STEPS``, by the method's kinds), under the names
    ``nodes.contracts.TraceEvent`` declares. Renaming an event on one side only fails here."""
    declared = methods.get(method)
    record = experiment.handover(declared, l2_delay_ms=20.0)
    assert record.completed, record
    if declared.cxtp:
        _wait_released(experiment, record.from_ar, record.mn_previous)
    pause(300)  # the agents write their traces out once idle
    steps = metrics.timeline(record, report.read_traces(experiment.run_dir), {}, time.monotonic_ns())
    missing = [step for step in metrics.required_steps(declared.kinds) if step not in steps]
    assert not missing, (method, missing, sorted(steps))
