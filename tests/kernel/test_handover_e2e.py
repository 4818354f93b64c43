"""One full handover per method in the paper's topology: protected traffic resumes through the
nAR, the MN's and nAR's SAD/SPD equal Tables I-IV, the pAR keeps nothing of the MN, and the
access link carries only ESP for the protected flow."""

from __future__ import annotations

import json
import subprocess
import time

import pytest
# Imported before any traffic starts: loading scapy takes seconds in the guest, many more once the
# probe streams keep its one CPU busy.
from scapy.layers.inet6 import IPv6
from scapy.utils import rdpcap

from scenarios import checks, config, methods
from scenarios.experiment import SPI_MN_IN, Experiment, _pause
from scenarios.run import warm_up_crypto
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
            _pause(300)
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
        _pause(20)


def _sa_packets(experiment: Experiment, node: str, address: str) -> dict[int, int]:
    return {sa.spi: sa.current.packets for sa in experiment.xfrm_state(node, address).sas}


@pytest.mark.parametrize("method", ("cxtp-predictive", "cxtp-reactive", "cxtp-network"))
def test_cxtp_handover_restores_protected_traffic_through_the_nar(experiment, method):
    record = experiment.handover(methods.get(method), l2_delay_ms=50.0)
    assert record["completed"], "the MN's CTAR or binding update never completed"
    par, nar = record["from_ar"], record["to_ar"]
    mn_new = record["mn_new"]
    _wait_released(experiment, par, record["mn_previous"])
    # Tables I-IV, and nothing of the MN left on the pAR.
    problems = checks.check_tables(
        experiment.xfrm_state(plan.MN, mn_new), experiment.xfrm_state(nar, mn_new),
        experiment.xfrm_state(par, record["mn_previous"]), mn_new, plan.AR_ACCESS_ADDRESS[nar],
        plan.HA_ADDRESS, record["spi_mn_in"], record["spi_mn_out"])
    assert problems == []
    # Protected traffic flows through the nAR in both directions: its SAs count packets.
    before = _sa_packets(experiment, nar, mn_new)
    _pause(300)
    after = _sa_packets(experiment, nar, mn_new)
    assert after[record["spi_mn_out"]] - before[record["spi_mn_out"]] > 100, "no uplink ESP decrypted at the nAR"
    assert after[record["spi_mn_in"]] - before[record["spi_mn_in"]] > 100, "no downlink ESP encrypted at the nAR"
    assert experiment.agents[plan.HA].request("binding")["care_of"] == mn_new


def test_access_link_carries_only_esp_for_the_protected_flow(experiment, tmp_path):
    """A capture on the MN's access link: the probe flow appears only as ESP (signalling, ND and
    the Mobility Header are outside the tunnel by design, paper §VI-A)."""
    experiment.enter(methods.STATIC_TUNNEL)
    testbed = experiment.testbed
    interface = plan.LINKS_BY_NAME[plan.ACCESS_LINK[testbed.current_ar]].interface(plan.MN)
    capture = tmp_path / "access.pcap"
    tcpdump = testbed.host(plan.MN).popen(["tcpdump", "-U", "-n", "-i", interface, "-w", str(capture), "-c", "3000"],
                                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        output = tcpdump.communicate(timeout=30)[0].decode(errors="replace")
    finally:
        if tcpdump.poll() is None:
            tcpdump.kill()
            tcpdump.wait()
    mn_address = experiment.mn_address
    packets = [packet for packet in rdpcap(str(capture)) if IPv6 in packet]
    sent = [packet for packet in packets if packet[IPv6].src == mn_address]
    received = [packet for packet in packets if packet[IPv6].dst == mn_address]
    assert len(sent) > 100 and len(received) > 100, output
    sent_protocols = [packet[IPv6].nh for packet in sent]
    assert 50 in sent_protocols and 17 not in sent_protocols, "a UDP probe left the MN in clear"
    # Inbound, the kernel hands each decapsulated packet to the capture again, as if received
    # on the interface: every clear UDP packet seen must follow an ESP packet that carried it.
    received_protocols = [packet[IPv6].nh for packet in received]
    assert 50 in received_protocols
    assert received_protocols.count(17) <= received_protocols.count(50)


def test_none_handover_has_no_ipsec_state(experiment):
    record = experiment.handover(methods.get("none"), l2_delay_ms=50.0)
    assert record["completed"]
    for node in (plan.MN, plan.PAR, plan.NAR):
        assert experiment.xfrm_state(node, record["mn_new"]).sas == ()


def test_cxtp_between_the_ars_travels_in_esp(experiment):
    """RFC 4067 §6.2: CXTP between ARs is protected by ESP (transport mode, set up in advance)."""
    par_link, nar_link = plan.AR_LINK_ADDRESS[plan.PAR], plan.AR_LINK_ADDRESS[plan.NAR]
    before = {sa.spi: sa.current.packets for sa in experiment.xfrm_state(plan.NAR, nar_link).sas}
    record = experiment.handover(methods.get("cxtp-reactive"), l2_delay_ms=20.0)
    assert record["completed"]
    after = {sa.spi: sa.current.packets for sa in experiment.xfrm_state(plan.NAR, nar_link).sas}
    assert len(after) == 2
    # CT-Req and CTDR left the nAR, the CTD arrived: both SAs carried SCTP packets.
    assert all(after[spi] > before.get(spi, 0) for spi in after), (before, after)


def test_cxtp_moves_sas_that_ike_negotiated(experiment):
    """Issue: CXTP also starts from SAs IKEv2 negotiated at the pAR; the kernel SAs and policies
    move (Tables I-IV with IKE's SPIs), the IKE SA stays behind at the pAR."""
    record = experiment.handover(methods.get("cxtp-reactive-ike"), l2_delay_ms=50.0)
    assert record["completed"] and "IKE SA stays behind" in record["note"]
    assert record["spi_mn_in"] not in (None, SPI_MN_IN)  # chosen by IKE, not the static ones
    par, nar, mn_new = record["from_ar"], record["to_ar"], record["mn_new"]
    _wait_released(experiment, par, record["mn_previous"])
    problems = checks.check_tables(
        experiment.xfrm_state(plan.MN, mn_new), experiment.xfrm_state(nar, mn_new),
        experiment.xfrm_state(par, record["mn_previous"]), mn_new, plan.AR_ACCESS_ADDRESS[nar],
        plan.HA_ADDRESS, record["spi_mn_in"], record["spi_mn_out"])
    assert problems == []
    before = _sa_packets(experiment, nar, mn_new)
    _pause(300)
    after = _sa_packets(experiment, nar, mn_new)
    assert all(after[spi] - before[spi] > 100 for spi in after), (before, after)
    # The IKE SA stayed behind: the pAR's charon still lists it.
    assert experiment.baseline.list_sas(par)
