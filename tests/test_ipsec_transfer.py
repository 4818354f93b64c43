"""capture_context over several addresses and install_context's replace_existing,
against an in-memory SAD/SPD with the kernel's keys and errors (the real
kernel is in tests/kernel/test_ipsec_handover_kernel.py)."""

from __future__ import annotations

import errno
from dataclasses import replace

import pytest

from ipsec import (
    Algorithm,
    IpsecContext,
    Mark,
    ReplayState,
    SecurityAssociation,
    SecurityPolicy,
    Selector,
    Template,
    XfrmError,
    capture_context,
    install_context,
    normalise_address,
    same_address,
)
from ipsec.xfrm_messages import XFRM_POLICY_FWD, XFRM_POLICY_IN, XFRM_POLICY_OUT

MN, MN2, NAR, HA, OTHER = "2001:db8:2::10", "2001:db8:3::10", "2001:db8:2::1", "2001:db8:ff::1", "2001:db8:2::99"
KEYS = (Algorithm("aead", "rfc4106(gcm(aes))", bytes(20), 128),)


class FakeXfrm:
    """SAD keyed by (daddr, SPI, proto, mark), SPD by (selector, dir, mark,
    if_id), as the kernel keys them; EEXIST / ESRCH / ENOENT as it answers.
    A policy with an action other than allow/block is refused (EINVAL)."""

    def __init__(self) -> None:
        self.sas: dict = {}
        self.policies: dict = {}
        self.next_spi = 0x9000

    @staticmethod
    def _sa_key(daddr, spi, proto, mark):
        return (normalise_address(daddr), spi, proto, mark)

    @staticmethod
    def _policy_key(selector, direction, mark, if_id):
        return (selector, direction, mark, if_id)

    def add_sa(self, sa, carry_current=True):
        key = self._sa_key(sa.daddr, sa.spi, sa.proto, sa.mark)
        if key in self.sas:
            raise XfrmError(errno.EEXIST, "XFRM_MSG_NEWSA")
        if any(a.name.startswith("no-such") for a in sa.algorithms):
            raise XfrmError(errno.ENOENT, "XFRM_MSG_NEWSA")
        self.sas[key] = sa

    def update_sa(self, sa, carry_current=True):
        self.sas[self._sa_key(sa.daddr, sa.spi, sa.proto, sa.mark)] = sa

    def get_sa(self, daddr, spi, proto=50, mark=None):
        try:
            return self.sas[self._sa_key(daddr, spi, proto, mark)]
        except KeyError:
            raise XfrmError(errno.ESRCH, "XFRM_MSG_GETSA") from None

    def delete_sa(self, daddr, spi, proto=50, mark=None):
        if self.sas.pop(self._sa_key(daddr, spi, proto, mark), None) is None:
            raise XfrmError(errno.ESRCH, "XFRM_MSG_DELSA")

    def allocate_spi(self, daddr, saddr, proto=50, mode=1, reqid=0, spi_min=0x100, spi_max=0xFFFFFFFF, mark=None):
        self.next_spi += 1
        self.sas[self._sa_key(daddr, self.next_spi, proto, mark)] = "larval"
        return self.next_spi

    def dump_sas(self, saddr=None, daddr=None, proto=None):
        return [
            sa for sa in self.sas.values()
            if (saddr is None or same_address(sa.saddr, saddr)) and (daddr is None or same_address(sa.daddr, daddr))
        ]

    def add_policy(self, policy):
        if policy.action not in (0, 1):
            raise XfrmError(errno.EINVAL, "XFRM_MSG_NEWPOLICY")
        key = self._policy_key(policy.selector, policy.dir, policy.mark, policy.if_id)
        if key in self.policies:
            raise XfrmError(errno.EEXIST, "XFRM_MSG_NEWPOLICY")
        self.policies[key] = policy

    def update_policy(self, policy):
        self.policies[self._policy_key(policy.selector, policy.dir, policy.mark, policy.if_id)] = policy

    def get_policy(self, selector, direction, mark=None, if_id=0):
        try:
            return self.policies[self._policy_key(selector, direction, mark, if_id)]
        except KeyError:
            raise XfrmError(errno.ENOENT, "XFRM_MSG_GETPOLICY") from None

    def delete_policy(self, selector, direction, mark=None, if_id=0):
        if self.policies.pop(self._policy_key(selector, direction, mark, if_id), None) is None:
            raise XfrmError(errno.ENOENT, "XFRM_MSG_DELPOLICY")

    def dump_policies(self, mentioning=None):
        return list(self.policies.values())

    def state(self):
        return dict(self.sas), dict(self.policies)


def nar_context(oseq=0, key=bytes(20)) -> IpsecContext:
    """An MN's context as the nAR installs it: SA from the MN (inbound), SA
    to the MN, policies in, fwd, out."""
    keys = (Algorithm("aead", "rfc4106(gcm(aes))", key, 128),)
    from_mn = Selector(daddr=HA, saddr=MN, prefixlen_d=128, prefixlen_s=128)
    to_mn = Selector(daddr=MN, saddr=HA, prefixlen_d=128, prefixlen_s=128)
    return IpsecContext(
        sas=(
            SecurityAssociation(NAR, MN, 0x2002, reqid=2, algorithms=keys, replay=ReplayState(seq=oseq)),
            SecurityAssociation(MN, NAR, 0x1001, reqid=1, algorithms=keys, replay=ReplayState(oseq=oseq)),
        ),
        policies=(
            SecurityPolicy(from_mn, XFRM_POLICY_IN, (Template(NAR, MN, reqid=2),)),
            SecurityPolicy(from_mn, XFRM_POLICY_FWD, (Template(NAR, MN, reqid=2),)),
            SecurityPolicy(to_mn, XFRM_POLICY_OUT, (Template(MN, NAR, reqid=1),)),
        ),
        captured_at=1_700_000_000,
    )


def installed(xfrm, ctx, **kwargs):
    return install_context(xfrm, ctx, now=1_700_000_000, **kwargs)


def test_same_address_compares_addresses_not_spellings():
    assert same_address("2001:db8::1", "2001:0db8:0:0::1")
    assert same_address("192.0.2.1", "192.0.2.1")
    assert not same_address("2001:db8::1", "2001:db8::2")
    assert not same_address("2001:db8::1", "not an address")
    assert normalise_address("2001:0DB8::0001") == "2001:db8::1"


def test_without_replace_an_existing_entry_fails_and_nothing_changes():
    xfrm = FakeXfrm()
    installed(xfrm, nar_context())
    before = xfrm.state()
    with pytest.raises(XfrmError) as caught:
        installed(xfrm, nar_context(oseq=5))
    assert caught.value.errno == errno.EEXIST
    assert xfrm.state() == before


def test_replace_existing_replaces_sas_and_policies():
    xfrm = FakeXfrm()
    installed(xfrm, nar_context())
    newer = nar_context(oseq=77, key=b"\x01" * 20)
    newer = replace(newer, policies=tuple(replace(p, priority=5) for p in newer.policies))
    installation = installed(xfrm, newer, replace_existing=True)
    assert installation.spi_changes == ()
    assert sorted(xfrm.sas.values(), key=lambda s: s.spi) == sorted(installation.context.sas, key=lambda s: s.spi)
    assert {s.algorithms[0].key for s in xfrm.sas.values()} == {b"\x01" * 20}
    assert {p.priority for p in xfrm.policies.values()} == {5}
    assert len(xfrm.policies) == 3


def test_replace_existing_that_fails_restores_what_it_replaced_and_removes_what_it_added():
    xfrm = FakeXfrm()
    old = nar_context()
    installed(xfrm, replace(old, policies=old.policies[:2]))  # no "out" policy yet
    before = xfrm.state()
    newer = nar_context(oseq=77, key=b"\x01" * 20)
    broken = replace(newer, policies=(*newer.policies, replace(newer.policies[2], dir=XFRM_POLICY_IN, action=7)))
    with pytest.raises(XfrmError) as caught:
        installed(xfrm, broken, replace_existing=True)
    assert caught.value.errno == errno.EINVAL
    assert xfrm.state() == before


def test_replace_existing_still_gives_a_fresh_spi_against_another_peers_inbound_sa():
    xfrm = FakeXfrm()
    theirs = SecurityAssociation(NAR, OTHER, 0x2002, reqid=77, algorithms=KEYS)
    xfrm.add_sa(theirs)
    installation = installed(xfrm, nar_context(), replace_existing=True)
    (change,) = installation.spi_changes
    assert change.old_spi == 0x2002 and change.new_spi != 0x2002
    assert xfrm.get_sa(NAR, 0x2002) == theirs
    assert xfrm.get_sa(NAR, change.new_spi).saddr == MN
    inbound = [p for p in installation.context.policies if p.dir == XFRM_POLICY_IN]
    assert inbound[0].templates[0].spi == 0  # template SPIs 0 (any) stay


def test_capture_context_of_several_addresses():
    xfrm = FakeXfrm()
    for sa in nar_context().sas:
        xfrm.add_sa(sa)
    for policy in nar_context().policies:
        xfrm.add_policy(policy)
    # a second care-of address: an SA between the MN's two addresses, a policy
    # naming the second address only in its template
    both = SecurityAssociation(MN2, MN, 0x3003, algorithms=KEYS)
    xfrm.add_sa(both)
    tmpl_only = SecurityPolicy(Selector(daddr=HA, saddr=HA, prefixlen_d=128, prefixlen_s=128), XFRM_POLICY_OUT,
                               (Template(MN2, NAR),), mark=Mark(1, 1))
    xfrm.add_policy(tmpl_only)
    xfrm.add_sa(SecurityAssociation(NAR, OTHER, 0x4004, algorithms=KEYS))  # another MN
    one = capture_context(xfrm, MN, now=5)
    assert len(one.sas) == 3 and len(one.policies) == 3
    spelled = "2001:0db8:0003:0000:0000:0000:0000:0010"
    several = capture_context(xfrm, [MN, spelled], now=5)
    assert [s.spi for s in several.sas].count(0x3003) == 1  # each SA once
    assert {s.spi for s in several.sas} == {0x1001, 0x2002, 0x3003}
    assert tmpl_only in several.policies and len(several.policies) == 4
    assert several.captured_at == 5
