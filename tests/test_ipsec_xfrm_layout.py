"""XFRM structure layouts against the kernel's sizeof values (x86_64) and
message encoding, without a kernel."""

from __future__ import annotations

import struct
from dataclasses import fields

import pytest
from pyroute2.netlink import nla

from ipsec import (
    Algorithm,
    LifetimeConfig,
    LifetimeCurrent,
    Mark,
    Migration,
    ReplayState,
    SecurityAssociation,
    SecurityPolicy,
    Selector,
    Template,
)
from ipsec import xfrm_messages as xm
from ipsec.layout import Record, from_struct, members, to_struct, xfrm_value
from ipsec.xfrm import policy_from_message, policy_to_message, sa_from_message, sa_to_message


@pytest.mark.parametrize(
    "structure, size",
    [
        (xm.xfrm_selector, 56),
        (xm.xfrm_id, 24),
        (xm.xfrm_lifetime_cfg, 64),
        (xm.xfrm_lifetime_cur, 32),
        (xm.xfrm_replay_state, 12),
        (xm.xfrm_mark, 8),
        (xm.xfrm_usersa_info, 224),
        (xm.xfrm_usersa_id, 24),
        (xm.xfrm_aevent_id, 48),
        (xm.xfrm_userspi_info, 232),
        (xm.xfrm_userpolicy_info, 168),
        (xm.xfrm_userpolicy_id, 64),
        (xm.xfrm_user_tmpl, 64),
        (xm.xfrm_user_migrate, 76),
        (xm.xfrm_address_filter, 36),
        (xm.xfrm_user_kmaddress, 40),
        (xm.xfrm_encap_tmpl, 24),
        (xm.xfrm_usersa_flush, 4),  # 1 octet, NLMSG_ALIGNed
    ],
)
def test_sizeof_matches_kernel(structure, size):
    assert structure.c_sizeof() == size


def test_message_numbers_and_attribute_numbers():
    assert (xm.XFRM_MSG_NEWSA, xm.XFRM_MSG_ALLOCSPI, xm.XFRM_MSG_NEWAE, xm.XFRM_MSG_MIGRATE) == (
        0x10,
        0x16,
        0x1E,
        0x21,
    )
    assert xm.XFRMA_TMPL == 5
    assert xm.XFRMA_LTIME_VAL == 9
    assert xm.XFRMA_REPLAY_VAL == 10
    assert xm.XFRMA_MIGRATE == 17
    assert xm.XFRMA_ALG_AUTH_TRUNC == 20
    assert xm.XFRMA_REPLAY_ESN_VAL == 23
    assert xm.XFRMA_IF_ID == 31


def test_usersa_info_field_offsets():
    """Known offsets: id.spi at 72, saddr at 80, lft at 96, reqid at 208,
    family at 212, mode/replay_window/flags at 214..216."""
    msg = xm.xfrm_usersa_info()
    msg["id"] = {"spi": 0x01020304, "proto": 50}
    msg["reqid"] = 0x0A0B0C0D
    msg["family"] = 10
    msg["mode"] = 1
    msg["replay_window"] = 32
    msg["flags"] = 0x80
    msg["attrs"] = []
    msg.encode()
    body = bytes(msg.data[16:])
    assert body[72:76] == b"\x01\x02\x03\x04"  # __be32 spi
    assert body[76] == 50
    assert struct.unpack_from("=I", body, 208)[0] == 0x0A0B0C0D
    assert struct.unpack_from("=H", body, 212)[0] == 10
    assert body[214:217] == bytes([1, 32, 0x80])
    assert len(body) == 224


def test_sa_message_round_trip_without_kernel():
    sa = SecurityAssociation(
        "2001:db8::2",
        "2001:db8::1",
        0x1234,
        reqid=3,
        algorithms=(
            Algorithm("crypt", "cbc(aes)", bytes(range(16))),
            Algorithm("auth_trunc", "hmac(sha256)", bytes(range(32)), 128),
        ),
        replay=ReplayState(oseq=0x1_0000_0005, seq=9, bitmap=(1, 2), window=64, esn_attr=True),
        flags=xm.XFRM_STATE_ESN,
    )
    msg = sa_to_message(sa, carry_current=False)
    msg["header"]["type"] = xm.XFRM_MSG_NEWSA
    msg.encode()
    back = xm.xfrm_usersa_info(bytes(msg.data))
    back.decode()
    assert sa_from_message(back) == sa


def test_policy_message_round_trip_without_kernel():
    policy = SecurityPolicy(
        selector=Selector(daddr="2001:db8::5", saddr="2001:db8::6", prefixlen_d=128, prefixlen_s=64),
        dir=2,
        templates=(
            Template("2001:db8::1", "2001:db8::2", reqid=1),
            Template("2001:db8::3", "2001:db8::4", reqid=2, mode=0),
        ),
        priority=7,
    )
    msg = policy_to_message(policy)
    msg.encode()
    back = xm.xfrm_userpolicy_info(bytes(msg.data))
    back.decode()
    assert policy_from_message(back) == policy


def test_attribute_constants_are_module_constants_numbered_as_the_map():
    numbers = [entry[0] for entry in xm.xfrm_usersa_info.nla_map]
    assert numbers == list(range(len(numbers)))  # enum xfrm_attr_type_t, no gap
    for number, name, _kind in xm.xfrm_usersa_info.nla_map:
        assert getattr(xm, name) == number, name
    assert xm.XFRMA_SA_DIR == 33
    source = open(xm.__file__).read()
    assert "globals()[" not in source


@pytest.mark.parametrize(
    "value, declaration",
    [(Selector, xm.xfrm_selector), (LifetimeConfig, xm.xfrm_lifetime_cfg), (LifetimeCurrent, xm.xfrm_lifetime_cur),
     (Template, xm.xfrm_user_tmpl), (Mark, xm.xfrm_mark), (Migration, xm.xfrm_user_migrate)],
)
def test_values_have_one_field_per_declared_member(value, declaration):
    declared = {m.path for m in members(declaration) if not m.name.startswith("reserved")}
    assert {m.path for m in value.xfrm_members} == declared
    assert [f.name for f in fields(value)] == [m.name for m in value.xfrm_members]


def test_a_member_added_to_a_declaration_reaches_value_netlink_and_record():
    class xfrm_toy(nla, xm._embeddable):
        fields = (*xm.xfrm_lifetime_cur.fields, ("later", "I"), ("__pad0", "4x"))

    @xfrm_value(xfrm_toy, later=7)
    class Toy:
        pass

    value = Toy(bytes=1, packets=2, add_time=3, use_time=4)
    assert value.later == 7
    raw = bytearray()
    xfrm_toy.encode_into(raw, 0, to_struct(value))
    assert len(raw) == 40 and struct.unpack_from("=I", raw, 32) == (7,)
    assert from_struct(Toy, xfrm_toy.decode_from(raw)[0]) == value
    record = Record.aligned(Toy.xfrm_members)
    assert record.size == 36 and record.names[-1] == "later"


def test_context_records_have_the_documented_sizes():
    from ipsec import context

    sizes = {name: getattr(context, name).size for name in (
        "_HEADER", "_SA_HEAD", "_SELECTOR", "_LIFETIME_CFG", "_LIFETIME_CUR", "_REPLAY", "_ALGORITHM",
        "_POLICY_HEAD", "_TEMPLATE")}
    assert sizes == {"_HEADER": 16, "_SA_HEAD": 64, "_SELECTOR": 56, "_LIFETIME_CFG": 64, "_LIFETIME_CUR": 32,
                     "_REPLAY": 24, "_ALGORITHM": 8, "_POLICY_HEAD": 28, "_TEMPLATE": 60}


def test_template_fields_are_largest_first():
    assert [f.name for f in fields(Template)] == [
        "daddr", "saddr", "spi", "reqid", "aalgos", "ealgos", "calgos", "family", "proto", "mode", "share",
        "optional"]
