"""The full re-authentication baseline in the kernel: strongSwan charon on the MN and the ARs,
FreeRADIUS on the AAA node, IKEv2 + EAP relayed through RADIUS, driven over VICI.

Daemons start once per baseline (charon takes about a second in the UML guest); the tests share
one Testbed and switch baselines only when the method changes (EAP-MSCHAPv2 first, then EAP-MD5,
then PSK).
"""

from __future__ import annotations

import socket

import pytest
from scapy.layers.inet6 import ICMPv6EchoReply, ICMPv6EchoRequest, IPv6
from scapy.layers.l2 import Ether

from ipsec.xfrm import Xfrm
from ipsec.xfrm_messages import XFRM_POLICY_FWD
from nodes import ike, netns
from scenarios.runner import baseline as baseline_module
from topo import plan
from topo.network import LinkParams, Testbed

pytestmark = pytest.mark.kernel

MN_PASSWORD = "mn-password-1"


@pytest.fixture(scope="module")
def testbed(kernel_with_esp):
    links = {
        plan.ACCESS: LinkParams(delay_ms=1.0),
        plan.AR_AR: LinkParams(delay_ms=2.0),
        plan.AR_HA: LinkParams(delay_ms=2.0),
        plan.AR_AAA: LinkParams(delay_ms=2.0),
    }
    with Testbed(links) as bed:
        yield bed


class Baselines:
    """One running IkeBaseline at a time on the shared testbed."""

    def __init__(self, testbed: Testbed, root):
        self.testbed, self.root = testbed, root
        self.current: baseline_module.IkeBaseline | None = None

    def use(self, method: str) -> baseline_module.IkeBaseline:
        if self.current is not None and self.current.params.method == method:
            return self.current
        self.close()
        if self.testbed.current_ar != plan.PAR:
            self.testbed.handover(plan.PAR, l2_delay_ms=0)
        baseline = baseline_module.IkeBaseline(self.testbed, self.root / method, method=method,
                                   password=MN_PASSWORD, aaa=method != "psk")
        baseline.start()
        self.current = baseline
        return baseline

    def close(self) -> None:
        if self.current is not None:
            self.current.stop()
            self.current = None


@pytest.fixture(scope="module")
def baselines(testbed, tmp_path_factory):
    holder = Baselines(testbed, tmp_path_factory.mktemp("ike"))
    yield holder
    holder.close()


def _netns(testbed: Testbed, node: str) -> str:
    return f"/proc/{testbed.pid(node)}/ns/net"


def _states(testbed: Testbed, node: str) -> list:
    with Xfrm(netns=_netns(testbed, node)) as xfrm:
        return xfrm.dump_sas()


def _policies(testbed: Testbed, node: str) -> list:
    """SPD entries, without charon's per-socket bypass policies (dir >= XFRM_POLICY_MAX, the
    `socket in/out` lines of `ip xfrm policy`), which belong to its IKE sockets."""
    with Xfrm(netns=_netns(testbed, node)) as xfrm:
        return [policy for policy in xfrm.dump_policies() if policy.dir < 3]


def _pairs(states) -> set[tuple[str, str]]:
    return {(state.saddr, state.daddr) for state in states}


def _ping_ha(testbed: Testbed, count: int = 3) -> str:
    return testbed.cmd(plan.MN, f"ping -6 -c {count} -i 0.1 -W 2 {plan.HA_ADDRESS}", check=False)


def _at(testbed: Testbed, baseline: baseline_module.IkeBaseline, ar: str) -> None:
    """Put the MN at ``ar`` with no SA anywhere."""
    for old in list(baseline.attached_to):
        baseline.detach_old(old)
    if testbed.current_ar != ar:
        testbed.handover(ar, l2_delay_ms=0)


def _assert_clean(testbed: Testbed, baseline: baseline_module.IkeBaseline, *nodes: str) -> None:
    for node in nodes:
        assert baseline.list_sas(node) == [], f"{node} still lists IKE_SAs"
        assert _states(testbed, node) == [], f"{node} still has XFRM states"
        assert _policies(testbed, node) == [], f"{node} still has XFRM policies"


def test_eap_mschapv2_attach_through_radius(testbed, baselines):
    baseline = baselines.use("eap-mschapv2")
    _at(testbed, baseline, plan.PAR)
    login_ok_before = baseline.radius.log_text().count(f"Login OK: [{plan.MN_IDENTITY}]")
    result = baseline.attach(plan.PAR)
    coa, ar_address = plan.MN_COA[plan.PAR], plan.AR_ACCESS_ADDRESS[plan.PAR]
    # The CHILD_SA is in the MN's kernel, both directions, tunnel mode, and at the pAR.
    assert _pairs(_states(testbed, plan.MN)) == {(coa, ar_address), (ar_address, coa)}
    assert _pairs(_states(testbed, plan.PAR)) == {(coa, ar_address), (ar_address, coa)}
    assert all(state.mode == 1 for state in _states(testbed, plan.MN))  # XFRM_MODE_TUNNEL
    fwd = [p for p in _policies(testbed, plan.PAR) if p.dir == XFRM_POLICY_FWD]
    assert any(p.selector.saddr == coa and p.selector.daddr == plan.HA_ADDRESS for p in fwd)
    # RADIUS took part: 3 round trips for MSCHAPv2, and FreeRADIUS logged the login.
    assert result["radius_requests"] == 3 and result["radius_messages"] == 6, result
    assert baseline.radius.log_text().count(f"Login OK: [{plan.MN_IDENTITY}]") == login_ok_before + 1
    assert result["ike_requests"] == 5 and result["ike_messages"] == 10, result
    assert 0 < result["elapsed_ms"] < 5000, result
    assert result["initiate_sent_ns"] < result["child_installed_ns"]

    # Protected traffic: ping6 MN -> HA passes, and what each end sends on the access link is ESP.
    # (Only sent frames count: a packet socket also sees the decapsulated inner packet re-enter
    # the stack on the receiving side of a tunnel-mode SA.)
    captures = {node: _capture(testbed, node, interface)
                for node, interface in ((plan.MN, "mn-par"), (plan.PAR, "par-mn"))}
    output = _ping_ha(testbed)
    assert " 0% packet loss" in output, output
    for node, capture in captures.items():
        sent = _sent_frames(capture)
        esp = [f for f in sent if IPv6 in f and f[IPv6].nh == 50]
        assert len(esp) >= 3, (node, [f.summary() for f in sent])
        assert not any(ICMPv6EchoRequest in f or ICMPv6EchoReply in f for f in sent), \
            f"{node} sent an echo in clear on the access link"


def _capture(testbed: Testbed, node: str, interface: str) -> socket.socket:
    capture = netns.socket_in(testbed.pid(node), socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
    capture.bind((interface, 0))
    capture.setblocking(False)
    return capture


def _sent_frames(capture: socket.socket) -> list:
    frames = []
    try:
        while True:
            data, address = capture.recvfrom(65535)
            if address[2] == 4:  # PACKET_OUTGOING
                frames.append(Ether(data))
    except BlockingIOError:
        pass
    finally:
        capture.close()
    return frames


def test_wrong_password_is_refused_cleanly(testbed, baselines):
    baseline = baselines.use("eap-mschapv2")
    _at(testbed, baseline, plan.PAR)
    baseline.set_mn_password("not-the-password")
    try:
        with pytest.raises(ike.IkeAuthenticationError) as refused:
            baseline.attach(plan.PAR)
    finally:
        baseline.set_mn_password(MN_PASSWORD)
    assert refused.value.ar == plan.PAR
    assert "EAP" in refused.value.reason or "AUTHENTICATION_FAILED" in refused.value.reason, refused.value
    baseline.wait_no_sas(plan.PAR)
    _assert_clean(testbed, baseline, plan.MN, plan.PAR)
    assert "Login incorrect" in baseline.radius.log_text()
    # And the right password works again right after.
    baseline.attach(plan.PAR)
    assert " 0% packet loss" in _ping_ha(testbed)


def test_reauthentication_handover_restores_traffic_through_nar(testbed, baselines):
    baseline = baselines.use("eap-mschapv2")
    _at(testbed, baseline, plan.PAR)
    baseline.attach(plan.PAR)
    assert " 0% packet loss" in _ping_ha(testbed)
    testbed.handover(plan.NAR, l2_delay_ms=10)
    result = baseline.attach(plan.NAR)
    assert result["radius_requests"] == 3, result
    baseline.detach_old(plan.PAR)
    assert " 0% packet loss" in _ping_ha(testbed)
    coa, nar_address = plan.MN_COA[plan.NAR], plan.AR_ACCESS_ADDRESS[plan.NAR]
    assert _pairs(_states(testbed, plan.NAR)) == {(coa, nar_address), (nar_address, coa)}
    assert _pairs(_states(testbed, plan.MN)) == {(coa, nar_address), (nar_address, coa)}
    assert {p.selector.saddr for p in _policies(testbed, plan.MN)} <= {coa, plan.HA_ADDRESS}
    _assert_clean(testbed, baseline, plan.PAR)
    assert len(baseline.list_sas(plan.MN)) == 1 and len(baseline.list_sas(plan.NAR)) == 1
    # And back: the same from the nAR to the pAR leaves nothing at the nAR.
    testbed.handover(plan.PAR, l2_delay_ms=10)
    baseline.attach(plan.PAR)
    baseline.detach_old(plan.NAR)
    assert " 0% packet loss" in _ping_ha(testbed)
    _assert_clean(testbed, baseline, plan.NAR)


def test_eap_md5_attach(testbed, baselines):
    baseline = baselines.use("eap-md5")
    _at(testbed, baseline, plan.PAR)
    result = baseline.attach(plan.PAR)
    assert result["radius_requests"] == 2 and result["ike_requests"] == 4, result
    assert " 0% packet loss" in _ping_ha(testbed)


def test_psk_attach_without_aaa(testbed, baselines):
    baseline = baselines.use("psk")
    assert baseline.radius is None
    _at(testbed, baseline, plan.PAR)
    result = baseline.attach(plan.PAR)
    assert result["ike_requests"] == 2 and "radius_messages" not in result, result
    assert " 0% packet loss" in _ping_ha(testbed)
    testbed.handover(plan.NAR, l2_delay_ms=0)
    baseline.attach(plan.NAR)
    baseline.detach_old(plan.PAR)
    assert " 0% packet loss" in _ping_ha(testbed)
    _assert_clean(testbed, baseline, plan.PAR)
    baseline.detach_old(plan.NAR)
    _assert_clean(testbed, baseline, plan.MN, plan.NAR)
