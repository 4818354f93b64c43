"""IPsec context wire layout: round trips, size limits, garbage."""

from __future__ import annotations

import ipaddress
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ipsec import (
    AF_INET,
    AF_INET6,
    IPSEC_CONTEXT_FPT,
    MAX_CONTEXT_DATA,
    Algorithm,
    ContextDecodeError,
    IpsecContext,
    IpsecError,
    LifetimeConfig,
    LifetimeCurrent,
    Mark,
    ReplayState,
    SecurityAssociation,
    SecurityPolicy,
    Selector,
    SpiChange,
    Template,
    decode_spi_changes,
    encode_spi_changes,
)

u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)
u64 = st.integers(0, 0xFFFFFFFFFFFFFFFF)
ipv6 = st.builds(lambda n: ipaddress.IPv6Address(n).compressed, st.integers(0, 2**128 - 1))
ipv4 = st.builds(lambda n: str(ipaddress.IPv4Address(n)), st.integers(0, 2**32 - 1))


@st.composite
def addresses(draw, family):
    return draw(ipv4 if family == AF_INET else ipv6)


@st.composite
def selectors(draw):
    family = draw(st.sampled_from([AF_INET, AF_INET6]))
    return Selector(
        daddr=draw(addresses(family)),
        saddr=draw(addresses(family)),
        dport=draw(u16),
        dport_mask=draw(u16),
        sport=draw(u16),
        sport_mask=draw(u16),
        family=family,
        prefixlen_d=draw(u8),
        prefixlen_s=draw(u8),
        proto=draw(u8),
        ifindex=draw(st.integers(-(2**31), 2**31 - 1)),
        user=draw(u32),
    )


lifetime_configs = st.builds(LifetimeConfig, *([u64] * 8))
lifetime_currents = st.builds(LifetimeCurrent, u64, u64, u64, u64)
algorithms = st.builds(
    Algorithm,
    st.sampled_from(["crypt", "auth", "auth_trunc", "aead", "comp"]),
    st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789()-_", min_size=1, max_size=63),
    st.binary(max_size=64),
    u32,
)
marks = st.one_of(st.none(), st.builds(Mark, u32, u32))


@st.composite
def security_associations(draw):
    family = draw(st.sampled_from([AF_INET, AF_INET6]))
    return SecurityAssociation(
        daddr=draw(addresses(family)),
        saddr=draw(addresses(family)),
        spi=draw(u32),
        proto=draw(u8),
        family=family,
        mode=draw(u8),
        reqid=draw(u32),
        algorithms=tuple(draw(st.lists(algorithms, max_size=3))),
        selector=draw(selectors()),
        lifetime=draw(lifetime_configs),
        current=draw(lifetime_currents),
        replay=ReplayState(
            oseq=draw(u64),
            seq=draw(u64),
            bitmap=tuple(draw(st.lists(u32, max_size=8))),
            window=draw(u32),
            esn_attr=draw(st.booleans()),
        ),
        flags=draw(u8),
        extra_flags=draw(u32),
        mark=draw(marks),
        if_id=draw(u32),
    )


@st.composite
def templates(draw):
    family = draw(st.sampled_from([AF_INET, AF_INET6]))
    return Template(
        daddr=draw(addresses(family)),
        saddr=draw(addresses(family)),
        spi=draw(u32),
        proto=draw(u8),
        family=family,
        reqid=draw(u32),
        mode=draw(u8),
        share=draw(u8),
        optional=draw(u8),
        aalgos=draw(u32),
        ealgos=draw(u32),
        calgos=draw(u32),
    )


@st.composite
def security_policies(draw):
    return SecurityPolicy(
        selector=draw(selectors()),
        dir=draw(st.integers(0, 2)),
        templates=tuple(draw(st.lists(templates(), max_size=3))),
        action=draw(st.integers(0, 1)),
        priority=draw(u32),
        index=draw(u32),
        flags=draw(u8),
        share=draw(u8),
        lifetime=draw(lifetime_configs),
        mark=draw(marks),
        if_id=draw(u32),
    )


contexts = st.builds(
    IpsecContext,
    st.lists(security_associations(), max_size=3).map(tuple),
    st.lists(security_policies(), max_size=4).map(tuple),
    st.just(1),
    u64,
)


@settings(max_examples=300, deadline=None)
@given(contexts)
def test_encode_decode_round_trip(ctx):
    assert IpsecContext.decode(ctx.encode()) == ctx


@settings(max_examples=100, deadline=None)
@given(contexts, st.integers(0, 7))
def test_cdb_zero_padding_is_accepted(ctx, padding):
    assert IpsecContext.decode(ctx.encode() + b"\0" * padding) == ctx


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=600))
def test_garbage_raises_only_context_decode_error(data):
    try:
        IpsecContext.decode(data)
    except ContextDecodeError:
        pass


@settings(max_examples=300, deadline=None)
@given(contexts, st.data())
def test_corrupted_context_decodes_or_raises_context_decode_error(ctx, data):
    raw = bytearray(ctx.encode())
    if not raw:
        return
    index = data.draw(st.integers(0, len(raw) - 1))
    raw[index] ^= data.draw(st.integers(1, 255))
    cut = data.draw(st.integers(0, len(raw)))
    for candidate in (bytes(raw), bytes(raw[:cut])):
        try:
            IpsecContext.decode(candidate)
        except ContextDecodeError:
            pass


def test_decode_error_is_an_ipsec_error():
    assert issubclass(ContextDecodeError, IpsecError)
    with pytest.raises(IpsecError):
        IpsecContext.decode(b"\x02" + b"\0" * 15)


def test_truncation_and_trailing_bytes_are_rejected():
    ctx = typical_context()
    raw = ctx.encode()
    for cut in (0, 5, 12, 40, len(raw) - 1):
        with pytest.raises(ContextDecodeError):
            IpsecContext.decode(raw[:cut])
    with pytest.raises(ContextDecodeError):
        IpsecContext.decode(raw + b"\x01")
    with pytest.raises(ContextDecodeError):
        IpsecContext.decode(raw + b"\0" * 8)


def test_header_layout():
    raw = IpsecContext(captured_at=0x0102030405060708).encode()
    assert raw == bytes([1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 0, 0, 0, 0])


def test_fpt_is_not_the_assigned_mld_value_and_fits_16_bits():
    assert IPSEC_CONTEXT_FPT not in (0x00, 0x01)
    assert 0 < IPSEC_CONTEXT_FPT <= 0xFFFF


MN_P, MN_N, PAR, NAR, HA = "2001:db8:1::10", "2001:db8:2::10", "2001:db8:1::1", "2001:db8:2::1", "2001:db8:ff::1"


def typical_context(window_words: int = 1) -> IpsecContext:
    """One MN at the pAR: 2 tunnel SAs (AES-CBC + HMAC-SHA256), 4 policies."""
    cbc = (
        Algorithm("crypt", "cbc(aes)", bytes(32)),
        Algorithm("auth_trunc", "hmac(sha256)", bytes(32), 128),
    )
    replay = ReplayState(oseq=10, seq=20, bitmap=(0,) * window_words, window=32 * window_words, esn_attr=True)
    sas = (
        SecurityAssociation(PAR, MN_P, 0x1001, reqid=1, algorithms=cbc, replay=replay),
        SecurityAssociation(MN_P, PAR, 0x2002, reqid=2, algorithms=cbc, replay=replay),
    )
    policies = tuple(
        SecurityPolicy(
            selector=Selector(daddr=d, saddr=s, prefixlen_d=128, prefixlen_s=128),
            dir=direction,
            templates=(Template(daddr=td, saddr=ts, reqid=1),),
        )
        for (s, d, ts, td, direction) in (
            (MN_P, HA, MN_P, PAR, 0),
            (MN_P, HA, MN_P, PAR, 2),
            (HA, MN_P, PAR, MN_P, 1),
            (MN_P, PAR, MN_P, PAR, 0),
        )
    )
    return IpsecContext(sas, policies, captured_at=1_700_000_000)


def test_one_mn_context_fits_one_cdb():
    raw = typical_context().encode()
    assert len(raw) <= MAX_CONTEXT_DATA
    # a CDB is 4 octets of header plus data, padded to 8, at most 255 words
    assert (4 + len(raw) + 7) // 8 <= 255


def test_one_mn_context_with_esn_window_of_512_still_fits():
    assert len(typical_context(window_words=16).encode()) <= MAX_CONTEXT_DATA


def test_spi_changes_layout():
    changes = [SpiChange(0x11223344, 0x55667788), SpiChange(0x100, 0x200)]
    raw = encode_spi_changes(changes)
    assert raw == struct.pack(">IIII", 0x11223344, 0x55667788, 0x100, 0x200)
    assert len(raw) % 4 == 0
    assert decode_spi_changes(raw) == tuple(changes)


@pytest.mark.parametrize(
    "raw", [b"\0" * 4, b"\0" * 12, struct.pack(">II", 0, 5), struct.pack(">II", 7, 7)]
)
def test_bad_spi_changes_raise(raw):
    with pytest.raises(ContextDecodeError):
        decode_spi_changes(raw)


@given(st.lists(st.tuples(st.integers(1, 2**32 - 1), st.integers(1, 2**32 - 1)).filter(lambda p: p[0] != p[1])))
def test_spi_changes_round_trip(pairs):
    changes = tuple(SpiChange(a, b) for a, b in pairs)
    assert decode_spi_changes(encode_spi_changes(changes)) == changes


def test_sa_record_offsets_match_the_documented_layout():
    sa = SecurityAssociation("2001:db8::2", "2001:db8::1", 0xA1B2C3D4, reqid=7, flags=0x80)
    record = IpsecContext((sa,)).encode()[16:]
    (length,) = struct.unpack_from(">H", record, 0)
    assert length == len(record) == 64 + 56 + 64 + 32 + 24 + 4  # one bitmap word, no algorithms
    assert struct.unpack_from(">HBBBB", record, 2) == (AF_INET6, 50, 1, 0x80, 0)
    assert struct.unpack_from(">II", record, 8) == (0xA1B2C3D4, 7)
    assert record[32:48] == ipaddress.IPv6Address("2001:db8::2").packed
    assert record[48:64] == ipaddress.IPv6Address("2001:db8::1").packed
