"""What an engine hands its owner to send, and the two legs a message travels on."""

from __future__ import annotations

from dataclasses import dataclass

TRANSPORT_ICMP = "icmp"  # MN <-> AR, ICMP Experimental Mobility (§3.2)
TRANSPORT_AR = "ar"  # AR <-> AR, SCTP (or TCP) (§3.1)
TRANSPORTS = (TRANSPORT_ICMP, TRANSPORT_AR)


@dataclass(frozen=True)
class Datagram:
    """One encoded CXTP message for the owner to send."""

    data: bytes
    destination: str
    transport: str
