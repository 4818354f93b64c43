"""MOBIKE (RFC 4555) to the HA in the kernel, through the runner's own
:func:`scenarios.runner.run.run_handover`: strongSwan's charon on the MN and on the HA keeps one
IKE_SA for the whole test and moves it, and its CHILD_SA (home address <-> HA, tunnel mode), to
each new care-of address with an INFORMATIONAL exchange (UPDATE_SA_ADDRESSES).

Several handovers back and forth; after each, while the probes keep flowing: the handover is
``ok`` (the runner's own checks: probes both ways through the new AR, on the interfaces the method
declares, the HA's binding, nothing of the previous address on the MN or the ARs); the MN's and the
HA's charon list the one IKE_SA with the SPIs of the first; the MN's charon reported one address
update (``ike-update``) to its new care-of address; both kernels' SADs hold exactly the CHILD_SA
between that address and the HA; no node (MN, ARs, HA) holds anything of the previous care-of
address; and ESP crosses the AR the MN is on, both ways, on both of its links, and nothing crosses
the other AR.
"""

from __future__ import annotations

import json
import socket

import pytest

from ipsec.xfrm import Xfrm
from nodes import netns
from nodes.ike import ETH_P_ALL, PACKET_OUTGOING, SO_ATTACH_FILTER
from scenarios import config
from scenarios import records as records_module
from scenarios.analysis import metrics
from scenarios.runner import methods
from scenarios.runner.baseline import GATEWAY, MobikeBaseline
from scenarios.runner.experiment import Experiment, pause
from scenarios.runner.run import run_handover, warm_up_crypto
from topo import plan
from topo.network import LinkParams, Testbed

pytestmark = pytest.mark.kernel

SCENARIO = config.from_dict({"settle_ms": 300})
LINKS = {plan.ACCESS: LinkParams(delay_ms=2.0), plan.AR_AR: LinkParams(delay_ms=5.0),
         plan.AR_HA: LinkParams(delay_ms=10.0), plan.AR_AAA: LinkParams(delay_ms=10.0)}
HANDOVERS = 4
#: how long ESP is counted on the ARs' links after each handover (the probes: 500/s each way)
ESP_WINDOW_MS = 200.0
XFRM_MODE_TUNNEL = 1


def _esp_filter() -> tuple[bytes, object]:
    """A classic BPF program for IPv6 ESP frames (the program, and the buffer it points into)."""
    import ctypes
    import struct

    from scapy.arch.common import compile_filter
    from scapy.data import DLT_EN10MB

    program = compile_filter("ip6 and ip6 proto 50", linktype=DLT_EN10MB)
    code = b"".join(struct.pack("HBBI", program.bf_insns[i].code, program.bf_insns[i].jt,
                                program.bf_insns[i].jf, program.bf_insns[i].k) for i in range(program.bf_len))
    buffer = ctypes.create_string_buffer(code)
    return struct.pack("HL", len(code) // 8, ctypes.addressof(buffer)), buffer


class EspCounter:
    """ESP frames on one interface of one node, by direction (``in``, ``out``)."""

    def __init__(self, testbed: Testbed, node: str, interface: str) -> None:
        self.node, self.interface = node, interface
        self.sock = netns.socket_in(testbed.pid(node), socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        program, self._buffer = _esp_filter()
        self.sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, program)
        self.sock.bind((interface, 0))
        self.sock.setblocking(False)

    def drain(self) -> dict[str, int]:
        counts = {"in": 0, "out": 0}
        while True:
            try:
                _, address = self.sock.recvfrom(65535)
            except BlockingIOError:
                return counts
            counts["out" if address[2] == PACKET_OUTGOING else "in"] += 1

    def close(self) -> None:
        self.sock.close()


def _ar_links(ar: str) -> dict[str, str]:
    """The AR's interface on its access link and on its link to the HA."""
    return {"access": plan.LINKS_BY_NAME[plan.ACCESS_LINK[ar]].interface(ar),
            "ha": plan.LINKS_BY_NAME[f"{ar}-{plan.HA}"].interface(ar)}


def _kernel(testbed: Testbed, node: str) -> tuple[list, list]:
    with Xfrm(netns=f"/proc/{testbed.pid(node)}/ns/net") as xfrm:
        return xfrm.dump_sas(), [policy for policy in xfrm.dump_policies() if policy.dir < 3]


def _names(states, policies, address: str) -> list[str]:
    found = [f"SA {state.saddr}->{state.daddr} spi {state.spi:#x}" for state in states
             if address in (state.saddr, state.daddr)]
    for policy in policies:
        addresses = {policy.selector.saddr, policy.selector.daddr}
        addresses |= {value for template in policy.templates for value in (template.saddr, template.daddr)}
        if address in addresses:
            found.append(f"policy dir {policy.dir} {policy.selector.saddr}->{policy.selector.daddr}")
    return found


def _spis(baseline: MobikeBaseline, node: str) -> list[tuple[str, str]]:
    return [(sa["initiator-spi"], sa["responder-spi"]) for sa in baseline.ike_sas(node)]


@pytest.fixture(scope="module")
def moved(tmp_path_factory):
    """The MN enters MOBIKE at the pAR (the one IKE_SA), then HANDOVERS moves back and forth; what
    each node's charon and kernel hold, and the ESP on the ARs' links, after each."""
    run_dir = tmp_path_factory.mktemp("mobike")
    method = methods.get("mobike")
    records, after = [], []
    with Testbed(LINKS) as testbed:
        warm_up_crypto(testbed, "aes-cbc-sha256")
        experiment = Experiment(testbed, run_dir, timers=SCENARIO.cxtp_timers(testbed.link_params))
        counters = {(ar, link): EspCounter(testbed, ar, interface)
                    for ar in plan.ACCESS_ROUTERS for link, interface in _ar_links(ar).items()}
        try:
            pause(300)
            experiment.enter(method.security)
            baseline = experiment.baseline
            assert isinstance(baseline, MobikeBaseline)
            first = {node: _spis(baseline, node) for node in (plan.MN, GATEWAY)}
            log_offset = baseline.charons[plan.MN].log_size()
            timers = experiment.timers
            for _ in range(HANDOVERS):
                record = run_handover(experiment, method, 50.0, SCENARIO,
                                      timers["release_hold"] + timers["late_ctdr_grace"])
                records.append(record)
                for counter in counters.values():
                    counter.drain()
                pause(ESP_WINDOW_MS)  # a window of the probes' traffic, not protocol work
                esp = {key: counter.drain() for key, counter in counters.items()}
                after.append({
                    "record": record,
                    "spis": {node: _spis(baseline, node) for node in (plan.MN, GATEWAY)},
                    "updates": list(baseline.updates),
                    "kernel": {node: _kernel(testbed, node) for node in (plan.MN, plan.HA, *plan.ACCESS_ROUTERS)},
                    "esp": esp,
                })
            mn_log = baseline.charons[plan.MN].log_since(log_offset)
            ha_log = baseline.charons[GATEWAY].log_since(0)
        finally:
            for counter in counters.values():
                counter.close()
            experiment.stop()
    records_module.write_handovers(run_dir / "handovers.json", records)
    traces = {role: json.loads((run_dir / f"probe-{role}.json").read_text()) for role in ("mn", "ha")}
    return {"first": first, "after": after, "records": records, "mn_log": mn_log, "ha_log": ha_log,
            "traces": traces, "run_dir": run_dir}


def test_every_mobike_handover_is_ok(moved):
    records = moved["records"]
    assert len(records) == HANDOVERS
    assert [record.outcome for record in records] == ["ok"] * HANDOVERS, \
        [(record.outcome, record.failure and record.failure.problems) for record in records]
    assert [record.to_ar for record in records] == [plan.NAR, plan.PAR] * (HANDOVERS // 2)


def test_one_ike_sa_for_the_whole_test(moved):
    first = moved["first"]
    assert len(first[plan.MN]) == 1 and first[plan.MN] == first[GATEWAY], first
    for state in moved["after"]:
        assert state["spis"] == first, (state["record"].index, state["spis"], first)
    for record in moved["records"]:
        assert record.reauth is not None and record.reauth["ike_spis"] == list(first[plan.MN][0])


def test_one_address_update_per_handover(moved):
    """charon's ``ike-update`` events on the MN, one per move, each to the new care-of address; and
    the INFORMATIONAL exchange with UPDATE_SA_ADDRESSES in the MN's log, one per move."""
    updates = moved["after"][-1]["updates"]
    assert [local for _, local, _ in updates] == [record.mn_new for record in moved["records"]], updates
    assert all(remote == plan.HA_ADDRESS for _, _, remote in updates), updates
    sent = [line for line in moved["mn_log"].splitlines() if "generating INFORMATIONAL request" in line
            and "N(UPD_SA_ADDR)" in line]
    assert len(sent) == HANDOVERS, moved["mn_log"][-4000:]
    for record in moved["records"]:
        figures = record.reauth
        # at least the update's request and response; a path check adds a pair
        assert figures["ike_messages"] >= 2 and figures["ike_requests"] >= 1, figures
        # the order of the steps (charon's log has ms resolution: 1 ms of slack)
        # the MN moves its CHILD_SA as it sends the update, the HA when it receives it
        for order in (("detach_seen_ns", "initiate_sent_ns", "update_sent_ns", "update_answered_ns"),
                      ("initiate_sent_ns", "child_installed_ns"), ("update_sent_ns", "ha_child_installed_ns")):
            times = [figures[name] for name in order]
            assert all(later >= earlier - 1_000_000 for earlier, later in zip(times, times[1:])), (order, figures)
        assert figures["address_seen_ns"] >= record.attach_start_ns - 1_000_000, figures
        steps = ", ".join(f"{name[:-3]} {(figures[name] - record.detach_start_ns) / 1e6:.0f}"
                          for name in ("detach_seen_ns", "address_seen_ns", "initiate_sent_ns", "path_checked_ns",
                                       "update_sent_ns", "update_answered_ns", "update_seen_ns", "child_installed_ns",
                                       "ha_child_installed_ns") if name in figures)
        print(f"{record.from_ar}->{record.to_ar} (ms from the detach; attached "
              f"{(record.attached_ns - record.detach_start_ns) / 1e6:.0f}): {steps}; "
              f"{figures['ike_messages']} IKE messages, {figures['ike_bytes']} octets")


def test_the_child_sa_follows_the_care_of_address(moved):
    """After each move: the MN's and the HA's SAD hold exactly the CHILD_SA between the MN's current
    care-of address and the HA, both ways, tunnel mode; their policies for home address <-> HA
    name those outer addresses in their templates."""
    for state in moved["after"]:
        coa = state["record"].mn_new
        for node in (plan.MN, plan.HA):
            states, policies = state["kernel"][node]
            assert {(sa.saddr, sa.daddr) for sa in states} == {(coa, plan.HA_ADDRESS), (plan.HA_ADDRESS, coa)}, \
                (node, coa, [(sa.saddr, sa.daddr) for sa in states])
            assert all(sa.mode == XFRM_MODE_TUNNEL for sa in states)
            tunnel = [policy for policy in policies if policy.templates and
                      {policy.selector.saddr, policy.selector.daddr} == {plan.MN_HOME_ADDRESS, plan.HA_ADDRESS}]
            assert tunnel and all({template.saddr, template.daddr} == {coa, plan.HA_ADDRESS}
                                  for policy in tunnel for template in policy.templates), (node, tunnel)


def test_nothing_of_the_previous_care_of_address_is_left(moved):
    for state in moved["after"]:
        previous = state["record"].mn_previous
        left = {node: _names(*state["kernel"][node], previous) for node in state["kernel"]}
        assert not any(left.values()), (state["record"].index, left)


def test_esp_flows_both_ways_through_the_ar_the_mn_is_on(moved):
    """ESP on both links of the AR the MN is on, each way (the probes run at 500/s each way, so a
    window of ESP_WINDOW_MS holds dozens), and none through the other AR."""
    for state in moved["after"]:
        current, other = state["record"].to_ar, state["record"].from_ar
        esp = state["esp"]
        for link in ("access", "ha"):
            for direction in ("in", "out"):
                assert esp[(current, link)][direction] >= 20, (current, link, direction, esp)
            assert esp[(other, link)] == {"in": 0, "out": 0}, (other, link, esp)


def test_probes_arrive_on_the_interfaces_the_method_declares(moved):
    """The ESP-decapsulated probes arrive on the MN's access interface and on the HA's interface
    towards the AR, not on the Mobile IPv6 tunnel; measured from there, each direction's
    interruption exists (the probes came back through the new AR)."""
    method = methods.get("mobike")
    rows = []
    for record in moved["records"]:
        interfaces = method.path_interfaces(record.to_ar)
        tunnels = plan.new_path_interfaces(record.to_ar)
        row = {}
        for direction, end in (("ha_to_mn", plan.MN), ("mn_to_ha", plan.HA)):
            trace = moved["traces"][end]
            declared = metrics.path_ifindexes(trace, interfaces[end])
            assert declared, (end, interfaces[end], trace.get("interfaces"))
            figures = metrics.interruption(trace, record.detach_start_ns, record.window_end_ns, declared)
            # and nothing came through the Mobile IPv6 tunnel after the move
            tunnel = metrics.path_ifindexes(trace, tunnels[end])
            late = [index for rx, index in zip(trace["received"]["rx_ns"], trace["received"]["ifindex"])
                    if record.detach_start_ns <= rx < record.window_end_ns and index in tunnel]
            assert not late, (end, len(late))
            row[direction] = figures["interruption_ms"]
        rows.append(row)
        print(f"{record.from_ar}->{record.to_ar}: interruption HA->MN {row['ha_to_mn']:.1f} ms, "
              f"MN->HA {row['mn_to_ha']:.1f} ms; MN's CHILD_SA moved "
              f"{(record.reauth['child_installed_ns'] - record.attached_ns) / 1e6:.0f} ms after the attach")
