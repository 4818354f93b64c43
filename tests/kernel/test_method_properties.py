"""The security properties every method declares (scenarios/runner/properties.py) hold in the
kernel, after a real handover of that method through the runner: whether the MN's keys after the
move are fresh, whether they come from a Diffie-Hellman exchange, which segment the SAs protect
(their outer addresses) and which nodes hold the MN's SAs afterwards. The README's and the
report's "choose a method" table cite this test for each cell."""

from __future__ import annotations

import pytest

from scenarios import config
from scenarios.runner import methods, properties
from scenarios.runner.experiment import Experiment, pause
from scenarios.runner.run import run_handover, warm_up_crypto
from topo import plan
from topo.network import LinkParams, Testbed

pytestmark = pytest.mark.kernel

SCENARIO = config.from_dict({"settle_ms": 200})
LINKS = {plan.ACCESS: LinkParams(delay_ms=1.0), plan.AR_AR: LinkParams(delay_ms=2.0),
         plan.AR_HA: LinkParams(delay_ms=2.0), plan.AR_AAA: LinkParams(delay_ms=2.0)}
CHECKED = [pytest.param(name, marks=pytest.mark.xfail(strict=True, reason=methods.get(name).unavailable or ""))
           if methods.get(name).unavailable else name
           for name in methods.names() if properties.of(name) is not None]


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    with Testbed(LINKS) as testbed:
        warm_up_crypto(testbed, "aes-cbc-sha256")
        experiment = Experiment(testbed, tmp_path_factory.mktemp("properties"),
                                timers=SCENARIO.cxtp_timers(testbed.link_params), tcp_interval_ms=0)
        try:
            pause(300)
            yield experiment
        finally:
            experiment.stop()


def _keys(context) -> set[bytes]:
    return {algorithm.key for sa in context.sas for algorithm in sa.algorithms if algorithm.key}


def _has_dh_group(entry) -> bool:
    """Whether a decoded VICI list-sas entry names a Diffie-Hellman group anywhere in it."""
    if isinstance(entry, dict):
        return any(key == "dh-group" and value for key, value in entry.items()) or \
            any(_has_dh_group(value) for value in entry.values())
    if isinstance(entry, list):
        return any(_has_dh_group(value) for value in entry)
    return False


@pytest.mark.parametrize("method", CHECKED)
def test_the_declared_properties_hold(experiment, method):
    declared, expected = methods.get(method), properties.of(method)
    assert expected is not None
    experiment.enter(declared.security)
    pause(200)
    before = experiment.xfrm_state(plan.MN, experiment.mn_address)
    assert _keys(before), "the MN has no keyed SA before the move"
    timers = experiment.timers
    record = run_handover(experiment, declared, 20.0, SCENARIO, timers["release_hold"] + timers["late_ctdr_grace"])
    assert record.outcome == "ok", (record.failure and record.failure.reason, record.transfer_failure)
    after = experiment.xfrm_state(plan.MN, record.mn_new)
    # fresh keys: none of the keys in use after the move was in use before it
    assert _keys(after) and (not (_keys(after) & _keys(before))) == expected.fresh_keys
    # the protected segment: the outer addresses of the MN's outbound SAs
    peers = {sa.daddr for sa in after.sas if sa.saddr == record.mn_new}
    segment = {plan.AR_ACCESS_ADDRESS[record.to_ar]: properties.ACCESS_LINK, plan.HA_ADDRESS: properties.END_TO_END}
    assert {segment.get(peer, peer) for peer in peers} == {expected.protects}, peers
    # where the state is: the nodes besides the MN holding SAs or policies of its new address
    holders = {node for node in (plan.PAR, plan.NAR, plan.HA) if experiment.xfrm_state(node, record.mn_new).sas}
    assert holders == {record.to_ar if where == "nar" else where for where in expected.state_at}, holders
    # forward secrecy: the keys came from an IKEv2 exchange (its IKE SA names a DH group) or not
    if declared.security.ike_auth is None:
        assert not expected.forward_secrecy and experiment.baseline is None
    else:
        assert experiment.baseline is not None
        peer = plan.HA if declared.security.gateway else (record.from_ar if declared.cxtp else record.to_ar)
        assert _has_dh_group(experiment.baseline.list_sas(peer)) == expected.forward_secrecy
