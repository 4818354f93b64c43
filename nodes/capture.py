"""A packet capture on one interface of one emulated host, as a testbed daemon.

Wireshark's ``dumpcap`` writes pcapng, so each file names its interface, and a capture comment
names the node and the link; it is started before the measurements and stopped by its PID at
the end of the run (SIGTERM: dumpcap closes the file cleanly). Capturing costs the guest CPU: the
README gives what it costs, and the default run captures nothing.
"""

from __future__ import annotations

from pathlib import Path

from nodes.daemon import Daemon

DUMPCAP = "/usr/bin/dumpcap"
#: kernel buffer for the capture, MiB: large enough that dumpcap keeps up in the guest
BUFFER_MIB = 8


class Capture(Daemon):
    """``dumpcap`` on ``interface`` of ``node``, into ``<directory>/<node>-<interface>.pcapng``."""

    def __init__(self, host, directory: Path, node: str, interface: str, link: str) -> None:
        self.name = f"capture-{node}-{interface}"
        super().__init__(host, directory)
        self.node, self.interface, self.link = node, interface, link
        self.path = self.directory / f"{node}-{interface}.pcapng"

    def command(self) -> list[str]:
        return [DUMPCAP, "-i", self.interface, "-n", "-q", "-B", str(BUFFER_MIB), "-w", str(self.path),
                "--capture-comment", f"testbed node={self.node} interface={self.interface} link={self.link}"]

    def prepare(self) -> None:
        if self.path.exists():
            self.path.unlink()

    def ready(self) -> bool:
        """dumpcap says it is capturing (it writes the file as packets come: a quiet link's file
        may stay empty for a while)."""
        return "Capturing on" in self.output_text()
