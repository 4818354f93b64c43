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
    return tuple(name for name, method in METHODS.items() if method.after_attach is not None)


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
register(Method("reauth-psk", "the same with a pre-shared key and no AAA: the cheaper baseline", IKE_PSK,
                after_attach=_reauthenticate))
