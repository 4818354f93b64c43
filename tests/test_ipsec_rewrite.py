"""Rewrites against the consistent reading of the paper's Tables I-IV
(docs/paper-tables.md), and the lifetime / sequence policies."""

from __future__ import annotations

from dataclasses import replace

import pytest

from ipsec import (
    DEFAULT_OSEQ_MARGIN,
    Algorithm,
    IpsecContext,
    LifetimeConfig,
    LifetimeCurrent,
    ReplayState,
    SecurityAssociation,
    SecurityPolicy,
    Selector,
    SequenceSpaceExhausted,
    SpiChange,
    Template,
    carry_lifetime,
    oseq_margin,
    rewrite_for_mn,
    rewrite_for_nar,
)
from ipsec.xfrm_messages import XFRM_POLICY_FWD, XFRM_POLICY_IN, XFRM_POLICY_OUT, XFRM_STATE_ESN

MN_P, MN_N = "2001:db8:1::10", "2001:db8:2::10"
PAR, NAR = "2001:db8:1::1", "2001:db8:2::1"
HA = "2001:db8:ff::1"  # the "X" of the tables
SPI_MN_IN, SPI_MN_OUT_1 = 0x1001, 0x2002
KEYS_SA1 = (Algorithm("crypt", "cbc(aes)", b"\x01" * 16), Algorithm("auth_trunc", "hmac(sha256)", b"\x11" * 32, 128))
KEYS_SA2 = (Algorithm("crypt", "cbc(aes)", b"\x02" * 16), Algorithm("auth_trunc", "hmac(sha256)", b"\x22" * 32, 128))


def sel(src, dst):
    return Selector(daddr=dst, saddr=src, prefixlen_d=128, prefixlen_s=128)


def policy(direction, sel_src, sel_dst, tmpl_src, tmpl_dst, reqid):
    return SecurityPolicy(
        selector=sel(sel_src, sel_dst),
        dir=direction,
        templates=(Template(daddr=tmpl_dst, saddr=tmpl_src, reqid=reqid),),
        index=99,
    )


def par_context():
    """The pAR's SAD/SPD for the MN before the handover."""
    sa1 = SecurityAssociation(MN_P, PAR, SPI_MN_IN, reqid=1, algorithms=KEYS_SA1, replay=ReplayState(oseq=500))
    sa2 = SecurityAssociation(PAR, MN_P, SPI_MN_OUT_1, reqid=2, algorithms=KEYS_SA2,
                              replay=ReplayState(seq=400, bitmap=(0xFFFF,)))
    policies = (
        policy(XFRM_POLICY_IN, MN_P, HA, MN_P, PAR, 2),
        policy(XFRM_POLICY_OUT, HA, MN_P, PAR, MN_P, 1),
    )
    return IpsecContext((sa1, sa2), policies, captured_at=1000)


def mn_context():
    """The MN's SAD/SPD before the handover (Table I and III, "p" rows)."""
    sa1 = SecurityAssociation(MN_P, PAR, SPI_MN_IN, reqid=1, algorithms=KEYS_SA1)
    sa2 = SecurityAssociation(PAR, MN_P, SPI_MN_OUT_1, reqid=2, algorithms=KEYS_SA2, replay=ReplayState(oseq=400))
    policies = (
        policy(XFRM_POLICY_IN, HA, MN_P, PAR, MN_P, 1),
        policy(XFRM_POLICY_OUT, MN_P, HA, MN_P, PAR, 2),
    )
    return IpsecContext((sa1, sa2), policies, captured_at=1000)


def rows(ctx):
    sad = {(sa.daddr, sa.spi, sa.algorithms) for sa in ctx.sas}
    spd = {
        (p.dir, p.selector.saddr, p.selector.daddr, p.templates[0].saddr, p.templates[0].daddr)
        for p in ctx.policies
    }
    return sad, spd


def test_nar_tables_ii_and_iv():
    sad, spd = rows(rewrite_for_nar(par_context(), MN_P, MN_N, PAR, NAR))
    # Table II, consistent reading: inbound (from the MN) to nAR with spi-mn-out-2
    # and SA2's keys; outbound to MN_n with spi-mn-in and SA1's keys.
    assert sad == {(NAR, SPI_MN_OUT_1, KEYS_SA2), (MN_N, SPI_MN_IN, KEYS_SA1)}
    # Table IV (headers swapped back): selector = MN_n <-> X, template = MN_n <-> nAR.
    assert spd == {
        (XFRM_POLICY_IN, MN_N, HA, MN_N, NAR),
        (XFRM_POLICY_FWD, MN_N, HA, MN_N, NAR),
        (XFRM_POLICY_OUT, HA, MN_N, NAR, MN_N),
    }


def test_mn_tables_i_and_iii():
    sad, spd = rows(rewrite_for_mn(mn_context(), MN_P, MN_N, PAR, NAR))
    assert sad == {(MN_N, SPI_MN_IN, KEYS_SA1), (NAR, SPI_MN_OUT_1, KEYS_SA2)}
    assert spd == {
        (XFRM_POLICY_IN, HA, MN_N, NAR, MN_N),
        (XFRM_POLICY_OUT, MN_N, HA, MN_N, NAR),
    }


def test_mn_and_nar_agree_after_spi_collision():
    """spi-mn-out-2 differs from spi-mn-out-1 when the nAR had to change it."""
    change = SpiChange(SPI_MN_OUT_1, 0xC0FFEE)
    mn = rewrite_for_mn(mn_context(), MN_P, MN_N, PAR, NAR, [change])
    sad, _ = rows(mn)
    assert (NAR, 0xC0FFEE, KEYS_SA2) in sad
    assert (MN_N, SPI_MN_IN, KEYS_SA1) in sad  # the MN's inbound SPI is its own choice


def test_nar_does_not_duplicate_an_existing_fwd_policy():
    ctx = par_context()
    with_fwd = replace(ctx, policies=ctx.policies + (replace(ctx.policies[0], dir=XFRM_POLICY_FWD),))
    out = rewrite_for_nar(with_fwd, MN_P, MN_N, PAR, NAR)
    assert sum(p.dir == XFRM_POLICY_FWD for p in out.policies) == 1


def test_nar_policy_indexes_are_left_to_the_kernel():
    out = rewrite_for_nar(par_context(), MN_P, MN_N, PAR, NAR)
    assert all(p.index == 0 for p in out.policies)


def test_wildcard_x_and_other_addresses_are_kept():
    ctx = par_context()
    wild = replace(
        ctx,
        policies=(SecurityPolicy(selector=Selector(saddr=MN_P, prefixlen_s=128), dir=XFRM_POLICY_IN,
                                 templates=(Template(daddr=PAR, saddr=MN_P),)),),
    )
    (p_in, p_fwd) = rewrite_for_nar(wild, MN_P, MN_N, PAR, NAR).policies
    assert (p_in.selector.saddr, p_in.selector.daddr, p_in.selector.prefixlen_d) == (MN_N, "::", 0)


def test_address_spelling_does_not_matter():
    out = rewrite_for_nar(par_context(), "2001:0db8:1:0::10", MN_N, "2001:db8:1:0:0:0:0:1", NAR)
    assert {sa.daddr for sa in out.sas} == {NAR, MN_N}


def test_outbound_sequence_number_jumps_on_the_new_sender_only():
    out = rewrite_for_nar(par_context(), MN_P, MN_N, PAR, NAR, oseq_margin=1000)
    by_dst = {sa.daddr: sa for sa in out.sas}
    assert by_dst[MN_N].replay.oseq == 500 + 1000  # nAR -> MN: new sender
    assert by_dst[NAR].replay == ReplayState(seq=400, bitmap=(0xFFFF,))  # inbound: window kept
    assert DEFAULT_OSEQ_MARGIN > 0


def test_an_sa_whose_numbers_would_run_out_is_not_moved_without_esn_and_is_with_esn():
    """Moved ahead past the end of its 32-bit space, an SA could send nothing (the kernel's
    XfrmOutStateSeqError), or wrap and reuse numbers: it is refused, never capped."""
    ctx = par_context()
    near_end = replace(ctx.sas[0], replay=ReplayState(oseq=0xFFFFFFF0))
    with pytest.raises(SequenceSpaceExhausted, match="32-bit space"):
        rewrite_for_nar(replace(ctx, sas=(near_end,)), MN_P, MN_N, PAR, NAR, oseq_margin=100)
    at_the_edge = replace(near_end, replay=ReplayState(oseq=0xFFFFFFFE - 100))
    out = rewrite_for_nar(replace(ctx, sas=(at_the_edge,)), MN_P, MN_N, PAR, NAR, oseq_margin=100)
    assert out.sas[0].replay.oseq == 0xFFFFFFFE
    with pytest.raises(SequenceSpaceExhausted):
        rewrite_for_nar(replace(ctx, sas=(replace(near_end, replay=ReplayState(oseq=0xFFFFFFFF - 100)),)),
                        MN_P, MN_N, PAR, NAR, oseq_margin=100)
    esn = replace(near_end, flags=XFRM_STATE_ESN)
    out = rewrite_for_nar(replace(ctx, sas=(esn,)), MN_P, MN_N, PAR, NAR, oseq_margin=100)
    assert out.sas[0].replay.oseq == 0xFFFFFFF0 + 100


def test_the_margin_covers_what_the_old_sender_can_send_before_the_activation():
    assert oseq_margin(0, 0) == DEFAULT_OSEQ_MARGIN
    # the failing case of a long anticipation: 10,000 packets/s for 10.5 s is beyond the base
    assert oseq_margin(10_000, 10.5) == DEFAULT_OSEQ_MARGIN + 105_000
    assert oseq_margin(10_000, 10.5) > 10_000 * 10.5
    assert oseq_margin(1, 0.5) == DEFAULT_OSEQ_MARGIN + 1  # rounded up, never down
    with pytest.raises(ValueError):
        oseq_margin(-1, 1)


def test_mn_keeps_its_own_sequence_numbers():
    out = rewrite_for_mn(mn_context(), MN_P, MN_N, PAR, NAR)
    assert {sa.spi: sa.replay.oseq for sa in out.sas}[SPI_MN_OUT_1] == 400


# --- lifetimes -------------------------------------------------------------------------


def test_time_budget_used_on_the_par_is_not_given_back():
    sa = SecurityAssociation(
        NAR, MN_N, 1,
        lifetime=LifetimeConfig(soft_add_expires_seconds=3000, hard_add_expires_seconds=3600,
                                soft_use_expires_seconds=600, hard_use_expires_seconds=900,
                                hard_byte_limit=10_000),
        current=LifetimeCurrent(bytes=4000, packets=40, add_time=10_000, use_time=10_500),
    )
    moved = carry_lifetime(sa, captured_at=11_000, now=50_000)
    assert moved.lifetime.hard_add_expires_seconds == 3600 - 1000
    assert moved.lifetime.soft_add_expires_seconds == 3000 - 1000
    assert moved.lifetime.hard_use_expires_seconds == 900 - 500
    assert moved.lifetime.soft_use_expires_seconds == 600 - 500
    assert moved.lifetime.hard_byte_limit == 10_000  # bytes carried instead
    assert moved.current == LifetimeCurrent(bytes=4000, packets=40, add_time=50_000, use_time=50_000)


def test_expired_budget_becomes_one_second_and_unlimited_stays_unlimited():
    sa = SecurityAssociation(
        NAR, MN_N, 1,
        lifetime=LifetimeConfig(hard_add_expires_seconds=100),
        current=LifetimeCurrent(add_time=1),
    )
    moved = carry_lifetime(sa, captured_at=1000, now=5)
    assert moved.lifetime.hard_add_expires_seconds == 1
    assert moved.lifetime.soft_add_expires_seconds == 0  # 0 = no limit
    assert moved.current.use_time == 0  # never used: the kernel stamps first use


@pytest.mark.parametrize("moves", [1, 2, 5])
def test_repeated_moves_never_extend_the_lifetime(moves):
    sa = SecurityAssociation(NAR, MN_N, 1, lifetime=LifetimeConfig(hard_add_expires_seconds=3600),
                             current=LifetimeCurrent(add_time=0 + 1))
    clock = 1
    for _ in range(moves):
        clock += 100
        sa = carry_lifetime(sa, captured_at=clock, now=clock)
    deadline = sa.current.add_time + sa.lifetime.hard_add_expires_seconds
    assert deadline == 1 + 3600
