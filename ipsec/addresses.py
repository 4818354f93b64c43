"""Addresses as the package handles them: text in values, 16 octets in the kernel.

Compare addresses with ``same_address`` (or ``normalise_address``), never as
strings: ``2001:db8::1`` and ``2001:0db8:0:0:0:0:0:1`` are one address.
"""

from __future__ import annotations

import ipaddress
from functools import lru_cache

AF_INET = 2
AF_INET6 = 10


@lru_cache(maxsize=4096)  # a context names a few addresses many times
def address_to_bytes(address: str) -> bytes:
    """Text address -> the 16 octets of an ``xfrm_address_t`` (IPv4 in the first 4)."""
    return ipaddress.ip_address(address).packed.ljust(16, b"\0")


def address_from_bytes(raw: bytes, family: int) -> str:
    """The 16 octets of an ``xfrm_address_t`` -> text, per ``family`` (not
    AF_INET: IPv6)."""
    return _address_text(bytes(raw[:4] if family == AF_INET else raw[:16]))


@lru_cache(maxsize=4096)
def _address_text(packed: bytes) -> str:
    return ipaddress.ip_address(packed).compressed


@lru_cache(maxsize=4096)  # the rewrite and the handlers compare a few addresses many times
def normalise_address(address: str) -> str:
    """The canonical text of ``address``; ValueError if it is not one."""
    return ipaddress.ip_address(address).compressed


def same_address(a: str, b: str) -> bool:
    """Whether two texts name the same address (False if either is not an address)."""
    try:
        return normalise_address(a) == normalise_address(b)
    except ValueError:
        return False


def family_of(address: str) -> int:
    """AF_INET6 for an IPv6 text address, else AF_INET."""
    return AF_INET6 if ":" in address else AF_INET
