"""XFRM netlink against a real kernel: what ``ip xfrm`` creates reads back
exactly, and what ``Xfrm`` installs reads back exactly with ``ip xfrm``.

Needs root and a kernel with ESP (the UML guest; see docs/ipsec-context.md).
Every test works in its own, uniquely named network namespace.
"""

from __future__ import annotations

import errno
import re
import subprocess
import time
import uuid

import pytest

from ipsec import (
    Algorithm,
    LifetimeConfig,
    LifetimeCurrent,
    Mark,
    ReplayState,
    SecurityAssociation,
    SecurityPolicy,
    Selector,
    Template,
    Xfrm,
    XfrmError,
)
from ipsec.xfrm import Migration
from ipsec.xfrm_messages import (
    XFRM_MODE_TRANSPORT,
    XFRM_MODE_TUNNEL,
    XFRM_POLICY_FWD,
    XFRM_POLICY_IN,
    XFRM_POLICY_OUT,
    XFRM_STATE_ESN,
)

pytestmark = pytest.mark.kernel

ENC_KEY = "0x00112233445566778899aabbccddeeff"
AUTH_KEY = "0x" + "a5" * 32
GCM_KEY = "0x" + "5a" * 20
A, B, C, D = "2001:db8::a", "2001:db8::b", "2001:db8::c", "2001:db8::d"


def run(*args: str, check: bool = True) -> str:
    result = subprocess.run(args, capture_output=True, text=True)
    if check and result.returncode:
        raise AssertionError(f"{' '.join(args)} failed: {result.stderr.strip()}")
    return result.stdout


@pytest.fixture
def netns(kernel_with_esp):
    name = f"ipsec-t-{uuid.uuid4().hex[:10]}"
    run("ip", "netns", "add", name)
    try:
        yield name
    finally:
        run("ip", "netns", "del", name, check=False)


@pytest.fixture
def xfrm(netns):
    with Xfrm(netns) as handle:
        yield handle


def ip_xfrm(ns: str, *args: str, stats: bool = False) -> str:
    return run("ip", *(["-s"] if stats else []), "-n", ns, "xfrm", *args)


def state_blocks(text: str) -> list[str]:
    """``ip xfrm state`` output, one text block per SA."""
    return [b for b in re.split(r"(?m)^(?=src )", text) if b.strip()]


def block_with_spi(text: str, spi: int) -> str:
    (block,) = [b for b in state_blocks(text) if f"spi 0x{spi:08x}" in b]
    return block


# --- ip xfrm -> Xfrm -------------------------------------------------------------------


def test_cbc_hmac_sa_from_ip_xfrm_reads_back_exactly(netns, xfrm):
    ip_xfrm(netns, "state", "add", "src", A, "dst", B, "proto", "esp", "spi", "0x1234",
            "reqid", "7", "mode", "tunnel", "replay-window", "32", "flag", "noecn",
            "enc", "cbc(aes)", ENC_KEY, "auth-trunc", "hmac(sha256)", AUTH_KEY, "128",
            "mark", "5", "mask", "0xff", "if_id", "9",
            "limit", "time-soft", "3000", "limit", "time-hard", "3600",
            "limit", "byte-hard", "100000", "limit", "packet-soft", "500",
            "sel", "src", "2001:db8:1::/64", "dst", "2001:db8:2::5/128", "proto", "udp",
            "sport", "1000", "dport", "2000")
    sa = xfrm.get_sa(B, 0x1234, mark=Mark(5, 0xFF))
    assert (sa.daddr, sa.saddr, sa.spi, sa.proto, sa.reqid, sa.mode) == (B, A, 0x1234, 50, 7, XFRM_MODE_TUNNEL)
    assert sa.algorithms == (
        Algorithm("crypt", "cbc(aes)", bytes.fromhex(ENC_KEY[2:])),
        Algorithm("auth_trunc", "hmac(sha256)", bytes.fromhex(AUTH_KEY[2:]), 128),
    )
    assert sa.replay == ReplayState(0, 0, (0,), 32, False)
    assert sa.flags == 1  # XFRM_STATE_NOECN
    assert sa.mark == Mark(5, 0xFF) and sa.if_id == 9
    assert sa.lifetime == LifetimeConfig(
        soft_add_expires_seconds=3000, hard_add_expires_seconds=3600,
        hard_byte_limit=100000, soft_packet_limit=500,
    )
    assert sa.selector == Selector(
        daddr="2001:db8:2::5", saddr="2001:db8:1::", dport=2000, dport_mask=0xFFFF,
        sport=1000, sport_mask=0xFFFF, family=10, prefixlen_d=128, prefixlen_s=64, proto=17,
    )
    assert sa.current.bytes == 0 and abs(sa.current.add_time - time.time()) < 60


def test_aead_esn_sa_from_ip_xfrm_reads_back_exactly(netns, xfrm):
    ip_xfrm(netns, "state", "add", "src", A, "dst", B, "proto", "esp", "spi", "0x2000",
            "reqid", "3", "mode", "transport", "replay-window", "128", "flag", "esn",
            "aead", "rfc4106(gcm(aes))", GCM_KEY, "128")
    sa = xfrm.get_sa(B, 0x2000)
    assert sa.mode == XFRM_MODE_TRANSPORT
    assert sa.algorithms == (Algorithm("aead", "rfc4106(gcm(aes))", bytes.fromhex(GCM_KEY[2:]), 128),)
    assert sa.flags & XFRM_STATE_ESN
    assert sa.replay == ReplayState(0, 0, (0, 0, 0, 0), 128, True)
    (dumped,) = xfrm.dump_sas()
    assert dumped == sa


def test_policy_from_ip_xfrm_reads_back_exactly(netns, xfrm):
    ip_xfrm(netns, "policy", "add", "src", "2001:db8:1::10/128", "dst", "2001:db8:ff::/48",
            "proto", "tcp", "dport", "443", "dir", "fwd", "priority", "77", "mark", "3",
            "tmpl", "src", C, "dst", D, "proto", "esp", "reqid", "4", "mode", "tunnel",
            "tmpl", "src", "::", "dst", "::", "proto", "esp", "reqid", "5", "mode", "transport", "level", "use")
    policy = xfrm.get_policy(
        Selector(daddr="2001:db8:ff::", saddr="2001:db8:1::10", dport=443, dport_mask=0xFFFF,
                 family=10, prefixlen_d=48, prefixlen_s=128, proto=6),
        XFRM_POLICY_FWD, mark=Mark(3, 0xFFFFFFFF),
    )
    assert (policy.dir, policy.priority, policy.mark) == (XFRM_POLICY_FWD, 77, Mark(3, 0xFFFFFFFF))
    first, second = policy.templates
    assert (first.saddr, first.daddr, first.reqid, first.mode, first.optional) == (C, D, 4, XFRM_MODE_TUNNEL, 0)
    assert (second.reqid, second.mode, second.optional) == (5, XFRM_MODE_TRANSPORT, 1)
    assert xfrm.dump_policies() == [policy]


# --- Xfrm -> ip xfrm ----------------------------------------------------------------------


def test_installed_sa_reads_back_with_ip_xfrm_state(netns, xfrm):
    now = int(time.time())
    sa = SecurityAssociation(
        daddr=B, saddr=A, spi=0xABCDEF01, reqid=42,
        algorithms=(Algorithm("crypt", "cbc(aes)", bytes(range(16))),
                    Algorithm("auth_trunc", "hmac(sha256)", bytes(range(32)), 128)),
        replay=ReplayState(oseq=0x1234, seq=0x99, bitmap=(0xF0F0,), window=32),
        lifetime=LifetimeConfig(soft_add_expires_seconds=100, hard_add_expires_seconds=200),
        current=LifetimeCurrent(bytes=5000, packets=50, add_time=now - 10),
        mark=Mark(7, 0xF), if_id=11,
    )
    xfrm.add_sa(sa)
    block = block_with_spi(ip_xfrm(netns, "state", stats=True), 0xABCDEF01)
    assert f"src {A} dst {B}" in block
    assert "reqid 42" in block and "mode tunnel" in block and "replay-window 32" in block
    assert "enc cbc(aes) 0x000102030405060708090a0b0c0d0e0f" in block
    assert "auth-trunc hmac(sha256) 0x" + bytes(range(32)).hex() in block
    assert "anti-replay context: seq 0x99, oseq 0x1234, bitmap 0x0000f0f0" in block
    assert "expire add: soft 100(sec), hard 200(sec)" in block
    assert "5000(bytes), 50(packets)" in block
    assert "mark 0x7/0xf" in block and "if_id 0xb" in block
    assert xfrm.get_sa(B, 0xABCDEF01, mark=sa.mark) == sa


def test_installed_esn_sa_reads_back_with_ip_xfrm_state(netns, xfrm):
    sa = SecurityAssociation(
        daddr=B, saddr=A, spi=0x3000, reqid=1, flags=XFRM_STATE_ESN,
        algorithms=(Algorithm("aead", "rfc4106(gcm(aes))", bytes(20), 128),),
        replay=ReplayState(oseq=(5 << 32) | 77, seq=(2 << 32) | 66, bitmap=(1, 2, 3, 4), window=128, esn_attr=True),
    )
    xfrm.add_sa(sa)
    block = block_with_spi(ip_xfrm(netns, "state"), 0x3000)
    assert "flag esn" in block
    assert "seq-hi 0x2, seq 0x42, oseq-hi 0x5, oseq 0x4d" in block
    assert "replay_window 128, bitmap-length 4" in block
    got = xfrm.get_sa(B, 0x3000)
    assert got.replay == sa.replay and got.algorithms == sa.algorithms


def test_installed_policy_reads_back_with_ip_xfrm_policy(netns, xfrm):
    policy = SecurityPolicy(
        selector=Selector(daddr="2001:db8:ff::1", saddr="2001:db8:1::10", prefixlen_d=128, prefixlen_s=128),
        dir=XFRM_POLICY_OUT, priority=1000,
        templates=(Template(daddr=B, saddr=A, reqid=9),),
    )
    xfrm.add_policy(policy)
    text = ip_xfrm(netns, "policy")
    assert "src 2001:db8:1::10/128 dst 2001:db8:ff::1/128" in text
    assert "dir out priority 1000" in text
    assert f"tmpl src {A} dst {B}" in text and "proto esp reqid 9 mode tunnel" in text
    got = xfrm.get_policy(policy.selector, XFRM_POLICY_OUT)
    assert got == policy.__class__(**{**policy.__dict__, "index": got.index})
    xfrm.update_policy(policy.__class__(**{**policy.__dict__, "priority": 5}))
    assert "dir out priority 5" in ip_xfrm(netns, "policy")
    xfrm.delete_policy(policy.selector, XFRM_POLICY_OUT)
    assert ip_xfrm(netns, "policy").strip() == ""


def test_replay_state_get_and_set(netns, xfrm):
    ip_xfrm(netns, "state", "add", "src", A, "dst", B, "proto", "esp", "spi", "0x10",
            "mode", "tunnel", "replay-window", "32", "enc", "cbc(aes)", ENC_KEY,
            "auth-trunc", "hmac(sha256)", AUTH_KEY, "128")
    sa = xfrm.get_sa(B, 0x10)
    xfrm.set_replay(sa, ReplayState(oseq=1000, seq=900, bitmap=(0xFF,), window=32))
    replay, current = xfrm.get_replay(sa)
    assert replay == ReplayState(oseq=1000, seq=900, bitmap=(0xFF,), window=32)
    assert "anti-replay context: seq 0x384, oseq 0x3e8, bitmap 0x000000ff" in ip_xfrm(netns, "state")


def test_delete_update_flush_and_typed_errors(netns, xfrm):
    sa = SecurityAssociation(B, A, 0x77, algorithms=(Algorithm("crypt", "cbc(aes)", bytes(16)),
                                                     Algorithm("auth_trunc", "hmac(sha256)", bytes(32), 128)))
    xfrm.add_sa(sa)
    with pytest.raises(XfrmError) as caught:
        xfrm.add_sa(sa)
    assert (caught.value.errno, caught.value.operation) == (errno.EEXIST, "XFRM_MSG_NEWSA")
    # UPDSA on a valid SA changes what xfrm_state_update() copies: lifetimes
    xfrm.update_sa(sa.__class__(**{**sa.__dict__, "lifetime": LifetimeConfig(hard_add_expires_seconds=500)}))
    assert xfrm.get_sa(B, 0x77).lifetime.hard_add_expires_seconds == 500
    xfrm.delete_sa(B, 0x77)
    with pytest.raises(XfrmError) as caught:
        xfrm.get_sa(B, 0x77)
    assert caught.value.errno == errno.ESRCH
    xfrm.add_sa(sa)
    xfrm.flush_sas()
    assert xfrm.dump_sas() == []
    xfrm.add_policy(SecurityPolicy(selector=Selector(), dir=XFRM_POLICY_IN))
    xfrm.flush_policies()
    assert xfrm.dump_policies() == []


def test_get_sas_reads_several_sas_in_one_round_trip_and_leaves_no_reply_behind(netns, xfrm):
    keys = (Algorithm("crypt", "cbc(aes)", bytes(range(16))), Algorithm("auth_trunc", "hmac(sha256)", bytes(32), 128))
    sas = [SecurityAssociation(B, A, spi, algorithms=keys) for spi in (0x81, 0x82, 0x83)]
    for sa in sas:
        xfrm.add_sa(sa)
    read = xfrm.get_sas(sas)
    assert read == [xfrm.get_sa(B, sa.spi) for sa in sas]
    assert [sa.spi for sa in read] == [0x81, 0x82, 0x83]
    # one gone: its refusal is raised, after every answer was read; the socket holds nothing
    # stale (answered requests ask for no ACK), so the next request reads its own reply
    xfrm.delete_sa(B, 0x82)
    with pytest.raises(XfrmError) as caught:
        xfrm.get_sas(sas)
    assert caught.value.errno == errno.ESRCH and caught.value.operation == "XFRM_MSG_GETSA"
    xfrm.sock.setblocking(False)
    try:
        with pytest.raises(BlockingIOError):
            xfrm.sock.recv(65536)
    finally:
        xfrm.sock.setblocking(True)
    assert xfrm.get_sas([]) == [] and xfrm.get_sa(B, 0x83).spi == 0x83


def test_allocate_spi_then_update_fills_the_larval_sa(netns, xfrm):
    spi = xfrm.allocate_spi(B, A, reqid=3, spi_min=0x5000, spi_max=0x5FFF)
    assert 0x5000 <= spi <= 0x5FFF
    sa = SecurityAssociation(B, A, spi, reqid=3, algorithms=(Algorithm("aead", "rfc4106(gcm(aes))", bytes(20), 128),))
    xfrm.update_sa(sa)
    got = xfrm.get_sa(B, spi)
    assert got.algorithms == sa.algorithms
    assert len(xfrm.dump_sas()) == 1


def test_migrate_keeps_spi_keys_replay_and_lifetime(netns, xfrm):
    keys = (Algorithm("crypt", "cbc(aes)", bytes(16)), Algorithm("auth_trunc", "hmac(sha256)", bytes(32), 128))
    sa = SecurityAssociation(B, A, 0x999, reqid=4, algorithms=keys,
                             replay=ReplayState(oseq=321, seq=0, bitmap=(0,), window=32),
                             current=LifetimeCurrent(bytes=10, packets=1, add_time=int(time.time()) - 5))
    xfrm.add_sa(sa)
    selector = Selector(daddr="2001:db8:ff::1", saddr=A, prefixlen_d=128, prefixlen_s=128)
    xfrm.add_policy(SecurityPolicy(selector=selector, dir=XFRM_POLICY_OUT, templates=(Template(B, A, reqid=4),)))
    xfrm.migrate(selector, XFRM_POLICY_OUT, [Migration(B, A, D, C, reqid=4)])
    (moved,) = xfrm.dump_sas()
    assert (moved.daddr, moved.saddr, moved.spi, moved.algorithms) == (D, C, 0x999, keys)
    assert moved.replay.oseq == 321
    assert (moved.current.bytes, moved.current.add_time) == (10, sa.current.add_time)
    (policy,) = xfrm.dump_policies()
    assert (policy.templates[0].daddr, policy.templates[0].saddr) == (D, C)


def test_dump_with_address_filter(netns, xfrm):
    for spi, (src, dst) in enumerate([(A, B), (B, A), (C, D)], start=0x100):
        xfrm.add_sa(SecurityAssociation(dst, src, spi,
                                        algorithms=(Algorithm("aead", "rfc4106(gcm(aes))", bytes(20), 128),)))
    assert {sa.spi for sa in xfrm.dump_sas(daddr=B)} == {0x100}
    assert {sa.spi for sa in xfrm.dump_sas(saddr=B)} == {0x101}
    assert len(xfrm.dump_sas()) == 3


def test_prepared_install_in_one_write_all_or_nothing(netns, xfrm):
    """A context prepared ahead of time goes in with one netlink write; if the kernel refuses a
    part, what it took is removed again and the refusal is raised (the caller then takes the
    careful path)."""
    from ipsec import install_prepared, prepare_install, remove_context
    from nodes.provisioning import initial_contexts

    _, ar_side = initial_contexts("2001:db8:2::100", "2001:db8:2::1", "2001:db8:3::1", "aes-cbc-sha256", 0x2102, 0x2101)
    prepared = prepare_install(xfrm, ar_side)
    installation = install_prepared(xfrm, prepared)
    assert {sa.spi for sa in xfrm.dump_sas()} >= {0x2102, 0x2101}
    assert len([p for p in xfrm.dump_policies() if p.templates]) >= 3
    assert installation.spi_changes == ()
    # the same again: every part is refused (EEXIST) and nothing changes
    before_sas, before_policies = xfrm.dump_sas(), xfrm.dump_policies()
    with pytest.raises(XfrmError) as refused:
        install_prepared(xfrm, prepared)
    assert refused.value.errno == errno.EEXIST
    # one SA removed by hand: the batch adds it, is refused for the rest, and takes it away again
    xfrm.delete_sa(ar_side.sas[0].daddr, ar_side.sas[0].spi)
    with pytest.raises(XfrmError):
        install_prepared(xfrm, prepared)
    assert {sa.spi for sa in xfrm.dump_sas()} == {sa.spi for sa in before_sas} - {ar_side.sas[0].spi}
    assert len(xfrm.dump_policies()) == len(before_policies)
    # the other way round: the first request (the SA still there) is refused without having
    # asked for an acknowledgement (only the last does), and the refusal is still reported
    outcomes = xfrm.send_batch([prepared.requests[1], prepared.requests[0]])
    assert outcomes[0].errno == errno.EEXIST and outcomes[1] is None
    assert {sa.spi for sa in xfrm.dump_sas()} == {sa.spi for sa in before_sas}
    remove_context(xfrm, ar_side)
