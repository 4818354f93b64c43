"""Sockets for CXTP: MN-AR over raw ICMP Experimental Mobility, AR-AR over SCTP/5091 (or TCP).

The engines in :mod:`cxtp` produce bare CXTP messages; these transports add what the carrier
needs and nothing else:

* :class:`IcmpTransport` wraps messages in ICMPv6 type 150 / ICMPv4 type 41, subtype 1
  (RFC 4067 §3.2, RFC 4065 §8), sends with hop limit 255 and drops anything received with a
  lower one (the Neighbor Discovery trick: only on-link senders can produce 255).
* :class:`SctpTransport` carries one CXTP message per SCTP user message on a one-to-many
  (SOCK_SEQPACKET) socket: SCTP keeps message boundaries, so there is no framing of ours.
  Nagle-like bundling is off (SCTP_NODELAY), PPID 0 (no number was ever allocated for 'CXTP'),
  U bit set and a PR-SCTP lifetime of CT_MAX_TRANSFER_TIME through SCTP_DEFAULT_SEND_PARAM
  (RFC 4067 §3.1), all with plain ``setsockopt`` - no ``pysctp`` needed.
* :class:`TcpTransport` is the non-SCTP option of §3.1: the CXTP Length field frames messages.

Every transport has ``kind`` ("icmp" or "ar", the engines' transport names), ``send(data,
destination)``, ``fileno()`` for a selector loop, ``recv() -> (data, source) | None`` and
``close()``. ``recv`` returns None for anything it dropped (counted in ``counters``).
"""

from __future__ import annotations

import errno
import os
import selectors
import socket
import struct
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Protocol

from cxtp import constants as c
from cxtp.engine import TRANSPORT_AR, TRANSPORT_ICMP
from cxtp.errors import DecodeError
from cxtp.icmp import unwrap, wrap
from cxtp.messages import HEADER_LENGTH, peek_length
from nodes import netns

# Linux values not exported by Python's socket module.
ICMP6_FILTER = 1  # <netinet/icmp6.h>, level IPPROTO_ICMPV6
SOL_SCTP = 132
SCTP_RTOINFO = 0
SCTP_INITMSG = 2
SCTP_NODELAY = 3
SCTP_DEFAULT_SEND_PARAM = 10
SCTP_UNORDERED = 1
MSG_NOTIFICATION = 0x8000  # <netinet/sctp.h>
IPPROTO_SCTP = getattr(socket, "IPPROTO_SCTP", 132)
_SCTP_SNDRCVINFO = struct.Struct("@HHHIIIIIi")  # struct sctp_sndrcvinfo (32 octets)
_SCTP_INITMSG = struct.Struct("@HHHH")  # struct sctp_initmsg: ostreams, instreams, attempts, init timeout
_SCTP_RTOINFO = struct.Struct("@iIII")  # struct sctp_rtoinfo: assoc id, initial, max, min (ms; 0: unchanged)
#: INIT retransmissions before an association that cannot be set up is given up, with what waits
#: in it (RFC 9260's RTO.Initial of 1 s for the first): at most about 3 s
SETUP_ATTEMPTS = 2
SETUP_RTO_INITIAL_MS = 1000
MAX_MESSAGE = 65535 + 64


class Transport(Protocol):
    """What every transport has (see above), for those that take any of them."""

    kind: str
    counters: Counter[str]

    def fileno(self) -> int: ...

    def send(self, data: bytes, destination: str) -> None: ...

    def recv(self) -> tuple[bytes, str] | None: ...

    def close(self) -> None: ...


def _strip_scope(address: str) -> str:
    return address.split("%", 1)[0]


def icmp6_filter_pass_only(icmp_type: int) -> bytes:
    """struct icmp6_filter blocking every type but one (Linux: a set bit blocks the type)."""
    words = [0xFFFFFFFF] * 8
    words[icmp_type >> 5] &= ~(1 << (icmp_type & 31))
    return struct.pack("@8I", *words)


def _make_socket(namespace: str | int | None, family: int, kind: int, protocol: int) -> socket.socket:
    return netns.socket_in(namespace, family, kind, protocol)


class IcmpTransport:
    """Raw ICMP Experimental Mobility socket of an MN or an AR access interface (RFC 4067 §3.2)."""

    kind = TRANSPORT_ICMP

    def __init__(self, family: int = socket.AF_INET6, namespace: str | int | None = None,
                 interface: str | None = None) -> None:
        self.family = family
        self.counters: Counter[str] = Counter()
        if family == socket.AF_INET6:
            sock = _make_socket(namespace, family, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, c.CXTP_HOP_LIMIT)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, c.CXTP_HOP_LIMIT)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVHOPLIMIT, 1)
            sock.setsockopt(socket.IPPROTO_ICMPV6, ICMP6_FILTER,
                            icmp6_filter_pass_only(c.ICMPV6_TYPE_EXPERIMENTAL_MOBILITY))
        else:
            sock = _make_socket(namespace, family, socket.SOCK_RAW, socket.IPPROTO_ICMP)
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, c.CXTP_HOP_LIMIT)
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, c.CXTP_HOP_LIMIT)
        if interface:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, interface.encode())
        self._interface_index = socket.if_nametoindex(interface) if interface else 0
        self.sock = sock

    def fileno(self) -> int:
        return self.sock.fileno()

    def send(self, data: bytes, destination: str) -> None:
        """ICMPv6: the kernel fills the checksum on raw ICMPv6 sockets; ICMPv4: ``wrap`` does."""
        if self.family == socket.AF_INET6:
            scope = self._interface_index if destination.lower().startswith("fe80") else 0
            self.sock.sendto(wrap(data, ipv4=False), (destination, 0, 0, scope))
        else:
            self.sock.sendto(wrap(data, ipv4=True), (destination, 0))
        self.counters["sent"] += 1

    def recv(self) -> tuple[bytes, str] | None:
        if self.family == socket.AF_INET6:
            data, ancillary, _flags, address = self.sock.recvmsg(MAX_MESSAGE, socket.CMSG_SPACE(4))
            hop_limit = None
            for level, kind, value in ancillary:
                if level == socket.IPPROTO_IPV6 and kind == socket.IPV6_HOPLIMIT and len(value) >= 4:
                    hop_limit = struct.unpack("@i", value[:4])[0]
            icmp = data
        else:
            data, address = self.sock.recvfrom(MAX_MESSAGE)
            header_length = (data[0] & 0x0F) * 4 if data else 0
            hop_limit = data[8] if len(data) > 8 else None
            icmp = data[header_length:]
        if hop_limit != c.CXTP_HOP_LIMIT:  # off-link sender, or no ancillary data: drop
            self.counters["hop_limit_drops"] += 1
            return None
        try:
            payload = unwrap(icmp, ipv4=self.family == socket.AF_INET)
        except DecodeError:  # another Experimental Mobility subtype, or not ours at all
            self.counters["not_cxtp"] += 1
            return None
        self.counters["received"] += 1
        return payload, _strip_scope(address[0])

    def close(self) -> None:
        self.sock.close()


class SctpTransport:
    """AR-AR CXTP over SCTP port 5091, one-to-many style (RFC 4067 §3.1, RFC 4065 §2)."""

    kind = TRANSPORT_AR

    def __init__(self, bind_address: str = "::", port: int = c.CXTP_SCTP_PORT,
                 family: int = socket.AF_INET6, namespace: str | int | None = None,
                 lifetime_ms: int = int(c.CT_MAX_TRANSFER_TIME * 1000), unordered: bool = True,
                 ppid: int = c.CXTP_SCTP_PPID) -> None:
        self.counters: Counter[str] = Counter()
        self.port = port
        sock = _make_socket(namespace, family, socket.SOCK_SEQPACKET, IPPROTO_SCTP)
        sock.setsockopt(SOL_SCTP, SCTP_NODELAY, 1)  # no bundling delay (§3.1)
        self.sock = sock
        self._flags, self._ppid = (SCTP_UNORDERED if unordered else 0), ppid
        self.set_lifetime(lifetime_ms)
        sock.bind((bind_address, port))
        sock.listen(16)

    def set_lifetime(self, lifetime_ms: int) -> None:
        """Default send parameters: U bit, PPID, and the PR-SCTP lifetime (§3.1), which is the
        transfer's own time limit: a message older than that is of no use to the peer.

        The kernel applies the lifetime only on an association whose peer said it does PR-SCTP:
        a message sent while the association is still being set up (the first one to a peer,
        or any while the peer does not answer) would wait for as long as set-up takes, and Linux
        retries an INIT for minutes. So set-up is bounded too (SCTP_INITMSG, SCTP_RTOINFO's
        initial RTO): an association that cannot be set up within about 3 s is given up with
        what waits in it, and the next send starts another. The engines' transfer identity and
        freshness checks are the first line (docs/protocol.md); this is the second."""
        lifetime_ms = int(lifetime_ms)
        self.sock.setsockopt(SOL_SCTP, SCTP_DEFAULT_SEND_PARAM, _SCTP_SNDRCVINFO.pack(
            0, 0, self._flags, socket.htonl(self._ppid), 0, lifetime_ms, 0, 0, 0))
        self.sock.setsockopt(SOL_SCTP, SCTP_RTOINFO, _SCTP_RTOINFO.pack(0, SETUP_RTO_INITIAL_MS, 0, 0))
        self.sock.setsockopt(SOL_SCTP, SCTP_INITMSG, _SCTP_INITMSG.pack(
            0, 0, SETUP_ATTEMPTS, max(lifetime_ms, SETUP_RTO_INITIAL_MS)))

    def fileno(self) -> int:
        return self.sock.fileno()

    def send(self, data: bytes, destination: str) -> None:
        """One CXTP message = one SCTP user message; the association is set up on first use.
        Never blocks the agent: a peer that does not answer costs a failed send, not a stall."""
        self.sock.sendto(data, socket.MSG_DONTWAIT, (destination, self.port))
        self.counters["sent"] += 1

    def recv(self) -> tuple[bytes, str] | None:
        data, _ancillary, flags, address = self.sock.recvmsg(MAX_MESSAGE)
        if flags & MSG_NOTIFICATION:  # an SCTP event, not a user message
            self.counters["notifications"] += 1
            return None
        if not flags & socket.MSG_EOR:  # a message larger than our buffer: cannot be CXTP
            self.counters["truncated"] += 1
            return None
        self.counters["received"] += 1
        return data, _strip_scope(address[0])

    def close(self) -> None:
        self.sock.close()


class TcpTransport:
    """AR-AR CXTP over TCP: the option of §3.1 for networks without SCTP.

    Messages are cut from the byte stream by their own header: read 4 octets, then Length - 4.
    ``fileno()`` is an epoll descriptor covering the listener and every connection. Sending never
    waits for a peer: a connection is set up in the background (non-blocking connect), and what a
    socket does not take at once waits, bounded, until it is writable.
    """

    kind = TRANSPORT_AR
    #: octets waiting for one peer; beyond it a message is refused (the peer takes nothing, and a
    #: CXTP message older than the transfer time is of no use to it anyway)
    MAX_PENDING = 1 << 20

    def __init__(self, bind_address: str = "::", port: int = c.CXTP_SCTP_PORT,
                 family: int = socket.AF_INET6, namespace: str | int | None = None) -> None:
        self.counters: Counter[str] = Counter()
        self.port, self.family, self.namespace = port, family, namespace
        self.listener = _make_socket(namespace, family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind((bind_address, port))
        self.listener.listen(16)
        self.listener.setblocking(False)
        self._selector = selectors.EpollSelector()
        self._selector.register(self.listener, selectors.EVENT_READ)
        self._outgoing: dict[str, socket.socket] = {}
        self._buffers: dict[socket.socket, bytearray] = {}
        self._pending: dict[socket.socket, bytearray] = {}  # outgoing octets not yet taken
        self._ready: list[tuple[bytes, str]] = []
        # a self-pipe keeps fileno() readable while parsed messages wait in _ready
        self._wake_read, self._wake_write = os.pipe()
        os.set_blocking(self._wake_read, False)
        self._selector.register(self._wake_read, selectors.EVENT_READ)

    def fileno(self) -> int:
        return self._selector.fileno()

    def send(self, data: bytes, destination: str) -> None:
        conn = self._outgoing.get(destination)
        if conn is None:
            conn = _make_socket(self.namespace, self.family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn.setblocking(False)
            error = conn.connect_ex((destination, self.port))
            if error not in (0, errno.EINPROGRESS):
                conn.close()
                raise OSError(error, f"connect to {destination}: {os.strerror(error)}")
            self._outgoing[destination] = conn
            self._buffers[conn] = bytearray()
            self._pending[conn] = bytearray()
            self._selector.register(conn, selectors.EVENT_READ | selectors.EVENT_WRITE)
        pending = self._pending[conn]
        if len(pending) + len(data) > self.MAX_PENDING:
            self.counters["send_queue_full"] += 1
            raise OSError(errno.ENOBUFS, f"{destination} takes nothing: {len(pending)} octets wait")
        pending += data
        self._flush(conn)
        self.counters["sent"] += 1

    def _flush(self, conn: socket.socket) -> None:
        """Hand the socket what it takes now; watch for writability only while octets wait."""
        pending = self._pending.get(conn)
        if pending is None:
            return
        if pending:
            try:
                del pending[:conn.send(pending)]
            except (BlockingIOError, InterruptedError):  # still connecting, or the buffer is full
                pass
            except OSError:  # refused, reset, unreachable: what waited is lost with the connection
                self.counters["send_errors"] += 1
                self._drop(conn)
                return
        self._selector.modify(conn, selectors.EVENT_READ | (selectors.EVENT_WRITE if pending else 0))

    def _watch(self, conn: socket.socket) -> None:
        conn.setblocking(True)
        self._buffers[conn] = bytearray()
        self._selector.register(conn, selectors.EVENT_READ)

    def _drop(self, conn: socket.socket) -> None:
        self._selector.unregister(conn)
        self._buffers.pop(conn, None)
        self._pending.pop(conn, None)
        for peer, outgoing in list(self._outgoing.items()):
            if outgoing is conn:
                del self._outgoing[peer]
        conn.close()

    def recv(self) -> tuple[bytes, str] | None:
        if not self._ready:
            for key, mask in self._selector.select(0):
                if key.fileobj == self._wake_read:
                    continue
                if key.fileobj is self.listener:
                    try:
                        conn, _ = self.listener.accept()
                    except BlockingIOError:
                        continue
                    self._watch(conn)
                    continue
                conn = key.fileobj  # type: ignore[assignment]
                if mask & selectors.EVENT_WRITE:
                    self._flush(conn)
                if not mask & selectors.EVENT_READ or conn not in self._buffers:
                    continue
                try:
                    chunk = conn.recv(MAX_MESSAGE)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:  # a connection that failed
                    chunk = b""
                if not chunk:
                    self._drop(conn)
                    continue
                buffer = self._buffers[conn]
                buffer += chunk
                peer = _strip_scope(conn.getpeername()[0])
                while len(buffer) >= HEADER_LENGTH:
                    try:
                        length = peek_length(bytes(buffer[:HEADER_LENGTH]))
                    except DecodeError:  # the stream lost its framing: nothing after is trustworthy
                        self.counters["framing_errors"] += 1
                        self._drop(conn)
                        break
                    if len(buffer) < length:
                        break
                    self._ready.append((bytes(buffer[:length]), peer))
                    del buffer[:length]
        if not self._ready:
            return None
        self.counters["received"] += 1
        message = self._ready.pop(0)
        self._signal_pending()
        return message

    def _signal_pending(self) -> None:
        try:
            while os.read(self._wake_read, 64):
                pass
        except BlockingIOError:
            pass
        if self._ready:
            os.write(self._wake_write, b"!")

    def close(self) -> None:
        for conn in list(self._buffers):
            self._drop(conn)
        self._selector.unregister(self.listener)
        self.listener.close()
        os.close(self._wake_read)
        os.close(self._wake_write)
        self._selector.close()


def flush(engine, transports: Mapping[str, Transport], on_error: Callable[[Exception], None] | None = None) -> int:
    """Send everything ``engine`` has queued through ``transports[datagram.transport]``."""
    sent = 0
    for datagram in engine.datagrams_to_send():
        try:
            transports[datagram.transport].send(datagram.data, datagram.destination)
            sent += 1
        except OSError as error:
            if on_error is None:
                raise
            on_error(error)
    return sent
