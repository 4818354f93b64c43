"""Mobile IPv6 Binding Update / Binding Acknowledgement (RFC 6275 §6.1.7, §6.1.8), through scapy.

The paper's traffic runs between the MN's care-of address and the HA (inner header MN CoA <-> HA),
so the HA's binding cache maps the MN's identity to its current care-of address and the HA sends
to that address. The MN identifies itself with the Mobile Node Identifier option (RFC 4283,
subtype 1, NAI) instead of a Home Address destination option: the testbed gives the MN no home
address, and a raw Mobility Header socket cannot carry the destination option without the
kernel's MIPv6 support on every path. The messages are otherwise RFC 6275's, with the kernel
computing the MH checksum (IPV6_CHECKSUM at offset 4).
"""

from __future__ import annotations

import dataclasses
import logging
import socket

from scapy.layers.inet6 import MIP6MH_BA, MIP6MH_BU, MIP6OptMNID

# scapy warns that it cannot compute the MH checksum without an IPv6 layer: the kernel does.
logging.getLogger("scapy.runtime").setLevel(logging.ERROR)

IPPROTO_MH = 135
MH_TYPE_BU = 5
MH_TYPE_BA = 6
MH_CHECKSUM_OFFSET = 4
IPV6_CHECKSUM = 7  # <linux/in6.h>
BA_STATUS_ACCEPTED = 0
BA_STATUS_REASON_UNSPECIFIED = 128
INITIAL_BINDACK_TIMEOUT = 1.0  # RFC 6275 §13: first BU retransmission after 1 s
MAX_BINDACK_TIMEOUT = 32.0
LIFETIME_UNIT_S = 4  # RFC 6275 §6.1.7: lifetime in units of 4 seconds


class MobilityDecodeError(ValueError):
    """A Mobility Header that is not a well-formed BU or BA."""

    source: str | None = None


@dataclasses.dataclass(frozen=True)
class BindingUpdate:
    sequence: int
    identity: str
    lifetime_s: int = 600
    acknowledge: bool = True

    def encode(self) -> bytes:
        flags = "AH" if self.acknowledge else "H"
        message = MIP6MH_BU(seq=self.sequence, flags=flags, mhtime=self.lifetime_s // LIFETIME_UNIT_S,
                            options=[MIP6OptMNID(id=self.identity.encode())])
        return bytes(message)


@dataclasses.dataclass(frozen=True)
class BindingAck:
    sequence: int
    status: int = BA_STATUS_ACCEPTED
    lifetime_s: int = 600

    def encode(self) -> bytes:
        return bytes(MIP6MH_BA(status=self.status, flags=0, seq=self.sequence,
                               mhtime=self.lifetime_s // LIFETIME_UNIT_S))


def decode(data: bytes) -> BindingUpdate | BindingAck:
    """Decode a Mobility Header message (as received on a raw IPPROTO_MH socket)."""
    if len(data) < 8:
        raise MobilityDecodeError(f"mobility header too short ({len(data)} octets)")
    if (data[1] + 1) * 8 != len(data):
        raise MobilityDecodeError(f"header length {data[1]} does not match {len(data)} octets")
    mh_type = data[2]
    try:
        if mh_type == MH_TYPE_BU:
            message = MIP6MH_BU(data)
            identity = next((bytes(option.id).decode() for option in message.options
                             if isinstance(option, MIP6OptMNID)), None)
            if identity is None:
                raise MobilityDecodeError("binding update without a Mobile Node Identifier option")
            return BindingUpdate(sequence=message.seq, identity=identity,
                                 lifetime_s=message.mhtime * LIFETIME_UNIT_S, acknowledge="A" in message.flags)
        if mh_type == MH_TYPE_BA:
            ack = MIP6MH_BA(data)
            return BindingAck(sequence=ack.seq, status=ack.status, lifetime_s=ack.mhtime * LIFETIME_UNIT_S)
    except MobilityDecodeError:
        raise
    except Exception as error:  # scapy raises a variety of errors on truncated input
        raise MobilityDecodeError(f"malformed mobility header: {error}") from None
    raise MobilityDecodeError(f"unsupported mobility header type {mh_type}")


def receive(sock: socket.socket) -> tuple[BindingUpdate | BindingAck, str] | None:
    """The next message on a raw MH socket with its source; None when nothing is waiting.

    A malformed message raises :class:`MobilityDecodeError` whose ``source`` names the sender."""
    try:
        data, source = sock.recvfrom(2048)
    except BlockingIOError:
        return None
    try:
        return decode(data), source[0]
    except MobilityDecodeError as error:
        error.source = source[0]
        raise


def mobility_socket() -> socket.socket:
    """A raw Mobility Header socket; the kernel fills and checks the MH checksum."""
    sock = socket.socket(socket.AF_INET6, socket.SOCK_RAW, IPPROTO_MH)
    sock.setsockopt(socket.IPPROTO_IPV6, IPV6_CHECKSUM, MH_CHECKSUM_OFFSET)
    sock.setblocking(False)
    return sock


def sequence_newer(candidate: int, current: int) -> bool:
    """RFC 6275 §9.5.1: sequence numbers compare modulo 2**16."""
    return 0 < ((candidate - current) & 0xFFFF) < 0x8000


class BindingCache:
    """The HA's binding cache: identity -> (care-of address, last sequence number)."""

    def __init__(self) -> None:
        self.entries: dict[str, tuple[str, int]] = {}

    def update(self, update: BindingUpdate, care_of: str) -> int:
        """Apply a BU from ``care_of``; return the BA status."""
        current = self.entries.get(update.identity)
        if current is not None and not sequence_newer(update.sequence, current[1]) and update.sequence != current[1]:
            return 135  # RFC 6275: Sequence number out of window
        if update.lifetime_s == 0:
            self.entries.pop(update.identity, None)
        else:
            self.entries[update.identity] = (care_of, update.sequence)
        return BA_STATUS_ACCEPTED

    def care_of(self, identity: str) -> str | None:
        entry = self.entries.get(identity)
        return entry[0] if entry else None
