"""The re-authentication baseline on the testbed: which node runs what, the IKE connections in the
testbed's addressing plan, the attach at an AR and the clean-up after a move.

Runner code: it knows the topology (:mod:`topo.plan`) and drives daemons of :mod:`nodes.ike`
(charon, over VICI) and :mod:`nodes.radius` (FreeRADIUS) in the testbed's hosts; ``nodes`` knows
nothing of the topology. ``python -m scenarios.runner.baseline --dry-run METHOD`` prints every daemon's
configuration without starting anything.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from vici.exception import CommandException, SessionException

from nodes import pki as pki_module
from nodes import provisioning
from nodes.ike import (
    AR_CONNECTION,
    COMMON_CONNECTION_OPTIONS,
    BaselineParams,
    Charon,
    EventListener,
    IkeError,
    IkeStartError,
    PacketCounter,
    _child,
    _decode,
    classify_failure,
    request,
    summarize_ike,
    summarize_radius,
)
from nodes.radius import FreeRadius, RadiusConfig
from topo import plan

AR_NODES = plan.ACCESS_ROUTERS
CHARON_NODES = (plan.MN, *AR_NODES)


def mn_connection_name(ar: str) -> str:
    return f"to-{ar}"


def mn_connection(ar: str, params: BaselineParams, ar_cert_pem: bytes | None) -> dict[str, Any]:
    """The MN's connection to ``ar``: from its CoA there to the AR's access address."""
    if params.eap:
        local = {"auth": params.method, "id": plan.MN_IDENTITY, "eap_id": plan.MN_IDENTITY}
        if ar_cert_pem is None:
            raise ValueError("EAP needs the AR's certificate to pin")
        remote = {"auth": "pubkey", "id": ar, "certs": [ar_cert_pem]}
    else:
        local = {"auth": "psk", "id": plan.MN_IDENTITY}
        remote = {"auth": "psk", "id": ar}
    return {
        **COMMON_CONNECTION_OPTIONS,
        # The static local address keeps charon from "roaming" the old IKE_SA.
        "local_addrs": [plan.MN_COA[ar]],
        "remote_addrs": [plan.AR_ACCESS_ADDRESS[ar]],
        "keyingtries": "1",
        "local-1": local,
        "remote-1": remote,
        "children": {mn_connection_name(ar): _child("dynamic", f"{plan.HA_ADDRESS}/128")},
    }


def ar_connection(ar: str, params: BaselineParams, ar_cert_pem: bytes | None) -> dict[str, Any]:
    """The AR's responder connection for any MN on its access link."""
    if params.eap:
        if ar_cert_pem is None:
            raise ValueError("EAP needs the AR's certificate")
        local = {"auth": "pubkey", "id": ar, "certs": [ar_cert_pem]}
        # The MN's IKE identity is its EAP identity (no EAP-Identity round); RADIUS picks the method.
        remote = {"auth": "eap-radius", "id": "%any"}
    else:
        local = {"auth": "psk", "id": ar}
        remote = {"auth": "psk", "id": plan.MN_IDENTITY}
    return {
        **COMMON_CONNECTION_OPTIONS,
        "local_addrs": [plan.AR_ACCESS_ADDRESS[ar]],
        "remote_addrs": [plan.ACCESS_PREFIX[ar]],
        "unique": "never",
        "local-1": local,
        "remote-1": remote,
        "children": {AR_CONNECTION: _child(f"{plan.HA_ADDRESS}/128", "dynamic")},
    }


def shared_secrets(node: str, params: BaselineParams) -> list[dict[str, Any]]:
    """``load-shared`` messages for ``node``."""
    secrets = []
    if params.method == "psk":
        secrets.append({"id": f"psk-{node}", "type": "IKE", "data": params.psk,
                        "owners": [plan.MN_IDENTITY, *AR_NODES]})
    elif node == plan.MN:
        secrets.append({"id": "eap-mn", "type": "EAP", "data": params.password, "owners": [plan.MN_IDENTITY]})
    return secrets


class IkeBaseline:
    """IKEv2 (+ EAP through RADIUS) on the testbed: daemons, attach, and handover clean-up."""

    def __init__(self, testbed, workdir: Path, method: str = "eap-mschapv2",
                 password: str = "testbed-secret", aaa: bool = True, *,
                 radius_password: str | None = None, psk: str = "testbed-psk-0123456789",
                 radius_secret: str = "testbed-radius", initiate_timeout_ms: int = 30_000):
        self.testbed = testbed
        self.workdir = Path(workdir)
        self.params = BaselineParams(method=method, password=password, radius_password=radius_password,
                                     psk=psk, radius_secret=radius_secret, aaa=aaa,
                                     initiate_timeout_ms=initiate_timeout_ms)
        self.charons: dict[str, Charon] = {}
        self.radius: FreeRadius | None = None
        self.listener: EventListener | None = None
        self.ike_counter: PacketCounter | None = None
        self.radius_counters: dict[str, PacketCounter] = {}
        self.certificates: dict[str, pki_module.Credential] = {}
        self.attached_to: set[str] = set()

    # -- life cycle ---------------------------------------------------------------------------
    def start(self, warm_up: bool = True) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        try:
            self._warm_up_kernel_crypto()
            if self.params.eap:
                for ar in AR_NODES:
                    self.certificates[ar] = pki_module.make_server_credential(self.workdir / "pki", ar)
            if self.params.aaa:
                radius_config = RadiusConfig(
                    address=plan.AAA_ADDRESS, secret=self.params.radius_secret,
                    users={plan.MN_IDENTITY: self.params.radius_password or self.params.password},
                    method=self.params.method if self.params.eap else "eap-mschapv2")
                self.radius = FreeRadius(self.testbed.host(plan.AAA), radius_config, self.workdir / plan.AAA)
                self.radius.start()
            for node in CHARON_NODES:
                radius = ((plan.AAA_ADDRESS, self.params.radius_secret)
                          if node in AR_NODES and self.params.aaa else None)
                charon = Charon(self.testbed.host(node), node, self.workdir / node, radius)
                self.charons[node] = charon
                charon.start()
            self._load()
            self.listener = EventListener(self.charons[plan.MN])
            self.ike_counter = PacketCounter(self.testbed.pid(plan.MN), (500, 4500))
            if self.params.aaa:
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
        if self.listener is not None:
            self.listener.stop()
            self.listener = None
        for counter in [self.ike_counter, *self.radius_counters.values()]:
            if counter is not None:
                counter.close()
        self.ike_counter, self.radius_counters = None, {}
        for charon in self.charons.values():
            charon.stop()
        self.charons = {}
        if self.radius is not None:
            self.radius.stop()
            self.radius = None
        self.attached_to = set()

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

    def _load(self) -> None:
        params = self.params
        for node, charon in self.charons.items():
            session = charon.session
            assert session is not None
            try:
                for secret in shared_secrets(node, params):
                    request(session, "load-shared", secret)
                if node == plan.MN:
                    for ar in AR_NODES:
                        cert = self.certificates[ar].cert_pem if params.eap else None
                        request(session, "load-conn", {mn_connection_name(ar): mn_connection(ar, params, cert)})
                else:
                    cert = None
                    if params.eap:
                        credential = self.certificates[node]
                        request(session, "load-key", {"type": "any", "data": credential.key_pem})
                        cert = credential.cert_pem
                    request(session, "load-conn", {AR_CONNECTION: ar_connection(node, params, cert)})
            except CommandException as error:
                raise IkeStartError(f"loading the configuration into charon on {node} failed: {error}") from error

    # -- measurements -------------------------------------------------------------------------
    def attach(self, ar: str) -> dict:
        """Authenticate from scratch at ``ar`` and install the CHILD_SA (MN CoA <-> HA through ``ar``).

        Returns ``initiate_sent_ns``, ``child_installed_ns`` (arrival of the MN's child-updown
        event), ``initiate_returned_ns``, ``elapsed_ms`` and the packet counts of the attempt.
        Raises :class:`IkeAuthenticationError` when credentials are refused, :class:`IkeAttachError`
        otherwise; no SA is left behind on the MN or the AR after a failure.
        """
        if ar not in AR_NODES:
            raise ValueError(f"unknown AR {ar!r}")
        mn = self.charons[plan.MN]
        assert mn.session is not None and self.listener is not None and self.ike_counter is not None
        name = mn_connection_name(ar)
        self.listener.clear()
        self.ike_counter.drain()
        radius_counter = self.radius_counters.get(ar)
        if radius_counter is not None:
            radius_counter.drain()
        log_offset = mn.log_size()
        message = {"child": name, "ike": name, "timeout": str(self.params.initiate_timeout_ms),
                   "init-limits": "no", "loglevel": "-1"}
        initiate_sent_ns = time.monotonic_ns()
        try:
            request(mn.session, "initiate", message)
        except CommandException as error:
            failed_ns = time.monotonic_ns()
            log = mn.log_since(log_offset)
            kind, reason = classify_failure(log)
            self._clean_after_failure(ar)
            exception = kind(ar, f"{reason} ({error}; after {(failed_ns - initiate_sent_ns) / 1e6:.1f} ms)", log)
            raise exception from error
        initiate_returned_ns = time.monotonic_ns()
        child_installed_ns, _ = self.listener.wait_for(
            "child-updown", lambda m: m.get("up") == "yes" and name in m, timeout=10.0)
        self.attached_to.add(ar)
        result = {
            "ar": ar,
            "method": self.params.method,
            "initiate_sent_ns": initiate_sent_ns,
            "child_installed_ns": child_installed_ns,
            "initiate_returned_ns": initiate_returned_ns,
            "elapsed_ms": (child_installed_ns - initiate_sent_ns) / 1e6,
            **summarize_ike(self.ike_counter.drain()),
        }
        if radius_counter is not None:
            result.update(summarize_radius(radius_counter.drain()))
        return result

    def set_mn_password(self, password: str) -> None:
        """Replace the EAP password the MN presents (RADIUS keeps its own): for refusal tests."""
        if not self.params.eap:
            raise IkeError("the MN has no EAP password in the psk baseline")
        session = self.charons[plan.MN].session
        assert session is not None
        request(session, "load-shared", {"id": "eap-mn", "type": "EAP", "data": password,
                                         "owners": [plan.MN_IDENTITY]})

    def _clean_after_failure(self, ar: str) -> None:
        for node in (plan.MN, ar):
            try:
                self.charons[node].terminate_all()
            except (CommandException, SessionException, OSError):
                pass

    def detach_old(self, ar: str) -> None:
        """Remove the IKE and CHILD SAs between the MN and ``ar`` on both sides, at once (force:
        no waiting for the DELETE exchange, the MN may no longer reach ``ar``)."""
        name = mn_connection_name(ar)
        for node, ike in ((ar, AR_CONNECTION), (plan.MN, name)):
            session = self.charons[node].session
            assert session is not None
            for entry in list(session.list_sas({"ike": ike})):
                for sa in entry.values():
                    try:
                        request(session, "terminate", {"ike-id": sa["uniqueid"], "force": "yes",
                                                       "timeout": "-1", "loglevel": "-1"})
                    except CommandException as error:
                        # The peer's DELETE (sent by the terminate on the other side) may win.
                        if "no matching SAs" not in str(error):
                            raise IkeError(f"terminating the IKE_SA {ike} on {node} failed: {error}") from error
        self.wait_no_sas(ar)
        self.attached_to.discard(ar)

    def wait_no_sas(self, ar: str, timeout: float = 5.0) -> None:
        """Wait until neither the MN's nor ``ar``'s charon lists an IKE_SA between them and neither
        kernel holds an XFRM state or policy for the MN's CoA at ``ar`` (charon removes an IKE_SA
        from its list before it deletes the kernel state)."""
        name = mn_connection_name(ar)
        deadline = time.monotonic() + timeout
        while True:
            left = []
            for node, ike in ((ar, AR_CONNECTION), (plan.MN, name)):
                session = self.charons[node].session
                assert session is not None  # open while the baseline runs
                if list(session.list_sas({"ike": ike})):
                    left.append(node)
            left += [f"{node} kernel" for node in (ar, plan.MN) if self._kernel_holds(node, ar)]
            if not left:
                return
            if time.monotonic() > deadline:
                raise IkeError(f"SAs between the MN and {ar} still present on {left} after {timeout} s")
            time.sleep(0.02)

    def _kernel_holds(self, node: str, ar: str) -> bool:
        """Whether ``node``'s kernel has an XFRM state or policy for the MN's CoA at ``ar``."""
        from ipsec.xfrm import Xfrm

        coa = plan.MN_COA[ar]
        with Xfrm(netns=f"/proc/{self.testbed.pid(node)}/ns/net") as xfrm:
            if any(coa in (state.saddr, state.daddr) for state in xfrm.dump_sas()):
                return True
            return any(policy.dir < 3 and coa in (policy.selector.saddr, policy.selector.daddr)
                       for policy in xfrm.dump_policies())

    # -- inspection (tests, reports) ----------------------------------------------------------
    def list_sas(self, node: str) -> list[dict]:
        return [_decode(entry) for entry in self.charons[node].sas()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="print the baseline's daemon configurations")
    parser.add_argument("--dry-run", metavar="METHOD", choices=("eap-mschapv2", "eap-md5", "psk"), required=True)
    parser.add_argument("--workdir", default=tempfile.mkdtemp(prefix="testbed-baseline-dry-run-"))
    arguments = parser.parse_args(argv)
    params = BaselineParams(method=arguments.dry_run, aaa=arguments.dry_run != "psk")
    workdir = Path(arguments.workdir)
    for node in CHARON_NODES:
        radius = (plan.AAA_ADDRESS, params.radius_secret) if node in AR_NODES and params.aaa else None
        print(Charon(None, node, workdir / node, radius).dry_run())
    if params.aaa:
        config = RadiusConfig(address=plan.AAA_ADDRESS, secret=params.radius_secret,
                              users={plan.MN_IDENTITY: params.password}, method=params.method)
        print(FreeRadius(None, config, workdir / plan.AAA).dry_run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
