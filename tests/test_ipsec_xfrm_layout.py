"""XFRM structure layouts against the kernel's sizeof values (x86_64) and
message encoding, without a kernel."""

from __future__ import annotations

import struct

import pytest

from ipsec import Algorithm, ReplayState, SecurityAssociation, SecurityPolicy, Selector, Template
from ipsec import xfrm_messages as xm
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
