"""One exception hierarchy for the CXTP core, so callers can catch everything with ``CxtpError``."""

from __future__ import annotations


class CxtpError(Exception):
    """Root of every error raised by :mod:`cxtp`."""


class DecodeError(CxtpError):
    """Bytes from the wire are not a valid CXTP message (never IndexError/struct.error leaks out)."""


class ProtocolError(CxtpError):
    """An illegal API call: invalid field values, wrong engine state, a reused key."""


class ConfigError(CxtpError):
    """An invalid :class:`cxtp.config.Config` or registry setup."""
