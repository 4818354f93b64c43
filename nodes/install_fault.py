"""Fault injection for the fault tests: a kernel that refuses a write, or an agent that dies.

:class:`InstallFault` stands in for the nAR's XFRM handle during its next install (the
``install_fault`` control command of :mod:`nodes.ar_agent`), so that the tests can check the
rollback and the install journal. Nothing sets it up outside those tests.
"""

from __future__ import annotations

import errno
import os
import signal

from ipsec import XfrmError


class InstallFault:
    """A fault injected into the nAR's next install (fault tests only): after ``after`` kernel
    writes, either the kernel "refuses" the next one (``fail``) or the agent dies on the spot
    (``die``, SIGKILL: no rollback runs in the process), as a crash would."""

    def __init__(self, xfrm, after: int, action: str) -> None:
        if action not in ("fail", "die"):
            raise ValueError(f"install fault action must be fail or die, got {action!r}")
        self._xfrm, self.after, self.action = xfrm, after, action

    def send_batch(self, requests: list[bytes]):
        """A batch: the first ``after`` requests reach the kernel, then the fault strikes."""
        if self.after >= len(requests):
            self.after -= len(requests)
            return self._xfrm.send_batch(requests)
        head = self._xfrm.send_batch(requests[:self.after]) if self.after else []
        self.after = 0
        if self.action == "die":
            os.kill(os.getpid(), signal.SIGKILL)
        return head + [XfrmError(errno.ENOSPC, "injected fault in a batch")] * (len(requests) - len(head))

    def __getattr__(self, name):
        attribute = getattr(self._xfrm, name)
        if name not in ("add_sa", "update_sa", "add_policy", "allocate_spi"):
            return attribute

        def write(*args, **kwargs):
            if self.after <= 0:
                if self.action == "die":
                    os.kill(os.getpid(), signal.SIGKILL)
                raise XfrmError(errno.ENOSPC, f"injected fault in {name}")
            self.after -= 1
            return attribute(*args, **kwargs)

        return write
