"""The re-authentication baseline on the testbed: which node runs what, the IKE connections in the
testbed's addressing plan, the attach at an AR and the clean-up after a move.

Runner code: it knows the topology (:mod:`topo.plan`) and drives daemons of :mod:`nodes.ike`
(charon, over VICI) and :mod:`nodes.radius` (FreeRADIUS) in the testbed's hosts; ``nodes`` knows
nothing of the topology. ``python -m scenarios.runner.baseline --dry-run METHOD`` prints every daemon's
configuration, the connections and credentials loaded over VICI, and the certificates ``pki`` would
make, without starting anything.

EAP-TLS (``eap-tls``, ``eap-tls-resumed``): the testbed's CA (:func:`nodes.pki.make_authority`)
issues the RADIUS server's certificate (identity :data:`AAA_IDENTITY`) and the MN's client
certificate (identity ``plan.MN_IDENTITY``); the MN trusts the CA and names the server it expects
(``aaa_id``), FreeRADIUS trusts the CA for the client. ``eap-tls-resumed`` turns FreeRADIUS's TLS
session cache on; every attach after the first completed EAP-TLS authentication of a baseline is
then expected to resume the session, and :meth:`IkeBaseline.attach` reports from the RADIUS
packets whether it did (``tls_resumed``, ``tls_resumption_expected``).

MOBIKE (``mobike``, :class:`MobikeBaseline`; ``IkeBaseline(..., method="mobike")`` makes one): no
re-authentication at all. charon runs on the MN and on the HA, the fixed security gateway that
already ends the MN's Mobile IPv6 tunnel; the MN keeps one IKE_SA with it for the whole run
(pre-shared key), whose CHILD_SA protects the home address <-> HA in tunnel mode, outer addresses
care-of address <-> HA. At each move the MN's charon learns of its new address from the kernel
(kernel-netlink's address and route events) and updates the IKE and CHILD SAs with an
INFORMATIONAL exchange (UPDATE_SA_ADDRESSES, RFC 4555 §3.5). The ARs forward ESP and IKE between
their access link and the HA (:func:`nodes.operator_policy.gateway_access_policies`), installed
while the baseline runs.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vici.exception import CommandException, SessionException

from nodes import netns, operator_policy, provisioning
from nodes import pki as pki_module
from nodes.ike import (
    AR_CONNECTION,
    COMMON_CONNECTION_OPTIONS,
    METHODS,
    MULTI_MN_METHODS,
    PREAUTH_METHODS,
    BaselineParams,
    Charon,
    EventListener,
    IkeAttachError,
    IkeError,
    IkeStartError,
    PacketCounter,
    _child,
    _decode,
    classify_failure,
    ike_exchanges,
    log_seconds_to_monotonic_ns,
    mobike_steps,
    needs_aaa,
    request,
    summarize_eap_tls,
    summarize_ike,
    summarize_ike_sa,
    summarize_radius,
)
from nodes.radius import FreeRadius, RadiusConfig, RadiusTls
from topo import plan

AR_NODES = plan.ACCESS_ROUTERS
CHARON_NODES = (plan.MN, *AR_NODES)
#: the RADIUS server's identity in its EAP-TLS certificate, which the MN requires (``aaa_id``)
AAA_IDENTITY = plan.AAA
CA_NAME = "testbed CA"


def mn_connection_name(ar: str) -> str:
    return f"to-{ar}"


def mn_connection(ar: str, params: BaselineParams, ar_cert_pem: bytes | None,
                  mn_cert_pem: bytes | None = None, mn: int = 0) -> dict[str, Any]:
    """MN ``mn``'s connection to ``ar``: from its CoA there to the AR's access address, under its
    own identity. EAP-TLS adds the MN's client certificate (``mn_cert_pem``) and the RADIUS
    server's identity to require."""
    identity = plan.mn_identity(mn)
    if params.eap:
        local: dict[str, Any] = {"auth": params.eap_method, "id": identity, "eap_id": identity}
        if ar_cert_pem is None:
            raise ValueError("EAP needs the AR's certificate to pin")
        remote: dict[str, Any] = {"auth": "pubkey", "id": ar, "certs": [ar_cert_pem]}
        if params.tls:
            if mn_cert_pem is None:
                raise ValueError("EAP-TLS needs the MN's client certificate")
            # the EAP round is the MN's own: the server identity EAP-TLS requires is set there
            local.update(certs=[mn_cert_pem], aaa_id=AAA_IDENTITY)
    else:
        local = {"auth": "psk", "id": identity}
        remote = {"auth": "psk", "id": ar}
    return {
        **COMMON_CONNECTION_OPTIONS,
        # The static local address keeps charon from "roaming" the old IKE_SA.
        "local_addrs": [plan.mn_coa(mn, ar)],
        "remote_addrs": [plan.AR_ACCESS_ADDRESS[ar]],
        "keyingtries": "1",
        "local-1": local,
        "remote-1": remote,
        "children": {mn_connection_name(ar): _child("dynamic", f"{plan.HA_ADDRESS}/128")},
    }


def ar_connection(ar: str, params: BaselineParams, ar_cert_pem: bytes | None, mns: int = 1) -> dict[str, Any]:
    """The AR's responder connection for any MN on its access link (with a pre-shared key, the
    one MN's identity; with several, any identity the key's owners name)."""
    if params.eap:
        if ar_cert_pem is None:
            raise ValueError("EAP needs the AR's certificate")
        local = {"auth": "pubkey", "id": ar, "certs": [ar_cert_pem]}
        # The MN's IKE identity is its EAP identity (no EAP-Identity round); RADIUS picks the method.
        remote = {"auth": "eap-radius", "id": "%any"}
    else:
        local = {"auth": "psk", "id": ar}
        remote = {"auth": "psk", "id": plan.MN_IDENTITY if mns == 1 else "%any"}
    return {
        **COMMON_CONNECTION_OPTIONS,
        "local_addrs": [plan.AR_ACCESS_ADDRESS[ar]],
        "remote_addrs": [plan.ACCESS_PREFIX[ar]],
        "unique": "never",
        "local-1": local,
        "remote-1": remote,
        "children": {AR_CONNECTION: _child(f"{plan.HA_ADDRESS}/128", "dynamic")},
    }


def shared_secrets(node: str, params: BaselineParams, identities: tuple[str, ...] = (plan.MN_IDENTITY,),
                   ) -> list[dict[str, Any]]:
    """``load-shared`` messages for ``node``: an MN's for its own identity (``identities``), an
    AR's for every MN's."""
    secrets = []
    if params.auth == "psk":
        secrets.append({"id": f"psk-{node}", "type": "IKE", "data": params.psk,
                        "owners": [*identities, *AR_NODES]})
    elif node not in AR_NODES and not params.tls:
        secrets.append({"id": "eap-mn", "type": "EAP", "data": params.password, "owners": list(identities)})
    return secrets


def radius_tls(params: BaselineParams, pki_dir: Path) -> RadiusTls | None:
    """FreeRADIUS's EAP-TLS side: the files :func:`nodes.pki.issue_credential` makes in ``pki_dir``."""
    if not params.tls:
        return None
    return RadiusTls(certificate_file=pki_dir / f"{AAA_IDENTITY}.cert.pem",
                     private_key_file=pki_dir / f"{AAA_IDENTITY}.key.pem",
                     ca_file=pki_dir / f"{CA_NAME.replace(' ', '-')}.cert.pem",
                     session_cache=params.tls_resumption)


def radius_configuration(params: BaselineParams, pki_dir: Path,
                         identities: tuple[str, ...] = (plan.MN_IDENTITY,)) -> RadiusConfig:
    return RadiusConfig(address=plan.AAA_ADDRESS, secret=params.radius_secret,
                        users=dict.fromkeys(identities, params.radius_password or params.password),
                        method=params.eap_method if params.eap else "eap-mschapv2",
                        tls=radius_tls(params, pki_dir))


def charon_options(node: str, params: BaselineParams) -> tuple[tuple[str, str] | None, bool]:
    """(the RADIUS server an AR relays EAP to, whether the node is an EAP-TLS peer)."""
    radius = (plan.AAA_ADDRESS, params.radius_secret) if node in AR_NODES and params.aaa else None
    return radius, node == plan.MN and params.tls


class IkeBaseline:
    """IKEv2 (+ EAP through RADIUS) on the testbed: daemons, attach, and handover clean-up.
    ``method="mobike"`` makes a :class:`MobikeBaseline` (the runner starts every IKE state the same
    way)."""

    def __new__(cls, *args: Any, **kwargs: Any) -> IkeBaseline:
        method = kwargs.get("method", args[2] if len(args) > 2 else None)
        if cls is IkeBaseline and method == "mobike":
            return super().__new__(MobikeBaseline)
        if cls is IkeBaseline and method in PREAUTH_METHODS:
            return super().__new__(PreauthBaseline)
        return super().__new__(cls)

    def __init__(self, testbed, workdir: Path, method: str = "eap-mschapv2",
                 password: str = "testbed-secret", aaa: bool = True, *,
                 radius_password: str | None = None, psk: str = "testbed-psk-0123456789",
                 radius_secret: str = "testbed-radius", initiate_timeout_ms: int = 30_000, mns: int = 1):
        """``mns``: the testbed's first MNs that get a charon of their own (a storm's; MN 0's is
        the Mininet host's, the others' run in their cell namespaces), each with its own identity,
        care-of addresses and credentials, each authenticated by the ARs' one charon."""
        self.testbed = testbed
        self.mns = mns
        if mns > 1 and method not in MULTI_MN_METHODS:
            raise IkeError(f"a baseline of several MNs runs one of {MULTI_MN_METHODS} (re-authentication), "
                           f"not {method!r}: EAP-TLS would need a client certificate per MN, MOBIKE and "
                           "pre-authentication keep one MN's state")
        self.workdir = Path(workdir)
        self.params = BaselineParams(method=method, password=password, radius_password=radius_password,
                                     psk=psk, radius_secret=radius_secret, aaa=aaa,
                                     initiate_timeout_ms=initiate_timeout_ms)
        self.charons: dict[str, Charon] = {}
        self.radius: FreeRadius | None = None
        self.listener: EventListener | None = None
        self.ike_counter: PacketCounter | None = None
        #: MNs 1.. (``mns``): each one's charon events and IKE packets (MN 0's are the two above)
        self.mn_listeners: dict[int, EventListener] = {}
        self.mn_ike_counters: dict[int, PacketCounter] = {}
        #: the ARs' VICI sessions serve the threads of a storm, one request at a time
        self._session_locks = {node: threading.Lock() for node in AR_NODES}
        self.radius_counters: dict[str, PacketCounter] = {}
        self.certificates: dict[str, pki_module.Credential] = {}
        self.authority: pki_module.Authority | None = None
        self.attached_to: set[str] = set()
        #: EAP-TLS authentications completed since the daemons started (the warm-up's included)
        self.tls_authentications = 0
        #: the RADIUS round trips of the first (full) EAP-TLS authentication
        self.tls_first_radius_requests: int | None = None

    # -- life cycle ---------------------------------------------------------------------------
    def start(self, warm_up: bool = True) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        try:
            self._warm_up_kernel_crypto()
            if self.params.eap:
                for ar in AR_NODES:
                    self.certificates[ar] = pki_module.make_server_credential(self.workdir / "pki", ar)
            if self.params.tls:
                self.authority = pki_module.make_authority(self.workdir / "pki", CA_NAME)
                self.certificates[plan.AAA] = pki_module.issue_credential(
                    self.workdir / "pki", self.authority, AAA_IDENTITY, "serverAuth")
                self.certificates[plan.MN] = pki_module.issue_credential(
                    self.workdir / "pki", self.authority, plan.MN_IDENTITY, "clientAuth")
            if self.params.aaa:
                radius_config = radius_configuration(self.params, self.workdir / "pki", self.identities)
                self.radius = FreeRadius(self.testbed.host(plan.AAA), radius_config, self.workdir / plan.AAA)
                self.radius.start()
            for node in CHARON_NODES:
                charon = Charon(self.testbed.host(node), node, self.workdir / node, *charon_options(node, self.params))
                self.charons[node] = charon
                charon.start()
            for index in range(1, self.mns):
                node = plan.mn_node(index)
                self.charons[node] = Charon(self.testbed.mn_host(index), node, self.workdir / node, None)
                self.charons[node].start()
            self._load()
            self.listener = EventListener(self.charons[plan.MN])
            self.ike_counter = PacketCounter(self.testbed.pid(plan.MN), (500, 4500))
            for index in range(1, self.mns):
                self.mn_listeners[index] = EventListener(self.charons[plan.mn_node(index)])
                self.mn_ike_counters[index] = PacketCounter(self.testbed.mn_target(index), (500, 4500))
            if self.params.aaa and self.mns == 1:  # with several MNs, a storm's capture at the AAA node
                for ar in AR_NODES:
                    self.radius_counters[ar] = PacketCounter(self.testbed.pid(ar), (1812,))
            if warm_up:
                ar = self.testbed.current_ar
                self.attach(ar)
                self.detach_old(ar)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        for listener in [self.listener, *self.mn_listeners.values()]:
            if listener is not None:
                listener.stop()
        self.listener, self.mn_listeners = None, {}
        for counter in [self.ike_counter, *self.mn_ike_counters.values(), *self.radius_counters.values()]:
            if counter is not None:
                counter.close()
        self.ike_counter, self.mn_ike_counters, self.radius_counters = None, {}, {}
        for charon in self.charons.values():
            charon.stop()
        self.charons = {}
        if self.radius is not None:
            self.radius.stop()
            self.radius = None
        self.attached_to = set()
        self.tls_authentications, self.tls_first_radius_requests = 0, None

    def __enter__(self) -> IkeBaseline:
        self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def _warm_up_kernel_crypto(self) -> None:
        """The CHILD_SA's algorithms (ESP_PROPOSAL: AES-CBC, HMAC-SHA256-128) are the testbed's
        default profile: pay their first SA in the MN's namespace before any attach is timed."""
        from ipsec.xfrm import Xfrm

        with Xfrm(netns=f"/proc/{self.testbed.pid(plan.MN)}/ns/net") as xfrm:
            provisioning.warm_up_crypto(xfrm, ("aes-cbc-sha256",))

    @property
    def identities(self) -> tuple[str, ...]:
        return tuple(plan.mn_identity(index) for index in range(self.mns))

    def _load(self) -> None:
        params = self.params
        mn_index = {plan.mn_node(index): index for index in range(self.mns)}
        for node, charon in self.charons.items():
            session = charon.session
            assert session is not None
            try:
                own = (plan.mn_identity(mn_index[node]),) if node in mn_index else self.identities
                for secret in shared_secrets(node, params, own):
                    request(session, "load-shared", secret)
                if node in mn_index:
                    mn_cert = None
                    if params.tls:
                        assert self.authority is not None
                        request(session, "load-cert", {"type": "x509", "flag": "ca", "data": self.authority.cert_pem})
                        request(session, "load-key", {"type": "any", "data": self.certificates[plan.MN].key_pem})
                        mn_cert = self.certificates[plan.MN].cert_pem
                    for ar in AR_NODES:
                        cert = self.certificates[ar].cert_pem if params.eap else None
                        request(session, "load-conn", {mn_connection_name(ar): mn_connection(
                            ar, params, cert, mn_cert, mn_index[node])})
                else:
                    cert = None
                    if params.eap:
                        credential = self.certificates[node]
                        request(session, "load-key", {"type": "any", "data": credential.key_pem})
                        cert = credential.cert_pem
                    request(session, "load-conn", {AR_CONNECTION: ar_connection(node, params, cert, self.mns)})
            except CommandException as error:
                raise IkeStartError(f"loading the configuration into charon on {node} failed: {error}") from error

    # -- measurements -------------------------------------------------------------------------
    def attach(self, ar: str, mn: int = 0) -> dict:
        """Authenticate MN ``mn`` from scratch at ``ar`` and install the CHILD_SA (its CoA <-> HA
        through ``ar``).

        Returns ``initiate_sent_ns``, ``child_installed_ns`` (arrival of the MN's child-updown
        event), ``initiate_returned_ns``, ``elapsed_ms`` and the packet counts of the attempt.
        Raises :class:`IkeAuthenticationError` when credentials are refused, :class:`IkeAttachError`
        otherwise; no SA is left behind on the MN or the AR after a failure.
        """
        return self._attach(ar, mn, summarize=True)

    def attach_unsummarized(self, ar: str, mn: int) -> dict:
        """:meth:`attach`, with the IKE packets kept (``ike_packets``) for :meth:`summarize_attach`
        to read later, outside a storm's measured interval."""
        return self._attach(ar, mn, summarize=False)

    def _attach(self, ar: str, mn: int, summarize: bool) -> dict:
        if ar not in AR_NODES:
            raise ValueError(f"unknown AR {ar!r}")
        radius_counter = self.radius_counters.get(ar)

        def failed(kind: type[IkeAttachError], reason: str, error: CommandException, log: str,
                   after_ms: float) -> IkeError:
            self._clean_after_failure(ar, mn)
            return kind(ar, f"{reason} ({error}; after {after_ms:.1f} ms)", log)

        initiate_sent_ns, initiate_returned_ns, child_installed_ns = self._initiate_connection(
            mn_connection_name(ar), radius_counter, failed, mn)
        _, counter = self._events_and_packets(mn)
        assert counter is not None  # _initiate_connection checked it
        if mn == 0:
            self.attached_to.add(ar)
        result: dict[str, Any] = {
            "ar": ar,
            "method": self.params.method,
            "initiate_sent_ns": initiate_sent_ns,
            "child_installed_ns": child_installed_ns,
            "initiate_returned_ns": initiate_returned_ns,
            "elapsed_ms": (child_installed_ns - initiate_sent_ns) / 1e6,
        }
        if summarize:
            result.update(summarize_ike(counter.drain()))
        else:
            result["ike_packets"] = counter.drain()
        if radius_counter is not None:
            packets = radius_counter.drain()
            radius = summarize_radius(packets)
            result.update(radius)
            if self.params.tls:
                result.update(summarize_eap_tls(packets))
                # a session to resume exists once one EAP-TLS authentication with this server completed
                result["tls_resumption_expected"] = self.params.tls_resumption and self.tls_authentications > 0
                if self.tls_authentications == 0:
                    self.tls_first_radius_requests = radius["radius_requests"]
                result["tls_first_radius_requests"] = self.tls_first_radius_requests
                self.tls_authentications += 1
        return result

    def _initiate_connection(self, name: str, radius_counter: Any, failed: Callable[[type[IkeAttachError], str,
                                                                      CommandException, str, float], IkeError],
                             mn: int = 0) -> tuple[int, int, int]:
        """The MN's charon initiates connection ``name`` (its IKE_SA and CHILD_SA), with the IKE and
        RADIUS counters drained first so that they count this exchange only. Returns when the
        CHILD_SA is up: (initiate sent, initiate returned, CHILD_SA installed), ns. A refusal is
        classified from charon's log and raised as what ``failed`` makes of it (after its clean-up)."""
        charon = self.charons[plan.mn_node(mn)]
        listener, counter = self._events_and_packets(mn)
        assert charon.session is not None and listener is not None and counter is not None
        listener.clear()
        counter.drain()
        if radius_counter is not None:
            radius_counter.drain()
        log_offset = charon.log_size()
        message = {"child": name, "ike": name, "timeout": str(self.params.initiate_timeout_ms),
                   "init-limits": "no", "loglevel": "-1"}
        sent_ns = time.monotonic_ns()
        try:
            request(charon.session, "initiate", message)
        except CommandException as error:
            after_ms = (time.monotonic_ns() - sent_ns) / 1e6
            log = charon.log_since(log_offset)
            kind, reason = classify_failure(log)
            raise failed(kind, reason, error, log, after_ms) from error
        returned_ns = time.monotonic_ns()
        installed_ns, _ = listener.wait_for(
            "child-updown", lambda m: m.get("up") == "yes" and name in m, timeout=10.0)
        return sent_ns, returned_ns, installed_ns

    def _events_and_packets(self, mn: int) -> tuple[EventListener | None, PacketCounter | None]:
        """MN ``mn``'s charon events and IKE packets."""
        if mn == 0:
            return self.listener, self.ike_counter
        return self.mn_listeners[mn], self.mn_ike_counters[mn]

    def set_mn_password(self, password: str) -> None:
        """Replace the EAP password the MN presents (RADIUS keeps its own): for refusal tests."""
        if not self.params.eap or self.params.tls:
            raise IkeError(f"the MN has no EAP password in the {self.params.method} baseline")
        session = self.charons[plan.MN].session
        assert session is not None
        request(session, "load-shared", {"id": "eap-mn", "type": "EAP", "data": password,
                                         "owners": [plan.MN_IDENTITY]})

    def _mn_sas(self, node: str, ike: str, ar: str, mn: int) -> list[dict]:
        """``node``'s IKE_SAs of connection ``ike`` with MN ``mn`` at ``ar`` (on the AR, whose one
        connection serves every MN, those whose peer is that MN's care-of address there)."""
        session = self.charons[node].session
        assert session is not None  # open while the baseline runs
        if node not in AR_NODES:
            return [sa for entry in session.list_sas({"ike": ike}) for sa in _decode(entry).values()]
        coa = ipaddress.ip_address(plan.mn_coa(mn, ar))
        with self._session_locks[node]:
            entries = [_decode(entry) for entry in session.list_sas({"ike": ike})]
        return [sa for entry in entries for sa in entry.values()
                if ipaddress.ip_address(_host_of(sa.get("remote-host"))) == coa]

    def _terminate_sa(self, node: str, sa: dict) -> None:
        session = self.charons[node].session
        assert session is not None
        message = {"ike-id": sa["uniqueid"], "force": "yes", "timeout": "-1", "loglevel": "-1"}
        with self._session_locks.get(node, contextlib.nullcontext()):  # an MN's: its own thread only
            request(session, "terminate", message)

    def _clean_after_failure(self, ar: str, mn: int = 0) -> None:
        """After a refused attach: every IKE_SA of MN ``mn`` (its own charon's), and ``ar``'s with it."""
        mn_node = plan.mn_node(mn)
        try:
            self.charons[mn_node].terminate_all()
            for sa in self._mn_sas(ar, AR_CONNECTION, ar, mn):
                self._terminate_sa(ar, sa)
        except (CommandException, SessionException, OSError):
            pass

    def detach_old(self, ar: str, mn: int = 0) -> None:
        """Remove the IKE and CHILD SAs between MN ``mn`` and ``ar`` on both sides, at once (force:
        no waiting for the DELETE exchange, the MN may no longer reach ``ar``)."""
        name = mn_connection_name(ar)
        for node, ike in ((ar, AR_CONNECTION), (plan.mn_node(mn), name)):
            for sa in self._mn_sas(node, ike, ar, mn):
                try:
                    self._terminate_sa(node, sa)
                except CommandException as error:
                    # The peer's DELETE (sent by the terminate on the other side) may win.
                    if "no matching SAs" not in str(error):
                        raise IkeError(f"terminating the IKE_SA {ike} on {node} failed: {error}") from error
        self.wait_no_sas(ar, mn=mn)
        if mn == 0:
            self.attached_to.discard(ar)

    def forget_mn(self, mn: int) -> None:
        """Nothing of MN ``mn`` left in any charon or kernel (a failed MN's recovery)."""
        for ar in AR_NODES:
            self._clean_after_failure(ar, mn)
        for ar in AR_NODES:
            self.wait_no_sas(ar, mn=mn)
            if mn == 0:
                self.attached_to.discard(ar)

    @staticmethod
    def summarize_attach(result: dict) -> None:
        """The IKE figures of an attach made with ``summarize=False``, in place."""
        if "ike_packets" in result:
            result.update(summarize_ike(result.pop("ike_packets")))

    def of_mn(self, mn: int, deferred: bool = False) -> MnBaseline:
        return MnBaseline(self, mn, deferred)

    def wait_no_sas(self, ar: str, timeout: float = 5.0, mn: int = 0) -> None:
        """Wait until neither MN ``mn``'s nor ``ar``'s charon lists an IKE_SA between them and
        neither kernel holds an XFRM state or policy for the MN's CoA at ``ar`` (charon removes an
        IKE_SA from its list before it deletes the kernel state)."""
        name = mn_connection_name(ar)
        mn_node = plan.mn_node(mn)
        deadline = time.monotonic() + timeout
        while True:
            left = [node for node, ike in ((ar, AR_CONNECTION), (mn_node, name)) if self._mn_sas(node, ike, ar, mn)]
            left += [f"{node} kernel" for node in (ar, mn_node) if self._kernel_holds(node, ar, mn)]
            if not left:
                return
            if time.monotonic() > deadline:
                raise IkeError(f"SAs between {mn_node} and {ar} still present on {left} after {timeout} s")
            time.sleep(0.02)

    def _kernel_holds(self, node: str, ar: str, mn: int = 0) -> bool:
        """Whether ``node``'s kernel has an XFRM state or policy for MN ``mn``'s CoA at ``ar``."""
        from ipsec.xfrm import Xfrm

        coa = plan.mn_coa(mn, ar)
        namespace = (f"/proc/{self.testbed.pid(node)}/ns/net" if node in AR_NODES
                     else self.testbed.mn_namespace_file(mn))
        with Xfrm(netns=namespace) as xfrm:
            if any(coa in (state.saddr, state.daddr) for state in xfrm.dump_sas()):
                return True
            return any(policy.dir < 3 and coa in (policy.selector.saddr, policy.selector.daddr)
                       for policy in xfrm.dump_policies())

    def _kernel_names(self, node: str, address: str, peer: str | None = None) -> bool:
        """Whether ``node``'s kernel has an SA or a policy (selector or template) naming ``address``
        (with ``peer``: an SA or template between the two)."""
        from ipsec.xfrm import Xfrm

        def names(saddr: str, daddr: str) -> bool:
            return address in (saddr, daddr) and (peer is None or peer in (saddr, daddr))

        with Xfrm(netns=f"/proc/{self.testbed.pid(node)}/ns/net") as xfrm:
            if any(names(state.saddr, state.daddr) for state in xfrm.dump_sas()):
                return True
            return any(policy.dir < 3 and ((peer is None and address in (policy.selector.saddr, policy.selector.daddr))
                                           or any(names(template.saddr, template.daddr)
                                                  for template in policy.templates))
                       for policy in xfrm.dump_policies())

    # -- inspection (tests, reports) ----------------------------------------------------------
    def list_sas(self, node: str) -> list[dict]:
        return [_decode(entry) for entry in self.charons[node].sas()]


class MnBaseline:
    """One MN of a baseline of several, in the names the re-authentication hooks call.

    ``deferred`` (a storm's): what only the runner needs waits for :meth:`finish`, after the
    storm, so that it does not load the one CPU while other MNs still hand over: the IKE packets'
    summary, and the removal of the pAR's SAs with the check that they are gone (a real MN's
    charon would send a DELETE, or the pAR's would expire them; the probes, which the
    interruption is measured by, already take the new path)."""

    def __init__(self, baseline: IkeBaseline, mn: int, deferred: bool = False) -> None:
        self.baseline, self.mn, self.deferred = baseline, mn, deferred
        self._attached: list[dict] = []
        self._old: list[str] = []

    def attach(self, ar: str) -> dict:
        if not self.deferred:
            return self.baseline.attach(ar, mn=self.mn)
        result = self.baseline.attach_unsummarized(ar, self.mn)
        self._attached.append(result)
        return result

    def detach_old(self, ar: str) -> None:
        if self.deferred:
            self._old.append(ar)
        else:
            self.baseline.detach_old(ar, mn=self.mn)

    def finish(self) -> None:
        """What a deferred view left: the attaches' IKE figures, then the old SAs removed."""
        attached, old, self._attached, self._old = self._attached, self._old, [], []
        for result in attached:
            self.baseline.summarize_attach(result)
        for ar in old:
            self.baseline.detach_old(ar, mn=self.mn)


# -- MOBIKE to the HA --------------------------------------------------------------------------------
#: the fixed security gateway: the HA, which already ends the MN's Mobile IPv6 tunnel and is the one
#: peer the MN keeps wherever it is attached
GATEWAY = plan.HA
GATEWAY_NODES = (plan.MN, GATEWAY)
GATEWAY_IDENTITY = GATEWAY
MN_GATEWAY_CONNECTION = "home"     # the MN's connection and CHILD_SA to the HA
HA_GATEWAY_CONNECTION = "mobile"   # the HA's, for the MN
#: how long after the attach the MN's charon may take to update the IKE_SA's addresses
UPDATE_TIMEOUT_S = 10.0


def gateway_interfaces(node: str) -> tuple[str, ...]:
    """The interfaces charon uses and watches under MOBIKE: the MN's access interfaces (its care-of
    addresses; not the loopback's home address nor the tunnels), the HA's loopback (its address)."""
    if node == plan.MN:
        return tuple(plan.LINKS_BY_NAME[plan.ACCESS_LINK[ar]].interface(plan.MN) for ar in AR_NODES)
    return ("lo",)


def _gateway_child(local_ts: str, remote_ts: str) -> dict[str, Any]:
    """The CHILD_SA between the home address and the HA, tunnel mode; its policies take precedence
    over the MN's bypass of its home address (:data:`nodes.operator_policy.PRIORITY_GATEWAY_TUNNEL`)."""
    return {**_child(local_ts, remote_ts), "priority": str(operator_policy.PRIORITY_GATEWAY_TUNNEL)}


def mn_gateway_connection(params: BaselineParams) -> dict[str, Any]:
    """The MN's connection to the HA: no fixed local address (charon takes the source its route to
    the HA gives, and follows it from care-of address to care-of address), MOBIKE on; traffic
    selectors home address/128 <-> HA/128."""
    return {
        **COMMON_CONNECTION_OPTIONS,
        "mobike": "yes",
        "remote_addrs": [plan.HA_ADDRESS],
        "keyingtries": "1",
        "local-1": {"auth": "psk", "id": plan.MN_IDENTITY},
        "remote-1": {"auth": "psk", "id": GATEWAY_IDENTITY},
        "children": {MN_GATEWAY_CONNECTION: _gateway_child(f"{plan.MN_HOME_ADDRESS}/128", f"{plan.HA_ADDRESS}/128")},
    }


def ha_gateway_connection(params: BaselineParams) -> dict[str, Any]:
    """The HA's responder connection for the MN on any access link."""
    return {
        **COMMON_CONNECTION_OPTIONS,
        "mobike": "yes",
        "local_addrs": [plan.HA_ADDRESS],
        "remote_addrs": [plan.ACCESS_PREFIX[ar] for ar in AR_NODES],
        "local-1": {"auth": "psk", "id": GATEWAY_IDENTITY},
        "remote-1": {"auth": "psk", "id": plan.MN_IDENTITY},
        "children": {HA_GATEWAY_CONNECTION: _gateway_child(f"{plan.HA_ADDRESS}/128", f"{plan.MN_HOME_ADDRESS}/128")},
    }


def gateway_secrets(node: str, params: BaselineParams) -> list[dict[str, Any]]:
    return [{"id": f"psk-{node}", "type": "IKE", "data": params.psk, "owners": [plan.MN_IDENTITY, GATEWAY_IDENTITY]}]


def gateway_access(ar: str) -> tuple:
    """What ``ar`` lets through between its access link and the gateway while MOBIKE runs."""
    return operator_policy.gateway_access_policies(plan.ACCESS_PREFIX[ar], plan.HA_ADDRESS)


def _host_of(value: Any) -> str:
    return str(value).split("[")[0]


class MobikeBaseline(IkeBaseline):
    """MOBIKE (RFC 4555) to the HA: one IKE_SA for the whole run, set up by the first :meth:`attach`
    (IKE_SA_INIT, IKE_AUTH with a pre-shared key); every later :meth:`attach` waits for the MN's
    charon to move it to its new care-of address (its kernel told it: kernel-netlink's address and
    route events, fired 100 ms after the last one), with an INFORMATIONAL exchange
    (UPDATE_SA_ADDRESSES), and for the CHILD_SA's new outer addresses in the MN's and the HA's
    kernels. :meth:`detach_old` changes nothing: it checks that nothing of the previous care-of
    address is left on any node."""

    def __init__(self, testbed, workdir: Path, method: str = "mobike", password: str = "testbed-secret",
                 aaa: bool = False, **options: Any):
        if method != "mobike" or aaa:
            raise ValueError("MobikeBaseline runs method 'mobike', without the AAA server")
        super().__init__(testbed, workdir, method, password, aaa, **options)
        #: (initiator SPI, responder SPI) of the one IKE_SA, once it exists
        self.ike_spis: tuple[int, int] | None = None
        #: the MN's charon's ``ike-update`` events: (arrival ns, new local host, new remote host)
        self.updates: list[tuple[int, str, str]] = []
        self.access_opened: list[str] = []
        self._log_offset = 0  # the MN's charon log read up to here (the previous attach)

    # -- life cycle -----------------------------------------------------------------------------
    def start(self, warm_up: bool = True) -> None:
        """charon on the MN and the HA, the ARs' access for ESP and IKE with the HA. No warm-up
        attach: the first :meth:`attach` makes the IKE_SA the run keeps."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        try:
            self._warm_up_kernel_crypto()
            self._open_access()
            for node in GATEWAY_NODES:
                charon = Charon(self.testbed.host(node), node, self.workdir / node, None, False,
                                gateway_interfaces(node))
                self.charons[node] = charon
                charon.start()
            self._load()
            self.listener = EventListener(self.charons[plan.MN], ["child-updown", "ike-updown", "ike-update"])
            self.ike_counter = PacketCounter(self.testbed.pid(plan.MN), (500, 4500))
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        super().stop()
        self._close_access()
        self.ike_spis = None

    def _open_access(self) -> None:
        from ipsec.xfrm import Xfrm

        for ar in AR_NODES:
            with Xfrm(netns=f"/proc/{self.testbed.pid(ar)}/ns/net") as xfrm:
                for policy in gateway_access(ar):
                    xfrm.update_policy(policy)
            self.access_opened.append(ar)

    def _close_access(self) -> None:
        from ipsec import XfrmError
        from ipsec.xfrm import Xfrm

        for ar in self.access_opened:
            with Xfrm(netns=f"/proc/{self.testbed.pid(ar)}/ns/net") as xfrm:
                for policy in gateway_access(ar):
                    try:
                        xfrm.delete_policy(policy.selector, policy.dir, policy.mark, policy.if_id)
                    except XfrmError:
                        pass  # gone with the AR's namespace, or never added
        self.access_opened = []

    def _load(self) -> None:
        connections = {plan.MN: {MN_GATEWAY_CONNECTION: mn_gateway_connection(self.params)},
                       GATEWAY: {HA_GATEWAY_CONNECTION: ha_gateway_connection(self.params)}}
        for node, charon in self.charons.items():
            session = charon.session
            assert session is not None
            try:
                for secret in gateway_secrets(node, self.params):
                    request(session, "load-shared", secret)
                request(session, "load-conn", connections[node])
            except CommandException as error:
                raise IkeStartError(f"loading the configuration into charon on {node} failed: {error}") from error

    # -- the IKE_SA ------------------------------------------------------------------------------
    def ike_sas(self, node: str = plan.MN) -> list[dict[str, Any]]:
        """The IKE_SAs ``node``'s charon lists (each as its VICI section)."""
        return [sa for entry in self.list_sas(node) for sa in entry.values()]

    def _the_ike_sa(self) -> dict[str, Any]:
        """The one IKE_SA the MN keeps, checked to be the one the first attach made."""
        sas = self.ike_sas(plan.MN)
        if len(sas) != 1:
            raise IkeError(f"the MN's charon lists {len(sas)} IKE_SAs, not the one it keeps: {sas}")
        sa = sas[0]
        spis = (int(sa["initiator-spi"], 16), int(sa["responder-spi"], 16))
        if self.ike_spis is not None and spis != self.ike_spis:
            raise IkeError(f"the MN's IKE_SA is not the first one: SPIs {spis[0]:016x}/{spis[1]:016x}, "
                           f"first {self.ike_spis[0]:016x}/{self.ike_spis[1]:016x}")
        return sa

    def attach(self, ar: str, mn: int = 0) -> dict:  # one MN: the constructor refuses more
        """The first time: make the IKE_SA and its CHILD_SA from the MN's care-of address at ``ar``.
        After a move to ``ar``: wait for MOBIKE's address update, and return its figures
        (``elapsed_ms``: from this call, right after the attach, to the CHILD_SA's new outer
        addresses in the MN's kernel)."""
        if ar not in AR_NODES:
            raise ValueError(f"unknown AR {ar!r}")
        if self.ike_spis is None:
            return self._initiate(ar)
        return self._follow(ar)

    def _initiate(self, ar: str) -> dict:
        mn = self.charons[plan.MN]
        assert mn.session is not None and self.listener is not None and self.ike_counter is not None
        self.ike_counter.drain()
        log_offset = mn.log_size()
        message = {"child": MN_GATEWAY_CONNECTION, "ike": MN_GATEWAY_CONNECTION,
                   "timeout": str(self.params.initiate_timeout_ms), "init-limits": "no", "loglevel": "-1"}
        initiate_sent_ns = time.monotonic_ns()
        try:
            request(mn.session, "initiate", message)
        except CommandException as error:
            log = mn.log_since(log_offset)
            kind, reason = classify_failure(log)
            for node in GATEWAY_NODES:
                try:
                    self.charons[node].terminate_all()
                except (CommandException, SessionException, OSError):
                    pass
            raise kind(GATEWAY, f"{reason} ({error})", log) from error
        child_installed_ns, _ = self.listener.wait_for(
            "child-updown", lambda m: m.get("up") == "yes" and MN_GATEWAY_CONNECTION in m, timeout=10.0)
        sa = self._the_ike_sa()
        if _host_of(sa.get("local-host")) != plan.MN_COA[ar]:
            raise IkeError(f"the IKE_SA to the HA left from {sa.get('local-host')}, not {plan.MN_COA[ar]}")
        self.ike_spis = (int(sa["initiator-spi"], 16), int(sa["responder-spi"], 16))
        self.attached_to = {ar}
        self._log_offset = mn.log_size()
        return {"ar": ar, "method": self.params.method, "initiate_sent_ns": initiate_sent_ns,
                "child_installed_ns": child_installed_ns, "elapsed_ms": (child_installed_ns - initiate_sent_ns) / 1e6,
                "ike_spis": [f"{spi:016x}" for spi in self.ike_spis], **summarize_ike(self.ike_counter.drain())}

    def _follow(self, ar: str) -> dict:
        """Wait for the update to ``ar``'s care-of address. Figures (CLOCK_MONOTONIC ns; the steps
        charon logged are read from its log, ms resolution): ``detach_seen_ns``, ``address_seen_ns``
        (charon's kernel-netlink saw the interface go and the new address come), ``initiate_sent_ns``
        (its roam job fired: the MOBIKE exchanges start, a path check, then the update),
        ``path_checked_ns``, ``update_sent_ns``, ``update_answered_ns``, ``update_seen_ns`` (charon's
        ``ike-update`` event arrived here), ``child_installed_ns`` and ``ha_child_installed_ns`` (the
        CHILD_SA's new outer addresses in the MN's and the HA's kernels, polled); ``elapsed_ms``:
        from the roam to the MN's kernel. IKE messages: those of the IKE_SA, on the MN's links."""
        assert self.listener is not None and self.ike_counter is not None and self.ike_spis is not None
        mn = self.charons[plan.MN]
        care_of = plan.MN_COA[ar]
        try:
            update_ns, message = self.listener.wait_for(
                "ike-update", lambda m: _host_of(m.get("local-host")) == care_of, timeout=UPDATE_TIMEOUT_S)
        except IkeError as error:
            raise IkeError(f"no MOBIKE update of the IKE_SA to {care_of} within {UPDATE_TIMEOUT_S} s of the "
                           f"attach at {ar}: {error}") from None
        self.updates.append((update_ns, _host_of(message.get("local-host")), _host_of(message.get("remote-host"))))
        installed = self._wait_outer(care_of, (plan.MN, GATEWAY))
        sa = self._the_ike_sa()
        if _host_of(sa.get("local-host")) != care_of:
            raise IkeError(f"the IKE_SA's local address is {sa.get('local-host')} after the update, not {care_of}")
        self.attached_to = {ar}
        # The MN's charon moves its CHILD_SA in the kernel as it sends the update (RFC 4555 §3.5: the
        # initiator updates first), so the kernel can be done before the response: its log line is
        # waited for (bounded; outside the interruption, the traffic flows again by now).
        deadline = time.monotonic() + 2.0
        while True:
            log = mn.log_since(self._log_offset)
            logged = mobike_steps(log, care_of)
            if "update_answered" in logged or time.monotonic() > deadline:
                break
            time.sleep(0.01)
        self._log_offset += len(log.encode())
        steps = {f"{name}_ns": log_seconds_to_monotonic_ns(at) for name, at in logged.items()}
        steps["initiate_sent_ns"] = steps.pop("roam_ns", update_ns)
        return {"ar": ar, "method": self.params.method, **steps, "update_seen_ns": update_ns,
                "child_installed_ns": installed[plan.MN], "ha_child_installed_ns": installed[GATEWAY],
                "elapsed_ms": (installed[plan.MN] - steps["initiate_sent_ns"]) / 1e6,
                "ike_spis": [f"{spi:016x}" for spi in self.ike_spis],
                **summarize_ike_sa(self.ike_counter.drain(), self.ike_spis[0])}

    def _wait_outer(self, care_of: str, nodes: tuple[str, ...], timeout: float = 5.0) -> dict[str, int]:
        """When each node's kernel first holds the CHILD_SA with the outer addresses care-of address
        <-> HA both ways (and no SA of another care-of address): charon updates the kernel after
        the exchange. Polled every 5 ms, one netlink dump per node."""
        from ipsec.xfrm import Xfrm

        wanted = {(care_of, plan.HA_ADDRESS), (plan.HA_ADDRESS, care_of)}
        found: dict[str, int] = {}
        handles = {}
        for node in nodes:
            with netns.entered(self.testbed.pid(node)):
                handles[node] = Xfrm()
        try:
            deadline = time.monotonic() + timeout
            while len(found) < len(nodes):
                for node, xfrm in handles.items():
                    if node not in found and {(sa.saddr, sa.daddr) for sa in xfrm.dump_sas()} == wanted:
                        found[node] = time.monotonic_ns()
                if len(found) < len(nodes):
                    if time.monotonic() > deadline:
                        raise IkeError(f"the CHILD_SA's outer addresses are not {care_of} <-> HA on "
                                       f"{[node for node in nodes if node not in found]} after {timeout} s")
                    time.sleep(0.005)
        finally:
            for xfrm in handles.values():
                xfrm.close()
        return found

    def detach_old(self, ar: str, mn: int = 0, timeout: float = 5.0) -> None:  # one MN
        """Nothing to tear down: the IKE_SA moved. Checks that neither the MN's nor the HA's charon
        nor any node's kernel holds anything of the MN's care-of address at ``ar`` any more (the
        kernel's SAD and SPD, charon's socket policies left out) and that the MN keeps its one
        IKE_SA."""
        if ar in self.attached_to:
            return  # the MN is (back) at ``ar``: its address there is the current one
        coa = plan.MN_COA[ar]
        deadline = time.monotonic() + timeout
        while True:
            left = [node for node in (*GATEWAY_NODES, *AR_NODES) if self._kernel_names(node, coa)]
            left += [f"{node} charon" for node in GATEWAY_NODES
                     if any(coa in (_host_of(sa.get("local-host")), _host_of(sa.get("remote-host")))
                            for sa in self.ike_sas(node))]
            if not left:
                break
            if time.monotonic() > deadline:
                raise IkeError(f"state of the MN's previous address {coa} still on {left} after {timeout} s")
            time.sleep(0.02)
        self._the_ike_sa()



# -- pre-authentication with the nAR (make-before-break) ------------------------------------------
#: each AR's responder connection for MNs that pre-authenticate from a neighbouring AR's access link
PREAUTH_CONNECTION = "preauth"
#: how long both charons may take to follow the CHILD_SA's move to the new care-of address
MOVE_TIMEOUT_S = 5.0
#: how long the pAR's clean-up after a pre-authenticated attach waits for the downlink to flow again
CLEANUP_WAIT_S = 2.0


def mn_preauth_connection_name(ar: str) -> str:
    return f"pre-{ar}"


def _neighbours(ar: str) -> list[str]:
    return [other for other in AR_NODES if other != ar]


def mn_preauth_connection(ar: str, params: BaselineParams, ar_cert_pem: bytes | None) -> dict[str, Any]:
    """The MN's pre-authentication with ``ar`` while it is attached to a neighbour: the IKE_SA runs
    from its care-of address there (reaching ``ar``'s access address through the neighbour and the
    AR-AR link); the CHILD_SA's traffic selectors are those of its future care-of address at
    ``ar``: that address/128 <-> HA/128."""
    return {**mn_connection(ar, params, ar_cert_pem),
            "local_addrs": [plan.MN_COA[other] for other in _neighbours(ar)],
            "children": {mn_preauth_connection_name(ar): _child(f"{plan.MN_COA[ar]}/128", f"{plan.HA_ADDRESS}/128")}}


def ar_preauth_connection(ar: str, params: BaselineParams, ar_cert_pem: bytes | None) -> dict[str, Any]:
    """``ar``'s responder connection for an MN on a neighbour's access link: IKE from the neighbours'
    prefixes; the CHILD_SA only for the MN's care-of address on ``ar``'s own link (the address it
    will have here: the one MN's interface identifier on this prefix), HA/128 on this side."""
    return {**ar_connection(ar, params, ar_cert_pem),
            "remote_addrs": [plan.ACCESS_PREFIX[other] for other in _neighbours(ar)],
            "children": {PREAUTH_CONNECTION: _child(f"{plan.HA_ADDRESS}/128", f"{plan.MN_COA[ar]}/128")}}


def preauth_access(ar: str) -> tuple:
    """What ``ar`` lets through while pre-authentication runs: IKE from its link to the neighbours'
    access addresses; no ESP from a neighbour's access prefix
    (:func:`nodes.operator_policy.preauth_access_policies`)."""
    peers = [(plan.AR_ACCESS_ADDRESS[other], plan.ACCESS_PREFIX[other]) for other in _neighbours(ar)]
    return operator_policy.preauth_access_policies(plan.ACCESS_PREFIX[ar], peers)


def _migrate_request(xfrm, policy, migrations: list, kmaddress: tuple[str, str] | None) -> None:
    """XFRM_MSG_MIGRATE for one policy (its templates and the SAs ``migrations`` name), with the key
    manager's new addresses (XFRMA_KMADDRESS: local, remote) when given: charon's kernel-netlink
    takes the kernel's MIGRATE event that carries them for its migrate job, which moves the IKE_SA
    and the CHILD_SA of the SAs' reqid to those addresses (RFC 4877's interface between a Mobile
    IPv6 stack and IKE)."""
    from ipsec.layout import to_struct
    from ipsec.xfrm_messages import XFRM_MSG_MIGRATE

    msg = xfrm._userpolicy_id(policy.selector, policy.dir, None, 0)
    attributes: list[tuple[str, Any]] = [("XFRMA_MIGRATE", [to_struct(migration) for migration in migrations])]
    if kmaddress is not None:
        local, remote = kmaddress
        attributes.append(("XFRMA_KMADDRESS", {"local": socket.inet_pton(socket.AF_INET6, local),
                                               "remote": socket.inet_pton(socket.AF_INET6, remote),
                                               "reserved": 0, "family": socket.AF_INET6}))
    msg["attrs"] = attributes
    xfrm._request(XFRM_MSG_MIGRATE, msg)


class PreauthBaseline(IkeBaseline):
    """Pre-authentication (make-before-break; IEEE 802.11i pre-authentication, RFC 5836): before the
    detach, :meth:`preauthenticate` sets up the IKE_SA (IKE_SA_INIT, IKE_AUTH with EAP-MSCHAPv2
    relayed to RADIUS, or a pre-shared key) and the CHILD_SA with the nAR, from the MN's current
    care-of address through the pAR; the CHILD_SA's traffic selectors are the future care-of
    address <-> HA, and its outer addresses are then moved to the future care-of address <-> nAR
    on both ends (XFRM_MSG_MIGRATE, which both charons follow). After the attach, :meth:`attach`
    exchanges nothing: it only records; :meth:`detach_old` removes the SAs with the pAR. A
    pre-authentication whose move does not come is undone by :meth:`cancel`. Attaches without a
    pre-authentication (the first, at :meth:`start` and ``Experiment.enter``, or after a
    cancelled one) are the re-authentication baseline's fresh IKE_SA."""

    def __init__(self, testbed, workdir: Path, method: str = "preauth-eap-mschapv2",
                 password: str = "testbed-secret", aaa: bool = True, **options: Any):
        if method not in PREAUTH_METHODS:
            raise ValueError(f"PreauthBaseline runs one of {PREAUTH_METHODS}, not {method!r}")
        super().__init__(testbed, workdir, method, password, aaa, **options)
        #: the pre-authentications made and not yet used or cancelled, by nAR: their figures
        self.preauthenticated: dict[str, dict[str, Any]] = {}
        #: the last cancelled pre-authentication's figures, for the record of the move that follows
        self.cancelled: dict[str, Any] | None = None
        #: the record of the last pre-authenticated attach, until the pAR's SAs are gone
        self._followed: dict[str, Any] | None = None
        self.access_opened: list[str] = []

    # -- life cycle -------------------------------------------------------------------------------
    def start(self, warm_up: bool = True) -> None:
        try:
            self._open_access()
        except BaseException:
            self._close_access()
            raise
        super().start(warm_up)  # on a failure it stops, which closes the access again

    def stop(self) -> None:
        super().stop()
        self._close_access()
        self.preauthenticated, self.cancelled, self._followed = {}, None, None

    def _open_access(self) -> None:
        from ipsec.xfrm import Xfrm

        for ar in AR_NODES:
            self.access_opened.append(ar)
            with Xfrm(netns=f"/proc/{self.testbed.pid(ar)}/ns/net") as xfrm:
                for policy in preauth_access(ar):
                    xfrm.update_policy(policy)

    def _close_access(self) -> None:
        from ipsec import XfrmError
        from ipsec.xfrm import Xfrm

        for ar in self.access_opened:
            try:
                with Xfrm(netns=f"/proc/{self.testbed.pid(ar)}/ns/net") as xfrm:
                    for policy in preauth_access(ar):
                        try:
                            xfrm.delete_policy(policy.selector, policy.dir, policy.mark, policy.if_id)
                        except XfrmError:
                            pass  # never added
            except OSError:
                pass  # the AR's namespace is gone
        self.access_opened = []

    def _load(self) -> None:
        super()._load()
        params = self.params
        for node, charon in self.charons.items():
            session = charon.session
            assert session is not None
            try:
                if node == plan.MN:
                    for ar in AR_NODES:
                        cert = self.certificates[ar].cert_pem if params.eap else None
                        request(session, "load-conn",
                                {mn_preauth_connection_name(ar): mn_preauth_connection(ar, params, cert)})
                else:
                    cert = self.certificates[node].cert_pem if params.eap else None
                    request(session, "load-conn", {PREAUTH_CONNECTION: ar_preauth_connection(node, params, cert)})
            except CommandException as error:
                raise IkeStartError(f"loading the pre-authentication connections into charon on {node} failed: "
                                    f"{error}") from error

    # -- before the detach ------------------------------------------------------------------------
    def preauthenticate(self, nar: str) -> dict[str, Any]:
        """IKE_SA and CHILD_SA with ``nar`` from the MN's current care-of address, then the
        CHILD_SA's outer addresses moved to the future care-of address on the MN and on ``nar``.
        Returns the figures (``preauth_*``): when the initiate was sent, when the MN's charon
        reported the CHILD_SA installed, when both kernels and charons had moved it, IKE messages
        on the MN's links and RADIUS on ``nar``'s AR-AAA link (``aaa_access_requests``: the
        Access-Requests the pre-authentication cost)."""
        par = self.testbed.current_ar
        if nar not in AR_NODES or par is None or nar == par:
            raise ValueError(f"pre-authentication with {nar!r} from {par!r}")
        self.preauthenticated.pop(nar, None)
        radius_counter = self.radius_counters.get(nar)

        def failed(kind: type[IkeAttachError], reason: str, error: CommandException, log: str,
                   after_ms: float) -> IkeError:
            self._terminate(nar)
            return kind(nar, f"pre-authentication from {par}: {reason} ({error})", log)

        sent_ns, _, installed_ns = self._initiate_connection(mn_preauth_connection_name(nar), radius_counter, failed)
        assert self.ike_counter is not None  # _initiate_connection checked it
        ike = summarize_ike(self.ike_counter.drain())
        figures: dict[str, Any] = {
            "ar": nar, "from_ar": par, "method": self.params.method,
            "preauth_sent_ns": sent_ns, "preauth_child_installed_ns": installed_ns,
            "preauth_elapsed_ms": (installed_ns - sent_ns) / 1e6,
            **{f"preauth_{key}": value for key, value in ike.items()},
            "aaa_access_requests": 0,
        }
        if radius_counter is not None:
            radius = summarize_radius(radius_counter.drain())
            figures.update({f"preauth_{key}": value for key, value in radius.items()})
            figures["aaa_access_requests"] = radius["radius_requests"]
        figures["preauth_moved_ns"] = self._move_outer(par, nar)
        figures["preauth_child_spis"] = self._child_spis(nar)
        figures["preauth_ike_spis"] = [[sa["initiator-spi"], sa["responder-spi"]]
                                       for sa in self._preauth_sas(plan.MN, nar)]
        self.preauthenticated[nar] = figures
        return figures

    def _move_outer(self, par: str, nar: str) -> int:
        """The CHILD_SA with ``nar`` (outer addresses: the care-of address at ``par`` <-> ``nar``)
        moved to the future care-of address <-> ``nar`` on the MN and on ``nar``: one
        XFRM_MSG_MIGRATE per policy, the last with the IKE endpoints' new addresses, so that each
        charon moves its IKE_SA and CHILD_SA too (its migrate job). Returns when both kernels hold
        the SAs and templates at the new addresses only and both charons list the IKE_SA there."""
        from ipsec.xfrm import Migration, Xfrm

        old, new, gateway = plan.MN_COA[par], plan.MN_COA[nar], plan.AR_ACCESS_ADDRESS[nar]

        def moved(address: str) -> str:
            return new if address == old else address

        for node, kmaddress in ((plan.MN, (new, gateway)), (nar, (gateway, new))):
            with Xfrm(netns=f"/proc/{self.testbed.pid(node)}/ns/net") as xfrm:
                sas = [sa for sa in xfrm.dump_sas() if {sa.saddr, sa.daddr} == {old, gateway}]
                if len(sas) != 2:
                    raise IkeError(f"{node} holds {len(sas)} SAs between {old} and {gateway} after the "
                                   "pre-authentication, not the CHILD_SA's two")
                migrations = [Migration(old_daddr=sa.daddr, old_saddr=sa.saddr, new_daddr=moved(sa.daddr),
                                        new_saddr=moved(sa.saddr), reqid=sa.reqid) for sa in sas]
                policies = [policy for policy in xfrm.dump_policies() if policy.dir < 3 and any(
                    {template.saddr, template.daddr} == {old, gateway} for template in policy.templates)]
                if not policies:
                    raise IkeError(f"{node} holds no policy of the pre-established CHILD_SA")
                for index, policy in enumerate(policies):
                    _migrate_request(xfrm, policy, migrations, kmaddress if index == len(policies) - 1 else None)
        deadline = time.monotonic() + MOVE_TIMEOUT_S
        while True:
            left = [node for node in (plan.MN, nar) if self._kernel_names(node, old, gateway)]
            left += [f"{node} charon" for node, side in ((plan.MN, "local-host"), (nar, "remote-host"))
                     if not any(_host_of(sa.get(side)) == new for sa in self._preauth_sas(node, nar))]
            if not left:
                return time.monotonic_ns()
            if time.monotonic() > deadline:
                raise IkeError(f"the pre-established CHILD_SA did not move to {new} on {left} within "
                               f"{MOVE_TIMEOUT_S} s")
            time.sleep(0.005)

    def _wait_new_path(self, ar: str, timeout: float = CLEANUP_WAIT_S) -> float:
        """After a pre-authenticated attach at ``ar``, before the pAR's SAs go: wait until the MN's
        inbound SA from ``ar`` has carried a packet (the downlink flows again: the handover's
        interruption is over), at most ``timeout``. The clean-up is work on nobody's critical path
        (docs/design.md, "The hot paths"); both charons do it at the agents' priority, and on the
        guest's one CPU it would otherwise run while the MN's agent sends its Binding Update.
        Returns how long it waited (ms)."""
        from ipsec.xfrm import Xfrm

        started = time.monotonic()
        ends = (plan.AR_ACCESS_ADDRESS[ar], plan.MN_COA[ar])
        with Xfrm(netns=f"/proc/{self.testbed.pid(plan.MN)}/ns/net") as xfrm:
            while time.monotonic() - started < timeout:
                if any((sa.saddr, sa.daddr) == ends and sa.current.packets for sa in xfrm.dump_sas()):
                    break
                time.sleep(0.005)
        return (time.monotonic() - started) * 1000

    def _child_spis(self, ar: str) -> list[str]:
        """The SPIs (hex) of the MN's SAs between its care-of address at ``ar`` and ``ar``."""
        from ipsec.xfrm import Xfrm

        ends = {plan.MN_COA[ar], plan.AR_ACCESS_ADDRESS[ar]}
        with Xfrm(netns=f"/proc/{self.testbed.pid(plan.MN)}/ns/net") as xfrm:
            return sorted(f"{sa.spi:08x}" for sa in xfrm.dump_sas() if {sa.saddr, sa.daddr} == ends)

    def _preauth_sas(self, node: str, ar: str) -> list[dict[str, Any]]:
        """The IKE_SAs of a pre-authentication with ``ar`` that ``node`` (the MN or ``ar``) lists."""
        name = mn_preauth_connection_name(ar) if node == plan.MN else PREAUTH_CONNECTION
        return [sa for entry in self.list_sas(node) for key, sa in entry.items() if key == name]

    def cancel(self, nar: str) -> dict[str, Any]:
        """The anticipated move to ``nar`` does not come: its pre-established IKE_SA and CHILD_SA go
        on the MN and on ``nar`` (and with them every SA and policy of the future care-of
        address). Returns the pre-authentication's figures (what it cost), marked cancelled."""
        figures = self.preauthenticated.pop(nar, None)
        if figures is None:
            raise IkeError(f"no pre-authentication with {nar} to cancel")
        self._terminate(nar)
        deadline = time.monotonic() + MOVE_TIMEOUT_S
        coa = plan.MN_COA[nar]
        while True:
            left = [f"{node} charon" for node in (plan.MN, nar) if self._preauth_sas(node, nar)]
            left += [f"{node} kernel" for node in (plan.MN, nar) if self._kernel_names(node, coa)]
            if not left:
                break
            if time.monotonic() > deadline:
                raise IkeError(f"the cancelled pre-authentication with {nar} left state on {left}")
            time.sleep(0.02)
        return {**figures, "cancelled": True, "cancelled_ns": time.monotonic_ns()}

    def _terminate(self, ar: str) -> None:
        """Terminate (force: no waiting for the peer) the pre-authentication IKE_SAs with ``ar``."""
        for node in (plan.MN, ar):
            session = self.charons[node].session
            assert session is not None
            for sa in self._preauth_sas(node, ar):
                try:
                    request(session, "terminate", {"ike-id": sa["uniqueid"], "force": "yes",
                                                   "timeout": "-1", "loglevel": "-1"})
                except CommandException as error:
                    if "no matching SAs" not in str(error):
                        raise IkeError(f"terminating the pre-authentication with {ar} on {node} failed: "
                                       f"{error}") from error

    # -- the attach ---------------------------------------------------------------------------------
    def attach(self, ar: str, mn: int = 0) -> dict:  # one MN: the constructor refuses more
        """The MN's SAs with ``ar`` for its care-of address there:

        - the MN is at another AR: pre-authenticate (:meth:`preauthenticate`; before the detach);
        - ``ar`` was pre-authenticated (after the attach): nothing is exchanged; the figures are
          the pre-authentication's, with the IKE messages the MN's links carried since it
          (``ike_until_attach``, by exchange type: none expected), and :meth:`detach_old` of the
          pAR adds those until its end (``ike_after_attach``);
        - otherwise (the first attach, or after a cancelled pre-authentication): a fresh IKE_SA as
          the re-authentication baseline makes, with the cancelled pre-authentication's figures
          (``cancelled_preauth``) and the AAA transactions of both (``aaa_access_requests``)."""
        if ar in AR_NODES and ar != self.testbed.current_ar:
            return self.preauthenticate(ar)
        figures = self.preauthenticated.pop(ar, None)
        if figures is None:
            result = super().attach(ar)
            result["aaa_access_requests"] = result.get("radius_requests", 0)
            if self.cancelled is not None:
                result["cancelled_preauth"] = self.cancelled
                result["aaa_access_requests"] += self.cancelled["aaa_access_requests"]
                self.cancelled = None
            return result
        assert self.ike_counter is not None
        until_attach = ike_exchanges(self.ike_counter.drain())
        self.attached_to.add(ar)
        radius = ({"radius_messages": figures["preauth_radius_messages"],
                   "radius_requests": figures["preauth_radius_requests"],
                   "radius_bytes": figures["preauth_radius_bytes"]} if "preauth_radius_messages" in figures else {})
        result = {**figures, "ar": ar, "preauthenticated": True, "ike_until_attach": until_attach,
                  # the handover's signalling and IKE steps are the pre-authentication's
                  "initiate_sent_ns": figures["preauth_sent_ns"],
                  "child_installed_ns": figures["preauth_child_installed_ns"],
                  "elapsed_ms": figures["preauth_elapsed_ms"],
                  "ike_messages": figures["preauth_ike_messages"], "ike_requests": figures["preauth_ike_requests"],
                  "ike_bytes": figures["preauth_ike_bytes"], **radius}
        self._followed = result
        return result

    def ike_since_attach(self) -> dict[str, int]:
        """The IKE messages on the MN's links since the last :meth:`attach` (or call), by exchange
        type: after a pre-authenticated attach only the DELETE of the pAR's IKE_SA (INFORMATIONAL)
        may come; an IKE_SA_INIT, IKE_AUTH or CREATE_CHILD_SA would be work the pre-authentication
        should have done."""
        assert self.ike_counter is not None
        return ike_exchanges(self.ike_counter.drain())

    def detach_old(self, ar: str, mn: int = 0) -> None:  # one MN: the constructor refuses more
        """Remove every IKE_SA between the MN and ``ar`` (its first attach's, or a
        pre-authentication's) on both sides, and check that nothing of the MN's care-of address at
        ``ar`` is left on the MN, on either AR or in any charon. A pre-authentication with ``ar``
        not yet used is cancelled (:meth:`cancel`; its figures kept for the next attach's record)."""
        if ar in self.preauthenticated:
            self.cancelled = self.cancel(ar)
            return
        if self._followed is not None:
            self._followed["cleanup_waited_ms"] = self._wait_new_path(self._followed["ar"])
        names = {mn_connection_name(ar), mn_preauth_connection_name(ar)}
        for node, sas in ((ar, [sa for entry in self.list_sas(ar) for sa in entry.values()]),
                          (plan.MN, [sa for entry in self.list_sas(plan.MN) for key, sa in entry.items()
                                     if key in names])):
            for sa in sas:
                session = self.charons[node].session
                assert session is not None
                try:
                    request(session, "terminate", {"ike-id": sa["uniqueid"], "force": "yes",
                                                   "timeout": "-1", "loglevel": "-1"})
                except CommandException as error:
                    if "no matching SAs" not in str(error):
                        raise IkeError(f"terminating the IKE_SA {sa.get('name')} on {node} failed: {error}") from error
        coa = plan.MN_COA[ar]
        deadline = time.monotonic() + MOVE_TIMEOUT_S
        while True:
            left = [f"{ar} charon"] if self.list_sas(ar) else []
            left += [f"{node} charon" for node in CHARON_NODES
                     if any(coa in (_host_of(sa.get("local-host")), _host_of(sa.get("remote-host")))
                            for entry in self.list_sas(node) for sa in entry.values())]
            left += [f"{node} kernel" for node in CHARON_NODES if self._kernel_names(node, coa)]
            if not left:
                break
            if time.monotonic() > deadline:
                raise IkeError(f"state of the MN's care-of address at {ar} ({coa}) still on {left} after "
                               f"{MOVE_TIMEOUT_S} s")
            time.sleep(0.02)
        self.attached_to.discard(ar)
        if self._followed is not None:
            self._followed["ike_after_attach"] = self.ike_since_attach()
            self._followed = None


def dry_run(method: str, workdir: Path) -> str:
    """Everything the baseline would write, load and make for ``method``, without doing it: each
    daemon's files, the VICI messages (certificates and keys as placeholders), the certificates."""
    params = BaselineParams(method=method, aaa=needs_aaa(method))
    if params.mobike:
        return dry_run_mobike(params, workdir)
    pki_dir = workdir / "pki"
    parts = []
    if params.eap:
        parts.append("# pki (at set-up): " + ", ".join(
            f"{pki_dir / ar}.cert.pem (self-signed, serverAuth, SAN {ar})" for ar in AR_NODES))
    if params.tls:
        ca = pki_dir / f"{CA_NAME.replace(' ', '-')}.cert.pem"
        parts.append(f"# pki (at set-up): {ca} (CA, CN={CA_NAME}); issued by it: "
                     f"{pki_dir / AAA_IDENTITY}.cert.pem (serverAuth, CN and SAN {AAA_IDENTITY}), "
                     f"{pki_dir / plan.MN_IDENTITY}.cert.pem (clientAuth, CN and SAN {plan.MN_IDENTITY})")
    for node in CHARON_NODES:
        parts.append(Charon(None, node, workdir / node, *charon_options(node, params)).dry_run().rstrip("\n"))
        messages: list[tuple[str, dict[str, Any]]] = [("load-shared", secret)
                                                      for secret in shared_secrets(node, params)]
        if node == plan.MN:
            mn_cert = None
            if params.tls:
                messages += [("load-cert", {"type": "x509", "flag": "ca", "data": f"<{CA_NAME} certificate>"}),
                             ("load-key", {"type": "any", "data": f"<{plan.MN_IDENTITY} key>"})]
                mn_cert = f"<{plan.MN_IDENTITY} certificate>".encode()
            messages += [("load-conn", {mn_connection_name(ar): mn_connection(
                ar, params, f"<{ar} certificate>".encode() if params.eap else None, mn_cert)}) for ar in AR_NODES]
        else:
            cert = f"<{node} certificate>".encode() if params.eap else None
            if params.eap:
                messages.append(("load-key", {"type": "any", "data": f"<{node} key>"}))
            messages.append(("load-conn", {AR_CONNECTION: ar_connection(node, params, cert)}))
        if params.preauth:
            if node == plan.MN:
                messages += [("load-conn", {mn_preauth_connection_name(ar): mn_preauth_connection(
                    ar, params, f"<{ar} certificate>".encode() if params.eap else None)}) for ar in AR_NODES]
            else:
                messages.append(("load-conn", {PREAUTH_CONNECTION: ar_preauth_connection(
                    node, params, f"<{node} certificate>".encode() if params.eap else None)}))
        for command, message in messages:
            text = json.dumps(message, indent=1, default=lambda value: value.decode())
            parts.append(f"# --- VICI {command} to charon on {node}\n{text}")
    if params.preauth:
        for ar in AR_NODES:
            parts.append(_describe_policies(f"# --- XFRM policies added on {ar} while pre-authentication runs "
                                            "(nodes/operator_policy.py preauth_access_policies)", preauth_access(ar)))
    if params.aaa:
        parts.append(FreeRadius(None, radius_configuration(params, pki_dir), workdir / plan.AAA).dry_run().rstrip("\n"))
    return "\n".join(parts) + "\n"


def _describe_policies(title: str, policies) -> str:
    lines = [title]
    for policy in policies:
        selector = policy.selector
        lines.append(f"dir {policy.dir} ({'block' if policy.action else 'allow'}) priority {policy.priority}: "
                     f"src {selector.saddr}/{selector.prefixlen_s} dst {selector.daddr}/{selector.prefixlen_d} "
                     f"proto {selector.proto}" + (f" dport {selector.dport}" if selector.dport_mask else ""))
    return "\n".join(lines)


def dry_run_mobike(params: BaselineParams, workdir: Path) -> str:
    """MOBIKE's files, VICI messages and the ARs' policies for ESP and IKE with the HA."""
    parts = ["# pki: none (the MN and the HA authenticate with a pre-shared key)"]
    connections = {plan.MN: (MN_GATEWAY_CONNECTION, mn_gateway_connection(params)),
                   GATEWAY: (HA_GATEWAY_CONNECTION, ha_gateway_connection(params))}
    for node in GATEWAY_NODES:
        parts.append(Charon(None, node, workdir / node, None, False, gateway_interfaces(node)).dry_run().rstrip("\n"))
        name, connection = connections[node]
        messages = [*(("load-shared", secret) for secret in gateway_secrets(node, params)),
                    ("load-conn", {name: connection})]
        for command, message in messages:
            parts.append(f"# --- VICI {command} to charon on {node}\n{json.dumps(message, indent=1)}")
    for ar in AR_NODES:
        lines = [f"# --- XFRM policies added on {ar} while MOBIKE runs (nodes/operator_policy.py "
                 "gateway_access_policies)"]
        for policy in gateway_access(ar):
            selector = policy.selector
            lines.append(f"dir {policy.dir} ({'block' if policy.action else 'allow'}) priority {policy.priority}: "
                         f"src {selector.saddr}/{selector.prefixlen_s} dst {selector.daddr}/{selector.prefixlen_d} "
                         f"proto {selector.proto}" + (f" dport {selector.dport}" if selector.dport_mask else ""))
        parts.append("\n".join(lines))
    return "\n".join(parts) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="print the baseline's daemon configurations")
    parser.add_argument("--dry-run", metavar="METHOD", choices=METHODS, required=True,
                        help=f"one of {', '.join(METHODS)}")
    parser.add_argument("--workdir", default=None, help="where the files would go (default: a temporary path)")
    arguments = parser.parse_args(argv)
    workdir = Path(arguments.workdir or Path(tempfile.gettempdir()) / "testbed-baseline-dry-run")
    print(dry_run(arguments.dry_run, workdir), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
