"""One exception hierarchy for the CXTP core, so callers can catch everything with ``CxtpError``."""

from __future__ import annotations

from enum import Enum


class CxtpError(Exception):
    """Root of every error raised by :mod:`cxtp`."""


class DecodeError(CxtpError):
    """Bytes from the wire are not a valid CXTP message (never IndexError/struct.error leaks out)."""


class ProtocolError(CxtpError):
    """An illegal API call: invalid field values, wrong engine state, a reused key."""


class IllegalTransition(ProtocolError):
    """A role's state machine was asked for a transition its table does not have (h11 style).

    Raised only for calls of the local API (and, were the engine wrong, from inside it): input
    from the wire that does not fit the state is dropped and counted, never raised.
    """

    def __init__(self, role: str, state: Enum, event: Enum) -> None:
        self.role = role
        self.state = state
        self.event = event
        super().__init__(f"{role}: event {_name(event)} is not allowed in state {_name(state)}")


def _name(value: object) -> str:
    return getattr(value, "name", str(value))


class ConfigError(CxtpError):
    """An invalid :class:`cxtp.config.Config` or registry setup."""
