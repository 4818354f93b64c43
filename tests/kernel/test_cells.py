"""Many MNs on shared cells: each MN a station of its own (address, port, home tunnel), moving
alone or with the others at once, and each AR telling its stations apart by their own ports."""

from __future__ import annotations

import os
import subprocess
import threading
import time

import pytest

from nodes import netns, stations
from topo import plan
from topo.network import LinkParams, Testbed, TopologyError

pytestmark = pytest.mark.kernel

MNS = 3
ACCESS_DELAY_MS = 2.0
L2_DELAY_MS = 20.0


@pytest.fixture(scope="module")
def testbed():
    with Testbed({plan.ACCESS: LinkParams(delay_ms=ACCESS_DELAY_MS)}, mns=MNS) as bed:
        yield bed


def _run_in(target: int | str, *command: str) -> subprocess.CompletedProcess:
    return subprocess.run(["nsenter", f"--net={netns.namespace_path(target)}", *command],
                          capture_output=True, text=True, timeout=30)


def _ping(bed: Testbed, mn: int, source: str, destination: str = plan.HA_ADDRESS) -> bool:
    result = _run_in(bed.mn_target(mn), "ping", "-6", "-n", "-c", "1", "-W", "3", "-I", source, destination)
    return result.returncode == 0


def _ping_rtt_ms(bed: Testbed, mn: int, source: str, destination: str) -> float:
    result = _run_in(bed.mn_target(mn), "ping", "-6", "-n", "-c", "3", "-i", "0.2", "-W", "3", "-I", source,
                     destination)
    assert result.returncode == 0, result.stdout + result.stderr
    return float(result.stdout.rsplit("=", 1)[1].split("/")[1])  # rtt min/avg/max/mdev = a/b/c/d ms


def _attached_at(bed: Testbed, ar: str) -> dict[int, bool]:
    """Each MN's station state at ``ar``, as the AR's agent reads it (:mod:`nodes.stations`)."""
    with netns.iproute_in(bed.pid(ar)) as ipr:
        return {mn: stations.attached(ipr, plan.ar_access_interface(ar, bed.mns), plan.mn_coa(mn, ar))
                for mn in range(bed.mns)}


def _move(bed: Testbed, mn: int, to_ar: str) -> None:
    bed.handover(to_ar, L2_DELAY_MS, mn=mn)


def test_each_mn_has_its_own_addresses_and_reaches_the_ha_from_both(testbed):
    """Every MN has its care-of address on the initial AR's cell and its home address, and reaches
    the HA from each: the first directly, the second through its own MN-HA tunnel."""
    ar = testbed.initial_ar
    for mn in range(MNS):
        assert testbed.attached[mn] == ar
        assert _ping(testbed, mn, plan.mn_coa(mn, ar)), (mn, "care-of")
        assert _ping(testbed, mn, plan.mn_home_address(mn)), (mn, "home")


def test_the_cell_carries_the_access_delay_to_every_mn(testbed):
    """Every MN's link to its AR is shaped as the scenario says: the round trip to the AR's
    access address is at least twice the one-way delay (both ends shaped), for MN 0 (Mininet's
    link) and the cells' own ports alike."""
    ar = testbed.initial_ar
    for mn in range(MNS):
        rtt = _ping_rtt_ms(testbed, mn, plan.mn_coa(mn, ar), plan.AR_ACCESS_ADDRESS[ar])
        assert rtt >= 2 * ACCESS_DELAY_MS, (mn, rtt)


def test_the_ar_knows_each_station_by_its_own_port(testbed):
    """The AR's configuration (permanent neighbour, static forwarding entry) names every MN, and
    each MN is attached at the initial AR only."""
    for ar in plan.ACCESS_ROUTERS:
        with netns.iproute_in(testbed.pid(ar)) as ipr:
            known = stations.associated(ipr, plan.ar_access_interface(ar, MNS))
        assert set(known) == {plan.mn_coa(mn, ar) for mn in range(MNS)}
        assert len(set(known.values())) == MNS  # one link-layer address per MN
        assert _attached_at(testbed, ar) == {mn: ar == testbed.initial_ar for mn in range(MNS)}


def test_one_mn_moves_and_only_its_station_leaves(testbed):
    """MN 1 moves: at the AR it left only its port loses carrier (the others share that cell and
    stay attached), at the new AR only its port comes up; it reaches the HA from its new care-of
    address, and the others still from theirs."""
    old = testbed.initial_ar
    new = testbed.other_ar(1)
    _move(testbed, 1, new)
    try:
        assert testbed.attached == {0: old, 1: new, 2: old}
        assert _attached_at(testbed, old) == {0: True, 1: False, 2: True}
        assert _attached_at(testbed, new) == {0: False, 1: True, 2: False}
        assert _ping(testbed, 1, plan.mn_coa(1, new))
        assert not _ping(testbed, 1, plan.mn_coa(1, old))  # that address went with the detach
        for mn in (0, 2):
            assert _ping(testbed, mn, plan.mn_coa(mn, old)), mn
    finally:
        _move(testbed, 1, old)
    assert _attached_at(testbed, old) == dict.fromkeys(range(MNS), True)


def test_all_mns_move_at_once(testbed):
    """Every MN moves at the same time, each from its own thread: each ends attached at the other
    AR, reaching the HA from its care-of address there, and the old AR has no station left."""
    old = testbed.initial_ar
    new = testbed.other_ar(0)
    errors: list[BaseException] = []

    def move(mn: int, to_ar: str) -> None:
        try:
            _move(testbed, mn, to_ar)
        except BaseException as error:  # noqa: BLE001 - asserted below
            errors.append(error)

    for to_ar in (new, old):
        threads = [threading.Thread(target=move, args=(mn, to_ar)) for mn in range(MNS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not errors, errors
        assert testbed.attached == dict.fromkeys(range(MNS), to_ar)
        other = new if to_ar == old else old
        assert _attached_at(testbed, to_ar) == dict.fromkeys(range(MNS), True)
        assert _attached_at(testbed, other) == dict.fromkeys(range(MNS), False)
        for mn in range(MNS):
            assert _ping(testbed, mn, plan.mn_coa(mn, to_ar)), (mn, to_ar)


def test_a_move_of_an_mn_the_testbed_does_not_have_is_refused(testbed):
    with pytest.raises(TopologyError):
        testbed.handover(testbed.other_ar(0), L2_DELAY_MS, mn=MNS)
    with pytest.raises(TopologyError):
        testbed.mn_target(MNS)


def test_a_hundred_mns_build_and_leave_nothing_behind():
    """A testbed of 100 MNs builds (its time is printed: the figure is the capacity benchmark's),
    every AR knows 100 stations, a few MNs taken across the range reach the HA from their care-of
    and home addresses, and stopping it removes every MN namespace it made."""
    started = time.monotonic()
    big = Testbed(mns=100)
    big.start()
    try:
        built_s = time.monotonic() - started
        print(f"100 MNs ready in {built_s:.1f} s")
        ar = big.initial_ar
        with netns.iproute_in(big.pid(ar)) as ipr:
            assert len(stations.associated(ipr, plan.cell(ar))) == 100
        for mn in (1, 50, 99):
            assert _ping(big, mn, plan.mn_coa(mn, ar)), mn
            assert _ping(big, mn, plan.mn_home_address(mn)), mn
        names = [big.mn_target(mn) for mn in range(1, 100)]
    finally:
        big.stop()
    left = [name for name in names if os.path.exists(netns.namespace_path(name))]
    assert not left, left
