"""Run code inside a network namespace without starting a process.

Starting a process is slow in the UML guest (docs/kernel.md), and pyroute2's own ``netns=`` helper spawns
one, so agents and the scenario runner enter namespaces with ``setns(2)`` on a short-lived
thread instead. A socket keeps the namespace it was created in, so a netlink or UDP socket made
on that thread keeps working from any thread afterwards.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import socket
import threading
from collections.abc import Callable, Iterator
from typing import TypeVar

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)

T = TypeVar("T")


def namespace_path(target: int | str) -> str:
    """A pid (a Mininet host's shell), an `ip netns` name, or a path to a netns file."""
    if isinstance(target, int):
        return f"/proc/{target}/ns/net"
    if target.startswith("/"):
        return target
    return f"/run/netns/{target}"


def enter(target: int | str) -> None:
    """Move the calling thread into the network namespace ``target``."""
    fd = os.open(namespace_path(target), os.O_RDONLY)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            error = ctypes.get_errno()
            raise OSError(error, f"setns({namespace_path(target)}): {os.strerror(error)}")
    finally:
        os.close(fd)


def call_in(target: int | str | None, function: Callable[[], T]) -> T:
    """Call ``function`` on a thread inside ``target`` (the current namespace when None)."""
    if target is None:
        return function()
    outcome: dict[str, object] = {}

    def body() -> None:
        try:
            enter(target)
            outcome["value"] = function()
        except BaseException as error:  # handed back to the caller's thread
            outcome["error"] = error

    thread = threading.Thread(target=body, name=f"netns-{target}")
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]  # type: ignore[misc]
    return outcome["value"]  # type: ignore[return-value]


def socket_in(target: int | str | None, family: int, kind: int, protocol: int = 0) -> socket.socket:
    """A socket created inside ``target``; it stays bound to that namespace from any thread."""
    return call_in(target, lambda: socket.socket(family, kind, protocol))


@contextlib.contextmanager
def entered(target: int | str | None) -> Iterator[None]:
    """Move the calling thread into ``target`` for the block, then back to where it was.

    For libraries that open their sockets lazily per thread (pyroute2 0.9 does): create the
    object inside the block, then keep using it from this same thread only.
    """
    if target is None:
        yield
        return
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        enter(target)
        try:
            yield
        finally:
            if _libc.setns(home, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns back to the original namespace failed")
    finally:
        os.close(home)


def iproute_in(target: int | str | None):
    """A pyroute2 IPRoute in ``target``'s namespace; use it from the calling thread only."""
    from pyroute2 import IPRoute

    with entered(target):
        return IPRoute()
