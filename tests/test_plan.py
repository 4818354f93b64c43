"""The addressing plan is consistent: unique addresses, each inside its link's prefix, routes via neighbours."""

from __future__ import annotations

import ipaddress

import pytest

from topo import plan


def test_addresses_are_unique_and_inside_their_prefix():
    seen = set()
    for link in plan.LINKS:
        network = ipaddress.ip_network(link.prefix)
        for node in (link.a, link.b):
            address = link.address_of(node)
            if address:
                assert ipaddress.ip_address(address) in network
                assert address not in seen
                seen.add(address)


def test_paper_names_map_to_the_plan():
    assert ipaddress.ip_address(plan.MN_COA[plan.PAR]) in ipaddress.ip_network(plan.ACCESS_PREFIX[plan.PAR])
    assert ipaddress.ip_address(plan.MN_COA[plan.NAR]) in ipaddress.ip_network(plan.ACCESS_PREFIX[plan.NAR])
    assert plan.AR_ACCESS_ADDRESS[plan.PAR] == plan.LINKS_BY_NAME["mn-par"].address_of(plan.PAR)
    assert plan.AR_ACCESS_ADDRESS[plan.NAR] == plan.LINKS_BY_NAME["mn-nar"].address_of(plan.NAR)


def test_routes_go_via_a_neighbour_on_the_named_link():
    for route in plan.ROUTES:
        link = plan.LINKS_BY_NAME[route.link]
        assert route.node in (link.a, link.b)
        assert ipaddress.ip_address(route.via) in ipaddress.ip_network(link.prefix)
        assert route.via != link.address_of(route.node)


def test_interface_names_fit_linux_limits():
    for link in plan.LINKS:
        for node in (link.a, link.b):
            assert len(link.interface(node)) <= 15


# -- many MNs ----------------------------------------------------------------------------------------

def test_mn_zero_is_the_single_mn_of_the_plan():
    """With one MN nothing changes: MN 0's addresses, identity and tunnels are the plan's constants."""
    assert plan.mn_node(0) == plan.MN and plan.mn_identity(0) == plan.MN_IDENTITY
    assert plan.mn_home_address(0) == plan.MN_HOME_ADDRESS
    assert {ar: plan.mn_coa(0, ar) for ar in plan.ACCESS_ROUTERS} == plan.MN_COA
    assert plan.mn_home_tunnels(0, plan.PAR) == plan.home_tunnels(plan.PAR)
    for ar in plan.ACCESS_ROUTERS:
        assert plan.station_port(ar, 0) == plan.LINKS_BY_NAME[plan.ACCESS_LINK[ar]].interface(ar)
        assert plan.ar_access_interface(ar, 1) == plan.station_port(ar, 0)
        assert plan.ar_access_interface(ar, 2) == plan.cell(ar)


def test_every_mn_has_addresses_names_and_an_identity_of_its_own():
    """Across the largest testbed: no two MNs share an address, a name, an identity or an HA tunnel;
    every address is inside its prefix and clear of the routers' own, and every interface name
    fits Linux's 15 characters."""
    routers = {*plan.AR_ACCESS_ADDRESS.values(), plan.HA_ADDRESS}
    for values in (
        [plan.mn_home_address(mn) for mn in range(plan.MAX_MNS)],
        *([plan.mn_coa(mn, ar) for mn in range(plan.MAX_MNS)] for ar in plan.ACCESS_ROUTERS),
        [plan.mn_identity(mn) for mn in range(plan.MAX_MNS)],
        [plan.mn_node(mn) for mn in range(plan.MAX_MNS)],
        [plan.ha_home_tunnel(mn, ar) for mn in range(plan.MAX_MNS) for ar in plan.ACCESS_ROUTERS],
    ):
        assert len(set(values)) == len(values)
        assert not routers & set(values)
    for mn in range(plan.MAX_MNS):
        assert ipaddress.ip_address(plan.mn_home_address(mn)) in ipaddress.ip_network(plan.HOME_PREFIX)
        for ar in plan.ACCESS_ROUTERS:
            assert ipaddress.ip_address(plan.mn_coa(mn, ar)) in ipaddress.ip_network(plan.ACCESS_PREFIX[ar])
            assert len(plan.station_port(ar, mn)) <= 15 and len(plan.ha_home_tunnel(mn, ar)) <= 15


def test_an_mn_outside_the_plan_is_refused():
    for index in (-1, plan.MAX_MNS):
        for name in (plan.mn_node, plan.mn_home_address, plan.mn_identity):
            with pytest.raises(ValueError):
                name(index)
        with pytest.raises(ValueError):
            plan.mn_coa(index, plan.PAR)
