"""One experiment in the running testbed: the agents, the methods' handover procedures, the checks.

Methods (all over the same probe stream, in one run):

========================  ==================================================================
``none``                  no security: attach, Binding Update; the reference line
``cxtp-predictive``       MN-initiated predictive: CTAR to the pAR before the move (PCTD to
                          the nAR), CTAR to the nAR after it (activation, CTAA, CTDR)
``cxtp-reactive``         MN-initiated reactive: after the move, CTAR to the nAR, CT-Req to the
                          pAR, CTD back, activation, CTAA, CTDR
``cxtp-network``          network-initiated by the pAR (predictive): PCTD with key material on
                          the pAR's trigger, then the MN's CTAR to the nAR activates it
``cxtp-reactive-ike``      ``cxtp-reactive`` starting from SAs that IKEv2 (PSK) negotiated at the
                          pAR instead of static ones: the kernel SAs and policies move, the IKE
                          SA itself stays behind at the pAR (moving it is a later step)
``reauth-eap``             full re-authentication: after the move, a fresh IKEv2 initiation at
                          the nAR with EAP-MSCHAPv2 relayed by the nAR to RADIUS; then the old
                          SAs at the pAR are removed (strongSwan and FreeRADIUS, nodes/ike.py)
``reauth-eap-md5``         the same with EAP-MD5
``reauth-psk``             the same with a pre-shared key and no AAA: the cheaper baseline
========================  ==================================================================

Everything the runner does between handovers (keys, provisioning, checks) happens outside the
measured interval; inside it only the agents' own protocol work happens.
"""

from __future__ import annotations

import os
import select
import signal
import sys
import time
from pathlib import Path

from ipsec import IpsecContext, Xfrm, capture_context
from nodes import ipsec_handler, netns
from nodes.agent import AgentClient
from topo import plan
from topo.network import Testbed

REAUTH_METHODS = {"reauth-eap": "eap-mschapv2", "reauth-eap-md5": "eap-md5", "reauth-psk": "psk"}
CXTP_METHODS = ("cxtp-predictive", "cxtp-reactive", "cxtp-network", "cxtp-reactive-ike")
METHODS = ("none", *CXTP_METHODS, *REAUTH_METHODS)
# How each method's IPsec state starts, for the run record.
METHOD_NOTES = {
    "cxtp-reactive-ike": "SAs and policies negotiated by IKEv2 (PSK, strongSwan) at the pAR; CXTP moves "
                         "the kernel SAs and policies; the IKE SA stays behind at the pAR and is not moved",
}
PREDICTIVE_METHODS = ("cxtp-predictive", "cxtp-network")
REPOSITORY = Path(__file__).resolve().parent.parent
READY_TIMEOUT_S = 90.0
MN_IDENTITY = "mn@testbed"
SPI_MN_IN, SPI_MN_OUT = 0x102, 0x101  # the paper's §VI-A values: pAR->MN 0x102, MN->pAR 0x101


class ExperimentError(RuntimeError):
    """An agent did not start or refused a command; the experiment cannot go on."""


class AgentProcess:
    """An agent started in a host, by the PID we keep; stopped with SIGTERM by that PID."""

    def __init__(self, testbed: Testbed, node: str, module: str, arguments: list[str], run_dir: Path,
                 name: str | None = None, controlled: bool = True) -> None:
        self.name = name or node
        self.client = None
        command = [sys.executable, "-m", module, *arguments]
        if controlled:
            self.control = str(run_dir / f"{self.name}.control")
            command += ["--control", self.control, "--trace", str(run_dir / f"trace-{self.name}.jsonl")]
        self.process = testbed.host(node).popen(command, cwd=str(REPOSITORY), stdout=-1, stderr=None)
        self._wait_ready()
        if controlled:
            self.client = AgentClient(self.control)

    def _wait_ready(self) -> None:
        """Readiness check: the agent prints READY once its sockets are bound."""
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            readable, _, _ = select.select([self.process.stdout], [], [], 1.0)
            if readable:
                line = self.process.stdout.readline()
                if line.startswith(b"READY"):
                    return
                if not line and self.process.poll() is not None:
                    break
        raise ExperimentError(f"agent {self.name} did not become ready (exit status {self.process.poll()})")

    def request(self, cmd: str, **arguments):
        try:
            return self.client.request(cmd, **arguments)
        except Exception as error:
            raise ExperimentError(f"{self.name}: {error}") from None

    def stop(self) -> None:
        if self.client is not None:
            self.client.close()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except Exception:
                self.process.kill()
                self.process.wait()


class Experiment:
    """Agents on every node of a running testbed, and the handover procedure of each method."""

    def __init__(self, testbed: Testbed, run_dir: Path, probe_rate: float = 1000.0, probe_size: int = 64,
                 profile: str = "aes-cbc-sha256", ar_transport: str = "sctp", anticipation_ms: float = 100.0,
                 seed: int = 1) -> None:
        self.testbed = testbed
        self.run_dir = run_dir
        self.profile = profile
        self.anticipation_ms = anticipation_ms
        self.agents: dict[str, AgentProcess] = {}
        self.mode = "none"  # "none", "cxtp", or the auth method of the running IKE baseline
        self.baseline = None
        try:
            for ar in plan.ACCESS_ROUTERS:
                peers = [f"--peer={plan.AR_ACCESS_ADDRESS[other]}={plan.AR_LINK_ADDRESS[other]}"
                         for other in plan.ACCESS_ROUTERS if other != ar]
                self.agents[ar] = AgentProcess(testbed, ar, "nodes.ar_agent", [
                    "--name", ar, "--address", plan.AR_ACCESS_ADDRESS[ar],
                    "--access-interface", plan.LINKS_BY_NAME[plan.ACCESS_LINK[ar]].interface(ar),
                    "--ar-transport", ar_transport, "--seed", str(seed),
                    "--link-address", plan.AR_LINK_ADDRESS[ar], *peers], run_dir)
            # CXTP between the ARs travels in ESP, set up before any handover (RFC 4067 §6.2).
            par_side, nar_side = ipsec_handler.ar_ar_contexts(
                plan.AR_LINK_ADDRESS[plan.PAR], plan.AR_LINK_ADDRESS[plan.NAR], profile)
            self.agents[plan.PAR].request("provision", context=par_side.encode().hex())
            self.agents[plan.NAR].request("provision", context=nar_side.encode().hex())
            self.agents[plan.HA] = AgentProcess(testbed, plan.HA, "nodes.ha_agent", [
                "--probe-out", str(run_dir / "probe-ha.json"), "--initial-peer", self.mn_address,
                "--identity", MN_IDENTITY, "--rate", str(probe_rate), "--size", str(probe_size),
                "--bind", plan.HA_ADDRESS], run_dir)
            self.agents[plan.MN] = AgentProcess(testbed, plan.MN, "nodes.mn_agent", [
                "--address", self.mn_address, "--ha", plan.HA_ADDRESS, "--identity", MN_IDENTITY,
                "--seed", str(seed)], run_dir)
            self.agents["mn-probe"] = AgentProcess(testbed, plan.MN, "nodes.probe", [
                "--role", "mn", "--peer", plan.HA_ADDRESS, "--out", str(run_dir / "probe-mn.json"),
                "--rate", str(probe_rate), "--size", str(probe_size)], run_dir, name="mn-probe", controlled=False)
        except BaseException:
            self.stop()
            raise

    # -- addresses ----------------------------------------------------------------------------------
    @property
    def mn_address(self) -> str:
        return plan.MN_COA[self.testbed.current_ar]

    def stop(self) -> None:
        self._stop_baseline()
        for agent in reversed(list(self.agents.values())):
            agent.stop()
        self.agents.clear()

    # -- IPsec state between methods ------------------------------------------------------------
    @staticmethod
    def mode_of(method: str) -> str:
        if method == "cxtp-reactive-ike":
            return "cxtp-ike"
        if method in CXTP_METHODS:
            return "cxtp"
        return REAUTH_METHODS.get(method, "none")

    def set_mode(self, mode: str) -> None:
        """Put the security state the method needs in place (outside any measurement).

        ``none``: no IPsec anywhere. ``cxtp``: the paper's static tunnel at the current AR
        (Fig. 5). An auth method (``eap-mschapv2``, ``eap-md5``, ``psk``): the IKE daemons of that
        baseline, and a first authenticated attach at the current AR. ``cxtp-ike``: the PSK
        baseline's attach at the current AR, whose SAs CXTP then moves. Every secure mode adds the
        operator's access policy on the ARs and the MN's signalling bypass.
        """
        if mode == self.mode:
            return
        ar = self.testbed.current_ar
        # Leave the current mode.
        if self.mode in ("cxtp", "cxtp-ike"):
            self.agents[plan.MN].request("clear")
            for router in plan.ACCESS_ROUTERS:
                self.agents[router].request("clear_mn", mn=self.mn_address)
        if self.mode not in ("none", "cxtp"):
            self._stop_baseline()
        secure = mode != "none"
        for router in plan.ACCESS_ROUTERS:
            self.agents[router].request("access_policy", prefix=plan.ACCESS_PREFIX[router], enable=secure)
        self.agents[plan.MN].request("signalling_bypass", enable=secure)
        # Enter the new one.
        if mode == "cxtp":
            mn_side, ar_side = ipsec_handler.initial_contexts(
                self.mn_address, plan.AR_ACCESS_ADDRESS[ar], plan.HA_ADDRESS, self.profile, SPI_MN_IN, SPI_MN_OUT)
            self.agents[ar].request("provision", context=ar_side.encode().hex())
            self.agents[plan.MN].request("provision", context=mn_side.encode().hex())
        elif mode != "none":
            from nodes.ike import IkeBaseline  # strongSwan and FreeRADIUS only when asked for

            auth = "psk" if mode == "cxtp-ike" else mode
            self.baseline = IkeBaseline(self.testbed, self.run_dir / f"ike-{mode}", method=auth,
                                        aaa=auth != "psk")
            self.mode = mode  # so that a failed start is cleaned up by stop()
            self.baseline.start()
            self.baseline.attach(ar)
        self.mode = mode

    def set_ipsec(self, active: bool) -> None:
        self.set_mode("cxtp" if active else "none")

    def _stop_baseline(self) -> None:
        if self.baseline is not None:
            self.baseline.stop()
            self.baseline = None

    # -- one handover -----------------------------------------------------------------------------
    def handover(self, method: str, l2_delay_ms: float) -> dict:
        if method not in METHODS:
            raise ExperimentError(f"unknown method {method!r}")
        self.set_mode(self.mode_of(method))
        par, nar = self.testbed.current_ar, self.testbed.other_ar()
        par_address, nar_address = plan.AR_ACCESS_ADDRESS[par], plan.AR_ACCESS_ADDRESS[nar]
        mn_previous, mn_new = plan.MN_COA[par], plan.MN_COA[nar]
        if method in CXTP_METHODS:
            # The SPIs the MN uses before the move, for the Tables I-IV check after it (IKE picks
            # them at random; the static SAs use the paper's).
            spi = {sa.daddr: sa.spi for sa in self.xfrm_state(plan.MN, mn_previous).sas}
            marks_spi = {"spi_mn_in": spi.get(mn_previous), "spi_mn_out": spi.get(par_address)}
            # A fresh CXTP key for this transaction, shared by the MN and its current AR: RFC 4067
            # leaves key establishment open and forbids reuse (§6.3). Given out of band, unmeasured.
            key = os.urandom(20).hex()
            self.agents[plan.MN].request("set_key", key=key)
            self.agents[par].request("set_mn_key", mn=mn_previous, key=key)
        marks = {"anticipation_start_ns": None, **(marks_spi if method in CXTP_METHODS else {})}
        if method in METHOD_NOTES:
            marks["note"] = METHOD_NOTES[method]
        if method == "cxtp-predictive":
            marks["anticipation_start_ns"] = time.monotonic_ns()
            self.agents[plan.MN].request("predictive", par=par_address, nar=nar_address)
            _pause(self.anticipation_ms)
        elif method == "cxtp-network":
            marks["anticipation_start_ns"] = time.monotonic_ns()
            self.agents[par].request("trigger_predictive", mn=mn_previous, nar=nar_address)
            _pause(self.anticipation_ms)
        record = self.testbed.handover(nar, l2_delay_ms).as_dict()
        self.agents[plan.MN].request("attached", nar=nar_address, par=par_address, new_address=mn_new,
                                     cxtp=method in CXTP_METHODS, ipsec=method in CXTP_METHODS)
        record["trigger_sent_ns"] = time.monotonic_ns()
        record.update(marks, method=method, mn_previous=mn_previous, mn_new=mn_new)
        if method in REAUTH_METHODS:
            # Authenticate from scratch at the nAR (a fresh IKE initiation, not a rekey), then
            # remove the old SAs at the pAR and on the MN.
            record["reauth"] = self.baseline.attach(nar)
            self.baseline.detach_old(par)
        record["completed"] = self.wait_idle()
        return record

    def wait_idle(self, timeout_s: float = 20.0, poll_ms: float = 20.0) -> bool:
        """Readiness, not a sleep: poll the MN until its CXTP transaction and its binding update are
        done (or failed, after their own retransmissions), so handovers never overlap."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.agents[plan.MN].request("status")["idle"]:
                return True
            _pause(poll_ms)
        return False

    # -- checks after a handover (outside the measured interval) --------------------------------
    def xfrm_state(self, node: str, address: str) -> IpsecContext:
        with netns.entered(self.testbed.pid(node)):
            xfrm = Xfrm()
        try:
            return capture_context(xfrm, address)
        finally:
            xfrm.close()

    def xfrm_stat(self, node: str) -> dict[str, int]:
        text = Path(f"/proc/{self.testbed.pid(node)}/net/xfrm_stat").read_text()
        return {name: int(value) for name, value in (line.split() for line in text.splitlines() if line.strip())}


def _pause(milliseconds: float) -> None:
    """Pacing (anticipation, settling): scenario timing, not a stand-in for protocol work."""
    time.sleep(milliseconds / 1000)
