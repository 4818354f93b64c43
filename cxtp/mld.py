"""RFC 4067 App. B: the IPv6 Multicast Listener (MLD) context, FPT 0x01.

It proves the engines are generic: a second context type plugs in through the registry alone.
One CDB per subscribed group; data = 64-bit subnet prefix on the nAR's wireless interface +
128-bit multicast address = 24 octets, padded with the 4-octet header to 32 (Length 4).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from .constants import FPT_IPV6_MULTICAST_LISTENER, STATUS_SUCCESS
from .errors import DecodeError, ProtocolError
from .registry import TransferInfo

MLD_CONTEXT_LENGTH = 24
#: local status (context-specific, §2.3): the CDB could not be parsed
STATUS_MLD_BAD_DATA = 0x01


@dataclass(frozen=True)
class MulticastListenerContext:
    """One subscription: the listener's subnet prefix (/64) and the group address."""

    subnet_prefix: str  # e.g. "2001:db8:2::/64"
    multicast_address: str

    def __post_init__(self) -> None:
        try:
            prefix = ipaddress.IPv6Network(self.subnet_prefix)
            group = ipaddress.IPv6Address(self.multicast_address)
        except ValueError as exc:
            raise ProtocolError(str(exc)) from exc
        if prefix.prefixlen != 64:
            raise ProtocolError("App. B carries a 64-bit subnet prefix")
        if not group.is_multicast:
            raise ProtocolError(f"{group} is not a multicast address")
        object.__setattr__(self, "subnet_prefix", str(prefix))
        object.__setattr__(self, "multicast_address", str(group))

    def encode(self) -> bytes:
        return (ipaddress.IPv6Network(self.subnet_prefix).network_address.packed[:8]
                + ipaddress.IPv6Address(self.multicast_address).packed)

    @classmethod
    def decode(cls, data: bytes) -> MulticastListenerContext:
        """Accepts the trailing zero padding of the CDB; anything else after 24 octets is an error."""
        if len(data) < MLD_CONTEXT_LENGTH or any(data[MLD_CONTEXT_LENGTH:]):
            raise DecodeError("MLD context must be 24 octets plus zero padding")
        prefix = ipaddress.IPv6Network((bytes(data[:8]) + bytes(8), 64))
        try:
            return cls(str(prefix), str(ipaddress.IPv6Address(bytes(data[8:24]))))
        except ProtocolError as exc:
            raise DecodeError(str(exc)) from exc


@dataclass
class InMemoryMldHandler:
    """A :class:`cxtp.registry.ContextHandler` keeping MLD state in dictionaries (tests, demos).

    ``subscriptions`` is the pAR's view; ``listeners_present`` maps a group to the MNs listening
    on the nAR (the App. B "Listeners Present" state, entered as if a Report had arrived).
    """

    fpt: int = FPT_IPV6_MULTICAST_LISTENER
    subscriptions: dict[str, list[MulticastListenerContext]] = field(default_factory=dict)
    inactive: dict[str, list[MulticastListenerContext]] = field(default_factory=dict)
    listeners_present: dict[str, set[str]] = field(default_factory=dict)
    acknowledgements: list[tuple[str, int, bytes]] = field(default_factory=list)
    log: list[tuple[str, str]] = field(default_factory=list)

    def subscribe(self, mn_address: str, subnet_prefix: str, group: str) -> None:
        self.subscriptions.setdefault(mn_address, []).append(
            MulticastListenerContext(subnet_prefix, group))

    # -- ContextHandler ----------------------------------------------------------------------------
    def collect(self, mn_address: str) -> list[bytes] | None:
        self.log.append(("collect", mn_address))
        subs = self.subscriptions.get(mn_address)
        return [s.encode() for s in subs] if subs else None

    def install(self, mn_address: str, data: bytes, transfer: TransferInfo) -> int:
        self.log.append(("install", mn_address))
        try:
            context = MulticastListenerContext.decode(data)
        except DecodeError:
            return STATUS_MLD_BAD_DATA
        self.inactive.setdefault(mn_address, []).append(context)
        return STATUS_SUCCESS

    def activate(self, mn_address: str, transfer: TransferInfo) -> tuple[int, bytes]:
        self.log.append(("activate", mn_address))
        for context in self.inactive.pop(mn_address, []):
            self.listeners_present.setdefault(context.multicast_address, set()).add(mn_address)
        return STATUS_SUCCESS, b""

    def discard(self, mn_address: str) -> None:
        self.log.append(("discard", mn_address))
        self.inactive.pop(mn_address, None)

    def release(self, mn_address: str) -> None:
        self.log.append(("release", mn_address))
        self.subscriptions.pop(mn_address, None)

    def acknowledged(self, mn_address: str, status: int, data: bytes) -> None:
        self.log.append(("acknowledged", mn_address))
        self.acknowledgements.append((mn_address, status, data))
