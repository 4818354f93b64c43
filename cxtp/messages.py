"""RFC 4067 §2.2-§2.5 message codec: immutable values with ``encode()`` and a single ``decode()``.

Every message class holds exactly what goes on the wire (addresses as canonical strings), so
``decode(m.encode()) == m`` for every message that can be constructed. Reserved bits are sent as
zero and ignored on receive (§2.2); they are therefore not part of the values.
"""

from __future__ import annotations

import functools
import hmac
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from typing import ClassVar, TypeVar

from . import constants as c
from .constants import MessageType
from .errors import CxtpError, DecodeError, ProtocolError

HEADER_LENGTH = 4
_V_FLAG = 0x80  # second octet: V = 1 means IPv4 (§2.2)
_X_FLAG = 0x40  # second octet: A (CTAR, CTD, PCTD) or S (CTDR)
_P_FLAG = 0x80  # CDB fourth octet: presence vector follows (§2.4)


# --- helpers ------------------------------------------------------------------------------------

def normalize_address(address: str) -> str:
    """Canonical text form, so values compare equal however the caller spelled the address."""
    if not isinstance(address, str):
        raise ProtocolError(f"address must be a str, got {type(address).__name__}")
    return _parse_address(address)[0]


@functools.lru_cache(maxsize=4096)
def _parse_address(address: str) -> tuple[str, int, bytes]:
    """(canonical text, version, packed octets); cached because a handful of addresses recur."""
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError as exc:
        raise ProtocolError(f"not an IP address: {address!r}") from exc
    return str(parsed), parsed.version, parsed.packed


def address_version(address: str) -> int:
    return _parse_address(address)[1]


def address_bytes(address: str) -> bytes:
    """The 4 or 16 octets of an address, as fed to the token HMAC (§2.5.1)."""
    if not isinstance(address, str):
        raise ProtocolError(f"address must be a str, got {type(address).__name__}")
    return _parse_address(address)[2]


def _same_family(*addresses: str) -> None:
    versions = {address_version(a) for a in addresses}
    if len(versions) != 1:
        raise ProtocolError("all addresses of one message must share one family (one V flag)")


def _check_uint(name: str, value: int, bits: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < (1 << bits):
        raise ProtocolError(f"{name} must be an unsigned {bits}-bit integer, got {value!r}")


def _check_bytes(name: str, value: bytes) -> bytes:
    if isinstance(value, (bytearray, memoryview)):
        value = bytes(value)
    if not isinstance(value, bytes):
        raise ProtocolError(f"{name} must be bytes, got {type(value).__name__}")
    return value


def _check_bool(name: str, value: bool) -> None:
    if not isinstance(value, bool):
        raise ProtocolError(f"{name} must be a bool, got {value!r}")


@functools.lru_cache(maxsize=4096)
def _address_text(raw: bytes) -> str:
    return str(ipaddress.IPv4Address(raw) if len(raw) == 4 else ipaddress.IPv6Address(raw))


class _Reader:
    """Bounds-checked cursor: every short read becomes a DecodeError."""

    __slots__ = ("data", "offset")

    def __init__(self, data: bytes, offset: int = 0) -> None:
        self.data = data
        self.offset = offset

    def remaining(self) -> int:
        return len(self.data) - self.offset

    def take(self, count: int, what: str) -> bytes:
        if count < 0 or self.offset + count > len(self.data):
            raise DecodeError(f"truncated {what}: need {count} octets, {self.remaining()} left")
        chunk = self.data[self.offset:self.offset + count]
        self.offset += count
        return chunk

    def uint(self, size: int, what: str) -> int:
        return int.from_bytes(self.take(size, what), "big")

    def address(self, ipv4: bool, what: str) -> str:
        return _address_text(self.take(4 if ipv4 else 16, what))


# --- Context Data Block (§2.4) and status tuple ---------------------------------------------------

@dataclass(frozen=True)
class ContextDataBlock:
    """One feature context, or in CTAR/CT-Req a request naming an FPT (§2.4).

    ``data`` is held zero-padded so that the whole block is a multiple of 8 octets (the only size
    the Length field can express); context types must tolerate trailing zero octets.
    ``header_only`` models the 4-octet, Length = 0 request block that other implementations may
    send; we accept it but send 8-octet request blocks ourselves ([INFERENCE], §2.4).
    """

    fpt: int
    data: bytes = b""
    presence_vector: int | None = None
    header_only: bool = False

    def __post_init__(self) -> None:
        _check_uint("fpt", self.fpt, 16)
        data = _check_bytes("data", self.data)
        _check_bool("header_only", self.header_only)
        if self.presence_vector is not None:
            _check_uint("presence_vector", self.presence_vector, 32)
        if self.header_only:
            if data or self.presence_vector is not None:
                raise ProtocolError("a header-only (Length = 0) CDB carries no data or presence vector")
        else:
            fixed = HEADER_LENGTH + (4 if self.presence_vector is not None else 0)
            pad = -(fixed + len(data)) % c.CDB_WORD
            data = data + bytes(pad)
            if fixed + len(data) > c.CDB_MAX_OCTETS:
                raise ProtocolError(f"CDB of {fixed + len(data)} octets exceeds {c.CDB_MAX_OCTETS}")
        object.__setattr__(self, "data", data)

    @classmethod
    def request(cls, fpt: int) -> ContextDataBlock:
        """The request block we send in CTAR / CT-Req: 8 octets, Length = 1, no data."""
        return cls(fpt)

    @property
    def size(self) -> int:
        if self.header_only:
            return HEADER_LENGTH
        return HEADER_LENGTH + (4 if self.presence_vector is not None else 0) + len(self.data)

    def encode(self) -> bytes:
        size = self.size
        words = 0 if self.header_only else size // c.CDB_WORD
        flags = _P_FLAG if self.presence_vector is not None else 0
        out = bytearray(self.fpt.to_bytes(2, "big"))
        out += bytes((words, flags))
        if self.presence_vector is not None:
            out += self.presence_vector.to_bytes(4, "big")
        out += self.data
        return bytes(out)

    @classmethod
    def decode_from(cls, reader: _Reader) -> ContextDataBlock:
        fpt = reader.uint(2, "CDB FPT")
        words = reader.uint(1, "CDB Length")
        flags = reader.uint(1, "CDB flags")
        has_pv = bool(flags & _P_FLAG)
        if words == 0:
            if has_pv:
                raise DecodeError("CDB with P = 1 cannot have Length 0")
            return cls(fpt, header_only=True)
        body = reader.take(words * c.CDB_WORD - HEADER_LENGTH, "CDB body")
        if has_pv:
            return cls(fpt, body[4:], int.from_bytes(body[:4], "big"))
        return cls(fpt, body)


@dataclass(frozen=True)
class StatusEntry:
    """(FPT, Status, Reserved) tuple of CTAA/CTDR (§2.5.2, §2.5.4).

    Our extension: the Reserved octet counts the 4-octet words of ``data`` following the tuple
    (context-specific results such as a new SPI). Plain RFC tuples have Reserved = 0, no data.
    """

    fpt: int
    status: int
    data: bytes = b""

    def __post_init__(self) -> None:
        _check_uint("fpt", self.fpt, 16)
        _check_uint("status", self.status, 8)
        data = _check_bytes("data", self.data)
        if len(data) % c.STATUS_DATA_WORD or len(data) > c.STATUS_MAX_DATA_OCTETS:
            raise ProtocolError("status data must be a multiple of 4 octets, at most 1020")
        object.__setattr__(self, "data", data)

    def encode(self) -> bytes:
        return (self.fpt.to_bytes(2, "big") + bytes((self.status, len(self.data) // 4)) + self.data)

    @classmethod
    def decode_from(cls, reader: _Reader) -> StatusEntry:
        fpt = reader.uint(2, "status FPT")
        status = reader.uint(1, "status code")
        words = reader.uint(1, "status data length")
        return cls(fpt, status, reader.take(words * 4, "status data"))


_T = TypeVar("_T")


def _coerce_tuple(name: str, values: Iterable[_T], kind: type[_T]) -> tuple[_T, ...]:
    try:
        items = tuple(values)
    except TypeError as exc:
        raise ProtocolError(f"{name} must be a sequence of {kind.__name__}") from exc
    for item in items:
        if not isinstance(item, kind):
            raise ProtocolError(f"{name} must contain only {kind.__name__}, got {type(item).__name__}")
    return items


def _check_token(token: bytes) -> bytes:
    token = _check_bytes("token", token)
    if len(token) != c.TOKEN_LENGTH:
        raise ProtocolError("token must be exactly 4 octets")
    return token


# --- messages -------------------------------------------------------------------------------------

class Message:
    """Common header handling (§2.2): Vers(3) Type(5) | V A/S Reserved(6) | Length(16)."""

    TYPE: ClassVar[MessageType]

    @property
    def ipv4(self) -> bool:
        return address_version(self.mn_previous_address) == 4  # type: ignore[attr-defined]

    def _flag(self) -> bool:  # A or S bit; False for messages where it is reserved
        return False

    def _body(self) -> bytes:
        raise NotImplementedError

    def encode(self) -> bytes:
        body = self._body()
        length = HEADER_LENGTH + len(body)
        if length > 0xFFFF:
            raise ProtocolError(f"message of {length} octets exceeds the 16-bit Length field")
        second = (_V_FLAG if self.ipv4 else 0) | (_X_FLAG if self._flag() else 0)
        return bytes(((c.CXTP_VERSION << 5) | int(self.TYPE), second)) + length.to_bytes(2, "big") + body

    @property
    def type(self) -> MessageType:
        return self.TYPE


def _addr(address: str, ipv4: bool) -> bytes:
    return _parse_address(address)[2]


def _blocks(blocks: tuple[ContextDataBlock, ...]) -> bytes:
    return b"".join(b.encode() for b in blocks)


@dataclass(frozen=True)
class CTAR(Message):
    """Context Transfer Activate Request, MN -> AR over ICMP (§2.5.1).

    ``ar_address`` is the nAR's address when sent to the pAR, the pAR's when sent to the nAR.
    """

    TYPE: ClassVar[MessageType] = MessageType.CTAR
    mn_previous_address: str
    ar_address: str
    sequence_number: int
    token: bytes
    requested: tuple[ContextDataBlock, ...] = ()
    ack_requested: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "mn_previous_address", normalize_address(self.mn_previous_address))
        object.__setattr__(self, "ar_address", normalize_address(self.ar_address))
        _same_family(self.mn_previous_address, self.ar_address)
        _check_uint("sequence_number", self.sequence_number, 32)
        object.__setattr__(self, "token", _check_token(self.token))
        object.__setattr__(self, "requested", _coerce_tuple("requested", self.requested, ContextDataBlock))
        _check_bool("ack_requested", self.ack_requested)

    def _flag(self) -> bool:
        return self.ack_requested

    def requested_octets(self) -> bytes:
        """The CDBs as they appear on the wire: the token's third HMAC input (§2.5.1)."""
        return _blocks(self.requested)

    def _body(self) -> bytes:
        return (_addr(self.mn_previous_address, self.ipv4) + _addr(self.ar_address, self.ipv4)
                + self.sequence_number.to_bytes(4, "big") + self.token + self.requested_octets())

    @classmethod
    def _decode_body(cls, r: _Reader, ipv4: bool, flag: bool) -> CTAR:
        prev = r.address(ipv4, "MN previous address")
        ar = r.address(ipv4, "AR address")
        seq = r.uint(4, "sequence number")
        token = r.take(4, "authorization token")
        return cls(prev, ar, seq, token, _decode_blocks(r), flag)


@dataclass(frozen=True)
class CTAA(Message):
    """Context Transfer Activate Acknowledge, AR -> MN over ICMP (§2.5.2)."""

    TYPE: ClassVar[MessageType] = MessageType.CTAA
    mn_previous_address: str
    statuses: tuple[StatusEntry, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "mn_previous_address", normalize_address(self.mn_previous_address))
        object.__setattr__(self, "statuses", _coerce_tuple("statuses", self.statuses, StatusEntry))

    def _body(self) -> bytes:
        return _addr(self.mn_previous_address, self.ipv4) + b"".join(s.encode() for s in self.statuses)

    @classmethod
    def _decode_body(cls, r: _Reader, ipv4: bool, flag: bool) -> CTAA:
        return cls(r.address(ipv4, "MN previous address"), _decode_statuses(r))


@dataclass(frozen=True)
class CTD(Message):
    """Context Transfer Data without key material, pAR -> nAR over SCTP (§2.5.3)."""

    TYPE: ClassVar[MessageType] = MessageType.CTD
    mn_previous_address: str
    contexts: tuple[ContextDataBlock, ...] = ()
    elapsed_time: int = 0  # milliseconds since the first CTD for this MN was sent
    ack_requested: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "mn_previous_address", normalize_address(self.mn_previous_address))
        object.__setattr__(self, "contexts", _coerce_tuple("contexts", self.contexts, ContextDataBlock))
        _check_uint("elapsed_time", self.elapsed_time, 32)
        _check_bool("ack_requested", self.ack_requested)

    def _flag(self) -> bool:
        return self.ack_requested

    def _key_block(self) -> bytes:
        return b""

    def _body(self) -> bytes:
        return (self.elapsed_time.to_bytes(4, "big") + _addr(self.mn_previous_address, self.ipv4)
                + self._key_block() + _blocks(self.contexts))

    @classmethod
    def _decode_body(cls, r: _Reader, ipv4: bool, flag: bool) -> CTD:
        elapsed = r.uint(4, "elapsed time")
        prev = r.address(ipv4, "MN previous address")
        return cls(prev, _decode_blocks(r), elapsed, flag)


@dataclass(frozen=True)
class PCTD(Message):
    """Predictive Context Transfer Data: a CTD that carries the token key (§2.5.3).

    We send type 0x4 whenever key material is included, also when answering a zero-token
    CT-Req, so the receiver decides from the Type alone whether the key block is present.
    """

    TYPE: ClassVar[MessageType] = MessageType.PCTD
    mn_previous_address: str
    key: bytes
    contexts: tuple[ContextDataBlock, ...] = ()
    elapsed_time: int = 0
    ack_requested: bool = True
    algorithm: int = c.HMAC_SHA1

    def __post_init__(self) -> None:
        object.__setattr__(self, "mn_previous_address", normalize_address(self.mn_previous_address))
        key = _check_bytes("key", self.key)
        if len(key) > 0xFFFF:
            raise ProtocolError("key longer than the 16-bit Key Length field")
        object.__setattr__(self, "key", key)
        object.__setattr__(self, "contexts", _coerce_tuple("contexts", self.contexts, ContextDataBlock))
        _check_uint("elapsed_time", self.elapsed_time, 32)
        _check_bool("ack_requested", self.ack_requested)
        _check_uint("algorithm", self.algorithm, 16)

    def __repr__(self) -> str:  # never print key material in logs
        return (f"PCTD(mn_previous_address={self.mn_previous_address!r}, key=<{len(self.key)} octets>, "
                f"contexts={self.contexts!r}, elapsed_time={self.elapsed_time}, "
                f"ack_requested={self.ack_requested}, algorithm={self.algorithm})")

    def _flag(self) -> bool:
        return self.ack_requested

    def _body(self) -> bytes:
        return (self.elapsed_time.to_bytes(4, "big") + _addr(self.mn_previous_address, self.ipv4)
                + self.algorithm.to_bytes(2, "big") + len(self.key).to_bytes(2, "big") + self.key
                + _blocks(self.contexts))

    @classmethod
    def _decode_body(cls, r: _Reader, ipv4: bool, flag: bool) -> PCTD:
        elapsed = r.uint(4, "elapsed time")
        prev = r.address(ipv4, "MN previous address")
        algorithm = r.uint(2, "algorithm")
        key = r.take(r.uint(2, "key length"), "key")
        return cls(prev, key, _decode_blocks(r), elapsed, flag, algorithm)


@dataclass(frozen=True)
class CTDR(Message):
    """Context Transfer Data Reply, nAR -> pAR (§2.5.4); S = 1 when every context succeeded."""

    TYPE: ClassVar[MessageType] = MessageType.CTDR
    mn_previous_address: str
    success: bool
    statuses: tuple[StatusEntry, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "mn_previous_address", normalize_address(self.mn_previous_address))
        _check_bool("success", self.success)
        object.__setattr__(self, "statuses", _coerce_tuple("statuses", self.statuses, StatusEntry))

    def _flag(self) -> bool:
        return self.success

    def _body(self) -> bytes:
        return _addr(self.mn_previous_address, self.ipv4) + b"".join(s.encode() for s in self.statuses)

    @classmethod
    def _decode_body(cls, r: _Reader, ipv4: bool, flag: bool) -> CTDR:
        return cls(r.address(ipv4, "MN previous address"), flag, _decode_statuses(r))


@dataclass(frozen=True)
class CTC(Message):
    """Context Transfer Cancel, nAR -> pAR (§2.5.5).

    ``options``: our extension (:mod:`cxtp.options`), status tuples after the address that name
    the transfer cancelled; none in RFC-exact mode, and then the message is the RFC's."""

    TYPE: ClassVar[MessageType] = MessageType.CTC
    mn_previous_address: str
    options: tuple[StatusEntry, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "mn_previous_address", normalize_address(self.mn_previous_address))
        object.__setattr__(self, "options", _coerce_tuple("options", self.options, StatusEntry))
        for entry in self.options:
            if entry.fpt not in c.OPTION_FPTS:
                raise ProtocolError(f"a CTC carries option tuples only, not FPT {entry.fpt:#06x}")

    def _body(self) -> bytes:
        return _addr(self.mn_previous_address, self.ipv4) + b"".join(s.encode() for s in self.options)

    @classmethod
    def _decode_body(cls, r: _Reader, ipv4: bool, flag: bool) -> CTC:
        address = r.address(ipv4, "MN previous address")
        options = _decode_statuses(r)
        if any(entry.fpt not in c.OPTION_FPTS for entry in options):
            raise DecodeError("unexpected octets after the CTC's address (not an option tuple)")
        return cls(address, options)


@dataclass(frozen=True)
class CTReq(Message):
    """Context Transfer Request, nAR -> pAR (§2.5.6): seq, token and CDBs copied from the CTAR.

    RFC 4067 lets a zero token mean "the nAR has no CTAR yet" (network-initiated); the codec
    carries it, but the engines refuse it: a zero token is never a substitute for the MN's token.
    """

    TYPE: ClassVar[MessageType] = MessageType.CT_REQ
    mn_previous_address: str
    sequence_number: int = 0
    token: bytes = bytes(4)
    requested: tuple[ContextDataBlock, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "mn_previous_address", normalize_address(self.mn_previous_address))
        _check_uint("sequence_number", self.sequence_number, 32)
        object.__setattr__(self, "token", _check_token(self.token))
        object.__setattr__(self, "requested", _coerce_tuple("requested", self.requested, ContextDataBlock))

    @property
    def zero_token(self) -> bool:
        """Token 0 (RFC 4067 §2.5.6: "no CTAR yet"). The engines refuse such a CT-Req."""
        return hmac.compare_digest(self.token, bytes(c.TOKEN_LENGTH))

    def requested_octets(self) -> bytes:
        return _blocks(self.requested)

    def _body(self) -> bytes:
        return (_addr(self.mn_previous_address, self.ipv4) + self.sequence_number.to_bytes(4, "big")
                + self.token + self.requested_octets())

    @classmethod
    def _decode_body(cls, r: _Reader, ipv4: bool, flag: bool) -> CTReq:
        prev = r.address(ipv4, "MN previous address")
        seq = r.uint(4, "sequence number")
        token = r.take(4, "authorization token")
        return cls(prev, seq, token, _decode_blocks(r))


AnyMessage = CTAR | CTAA | CTD | PCTD | CTDR | CTC | CTReq

MESSAGE_CLASSES: dict[int, type[AnyMessage]] = {
    int(cls.TYPE): cls for cls in (CTAR, CTAA, CTD, PCTD, CTDR, CTC, CTReq)
}


def _decode_blocks(r: _Reader) -> tuple[ContextDataBlock, ...]:
    blocks = []
    while r.remaining():
        blocks.append(ContextDataBlock.decode_from(r))
    return tuple(blocks)


def _decode_statuses(r: _Reader) -> tuple[StatusEntry, ...]:
    entries = []
    while r.remaining():
        entries.append(StatusEntry.decode_from(r))
    return tuple(entries)


def peek_length(header: bytes) -> int:
    """Message Length from the first 4 octets: lets a byte stream (TCP) cut out one message."""
    if len(header) < HEADER_LENGTH:
        raise DecodeError("need 4 octets of header to read the Length")
    version = header[0] >> 5
    if version != c.CXTP_VERSION:
        raise DecodeError(f"unsupported CXTP version {version}")
    length = int.from_bytes(header[2:4], "big")
    if length < HEADER_LENGTH:
        raise DecodeError(f"Length {length} shorter than the header")
    return length


@dataclass(frozen=True)
class HeaderPeek:
    """What the first octets of a message say, read without decoding it (to refuse it cheaply)."""

    type: MessageType | None  # None: a type RFC 4067 does not define
    flag: bool  # A (CTAR, CTD, PCTD) or S (CTDR)
    ipv4: bool
    mn_previous_address: str | None  # None when the message is too short to hold it


#: where the MN's previous address starts: after the 4-octet Elapsed Time in CTD and PCTD
_MN_OFFSET = {MessageType.CTD: 8, MessageType.PCTD: 8}


def peek_header(data: bytes) -> HeaderPeek | None:
    """Type, flags and MN address of a CXTP message from its first octets, in constant work;
    None when even the 4-octet header or the version is wrong. Nothing here is validated beyond
    what is read: a message that peeks may still fail :func:`decode`."""
    if not isinstance(data, (bytes, bytearray, memoryview)) or len(data) < HEADER_LENGTH:
        return None
    if data[0] >> 5 != c.CXTP_VERSION:
        return None
    code = data[0] & 0x1F
    mtype = MessageType(code) if code in MESSAGE_CLASSES else None
    ipv4 = bool(data[1] & _V_FLAG)
    flag = bool(data[1] & _X_FLAG)
    mn = None
    if mtype is not None:
        start = _MN_OFFSET.get(mtype, HEADER_LENGTH)
        size = 4 if ipv4 else 16
        if len(data) >= start + size:
            mn = _address_text(bytes(data[start:start + size]))
    return HeaderPeek(mtype, flag, ipv4, mn)


def decode(data: bytes) -> AnyMessage:
    """Parse one complete CXTP message. Any malformed input raises :class:`DecodeError`."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise DecodeError(f"expected bytes, got {type(data).__name__}")
    data = bytes(data)
    length = peek_length(data)
    if length != len(data):
        raise DecodeError(f"Length field says {length} octets, got {len(data)}")
    cls = MESSAGE_CLASSES.get(data[0] & 0x1F)
    if cls is None:
        raise DecodeError(f"unknown message type {data[0] & 0x1F}")
    ipv4 = bool(data[1] & _V_FLAG)
    flag = bool(data[1] & _X_FLAG)
    reader = _Reader(data, HEADER_LENGTH)
    try:
        message = cls._decode_body(reader, ipv4, flag)
    except DecodeError:
        raise
    except (CxtpError, ValueError, IndexError, TypeError, OverflowError) as exc:
        # constructors validate again; a value they refuse came from the wire
        raise DecodeError(f"invalid {cls.__name__}: {exc}") from exc
    if reader.remaining():
        raise DecodeError(f"{reader.remaining()} unexpected octets after the {cls.__name__}")
    return message
