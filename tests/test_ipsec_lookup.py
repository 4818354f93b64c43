"""lookup_context: one MN's context without a dump of the SPD (the SAs from the kernel's
address filter or read back by key, the policies read back by key from an index of what was
installed), against the in-memory SAD/SPD of test_ipsec_transfer; the real kernel is in
tests/kernel/test_ipsec_lookup_kernel.py."""

from __future__ import annotations

import errno
from dataclasses import replace

import pytest

from ipsec import IpsecContext, SecurityAssociation, XfrmError, capture_context, lookup_context
from test_ipsec_transfer import KEYS, MN, MN2, NAR, FakeXfrm, installed, nar_context


class CountingXfrm(FakeXfrm):
    """FakeXfrm with the batched look-up, and a count of what each capture cost."""

    def __init__(self) -> None:
        super().__init__()
        self.policy_dumps = 0
        self.sa_dumps = 0

    def dump_policies(self, mentioning=None):
        self.policy_dumps += 1
        return super().dump_policies(mentioning)

    def dump_sas(self, saddr=None, daddr=None, proto=None):
        self.sa_dumps += 1
        return super().dump_sas(saddr, daddr, proto)

    def get_entries(self, sas, policies):
        def answer(call, *key):
            try:
                return call(*key)
            except XfrmError as error:
                return error
        return ([answer(self.get_sa, sa.daddr, sa.spi, sa.proto, sa.mark) for sa in sas],
                [answer(self.get_policy, p.selector, p.dir, p.mark, p.if_id) for p in policies])


def _as(address: str, other: str) -> str:
    return other if address == MN else address


def _many(xfrm: CountingXfrm, count: int) -> None:
    """Other MNs' SAs and policies around the one looked up."""
    for index in range(count):
        other = f"2001:db8:2::{0x1000 + index:x}"
        ctx = nar_context()
        sas = tuple(replace(sa, saddr=_as(sa.saddr, other), daddr=_as(sa.daddr, other), spi=sa.spi + 16 * (index + 1))
                    for sa in ctx.sas)
        policies = tuple(replace(p, selector=replace(p.selector, saddr=_as(p.selector.saddr, other),
                                                     daddr=_as(p.selector.daddr, other)),
                                 templates=tuple(replace(t, saddr=_as(t.saddr, other), daddr=_as(t.daddr, other))
                                                 for t in p.templates))
                         for p in ctx.policies)
        installed(xfrm, replace(ctx, sas=sas, policies=policies))


@pytest.mark.parametrize("kernel_filter", [True, False])
def test_lookup_gives_what_a_capture_gives_without_dumping_the_policies(kernel_filter):
    xfrm = CountingXfrm()
    _many(xfrm, 20)
    known = installed(xfrm, nar_context()).context
    looked_up = lookup_context(xfrm, MN, known, now=5, kernel_filter=kernel_filter)
    assert xfrm.policy_dumps == 0
    assert xfrm.sa_dumps == (2 if kernel_filter else 0)
    captured = capture_context(xfrm, MN, now=5)
    assert set(looked_up.sas) == set(captured.sas) and len(looked_up.sas) == 2
    assert set(looked_up.policies) == set(captured.policies) and len(looked_up.policies) == 3


def test_lookup_leaves_out_what_is_gone_and_reads_back_the_kernels_version():
    xfrm = CountingXfrm()
    known = installed(xfrm, nar_context()).context
    gone = known.policies[2]
    xfrm.delete_policy(gone.selector, gone.dir, gone.mark, gone.if_id)
    changed = replace(known.sas[0], replay=replace(known.sas[0].replay, seq=99))
    xfrm.update_sa(changed)
    for kernel_filter in (True, False):
        looked_up = lookup_context(xfrm, MN, known, kernel_filter=kernel_filter)
        assert gone not in looked_up.policies and len(looked_up.policies) == 2
        assert changed in looked_up.sas


def test_the_kernel_filter_also_finds_an_sa_the_index_does_not_hold():
    """An SA from or to the MN that its caller did not install (by hand, by another daemon) is in
    the kernel's filtered dump, as in a capture; read back by key, it is not."""
    xfrm = CountingXfrm()
    known = installed(xfrm, nar_context()).context
    stranger = SecurityAssociation(MN2, MN, 0x3003, algorithms=KEYS)
    xfrm.add_sa(stranger)
    assert stranger in lookup_context(xfrm, MN, known).sas
    assert stranger not in lookup_context(xfrm, MN, known, kernel_filter=False).sas


def test_lookup_keeps_to_the_entries_naming_the_address():
    """An index entry that names other addresses only (another MN's) is not asked for."""
    xfrm = CountingXfrm()
    _many(xfrm, 2)
    known = installed(xfrm, nar_context()).context
    others = capture_context(xfrm, "2001:db8:2::1000")
    mixed = IpsecContext(known.sas + others.sas, known.policies + others.policies)
    looked_up = lookup_context(xfrm, MN, mixed, kernel_filter=False)
    assert set(looked_up.sas) == set(known.sas) and set(looked_up.policies) == set(known.policies)


def test_nothing_known_nothing_asked():
    xfrm = CountingXfrm()
    assert lookup_context(xfrm, MN, IpsecContext(), kernel_filter=False).sas == ()
    with pytest.raises(XfrmError) as caught:
        xfrm.get_sa(NAR, 1)
    assert caught.value.errno == errno.ESRCH


def test_a_refusal_other_than_gone_is_raised():
    class Refusing(CountingXfrm):
        def get_entries(self, sas, policies):
            return [], [XfrmError(errno.EPERM, "XFRM_MSG_GETPOLICY") for _ in policies]

    xfrm = Refusing()
    known = installed(xfrm, nar_context()).context
    with pytest.raises(XfrmError) as caught:
        lookup_context(xfrm, MN, known, kernel_filter=False)
    assert caught.value.errno == errno.EPERM
