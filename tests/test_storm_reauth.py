"""Storms of re-authentication without a kernel: each MN's IKE configuration under its own
identity and addresses, the ARs' one connection for all of them, the AAA server's users, which
methods a storm runs, and each MN's AAA figures from RADIUS packets captured at the AAA node."""

from __future__ import annotations

import struct
from types import SimpleNamespace

import pytest

from nodes import ike
from scenarios import config
from scenarios.analysis import storms
from scenarios.records import HandoverRecord
from scenarios.runner import baseline
from scenarios.runner.storm import Storm
from topo import plan
from topo.shaping import LinkParams

CERT = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
AAA_DELAY_MS = 10.0


@pytest.mark.parametrize("ar", plan.ACCESS_ROUTERS)
def test_each_mn_connects_from_its_own_address_under_its_own_identity(ar):
    params = ike.BaselineParams(method="eap-mschapv2")
    for index in (1, 7):
        conn = baseline.mn_connection(ar, params, CERT, mn=index)
        assert conn["local_addrs"] == [plan.mn_coa(index, ar)]
        assert conn["local-1"] == {"auth": "eap-mschapv2", "id": plan.mn_identity(index),
                                   "eap_id": plan.mn_identity(index)}
    psk = baseline.mn_connection(ar, ike.BaselineParams(method="psk", aaa=False), None, mn=3)
    assert psk["local-1"] == {"auth": "psk", "id": plan.mn_identity(3)}
    # MN 0 keeps the paper's addresses and identity
    assert baseline.mn_connection(ar, params, CERT)["local_addrs"] == [plan.MN_COA[ar]]


def test_an_ar_takes_any_mn_of_the_key_with_several_and_the_one_mn_alone():
    psk = ike.BaselineParams(method="psk", aaa=False)
    assert baseline.ar_connection(plan.PAR, psk, None)["remote-1"] == {"auth": "psk", "id": plan.MN_IDENTITY}
    assert baseline.ar_connection(plan.PAR, psk, None, mns=3)["remote-1"] == {"auth": "psk", "id": "%any"}
    identities = tuple(plan.mn_identity(index) for index in range(3))
    [secret] = baseline.shared_secrets(plan.PAR, psk, identities)
    assert secret["owners"] == [*identities, *plan.ACCESS_ROUTERS]
    [own] = baseline.shared_secrets(plan.mn_node(2), psk, (plan.mn_identity(2),))
    assert own["owners"] == [plan.mn_identity(2), *plan.ACCESS_ROUTERS]


def test_each_mn_has_its_own_eap_secret_and_a_radius_user():
    params = ike.BaselineParams(method="eap-md5")
    [secret] = baseline.shared_secrets(plan.mn_node(4), params, (plan.mn_identity(4),))
    assert secret == {"id": "eap-mn", "type": "EAP", "data": params.password, "owners": [plan.mn_identity(4)]}
    assert baseline.shared_secrets(plan.NAR, params, (plan.mn_identity(4),)) == []
    identities = tuple(plan.mn_identity(index) for index in range(5))
    radius = baseline.radius_configuration(params, None, identities)  # no TLS: no credentials to name
    assert radius.users == dict.fromkeys(identities, params.password)


@pytest.mark.parametrize("method", ["eap-tls", "mobike", "preauth-psk", "preauth-eap-mschapv2"])
def test_a_baseline_of_several_mns_refuses_what_keeps_one_mns_state(method, tmp_path):
    with pytest.raises(ike.IkeError, match="several MNs"):
        baseline.IkeBaseline(None, tmp_path, method, aaa=method != "mobike" and method != "preauth-psk", mns=3)
    for allowed in ike.MULTI_MN_METHODS:
        assert baseline.IkeBaseline(None, tmp_path, allowed, aaa=allowed != "psk", mns=3).mns == 3


def _storm_scenario(methods: list[str]) -> dict:
    return {"methods": methods, "topology": {"mns": 5}, "storm": {"sizes": [1, 5]}, "probe": {"rate": 50.0}}


def test_a_storm_scenario_runs_re_authentication_and_sweeps_only_its_sizes():
    scenario = config.from_dict(_storm_scenario(["none", "reauth-psk", "reauth-eap", "reauth-eap-md5"]))
    assert scenario.storm["sizes"] == (1, 5)
    assert scenario.sweep_values == ()  # the AR-AAA sweep of the EAP baseline is not a storm's


@pytest.mark.parametrize("method", ["reauth-eap-tls", "mobike", "preauth-eap", "cxtp-reactive-ike"])
def test_a_storm_scenario_names_the_method_it_cannot_run(method):
    with pytest.raises(config.ScenarioError, match=r"methods\[1\]: a storm cannot run"):
        config.from_dict(_storm_scenario(["none", method]))


# -- the AAA's figures per MN -----------------------------------------------------------------------

def _radius(code: int, identifier: int, station: str | None = None) -> bytes:
    attributes = b""
    if station is not None:
        value = f"{station}[500]".encode()
        attributes = struct.pack("!BB", ike.CALLING_STATION_ID, 2 + len(value)) + value
    return struct.pack("!BBH", code, identifier, 20 + len(attributes)) + bytes(16) + attributes


def _at_aaa(t_ms: float, out: bool, ar_port: int, payload: bytes, ar: str = plan.NAR) -> ike.Packet:
    ar_address, aaa_address = "2001:db8:15::1", plan.AAA_ADDRESS
    src, dst = (aaa_address, ar_address) if out else (ar_address, aaa_address)
    sport, dport = (ike.RADIUS_PORT, ar_port) if out else (ar_port, ike.RADIUS_PORT)
    return ike.Packet(int(t_ms * 1e6), out, src, dst, sport, dport, payload)


def _record(index: int, mn: int, reauth: dict | None = None) -> HandoverRecord:
    return HandoverRecord(index=index, mn=plan.mn_identity(mn), method="reauth-eap", from_ar=plan.PAR,
                          to_ar=plan.NAR, mn_previous=plan.mn_coa(mn, plan.PAR), mn_new=plan.mn_coa(mn, plan.NAR),
                          l2_delay_ms=50.0, reauth=reauth)


def test_each_mn_gets_its_own_access_requests_at_the_aaa():
    """Two MNs' EAP rounds interleaved through one AR socket (one source port, identifiers told
    apart): each MN's requests by its Calling-Station-Id, answers by identifier; the answers'
    departures less the AAA link's delay (the capture sees them after the AAA's egress netem)."""
    one, two = plan.mn_coa(1, plan.NAR), plan.mn_coa(2, plan.NAR)
    d = AAA_DELAY_MS
    packets = [
        _at_aaa(100, False, 4000, _radius(ike.ACCESS_REQUEST, 1, one)),
        _at_aaa(101 + d, True, 4000, _radius(ike.ACCESS_CHALLENGE, 1)),
        _at_aaa(102, False, 4000, _radius(ike.ACCESS_REQUEST, 2, two)),
        _at_aaa(105 + d, True, 4000, _radius(ike.ACCESS_CHALLENGE, 2)),
        _at_aaa(130, False, 4000, _radius(ike.ACCESS_REQUEST, 3, one)),
        _at_aaa(130, False, 4000, _radius(ike.ACCESS_REQUEST, 3, one)),  # a retransmission: not a request
        _at_aaa(132 + d, True, 4000, _radius(ike.ACCESS_ACCEPT, 3)),
        _at_aaa(140, False, 4000, _radius(ike.ACCESS_REQUEST, 4, two)),
        _at_aaa(141 + d, True, 4000, _radius(ike.ACCESS_REJECT, 4)),
    ]
    storm = Storm.__new__(Storm)
    storm.testbed = SimpleNamespace(link_params={plan.AR_AAA: LinkParams(delay_ms=d)})
    records = [_record(1, 1, {"elapsed_ms": 80.0}), _record(2, 2), _record(3, 3)]
    storm._aaa_figures(records, [1, 2, 3], packets)
    first, second, third = (record.reauth for record in records)
    assert first == {"elapsed_ms": 80.0, "aaa_requests": 2, "aaa_residence_ms": pytest.approx(1 + 2),
                     "aaa_span_ms": pytest.approx(32)}
    # refused: its requests and the server's time on them, no span (no Access-Accept)
    assert second == {"aaa_requests": 2, "aaa_residence_ms": pytest.approx(3 + 1), "aaa_span_ms": None}
    assert third == {"aaa_requests": 0, "aaa_residence_ms": 0.0, "aaa_span_ms": None}


def test_the_storm_summary_gives_the_aaa_queue_per_k():
    records = [_record(index, index, {"aaa_span_ms": 10.0 * index, "aaa_residence_ms": 1.0 * index})
               for index in range(1, 6)]
    rows = [{"index": record.index, "method": "reauth-eap", "sweep_value": 5.0, "outcome": "ok",
             "ha_to_mn": {"interruption_ms": 200.0 + index}, "mn_to_ha": {"interruption_ms": 190.0 + index}}
            for index, record in enumerate(records, start=1)]
    summary = storms.summarize(rows, records, {})
    entry = summary["reauth-eap"]["5"]
    assert entry["aaa_span_ms"]["n"] == 5 and entry["aaa_span_ms"]["p50"] == pytest.approx(30.0)
    assert entry["aaa_residence_ms"]["p50"] == pytest.approx(3.0)
    assert entry["activation_ms"]["n"] == 0
    assert "30.0/" in storms.table(summary)


class _RecordingBaseline:
    """The calls a storm's view makes of the IKE baseline, in order."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def attach(self, ar, mn=0):
        self.calls.append(("attach", ar, mn))
        return {"elapsed_ms": 1.0, "ike_requests": 2}

    def attach_unsummarized(self, ar, mn):
        self.calls.append(("attach_unsummarized", ar, mn))
        return {"elapsed_ms": 1.0, "ike_packets": []}

    def summarize_attach(self, result):
        self.calls.append(("summarize", tuple(sorted(result))))
        result.pop("ike_packets")
        result["ike_requests"] = 2

    def detach_old(self, ar, mn=0):
        self.calls.append(("detach_old", ar, mn))


def test_a_storms_view_leaves_the_runners_work_for_after_the_storm():
    """Deferred (a storm's): the attach is made at once, its summary and the old SAs' removal only
    at finish, in that order; not deferred: both at once, as the single-MN runs do."""
    recording = _RecordingBaseline()
    view = baseline.MnBaseline(recording, 3, deferred=True)
    result = view.attach(plan.NAR)
    view.detach_old(plan.PAR)
    assert recording.calls == [("attach_unsummarized", plan.NAR, 3)]
    assert "ike_packets" in result
    view.finish()
    assert recording.calls[1:] == [("summarize", ("elapsed_ms", "ike_packets")), ("detach_old", plan.PAR, 3)]
    assert result == {"elapsed_ms": 1.0, "ike_requests": 2}  # the record's dict, completed in place
    view.finish()  # nothing left to do twice
    assert len(recording.calls) == 3
    direct = _RecordingBaseline()
    plain = baseline.MnBaseline(direct, 2)
    plain.attach(plan.PAR)
    plain.detach_old(plan.NAR)
    assert direct.calls == [("attach", plan.PAR, 2), ("detach_old", plan.NAR, 2)]
