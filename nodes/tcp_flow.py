"""A TCP connection between the MN's home address and the HA, carrying paced records both ways:
what an application on the MN sees of a handover (its stack's retransmission timer included),
next to the UDP probes' view of the path.

Both ends live in one process and one thread (a socket keeps the namespace it was made in, as
the probe ends do). Every ``interval_ms`` each end writes one record (magic, sequence number,
send time on the monotonic clock, padding); the other end reads the byte stream, cuts it into
records and stamps each on arrival, so each direction's trace has the probe traces' columns
(``seq``, ``tx_ns``, ``rx_ns``) and the same metrics read it.
"""

from __future__ import annotations

import errno
import json
import os
import selectors
import socket
import struct
import threading
import time

from nodes import netns

MAGIC = b"TBTC"
HEADER = struct.Struct("!4sIQ")
#: tcp_info's first byte, the connection's state (include/net/tcp_states.h)
TCP_ESTABLISHED = 1
#: tcp_info: state, ca_state, retransmits, probes, backoff, options, wscale, flags; then u32 rto (us)
_TCP_INFO_HEAD = struct.Struct("=BBBBBBBBI")


class TcpFlowError(RuntimeError):
    """The flow could not be set up, or its stream carried something that is not a record."""


class TcpFlow:
    """One connection, ``ha`` end listening on the HA's address, ``mn`` end bound to the home
    address; ``received[role]`` is what that end received: (seq, tx_ns, rx_ns) per record."""

    def __init__(self, ha_namespace: int | str | None, mn_namespace: int | str | None, ha_address: str,
                 home_address: str, port: int = 5201, interval_ms: float = 10.0, record_size: int = 256,
                 connect_timeout_s: float = 10.0) -> None:
        if record_size < HEADER.size:
            raise ValueError(f"a record holds at least its {HEADER.size}-octet header")
        self.interval_ns = int(interval_ms * 1e6)
        self.record_size = record_size
        self._endpoints = (ha_namespace, mn_namespace, ha_address, home_address, port, connect_timeout_s)
        self.received: dict[str, list[tuple[int, int, int]]] = {"ha": [], "mn": []}
        #: the sequence number of each end's next record (a new connection, or a restarted
        #: process, continues the numbering)
        self.next_sequence = {"ha": 1, "mn": 1}
        self._checkpointed = {"ha": 0, "mn": 0}
        self.sent = {"ha": 0, "mn": 0}
        #: records an end could not even queue (its send buffer full): the stream was stalled
        self.skipped = {"ha": 0, "mn": 0}
        self.errors: list[str] = []
        #: connections opened: one, and one more per :meth:`reconnect`
        self.connections = 0
        self.sockets = self._connect()

    def _connect(self) -> dict[str, socket.socket]:
        ha_namespace, mn_namespace, ha_address, home_address, port, timeout_s = self._endpoints
        listener = netns.socket_in(ha_namespace, socket.AF_INET6, socket.SOCK_STREAM)
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((ha_address, port))
            listener.listen(1)
            listener.settimeout(timeout_s)
            client = netns.socket_in(mn_namespace, socket.AF_INET6, socket.SOCK_STREAM)
            client.bind((home_address, 0))
            client.settimeout(timeout_s)
            client.connect((ha_address, port))
            server, _ = listener.accept()
        except OSError as error:
            raise TcpFlowError(f"connecting {home_address} to [{ha_address}]:{port}: {error}") from error
        finally:
            listener.close()
        sockets = {"ha": server, "mn": client}
        for sock in sockets.values():
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.connections += 1
        self._pending = {"ha": b"", "mn": b""}
        self._buffers = {"ha": b"", "mn": b""}
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        return sockets

    def start(self) -> TcpFlow:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(timeout=5)
        for sock in self.sockets.values():
            sock.close()

    def reconnect(self) -> None:
        """A new connection in place of this one, as an application opens one after its security
        changed under it (the runner's change of method: for seconds nothing may pass, and TCP's
        backed-off timer would then stall the next handovers' figures). The numbering goes on."""
        self.stop()
        self.sockets = self._connect()
        first = dict(self.next_sequence)
        self.start()
        # ready when each end has received the new connection's first record (within the
        # connect timeout): a handover right after this measures a flowing stream
        deadline = time.monotonic() + self._endpoints[-1]
        while time.monotonic() < deadline and not self.errors and not all(
                self.received[role] and self.received[role][-1][0] >= first[self._peer(role)] for role in first):
            time.sleep(self.interval_ns / 1e9)

    def state(self, role: str) -> tuple[int, float]:
        """The connection's TCP state at ``role``'s end and its retransmission timeout (ms)."""
        info = self.sockets[role].getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_HEAD.size)
        fields = _TCP_INFO_HEAD.unpack(info)
        return fields[0], fields[-1] / 1000

    def received_trace(self, role: str) -> dict:
        """What ``role``'s end received, in the probe traces' layout (for the metrics)."""
        rows = self.received[role]
        return {"received": {"seq": [row[0] for row in rows], "tx_ns": [row[1] for row in rows],
                             "rx_ns": [row[2] for row in rows]}}

    # -- the traces, as the probe ends keep theirs: written at the stop, checkpointed in between ----
    def write(self, paths: dict[str, str]) -> None:
        """Each end's trace (what it received), replacing its checkpoints."""
        for role, path in paths.items():
            trace = self.received_trace(role)
            trace.update(role=role, interval_ns=self.interval_ns, record_size=self.record_size,
                         sent=self.sent[self._peer(role)], skipped=self.skipped[self._peer(role)],
                         connections=self.connections, errors=self.errors)
            with open(path + ".tmp", "w") as handle:
                json.dump(trace, handle)
            os.replace(path + ".tmp", path)
            if os.path.exists(path + ".part"):
                os.unlink(path + ".part")
            self._checkpointed[role] = len(trace["received"]["seq"])

    def checkpoint(self, paths: dict[str, str]) -> int:
        """Append what each end received since the last checkpoint to ``<path>.part``; returns the rows."""
        written = 0
        for role, path in paths.items():
            rows = self.received[role][self._checkpointed[role]:]
            if rows:
                with open(path + ".part", "a") as handle:
                    handle.write(json.dumps({"seq": [r[0] for r in rows], "tx_ns": [r[1] for r in rows],
                                             "rx_ns": [r[2] for r in rows]}) + "\n")
                self._checkpointed[role] += len(rows)
                written += len(rows)
        return written

    def resume(self, paths: dict[str, str]) -> None:
        """Take over the records of an earlier process's connection (its traces, or its checkpoints
        when it was killed); this connection numbers its records after them."""
        last = 0
        for role, path in paths.items():
            parts = []
            if os.path.exists(path):
                with open(path) as handle:
                    parts.append(json.load(handle)["received"])
            if os.path.exists(path + ".part"):
                with open(path + ".part") as handle:
                    parts += [json.loads(line) for line in handle if line.strip()]
            for part in parts:
                self.received[role].extend(zip(part["seq"], part["tx_ns"], part["rx_ns"]))
            self._checkpointed[role] = len(self.received[role])
            last = max([last, *(row[0] for row in self.received[role])])
        self.next_sequence = {"ha": last + 1, "mn": last + 1}

    @staticmethod
    def _peer(role: str) -> str:
        return "ha" if role == "mn" else "mn"

    def _loop(self) -> None:
        selector = selectors.DefaultSelector()
        for role, sock in self.sockets.items():
            selector.register(sock, selectors.EVENT_READ, role)
        next_ns = time.monotonic_ns()
        try:
            while not self._stopping.is_set() and not self.errors:
                timeout = max(0.0, (next_ns - time.monotonic_ns()) / 1e9)
                for key, _ in selector.select(timeout):
                    self._receive(key.data)
                if time.monotonic_ns() >= next_ns:
                    for role in self.sockets:
                        self._send(role, next_ns)
                    next_ns += self.interval_ns
                    next_ns = max(next_ns, time.monotonic_ns() - 10 * self.interval_ns)  # no burst after a stall
        finally:
            selector.close()

    def _send(self, role: str, scheduled_ns: int) -> None:
        if self._pending[role]:
            self.skipped[role] += 1  # the last record is not even queued: the stream is stalled
        else:
            self.sent[role] += 1
            record = HEADER.pack(MAGIC, self.next_sequence[role], time.monotonic_ns())
            self.next_sequence[role] += 1
            self._pending[role] = record + b"\0" * (self.record_size - HEADER.size)
        try:
            written = self.sockets[role].send(self._pending[role])
            self._pending[role] = self._pending[role][written:]
        except BlockingIOError:
            pass
        except OSError as error:
            self.errors.append(f"{role} send: {errno.errorcode.get(error.errno or 0, error.errno)}: {error}")

    def _receive(self, role: str) -> None:
        try:
            data = self.sockets[role].recv(1 << 16)
        except BlockingIOError:
            return
        except OSError as error:
            self.errors.append(f"{role} receive: {errno.errorcode.get(error.errno or 0, error.errno)}: {error}")
            return
        arrived = time.monotonic_ns()
        if not data:
            self.errors.append(f"{role}: the other end closed the connection")
            return
        buffer = self._buffers[role] + data
        while len(buffer) >= self.record_size:
            magic, sequence, sent_ns = HEADER.unpack_from(buffer)
            if magic != MAGIC:
                self.errors.append(f"{role}: the stream carried something that is not a record")
                return
            self.received[role].append((sequence, sent_ns, arrived))
            buffer = buffer[self.record_size:]
        self._buffers[role] = buffer
