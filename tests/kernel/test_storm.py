"""Three MNs on shared cells handing over at once, for each CXTP method and for re-authentication
(a charon per MN): every handover ok, each
MN's binding and traffic through its new AR, nothing of any MN left on the router it left, no SPI
shared by two MNs' SAs on any node, no ESP sequence number reused or refused; and the agents of
all three MNs served by one process each (the MN's and the HA's)."""

from __future__ import annotations

import collections
import time

import pytest

from nodes import netns
from scenarios import config
from scenarios.runner import methods
from scenarios.runner.experiment import Experiment, pause
from scenarios.runner.run import warm_up_crypto
from scenarios.runner.storm import Storm, StormError, static_spis
from topo import plan
from topo.network import LinkParams, Testbed

pytestmark = pytest.mark.kernel

MNS = 3
SCENARIO = config.from_dict({"settle_ms": 300})
LINKS = {plan.ACCESS: LinkParams(delay_ms=2.0), plan.AR_AR: LinkParams(delay_ms=5.0),
         plan.AR_HA: LinkParams(delay_ms=10.0), plan.AR_AAA: LinkParams(delay_ms=10.0)}
#: each MN's probes during storms: one every 20 ms each way, the interruption's resolution
STORM_PROBE_RATE = 50.0
L2_DELAY_MS = 50.0
CXTP_METHODS = ("cxtp-predictive", "cxtp-reactive", "cxtp-network")
#: the kernel's counters of ESP refused for its sequence number (a reused or stale one)
SEQUENCE_ERRORS = ("XfrmInStateSeqError", "XfrmOutStateSeqError")


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("storm")
    with Testbed(LINKS, mns=MNS) as testbed:
        warm_up_crypto(testbed, "aes-cbc-sha256")
        experiment = Experiment(testbed, run_dir, timers=SCENARIO.cxtp_timers(testbed.link_params),
                                probe_rate=STORM_PROBE_RATE, storm_probe_rate=STORM_PROBE_RATE, tcp_interval_ms=0)
        try:
            pause(300)
            yield testbed, experiment, Storm(experiment)
        finally:
            experiment.stop()


def _xfrm_stat(testbed: Testbed, target: int | str) -> dict[str, int]:
    def read() -> str:
        with open("/proc/thread-self/net/xfrm_stat") as handle:
            return handle.read()
    text = netns.call_in(target, read)
    return {name: int(value) for name, value in (line.split() for line in text.splitlines() if line.strip())}


def _targets(testbed: Testbed) -> dict[str, int | str]:
    nodes: dict[str, int | str] = {ar: testbed.pid(ar) for ar in plan.ACCESS_ROUTERS}
    nodes.update({plan.mn_node(index): testbed.mn_target(index) for index in range(testbed.mns)})
    return nodes


def _spis_by_mn(experiment: Experiment, testbed: Testbed) -> dict[str, dict[int, set[int]]]:
    """Per AR and MN: the SPIs of the SAs that name that MN's addresses."""
    found: dict[str, dict[int, set[int]]] = collections.defaultdict(dict)
    for ar in plan.ACCESS_ROUTERS:
        for index in range(testbed.mns):
            spis = set()
            for address in (plan.mn_coa(index, other) for other in plan.ACCESS_ROUTERS):
                spis |= {sa.spi for sa in experiment.xfrm_state(ar, address).sas}
            found[ar][index] = spis
    return found


def _assert_spis_apart_and_no_sequence_error(experiment: Experiment, testbed: Testbed,
                                              before: dict[str, dict[str, int]]) -> None:
    """No two MNs' SAs share an SPI on any AR; no node's kernel refused ESP for its sequence
    number since ``before`` (its xfrm_stat then)."""
    for ar, by_mn in _spis_by_mn(experiment, testbed).items():
        seen: dict[int, int] = {}
        for index, spis in by_mn.items():
            for spi in spis:
                assert seen.setdefault(spi, index) == index, (ar, hex(spi), seen[spi], index)
    after = {node: _xfrm_stat(testbed, target) for node, target in _targets(testbed).items()}
    for node in after:
        for counter in SEQUENCE_ERRORS:
            assert after[node].get(counter, 0) == before[node].get(counter, 0), (node, counter)


@pytest.mark.parametrize("name", CXTP_METHODS)
def test_three_mns_hand_over_at_once(fleet, name):
    testbed, experiment, storm = fleet
    method = methods.get(name)
    storm.enter(method)
    pause(300)
    before = {node: _xfrm_stat(testbed, target) for node, target in _targets(testbed).items()}
    origins = dict(testbed.attached)
    movers = list(range(MNS))
    records = storm.storm(method, movers, L2_DELAY_MS)
    assert [record.outcome for record in records] == ["ok"] * MNS, \
        [(record.mn, record.outcome, record.failure and record.failure.reason) for record in records]
    assert [record.mn for record in records] == [plan.mn_identity(index) for index in movers]
    # they did move at once: every attach before any MN was done
    assert max(record.attached_ns for record in records) < min(record.restored_ns for record in records)
    assert testbed.attached == {index: plan.NAR if origins[index] == plan.PAR else plan.PAR for index in movers}
    timers = experiment.timers
    pause(200)  # the probes of the new path
    problems = storm.wait_released(records, movers, timers["release_hold"] + timers["late_ctdr_grace"] + 2)
    assert problems == {}, problems
    _assert_spis_apart_and_no_sequence_error(experiment, testbed, before)


@pytest.mark.parametrize("name", ("reauth-psk", "reauth-eap"))
def test_three_mns_reauthenticate_at_once(fleet, name):
    """A storm of full re-authentication: each MN's own charon authenticates at its nAR at once
    (EAP relayed by the nAR's one charon to the one FreeRADIUS), its SAs with the pAR go; every
    MN ok, one IKE_SA each and nothing of it at the pAR, SPIs apart, and the AAA's work for each MN
    recorded from the capture at the AAA node."""
    testbed, experiment, storm = fleet
    method = methods.get(name)
    storm.enter(method)
    pause(300)
    baseline = experiment.baseline
    assert baseline is not None and baseline.mns == MNS
    before = {node: _xfrm_stat(testbed, target) for node, target in _targets(testbed).items()}
    origins = dict(testbed.attached)
    movers = list(range(MNS))
    records = storm.storm(method, movers, L2_DELAY_MS)
    assert [record.outcome for record in records] == ["ok"] * MNS, \
        [(record.mn, record.outcome, record.failure and record.failure.reason) for record in records]
    assert max(record.attached_ns for record in records) < min(record.restored_ns for record in records)
    for record, index in zip(records, movers):
        nar, par = record.to_ar, record.from_ar
        assert nar != origins[index] and par == origins[index]
        assert record.reauth is not None and record.reauth["elapsed_ms"] > 0
        assert record.reauth["ike_requests"] >= 2, record.reauth  # IKE_SA_INIT, IKE_AUTH at least
        # one IKE_SA on the MN (with its nAR) and one on the nAR from its new care-of address
        assert len(baseline._mn_sas(plan.mn_node(index), "to-" + nar, nar, index)) == 1
        assert len(baseline._mn_sas(nar, "access", nar, index)) == 1
        assert baseline._mn_sas(par, "access", par, index) == []
        if method.security.ike_auth.startswith("eap-"):
            # EAP-MSCHAPv2: Identity-less start, challenge, response, success: Access-Requests each
            assert record.reauth["aaa_requests"] >= 3, record.reauth
            assert 0 < record.reauth["aaa_residence_ms"] <= record.reauth["aaa_span_ms"], record.reauth
            assert record.reauth["aaa_span_ms"] < record.reauth["elapsed_ms"], record.reauth
        else:
            assert "aaa_requests" not in record.reauth
    pause(200)
    timers = experiment.timers
    problems = storm.wait_released(records, movers, timers["release_hold"] + timers["late_ctdr_grace"] + 2)
    assert problems == {}, problems
    _assert_spis_apart_and_no_sequence_error(experiment, testbed, before)


def test_one_mn_moves_while_the_others_stay(fleet):
    """Only MN 1 moves: it is ok, and the others keep their binding and their traffic where they are."""
    testbed, experiment, storm = fleet
    method = methods.get("cxtp-reactive")
    staying = {index: testbed.attached[index] for index in (0, 2)}
    [record] = storm.storm(method, [1], L2_DELAY_MS)
    assert record.outcome == "ok", record.failure and record.failure.reason
    pause(300)  # a few of its probes (one each way every 20 ms) since MN 1 was done
    timers = experiment.timers
    assert storm.wait_released([record], [1], timers["release_hold"] + timers["late_ctdr_grace"] + 2) == {}
    # only the moving MN's probes run during a storm: the others' again, to see where they flow
    experiment.ha.pace_probes(identities=[plan.mn_identity(index) for index in staying], every=1)
    since = time.monotonic_ns()
    pause(300)
    for index, ar in staying.items():
        assert testbed.attached[index] == ar
        binding = experiment.ha.binding(identity=plan.mn_identity(index))["care_of"]
        assert binding in (None, plan.mn_coa(index, ar))  # None: never moved yet (the tunnels start there)
        arrivals = experiment.ha.arrivals(since_ns=since, identity=plan.mn_identity(index))
        assert arrivals[plan.MN].get(plan.home_tunnel(plan.MN, ar)), (index, arrivals)
        assert arrivals[plan.HA].get(plan.ha_home_tunnel(index, ar)), (index, arrivals)


@pytest.mark.parametrize("name", ("cxtp-predictive", "cxtp-reactive"))
@pytest.mark.parametrize("gap_ms", (50.0, 300.0))
def test_every_mn_moving_back_at_once_ends_ok_or_recovered(fleet, name, gap_ms):
    """A ping-pong storm: every MN moves and, ``gap_ms`` after its attach, moves back (its first
    transfer may not have ended). Each ends ok, or recovered by its reactive retry, back where it
    came from, with nothing of it left where it went, its binding and traffic where it is."""
    testbed, experiment, storm = fleet
    origins = dict(testbed.attached)
    movers = list(range(MNS))
    records = storm.storm(methods.get(name), movers, L2_DELAY_MS, back_after_ms=gap_ms)
    assert {record.outcome for record in records} <= {"ok", "recovered"}, \
        [(record.mn, record.outcome, record.failure and record.failure.reason) for record in records]
    assert testbed.attached == origins
    assert all(record.to_ar == origins[index] for record, index in zip(records, movers))
    pause(300)
    timers = experiment.timers
    problems = storm.wait_released(records, movers, timers["release_hold"] + timers["late_ctdr_grace"] + 2)
    assert problems == {}, problems


def test_static_spis_never_collide():
    seen = set()
    for index in range(1, 200):
        for generation in range(50):
            pair = static_spis(index, generation)
            assert not seen & set(pair)
            seen |= set(pair)
    assert min(seen) > 0x1000 * 255 + 0x102  # above every SPI MN 0's own static attaches use


def test_a_storm_refuses_what_it_cannot_run(fleet):
    _, _, storm = fleet
    for name in ("reauth-eap-tls", "mobike", "preauth-eap", "cxtp-reactive-ike"):
        with pytest.raises(StormError):
            storm.storm(methods.get(name), [0], L2_DELAY_MS)
    with pytest.raises(StormError):
        storm.storm(methods.get("cxtp-reactive"), [0, 0], L2_DELAY_MS)
    with pytest.raises(StormError):
        storm.storm(methods.get("cxtp-reactive"), [MNS], L2_DELAY_MS)
