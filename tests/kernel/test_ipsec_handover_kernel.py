"""An MN's IPsec context moves from pAR to nAR in real namespaces.

Topology (each test builds its own, uniquely named, and deletes it)::

    MN m0 ---- p0 pAR p1 ---- h0
                                  HA (2001:db8:ff::1 on lo)
    MN m1 ---- n0 nAR n1 ---- h1

Tunnel-mode ESP between the MN's care-of address and its AR (inner header
CoA <-> HA), as in the paper.  The initial SAs and policies are made with
``ip xfrm``, as an IKE daemon would; the move uses only the ``ipsec`` API.
Needs root and a kernel with ESP (the UML guest).
"""

from __future__ import annotations

import errno
import subprocess
import time
import uuid
from dataclasses import replace

import pytest

from ipsec import (
    Algorithm,
    IpsecContext,
    LifetimeConfig,
    LifetimeCurrent,
    SecurityAssociation,
    SecurityPolicy,
    Selector,
    Template,
    Xfrm,
    XfrmError,
    apply_mn_handover,
    capture_context,
    install_context,
    remove_context,
    rewrite_for_mn,
    rewrite_for_nar,
)
from ipsec.xfrm_messages import XFRM_POLICY_FWD, XFRM_POLICY_IN, XFRM_POLICY_OUT

pytestmark = pytest.mark.kernel

MN_P, PAR = "2001:db8:1::10", "2001:db8:1::1"
MN_N, NAR = "2001:db8:2::10", "2001:db8:2::1"
HA = "2001:db8:ff::1"
SPI_MN_IN, SPI_MN_OUT = 0x1001, 0x2002

ALGORITHMS = {
    "cbc-hmac": (
        ["enc", "cbc(aes)", "0x" + "11" * 16, "auth-trunc", "hmac(sha256)", "0x" + "22" * 32, "128"],
        ["enc", "cbc(aes)", "0x" + "33" * 16, "auth-trunc", "hmac(sha256)", "0x" + "44" * 32, "128"],
    ),
    "gcm": (
        ["aead", "rfc4106(gcm(aes))", "0x" + "55" * 20, "128"],
        ["aead", "rfc4106(gcm(aes))", "0x" + "66" * 20, "128"],
    ),
}


def run(*args: str, check: bool = True) -> str:
    result = subprocess.run(args, capture_output=True, text=True)
    if check and result.returncode:
        raise AssertionError(f"{' '.join(args)} failed: {result.stderr.strip()}")
    return result.stdout


def ip(ns: str, *args: str) -> str:
    return run("ip", "-n", ns, *args)


@pytest.fixture
def namespaces(kernel_with_esp):
    """Fresh mn, par, nar, ha namespaces; deleted whatever happens."""
    tag = uuid.uuid4().hex[:8]
    names = {role: f"ipsec-{role}-{tag}" for role in ("mn", "par", "nar", "ha")}
    created = []
    try:
        for name in names.values():
            run("ip", "netns", "add", name)
            created.append(name)
            ip(name, "link", "set", "lo", "up")
        yield names
    finally:
        for name in created:
            run("ip", "netns", "del", name, check=False)


def link(ns_a, dev_a, addr_a, ns_b, dev_b, addr_b):
    ip(ns_a, "link", "add", dev_a, "type", "veth", "peer", "name", dev_b, "netns", ns_b)
    for ns, dev, addr in ((ns_a, dev_a, addr_a), (ns_b, dev_b, addr_b)):
        ip(ns, "addr", "add", addr, "dev", dev, "nodad")
        ip(ns, "link", "set", dev, "up")


def build_network(ns):
    link(ns["mn"], "m0", MN_P + "/64", ns["par"], "p0", PAR + "/64")
    link(ns["mn"], "m1", MN_N + "/64", ns["nar"], "n0", NAR + "/64")
    link(ns["par"], "p1", "2001:db8:f1::1/64", ns["ha"], "h0", "2001:db8:f1::2/64")
    link(ns["nar"], "n1", "2001:db8:f2::1/64", ns["ha"], "h1", "2001:db8:f2::2/64")
    ip(ns["ha"], "addr", "add", HA + "/128", "dev", "lo")
    ip(ns["ha"], "route", "add", MN_P + "/128", "via", "2001:db8:f1::1")
    ip(ns["ha"], "route", "add", MN_N + "/128", "via", "2001:db8:f2::1")
    ip(ns["par"], "route", "add", HA + "/128", "via", "2001:db8:f1::2")
    ip(ns["nar"], "route", "add", HA + "/128", "via", "2001:db8:f2::2")
    for router in (ns["par"], ns["nar"]):
        run("ip", "netns", "exec", router, "sysctl", "-qw", "net.ipv6.conf.all.forwarding=1")
    ip(ns["mn"], "route", "add", HA + "/128", "via", PAR, "dev", "m0", "src", MN_P)


def ip_xfrm_tunnel(ns, algorithms, role):
    """The SAs and policies an IKE daemon would have made, with ``ip xfrm``."""
    sa1, sa2 = ALGORITHMS[algorithms]
    common = ["mode", "tunnel", "replay-window", "32"]
    ip(ns, "xfrm", "state", "add", "src", PAR, "dst", MN_P, "proto", "esp", "spi", hex(SPI_MN_IN), "reqid", "1",
       *common, *sa1)
    ip(ns, "xfrm", "state", "add", "src", MN_P, "dst", PAR, "proto", "esp", "spi", hex(SPI_MN_OUT), "reqid", "2",
       *common, *sa2)
    to_mn = ["tmpl", "src", PAR, "dst", MN_P, "proto", "esp", "reqid", "1", "mode", "tunnel"]
    from_mn = ["tmpl", "src", MN_P, "dst", PAR, "proto", "esp", "reqid", "2", "mode", "tunnel"]
    if role == "mn":
        ip(ns, "xfrm", "policy", "add", "src", HA, "dst", MN_P, "dir", "in", *to_mn)
        ip(ns, "xfrm", "policy", "add", "src", MN_P, "dst", HA, "dir", "out", *from_mn)
    else:
        ip(ns, "xfrm", "policy", "add", "src", MN_P, "dst", HA, "dir", "in", *from_mn)
        ip(ns, "xfrm", "policy", "add", "src", MN_P, "dst", HA, "dir", "fwd", *from_mn)
        ip(ns, "xfrm", "policy", "add", "src", HA, "dst", MN_P, "dir", "out", *to_mn)


def xfrm_stat(ns) -> dict[str, int]:
    text = run("ip", "netns", "exec", ns, "cat", "/proc/net/xfrm_stat")
    return {name: int(value) for name, value in (line.split() for line in text.splitlines() if line.strip())}


def ping(ns, count=30, interval="0.02") -> str:
    return run("ip", "netns", "exec", ns, "ping", "-6", "-n", "-q", "-c", str(count), "-i", interval, "-W", "2", HA)


class Capture:
    """What crosses a veth link, in both directions.

    One ``tcpdump -Q out`` per end: the receiving end of a tunnel-mode SA
    re-injects the decapsulated packet on the same interface (ingress), so an
    ingress capture would show inner packets that never were on the wire.
    The tcpdump processes are this test's own and stopped by it.
    """

    def __init__(self, ends, directory, name):
        self.paths = []
        self.processes = []
        for index, (ns, dev) in enumerate(ends):
            path = directory / f"{name}-{index}.pcap"
            process = subprocess.Popen(
                ["ip", "netns", "exec", ns, "tcpdump", "-i", dev, "-Q", "out", "-n", "-U", "--immediate-mode",
                 "-Z", "root", "-w", str(path)],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            )
            line = process.stderr.readline()
            assert "listening" in line, line
            self.paths.append(path)
            self.processes.append(process)

    def stop(self):
        import scapy.layers.inet6  # noqa: F401  (registers the link types and ESP)
        import scapy.layers.ipsec  # noqa: F401
        import scapy.layers.l2  # noqa: F401
        from scapy.utils import rdpcap

        time.sleep(0.3)
        for process in self.processes:
            process.terminate()
            process.wait(timeout=10)
        return [packet for path in self.paths for packet in rdpcap(str(path))]


def classify(packets):
    """ESP (spi, seq) pairs, and anything that is neither ESP nor ND/MLD."""
    from scapy.layers.inet6 import IPv6
    from scapy.layers.ipsec import ESP

    esp, other = [], []
    for packet in packets:
        if ESP in packet:
            esp.append((packet[ESP].spi, packet[ESP].seq))
            continue
        if IPv6 in packet:
            icmp_type = _icmp6_type(packet)
            if icmp_type in (133, 134, 135, 136, 137, 143):  # ND, MLDv2
                continue
        other.append(packet.summary())
    return esp, other


def _icmp6_type(packet):
    layer = packet.payload
    while layer is not None and layer.name not in ("NoPayload",):
        if hasattr(layer, "type") and layer.__class__.__name__.startswith("ICMPv6"):
            return layer.type
        if layer.__class__.__name__.startswith("ICMPv6"):
            return getattr(layer, "type", None)
        layer = layer.payload
    return None


@pytest.mark.parametrize(
    "algorithms, spi_collision, replace_existing",
    [("cbc-hmac", False, False), ("gcm", True, False), ("gcm", True, True)],
)
def test_context_moves_and_esp_flows_without_replay_errors(
    namespaces, tmp_path, algorithms, spi_collision, replace_existing
) -> None:
    """With ``replace_existing`` too, another peer's SA on the nAR is never
    replaced: the colliding inbound SA still gets a fresh SPI."""
    ns = namespaces
    build_network(ns)
    ip_xfrm_tunnel(ns["mn"], algorithms, "mn")
    ip_xfrm_tunnel(ns["par"], algorithms, "par")
    if spi_collision:
        # another MN already uses spi-mn-out-1 towards the nAR
        ip(ns["nar"], "xfrm", "state", "add", "src", "2001:db8:2::99", "dst", NAR, "proto", "esp",
           "spi", hex(SPI_MN_OUT), "reqid", "77", "mode", "tunnel", *ALGORITHMS["gcm"][0])

    before = Capture([(ns["mn"], "m0"), (ns["par"], "p0")], tmp_path, "par-link")
    assert " 0% packet loss" in ping(ns["mn"])
    esp_before, other_before = classify(before.stop())
    assert other_before == [] and len(esp_before) == 60

    with Xfrm(ns["par"]) as par, Xfrm(ns["nar"]) as nar, Xfrm(ns["mn"]) as mn:
        mn_before = capture_context(mn, MN_P)
        ctx = capture_context(par, MN_P)
        wire = ctx.encode()  # what travels in the CDB
        installation = install_context(
            nar, rewrite_for_nar(IpsecContext.decode(wire), MN_P, MN_N, PAR, NAR), replace_existing=replace_existing
        )
        remove_context(par, ctx)
        if spi_collision:
            (change,) = installation.spi_changes
            assert change.old_spi == SPI_MN_OUT and change.new_spi != SPI_MN_OUT
        else:
            assert installation.spi_changes == ()
        apply_mn_handover(mn, mn_before, MN_P, MN_N, PAR, NAR, installation.spi_changes)
        ip(ns["mn"], "route", "replace", HA + "/128", "via", NAR, "dev", "m1", "src", MN_N)

        # The MN's SAD/SPD is Table I / III; the nAR's is Table II / IV.
        expected_mn = rewrite_for_mn(mn_before, MN_P, MN_N, PAR, NAR, installation.spi_changes)
        assert {(s.daddr, s.saddr, s.spi, s.algorithms) for s in mn.dump_sas()} == {
            (s.daddr, s.saddr, s.spi, s.algorithms) for s in expected_mn.sas
        }
        assert {(p.dir, p.selector, p.templates) for p in mn.dump_policies()} == {
            (p.dir, replace(p.selector), p.templates) for p in expected_mn.policies
        }
        nar_sas = {(s.daddr, s.spi) for s in nar.dump_sas()}
        new_out_spi = installation.spi_changes[0].new_spi if spi_collision else SPI_MN_OUT
        assert {(NAR, new_out_spi), (MN_N, SPI_MN_IN)} <= nar_sas
        assert {p.dir for p in nar.dump_policies()} == {XFRM_POLICY_IN, XFRM_POLICY_FWD, XFRM_POLICY_OUT}
        assert par.dump_sas() == [] and par.dump_policies() == []
        if spi_collision:
            assert nar.get_sa(NAR, SPI_MN_OUT).saddr == "2001:db8:2::99"  # untouched

    after = Capture([(ns["mn"], "m1"), (ns["nar"], "n0")], tmp_path, "nar-link")
    assert " 0% packet loss" in ping(ns["mn"])
    esp_after, other_after = classify(after.stop())
    assert other_after == [], other_after  # nothing in clear on the new link
    assert {spi for spi, _ in esp_after} == {SPI_MN_IN, new_out_spi}
    assert len(esp_after) == 60

    # No sequence number is sent twice on an SA, before or after the move.
    by_sa: dict[int, list[int]] = {}
    for spi, seq in esp_before + esp_after:
        by_sa.setdefault(SPI_MN_OUT if spi == new_out_spi else spi, []).append(seq)
    for spi, numbers in by_sa.items():
        assert len(numbers) == len(set(numbers)) == 60, hex(spi)
    # No legitimate packet was dropped as a replay (per-netns counters).
    for role in ("mn", "nar", "par"):
        stats = xfrm_stat(ns[role])
        assert stats["XfrmInStateSeqError"] == 0, role
        assert stats["XfrmInNoStates"] == 0, role


def test_sequence_state_matters_control(namespaces):
    """Control: without the replay state, the MN counts sequence errors --
    so the zero above is a result, not an accident."""
    ns = namespaces
    build_network(ns)
    ip_xfrm_tunnel(ns["mn"], "cbc-hmac", "mn")
    ip_xfrm_tunnel(ns["par"], "cbc-hmac", "par")
    assert " 0% packet loss" in ping(ns["mn"], count=40)
    with Xfrm(ns["par"]) as par, Xfrm(ns["nar"]) as nar, Xfrm(ns["mn"]) as mn:
        mn_before = capture_context(mn, MN_P)
        ctx = capture_context(par, MN_P)
        fresh = replace(ctx, sas=tuple(replace(sa, replay=replace(sa.replay, oseq=0, seq=0, bitmap=(0,)))
                                       for sa in ctx.sas))
        install_context(nar, rewrite_for_nar(fresh, MN_P, MN_N, PAR, NAR, oseq_margin=0))
        remove_context(par, ctx)
        apply_mn_handover(mn, mn_before, MN_P, MN_N, PAR, NAR)
    ip(ns["mn"], "route", "replace", HA + "/128", "via", NAR, "dev", "m1", "src", MN_N)
    run("ip", "netns", "exec", ns["mn"], "ping", "-6", "-n", "-q", "-c", "5", "-i", "0.05", "-W", "1", HA, check=False)
    assert xfrm_stat(ns["mn"])["XfrmInStateSeqError"] > 0


def _two_routers(namespaces):
    return namespaces["par"], namespaces["nar"]


def _api_context(par: Xfrm, aged_seconds=0, hard=0, soft=0, bytes_used=0):
    now = int(time.time())
    keys = (Algorithm("crypt", "cbc(aes)", bytes(16)), Algorithm("auth_trunc", "hmac(sha256)", bytes(32), 128))
    current = LifetimeCurrent(bytes=bytes_used, packets=bytes_used // 100, add_time=now - aged_seconds)
    lifetime = LifetimeConfig(hard_add_expires_seconds=hard, soft_add_expires_seconds=soft)
    par.add_sa(SecurityAssociation(MN_P, PAR, SPI_MN_IN, reqid=1, algorithms=keys, lifetime=lifetime, current=current))
    par.add_sa(SecurityAssociation(PAR, MN_P, SPI_MN_OUT, reqid=2, algorithms=keys, lifetime=lifetime, current=current))
    sel_in = Selector(daddr=HA, saddr=MN_P, prefixlen_d=128, prefixlen_s=128)
    par.add_policy(SecurityPolicy(sel_in, XFRM_POLICY_IN, (Template(PAR, MN_P, reqid=2),)))
    par.add_policy(SecurityPolicy(replace(sel_in, daddr=MN_P, saddr=HA), XFRM_POLICY_OUT,
                                  (Template(MN_P, PAR, reqid=1),)))
    return capture_context(par, MN_P)


def test_lifetime_budget_carries_over(namespaces):
    par_ns, nar_ns = _two_routers(namespaces)
    with Xfrm(par_ns) as par, Xfrm(nar_ns) as nar:
        ctx = _api_context(par, aged_seconds=1000, hard=3600, soft=3000, bytes_used=5000)
        install_context(nar, rewrite_for_nar(ctx, MN_P, MN_N, PAR, NAR))
        for sa in nar.dump_sas():
            assert abs(sa.lifetime.hard_add_expires_seconds - 2600) <= 2
            assert abs(sa.lifetime.soft_add_expires_seconds - 2000) <= 2
            assert (sa.current.bytes, sa.current.packets) == (5000, 50)
    text = run("ip", "-s", "-n", nar_ns, "xfrm", "state")
    assert "5000(bytes), 50(packets)" in text
    assert "hard 2600(sec)" in text or "hard 2599(sec)" in text or "hard 2601(sec)" in text


def test_moved_sa_expires_when_it_would_have_on_the_par(namespaces):
    par_ns, nar_ns = _two_routers(namespaces)
    with Xfrm(par_ns) as par, Xfrm(nar_ns) as nar:
        ctx = _api_context(par, aged_seconds=17, hard=20)
        start = time.monotonic()
        install_context(nar, rewrite_for_nar(ctx, MN_P, MN_N, PAR, NAR))
        while nar.dump_sas() and time.monotonic() - start < 12:
            time.sleep(0.25)
        assert nar.dump_sas() == []
        assert time.monotonic() - start < 10  # a fresh SA would live 20 s


@pytest.mark.parametrize("failure", ["bad-algorithm", "outbound-spi-taken", "policy-exists"])
def test_install_that_fails_half_way_leaves_nothing(namespaces, failure):
    par_ns, nar_ns = _two_routers(namespaces)
    with Xfrm(par_ns) as par, Xfrm(nar_ns) as nar:
        ctx = rewrite_for_nar(_api_context(par), MN_P, MN_N, PAR, NAR)
        par_before = (par.dump_sas(), par.dump_policies())
        if failure == "bad-algorithm":
            bad = replace(ctx.sas[1], algorithms=(Algorithm("crypt", "cbc(no-such-cipher)", bytes(16)),))
            ctx = replace(ctx, sas=(ctx.sas[0], bad))
        elif failure == "outbound-spi-taken":
            # the nAR->MN SA (SPI chosen by the MN) collides: no SPI may be changed there
            ctx = replace(ctx, sas=(ctx.sas[1], ctx.sas[0]))
            nar.add_sa(replace(ctx.sas[1], reqid=99))
        else:
            nar.add_policy(replace(ctx.policies[-1], templates=()))
        existing = (nar.dump_sas(), nar.dump_policies())
        with pytest.raises(XfrmError) as caught:
            install_context(nar, ctx)
        if failure != "bad-algorithm":
            assert caught.value.errno == errno.EEXIST
        assert (nar.dump_sas(), nar.dump_policies()) == existing
        assert (par.dump_sas(), par.dump_policies()) == par_before  # pAR keeps everything


def _kernel_state(xfrm: Xfrm):
    """The SAD and SPD, in an order that does not depend on the kernel's hash chains."""
    return (
        sorted(xfrm.dump_sas(), key=lambda s: (s.daddr, s.spi)),
        sorted(xfrm.dump_policies(), key=lambda p: (p.dir, p.index)),
    )


def test_install_with_replace_existing_replaces_and_is_all_or_nothing(namespaces):
    par_ns, nar_ns = _two_routers(namespaces)
    with Xfrm(par_ns) as par, Xfrm(nar_ns) as nar:
        ctx = rewrite_for_nar(_api_context(par, aged_seconds=100, hard=3600, bytes_used=700), MN_P, MN_N, PAR, NAR)
        install_context(nar, ctx)
        with pytest.raises(XfrmError) as caught:
            install_context(nar, ctx)
        assert caught.value.errno == errno.EEXIST

        # The same SAs and policies with other keys, sequence numbers and priority replace them.
        keys = (Algorithm("crypt", "cbc(aes)", b"\x07" * 16),
                Algorithm("auth_trunc", "hmac(sha256)", b"\x08" * 32, 128))
        newer = replace(
            ctx,
            sas=tuple(replace(sa, algorithms=keys, replay=replace(sa.replay, oseq=4000, seq=3000)) for sa in ctx.sas),
            policies=tuple(replace(p, priority=77) for p in ctx.policies),
        )
        installation = install_context(nar, newer, replace_existing=True)
        assert installation.spi_changes == ()
        sas, policies = _kernel_state(nar)
        assert len(sas) == 2 and {(s.algorithms, s.replay.oseq, s.replay.seq) for s in sas} == {(keys, 4000, 3000)}
        assert len(policies) == len(newer.policies) and {p.priority for p in policies} == {77}
        before = _kernel_state(nar)

        # A failure half-way (the last policy is refused) restores what was replaced.
        broken = replace(ctx, policies=(*ctx.policies, replace(ctx.policies[0], action=7)))
        with pytest.raises(XfrmError) as caught:
            install_context(nar, broken, replace_existing=True)
        assert caught.value.errno == errno.EINVAL
        assert _kernel_state(nar) == before


def test_capture_context_of_several_care_of_addresses(namespaces):
    par_ns, _ = _two_routers(namespaces)
    second = "2001:db8:1::20"
    with Xfrm(par_ns) as par:
        _api_context(par)
        keys = (Algorithm("aead", "rfc4106(gcm(aes))", bytes(20), 128),)
        par.add_sa(SecurityAssociation(second, PAR, 0x3003, reqid=3, algorithms=keys))
        par.add_sa(SecurityAssociation(PAR, "2001:db8:1::99", 0x4004, reqid=4, algorithms=keys))  # another MN
        tunnel = Selector(daddr=HA, saddr=HA, prefixlen_d=128, prefixlen_s=128)
        par.add_policy(SecurityPolicy(tunnel, XFRM_POLICY_OUT, (Template(second, PAR, reqid=3),)))
        one = capture_context(par, MN_P)
        both = capture_context(par, ["2001:0db8:0001::0010", second])
    assert {s.spi for s in one.sas} == {SPI_MN_IN, SPI_MN_OUT} and len(one.policies) == 2
    assert {s.spi for s in both.sas} == {SPI_MN_IN, SPI_MN_OUT, 0x3003}
    assert len(both.policies) == 3


# -- the prepared hot paths: what is done before the CTAR, and before the attach ----------------

class _CountingSocket:
    """An XFRM socket that counts the writes made through it."""

    def __init__(self, sock) -> None:
        self._sock, self.writes = sock, 0

    def send(self, data) -> int:
        self.writes += 1
        return self._sock.send(data)

    def __getattr__(self, name):
        return getattr(self._sock, name)


def _handler_contexts():
    from nodes import provisioning

    return provisioning.initial_contexts(MN_P, PAR, HA, "aes-cbc-sha256", 0x102, 0x101)


def test_nar_prepared_context_is_inactive_until_the_ctar_and_leaves_nothing_when_discarded(namespaces, tmp_path):
    """The context's arrival installs its SAs, rewritten for the predicted care-of address, and
    no policy: nothing routes through them. The CTAR adds the policies; a discarded transfer,
    or a CTAR from an unpredicted address, removes the SAs; the journal holds the predicted
    address exactly while its SAs are inactive."""
    from cxtp.registry import TransferInfo
    from nodes import ar_context

    _, ar_side = _handler_contexts()
    data = ar_side.encode()
    with Xfrm(namespaces["nar"]) as nar:
        handler = ar_context.ArIpsecHandler(nar, NAR, state_dir=str(tmp_path))
        predicted = TransferInfo(MN_P, PAR, NAR)  # a PCTD: no CTAR verified yet
        assert handler.install(MN_P, data, predicted) == ar_context.STATUS_OK
        sas, policies = _kernel_state(nar)
        assert {(sa.saddr, sa.daddr) for sa in sas} == {(MN_N, NAR), (NAR, MN_N)} and policies == []
        assert [name for name in tmp_path.iterdir() if name.suffix == ".ctx"], "journalled while inactive"
        handler.discard(MN_P)
        assert _kernel_state(nar) == ([], []) and not list(tmp_path.iterdir())

        arrived = TransferInfo(MN_P, PAR, NAR, MN_N)  # the CTAR, from the predicted address
        handler.install(MN_P, data, predicted)
        status, _ = handler.activate(MN_P, arrived)
        assert status == ar_context.STATUS_OK
        sas, policies = _kernel_state(nar)
        assert len(sas) == 2 and len(policies) == len(ar_side.policies)
        assert not list(tmp_path.iterdir())
        handler.collect(MN_N)  # handed on (as a pAR collects before it releases)
        handler.release(MN_N)
        assert _kernel_state(nar) == ([], [])

        # a CTD answering the nAR's CT-Req: the new address is known, nothing is prepared, and the
        # activation that follows installs the context in one write
        handler.install(MN_P, data, arrived)
        assert _kernel_state(nar) == ([], []) and not list(tmp_path.iterdir())
        real_socket = nar.sock
        nar.sock = counted = _CountingSocket(real_socket)
        try:
            status, _ = handler.activate(MN_P, arrived)
        finally:
            nar.sock = real_socket
        assert status == ar_context.STATUS_OK and counted.writes == 1
        sas, policies = _kernel_state(nar)
        assert {(sa.saddr, sa.daddr) for sa in sas} == {(MN_N, NAR), (NAR, MN_N)}
        assert len(policies) == len(ar_side.policies)
        handler.collect(MN_N)
        handler.release(MN_N)
        assert _kernel_state(nar) == ([], [])

        elsewhere = "2001:db8:2::77"  # not the old interface identifier: the ordinary path
        handler.install(MN_P, data, predicted)
        status, _ = handler.activate(MN_P, TransferInfo(MN_P, PAR, NAR, elsewhere))
        assert status == ar_context.STATUS_OK
        sas, _ = _kernel_state(nar)
        assert {sa.daddr for sa in sas} == {NAR, elsewhere}, "the predicted copies went, the real ones came"


def test_late_release_removes_the_old_context_and_spares_the_newer_transfer_of_the_same_address(namespaces,
                                                                                             tmp_path):
    """An AR hands an MN on: the context it collects is what it installed, read back SA by SA
    (no dump), the same as a capture. Its release is deferred (off the critical path), and the MN
    comes back to the same address before it runs: the release removes the old context and
    spares the newer transfer's inactive SAs; a stale release after the activation spares the
    MN's current state."""
    from cxtp.registry import TransferInfo
    from nodes import ar_context, provisioning

    _, old_context = _handler_contexts()
    _, returning = provisioning.initial_contexts(MN_N, NAR, HA, "aes-cbc-sha256", 0x202, 0x201)
    with Xfrm(namespaces["par"]) as par:
        queued = []
        handler = ar_context.ArIpsecHandler(par, PAR, state_dir=str(tmp_path),
                                            defer=lambda _label, work: queued.append(work))
        handler.know_installed(install_context(par, old_context).context)
        collected = IpsecContext.decode(handler.collect(MN_P))
        captured = capture_context(par, MN_P)
        assert set(collected.sas) == set(captured.sas)
        # the same policies; the kernel's index is not transferred (the nAR's kernel assigns its own)
        assert {replace(p, index=0) for p in collected.policies} == {replace(p, index=0) for p in captured.policies}
        handler.release(MN_P)
        assert len(queued) == 1 and len(_kernel_state(par)[0]) == 2, "deferred: nothing removed yet"

        back = TransferInfo(MN_N, NAR, PAR, MN_P)  # the MN returns with its old interface identifier
        # a PCTD brings its context before the CTAR: prepared, inactive
        assert handler.install(MN_N, returning.encode(), TransferInfo(MN_N, NAR, PAR)) == ar_context.STATUS_OK
        assert {sa.spi for sa in _kernel_state(par)[0]} == {0x101, 0x102, 0x201, 0x202}
        queued.pop()()
        sas, policies = _kernel_state(par)
        assert {sa.spi for sa in sas} == {0x201, 0x202} and policies == [], "old context gone, new one inactive"
        status, _ = handler.activate(MN_N, back)
        assert status == ar_context.STATUS_OK
        current = _kernel_state(par)
        assert {sa.spi for sa in current[0]} == {0x201, 0x202} and len(current[1]) == len(returning.policies)

        handler.release(MN_P)  # stale: a hold that expired for the earlier transfer
        queued.pop()()
        assert _kernel_state(par) == current


def test_mn_prepared_move_is_one_write_and_ends_as_the_ordinary_move(namespaces):
    """Before the attach, copies of the MN's SAs under (MN_n, nAR), inactive: the old policies
    still use the old SAs. The attach's write moves the policies; the clean-up leaves exactly
    the state the ordinary move (XFRM migrate) leaves, with the outbound sequence number ahead."""
    from nodes import mn_context

    mn_side, _ = _handler_contexts()
    with Xfrm(namespaces["mn"]) as mn:
        handler = mn_context.MnIpsecHandler(mn)
        handler.know(install_context(mn, mn_side).context)
        old_out = next(sa for sa in mn.dump_sas() if sa.saddr == MN_P)
        policies_before = _kernel_state(mn)[1]
        assert handler.prepare_move(MN_P, MN_N, PAR, NAR)
        sas, policies = _kernel_state(mn)
        assert len(sas) == 4 and policies == policies_before, "copies only, inactive"
        handler.move(MN_P, MN_N, PAR, NAR)
        handler.finish_move()
        prepared_state = _kernel_state(mn)
        copy_out = next(sa for sa in prepared_state[0] if sa.saddr == MN_N)
        assert copy_out.spi == old_out.spi and copy_out.replay.oseq >= old_out.replay.oseq + 65536
        assert all(MN_P not in (sa.saddr, sa.daddr) for sa in prepared_state[0])

        # the same move, unprepared, back and forth: the same SAs and policies (but the sequence)
        handler.move(MN_N, MN_P, NAR, PAR)
        handler.know(None)
        handler.move(MN_P, MN_N, PAR, NAR)
        ordinary_state = _kernel_state(mn)

        def shape(state):
            sas, policies = state
            return ({(sa.saddr, sa.daddr, sa.spi, sa.reqid) for sa in sas},
                    {(p.dir, p.selector, p.templates) for p in policies})

        assert shape(prepared_state) == shape(ordinary_state)

        # prepared for one nAR, attached elsewhere: the copies go, the ordinary path moves it
        assert handler.prepare_move(MN_N, MN_P, NAR, PAR)
        handler.move(MN_N, "2001:db8:3::10", NAR, "2001:db8:3::1")
        assert all(MN_P not in (sa.saddr, sa.daddr) for sa in mn.dump_sas())
        assert len(mn.dump_sas()) == 2
