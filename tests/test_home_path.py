"""Mobile IPv6's data path, outside any kernel of ours: the plan's tunnels, the MN's bypass of its
home address into the tunnel, the TCP connection's records (on loopback) and what the metrics
make of them."""

from __future__ import annotations

import ipaddress
import time

import pytest

from nodes import operator_policy
from nodes.tcp_flow import TcpFlow
from scenarios.analysis import metrics
from topo import plan


def test_one_tunnel_per_access_router_on_each_end_with_interface_names_the_kernel_takes():
    tunnels = plan.home_tunnels(plan.PAR)
    assert {(t.node, t.name) for t in tunnels} == {(node, plan.home_tunnel(node, ar))
                                                   for node in (plan.MN, plan.HA) for ar in plan.ACCESS_ROUTERS}
    assert all(len(t.name) <= 15 for t in tunnels)  # IFNAMSIZ - 1
    for tunnel in tunnels:
        if tunnel.node == plan.MN:  # local: the care-of address on that AR's link; no bound link
            assert tunnel.remote == plan.HA_ADDRESS and tunnel.link is None
            assert tunnel.local in plan.MN_COA.values()
        else:  # the HA's start at the initial care-of address, each bound to its link towards one AR
            assert tunnel.local == plan.HA_ADDRESS and tunnel.remote == plan.MN_COA[plan.PAR]
            links = {plan.LINKS_BY_NAME[f"{ar}-{plan.HA}"].interface(plan.HA) for ar in plan.ACCESS_ROUTERS}
            assert tunnel.link in links
    assert ipaddress.ip_address(plan.MN_HOME_ADDRESS) in ipaddress.ip_network(plan.HOME_PREFIX)
    assert ipaddress.ip_address(plan.HA_ADDRESS) in ipaddress.ip_network(plan.HOME_PREFIX)
    assert plan.new_path_interfaces(plan.NAR) == {plan.MN: "mn-home-nar", plan.HA: "ha-home-nar"}


def test_the_home_address_goes_into_the_tunnel_and_the_guard_still_blocks_the_rest():
    """What leaves from the home address to the HA is let through to the tunnel device (its outer
    packet, from the care-of address, meets the tunnel policies or the guard); anything else to
    the HA in clear is still blocked, and the bypass outranks the guard."""
    policies = operator_policy.mn_bypass_policies(plan.HA_ADDRESS, plan.MN_HOME_ADDRESS)
    home = [p for p in policies if p.selector.saddr == plan.MN_HOME_ADDRESS]
    guard = [p for p in policies if p.action == operator_policy.XFRM_POLICY_BLOCK]
    assert len(home) == 1 and len(guard) == 1
    assert home[0].selector.daddr == plan.HA_ADDRESS and home[0].selector.prefixlen_s == 128
    assert home[0].action != operator_policy.XFRM_POLICY_BLOCK and home[0].priority < guard[0].priority
    assert operator_policy.mn_bypass_policies(plan.HA_ADDRESS) == tuple(p for p in policies if p is not home[0])


def _wait(predicate, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline
        time.sleep(0.01)


def test_the_tcp_connection_carries_numbered_records_both_ways_and_a_restart_continues_them(tmp_path):
    paths = {role: str(tmp_path / f"tcp-{role}.json") for role in ("mn", "ha")}
    flow = TcpFlow(None, None, "::1", "::1", port=52011, interval_ms=5).start()
    try:
        _wait(lambda: all(len(flow.received[role]) >= 20 for role in ("mn", "ha")))
        assert flow.checkpoint(paths) >= 40
    finally:
        flow.stop()
    assert flow.errors == []
    for role in ("mn", "ha"):
        sequences = [row[0] for row in flow.received[role]]
        assert sequences == list(range(1, len(sequences) + 1))
        assert all(tx <= rx for _, tx, rx in flow.received[role])
    # a killed process leaves its checkpoints; the next connection numbers after them
    last = max(row[0] for role in ("mn", "ha") for row in flow.received[role][:flow._checkpointed[role]])
    second = TcpFlow(None, None, "::1", "::1", port=52012, interval_ms=5)
    second.resume(paths)
    assert second.next_sequence == {"ha": last + 1, "mn": last + 1}
    second.start()
    try:
        _wait(lambda: len(second.received["ha"]) > flow._checkpointed["ha"] + 5)
    finally:
        second.stop()
    second.write(paths)
    later = [row[0] for row in second.received["ha"][flow._checkpointed["ha"]:]]
    assert later[0] == last + 1 and later == sorted(later)


def test_a_new_connection_continues_the_numbering():
    flow = TcpFlow(None, None, "::1", "::1", port=52013, interval_ms=5).start()
    try:
        _wait(lambda: len(flow.received["mn"]) >= 5)
        flow.reconnect()
        _wait(lambda: len(flow.received["mn"]) >= 15)
    finally:
        flow.stop()
    sequences = [row[0] for row in flow.received["mn"]]
    assert flow.connections == 2 and flow.errors == []
    assert sequences == sorted(set(sequences))  # some may die with the first connection; none repeats


def _trace(arrivals_ms: list[float]) -> dict:
    return {"received": {"seq": list(range(1, len(arrivals_ms) + 1)),
                         "tx_ns": [int(a * 1e6) for a in arrivals_ms], "rx_ns": [int(a * 1e6) for a in arrivals_ms]}}


def test_tcp_recovery_is_from_the_attach_to_the_first_data_after_it():
    # records every 10 ms until 100 ms; the detach at 105, the attach at 160, data again at 390
    trace = _trace([*range(0, 101, 10), 390, 400, 410])
    result = metrics.tcp_recovery(trace, detach_ns=105_000_000, attached_ns=160_000_000, horizon_ns=None)
    assert result == {"stall_ms": pytest.approx(290.0), "recovery_ms": pytest.approx(230.0)}
    with pytest.raises(metrics.MetricsError, match="received after"):
        metrics.tcp_recovery(trace, 105_000_000, 160_000_000, horizon_ns=300_000_000)
    # a stream that had stopped long before the detach has no stall to measure
    stale = {**_trace([0, 10, 20, 600, 610]), "interval_ns": 10_000_000}
    with pytest.raises(metrics.MetricsError, match="not flowing before the handover"):
        metrics.tcp_recovery(stale, detach_ns=500_000_000, attached_ns=550_000_000, horizon_ns=None)


def _probe_trace(arrivals: list[tuple[float, int]], interfaces: dict[str, str]) -> dict:
    return {"interfaces": interfaces, "received": {
        "seq": list(range(1, len(arrivals) + 1)), "tx_ns": [int(ms * 1e6) for ms, _ in arrivals],
        "rx_ns": [int(ms * 1e6) for ms, _ in arrivals], "ifindex": [index for _, index in arrivals]}}


@pytest.mark.parametrize("names", ({"1": "lo", "3": "mn-par", "4": "mn-nar", "5": "mn-home-par", "6": "mn-home-nar"},
                                   {"1": "lo", "3": "mn-par", "4": "mn-nar"}),
                         ids=("tunnels", "before-the-home-address"))
def test_the_new_path_is_the_tunnel_over_the_new_ar_or_in_older_runs_its_link(names):
    """A probe the old path delivers late does not end the interruption: the new path is the
    receiver's tunnel over the new AR, or, in runs made before the home address, its interface
    towards it."""
    from scenarios.records import HandoverRecord

    old, new = (5, 6) if "5" in names else (3, 4)
    # every 2 ms until 100; the detach at 101; one late probe on the old path at 130; the new path from 180
    arrivals = [(ms, old) for ms in range(0, 101, 2)] + [(130, old)] + [(ms, new) for ms in range(180, 200, 2)]
    trace = _probe_trace(arrivals, names)
    handover = HandoverRecord(index=1, mn=plan.MN_IDENTITY, method="none", from_ar=plan.PAR, to_ar=plan.NAR,
                              mn_previous=plan.MN_COA[plan.PAR], mn_new=plan.MN_COA[plan.NAR], l2_delay_ms=50.0,
                              detach_start_ns=101_000_000, detached_ns=101_000_000, attach_start_ns=150_000_000,
                              attached_ns=150_000_000, window_end_ns=300_000_000)
    row = metrics.per_handover([handover], trace, trace)[0]
    assert row["ha_to_mn"]["interruption_ms"] == pytest.approx(80.0)  # 100 -> 180, not 100 -> 130
    assert row["ha_to_mn"]["late_old_path"] == 1
