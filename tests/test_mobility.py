"""Mobile IPv6 Binding Update / Acknowledgement as the MN and HA agents exchange them."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nodes import mobility

# RFC 6275 §6.1.7 (BU) and §6.1.8 (BA), computed by hand: Payload Proto 59 (none), Header Len in
# 8-octet units minus one, MH Type, Reserved, Checksum (left 0: the kernel fills it, IPV6_CHECKSUM
# at offset 4); then the message; then options padded to 8 octets.
BU_VECTOR = bytes.fromhex(
    "3b03" "0500" "0000"          # proto none, len 3 (32 octets), type 5 BU, reserved, checksum
    "0007" "c000" "0096"          # sequence 7, flags A|H, lifetime 150 x 4 s = 600 s
    "080b01" "6d6e4074657374626564"  # RFC 4283 MN-Identifier: type 8, length 11, NAI "mn@testbed"
    "01050000000000"              # PadN to 32 octets
)
BA_VECTOR = bytes.fromhex(
    "3b01" "0600" "0000"          # proto none, len 1 (16 octets), type 6 BA, reserved, checksum
    "00" "00" "0007" "0096"       # status 0 accepted, flags 0, sequence 7, lifetime 600 s
    "01020000"                    # PadN to 16 octets
)


def test_binding_update_vector():
    update = mobility.BindingUpdate(sequence=7, identity="mn@testbed", lifetime_s=600)
    assert update.encode() == BU_VECTOR
    assert mobility.decode(BU_VECTOR) == update


def test_binding_ack_vector():
    ack = mobility.BindingAck(sequence=7, lifetime_s=600)
    assert ack.encode() == BA_VECTOR
    assert mobility.decode(BA_VECTOR) == ack


@given(st.integers(0, 0xFFFF), st.text(alphabet="abcdefghijklmnopqrstuvwxyz@.", min_size=1, max_size=40),
       st.integers(0, 0xFFFF).map(lambda units: units * 4))
def test_binding_update_round_trip(sequence, identity, lifetime):
    update = mobility.BindingUpdate(sequence=sequence, identity=identity, lifetime_s=lifetime)
    assert mobility.decode(update.encode()) == update


@given(st.binary(max_size=64))
def test_garbage_is_a_decode_error_or_a_message(data):
    try:
        message = mobility.decode(data)
    except mobility.MobilityDecodeError:
        return
    assert isinstance(message, (mobility.BindingUpdate, mobility.BindingAck))


def test_malformed_messages_are_named():
    with pytest.raises(mobility.MobilityDecodeError, match="too short"):
        mobility.decode(b"\x3b\x00\x05")
    with pytest.raises(mobility.MobilityDecodeError, match="header length"):
        mobility.decode(BU_VECTOR[:-8])
    with pytest.raises(mobility.MobilityDecodeError, match="without a Mobile Node Identifier"):
        mobility.decode(bytes.fromhex("3b01050000000007c000009601020000"))


def test_binding_cache_follows_newer_sequence_numbers_only():
    cache = mobility.BindingCache()
    assert cache.update(mobility.BindingUpdate(10, "mn"), "2001:db8:1::100") == mobility.BA_STATUS_ACCEPTED
    assert cache.update(mobility.BindingUpdate(11, "mn"), "2001:db8:2::100") == mobility.BA_STATUS_ACCEPTED
    assert cache.care_of("mn") == "2001:db8:2::100"
    assert cache.update(mobility.BindingUpdate(9, "mn"), "2001:db8:1::100") == 135  # out of window
    assert cache.care_of("mn") == "2001:db8:2::100"
    assert mobility.sequence_newer(0, 0xFFFF)  # wraps modulo 2**16
