"""The handover methods a run compares, each declared once, here.

A :class:`Method` says what security state it needs before the move, what happens before the
detach, what happens after the attach, and how it is checked afterwards. The scenario parser, the
runner, the metrics and the report read :data:`METHODS`; none of them names a method. Adding a
method is one more :func:`register` call, for example::

    register(Method(
        name="cxtp-reactive-slow-l2",
        summary="cxtp-reactive, for a scenario that sets its own L2 delay",
        security=STATIC_TUNNEL, cxtp=True, transfer="reactive",
    ))

Everything a method's hooks do between handovers (keys, provisioning, checks) is outside the
measured interval; inside it only the agents' own protocol work happens.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the hooks receive the running experiment and the move in progress
    from scenarios.runner.experiment import Experiment, Move


@dataclasses.dataclass(frozen=True)
class Security:
    """The IPsec state a method starts from, put in place (outside any measurement) at the MN's
    current AR before its first handover, and after a fresh attach."""

    name: str
    #: the paper's static tunnel (Fig. 5, §VI-A SPIs)
    static_tunnel: bool = False
    #: the strongSwan baseline's authentication ("psk", "eap-mschapv2", "eap-md5"), or None
    ike_auth: str | None = None
    #: the MN keeps one IKE_SA with a fixed security gateway (the HA) and moves it with MOBIKE,
    #: instead of authenticating at each AR
    gateway: bool = False
    #: the IKE_SA and CHILD_SA with the nAR are set up before the move (pre-authentication)
    preauth: bool = False

    @property
    def secure(self) -> bool:
        return self.static_tunnel or self.ike_auth is not None


NO_SECURITY = Security("none")
STATIC_TUNNEL = Security("static-tunnel", static_tunnel=True)
IKE_PSK = Security("ike-psk", ike_auth="psk")
#: the same negotiation, for CXTP to move afterwards (kept apart: after a move the IKE SA stays
#: at the pAR, a state the re-authentication baseline must not start from)
IKE_PSK_FOR_CXTP = Security("ike-psk-for-cxtp", ike_auth="psk")
IKE_EAP_MSCHAPV2 = Security("ike-eap-mschapv2", ike_auth="eap-mschapv2")
IKE_EAP_MD5 = Security("ike-eap-md5", ike_auth="eap-md5")
IKE_EAP_TLS = Security("ike-eap-tls", ike_auth="eap-tls")
#: EAP-TLS against a RADIUS server that caches TLS sessions (kept apart: other daemons' configuration)
IKE_EAP_TLS_RESUMED = Security("ike-eap-tls-resumed", ike_auth="eap-tls-resumed")
#: MOBIKE (RFC 4555) to the HA: charon on the MN and the HA, one IKE_SA (pre-shared key) for the
#: run, CHILD_SA home address <-> HA in tunnel mode (scenarios/runner/baseline.py MobikeBaseline)
IKE_MOBIKE_HA = Security("ike-mobike-ha", ike_auth="mobike", gateway=True)
#: pre-authentication (make-before-break): charon on the MN and the ARs as for re-authentication, plus
#: each AR's connection for MNs on its neighbour's link (scenarios/runner/baseline.py PreauthBaseline)
IKE_PREAUTH_EAP = Security("ike-preauth-eap", ike_auth="preauth-eap-mschapv2", preauth=True)
IKE_PREAUTH_PSK = Security("ike-preauth-psk", ike_auth="preauth-psk", preauth=True)


def mobile_ipv6_path(ar: str) -> dict[str, str]:
    """Where the probes arrive once the MN is at ``ar``, when the Mobile IPv6 tunnel carries them
    (every method but MOBIKE's): the ends of the tunnel over ``ar``, by probe end."""
    from topo import plan

    return plan.new_path_interfaces(ar)


def gateway_path(ar: str) -> dict[str, str]:
    """Where the probes arrive once the MN is at ``ar`` when an ESP tunnel between the home address
    and the HA carries them: the kernel encrypts what the home address sends to the HA before the
    Mobile IPv6 tunnel could take it, and delivers a decapsulated packet on the interface its ESP
    came in on: the MN's access interface on ``ar``'s link (downlink), the HA's towards ``ar``
    (uplink). Each names the AR as the tunnel interfaces do."""
    from topo import plan

    return plan.access_path_interfaces(ar)


@dataclasses.dataclass(frozen=True)
class Method:
    name: str
    summary: str
    security: Security
    #: after the attach the MN re-homes its SAs and runs a CXTP transaction with the nAR; its
    #: SAD/SPD and the nAR's are checked against Tables I-IV
    cxtp: bool = False
    #: before the detach, ``anticipation_ms`` ahead (predictive methods)
    before_detach: Callable[[Experiment, Move], None] | None = None
    #: after the attach (the re-authentication baselines); returns figures for the record
    after_attach: Callable[[Experiment, Move], dict] | None = None
    #: part of the default comparison (the EAP baseline is in it through the default sweep)
    default: bool = True
    #: a note for the run record: how the method's state starts, what it leaves out
    note: str = ""
    #: the only method that crosses a link class, for the default sweep
    sweeps: str | None = None
    #: how a CXTP method moves the context: "predictive" (the MN asks the pAR before the move),
    #: "network" (the pAR's own trigger, before the move) or "reactive" (the nAR asks after it)
    transfer: str | None = None
    #: why the method cannot succeed with the daemons this testbed installs (None: it can); a
    #: scenario refuses it with this reason, and its kernel test keeps checking that it still holds
    unavailable: str | None = None
    #: where the probes arrive through the AR the MN is on, by probe end: the path check of every
    #: handover (:meth:`path_interfaces`); None: the Mobile IPv6 tunnels (:func:`mobile_ipv6_path`)
    arrival: Callable[[str], dict[str, str]] | None = None

    def path_interfaces(self, ar: str) -> dict[str, str]:
        """The interface each probe end receives on once the MN is attached at ``ar``."""
        return (self.arrival or mobile_ipv6_path)(ar)

    def __post_init__(self) -> None:
        if self.cxtp != (self.transfer in TRANSFERS):
            raise ValueError(f"method {self.name!r}: a CXTP method names its transfer, one of {TRANSFERS}")

    @property
    def kinds(self) -> set[str]:
        """What the analysis expects of its handovers (:data:`scenarios.analysis.metrics.TIMELINE_STEPS`)."""
        return {"cxtp", self.transfer} if self.cxtp and self.transfer else set()


TRANSFERS = ("predictive", "network", "reactive")
METHODS: dict[str, Method] = {}


def register(method: Method) -> Method:
    if method.name in METHODS:
        raise ValueError(f"method {method.name!r} is registered twice")
    METHODS[method.name] = method
    return method


def get(name: str) -> Method:
    return METHODS[name]


def names() -> tuple[str, ...]:
    return tuple(METHODS)


def default_names() -> tuple[str, ...]:
    return tuple(name for name, method in METHODS.items() if method.default)


def reference_name() -> str:
    """The method every other is compared with: the one without security."""
    return next(name for name, method in METHODS.items() if not method.security.secure)


def cxtp_names() -> tuple[str, ...]:
    return tuple(name for name, method in METHODS.items() if method.cxtp)


def reauth_names() -> tuple[str, ...]:
    """The re-authentication baselines (MOBIKE, which moves one IKE_SA, is not one; nor is
    pre-authentication, which authenticates before the move)."""
    return tuple(name for name, method in METHODS.items()
                 if method.after_attach is not None and not method.security.gateway and not method.security.preauth)


# -- hooks --------------------------------------------------------------------------------------------
def _mn_predictive(experiment: Experiment, move: Move) -> None:
    """MN-initiated predictive: the CTAR goes to the pAR, naming the nAR."""
    experiment.mn.predictive(par=move.par_address, nar=move.nar_address)


def _par_predictive(experiment: Experiment, move: Move) -> None:
    """Network-initiated: the pAR's own trigger sends the PCTD with the key."""
    experiment.ar(move.par).trigger_predictive(mn=move.mn_previous, nar=move.nar_address)


def _reauthenticate(experiment: Experiment, move: Move) -> dict:
    """A fresh IKEv2 initiation at the nAR (not a rekey), then the old SAs at the pAR (and on the
    MN) go."""
    baseline = experiment.baseline
    assert baseline is not None  # entering the method's security (IKE) started it
    result = baseline.attach(move.nar)
    baseline.detach_old(move.par)
    return result


def _reauthenticate_resumed(experiment: Experiment, move: Move) -> dict:
    """:func:`_reauthenticate`, then the method's own check: once a TLS session exists (an earlier
    EAP-TLS authentication with the RADIUS server completed), the handshake must have resumed it
    (the server answered the session the MN offered, no certificate), and have taken fewer RADIUS
    round trips than the first, full one. A handover that did not resume fails, with the reason."""
    from nodes.ike import IkeResumptionError

    result = _reauthenticate(experiment, move)
    if result.get("tls_resumption_expected") and not (
            result.get("tls_resumed") and result["radius_requests"] < result["tls_first_radius_requests"]):
        raise IkeResumptionError(result)
    return result


def _mobike_update(experiment: Experiment, move: Move) -> dict:
    """MOBIKE: the MN's charon updates its one IKE_SA and CHILD_SA to the new care-of address on its
    own (its kernel's address and route events); the baseline waits for the update (``ike-update``
    from charon, the CHILD_SA's new outer addresses in both kernels), then checks that nothing of the
    previous care-of address is left."""
    baseline = experiment.baseline
    assert baseline is not None  # entering the method's security started it
    result = baseline.attach(move.nar)
    baseline.detach_old(move.par)
    return result


def _attach_ahead(experiment: Experiment, move: Move) -> None:
    """Before the detach (``anticipation_ms`` ahead), the MN still at the pAR: the IKE_SA and
    CHILD_SA with the nAR for its future care-of address, through the pAR (the pre-authentication
    baseline's :meth:`attach` at an AR the MN is not on). After the attach the method is
    :func:`_reauthenticate`'s sequence, whose attach at the pre-authenticated nAR negotiates
    nothing."""
    baseline = experiment.baseline
    assert baseline is not None  # entering the method's security (IKE) started it
    baseline.attach(move.nar)


def _attach_ahead_called_off(experiment: Experiment, move: Move) -> None:
    """An anticipated move called off: the pre-authentication with the nAR, then its SAs removed
    unused (:meth:`detach_old` of the nAR; the baseline keeps what it cost for the record of the
    move that follows, which re-authenticates)."""
    baseline = experiment.baseline
    assert baseline is not None
    baseline.attach(move.nar)
    baseline.detach_old(move.nar)


# -- the methods ---------------------------------------------------------------------------------------
register(Method("none", "no security: attach, Binding Update; the reference line", NO_SECURITY))
register(Method("cxtp-predictive",
                "MN-initiated predictive: CTAR to the pAR before the move (PCTD to the nAR), CTAR to the "
                "nAR after it (activation, CTAA, CTDR)",
                STATIC_TUNNEL, cxtp=True, transfer="predictive", before_detach=_mn_predictive))
register(Method("cxtp-reactive",
                "MN-initiated reactive: after the move, CTAR to the nAR, CT-Req to the pAR, CTD back, "
                "activation, CTAA, CTDR", STATIC_TUNNEL, cxtp=True, transfer="reactive"))
register(Method("cxtp-network",
                "network-initiated by the pAR (predictive): PCTD with key material on the pAR's trigger, "
                "then the MN's CTAR to the nAR activates it", STATIC_TUNNEL, cxtp=True, transfer="network",
                before_detach=_par_predictive))
register(Method("cxtp-reactive-ike",
                "cxtp-reactive starting from SAs that IKEv2 (PSK) negotiated at the pAR", IKE_PSK_FOR_CXTP,
                cxtp=True, transfer="reactive",
                default=False,
                note="SAs and policies negotiated by IKEv2 (PSK, strongSwan) at the pAR; CXTP moves the kernel "
                     "SAs and policies; the IKE SA stays behind at the pAR and is not moved"))
register(Method("reauth-eap",
                "full re-authentication: a fresh IKEv2 initiation at the nAR with EAP-MSCHAPv2 relayed to "
                "RADIUS; then the old SAs at the pAR are removed", IKE_EAP_MSCHAPV2,
                after_attach=_reauthenticate, sweeps="ar_aaa"))
register(Method("reauth-eap-md5", "the same with EAP-MD5", IKE_EAP_MD5, after_attach=_reauthenticate,
                default=False, sweeps="ar_aaa"))
register(Method("reauth-eap-tls",
                "the same with EAP-TLS: the MN's client certificate and the RADIUS server's, both from the "
                "testbed's CA", IKE_EAP_TLS, after_attach=_reauthenticate, default=False, sweeps="ar_aaa"))
register(Method("reauth-eap-tls-resumed",
                "EAP-TLS with the RADIUS server's TLS session cache: after the first authentication each "
                "handshake must resume the session (abbreviated handshake), or the handover fails",
                IKE_EAP_TLS_RESUMED, after_attach=_reauthenticate_resumed, default=False, sweeps="ar_aaa",
                note="FreeRADIUS caches EAP-TLS sessions; a handover whose RADIUS exchange shows a full TLS "
                     "handshake after an earlier authentication fails ('not resumed')",
                unavailable="strongSwan 5.9.8's EAP-TLS client keeps no TLS session cache, so it never offers a "
                            "session to resume (docs/baseline.md)"))
register(Method("reauth-psk", "the same with a pre-shared key and no AAA: the cheaper baseline", IKE_PSK,
                after_attach=_reauthenticate))
register(Method("mobike",
                "MOBIKE to the HA: one IKE_SA (PSK) for the whole run, CHILD_SA home address <-> HA; at each move "
                "the MN's charon updates its addresses (UPDATE_SA_ADDRESSES, one INFORMATIONAL exchange)",
                IKE_MOBIKE_HA, after_attach=_mobike_update, default=False, arrival=gateway_path,
                note="ESP between the MN and the HA (strongSwan MOBIKE, RFC 4555) instead of the paper's access SAs; "
                     "the ARs forward ESP and IKE between their access link and the HA; probes arrive on the access "
                     "interfaces, not on the Mobile IPv6 tunnel"))
register(Method("preauth-eap",
                "pre-authentication (make-before-break): before the move the MN sets up the IKE_SA (EAP-MSCHAPv2 "
                "relayed to RADIUS) and the CHILD_SA with the nAR through the pAR, for its future care-of address; "
                "after the attach nothing is negotiated; then the old SAs at the pAR are removed",
                IKE_PREAUTH_EAP, before_detach=_attach_ahead, after_attach=_reauthenticate, default=False,
                sweeps="ar_aaa",
                note="IKE_SA and CHILD_SA with the nAR negotiated anticipation_ms before the detach through the pAR "
                     "(traffic selectors: the future care-of address <-> HA), outer addresses moved to the future "
                     "care-of address before the detach (XFRM_MSG_MIGRATE, followed by both charons)"))
register(Method("preauth-psk", "the same with a pre-shared key and no AAA", IKE_PREAUTH_PSK,
                before_detach=_attach_ahead, after_attach=_reauthenticate, default=False,
                note="IKE_SA and CHILD_SA with the nAR negotiated anticipation_ms before the detach through the pAR"))
register(Method("preauth-eap-cancelled",
                "an anticipated move called off: preauth-eap's pre-authentication with the nAR, torn down "
                "unused; the MN then moves unanticipated and re-authenticates as reauth-eap",
                IKE_PREAUTH_EAP, before_detach=_attach_ahead_called_off, after_attach=_reauthenticate,
                default=False, sweeps="ar_aaa",
                note="each handover spends one pre-authentication (its RADIUS Access-Requests in "
                     "reauth.cancelled_preauth) and then re-authenticates"))
