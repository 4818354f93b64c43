"""Byte vectors for every CXTP message, both directions, each next to the RFC 4067 layout it follows."""

from __future__ import annotations

import pytest

import cxtp
from cxtp import (
    CTAA,
    CTAR,
    CTC,
    CTD,
    CTDR,
    PCTD,
    ContextDataBlock,
    CTReq,
    DecodeError,
    ProtocolError,
    StatusEntry,
)
from cxtp.icmp import ExperimentalMobilityMessage, icmpv4_checksum, icmpv6_checksum, unwrap, wrap
from cxtp.options import Bound, Options, Transfer

KEY = bytes(range(20))  # 000102..13, the key of the digest's worked examples
PREV6 = "2001:db8::100"
PAR6 = "2001:db8:1::1"
PREV4 = "192.0.2.10"
AR4 = "192.0.2.1"
SEQ = 0x1A2B3C4D
PREV6_HEX = "20010db8000000000000000000000100"
PAR6_HEX = "20010db8000100000000000000000001"
# our departures from RFC 4067 (cxtp/options.py): the nAR, the MN's new address, and check values
# computed with KEY (test_cxtp_options.py recomputes each one)
NAR6 = "2001:db8:2::1"
NEW6 = "2001:db8:2::100"
NAR6_HEX = "20010db8000200000000000000000001"
NEW6_HEX = "20010db8000200000000000000000100"
BINDING = "05adca97d0c4988ddb75fe5f5b15b381"  # the token vector's CTAR, from NEW6 to NAR6
CTAA_KEY = "d2a3faacade54393ddb676f1f06287f4ec1b76b57130a429e6404684a06733c3"
CTAA_AUTH = "a6ed7cc991173b47d5c80ecb1a2767f8"  # CTAA(PREV6, ((0x8001, 0),)) from NAR6 to NEW6, SEQ
TRANSFER = Transfer(0x0123456789ABCDEF, 1000, 5000)
TRANSFER_HEX = "0123456789abcdef 00000000000003e8 00001388"
BOUND_HEX = "06 000000" + NEW6_HEX + NAR6_HEX


def h(text: str) -> bytes:
    return bytes.fromhex("".join(text.split()))


VECTORS = [
    pytest.param(
        # RFC 4067 §2.5.1 figure (CTAR), IPv6 (V=0), A=1, no CDB; the token of docs/protocol.md's check values
        CTAR(PREV6, PAR6, SEQ, h("69619059")),
        h("21 40 002c" + PREV6_HEX + PAR6_HEX + "1a2b3c4d 69619059"),
        id="ctar-ipv6-token-vector"),
    pytest.param(
        # §2.5.1 CTAR, IPv4 (V=1 -> 0x80) with A (0x40): second octet 0xc0; 5 words = 20 octets
        CTAR(PREV4, AR4, SEQ, h("76b9cce3")),
        h("21 c0 0014 c000020a c0000201 1a2b3c4d 76b9cce3"),
        id="ctar-ipv4"),
    pytest.param(
        # §2.5.1 CTAR A=0 with one request CDB (§2.4 figure), sent as 8 octets: FPT 1, Length 1, 4 zeros
        CTAR(PREV6, PAR6, SEQ, h("18a7cdcf"), (ContextDataBlock.request(1),), ack_requested=False),
        h("21 00 0034" + PREV6_HEX + PAR6_HEX + "1a2b3c4d 18a7cdcf 0001 01 00 00000000"),
        id="ctar-ipv6-request-cdb"),
    pytest.param(
        # §2.4: a 4-octet request block (Length 0, header only) as other implementations may send it
        CTAR(PREV6, PAR6, SEQ, h("00000001"), (ContextDataBlock(1, header_only=True),)),
        h("21 40 0030" + PREV6_HEX + PAR6_HEX + "1a2b3c4d 00000001 0001 00 00"),
        id="ctar-header-only-cdb"),
    pytest.param(
        # §2.5.2 CTAA figure: previous address + one (FPT, Status, Reserved) tuple
        CTAA(PREV6, (StatusEntry(0x0001, 0x81),)),
        h("22 00 0018" + PREV6_HEX + "0001 81 00"),
        id="ctaa-ipv6-rfc-tuple"),
    pytest.param(
        # §2.5.2 CTAA with our extension: Reserved = 1 word of data (e.g. a new SPI) after the tuple
        CTAA(PREV6, (StatusEntry(0x8001, 0x00, h("c0ffee01")), StatusEntry(0x0001, 0x00))),
        h("22 00 0020" + PREV6_HEX + "8001 00 01 c0ffee01 0001 00 00"),
        id="ctaa-ipv6-extension-data"),
    pytest.param(
        # §2.5.2 CTAA, IPv4, no tuples: header + address only
        CTAA(PREV4),
        h("22 80 0008 c000020a"),
        id="ctaa-ipv4-empty"),
    pytest.param(
        # §2.5.3 CTD figure, A=1, Elapsed 100 ms, one App. B MLD CDB (Length 4 = 32 octets)
        CTD(PREV6, (ContextDataBlock(1, h("20010db800020000" "ff020000000000000000000000010003")),),
            elapsed_time=100),
        h("23 40 0038 00000064" + PREV6_HEX
          + "0001 04 00 20010db800020000 ff020000000000000000000000010003 00000000"),
        id="ctd-ipv6-mld"),
    pytest.param(
        # §2.5.3 CTD, IPv4, A=0; a CDB with P=1 (§2.4): FPT 0x0102, Length 2, presence vector 5
        CTD(PREV4, (ContextDataBlock(0x0102, h("0a0b0c0d0e0f1011"), presence_vector=5),),
            elapsed_time=0, ack_requested=False),
        h("23 80 001c 00000000 c000020a 0102 02 80 00000005 0a0b0c0d0e0f1011"),
        id="ctd-ipv4-presence-vector"),
    pytest.param(
        # §2.5.3 PCTD: Algorithm 1 (HMAC_SHA1), Key Length 20, Key, no CDB; no padding after the key
        PCTD(PREV6, KEY),
        h("24 40 0030 00000000" + PREV6_HEX + "0001 0014" + KEY.hex()),
        id="pctd-ipv6"),
    pytest.param(
        # §2.5.3 PCTD IPv4 with one 8-octet CDB right after a 3-octet key (the key is not aligned)
        PCTD(PREV4, h("aabbcc"), (ContextDataBlock(7, h("01020304")),), elapsed_time=5),
        h("24 c0 001b 00000005 c000020a 0001 0003 aabbcc 0007 01 00 01020304"),
        id="pctd-ipv4-cdb"),
    pytest.param(
        # §2.5.4 CTDR figure: S=1 (0x40), one tuple FPT 1 status 0
        CTDR(PREV6, True, (StatusEntry(1, 0),)),
        h("25 40 0018" + PREV6_HEX + "0001 00 00"),
        id="ctdr-ipv6-success"),
    pytest.param(
        # §2.5.4 CTDR, IPv4, S=0, BAD_CHECKSUM (0x01, §4)
        CTDR(PREV4, False, (StatusEntry(1, cxtp.BAD_CHECKSUM),)),
        h("25 80 000c c000020a 0001 01 00"),
        id="ctdr-ipv4-bad-checksum"),
    pytest.param(
        # §2.5.5 CTC figure: header + previous address
        CTC(PREV4),
        h("26 80 0008 c000020a"),
        id="ctc-ipv4"),
    pytest.param(
        CTC(PREV6),
        h("26 00 0014" + PREV6_HEX),
        id="ctc-ipv6"),
    pytest.param(
        # §2.5.6 CT-Req figure, network-initiated: sequence 0, token 0 (no CTAR yet)
        CTReq(PREV6),
        h("27 00 001c" + PREV6_HEX + "00000000 00000000"),
        id="ct-req-zero-token"),
    pytest.param(
        # §2.5.6 CT-Req copying a CTAR's seq, token and request CDB
        CTReq(PREV6, SEQ, h("18a7cdcf"), (ContextDataBlock.request(1),)),
        h("27 00 0024" + PREV6_HEX + "1a2b3c4d 18a7cdcf 0001 01 00 00000000"),
        id="ct-req-copied"),
    # --- our departures from RFC 4067: the options after the plain CDBs or tuples ----------------
    pytest.param(
        # CTAR + BINDING (FPT 0xFF01, Length 3: 16-octet MAC and 4 octets of padding)
        CTAR(PREV6, PAR6, SEQ, h("69619059"), Options(binding=h(BINDING)).blocks()),
        h("21 40 0044" + PREV6_HEX + PAR6_HEX + "1a2b3c4d 69619059 ff01 03 00" + BINDING + "00000000"),
        id="ctar-binding"),
    pytest.param(
        # CT-Req + the CTAR's BINDING, the request's TRANSFER (20 octets: Length 3) and BOUND
        # (family 6, 3 zeros, the CTAR's source, the AR it went to: Length 5)
        CTReq(PREV6, SEQ, h("69619059"),
              Options(binding=h(BINDING), transfer=TRANSFER, bound=Bound(NEW6, NAR6)).blocks()),
        h("27 00 0074" + PREV6_HEX + "1a2b3c4d 69619059 ff01 03 00" + BINDING + "00000000"
          + "ff02 03 00" + TRANSFER_HEX + "ff03 05 00" + BOUND_HEX),
        id="ct-req-options"),
    pytest.param(
        # CTD answering it: a context, then TRANSFER and BOUND echoed and CTAA_KEY (length 32)
        CTD(PREV6, (ContextDataBlock(0x0102, h("01020304")),)
            + Options(transfer=TRANSFER, bound=Bound(NEW6, NAR6), ctaa_key=h(CTAA_KEY)).blocks()),
        h("23 40 0088 00000000" + PREV6_HEX + "0102 01 00 01020304" + "ff02 03 00" + TRANSFER_HEX
          + "ff03 05 00" + BOUND_HEX + "ff04 05 00 0020 0000" + CTAA_KEY),
        id="ctd-options"),
    pytest.param(
        # PCTD naming its transfer
        PCTD(PREV6, KEY, Options(transfer=TRANSFER).blocks()),
        h("24 40 0048 00000000" + PREV6_HEX + "0001 0014" + KEY.hex() + "ff02 03 00" + TRANSFER_HEX),
        id="pctd-transfer"),
    pytest.param(
        # CTAA + CTAA_AUTH as a status tuple (status 0, Reserved = 4 words of data)
        CTAA(PREV6, (StatusEntry(0x8001, 0),) + Options(ctaa_auth=h(CTAA_AUTH)).statuses()),
        h("22 00 002c" + PREV6_HEX + "8001 00 00 ff05 00 04" + CTAA_AUTH),
        id="ctaa-authenticated"),
    pytest.param(
        # CTDR naming its transfer (TRANSFER as a tuple: 5 words)
        CTDR(PREV6, True, (StatusEntry(1, 0),) + Options(transfer=TRANSFER).statuses()),
        h("25 40 0030" + PREV6_HEX + "0001 00 00 ff02 00 05" + TRANSFER_HEX),
        id="ctdr-transfer"),
    pytest.param(
        # CTC naming its transfer: option tuples after the address (none in RFC-exact mode)
        CTC(PREV6, Options(transfer=TRANSFER).statuses()),
        h("26 00 002c" + PREV6_HEX + "ff02 00 05" + TRANSFER_HEX),
        id="ctc-transfer"),
]


@pytest.mark.parametrize("message, wire", VECTORS)
def test_encode_gives_the_vector(message, wire):
    assert message.encode() == wire


@pytest.mark.parametrize("message, wire", VECTORS)
def test_decode_gives_the_message(message, wire):
    assert cxtp.decode(wire) == message


def test_every_message_type_has_a_vector():
    types = {type(p.values[0]) for p in VECTORS}
    assert types == {CTAR, CTAA, CTD, PCTD, CTDR, CTC, CTReq}
    with_options = {type(p.values[0]) for p in VECTORS if p.id.endswith(
        ("binding", "options", "transfer", "authenticated"))}
    assert with_options == types  # and with our options


@pytest.mark.parametrize("wire, why", [
    (h("26 00 0018" + PREV6_HEX + "0001 00 00"), "a plain tuple after a CTC's address"),
    (h("26 00 0016" + PREV6_HEX + "ff02"), "half a tuple after a CTC's address"),
])
def test_a_ctc_carries_only_option_tuples(wire, why):
    with pytest.raises(DecodeError):
        cxtp.decode(wire)
    with pytest.raises(ProtocolError):
        CTC(PREV6, (StatusEntry(1, 0),))


def test_ctar_vector_token_matches_compute_token():
    assert cxtp.compute_token(KEY, PREV6, SEQ) == h("69619059")


def test_reserved_bits_are_ignored_on_receive():
    # §2.2: reserved bits zero on send, ignored on receive (here: all 6 reserved bits of CTAA set,
    # and the reserved bit that is "A" in other messages)
    wire = bytearray(CTAA(PREV6).encode())
    wire[1] |= 0x7F
    assert cxtp.decode(bytes(wire)) == CTAA(PREV6)
    wire = bytearray(CTD(PREV4).encode())
    wire[1] |= 0x3F
    assert cxtp.decode(bytes(wire)) == CTD(PREV4)


def test_cdb_reserved_bits_ignored():
    wire = bytearray(CTD(PREV4, (ContextDataBlock(1, b"abcd"),)).encode())
    wire[-5] |= 0x7F  # Reserved bits next to P
    assert cxtp.decode(bytes(wire)).contexts[0].data == b"abcd"


def test_addresses_are_normalized():
    assert CTC("2001:DB8:0:0::0100") == CTC(PREV6)


def test_cdb_padding_and_length():
    block = ContextDataBlock(1, bytes(24))  # App. B: 4 + 24 -> padded to 32, Length 4
    assert block.encode()[2] == 4 and len(block.encode()) == 32
    assert len(ContextDataBlock(1, bytes(4)).encode()) == 8
    assert ContextDataBlock(1, bytes(2040 - 4)).encode()[2] == 255
    with pytest.raises(ProtocolError):
        ContextDataBlock(1, bytes(2040 - 3))


@pytest.mark.parametrize("wire, why", [
    (b"", "empty"),
    (h("21 40"), "short header"),
    (h("41 40 0004"), "version 2"),
    (h("01 40 0004"), "version 0"),
    (h("28 00 0014" + PREV6_HEX), "unknown type 8"),
    (h("20 00 0014" + PREV6_HEX), "type 0"),
    (h("26 00 0015" + PREV6_HEX), "Length longer than data"),
    (h("26 00 0013" + PREV6_HEX), "Length shorter than data"),
    (h("26 00 0002"), "Length below header size"),
    (h("26 00 0010" + PREV6_HEX[:24]), "truncated address"),
    (h("21 40 0028" + PREV6_HEX + PAR6_HEX + "1a2b3c4d"), "CTAR without token"),
    (h("22 00 0016" + PREV6_HEX + "0001"), "partial status tuple"),
    (h("22 00 0018" + PREV6_HEX + "0001 00 01"), "status data word missing"),
    (h("23 00 001c 00000000" + PREV6_HEX + "0001 02 00"), "CDB longer than message"),
    (h("23 00 001a 00000000" + PREV6_HEX + "00"), "stray octets after address"),
    (h("23 00 001c 00000000" + PREV6_HEX + "0001 00 80"), "P=1 with Length 0"),
    (h("24 00 001c 00000000" + PREV6_HEX + "0001 0014"), "PCTD key longer than message"),
    (h("24 00 0018 00000000" + PREV6_HEX), "PCTD without key block"),
    (h("26 40 0008 c000020a"), "IPv4 address with V=0"),
    (h("26 80 0014" + PREV6_HEX), "IPv6 address with V=1"),
])
def test_malformed_input_raises_decode_error(wire, why):
    with pytest.raises(DecodeError):
        cxtp.decode(wire)


def test_decode_error_is_a_cxtp_error():
    assert issubclass(DecodeError, cxtp.CxtpError)
    assert issubclass(ProtocolError, cxtp.CxtpError)
    assert issubclass(cxtp.ConfigError, cxtp.CxtpError)


def test_decode_rejects_non_bytes() -> None:
    with pytest.raises(DecodeError):
        cxtp.decode("21400004")  # type: ignore[arg-type]


@pytest.mark.parametrize("build", [
    lambda: CTAR(PREV6, AR4, SEQ, bytes(4)),  # mixed families, one V flag
    lambda: CTAR(PREV6, PAR6, 1 << 32, bytes(4)),
    lambda: CTAR(PREV6, PAR6, SEQ, bytes(3)),
    lambda: CTAR("not-an-address", PAR6, SEQ, bytes(4)),
    lambda: StatusEntry(1, 0, b"abc"),
    lambda: StatusEntry(1, 256),
    lambda: ContextDataBlock(1 << 16),
    lambda: ContextDataBlock(1, b"x", header_only=True),
    lambda: CTD(PREV6, (b"not a block",)),  # type: ignore[arg-type]  # invalid on purpose
    lambda: CTDR(PREV6, 1),  # type: ignore[arg-type]  # invalid on purpose
])
def test_invalid_construction_raises_protocol_error(build):
    with pytest.raises(ProtocolError):
        build()


def test_message_too_long_for_length_field():
    blocks = tuple(ContextDataBlock(1, bytes(2000)) for _ in range(33))
    with pytest.raises(ProtocolError):
        CTD(PREV6, blocks).encode()


def test_peek_length_frames_a_stream():
    wire = CTC(PREV6).encode()
    assert cxtp.peek_length(wire[:4]) == len(wire)
    with pytest.raises(DecodeError):
        cxtp.peek_length(b"\x21")


def test_pctd_repr_hides_the_key():
    assert KEY.hex() not in repr(PCTD(PREV6, KEY)) and "20 octets" in repr(PCTD(PREV6, KEY))


# --- ICMP Experimental Mobility wrapper (RFC 4067 §3.2, RFC 4065 §8) ---------------------------------

def test_icmpv6_wrapper_vector():
    # RFC 4065 §8, RFC 4067 §3.2: type 0x96 = 150, code 0, checksum left 0 (kernel fills it), subtype 1, 3 reserved
    ctar = CTAR(PREV6, PAR6, SEQ, h("69619059"))
    wire = wrap(ctar)
    assert wire[:12] == h("96 00 0000 01 000000 21 40 002c")
    assert cxtp.decode_icmp(wire) == ctar
    assert ExperimentalMobilityMessage.decode(wire).payload == ctar.encode()


def test_icmpv4_wrapper_has_type_41_and_valid_checksum():
    ctaa = CTAA(PREV4)
    wire = wrap(ctaa)
    assert wire[0] == 41 and wire[1] == 0 and wire[4:8] == h("01000000")
    from cxtp.icmp import internet_checksum
    assert internet_checksum(wire) == 0  # a correct checksum sums to zero
    assert icmpv4_checksum(wire) == int.from_bytes(wire[2:4], "big")
    assert cxtp.decode_icmp(wire, ipv4=True) == ctaa


def test_icmpv6_checksum_matches_scapy():
    from scapy.layers.inet6 import IPv6, in6_chksum
    src, dst = "2001:db8:2::99", "2001:db8:2::1"
    wire = wrap(CTAR(PREV6, PAR6, SEQ, h("69619059")), source=src, destination=dst)
    zeroed = wire[:2] + b"\0\0" + wire[4:]
    expected = in6_chksum(58, IPv6(src=src, dst=dst, nh=58), zeroed)
    assert int.from_bytes(wire[2:4], "big") == expected == icmpv6_checksum(src, dst, wire)


@pytest.mark.parametrize("wire, why", [
    (h("96 00 0000 01"), "short"),
    (h("97 00 0000 01000000 26000014" + PREV6_HEX), "wrong type"),
    (h("96 01 0000 01000000 26000014" + PREV6_HEX), "wrong code"),
    (h("96 00 0000 00000000 26000014" + PREV6_HEX), "subtype 0 = CARD"),
    (h("96 00 0000 05000000 26000014" + PREV6_HEX), "FMIPv6 subtype"),
])
def test_icmp_wrapper_rejects(wire, why):
    with pytest.raises(DecodeError):
        cxtp.decode_icmp(wire)


def test_icmp_reserved_octets_ignored():
    wire = bytearray(wrap(CTC(PREV6)))
    wire[5:8] = b"\xff\xff\xff"
    assert unwrap(bytes(wire)) == CTC(PREV6).encode()
