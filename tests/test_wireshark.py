"""The Wireshark dissector (wireshark/cxtp.lua) against the project's own codecs, and the ESP profile
(scenarios/analysis/wireshark.py) against a packet scapy encrypted.

Every message type is built with ``cxtp.messages`` (the byte vectors of test_cxtp_codec.py and more),
carried over ICMPv6 type 150 / ICMPv4 type 41, SCTP port 5091 and TCP port 5091, written to one
pcap and dissected by tshark once (PDML); each dissected field is compared with what ``cxtp.decode``
and ``ipsec.IpsecContext.decode`` make of the same octets. Malformed inputs must show expert info,
and the dissector must agree with ``cxtp.decode`` about which inputs are malformed.

Skipped only when tshark is missing and ``CI`` is unset; under CI a missing tshark is a failure.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import random
import re
import shutil
import subprocess
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.ipsec import ESP
from scapy.layers.ipsec import SecurityAssociation as ScapySa
from scapy.layers.l2 import Ether
from scapy.layers.sctp import SCTP, SCTPChunkData
from scapy.packet import Raw
from scapy.utils import wrpcap

import cxtp
import test_cxtp_codec as codec_vectors
from cxtp import CTAA, CTAR, CTC, CTD, CTDR, PCTD, ContextDataBlock, CTReq, DecodeError, StatusEntry
from cxtp.icmp import ExperimentalMobilityMessage
from cxtp.mld import MulticastListenerContext
from ipsec import (
    AF_INET,
    IPSEC_CONTEXT_FPT,
    Algorithm,
    ContextDecodeError,
    IpsecContext,
    LifetimeConfig,
    LifetimeCurrent,
    Mark,
    ReplayState,
    SecurityAssociation,
    SecurityPolicy,
    Selector,
    SpiChange,
    Template,
    encode_spi_changes,
)
from nodes.provisioning import ar_ar_contexts, initial_contexts
from scenarios.analysis import wireshark

REPOSITORY = Path(__file__).resolve().parent.parent
# Wire values of docs/ipsec-context.md (include/uapi/linux/xfrm.h)
ALGORITHM_KINDS = ("crypt", "auth", "auth_trunc", "aead", "comp")
XFRM_MODE_TRANSPORT, XFRM_POLICY_BLOCK, XFRM_POLICY_FWD, XFRM_STATE_ESN = 0, 1, 2, 128
DISSECTOR = REPOSITORY / "wireshark" / "cxtp.lua"

MN6, PAR6, NAR6, HA6 = "2001:db8:1::100", "2001:db8:1::1", "2001:db8:2::1", "2001:db8:3::1"
PAR_LINK, NAR_LINK = "2001:db8:12::1", "2001:db8:12::2"
MN4, AR4 = "192.0.2.10", "192.0.2.1"
AR4_LINK, AR4_PEER = "198.51.100.1", "198.51.100.2"
MAC_A, MAC_B = "02:00:00:00:00:01", "02:00:00:00:00:02"  # explicit: scapy would look them up

# The CXTP-level expert fields that mean "malformed": cxtp.decode raises DecodeError exactly then.
CXTP_ERRORS = {"cxtp.expert.truncated", "cxtp.expert.bad_length", "cxtp.expert.bad_version",
               "cxtp.expert.unknown_type", "cxtp.expert.trailing", "cxtp.expert.cdb_p_zero_length",
               "cxtp.expert.cdb_overrun", "cxtp.expert.status_overrun"}


# --- tshark and PDML ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tshark() -> str:
    path = shutil.which("tshark")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("tshark is missing (scripts/setup.sh installs Debian's tshark)")
        pytest.skip("tshark is not installed")
    version = subprocess.run([path, "-v"], capture_output=True, text=True).stdout
    if "Lua" not in version:
        pytest.fail(f"this tshark has no Lua support: {version.splitlines()[0]}")
    return path


@dataclasses.dataclass
class Node:
    """One PDML element: a protocol or a field, with its children in document order."""

    name: str
    show: str
    value: str
    children: list[Node]

    def walk(self):
        for child in self.children:
            yield child
            yield from child.walk()

    def all(self, *names: str) -> list[Node]:
        return [node for node in self.walk() if node.name in names]

    def shows(self, *names: str) -> list[str]:
        return [node.show for node in self.all(*names)]

    def ints(self, *names: str) -> list[int]:
        return [int(node.show, 0) for node in self.all(*names)]

    def hexes(self, *names: str) -> list[str]:
        return [node.value for node in self.all(*names)]

    def one(self, name: str) -> Node:
        found = self.all(name)
        assert len(found) == 1, f"{name}: {len(found)} occurrences"
        return found[0]

    def int(self, name: str) -> int:
        return int(self.one(name).show, 0)

    def names(self) -> set[str]:
        return {node.name for node in self.walk()}


def _node(element) -> Node:
    return Node(element.get("name", ""), element.get("show", ""), element.get("value", ""),
                [_node(child) for child in element])


def dissect(tshark: str, packets, directory: Path, name: str, arguments=(), environment=None) -> list[Node]:
    """Write ``packets`` to a pcap, dissect it with the repository's Lua dissector, return the PDML."""
    capture = directory / f"{name}.pcap"
    wrpcap(str(capture), packets)
    if environment is None:
        # an empty personal configuration: nothing of the user's (or a profile's init.lua) interferes
        isolated = directory / f"{name}-config"
        isolated.mkdir(exist_ok=True)
        environment = {**os.environ, "WIRESHARK_CONFIG_DIR": str(isolated)}
    result = subprocess.run([tshark, "-X", f"lua_script:{DISSECTOR}", "-r", str(capture), "-T", "pdml",
                             *arguments], capture_output=True, env=environment, timeout=300)
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    root = ElementTree.fromstring(result.stdout.decode("utf-8"))  # PDML must be valid UTF-8 too
    packets_out = [_node(packet) for packet in root.iter("packet")]
    assert len(packets_out) == len(packets)
    return packets_out


def cxtp_messages(packet: Node) -> list[Node]:
    """The CXTP message trees of a packet (the ICMP wrapper's own tree has no cxtp.type)."""
    return [node for node in packet.all("cxtp") if "cxtp.type" in node.names()]


def experts(packet: Node) -> set[str]:
    return {node.name for node in packet.walk() if node.name.startswith("cxtp.expert.")}


def assert_dissector_did_not_fail(packet: Node) -> None:
    names = packet.names()
    assert "_ws.lua.error" not in names, [n.show for n in packet.walk() if n.name == ""]
    # an exception in a dissector ends the tree with a "[Malformed Packet]" protocol
    assert "_ws.malformed" not in {node.name for node in packet.children}


# --- carriers -------------------------------------------------------------------------------------

def _ip(ipv4: bool, source: str, destination: str, **fields):
    return IP(src=source, dst=destination, **fields) if ipv4 else IPv6(src=source, dst=destination, **fields)


def icmp_packet(payload: bytes, ipv4: bool, source: str | None = None, destination: str | None = None,
                hop_limit: int = 255, checksum_delta: int = 0, subtype: int = 1):
    """The ICMP Experimental Mobility message as cxtp.icmp encodes it (checksum filled)."""
    source = source or (MN4 if ipv4 else MN6)
    destination = destination or (AR4 if ipv4 else PAR6)
    message = bytearray(ExperimentalMobilityMessage(payload, ipv4, subtype).encode(source, destination))
    if checksum_delta:
        message[2:4] = ((int.from_bytes(message[2:4], "big") + checksum_delta) & 0xFFFF).to_bytes(2, "big")
    layer: IP | IPv6
    if ipv4:
        layer = IP(src=source, dst=destination, proto=1, ttl=hop_limit)
    else:
        layer = IPv6(src=source, dst=destination, nh=58, hlim=hop_limit)
    return Ether(src=MAC_A, dst=MAC_B) / layer / Raw(bytes(message))


_tsn = itertools.count(1)


def sctp_packet(payload: bytes, ipv4: bool):
    """One CXTP message in one DATA chunk, as SctpTransport sends it (U bit, PPID 0). TSNs never
    repeat: Wireshark does not hand a retransmitted TSN to the upper layer again."""
    source, destination = (AR4_LINK, AR4_PEER) if ipv4 else (PAR_LINK, NAR_LINK)
    return (Ether(src=MAC_A, dst=MAC_B) / _ip(ipv4, source, destination) / SCTP(sport=5091, dport=5091, tag=0x5091)
            / SCTPChunkData(data=payload, tsn=next(_tsn), proto_id=0, unordered=1, beginning=1, ending=1))


class TcpStream:
    """Segments of one TCP connection from an ephemeral port to 5091, sequence numbers in order."""

    def __init__(self, ipv4: bool, sport: int) -> None:
        self.ipv4, self.sport, self.seq = ipv4, sport, 1000

    def segment(self, payload: bytes):
        source, destination = (AR4_LINK, AR4_PEER) if self.ipv4 else (PAR_LINK, NAR_LINK)
        packet = (Ether(src=MAC_A, dst=MAC_B) / _ip(self.ipv4, source, destination)
                  / TCP(sport=self.sport, dport=5091, flags="PA", seq=self.seq, ack=1) / Raw(payload))
        self.seq += len(payload)
        return packet


# --- messages -------------------------------------------------------------------------------------

KEY = bytes(range(20))


def ipsec_contexts() -> dict[str, IpsecContext]:
    """The IPsec contexts the tests carry: the attach's (2 SAs, 3 policies, as the pAR sends it),
    the ARs' transport-mode context, and a context using every field."""
    _, ar_side = initial_contexts(MN6, PAR6, HA6, "aes-cbc-sha256", 0x102, 0x101)
    _, des_side = initial_contexts(MN6, PAR6, HA6, "des-cbc", 0x202, 0x201)
    _, gcm_side = initial_contexts(MN6, PAR6, HA6, "aes-gcm", 0x302, 0x301)
    ar_ar, _ = ar_ar_contexts(PAR_LINK, NAR_LINK, "aes-cbc-sha256")
    rich = IpsecContext(
        sas=(
            SecurityAssociation(
                daddr=AR4, saddr=MN4, spi=0xDEADBEEF, family=AF_INET, mode=XFRM_MODE_TRANSPORT, reqid=7,
                algorithms=(Algorithm("aead", "rfc4106(gcm(aes))", bytes(range(100, 120)), 128),),
                selector=Selector(daddr=AR4, saddr=MN4, family=AF_INET, prefixlen_d=32, prefixlen_s=24,
                                  proto=17, dport=5091, dport_mask=0xFFFF, sport=1024, sport_mask=0xFC00,
                                  ifindex=-1, user=1000),
                lifetime=LifetimeConfig(soft_byte_limit=10**9, hard_byte_limit=2 * 10**9,
                                        soft_packet_limit=10**6, hard_packet_limit=2 * 10**6,
                                        soft_add_expires_seconds=3000, hard_add_expires_seconds=3600,
                                        soft_use_expires_seconds=1000, hard_use_expires_seconds=1200),
                current=LifetimeCurrent(bytes=123456, packets=789, add_time=1_700_000_000,
                                        use_time=1_700_000_007),
                replay=ReplayState(oseq=(1 << 32) + 5, seq=(1 << 32) + 3,
                                   bitmap=(0xFFFFFFFF, 0x1, 0, 0x80000000), window=128, esn_attr=True),
                flags=XFRM_STATE_ESN, extra_flags=1, mark=Mark(0x10, 0xFF), if_id=3),
            SecurityAssociation(
                daddr=MN6, saddr=PAR6, spi=0x00C0FFEE, reqid=2,
                algorithms=(Algorithm("crypt", "cbc(des3_ede)", bytes(range(24)), 0),
                            Algorithm("auth", "hmac(md5)", bytes(range(16)), 0),
                            Algorithm("comp", "deflate", b"", 0)),
                replay=ReplayState(oseq=65536 + 42, seq=17, bitmap=(0x0001FFFF,), window=32)),
        ),
        policies=(
            SecurityPolicy(
                selector=Selector(daddr=AR4, saddr=MN4, family=AF_INET, prefixlen_d=32, prefixlen_s=32),
                dir=XFRM_POLICY_FWD, action=XFRM_POLICY_BLOCK, priority=5, index=0x1234, flags=1, share=2,
                templates=(Template(daddr=AR4, saddr=MN4, family=AF_INET, spi=0xDEADBEEF, reqid=7,
                                    mode=XFRM_MODE_TRANSPORT, optional=1, aalgos=0x3, ealgos=0x4, calgos=0),
                           Template(daddr=PAR6, saddr=MN6, reqid=8, share=1)),
                lifetime=LifetimeConfig(hard_add_expires_seconds=60), mark=Mark(1, 1), if_id=9),
        ),
        captured_at=1_700_000_100)
    contexts = {"attach-aes-cbc-sha256": ar_side, "attach-des-cbc": des_side, "attach-aes-gcm": gcm_side,
                "ar-ar-transport": ar_ar, "every-field": rich}
    for context in contexts.values():  # the project's own decoder takes each back
        assert IpsecContext.decode(context.encode() + bytes(-len(context.encode()) % 8)) == context
    return contexts


def extra_messages() -> list[tuple[str, object]]:
    """Messages beyond the codec vectors: the contexts the testbed transfers, statuses with data."""
    contexts = ipsec_contexts()
    mld = MulticastListenerContext("2001:db8:2::/64", "ff02::1:3").encode()
    spi_changes = encode_spi_changes([SpiChange(0x101, 0x4242), SpiChange(0x102, 0x4343)])
    messages: list[tuple[str, object]] = []
    for name, context in contexts.items():
        block = ContextDataBlock(IPSEC_CONTEXT_FPT, context.encode())
        messages.append((f"ctd-ipsec-{name}", CTD(MN6, (block,), elapsed_time=12)))
    attach = ContextDataBlock(IPSEC_CONTEXT_FPT, contexts["attach-aes-cbc-sha256"].encode())
    messages += [
        ("pctd-ipsec-and-mld", PCTD(MN6, KEY, (attach, ContextDataBlock(1, mld)), elapsed_time=3)),
        ("pctd-ipv4-ipsec", PCTD(MN4, KEY, (ContextDataBlock(IPSEC_CONTEXT_FPT, contexts["every-field"].encode()),))),
        ("ctar-request-ipsec", CTAR(MN6, NAR6, 0xCAFEBABE, bytes.fromhex("01020304"),
                                    (ContextDataBlock.request(IPSEC_CONTEXT_FPT), ContextDataBlock.request(1)))),
        ("ctaa-spi-changes", CTAA(MN6, (StatusEntry(IPSEC_CONTEXT_FPT, 0, spi_changes), StatusEntry(1, 0)))),
        ("ctaa-ipsec-failure", CTAA(MN6, (StatusEntry(IPSEC_CONTEXT_FPT, 0x12),))),
        ("ctdr-ipsec", CTDR(MN6, True, (StatusEntry(IPSEC_CONTEXT_FPT, 0),))),
        ("ctdr-authorization-failed", CTDR(MN6, False, (StatusEntry(IPSEC_CONTEXT_FPT, 0x82),))),
        ("ct-req-ipsec", CTReq(MN6, 0xCAFEBABE, bytes.fromhex("01020304"),
                               (ContextDataBlock.request(IPSEC_CONTEXT_FPT),))),
        ("ctd-presence-vector-ipv6", CTD(MN6, (ContextDataBlock(0x0102, bytes(range(12)), presence_vector=0xA5),))),
        ("ctc-ipv6-nar", CTC(NAR6)),
    ]
    return messages


def all_messages() -> list[tuple[str, object]]:
    vectors = []
    for parameter in codec_vectors.VECTORS:
        assert isinstance(parameter.id, str)  # every vector is named
        vectors.append((parameter.id, parameter.values[0]))
    return vectors + extra_messages()


# --- checks against the project's decoders --------------------------------------------------------

def check_message(node: Node, wire: bytes) -> None:
    message = cxtp.decode(wire)
    ipv4 = message.ipv4
    assert node.int("cxtp.version") == 1
    assert node.int("cxtp.type") == int(message.TYPE)
    assert node.int("cxtp.length") == len(wire)
    assert node.int("cxtp.flags.v") == ipv4
    assert node.shows("cxtp.mn_prev_v4" if ipv4 else "cxtp.mn_prev") == [message.mn_previous_address]
    assert node.all("cxtp.mn_prev" if ipv4 else "cxtp.mn_prev_v4") == []
    if isinstance(message, (CTAR, CTD, PCTD)):
        assert node.int("cxtp.flags.a") == message.ack_requested
    if isinstance(message, CTDR):
        assert node.int("cxtp.flags.s") == message.success
    if isinstance(message, (CTAR, CTReq)):
        assert node.int("cxtp.seq") == message.sequence_number
        assert node.one("cxtp.token").value == message.token.hex()
        check_blocks(node, message.requested, request=True)
    if isinstance(message, CTAR):
        assert node.shows("cxtp.ar_addr_v4" if ipv4 else "cxtp.ar_addr") == [message.ar_address]
    if isinstance(message, (CTD, PCTD)):
        assert node.int("cxtp.elapsed") == message.elapsed_time
        check_blocks(node, message.contexts, request=False)
    if isinstance(message, PCTD):
        assert node.int("cxtp.algorithm") == message.algorithm
        assert node.int("cxtp.key_length") == len(message.key)
        assert node.hexes("cxtp.key") == ([message.key.hex()] if message.key else [])
    else:
        assert node.all("cxtp.key") == []
    if isinstance(message, (CTAA, CTDR)):
        assert node.ints("cxtp.status.fpt") == [s.fpt for s in message.statuses]
        assert node.ints("cxtp.status.code") == [s.status for s in message.statuses]
        assert node.ints("cxtp.status.data_words") == [len(s.data) // 4 for s in message.statuses]
        assert node.hexes("cxtp.status.data") == [s.data.hex() for s in message.statuses if s.data]
        changes = [s.data for s in message.statuses if s.fpt == IPSEC_CONTEXT_FPT and s.data and len(s.data) % 8 == 0]
        if isinstance(message, CTAA):
            pairs = [(int.from_bytes(data[i:i + 4], "big"), int.from_bytes(data[i + 4:i + 8], "big"))
                     for data in changes for i in range(0, len(data), 8)]
            assert list(zip(node.ints("cxtp.ipsec.spi_change.old"), node.ints("cxtp.ipsec.spi_change.new"))) == pairs


def ipsec_data_refused(wire: bytes) -> bool:
    """Whether the project's IPsec decoders refuse some FPT 0x8001 data in this (valid) message."""
    message = cxtp.decode(wire)
    for block in getattr(message, "contexts", ()):
        if block.fpt == IPSEC_CONTEXT_FPT:
            try:
                IpsecContext.decode(block.data)
            except ContextDecodeError:
                return True
    if isinstance(message, CTAA):
        for status in message.statuses:
            if status.fpt == IPSEC_CONTEXT_FPT and status.data and len(status.data) % 8:
                return True  # decode_spi_changes: not a multiple of 8
    return False


def check_blocks(node: Node, blocks, request: bool) -> None:
    assert node.ints("cxtp.cdb.fpt") == [b.fpt for b in blocks]
    assert node.ints("cxtp.cdb.length") == [0 if b.header_only else b.size // 8 for b in blocks]
    assert node.ints("cxtp.cdb.p") == [b.presence_vector is not None for b in blocks]
    assert node.ints("cxtp.cdb.presence_vector") == [b.presence_vector for b in blocks if b.presence_vector is not None]
    if request:  # our options (cxtp/options.py) carry data where a request block carries none
        options = [b for b in blocks if b.fpt in cxtp.constants.OPTION_FPTS]
        assert len(node.all("cxtp.cdb.request")) == len(blocks) - len(options)
        assert node.hexes("cxtp.cdb.data") == [b.data.hex() for b in options]
    else:
        assert node.hexes("cxtp.cdb.data") == [b.data.hex() for b in blocks if b.data]
    contexts = [IpsecContext.decode(b.data) for b in blocks if b.fpt == IPSEC_CONTEXT_FPT and not request]
    trees = node.all("cxtp.cdb.fpt")  # one per CDB; the IPsec trees follow in the same order
    assert len(trees) == len(blocks)
    if contexts:
        check_ipsec(node, contexts)
    groups = [MulticastListenerContext.decode(b.data) for b in blocks if b.fpt == 1 and b.data.strip(b"\0")]
    assert node.shows("cxtp.mld.group") == [g.multicast_address for g in groups]


def _address_fields(base: str) -> tuple[str, str]:
    return base, base + "_v4"


def check_ipsec(node: Node, contexts: list[IpsecContext]) -> None:
    """Every decoded IPsec field, in document order, against ``IpsecContext.decode``."""
    sas = [sa for context in contexts for sa in context.sas]
    policies = [policy for context in contexts for policy in context.policies]
    templates = [t for policy in policies for t in policy.templates]
    assert node.ints("cxtp.ipsec.version") == [c.version for c in contexts]
    assert node.ints("cxtp.ipsec.sa_count") == [len(c.sas) for c in contexts]
    assert node.ints("cxtp.ipsec.policy_count") == [len(c.policies) for c in contexts]
    assert node.ints("cxtp.ipsec.captured_at") == [c.captured_at for c in contexts]
    # SAs
    assert node.ints("cxtp.ipsec.sa.spi") == [sa.spi for sa in sas]
    assert node.ints("cxtp.ipsec.sa.family") == [sa.family for sa in sas]
    assert node.ints("cxtp.ipsec.sa.proto") == [sa.proto for sa in sas]
    assert node.ints("cxtp.ipsec.sa.mode") == [sa.mode for sa in sas]
    assert node.ints("cxtp.ipsec.sa.reqid") == [sa.reqid for sa in sas]
    assert node.ints("cxtp.ipsec.sa.flags") == [sa.flags for sa in sas]
    assert node.ints("cxtp.ipsec.sa.extra_flags") == [sa.extra_flags for sa in sas]
    assert node.ints("cxtp.ipsec.sa.if_id") == [sa.if_id for sa in sas]
    assert node.ints("cxtp.ipsec.sa.mark_value") == [(sa.mark or Mark()).value for sa in sas]
    assert node.ints("cxtp.ipsec.sa.mark_mask") == [(sa.mark or Mark()).mask for sa in sas]
    assert node.shows(*_address_fields("cxtp.ipsec.sa.daddr")) == [sa.daddr for sa in sas]
    assert node.shows(*_address_fields("cxtp.ipsec.sa.saddr")) == [sa.saddr for sa in sas]
    assert node.ints("cxtp.ipsec.sa.alg_count") == [len(sa.algorithms) for sa in sas]
    algorithms = [a for sa in sas for a in sa.algorithms]
    assert node.shows("cxtp.ipsec.alg.name") == [a.name for a in algorithms]
    assert node.ints("cxtp.ipsec.alg.kind") == [ALGORITHM_KINDS.index(a.kind) for a in algorithms]
    assert node.ints("cxtp.ipsec.alg.key_length") == [len(a.key) for a in algorithms]
    assert node.ints("cxtp.ipsec.alg.bits") == [a.bits for a in algorithms]
    assert node.hexes("cxtp.ipsec.alg.key") == [a.key.hex() for a in algorithms if a.key]
    # replay state and lifetime used
    assert node.ints("cxtp.ipsec.sa.replay.oseq") == [sa.replay.oseq for sa in sas]
    assert node.ints("cxtp.ipsec.sa.replay.seq") == [sa.replay.seq for sa in sas]
    assert node.ints("cxtp.ipsec.sa.replay.window") == [sa.replay.window for sa in sas]
    assert node.ints("cxtp.ipsec.sa.replay.esn_attr") == [sa.replay.esn_attr for sa in sas]
    assert node.ints("cxtp.ipsec.sa.replay.has_mark") == [sa.mark is not None for sa in sas]
    assert node.ints("cxtp.ipsec.sa.replay.bitmap_words") == [len(sa.replay.bitmap) for sa in sas]
    assert node.ints("cxtp.ipsec.sa.replay.bitmap") == [w for sa in sas for w in sa.replay.bitmap]
    for name in ("bytes", "packets", "add_time", "use_time"):
        assert node.ints(f"cxtp.ipsec.sa.cur.{name}") == [getattr(sa.current, name) for sa in sas]
    # lifetimes: every SA's, then every policy's (document order)
    lifetimes = [sa.lifetime for sa in sas] + [p.lifetime for p in policies]
    for f in dataclasses.fields(LifetimeConfig):
        assert node.ints(f"cxtp.ipsec.lifetime.{f.name}") == [getattr(lifetime, f.name) for lifetime in lifetimes]
    # selectors: every SA's, then every policy's
    selectors = [sa.selector for sa in sas] + [p.selector for p in policies]
    assert node.shows(*_address_fields("cxtp.ipsec.sel.daddr")) == [s.daddr for s in selectors]
    assert node.shows(*_address_fields("cxtp.ipsec.sel.saddr")) == [s.saddr for s in selectors]
    for name in ("dport", "dport_mask", "sport", "sport_mask", "family", "prefixlen_d", "prefixlen_s", "proto",
                 "ifindex", "user"):
        assert node.ints(f"cxtp.ipsec.sel.{name}") == [getattr(s, name) for s in selectors], name
    # policies and templates
    assert node.ints("cxtp.ipsec.policy.dir") == [p.dir for p in policies]
    assert node.ints("cxtp.ipsec.policy.action") == [p.action for p in policies]
    assert node.ints("cxtp.ipsec.policy.priority") == [p.priority for p in policies]
    assert node.ints("cxtp.ipsec.policy.index") == [p.index for p in policies]
    assert node.ints("cxtp.ipsec.policy.flags") == [p.flags for p in policies]
    assert node.ints("cxtp.ipsec.policy.share") == [p.share for p in policies]
    assert node.ints("cxtp.ipsec.policy.if_id") == [p.if_id for p in policies]
    assert node.ints("cxtp.ipsec.policy.tmpl_count") == [len(p.templates) for p in policies]
    assert node.ints("cxtp.ipsec.policy.mark_present") == [p.mark is not None for p in policies]
    assert node.ints("cxtp.ipsec.policy.mark_value") == [(p.mark or Mark()).value for p in policies]
    assert node.shows(*_address_fields("cxtp.ipsec.tmpl.daddr")) == [t.daddr for t in templates]
    assert node.shows(*_address_fields("cxtp.ipsec.tmpl.saddr")) == [t.saddr for t in templates]
    for name in ("spi", "reqid", "aalgos", "ealgos", "calgos", "family", "proto", "mode", "share", "optional"):
        assert node.ints(f"cxtp.ipsec.tmpl.{name}") == [getattr(t, name) for t in templates], name


# --- the capture of well-formed messages ------------------------------------------------------------

@dataclasses.dataclass
class Case:
    name: str
    carrier: str
    wires: list[bytes]  # the CXTP messages this frame must show, in order


@pytest.fixture(scope="module")
def well_formed(tshark, tmp_path_factory):
    """Every message over every carrier of its address family, plus TCP streams that put two
    messages in one segment and split one message across segments; dissected once."""
    packets, cases = [], []
    tcp_port = 40000
    for name, message in all_messages():
        wire = message.encode()
        ipv4 = message.ipv4
        packets.append(icmp_packet(wire, ipv4))
        cases.append(Case(name, "ICMP" if ipv4 else "ICMPv6", [wire]))
        packets.append(sctp_packet(wire, ipv4))
        cases.append(Case(name, "SCTP", [wire]))
        tcp_port += 1
        packets.append(TcpStream(ipv4, tcp_port).segment(wire))
        cases.append(Case(name, "TCP", [wire]))
    # TCP: two messages in one segment, then one message split over three segments
    stream = TcpStream(False, 45000)
    first, second = CTC(MN6).encode(), CTDR(MN6, True, (StatusEntry(IPSEC_CONTEXT_FPT, 0),)).encode()
    packets.append(stream.segment(first + second))
    cases.append(Case("tcp-two-in-one", "TCP", [first, second]))
    big = CTD(MN6, (ContextDataBlock(IPSEC_CONTEXT_FPT, ipsec_contexts()["attach-aes-cbc-sha256"].encode()),)).encode()
    for part, chunk in enumerate((big[:3], big[3:700], big[700:])):
        packets.append(stream.segment(chunk))
        cases.append(Case(f"tcp-split-{part}", "TCP", [big] if part == 2 else []))
    dissected = dissect(tshark, packets, tmp_path_factory.mktemp("wireshark"), "well-formed")
    return list(zip(cases, dissected))


def test_every_message_type_is_in_the_capture(well_formed):
    types = {cxtp.decode(wire).TYPE for case, _ in well_formed for wire in case.wires}
    assert types == set(cxtp.MessageType)
    carriers = {case.carrier for case, _ in well_formed}
    assert carriers == {"ICMP", "ICMPv6", "SCTP", "TCP"}


def test_every_field_matches_the_project_decoder(well_formed):
    checked = 0
    for case, packet in well_formed:
        assert_dissector_did_not_fail(packet)
        messages = cxtp_messages(packet)
        assert len(messages) == len(case.wires), f"{case.name} over {case.carrier}"
        for node, wire in zip(messages, case.wires):
            try:
                check_message(node, wire)
            except AssertionError as error:
                raise AssertionError(f"{case.name} over {case.carrier}: {error}") from error
            checked += 1
    assert checked >= 3 * len(all_messages())


def test_well_formed_messages_have_no_error_expert_info(well_formed):
    """No CXTP-level error; IPsec data flagged exactly where the project's IPsec decoders refuse it
    (the codec vector's CTAA carries 4 octets under FPT 0x8001: no list of SPI changes)."""
    allowed = {"cxtp.expert.key_material", "cxtp.expert.zero_token", "cxtp.expert.status_failure",
               "cxtp.expert.ipsec.malformed"}
    flagged = 0
    for case, packet in well_formed:
        assert experts(packet) <= allowed, f"{case.name} over {case.carrier}: {experts(packet)}"
        refused = any(ipsec_data_refused(wire) for wire in case.wires)
        assert ("cxtp.expert.ipsec.malformed" in experts(packet)) == refused, f"{case.name} over {case.carrier}"
        flagged += refused
        if any(isinstance(cxtp.decode(wire), PCTD) for wire in case.wires):
            assert "cxtp.expert.key_material" in experts(packet)


def test_icmp_wrapper_fields_and_checksum(well_formed):
    for case, packet in well_formed:
        if not case.carrier.startswith("ICMP"):
            continue
        ipv4 = case.carrier == "ICMP"
        assert packet.ints("cxtp.icmp.type") == [41 if ipv4 else 150]
        assert packet.ints("cxtp.icmp.code") == [0]
        assert packet.ints("cxtp.icmp.subtype") == [1]
        assert packet.ints("cxtp.icmp.checksum.status") == [1], case.name  # Good
        assert "icmpv6" not in {node.name for node in packet.children}  # not misread as FMIPv6


def test_ipsec_context_of_an_attach(well_formed):
    """The context the pAR sends (initial_contexts: 2 SAs, 3 policies), field by field."""
    _, ar_side = initial_contexts(MN6, PAR6, HA6, "aes-cbc-sha256", 0x102, 0x101)
    packet = next(p for c, p in well_formed if c.name == "ctd-ipsec-attach-aes-cbc-sha256" and c.carrier == "SCTP")
    (node,) = cxtp_messages(packet)
    assert node.ints("cxtp.ipsec.sa.spi") == [0x102, 0x101]
    assert node.shows("cxtp.ipsec.alg.name") == ["cbc(aes)", "hmac(sha256)"] * 2
    assert node.ints("cxtp.ipsec.alg.key_length") == [16, 32] * 2
    assert node.shows("cxtp.ipsec.sel.saddr")[2:] == [HA6, MN6, MN6]  # the policies' inner addresses
    assert node.shows("cxtp.ipsec.policy.dir") == ["1", "0", "2"]  # out, in, fwd
    assert node.shows("cxtp.ipsec.tmpl.daddr") == [MN6, PAR6, PAR6]
    assert len(ar_side.encode()) == 1296  # docs/ipsec-context.md


def test_display_filters_select_the_messages(tshark, tmp_path):
    """The field names of docs/wireshark.md work in display filters."""
    contexts = ipsec_contexts()
    packets = [
        icmp_packet(CTAR(MN6, NAR6, 0x1234, bytes(4)).encode(), False),
        sctp_packet(PCTD(MN6, KEY,
                         (ContextDataBlock(IPSEC_CONTEXT_FPT, contexts["attach-aes-cbc-sha256"].encode()),)).encode(),
                    False),
        sctp_packet(CTDR("2001:db8:1::200", True, ()).encode(), False),
    ]
    capture = tmp_path / "filters.pcap"
    wrpcap(str(capture), packets)
    environment = {**os.environ, "WIRESHARK_CONFIG_DIR": str(tmp_path)}

    def frames(display_filter: str) -> list[int]:
        result = subprocess.run([tshark, "-X", f"lua_script:{DISSECTOR}", "-r", str(capture), "-Y", display_filter,
                                 "-T", "fields", "-e", "frame.number"], capture_output=True, text=True, env=environment)
        assert result.returncode == 0, result.stderr
        return [int(line) for line in result.stdout.split()]

    assert frames("cxtp") == [1, 2, 3]
    assert frames("cxtp.type == 1") == [1]
    assert frames('cxtp.type == "PCTD"') == [2]
    assert frames(f"cxtp.mn_prev == {MN6}") == [1, 2]
    assert frames("cxtp.seq == 0x1234") == [1]
    assert frames("cxtp.token == 00:00:00:00") == [1]
    assert frames("cxtp.cdb.fpt == 0x8001") == [2]
    assert frames("cxtp.ipsec.sa.spi == 0x102") == [2]
    assert frames('cxtp.ipsec.alg.name == "hmac(sha256)"') == [2]
    assert frames(f"cxtp.ipsec.sel.daddr == {HA6}") == [2]
    assert frames("cxtp.flags.s == 1") == [3]
    assert frames("cxtp.icmp.subtype == 1") == [1]


def test_every_field_and_expert_is_documented(tshark, tmp_path):
    """docs/wireshark.md names every display filter field the dissector registers."""
    environment = {**os.environ, "WIRESHARK_CONFIG_DIR": str(tmp_path)}
    result = subprocess.run([tshark, "-G", "fields", "-X", f"lua_script:{DISSECTOR}"], capture_output=True,
                            text=True, env=environment)
    fields = {line.split("\t")[2] for line in result.stdout.splitlines()
              if line.startswith("F\t") and line.split("\t")[2].startswith("cxtp.")}
    assert len(fields) > 150
    documented = set(re.findall(r"`(cxtp\.[a-z0-9_.]+)`", (REPOSITORY / "docs" / "wireshark.md").read_text()))
    assert sorted(fields - documented) == []
    assert sorted(documented - fields - {"cxtp.decode"}) == []  # the Python function, also named there


# --- malformed inputs ------------------------------------------------------------------------------

def _ipsec_ctd(context_bytes: bytes) -> bytes:
    return CTD(MN6, (ContextDataBlock(IPSEC_CONTEXT_FPT, context_bytes),)).encode()


def _corrupt(data: bytes, offset: int, value: bytes) -> bytes:
    return data[:offset] + value + data[offset + len(value):]


def malformed_cases() -> list[tuple[str, str, bytes, set[str]]]:
    """(name, carrier, CXTP octets, expert fields that must appear)."""
    ctar = CTAR(MN6, NAR6, 0x1A2B3C4D, bytes.fromhex("69619059")).encode()
    ctc = CTC(MN6).encode()
    ctd = CTD(MN6, (ContextDataBlock(1, bytes(24)),)).encode()
    ctaa = CTAA(MN6, (StatusEntry(IPSEC_CONTEXT_FPT, 0, bytes(8)),)).encode()
    cases = [
        ("ctar-truncated", "SCTP", ctar[:30], {"cxtp.expert.bad_length", "cxtp.expert.truncated"}),
        ("ctar-truncated-icmp", "ICMPv6", ctar[:30], {"cxtp.expert.bad_length", "cxtp.expert.truncated"}),
        ("header-truncated", "SCTP", ctar[:3], {"cxtp.expert.truncated"}),
        ("length-too-short", "SCTP", ctc + bytes(4), {"cxtp.expert.bad_length"}),
        ("length-below-header", "SCTP", _corrupt(ctc, 2, b"\x00\x02"), {"cxtp.expert.bad_length"}),
        ("bad-version", "SCTP", bytes([0x46]) + ctc[1:], {"cxtp.expert.bad_version"}),
        ("unknown-type", "SCTP", bytes([0x29]) + ctc[1:], {"cxtp.expert.unknown_type"}),
        ("trailing-after-ctc", "SCTP", _corrupt(ctc + bytes(4), 2, (len(ctc) + 4).to_bytes(2, "big")),
         {"cxtp.expert.trailing"}),
        ("cdb-overrun", "SCTP", _corrupt(ctd, 24 + 2, b"\x0a"), {"cxtp.expert.cdb_overrun"}),
        ("cdb-p-with-length-0", "SCTP",
         _corrupt(CTAR(MN6, NAR6, 1, bytes(4), (ContextDataBlock(1, header_only=True),)).encode(), 44 + 3, b"\x80"),
         {"cxtp.expert.cdb_p_zero_length"}),
        ("status-data-overrun", "SCTP", _corrupt(ctaa, 20 + 3, b"\x05"), {"cxtp.expert.status_overrun"}),
        ("pctd-key-overrun", "SCTP", _corrupt(PCTD(MN6, KEY).encode(), 26, b"\x00\x40"), {"cxtp.expert.truncated"}),
        ("ctaa-spi-changes-odd", "SCTP", CTAA(MN6, (StatusEntry(IPSEC_CONTEXT_FPT, 0, bytes(4)),)).encode(),
         {"cxtp.expert.ipsec.malformed"}),
    ]
    return cases


def ipsec_malformed_cases() -> list[tuple[str, bytes]]:
    """Corrupted IPsec contexts, each refused by IpsecContext.decode (checked in the test)."""
    context = ipsec_contexts()["attach-aes-cbc-sha256"].encode()
    rich = ipsec_contexts()["every-field"].encode()
    sa_length = int.from_bytes(context[16:18], "big")
    second_sa = 16 + sa_length
    first_policy = 16 + 2 * sa_length
    algorithm = 16 + 64 + 56 + 64 + 32 + 24 + 4  # first SA's first algorithm (1 bitmap word)
    return [
        ("version", _corrupt(context, 0, b"\x02")),
        ("reserved-flags", _corrupt(context, 1, b"\x01")),
        ("sa-record-too-long", _corrupt(context, 16, (sa_length + 8).to_bytes(2, "big"))),
        ("sa-record-too-short", _corrupt(context, 16, b"\x00\x20")),
        ("sa-family", _corrupt(context, second_sa + 2, b"\x00\x07")),
        ("algorithm-kind", _corrupt(context, algorithm, b"\x09")),
        ("algorithm-name-length-0", _corrupt(context, algorithm + 1, b"\x00")),
        ("replay-flags", _corrupt(context, 16 + 64 + 56 + 64 + 32 + 20, b"\x80")),
        ("policy-length", _corrupt(context, first_policy, b"\x00\x10")),
        ("policy-direction", _corrupt(context, first_policy + 2, b"\x07")),
        ("template-family", _corrupt(context, first_policy + 28 + 56 + 64 + 52, b"\x00\x05")),
        ("too-few-policies", context[:-208]),
        ("stray-octets", context + bytes(8) + b"\x01"),
        ("rich-truncated", rich[:300]),
    ]


@pytest.fixture(scope="module")
def malformed(tshark, tmp_path_factory):
    packets, expectations = [], []
    for name, carrier, octets, wanted in malformed_cases():
        if carrier == "SCTP":
            packets.append(sctp_packet(octets, False))
        else:
            packets.append(icmp_packet(octets, False))
        expectations.append((name, octets, wanted))
    for name, context in ipsec_malformed_cases():
        octets = _ipsec_ctd(context)
        packets.append(sctp_packet(octets, False))
        expectations.append((f"ipsec-{name}", octets, {"cxtp.expert.ipsec.malformed"}))
    wrapper = CTAR(MN6, PAR6, 5, bytes(4)).encode()
    wrapper_cases = [
        ("icmp-bad-checksum", icmp_packet(wrapper, False, checksum_delta=1), {"cxtp.expert.icmp.bad_checksum"}),
        ("icmpv4-bad-checksum", icmp_packet(CTAR(MN4, AR4, 5, bytes(4)).encode(), True, checksum_delta=1),
         {"cxtp.expert.icmp.bad_checksum"}),
        ("icmp-hop-limit-64", icmp_packet(wrapper, False, hop_limit=64), {"cxtp.expert.icmp.hop_limit"}),
        ("icmp-subtype-card", icmp_packet(wrapper, False, subtype=0), {"cxtp.expert.icmp.not_cxtp"}),
        ("icmp-header-truncated",
         Ether(src=MAC_A, dst=MAC_B) / IPv6(src=MN6, dst=PAR6, nh=58, hlim=255) / Raw(bytes([150, 0, 0, 0, 1])),
         {"cxtp.expert.truncated"}),
    ]
    for name, packet, wanted in wrapper_cases:
        packets.append(packet)
        expectations.append((name, None, wanted))
    dissected = dissect(tshark, packets, tmp_path_factory.mktemp("wireshark"), "malformed")
    return list(zip(expectations, dissected))


def test_malformed_inputs_show_expert_info(malformed):
    for (name, _octets, wanted), packet in malformed:
        assert_dissector_did_not_fail(packet)
        assert wanted <= experts(packet), f"{name}: wanted {wanted}, got {experts(packet)}"


def test_malformed_cxtp_is_malformed_for_the_project_decoder_too(malformed):
    for (_name, octets, wanted), _packet in malformed:
        if octets is None or not wanted & CXTP_ERRORS:
            continue
        with pytest.raises(DecodeError):
            cxtp.decode(octets)


def test_corrupted_ipsec_contexts_are_refused_by_the_project_decoder_too(malformed):
    assert len(ipsec_malformed_cases()) == sum(1 for (name, _, _), _ in malformed if name.startswith("ipsec-"))
    for _name, context in ipsec_malformed_cases():
        with pytest.raises(ContextDecodeError):
            IpsecContext.decode(context)
        cxtp.decode(_ipsec_ctd(context))  # the CXTP message around it is well formed


def test_mutated_messages_never_break_the_dissector_and_agree_with_decode(tshark, tmp_path):
    """Truncations and random byte flips of every message: the dissector never raises a Lua error,
    and it reports a CXTP-level error exactly when cxtp.decode raises DecodeError."""
    generator = random.Random(4067)
    samples = []
    for _name, message in all_messages():
        wire = message.encode()
        for _ in range(4):
            mutated = bytearray(wire)
            for _ in range(generator.randint(1, 3)):
                position = generator.randrange(len(mutated))
                mutated[position] = generator.randrange(256)
            samples.append(bytes(mutated))
        samples.append(wire[:generator.randrange(1, len(wire))])
        samples.append(wire + bytes(generator.randrange(1, 9)))
    packets = [sctp_packet(sample, False) for sample in samples]
    dissected = dissect(tshark, packets, tmp_path, "mutated")
    disagreements = []
    for sample, packet in zip(samples, dissected):
        assert_dissector_did_not_fail(packet)
        try:
            cxtp.decode(sample)
            refused = False
        except DecodeError:
            refused = True
        flagged = bool(experts(packet) & CXTP_ERRORS)
        if refused != flagged:
            disagreements.append((sample.hex(), refused, sorted(experts(packet))))
    assert disagreements == []


# --- ESP decryption with the profile ----------------------------------------------------------------

ESP_CASES = [
    # (scapy cipher, scapy auth, the SA's algorithms as the ipsec package holds them)
    ("AES-CBC", "SHA2-256-128", (Algorithm("crypt", "cbc(aes)", bytes(range(16)), 128),
                                 Algorithm("auth_trunc", "hmac(sha256)", bytes(range(32, 64)), 128))),
    ("AES-GCM", None, (Algorithm("aead", "rfc4106(gcm(aes))", bytes(range(64, 84)), 128),)),
    ("DES", "HMAC-SHA1-96", (Algorithm("crypt", "cbc(des)", bytes(range(8)), 64),
                             Algorithm("auth_trunc", "hmac(sha1)", bytes(range(100, 120)), 96))),
]


def esp_packets():
    """Tunnel-mode ESP from the MN to its AR (inner MN -> HA UDP), one SA per profile algorithm."""
    packets, sas = [], []
    for index, (cipher, auth, algorithms) in enumerate(ESP_CASES):
        spi = 0x1000 + index
        keys = {a.kind: a.key for a in algorithms}
        arguments = dict(spi=spi, crypt_algo=cipher, crypt_key=keys.get("crypt", keys.get("aead")),
                         tunnel_header=IPv6(src=MN6, dst=PAR6))
        if auth:
            arguments.update(auth_algo=auth, auth_key=keys["auth_trunc"])
        scapy_sa = ScapySa(ESP, **arguments)
        for sequence in (1, 2):
            inner = IPv6(src=MN6, dst=HA6) / UDP(sport=40000, dport=7000 + index) / Raw(b"probe %d" % sequence)
            packets.append(Ether(src=MAC_A, dst=MAC_B) / scapy_sa.encrypt(inner, seq_num=sequence))
        sas.append(SecurityAssociation(daddr=PAR6, saddr=MN6, spi=spi, algorithms=algorithms))
    return packets, sas


def esp_fields(tshark: str, command: list[str], environment: dict) -> list[tuple[str, ...]]:
    result = subprocess.run(command + ["-T", "fields", "-E", "separator=;", "-e", "esp.spi", "-e", "esp.icv_good",
                                       "-e", "esp.icv_bad", "-e", "udp.dstport", "-e", "ipv6.dst"],
                            capture_output=True, text=True, env=environment)
    assert result.returncode == 0, result.stderr
    return [tuple(line.split(";")) for line in result.stdout.splitlines()]


def test_profile_decrypts_esp_and_reports_a_good_icv(tshark, tmp_path):
    packets, sas = esp_packets()
    capture = tmp_path / "esp.pcap"
    wrpcap(str(capture), packets)
    profile = wireshark.write_profile(tmp_path / "wireshark", sas)
    assert (profile.profile_dir / "preferences").read_text().count(": TRUE") == 2
    assert len(profile.entries()) == len(sas)
    rows = esp_fields(tshark, profile.tshark_command(capture), profile.environment())
    assert len(rows) == len(packets)
    for row, index in zip(rows, [0, 0, 1, 1, 2, 2]):
        spi, good, bad, port, destinations = row
        assert int(spi, 16) == 0x1000 + index
        assert (good, bad) == ("1", "0"), row  # ICV checked and correct
        assert port == str(7000 + index)  # decrypted: the inner UDP header is read
        assert HA6 in destinations.split(",")


def test_without_the_profile_nothing_is_decrypted(tshark, tmp_path):
    packets, _ = esp_packets()
    capture = tmp_path / "esp.pcap"
    wrpcap(str(capture), packets)
    environment = {**os.environ, "WIRESHARK_CONFIG_DIR": str(tmp_path)}
    rows = esp_fields(tshark, [tshark, "-r", str(capture)], environment)
    assert all(port == "" for _, _, _, port, _ in rows)


def test_tshark_options_decrypt_without_a_profile(tshark, tmp_path):
    packets, sas = esp_packets()
    capture = tmp_path / "esp.pcap"
    wrpcap(str(capture), packets)
    environment = {**os.environ, "WIRESHARK_CONFIG_DIR": str(tmp_path)}
    rows = esp_fields(tshark, [tshark, "-r", str(capture), *wireshark.tshark_options(sas)], environment)
    assert [(good, bad) for _, good, bad, _, _ in rows] == [("1", "0")] * len(packets)


def test_wrong_key_gives_a_bad_icv(tshark, tmp_path):
    packets, sas = esp_packets()
    capture = tmp_path / "esp.pcap"
    wrpcap(str(capture), packets[:2])
    algorithms = (sas[0].algorithms[0], dataclasses.replace(sas[0].algorithms[1], key=bytes(32)))
    profile = wireshark.write_profile(tmp_path / "wireshark", [dataclasses.replace(sas[0], algorithms=algorithms)])
    rows = esp_fields(tshark, profile.tshark_command(capture), profile.environment())
    assert [(good, bad) for _, good, bad, _, _ in rows] == [("0", "1")] * 2


def test_profile_loads_the_cxtp_dissector(tshark, tmp_path):
    """The profile alone (its init.lua) dissects CXTP: no -X needed; -X as well is harmless."""
    capture = tmp_path / "ctar.pcap"
    wrpcap(str(capture), [icmp_packet(CTAR(MN6, NAR6, 7, bytes(4)).encode(), False)])
    profile = wireshark.write_profile(tmp_path / "wireshark")
    for extra in ([], ["-X", f"lua_script:{profile.dissector}"]):
        result = subprocess.run(profile.tshark_command(capture, *extra, "-T", "fields", "-e", "cxtp.type"),
                                capture_output=True, text=True, env=profile.environment())
        assert result.returncode == 0 and result.stdout.split() == ["1"], (result.stdout, result.stderr)
    assert profile.shell_command(capture) == f"WIRESHARK_CONFIG_DIR={profile.config_dir} wireshark -C cxtp {capture}"


# --- the esp_sa writer (pure) --------------------------------------------------------------------------

def test_esp_sa_lines_for_the_testbed_profiles():
    names = {}
    for profile in ("aes-cbc-sha256", "aes-gcm", "des-cbc"):
        mn_side, _ = initial_contexts(MN6, PAR6, HA6, profile, 0x102, 0x101)
        entry = wireshark.esp_sa_entry(mn_side.sas[0])
        assert entry.key == ("IPv6", PAR6, MN6, 0x102)
        assert wireshark.EspSaEntry.parse(entry.line()) == entry
        names[profile] = (entry.encryption, entry.authentication)
    assert names == {"aes-cbc-sha256": ("AES-CBC [RFC3602]", "HMAC-SHA-256-128 [RFC4868]"),
                     "aes-gcm": ("AES-GCM with 16 octet ICV [RFC4106]", "NULL"),
                     "des-cbc": ("DES-CBC [RFC2405]", "HMAC-SHA-1-96 [RFC2404]")}
    line = wireshark.esp_sa_entry(SecurityAssociation(daddr=AR4, saddr=MN4, spi=0x5091A, family=AF_INET,
                                                      algorithms=ESP_CASES[0][2])).line()
    assert line == ('"IPv4","192.0.2.10","192.0.2.1","0x0005091a","AES-CBC [RFC3602]",'
                    '"0x000102030405060708090a0b0c0d0e0f","HMAC-SHA-256-128 [RFC4868]",'
                    '"0x202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f"')


def test_add_sas_deduplicates_replaces_rekeyed_and_skips_what_wireshark_cannot_use(tmp_path):
    mn_side, _ = initial_contexts(MN6, PAR6, HA6, "aes-cbc-sha256", 0x102, 0x101)
    profile = wireshark.write_profile(tmp_path / "w", mn_side.sas)
    assert len(profile.entries()) == 2
    assert wireshark.add_sas(profile, mn_side.sas) == wireshark.AddResult(0, 0, ())
    rekeyed, _ = initial_contexts(MN6, PAR6, HA6, "aes-cbc-sha256", 0x102, 0x101)  # fresh random keys
    moved, _ = initial_contexts("2001:db8:2::100", NAR6, HA6, "aes-cbc-sha256", 0x102, 0x101)
    ah = dataclasses.replace(mn_side.sas[0], proto=51, spi=0x999)
    odd = dataclasses.replace(mn_side.sas[0], spi=0x998, algorithms=(Algorithm("crypt", "cbc(serpent)", bytes(16)),))
    result = wireshark.add_sas(profile, [rekeyed.sas[0], *moved.sas, ah, odd])
    assert (result.added, result.replaced, len(result.skipped)) == (2, 1, 2)
    entries = profile.entries()
    assert [e.key[1:] for e in entries] == [(PAR6, MN6, 0x102), (MN6, PAR6, 0x101),
                                            (NAR6, "2001:db8:2::100", 0x102), ("2001:db8:2::100", NAR6, 0x101)]
    assert entries[0].encryption_key == rekeyed.sas[0].algorithms[0].key
    # write_profile again keeps what was exported
    assert len(wireshark.write_profile(profile.config_dir).entries()) == 4


def test_unknown_authentication_of_a_known_length_still_decrypts():
    sa = SecurityAssociation(daddr=PAR6, saddr=MN6, spi=0x10, algorithms=(
        Algorithm("crypt", "cbc(aes)", bytes(16)), Algorithm("auth_trunc", "hmac(sha512)", bytes(64), 128)))
    entry = wireshark.esp_sa_entry(sa)
    assert (entry.encryption, entry.authentication) == ("AES-CBC [RFC3602]", "ANY 128 bit authentication [no checking]")
    legacy = dataclasses.replace(sa, algorithms=(Algorithm("auth", "hmac(sha256)", bytes(32)),))
    assert wireshark.esp_sa_entry(legacy).authentication == "HMAC-SHA-256-96 [draft-ietf-ipsec-ciph-sha-256-00]"
    with pytest.raises(wireshark.UnsupportedSa):
        wireshark.esp_sa_entry(
            dataclasses.replace(sa, algorithms=(Algorithm("auth_trunc", "hmac(sha1)", bytes(20), 160),)))
