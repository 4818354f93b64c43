"""Mobile IPv6 Binding Update / Acknowledgement as the MN and HA agents exchange them."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress

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


# -- RFC 4285: authentication and replay protection --------------------------------------------
KEY = bytes(range(20))
CARE_OF, OTHER, HA = "2001:db8:1::100", "2001:db8:1::666", "2001:db8:3::1"
STAMP = mobility.ntp_timestamp(1_000_000.0)
# the BU above with RFC 4285's options: Pad1, Replay Protection (type 10, length 8, the NTP
# timestamp), Pad1, Mobility Message Authentication (type 9, length 17: subtype 1 MN-HA, Mobility
# SPI 0x100, the first 96 bits of HMAC_SHA1 over care-of | HA | the message up to the SPI)
AUTH_BU_VECTOR = bytes.fromhex(
    "3b06" "0500" "0000" "0007" "c000" "0096" "080b01" "6d6e4074657374626564"
    "00" "0a08" "83b9c0c0" "00000000"  # 1,000,000 s after 1970: 0x83b9c0c0 s after 1900, fraction 0
    "00" "0911" "01" "00000100" "abf636dd7190a94f4933aae5")


def test_an_authenticated_binding_update_vector():
    update = mobility.BindingUpdate(sequence=7, identity="mn@testbed", lifetime_s=600)
    encoded = update.encode(KEY, CARE_OF, HA, timestamp=STAMP)
    signed = encoded[:-12]
    mac = hmac.new(KEY, ipaddress.IPv6Address(CARE_OF).packed + ipaddress.IPv6Address(HA).packed + signed,
                   hashlib.sha1).digest()[:12]  # RFC 4285 §5.1, computed independently
    assert encoded == signed + mac
    assert encoded == AUTH_BU_VECTOR
    decoded = mobility.decode(AUTH_BU_VECTOR)
    assert decoded == update and decoded.protection.timestamp == STAMP
    assert decoded.protection.verify(KEY, CARE_OF, HA)
    assert not decoded.protection.verify(KEY, OTHER, HA)  # the source is covered
    assert not decoded.protection.verify(bytes(20), CARE_OF, HA)
    # the checksum the kernel fills in is not covered (it is zero when computed)
    with_checksum = AUTH_BU_VECTOR[:4] + b"\x12\x34" + AUTH_BU_VECTOR[6:]
    assert mobility.decode(with_checksum).protection.verify(KEY, CARE_OF, HA)


def test_an_ack_answers_with_the_timestamp_of_its_update_and_restamping_signs_again():
    ack = mobility.BindingAck(sequence=7, status=mobility.BA_STATUS_AUTH_FAIL)
    decoded = mobility.decode(ack.encode(KEY, CARE_OF, HA, timestamp=STAMP))
    assert decoded == ack and decoded.protection.timestamp == STAMP and decoded.protection.verify(KEY, CARE_OF, HA)
    template = mobility.BindingUpdate(8, "mn@testbed").encode(KEY, CARE_OF, HA, timestamp=0)
    restamped = mobility.restamp(template, KEY, CARE_OF, HA, STAMP + 1)
    assert restamped == mobility.BindingUpdate(8, "mn@testbed").encode(KEY, CARE_OF, HA, timestamp=STAMP + 1)


@given(st.integers(0, 0xFFFF), st.integers(0, (1 << 64) - 1), st.binary(min_size=1, max_size=64))
def test_authenticated_messages_round_trip(sequence, stamp, key):
    update = mobility.BindingUpdate(sequence, "mn@testbed")
    decoded = mobility.decode(update.encode(key, CARE_OF, HA, timestamp=stamp))
    assert decoded == update and decoded.protection.timestamp == stamp and decoded.protection.verify(key, CARE_OF, HA)


def _update(sequence: int, stamp: int, key: bytes = KEY, care_of: str = CARE_OF) -> mobility.BindingUpdate:
    message = mobility.decode(mobility.BindingUpdate(sequence, "mn@testbed").encode(key, care_of, HA, timestamp=stamp))
    assert isinstance(message, mobility.BindingUpdate)
    return message


def test_only_the_mns_own_fresh_updates_move_its_binding():
    cache = mobility.BindingCache({"mn@testbed": KEY}, ha=HA)
    now = mobility.ntp_seconds(STAMP)
    assert cache.update(_update(10, STAMP), CARE_OF, now) == mobility.BA_STATUS_ACCEPTED
    refused = [
        (_update(11, STAMP + 10, key=bytes(20)), OTHER),  # not the MN's key
        (_update(0x7FFF + 10, STAMP + 10, key=bytes(20)), OTHER),  # far ahead, and not the MN's
        (_update(11, STAMP + 10), OTHER),  # the MN's, but from another source than it was made for
        (mobility.decode(mobility.BindingUpdate(11, "mn@testbed").encode()), CARE_OF),  # no options at all
        (_update(10, STAMP), CARE_OF),  # a replay of the accepted one
        (_update(11, STAMP - 1), CARE_OF),  # older than the accepted one
        (_update(11, mobility.ntp_timestamp(now + 60)), CARE_OF),  # off the HA's clock
    ]
    statuses = [cache.update(message, source, now) for message, source in refused]
    assert statuses == [146, 146, 146, 146, 144, 144, 144]
    # none of them moved the binding or the sequence window
    assert cache.care_of("mn@testbed") == CARE_OF and cache.last_sequence("mn@testbed") == 10
    assert cache.refused == {146: 4, 144: 3}
    assert cache.update(_update(11, STAMP + 5, care_of="2001:db8:2::100"), "2001:db8:2::100", now) == 0
    assert cache.care_of("mn@testbed") == "2001:db8:2::100"
    # an authentic update out of the sequence window: 135, and the window stays
    assert cache.update(_update(5, STAMP + 6, care_of="2001:db8:2::100"), "2001:db8:2::100", now) == 135
    assert cache.last_sequence("mn@testbed") == 11
