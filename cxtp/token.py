"""Authorization Token (RFC 4067 §2.5.1): First(32, HMAC_SHA1(Key, PrevAddr | Seq | CDBs))."""

from __future__ import annotations

import hmac as _stdlib_hmac

from cryptography.hazmat.primitives import hashes, hmac

from . import constants as c
from .errors import ProtocolError
from .messages import address_bytes


def compute_token(key: bytes, previous_address: str, sequence_number: int, cdbs: bytes = b"") -> bytes:
    """The 4-octet token; inputs are the exact wire octets, concatenated without separators."""
    if not isinstance(key, (bytes, bytearray)) or not key:
        raise ProtocolError("token key must be non-empty bytes")
    if isinstance(sequence_number, bool) or not isinstance(sequence_number, int) \
            or not 0 <= sequence_number <= 0xFFFFFFFF:
        raise ProtocolError("sequence number must be an unsigned 32-bit integer")
    mac = hmac.HMAC(bytes(key), hashes.SHA1())
    mac.update(address_bytes(previous_address))
    mac.update(sequence_number.to_bytes(4, "big"))
    mac.update(bytes(cdbs))
    return mac.finalize()[:c.TOKEN_LENGTH]


def tokens_equal(a: bytes, b: bytes) -> bool:
    """The one way the engines compare tokens: constant time (hmac.compare_digest), so that a
    forger learns nothing from timing (§6.3)."""
    return _stdlib_hmac.compare_digest(bytes(a), bytes(b))


ZERO_TOKEN = bytes(c.TOKEN_LENGTH)


def is_zero_token(token: bytes) -> bool:
    """The all-zero token: never a substitute for a token (it means "no CTAR" in RFC 4067
    §2.5.6's nAR-triggered CT-Req, which this implementation does not accept)."""
    return tokens_equal(token, ZERO_TOKEN)


def verify_token(key: bytes, previous_address: str, sequence_number: int, cdbs: bytes,
                 token: bytes) -> bool:
    """Recompute the token with ``key`` and compare in constant time (§6.3)."""
    expected = compute_token(key, previous_address, sequence_number, cdbs)
    return tokens_equal(expected, token)


def key_fingerprint(key: bytes) -> bytes:
    """SHA-256 of a key: lets engines remember which keys were used without keeping the keys."""
    digest = hashes.Hash(hashes.SHA256())
    digest.update(bytes(key))
    return digest.finalize()
