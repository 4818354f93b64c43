"""Our departures from RFC 4067 on the wire: options that authenticate what the RFC leaves open.

RFC 4067's token covers the MN's previous address, the sequence number and the requested CDBs:
not the address the CTAR comes from, not which AR it was meant for, not the CTAA, and nothing ties
a CTD or PCTD to the request or the moment it answers. Outside ``Config.rfc_exact`` the engines
add, and require, these options (``docs/protocol.md``, "Departures from RFC 4067"):

=============  ======  ==========================================  ===================================
option         FPT     data                                        in
=============  ======  ==========================================  ===================================
BINDING        0xFF01  16-octet MAC: the CTAR bound to its source  CTAR, CT-Req (copied from the CTAR)
                       address and the AR it was sent to
TRANSFER       0xFF02  transfer id (8), origin in ms (8),           CT-Req, CTD, PCTD, CTDR, CTC
                       lifetime in ms (4)
BOUND          0xFF03  family (1), 3 zeros, the CTAR's source,      CT-Req, CTD (echoed)
                       the AR it was sent to
CTAA_KEY       0xFF04  the key the nAR authenticates its CTAA       CTD
                       with (derived from the MN's key)
CTAA_AUTH      0xFF05  16-octet MAC of the CTAA                     CTAA
=============  ======  ==========================================  ===================================

An option travels as a Context Data Block (in CTAR, CT-Req, CTD, PCTD) or as a status tuple with
status 0 and the data after it (our tuple extension; in CTAA, CTDR, CTC), always after the plain
CDBs or tuples, each kind at most once. The FPTs are local values from the top of the 16-bit
space; to an RFC-only peer they are context types it does not know. The token (RFC 4067 §2.5.1)
covers the plain CDBs only, so it is the token the RFC defines for the same request.

Keys: the MN's CXTP key ``K`` is never used twice for two purposes: the binding MAC uses
``HMAC-SHA256(K, "CXTP binding")``, the CTAA MAC ``HMAC-SHA256(K, "CXTP CTAA")``. The nAR of a
reactive transfer, which never learns ``K``, gets only the second one from the pAR (CTAA_KEY), after
the pAR verified the token and the binding: enough to answer the MN, not to forge a CTAR.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes, hmac

from .constants import OPTION_FPTS
from .errors import DecodeError, ProtocolError
from .messages import ContextDataBlock, StatusEntry, _address_text, address_bytes, address_version

FPT_BINDING = 0xFF01
FPT_TRANSFER = 0xFF02
FPT_BOUND = 0xFF03
FPT_CTAA_KEY = 0xFF04
FPT_CTAA_AUTH = 0xFF05
assert OPTION_FPTS == {FPT_BINDING, FPT_TRANSFER, FPT_BOUND, FPT_CTAA_KEY, FPT_CTAA_AUTH}

MAC_LENGTH = 16
TRANSFER_LENGTH = 20
MAX_U64 = (1 << 64) - 1
MAX_U32 = (1 << 32) - 1
#: the longest CTAA_KEY accepted (the derived keys are 32 octets)
MAX_CTAA_KEY = 64


class OptionError(DecodeError):
    """An option that is malformed, repeated, or followed by a plain CDB or tuple."""


@dataclass(frozen=True)
class Transfer:
    """Which transfer a message belongs to, and how long it is good for: ``transfer_id`` is
    chosen by whoever starts it (the pAR for a PCTD, the nAR for each CT-Req; a CTD answering a
    CT-Req echoes the request's); ``origin_ms`` is the starter's clock when it started (the
    engines' ``now`` in ms), ``lifetime_ms`` how long after that it may still be acted on."""

    transfer_id: int
    origin_ms: int
    lifetime_ms: int

    def __post_init__(self) -> None:
        for name, value, top in (("transfer_id", self.transfer_id, MAX_U64), ("origin_ms", self.origin_ms, MAX_U64),
                                 ("lifetime_ms", self.lifetime_ms, MAX_U32)):
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= top:
                raise ProtocolError(f"{name} out of range: {value!r}")

    def encode(self) -> bytes:
        return (self.transfer_id.to_bytes(8, "big") + self.origin_ms.to_bytes(8, "big")
                + self.lifetime_ms.to_bytes(4, "big"))

    @classmethod
    def decode(cls, data: bytes) -> Transfer:
        return cls(int.from_bytes(data[:8], "big"), int.from_bytes(data[8:16], "big"),
                   int.from_bytes(data[16:20], "big"))

    @property
    def origin(self) -> float:
        return self.origin_ms / 1000

    @property
    def lifetime(self) -> float:
        return self.lifetime_ms / 1000

    @staticmethod
    def ms(seconds: float) -> int:
        """Seconds (an engine's ``now``, a lifetime) as the unsigned milliseconds on the wire."""
        return min(max(int(round(seconds * 1000)), 0), MAX_U64)


@dataclass(frozen=True)
class Bound:
    """The address a CTAR came from (which the context will be bound to) and the AR it was sent
    to, as the nAR saw them: in its CT-Req, and echoed by the pAR's CTD once verified."""

    address: str
    ar_address: str

    def __post_init__(self) -> None:
        if address_version(self.address) != address_version(self.ar_address):
            raise ProtocolError("BOUND: both addresses must be of one family")

    def encode(self) -> bytes:
        return bytes((address_version(self.address), 0, 0, 0)) + address_bytes(self.address) \
            + address_bytes(self.ar_address)

    @classmethod
    def decode(cls, data: bytes) -> tuple[Bound, int]:
        """(value, octets used)."""
        if not data or data[0] not in (4, 6):
            raise OptionError("BOUND: unknown address family")
        size = 4 if data[0] == 4 else 16
        used = 4 + 2 * size
        if len(data) < used:
            raise OptionError("BOUND: truncated")
        return cls(_address_text(bytes(data[4:4 + size])), _address_text(bytes(data[4 + size:used]))), used


@dataclass(frozen=True)
class Options:
    """The options of one message (None: absent)."""

    binding: bytes | None = None
    transfer: Transfer | None = None
    bound: Bound | None = None
    ctaa_key: bytes | None = None
    ctaa_auth: bytes | None = None

    def __post_init__(self) -> None:
        for name in ("binding", "ctaa_auth"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, bytes) or len(value) != MAC_LENGTH):
                raise ProtocolError(f"{name} must be {MAC_LENGTH} octets")
        if self.ctaa_key is not None and (not isinstance(self.ctaa_key, bytes)
                                          or not 0 < len(self.ctaa_key) <= MAX_CTAA_KEY):
            raise ProtocolError(f"ctaa_key must be 1..{MAX_CTAA_KEY} octets")

    def __repr__(self) -> str:  # never print key material in logs
        key = None if self.ctaa_key is None else f"<{len(self.ctaa_key)} octets>"
        return (f"Options(binding={self.binding!r}, transfer={self.transfer!r}, bound={self.bound!r}, "
                f"ctaa_key={key}, ctaa_auth={self.ctaa_auth!r})")

    def _items(self) -> list[tuple[int, bytes]]:
        """(FPT, exact option octets) in FPT order."""
        items: list[tuple[int, bytes]] = []
        if self.binding is not None:
            items.append((FPT_BINDING, self.binding))
        if self.transfer is not None:
            items.append((FPT_TRANSFER, self.transfer.encode()))
        if self.bound is not None:
            items.append((FPT_BOUND, self.bound.encode()))
        if self.ctaa_key is not None:
            items.append((FPT_CTAA_KEY, len(self.ctaa_key).to_bytes(2, "big") + bytes(2) + self.ctaa_key))
        if self.ctaa_auth is not None:
            items.append((FPT_CTAA_AUTH, self.ctaa_auth))
        return items

    def blocks(self) -> tuple[ContextDataBlock, ...]:
        """The options as CDBs (CTAR, CT-Req, CTD, PCTD)."""
        return tuple(ContextDataBlock(fpt, data) for fpt, data in self._items())

    def statuses(self) -> tuple[StatusEntry, ...]:
        """The options as status tuples (CTAA, CTDR, CTC)."""
        return tuple(StatusEntry(fpt, 0, data + bytes(-len(data) % 4)) for fpt, data in self._items())

    def __bool__(self) -> bool:
        return bool(self._items())


def _parse(fpt: int, data: bytes, options: dict[str, object]) -> None:
    """One option's octets (with any zero padding its carrier added) into ``options``."""
    def need(length: int, name: str) -> bytes:
        if len(data) < length or any(data[length:]):
            raise OptionError(f"{name}: {len(data)} octets, expected {length} and zero padding")
        return bytes(data[:length])

    name = {FPT_BINDING: "binding", FPT_TRANSFER: "transfer", FPT_BOUND: "bound", FPT_CTAA_KEY: "ctaa_key",
            FPT_CTAA_AUTH: "ctaa_auth"}[fpt]
    if name in options:
        raise OptionError(f"option {fpt:#06x} appears twice")
    if fpt in (FPT_BINDING, FPT_CTAA_AUTH):
        options[name] = need(MAC_LENGTH, name)
    elif fpt == FPT_TRANSFER:
        options[name] = Transfer.decode(need(TRANSFER_LENGTH, name))
    elif fpt == FPT_BOUND:
        bound, used = Bound.decode(data)
        need(used, name)
        options[name] = bound
    else:
        if len(data) < 4:
            raise OptionError("ctaa_key: truncated")
        length = int.from_bytes(data[:2], "big")
        if not 0 < length <= MAX_CTAA_KEY or data[2:4] != b"\0\0":
            raise OptionError("ctaa_key: bad length")
        options[name] = need(4 + length, name)[4:]


def _split(items: Sequence[tuple[int, bytes]]) -> tuple[int, Options]:
    """(how many leading items are plain, the options of the rest)."""
    plain = 0
    while plain < len(items) and items[plain][0] not in OPTION_FPTS:
        plain += 1
    found: dict[str, object] = {}
    for fpt, data in items[plain:]:
        if fpt not in OPTION_FPTS:
            raise OptionError(f"a plain entry (FPT {fpt:#06x}) after an option")
        _parse(fpt, data, found)
    try:
        return plain, Options(**found)  # type: ignore[arg-type]  # each value was parsed to its field's type
    except ProtocolError as exc:
        raise OptionError(str(exc)) from exc


def split_blocks(blocks: Sequence[ContextDataBlock]) -> tuple[tuple[ContextDataBlock, ...], Options]:
    """A message's CDBs as (the plain ones, its options). :class:`OptionError` when an option is
    malformed, repeated or not at the end. A header-only or presence-vector option is malformed."""
    items = []
    for block in blocks:
        if block.fpt in OPTION_FPTS and (block.header_only or block.presence_vector is not None):
            raise OptionError(f"option {block.fpt:#06x} must be a plain CDB")
        items.append((block.fpt, block.data))
    plain, options = _split(items)
    return tuple(blocks[:plain]), options


def split_statuses(entries: Sequence[StatusEntry]) -> tuple[tuple[StatusEntry, ...], Options]:
    """A message's status tuples as (the plain ones, its options); an option tuple must have
    status 0."""
    for entry in entries:
        if entry.fpt in OPTION_FPTS and entry.status:
            raise OptionError(f"option {entry.fpt:#06x} with status {entry.status}")
    plain, options = _split([(entry.fpt, entry.data) for entry in entries])
    return tuple(entries[:plain]), options


# -- keys and MACs -------------------------------------------------------------------------------

def _hmac(key: bytes, *parts: bytes) -> bytes:
    mac = hmac.HMAC(bytes(key), hashes.SHA256())
    for part in parts:
        mac.update(part)
    return mac.finalize()


def derive_key(key: bytes, label: bytes) -> bytes:
    """``HMAC-SHA256(key, "CXTP " + label)``: one key per purpose from the MN's CXTP key."""
    if not isinstance(key, (bytes, bytearray)) or not key:
        raise ProtocolError("a key must be non-empty bytes")
    return _hmac(key, b"CXTP " + label)


def binding_key(key: bytes) -> bytes:
    return derive_key(key, b"binding")


def ctaa_key(key: bytes) -> bytes:
    return derive_key(key, b"CTAA")


def _address(address: str) -> bytes:
    raw = address_bytes(address)
    return bytes((len(raw),)) + raw


def binding_mac(key: bytes, previous_address: str, sequence_number: int, token: bytes, cdbs: bytes,
                source: str, ar_address: str) -> bytes:
    """First(16, HMAC-SHA256(key, "CTAR" | prev | seq | token | len(CDBs) | CDBs | source | AR)),
    each address preceded by its length: the CTAR bound to the address it is sent from and to
    the AR it is sent to. ``key`` is :func:`binding_key` of the MN's CXTP key; ``cdbs`` the
    plain CDBs as sent (those the token covers)."""
    return _hmac(key, b"CTAR", _address(previous_address), sequence_number.to_bytes(4, "big"),
                 bytes(token), len(cdbs).to_bytes(4, "big"), bytes(cdbs), _address(source),
                 _address(ar_address))[:MAC_LENGTH]


def ctaa_mac(key: bytes, ar_address: str, destination: str, sequence_number: int, ctaa: bytes) -> bytes:
    """First(16, HMAC-SHA256(key, "CTAA" | AR | MN's address | seq | the CTAA without this
    option)): ``key`` is :func:`ctaa_key` of the MN's key, ``ctaa`` the encoded CTAA whose
    status tuples are the plain ones, ``sequence_number`` the CTAR's it answers."""
    return _hmac(key, b"CTAA", _address(ar_address), _address(destination), sequence_number.to_bytes(4, "big"),
                 bytes(ctaa))[:MAC_LENGTH]
