"""The MN's link-layer handover steps as prebuilt rtnetlink batches: one write per step.

A detach is the access interface going down; an attach is the interface coming up with the
care-of address, the AR's link-layer address (known from the association) and the default route
through the AR. Every message depends only on the topology, so each step's messages are encoded
once, at start (pyroute2's message classes), and a handover sends them in one ``send`` on a raw
NETLINK_ROUTE socket in the MN's namespace and reads the kernel's acknowledgements: the floor of
what the emulation costs, the same for every method. In the UML guest a Python netlink round
trip costs about a millisecond, so four requests one by one were most of the attach.

Between the link coming up and the address, the attach waits until the AR's end of the link is
operational (:class:`LinkQuery`): the kernel completes a carrier change later, in its link-watch
work (the AR's end's queueing discipline, and a cell's bridge port that starts forwarding), and
on the guest's one CPU that work waits behind every real-time thread. Measured there with a
real-time caller: right after the MN's end came up, the bridge port was still disabled and its
operstate LOWERLAYERDOWN; an MN whose CTAR left then lost it, and waited for its retransmission.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from pyroute2.netlink import NLM_F_ACK, NLM_F_CREATE, NLM_F_REPLACE, NLM_F_REQUEST, NLMSG_ERROR
from pyroute2.netlink.rtnl import RTM_GETLINK, RTM_NEWADDR, RTM_NEWLINK, RTM_NEWNEIGH, RTM_NEWROUTE
from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
from pyroute2.netlink.rtnl.ndmsg import ndmsg
from pyroute2.netlink.rtnl.rtmsg import rtmsg

from nodes import netns

IFF_UP = 0x1  # <linux/if.h>
IFA_F_NODAD = 0x02  # <linux/if_addr.h>
NUD_PERMANENT = 0x80  # <linux/neighbour.h>
RT_TABLE_MAIN = 254  # <linux/rtnetlink.h>
RTPROT_BOOT = 3
RT_SCOPE_UNIVERSE = 0
RTN_UNICAST = 1
IFLA_OPERSTATE = 16  # <linux/if_link.h>
IF_OPER_UP = 6  # <linux/if.h>: RFC 2863's operational state "up"
_RTATTR = struct.Struct("=HH")
_IFINFOMSG_SIZE = 16  # struct ifinfomsg
_NLMSGHDR = struct.Struct("=IHHII")
_CHANGE = NLM_F_REQUEST | NLM_F_ACK
_SET = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE


class StepError(RuntimeError):
    """The kernel refused one message of a handover step."""


def _encode(message, message_type: int, flags: int) -> bytes:
    message["header"]["type"] = message_type
    message["header"]["flags"] = flags
    message.encode()
    return bytes(message.data)


def link_state(index: int, up: bool) -> bytes:
    message = ifinfmsg()
    message["family"], message["index"] = socket.AF_UNSPEC, index
    message["change"], message["flags"] = IFF_UP, IFF_UP if up else 0
    return _encode(message, RTM_NEWLINK, _CHANGE)


def address(index: int, local: str, prefix_length: int) -> bytes:
    message = ifaddrmsg()
    message["family"], message["index"] = socket.AF_INET6, index
    message["prefixlen"], message["flags"] = prefix_length, IFA_F_NODAD
    message["attrs"] = [("IFA_LOCAL", local), ("IFA_ADDRESS", local)]
    return _encode(message, RTM_NEWADDR, _SET)


def permanent_neighbour(index: int, destination: str, lladdr: str) -> bytes:
    message = ndmsg()
    message["family"], message["ifindex"], message["state"] = socket.AF_INET6, index, NUD_PERMANENT
    message["attrs"] = [("NDA_DST", destination), ("NDA_LLADDR", lladdr)]
    return _encode(message, RTM_NEWNEIGH, _SET)


def default_route(index: int, gateway: str) -> bytes:
    message = rtmsg()
    message["family"], message["dst_len"], message["table"] = socket.AF_INET6, 0, RT_TABLE_MAIN
    message["proto"], message["scope"], message["type"] = RTPROT_BOOT, RT_SCOPE_UNIVERSE, RTN_UNICAST
    message["attrs"] = [("RTA_GATEWAY", gateway), ("RTA_OIF", index)]
    return _encode(message, RTM_NEWROUTE, _SET)


def link_query(index: int) -> bytes:
    message = ifinfmsg()
    message["family"], message["index"] = socket.AF_UNSPEC, index
    return _encode(message, RTM_GETLINK, NLM_F_REQUEST)


def operstate(reply: bytes) -> int | None:
    """IFLA_OPERSTATE of the first RTM_NEWLINK in ``reply`` (None if it carries none)."""
    length, reply_type = _NLMSGHDR.unpack_from(reply, 0)[:2]
    if reply_type != RTM_NEWLINK:
        return None
    offset = _NLMSGHDR.size + _IFINFOMSG_SIZE
    while offset + _RTATTR.size <= min(length, len(reply)):
        attribute_length, attribute_type = _RTATTR.unpack_from(reply, offset)
        if attribute_length < _RTATTR.size:
            return None
        if attribute_type & 0x3FFF == IFLA_OPERSTATE:  # without NLA_F_NESTED / NLA_F_NET_BYTEORDER
            return reply[offset + _RTATTR.size]
        offset += (attribute_length + 3) & ~3
    return None


class LinkQuery:
    """A NETLINK_ROUTE socket in one namespace (an AR's) that asks whether a link is operational:
    whether the kernel has completed its carrier change (the link-watch work, done under the
    same lock as this request, has set its operstate, started its queueing discipline and told
    the bridge that holds it). Safe from several threads."""

    def __init__(self, target: int | str | None) -> None:
        self._socket = netns.socket_in(target, socket.AF_NETLINK, socket.SOCK_RAW, 0)  # NETLINK_ROUTE
        self._socket.bind((0, 0))
        self._lock = threading.Lock()
        self._requests: dict[int, bytes] = {}

    def close(self) -> None:
        self._socket.close()

    def operational(self, index: int) -> bool:
        request = self._requests.get(index)
        if request is None:
            request = self._requests[index] = link_query(index)
        with self._lock:
            self._socket.send(request)
            while True:
                reply = self._socket.recv(65536)
                reply_type = _NLMSGHDR.unpack_from(reply, 0)[1]
                if reply_type == NLMSG_ERROR:
                    (code,) = struct.unpack_from("=i", reply, _NLMSGHDR.size)
                    raise StepError(f"link {index}: {os.strerror(-code)}")
                if reply_type == RTM_NEWLINK:
                    return operstate(reply) == IF_OPER_UP


class StepSocket:
    """A NETLINK_ROUTE socket in one namespace that sends a prebuilt batch and awaits every ack."""

    def __init__(self, target: int | str | None) -> None:
        self._socket = netns.socket_in(target, socket.AF_NETLINK, socket.SOCK_RAW, 0)  # NETLINK_ROUTE
        self._socket.bind((0, 0))
        self._sequence = 0

    def close(self) -> None:
        self._socket.close()

    def send(self, batch: tuple[bytes, ...]) -> None:
        """Send ``batch`` in one write; raise :class:`StepError` naming the first refused message
        (the kernel goes on with the others, so the step is as complete as it can be)."""
        data, sequences = bytearray(), []
        for message in batch:
            self._sequence = (self._sequence + 1) & 0xFFFFFFFF or 1
            chunk = bytearray(message)
            struct.pack_into("=I", chunk, 8, self._sequence)
            sequences.append(self._sequence)
            data += chunk
        self._socket.send(bytes(data))
        waiting, refused = set(sequences), []
        while waiting:
            reply = self._socket.recv(65536)
            offset = 0
            while offset + _NLMSGHDR.size <= len(reply):
                length, reply_type, _flags, sequence, _pid = _NLMSGHDR.unpack_from(reply, offset)
                if length < _NLMSGHDR.size:
                    raise StepError("truncated netlink reply")
                if reply_type == NLMSG_ERROR and sequence in waiting:
                    waiting.discard(sequence)
                    (code,) = struct.unpack_from("=i", reply, offset + _NLMSGHDR.size)
                    if code:
                        request_type = struct.unpack_from("=H", batch[sequences.index(sequence)], 4)[0]
                        refused.append(f"rtnetlink type {request_type}: {os.strerror(-code)} "
                                       f"({errno.errorcode.get(-code, -code)})")
                offset += (length + 3) & ~3
        if refused:
            raise StepError("; ".join(refused))


@contextmanager
def realtime(priority: int) -> Iterator[None]:
    """Run the block at SCHED_FIFO ``priority`` (above the probes'), then as before.

    The emulated link-layer steps are the emulator's, not the protocol's: they must not wait behind
    the probe threads (real-time, so that probes leave on time) on the guest's one virtual CPU.
    Measured in the guest with 1000 probes/s each way: attach median 15 ms without, 4.6 ms with
    (the netlink calls one by one)."""
    try:
        previous = os.sched_getscheduler(0), os.sched_getparam(0)
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(priority))
    except (OSError, AttributeError):  # not root, or no RT scheduling: steps run as they can
        yield
        return
    try:
        yield
    finally:
        os.sched_setscheduler(0, previous[0], previous[1])
