"""Pre-authentication (make-before-break) in the kernel, through the runner's own
:func:`scenarios.runner.run.run_handover`: ``preauth-eap`` and ``preauth-psk`` handovers back and
forth, with ``reauth-eap`` and ``reauth-psk`` handovers of the same run to compare with.

Asserted: every handover is ``ok``; the IKE_SA and CHILD_SA with the nAR were set up and moved to
the future care-of address before the detach (charon's VICI ``child-updown`` event, the IKE_SA's SPIs
still the same after the move); no IKE_SA_INIT, IKE_AUTH or CREATE_CHILD_SA after the attach (the
IKE messages on the MN's links); each direction's interruption (the runner's own analysis,
:func:`scenarios.analysis.metrics.per_handover`) below the re-authentication's of the same
authentication; the RADIUS Access-Requests each pre-authentication cost; that the nAR accepts
nothing through the pre-established SAs while the MN is still at the pAR (the MN sends under them
on purpose: the pAR drops it, the nAR decrypts nothing, the HA receives nothing); that a cancelled
pre-authentication leaves nothing behind; and that nothing of the previous care-of address is left
on any node (kernels and charons) after each move.
"""

from __future__ import annotations

import dataclasses
import json
import socket
import statistics
import time

import pytest

from ipsec.xfrm import Xfrm
from nodes import netns
from scenarios import config
from scenarios import records as records_module
from scenarios.analysis import metrics
from scenarios.runner import methods
from scenarios.runner.baseline import PreauthBaseline, mn_preauth_connection_name
from scenarios.runner.experiment import Experiment, Move, pause
from scenarios.runner.run import run_handover, warm_up_crypto
from topo import plan
from topo.network import LinkParams, Testbed

pytestmark = pytest.mark.kernel

SCENARIO = config.from_dict({"settle_ms": 300})
LINKS = {plan.ACCESS: LinkParams(delay_ms=2.0), plan.AR_AR: LinkParams(delay_ms=5.0),
         plan.AR_HA: LinkParams(delay_ms=10.0), plan.AR_AAA: LinkParams(delay_ms=10.0)}
PREAUTH_HANDOVERS = 4
REAUTH_HANDOVERS = 2
#: the order the run takes: each re-authentication baseline, then its pre-authentication
PLAN = (("none", PREAUTH_HANDOVERS), ("reauth-eap", REAUTH_HANDOVERS), ("preauth-eap", PREAUTH_HANDOVERS),
        ("preauth-eap-cancelled", 2), ("reauth-psk", REAUTH_HANDOVERS), ("preauth-psk", PREAUTH_HANDOVERS))
PROBE_PORT = 47999
PROBES_SENT = 5
NEW_EXCHANGES = ("IKE_SA_INIT", "IKE_AUTH", "CREATE_CHILD_SA")


def _xfrm_stat(testbed: Testbed, node: str) -> dict[str, int]:
    with open(f"/proc/{testbed.pid(node)}/net/xfrm_stat") as stat:
        return {name: int(value) for name, value in (line.split() for line in stat if line.strip())}


def _sas(testbed: Testbed, node: str) -> list:
    with Xfrm(netns=f"/proc/{testbed.pid(node)}/ns/net") as xfrm:
        return xfrm.dump_sas()


def _kernel_names(testbed: Testbed, node: str, address: str) -> list[str]:
    with Xfrm(netns=f"/proc/{testbed.pid(node)}/ns/net") as xfrm:
        found = [f"SA {sa.saddr}->{sa.daddr}" for sa in xfrm.dump_sas() if address in (sa.saddr, sa.daddr)]
        for policy in xfrm.dump_policies():
            if policy.dir >= 3:
                continue  # charon's per-socket bypasses
            addresses = {policy.selector.saddr, policy.selector.daddr}
            addresses |= {value for template in policy.templates for value in (template.saddr, template.daddr)}
            if address in addresses:
                found.append(f"policy dir {policy.dir} {policy.selector.saddr}->{policy.selector.daddr}")
    return found


def _early_traffic(testbed: Testbed, move: Move) -> dict:
    """While the MN is still at the pAR, with the SAs pre-established for its care-of address at the
    nAR: the MN sends UDP from that address (a freely bound socket: the address is not yet its) to
    the HA, which its own policy for the pre-established CHILD_SA takes into ESP towards the nAR.
    Returns what each node saw: the MN's outbound SA's packet count (it did send under it), the
    pAR's refusals, the nAR's inbound SA's count (decrypted), and what reached the HA."""
    new, nar_address = move.mn_new, move.nar_address
    outbound = [sa for sa in _sas(testbed, plan.MN) if (sa.saddr, sa.daddr) == (new, nar_address)]
    inbound = [sa for sa in _sas(testbed, move.nar) if (sa.saddr, sa.daddr) == (new, nar_address)]
    assert len(outbound) == 1 and len(inbound) == 1, (outbound, inbound)
    before = {node: _xfrm_stat(testbed, node) for node in (move.par, move.nar)}
    receiver = netns.socket_in(testbed.pid(plan.HA), socket.AF_INET6, socket.SOCK_DGRAM)
    receiver.bind((plan.HA_ADDRESS, PROBE_PORT))
    receiver.setblocking(False)
    sender = netns.socket_in(testbed.pid(plan.MN), socket.AF_INET6, socket.SOCK_DGRAM)
    try:
        sender.setsockopt(socket.IPPROTO_IPV6, 78, 1)  # IPV6_FREEBIND: bind an address not (yet) ours
        sender.bind((new, 0))
        for index in range(PROBES_SENT):
            sender.sendto(f"early {index}".encode(), (plan.HA_ADDRESS, PROBE_PORT))
        # the pAR refuses them (a readiness wait on its counter, bounded, not a sleep)
        deadline = time.monotonic() + 2.0
        while (_xfrm_stat(testbed, move.par)["XfrmInPolBlock"] - before[move.par]["XfrmInPolBlock"] < PROBES_SENT
               and time.monotonic() < deadline):
            time.sleep(0.01)
        after = {node: _xfrm_stat(testbed, node) for node in (move.par, move.nar)}
        received = []
        while True:
            try:
                received.append(receiver.recv(100))
            except BlockingIOError:
                break
    finally:
        sender.close()
        receiver.close()
    sent = [sa for sa in _sas(testbed, plan.MN) if sa.spi == outbound[0].spi and sa.daddr == nar_address]
    decrypted = [sa for sa in _sas(testbed, move.nar) if sa.spi == inbound[0].spi and sa.daddr == nar_address]
    return {"mn_sent": sent[0].current.packets - outbound[0].current.packets,
            "par_blocked": after[move.par]["XfrmInPolBlock"] - before[move.par]["XfrmInPolBlock"],
            "nar_decrypted": decrypted[0].current.packets - inbound[0].current.packets,
            "nar_errors": {name: after[move.nar][name] - before[move.nar][name] for name in after[move.nar]
                           if after[move.nar][name] != before[move.nar][name]},
            "ha_received": received}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("preauth")
    records, after, early = [], [], []
    with Testbed(LINKS) as testbed:
        warm_up_crypto(testbed, "aes-cbc-sha256")
        experiment = Experiment(testbed, run_dir, timers=SCENARIO.cxtp_timers(testbed.link_params))
        try:
            pause(300)
            timers = experiment.timers
            release = timers["release_hold"] + timers["late_ctdr_grace"]
            for name, count in PLAN:
                method = methods.get(name)
                if name == "preauth-eap":
                    original = method.before_detach
                    assert original is not None

                    def probing(experiment: Experiment, move: Move, original=original) -> None:
                        original(experiment, move)
                        if not early:  # once: the first pre-authenticated move
                            early.append(_early_traffic(testbed, move))

                    method = dataclasses.replace(method, before_detach=probing)
                for _ in range(count):
                    record = run_handover(experiment, method, 50.0, SCENARIO, release)
                    records.append(record)
                    baseline = experiment.baseline
                    state = {"record": record,
                             "kernel": {node: _kernel_names(testbed, node, record.mn_previous)
                                        for node in (plan.MN, plan.HA, *plan.ACCESS_ROUTERS)}}
                    if isinstance(baseline, PreauthBaseline):
                        state["ike_since_attach"] = baseline.ike_since_attach()
                        state["child_spis"] = baseline._child_spis(record.to_ar)
                        state["charon"] = {node: baseline.list_sas(node) for node in (plan.MN, *plan.ACCESS_ROUTERS)}
                    after.append(state)
        finally:
            experiment.stop()
    records_module.write_handovers(run_dir / "handovers.json", records)
    traces = {role: json.loads((run_dir / f"probe-{role}.json").read_text()) for role in ("mn", "ha")}
    agents = {node: [json.loads(line) for line in (run_dir / f"trace-{node}.jsonl").read_text().splitlines()
                     if line.strip()] for node in (plan.MN, plan.HA, *plan.ACCESS_ROUTERS)}
    rows = metrics.per_handover(records, traces["mn"], traces["ha"], traces=agents)
    (run_dir / "per_handover.json").write_text(json.dumps(rows, indent=1, default=str))
    return {"records": records, "after": after, "rows": rows, "early": early}


def _of(run, name: str) -> list:
    return [state for state in run["after"] if state["record"].method == name]


def test_every_handover_is_ok(run):
    records = run["records"]
    assert len(records) == sum(count for _, count in PLAN)
    assert [record.outcome for record in records] == ["ok"] * len(records), \
        [(record.method, record.outcome, record.failure and record.failure.reason) for record in records]


@pytest.mark.parametrize("name", ["preauth-eap", "preauth-psk"])
def test_the_sas_with_the_nar_exist_before_the_detach(run, name):
    """The CHILD_SA with the nAR was installed (charon's child-updown over VICI) and moved to the
    future care-of address in both kernels and charons before the detach; the IKE_SA the MN holds
    with the nAR after the move is that one (same SPIs)."""
    states = _of(run, name)
    assert len(states) == PREAUTH_HANDOVERS
    for state in states:
        record, figures = state["record"], state["record"].reauth
        assert figures["preauthenticated"] is True, figures
        assert record.anticipation_start_ns < figures["preauth_sent_ns"] < figures["preauth_child_installed_ns"] \
            < figures["preauth_moved_ns"] < record.detach_start_ns, figures
        spis = figures["preauth_ike_spis"]
        assert len(spis) == 1, spis
        held = [sa for entry in state["charon"][plan.MN] for key, sa in entry.items()
                if key == mn_preauth_connection_name(record.to_ar)]
        assert [[sa["initiator-spi"], sa["responder-spi"]] for sa in held] == spis, held
        assert held[0]["local-host"] == record.mn_new and held[0]["remote-host"] == plan.AR_ACCESS_ADDRESS[record.to_ar]
        print(f"{name} {record.from_ar}->{record.to_ar}: pre-authentication {figures['preauth_elapsed_ms']:.1f} ms "
              f"({figures['preauth_ike_messages']} IKE messages, {figures['aaa_access_requests']} RADIUS "
              f"Access-Requests), moved {(record.detach_start_ns - figures['preauth_moved_ns']) / 1e6:.0f} ms "
              f"before the detach")


@pytest.mark.parametrize("name", ["preauth-eap", "preauth-psk"])
def test_nothing_is_negotiated_after_the_attach(run, name):
    """No IKE_SA_INIT, IKE_AUTH or CREATE_CHILD_SA on the MN's links between the end of the
    pre-authentication and the end of the handover (only the DELETE of the pAR's IKE_SA, an
    INFORMATIONAL); the pre-authentication itself was seen (IKE_SA_INIT and IKE_AUTH: at least 4)."""
    for state in _of(run, name):
        figures = state["record"].reauth
        for window in (figures["ike_until_attach"], figures["ike_after_attach"], state["ike_since_attach"]):
            assert not any(window.get(kind) for kind in NEW_EXCHANGES), (window, figures)
        assert figures["preauth_ike_messages"] >= 4, figures


@pytest.mark.parametrize("name", ["preauth-eap", "preauth-psk"])
def test_the_mn_uses_the_pre_established_child_sa(run, name):
    """After the move the MN's SAs with the nAR are the two the pre-authentication installed (same
    SPIs, new care-of address): nothing was re-keyed or replaced after the attach."""
    for state in _of(run, name):
        figures = state["record"].reauth
        assert len(figures["preauth_child_spis"]) == 2, figures
        assert state["child_spis"] == figures["preauth_child_spis"], (state["child_spis"], figures)


def test_preauthentication_costs_radius_access_requests(run):
    """EAP-MSCHAPv2 through RADIUS: 3 Access-Requests per pre-authentication (as a re-authentication);
    none with a pre-shared key. The cancelled ones cost theirs and then the re-authentication's."""
    for state in _of(run, "preauth-eap"):
        assert state["record"].reauth["aaa_access_requests"] == 3, state["record"].reauth
    for state in _of(run, "preauth-psk"):
        assert state["record"].reauth["aaa_access_requests"] == 0, state["record"].reauth
    for state in _of(run, "preauth-eap-cancelled"):
        figures = state["record"].reauth
        assert figures["cancelled_preauth"]["cancelled"] is True, figures
        assert figures["cancelled_preauth"]["aaa_access_requests"] == 3, figures
        assert figures["aaa_access_requests"] == 3 + figures["radius_requests"] == 6, figures


def test_the_nar_accepts_nothing_before_the_attach(run):
    """The MN, still at the pAR, sends under the pre-established CHILD_SA on purpose: its kernel
    encrypts it (the outbound SA counts the packets), the pAR drops it (no ESP from the nAR's
    prefix is forwarded), the nAR decrypts nothing and the HA receives nothing."""
    (early,) = run["early"]
    assert early["mn_sent"] == PROBES_SENT, early
    assert early["par_blocked"] >= PROBES_SENT, early
    assert early["nar_decrypted"] == 0 and early["ha_received"] == [], early


@pytest.mark.parametrize("name", ["preauth-eap", "preauth-psk", "preauth-eap-cancelled"])
def test_nothing_of_the_previous_care_of_address_is_left(run, name):
    for state in _of(run, name):
        record = state["record"]
        assert not any(state["kernel"].values()), (record.index, state["kernel"])
        for node, entries in state["charon"].items():
            hosts = {sa.get(side) for entry in entries for sa in entry.values()
                     for side in ("local-host", "remote-host")}
            assert record.mn_previous not in hosts, (node, entries)


def _interruptions(run) -> dict[str, dict[str, list[float]]]:
    """Each method's interruptions (ms) by direction, from the runner's own analysis."""
    rows = {row["index"]: row for row in run["rows"]}
    figures: dict[str, dict[str, list[float]]] = {}
    for record in run["records"]:
        row = rows[record.index]
        for direction in ("ha_to_mn", "mn_to_ha"):
            figures.setdefault(record.method, {}).setdefault(direction, []).append(row[direction]["interruption_ms"])
    return figures


def test_the_interruptions(run):
    """Printed per method and direction (the figures the report would give)."""
    for method, directions in _interruptions(run).items():
        for direction, values in directions.items():
            print(f"{method:22} {direction}: {[round(value, 1) for value in values]} "
                  f"(median {statistics.median(values):.1f} ms)")


@pytest.mark.parametrize("auth", ["eap", "psk"])
def test_the_interruption_is_below_reauthentications(run, auth):
    """Per direction, the pre-authenticated handovers' median interruption is below the
    re-authentication's of the same authentication in this run (medians: the guest shares its host
    with other work, and single handovers of any method took up to 55 ms longer than their
    method's median in the runs of this test), except PSK's downlink: a PSK re-authentication (one
    round trip on the access link) is over before the Binding Ack's round trip to the HA, so both
    downlinks are that of no security; there the pre-authenticated median must not exceed the
    re-authentication's by more than the 10 ms the test below allows against ``none`` (with two
    to four handovers a median moves by a few ms: 85.2 against 81.3 in one full suite's run)."""
    figures = _interruptions(run)
    for direction in ("ha_to_mn", "mn_to_ha"):
        pre, re = figures[f"preauth-{auth}"][direction], figures[f"reauth-{auth}"][direction]
        if auth == "psk" and direction == "ha_to_mn":
            assert statistics.median(pre) <= statistics.median(re) + 10.0, (direction, pre, re)
        else:
            assert statistics.median(pre) < statistics.median(re), (direction, pre, re)


@pytest.mark.parametrize("name", ["preauth-eap", "preauth-psk"])
def test_the_interruption_is_that_of_no_security(run, name):
    """After the attach only routing changes, as with no security at all: each direction's
    shortest and median interruption are within 10 ms of ``none``'s in the same run (measured: within
    2 ms; the first ``none`` handover of a run is 50 ms slower, hence the shortest as well as the
    median). Any exchange after the attach would add far more: an EAP re-authentication 80 ms or
    more, a MOBIKE update its 100 ms roam delay. Before the pAR's clean-up waited for the new path
    (``cleanup_waited_ms``), the teardown shared the guest's CPU with the Binding Update and made
    it 10-16 ms."""
    figures = _interruptions(run)
    for direction in ("ha_to_mn", "mn_to_ha"):
        pre, none = figures[name][direction], figures["none"][direction]
        assert min(pre) <= min(none) + 10.0, (direction, pre, none)
        assert statistics.median(pre) <= statistics.median(none) + 10.0, (direction, pre, none)
