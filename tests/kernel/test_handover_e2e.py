"""One full handover per method in the paper's topology: protected traffic resumes through the
nAR, the MN's and nAR's SAD/SPD equal Tables I-IV, the pAR keeps nothing of the MN, and the
access link carries only ESP for the protected flow."""

from __future__ import annotations

import json
import subprocess

import pytest

from scenarios import checks, metrics
from scenarios.experiment import CXTP_METHODS, SPI_MN_IN, SPI_MN_OUT, Experiment, _pause
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
        experiment = Experiment(testbed, run_dir)
        try:
            _pause(300)
            yield experiment
        finally:
            experiment.stop()


def _sa_packets(experiment: Experiment, node: str, address: str) -> dict[int, int]:
    return {sa.spi: sa.current.packets for sa in experiment.xfrm_state(node, address).sas}


@pytest.mark.parametrize("method", CXTP_METHODS)
def test_cxtp_handover_restores_protected_traffic_through_the_nar(experiment, method):
    record = experiment.handover(method, l2_delay_ms=50.0)
    assert record["completed"], "the MN's CTAR or binding update never completed"
    par, nar = record["from_ar"], record["to_ar"]
    mn_new = record["mn_new"]
    # Tables I-IV, and nothing of the MN left on the pAR.
    problems = checks.check_tables(
        experiment.xfrm_state(plan.MN, mn_new), experiment.xfrm_state(nar, mn_new),
        experiment.xfrm_state(par, record["mn_previous"]), mn_new, plan.AR_ACCESS_ADDRESS[nar],
        plan.HA_ADDRESS, SPI_MN_IN, SPI_MN_OUT)
    assert problems == []
    # Protected traffic flows through the nAR in both directions: its SAs count packets.
    before = _sa_packets(experiment, nar, mn_new)
    _pause(300)
    after = _sa_packets(experiment, nar, mn_new)
    assert after[SPI_MN_OUT] - before[SPI_MN_OUT] > 100, "no uplink ESP decrypted at the nAR"
    assert after[SPI_MN_IN] - before[SPI_MN_IN] > 100, "no downlink ESP encrypted at the nAR"
    assert experiment.agents[plan.HA].request("binding")["care_of"] == mn_new


def test_access_link_carries_only_esp_for_the_protected_flow(experiment, tmp_path):
    """A capture on the MN's access link: the probe flow appears only as ESP (signalling, ND and
    the Mobility Header are outside the tunnel by design, paper §VI-A)."""
    experiment.set_ipsec(True)
    testbed = experiment.testbed
    interface = plan.LINKS_BY_NAME[plan.ACCESS_LINK[testbed.current_ar]].interface(plan.MN)
    capture = tmp_path / "access.pcap"
    output = testbed.cmd(plan.MN, f"timeout 2 tcpdump -n -i {interface} -w {capture} -c 400 -Q out 2>&1",
                         check=False)
    from scapy.all import rdpcap
    from scapy.layers.inet6 import IPv6

    packets = [packet for packet in rdpcap(str(capture)) if IPv6 in packet]
    assert len(packets) > 100, output
    protocols = {packet[IPv6].nh for packet in packets}
    assert 50 in protocols  # ESP
    assert 17 not in protocols, "a UDP probe left the MN in clear"


def test_none_handover_has_no_ipsec_state(experiment):
    record = experiment.handover("none", l2_delay_ms=50.0)
    assert record["completed"]
    for node in (plan.MN, plan.PAR, plan.NAR):
        assert experiment.xfrm_state(node, record["mn_new"]).sas == ()
