"""Handover storms: K MNs of one testbed moving at once, each with a CXTP method over the paper's
static SAs or with full re-authentication, each driven and waited for on its own.

An :class:`~scenarios.runner.experiment.Experiment` on a testbed of several MNs
(``Testbed(mns=N)``) runs every MN's agent: MN 0's as always, the others hosted by the same
processes (:meth:`nodes.agent.Agent.host`). A :class:`Storm` gives each MN its own security state
(static SAs with SPIs of its own, never colliding on any node), moves the chosen MNs within a
window (all at once, or at Poisson arrivals), and returns one record per MN: ``ok``, or a failure
that names why, after which nothing of that MN is left on any node and it is attached afresh.

A storm of re-authentication runs a charon per MN (:class:`~scenarios.runner.baseline.IkeBaseline`
with ``mns``; each MN's in its own namespace, under its own identity) against the ARs' one charon
each and the one FreeRADIUS. Each MN's record then carries what the AAA server did for it, from a
capture at the AAA node with the kernel's timestamps: its Access-Requests, FreeRADIUS's time on
them (``aaa_residence_ms``: queue and service, summed) and the span from its first Access-Request's
arrival to its Access-Accept's departure (``aaa_span_ms``).
"""

from __future__ import annotations

import dataclasses
import random
import threading
import time
from typing import cast

from ipsec import IpsecContext
from nodes import provisioning
from nodes.contracts import AgentError, ArControl, MnControl, MnStatus
from nodes.ike import ACCESS_ACCEPT, RADIUS_PORT, Tap, needs_aaa, radius_at_aaa
from scenarios import config
from scenarios.analysis.metrics import lateness_window
from scenarios.records import Failure, HandoverRecord
from scenarios.runner import methods as methods_registry
from scenarios.runner.baseline import MnBaseline
from scenarios.runner.experiment import (
    IDLE_TIMEOUT_S,
    STEP_ERRORS,
    TRIGGER_TIMEOUT_S,
    Experiment,
    Move,
    _transfer_failure,
    give_fresh_key,
    pause,
)
from scenarios.runner.methods import Method
from topo import plan

#: MN ``i``'s static SPIs: ``i << 20`` above the generation's pair (MN 0 keeps the paper's 0x102 and
#: 0x101 and the experiment's own stride), so no two MNs' SAs share an SPI on any node
MN_SPI_SHIFT = 20
GENERATION_SPI_STRIDE = 4


class StormError(RuntimeError):
    """A storm could not be run as asked (an MN the testbed lacks, a method a storm cannot run)."""


@dataclasses.dataclass
class MnView:
    """One MN of the experiment in the names a method's hooks use (``mn``, ``ar``)."""

    experiment: Experiment
    index: int
    #: during a storm, this MN's deferred view of the IKE baseline (:meth:`Storm.storm`)
    storm_baseline: MnBaseline | None = None

    @property
    def mn(self) -> MnControl:
        return self.experiment.mn if self.index == 0 else self.experiment.mn_clients[self.index]

    def ar(self, name: str) -> ArControl:
        return self.experiment.ar(name)

    @property
    def identity(self) -> str:
        return plan.mn_identity(self.index)

    @property
    def baseline(self):
        """This MN's side of the storm's IKE baseline (the re-authentication hooks' ``baseline``)."""
        if self.storm_baseline is not None:
            return self.storm_baseline
        baseline = self.experiment.baseline
        assert baseline is not None  # entering a re-authentication method started it
        return baseline.of_mn(self.index)


class StatusPoller:
    """One question, every ``poll_ms``, for the status of every MN still moving: the MN agent's
    process hosts them all, so K questions of their own would cost it (and the runner) K times
    the CPU on the guest's one CPU, in the middle of the storm they measure. Each MN's thread
    takes the answers that came after its own last one."""

    def __init__(self, client: MnControl, poll_ms: float = 20.0) -> None:
        self.client, self.poll_ms = client, poll_ms
        self._changed = threading.Condition()
        self._watching: set[str] = set()
        self._latest: dict[str, tuple[int, MnStatus]] = {}
        self._round = 0
        self._error: BaseException | None = None
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="storm-poller", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            with self._changed:
                while not self._watching and not self._stopping:
                    self._changed.wait()
                if self._stopping:
                    return
                identities = sorted(self._watching)
            pause(self.poll_ms)  # first a pause, then the question (see Experiment.wait_idle)
            error: BaseException | None = None
            try:
                answer = self.client.statuses(identities=identities)["statuses"]
            except STEP_ERRORS as failure:
                answer, error = {}, failure
            with self._changed:
                self._round += 1
                for identity, status in answer.items():
                    self._latest[identity] = (self._round, cast(MnStatus, status))
                self._error = error
                self._changed.notify_all()

    @property
    def round(self) -> int:
        with self._changed:
            return self._round

    def after(self, identity: str, seen: int) -> tuple[int, MnStatus]:
        """The first status of ``identity`` asked after round ``seen``, and its round."""
        with self._changed:
            self._watching.add(identity)
            self._changed.notify_all()
            while True:
                latest = self._latest.get(identity)
                if latest is not None and latest[0] > seen:
                    return latest
                if self._error is not None and self._round > seen:
                    raise self._error
                if self._stopping:
                    raise StormError("the storm's status poller stopped")
                self._changed.wait(timeout=1.0)

    def forget(self, identity: str) -> None:
        with self._changed:
            self._watching.discard(identity)

    def stop(self) -> None:
        with self._changed:
            self._stopping = True
            self._changed.notify_all()
        self._thread.join(timeout=5)
        self.client.close()


def static_spis(index: int, generation: int) -> tuple[int, int]:
    """(into the MN, out of it) for MN ``index``'s ``generation``-th static attach."""
    base = (index << MN_SPI_SHIFT) + GENERATION_SPI_STRIDE * generation
    return base + 2, base + 1


class Storm:
    """Storms of handovers of the MNs of ``experiment`` (whose testbed has several)."""

    def __init__(self, experiment: Experiment, seed: int = 1, probe_rate: float | None = None,
                 probe_budget: float | None = None) -> None:
        """``probe_rate``: each MN's probe streams' rate (default the scenario default's); the moving
        MNs send at it, slowed so that together they stay within ``probe_budget`` a second."""
        self.experiment = experiment
        self.probe_rate = probe_rate or config.DEFAULTS["storm"]["probe_rate"]
        self.probe_budget = probe_budget or config.DEFAULTS["storm"]["probe_budget"]
        #: the moving MNs' probe interval in the last storm (ms): its figures' resolution
        self.probe_interval_ms = 1000.0 / self.probe_rate
        self.testbed = experiment.testbed
        self.views = {index: MnView(experiment, index) for index in range(self.testbed.mns)}
        self.rng = random.Random(seed)
        self._generation = dict.fromkeys(range(1, self.testbed.mns), 0)
        self._handovers = 0
        self.method: Method | None = None
        self.poller: StatusPoller | None = None
        #: the last storm's records until :meth:`finish` (method, records, movers, AAA packets)
        self._unfinished: tuple[Method, list[HandoverRecord], list[int], list | None] | None = None

    # -- security state ---------------------------------------------------------------------------
    def enter(self, method: Method) -> None:
        """The security state every MN needs for ``method`` (the paper's static SAs, an IKE_SA and
        CHILD_SA with its AR, or none): MN 0's through the experiment, the others' here, each at its
        current AR."""
        if not config.storm_capable(method.name):
            raise StormError(f"a storm runs no security, CXTP over static SAs or re-authentication with a "
                             f"pre-shared key or EAP-MSCHAPv2/MD5, not {method.name}")
        baseline = self.experiment.baseline
        if baseline is not None and baseline.mns != self.testbed.mns:
            self.experiment.leave()  # a baseline of MN 0 alone: one of every MN replaces it
        changed = self.experiment.security != method.security
        self.experiment.baseline_mns = self.testbed.mns
        self.experiment.enter(method.security)
        if changed:
            for index in range(1, self.testbed.mns):
                self._enter_mn(index, method)
        self.method = method

    def _enter_mn(self, index: int, method: Method) -> None:
        view = self.views[index]
        view.mn.clear(addresses=[plan.mn_coa(index, ar) for ar in plan.ACCESS_ROUTERS])
        for ar in plan.ACCESS_ROUTERS:
            view.ar(ar).clear_mn(mn=plan.mn_coa(index, ar))
        view.mn.signalling_bypass(enable=method.security.secure)
        if method.security.static_tunnel:
            current = self.testbed.attached[index]
            assert current is not None  # every MN is attached from the testbed's start to its stop
            generation = self._generation[index]
            self._generation[index] = generation + 1
            spi_in, spi_out = static_spis(index, generation)
            mn_side, ar_side = provisioning.initial_contexts(
                plan.mn_coa(index, current), plan.AR_ACCESS_ADDRESS[current], plan.HA_ADDRESS,
                self.experiment.profile, spi_in, spi_out, reqid=1 + index)
            view.ar(current).provision(context=ar_side.encode().hex())
            view.mn.provision(context=mn_side.encode().hex())
        elif method.security.ike_auth is not None:
            current = self.testbed.attached[index]
            assert current is not None
            view.baseline.attach(current)

    # -- one storm --------------------------------------------------------------------------------
    def storm(self, method: Method, movers: list[int], l2_delay_ms: float, window_ms: float = 0.0,
              rate_per_s: float | None = None, back_after_ms: float | None = None,
              finish: bool = True) -> list[HandoverRecord]:
        """Move every MN of ``movers`` to its other AR with ``method``: all at once (``window_ms``
        0), spread uniformly over ``window_ms``, or at Poisson arrivals of ``rate_per_s``; with
        ``back_after_ms``, each moves back that long after its attach (a ping-pong, its record
        the move back's). Returns one record per MN, in the order of ``movers``: ``ok``,
        ``recovered`` (its transfer failed and its reactive retry restored it) or ``failed``
        (then the MN is recovered)."""
        unknown = [index for index in movers if not 0 <= index < self.testbed.mns]
        if unknown or len(set(movers)) != len(movers):
            raise StormError(f"movers must be distinct MNs of 0..{self.testbed.mns - 1}: {movers}")
        self.enter(method)
        self._pace(movers)
        offsets = self._offsets(len(movers), window_ms, rate_per_s)
        records: dict[int, HandoverRecord] = {}
        tap = self._aaa_tap(method)
        baseline = self.experiment.baseline if method.security.ike_auth is not None else None
        for index in movers:  # what only the runner needs waits until every MN is done
            self.views[index].storm_baseline = baseline.of_mn(index, deferred=True) if baseline else None
        start = time.monotonic() + 0.05  # every thread started before the first move
        self.poller = StatusPoller(MnControl(self.experiment.agents[plan.MN].control_path, name="mn-storm"))
        threads = [threading.Thread(target=self._one, args=(method, index, l2_delay_ms, start + offset, records,
                                                            back_after_ms),
                                    name=f"storm-{plan.mn_node(index)}") for index, offset in zip(movers, offsets)]
        try:
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        finally:
            self.poller.stop()
            packets = tap.drain() if tap is not None else []
            if tap is not None:
                tap.close()
        ordered = [records[index] for index in movers]
        self._unfinished = (method, ordered, movers, packets if tap is not None else None)
        if finish:
            self.finish()
        return ordered

    def finish(self) -> None:
        """What the last storm left for after its measurement (``storm(..., finish=False)`` leaves it
        until the measurement window has closed, so that it loads nothing the window judges): each
        MN's deferred IKE work (figures, its old SAs removed), the AAA's figures per MN, and the
        recovery of every MN whose handover failed."""
        if self._unfinished is None:
            return
        method, ordered, movers, packets = self._unfinished
        self._unfinished = None
        for record, index in zip(ordered, movers):
            self._finish_baseline(record, index)
        if packets is not None:
            self._aaa_figures(ordered, movers, packets)
        for record, index in zip(ordered, movers):
            if record.outcome == "failed":
                self.recover(index, method)

    def _finish_baseline(self, record: HandoverRecord, index: int) -> None:
        """MN ``index``'s deferred IKE work, once the storm is over: its figures, its old SAs gone.
        If the old SAs do not go, the MN's handover failed."""
        view = self.views[index]
        deferred, view.storm_baseline = view.storm_baseline, None
        if deferred is None:
            return
        try:
            deferred.finish()
        except STEP_ERRORS as error:
            if record.outcome != "failed":
                record.outcome = "failed"
                record.failure = Failure(reason=f"{type(error).__name__}: {error}", problems=[],
                                         t_ns=time.monotonic_ns(), state={})

    def _aaa_tap(self, method: Method) -> Tap | None:
        """A capture of RADIUS at the AAA node for the storm, if ``method`` authenticates there."""
        auth = method.security.ike_auth
        if auth is None or not needs_aaa(auth):
            return None
        return Tap(self.testbed.pid(plan.AAA), (RADIUS_PORT,))

    def _aaa_figures(self, records: list[HandoverRecord], movers: list[int], packets: list) -> None:
        """Each MN's Access-Requests at the AAA (told apart by their Calling-Station-Id, the MN's
        care-of address): how many, FreeRADIUS's time on them summed, and the span from the first's
        arrival to the Access-Accept's departure. The answers are timestamped after the AAA's
        egress delay, which is taken off."""
        delay_ns = int(self.testbed.link_params[plan.AR_AAA].delay_ms * 1e6)
        slots = {plan.mn_coa(index, ar): plan.mn_identity(index) for index in movers for ar in plan.ACCESS_ROUTERS}
        requests = radius_at_aaa(packets, slots, delay_ns)
        for record in records:
            own = [entry for entry in requests if entry["slot"] == record.mn]
            accepted = [entry for entry in own if entry["code"] == ACCESS_ACCEPT]
            figures = {"aaa_requests": len(own),
                       "aaa_residence_ms": sum(entry["answered_ns"] - entry["arrived_ns"] for entry in own) / 1e6,
                       "aaa_span_ms": ((accepted[-1]["answered_ns"] - min(entry["arrived_ns"] for entry in own)) / 1e6
                                       if accepted else None)}
            record.reauth = {**(record.reauth or {}), **figures}

    def _pace(self, movers: list[int]) -> None:
        """Only the moving MNs' probes, within the budget; a few of each before the first move."""
        every = config.storm_probe_every(len(movers), self.probe_rate, self.probe_budget)
        moving = {plan.mn_identity(index) for index in movers}
        ha = self.experiment.ha
        ha.pace_probes(identities=sorted(moving), every=every)
        ha.pace_probes(identities=[plan.mn_identity(index) for index in range(self.testbed.mns)
                                   if plan.mn_identity(index) not in moving], every=0)
        self.probe_interval_ms = every * 1000.0 / self.probe_rate
        pause(3 * self.probe_interval_ms)

    def _offsets(self, count: int, window_ms: float, rate_per_s: float | None) -> list[float]:
        if rate_per_s:
            offsets, now = [], 0.0
            for _ in range(count):
                now += self.rng.expovariate(rate_per_s)
                offsets.append(now)
            return offsets
        return sorted(self.rng.uniform(0, window_ms / 1000) for _ in range(count)) if window_ms else [0.0] * count

    def _one(self, method: Method, index: int, l2_delay_ms: float, at: float,
             records: dict[int, HandoverRecord], back_after_ms: float | None = None) -> None:
        """One MN's handover, on its own thread: the record always ends with an outcome."""
        view = self.views[index]
        current = self.testbed.attached[index]
        assert current is not None  # attached from the start; a failed handover's MN is recovered
        move = Move(current, self.testbed.other_ar(index), index)
        self._handovers += 1
        record = HandoverRecord(index=self._handovers, mn=view.identity, method=method.name, from_ar=move.par,
                                to_ar=move.nar, mn_previous=move.mn_previous, mn_new=move.mn_new,
                                l2_delay_ms=l2_delay_ms)
        records[index] = record
        try:
            pause(max(0.0, at - time.monotonic()) * 1000)
            if method.cxtp:
                spi = {sa.daddr: sa.spi for sa in self.experiment.xfrm_state(plan.MN, move.mn_previous, index).sas}
                record.spi_mn_in, record.spi_mn_out = spi.get(move.mn_previous), spi.get(move.par_address)
                give_fresh_key(view, move)
            if method.before_detach is not None:
                record.anticipation_start_ns = time.monotonic_ns()
                method.before_detach(view, move)  # type: ignore[arg-type]  # the hooks use .mn and .ar
                pause(self.experiment.anticipation_ms)
            view.mn.expect_move(interface=move.mn_interface, nar=move.nar_address, par=move.par_address,
                                new_address=move.mn_new, cxtp=method.cxtp, ipsec=method.cxtp)
            times = self.testbed.handover(move.nar, l2_delay_ms, mn=index)
            if back_after_ms is not None:  # the ping-pong's way back: the record becomes its
                pause(back_after_ms)
                move = Move(move.nar, move.par, index)
                record.from_ar, record.to_ar, record.mn_previous, record.mn_new = \
                    move.par, move.nar, move.mn_previous, move.mn_new
                record.anticipation_start_ns = None
                record.note = f"ping-pong: back {back_after_ms:g} ms after the attach at {move.par}"
                if method.cxtp:
                    give_fresh_key(view, move)
                view.mn.expect_move(interface=move.mn_interface, nar=move.nar_address, par=move.par_address,
                                    new_address=move.mn_new, cxtp=method.cxtp, ipsec=method.cxtp)
                times = self.testbed.handover(move.nar, l2_delay_ms, mn=index)
            record.detach_start_ns, record.detached_ns = times.detach_start_ns, times.detached_ns
            record.attach_start_ns, record.attached_ns = times.attach_start_ns, times.attached_ns
            if method.after_attach is not None:  # re-authentication at the nAR, the pAR's SAs removed
                record.reauth = method.after_attach(view, move)  # type: ignore[arg-type]  # .baseline
            status = self._wait_idle(view, move, method, record)
            record.completed = status["idle"]
            failure = _transfer_failure(status) if method.cxtp else None
            if failure:
                record.transfer_failure = failure
                status = self._retry_reactive(view, move, method, record)
            if not status["idle"]:
                raise StormError("the MN's Binding Update got no Binding Ack")
            if not status["bound"]:
                raise StormError(f"the HA refused the MN's binding (Binding Ack status {status['ba_status']})")
            record.restored_ns = time.monotonic_ns()
            record.outcome = "recovered" if record.retry_sent_ns is not None else "ok"
        except (StormError, *STEP_ERRORS) as error:
            record.outcome = "failed"
            record.failure = Failure(reason=f"{type(error).__name__}: {error}", problems=[], t_ns=time.monotonic_ns(),
                                     state={})

    def _retry_reactive(self, view: MnView, move: Move, method: Method, record: HandoverRecord) -> MnStatus:
        """The MN's fall-back after a failed transfer, as the single-MN runner's: one reactive
        retry with a fresh key for the context the pAR still holds."""
        if not self.experiment.xfrm_state(move.par, move.mn_previous).sas:
            raise StormError(f"transfer failed ({record.transfer_failure}) and the pAR holds no context to retry with")
        give_fresh_key(view, move)
        view.mn.retry_reactive(par=move.par_address, nar=move.nar_address, previous=move.mn_previous)
        record.retry_sent_ns = time.monotonic_ns()
        status = self._wait_idle(view, move, method, record, fallback=False)
        failure = _transfer_failure(status)
        if failure:
            raise StormError(f"transfer failed ({record.transfer_failure}), and the reactive retry too ({failure})")
        return status

    def _wait_idle(self, view: MnView, move: Move, method: Method, record: HandoverRecord,
                   fallback: bool = True) -> MnStatus:
        """Until this MN's transaction and binding are done (each MN's own, so handovers overlap),
        giving it its attach itself if its kernel's event was not seen in time."""
        deadline = time.monotonic() + IDLE_TIMEOUT_S
        trigger_deadline = time.monotonic() + TRIGGER_TIMEOUT_S
        if fallback:
            record.trigger = "kernel"
        poller = self.poller
        assert poller is not None  # set for the storm's length
        seen = poller.round
        while True:
            seen, status = poller.after(view.identity, seen)
            if fallback and status.get("move_expected") and time.monotonic() >= trigger_deadline \
                    and record.trigger == "kernel":
                record.trigger = "runner-fallback"
                view.mn.attached(nar=move.nar_address, par=move.par_address, new_address=move.mn_new,
                                 cxtp=method.cxtp, ipsec=method.cxtp)
            if (status["idle"] and not status.get("move_expected")) or time.monotonic() >= deadline:
                poller.forget(view.identity)
                return status

    # -- after a storm ----------------------------------------------------------------------------
    def problems(self, record: HandoverRecord, index: int) -> list[str]:
        """What is wrong after MN ``index``'s handover: its previous address's state left on the MN
        or the pAR, its binding not naming its new address, its probes not through the new AR."""
        experiment = self.experiment
        problems = []
        for node in (plan.MN, record.from_ar):
            context: IpsecContext = experiment.xfrm_state(node, record.mn_previous, index)
            if context.sas or context.policies:
                problems.append(f"{node} still holds {len(context.sas)} SAs and {len(context.policies)} policies "
                                f"of {plan.mn_node(index)}'s previous address")
        care_of = experiment.ha.binding(identity=plan.mn_identity(index))["care_of"]
        if care_of != record.mn_new:
            problems.append(f"the HA's binding of {plan.mn_node(index)} names {care_of}, not {record.mn_new}")
        arrivals = experiment.ha.arrivals(since_ns=record.restored_ns or record.attached_ns or 0,
                                          identity=plan.mn_identity(index))
        expected = {plan.MN: plan.home_tunnel(plan.MN, record.to_ar), plan.HA: plan.ha_home_tunnel(index, record.to_ar)}
        for end, direction in ((plan.MN, "downlink"), (plan.HA, "uplink")):
            if not arrivals.get(end, {}).get(expected[end]):
                problems.append(f"no {direction} of {plan.mn_node(index)} through {record.to_ar} "
                                f"(received: {arrivals.get(end)})")
        return problems

    def wait_released(self, records: list[HandoverRecord], movers: list[int], timeout_s: float) -> dict[int, list[str]]:
        """Each MN's problems, once its pAR had its release hold to let go (``timeout_s``)."""
        deadline = time.monotonic() + timeout_s
        while True:
            found = {index: self.problems(record, index) for record, index in zip(records, movers)
                     if record.outcome in ("ok", "recovered")}
            found = {index: problems for index, problems in found.items() if problems}
            if not found or time.monotonic() >= deadline:
                return found
            pause(50)

    def recover(self, index: int, method: Method) -> None:
        """A failed MN back to a known state: nothing of it on any node, a fresh attach where it is,
        the static SAs it needs."""
        if index == 0:  # the experiment's own MN: its recovery
            self.experiment.recover(method.security)
            return
        view = self.views[index]
        if method.security.ike_auth is not None and self.experiment.baseline is not None:
            self.experiment.baseline.forget_mn(index)
        try:
            view.mn.fresh_attach(address=plan.mn_coa(index, self.testbed.attached[index] or self.testbed.initial_ar))
        except AgentError:
            pass  # the clean state below is what counts; the MN's next Binding Update binds it
        self._enter_mn(index, method)


# -- a storm scenario --------------------------------------------------------------------------------

def run_storms(storm: Storm, scenario, progress, cpu_times, busy_share, emulation_fidelity) -> list[HandoverRecord]:
    """Every storm of ``scenario`` (``[storm]``): per method, per K, ``repeats`` storms of K MNs
    drawn from the testbed's at random (the scenario's seed). Each record carries its K as its
    ``sweep_value`` and says so in its note; an MN whose handover failed,
    or whose state or traffic is wrong afterwards, is recorded ``failed`` and recovered. A storm
    during which the emulator slipped (any MN's handover outside the fidelity tolerances) is
    marked repeated and run again, as the ordinary runner repeats a handover."""
    rng = random.Random(scenario.seed)
    records: list[HandoverRecord] = []
    options = scenario.storm
    total = len(scenario.methods) * len(options["sizes"]) * options["repeats"]
    done = 0
    for name in scenario.methods:
        method = methods_registry.get(name)
        storm.enter(method)
        pause(scenario.settle_ms)
        for size in options["sizes"]:
            done_here = repeats = 0
            while done_here < options["repeats"]:
                batch = _one_storm(storm, scenario, method, sorted(rng.sample(range(storm.testbed.mns), size)),
                                   cpu_times, busy_share, emulation_fidelity)
                records.extend(batch)
                failed = sum(record.outcome == "failed" for record in batch)
                slipped = sum(bool((record.fidelity or {}).get("violations")) for record in batch
                              if record.outcome == "ok")
                # the emulator slipped during this storm: its records do not count, another runs
                repeat = bool(slipped) and repeats < scenario.fidelity["max_repeats"]
                for record in batch:
                    record.repeated = repeat and record.outcome == "ok"
                done += not repeat
                progress(f"[{done}/{total}] storm {name} K={size}: {size - failed} ok"
                         + (f", {failed} failed" if failed else "")
                         + (f"; {slipped} outside the fidelity tolerances, repeated" if repeat else ""))
                if repeat:
                    repeats += 1
                    continue
                done_here += 1
    return records


def _one_storm(storm: Storm, scenario, method: Method, movers: list[int], cpu_times, busy_share,
               emulation_fidelity) -> list[HandoverRecord]:
    """One storm of ``movers``, judged: each record's fidelity (the guest's busy share over the
    storm, its own L2 step, its own probes' lateness), and its state and traffic afterwards."""
    experiment = storm.experiment
    size = len(movers)
    before = cpu_times()
    batch = storm.storm(method, movers, scenario.l2_delay_ms, scenario.storm["window_ms"],
                        scenario.storm["rate_per_s"] or None, scenario.ping_pong_ms, finish=False)
    settle_before = cpu_times()
    pause(scenario.settle_ms)
    now = cpu_times()
    end_ns = time.monotonic_ns()
    storm.finish()  # after the measurement window: the runner's own work is not judged as the storm's
    timers = experiment.timers
    problems = storm.wait_released(batch, movers, timers["release_hold"] + timers["late_ctdr_grace"])
    for record, index in zip(batch, movers):
        record.sweep_value = float(size)
        record.note = f"storm of {size} MNs; probes every {storm.probe_interval_ms:g} ms each way"
        record.window_end_ns = end_ns
        late = None
        if record.attached_ns is not None:
            try:
                start_ns, end_ns_window = lateness_window(record)
                late = experiment.ha.lateness(start_ns=start_ns, end_ns=end_ns_window, identity=record.mn)
            except STEP_ERRORS:
                late = None  # judged from the traces when the run is reported
        record.fidelity = emulation_fidelity(record, busy_share(before, now), scenario.fidelity,
                                             settled=busy_share(settle_before, now),
                                             probe_late={end: late[end] for end in ("mn", "ha")} if late else None)
        if record.outcome in ("ok", "recovered") and problems.get(index):
            record.outcome = "failed"
            record.failure = Failure(reason=problems[index][0], problems=problems[index], t_ns=time.monotonic_ns(),
                                     state={})
            storm.recover(index, method)
    return batch
