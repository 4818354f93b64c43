"""UDP probe streams between the MN and the HA: the traffic whose interruption every method is judged by.

Both ends live in the HA agent's process, started once before the measurements (a process start
is expensive in the UML guest) and stopped with SIGTERM at the end: the HA end's socket in the
HA's namespace, the MN end's in the MN's (a socket keeps the namespace it was made in, so the
MN's probes leave through the MN's own routes and IPsec state, as the MN's traffic). One sender
thread serves both ends: one wake per slot on the guest's one CPU instead of one per end. Each
end records, for every probe it receives, the sequence number and the send and receive times on
the monotonic clock, which one kernel shares across all namespaces. The traces are written when
the agent stops.

The probes run between the HA's address and the MN's home address, as an application on the MN
would: through the MN-HA tunnel, which the agents point at the MN's care-of address
(:mod:`nodes.home_path`); each end's interfaces are tunnels, one per access router, so the
interface a probe arrives on still names the path it took.

Probe payload (network byte order): magic "TBPR", sequence u32, send time u64 ns, padding.
"""

from __future__ import annotations

import bisect
import ctypes
import json
import os
import selectors
import socket
import statistics
import struct
import threading
import time
from array import array
from typing import Any

from nodes import netns

MAGIC = b"TBPR"
HEADER = struct.Struct("!4sIQ")
DEFAULT_PORT = 40000
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)  # <asm-generic/socket.h>
SCM_TIMESTAMPNS = SO_TIMESTAMPNS
RECEIVE_TIMEOUT = struct.pack("@ll", 0, 200_000)  # struct timeval for SO_RCVTIMEO: 0.2 s
CLOCK_MONOTONIC = 1  # <linux/time.h>
TIMER_ABSTIME = 1
EINTR = 4


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


def _absolute_sleeper():
    """A sleep until a point on the monotonic clock, in one system call.

    ``time.sleep`` reads the clock and then sleeps: two system calls, and in the UML guest (no
    vDSO) each is a real system call on the one CPU the agents share (docs/performance.md). The
    sender wakes 500-1000 times a second, so it sleeps with clock_nanosleep(TIMER_ABSTIME)
    instead; where libc does not offer it, with ``time.sleep``.
    """
    try:
        clock_nanosleep = ctypes.CDLL(None, use_errno=True).clock_nanosleep
    except (OSError, AttributeError):
        return lambda deadline_ns: time.sleep(max(0, deadline_ns - time.monotonic_ns()) / 1e9)
    clock_nanosleep.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.POINTER(_Timespec), ctypes.c_void_p]
    request = _Timespec()
    pointer = ctypes.byref(request)

    def sleep_until(deadline_ns: int) -> None:
        request.tv_sec, request.tv_nsec = divmod(deadline_ns, 1_000_000_000)
        while clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, pointer, None) == EINTR:
            pass

    return sleep_until


def send_lateness_ms(sent_ns, late_us, start_ns: int, end_ns: int) -> float | None:
    """The p99 of how late the probes sent between two instants left against their schedule (ms),
    None when none was sent. One function for the runner's question during a run and for the
    report's reading of the trace afterwards, so both give the same verdict."""
    low, high = bisect.bisect_left(sent_ns, start_ns), bisect.bisect_right(sent_ns, end_ns)
    window = late_us[low:high]
    if len(window) < 2:  # quantiles() needs two points
        return window[0] / 1000 if window else None
    return statistics.quantiles(window, n=100, method="inclusive")[98] / 1000


#: the one receiver of many streams (ProbeStreams.receive_all): below the senders' 50
RECEIVE_ALL_PRIORITY = 49


def raise_priority(priority: int = 50) -> None:
    """Real-time priority for the calling thread, so probes leave and are stamped on time.

    The UML guest has one virtual CPU shared by every agent; without this, a probe can wait a
    whole scheduler slice behind another process, which is noise in the figures.
    """
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(priority))
    except (OSError, AttributeError):
        pass  # not root, or no RT scheduling: the measurement is noisier but still valid


class ProbeEnd:
    """One end of the probe stream: its socket (in ``namespace``, None for the caller's), the
    probes it sent and received, and its receive thread's loop. :class:`ProbeStreams` sends."""

    def __init__(self, role: str, peer: str, port: int, rate: float, size: int, bind_address: str = "::",
                 namespace: int | str | None = None):
        self.role = role
        self.peer = peer
        self.port = port
        self.namespace = namespace
        self.interval_ns = int(1e9 / rate)
        self.padding = b"\0" * max(0, size - HEADER.size)
        self.sock = netns.socket_in(namespace, socket.AF_INET6, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 21)
        # Each end binds its address: the HA its own, the MN its home address (the MN's rule for
        # that source sends its probes through the MN-HA tunnel, wherever the MN is).
        self.sock.bind((bind_address, port))
        # Blocking, with the kernel's receive timeout rather than Python's: a Python socket
        # timeout reads the clock and polls before every send and receive, three system calls
        # more per probe, each a real system call in the guest. The receiver wakes every 0.2 s when idle
        # to see whether it should stop; the sender never waits (MSG_DONTWAIT).
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, RECEIVE_TIMEOUT)
        self.sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        # the interface each probe came in on: which path delivered it (the old AR's or the new's)
        self.sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)
        self.realtime_offset_ns = time.time_ns() - time.monotonic_ns()
        # Columns of the traces, kept as compact arrays: 1000 probes/s for minutes is fine.
        self.sent_seq, self.sent_ns, self.sent_ok = array("I"), array("Q"), array("B")
        self.sent_late_us = array("I")  # how late each probe left against its schedule: emulation fidelity
        self.recv_seq, self.recv_tx_ns, self.recv_rx_ns = array("I"), array("Q"), array("Q")
        self.recv_ifindex = array("I")
        self.decode_errors = 0
        self._checkpointed = (0, 0)  # rows of (sent, received) already in the checkpoint file
        self._decode_errors_checkpointed = 0

    def send(self, sequence: int, next_ns: int) -> None:
        """The probe of the slot that began at ``next_ns``: one clock read (the send stamp, and the
        lateness against the slot), sent without waiting."""
        stamp = time.monotonic_ns()
        ok = 1
        try:
            # Never wait for buffer space: a probe that cannot leave now is a lost probe, and
            # a blocked sender would stop the schedule that losses are counted against.
            self.sock.sendto(HEADER.pack(MAGIC, sequence, stamp) + self.padding, socket.MSG_DONTWAIT,
                             (self.peer, self.port))
        except OSError:
            ok = 0  # no route while detached, or no buffer: the probe is lost at the sender
        self.sent_seq.append(sequence)
        self.sent_ns.append(stamp)
        self.sent_ok.append(ok)
        self.sent_late_us.append(min(max(stamp - next_ns, 0) // 1000, 0xFFFFFFFF))

    def receive_loop(self, stopping: threading.Event) -> None:
        raise_priority()
        while not stopping.is_set():
            self.receive(0)

    def receive(self, flags: int = socket.MSG_DONTWAIT) -> bool:
        """One probe from the socket (blocking up to the receive timeout with ``flags`` 0); False
        when none was there."""
        try:
            data, ancillary, _flags, _source = self.sock.recvmsg(2048, socket.CMSG_SPACE(16)
                                                                + socket.CMSG_SPACE(20), flags)
        except OSError:
            return False  # the receive timeout or nothing queued (EAGAIN)
        self._record(data, ancillary)
        return True

    def _record(self, data: bytes, ancillary) -> None:
        arrival, ifindex = self._arrival(ancillary)
        if len(data) < HEADER.size or data[:4] != MAGIC:
            self.decode_errors += 1
            return
        _, sequence, sent = HEADER.unpack_from(data)
        self.recv_seq.append(sequence)
        self.recv_tx_ns.append(sent)
        self.recv_rx_ns.append(arrival)
        self.recv_ifindex.append(ifindex)

    def _arrival(self, ancillary) -> tuple[int, int]:
        """The kernel's receive time of the packet, on the monotonic clock, and its interface.

        SO_TIMESTAMPNS stamps packets as they arrive (CLOCK_REALTIME), so a receive thread that
        the guest schedules late does not shift the figures; the realtime-monotonic offset was
        taken at start (nothing steps the guest's clock during a run). IPV6_PKTINFO names the
        interface the packet came in on (in6_pktinfo: 16-octet address, then the index).
        """
        arrival, ifindex = None, 0
        for level, kind, value in ancillary:
            if level == socket.SOL_SOCKET and kind == SCM_TIMESTAMPNS and len(value) >= 16:
                seconds, nanoseconds = struct.unpack("@qq", value[:16])
                arrival = seconds * 1_000_000_000 + nanoseconds - self.realtime_offset_ns
            elif level == socket.IPPROTO_IPV6 and kind == socket.IPV6_PKTINFO and len(value) >= 20:
                ifindex = struct.unpack("@I", value[16:20])[0]
        return (time.monotonic_ns() if arrival is None else arrival), ifindex

    def _columns(self, sent: slice | None = None, received: slice | None = None) -> dict[str, dict[str, array]]:
        """The trace's columns: whole (no copy), or the rows of the slices given."""
        def rows(values: array, part: slice | None) -> array:
            return values if part is None else values[part]

        return {
            "sent": {"seq": rows(self.sent_seq, sent), "ns": rows(self.sent_ns, sent),
                     "ok": rows(self.sent_ok, sent), "late_us": rows(self.sent_late_us, sent)},
            "received": {"seq": rows(self.recv_seq, received), "tx_ns": rows(self.recv_tx_ns, received),
                         "rx_ns": rows(self.recv_rx_ns, received), "ifindex": rows(self.recv_ifindex, received)},
        }

    def checkpoint(self, path: str) -> int:
        """Append what was sent and received since the last checkpoint to ``<path>.part`` (one
        JSON line): a process that is killed keeps its records up to there, and a restarted one
        continues from them (:meth:`resume`). Returns the rows written."""
        sent_to, received_to = len(self.sent_seq), len(self.recv_seq)
        sent_to = min(sent_to, len(self.sent_ns), len(self.sent_ok), len(self.sent_late_us))
        received_to = min(received_to, len(self.recv_tx_ns), len(self.recv_rx_ns), len(self.recv_ifindex))
        columns = self._columns(slice(self._checkpointed[0], sent_to), slice(self._checkpointed[1], received_to))
        rows = sent_to - self._checkpointed[0] + received_to - self._checkpointed[1]
        if rows:
            line: dict[str, Any] = {group: {name: list(values) for name, values in arrays.items()}
                                    for group, arrays in columns.items()}
            line["decode_errors"] = self.decode_errors - self._decode_errors_checkpointed  # since the last
            with open(path + ".part", "a") as handle:
                handle.write(json.dumps(line) + "\n")
            self._checkpointed = (sent_to, received_to)
            self._decode_errors_checkpointed = self.decode_errors
        return rows

    def resume(self, path: str) -> int:
        """Take over the records of an earlier process of this end (its trace, or its checkpoints
        when it was killed before writing one); returns the last sequence number it sent (0 if none)."""
        parts: list[dict] = []
        if os.path.exists(path):  # the trace of a process that stopped: everything up to then
            with open(path) as handle:
                parts.append(json.load(handle))
        if os.path.exists(path + ".part"):  # checkpoints since (a process that was killed)
            with open(path + ".part") as handle:
                parts += [json.loads(line) for line in handle if line.strip()]
        for part in parts:
            for group, columns in self._columns().items():
                for name, values in columns.items():
                    values.extend(part[group].get(name) or [0] * len(part[group]["seq"]))
            self.decode_errors += part.get("decode_errors", 0)
        # what is on disk already: the next checkpoint appends after it
        self._checkpointed = (len(self.sent_seq), len(self.recv_seq))
        self._decode_errors_checkpointed = self.decode_errors
        return max(self.sent_seq, default=0)

    def arrivals(self, since_ns: int) -> dict[str, int]:
        """Probes received since ``since_ns``, per interface name of this end's namespace."""
        names = dict(netns.call_in(self.namespace, socket.if_nameindex))
        counts: dict[str, int] = {}
        position = min(len(self.recv_rx_ns), len(self.recv_ifindex)) - 1
        while position >= 0 and self.recv_rx_ns[position] >= since_ns:
            name = names.get(self.recv_ifindex[position], str(self.recv_ifindex[position]))
            counts[name] = counts.get(name, 0) + 1
            position -= 1
        return counts

    def write(self, path: str) -> None:
        """The trace as JSON, written column by column in chunks: a long run's columns hold
        millions of numbers, and as Python lists they would cost the guest hundreds of MB.
        It holds everything the checkpoints held, which it replaces."""
        columns = self._columns()
        # the interfaces of the end's own namespace: the ifindex of each probe received names one
        interfaces = netns.call_in(self.namespace, socket.if_nameindex)
        header = {"role": self.role, "port": self.port, "interval_ns": self.interval_ns,
                  "decode_errors": self.decode_errors,
                  "interfaces": {str(index): name for index, name in interfaces}}
        temporary = path + ".tmp"
        with open(temporary, "w") as handle:
            handle.write(json.dumps(header)[:-1])
            for group, arrays in columns.items():
                handle.write(f', "{group}": {{')
                for position, (name, values) in enumerate(arrays.items()):
                    handle.write(f'{", " if position else ""}"{name}": [')
                    for start in range(0, len(values), 65536):
                        handle.write(("," if start else "") + ",".join(map(str, values[start:start + 65536])))
                    handle.write("]")
                handle.write("}")
            handle.write("}")
        os.replace(temporary, path)
        if os.path.exists(path + ".part"):
            os.unlink(path + ".part")
        self._checkpointed = (len(self.sent_seq), len(self.recv_seq))
        self._decode_errors_checkpointed = self.decode_errors


class ProbeStreams:
    """The probe ends of one process, with one sender for all of them.

    Each slot, the sender wakes once and sends every end's probe, each stamped as it leaves:
    in the UML guest a wake is a context switch of the host, and two ends waking on their own
    cost the protocol agents twice that on the one CPU they share with the probes. Each end
    has its receive thread; the kernel stamps each arrival."""

    def __init__(self, ends: list[ProbeEnd], one_receiver: bool = False) -> None:
        """``one_receiver``: every end's arrivals on one thread (:meth:`receive_all`), not one each."""
        if not ends or len({end.interval_ns for end in ends}) != 1:
            raise ValueError("probe ends of one sender share one rate")
        self.ends = ends
        self.one_receiver = one_receiver
        self.stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self.first_sequence = 1
        #: paced ends: every how many slots each sends (0: silent), and its own next sequence number
        self._every: dict[ProbeEnd, int] = {}
        self._next: dict[ProbeEnd, int] = {}

    def pace(self, ends: list[ProbeEnd], every: int) -> None:
        """``ends`` send in one slot of ``every`` (0: not at all) from now on, each numbering its
        probes on from its last, so that a receiver sees no gap the pacing made. Many MNs' probes
        within the emulator's budget: only the moving MNs', at a rate that budget allows."""
        if every < 0:
            raise ValueError(f"every must be 0 (silent) or more, got {every}")
        for end in ends:
            self._next.setdefault(end, (end.sent_seq[-1] + 1) if len(end.sent_seq) else self.first_sequence)
            self._every[end] = every

    def send_loop(self) -> None:
        """One probe per end per interval on a fixed schedule: sleep to the slot, then send."""
        raise_priority()
        sleep_until = _absolute_sleeper()
        interval_ns = self.ends[0].interval_ns
        sequence = self.first_sequence - 1
        next_ns = time.monotonic_ns()
        while not self.stopping.is_set():
            sleep_until(next_ns)
            sequence += 1
            sent = None  # the last end that sent in this slot: its stamp says how late the slot is
            for end in self.ends:
                every = self._every.get(end)
                if every is None:
                    end.send(sequence, next_ns)
                    sent = end
                elif every and sequence % every == 0:
                    own = self._next[end]
                    self._next[end] = own + 1
                    end.send(own, next_ns)
                    sent = end
            next_ns += interval_ns
            if sent is not None and sent.sent_ns[-1] - next_ns > 50 * interval_ns:
                next_ns = sent.sent_ns[-1]  # fell far behind (host stall): do not burst

    def lateness(self, start_ns: int, end_ns: int) -> dict:
        """The control command the runner asks after each handover: per end, the p99 of the send
        lateness over the handover's window (see send_lateness_ms), so that it can repeat a
        handover the probes did not keep time for while the run goes on."""
        return {end.role: send_lateness_ms(end.sent_ns, end.sent_late_us, int(start_ns), int(end_ns))
                for end in self.ends}

    def receive_all(self) -> None:
        """Every end's arrivals on one thread (many MNs' streams): a thread per end would be a
        hundred threads queueing for the interpreter's lock, and the sender behind them. Below the
        senders' real-time priority: draining a backlog of many streams' arrivals (they carry the
        kernel's receive stamps, so a late read changes no figure) must not hold a sender back."""
        raise_priority(RECEIVE_ALL_PRIORITY)
        with selectors.DefaultSelector() as ready:
            for end in self.ends:
                ready.register(end.sock, selectors.EVENT_READ, end)
            while not self.stopping.is_set():
                for key, _ in ready.select(timeout=0.2):
                    while key.data.receive():
                        pass

    def start(self) -> None:
        if self.one_receiver:
            self._threads = [threading.Thread(target=self.receive_all, daemon=True)]
        else:
            self._threads = [threading.Thread(target=end.receive_loop, args=(self.stopping,), daemon=True)
                             for end in self.ends]
        self._threads.append(threading.Thread(target=self.send_loop, daemon=True))
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self.stopping.set()
        for thread in self._threads:
            thread.join(timeout=2)

    @property
    def threads(self) -> tuple[int, int]:
        """(started, still running): one receiver per end and the one sender."""
        return len(self._threads), sum(thread.is_alive() for thread in self._threads)
