"""The skeleton every agent process shares: one selector loop, timers, a control socket, a trace.

An agent runs for the whole experiment inside one emulated host (a process start in the UML
guest costs up to 300 ms, so nothing measured may start one). The scenario runner talks to it
over a Unix stream socket with one JSON object per line: ``{"cmd": "...", ...}`` in,
``{"ok": true, ...}`` or ``{"ok": false, "error": "..."}`` out. Every agent writes a trace of
JSON lines, each with ``t_ns`` from the monotonic clock that all namespaces share, so traces
from different hosts line up on one time axis.

Readiness: the agent prints ``READY <name> <pid>`` on standard output once its sockets are
bound; the runner waits for that line instead of sleeping.

One process can serve several nodes (:meth:`Agent.host`): many MNs, each in its own network
namespace, as one process start per MN would cost the guest 50-300 ms each. A hosted agent has
its own control socket, trace and commands, shares the process's loop, and each of its handlers
runs inside its node's namespace (the loop enters it around the call), so what it opens or asks
the kernel (an interface index, a netlink request) is its own node's.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import heapq
import itertools
import json
import os
import selectors
import signal
import socket
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

from nodes.contracts import AgentError, TraceEvent

# Protocol agents and daemons (charon, freeradius) run at nice -10: ahead of everything else that
# is not real-time, and all of them on the same terms. Not real-time: one spinning thread of a
# real-time daemon would freeze the guest's single virtual CPU. Only the probe threads are
# real-time (they sleep between probes), so that probes leave and are stamped on time.
AGENT_NICE = -10
#: Housekeeping off every critical path (an AR's release of a departed MN's SAs, the MN's removal
#: of its old ones) runs at this nice value: in a real network the pAR's clean-up runs on its own
#: CPU; on the guest's one CPU it must not delay the nAR's activation or the HA's Binding Ack.
BACKGROUND_NICE = 19
#: A control client that does not take its reply within this time is dropped.
CONTROL_REPLY_TIMEOUT_S = 2.0
CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


class _Namespace:
    """A network namespace the loop's thread enters around a hosted agent's handlers (setns(2) on
    a file descriptor opened once: two system calls per handler) and leaves for its own."""

    _home: int | None = None

    def __init__(self, path: str) -> None:
        self.fd = os.open(path, os.O_RDONLY)
        if _Namespace._home is None:
            _Namespace._home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)

    @staticmethod
    def _set(fd: int) -> None:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            error = ctypes.get_errno()
            raise OSError(error, f"setns: {os.strerror(error)}")

    @contextlib.contextmanager
    def entered(self):
        self._set(self.fd)
        try:
            yield
        finally:
            assert _Namespace._home is not None
            self._set(_Namespace._home)

    def close(self) -> None:
        os.close(self.fd)


def _set_nice(value: int) -> None:
    try:
        os.setpriority(os.PRIO_PROCESS, 0, value)
    except OSError:
        pass  # not root: the figures are noisier but still valid


def raise_agent_priority() -> None:
    _set_nice(AGENT_NICE)


class Agent:
    def __init__(self, name: str, control_path: str, trace_path: str, *, loop: Agent | None = None,
                 namespace: str | None = None) -> None:
        """``loop`` and ``namespace``: see :meth:`host`."""
        self.name = name
        self.loop = loop
        self._namespace = _Namespace(namespace) if namespace is not None else None
        self.hosted: list[Agent] = []
        if loop is None:
            self.selector = selectors.DefaultSelector()
            self._timers: list[tuple[float, int, Callable[[], None]]] = []
            self._timer_ids = itertools.count()
            self._deferred: list[tuple[str, Callable[[], None]]] = []
        else:  # one loop, one timer heap, one queue of deferred work for the whole process
            self.selector, self._timers, self._timer_ids = loop.selector, loop._timers, loop._timer_ids
            self._deferred = loop._deferred
        # Written out when the loop goes idle or answers the runner, not line by line: on the
        # hot paths a write per event would cost a system call each (~25 us in the guest).
        self._trace = open(trace_path, "a", buffering=1 << 16)
        self._stopping = False
        self.handler_failures = 0
        self._commands: dict[str, Callable[..., Any]] = {"ping": lambda: {"name": self.name}}
        if os.path.exists(control_path):
            os.unlink(control_path)
        self._control = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._control.bind(control_path)
        self._control.listen(4)
        self._control.setblocking(False)
        self.selector.register(self._control, selectors.EVENT_READ, self._accept)
        self._buffers: dict[socket.socket, bytes] = {}
        if loop is None:
            signal.signal(signal.SIGTERM, lambda *_: self.stop())
            signal.signal(signal.SIGINT, lambda *_: self.stop())

    def host(self, name: str, control_path: str, trace_path: str, namespace: str) -> Agent:
        """Another node's agent in this process: its own control socket and trace, this loop, and
        its handlers run in ``namespace`` (a path, e.g. ``/run/netns/<name>``). Build what it
        serves inside :meth:`inside` so that its sockets are that namespace's."""
        hosted = Agent(name, control_path, trace_path, loop=self, namespace=namespace)
        self.hosted.append(hosted)
        return hosted

    def inside(self):
        """A context in which this agent's own namespace is the thread's (its handlers run so)."""
        return self._namespace.entered() if self._namespace is not None else contextlib.nullcontext()

    def _in_namespace(self, callback: Callable[..., Any]) -> Callable[..., Any]:
        if self._namespace is None:
            return callback

        def entered(*arguments: Any) -> Any:
            with self.inside():
                return callback(*arguments)
        return entered

    # -- trace ------------------------------------------------------------------------------------
    def trace(self, event: str, t_ns: int | None = None, **fields: Any) -> None:
        """One event of the trace, stamped now, or at ``t_ns`` when the caller took the time
        before the act (a send: on the guest's one CPU the receiver can run before the sender
        returns from the system call, so a stamp taken after it can be later than the arrival)."""
        record = {"t_ns": time.monotonic_ns() if t_ns is None else t_ns, "node": self.name, "event": event, **fields}
        self._trace.write(json.dumps(record, default=str) + "\n")

    # -- loop plumbing ----------------------------------------------------------------------------
    def add_reader(self, fileobj, callback: Callable[[], None]) -> None:
        callback = self._in_namespace(callback)
        self.selector.register(fileobj, selectors.EVENT_READ, lambda _sock: callback())

    def call_at(self, deadline: float, callback: Callable[[], None]) -> None:
        """Run ``callback`` at ``deadline`` (time.monotonic() seconds)."""
        heapq.heappush(self._timers, (deadline, next(self._timer_ids), self._in_namespace(callback)))

    def defer(self, label: str, callback: Callable[[], None]) -> None:
        """Run ``callback`` once nothing else is ready for this agent, at BACKGROUND_NICE: work
        that must happen but is on no critical path. Deferred work runs in order; an exception
        is traced, not fatal."""
        self._deferred.append((label, self._in_namespace(callback)))

    def _run_deferred(self) -> None:
        label, callback = self._deferred.pop(0)
        # only where the agent's own priority can be restored afterwards (root): otherwise the
        # work runs at the agent's priority
        renice = os.getpriority(os.PRIO_PROCESS, 0) == AGENT_NICE
        if renice:
            _set_nice(BACKGROUND_NICE)
        try:
            callback()
        except Exception as error:  # reported, not fatal: the agent must keep serving
            self.trace(TraceEvent.DEFERRED_FAILED, work=label, error=repr(error), traceback=traceback.format_exc())
        finally:
            if renice:
                _set_nice(AGENT_NICE)

    def run_deferred_now(self) -> int:
        """All pending deferred work, now (before the runner inspects the state it leaves)."""
        done = 0
        while self._deferred:
            self._run_deferred()
            done += 1
        return done

    def command(self, name: str, handler: Callable[..., Any]) -> None:
        self._commands[name] = handler

    def stop(self) -> None:
        if self.loop is not None:
            self.loop.stop()
        self._stopping = True

    def _accept(self, _sock) -> None:
        connection, _ = self._control.accept()
        connection.setblocking(False)
        self._buffers[connection] = b""
        self.selector.register(connection, selectors.EVENT_READ, self._read_control)

    def _read_control(self, connection: socket.socket) -> None:
        try:
            data = connection.recv(65536)
        except OSError:
            data = b""
        if not data:
            self._drop_client(connection)
            return
        buffer = self._buffers[connection] + data
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            with self.inside():
                reply = self._dispatch(line)
            self._trace.flush()  # the runner may read the trace as soon as it has the reply
            try:
                connection.settimeout(CONTROL_REPLY_TIMEOUT_S)
                connection.sendall(json.dumps(reply, default=str).encode() + b"\n")
                connection.setblocking(False)
            except OSError as error:
                # The client went away (or stopped reading) before its reply: its loss, not ours.
                # The agent keeps serving everyone else.
                self.trace(TraceEvent.CONTROL_CLIENT_LOST, error=str(error))
                self._drop_client(connection)
                return
        self._buffers[connection] = buffer

    def _drop_client(self, connection: socket.socket) -> None:
        self.selector.unregister(connection)
        self._buffers.pop(connection, None)
        connection.close()

    def _dispatch(self, line: bytes) -> dict[str, Any]:
        try:
            request = json.loads(line)
            name = request.pop("cmd")
            handler = self._commands[name]
        except (ValueError, KeyError, TypeError) as error:
            return {"ok": False, "error": f"bad control request: {error!r}"}
        try:
            result = handler(**request)
        except AgentError as error:
            self.trace(TraceEvent.COMMAND_FAILED, cmd=name, error=str(error))
            return {"ok": False, "error": str(error)}
        except Exception as error:  # reported, not fatal: the agent must keep serving
            self.trace(TraceEvent.COMMAND_FAILED, cmd=name, error=repr(error), traceback=traceback.format_exc())
            return {"ok": False, "error": f"{type(error).__name__}: {error}"}
        return {"ok": True, **(result or {})}

    def run(self) -> None:
        raise_agent_priority()
        # what the agent built to serve (a hundred MNs' state in a process that hosts them) never
        # becomes garbage: out of the collector's full passes, which would otherwise walk all of it
        # and hold every thread of the process, the probes' senders included
        gc.freeze()
        print(f"READY {self.name} {os.getpid()}", flush=True)
        for agent in (self, *self.hosted):
            agent.trace(TraceEvent.READY, pid=os.getpid())
        while not self._stopping:
            timeout = 0.5
            if self._timers:
                timeout = max(0.0, self._timers[0][0] - time.monotonic())
            if self._deferred:
                timeout = 0.0
            else:
                self._flush()  # about to wait: the events so far go out now
            ready = self.selector.select(timeout)
            if len(ready) > 1:  # the protocol first; the runner's questions can wait behind it
                ready.sort(key=lambda item: getattr(item[0].data, "__func__", None) in (Agent._accept,
                                                                                         Agent._read_control))
            for key, _ in ready:
                self._guarded(key.data, key.fileobj)
            now = time.monotonic() if self._timers else 0.0  # a clock read is a system call in the guest
            while self._timers and self._timers[0][0] <= now:
                _, _, callback = heapq.heappop(self._timers)
                self._guarded(callback)
                ready = True  # type: ignore[assignment]  # from here on only its truth counts: something ran
            if self._deferred and not ready:
                self._run_deferred()
        self.run_deferred_now()
        for agent in (self, *self.hosted):
            agent.trace(TraceEvent.STOPPED)
            agent.close()

    def _flush(self) -> None:
        for agent in (self, *self.hosted):
            agent._trace.flush()

    def _guarded(self, callback: Callable[..., None], *arguments: Any) -> None:
        """Run one input's or timer's handler: what it raises is traced and counted, and the agent
        goes on serving (no message or event order may end an agent; the runner sees the failure
        in the handover it belongs to)."""
        try:
            callback(*arguments)
        except Exception as error:
            self.handler_failures += 1
            self.trace(TraceEvent.HANDLER_FAILED, error=repr(error), traceback=traceback.format_exc())

    def close(self) -> None:
        self._trace.close()
        self._control.close()
        if self._namespace is not None:
            self._namespace.close()


def read_trace(path: str) -> list[dict[str, Any]]:
    with open(path) as handle:
        return [json.loads(line) for line in handle if line.strip()]


def main_guard(run: Callable[[], None]) -> int:
    try:
        run()
    except Exception:
        traceback.print_exc(file=sys.stderr)
        return 1
    return 0
