"""What each method gives a network besides its speed, declared once per method and checked in the
kernel: the facts of the table an operator chooses a method from (the README's "Choosing a method",
the report's "Security properties").

Every value below is asserted, for its method, by
``tests/kernel/test_method_properties.py::test_the_declared_properties_hold`` after a real handover:
the keys the MN's SAs use before and after the move, the SAs' outer addresses, the nodes that
hold the MN's state afterwards, and the IKE SA's Diffie-Hellman group. A method without an entry
fails ``tests/test_properties.py``.
"""

from __future__ import annotations

import dataclasses

#: the test that checks every declared value, for the table's citations
EVIDENCE = "tests/kernel/test_method_properties.py::test_the_declared_properties_hold"

ACCESS_LINK = "access link (MN-AR)"
END_TO_END = "end to end to the gateway (MN-HA)"


@dataclasses.dataclass(frozen=True)
class Properties:
    #: the SAs the MN uses after the move have keys no SA of it had before
    fresh_keys: bool
    #: those keys come from an ephemeral Diffie-Hellman exchange (IKEv2), so that a later
    #: compromise of a long-term credential does not reveal them; static or moved keys do not
    forward_secrecy: bool
    #: which segment the MN's ESP protects: its SAs' outer addresses
    protects: str
    #: the nodes that hold the MN's SAs after the move (besides the MN)
    state_at: tuple[str, ...]
    #: where the keys the new AR uses come from, in words for the table
    keys_from: str


_CXTP = Properties(fresh_keys=False, forward_secrecy=False, protects=ACCESS_LINK, state_at=("nar",),
                   keys_from="the pAR's context, moved (RFC 4067)")
_REAUTH = Properties(fresh_keys=True, forward_secrecy=True, protects=ACCESS_LINK, state_at=("nar",),
                     keys_from="a new IKEv2 exchange with the nAR")

_PREAUTH = dataclasses.replace(_REAUTH, keys_from="a new IKEv2 exchange with the nAR, before the move")

METHOD_PROPERTIES: dict[str, Properties | None] = {
    "none": None,  # no security: nothing to declare
    "cxtp-predictive": _CXTP,
    "cxtp-reactive": _CXTP,
    "cxtp-network": _CXTP,
    "cxtp-reactive-ike": dataclasses.replace(_CXTP, forward_secrecy=True,
                                             keys_from="IKEv2 at the pAR (its Diffie-Hellman), moved by CXTP"),
    "reauth-eap": _REAUTH,
    "reauth-eap-md5": _REAUTH,
    "reauth-eap-tls": _REAUTH,
    "reauth-eap-tls-resumed": _REAUTH,
    "reauth-psk": _REAUTH,
    "preauth-eap": _PREAUTH,
    "preauth-psk": _PREAUTH,
    # the anticipation was cancelled (its SAs torn down), and the MN re-authenticated after the move
    "preauth-eap-cancelled": _REAUTH,
    "mobike": Properties(fresh_keys=False, forward_secrecy=True, protects=END_TO_END, state_at=("ha",),
                         keys_from="one IKEv2 exchange with the HA for the whole run; moved by MOBIKE"),
}


def of(method: str) -> Properties | None:
    """The declared properties of ``method`` (None: a method without security)."""
    if method not in METHOD_PROPERTIES:
        raise KeyError(f"method {method!r} declares no security properties (scenarios/runner/properties.py)")
    return METHOD_PROPERTIES[method]
