"""The nAR's install journal: rollback that survives the process that writes.

Before the nAR writes an MN's context into the kernel it records, on disk, the MN address the
context is for, and removes the record once the write is done; an agent killed half way leaves
the record, and the next agent start removes everything of that address from the kernel
(:meth:`InstallJournal.recover`).
"""

from __future__ import annotations

import ipaddress
import os

from ipsec import capture_context, remove_context


class InstallJournal:
    """What the nAR is about to write into the kernel for an MN, on disk until the write is done.

    Rollback cannot live only in the process that writes: if the agent dies half way, the next
    agent start reads the journal and removes what the dead one may have left, and nothing else:
    only what names the journalled MN address. (A process crash, not a machine crash: no fsync.)"""

    def __init__(self, directory: str | None) -> None:
        self.directory = directory
        if directory:
            os.makedirs(directory, exist_ok=True)

    def _path(self, mn_address: str) -> str:
        assert self.directory is not None  # only called where it is set
        return os.path.join(self.directory,
                            "install-" + ipaddress.ip_address(mn_address).exploded.replace(":", "") + ".ctx")

    def begin(self, mn_address: str) -> None:
        """The MN address, in one write of a few octets (a process that dies cannot leave half of
        it): recovery removes everything of that address, so the context itself is not needed,
        and encoding it would cost the nAR's install path a millisecond in the guest."""
        if self.directory:
            descriptor = os.open(self._path(mn_address), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.write(descriptor, ipaddress.ip_address(mn_address).compressed.encode() + b"\n")
            finally:
                os.close(descriptor)

    def end(self, mn_address: str) -> None:
        if self.directory:
            try:
                os.unlink(self._path(mn_address))
            except FileNotFoundError:
                pass

    def recover(self, xfrm) -> list[str]:
        """Remove what unfinished installs left: everything of the journalled MN address on this
        node (an SPI from ALLOCSPI is not in the journal, but its SA names the MN too)."""
        handled: list[str] = []
        if not self.directory:
            return handled
        for name in sorted(os.listdir(self.directory)):
            if not (name.startswith("install-") and name.endswith(".ctx")):
                continue
            path = os.path.join(self.directory, name)
            with open(path, "rb") as handle:
                mn_address = handle.readline().decode().strip()
            remove_context(xfrm, capture_context(xfrm, mn_address))
            os.unlink(path)
            handled.append(mn_address)
        return handled
