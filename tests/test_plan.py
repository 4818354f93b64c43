"""The addressing plan is consistent: unique addresses, each inside its link's prefix, routes via neighbours."""

from __future__ import annotations

import ipaddress

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
