"""Shared test fixtures: kernel-test gating, scratch namespaces, crypto warm-up.

Kernel tests (marker ``kernel``) need root and a kernel with ESP, netem and SCTP. ``make test``
runs them inside the UML guest when the host lacks those. Run elsewhere they are skipped, except
under CI, where a skipped kernel test would hide a broken environment: there it is a failure.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parent.parent
if str(REPOSITORY) not in sys.path:
    sys.path.insert(0, str(REPOSITORY))

from topo import kernel  # noqa: E402

_kernel_ok: bool | None = None
_kernel_reason = ""


def _kernel_available() -> tuple[bool, str]:
    global _kernel_ok, _kernel_reason
    if _kernel_ok is None:
        if os.geteuid() != 0:
            _kernel_ok, _kernel_reason = False, "needs root"
        elif kernel.in_guest():
            _kernel_ok = True
        else:
            missing = kernel.probe_host()
            _kernel_ok = not missing
            _kernel_reason = f"host kernel lacks {', '.join(missing)} (run through `make test`)"
    return _kernel_ok, _kernel_reason


def pytest_sessionstart(session) -> None:
    # The tests drive handovers as the scenario runner does: at the agents' priority, so that
    # their own steps are not delayed behind the probe streams on the guest's one CPU.
    from nodes.agent import raise_agent_priority

    raise_agent_priority()


def kernel_unavailable(reason: str) -> None:
    """Skip a kernel test outside CI; under CI a kernel test that cannot run is a failure."""
    if os.environ.get("CI"):
        pytest.fail(f"kernel test cannot run in CI: {reason}")
    pytest.skip(reason)


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("kernel") is None:
        return
    available, reason = _kernel_available()
    if not available:
        kernel_unavailable(reason)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Everything under tests/kernel is a kernel test, marked or not.
    for item in items:
        if "tests/kernel/" in str(item.fspath).replace(os.sep, "/"):
            item.add_marker(pytest.mark.kernel)


def run(command: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run a shell command (tests only: in measured paths we never start processes)."""
    result = subprocess.run(command, shell=True, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(f"`{command}` failed ({result.returncode}): {result.stderr.strip()}")
    return result


_namespace_counter = itertools.count(1)


@pytest.fixture
def netns_factory() -> Iterator[Callable[[str], str]]:
    """Create named network namespaces (``tb<pid>-<n>-<name>``); delete exactly those afterwards."""
    created: list[str] = []

    def make(name: str) -> str:
        namespace = f"tb{os.getpid()}-{next(_namespace_counter)}-{name}"
        run(f"ip netns add {namespace}")
        created.append(namespace)
        run(f"ip -n {namespace} link set lo up")
        run(f"ip netns exec {namespace} sysctl -qw net.ipv6.conf.all.accept_dad=0 net.ipv6.conf.default.accept_dad=0")
        return namespace

    yield make
    for namespace in reversed(created):
        run(f"ip netns del {namespace}", check=False)


@pytest.fixture
def veth_pair(netns_factory):
    """Two namespaces joined by a veth pair with 2001:db8:ff::1/64 and ::2/64 (no DAD)."""
    left, right = netns_factory("left"), netns_factory("right")
    run(f"ip link add name tbveth{os.getpid() % 10000}a netns {left} "
        f"type veth peer name tbveth{os.getpid() % 10000}b netns {right}")
    left_if, right_if = f"tbveth{os.getpid() % 10000}a", f"tbveth{os.getpid() % 10000}b"
    run(f"ip -n {left} link set {left_if} up && ip -n {right} link set {right_if} up")
    run(f"ip -n {left} -6 addr add 2001:db8:ff::1/64 dev {left_if} nodad")
    run(f"ip -n {right} -6 addr add 2001:db8:ff::2/64 dev {right_if} nodad")
    return {"left": left, "right": right, "left_if": left_if, "right_if": right_if,
            "left_address": "2001:db8:ff::1", "right_address": "2001:db8:ff::2"}


@pytest.fixture(scope="session")
def kernel_with_esp():
    """A kernel that takes ESP SAs with the testbed's algorithms (AES-CBC + HMAC-SHA256, AES-GCM;
    DES may be missing), their crypto templates warmed up once per session, before any test times
    or waits on anything (the runner's own warm-up, nodes.provisioning.warm_up_crypto)."""
    from ipsec import Xfrm
    from nodes.provisioning import warm_up_crypto

    available, reason = _kernel_available()
    if not available:
        kernel_unavailable(reason)
    namespace = f"tb{os.getpid()}-warmup"
    run(f"ip netns add {namespace}")
    try:
        with Xfrm(netns=f"/run/netns/{namespace}") as xfrm:
            taken = warm_up_crypto(xfrm)
    finally:
        run(f"ip netns del {namespace}", check=False)
    if not (taken["aes-cbc-sha256"] and taken["aes-gcm"]):
        kernel_unavailable("the kernel refuses ESP SAs with AES-CBC/HMAC-SHA256 or AES-GCM")
