"""The engine's part of the trust boundary: peers, tokens, forged CTARs, bounded work."""

from __future__ import annotations

import pytest

import cxtp
from cxtp import (
    CTAA,
    CTAR,
    CTC,
    CTD,
    CTDR,
    PCTD,
    AccessRouter,
    Config,
    ConfigError,
    ContextDataBlock,
    CTReq,
    MessageDropped,
    ProtocolError,
    RequestIgnored,
    SourceState,
    TargetState,
    TokenRejected,
    TransferCompleted,
    TransferFailed,
)
from cxtp import constants as c
from cxtp.options import Options
from test_cxtp_engine import (
    GROUP,
    KEY,
    MN_NEW,
    MN_PREV,
    NAR,
    PAR,
    Mode,
    Net,
    complete_predictive,
    ct_req_for,
    mode,  # noqa: F401  (autouse: every test here runs with our departures and RFC-exact)
    of_type,
    signed_ctar,
)

OTHER = "2001:db8:3::1"  # another peer AR
STRANGER = "2001:db8:99::1"  # not a peer
PAR_LINK = "2001:db8:12::1"
NAR_LINK = "2001:db8:12::2"
ATTACKER = "2001:db8:2::666"


def sent(net, kind, destination=None):
    return [m for _, _, dst, m in net.log
            if isinstance(m, kind) and (destination is None or dst == destination)]


def peered_net(**kwargs):
    return Net(par_peers=[NAR, OTHER], nar_peers=[PAR, OTHER], **kwargs)


# --- peers ---------------------------------------------------------------------------------------

def test_full_flows_with_peers():
    net = peered_net()
    complete_predictive(net)
    assert of_type(Net.events(net.mn), TransferCompleted)
    assert net.handlers["par"][1].released == [MN_PREV]


def test_peers_mapping_matches_link_addresses_to_the_ar():
    # AR-AR messages come from the AR-AR link addresses; MNs name ARs by their access addresses
    links = {PAR: PAR_LINK, NAR: NAR_LINK}
    for flow in ("predictive", "reactive"):
        net = Net(par_peers={NAR: NAR_LINK, OTHER: "2001:db8:13::3"}, nar_peers={PAR: PAR_LINK},
                  links=links)
        if flow == "predictive":
            complete_predictive(net)
        else:
            net.mn_source = MN_NEW
            net.mn.attached(NAR, PAR, 0.0, new_address=MN_NEW)
            net.pump()
        assert of_type(Net.events(net.mn), TransferCompleted), flow
        assert net.handlers["par"][1].released == [MN_PREV], flow
        assert {src for _, src, _, m in net.log if isinstance(m, CTDR)} == {NAR_LINK}


def test_flat_peers_cannot_tell_which_link_address_is_which_ar():
    # documented limit: with a flat list, a CTDR from the nAR's link address does not match the
    # nAR access address the PCTD went to; the pAR's transfer ends in its release hold instead
    links = {PAR: PAR_LINK, NAR: NAR_LINK}
    net = Net(par_peers=[NAR, NAR_LINK], nar_peers=[PAR, PAR_LINK], links=links)
    complete_predictive(net)
    assert net.par.counters["not_transfer_peer"] == 1 and net.handlers["par"][1].released == []


@pytest.mark.parametrize("message", [
    CTReq(MN_PREV, 5, b"\x01\x02\x03\x04"), CTD(MN_PREV), PCTD(MN_PREV, KEY),
    CTDR(MN_PREV, True), CTC(MN_PREV),
])
def test_ar_messages_from_non_peers_are_dropped(message):
    net = peered_net()
    net.par.trigger_predictive(MN_PREV, NAR, 0.0)
    before = net.par.source_transfer(MN_PREV).deadline
    for ar in (net.par, net.nar):
        ar.datagrams_to_send()
        Net.events(ar)
        ar.receive(message.encode(), STRANGER, "ar", 0.1)
        assert ar.counters["not_peer"] == 1 and ar.datagrams_to_send() == []
        (ignored,) = Net.events(ar)
        assert isinstance(ignored, RequestIgnored) and ignored.source == STRANGER
        assert ignored.mn_previous_address == MN_PREV
        assert not any(k.startswith("received_") for k in ar.counters)  # not even decoded
    assert net.par.source_transfer(MN_PREV).deadline == before
    assert net.nar.target_transfer(MN_PREV) is None


def test_garbage_from_non_peer_is_dropped_undecoded():
    ar = AccessRouter(PAR, peers=[NAR])
    ar.receive(b"\xff" * 3000, STRANGER, "ar", 0.0)
    assert ar.counters["not_peer"] == 1 and ar.counters["decode_errors"] == 0
    assert isinstance(ar.next_event(), MessageDropped)


def test_ctar_naming_an_unknown_ar_is_refused_without_sending():
    net = peered_net()
    # at the pAR: a predictive CTAR naming a stranger as nAR (no PCTD to it, no CTAA)
    net.par.receive(signed_ctar(KEY, MN_PREV, STRANGER, 1, MN_PREV, PAR).encode(), MN_PREV, "icmp", 0.0)
    # at the nAR: a CTAR naming a stranger as pAR (no CT-Req to it)
    net.nar.receive(signed_ctar(KEY, MN_PREV, STRANGER, 2, MN_NEW, NAR).encode(), MN_NEW, "icmp", 0.0)
    for ar in (net.par, net.nar):
        assert ar.counters["unknown_ar"] == 1 and ar.datagrams_to_send() == []
        assert of_type(Net.events(ar), RequestIgnored)
    assert net.par.source_state(MN_PREV) is SourceState.IDLE and net.par.has_mn_key(MN_PREV)
    # naming a peer, or this AR itself, is fine
    net.par.receive(signed_ctar(KEY, MN_PREV, OTHER, 1, MN_PREV, PAR).encode(), MN_PREV, "icmp", 0.1)
    assert net.par.source_transfer(MN_PREV).nar == OTHER


def test_trigger_towards_a_non_peer_raises():
    ar = AccessRouter(PAR, peers=[NAR])
    ar.set_mn_key(MN_PREV, KEY)
    with pytest.raises(ProtocolError, match="not a peer"):
        ar.trigger_predictive(MN_PREV, STRANGER, 0.0)


@pytest.mark.parametrize("kind", [CTC, CTDR])
def test_ctc_or_ctdr_from_another_peer_is_ignored(kind):
    net = peered_net()
    net.mn.request_predictive(PAR, NAR, 0.0)
    net.pump()
    message = CTC(MN_PREV) if kind is CTC else CTDR(MN_PREV, True)
    net.par.receive(message.encode(), OTHER, "ar", 0.1)
    assert net.par.counters["not_transfer_peer"] == 1
    assert of_type(Net.events(net.par), RequestIgnored)
    assert net.par.source_state(MN_PREV) is SourceState.SENT
    assert net.handlers["par"][1].released == []
    net.mn_source = MN_NEW
    net.mn.attached(NAR, PAR, 0.2, new_address=MN_NEW)
    net.pump()
    assert net.handlers["par"][1].released == [MN_PREV]


def test_peers_validation():
    with pytest.raises(ConfigError):
        AccessRouter(PAR, peers="2001:db8:2::1")
    with pytest.raises(ConfigError):
        AccessRouter(PAR, peers=["not an address"])
    with pytest.raises(ConfigError):
        AccessRouter(PAR, peers={NAR: NAR_LINK, OTHER: NAR_LINK})
    ar = AccessRouter(PAR, peers={NAR: [NAR_LINK, "2001:db8:12::22"]})
    assert ar.peers.same_ar("2001:db8:12::22", NAR) and NAR_LINK in ar.peers
    assert not ar.peers.same_ar(NAR, OTHER)


# --- the zero token ------------------------------------------------------------------------------

def test_zero_token_ct_req_does_not_touch_a_cached_transfer():
    net = Net()
    net.mn.request_predictive(PAR, NAR, 0.0)
    net.pump()
    record = net.par.source_transfer(MN_PREV)
    seq = record.sequence_number
    net.par.receive(CTReq(MN_PREV, seq, bytes(4)).encode(), OTHER, "ar", 0.1)
    assert net.par.counters["zero_token"] == 1 and net.par.datagrams_to_send() == []
    assert (record.nar, record.deadline) == (NAR, 5.0)


def test_zero_token_ctar_is_refused_at_the_nar():
    net = Net()
    net.par.trigger_predictive(MN_PREV, NAR, 0.0)
    net.pump()
    net.nar.receive(CTAR(MN_PREV, PAR, 3, bytes(4)).encode(), MN_NEW, "icmp", 0.1)
    assert net.nar.counters["zero_token"] == 1 and net.nar.datagrams_to_send() == []
    assert net.nar.target_state(MN_PREV) is TargetState.INSTALLED


def test_mn_never_sends_the_zero_token():
    # compute_token gives 0 for the first sequence number the MN draws: it draws another
    import random

    from cxtp import engine

    calls = []
    real = engine.compute_token

    def fake(key, prev, seq, cdbs=b""):
        calls.append(seq)
        return bytes(4) if len(calls) == 1 else real(key, prev, seq, cdbs)

    engine.compute_token = fake
    try:
        mn = cxtp.MobileNode(MN_PREV, rng=random.Random(1))
        mn.set_key(KEY)
        mn.attached(NAR, PAR, 0.0)
    finally:
        engine.compute_token = real
    ctar = cxtp.decode(mn.datagrams_to_send()[0].data)
    assert len(calls) == 2 and ctar.sequence_number == calls[1] and ctar.token != bytes(4)


# --- forged CTARs cannot deny the handover -------------------------------------------------------

def _forged(seq):
    """An attacker's CTAR: a made-up token and, with our departures, a made-up binding (without
    one the nAR would refuse it at once, asking nothing of the pAR)."""
    forged = CTAR(MN_PREV, PAR, seq, b"\xde\xad\xbe\xef")
    if Mode.exact:
        return forged
    return CTAR(MN_PREV, PAR, seq, forged.token, Options(binding=bytes(range(16))).blocks())


def test_forged_ctar_before_the_pctd_is_refused_when_the_pctd_arrives():
    net = Net()
    held = []
    net.drop = lambda src, d, m: isinstance(m, PCTD) and (held.append(d) or True)
    net.mn.request_predictive(PAR, NAR, 0.0)
    net.pump()
    record = net.par.source_transfer(MN_PREV)
    seq = record.sequence_number
    net.drop = lambda src, d, m: False
    # the attacker's CTAR reaches the nAR first: CT-Req copying it to the pAR, which refuses it
    net.now = 0.01
    net.nar.receive(_forged(seq ^ 0x55).encode(), ATTACKER, "icmp", 0.01)
    net.pump()
    assert net.nar.target_state(MN_PREV) is TargetState.REQUESTED
    assert net.par.counters["busy"] == 1  # another sequence number: the cache is not disturbed
    assert (record.nar, record.deadline) == (NAR, 5.0)
    # the PCTD arrives: the forged pending CTAR is verified and refused, the context stays
    net.nar.receive(held[0].data, PAR, "ar", 0.02)
    net.pump()
    nar_events = Net.events(net.nar)
    assert of_type(nar_events, TokenRejected) and not of_type(nar_events, TransferFailed)
    (refusal,) = sent(net, CTAA, ATTACKER)
    assert {s.status for s in refusal.statuses} == {c.STATUS_AUTHORIZATION_FAILED}
    assert net.nar.target_state(MN_PREV) is TargetState.INSTALLED
    assert net.nar.target_transfer(MN_PREV).key == KEY
    # the real MN arrives and proves itself
    net.now = 0.5
    net.mn_source = MN_NEW
    net.mn.attached(NAR, PAR, 0.5, new_address=MN_NEW)
    net.pump()
    assert of_type(Net.events(net.mn), TransferCompleted)
    assert net.handlers["nar"][0].listeners_present == {GROUP: {MN_PREV}}
    assert net.handlers["nar"][1].transfers[-1].mn_new_address == MN_NEW
    assert net.handlers["par"][1].released == [MN_PREV]


def test_forged_and_real_ctar_both_before_the_pctd():
    net = Net()
    held = []
    net.drop = lambda src, d, m: isinstance(m, PCTD) and (held.append(d) or True)
    net.mn.request_predictive(PAR, NAR, 0.0)
    net.pump()
    net.drop = lambda src, d, m: isinstance(m, CTReq)  # the CT-Req is no help here
    net.nar.receive(_forged(77).encode(), ATTACKER, "icmp", 0.01)
    net.mn_source = MN_NEW
    net.mn.attached(NAR, PAR, 0.02, new_address=MN_NEW)
    net.pump()
    assert net.nar.counters["held_ctars"] == 1
    net.drop = lambda src, d, m: False
    net.nar.receive(held[0].data, PAR, "ar", 0.03)
    net.pump()
    assert net.nar.counters["token_failures"] == 1
    assert of_type(Net.events(net.mn), TransferCompleted)
    assert [m for m in sent(net, CTAA, MN_NEW)][-1].statuses[0].status == 0
    assert net.handlers["nar"][1].transfers[-1].mn_new_address == MN_NEW


def test_forged_ctar_with_the_real_sequence_number_does_not_make_the_real_one_a_duplicate():
    net = Net()
    net.mn.request_predictive(PAR, NAR, 0.0)
    net.pump()
    seq = net.par.source_transfer(MN_PREV).sequence_number  # suppose the attacker saw it
    net.nar.receive(_forged(seq).encode(), ATTACKER, "icmp", 0.01)
    net.mn_source = MN_NEW
    net.mn.attached(NAR, PAR, 0.02, new_address=MN_NEW)
    net.pump()
    assert net.nar.counters["duplicates"] == 0
    assert of_type(Net.events(net.mn), TransferCompleted)


def test_forged_first_with_the_pctd_lost_costs_one_retransmission():
    net = Net()
    net.drop = lambda src, d, m: isinstance(m, PCTD)
    net.mn.request_predictive(PAR, NAR, 0.0)
    net.pump()
    net.drop = lambda src, d, m: False
    net.nar.receive(_forged(1234).encode(), ATTACKER, "icmp", 0.01)
    net.mn_source = MN_NEW
    net.now = 0.02
    net.mn.attached(NAR, PAR, 0.02, new_address=MN_NEW)
    net.pump()
    if not net.exact:
        # departures: the MN's CTAR has a CT-Req of its own, the pAR recovers the transfer for it
        # at once: no retransmission
        assert of_type(Net.events(net.mn), TransferCompleted) and net.mn.counters["ctar_retransmissions"] == 0
        assert net.par.counters["busy"] == 1 and net.handlers["par"][1].released == [MN_PREV]
        return
    net.advance(0.3)  # the forged CT-Req is never answered: no CTC (the real MN waits) ...
    assert "CTC" not in net.messages()
    assert net.par.source_state(MN_PREV) is SourceState.SENT
    net.advance(2.1)  # ... and its retransmission gets the transfer by recovery
    assert of_type(Net.events(net.mn), TransferCompleted)
    assert net.handlers["par"][1].released == [MN_PREV]


def test_ct_req_with_a_bad_token_does_not_disturb_the_cached_transfer():
    net = peered_net()
    net.mn.request_predictive(PAR, NAR, 0.0)
    net.pump()
    record = net.par.source_transfer(MN_PREV)
    bad = ct_req_for(b"not the key", MN_PREV, record.sequence_number, 1.0, nar=OTHER)
    net.par.receive(bad.encode(), OTHER, "ar", 1.0)
    assert of_type(Net.events(net.par), TokenRejected) and net.par.datagrams_to_send() == []
    assert (record.nar, record.deadline, record.state) == (NAR, 5.0, SourceState.SENT)


# --- bounded work ----------------------------------------------------------------------------------

def _big_ctar(blocks: int = 1, data_octets: int = 0, ack: bool = True) -> CTAR:
    requested = tuple(ContextDataBlock(0x100 + i, bytes(data_octets)) for i in range(blocks))
    return signed_ctar(KEY, MN_PREV, PAR, 9, MN_NEW, NAR, requested, ack)


def test_oversized_ctar_is_answered_with_context_too_large_and_nothing_else():
    ctar = _big_ctar(blocks=1, data_octets=1300)
    assert len(ctar.encode()) > 1280
    ar = AccessRouter(NAR)
    ar.receive(ctar.encode(), MN_NEW, "icmp", 0.0)
    (datagram,) = ar.datagrams_to_send()
    assert cxtp.decode(datagram.data) == CTAA(MN_PREV, (cxtp.StatusEntry(0, c.STATUS_CONTEXT_TOO_LARGE),))
    assert datagram.destination == MN_NEW
    assert ar.counters["oversize"] == 1 and ar.counters["decode_errors"] == 0
    assert ar.target_state(MN_PREV) is TargetState.IDLE
    ar.receive(_big_ctar(1, 1300, ack=False).encode(), MN_NEW, "icmp", 0.1)
    assert ar.datagrams_to_send() == [] and ar.counters["oversize"] == 2


def test_ctar_with_too_many_request_blocks():
    ar = AccessRouter(NAR, config=Config(rfc_exact=Mode.exact))
    ar.receive(_big_ctar(blocks=17).encode(), MN_NEW, "icmp", 0.0)
    (datagram,) = ar.datagrams_to_send()
    assert cxtp.decode(datagram.data).statuses[0].status == c.STATUS_CONTEXT_TOO_LARGE
    assert ar.counters["oversize"] == 1 and ar.target_state(MN_PREV) is TargetState.IDLE
    ar.receive(_big_ctar(blocks=16).encode(), MN_NEW, "icmp", 0.0)
    assert ar.target_state(MN_PREV) is TargetState.REQUESTED  # 16 is within the limit


def test_ct_req_with_too_many_request_blocks_is_dropped():
    ar = AccessRouter(PAR)
    ar.set_mn_key(MN_PREV, KEY)
    requested = tuple(ContextDataBlock.request(i + 1) for i in range(17))
    octets = b"".join(b.encode() for b in requested)
    req = CTReq(MN_PREV, 4, cxtp.compute_token(KEY, MN_PREV, 4, octets), requested)
    ar.receive(req.encode(), NAR, "ar", 0.0)
    assert ar.counters["oversize"] == 1 and ar.datagrams_to_send() == []
    assert ar.source_state(MN_PREV) is SourceState.IDLE


def test_ctd_with_too_many_contexts_is_dropped_before_any_handler():
    net = Net()
    contexts = tuple(ContextDataBlock(1, bytes(24)) for _ in range(65))
    net.nar.receive(PCTD(MN_PREV, KEY, contexts).encode(), PAR, "ar", 0.0)
    assert net.nar.counters["oversize"] == 1
    assert net.handlers["nar"][0].inactive == {} and net.nar.target_state(MN_PREV) is TargetState.IDLE
    assert isinstance(net.nar.next_event(), RequestIgnored)


def test_ar_message_size_limit():
    ar = AccessRouter(NAR, config=Config(max_ar_message=512))
    big = PCTD(MN_PREV, KEY, (ContextDataBlock(1, bytes(600)),))
    ar.receive(big.encode(), PAR, "ar", 0.0)
    assert ar.counters["oversize"] == 1 and ar.target_state(MN_PREV) is TargetState.IDLE
    event = ar.next_event()
    assert isinstance(event, RequestIgnored) and "max_ar_message" in event.reason


def test_octet_rate_limit_per_source():
    ar = AccessRouter(NAR, config=Config(ct_request_rate=1000))
    ctar = _big_ctar(blocks=1, data_octets=1150)  # about 1200 octets: 4 fit in the 5120 burst
    size = len(ctar.encode())
    assert 1100 < size <= 1280
    for _ in range(4):
        ar.receive(ctar.encode(), MN_NEW, "icmp", 0.0)
    assert ar.counters["rate_limited"] == 0
    ar.receive(ctar.encode(), MN_NEW, "icmp", 0.0)
    assert ar.counters["rate_limited"] == 1
    assert isinstance(of_type(Net.events(ar), MessageDropped)[-1], MessageDropped)
    ar.receive(ctar.encode(), "2001:db8:2::101", "icmp", 0.0)  # another source has its own budget
    assert ar.counters["rate_limited"] == 1
    ar.receive(ctar.encode(), MN_NEW, "icmp", size / 16384 + 0.001)  # refilled at 16384 octets/s
    assert ar.counters["rate_limited"] == 1
    ar.receive(ctar.encode(), MN_NEW, "icmp", size / 16384 + 0.002)
    assert ar.counters["rate_limited"] == 2


def test_octet_buckets_are_bounded():
    from cxtp.limits import OctetBuckets

    buckets = OctetBuckets(max_sources=8)
    for i in range(100):
        assert buckets.allow(f"2001:db8::{i:x}", 100, float(i), 10.0, 1000.0)
    assert len(buckets) <= 8


@pytest.mark.parametrize("kwargs", [
    {"max_icmp_message": 0}, {"max_ar_message": 70000}, {"max_request_blocks": 1.5},
    {"max_context_blocks": -1}, {"ct_request_octet_rate": 0}, {"late_ctdr_grace": 0},
    {"release_hold": -2.0}, {"max_pending_ctars": 0},
])
def test_new_config_validation(kwargs):
    with pytest.raises(ConfigError):
        Config(**kwargs)


def test_config_defaults_follow_the_handover_time():
    import dataclasses

    config = dataclasses.replace(Config(), ct_max_handover_time=9.0)
    assert config.late_ctdr_grace_time == 9.0 and config.release_hold_time == 9.0
    assert Config(release_hold=1.0).release_hold_time == 1.0
    assert Config().ct_request_octet_burst == 1280 * 4


def test_ctar_naming_this_ar_without_a_key_sends_nothing():
    ar = AccessRouter(NAR)
    ar.receive(CTAR(MN_PREV, NAR, 5, b"\x01\x02\x03\x04").encode(), MN_NEW, "icmp", 0.0)
    assert ar.datagrams_to_send() == [] and ar.counters["no_key"] == 1
    assert ar.target_state(MN_PREV) is TargetState.IDLE
