"""ICMP "Experimental Mobility" wrapper of MN-AR messages (RFC 4067 §3.2, RFC 4065 §8).

Layout: Type (150 / 41) | Code 0 | Checksum | Subtype 1 | 3 Reserved | CXTP message.
For ICMPv6 the kernel fills the checksum on raw ICMPv6 sockets, so ``encode`` may leave it 0;
:func:`icmpv6_checksum` computes it with the pseudo-header for tests and raw captures.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from . import constants as c
from .errors import DecodeError, ProtocolError
from .messages import AnyMessage, decode

ICMP_HEADER_LENGTH = 8
_IPPROTO_ICMPV6 = 58


def internet_checksum(data: bytes) -> int:
    """RFC 1071 one's-complement sum."""
    if len(data) % 2:
        data += b"\0"
    total = sum(int.from_bytes(data[i:i + 2], "big") for i in range(0, len(data), 2))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def icmpv6_checksum(source: str, destination: str, icmp_message: bytes) -> int:
    """ICMPv6 checksum over the RFC 8200 §8.1 pseudo-header; the checksum field must be 0 or is ignored."""
    body = icmp_message[:2] + b"\0\0" + icmp_message[4:]
    pseudo = (ipaddress.IPv6Address(source).packed + ipaddress.IPv6Address(destination).packed
              + len(body).to_bytes(4, "big") + bytes(3) + bytes((_IPPROTO_ICMPV6,)))
    return internet_checksum(pseudo + body)


def icmpv4_checksum(icmp_message: bytes) -> int:
    return internet_checksum(icmp_message[:2] + b"\0\0" + icmp_message[4:])


@dataclass(frozen=True)
class ExperimentalMobilityMessage:
    """One ICMP Experimental Mobility message; ``payload`` is the encoded CXTP message."""

    payload: bytes
    ipv4: bool = False
    subtype: int = c.ICMP_SUBTYPE_CXTP
    checksum: int = 0

    @property
    def icmp_type(self) -> int:
        return c.ICMPV4_TYPE_EXPERIMENTAL_MOBILITY if self.ipv4 else c.ICMPV6_TYPE_EXPERIMENTAL_MOBILITY

    def encode(self, source: str | None = None, destination: str | None = None) -> bytes:
        """ICMPv4: checksum always filled. ICMPv6: filled only when both addresses are given."""
        if not 0 <= self.subtype <= 0xFF:
            raise ProtocolError("subtype must fit in one octet")
        raw = bytearray(bytes((self.icmp_type, c.ICMP_CODE_CXTP)) + self.checksum.to_bytes(2, "big")
                        + bytes((self.subtype, 0, 0, 0)) + bytes(self.payload))
        if self.ipv4:
            raw[2:4] = icmpv4_checksum(bytes(raw)).to_bytes(2, "big")
        elif source is not None and destination is not None:
            raw[2:4] = icmpv6_checksum(source, destination, bytes(raw)).to_bytes(2, "big")
        return bytes(raw)

    @classmethod
    def decode(cls, data: bytes, ipv4: bool = False) -> ExperimentalMobilityMessage:
        data = bytes(data)
        if len(data) < ICMP_HEADER_LENGTH:
            raise DecodeError("ICMP message shorter than its 8-octet header")
        expected = c.ICMPV4_TYPE_EXPERIMENTAL_MOBILITY if ipv4 else c.ICMPV6_TYPE_EXPERIMENTAL_MOBILITY
        if data[0] != expected:
            raise DecodeError(f"ICMP type {data[0]} is not Experimental Mobility ({expected})")
        if data[1] != c.ICMP_CODE_CXTP:
            raise DecodeError(f"ICMP code {data[1]} is not 0")
        return cls(data[8:], ipv4, data[4], int.from_bytes(data[2:4], "big"))


def wrap(message: AnyMessage | bytes, ipv4: bool | None = None, source: str | None = None,
         destination: str | None = None) -> bytes:
    """Encode a CXTP message (or its bytes) inside the ICMP wrapper."""
    payload = message if isinstance(message, (bytes, bytearray)) else message.encode()
    if ipv4 is None:
        ipv4 = False if isinstance(message, (bytes, bytearray)) else message.ipv4
    return ExperimentalMobilityMessage(bytes(payload), ipv4).encode(source, destination)


def unwrap(data: bytes, ipv4: bool = False) -> bytes:
    """CXTP payload of an ICMP message; DecodeError unless it is subtype 1 (CXTP)."""
    icmp = ExperimentalMobilityMessage.decode(data, ipv4)
    if icmp.subtype != c.ICMP_SUBTYPE_CXTP:
        raise DecodeError(f"Experimental Mobility subtype {icmp.subtype} is not CXTP (1)")
    return icmp.payload


def decode_icmp(data: bytes, ipv4: bool = False) -> AnyMessage:
    return decode(unwrap(data, ipv4))
