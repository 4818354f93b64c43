"""How the MN takes Binding Acknowledgements (RFC 6275 §11.7.3, RFC 4285): its handler driven
directly, its sends and timers recorded, with Acks encoded and decoded as on the wire."""

from __future__ import annotations

import os

import pytest

from nodes import mobility
from nodes.mn_agent import MobileNodeAgent

KEY = os.urandom(20)
MN, HA = "2001:db8:2::100", "2001:db8:3::1"


class _Recorder:
    """What the agent runtime and the mobility socket would be: sends and timers, recorded."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.timers: list = []
        self.events: list[tuple[str, dict]] = []

    def sendto(self, data: bytes, _address) -> None:
        self.sent.append(data)

    def call_at(self, _when: float, callback) -> None:
        self.timers.append(callback)

    def trace(self, event, **fields) -> None:
        self.events.append((str(event), fields))


@pytest.fixture
def mn():
    recorder = _Recorder()
    node = MobileNodeAgent.__new__(MobileNodeAgent)  # the handler alone: no sockets, no kernel
    node.agent, node.mh = recorder, recorder
    node.address, node.ha, node.identity, node.mobility_key = MN, HA, "mn@testbed", KEY
    node.bu_sequence, node.bu_pending, node.ba_status, node._prepared_bu = 100, None, None, None
    node.ba_refusals = node.ba_unauthenticated = node._bu_transmissions = 0
    node._bu_timestamps = set()
    node._send_bu(first=True)
    return node, recorder


def _stamp(data: bytes) -> int:
    decoded = mobility.decode(data)
    assert decoded.protection.timestamp is not None
    return decoded.protection.timestamp


def _ack(status: int, sequence: int, timestamp: int, key: bytes = KEY) -> mobility.BindingAck:
    decoded = mobility.decode(mobility.BindingAck(sequence, status).encode(key, MN, HA, timestamp))
    assert isinstance(decoded, mobility.BindingAck)
    return decoded


def test_an_ack_to_one_of_its_transmissions_binds(mn):
    node, recorder = mn
    node._binding_ack(_ack(mobility.BA_STATUS_ACCEPTED, 101, _stamp(recorder.sent[0])), HA)
    assert node.bu_pending is None and node.ba_status == mobility.BA_STATUS_ACCEPTED


def test_a_stale_timestamp_refused_with_a_later_transmission_out_waits_for_that_one(mn):
    """The first transmission waited in the HA's queue past the replay window (a storm): its
    MIPV6-ID-MISMATCH does not end the BU; the Ack to the retransmission binds."""
    node, recorder = mn
    recorder.timers[-1]()  # the retransmission timer: a second transmission, a newer timestamp
    first, second = (_stamp(data) for data in recorder.sent)
    assert second > first
    node._binding_ack(_ack(mobility.BA_STATUS_ID_MISMATCH, 101, first), HA)
    assert node.bu_pending is not None and len(recorder.sent) == 2  # nothing sent: the newer one stands
    node._binding_ack(_ack(mobility.BA_STATUS_ACCEPTED, 101, second), HA)
    assert node.bu_pending is None and node.ba_status == mobility.BA_STATUS_ACCEPTED


def test_a_refused_last_transmission_is_sent_again_with_a_fresh_timestamp(mn):
    node, recorder = mn
    stale = _stamp(recorder.sent[0])
    node._binding_ack(_ack(mobility.BA_STATUS_ID_MISMATCH, 101, stale), HA)
    assert node.bu_pending is not None and node.ba_status == mobility.BA_STATUS_ID_MISMATCH
    assert len(recorder.sent) == 2 and _stamp(recorder.sent[1]) > stale
    assert mobility.decode(recorder.sent[1]).sequence == 101  # the same BU, not a new one
    # the refusal is believed once: replayed, it is not from a live transmission any more
    node._binding_ack(_ack(mobility.BA_STATUS_ID_MISMATCH, 101, stale), HA)
    assert node.ba_unauthenticated == 1 and len(recorder.sent) == 2
    # only the latest transmission's timer retransmits: the superseded one does nothing
    recorder.timers[0]()
    assert len(recorder.sent) == 2
    recorder.timers[1]()
    assert len(recorder.sent) == 3


def test_an_ack_not_from_the_ha_is_believed_in_nothing(mn):
    node, recorder = mn
    stamp = _stamp(recorder.sent[0])
    for forged in (_ack(mobility.BA_STATUS_ID_MISMATCH, 101, stamp, key=os.urandom(20)),
                   _ack(mobility.BA_STATUS_ACCEPTED, 101, stamp + 1)):
        node._binding_ack(forged, HA)
    assert node.bu_pending is not None and node.ba_unauthenticated == 2 and len(recorder.sent) == 1
