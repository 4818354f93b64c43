"""MOBIKE to the HA, without a kernel: the configuration rendered from data (charon's files, the
VICI connections, the ARs' policies), how its policies rank against the operator's, and the
method's declaration."""

from __future__ import annotations

import ipaddress
import struct

import pytest

from ipsec import SecurityPolicy
from ipsec.xfrm_messages import XFRM_POLICY_BLOCK, XFRM_POLICY_FWD, XFRM_POLICY_OUT
from nodes import ike, operator_policy
from scenarios.runner import baseline as baseline_module
from scenarios.runner import methods
from topo import plan

MN_COA_NAR = plan.MN_COA[plan.NAR]


def _matches(policy: SecurityPolicy, direction: int, src: str, dst: str, proto: int, dport: int = 0,
             sport: int = 9000) -> bool:
    selector = policy.selector
    if policy.dir != direction:
        return False
    for address, prefix, length in ((src, selector.saddr, selector.prefixlen_s),
                                    (dst, selector.daddr, selector.prefixlen_d)):
        if ipaddress.ip_address(address) not in ipaddress.ip_network(f"{prefix}/{length}", strict=False):
            return False
    if selector.proto and selector.proto != proto:
        return False
    if selector.sport_mask and selector.sport != sport:
        return False
    return not (selector.dport_mask and selector.dport != dport)


def _verdict(policies, direction: int, src: str, dst: str, proto: int, dport: int = 0) -> str:
    """What the kernel does with a packet: the matching policy of lowest priority decides."""
    matching = [policy for policy in policies if _matches(policy, direction, src, dst, proto, dport)]
    if not matching:
        return "no policy"
    winner = min(matching, key=lambda policy: policy.priority)
    if winner.action == XFRM_POLICY_BLOCK:
        return "block"
    return "protect" if winner.templates else "allow"


@pytest.fixture
def nar_policies():
    return (*operator_policy.access_policies(plan.ACCESS_PREFIX[plan.NAR]), *baseline_module.gateway_access(plan.NAR))


def test_the_nar_forwards_esp_and_ike_between_its_link_and_the_ha(nar_policies):
    ha = plan.HA_ADDRESS
    assert _verdict(nar_policies, XFRM_POLICY_FWD, MN_COA_NAR, ha, operator_policy.IPPROTO_ESP) == "allow"
    for port in (500, 4500):
        assert _verdict(nar_policies, XFRM_POLICY_FWD, MN_COA_NAR, ha, operator_policy.IPPROTO_UDP, port) == "allow"
    # the answers: ESP from the HA to the MN leaves towards the access link, and so do IKE's
    assert _verdict(nar_policies, XFRM_POLICY_OUT, ha, MN_COA_NAR, operator_policy.IPPROTO_ESP) == "allow"


def test_nothing_else_passes_in_clear(nar_policies):
    """The operator's rule holds for everything else: plaintext from the link to the HA (the
    probes' own protocol, other UDP) is not forwarded, plaintext from the HA is not sent to it."""
    ha = plan.HA_ADDRESS
    assert _verdict(nar_policies, XFRM_POLICY_FWD, MN_COA_NAR, ha, operator_policy.IPPROTO_UDP, 9000) == "block"
    assert _verdict(nar_policies, XFRM_POLICY_FWD, MN_COA_NAR, ha, operator_policy.IPPROTO_TCP, 80) == "block"
    assert _verdict(nar_policies, XFRM_POLICY_FWD, MN_COA_NAR, ha, 41) == "block"   # the Mobile IPv6 tunnel
    assert _verdict(nar_policies, XFRM_POLICY_OUT, ha, MN_COA_NAR, 41) == "block"
    assert _verdict(nar_policies, XFRM_POLICY_OUT, ha, MN_COA_NAR, operator_policy.IPPROTO_UDP, 9000) == "block"
    # and ESP to another host than the gateway is not let through either
    assert _verdict(nar_policies, XFRM_POLICY_FWD, MN_COA_NAR, plan.AAA_ADDRESS,
                    operator_policy.IPPROTO_ESP) == "block"


def test_esp_from_another_links_address_is_not_forwarded(nar_policies):
    """Ingress filtering: an SA that still names the care-of address of the pAR's link cannot have
    the nAR carry its ESP (or IKE) to the HA."""
    old = plan.MN_COA[plan.PAR]
    assert _verdict(nar_policies, XFRM_POLICY_FWD, old, plan.HA_ADDRESS, operator_policy.IPPROTO_ESP) == "block"
    assert _verdict(nar_policies, XFRM_POLICY_FWD, old, plan.HA_ADDRESS, operator_policy.IPPROTO_UDP, 4500) == "block"


def test_the_access_policy_of_the_other_methods_is_unchanged():
    """The gateway's policies are added beside the operator's, never into them."""
    policies = operator_policy.access_policies(plan.ACCESS_PREFIX[plan.NAR])
    assert not any(policy.selector.proto == operator_policy.IPPROTO_ESP for policy in policies)
    assert _verdict(policies, XFRM_POLICY_FWD, MN_COA_NAR, plan.HA_ADDRESS, operator_policy.IPPROTO_ESP) == "block"


def test_the_gateway_child_sa_beats_the_mns_bypass_of_its_home_address():
    """The MN's operator policy lets what its home address sends to the HA into the Mobile IPv6
    tunnel in clear (priority PRIORITY_BYPASS); under MOBIKE the CHILD_SA's policy for the same
    traffic must decide, so charon installs it at a fixed priority that wins."""
    child = baseline_module.mn_gateway_connection(ike.BaselineParams(method="mobike", aaa=False))["children"]
    priority = int(child[baseline_module.MN_GATEWAY_CONNECTION]["priority"])
    assert priority == operator_policy.PRIORITY_GATEWAY_TUNNEL < operator_policy.PRIORITY_BYPASS
    from ipsec import Selector, Template
    charon_out = SecurityPolicy(selector=Selector(saddr=plan.MN_HOME_ADDRESS, prefixlen_s=128, daddr=plan.HA_ADDRESS,
                                                  prefixlen_d=128), dir=XFRM_POLICY_OUT, priority=priority,
                                templates=(Template(saddr=MN_COA_NAR, daddr=plan.HA_ADDRESS),))
    policies = (*operator_policy.mn_bypass_policies(plan.HA_ADDRESS, plan.MN_HOME_ADDRESS), charon_out)
    assert _verdict(policies, XFRM_POLICY_OUT, plan.MN_HOME_ADDRESS, plan.HA_ADDRESS,
                    operator_policy.IPPROTO_UDP, 9000) == "protect"
    # without it, the bypass would win: the reason for the fixed priority
    assert _verdict(policies[:-1], XFRM_POLICY_OUT, plan.MN_HOME_ADDRESS, plan.HA_ADDRESS,
                    operator_policy.IPPROTO_UDP, 9000) == "allow"
    # the Binding Update still leaves in clear (the Mobility Header bypass), from the care-of address
    assert _verdict(policies, XFRM_POLICY_OUT, MN_COA_NAR, plan.HA_ADDRESS, operator_policy.IPPROTO_MH) == "allow"


def test_the_connections_are_the_ones_the_design_names():
    params = ike.BaselineParams(method="mobike", aaa=False)
    mn = baseline_module.mn_gateway_connection(params)
    ha = baseline_module.ha_gateway_connection(params)
    assert mn["mobike"] == ha["mobike"] == "yes"
    assert "local_addrs" not in mn, "a fixed local address would keep charon from following the care-of address"
    assert mn["remote_addrs"] == [plan.HA_ADDRESS] and ha["local_addrs"] == [plan.HA_ADDRESS]
    assert ha["remote_addrs"] == [plan.ACCESS_PREFIX[ar] for ar in plan.ACCESS_ROUTERS]
    (mn_child,) = mn["children"].values()
    (ha_child,) = ha["children"].values()
    assert mn_child["mode"] == ha_child["mode"] == "tunnel"
    assert mn_child["local_ts"] == ha_child["remote_ts"] == [f"{plan.MN_HOME_ADDRESS}/128"]
    assert mn_child["remote_ts"] == ha_child["local_ts"] == [f"{plan.HA_ADDRESS}/128"]
    assert mn["local-1"]["auth"] == ha["remote-1"]["auth"] == "psk"
    assert (mn["local-1"]["id"], mn["remote-1"]["id"]) == (plan.MN_IDENTITY, baseline_module.GATEWAY_IDENTITY)
    assert baseline_module.gateway_interfaces(plan.MN) == ("mn-par", "mn-nar")
    assert baseline_module.gateway_interfaces(plan.HA) == ("lo",)


def test_the_dry_run_shows_every_file_and_message(tmp_path, capsys):
    assert baseline_module.main(["--dry-run", "mobike", "--workdir", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    for node in baseline_module.GATEWAY_NODES:
        assert f"# --- {tmp_path / node / 'strongswan.conf'}" in text
        assert f"# --- VICI load-conn to charon on {node}" in text
        assert f"# --- VICI load-shared to charon on {node}" in text
    assert "\tinterfaces_use = mn-par, mn-nar\n" in text and "\tinterfaces_use = lo\n" in text
    assert '"mobike": "yes"' in text and '"mobike": "no"' not in text
    for ar in plan.ACCESS_ROUTERS:
        assert f"# --- XFRM policies added on {ar} while MOBIKE runs" in text
    assert text.count(f"src {plan.HA_ADDRESS}/128 dst") == 2   # the ESP answers, one per AR
    # no AR runs charon, no AAA, no certificate
    for absent in ("par/strongswan.conf", "nar/strongswan.conf", "radiusd.conf", "pki (at set-up)"):
        assert absent not in text


def test_the_other_baselines_render_as_before():
    """The mobike options touch no other baseline's strongswan.conf."""
    for node in ("mn", "par"):
        conf = ike.render_strongswan_conf(node, ike.Path("/x/charon.log"), None)
        assert "interfaces_use" not in conf
    assert not ike.needs_aaa("psk") and not ike.needs_aaa("mobike") and ike.needs_aaa("eap-md5")
    with pytest.raises(ValueError, match="needs the AAA server"):
        ike.BaselineParams(method="eap-mschapv2", aaa=False)


def test_the_method_is_declared_once_and_not_in_the_default_run():
    method = methods.get("mobike")
    assert method.security.gateway and method.security.ike_auth == "mobike" and method.security.secure
    assert "mobike" not in methods.default_names()
    assert "mobike" not in methods.reauth_names() and "mobike" not in methods.cxtp_names()
    assert method.path_interfaces(plan.NAR) == {plan.MN: "mn-nar", plan.HA: "ha-nar"}
    assert method.path_interfaces(plan.PAR) == {plan.MN: "mn-par", plan.HA: "ha-par"}
    # every other method keeps the Mobile IPv6 tunnels' interfaces
    for name in methods.names():
        if name != "mobike":
            for ar in plan.ACCESS_ROUTERS:
                assert methods.get(name).path_interfaces(ar) == plan.new_path_interfaces(ar)


def test_ike_baseline_makes_a_mobike_baseline():
    made = baseline_module.IkeBaseline(None, ike.Path("/nonexistent"), method="mobike", aaa=False)
    assert isinstance(made, baseline_module.MobikeBaseline)
    assert type(baseline_module.IkeBaseline(None, ike.Path("/nonexistent"), method="psk", aaa=False)) \
        is baseline_module.IkeBaseline
    with pytest.raises(ValueError):
        baseline_module.MobikeBaseline(None, ike.Path("/nonexistent"), method="mobike", aaa=True)


def _ike_header(initiator_spi: int, exchange: int) -> bytes:
    return struct.pack("!QQBBBBII", initiator_spi, 0x22, 46, 0x20, exchange, 0x08, 2, 28)


def test_the_update_exchange_is_counted_by_its_ike_sa():
    spi = 0x1122334455667788
    packets = [("out", _ike_header(spi, 37)), ("in", _ike_header(spi, 37)), ("in", _ike_header(0x99, 37))]
    assert ike.summarize_ike_sa(packets, spi) == {"ike_messages": 2, "ike_requests": 1, "ike_bytes": 56,
                                                  "ike_other_messages": 1}


#: the MN's charon log of one move whose first roam job fired while the MN was detached
#: (an event 74 ms before the detach had scheduled it), from a run
LOG = """11:54:29.678 06[KNL] fe80::9402:3eff:fe63:6237 appeared on mn-par
11:54:29.752 07[KNL] interface mn-par deactivated
11:54:29.753 05[KNL] 2001:db8:1::100 disappeared from mn-par
11:54:29.776 08[IKE] old path is not available anymore, try to find another
11:54:29.777 08[IKE] no route found to reach 2001:db8:3::1, MOBIKE update deferred
11:54:29.803 07[KNL] interface mn-nar activated
11:54:29.805 06[KNL] 2001:db8:2::100 appeared on mn-nar
11:54:29.903 08[IKE] old path is not available anymore, try to find another
11:54:29.903 08[IKE] requesting address change using MOBIKE
11:54:29.903 08[ENC] generating INFORMATIONAL request 12 [ ]
11:54:29.929 07[ENC] parsed INFORMATIONAL response 12 [ ]
11:54:29.929 07[IKE] local endpoint changed from 2001:db8:1::100[4500] to 2001:db8:2::100[4500]
11:54:29.931 07[ENC] generating INFORMATIONAL request 13 [ N(UPD_SA_ADDR) N(NATD_S_IP) N(NATD_D_IP) N(COOKIE2) ]
11:54:29.958 08[ENC] parsed INFORMATIONAL response 13 [ N(NATD_S_IP) N(NATD_D_IP) N(COOKIE2) ]
"""


def test_mobikes_steps_are_read_from_charons_log():
    steps = ike.mobike_steps(LOG, MN_COA_NAR)
    at = 11 * 3600 + 54 * 60 + 29
    expected = {"detach_seen": 0.752, "roam_deferred": 0.777, "address_seen": 0.805, "roam": 0.903,
                "path_checked": 0.929, "update_sent": 0.931, "update_answered": 0.958}
    assert steps == pytest.approx({name: at + value for name, value in expected.items()})
    # another care-of address's move is not this one's
    assert "address_seen" not in ike.mobike_steps(LOG, plan.MN_COA[plan.PAR])
