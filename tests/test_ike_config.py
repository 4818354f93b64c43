"""Pure tests of the IKE/RADIUS baseline's configuration generation (no daemon, no kernel)."""

from __future__ import annotations

import re
import struct

import pytest

from nodes import ike
from nodes.radius import RadiusConfig, render_radiusd_conf, render_users, write_config
from scenarios.runner import baseline
from topo import plan

CERT = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


def test_params_refuse_unknown_method_and_eap_without_aaa():
    with pytest.raises(ValueError, match="method must be one of"):
        ike.BaselineParams(method="eap-aka")
    with pytest.raises(ValueError, match="needs the AAA server"):
        ike.BaselineParams(method="eap-md5", aaa=False)
    assert not ike.BaselineParams(method="psk", aaa=False).eap


@pytest.mark.parametrize("ar", plan.ACCESS_ROUTERS)
@pytest.mark.parametrize("method", ["eap-mschapv2", "eap-md5"])
def test_mn_eap_connection_is_the_papers_tunnel(ar, method):
    params = ike.BaselineParams(method=method)
    conn = baseline.mn_connection(ar, params, CERT)
    assert conn["local_addrs"] == [plan.MN_COA[ar]]
    assert conn["remote_addrs"] == [plan.AR_ACCESS_ADDRESS[ar]]
    assert conn["mobike"] == "no"  # a handover is a fresh IKE_SA, never a MOBIKE update
    assert conn["local-1"] == {"auth": method, "id": plan.MN_IDENTITY, "eap_id": plan.MN_IDENTITY}
    assert conn["remote-1"] == {"auth": "pubkey", "id": ar, "certs": [CERT]}  # pinned certificate
    (child_name, child), = conn["children"].items()
    assert child_name == baseline.mn_connection_name(ar)
    assert child["mode"] == "tunnel"
    assert child["local_ts"] == ["dynamic"]  # the CoA
    assert child["remote_ts"] == [f"{plan.HA_ADDRESS}/128"]
    assert child["esp_proposals"] == [ike.ESP_PROPOSAL]


@pytest.mark.parametrize("ar", plan.ACCESS_ROUTERS)
def test_ar_eap_connection_relays_to_radius(ar):
    conn = baseline.ar_connection(ar, ike.BaselineParams(), CERT)
    assert conn["local_addrs"] == [plan.AR_ACCESS_ADDRESS[ar]]
    assert conn["remote_addrs"] == [plan.ACCESS_PREFIX[ar]]
    assert conn["local-1"] == {"auth": "pubkey", "id": ar, "certs": [CERT]}
    assert conn["remote-1"]["auth"] == "eap-radius"
    child = conn["children"][ike.AR_CONNECTION]
    assert child["local_ts"] == [f"{plan.HA_ADDRESS}/128"] and child["remote_ts"] == ["dynamic"]
    assert child["mode"] == "tunnel"


def test_eap_needs_the_certificate():
    with pytest.raises(ValueError):
        baseline.mn_connection(plan.PAR, ike.BaselineParams(), None)
    with pytest.raises(ValueError):
        baseline.ar_connection(plan.PAR, ike.BaselineParams(), None)


def test_psk_connections_and_secrets():
    params = ike.BaselineParams(method="psk", aaa=False, psk="k" * 24)
    mn, ar = baseline.mn_connection(plan.NAR, params, None), baseline.ar_connection(plan.NAR, params, None)
    assert mn["local-1"] == {"auth": "psk", "id": plan.MN_IDENTITY} and mn["remote-1"] == {"auth": "psk", "id": "nar"}
    assert ar["local-1"] == {"auth": "psk", "id": "nar"} and ar["remote-1"] == {"auth": "psk", "id": plan.MN_IDENTITY}
    for node in (plan.MN, plan.PAR, plan.NAR):
        (secret,) = baseline.shared_secrets(node, params)
        assert secret["type"] == "IKE" and secret["data"] == "k" * 24
        assert set(secret["owners"]) == {plan.MN_IDENTITY, "par", "nar"}


def test_eap_secret_only_on_the_mn():
    params = ike.BaselineParams(method="eap-md5", password="pw")
    assert baseline.shared_secrets(plan.MN, params) == [
        {"id": "eap-mn", "type": "EAP", "data": "pw", "owners": [plan.MN_IDENTITY]}]
    assert baseline.shared_secrets(plan.PAR, params) == []


def test_strongswan_conf_one_key_per_line_and_radius_only_on_ars(tmp_path):
    ar = ike.render_strongswan_conf("par", tmp_path / "charon.log", (plan.AAA_ADDRESS, "sec"))
    mn = ike.render_strongswan_conf("mn", tmp_path / "charon.log", None)
    for text in (ar, mn):
        assert ";" not in text  # the settings parser does not take ';' as a separator
        assert text.count("{") == text.count("}")
        assert "install_routes = no" in text
        assert f"path = {tmp_path / 'charon.log'}" in text
        plugins = re.search(r"load = (.*)", text).group(1).split()
        for needed in ("kdf", "openssl", "vici", "kernel-netlink", "eap-radius", "eap-mschapv2", "eap-md5"):
            assert needed in plugins
    assert f"address = {plan.AAA_ADDRESS}" in ar and "secret = sec" in ar
    assert "eap-radius {" not in mn


@pytest.mark.parametrize("method,eap_type", [("eap-mschapv2", "MSCHAPv2"), ("eap-md5", "MD5")])
def test_radius_forces_the_eap_method_before_eap(tmp_path, method, eap_type):
    config = RadiusConfig(address=plan.AAA_ADDRESS, secret="s", users={"mn": "pw"}, method=method)
    text = render_radiusd_conf(config, tmp_path / "raddb", tmp_path / "log", tmp_path / "run")
    authorize = text[text.index("authorize {"):text.index("authenticate {")]
    assert authorize.index(f"&EAP-Type := {eap_type}") < authorize.index("files") < authorize.index("eap {")
    assert f"ipv6addr = {plan.AAA_ADDRESS}" in text
    assert "reject_delay = 0" in text
    assert "user =" not in text and "group =" not in text  # no privilege drop
    assert "tls" not in text.lower()  # no certificates needed
    assert f"run_dir = {tmp_path / 'run'}" in text
    assert text.count("{") == text.count("}")


def test_radius_users_and_quoting(tmp_path):
    config = RadiusConfig(address=plan.AAA_ADDRESS, secret="s", users={"mn": "pw"})
    assert '"mn" Cleartext-Password := "pw"' in render_users(config)
    with pytest.raises(ValueError):
        RadiusConfig(address=plan.AAA_ADDRESS, secret='a"b', users={})
    with pytest.raises(ValueError):
        RadiusConfig(address=plan.AAA_ADDRESS, secret="s", users={}, method="eap-tls")
    confdir = write_config(config, tmp_path)
    assert (confdir / "radiusd.conf").is_file() and (confdir / "users").is_file()
    assert "/usr/share/freeradius/dictionary" in (confdir / "dictionary").read_text()


def test_failure_classification():
    kind, reason = ike.classify_failure("08[IKE] received EAP_FAILURE, EAP authentication failed\n")
    assert kind is ike.IkeAuthenticationError and reason == "received EAP_FAILURE, EAP authentication failed"
    kind, _ = ike.classify_failure("06[IKE] received AUTHENTICATION_FAILED notify error\n")
    assert kind is ike.IkeAuthenticationError
    kind, reason = ike.classify_failure("05[IKE] giving up after 5 retransmits\n")
    assert kind is ike.IkeAttachError and "retransmits" in reason
    kind, _ = ike.classify_failure("")
    assert kind is ike.IkeAttachError
    error = ike.IkeAuthenticationError("par", "received EAP_FAILURE")
    assert isinstance(error, ike.IkeAttachError) and isinstance(error, ike.IkeError)
    assert "par" in str(error) and error.reason == "received EAP_FAILURE"


def _run_bpf(program: bytes, packet: bytes) -> int:
    """A tiny interpreter for the instructions udp6_port_filter uses."""
    instructions = [struct.unpack("HBBI", program[i:i + 8]) for i in range(0, len(program), 8)]
    pc, accumulator = 0, 0
    while True:
        code, jt, jf, k = instructions[pc]
        if code == 0x28:
            accumulator = int.from_bytes(packet[k:k + 2], "big")
        elif code == 0x30:
            accumulator = packet[k]
        elif code == 0x15:
            pc += jt if accumulator == k else jf
        elif code == 0x06:
            return k
        pc += 1


def _frame(next_header: int, sport: int, dport: int, ethertype: int = 0x86DD) -> bytes:
    ipv6 = bytes(6) + bytes([next_header]) + bytes(33)
    return bytes(12) + ethertype.to_bytes(2, "big") + ipv6 + struct.pack("!HHHH", sport, dport, 8, 0)


@pytest.mark.parametrize("ports", [(500, 4500), (1812,)])
def test_bpf_filter_accepts_only_udp6_on_the_ports(ports):
    program = ike.udp6_port_filter(ports)
    for port in ports:
        assert _run_bpf(program, _frame(17, port, 40000)) > 0
        assert _run_bpf(program, _frame(17, 40000, port)) > 0
        assert _run_bpf(program, _frame(6, port, port)) == 0       # TCP
        assert _run_bpf(program, _frame(17, port, port, 0x0800)) == 0  # not IPv6
    assert _run_bpf(program, _frame(17, 501, 40000)) == 0
    assert _run_bpf(program, _frame(50, 0, 0)) == 0  # ESP


def test_a_deep_run_directory_gets_a_short_vici_socket(tmp_path):
    """An AF_UNIX path has at most 107 octets: charon's /run then goes to a short directory of its
    own (its configuration and log stay where they were asked), removed at the stop."""
    deep = tmp_path / ("x" * 120) / "mn"
    charon = ike.Charon(None, "mn", deep, None)
    charon.prepare()
    try:
        assert len(str(charon.socket_path)) <= ike.SUN_PATH_MAX
        assert charon.run_dir.is_dir() and deep not in charon.run_dir.parents
        assert charon.log_path.parent == deep and charon.conf_path.parent == deep
        assert str(charon.run_dir) in charon.command()[-1]  # bound on /run
    finally:
        charon.stop()
    assert not charon.run_dir.exists()
    shallow = ike.Charon(None, "mn", tmp_path / "mn", None)
    shallow.prepare()
    assert shallow.run_dir == tmp_path / "mn" / "run"


def _ike(ispi: bytes, exchange: int) -> bytes:
    return ispi + bytes(8) + bytes([33, 0x20, exchange, 0x08]) + bytes(4) + (28).to_bytes(4, "big")


def test_ike_summary_counts_only_the_new_ike_sa():
    new, old = b"N" * 8, b"O" * 8
    packets = [
        ("in", _ike(old, 37)),                 # a late DELETE of the previous IKE_SA
        ("out", _ike(new, ike.IKE_SA_INIT)),
        ("in", _ike(new, ike.IKE_SA_INIT) + b"x" * 10),
        ("out", _ike(new, 35)),
        ("in", _ike(new, 35)),
    ]
    assert ike.summarize_ike(packets) == {"ike_messages": 4, "ike_requests": 2,
                                          "ike_bytes": 4 * 28 + 10, "ike_other_messages": 1}
    assert ike.summarize_ike([])["ike_messages"] == 0
    assert ike.summarize_radius([("out", b"a" * 100), ("in", b"b" * 40)]) == {
        "radius_messages": 2, "radius_requests": 1, "radius_bytes": 140}
