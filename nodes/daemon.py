"""One life cycle for every long-lived process the testbed starts in an emulated host.

In the way of IPMininet's daemon classes: a daemon renders its configuration from data (and can
show it without starting anything: :meth:`Daemon.dry_run`), starts with one command in its host,
is ready when its own readiness check says so (not after a sleep), writes its output and logs
into its directory in the run directory, and is stopped by the PID that was recorded when it
started: SIGTERM, then SIGKILL. The protocol agents (:class:`AgentProcess`), strongSwan's charon
and FreeRADIUS all use it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Generic, TypeVar

from nodes.contracts import AgentClient, AgentError

READY_POLL_S = 0.02


class DaemonError(RuntimeError):
    """A daemon could not be configured, started, or did not become ready."""


class Daemon:
    """Subclasses set ``name`` and implement :meth:`command` and :meth:`ready`; most also
    :meth:`config_files` and :meth:`environment`."""

    name = "daemon"
    #: the directory the command runs in (None: the caller's)
    cwd: str | None = None

    def __init__(self, host, directory: Path) -> None:
        self.host = host
        self.directory = Path(directory)
        self.process: subprocess.Popen | None = None
        self.output_path = self.directory / f"{self.name}.out"

    # -- what a daemon declares ------------------------------------------------------------------------
    def config_files(self) -> dict[Path, str]:
        """Every file the daemon reads, rendered from data: path -> text."""
        return {}

    def command(self) -> list[str]:
        raise NotImplementedError

    def environment(self) -> dict[str, str] | None:
        return None

    def ready(self) -> bool:
        """True once the daemon serves (a socket answers, a line was logged)."""
        raise NotImplementedError

    def prepare(self) -> None:
        """Anything to do after the files are written and before the start (stale sockets...)."""

    # -- the life cycle ----------------------------------------------------------------------------------
    def dry_run(self) -> str:
        """What :meth:`start` would write and run, without doing it."""
        parts = [f"# {self.name}: {' '.join(self.command())}"]
        for path, text in self.config_files().items():
            parts += [f"# --- {path}", text.rstrip("\n")]
        return "\n".join(parts) + "\n"

    def start(self, timeout: float = 30.0) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        for path, text in self.config_files().items():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        self.prepare()
        with open(self.output_path, "ab") as output:
            self.process = self.host.popen(self.command(), stdin=subprocess.DEVNULL, stdout=output,
                                           stderr=subprocess.STDOUT, env=self.environment(), cwd=self.cwd)
        self.wait_ready(timeout)

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if not self.alive:
                code = self.process.returncode if self.process is not None else None
                raise DaemonError(f"{self.name} exited with {code} at start: {self.tail()}")
            if self.ready():
                return
            if time.monotonic() >= deadline:
                raise DaemonError(f"{self.name} not ready after {timeout} s: {self.tail()}")
            time.sleep(READY_POLL_S)

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def stop(self, timeout: float = 10.0) -> None:
        """By the recorded PID (mnexec, unshare and sh exec() into the daemon: one PID)."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout)

    def tail(self, lines: int = 8, path: Path | None = None) -> str:
        try:
            return " | ".join((path or self.output_path).read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no output)"

    def output_text(self) -> str:
        try:
            return self.output_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""


_Client = TypeVar("_Client", bound=AgentClient)


class AgentProcess(Daemon, Generic[_Client]):
    """A protocol agent in a host (:mod:`nodes.agent`): ready once it has written ``READY`` (its
    sockets are bound), then driven over its control socket through ``contract``, its typed
    client (:mod:`nodes.contracts`); output and trace in the run directory; stopped by its PID."""

    def __init__(self, host, module: str, arguments: list[str], directory: Path, name: str,
                 contract: type[_Client], cwd: str, ready_timeout_s: float = 90.0) -> None:
        self.name = name
        super().__init__(host, directory)
        self.module, self.arguments, self.contract, self.cwd = module, arguments, contract, cwd
        self.ready_timeout_s = ready_timeout_s
        self.control_path = str(self.directory / f"{name}.control")
        self.trace_path = self.directory / f"trace-{name}.jsonl"
        self._client: _Client | None = None
        self._output_seen = 0
        self.start(ready_timeout_s)

    def command(self) -> list[str]:
        return [sys.executable, "-m", self.module, *self.arguments,
                "--control", self.control_path, "--trace", str(self.trace_path)]

    def prepare(self) -> None:
        self._output_seen = self.output_path.stat().st_size if self.output_path.exists() else 0

    def ready(self) -> bool:
        with open(self.output_path, "rb") as output:
            output.seek(self._output_seen)
            return any(line.startswith(b"READY") for line in output)

    def start(self, timeout: float | None = None) -> None:
        super().start(self.ready_timeout_s if timeout is None else timeout)
        self._client = self.contract(self.control_path, name=self.name)

    @property
    def client(self) -> _Client:
        """The typed client, once the agent is known to be running (an agent that died is an
        :class:`AgentError` naming its exit status, not a broken pipe)."""
        if not self.alive or self._client is None:
            code = self.process.returncode if self.process is not None else None
            raise AgentError(f"agent {self.name} is not running (exit status {code})")
        return self._client

    def restart(self) -> None:
        self.stop()
        self.start()

    def stop(self, timeout: float = 30.0) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        super().stop(timeout)
