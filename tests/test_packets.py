"""Packet evidence: capture points, and the label each captured packet gets."""

from __future__ import annotations

import pytest

from scenarios import config
from scenarios.analysis import packets
from scenarios.runner.run import capture_points
from topo import plan


def test_capture_points_cover_every_link_the_issue_names():
    points = capture_points(plan.LINK_CLASSES)
    names = {(node, interface) for node, interface, _ in points}
    # the access links at each AR (the MN's end goes down at each detach), both ends of the
    # AR-AR link, the AR side of the others
    assert {("par", "par-mn"), ("nar", "nar-mn")} <= names
    assert {("par", "par-nar"), ("nar", "nar-par")} <= names
    assert {("par", "par-ha"), ("nar", "nar-ha"), ("par", "par-aaa"), ("nar", "nar-aaa")} <= names
    assert len(points) == 8
    assert capture_points((plan.AR_AR,)) == [("par", "par-nar", "par-nar"), ("nar", "nar-par", "par-nar")]


def test_captures_in_a_scenario():
    assert config.load(None).captures == ()
    assert config.from_dict({"captures": ["all"]}).captures == plan.LINK_CLASSES
    assert config.from_dict({"captures": ["ar_ar"]}).captures == ("ar_ar",)
    for bad in (["wifi"], ["access", "access"], "all"):
        with pytest.raises(config.ScenarioError, match="captures"):
            config.from_dict({"captures": bad})


@pytest.mark.parametrize("fields, expected", [
    ({"cxtp.type": "1"}, "CTAR"),
    ({"cxtp.type": "4", "esp.spi": "0x0005091a"}, "PCTD"),
    ({"mip6.mhtype": "5"}, "BU"),
    ({"isakmp.exchangetype": "34"}, "IKE"),
    ({"radius.code": "1"}, "RADIUS"),
    ({"udp.port": "40000,40000", "esp.spi": "0x00000102"}, "probe (ESP)"),
    ({"udp.port": "40000,40000"}, "probe (clear)"),
    ({"esp.spi": "0x00000101"}, "ESP"),
    ({}, "other"),
])
def test_packet_labels(fields, expected):
    assert packets.label(fields) == expected


def test_decapsulated_copies_are_not_leaks():
    packets_ = [(1.0000, "probe (ESP)"), (1.0002, "ESP"), (1.0004, "probe (clear)"), (1.0100, "probe (clear)"),
                (1.0200, "BU")]
    assert [name for _, name in packets.classify_access(packets_)] == [
        "probe (ESP)", "ESP", "probe (decapsulated copy)", packets.LEAK, "BU"]
    # without security, clear probes are the method, not a leak
    assert [name for _, name in packets.classify_access(packets_, secure=False)][3] == "probe (clear)"
