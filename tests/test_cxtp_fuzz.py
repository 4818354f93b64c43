"""Property tests of the engines as state machines: random sequences of valid and invalid
messages, from random sources, interleaved with time and API calls, never raise anything but the
engine's own refusals of API misuse, and never leave a transfer without a deadline."""

from __future__ import annotations

import math
import random

from hypothesis import given
from hypothesis import strategies as st

import cxtp
import cxtp_profiles  # noqa: F401  (registers and loads the hypothesis profile)
from cxtp import (
    CTAA,
    CTAR,
    CTC,
    CTD,
    CTDR,
    PCTD,
    AccessRouter,
    AnyMessage,
    Config,
    ContextDataBlock,
    CTReq,
    MobileNode,
    ProtocolError,
    Registry,
    SourceState,
    StatusEntry,
)
from cxtp.mld import InMemoryMldHandler
from cxtp.options import Bound, Options, Transfer, binding_key, binding_mac, ctaa_key
from test_cxtp_engine import SpiLikeHandler

AR = "2001:db8:1::1"
PEER = "2001:db8:2::1"
PEER_LINK = "2001:db8:12::2"
OTHER_PEER = "2001:db8:3::1"
STRANGER = "2001:db8:99::9"
MNS = ("2001:db8:1::100", "2001:db8:1::101", "2001:db8:2::100")
SOURCES = (*MNS, "2001:db8:2::200", PEER, PEER_LINK, OTHER_PEER, STRANGER, AR)
KEYS = (b"key-a", b"key-b", b"key-c", b"key-d")

mn_index = st.integers(0, len(MNS) - 1)
source = st.sampled_from(SOURCES)
seq = st.sampled_from([0, 1, 2, 0xFFFFFFFF])
token_kind = st.sampled_from(["valid", "bad", "zero", "other-key"])
transport = st.sampled_from(["icmp", "icmp", "ar", "ar", "ar"])
request = st.lists(st.integers(1, 3).map(lambda f: ContextDataBlock.request(f)), max_size=3).map(tuple)

actions = st.one_of(
    st.tuples(st.just("ctar"), mn_index, seq, token_kind, st.sampled_from([PEER, OTHER_PEER, STRANGER, AR]),
              st.booleans(), source, request),
    st.tuples(st.just("ctreq"), mn_index, seq, token_kind, source, request),
    st.tuples(st.just("pctd"), mn_index, st.sampled_from(KEYS), st.sampled_from([1, 1, 2]),
              st.booleans(), source, st.integers(0, 3)),
    st.tuples(st.just("ctd"), mn_index, st.booleans(), source, st.integers(0, 3)),
    st.tuples(st.just("ctdr"), mn_index, st.booleans(), source),
    st.tuples(st.just("ctc"), mn_index, source),
    st.tuples(st.just("ctaa"), mn_index, source),
    st.tuples(st.just("garbage"), st.binary(max_size=64), transport, source),
    st.tuples(st.just("oversize"), st.integers(1281, 3000), transport, source),
    st.tuples(st.just("advance"), st.sampled_from([0.0, 0.05, 0.1, 0.2, 0.5, 1.0, 3.0, 6.0, 12.0])),
    st.tuples(st.just("advance"), st.sampled_from([0.3, 1.0, 2.5])),
    st.tuples(st.just("set_key"), mn_index),
    st.tuples(st.just("trigger"), mn_index, st.sampled_from([PEER, OTHER_PEER, STRANGER])),
    st.tuples(st.just("trigger"), mn_index, st.just(PEER)),
    st.tuples(st.just("cancel"), mn_index),
    st.tuples(st.just("forget"), mn_index),
    # the next message a transfer of this MN would plausibly get (from the right AR or not)
    st.tuples(st.just("follow"), mn_index, st.integers(0, 11), st.booleans()),
    st.tuples(st.just("follow"), mn_index, st.integers(0, 11), st.booleans()),
    st.tuples(st.just("follow"), mn_index, st.integers(0, 11), st.booleans()),
)


class World:
    """One AR under test, with the keys the MNs would hold, on a clock that only moves forward."""

    def __init__(self, peers, config: Config, seed: int) -> None:
        self.exact = config.rfc_exact
        self.registry = Registry([InMemoryMldHandler(), SpiLikeHandler()])
        self.ar = AccessRouter(AR, self.registry, config, random.Random(seed), peers=peers)
        self.now = 0.0
        self.keys: dict[str, bytes] = {}  # the key each MN currently shares with the AR
        self.pctd_keys: dict[str, bytes] = {}  # the key of the last PCTD for each MN
        self.fresh = 0
        self.token_keys: dict[tuple[str, int, bytes], bytes] = {}  # which key made a CTAR's token
        spi = self.registry.get(0x8001)
        assert isinstance(spi, SpiLikeHandler)
        for mn in MNS:
            spi.values[mn] = b"\x01\x02\x03\x04"

    def new_key(self) -> bytes:
        self.fresh += 1
        return f"fresh key {self.fresh}".encode()

    def token(self, kind: str, mn: str, number: int, requested) -> bytes:
        octets = b"".join(b.encode() for b in requested)
        if kind == "zero":
            return bytes(4)
        if kind == "bad":
            return b"\xba\xd0\xba\xd0"
        key = (self.keys.get(mn) or self.pctd_keys.get(mn) or KEYS[0]) if kind == "valid" else KEYS[3]
        if kind == "valid" and mn in self.pctd_keys and mn not in self.keys:
            key = self.pctd_keys[mn]
        token = cxtp.compute_token(key, mn, number, octets)
        self.token_keys[(mn, number, token)] = key
        return token

    def key_for(self, mn: str, number: int, token: bytes) -> bytes:
        return self.token_keys.get((mn, number, token), KEYS[1])

    def bind(self, key: bytes, mn: str, number: int, token: bytes, requested, source: str, to: str):
        """Departures: the BINDING the MN would add (none in RFC-exact mode)."""
        if self.exact:
            return tuple(requested)
        octets = b"".join(b.encode() for b in requested)
        mac = binding_mac(binding_key(key), mn, number, token, octets, source, to)
        return tuple(requested) + Options(binding=mac).blocks()

    def naming(self, transfer_id: int, right: bool):
        """Departures: the TRANSFER of a CTDR or CTC (another id when not ``right``)."""
        if self.exact:
            return ()
        return Options(transfer=Transfer(transfer_id if right else transfer_id ^ 1, 0, 0)).statuses()

    def transfer(self, ago: float = 0.0) -> Transfer:
        return Transfer(0x1000 + self.fresh_ids(), Transfer.ms(max(self.now - ago, 0.0)), 2000)

    def fresh_ids(self) -> int:
        self.fresh += 1
        return self.fresh

    def follow(self, mn: str, choice: int, right_source: bool) -> None:
        """What would come next for the MN's transfer here, correct or subtly wrong."""
        ar = self.ar
        source = next((r for r in ar.source_records() if r.mn == mn), None)
        target = ar.target_transfer(mn)
        if source is not None:
            nar = source.nar if right_source else OTHER_PEER
            option = choice % 5
            named = self.naming(source.transfer_id, right_source or choice % 2 == 0)
            if option == 0:
                message: AnyMessage = CTDR(mn, True, (StatusEntry(1, 0), *named))
            elif option == 1:
                message = CTDR(mn, False, (StatusEntry(1, 0x42), *named))
            elif option == 2:
                message = CTC(mn, named)
            else:  # recovery CT-Req: the cached sequence number (or another), token by the key
                number = source.sequence_number if source.sequence_number is not None and option == 3 else 77
                key = source.key if right_source else KEYS[3]
                token = cxtp.compute_token(key, mn, number)
                requested = self.bind(key, mn, number, token, (), MNS[choice % 3], nar)
                if not self.exact:
                    requested += Options(transfer=self.transfer(ago=3.0 * (choice % 2)),
                                         bound=Bound(MNS[choice % 3], nar)).blocks()
                message = CTReq(mn, number, token, requested)
            self.ar.receive(message.encode(), nar, "ar", self.now)
        elif target is not None and target.pending:
            candidate = target.pending[choice % len(target.pending)]
            asked = candidate.ctar
            key = self.key_for(mn, asked.sequence_number, asked.token)
            sender = target.par if right_source else OTHER_PEER
            if choice % 3 == 0:
                options = Options()
                if not self.exact and candidate.request is not None:  # the pAR's answer to its CT-Req
                    options = Options(transfer=candidate.request, bound=Bound(candidate.source, AR),
                                      ctaa_key=ctaa_key(key))
                message = CTD(mn, (ContextDataBlock(1, bytes(24)), *options.blocks()), 0, choice % 2 == 0)
            else:
                self.pctd_keys[mn] = key
                options = Options() if self.exact else Options(transfer=self.transfer(ago=3.0 * (choice % 4 == 1)))
                message = PCTD(mn, key, (ContextDataBlock(0x8001, bytes(8)), *options.blocks()), 0, choice % 2 == 0)
            self.ar.receive(message.encode(), sender, "ar", self.now)
        elif target is not None and target.key is not None:
            number = choice
            key = target.key if right_source else KEYS[3]
            token = cxtp.compute_token(key, mn, number)
            src = SOURCES[choice % 4]
            requested = self.bind(key, mn, number, token, (), src if choice % 5 else STRANGER, AR)
            self.ar.receive(CTAR(mn, PEER, number, token, requested).encode(), src, "icmp", self.now)
        else:
            self.ar.receive(b"\x21", STRANGER, "ar", self.now)

    def run_timers(self, until: float) -> None:
        for _ in range(1000):
            timer = self.ar.get_timer()
            if timer is None or timer > until:
                break
            self.now = max(self.now, timer)
            self.ar.handle_timer(self.now)
            self.check()
        else:
            raise AssertionError("timers do not converge")
        self.now = max(self.now, until)

    def apply(self, action) -> None:
        kind, *args = action
        ar = self.ar
        if kind == "ctar":
            i, number, tkind, named, ack, src, requested = args
            mn = MNS[i]
            token = self.token(tkind, mn, number, requested)
            requested = self.bind(self.token_keys.get((mn, number, token), KEYS[2]), mn, number, token, requested,
                                  src, AR)
            message: AnyMessage = CTAR(mn, named, number, token, requested, ack)
            ar.receive(message.encode(), src, "icmp", self.now)
        elif kind == "ctreq":
            i, number, tkind, src, requested = args
            mn = MNS[i]
            message = CTReq(mn, number, self.token(tkind, mn, number, requested), requested)
            ar.receive(message.encode(), src, "ar", self.now)
        elif kind == "pctd":
            i, key, algorithm, ack, src, blocks = args
            mn = MNS[i]
            self.pctd_keys[mn] = key
            contexts = tuple(ContextDataBlock(1 + (b % 2) * 0x8000, bytes(24)) for b in range(blocks))
            if not self.exact:
                contexts += Options(transfer=self.transfer(ago=3.0 * (blocks == 3))).blocks()
            ar.receive(PCTD(mn, key, contexts, 0, ack, algorithm).encode(), src, "ar", self.now)
        elif kind == "ctd":
            i, ack, src, blocks = args
            contexts = tuple(ContextDataBlock(1, bytes(24)) for _ in range(blocks))
            ar.receive(CTD(MNS[i], contexts, 0, ack).encode(), src, "ar", self.now)
        elif kind == "ctdr":
            i, success, src = args
            ar.receive(CTDR(MNS[i], success, (StatusEntry(1, 0 if success else 0x42),)).encode(),
                       src, "ar", self.now)
        elif kind == "ctc":
            ar.receive(CTC(MNS[args[0]]).encode(), args[1], "ar", self.now)
        elif kind == "ctaa":
            ar.receive(CTAA(MNS[args[0]]).encode(), args[1], "icmp", self.now)
        elif kind == "garbage":
            data, leg, src = args
            ar.receive(data, src, leg, self.now)
        elif kind == "oversize":
            size, leg, src = args
            body = CTAR(MNS[0], PEER, 1, b"\x01\x02\x03\x04").encode()
            data = body[:2] + size.to_bytes(2, "big") + body[4:] + bytes(size - len(body))
            ar.receive(data, src, leg, self.now)
        elif kind == "advance":
            self.run_timers(self.now + args[0])
        elif kind == "set_key":
            key = self.new_key()
            ar.set_mn_key(MNS[args[0]], key)
            self.keys[MNS[args[0]]] = key
        elif kind == "trigger":
            try:
                ar.trigger_predictive(MNS[args[0]], args[1], self.now)
            except ProtocolError:
                pass  # API misuse (no key, transfer in progress, not a peer) is refused, not a crash
        elif kind == "cancel":
            try:
                ar.cancel(MNS[args[0]], self.now)
            except ProtocolError:
                pass
        elif kind == "follow":
            self.follow(MNS[args[0]], args[1], args[2])
        elif kind == "forget":
            ar.forget(MNS[args[0]], self.now)
            self.keys.pop(MNS[args[0]], None)
        for mn in list(self.keys):  # keys the AR burnt are gone for the MN too
            if not ar.has_mn_key(mn):
                del self.keys[mn]
        self.check()

    def check(self) -> None:
        ar = self.ar
        times: list[float] = []
        for record in ar.source_records():
            state = record.state
            assert state not in (SourceState.IDLE, SourceState.DONE), record
            if state is SourceState.SENT:
                assert math.isfinite(record.deadline)
            elif state is SourceState.EXPIRED:
                assert record.release_at is not None or record.late_until is not None
            elif state is SourceState.RELEASE_HOLD:
                assert record.release_at is not None
            elif state is SourceState.LATE_WINDOW:
                assert record.late_until is not None
            next_time = record.next_time()
            assert next_time is not None  # every state above has one
            times.append(next_time)
        for target in ar.target_records():
            if target.live:
                assert target.deadline is not None and math.isfinite(target.deadline)
                times.append(target.deadline)
            else:
                assert target.ended_at is not None and target.deadline is None and target.key is None
        assert ar.get_timer() == (min(times) if times else None)
        while ar.next_event() is not None:
            pass
        for datagram in ar.datagrams_to_send():
            cxtp.decode(datagram.data)  # whatever the AR sends is a valid message
            assert datagram.transport in ("icmp", "ar")


@given(st.lists(actions, min_size=8, max_size=60), st.sampled_from(["none", "flat", "mapping"]),
       st.integers(0, 3), st.sampled_from([(3.0, 1.0), (1.0, 3.0), (0.5, 0.5)]), st.booleans(), st.booleans())
def test_access_router_state_machine(script, peers_kind, seed, hold_and_grace, exact, vouch):
    peers = {"none": None, "flat": [PEER, PEER_LINK, OTHER_PEER],
             "mapping": {PEER: PEER_LINK, OTHER_PEER: "2001:db8:13::3"}}[peers_kind]
    hold, grace = hold_and_grace
    config = Config(ct_max_handover_time=2.0, release_hold=hold, late_ctdr_grace=grace, max_pending_ctars=2,
                    rfc_exact=exact)
    world = World(peers, config, seed)
    if vouch:  # the owner vouches for the MNs' own addresses
        world.ar.source_preference = lambda mn, source: source in MNS
    for i, mn in enumerate(MNS[:2]):
        world.ar.set_mn_key(mn, b"initial key %d" % i)
        world.keys[mn] = b"initial key %d" % i
    for action in script:
        world.apply(action)
    # everything ends: no transfer in progress and no hold left once their times have passed
    world.run_timers(world.now + 100.0)
    assert world.ar.get_timer() is None
    assert world.ar.source_records() == ()
    assert all(not r.live for r in world.ar.target_records())


mn_actions = st.one_of(
    st.tuples(st.just("ctaa"), st.sampled_from([MNS[0], MNS[1]]), st.sampled_from([AR, PEER, STRANGER]),
              st.lists(st.tuples(st.integers(0, 3), st.sampled_from([0, 0, 0x12, 0x83])), max_size=3)),
    st.tuples(st.just("predict")), st.tuples(st.just("attach")), st.tuples(st.just("cancel")),
    st.tuples(st.just("advance"), st.sampled_from([0.5, 2.0, 5.0, 20.0])),
    st.tuples(st.just("garbage"), st.binary(max_size=40)),
)


@given(st.lists(mn_actions, max_size=30), st.integers(0, 3), st.booleans())
def test_mobile_node_state_machine(script, seed, exact):
    mn = MobileNode(MNS[0], Registry([SpiLikeHandler()]), Config(rfc_exact=exact), rng=random.Random(seed))
    now, keys = 0.0, 0
    for kind, *args in script:
        if kind in ("predict", "attach"):
            keys += 1
            mn.set_key(f"k{keys}".encode())
            try:
                if kind == "predict":
                    mn.request_predictive(AR, PEER, now)
                else:
                    mn.attached(PEER, AR, now)
            except ProtocolError:
                pass
        elif kind == "cancel":
            try:
                mn.cancel(now)
            except ProtocolError:
                pass
        elif kind == "advance":
            until = now + args[0]
            while (timer := mn.get_timer()) is not None and timer <= until:
                now = max(now, timer)
                mn.handle_timer(now)
            now = until
        elif kind == "ctaa":
            who, src, entries = args
            statuses = tuple(StatusEntry(0x8001 if f == 0 else f, s) for f, s in entries)
            mn.receive(CTAA(who, statuses).encode(), src, "icmp", now)
        else:
            mn.receive(args[0], STRANGER, "icmp", now)
        assert mn.in_progress == (mn.get_timer() is not None or mn.state.name == "PREDICTIVE"
                                  or mn.state.name == "ATTACHED")
        ended = [e for e in iter(mn.next_event, None)
                 if isinstance(e, (cxtp.TransferCompleted, cxtp.TransferFailed))]
        for event in ended:
            if isinstance(event, cxtp.TransferCompleted) and event.acknowledged:
                assert all(s.status == 0 for s in event.statuses)
    while (timer := mn.get_timer()) is not None:
        mn.handle_timer(timer)
    assert mn.get_timer() is None
