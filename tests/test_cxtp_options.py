"""The options of our departures from RFC 4067 (cxtp/options.py): check values of the derived
keys and MACs, the codec of each option in both carriers, its refusals, and round trips."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

import cxtp
import cxtp_profiles  # noqa: F401  (registers and loads the hypothesis profile)
from cxtp import CTAA, CTAR, CTC, CTD, CTDR, PCTD, ContextDataBlock, CTReq, DecodeError, ProtocolError, StatusEntry
from cxtp import constants as c
from cxtp.constants import OPTION_FPTS
from cxtp.options import (
    FPT_BINDING,
    FPT_BOUND,
    FPT_CTAA_AUTH,
    FPT_CTAA_KEY,
    FPT_TRANSFER,
    Bound,
    OptionError,
    Options,
    Transfer,
    binding_key,
    binding_mac,
    ctaa_key,
    ctaa_mac,
    split_blocks,
    split_statuses,
)
from test_cxtp_codec import (
    BINDING,
    CTAA_AUTH,
    CTAA_KEY,
    KEY,
    NAR6,
    NEW6,
    PAR6,
    PREV6,
    SEQ,
    h,
)

# --- check values (computed by us: HMAC-SHA256 of the labelled inputs, docs/protocol.md) -----------

def test_derived_keys():
    assert binding_key(KEY).hex() == "52350a2331e35e53c995df4f206e611ae8f3b7074eb6e0736c80ff08da2a642b"
    assert ctaa_key(KEY).hex() == CTAA_KEY
    assert binding_key(KEY) != ctaa_key(KEY)  # one key per purpose
    with pytest.raises(ProtocolError):
        binding_key(b"")


def test_binding_check_values():
    token = cxtp.compute_token(KEY, PREV6, SEQ)
    assert token == h("69619059")
    assert binding_mac(binding_key(KEY), PREV6, SEQ, token, b"", NEW6, NAR6).hex() == BINDING
    # the same CTAR bound to where the MN sent it predictively: the pAR, from its previous address
    assert binding_mac(binding_key(KEY), PREV6, SEQ, token, b"", PREV6, PAR6).hex() == \
        "0d8445e0f698e2cd380c31e887a6e635"
    # every input counts: another source, AR, token, CDB octets, sequence number
    base = (binding_key(KEY), PREV6, SEQ, token, b"", NEW6, NAR6)
    variants = [
        (binding_key(KEY), PREV6, SEQ, token, b"", "fe80::1", NAR6),
        (binding_key(KEY), PREV6, SEQ, token, b"", NEW6, PAR6),
        (binding_key(KEY), PREV6, SEQ, b"\x00\x00\x00\x01", b"", NEW6, NAR6),
        (binding_key(KEY), PREV6, SEQ, token, ContextDataBlock.request(1).encode(), NEW6, NAR6),
        (binding_key(KEY), PREV6, SEQ + 1, token, b"", NEW6, NAR6),
        (ctaa_key(KEY), PREV6, SEQ, token, b"", NEW6, NAR6),
    ]
    macs = {binding_mac(*args) for args in [base, *variants]}
    assert len(macs) == len(variants) + 1


def test_ctaa_check_value():
    ctaa = CTAA(PREV6, (StatusEntry(0x8001, 0),))
    assert ctaa_mac(ctaa_key(KEY), NAR6, NEW6, SEQ, ctaa.encode()).hex() == CTAA_AUTH
    # another AR (the pAR's informative CTAA), another destination, another transaction
    assert ctaa_mac(ctaa_key(KEY), PAR6, NEW6, SEQ, ctaa.encode()).hex() != CTAA_AUTH
    assert ctaa_mac(ctaa_key(KEY), NAR6, PREV6, SEQ, ctaa.encode()).hex() != CTAA_AUTH
    assert ctaa_mac(ctaa_key(KEY), NAR6, NEW6, SEQ + 1, ctaa.encode()).hex() != CTAA_AUTH


# --- the codec ---------------------------------------------------------------------------------

def test_options_split_from_plain_blocks_and_tuples():
    transfer = Transfer(7, 1000, 200)
    options = Options(binding=bytes(16), transfer=transfer, bound=Bound(NEW6, NAR6), ctaa_key=b"k" * 32)
    blocks = (ContextDataBlock.request(1), ContextDataBlock(0x8001, b"data")) + options.blocks()
    plain, found = split_blocks(blocks)
    assert plain == blocks[:2] and found == options
    assert {b.fpt for b in options.blocks()} == {FPT_BINDING, FPT_TRANSFER, FPT_BOUND, FPT_CTAA_KEY}
    entries = (StatusEntry(1, 0),) + Options(transfer=transfer, ctaa_auth=bytes(range(16))).statuses()
    plain_entries, found = split_statuses(entries)
    assert plain_entries == entries[:1] and found == Options(transfer=transfer, ctaa_auth=bytes(range(16)))
    assert split_blocks(blocks[:2]) == (blocks[:2], Options()) and not Options()
    assert OPTION_FPTS == c.OPTION_FPTS


def test_bound_ipv4():
    bound = Bound("192.0.2.100", "192.0.2.1")
    assert bound.encode() == h("04 000000 c0000264 c0000201")
    assert split_blocks(Options(bound=bound).blocks())[1].bound == bound
    with pytest.raises(ProtocolError):
        Bound("192.0.2.100", NAR6)


@pytest.mark.parametrize("blocks, why", [
    (Options(binding=bytes(16)).blocks() + (ContextDataBlock.request(1),), "a plain CDB after an option"),
    (Options(binding=bytes(16)).blocks() * 2, "an option twice"),
    ((ContextDataBlock(FPT_BINDING, bytes(8)),), "a short MAC"),
    ((ContextDataBlock(FPT_BINDING, bytes(16) + b"\x01"),), "non-zero padding"),
    ((ContextDataBlock(FPT_TRANSFER, bytes(12)),), "a short TRANSFER"),
    ((ContextDataBlock(FPT_BOUND, b"\x05" + bytes(35)),), "an unknown family"),
    ((ContextDataBlock(FPT_BOUND, b"\x06" + bytes(20)),), "a truncated BOUND"),
    ((ContextDataBlock(FPT_BOUND, b"\x04\x00\x00\x00" + bytes(8) + b"\x01"),), "octets after an IPv4 BOUND"),
    ((ContextDataBlock(FPT_CTAA_KEY, h("0000 0000")),), "an empty CTAA_KEY"),
    ((ContextDataBlock(FPT_CTAA_KEY, h("0041 0000") + bytes(65)),), "a CTAA_KEY too long"),
    ((ContextDataBlock(FPT_CTAA_KEY, h("0020 0000") + bytes(8)),), "a truncated CTAA_KEY"),
    ((ContextDataBlock(FPT_BINDING, header_only=True),), "a header-only option"),
    ((ContextDataBlock(FPT_BINDING, bytes(16), presence_vector=1),), "an option with a presence vector"),
])
def test_malformed_options_are_refused(blocks, why):
    with pytest.raises(OptionError):
        split_blocks(blocks)
    assert issubclass(OptionError, DecodeError)


def test_an_option_tuple_with_a_status_is_refused():
    with pytest.raises(OptionError):
        split_statuses((StatusEntry(FPT_CTAA_AUTH, 1, bytes(16)),))


@pytest.mark.parametrize("build", [
    lambda: Options(binding=bytes(15)),
    lambda: Options(ctaa_auth=bytes(17)),
    lambda: Options(ctaa_key=b""),
    lambda: Options(ctaa_key=bytes(65)),
    lambda: Transfer(-1, 0, 0),
    lambda: Transfer(0, 1 << 64, 0),
    lambda: Transfer(0, 0, 1 << 32),
    lambda: Transfer(True, 0, 0),  # a bool is not a number here
])
def test_invalid_options_raise_protocol_error(build):
    with pytest.raises(ProtocolError):
        build()


def test_transfer_milliseconds_are_clamped():
    assert Transfer.ms(-1.0) == 0 and Transfer.ms(1.2345) == 1234 and Transfer.ms(1e30) == (1 << 64) - 1
    transfer = Transfer(1, 1500, 250)
    assert (transfer.origin, transfer.lifetime) == (1.5, 0.25)


def test_options_repr_hides_the_ctaa_key():
    assert "6b6b" not in repr(Options(ctaa_key=b"k" * 32)) and "32 octets" in repr(Options(ctaa_key=b"k" * 32))


# --- round trips (hypothesis) -------------------------------------------------------------------

ipv4 = st.integers(0, 2**32 - 1).map(lambda n: str(ipaddress.IPv4Address(n)))
ipv6 = st.integers(0, 2**128 - 1).map(lambda n: str(ipaddress.IPv6Address(n)))
mac = st.binary(min_size=16, max_size=16)
transfers = st.builds(Transfer, st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1), st.integers(0, 2**32 - 1))


@st.composite
def bounds(draw):
    family = draw(st.sampled_from([ipv4, ipv6]))
    return Bound(draw(family), draw(family))


option_values = st.builds(Options, st.none() | mac, st.none() | transfers, st.none() | bounds(),
                          st.none() | st.binary(min_size=1, max_size=64), st.none() | mac)


@given(option_values, st.lists(st.builds(ContextDataBlock, st.integers(1, 0xFEFF), st.binary(max_size=40)),
                               max_size=3))
def test_options_round_trip_as_blocks(options, plain):
    blocks = tuple(plain) + options.blocks()
    assert split_blocks(blocks) == (tuple(plain), options)
    message = CTD("2001:db8::100", blocks)  # and through the message codec
    assert split_blocks(cxtp.decode(message.encode()).contexts) == (tuple(plain), options)


@given(option_values, st.lists(st.builds(StatusEntry, st.integers(0, 0xFEFF), st.integers(0, 255)), max_size=3))
def test_options_round_trip_as_statuses(options, plain):
    entries = tuple(plain) + options.statuses()
    assert split_statuses(entries) == (tuple(plain), options)
    assert split_statuses(cxtp.decode(CTDR("2001:db8::100", True, entries).encode()).statuses) == \
        (tuple(plain), options)
    assert split_statuses(cxtp.decode(CTC("2001:db8::100", options.statuses()).encode()).options) == \
        ((), options)


@given(st.binary(max_size=80), st.sampled_from(sorted(OPTION_FPTS)))
def test_any_option_octets_parse_or_raise_option_error(data, fpt):
    try:
        block = ContextDataBlock(fpt, data)
    except ProtocolError:
        return
    try:
        split_blocks((block,))
    except OptionError:
        pass
    try:
        split_statuses((StatusEntry(fpt, 0, data[:len(data) // 4 * 4]),))
    except OptionError:
        pass


@given(st.binary(max_size=200))
def test_messages_with_options_decode_or_raise(data):
    """Any bytes after a valid header give a message, whose options split or raise OptionError."""
    for head in (CTAR(PREV6, NAR6, SEQ, bytes(4)).encode(), CTReq(PREV6, SEQ, bytes(4)).encode(),
                 CTAA(PREV6).encode(), PCTD(PREV6, KEY).encode(), CTC(PREV6).encode()):
        wire = head[:2] + (len(head) + len(data)).to_bytes(2, "big") + head[4:] + data
        try:
            message = cxtp.decode(wire)
        except DecodeError:
            continue
        entries = getattr(message, "requested", None) or getattr(message, "contexts", None) \
            or getattr(message, "statuses", None) or getattr(message, "options", ())
        try:
            if entries and isinstance(entries[0], ContextDataBlock):
                split_blocks(entries)
            else:
                split_statuses(entries)
        except OptionError:
            pass
