"""Mobile IPv6 Binding Update / Binding Acknowledgement (RFC 6275 §6.1.7, §6.1.8), through scapy.

The paper's traffic runs between the MN's care-of address and the HA (inner header MN CoA <-> HA),
so the HA's binding cache maps the MN's identity to its current care-of address and the HA sends
to that address. The MN identifies itself with the Mobile Node Identifier option (RFC 4283,
subtype 1, NAI) instead of a Home Address destination option: the testbed gives the MN no home
address, and a raw Mobility Header socket cannot carry the destination option without the
kernel's MIPv6 support on every path. The messages are otherwise RFC 6275's, with the kernel
computing the MH checksum (IPV6_CHECKSUM at offset 4).

Binding Updates and Acknowledgements are authenticated between the MN and its HA with RFC 4285's
Mobility Message Authentication option (MN-HA, HMAC_SHA1 with a per-MN key) and protected against
replay with its Replay Protection option (a timestamp the HA requires to be newer than the last
one it accepted from the MN, and near its own clock). RFC 4285 rather than ESP between MN and HA
(RFC 3776/4877): the testbed's MN-HA path already carries the paper's access SAs, whose tunnels
the Mobility Header would have to bypass or join, and an option in the message itself leaves the
IPsec state the paper studies exactly as the paper has it. A message without the key is refused
with RFC 4285's status codes and counted; it moves neither the binding nor the sequence window.
"""

from __future__ import annotations

import dataclasses
import logging
import socket
import time

from cryptography.hazmat.primitives import constant_time, hashes, hmac
from scapy.layers.inet6 import MIP6MH_BA, MIP6MH_BU, MIP6OptMNID, MIP6OptMsgAuth, MIP6OptReplayProtection

# scapy warns that it cannot compute the MH checksum without an IPv6 layer: the kernel does.
logging.getLogger("scapy.runtime").setLevel(logging.ERROR)

IPPROTO_MH = 135
MH_TYPE_BU = 5
MH_TYPE_BA = 6
MH_CHECKSUM_OFFSET = 4
IPV6_CHECKSUM = 7  # <linux/in6.h>
BA_STATUS_ACCEPTED = 0
BA_STATUS_REASON_UNSPECIFIED = 128
BA_STATUS_SEQUENCE_OUT_OF_WINDOW = 135  # RFC 6275 §6.1.8
INITIAL_BINDACK_TIMEOUT = 1.0  # RFC 6275 §13: first BU retransmission after 1 s
MAX_BINDACK_TIMEOUT = 32.0
LIFETIME_UNIT_S = 4  # RFC 6275 §6.1.7: lifetime in units of 4 seconds


# -- authentication and replay protection (RFC 4285) ---------------------------------------------
MH_OPT_PAD1, MH_OPT_PADN = 0, 1
MH_OPT_MN_ID = 8  # RFC 4283
MH_OPT_AUTH = 9  # RFC 4285 §5: Mobility Message Authentication option
MH_OPT_REPLAY = 10  # RFC 4285 §6: Mobility Message Replay Protection option
MN_ID_SUBTYPE_NAI = 1
AUTH_SUBTYPE_MN_HA = 1
AUTHENTICATOR_LENGTH = 12  # the first 96 bits of HMAC_SHA1 (RFC 4285 §5.1)
MOBILITY_SPI = 0x100  # the MN-HA mobility security association (0-255 are reserved)
BA_STATUS_ID_MISMATCH = 144  # RFC 4285 §8: MIPV6-ID-MISMATCH (replay protection: timestamp refused)
BA_STATUS_MESG_ID_REQD = 145  # MIPV6-MESG-ID-REQD (no replay protection option)
BA_STATUS_AUTH_FAIL = 146  # MIPV6-AUTH-FAIL
#: how far a timestamp may lie from the receiver's clock (RFC 4285 §6 leaves it to configuration):
#: a bound on the two nodes' clock offset plus the message's transit, not on a machine's speed
REPLAY_WINDOW_S = 7.0
NTP_EPOCH_OFFSET = 2_208_988_800  # seconds from 1900-01-01 to 1970-01-01


def ntp_timestamp(unix_time: float) -> int:
    """RFC 4285 §6: the 64-bit timestamp, in the NTP format (seconds since 1900, fraction)."""
    seconds = int(unix_time)
    return ((seconds + NTP_EPOCH_OFFSET) << 32) | int((unix_time - seconds) * (1 << 32))


def ntp_seconds(timestamp: int) -> float:
    return (timestamp >> 32) - NTP_EPOCH_OFFSET + (timestamp & 0xFFFFFFFF) / (1 << 32)


def authenticator(key: bytes, care_of: str, ha: str, signed: bytes) -> bytes:
    """RFC 4285 §5.1: the first 96 bits of HMAC_SHA1 over the care-of address, the home address
    and the Mobility Header up to and including the option's Mobility SPI (its checksum zero).
    The testbed's MN has no home address (see the module's docstring): the HA's address stands in
    its place, which binds the message to the HA it is meant for."""
    data = socket.inet_pton(socket.AF_INET6, care_of) + socket.inet_pton(socket.AF_INET6, ha) + signed
    mac = hmac.HMAC(key, hashes.SHA1())
    mac.update(data)
    return mac.finalize()[:AUTHENTICATOR_LENGTH]


class MobilityDecodeError(ValueError):
    """A Mobility Header that is not a well-formed BU or BA."""

    source: str | None = None


@dataclasses.dataclass(frozen=True)
class Protection:
    """What a message carried of RFC 4285: its timestamp, and the authenticator with the octets it
    covers (None when the message carried no authentication option)."""

    timestamp: int | None = None
    spi: int | None = None
    authenticator: bytes | None = None
    signed: bytes = b""

    def verify(self, key: bytes, care_of: str, ha: str) -> bool:
        """Whether the authenticator is the one ``key`` makes for this message between these ends."""
        if self.authenticator is None or self.spi != MOBILITY_SPI:
            return False
        return constant_time.bytes_eq(self.authenticator, authenticator(key, care_of, ha, self.signed))


def _signed(message, key: bytes | None, care_of: str | None, ha: str | None, timestamp: int | None) -> bytes:
    """The message's octets; with ``key``, with the replay protection and the authentication
    option last (RFC 4285 §5: nothing follows it), its authenticator computed over the rest."""
    if key is None:
        return bytes(message)
    if care_of is None or ha is None:
        raise ValueError("an authenticated mobility message names its care-of address and its HA")
    stamp = ntp_timestamp(time.time()) if timestamp is None else timestamp
    message.options = [*message.options, MIP6OptReplayProtection(timestamp=stamp),
                       MIP6OptMsgAuth(mspi=MOBILITY_SPI, authdata=bytes(AUTHENTICATOR_LENGTH))]
    data = bytes(message)
    signed = data[:-AUTHENTICATOR_LENGTH]
    return signed + authenticator(key, care_of, ha, signed)


def _covered(data: bytes) -> bytes:
    """What the authenticator of a message covers: the message up to its Mobility SPI, with the
    checksum (which the kernel fills in after it was computed) zeroed."""
    return data[:4] + b"\0\0" + data[6:-AUTHENTICATOR_LENGTH]


def _protection(message, data: bytes) -> Protection:
    replay = next((option for option in message.options if isinstance(option, MIP6OptReplayProtection)), None)
    auth = next((option for option in message.options if isinstance(option, MIP6OptMsgAuth)), None)
    if auth is None:
        return Protection(timestamp=replay.timestamp if replay is not None else None)
    if message.options[-1] is not auth or len(bytes(auth.authdata)) != AUTHENTICATOR_LENGTH:
        raise MobilityDecodeError("the authentication option is not the last option, or not 96 bits")
    return Protection(timestamp=replay.timestamp if replay is not None else None, spi=auth.mspi,
                      authenticator=bytes(auth.authdata), signed=_covered(data))


@dataclasses.dataclass(frozen=True)
class BindingUpdate:
    sequence: int
    identity: str
    lifetime_s: int = 600
    acknowledge: bool = True
    #: set on a decoded message: what it carried of RFC 4285 (never compared)
    protection: Protection = dataclasses.field(default_factory=Protection, compare=False)

    def encode(self, key: bytes | None = None, care_of: str | None = None, ha: str | None = None,
               timestamp: int | None = None) -> bytes:
        """The message; with ``key``, authenticated for ``care_of`` -> ``ha`` and stamped now."""
        flags = "AH" if self.acknowledge else "H"
        message = MIP6MH_BU(seq=self.sequence, flags=flags, mhtime=self.lifetime_s // LIFETIME_UNIT_S,
                            options=[MIP6OptMNID(id=self.identity.encode())])
        return _signed(message, key, care_of, ha, timestamp)


@dataclasses.dataclass(frozen=True)
class BindingAck:
    sequence: int
    status: int = BA_STATUS_ACCEPTED
    lifetime_s: int = 600
    protection: Protection = dataclasses.field(default_factory=Protection, compare=False)

    def encode(self, key: bytes | None = None, care_of: str | None = None, ha: str | None = None,
               timestamp: int | None = None) -> bytes:
        message = MIP6MH_BA(status=self.status, flags=0, seq=self.sequence, mhtime=self.lifetime_s // LIFETIME_UNIT_S)
        return _signed(message, key, care_of, ha, timestamp)


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
                                 lifetime_s=message.mhtime * LIFETIME_UNIT_S, acknowledge="A" in message.flags,
                                 protection=_protection(message, data))
        if mh_type == MH_TYPE_BA:
            ack = MIP6MH_BA(data)
            return BindingAck(sequence=ack.seq, status=ack.status, lifetime_s=ack.mhtime * LIFETIME_UNIT_S,
                              protection=_protection(ack, data))
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
    """The HA's binding cache: identity -> (care-of address, last sequence number).

    With ``keys`` (identity -> the MN-HA key), only authenticated Binding Updates reach the cache
    (RFC 4285): one without the options, with a wrong authenticator, for an identity without a
    key, or with a timestamp not newer than the last accepted one or off the HA's clock by more
    than the window is refused, counted in ``refused`` by status, and changes nothing."""

    def __init__(self, keys: dict[str, bytes] | None = None, ha: str | None = None,
                 replay_window_s: float = REPLAY_WINDOW_S) -> None:
        self.entries: dict[str, tuple[str, int]] = {}
        self.keys = keys
        self.ha = ha
        self.replay_window_s = replay_window_s
        self.timestamps: dict[str, int] = {}  # identity -> the last accepted BU's timestamp
        self.refused: dict[int, int] = {}

    def _refuse(self, status: int) -> int:
        self.refused[status] = self.refused.get(status, 0) + 1
        return status

    def authenticate(self, update: BindingUpdate, care_of: str, now: float) -> int:
        """BA_STATUS_ACCEPTED when ``update`` is the MN's own and fresh; else the RFC 4285 status."""
        if self.keys is None:
            return BA_STATUS_ACCEPTED
        key = self.keys.get(update.identity)
        protection = update.protection
        if key is None or self.ha is None or not protection.verify(key, care_of, self.ha):
            return self._refuse(BA_STATUS_AUTH_FAIL)
        if protection.timestamp is None:
            return self._refuse(BA_STATUS_MESG_ID_REQD)
        last = self.timestamps.get(update.identity)
        if (last is not None and protection.timestamp <= last) or \
                abs(ntp_seconds(protection.timestamp) - now) > self.replay_window_s:
            return self._refuse(BA_STATUS_ID_MISMATCH)
        return BA_STATUS_ACCEPTED

    def update(self, update: BindingUpdate, care_of: str, now: float | None = None) -> int:
        """Apply a BU from ``care_of``; return the BA status."""
        status = self.authenticate(update, care_of, time.time() if now is None else now)
        if status != BA_STATUS_ACCEPTED:
            return status
        current = self.entries.get(update.identity)
        if current is not None and not sequence_newer(update.sequence, current[1]) and update.sequence != current[1]:
            return self._refuse(BA_STATUS_SEQUENCE_OUT_OF_WINDOW)
        if update.protection.timestamp is not None:
            self.timestamps[update.identity] = update.protection.timestamp
        if update.lifetime_s == 0:
            self.entries.pop(update.identity, None)
        else:
            self.entries[update.identity] = (care_of, update.sequence)
        return BA_STATUS_ACCEPTED

    def last_sequence(self, identity: str) -> int | None:
        """The sequence number of the last BU accepted for ``identity``."""
        entry = self.entries.get(identity)
        return entry[1] if entry else None

    def care_of(self, identity: str) -> str | None:
        entry = self.entries.get(identity)
        return entry[0] if entry else None


def restamp(data: bytes, key: bytes, care_of: str, ha: str, timestamp: int | None = None) -> bytes:
    """An authenticated message encoded earlier, with a new timestamp (now by default) and its
    authenticator made again: the MN encodes its next Binding Update before the attach, off the
    critical path, and only stamps and signs it when it sends it."""
    message = bytearray(data)
    offset = 12  # the options of a BU or a BA start after 12 octets
    while offset < len(message):
        kind = message[offset]
        if kind == MH_OPT_PAD1:
            offset += 1
            continue
        if kind == MH_OPT_REPLAY:
            stamp = ntp_timestamp(time.time()) if timestamp is None else timestamp
            message[offset + 2:offset + 10] = stamp.to_bytes(8, "big")
            break
        offset += 2 + message[offset + 1]
    else:
        raise ValueError("the message carries no replay protection option to stamp")
    return bytes(message[:-AUTHENTICATOR_LENGTH]) + authenticator(key, care_of, ha, _covered(bytes(message)))
