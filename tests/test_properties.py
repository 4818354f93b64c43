"""Every declared method says what it gives besides speed (scenarios/runner/properties.py)."""

from __future__ import annotations

from scenarios.runner import methods, properties


def test_every_method_declares_its_properties_and_only_those_that_exist():
    assert set(properties.METHOD_PROPERTIES) == set(methods.names())
    for name in methods.names():
        declared = properties.of(name)
        assert (declared is None) == (not methods.get(name).security.secure), name
        if declared is not None:
            assert declared.protects in (properties.ACCESS_LINK, properties.END_TO_END)
            assert declared.state_at and declared.keys_from
            # fresh keys from IKEv2 come with its Diffie-Hellman
            assert not declared.fresh_keys or declared.forward_secrecy, name


def test_the_choice_table_takes_the_run_s_figures_and_the_declared_properties():
    from scenarios.analysis import report

    stats = {"median": 80.0, "n": 20}
    per_method = {
        "cxtp-reactive": {"method": "cxtp-reactive", "sweep_value": None,
                          "ha_to_mn": {"interruption_ms": stats, "overhead_ms": {"median": 2.0, "ci95": [1.0, 3.0]}},
                          "mn_to_ha": {"interruption_ms": stats, "overhead_ms": {"median": 14.0, "ci95": [13.0, 15.0]}},
                          "signalling_per_link": {"access": {"messages": {"median": 2}, "bytes": {"median": 112}},
                                                  "ar_ar": {"messages": {"median": 3}, "bytes": {"median": 1596}}}},
        "reauth-eap@10": {"method": "reauth-eap", "sweep_value": 10.0,
                          "ha_to_mn": {"interruption_ms": stats}, "mn_to_ha": {"interruption_ms": stats},
                          "signalling_per_link": {"ike": {"messages": {"median": 10}, "bytes": {"median": 1784}},
                                                  "radius": {"messages": {"median": 6}, "bytes": {"median": 928}}}},
    }
    rows = {row["group"]: row for row in report.choices(per_method)}
    cxtp, eap = rows["cxtp-reactive"], rows["reauth-eap@10"]
    assert cxtp["overhead"]["mn_to_ha"]["median"] == 14.0 and cxtp["ar_ar"] == (3, 1596)
    assert cxtp["aaa_transactions"] == 0
    assert eap["access"] == (10, 1784) and eap["aaa"] == (6, 928) and eap["aaa_transactions"] == 3
    assert cxtp["properties"]["fresh_keys"] is False and eap["properties"]["fresh_keys"] is True
    assert eap["properties"]["evidence"] == f"{properties.EVIDENCE}[reauth-eap]"
