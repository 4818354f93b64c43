"""One experiment in the running testbed: the agents, one handover of any declared method, the
checks after it, and the way back to a known clean state when a handover fails.

What a handover does is declared in :mod:`scenarios.runner.methods`; this module only runs the steps
every method shares (the security state it needs, a fresh CXTP key, the move, the MN's trigger,
waiting for the MN to finish) and calls the method's own hooks in between.

Every handover ends in a defined state: success, or a :class:`HandoverFailed` that the runner
records (with every node's SAD/SPD at that moment) before :meth:`Experiment.recover` removes
everything of the MN from every node and attaches it afresh.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from ipsec import IpsecContext, IpsecError, Xfrm, capture_context
from nodes import netns, provisioning
from nodes.contracts import AgentError, ArControl, HaControl, MnControl, MnStatus
from nodes.daemon import AgentProcess, DaemonError
from nodes.ike import IkeError, needs_aaa
from nodes.probe import DEFAULT_PORT
from scenarios.analysis import checks
from scenarios.records import HandoverRecord, Recovery
from scenarios.runner import methods
from scenarios.runner.baseline import IkeBaseline
from scenarios.runner.methods import Method, Security
from topo import plan
from topo.network import MoveTimes, Testbed

REPOSITORY = Path(__file__).resolve().parents[2]
READY_TIMEOUT_S = 90.0
STATE_ROOT = "/run/testbed-state"
SPI_MN_IN, SPI_MN_OUT = 0x102, 0x101  # the paper's §VI-A values: pAR->MN 0x102, MN->pAR 0x101
STATIC_SPI_STRIDE = 0x1000  # later static attaches: 0x1102/0x1101, 0x2102/0x2101, ...
#: how long the MN may take to finish a handover (its CTAR retransmissions end at CT_RETRY_MAX,
#: 15 s; a Binding Update is retransmitted from 1 s on): beyond this the handover has failed
IDLE_TIMEOUT_S = 20.0
#: how long the MN's kernel-driven trigger may take to be seen before the runner gives it itself
TRIGGER_TIMEOUT_S = 1.0


class ExperimentError(RuntimeError):
    """An agent did not start or refused a command."""


class HandoverFailed(ExperimentError):
    """A handover did not end in success; ``record`` holds what was measured up to the failure."""

    def __init__(self, reason: str, record: HandoverRecord | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.record = record


#: what a failing step may raise; anything else is a bug of the testbed and ends the run
STEP_ERRORS = (ExperimentError, AgentError, DaemonError, IkeError, IpsecError, OSError)


def pause(milliseconds: float) -> None:
    """Pacing (anticipation, settling): scenario timing, not a stand-in for protocol work."""
    time.sleep(milliseconds / 1000)


@dataclasses.dataclass(frozen=True)
class Move:
    """One move of an MN (MN 0 unless ``mn`` says), in the names every method's hooks use."""

    par: str
    nar: str
    mn: int = 0

    @property
    def par_address(self) -> str:
        return plan.AR_ACCESS_ADDRESS[self.par]

    @property
    def nar_address(self) -> str:
        return plan.AR_ACCESS_ADDRESS[self.nar]

    @property
    def mn_previous(self) -> str:
        return plan.mn_coa(self.mn, self.par)

    @property
    def mn_new(self) -> str:
        return plan.mn_coa(self.mn, self.nar)

    @property
    def mn_interface(self) -> str:
        """The MN's interface on the nAR's access link."""
        return plan.LINKS_BY_NAME[plan.ACCESS_LINK[self.nar]].interface(plan.MN)


class Experiment:
    """Agents on every node of a running testbed, and one handover of any declared method."""

    def __init__(self, testbed: Testbed, run_dir: Path, probe_rate: float = 500.0, probe_size: int = 64,
                 profile: str = "aes-cbc-sha256", ar_transport: str = "sctp", anticipation_ms: float = 100.0,
                 seed: int = 1, timers: dict[str, float] | None = None, tcp_interval_ms: float = 20.0,
                 storm_probe_rate: float | None = None,
                 agent_factory: Callable[..., AgentProcess] = AgentProcess,
                 baseline_factory: Callable[..., IkeBaseline] = IkeBaseline) -> None:
        """``agent_factory`` and ``baseline_factory`` start the agents and the IKE baseline's
        daemons (tests give stand-ins that record the commands the typed clients send)."""
        self.testbed = testbed
        self.agent_factory, self.baseline_factory = agent_factory, baseline_factory
        self.run_dir = run_dir
        self.profile = profile
        self.anticipation_ms = anticipation_ms
        self.timers = dict(timers or {})
        self.identity = plan.MN_IDENTITY
        #: the MN-HA key of RFC 4285 for the whole experiment: only the MN's own Binding Updates bind
        self.mobility_key = os.urandom(20).hex()
        self.agents: dict[str, AgentProcess] = {}
        # The ARs' install journals: on a tmpfs (they guard against a process that dies, not a
        # reboot), off the measured path's slow file system; removed when the experiment stops.
        self.state_root = Path(STATE_ROOT) / f"{run_dir.name}-{os.getpid()}"
        self.security: Security | None = methods.NO_SECURITY
        self.baseline: IkeBaseline | None = None
        #: how many of the testbed's MNs an IKE baseline serves (a storm sets all of them)
        self.baseline_mns = 1
        #: called after every change of kernel state the runner makes (security entered, a
        #: handover done, a recovery): the run's Wireshark profile collects the SAs there
        self.on_state_change: Callable[[], object] | None = None
        self.state_change_errors: list[str] = []
        self._pending_trigger: tuple | None = None
        self._fallback_triggered = False
        self._static_algorithms: dict[int, tuple] = {}
        self._static_generation = 0
        self._handovers = 0
        try:
            for ar in plan.ACCESS_ROUTERS:
                peers = [f"--peer={plan.AR_ACCESS_ADDRESS[other]}={plan.AR_LINK_ADDRESS[other]}"
                         for other in plan.ACCESS_ROUTERS if other != ar]
                self._start_agent(ar, "nodes.ar_agent", ArControl, [
                    "--name", ar, "--address", plan.AR_ACCESS_ADDRESS[ar],
                    "--access-interface", plan.ar_access_interface(ar, testbed.mns),
                    "--ar-transport", ar_transport, "--seed", str(seed),
                    "--link-address", plan.AR_LINK_ADDRESS[ar], *peers,
                    "--state-dir", str(self.state_root / ar), "--config", json.dumps(self.timers)])
            self._provision_ar_ar()
            more = self._more_mns(seed, storm_probe_rate or probe_rate)
            self._start_agent(plan.HA, "nodes.ha_agent", HaControl, [
                *more["ha"],
                "--probe-out", str(run_dir / "probe-ha.json"), "--home-address", plan.MN_HOME_ADDRESS,
                "--mn-namespace", str(testbed.pid(plan.MN)), "--mn-probe-out", str(run_dir / "probe-mn.json"),
                "--identity", self.identity, "--mobility-key", self.mobility_key,
                "--rate", str(probe_rate), "--size", str(probe_size),
                "--tcp-interval-ms", str(tcp_interval_ms), "--tcp-out", str(run_dir / "tcp-ha.json"),
                "--mn-tcp-out", str(run_dir / "tcp-mn.json"),
                "--bind", plan.HA_ADDRESS])
            self._start_agent(plan.MN, "nodes.mn_agent", MnControl, [
                *more["mn"],
                "--address", self.mn_address, "--ha", plan.HA_ADDRESS, "--identity", self.identity,
                "--mobility-key", self.mobility_key, "--home-table", str(plan.HOME_TABLE),
                "--home-address", plan.MN_HOME_ADDRESS,
                "--seed", str(seed)])
            # the other MNs' agents live in the first's process, each with its control socket
            self.mn_clients: dict[int, MnControl] = {
                index: MnControl(str(self.run_dir / f"{plan.mn_node(index)}.control"), name=plan.mn_node(index))
                for index in range(1, testbed.mns)}
        except BaseException:
            self.stop()
            raise

    def _more_mns(self, seed: int, probe_rate: float) -> dict[str, list[str]]:
        """With more than one MN: the files that tell the MN agent's process which MNs it hosts
        too, and the HA agent which MNs it serves; the arguments that name them."""
        testbed = self.testbed
        if testbed.mns == 1:
            return {"mn": [], "ha": []}
        self.mobility_keys = {index: os.urandom(20).hex() for index in range(1, testbed.mns)}
        mns, served = [], []
        for index in range(1, testbed.mns):
            name = plan.mn_node(index)
            namespace = testbed.mn_namespace_file(index)
            mns.append({"name": name, "namespace": namespace, "control": str(self.run_dir / f"{name}.control"),
                        "trace": str(self.run_dir / f"trace-{name}.jsonl"),
                        "address": plan.mn_coa(index, testbed.initial_ar), "identity": plan.mn_identity(index),
                        "mobility_key": self.mobility_keys[index], "home_address": plan.mn_home_address(index),
                        "seed": seed + 7 * index,
                        "home_tunnels": {plan.mn_coa(index, ar): plan.home_tunnel(plan.MN, ar)
                                         for ar in plan.ACCESS_ROUTERS}})
            served.append({"identity": plan.mn_identity(index), "mobility_key": self.mobility_keys[index],
                           "home_address": plan.mn_home_address(index), "namespace": namespace,
                           "tunnels": [plan.ha_home_tunnel(index, ar) for ar in plan.ACCESS_ROUTERS],
                           "port": DEFAULT_PORT + index, "probe_rate": probe_rate,
                           "ha_probe_out": str(self.run_dir / f"probe-{name}-ha.json"),
                           "mn_probe_out": str(self.run_dir / f"probe-{name}.json")})
        (self.run_dir / "mns-hosted.json").write_text(json.dumps(mns, indent=1) + "\n")
        (self.run_dir / "mns-served.json").write_text(json.dumps(served, indent=1) + "\n")
        return {"mn": ["--hosted", str(self.run_dir / "mns-hosted.json")],
                "ha": ["--more-mns", str(self.run_dir / "mns-served.json"), "--home-tunnels",
                       ",".join(plan.home_tunnel(plan.HA, ar) for ar in plan.ACCESS_ROUTERS)]}

    def _start_agent(self, node: str, module: str, contract: type, arguments: list[str]) -> None:
        try:
            self.agents[node] = self.agent_factory(self.testbed.host(node), module, arguments, self.run_dir, node,
                                                   contract, str(REPOSITORY), READY_TIMEOUT_S)
        except DaemonError as error:
            raise ExperimentError(f"agent {error}") from None

    # -- the agents, through their typed clients -----------------------------------------------------------
    @property
    def mn(self) -> MnControl:
        return self.agents[plan.MN].client

    @property
    def ha(self) -> HaControl:
        return self.agents[plan.HA].client

    def ar(self, name: str) -> ArControl:
        return self.agents[name].client

    def _provision_ar_ar(self) -> None:
        """CXTP between the ARs travels in ESP, set up before any handover (RFC 4067 §6.2)."""
        par_side, nar_side = provisioning.ar_ar_contexts(
            plan.AR_LINK_ADDRESS[plan.PAR], plan.AR_LINK_ADDRESS[plan.NAR], self.profile)
        self._ar_ar = {plan.PAR: par_side.encode().hex(), plan.NAR: nar_side.encode().hex()}
        for ar, context in self._ar_ar.items():
            self.ar(ar).provision(context=context)

    # -- plumbing ---------------------------------------------------------------------------------------
    @property
    def mn_address(self) -> str:
        ar = self.testbed.current_ar
        assert ar is not None  # the MN is attached from the testbed's start to its stop
        return plan.MN_COA[ar]

    def probe_lateness(self, start_ns: int, end_ns: int) -> dict[str, float | None]:
        """The p99 send lateness of each probe end between two instants (ms), asked of the probes
        themselves: the verdict the report gives from their traces later, available now."""
        answer = self.ha.lateness(start_ns=start_ns, end_ns=end_ns)
        return {end: answer[end] for end in ("mn", "ha")}

    def configure_timers(self, timers: dict[str, float]) -> None:
        """The ARs' CXTP timers, derived from the scenario's network (a sweep changes them)."""
        self.timers = dict(timers)
        for ar in plan.ACCESS_ROUTERS:
            self.ar(ar).configure(**self.timers)

    def stop(self) -> None:
        for client in getattr(self, "mn_clients", {}).values():
            client.close()
        self._stop_baseline()
        for agent in reversed(list(self.agents.values())):
            agent.stop()
        self.agents.clear()
        shutil.rmtree(self.state_root, ignore_errors=True)

    # -- security state -----------------------------------------------------------------------------------
    def enter(self, security: Security) -> None:
        """Put the security state a method needs in place at the MN's current AR (outside any
        measurement): the paper's static tunnel, or the IKE daemons of a baseline and a first
        authenticated attach. Every secure state adds the operator's access policy on the ARs and
        the MN's signalling bypass (and its guard: nothing to the HA in clear)."""
        if security == self.security:
            return
        self.leave()
        for router in plan.ACCESS_ROUTERS:
            self.ar(router).access_policy(prefix=plan.ACCESS_PREFIX[router], enable=security.secure)
        self.mn.signalling_bypass(enable=security.secure)
        ar = self.testbed.current_ar
        assert ar is not None  # the MN is attached from the testbed's start to its stop
        self.security = security  # from here on, a failure is cleaned up by leave()
        if security.static_tunnel:
            # Each attach with static SAs gets SAs of its own (the paper's SPIs the first time,
            # then SPIs of a new generation), so that nothing of an earlier attach (a packet still
            # in flight, a replay window) can meet the new SAs.
            generation, self._static_generation = self._static_generation, self._static_generation + 1
            spi_in, spi_out = (SPI_MN_IN + STATIC_SPI_STRIDE * generation, SPI_MN_OUT + STATIC_SPI_STRIDE * generation)
            mn_side, ar_side = (self._same_keys(context) for context in provisioning.initial_contexts(
                self.mn_address, plan.AR_ACCESS_ADDRESS[ar], plan.HA_ADDRESS, self.profile, spi_in, spi_out))
            self.ar(ar).provision(context=ar_side.encode().hex())
            self.mn.provision(context=mn_side.encode().hex())
        elif security.ike_auth is not None:
            several = {"mns": self.baseline_mns} if self.baseline_mns > 1 else {}
            self.baseline = self.baseline_factory(self.testbed, self.run_dir / f"ike-{security.name}",
                                                  method=security.ike_auth, aaa=needs_aaa(security.ike_auth),
                                                  **several)
            self.baseline.start()
            self.baseline.attach(ar)
        # the application's connection had nothing through for seconds: a new one, so that TCP's
        # backed-off timer does not carry into the next handovers' figures
        self.ha.tcp_reconnect()
        self._state_changed()

    def _same_keys(self, context: IpsecContext) -> IpsecContext:
        """The static SAs keep one set of keys per SPI for the whole run (as pre-shared static SAs
        would): a capture's every ESP packet then decrypts with one profile line per SA."""
        sas = tuple(dataclasses.replace(sa, algorithms=self._static_algorithms.setdefault(sa.spi, sa.algorithms))
                    for sa in context.sas)
        return dataclasses.replace(context, sas=sas)

    def _state_changed(self) -> None:
        if self.on_state_change is not None:
            try:
                self.on_state_change()
            except (IpsecError, OSError, ValueError) as error:  # evidence is best effort, never a failure
                self.state_change_errors.append(f"{type(error).__name__}: {error}")

    def leave(self) -> None:
        """Remove every trace of the MN's security state from every node: IKE daemons stopped,
        every SA and policy of any of the MN's addresses gone from the MN and both ARs, the ARs'
        engines and handlers forgetting it."""
        self._stop_baseline()
        addresses = [plan.MN_COA[ar] for ar in plan.ACCESS_ROUTERS]
        self.mn.clear(addresses=addresses)
        for router in plan.ACCESS_ROUTERS:
            for address in addresses:
                self.ar(router).clear_mn(mn=address)
        self.security = None

    def _stop_baseline(self) -> None:
        if self.baseline is not None:
            baseline, self.baseline = self.baseline, None
            baseline.stop()

    # -- one handover -----------------------------------------------------------------------------------
    def handover(self, method: Method, l2_delay_ms: float, *, index: int | None = None, warmup: bool = False,
                 sweep_value: float | None = None, back_after_ms: float | None = None) -> HandoverRecord:
        """Move the MN to the other AR with ``method``. Returns the record; raises
        :class:`HandoverFailed` (with the partial record) if the handover did not succeed, after the
        MN's own fall-back (a reactive retry of a failed transfer) did not help either.

        ``back_after_ms`` makes it a ping-pong: that long after the attach (before the handover has
        ended, for short gaps) the MN moves back to the AR it came from, with no anticipation (a
        link layer that fast gives none). The record is that of the move back, from the AR the MN
        had just reached; its note says so."""
        self._handovers += 1
        current_ar = self.testbed.current_ar
        assert current_ar is not None  # the MN is attached from the testbed's start to its stop
        move = Move(current_ar, self.testbed.other_ar())
        record = HandoverRecord(
            index=self._handovers if index is None else index, mn=self.identity, method=method.name,
            from_ar=move.par, to_ar=move.nar, mn_previous=move.mn_previous, mn_new=move.mn_new,
            l2_delay_ms=l2_delay_ms, warmup=warmup, sweep_value=sweep_value, note=method.note or None)
        self._pending_trigger, self._fallback_triggered = None, False
        try:
            self.enter(method.security)
            if method.cxtp:
                # The SPIs the MN uses before the move, for the Tables I-IV check after it (IKE picks
                # them at random; the static SAs use the paper's).
                spi = {sa.daddr: sa.spi for sa in self.xfrm_state(plan.MN, move.mn_previous).sas}
                record.spi_mn_in, record.spi_mn_out = spi.get(move.mn_previous), spi.get(move.par_address)
                self._fresh_key(move)
            if method.before_detach is not None:
                record.anticipation_start_ns = time.monotonic_ns()
                method.before_detach(self, move)
                pause(self.anticipation_ms)
            # The MN learns of the attach from its kernel (the default route through the new AR),
            # as a real host does; the runner only says beforehand what the method will be.
            self.mn.expect_move(interface=move.mn_interface, nar=move.nar_address, par=move.par_address,
                                new_address=move.mn_new, cxtp=method.cxtp, ipsec=method.cxtp)
            times = self.testbed.handover(move.nar, l2_delay_ms)
            if back_after_ms is not None:
                move, times = self._move_back(method, move, record, back_after_ms, l2_delay_ms)
            record.detach_start_ns, record.detached_ns = times.detach_start_ns, times.detached_ns
            record.attach_start_ns, record.attached_ns = times.attach_start_ns, times.attached_ns
            self._pending_trigger = (move, method, time.monotonic() + TRIGGER_TIMEOUT_S)
            if method.after_attach is not None:
                record.reauth = method.after_attach(self, move)
            status = self.wait_idle()
            record.trigger = "runner-fallback" if self._fallback_triggered else "kernel"
            record.completed = status["idle"]
            if method.cxtp:
                failure = _transfer_failure(status)
                if failure:
                    record.transfer_failure = failure
                    status = self._retry_reactive(move, record)
            if not status["idle"]:
                raise HandoverFailed("the MN's Binding Update got no Binding Ack", record)
            if not status["bound"]:
                raise HandoverFailed(f"the HA refused the MN's binding (Binding Ack status {status['ba_status']})",
                                     record)
            record.restored_ns = time.monotonic_ns()
            self._state_changed()
        except HandoverFailed as failure:
            failure.record = record
            raise
        except STEP_ERRORS as error:
            raise HandoverFailed(f"{type(error).__name__}: {error}", record) from None
        return record

    def _move_back(self, method: Method, move: Move, record: HandoverRecord, gap_ms: float,
                   l2_delay_ms: float) -> tuple[Move, MoveTimes]:
        """The second half of a ping-pong: ``gap_ms`` after the attach at ``move.nar``, back to
        ``move.par``. The record becomes that of the move back."""
        pause(gap_ms)
        back = Move(move.nar, move.par)
        record.from_ar, record.to_ar = back.par, back.nar
        record.mn_previous, record.mn_new = back.mn_previous, back.mn_new
        record.anticipation_start_ns = None
        record.note = "; ".join(filter(None, [record.note, f"ping-pong: back {gap_ms:g} ms after the attach at "
                                                             f"{back.par}, coming from {back.nar}"]))
        if method.cxtp:
            self._fresh_key(back)
        self.mn.expect_move(interface=back.mn_interface, nar=back.nar_address, par=back.par_address,
                            new_address=back.mn_new, cxtp=method.cxtp, ipsec=method.cxtp)
        return back, self.testbed.handover(back.nar, l2_delay_ms)

    def _trigger_fallback(self, status: MnStatus) -> None:
        """The MN's own trigger comes from the kernel's route event; if it has not come within
        the timeout (an event lost to a full socket buffer), the runner tells the MN itself."""
        if self._pending_trigger is None:
            return
        move, method, deadline = self._pending_trigger
        if not status.get("move_expected"):
            self._pending_trigger = None
        elif time.monotonic() >= deadline:
            self._pending_trigger = None
            self._fallback_triggered = True
            self.mn.attached(nar=move.nar_address, par=move.par_address, new_address=move.mn_new,
                             cxtp=method.cxtp, ipsec=method.cxtp)

    def _fresh_key(self, move: Move) -> None:
        give_fresh_key(self, move)

    def _retry_reactive(self, move: Move, record: HandoverRecord) -> MnStatus:
        """The MN's fall-back after a failed transfer: one reactive retry, with a fresh key, for the
        context the pAR still holds (it keeps it for its release hold)."""
        if not self.xfrm_state(move.par, move.mn_previous).sas:
            raise HandoverFailed(f"transfer failed ({record.transfer_failure}) and the pAR holds no context "
                                 "to retry with", record)
        self._fresh_key(move)
        self.mn.retry_reactive(par=move.par_address, nar=move.nar_address, previous=move.mn_previous)
        record.retry_sent_ns = time.monotonic_ns()
        status = self.wait_idle()
        failure = _transfer_failure(status)
        if failure:
            raise HandoverFailed(f"transfer failed ({record.transfer_failure}), and the reactive retry too "
                                 f"({failure})", record)
        return status

    def wait_idle(self, timeout_s: float = IDLE_TIMEOUT_S, poll_ms: float = 20.0) -> MnStatus:
        """Readiness, not a sleep: poll the MN until its CXTP transaction and its binding update are
        done (or failed, after their own retransmissions), so handovers never overlap. An agent that
        died meanwhile ends the wait at once."""
        deadline = time.monotonic() + timeout_s
        while True:
            # first a pause, then the question: a handover is not over the moment the attach is,
            # and a request then would reach the MN's agent with the kernel's attach event, on
            # the guest's one CPU, and be served first
            pause(poll_ms)
            dead = [name for name, agent in self.agents.items() if not agent.alive]
            if dead:
                raise HandoverFailed(f"agent {', '.join(dead)} died during the handover")
            status = self.mn.status()
            self._trigger_fallback(status)
            if (status["idle"] and not status.get("move_expected")) or time.monotonic() >= deadline:
                return status

    # -- after a handover (outside the measured interval) -------------------------------------------------
    def verify(self, method: Method, record: HandoverRecord, release_timeout_s: float) -> list[str]:
        """Every problem with the state after a handover; [] if none. Nothing of the MN's previous
        address may stay on any node (the pAR releases after the CTDR, a moment after the MN is done;
        after a late or missing CTDR, within its release hold); a CXTP handover must leave the
        SAD/SPD of Tables I-IV."""
        deadline = time.monotonic() + release_timeout_s
        while True:
            left = self.leftovers(record.mn_previous)
            if not left or time.monotonic() >= deadline:
                break
            pause(20)
        problems = self.traffic_problems(record)
        problems += [f"{node} still holds {what} of the MN's previous address" for node, what in left.items()]
        if method.cxtp:
            nar = record.to_ar
            problems += checks.check_tables(
                self.xfrm_state(plan.MN, record.mn_new), self.xfrm_state(nar, record.mn_new),
                IpsecContext(), record.mn_new, plan.AR_ACCESS_ADDRESS[nar], plan.HA_ADDRESS,
                record.spi_mn_in or SPI_MN_IN, record.spi_mn_out or SPI_MN_OUT)
        return problems

    def traffic_problems(self, record: HandoverRecord) -> list[str]:
        """What the traffic says of the handover: the probes flow in both directions through the
        new router since the MN was done (the MN's interface on the nAR's link receives the
        downlink, the HA's link to the nAR the uplink), and the HA's binding names the MN's new
        address. [] when all of that holds; otherwise why it does not."""
        since = record.restored_ns or record.attached_ns or 0
        arrivals = self.ha.arrivals(since_ns=since)
        interfaces = methods.get(record.method).path_interfaces(record.to_ar)
        problems = [f"no {direction} through {record.to_ar} since the handover ended (received: {arrivals[end]})"
                    for end, direction in ((plan.MN, "downlink"), (plan.HA, "uplink"))
                    if not arrivals[end].get(interfaces[end])]
        care_of = self.ha.binding()["care_of"]
        if care_of != record.mn_new:
            problems.append(f"the HA's binding names {care_of}, not the MN's address {record.mn_new}")
        return problems

    def leftovers(self, address: str) -> dict[str, str]:
        """Nodes that hold SAs or policies naming ``address``, with what they hold."""
        found = {}
        for node in (plan.MN, *plan.ACCESS_ROUTERS):
            context = self.xfrm_state(node, address)
            if context.sas or context.policies:
                found[node] = f"{len(context.sas)} SAs and {len(context.policies)} policies"
        return found

    def recover(self, security: Security) -> Recovery:
        """Back to a known clean state after a failed handover: dead agents restarted, nothing of
        the MN on any node, then a fresh attach at the AR the MN is on, with the security state the
        method needs (``security``). Returns what was done, for the record."""
        restarted = []
        for name, agent in self.agents.items():
            if not agent.alive:
                agent.restart()
                restarted.append(name)
        if restarted and any(ar in restarted for ar in plan.ACCESS_ROUTERS):
            for ar in plan.ACCESS_ROUTERS:
                self.ar(ar).provision(context=self._ar_ar[ar])
        self.leave()
        left = {address: self.leftovers(address) for address in (plan.MN_COA[ar] for ar in plan.ACCESS_ROUTERS)}
        left = {address: nodes for address, nodes in left.items() if nodes}
        if left:
            raise ExperimentError(f"state of the MN survived the clean-up: {left}")
        self.mn.fresh_attach(address=self.mn_address)
        self.enter(security)
        status = self.wait_idle()
        return Recovery(restarted_agents=restarted, fresh_attach_ns=time.monotonic_ns(), bound=status["idle"])

    def snapshot(self) -> dict[str, list[str]]:
        """Every node's whole SAD and SPD, one line per entry, for a failure's record."""
        self._state_changed()  # the SAs of a failed handover, while they still exist
        state = {}
        for node in (plan.MN, *plan.ACCESS_ROUTERS):
            try:
                with netns.entered(self.testbed.pid(node)):
                    xfrm = Xfrm()
                try:
                    context = IpsecContext(sas=tuple(xfrm.dump_sas()), policies=tuple(xfrm.dump_policies()))
                finally:
                    xfrm.close()
                state[node] = checks.describe(context)
            except (IpsecError, OSError) as error:
                state[node] = [f"unreadable: {error}"]
        return state

    def xfrm_state(self, node: str, address: str, mn: int = 0) -> IpsecContext:
        """``node``'s SAs and policies naming ``address`` (for ``node`` the MN: MN ``mn``'s)."""
        with netns.entered(self.testbed.mn_target(mn) if node == plan.MN else self.testbed.pid(node)):
            xfrm = Xfrm()
        try:
            return capture_context(xfrm, address)
        finally:
            xfrm.close()

    def xfrm_stat(self, node: str) -> dict[str, int]:
        """A node's kernel IPsec counters (``/proc/net/xfrm_stat``); ``mn<i>`` names MN ``i``."""
        if node.startswith(plan.MN) and node != plan.MN:
            index = int(node[len(plan.MN):])

            def read() -> str:  # /proc/thread-self/net is the namespace of the thread that reads it
                return Path("/proc/thread-self/net/xfrm_stat").read_text()
            text = netns.call_in(self.testbed.mn_target(index), read)
        else:
            text = Path(f"/proc/{self.testbed.pid(node)}/net/xfrm_stat").read_text()
        return {name: int(value) for name, value in (line.split() for line in text.splitlines() if line.strip())}

    def counted_nodes(self) -> tuple[str, ...]:
        """The nodes whose IPsec counters a run records: every MN, the ARs."""
        return (*(plan.mn_node(index) for index in range(self.testbed.mns)), *plan.ACCESS_ROUTERS)


def give_fresh_key(mn_and_ars, move: Move) -> None:
    """A fresh CXTP key for one transaction, shared by the MN and its current AR: RFC 4067 leaves
    key establishment open and forbids reuse (§6.3). Given out of band, unmeasured.
    ``mn_and_ars``: what has the MN's client as ``mn`` and the ARs' as ``ar(name)`` (an
    experiment, or one MN of a storm)."""
    key = os.urandom(20).hex()
    mn_and_ars.mn.set_key(key=key)
    mn_and_ars.ar(move.par).set_mn_key(mn=move.mn_previous, key=key)


def _transfer_failure(status: MnStatus) -> str | None:
    """Why the MN's last CXTP transaction failed, or None if it succeeded."""
    if not status["idle"] and status.get("cxtp_in_progress"):
        return "no CTAA before the MN's wait ended"
    outcome = status.get("outcome")
    if outcome is None or outcome["transaction"] != status["transactions"]:
        return "the MN reported no outcome of this CXTP transaction"
    if outcome["result"] != "completed":
        codes = ", ".join(f"{fpt:#x}:{code:#04x}" for fpt, code in outcome["statuses"])
        return f"{outcome['reason']}" + (f" (statuses {codes})" if codes else "")
    return None

