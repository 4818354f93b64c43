"""Context-type registry: services plug their context (by FPT) into the generic engines (§2.3).

The engines call the hooks synchronously. A handler is any object with the attributes of
:class:`ContextHandler`; nothing in :mod:`cxtp` knows what the data means.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from .errors import ConfigError


@dataclass(frozen=True)
class TransferInfo:
    """Who takes part in one transfer; ``mn_new_address`` is known only once the MN's CTAR arrived."""

    mn_previous_address: str
    par_address: str
    nar_address: str
    mn_new_address: str | None = None


@runtime_checkable
class ContextHandler(Protocol):
    """One context type. ``collect`` may also return a sequence of bytes: one CDB per item
    (RFC 4067 App. B sends one CDB per multicast address); ``install`` is then called per CDB,
    ``activate`` / ``discard`` / ``release`` once per FPT. Received data carries the zero
    padding of its CDB (a multiple of 8 octets); decoders must tolerate trailing zeros."""

    fpt: int

    def collect(self, mn_address: str) -> bytes | Sequence[bytes] | None:
        """pAR: CDB data for this MN, None when the MN has no such context."""

    def install(self, mn_address: str, data: bytes, transfer: TransferInfo) -> int:
        """nAR: store the context INACTIVE; return a status (0 = ok). ``transfer.mn_new_address``
        is set when a verified CTAR already names it (a CTD answering the nAR's CT-Req): the
        activation then follows at once."""

    def activate(self, mn_address: str, transfer: TransferInfo) -> tuple[int, bytes]:
        """nAR, after the token verified: make the context live; (status, data for the CTAA)."""

    def discard(self, mn_address: str) -> None:
        """nAR: drop an inactive context (bad token, CTC, timeout)."""

    def release(self, mn_address: str) -> None:
        """pAR: the transfer completed (CTDR S = 1): remove the MN's context here."""

    def acknowledged(self, mn_address: str, status: int, data: bytes) -> None:
        """MN: the CTAA entry for this FPT arrived."""


class Registry:
    """FPT -> handler. One registry per node; the same registry serves MN, pAR and nAR roles."""

    def __init__(self, handlers: Sequence[ContextHandler] = ()) -> None:
        self._handlers: dict[int, ContextHandler] = {}
        for handler in handlers:
            self.register(handler)

    def register(self, handler: ContextHandler) -> None:
        fpt = getattr(handler, "fpt", None)
        if isinstance(fpt, bool) or not isinstance(fpt, int) or not 0 < fpt <= 0xFFFF:
            raise ConfigError(f"handler FPT must be 1..65535 (0 is reserved), got {fpt!r}")
        if fpt in self._handlers:
            raise ConfigError(f"FPT {fpt:#06x} is already registered")
        self._handlers[fpt] = handler

    def unregister(self, fpt: int) -> None:
        self._handlers.pop(fpt, None)

    def get(self, fpt: int) -> ContextHandler | None:
        return self._handlers.get(fpt)

    def fpts(self) -> tuple[int, ...]:
        return tuple(sorted(self._handlers))

    def __contains__(self, fpt: object) -> bool:
        return fpt in self._handlers

    def __len__(self) -> int:
        return len(self._handlers)
