"""MN, pAR and nAR engines driven in memory through every RFC 4067 flow, with a fake clock."""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass, field

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
    Cancelled,
    Config,
    ConfigError,
    ContextActivated,
    ContextInstalled,
    CtaaReceived,
    CTReq,
    DecodeFailed,
    DuplicateIgnored,
    MobileNode,
    ProtocolError,
    RateLimited,
    Registry,
    RequestIgnored,
    StatusEntry,
    TokenRejected,
    TransferCompleted,
    TransferFailed,
    TransferStarted,
)
from cxtp import constants as c
from cxtp.mld import InMemoryMldHandler
from cxtp.options import Bound, Options, Transfer, binding_key, binding_mac, split_blocks, split_statuses

MN_PREV = "2001:db8:1::100"
MN_NEW = "2001:db8:2::100"
PAR = "2001:db8:1::1"
NAR = "2001:db8:2::1"
KEY = bytes(range(20))
GROUP = "ff0e::1:3"
FPT_SPI = 0x8001  # a test-only context type that returns data in the CTAA, like an IPsec new SPI


class Mode:
    """The mode every :class:`Net` runs in unless a test pins one (``exact=``): the ``mode``
    fixture runs each test of the modules that use it in both, with our departures from RFC 4067
    (``rfc_exact=False``, the default) and RFC-exact."""

    exact = False


@pytest.fixture(autouse=True, params=[False, True], ids=["departures", "rfc-exact"])
def mode(request):
    Mode.exact = request.param
    yield request.param
    Mode.exact = False


def naming(ar, mn=MN_PREV):
    """What a CTDR or CTC from the nAR carries to name the pAR's transfer for ``mn`` (departures:
    its TRANSFER; nothing in RFC-exact mode)."""
    if ar.config.rfc_exact:
        return ()
    record = next(r for r in ar.source_records() if r.mn == mn)
    return Options(transfer=Transfer(record.transfer_id, 0, 0)).statuses()


def ct_req_for(key, mn, seq, now, exact=None, source=None, nar=None, transfer_id=0x7E57):
    """A CT-Req as the nAR would send it for the MN's CTAR with ``seq`` (token by ``key``); with
    our departures, with its binding (from ``source`` to ``nar``), TRANSFER and BOUND."""
    exact = Mode.exact if exact is None else exact
    source, nar = source or "2001:db8:2::100", nar or "2001:db8:2::1"
    token = cxtp.compute_token(key, mn, seq)
    if exact:
        return CTReq(mn, seq, token)
    mac = binding_mac(binding_key(key), mn, seq, token, b"", source, nar)
    options = Options(binding=mac, transfer=Transfer(transfer_id, Transfer.ms(now), 200), bound=Bound(source, nar))
    return CTReq(mn, seq, token, options.blocks())


def signed_ctar(key, mn, named, seq, source, to, requested=(), ack=True, exact=None):
    """A CTAR as the MN sends it (token by ``key``); with our departures, bound to ``source`` and
    ``to``, the AR it is sent to."""
    exact = Mode.exact if exact is None else exact
    octets = b"".join(b.encode() for b in requested)
    token = cxtp.compute_token(key, mn, seq, octets)
    if not exact:
        mac = binding_mac(binding_key(key), mn, seq, token, octets, source, to)
        requested = tuple(requested) + Options(binding=mac).blocks()
    return CTAR(mn, named, seq, token, tuple(requested), ack)


def plain(blocks):
    """The CDBs of a message without our options (all of them in RFC-exact mode)."""
    return split_blocks(blocks)[0]


def plain_statuses(entries):
    return split_statuses(entries)[0]


@dataclass
class SpiLikeHandler:
    """Minimal second context type: a 4-octet value, re-assigned on activation."""

    fpt: int = FPT_SPI
    values: dict = field(default_factory=dict)
    inactive: dict = field(default_factory=dict)
    active: dict = field(default_factory=dict)
    acks: list = field(default_factory=list)
    released: list = field(default_factory=list)
    discarded: list = field(default_factory=list)
    install_status: int = 0
    new_value: bytes = b"\x00\x00\x12\x34"
    transfers: list = field(default_factory=list)

    def collect(self, mn):
        return self.values.get(mn)

    def install(self, mn, data, transfer):
        self.transfers.append(transfer)
        self.inactive[mn] = data
        return self.install_status

    def activate(self, mn, transfer):
        self.transfers.append(transfer)
        self.active[mn] = self.inactive.pop(mn)
        return 0, self.new_value

    def discard(self, mn):
        self.discarded.append(mn)
        self.inactive.pop(mn, None)

    def release(self, mn):
        self.released.append(mn)
        self.values.pop(mn, None)

    def acknowledged(self, mn, status, data):
        self.acks.append((mn, status, data))


class Net:
    """Moves datagrams between engines with a fake clock; ``drop`` decides which are lost and
    ``copies`` how many times each is delivered. ``links`` gives an AR the separate address its
    AR-AR messages come from (as the testbed's AR-AR link addresses); ``par_peers`` and
    ``nar_peers`` are the engines' ``peers``."""

    def __init__(self, config: Config | None = None, seed: int = 1, par_peers=None, nar_peers=None,
                 links: dict[str, str] | None = None, exact: bool | None = None):
        self.exact = Mode.exact if exact is None else exact
        self.config = dataclasses.replace(config or Config(), rfc_exact=self.exact)
        self.now = 0.0
        self.handlers: dict[str, tuple[InMemoryMldHandler, SpiLikeHandler]] = {}
        self.engines: dict[str, MobileNode | AccessRouter] = {}
        self.mn = MobileNode(MN_PREV, self._registry("mn"), self.config, random.Random(seed))
        self.par = AccessRouter(PAR, self._registry("par"), self.config, random.Random(seed + 1),
                                peers=par_peers)
        self.nar = AccessRouter(NAR, self._registry("nar"), self.config, random.Random(seed + 2),
                                peers=nar_peers)
        self.mn_source = MN_PREV
        self.routes = {MN_PREV: self.mn, MN_NEW: self.mn, PAR: self.par, NAR: self.nar}
        self.links = links or {}
        for access, link in self.links.items():
            self.routes[link] = self.routes[access]
        self.drop = lambda src, datagram, message: False
        self.copies = lambda src, datagram, message: 1
        self.log: list[tuple[float, str, str, object]] = []
        self.handlers["par"][0].subscribe(MN_PREV, "2001:db8:2::/64", GROUP)
        self.handlers["par"][1].values[MN_PREV] = b"\xaa\xbb\xcc\xdd"
        self.par.set_mn_key(MN_PREV, KEY)
        self.mn.set_key(KEY)

    def _registry(self, name):
        mld, spi = InMemoryMldHandler(), SpiLikeHandler()
        self.handlers[name] = (mld, spi)
        return Registry([mld, spi])

    def source_of(self, engine, datagram=None):
        if engine is self.mn:
            return self.mn_source
        if datagram is not None and datagram.transport == "ar":
            return self.links.get(engine.address, engine.address)
        return engine.address

    def pump(self):
        moved = True
        while moved:
            moved = False
            for engine in (self.mn, self.par, self.nar):
                for datagram in engine.datagrams_to_send():
                    moved = True
                    src = self.source_of(engine, datagram)
                    message = cxtp.decode(datagram.data)
                    self.log.append((self.now, src, datagram.destination, message))
                    if self.drop(src, datagram, message) or datagram.destination not in self.routes:
                        continue
                    for _ in range(self.copies(src, datagram, message)):
                        self.routes[datagram.destination].receive(datagram.data, src,
                                                                  datagram.transport, self.now)

    def advance(self, until: float):
        """Fire timers in order up to ``until``, delivering what they send."""
        self.pump()
        while True:
            timers = [(when, i, e) for i, e in enumerate((self.mn, self.par, self.nar))
                      if (when := e.get_timer()) is not None and when <= until]
            if not timers:
                break
            when, _, engine = min(timers)
            self.now = max(self.now, when)
            engine.handle_timer(self.now)
            self.pump()
        self.now = until

    def messages(self):
        return [type(m).__name__ for _, _, _, m in self.log]

    @staticmethod
    def events(engine):
        out = []
        while (event := engine.next_event()) is not None:
            out.append(event)
        return out


def of_type(events, kind):
    return [e for e in events if isinstance(e, kind)]


def complete_predictive(net: Net):
    net.mn.request_predictive(PAR, NAR, net.now)
    net.pump()
    net.now += 0.05
    net.mn_source = MN_NEW
    net.mn.attached(NAR, PAR, net.now, new_address=MN_NEW)
    net.pump()


# --- the four flows of §5 and the mobile-initiated ones of §2.1 -----------------------------------

def test_mobile_initiated_predictive():
    net = Net()
    complete_predictive(net)
    assert net.messages() == ["CTAR", "PCTD", "CTAA", "CTAR", "CTAA", "CTDR"]
    ctar_par, ctar_nar = net.log[0][3], net.log[3][3]
    assert ctar_par.ar_address == NAR and ctar_nar.ar_address == PAR  # §2.5.1 address field
    assert ctar_par.sequence_number == ctar_nar.sequence_number and ctar_par.token == ctar_nar.token
    mn_events, par_events, nar_events = map(Net.events, (net.mn, net.par, net.nar))
    (done,) = of_type(mn_events, TransferCompleted)
    assert {s.fpt: (s.status, s.data) for s in done.statuses} == {
        1: (0, b""), FPT_SPI: (0, b"\x00\x00\x12\x34")}
    assert len(of_type(mn_events, CtaaReceived)) == 2
    assert of_type(par_events, TransferCompleted)[0].statuses[0].status == 0
    assert of_type(nar_events, ContextInstalled) and of_type(nar_events, ContextActivated)
    # contexts moved: the nAR has the listener and the SPI-like value, the pAR released them
    nar_mld, nar_spi = net.handlers["nar"]
    par_mld, par_spi = net.handlers["par"]
    assert nar_mld.listeners_present == {GROUP: {MN_PREV}}
    assert nar_spi.active == {MN_PREV: b"\xaa\xbb\xcc\xdd"}
    assert par_mld.subscriptions == {} and par_spi.released == [MN_PREV]
    assert net.handlers["mn"][1].acks == [(MN_PREV, 0, b"\x00\x00\x12\x34")]
    # TransferInfo: the nAR learnt the MN's new address from the CTAR; the PCTD's install came
    # before any CTAR was verified, so it had none
    assert nar_spi.transfers == [cxtp.TransferInfo(MN_PREV, PAR, NAR), cxtp.TransferInfo(MN_PREV, PAR, NAR, MN_NEW)]
    # keys: the nAR discarded it, the pAR burnt it, the MN's address moved on
    assert net.nar.target_transfer(MN_PREV) is None and net.par.source_transfer(MN_PREV) is None
    assert not net.par.has_mn_key(MN_PREV)
    with pytest.raises(ProtocolError):
        net.par.set_mn_key(MN_PREV, KEY)
    assert net.mn.address == MN_NEW
    assert net.mn.get_timer() is None and net.par.get_timer() is None and net.nar.get_timer() is None


def test_pctd_carries_key_and_contexts():
    net = Net()
    net.mn.request_predictive(PAR, NAR, 0.0)
    net.pump()
    pctd = net.log[1][3]
    assert isinstance(pctd, PCTD) and pctd.key == KEY and pctd.algorithm == c.HMAC_SHA1
    assert {b.fpt for b in plain(pctd.contexts)} == {1, FPT_SPI}
    assert all(len(b.encode()) == 32 for b in pctd.contexts if b.fpt == 1)  # App. B Length 4
    # departures: the PCTD names its transfer (id, start, the pAR's hold as lifetime)
    transfer = split_blocks(pctd.contexts)[1].transfer
    assert (transfer is None) == net.exact
    if transfer is not None:
        assert (transfer.origin_ms, transfer.lifetime_ms) == (0, 5000) and transfer.transfer_id
    # the nAR holds the contexts inactive until the CTAR verifies
    assert net.handlers["nar"][0].inactive and not net.handlers["nar"][0].listeners_present
    assert net.nar.target_transfer(MN_PREV).key == KEY


def test_mobile_initiated_reactive():
    net = Net()
    net.mn_source = MN_NEW
    net.mn.attached(NAR, PAR, 0.0, new_address=MN_NEW)
    net.pump()
    assert net.messages() == ["CTAR", "CTReq", "CTD", "CTAA", "CTDR"]
    ctar, req = net.log[0][3], net.log[1][3]
    assert (req.sequence_number, req.token, plain(req.requested)) == (ctar.sequence_number, ctar.token,
                                                                      plain(ctar.requested))
    if not net.exact:  # the CTAR's binding, copied; the address it came from and the AR it went to
        ctar_options, req_options = split_blocks(ctar.requested)[1], split_blocks(req.requested)[1]
        assert req_options.binding == ctar_options.binding is not None
        assert req_options.bound == cxtp.options.Bound(MN_NEW, NAR)
        ctd_options = split_blocks(net.log[2][3].contexts)[1]
        assert ctd_options.transfer == req_options.transfer and ctd_options.bound == req_options.bound
        assert ctd_options.ctaa_key == cxtp.options.ctaa_key(KEY)
    assert net.log[3][2] == MN_NEW  # CTAA goes to where the CTAR came from
    assert of_type(Net.events(net.mn), TransferCompleted)
    assert of_type(Net.events(net.par), TransferCompleted)
    assert net.handlers["nar"][0].listeners_present == {GROUP: {MN_PREV}}
    # the CTD answers the nAR's CT-Req, whose token the pAR verified: its install already knows the
    # MN's new address (the CTAR that asked), and the activation follows at once
    nar_spi = net.handlers["nar"][1]
    assert nar_spi.transfers == [cxtp.TransferInfo(MN_PREV, PAR, NAR, MN_NEW)] * 2


def test_network_initiated_by_par():
    net = Net()
    net.par.trigger_predictive(MN_PREV, NAR, 0.0)
    net.pump()
    assert net.messages() == ["PCTD"]
    assert of_type(Net.events(net.nar), ContextInstalled)
    net.now = 0.5
    net.mn_source = MN_NEW
    net.mn.attached(NAR, PAR, 0.5, new_address=MN_NEW)
    net.pump()
    assert net.messages() == ["PCTD", "CTAR", "CTAA", "CTDR"]
    assert of_type(Net.events(net.mn), TransferCompleted)
    assert of_type(Net.events(net.par), TransferCompleted)
    assert net.handlers["nar"][0].listeners_present == {GROUP: {MN_PREV}}


def test_zero_token_ct_req_is_refused():
    # formerly the nAR-initiated flow of §5.2 (trigger_reactive, CT-Req with token 0, PCTD with
    # the key): removed, a zero token is never a substitute for the MN's token
    net = Net()
    net.nar.receive(CTAR(MN_PREV, PAR, 7, bytes(4)).encode(), MN_NEW, "icmp", 0.0)
    net.par.receive(CTReq(MN_PREV, 7, bytes(4)).encode(), NAR, "ar", 0.0)
    net.pump()
    assert net.messages() == []
    assert net.par.counters["zero_token"] == 1 and net.nar.counters["zero_token"] == 1
    assert of_type(Net.events(net.par), RequestIgnored) and net.par.has_mn_key(MN_PREV)
    assert not hasattr(net.nar, "trigger_reactive")


def test_network_initiated_pctd_overtaken_by_the_ctar():
    net = Net()
    held = []
    net.drop = lambda src, d, m: isinstance(m, PCTD) and not held.append(d)
    net.par.trigger_predictive(MN_PREV, NAR, 0.0)
    net.pump()
    net.drop = lambda src, d, m: False
    net.mn_source = MN_NEW
    net.mn.attached(NAR, PAR, 0.01, new_address=MN_NEW)
    net.pump()  # CTAR -> CT-Req -> the pAR verifies it against its cache and resends as CTD
    assert net.messages() == ["PCTD", "CTAR", "CTReq", "CTD", "CTAA", "CTDR"]
    assert of_type(Net.events(net.mn), TransferCompleted)
    net.nar.receive(held[0].data, PAR, "ar", 0.02)  # the PCTD arrives late: a duplicate
    assert net.nar.datagrams_to_send() == [] and net.nar.counters["duplicates"] == 1
    assert net.handlers["par"][1].released == [MN_PREV]


def test_lost_pctd_recovered_by_ct_req_with_same_sequence():
    net = Net()
    net.drop = lambda src, d, m: isinstance(m, PCTD)
    complete_predictive(net)
    assert net.messages() == ["CTAR", "PCTD", "CTAA", "CTAR", "CTReq", "CTD", "CTAA", "CTDR"]
    seq = net.log[0][3].sequence_number
    assert net.log[4][3].sequence_number == seq
    assert net.log[5][3].elapsed_time == 50  # ms since the first (lost) PCTD
    assert net.par.counters["recoveries"] == 1
    assert of_type(Net.events(net.mn), TransferCompleted)
    assert net.handlers["par"][0].subscriptions == {}


def test_predictive_ctar_racing_ahead_of_pctd_is_verified_locally():
    net = Net()
    held = []
    net.drop = lambda src, d, m: isinstance(m, PCTD) and not held.append(d)
    net.mn.request_predictive(PAR, NAR, 0.0)
    net.pump()
    net.mn_source = MN_NEW
    net.drop = lambda src, d, m: isinstance(m, CTReq)  # keep the recovery request away too
    net.mn.attached(NAR, PAR, 0.01, new_address=MN_NEW)
    net.pump()
    net.drop = lambda src, d, m: False
    net.nar.receive(held[0].data, PAR, "ar", 0.02)
    net.pump()
    assert of_type(Net.events(net.nar), ContextActivated)
    assert net.messages()[-2:] == ["CTAA", "CTDR"]


# --- tokens ------------------------------------------------------------------------------------------

def test_wrong_key_rejected_at_par():
    net = Net()
    net.mn.set_key(b"another key")
    net.mn.request_predictive(PAR, NAR, 0.0)
    net.pump()
    assert net.messages() == ["CTAR"]
    assert of_type(Net.events(net.par), TokenRejected)
    assert net.par.counters["token_failures"] == 1


def test_forged_ctar_at_nar_keeps_context_for_the_real_mn():
    # formerly: a forged CTAR made the nAR discard the context and the key (denial of handover)
    net = Net()
    net.mn.request_predictive(PAR, NAR, 0.0)
    net.pump()
    real = net.log[0][3]
    forged = CTAR(MN_PREV, PAR, real.sequence_number ^ 1, b"\xde\xad\xbe\xef")
    net.nar.receive(forged.encode(), "2001:db8:2::666", "icmp", 0.01)
    net.pump()
    nar_events = Net.events(net.nar)
    assert of_type(nar_events, TokenRejected) and not of_type(nar_events, TransferFailed)
    (ctaa,) = [m for _, _, dst, m in net.log if isinstance(m, CTAA) and dst == "2001:db8:2::666"]
    assert {s.status for s in ctaa.statuses} == {c.STATUS_AUTHORIZATION_FAILED}
    assert net.handlers["nar"][1].discarded == [] and net.handlers["nar"][0].inactive
    assert net.nar.target_transfer(MN_PREV).key == KEY
    net.mn_source = MN_NEW
    net.mn.attached(NAR, PAR, 0.1, new_address=MN_NEW)
    net.pump()
    assert of_type(Net.events(net.mn), TransferCompleted)
    assert net.handlers["nar"][0].listeners_present == {GROUP: {MN_PREV}}
    assert net.handlers["par"][1].released == [MN_PREV]


def test_wrong_token_in_reactive_ct_req_times_out_with_ctc():
    net = Net()
    net.mn.set_key(b"wrong key")
    net.mn_source = MN_NEW
    net.mn.attached(NAR, PAR, 0.0, new_address=MN_NEW)
    net.pump()
    assert net.messages() == ["CTAR", "CTReq"]
    assert of_type(Net.events(net.par), TokenRejected)
    net.advance(0.199)
    assert net.messages() == ["CTAR", "CTReq"]
    net.advance(0.2)  # CT_MAX_TRANSFER_TIME
    failed = of_type(Net.events(net.nar), TransferFailed)
    assert failed and "CT_MAX_TRANSFER_TIME" in failed[0].reason
    if not net.exact:
        # departures: nothing for the MN (it believes only an authenticated CTAA, and nothing was
        # verified) and no CTC (the CT-Req's TRANSFER ties any answer to it); the MN's
        # retransmission asks again, afresh
        assert net.messages() == ["CTAR", "CTReq"] and net.nar.counters["ct_req_timeouts"] == 1
        net.advance(2.0)
        assert net.messages() == ["CTAR", "CTReq", "CTAR", "CTReq"]
        return
    assert net.messages() == ["CTAR", "CTReq", "CTC", "CTAA"]
    ctaa = net.log[-1][3]
    assert {s.status for s in ctaa.statuses} == {c.STATUS_TRANSFER_TIMEOUT}


# --- duplicates, retransmission, rate limit --------------------------------------------------------

def test_duplicate_ctar_ignored_and_ctaa_resent():
    net = Net()
    complete_predictive(net)
    ctar = net.log[3][3]
    Net.events(net.nar)
    net.nar.receive(ctar.encode(), MN_NEW, "icmp", 1.0)
    assert of_type(Net.events(net.nar), DuplicateIgnored)
    resent = net.nar.datagrams_to_send()
    assert [cxtp.decode(d.data) for d in resent] == [net.log[4][3]]  # the same CTAA again
    # after 7 s the (sequence, MN) pair is forgotten: the CTAR is processed (and fails: no context)
    net.nar.receive(ctar.encode(), MN_NEW, "icmp", 8.0)
    assert not of_type(Net.events(net.nar), DuplicateIgnored)
    assert net.nar.counters["duplicates"] == 1


def test_ctar_retransmission_schedule_and_give_up():
    net = Net()
    net.drop = lambda src, d, m: d.destination == NAR
    net.mn_source = MN_NEW
    net.mn.attached(NAR, PAR, 0.0, new_address=MN_NEW)
    net.advance(30.0)
    times = [t for t, _, dst, m in net.log if isinstance(m, CTAR)]
    assert times == [0.0, 2.0, 6.0, 14.0]  # CT_REQUEST_RETRY, doubling (§3.2)
    failed = of_type(Net.events(net.mn), TransferFailed)
    assert failed and failed[0].reason == "no CTAA within CT_RETRY_MAX"
    assert net.mn.counters["ctar_retransmissions"] == 3 and not net.mn.in_progress


def test_retransmission_repairs_a_lost_ctaa():
    net = Net()
    lost = []
    net.drop = lambda src, d, m: isinstance(m, CTAA) and d.destination == MN_NEW and not lost \
        and not lost.append(m)
    net.mn_source = MN_NEW
    net.mn.attached(NAR, PAR, 0.0, new_address=MN_NEW)
    net.pump()
    assert not of_type(Net.events(net.mn), TransferCompleted)
    net.advance(2.0)
    assert of_type(Net.events(net.mn), TransferCompleted)
    assert net.nar.counters["ctaa_resent"] == 1
    assert net.messages() == ["CTAR", "CTReq", "CTD", "CTAA", "CTDR", "CTAR", "CTAA"]


def test_no_retransmission_without_a_bit():
    net = Net(Config(request_ctaa=False))
    net.drop = lambda src, d, m: True
    net.mn.attached(NAR, PAR, 0.0)
    (done,) = of_type(Net.events(net.mn), TransferCompleted)
    assert done.acknowledged is False
    net.advance(20.0)
    assert net.messages() == ["CTAR"]


def test_predictive_ctar_retransmitted_until_attached():
    net = Net()
    net.drop = lambda src, d, m: d.destination == PAR
    net.mn.request_predictive(PAR, NAR, 0.0)
    net.advance(3.0)
    assert [t for t, *_ in net.log] == [0.0, 2.0]
    net.drop = lambda src, d, m: False
    net.mn_source = MN_NEW
    net.mn.attached(NAR, PAR, 3.0, new_address=MN_NEW)  # same sequence number, now to the nAR (reactive there)
    net.pump()
    assert net.log[2][3].sequence_number == net.log[0][3].sequence_number
    assert of_type(Net.events(net.mn), TransferCompleted)


class FixedRandom(random.Random):
    def __init__(self, value):
        super().__init__(0)
        self.value = value

    def random(self):
        return self.value


def _flood(ar: AccessRouter, count: int, now: float, start: int = 0):
    for i in range(start, start + count):
        ctar = CTAR(f"2001:db8:1::{i + 0x1000:x}", PAR, i, b"\x01\x02\x03\x04")
        ar.receive(ctar.encode(), f"2001:db8:1::{i + 0x1000:x}", "icmp", now)
    return len(of_type(Net.events(ar), RateLimited))


def test_rate_limit_drops_above_ct_request_rate():
    assert _flood(AccessRouter(NAR, rng=FixedRandom(0.0)), 25, 0.0) == 15  # always drop above 10/s
    assert _flood(AccessRouter(NAR, rng=FixedRandom(0.999)), 25, 0.0) == 0
    seeded = _flood(AccessRouter(NAR, rng=random.Random(7)), 100, 0.0)
    assert 0 < seeded < 90  # dropped at random (§6.3)
    ar = AccessRouter(NAR, rng=FixedRandom(0.0))
    assert _flood(ar, 10, 0.0) == 0 and _flood(ar, 1, 0.5, 10) == 1
    assert _flood(ar, 5, 1.6, 20) == 0  # the window moved on
    assert ar.counters["rate_limited"] == 1


def test_rate_is_configurable():
    ar = AccessRouter(NAR, config=Config(ct_request_rate=2), rng=FixedRandom(0.0))
    assert _flood(ar, 5, 0.0) == 3


# --- CTC, CT_MAX_TRANSFER_TIME, cache lifetimes -----------------------------------------------------

def test_ctc_cancels_at_par():
    net = Net()
    net.mn.request_predictive(PAR, NAR, 0.0)
    net.pump()
    net.nar.cancel(MN_PREV, 0.1)
    net.pump()
    assert net.messages()[-1] == "CTC"
    assert of_type(Net.events(net.par), Cancelled)
    assert of_type(Net.events(net.nar), Cancelled)
    assert net.handlers["nar"][0].inactive == {}
    assert net.handlers["par"][0].subscriptions  # cancelled, not released
    assert net.par.source_transfer(MN_PREV) is None and not net.par.has_mn_key(MN_PREV)


def test_lost_ctd_makes_nar_send_ctc_after_max_transfer_time():
    net = Net()
    net.drop = lambda src, d, m: isinstance(m, CTD)
    net.mn_source = MN_NEW
    net.mn.attached(NAR, PAR, 0.0, new_address=MN_NEW)
    net.advance(1.0)
    if net.exact:
        assert net.messages()[:4] == ["CTAR", "CTReq", "CTD", "CTC"]
        assert [t for t, _, _, m in net.log if isinstance(m, CTC)] == [0.2]
    else:  # departures: no CTC; the pAR's reactive transfer ends at its own hold
        assert net.messages()[:3] == ["CTAR", "CTReq", "CTD"] and "CTC" not in net.messages()
    # both ends give up at CT_MAX_TRANSFER_TIME: the pAR by deleting its cache, the nAR with CTC
    par_events = Net.events(net.par)
    assert of_type(par_events, Cancelled) or of_type(par_events, TransferFailed)
    assert net.par.source_transfer(MN_PREV) is None


def test_par_deletes_cache_when_ctdr_never_comes():
    net = Net()
    net.drop = lambda src, d, m: isinstance(m, CTDR)
    net.mn_source = MN_NEW
    net.mn.attached(NAR, PAR, 0.0, new_address=MN_NEW)
    net.pump()
    assert net.par.source_transfer(MN_PREV) is not None
    net.advance(0.2)
    assert net.par.source_transfer(MN_PREV) is None
    (failed,) = of_type(Net.events(net.par), TransferFailed)
    assert "CTDR" in failed.reason and net.par.counters["par_cache_expired"] == 1
    assert net.handlers["par"][0].subscriptions  # never released without CTDR S=1


def test_inactive_context_expires_when_mn_never_arrives():
    net = Net(Config(ct_max_handover_time=1.0))
    net.par.trigger_predictive(MN_PREV, NAR, 0.0)
    net.advance(0.99)
    assert net.handlers["nar"][0].inactive
    net.advance(1.0)
    assert net.handlers["nar"][0].inactive == {} and net.messages() == ["PCTD", "CTC"]
    assert net.handlers["nar"][1].discarded == [MN_PREV]
    assert net.par.source_transfer(MN_PREV) is None


def test_predictive_cache_lives_ct_max_handover_time():
    net = Net(Config(ct_max_handover_time=3.0))
    net.drop = lambda src, d, m: isinstance(m, CTC)
    net.mn.request_predictive(PAR, NAR, 0.0)
    net.advance(2.9)
    assert net.par.source_transfer(MN_PREV) is not None
    net.advance(3.0)
    assert net.par.source_transfer(MN_PREV) is None


# --- one transfer per MN, keys -----------------------------------------------------------------------

def test_one_transaction_per_mn():
    net = Net()
    net.mn.request_predictive(PAR, NAR, 0.0)
    with pytest.raises(ProtocolError):
        net.mn.request_predictive(PAR, NAR, 0.0)
    net.pump()
    with pytest.raises(ProtocolError):
        net.par.trigger_predictive(MN_PREV, NAR, 0.1)
    # a second CTAR for the same MN (another sequence) while the first is in progress is ignored
    other = CTAR(MN_PREV, NAR, 12345, cxtp.compute_token(KEY, MN_PREV, 12345))
    net.par.receive(other.encode(), MN_PREV, "icmp", 0.2)
    assert of_type(Net.events(net.par), RequestIgnored)


def test_mn_needs_a_fresh_key_per_transaction():
    net = Net()
    complete_predictive(net)
    with pytest.raises(ProtocolError):
        net.mn.set_key(KEY)
    with pytest.raises(ProtocolError):
        net.mn.attached(NAR, PAR, 1.0)  # no key provided
    net.mn.set_key(b"fresh key")
    net.mn.attached(PAR, NAR, 1.0)


def test_par_refuses_network_trigger_without_key():
    ar = AccessRouter(PAR)
    with pytest.raises(ProtocolError):
        ar.trigger_predictive(MN_PREV, NAR, 0.0)
    with pytest.raises(ProtocolError):
        ar.set_mn_key(MN_PREV, b"")
    with pytest.raises(ProtocolError):
        ar.cancel(MN_PREV, 0.0)


def test_par_ignores_ct_req_for_unknown_mn():
    ar = AccessRouter(PAR)
    ar.receive(CTReq(MN_PREV).encode(), NAR, "ar", 0.0)
    assert of_type(Net.events(ar), RequestIgnored) and ar.datagrams_to_send() == []


def test_sequence_numbers_not_reused_within_7_seconds():
    class Repeating(random.Random):
        def __init__(self):
            super().__init__(0)
            self.values = iter([5, 5, 6, 5])

        def getrandbits(self, k):
            return next(self.values)

    mn = MobileNode(MN_PREV, config=Config(request_ctaa=False), rng=Repeating())
    mn.set_key(b"k1")
    mn.attached(NAR, PAR, 0.0)
    mn.set_key(b"k2")
    mn.attached(NAR, PAR, 1.0)
    assert mn.counters["sent_ctar"] == 2
    seqs = [cxtp.decode(d.data).sequence_number for d in mn.datagrams_to_send()]
    assert seqs == [5, 6]
    mn.set_key(b"k3")
    mn.attached(NAR, PAR, 7.5)  # 5 is free again after 7 s
    assert cxtp.decode(mn.datagrams_to_send()[0].data).sequence_number == 5


def test_same_seed_same_run():
    a, b = Net(seed=3), Net(seed=3)
    complete_predictive(a)
    complete_predictive(b)
    assert [m for *_, m in a.log] == [m for *_, m in b.log]


# --- per-FPT status ------------------------------------------------------------------------------------

def test_per_fpt_status_in_ctaa_and_ctdr():
    net = Net()
    net.nar.registry.unregister(FPT_SPI)  # the nAR does not support this context type
    net.handlers["nar"][0].install = lambda mn, data, transfer: 0x42  # and MLD install fails
    complete_predictive(net)
    ctaa = net.log[4][3]
    assert isinstance(ctaa, CTAA)
    assert {s.fpt: s.status for s in plain_statuses(ctaa.statuses)} == {1: 0x42, FPT_SPI: c.STATUS_UNSUPPORTED_FPT}
    ctdr = net.log[5][3]
    assert not ctdr.success and {s.fpt: s.status for s in plain_statuses(ctdr.statuses)} == {
        1: 0x42, FPT_SPI: c.STATUS_UNSUPPORTED_FPT}
    (failed,) = of_type(Net.events(net.par), TransferFailed)
    assert failed.statuses == plain_statuses(ctdr.statuses)


def test_requested_fpts_only():
    net = Net()
    net.mn.set_key(KEY)  # same key as before the test started (not yet used)
    net.mn.request_predictive(PAR, NAR, 0.0, fpts=[1, 0x0777])
    net.pump()
    ctar, pctd, par_ctaa = (m for *_, m in net.log[:3])
    assert [b.fpt for b in plain(ctar.requested)] == [1, 0x0777] and len(ctar.requested[0].encode()) == 8
    assert {b.fpt for b in plain(pctd.contexts)} == {1}
    assert plain_statuses(par_ctaa.statuses) == (StatusEntry(0x0777, c.STATUS_UNSUPPORTED_FPT),)
    net.mn_source = MN_NEW
    net.mn.attached(NAR, PAR, 0.1, new_address=MN_NEW)
    net.pump()
    final = net.log[4][3]
    assert {s.fpt: s.status for s in plain_statuses(final.statuses)} == {1: 0, 0x0777: c.STATUS_CONTEXT_UNAVAILABLE}


def test_handler_exception_becomes_status():
    net = Net()

    def boom(*args):
        raise RuntimeError("broken context type")

    net.handlers["nar"][1].activate = boom
    complete_predictive(net)
    ctaa = net.log[4][3]
    assert {s.fpt: s.status for s in ctaa.statuses}[FPT_SPI] == c.STATUS_HANDLER_ERROR
    assert net.nar.counters["handler_errors"] == 1


# --- robustness, IPv4, config --------------------------------------------------------------------------

def test_decode_errors_are_counted():
    ar = AccessRouter(PAR)
    ar.receive(b"\x21\x40\x00", NAR, "ar", 0.0)
    ar.receive(CTC(MN_PREV).encode(), NAR, "icmp", 0.0)  # CTC does not travel over ICMP
    assert ar.counters["decode_errors"] == 1 and ar.counters["wrong_transport"] == 1
    assert isinstance(ar.next_event(), DecodeFailed)
    with pytest.raises(ProtocolError):
        ar.receive(b"", NAR, "udp", 0.0)


def test_unexpected_messages_are_ignored():
    net = Net()
    net.par.receive(CTDR(MN_PREV, True).encode(), NAR, "ar", 0.0)
    net.mn.receive(CTAA(MN_PREV).encode(), NAR, "icmp", 0.0)  # no transaction yet
    assert net.par.counters["unexpected_messages"] == 1 and net.mn.counters["unexpected_messages"] == 1
    assert net.handlers["par"][0].subscriptions  # nothing released


def test_ipv4_reactive_flow():
    mn_reg, par_reg, nar_reg = Registry([SpiLikeHandler()]), Registry([SpiLikeHandler()]), \
        Registry([SpiLikeHandler()])
    par_reg.get(FPT_SPI).values["10.0.1.100"] = b"\x01\x02\x03\x04"
    config = Config(rfc_exact=Mode.exact)
    mn = MobileNode("10.0.1.100", mn_reg, config, rng=random.Random(1))
    par, nar = AccessRouter("10.0.1.1", par_reg, config), AccessRouter("10.0.2.1", nar_reg, config)
    par.set_mn_key("10.0.1.100", b"v4 key")
    mn.set_key(b"v4 key")
    mn.attached("10.0.2.1", "10.0.1.1", 0.0, new_address="10.0.2.100")
    routes = {"10.0.2.1": nar, "10.0.1.1": par, "10.0.2.100": mn}
    sources = {mn: "10.0.2.100", nar: "10.0.2.1", par: "10.0.1.1"}
    for _ in range(5):
        for engine in (mn, par, nar):
            for d in engine.datagrams_to_send():
                assert cxtp.decode(d.data).ipv4
                routes[d.destination].receive(d.data, sources[engine], d.transport, 0.0)
    assert of_type(Net.events(mn), TransferCompleted)
    assert nar_reg.get(FPT_SPI).active == {"10.0.1.100": b"\x01\x02\x03\x04"}


@pytest.mark.parametrize("kwargs", [
    {"ct_request_rate": 0}, {"ct_max_transfer_time": -1}, {"ct_retry_max": 1.0},
    {"ct_request_retry": "2"}, {"key_algorithm": 1 << 16},
])
def test_config_validation(kwargs):
    with pytest.raises(ConfigError):
        Config(**kwargs)


def test_registry_validation():
    registry = Registry([SpiLikeHandler()])
    with pytest.raises(ConfigError):
        registry.register(SpiLikeHandler())
    with pytest.raises(ConfigError):
        registry.register(SpiLikeHandler(fpt=0))
    assert registry.fpts() == (FPT_SPI,) and FPT_SPI in registry and len(registry) == 1
    assert isinstance(SpiLikeHandler(), cxtp.ContextHandler)


def test_events_name_roles_and_modes():
    net = Net()
    complete_predictive(net)
    started = of_type(Net.events(net.nar), TransferStarted)
    assert started == [TransferStarted(MN_PREV, "nar", "predictive", PAR)]
