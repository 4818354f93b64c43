"""Pure tests of the EAP-TLS re-authentication baselines (``reauth-eap-tls``,
``reauth-eap-tls-resumed``): the certificates the testbed's CA issues, FreeRADIUS's and charon's
rendered configuration, the dry run, reading an EAP-TLS handshake out of RADIUS packets, and the
resumed method's own check. No daemon and no kernel; ``pki`` and ``freeradius -C`` run on the host."""

from __future__ import annotations

import datetime
import re
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from nodes import ike, pki
from nodes.radius import FREERADIUS, RadiusConfig, RadiusTls, render_radiusd_conf, write_config
from scenarios.runner import baseline, methods
from topo import plan

PEM = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


# -- certificates --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def credentials(tmp_path_factory):
    directory = tmp_path_factory.mktemp("pki")
    authority = pki.make_authority(directory, baseline.CA_NAME)
    server = pki.issue_credential(directory, authority, baseline.AAA_IDENTITY, "serverAuth")
    client = pki.issue_credential(directory, authority, plan.MN_IDENTITY, "clientAuth")
    return directory, authority, server, client


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_certificates_chain_to_the_testbed_ca(credentials):
    _, authority, server, client = credentials
    ca = _cert(authority.cert_path)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert ca.subject == ca.issuer
    for credential in (server, client):
        cert = _cert(credential.cert_path)
        cert.verify_directly_issued_by(ca)  # raises unless the CA's key signed it
        assert credential.issuer_path == authority.cert_path
        assert cert.not_valid_after_utc > datetime.datetime.now(datetime.UTC)
    # and OpenSSL (what FreeRADIUS uses) agrees, for the purpose each is made for
    for credential, purpose in ((server, "sslserver"), (client, "sslclient")):
        result = subprocess.run(["openssl", "verify", "-CAfile", str(authority.cert_path), "-purpose", purpose,
                                 str(credential.cert_path)], capture_output=True, text=True)
        assert result.returncode == 0 and result.stdout.strip().endswith(": OK"), result


def test_client_certificate_carries_the_mn_identity(credentials):
    _, _, server, client = credentials
    cert = _cert(client.cert_path)
    # FreeRADIUS compares the CN with the EAP identity (check_cert_cn); charon finds its own
    # certificate by the identity in the subjectAltName
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == plan.MN_IDENTITY
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.RFC822Name) == [plan.MN_IDENTITY]
    usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    server_cert = _cert(server.cert_path)
    assert server_cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value \
        .get_values_for_type(x509.DNSName) == [baseline.AAA_IDENTITY]
    assert list(server_cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == \
        [ExtendedKeyUsageOID.SERVER_AUTH]
    # the keys are the certificates' own
    for credential in (server, client):
        key = x509.load_pem_x509_certificate(credential.cert_pem).public_key()
        from cryptography.hazmat.primitives.serialization import load_pem_private_key
        assert load_pem_private_key(credential.key_pem, None).public_key() == key
        assert credential.key_path.stat().st_mode & 0o077 == 0


def test_usage_is_checked(credentials):
    directory, authority, _, _ = credentials
    with pytest.raises(ValueError, match="usage"):
        pki.issue_credential(directory, authority, "x", "codeSigning")


# -- FreeRADIUS ---------------------------------------------------------------------------------------
def _tls(directory: Path, cache: bool) -> RadiusTls:
    return RadiusTls(certificate_file=directory / "aaa.cert.pem", private_key_file=directory / "aaa.key.pem",
                     ca_file=directory / "testbed-CA.cert.pem", session_cache=cache)


@pytest.mark.parametrize("cache", [False, True])
def test_radius_eap_tls_config(tmp_path, cache):
    config = RadiusConfig(address=plan.AAA_ADDRESS, secret="s", users={}, method="eap-tls", tls=_tls(tmp_path, cache))
    text = render_radiusd_conf(config, tmp_path / "raddb", tmp_path / "log", tmp_path / "run")
    authorize = text[text.index("authorize {"):text.index("authenticate {")]
    assert authorize.index("&EAP-Type := TLS") < authorize.index("eap {")
    eap = text[text.index("\teap {"):text.index("instantiate {")]
    assert "\t\tdefault_eap_type = tls\n" in eap
    block = eap[eap.index("tls-config tls-common {"):]
    for line in (f"private_key_file = {tmp_path / 'aaa.key.pem'}", f"certificate_file = {tmp_path / 'aaa.cert.pem'}",
                 f"ca_file = {tmp_path / 'testbed-CA.cert.pem'}", 'tls_min_version = "1.2"',
                 'tls_max_version = "1.2"', "check_cert_cn = %{User-Name}"):
        assert f"\t\t\t{line}\n" in block, line
    cache_block = block[block.index("cache {"):block.index("}", block.index("cache {"))]
    assert f"\t\t\t\tenable = {'yes' if cache else 'no'}\n" in cache_block
    assert "\t\ttls {\n\t\t\ttls = tls-common\n\t\t}\n" in eap
    assert text.count("{") == text.count("}")


def test_radius_tls_only_with_eap_tls(tmp_path):
    with pytest.raises(ValueError, match="EAP-TLS"):
        RadiusConfig(address=plan.AAA_ADDRESS, secret="s", users={}, method="eap-tls")
    with pytest.raises(ValueError, match="EAP-TLS"):
        RadiusConfig(address=plan.AAA_ADDRESS, secret="s", users={}, method="eap-md5", tls=_tls(tmp_path, False))


@pytest.mark.skipif(not Path(FREERADIUS).exists(), reason="FreeRADIUS is not installed (scripts/setup.sh)")
@pytest.mark.parametrize("method", ["eap-tls", "eap-tls-resumed"])
def test_freeradius_accepts_the_rendered_config(tmp_path, credentials, method):
    """``freeradius -C`` loads the configuration and instantiates the eap module, TLS context and
    certificates included, without serving."""
    directory = credentials[0]
    config = baseline.radius_configuration(ike.BaselineParams(method=method), directory)
    confdir = write_config(config, tmp_path)
    result = subprocess.run([FREERADIUS, "-XC", "-d", str(confdir), "-n", "radiusd"], capture_output=True, text=True)
    assert result.returncode == 0 and "Configuration appears to be OK" in result.stdout, result.stdout[-3000:]
    cache = re.search(r"cache \{\n\s*enable = (\w+)\n", result.stdout)
    assert cache is not None and cache.group(1) == ("yes" if method == "eap-tls-resumed" else "no"), result.stdout


# -- charon -------------------------------------------------------------------------------------------
def test_params_name_the_tls_variants():
    full, resumed = ike.BaselineParams(method="eap-tls"), ike.BaselineParams(method="eap-tls-resumed")
    assert full.eap and full.tls and not full.tls_resumption and full.eap_method == "eap-tls"
    assert resumed.eap and resumed.tls and resumed.tls_resumption and resumed.eap_method == "eap-tls"
    assert ike.BaselineParams(method="eap-md5").eap_method == "eap-md5"
    assert not ike.BaselineParams(method="eap-mschapv2").tls
    with pytest.raises(ValueError, match="needs the AAA server"):
        ike.BaselineParams(method="eap-tls", aaa=False)


def test_only_the_mn_is_an_eap_tls_peer(tmp_path):
    params = ike.BaselineParams(method="eap-tls-resumed")
    conf = {node: ike.render_strongswan_conf(node, tmp_path / "charon.log", *baseline.charon_options(node, params))
            for node in baseline.CHARON_NODES}
    assert re.search(r"load = .* eap-tls\n", conf[plan.MN])
    assert "libtls {\n\tversion_min = 1.2\n\tversion_max = 1.2\n}\n" in conf[plan.MN]
    for ar in plan.ACCESS_ROUTERS:
        assert "eap-tls" not in conf[ar] and "libtls" not in conf[ar]
        assert f"address = {plan.AAA_ADDRESS}" in conf[ar]
    for text in conf.values():
        assert ";" not in text and text.count("{") == text.count("}")
    # the other methods' strongswan.conf is what it was: no eap-tls, no libtls section
    mschap = ike.render_strongswan_conf(plan.MN, tmp_path / "charon.log", None)
    assert "eap-tls" not in mschap and "libtls" not in mschap and mschap.endswith("\t}\n}\n")


@pytest.mark.parametrize("method", ["eap-tls", "eap-tls-resumed"])
def test_mn_eap_tls_connection(method):
    params = ike.BaselineParams(method=method)
    conn = baseline.mn_connection(plan.NAR, params, PEM, b"client")
    assert conn["local-1"] == {"auth": "eap-tls", "id": plan.MN_IDENTITY, "eap_id": plan.MN_IDENTITY,
                               "certs": [b"client"], "aaa_id": baseline.AAA_IDENTITY}
    assert conn["remote-1"] == {"auth": "pubkey", "id": plan.NAR, "certs": [PEM]}  # the nAR, pinned
    assert conn["local_addrs"] == [plan.MN_COA[plan.NAR]] and conn["mobike"] == "no"
    with pytest.raises(ValueError, match="client certificate"):
        baseline.mn_connection(plan.NAR, params, PEM, None)
    # no EAP password anywhere: the MN proves itself with its key
    assert all(baseline.shared_secrets(node, params) == [] for node in baseline.CHARON_NODES)
    assert baseline.ar_connection(plan.NAR, params, PEM)["remote-1"]["auth"] == "eap-radius"


@pytest.mark.parametrize("method", ["eap-tls", "eap-tls-resumed"])
def test_dry_run_shows_every_file(tmp_path, method):
    text = baseline.dry_run(method, tmp_path)
    params = ike.BaselineParams(method=method)
    shown = set(re.findall(r"^# --- (/\S+)$", text, flags=re.M))
    expected = {tmp_path / node / "strongswan.conf" for node in baseline.CHARON_NODES}
    expected |= set(baseline.FreeRadius(None, baseline.radius_configuration(params, tmp_path / "pki"),
                                        tmp_path / plan.AAA).config_files())
    assert shown == {str(path) for path in expected}
    assert f"enable = {'yes' if method == 'eap-tls-resumed' else 'no'}" in text
    assert '"auth": "eap-tls"' in text and f'"aaa_id": "{baseline.AAA_IDENTITY}"' in text
    assert "# --- VICI load-cert to charon on mn" in text and '"flag": "ca"' in text
    for name in (f"{baseline.AAA_IDENTITY}.cert.pem (serverAuth", f"{plan.MN_IDENTITY}.cert.pem (clientAuth"):
        assert name in text
    assert not any(path.exists() for path in expected)  # nothing written


def test_dry_run_command_line(capsys):
    assert baseline.main(["--dry-run", "eap-tls-resumed", "--workdir", "/nonexistent/dry"]) == 0
    assert "/nonexistent/dry/aaa/raddb/radiusd.conf" in capsys.readouterr().out


# -- the handshake, read from RADIUS packets ----------------------------------------------------------
def _hello(kind: int, session_id: bytes, extensions: tuple[int, ...] = ()) -> bytes:
    body = b"\x03\x03" + bytes(32) + bytes([len(session_id)]) + session_id
    if kind == 1:
        ext = b"".join(t.to_bytes(2, "big") + b"\x00\x00" for t in extensions)
        body += b"\x00\x02\xc0\x2b" + b"\x01\x00" + len(ext).to_bytes(2, "big") + ext
    else:
        body += b"\xc0\x2b\x00"
    return bytes([kind]) + len(body).to_bytes(3, "big") + body


def _message(kind: int, size: int = 10) -> bytes:
    return bytes([kind]) + size.to_bytes(3, "big") + bytes(size)


def _records(*handshake: bytes, change_cipher_spec: bool = False) -> bytes:
    data = b""
    if handshake:
        payload = b"".join(handshake)
        data += b"\x16\x03\x03" + len(payload).to_bytes(2, "big") + payload
    if change_cipher_spec:
        data += b"\x14\x03\x03\x00\x01\x01" + b"\x16\x03\x03\x00\x28" + bytes(40)  # CCS, encrypted Finished
    return data


def _radius(code: int, eap: bytes) -> bytes:
    chunks = [eap[i:i + 253] for i in range(0, len(eap), 253)]
    attributes = b"".join(bytes([79, len(chunk) + 2]) + chunk for chunk in chunks)
    attributes += bytes([80, 18]) + bytes(16)  # Message-Authenticator
    return bytes([code, 1]) + (20 + len(attributes)).to_bytes(2, "big") + bytes(16) + attributes


def _eap_tls(code: int, tls: bytes, fragment: int = 1000) -> list[bytes]:
    """EAP-TLS packets carrying ``tls``, fragmented as the peers do (L on the first, M on all but the last)."""
    packets, chunks = [], [tls[i:i + fragment] for i in range(0, len(tls), fragment)] or [b""]
    for index, chunk in enumerate(chunks):
        flags = (0x80 if index == 0 and tls else 0) | (0x40 if index < len(chunks) - 1 else 0)
        header = len(tls).to_bytes(4, "big") if flags & 0x80 else b""
        body = bytes([13, flags]) + header + chunk
        packets.append(bytes([code, index]) + (4 + len(body)).to_bytes(2, "big") + body)
    return packets


def _exchange(client_flights: list[bytes], server_flights: list[bytes]) -> list[tuple[str, bytes]]:
    """Access-Requests (``out``) and Access-Challenges (``in``) as the nAR sees them: the identity,
    the TLS start, then each flight (the server's fragmented and acknowledged), then Accept."""
    identity = bytes([2, 0, 0, 15, 1]) + plan.MN_IDENTITY.encode()
    start = bytes([1, 1, 0, 6, 13, 0x20])
    packets = [("out", _radius(1, identity)), ("in", _radius(11, start))]
    for client, server in zip(client_flights, server_flights, strict=True):
        for eap in _eap_tls(2, client):
            packets.append(("out", _radius(1, eap)))
        for index, eap in enumerate(_eap_tls(1, server)):
            if index:  # the client's acknowledgement of a fragment
                packets.append(("out", _radius(1, _eap_tls(2, b"")[0])))
            packets.append(("in", _radius(11 if server else 2, eap)))
    return packets


SESSION = bytes(range(32))


def test_a_full_handshake_is_read_from_the_packets():
    client = [_records(_hello(1, b"", (10, 13))),
              _records(_message(11, 600), _message(16, 70), _message(15, 72), change_cipher_spec=True), b""]
    server = [_records(_hello(2, SESSION), _message(11, 900), _message(12, 150), _message(13, 40), _message(14, 0)),
              _records(change_cipher_spec=True), b""]
    summary = ike.summarize_eap_tls(_exchange(client, server))
    assert summary == {
        "tls_client_session_id_octets": 0, "tls_client_offers_ticket": False, "tls_server_session_id_octets": 32,
        "tls_client_handshake": ["ClientHello", "Certificate", "ClientKeyExchange", "CertificateVerify"],
        "tls_server_handshake": ["ServerHello", "Certificate", "ServerKeyExchange", "CertificateRequest",
                                 "ServerHelloDone"],
        "tls_resumed": False}


def test_an_abbreviated_handshake_is_read_from_the_packets():
    client = [_records(_hello(1, SESSION, (35,))), _records(change_cipher_spec=True)]
    server = [_records(_hello(2, SESSION), change_cipher_spec=True), b""]
    summary = ike.summarize_eap_tls(_exchange(client, server))
    assert summary["tls_resumed"] and summary["tls_client_offers_ticket"]
    assert summary["tls_server_handshake"] == ["ServerHello"] and summary["tls_client_session_id_octets"] == 32
    # the server that answers another session ID ran a full handshake, whatever the client offered
    server[0] = _records(_hello(2, bytes(32)), _message(11, 900), _message(14, 0))
    assert not ike.summarize_eap_tls(_exchange(client, server))["tls_resumed"]
    assert ike.summarize_eap_tls([("out", _radius(1, bytes([2, 0, 0, 5, 1])))]) == {}


# -- the resumed method's check -----------------------------------------------------------------------
class _Baseline:
    def __init__(self, result: dict):
        self.result, self.detached = result, list[str]()

    def attach(self, ar: str) -> dict:
        return dict(self.result, ar=ar)

    def detach_old(self, ar: str) -> None:
        self.detached.append(ar)


class _Experiment:
    def __init__(self, result: dict):
        self.baseline = _Baseline(result)


def _check(**result):
    method = methods.get("reauth-eap-tls-resumed")
    experiment = _Experiment({"radius_requests": 4, "tls_first_radius_requests": 4, **result})
    move = type("Move", (), {"par": plan.PAR, "nar": plan.NAR})()
    try:
        return method.after_attach(experiment, move)
    finally:
        assert experiment.baseline.detached == [plan.PAR]  # the old SAs go whatever the verdict


def test_the_resumed_method_fails_a_handover_that_did_not_resume():
    with pytest.raises(ike.IkeResumptionError, match="offered no session to resume") as failure:
        _check(tls_resumption_expected=True, tls_resumed=False, tls_client_session_id_octets=0,
               tls_server_handshake=["ServerHello", "Certificate"])
    assert failure.value.result["radius_requests"] == 4 and "4 RADIUS round trips" in str(failure.value)
    assert isinstance(failure.value, ike.IkeError)  # a step error: the runner records the handover as failed
    with pytest.raises(ike.IkeResumptionError, match="did not accept the session"):
        _check(tls_resumption_expected=True, tls_resumed=False, tls_client_session_id_octets=32)
    with pytest.raises(ike.IkeResumptionError, match="no fewer RADIUS round trips"):
        _check(tls_resumption_expected=True, tls_resumed=True, tls_client_session_id_octets=32)
    # resumed, and shorter: the handover stands
    assert _check(tls_resumption_expected=True, tls_resumed=True, radius_requests=3)["radius_requests"] == 3
    # the first authentication has nothing to resume
    assert not _check(tls_resumption_expected=False, tls_resumed=False)["tls_resumed"]


def test_the_tls_methods_are_declared():
    full, resumed = methods.get("reauth-eap-tls"), methods.get("reauth-eap-tls-resumed")
    for method in (full, resumed):
        assert not method.default and method.sweeps == plan.AR_AAA and not method.cxtp
        assert method.name in methods.reauth_names() and method.name not in methods.default_names()
    assert full.security.ike_auth == "eap-tls" and resumed.security.ike_auth == "eap-tls-resumed"
    assert full.security != resumed.security  # other daemons: entering one leaves the other
    assert full.after_attach is methods.get("reauth-eap").after_attach
