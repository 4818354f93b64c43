"""Defined end states under faults: every transfer ends in a success or a recorded failure, the
pAR never strands an MN's context, and reordered or duplicated messages converge on one transfer."""

from __future__ import annotations

import random

import pytest

import cxtp
from cxtp import (
    CTAA,
    CTAR,
    CTC,
    CTD,
    CTDR,
    PCTD,
    Cancelled,
    Config,
    ContextActivated,
    CTReq,
    Datagram,
    ReleaseDue,
    RequestIgnored,
    SourceState,
    TargetState,
    TransferCompleted,
    TransferFailed,
)
from cxtp import constants as c
from test_cxtp_engine import (
    FPT_SPI,
    KEY,
    MN_NEW,
    MN_PREV,
    NAR,
    PAR,
    Net,
    complete_predictive,
    ct_req_for,
    mode,  # noqa: F401  (autouse: every test here runs with our departures and RFC-exact)
    naming,
    of_type,
)

FPTS = (1, FPT_SPI)


def released(net):
    return net.handlers["par"][1].released


def count(net, kind):
    return net.messages().count(kind)


def messages_of(net, kind, destination=None):
    return [m for _, _, dst, m in net.log
            if isinstance(m, kind) and (destination is None or dst == destination)]


# --- pAR hold times ------------------------------------------------------------------------------

def test_predictive_hold_is_ct_max_handover_time_and_reactive_ct_max_transfer_time():
    net = Net(Config(ct_max_handover_time=8.0))
    net.par.trigger_predictive(MN_PREV, NAR, 1.0)
    assert net.par.source_transfer(MN_PREV).deadline == 9.0
    net2 = Net(Config(ct_max_handover_time=8.0))
    net2.drop = lambda src, d, m: isinstance(m, CTDR)
    net2.mn_source = MN_NEW
    net2.now = 1.0
    net2.mn.attached(NAR, PAR, 1.0, new_address=MN_NEW)
    net2.pump()
    assert net2.par.source_transfer(MN_PREV).deadline == pytest.approx(1.2)


def test_recovery_ct_req_never_shortens_the_predictive_hold():
    net = Net()
    net.drop = lambda src, d, m: isinstance(m, (PCTD, CTDR))  # PCTD lost; first CTDR lost too
    complete_predictive(net)  # CTAR at 0.05 -> CT-Req -> recovery CTD
    record = net.par.source_transfer(MN_PREV)
    assert net.par.counters["recoveries"] == 1
    assert record.deadline == 5.0  # not 0.05 + CT_MAX_TRANSFER_TIME
    net.drop = lambda src, d, m: False
    net.advance(3.0)
    assert net.par.source_state(MN_PREV) is SourceState.SENT
    # the nAR's CTDR, on its way all along (here: sent again by hand), still releases normally
    net.par.receive(CTDR(MN_PREV, True, naming(net.par)).encode(), NAR, "ar", 3.0)
    (done,) = of_type(Net.events(net.par), TransferCompleted)
    assert not done.late and released(net) == [MN_PREV]


def test_recovery_ct_req_extends_a_hold_about_to_end():
    net = Net(Config(ct_max_handover_time=1.0))
    net.par.trigger_predictive(MN_PREV, NAR, 0.0)
    net.par.receive(ct_req_for(KEY, MN_PREV, 99, 0.9).encode(), NAR, "ar", 0.9)
    assert net.par.source_transfer(MN_PREV).deadline == pytest.approx(1.1)


# --- late CTDR --------------------------------------------------------------------------------------

def _expire_then(net, delay_ctdr_to):
    """Reactive transfer whose CTDR is held back until ``delay_ctdr_to``."""
    held = []
    net.drop = lambda src, d, m: isinstance(m, CTDR) and not held.append(d)
    net.mn_source = MN_NEW
    net.mn.attached(NAR, PAR, 0.0, new_address=MN_NEW)
    net.pump()
    net.advance(delay_ctdr_to)
    return held[0]


def test_late_ctdr_releases_and_is_reported_late():
    net = Net()
    ctdr = _expire_then(net, 1.0)  # hold was CT_MAX_TRANSFER_TIME: expired at 0.2
    events = Net.events(net.par)
    assert of_type(events, TransferFailed) and net.par.source_state(MN_PREV) is SourceState.EXPIRED
    assert released(net) == []
    net.par.receive(ctdr.data, NAR, "ar", 1.0)
    (done,) = of_type(Net.events(net.par), TransferCompleted)
    assert done.late and done.statuses and released(net) == [MN_PREV]
    assert net.par.counters["late_ctdr"] == 1
    assert net.par.source_state(MN_PREV) is SourceState.IDLE and net.par.get_timer() is None
    net.advance(20.0)  # the release hold was cancelled: no ReleaseDue
    assert not of_type(Net.events(net.par), ReleaseDue)


def test_late_ctdr_after_the_grace_is_ignored_and_release_is_due():
    net = Net(Config(late_ctdr_grace=0.5, release_hold=2.0))
    ctdr = _expire_then(net, 0.6)  # expired 0.2, grace over at 0.7
    net.advance(0.8)
    net.par.receive(ctdr.data, NAR, "ar", 0.8)
    assert released(net) == [] and net.par.counters["late_ctdr"] == 0
    net.advance(2.2)
    (due,) = of_type(Net.events(net.par), ReleaseDue)
    assert due == ReleaseDue(MN_PREV, "par", FPTS, "no CTDR before the cache expired")
    assert released(net) == []  # the engine does not release by itself: the owner decides


def test_late_ctdr_from_another_nar_is_ignored():
    other = "2001:db8:3::1"
    net = Net(par_peers=[NAR, other])
    ctdr = _expire_then(net, 1.0)
    net.par.receive(ctdr.data, other, "ar", 1.0)
    assert released(net) == [] and net.par.counters["not_transfer_peer"] == 1
    net.par.receive(ctdr.data, NAR, "ar", 1.1)
    assert released(net) == [MN_PREV]


def test_late_ctdr_still_releases_after_release_due():
    # grace longer than the hold: ReleaseDue goes out first, a late CTDR still releases after it
    net = Net(Config(release_hold=1.0, late_ctdr_grace=3.0))
    ctdr = _expire_then(net, 1.5)
    assert of_type(Net.events(net.par), ReleaseDue)
    assert net.par.source_state(MN_PREV) is SourceState.LATE_WINDOW
    net.par.receive(ctdr.data, NAR, "ar", 2.0)
    assert of_type(Net.events(net.par), TransferCompleted)[0].late and released(net) == [MN_PREV]
    assert net.par.get_timer() is None


def test_late_ctdr_failure_ends_the_grace():
    net = Net()
    _expire_then(net, 1.0)
    net.par.receive(CTDR(MN_PREV, False, naming(net.par)).encode(), NAR, "ar", 1.0)
    assert net.par.source_state(MN_PREV) is SourceState.RELEASE_HOLD
    assert net.par.counters["late_ctdr_failure"] == 1
    net.advance(6.0)
    assert of_type(Net.events(net.par), ReleaseDue) and released(net) == []


# --- ReleaseDue ----------------------------------------------------------------------------------------

def test_release_due_after_ctdr_failure():
    net = Net(Config(release_hold=2.0))
    net.handlers["nar"][0].install = lambda mn, data, transfer: 0x42  # the nAR cannot use it
    complete_predictive(net)
    (failed,) = of_type(Net.events(net.par), TransferFailed)
    assert failed.reason == "the nAR reported a failure"
    assert net.par.source_state(MN_PREV) is SourceState.RELEASE_HOLD
    assert net.par.get_timer() == pytest.approx(2.05)
    net.advance(2.0)
    assert not of_type(Net.events(net.par), ReleaseDue)
    net.advance(2.05)
    (due,) = of_type(Net.events(net.par), ReleaseDue)
    assert due == ReleaseDue(MN_PREV, "par", FPTS, "the nAR reported a failure")
    assert released(net) == [] and net.par.source_state(MN_PREV) is SourceState.IDLE
    assert net.par.get_timer() is None and net.par.counters["release_due"] == 1


def test_release_due_after_ctc():
    net = Net()
    net.mn.request_predictive(PAR, NAR, 0.0)
    net.pump()
    net.now = 0.5
    net.nar.cancel(MN_PREV, 0.5)
    net.pump()
    assert of_type(Net.events(net.par), Cancelled)
    net.advance(5.49)
    assert not of_type(Net.events(net.par), ReleaseDue)
    net.advance(5.5)
    (due,) = of_type(Net.events(net.par), ReleaseDue)
    assert due.reason == "cancelled by the nAR" and due.fpts == FPTS


def test_release_due_after_expiry_without_ctdr():
    net = Net(Config(ct_max_handover_time=2.0))
    net.drop = lambda src, d, m: d.destination == NAR
    net.par.trigger_predictive(MN_PREV, NAR, 0.0)
    net.advance(2.0)
    assert of_type(Net.events(net.par), TransferFailed)
    net.advance(4.0)  # hold and grace default to ct_max_handover_time
    (due,) = of_type(Net.events(net.par), ReleaseDue)
    assert due.reason == "no CTDR before the cache expired"
    assert net.par.source_records() == () and net.par.get_timer() is None


def test_release_due_when_no_ctdr_was_requested():
    net = Net(Config(request_ctdr=False, ct_max_handover_time=1.0))
    complete_predictive(net)
    assert "CTDR" not in net.messages()
    net.advance(1.0)
    (done,) = of_type(Net.events(net.par), TransferCompleted)
    assert done.acknowledged is False
    net.advance(2.0)
    assert of_type(Net.events(net.par), ReleaseDue)


@pytest.mark.parametrize("comeback", ["set_mn_key", "new_transfer"])
def test_release_due_cancelled_when_the_mn_is_back(comeback):
    net = Net()
    net.handlers["nar"][0].install = lambda mn, data, transfer: 0x42
    complete_predictive(net)  # CTDR S = 0: release hold
    assert net.par.source_state(MN_PREV) is SourceState.RELEASE_HOLD
    net.par.set_mn_key(MN_PREV, b"the MN is back")
    if comeback == "new_transfer":
        net.par.trigger_predictive(MN_PREV, NAR, 1.0)
        assert net.par.source_state(MN_PREV) is SourceState.SENT
    else:
        assert net.par.source_state(MN_PREV) is SourceState.IDLE
    assert net.par.counters["release_hold_cancelled"] == 1
    net.drop = lambda src, d, m: True
    net.advance(60.0)
    dues = of_type(Net.events(net.par), ReleaseDue)
    assert all(d.reason != "the nAR reported a failure" for d in dues)
    # only the new transfer (never answered, the network drops everything) ends in its own hold
    assert len(dues) == (comeback == "new_transfer")


def test_forget_drops_every_state_silently():
    net = Net()
    net.mn.request_predictive(PAR, NAR, 0.0)
    net.pump()
    net.par.forget(MN_PREV)
    net.nar.forget(MN_PREV)
    Net.events(net.par), Net.events(net.nar)
    assert net.par.source_records() == () and net.nar.target_records() == ()
    assert not net.par.has_mn_key(MN_PREV) and net.par.get_timer() is None
    assert net.nar.get_timer() is None
    net.advance(60.0)
    assert net.par.datagrams_to_send() == [] and Net.events(net.par) == []
    assert net.handlers["nar"][0].inactive  # forget calls no handler: the owner cleared them


# --- convergence under reordering and duplication ------------------------------------------------

def _converged_once(net):
    nar_events, par_events = Net.events(net.nar), Net.events(net.par)
    assert len(of_type(nar_events, ContextActivated)) == 1
    assert len(messages_of(net, CTAA, MN_NEW)) == 1
    assert len(messages_of(net, CTDR)) == 1
    assert released(net) == [MN_PREV]
    assert len(of_type(par_events, TransferCompleted)) == 1
    mn_done = of_type(Net.events(net.mn), TransferCompleted)
    assert len(mn_done) == 1 and all(s.status == 0 for s in mn_done[0].statuses)


@pytest.mark.parametrize("order", ["pctd-then-ctd", "ctd-then-pctd"])
def test_ctar_before_pctd_converges(order):
    net = Net()
    held = {}
    net.drop = lambda src, d, m: isinstance(m, (PCTD, CTD)) and (held.setdefault(type(m), d) or True)
    net.mn.request_predictive(PAR, NAR, 0.0)
    net.pump()
    net.mn_source = MN_NEW
    net.mn.attached(NAR, PAR, 0.01, new_address=MN_NEW)
    net.pump()  # CTAR at the nAR first: CT-Req copying it; the pAR answers with a CTD
    assert net.messages() == ["CTAR", "PCTD", "CTAA", "CTAR", "CTReq", "CTD"]
    assert net.nar.target_state(MN_PREV) is TargetState.REQUESTED
    net.drop = lambda src, d, m: False
    first, second = (PCTD, CTD) if order == "pctd-then-ctd" else (CTD, PCTD)
    net.nar.receive(held[first].data, PAR, "ar", 0.02)
    net.pump()
    net.nar.receive(held[second].data, PAR, "ar", 0.03)
    net.pump()
    assert net.nar.counters["duplicates"] == 1
    _converged_once(net)
    net.advance(60.0)
    assert net.nar.target_transfer(MN_PREV) is None and net.par.source_records() == ()
    assert net.nar.get_timer() is None and net.par.get_timer() is None
    net.nar.receive(b"", NAR, "ar", 60.0)  # any input: tombstones older than their time go
    assert net.nar.target_records() == ()


def test_every_ar_message_twice_converges():
    net = Net()
    net.copies = lambda src, d, m: 2 if d.transport == "ar" else 1
    complete_predictive(net)
    # one activation, one CTAA, one CTDR sent; the second PCTD and CTDR counted as duplicates
    assert net.nar.counters["duplicates"] == 1 and net.par.counters["duplicates"] == 1
    _converged_once(net)


def test_retransmitted_ctar_after_activation_resends_the_ctaa():
    net = Net()
    complete_predictive(net)
    ctar = messages_of(net, CTAR, NAR)[0]
    for t in (2.0, 6.0):
        net.nar.receive(ctar.encode(), MN_NEW, "icmp", t)
    resent = net.nar.datagrams_to_send()
    assert len(resent) == 2 and {cxtp.decode(d.data) for d in resent} == {messages_of(net, CTAA, MN_NEW)[0]}
    assert len(of_type(Net.events(net.nar), ContextActivated)) == 1


@pytest.mark.parametrize("seed", range(25))
def test_random_reordering_and_duplication_converge(seed: int) -> None:
    """Every AR-AR message is delivered 1-3 times, in a random order, with random delays."""
    rng = random.Random(seed)
    net = Net(seed=seed)
    queue: list[tuple[float, int, Datagram, str]] = []
    counter = [0]

    def hold(src, datagram, message):
        if datagram.transport == "ar":
            for _ in range(rng.randint(1, 3)):
                counter[0] += 1
                queue.append((net.now + rng.uniform(0.0, 0.15), counter[0], datagram, src))
            return True
        return False

    net.drop = hold
    predictive = rng.random() < 0.5
    if predictive:
        net.mn.request_predictive(PAR, NAR, 0.0)
        net.pump()
    net.now = rng.uniform(0.0, 0.1)
    net.mn_source = MN_NEW
    net.mn.attached(NAR, PAR, net.now, new_address=MN_NEW)
    net.pump()
    while queue:
        queue.sort()
        when, _, datagram, src = queue.pop(0)
        net.advance(max(net.now, when))
        net.routes[datagram.destination].receive(datagram.data, src, "ar", net.now)
        net.pump()
    net.advance(net.now + 0.01)
    _converged_once(net)
    net.advance(60.0)
    assert net.par.source_records() == () and net.nar.get_timer() is None
    assert not of_type(Net.events(net.par), ReleaseDue)


# --- the MN ends a transaction by what the CTAA says ----------------------------------------------

def test_mn_ctaa_with_transfer_timeout_is_a_failure():
    net = Net()
    net.drop = lambda src, d, m: isinstance(m, CTReq)
    net.mn_source = MN_NEW
    net.mn.attached(NAR, PAR, 0.0, new_address=MN_NEW)
    net.advance(0.2)  # the nAR gives up: CTC and a CTAA with 0x83
    if not net.exact:
        # departures: the nAR verified nothing, so it has nothing to tell the MN that the MN would
        # believe; a failure CTAA from anyone (here: by hand, "from the nAR") is dropped and counted
        assert net.mn.in_progress and not messages_of(net, CTAA)
        net.mn.receive(CTAA(MN_PREV, (cxtp.StatusEntry(FPT_SPI, c.STATUS_TRANSFER_TIMEOUT),)).encode(), NAR,
                       "icmp", 0.3)
        assert net.mn.in_progress and net.mn.counters["ctaa_unauthenticated"] == 1
        assert not of_type(Net.events(net.mn), TransferFailed) and net.handlers["mn"][1].acks == []
        return
    events = Net.events(net.mn)
    assert not of_type(events, TransferCompleted)
    (failed,) = of_type(events, TransferFailed)
    assert "0x83 (transfer timeout)" in failed.reason
    assert {s.status for s in failed.statuses} == {c.STATUS_TRANSFER_TIMEOUT}
    assert not net.mn.in_progress and net.mn.counters["failed_ctaa"] == 1
    assert net.handlers["mn"][1].acks == [(MN_PREV, c.STATUS_TRANSFER_TIMEOUT, b"")]


def test_mn_ctaa_with_a_context_types_own_failure_is_a_failure():
    net = Net()
    net.handlers["nar"][1].install_status = 0x12  # the SPI-like type's own failure code
    complete_predictive(net)
    (failed,) = of_type(Net.events(net.mn), TransferFailed)
    assert "FPT 0x8001 status 0x12 (context-specific)" in failed.reason
    assert {s.fpt: s.status for s in failed.statuses} == {1: 0, FPT_SPI: 0x12}
    assert net.handlers["mn"][1].acks == [(MN_PREV, 0x12, b"")]  # handlers still hear it
    assert net.mn.address == MN_PREV  # not moved on by a failed transfer


def test_mn_ignores_a_ctaa_for_another_mn():
    net = Net()
    net.mn_source = MN_NEW
    net.drop = lambda src, d, m: True
    net.mn.attached(NAR, PAR, 0.0, new_address=MN_NEW)
    net.mn.receive(CTAA("2001:db8:1::999").encode(), NAR, "icmp", 0.1)
    assert net.mn.in_progress and net.mn.counters["unexpected_messages"] == 1


def test_pctd_ctc_ctdr_tombstones_do_not_keep_timers():
    net = Net()
    complete_predictive(net)
    assert net.nar.get_timer() is None and net.par.get_timer() is None
    # a CTC for a completed transfer is a duplicate at the pAR, not a cancellation
    net.par.receive(CTC(MN_PREV).encode(), NAR, "ar", 1.0)
    assert of_type(Net.events(net.par), RequestIgnored) and net.par.counters["duplicates"] == 1
    assert released(net) == [MN_PREV]


def test_config_replaced_at_run_time_is_used():
    # the AR agent applies scenario timers with dataclasses.replace on engine.config
    import dataclasses

    net = Net()
    net.par.config = dataclasses.replace(net.par.config, ct_max_handover_time=12.0, release_hold=1.0)
    net.par.trigger_predictive(MN_PREV, NAR, 0.0)
    assert net.par.source_transfer(MN_PREV).deadline == 12.0
    net.par.receive(CTC(MN_PREV, naming(net.par)).encode(), NAR, "ar", 0.5)
    assert net.par.get_timer() == 1.5
