"""Property tests: every message round-trips, and any bytes decode to a message or DecodeError."""

from __future__ import annotations

import ipaddress

from hypothesis import given
from hypothesis import strategies as st

import cxtp
import cxtp_profiles  # noqa: F401  (registers and loads the hypothesis profile)
from cxtp import (
    CTAA,
    CTAR,
    CTC,
    CTD,
    CTDR,
    PCTD,
    AccessRouter,
    ContextDataBlock,
    CTReq,
    DecodeError,
    MobileNode,
    StatusEntry,
)
from cxtp.icmp import unwrap

ipv4 = st.integers(0, 2**32 - 1).map(lambda n: str(ipaddress.IPv4Address(n)))
ipv6 = st.integers(0, 2**128 - 1).map(lambda n: str(ipaddress.IPv6Address(n)))
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)
token = st.binary(min_size=4, max_size=4)


@st.composite
def blocks(draw):
    if draw(st.integers(0, 5)) == 0:
        return ContextDataBlock(draw(u16), header_only=True)
    pv = draw(st.none() | u32)
    limit = 2040 - 4 - (4 if pv is not None else 0)
    return ContextDataBlock(draw(u16), draw(st.binary(max_size=min(limit, 300))), pv)


statuses = st.builds(StatusEntry, u16, st.integers(0, 255),
                     st.integers(0, 8).flatmap(lambda n: st.binary(min_size=4 * n, max_size=4 * n)))
block_tuples = st.lists(blocks(), max_size=4).map(tuple)
status_tuples = st.lists(statuses, max_size=5).map(tuple)


@st.composite
def messages(draw):
    addr = draw(st.sampled_from([ipv4, ipv6]))
    prev = draw(addr)
    kind = draw(st.sampled_from(["ctar", "ctaa", "ctd", "pctd", "ctdr", "ctc", "ctreq"]))
    if kind == "ctar":
        return CTAR(prev, draw(addr), draw(u32), draw(token), draw(block_tuples), draw(st.booleans()))
    if kind == "ctaa":
        return CTAA(prev, draw(status_tuples))
    if kind == "ctd":
        return CTD(prev, draw(block_tuples), draw(u32), draw(st.booleans()))
    if kind == "pctd":
        return PCTD(prev, draw(st.binary(max_size=64)), draw(block_tuples), draw(u32),
                    draw(st.booleans()), draw(u16))
    if kind == "ctdr":
        return CTDR(prev, draw(st.booleans()), draw(status_tuples))
    if kind == "ctc":
        return CTC(prev)
    return CTReq(prev, draw(u32), draw(token), draw(block_tuples))


def _decodes_or_raises(data: bytes):
    try:
        message = cxtp.decode(data)
    except DecodeError:
        return None
    # whatever decodes is a valid value that re-encodes to something decoding to itself
    assert cxtp.decode(message.encode()) == message
    return message


@given(messages())
def test_roundtrip(message):
    wire = message.encode()
    assert cxtp.decode(wire) == message
    assert cxtp.peek_length(wire) == len(wire)


@given(messages())
def test_icmp_roundtrip(message):
    assert cxtp.decode_icmp(cxtp.wrap(message), ipv4=message.ipv4) == message


@given(st.binary(max_size=200))
def test_random_bytes_decode_or_raise(data):
    _decodes_or_raises(data)


@given(st.integers(0, 7).flatmap(lambda t: st.binary(max_size=120).map(
    lambda rest: bytes([(1 << 5) | t]) + rest[:1] + (len(rest) + 2).to_bytes(2, "big") + rest[1:]
    if rest else bytes([(1 << 5) | t]))))
def test_random_bodies_with_valid_header_decode_or_raise(data):
    # valid version, type and Length: exercise the body parsers rather than the header checks
    _decodes_or_raises(data)


@given(messages(), st.data())
def test_mutated_messages_decode_or_raise(message, data):
    wire = bytearray(message.encode())
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["flip", "truncate", "extend", "length"]))
        if op == "flip" and wire:
            i = data.draw(st.integers(0, len(wire) - 1))
            wire[i] ^= data.draw(st.integers(1, 255))
        elif op == "truncate" and wire:
            del wire[data.draw(st.integers(0, len(wire) - 1)):]
        elif op == "extend":
            wire += data.draw(st.binary(min_size=1, max_size=16))
        elif op == "length" and len(wire) >= 4:
            wire[2:4] = data.draw(u16).to_bytes(2, "big")
    _decodes_or_raises(bytes(wire))


@given(st.binary(max_size=80), st.booleans())
def test_icmp_unwrap_random(data, v4):
    try:
        unwrap(data, v4)
    except DecodeError:
        pass


@given(st.lists(st.tuples(st.binary(max_size=80), st.sampled_from(["icmp", "ar"])), max_size=5))
def test_engines_never_raise_on_garbage(inputs):
    ar = AccessRouter("2001:db8:1::1")
    mn = MobileNode("2001:db8::100")
    for i, (data, transport) in enumerate(inputs):
        ar.receive(data, "2001:db8::5", transport, float(i))
        mn.receive(data, "2001:db8::5", transport, float(i))
    assert ar.counters["decode_errors"] + ar.counters["wrong_transport"] \
        + sum(v for k, v in ar.counters.items() if k.startswith("received_")) == len(inputs)
