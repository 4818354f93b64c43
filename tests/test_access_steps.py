"""The handover steps' netlink messages, read back by pyroute2, and the operstate reader that an
attach waits on, against link messages pyroute2 encodes as the kernel sends them."""

from __future__ import annotations

import socket

import pytest
from pyroute2.netlink.rtnl import RTM_NEWLINK
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg

from topo import access_steps


def _link_message(attrs: list) -> bytes:
    message = ifinfmsg()
    message["family"], message["index"] = socket.AF_UNSPEC, 7
    message["attrs"] = attrs
    message["header"]["type"] = RTM_NEWLINK
    message.encode()
    return bytes(message.data)


#: <linux/if.h>'s enum if_oper_state, by the names pyroute2 gives them
OPER_STATES = {"DOWN": 2, "LOWERLAYERDOWN": 3, "DORMANT": 5, "UP": 6}


@pytest.mark.parametrize("state", sorted(OPER_STATES))
def test_the_operstate_is_read_after_the_attributes_before_it(state):
    reply = _link_message([("IFLA_IFNAME", "par-mn1"), ("IFLA_MTU", 1500), ("IFLA_OPERSTATE", state)])
    assert access_steps.operstate(reply) == OPER_STATES[state]
    assert (access_steps.operstate(reply) == access_steps.IF_OPER_UP) == (state == "UP")


def test_a_link_message_without_an_operstate_is_not_operational():
    assert access_steps.operstate(_link_message([("IFLA_IFNAME", "par-mn1")])) is None


def test_the_link_query_asks_for_one_link():
    request = ifinfmsg(access_steps.link_query(42))
    request.decode()
    assert request["index"] == 42 and request["header"]["flags"] & 1  # NLM_F_REQUEST, no dump
