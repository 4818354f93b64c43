"""Pre-authentication (``preauth-eap``, ``preauth-psk``, ``preauth-eap-cancelled``) without a kernel:
the configuration rendered from data (the VICI connections of the MN and the ARs, the ARs' policies,
``--dry-run``), how the ARs' policies decide, the methods' declarations, and what the hooks put in
the record."""

from __future__ import annotations

import ipaddress

import pytest

from ipsec import SecurityPolicy
from ipsec.xfrm_messages import XFRM_POLICY_FWD
from nodes import ike, operator_policy
from scenarios.runner import baseline as baseline_module
from scenarios.runner import methods
from scenarios.runner.experiment import Move
from topo import plan

PAR, NAR = plan.PAR, plan.NAR
EAP = ike.BaselineParams(method="preauth-eap-mschapv2")
PSK = ike.BaselineParams(method="preauth-psk", aaa=False)


def _verdict(policies: tuple[SecurityPolicy, ...], src: str, dst: str, proto: int, dport: int = 0) -> str:
    """What an AR does with a forwarded packet: the matching FWD policy of lowest priority decides
    (none: allowed)."""
    def matches(policy: SecurityPolicy) -> bool:
        selector = policy.selector
        if policy.dir != XFRM_POLICY_FWD or (selector.proto and selector.proto != proto):
            return False
        if selector.dport_mask and selector.dport != dport:
            return False
        return all(ipaddress.ip_address(address) in ipaddress.ip_network(f"{prefix}/{length}", strict=False)
                   for address, prefix, length in ((src, selector.saddr, selector.prefixlen_s),
                                                   (dst, selector.daddr, selector.prefixlen_d)))
    matching = sorted((policy for policy in policies if matches(policy)), key=lambda policy: policy.priority)
    if not matching:
        return "none"
    return "block" if matching[0].action else "allow"


def test_the_parameters_name_the_authentication_under_the_prefix():
    assert EAP.preauth and EAP.eap and EAP.eap_method == "eap-mschapv2" and not EAP.tls and not EAP.mobike
    assert PSK.preauth and not PSK.eap and PSK.auth == "psk"
    assert ike.needs_aaa("preauth-eap-mschapv2") and not ike.needs_aaa("preauth-psk")
    assert not ike.BaselineParams(method="eap-mschapv2").preauth
    with pytest.raises(ValueError):
        ike.BaselineParams(method="preauth-eap-mschapv2", aaa=False)


@pytest.mark.parametrize("params", [EAP, PSK], ids=["eap", "psk"])
def test_the_mn_pre_authenticates_from_its_care_of_address_at_the_neighbour(params):
    """The IKE_SA from the MN's care-of address at the pAR to the nAR's access address; the
    CHILD_SA's traffic selectors the future care-of address at the nAR <-> HA; no MOBIKE."""
    cert = b"<nar certificate>" if params.eap else None
    connection = baseline_module.mn_preauth_connection(NAR, params, cert)
    assert connection["local_addrs"] == [plan.MN_COA[PAR]]
    assert connection["remote_addrs"] == [plan.AR_ACCESS_ADDRESS[NAR]]
    assert connection["mobike"] == "no"
    (name, child), = connection["children"].items()
    assert name == baseline_module.mn_preauth_connection_name(NAR) == "pre-nar"
    assert child["mode"] == "tunnel"
    assert child["local_ts"] == [f"{plan.MN_COA[NAR]}/128"] and child["remote_ts"] == [f"{plan.HA_ADDRESS}/128"]
    # the authentication is the re-authentication baseline's
    plain = baseline_module.mn_connection(NAR, params, cert)
    assert connection["local-1"] == plain["local-1"] and connection["remote-1"] == plain["remote-1"]


@pytest.mark.parametrize("params", [EAP, PSK], ids=["eap", "psk"])
def test_the_nar_accepts_pre_authentication_only_for_the_mns_address_on_its_own_link(params):
    cert = b"<nar certificate>" if params.eap else None
    connection = baseline_module.ar_preauth_connection(NAR, params, cert)
    assert connection["local_addrs"] == [plan.AR_ACCESS_ADDRESS[NAR]]
    assert connection["remote_addrs"] == [plan.ACCESS_PREFIX[PAR]]
    child = connection["children"][baseline_module.PREAUTH_CONNECTION]
    assert child["local_ts"] == [f"{plan.HA_ADDRESS}/128"] and child["remote_ts"] == [f"{plan.MN_COA[NAR]}/128"]
    # the ordinary connection (the first attach) takes the AR's own prefix: the two never overlap
    assert baseline_module.ar_connection(NAR, params, cert)["remote_addrs"] == [plan.ACCESS_PREFIX[NAR]]
    if params.eap:
        assert connection["remote-1"]["auth"] == "eap-radius"
    else:
        assert connection["remote-1"] == {"auth": "psk", "id": plan.MN_IDENTITY}


def test_secrets_follow_the_authentication():
    assert [secret["type"] for secret in baseline_module.shared_secrets(plan.MN, PSK)] == ["IKE"]
    assert [secret["type"] for secret in baseline_module.shared_secrets(plan.MN, EAP)] == ["EAP"]
    assert baseline_module.shared_secrets(NAR, EAP) == []


def test_the_ars_forward_ike_to_the_neighbour_and_no_esp_from_its_prefix():
    """At the pAR: IKE from its link to the nAR's access address is forwarded (signalling); ESP from
    the nAR's prefix (the future care-of address) is not, whatever its destination; ESP from its own
    link's prefix is left to the operator's access policy."""
    policies = baseline_module.preauth_access(PAR)
    future, current, nar = plan.MN_COA[NAR], plan.MN_COA[PAR], plan.AR_ACCESS_ADDRESS[NAR]
    for port in (500, 4500):
        assert _verdict(policies, current, nar, 17, port) == "allow"
    assert _verdict(policies, current, nar, 17, 53) == "none"  # only IKE's ports
    assert _verdict(policies, current, plan.HA_ADDRESS, 17, 500) == "none"  # only to the neighbour
    for destination in (nar, plan.HA_ADDRESS):
        assert _verdict(policies, future, destination, operator_policy.IPPROTO_ESP) == "block"
    assert _verdict(policies, current, nar, operator_policy.IPPROTO_ESP) == "none"
    # the block ranks with the anti-spoofing rules, before any bypass
    block = [policy for policy in policies if policy.action]
    assert block and all(policy.priority == operator_policy.PRIORITY_ANTI_SPOOF for policy in block)
    # the IKE answers of the nAR through the pAR (UDP, from the nAR's prefix) are not blocked
    assert _verdict(policies, nar, current, 17) == "none"


def test_the_dry_run_shows_every_file_connection_and_policy():
    for method, radius in (("preauth-eap-mschapv2", True), ("preauth-psk", False)):
        text = baseline_module.dry_run(method, baseline_module.Path("/tmp/preauth-dry-run"))
        for what in ('"pre-par"', '"pre-nar"', f'"{baseline_module.PREAUTH_CONNECTION}"', '"to-par"', '"access"',
                     "XFRM policies added on par while pre-authentication runs",
                     "XFRM policies added on nar while pre-authentication runs"):
            assert what in text, (method, what)
        assert ("radiusd.conf" in text) == radius, method
        assert f'"{plan.MN_COA[NAR]}/128"' in text
    assert baseline_module.main(["--dry-run", "preauth-psk", "--workdir", "/tmp/preauth-dry-run"]) == 0


def test_the_baseline_for_a_preauth_method_is_the_pre_authentication_one(tmp_path):
    made = baseline_module.IkeBaseline(None, tmp_path, method="preauth-psk", aaa=False)
    assert isinstance(made, baseline_module.PreauthBaseline)
    assert not isinstance(baseline_module.IkeBaseline(None, tmp_path, method="psk", aaa=False),
                          baseline_module.PreauthBaseline)


def test_the_methods_are_declared_and_off_by_default():
    eap, psk, cancelled = (methods.get(name) for name in ("preauth-eap", "preauth-psk", "preauth-eap-cancelled"))
    assert eap.security.ike_auth == "preauth-eap-mschapv2" and psk.security.ike_auth == "preauth-psk"
    assert cancelled.security == eap.security
    assert eap.sweeps == "ar_aaa" and psk.sweeps is None
    for method in (eap, psk, cancelled):
        assert not method.default and not method.cxtp and method.before_detach and method.after_attach
    assert "preauth-eap" not in methods.default_names()
    assert methods.default_names() == ("none", "cxtp-predictive", "cxtp-reactive", "cxtp-network", "reauth-eap",
                                       "reauth-psk")


class _Testbed:
    def __init__(self, current_ar: str) -> None:
        self.current_ar = current_ar


def _experiment(baseline):
    class Experiment:
        pass

    experiment = Experiment()
    experiment.baseline = baseline
    return experiment


def _baseline(tmp_path, monkeypatch, calls: list, current_ar: str = PAR):
    """A pre-authentication baseline without daemons: its exchanges replaced by stand-ins that log
    (the first attach and the kernel's work are the kernel test's)."""
    made = baseline_module.IkeBaseline(_Testbed(current_ar), tmp_path, method="preauth-eap-mschapv2")
    assert isinstance(made, baseline_module.PreauthBaseline)

    def preauthenticate(ar):
        calls.append(("preauthenticate", ar))
        figures = {"preauth_sent_ns": 1, "preauth_child_installed_ns": 2, "preauth_elapsed_ms": 1e-6,
                   "preauth_ike_messages": 10, "preauth_ike_requests": 5, "preauth_ike_bytes": 1784,
                   "preauth_radius_messages": 6, "preauth_radius_requests": 3, "preauth_radius_bytes": 880,
                   "aaa_access_requests": 3}
        made.preauthenticated[ar] = figures
        return figures

    def cancel(ar):
        calls.append(("cancel", ar))
        return {**made.preauthenticated.pop(ar), "cancelled": True}

    monkeypatch.setattr(made, "preauthenticate", preauthenticate)
    monkeypatch.setattr(made, "cancel", cancel)
    def fresh_attach(self, ar):
        calls.append(("fresh attach", ar))
        return {"radius_requests": 3}

    monkeypatch.setattr(baseline_module.IkeBaseline, "attach", fresh_attach)
    # no charon lists anything, no kernel holds anything: the clean-up after the move finds nothing
    monkeypatch.setattr(made, "list_sas", lambda node: [])
    monkeypatch.setattr(made, "_kernel_names", lambda *arguments: False)
    def wait_new_path(ar):
        calls.append(("wait for the new path", ar))
        return 1.5

    monkeypatch.setattr(made, "_wait_new_path", wait_new_path)
    return made


def test_the_hooks_pre_authenticate_ahead_and_negotiate_nothing_after_the_attach(tmp_path, monkeypatch):
    """preauth-eap: attach at the nAR while at the pAR = the pre-authentication; after the move the
    attach at the nAR only records (the pre-authentication's figures, the IKE messages since it),
    and the pAR's SAs go."""
    calls: list = []
    made = _baseline(tmp_path, monkeypatch, calls)
    method, move = methods.get("preauth-eap"), Move(PAR, NAR)
    method.before_detach(_experiment(made), move)
    assert calls == [("preauthenticate", NAR)]
    made.testbed.current_ar = NAR  # the move
    counted = iter([{}, {"INFORMATIONAL": 2}])
    monkeypatch.setattr(baseline_module, "ike_exchanges", lambda packets: next(counted))
    made.ike_counter = type("Counter", (), {"drain": lambda self: []})()
    record = method.after_attach(_experiment(made), move)
    # no exchange after the attach; the pAR's clean-up waits for the downlink on the new SAs
    assert calls == [("preauthenticate", NAR), ("wait for the new path", NAR)]
    assert record["cleanup_waited_ms"] == 1.5
    assert record["preauthenticated"] is True and record["aaa_access_requests"] == 3
    assert record["ike_until_attach"] == {} and record["ike_after_attach"] == {"INFORMATIONAL": 2}
    assert (record["ike_messages"], record["radius_requests"], record["initiate_sent_ns"]) == (10, 3, 1)
    assert made.preauthenticated == {} and made._followed is None


def test_a_cancelled_pre_authentication_is_torn_down_and_its_cost_recorded(tmp_path, monkeypatch):
    """preauth-eap-cancelled: pre-authenticate, call it off (the nAR's detach), then after the move
    a fresh re-authentication whose record adds the cancelled one's AAA transactions."""
    calls: list = []
    made = _baseline(tmp_path, monkeypatch, calls)
    method, move = methods.get("preauth-eap-cancelled"), Move(PAR, NAR)
    method.before_detach(_experiment(made), move)
    assert calls == [("preauthenticate", NAR), ("cancel", NAR)] and made.cancelled["cancelled"] is True
    made.testbed.current_ar = NAR
    record = methods._reauthenticate(_experiment(made), move)
    assert calls[2:] == [("fresh attach", NAR)]
    assert record["cancelled_preauth"]["aaa_access_requests"] == 3
    assert record["aaa_access_requests"] == 6 and made.cancelled is None


def test_ike_messages_are_counted_by_exchange():
    from scapy.contrib.ikev2 import IKEv2

    packets = [("out", bytes(IKEv2(init_SPI=b"\x01" * 8, exch_type=kind))) for kind in (34, 35, 37, 37)]
    packets.append(("in", b"\x00" * 10))  # too short for an IKE header: not counted
    assert ike.ike_exchanges(packets) == {"IKE_SA_INIT": 1, "IKE_AUTH": 1, "INFORMATIONAL": 2}
