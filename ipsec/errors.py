"""The IPsec layer's one exception hierarchy."""

from __future__ import annotations

import errno as _errno
import os


class IpsecError(Exception):
    """Base of every error the ``ipsec`` package raises on purpose."""


class XfrmError(IpsecError):
    """The kernel refused an XFRM netlink request.

    ``errno`` is the positive errno the kernel returned, ``operation`` names
    what we asked for (e.g. ``"XFRM_MSG_NEWSA"``), so a log line says both.
    """

    def __init__(self, errno: int, operation: str, detail: str = "") -> None:
        self.errno = errno
        self.operation = operation
        self.detail = detail
        name = _errno.errorcode.get(errno, str(errno))
        text = f"{operation} failed: {name} ({os.strerror(errno)})"
        if detail:
            text += f" [{detail}]"
        super().__init__(text)


class ContextDecodeError(IpsecError):
    """Bytes that claim to be an IPsec context (or SPI changes) are not one."""


class SequenceSpaceExhausted(IpsecError):
    """An SA's outbound sequence numbers, moved ahead by the transfer's margin, would run past the
    end of their space (2^32 without ESN): a new sender could send nothing on it, or reuse numbers.
    Such an SA is not transferred; the MN re-keys or re-authenticates."""
