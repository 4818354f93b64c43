"""One MN's context found without a dump of the SPD, in a real kernel: ``lookup_context`` (the
kernel's address filter for the SAs, or a read-back by key; the policies read back by key, all
in one write) gives what ``capture_context`` (the dumps) gives, among many MNs; and the access
router's collect and release use it, dumping no policy."""

from __future__ import annotations

import ipaddress
from dataclasses import replace

import pytest

from ipsec import IpsecContext, Xfrm, capture_context, install_context, lookup_context
from nodes import ar_context, provisioning

PAR, HA = "2001:db8:1::1", "2001:db8:3::1"


def mn_address(index: int) -> str:
    return str(ipaddress.IPv6Address("2001:db8:1::") + 0x10000 + 2 * index)  # one MN per /127


def mn_context(index: int, prefixlen: int = 128) -> IpsecContext:
    """The AR's side of MN ``index``'s provisioned context (as benchmarks/bench_capacity.py);
    ``prefixlen`` 127: its policies' MN end a /127 (not hashed under the default thresholds)."""
    _, ar_side = provisioning.initial_contexts(mn_address(index), PAR, HA, "aes-cbc-sha256",
                                               0x100000 + 2 * index, 0x100001 + 2 * index, reqid=index + 1)
    return replace(ar_side, policies=tuple(
        replace(p, selector=replace(p.selector, prefixlen_s=prefixlen if p.selector.saddr != HA else 128,
                                    prefixlen_d=prefixlen if p.selector.daddr != HA else 128))
        for p in ar_side.policies))


def populate(xfrm: Xfrm, contexts: list[IpsecContext]) -> None:
    requests = [xfrm.encode_add_sa(sa) for ctx in contexts for sa in ctx.sas]
    requests += [xfrm.encode_add_policy(p) for ctx in contexts for p in ctx.policies]
    for start in range(0, len(requests), 250):
        assert xfrm.send_batch(requests[start:start + 250]) == [None] * len(requests[start:start + 250])


pytestmark = pytest.mark.kernel
MNS = 300


@pytest.fixture
def par(kernel_with_esp, netns_factory):
    with Xfrm(netns_factory("par")) as xfrm:
        yield xfrm


@pytest.mark.parametrize("prefixlen", [128, 127])  # hashed and not, under the default thresholds
def test_lookup_among_many_mns_gives_what_the_dumps_give(par, prefixlen):
    contexts = [mn_context(i, prefixlen) for i in range(MNS)]
    populate(par, contexts)
    for index in (0, 1, MNS // 2, MNS - 1):
        captured = capture_context(par, mn_address(index))
        assert len(captured.sas) == 2 and len(captured.policies) == 3
        for kernel_filter in (True, False):
            found = lookup_context(par, mn_address(index), contexts[index], kernel_filter=kernel_filter)
            assert set(found.sas) == set(captured.sas), kernel_filter
            assert set(found.policies) == set(captured.policies), kernel_filter  # the kernel's index too


def test_lookup_leaves_out_what_went_and_the_filter_finds_what_was_not_indexed(par):
    contexts = [mn_context(i) for i in range(3)]
    populate(par, contexts)
    mn, known = mn_address(1), contexts[1]
    gone = known.policies[0]
    par.delete_policy(gone.selector, gone.dir, gone.mark, gone.if_id)
    stranger = replace(known.sas[0], spi=0x7777, reqid=99)  # an SA to the MN this index never held
    par.add_sa(stranger)
    captured = capture_context(par, mn)
    by_filter = lookup_context(par, mn, known)
    assert set(by_filter.sas) == set(captured.sas) and len(by_filter.sas) == 3
    assert set(by_filter.policies) == set(captured.policies) and len(by_filter.policies) == 2
    by_key = lookup_context(par, mn, known, kernel_filter=False)
    assert {sa.spi for sa in by_key.sas} == {sa.spi for sa in known.sas}


class NoPolicyDump:
    """The handler's Xfrm, refusing any SPD dump."""

    def __init__(self, xfrm: Xfrm) -> None:
        self.xfrm = xfrm

    def __getattr__(self, name: str):
        if name == "dump_policies":
            raise AssertionError("the SPD was dumped")
        return getattr(self.xfrm, name)


def test_the_pars_collect_and_release_dump_no_policy(par, tmp_path):
    contexts = [mn_context(i) for i in range(MNS)]
    populate(par, contexts[1:])
    mn = mn_address(0)
    handler = ar_context.ArIpsecHandler(NoPolicyDump(par), PAR, state_dir=str(tmp_path))
    handler.know_installed(install_context(par, contexts[0]).context)  # provisioned: indexed
    before = capture_context(par, mn)
    collected = IpsecContext.decode(handler.collect(mn))
    assert {(sa.daddr, sa.spi) for sa in collected.sas} == {(sa.daddr, sa.spi) for sa in before.sas}
    assert {replace(p, index=0) for p in collected.policies} == {replace(p, index=0) for p in before.policies}
    handler.release(mn)  # run at once (no agent: the handler's default defer)
    after = capture_context(par, mn)
    assert after.sas == () and after.policies == ()
    assert len(capture_context(par, mn_address(1)).sas) == 2, "the other MNs stay"
