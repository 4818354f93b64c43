"""A queueing model of handover storms: how the interruption grows when K MNs move at once.

The emulated testbed moves one MN at a time; this model asks what happens when many do. Each node
(the MN, the pAR, the nAR, the HA, the AAA server) is a server with a number of CPUs and a
service time per piece of work; each link a delay (propagation plus forwarding). A handover of a
method is a set of steps, each waiting for the steps it needs (a DAG: the Binding Update and the
context transfer run side by side and join where the probes need both), each done by one server
and followed by the delay of the link its message crosses:

* CXTP reactive: the MN's CTAR to the nAR, the nAR's CT-Req to the pAR, the pAR's collect and
  CTD, the nAR's install and activation, then the first probes; the Binding Update in parallel;
  the pAR's release (deferred, lowest priority) once the CTDR is in;
* CXTP predictive and network-initiated: the transfer (CTAR to the pAR, collect, PCTD, the nAR's
  inactive install) before the detach, the CTAR's activation after the attach;
* re-authentication: IKE_SA_INIT and IKE_AUTH between the MN and the nAR (PSK), or with the EAP
  rounds relayed over RADIUS to the AAA server (EAP), then the nAR's SAs. Each EAP round holds
  one of the nAR's RADIUS sockets from its Access-Request to the answer (strongSwan's eap-radius;
  one socket by default), a lock apart from the CPUs.

A storm is K MNs whose detaches come all at once (``window_ms`` 0) or as a Poisson process
within a window W (K arrival instants uniform in [0, W]: a Poisson process conditioned on K
arrivals). For each method and K the model gives the interruption's p50/p95/p99 per direction
(from the detach to the first probe through the new path, the testbed's definition) and each
server's queueing delay.

**Why a discrete-event simulation, and why simpy.** The joins (a probe needs both the nAR's
context and the HA's binding), the transient of a burst (K arrivals at once are not a stationary
queue), several CPUs per node, the pAR's low-priority release and service times drawn from
measured samples have no closed form worth trusting; a simulation of the DAG handles all of them
with the same code. simpy (4.x, MIT, maintained on PyPI since 2002) provides the event loop and the
multi-server and priority resources; what is left here is the handover's structure. The closed
forms that exist (M/D/1, M/M/1, a burst at a deterministic server) are the tests'
(``tests/test_model.py``).

**Where the numbers come from.** The default service times and delays are the reference run's
(``results/reference/*/per_handover.json``: the median gap between consecutive steps of each
method's timeline, ``scenarios.analysis.metrics.TIMELINE_STEPS``, less the nominal delay of the
link crossed; ``calibrate``) and, for what the timelines do not show (the nAR's inactive install
of a PCTD, before the detach), the capacity benchmark (``benchmarks/bench_capacity.py``: 1.05 ms
of CPU, the median of six runs). ``--capacity`` takes the ARs' context steps from a benchmark run
instead: the CPU time of their IPsec work alone, without the CXTP message handling, a lower
bound (``with_capacity``). Where a timeline does not separate two nodes' shares (IKE's processing is
split between the MN and the nAR, EAP's between the nAR and the AAA server) the split is stated
beside the figure. Emulated figures include the emulator's shared CPU: the model's K=1 reproduces
the reference medians, not a real router's. With one CPU per router the storm results are the
guest's; "realistic" routers (``--routers-cpus``) run the same per-handover work on more CPUs.

What the model leaves out: the data plane (probes and user traffic take no router CPU here),
retransmissions and losses, the MN's radio contention (each MN has its own CPU and link), and
strongSwan's thread pool limits (its IKE work takes the nAR's CPUs like anything else).
:func:`validate` sets the model beside an emulated storm run (every node on one CPU, as in the
guest) and judges p50 and p95 within 20% for K up to 50.

    python -m scenarios.analysis.model --k 1,10,100,1000,10000 --routers-cpus 4
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import simpy

#: the servers of a handover; an MN is its own server (one per MN, never shared)
NODES = ("mn", "par", "nar", "ha", "aaa")
#: the nAR's RADIUS sockets: strongSwan's eap-radius plugin holds one from an Access-Request's
#: sending to its answer's arrival (``sockets``, 1 by default and in the testbed), so one socket
#: lets one MN's EAP round at a time reach the AAA, whatever its CPUs
#: (``benchmarks/bench_reauth_capacity.py`` measured it: docs/performance.md)
RADIUS_SOCKET = "nar_radius_socket"
DIRECTIONS = ("down", "up")  # HA->MN, MN->HA
REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Service:
    """A service time in ms: deterministic (``mean``), exponential (``exponential``), or drawn
    from measured ``samples`` (uniformly, with replacement)."""

    mean: float = 0.0
    samples: tuple[float, ...] = ()
    exponential: bool = False

    def draw(self, rng: random.Random) -> float:
        if self.samples:
            return rng.choice(self.samples)
        if self.exponential and self.mean > 0:
            return rng.expovariate(1.0 / self.mean)
        return self.mean

    def scaled(self, factor: float) -> Service:
        return replace(self, mean=self.mean * factor, samples=tuple(s * factor for s in self.samples))


@dataclass(frozen=True)
class Step:
    """One piece of a handover: once every step in ``after`` is done (none: at the handover's
    start), ``server`` (a node, or None) works for ``service``; then the message it sends takes
    ``delay_ms`` to arrive. ``priority``: lower first at the server (0 protocol work, 1 deferred
    work such as the pAR's release)."""

    name: str
    after: tuple[str, ...]
    server: str | None = None
    service: Service = Service()
    delay_ms: float = 0.0
    priority: int = 0
    #: a lock (not a CPU) the step takes before its work and keeps for later steps (:data:`LOCKS`)
    acquire: str | None = None
    #: the lock this step gives back once its message has arrived
    release: str | None = None


@dataclass(frozen=True)
class Method:
    """A handover method: its steps; the step whose completion is the detach (``detach``: the
    model's clock for the interruption starts there); per direction, the step whose completion
    restores it."""

    name: str
    steps: tuple[Step, ...]
    ends: dict[str, str]
    detach: str = "detach"

    def __post_init__(self) -> None:
        names = [step.name for step in self.steps]
        assert len(set(names)) == len(names), f"{self.name}: duplicate step names"
        known: set[str] = set()
        for step in self.steps:  # in dependency order: each step's predecessors come first
            missing = set(step.after) - known
            assert not missing, f"{self.name}: {step.name} waits for unknown or later steps {missing}"
            known.add(step.name)
        assert self.detach in known and all(end in known for end in self.ends.values())

    def critical_path_ms(self, direction: str) -> float:
        """The interruption of one MN alone, deterministic services (the mean): the longest path
        to the direction's end, less the one to the detach."""
        done: dict[str, float] = {}
        for step in self.steps:
            start = max((done[name] for name in step.after), default=0.0)
            done[step.name] = start + step.service.mean + step.delay_ms
        return done[self.ends[direction]] - done[self.detach]


# --- the network and the methods ---------------------------------------------------------------


@dataclass(frozen=True)
class Network:
    """Link delays (one way, ms, the scenario's ``[links]``), the L2 handover, the probes'
    interval, and the forwarding allowance per message (what the reference run shows beyond the
    nominal delays: queueing in the emulated links, the nodes' forwarding)."""

    access_ms: float = 2.0
    ar_ar_ms: float = 5.0
    ar_ha_ms: float = 10.0
    ar_aaa_ms: float = 10.0
    l2_delay_ms: float = 50.0
    step_ms: float = 0.4           # the detach and attach steps together
    anticipation_ms: float = 104.0  # predictive and network-initiated: the transfer's lead
    forwarding_ms: float = 0.35    # per message, beyond the nominal delay
    probe_interval_ms: float = 2.0  # 500 probes/s: the first probe after the path opens, on average half
    #: the probes' own share of a measured interruption, drawn per handover (None: half an
    #: interval, deterministic); :func:`probe_sampling` gives the measurement's exact share
    probe_wait: Service | None = None

    @property
    def probe_wait_ms(self) -> float:
        return self.probe_interval_ms / 2

    def probe_step(self, name: str, after: tuple[str, ...], delay_ms: float = 0.0) -> list[Step]:
        """The first probe through the open path: ``delay_ms`` on the way, then the probes' share."""
        if self.probe_wait is None:
            return [Step(name, after, delay_ms=delay_ms + self.probe_wait_ms)]
        return [Step(f"{name}_path", after, delay_ms=delay_ms), Step(name, (f"{name}_path",), None, self.probe_wait)]


def probe_sampling(interval_ms: float, samples: int = 2000, seed: int = 1) -> Service:
    """What a probe stream of ``interval_ms`` adds to a measured interruption (from the last probe
    before the detach to the first through the new path): the wait for the first probe after the
    path opens and the time since the last one before the detach, each uniform over one interval,
    so their sum (mean one interval; its p95 1.68 intervals). Drawn from fixed samples."""
    rng = random.Random(seed)
    return Service(interval_ms, tuple(rng.uniform(0, interval_ms) + rng.uniform(0, interval_ms)
                                      for _ in range(samples)))


@dataclass(frozen=True)
class Costs:
    """Service times per piece of work (ms of one CPU of the node named first). Defaults: the
    reference run's medians (``calibrate``) and the capacity benchmark's CPU times."""

    mn_trigger: Service = Service(0.3)      # the attach seen (route event) -> the agent acts
    mn_ctar: Service = Service(0.2)          # CTAR built and sent
    mn_rehome: Service = Service(0.22)       # the MN's own SAs and policies moved (one write)
    mn_bu: Service = Service(0.1)            # Binding Update built and sent
    ha_bu: Service = Service(0.5)            # HA: BU checked, binding and tunnel moved, BA sent
    par_collect: Service = Service(0.87)     # pAR: CT-Req / CTAR in, context collected, CTD/PCTD out
    nar_ctreq: Service = Service(0.35)       # nAR (reactive): CTAR in, CT-Req out
    nar_install: Service = Service(1.05)     # nAR: PCTD's context decoded, rewritten, SAs installed inactive
    nar_activate: Service = Service(0.6)     # nAR: CTAR's token checked, policies added (prepared), CTAA
    nar_install_activate: Service = Service(1.35)  # nAR (reactive): CTD's context installed and active, CTAA
    par_release: Service = Service(1.66)     # pAR: CTDR in, the MN's state removed (deferred)
    mn_ike_start: Service = Service(2.2)     # MN: charon asked to initiate, IKE_SA_INIT built
    # IKE's processing: the reference's PSK exchange took 16.0 ms from the MN's IKE_SA_INIT to
    # the CHILD_SA, 9.4 of them the two access round trips; the 6.6 left are split 4.0 at the
    # nAR (2.0 per exchange: the key exchange, then AUTH and the CHILD_SA's install) and 2.6 at
    # the MN (1.3 per exchange): an assumption, the timelines do not separate the two ends
    nar_ike_init: Service = Service(2.0)
    nar_ike_auth: Service = Service(2.0)
    mn_ike: Service = Service(1.3)
    # EAP-MSCHAPv2 through RADIUS: 3 rounds (docs/baseline.md), 6 one-way AR-AAA delays; at a
    # 0 ms AR-AAA delay the reference's exchange took 34.4 ms, 21.2 of them access round trips
    # and forwarding: the processing per round is split nAR 0.3 each way (the relay), AAA 1.0
    # (FreeRADIUS), MN 0.5, and 1.2 at the nAR and 0.8 at the MN for the final AUTH (assumed)
    eap_rounds: int = 3
    nar_eap_relay: Service = Service(0.3)
    aaa_eap: Service = Service(1.0)
    mn_eap: Service = Service(0.5)
    nar_ike_final: Service = Service(1.2)
    mn_ike_final: Service = Service(0.8)


def _common_start(net: Network, lead_ms: float = 0.0) -> list[Step]:
    return [
        Step("detach", (), delay_ms=0.0, service=Service(lead_ms)),
        Step("attached", ("detach",), delay_ms=net.l2_delay_ms + net.step_ms),
    ]


def _binding_update(net: Network, costs: Costs, after: str) -> list[Step]:
    """The MN's BU (the MN goes on at once: ``bu_sent``; the message arrives ``bu_at_ha``), the
    HA's work (``ha_bound``: the binding and the home address's tunnel moved; from then on the HA
    takes the MN's reverse-tunnelled uplink), and its BA's and tunnel's way back to the nAR
    (``ha_ba_sent`` is then)."""
    hop = net.access_ms + net.ar_ha_ms + 2 * net.forwarding_ms
    return [
        Step("bu_sent", (after,), "mn", costs.mn_bu),
        Step("bu_at_ha", ("bu_sent",), delay_ms=hop),
        Step("ha_bound", ("bu_at_ha",), "ha", costs.ha_bu),
        Step("ha_ba_sent", ("ha_bound",), delay_ms=net.ar_ha_ms + net.forwarding_ms),
    ]


def _uplink(net: Network, at_ha_after: str, delay_ms: float) -> list[Step]:
    """The first uplink probe: at the HA ``delay_ms`` after ``at_ha_after``, taken once the HA is
    bound to the new care-of address (Mobile IPv6 reverse tunnelling: the HA's tunnel accepts only
    the binding's care-of address)."""
    return [Step("up_at_ha", (at_ha_after,), delay_ms=delay_ms),
            *net.probe_step("up", ("up_at_ha", "ha_bound"))]


def method_none(net: Network, costs: Costs) -> Method:
    steps = _common_start(net) + [Step("mn_trigger", ("attached",), "mn", costs.mn_trigger)]
    steps += _binding_update(net, costs, "mn_trigger")
    steps += [
        *net.probe_step("down", ("ha_ba_sent",), net.access_ms),
        *_uplink(net, "mn_trigger", net.access_ms + net.ar_ha_ms + 2 * net.forwarding_ms),
    ]
    return Method("none", tuple(steps), {"down": "down", "up": "up"})


def _cxtp_after_attach(net: Network, costs: Costs, activation: list[Step], active: str) -> list[Step]:
    """The MN's side after the attach, the Binding Update, the probes, the pAR's release."""
    steps = [
        Step("mn_trigger", ("attached",), "mn", costs.mn_trigger),
        Step("ctar_sent", ("mn_trigger",), "mn", costs.mn_ctar),
        Step("ctar_at_nar", ("ctar_sent",), delay_ms=net.access_ms + net.forwarding_ms),
        Step("mn_rehomed", ("ctar_sent",), "mn", costs.mn_rehome),
    ]
    steps += _binding_update(net, costs, "mn_rehomed")
    steps += activation
    steps += [
        # the first uplink probe through the nAR needs the MN's SAs moved and the nAR's context active
        Step("up_at_nar", ("mn_rehomed", active), delay_ms=0.0),
        *_uplink(net, "up_at_nar", net.ar_ha_ms + net.forwarding_ms),
        *net.probe_step("down", ("ha_ba_sent", active), net.access_ms),
        Step("ctdr", (active,), delay_ms=net.ar_ar_ms + net.forwarding_ms),
        Step("par_released", ("ctdr",), "par", costs.par_release, priority=1),
    ]
    return steps


def method_cxtp_reactive(net: Network, costs: Costs) -> Method:
    ar_ar = net.ar_ar_ms + net.forwarding_ms
    activation = [
        Step("ct_req_sent", ("ctar_at_nar",), "nar", costs.nar_ctreq, delay_ms=ar_ar),
        Step("ctd_sent", ("ct_req_sent",), "par", costs.par_collect, delay_ms=ar_ar),
        Step("nar_activated", ("ctd_sent",), "nar", costs.nar_install_activate),
    ]
    steps = _common_start(net) + _cxtp_after_attach(net, costs, activation, "nar_activated")
    return Method("cxtp-reactive", tuple(steps), {"down": "down", "up": "up"})


def _method_cxtp_ahead(name: str, net: Network, costs: Costs, mn_starts: bool) -> Method:
    """Predictive (the MN's CTAR to the pAR starts the transfer) and network-initiated (the pAR's
    own trigger): the PCTD is installed, inactive, before the detach; the CTAR activates it."""
    ar_ar = net.ar_ar_ms + net.forwarding_ms
    ahead = [Step("start", ())]
    if mn_starts:
        ahead.append(Step("ctar_to_par", ("start",), "mn", costs.mn_ctar,
                          delay_ms=net.access_ms + net.forwarding_ms))
    ahead += [
        Step("pctd_sent", (ahead[-1].name,), "par", costs.par_collect, delay_ms=ar_ar),
        Step("nar_prepared", ("pctd_sent",), "nar", costs.nar_install),
    ]
    start = [replace(s, after=("start",)) if s.name == "detach" else s
             for s in _common_start(net, lead_ms=net.anticipation_ms)]
    activation = [Step("nar_activated", ("ctar_at_nar", "nar_prepared"), "nar", costs.nar_activate)]
    steps = ahead + start + _cxtp_after_attach(net, costs, activation, "nar_activated")
    return Method(name, tuple(steps), {"down": "down", "up": "up"})


def method_cxtp_predictive(net: Network, costs: Costs) -> Method:
    return _method_cxtp_ahead("cxtp-predictive", net, costs, mn_starts=True)


def method_cxtp_network(net: Network, costs: Costs) -> Method:
    return _method_cxtp_ahead("cxtp-network", net, costs, mn_starts=False)


def method_reauth(net: Network, costs: Costs, eap: bool) -> Method:
    access = net.access_ms + net.forwarding_ms
    aaa = net.ar_aaa_ms + net.forwarding_ms
    steps = _common_start(net) + [Step("mn_trigger", ("attached",), "mn", costs.mn_trigger)]
    steps += _binding_update(net, costs, "mn_trigger")
    steps += [
        Step("ike_init_sent", ("mn_trigger",), "mn", costs.mn_ike_start, delay_ms=access),
        Step("nar_ike_init", ("ike_init_sent",), "nar", costs.nar_ike_init, delay_ms=access),
        Step("mn_ike_auth", ("nar_ike_init",), "mn", costs.mn_ike, delay_ms=access),
    ]
    last = "mn_ike_auth"
    if eap:
        for round_ in range(costs.eap_rounds):
            steps += [
                Step(f"nar_eap_{round_}", (last,), "nar", costs.nar_eap_relay, delay_ms=aaa, acquire=RADIUS_SOCKET),
                Step(f"aaa_eap_{round_}", (f"nar_eap_{round_}",), "aaa", costs.aaa_eap, delay_ms=aaa,
                     release=RADIUS_SOCKET),
                Step(f"nar_eap_back_{round_}", (f"aaa_eap_{round_}",), "nar", costs.nar_eap_relay, delay_ms=access),
                Step(f"mn_eap_{round_}", (f"nar_eap_back_{round_}",), "mn", costs.mn_eap, delay_ms=access),
            ]
            last = f"mn_eap_{round_}"
        steps += [
            Step("nar_child", (last,), "nar", costs.nar_ike_final, delay_ms=access),
            Step("mn_child", ("nar_child",), "mn", costs.mn_ike_final),
        ]
    else:
        steps += [
            Step("nar_child", (last,), "nar", costs.nar_ike_auth, delay_ms=access),
            Step("mn_child", ("nar_child",), "mn", costs.mn_ike),
        ]
    steps += [
        *net.probe_step("down", ("ha_ba_sent", "nar_child"), net.access_ms),
        *_uplink(net, "mn_child", net.access_ms + net.ar_ha_ms + 2 * net.forwarding_ms),
    ]
    return Method("reauth-eap" if eap else "reauth-psk", tuple(steps), {"down": "down", "up": "up"})


def methods(net: Network, costs: Costs) -> dict[str, Method]:
    built = [method_none(net, costs), method_cxtp_predictive(net, costs), method_cxtp_network(net, costs),
             method_cxtp_reactive(net, costs), method_reauth(net, costs, eap=False),
             method_reauth(net, costs, eap=True)]
    return {m.name: m for m in built}


# --- the simulation --------------------------------------------------------------------------


@dataclass
class StormResult:
    """Per MN, the interruption per direction (ms); per server, every wait for a CPU (ms)."""

    method: str
    k: int
    window_ms: float
    interruptions: dict[str, list[float]]
    waits: dict[str, list[float]] = field(default_factory=dict)

    def quantile(self, direction: str, q: float) -> float:
        return quantile(self.interruptions[direction], q)

    def summary(self) -> dict:
        return {
            "method": self.method, "k": self.k, "window_ms": self.window_ms,
            **{f"{d}_p{int(100 * q)}": round(self.quantile(d, q), 2) for d in DIRECTIONS for q in (0.5, 0.95, 0.99)},
            "waits": {server: {"mean": round(statistics.fmean(w), 3), "p95": round(quantile(w, 0.95), 3),
                               "max": round(max(w), 3)} for server, w in sorted(self.waits.items()) if w},
        }


def quantile(values: Sequence[float], q: float) -> float:
    """The q-quantile, linear between order statistics (numpy's default)."""
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def arrivals(k: int, window_ms: float, rng: random.Random) -> list[float]:
    """K detach instants: all at 0, or a Poisson process within [0, W] given K arrivals (K
    uniform instants, sorted)."""
    if window_ms <= 0:
        return [0.0] * k
    return sorted(rng.uniform(0.0, window_ms) for _ in range(k))


def simulate(method: Method, k: int, window_ms: float = 0.0, cpus: dict[str, int] | None = None,
             seed: int = 1, starts: Iterable[float] | None = None, one_cpu: bool = False,
             radius_sockets: int | None = 1, nars: Sequence[int] | None = None) -> StormResult:
    """K MNs doing ``method``'s handover, their detaches at ``arrivals`` (or ``starts``); every
    node but the MN is shared by all of them, with ``cpus[node]`` CPUs (1 if not given); each MN
    is its own server. A step's work waits, first come first served within its priority, for a
    CPU of its node. ``one_cpu``: the emulation's case, every node and every MN's work on one CPU
    (the UML guest's; its waits are then all the ``cpu``'s). ``radius_sockets``: the nAR's RADIUS
    sockets (:data:`RADIUS_SOCKET`; None: no limit); the waits for one are ``nar_radius_socket``'s.
    ``nars``: how many of the K MNs move to each of several nARs, each with sockets of its own
    (an emulated storm's MNs move both ways between the two ARs); None: all to one. The nARs'
    CPUs stay the one ``nar`` server (on one CPU, the only case where this matters, they are)."""
    cpus = cpus or {}
    rng = random.Random(seed)
    env = simpy.Environment()
    if one_cpu:
        cpu_of_all = simpy.PriorityResource(env, capacity=1)
        shared = {node: cpu_of_all for node in NODES}
    else:
        shared = {node: simpy.PriorityResource(env, capacity=max(1, cpus.get(node, 1)))
                  for node in NODES if node != "mn"}
    groups = list(nars) if nars else [k]
    if sum(groups) != k or min(groups) < 0:
        raise ValueError(f"nars must split the {k} MNs, got {groups}")
    locks = ({RADIUS_SOCKET: [simpy.Resource(env, capacity=radius_sockets) for _ in groups]}
             if radius_sockets else {})
    nar_of = [group for group, count in enumerate(groups) for _ in range(count)]
    if len(groups) > 1:
        rng.shuffle(nar_of)  # which MN, in arrival order, goes where
    waits: dict[str, list[float]] = {node: [] for node in [*shared, *locks]}
    detach_at = list(starts) if starts is not None else arrivals(k, window_ms, rng)
    lead = next(s.service.mean for s in method.steps if s.name == method.detach)
    results: dict[str, list[float]] = {d: [] for d in DIRECTIONS}

    def handover(detach: float, mn: int):  # one MN
        start = detach - lead  # a transfer ahead of the move starts its lead before the detach
        if start > env.now:
            yield env.timeout(start - env.now)
        done = {step.name: env.event() for step in method.steps}
        finished: dict[str, float] = {}
        held: dict[str, Any] = {}

        def run(step: Step):
            if step.after:
                yield simpy.AllOf(env, [done[name] for name in step.after])
            if step.acquire in locks:
                queued = env.now
                held[step.acquire] = locks[step.acquire][nar_of[mn]].request()
                yield held[step.acquire]
                waits[step.acquire].append(env.now - queued)
            service = step.service.draw(rng)
            if step.server is None or step.server not in shared:
                if service:
                    yield env.timeout(service)
            else:
                queued = env.now
                with shared[step.server].request(priority=step.priority) as cpu:
                    yield cpu
                    waits[step.server].append(env.now - queued)
                    if service:
                        yield env.timeout(service)
            if step.delay_ms:
                yield env.timeout(step.delay_ms)
            if step.release in held:
                locks[step.release][nar_of[mn]].release(held.pop(step.release))
            finished[step.name] = env.now
            done[step.name].succeed()

        for step in method.steps:
            env.process(run(step))
        yield simpy.AllOf(env, [done[end] for end in method.ends.values()])
        for direction, end in method.ends.items():
            results[direction].append(finished[end] - finished[method.detach])

    offset = max(lead, 0.0)  # the clock starts at the earliest transfer
    for mn, detach in enumerate(detach_at):
        env.process(handover(detach + offset, mn))
    env.run()
    return StormResult(method.name, k, window_ms, results, waits)


# --- calibration from a run and from the capacity benchmark ---------------------------------


def _median_gap(timelines: list[dict], first: str, then: str) -> tuple[float, ...]:
    return tuple(t[then] - t[first] for t in timelines if first in t and then in t)


def calibrate(per_handover: Path, net: Network, sampled: bool = False) -> Costs:
    """Service times from a run's timelines (``per_handover.json``): for each piece of work, the
    gap between the two steps around it, less the nominal link delay it includes; the median (or,
    with ``sampled``, the samples). Pieces a timeline does not show keep their defaults."""
    records = json.loads(per_handover.read_text())
    by_method: dict[str, list[dict]] = {}
    for record in records:
        if record.get("warmup") or record.get("outcome") != "ok":
            continue
        by_method.setdefault(record["method"], []).append(record["timeline"])

    def service(method: str, first: str, then: str, minus: float = 0.0) -> Service | None:
        gaps = tuple(max(0.0, g - minus) for g in _median_gap(by_method.get(method, []), first, then))
        if not gaps:
            return None
        return Service(statistics.median(gaps), gaps if sampled else ())

    costs = Costs()
    found = {
        "mn_trigger": service("none", "attached", "mn_trigger"),
        "mn_ctar": service("cxtp-reactive", "mn_trigger", "ctar_sent"),
        "mn_ike_start": service("reauth-psk", "mn_trigger", "ike_initiate_sent"),
        "mn_rehome": service("cxtp-reactive", "ctar_sent", "mn_rehomed"),
        "mn_bu": service("none", "mn_trigger", "bu_sent"),
        "ha_bu": service("none", "ha_bu_received", "ha_ba_sent"),
        "nar_ctreq": service("cxtp-reactive", "nar_ctar_received", "ct_req_sent"),
        "nar_install_activate": service("cxtp-reactive", "ctd_received", "ctaa_sent"),
        "nar_activate": service("cxtp-predictive", "nar_ctar_received", "ctaa_sent"),
        "par_collect": service("cxtp-reactive", "ct_req_received", "ctd_sent"),
        "par_release": service("cxtp-predictive", "ctdr_received", "par_released"),
    }
    changes: dict[str, Any] = {name: value for name, value in found.items() if value is not None}
    return replace(costs, **changes)


def with_capacity(costs: Costs, capacity: Path) -> Costs:
    """The access routers' IPsec work from the capacity benchmark's CPU times (quiet, one MN's
    work at a time) instead of the run's timelines (the emulator's shared CPU included)."""
    report = json.loads(capacity.read_text())
    burst = report.get("nar_burst", {})
    changes: dict[str, Any] = {}
    if burst.get("predictive", {}).get("install_cpu_ms"):
        changes["nar_install"] = Service(burst["predictive"]["install_cpu_ms"])
    if burst.get("reactive", {}).get("activate_cpu_ms"):
        changes["nar_install_activate"] = Service(burst["reactive"]["activate_cpu_ms"])
    for scale in report.get("scale", []):
        if scale.get("collect"):
            changes["par_collect"] = Service(scale["collect"]["cpu_ms"])
    return replace(costs, **changes)


def reference_timelines() -> Path | None:
    """The kept default run's timelines (the newest, if several are kept)."""
    found = sorted((REPO / "results" / "reference").glob("default-*/per_handover.json"))
    return found[-1] if found else None


# --- checked against the emulated storms -------------------------------------------------------

#: the emulated storms the model is judged against: K up to this (beyond, the guest's one CPU runs
#: out before the protocol does, and the model's figures are shown, not judged)
VALIDATED_UP_TO = 50
#: the model agrees with a storm's p50 or p95 within this share of the emulated figure
AGREEMENT = 0.20
#: the predictive methods' lead beyond the scenario's anticipation: the runner's own steps
#: between the trigger and the detach (the reference run's timelines)
ANTICIPATION_OVERHEAD_MS = 4.0
#: handovers simulated per method and K at least (pooled over seeds), for stable quantiles
MODEL_SAMPLES = 400


def network_of(parameters: dict[str, Any], interval_ms: float | None = None) -> Network:
    """The model's network for a run (its record's ``parameters``): its links, L2 delay and
    anticipation, and the probes' interval (``interval_ms``, default the storms' rate's) with the
    measurement's own share drawn."""
    links = parameters["links"]
    interval = interval_ms or 1000.0 / float((parameters.get("storm") or {}).get("probe_rate")
                                             or parameters["probe"]["rate"])
    return Network(access_ms=links["access"]["delay_ms"], ar_ar_ms=links["ar_ar"]["delay_ms"],
                   ar_ha_ms=links["ar_ha"]["delay_ms"], ar_aaa_ms=links["ar_aaa"]["delay_ms"],
                   l2_delay_ms=parameters["l2_delay_ms"],
                   anticipation_ms=parameters["anticipation_ms"] + ANTICIPATION_OVERHEAD_MS,
                   probe_interval_ms=interval, probe_wait=probe_sampling(interval))


def pooled(method: Method, k: int, window_ms: float, one_cpu: bool, seed: int = 1,
           cpus: dict[str, int] | None = None, nars: Sequence[int] | None = None) -> dict[str, list[float]]:
    """At least MODEL_SAMPLES handovers' interruptions per direction: storms of K, over seeds."""
    found: dict[str, list[float]] = {d: [] for d in DIRECTIONS}
    runs = max(1, math.ceil(MODEL_SAMPLES / k))
    for offset in range(runs):
        result = simulate(method, k, window_ms, cpus, seed + offset, one_cpu=one_cpu, nars=nars)
        for direction in DIRECTIONS:
            found[direction] += result.interruptions[direction]
    return found


def storm_split(moves: list[dict], method: str, k: int) -> list[int] | None:
    """How a storm of K of ``method`` split its MNs between the two ARs as their nAR, from the
    run's handovers (each MN moves to its other AR, so a storm's MNs go both ways): the share
    over all its storms, as K MNs. None: all to one."""
    destinations = [row["to"] for row in moves if row["method"] == method and row.get("sweep_value") == k]
    if not destinations:
        return None
    first = round(k * destinations.count(destinations[0]) / len(destinations))
    return [first, k - first] if 0 < first < k else None


def validate(run_dir: Path, timelines: Path | None = None) -> dict[str, Any]:
    """The model beside a storm run: per method, K and direction, the emulated p50 and p95 (the
    run's ``summary.json``) and the model's, every node on one CPU as in the guest, with service
    times from ``timelines`` (default: the reference run's); within AGREEMENT for K up to
    VALIDATED_UP_TO, or not. Written to ``model_validation.json``."""
    storm = json.loads((run_dir / "summary.json").read_text()).get("storm") or {}
    parameters = json.loads((run_dir / "record.json").read_text())["parameters"]
    timelines = timelines or reference_timelines()
    net = network_of(parameters)
    costs = calibrate(timelines, net) if timelines else Costs()
    options = parameters.get("storm") or {}
    handovers = run_dir / "per_handover.json"
    moves = json.loads(handovers.read_text()) if handovers.is_file() else []
    rows = []
    for name, per_size in storm.items():
        for size, entry in sorted(per_size.items(), key=lambda item: float(item[0])):
            # each K's probes at the interval the storm's probe budget left them (its resolution)
            built = methods(network_of(parameters, entry.get("probe_interval_ms")), costs)
            if name not in built:
                continue
            k = int(float(size))
            window = float(options.get("window_ms") or 0.0)
            if options.get("rate_per_s"):
                window = 1000.0 * k / float(options["rate_per_s"])
            modelled = pooled(built[name], k, window, one_cpu=True, nars=storm_split(moves, name, k))
            for direction, model_direction in (("ha_to_mn", "down"), ("mn_to_ha", "up")):
                figures = entry.get(direction) or {}
                for label, q in (("p50", 0.5), ("p95", 0.95)):
                    emulated = figures.get(label)
                    model = quantile(modelled[model_direction], q)
                    within = None
                    if k <= VALIDATED_UP_TO and emulated is not None:
                        within = abs(model - emulated) <= AGREEMENT * emulated
                    rows.append({"method": name, "k": k, "direction": direction, "quantile": label,
                                 "emulated_ms": emulated, "modelled_ms": round(model, 2),
                                 "judged": within is not None, "within": within})
    judged = [row for row in rows if row["judged"]]
    result = {"tolerance": AGREEMENT, "validated_up_to": VALIDATED_UP_TO, "one_cpu": True,
              "service_times_from": _shown(timelines) if timelines else "defaults",
              "network": {key: value for key, value in net.__dict__.items() if key != "probe_wait"},
              "agree": sum(1 for row in judged if row["within"]), "judged": len(judged), "rows": rows}
    (run_dir / "model_validation.json").write_text(json.dumps(result, indent=1))
    return result


def validation_table(result: dict[str, Any]) -> str:
    lines = [f"{'method':<18} {'K':>4} {'dir':<7} {'emulated p50':>12} {'model p50':>9} {'emulated p95':>12} "
             f"{'model p95':>9}  within {100 * result['tolerance']:.0f}%"]
    by_key: dict[tuple, dict[str, dict]] = {}
    for row in result["rows"]:
        by_key.setdefault((row["method"], row["k"], row["direction"]), {})[row["quantile"]] = row
    for (method, k, direction), quantiles in by_key.items():
        p50, p95 = quantiles["p50"], quantiles["p95"]
        verdict = ("-" if not p50["judged"] else
                   "/".join("yes" if row["within"] else "NO" for row in (p50, p95)))

        def cell(value):
            return f"{value:.1f}" if value is not None else "-"
        lines.append(f"{method:<18} {k:>4} {'HA->MN' if direction == 'ha_to_mn' else 'MN->HA':<7} "
                     f"{cell(p50['emulated_ms']):>12} {cell(p50['modelled_ms']):>9} {cell(p95['emulated_ms']):>12} "
                     f"{cell(p95['modelled_ms']):>9}  {verdict}")
    return "\n".join(lines)


# --- the command line ------------------------------------------------------------------------


def table(results: list[StormResult]) -> str:
    lines = [f"{'method':<16}{'K':>7}{'W ms':>7}  {'down p50':>9}{'p95':>8}{'p99':>8}  {'up p50':>8}{'p95':>8}"
             f"{'p99':>8}  mean wait per server (ms)"]
    for result in results:
        s = result.summary()
        waits = " ".join(f"{server} {w['mean']:.2f}" for server, w in s["waits"].items() if w["max"] > 0)
        lines.append(f"{result.method:<16}{result.k:>7}{result.window_ms:>7.0f}  {s['down_p50']:>9.1f}"
                     f"{s['down_p95']:>8.1f}{s['down_p99']:>8.1f}  {s['up_p50']:>8.1f}{s['up_p95']:>8.1f}"
                     f"{s['up_p99']:>8.1f}  {waits or '-'}")
    return "\n".join(lines)


def _shown(path: Path) -> str:
    """A path as printed: relative to the repository when inside it (no machine paths)."""
    path = path.resolve()
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else path.name


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", default="1,10,100,1000,10000", help="storm sizes")
    parser.add_argument("--window-ms", type=float, default=0.0,
                        help="0: all K detach at once; otherwise Poisson arrivals within the window")
    parser.add_argument("--routers-cpus", type=int, default=4, help="CPUs of each AR")
    parser.add_argument("--ha-cpus", type=int, default=8)
    parser.add_argument("--aaa-cpus", type=int, default=8)
    parser.add_argument("--methods", default="cxtp-predictive,cxtp-network,cxtp-reactive,reauth-psk,reauth-eap")
    parser.add_argument("--ar-aaa-ms", type=float, default=10.0, help="AR-AAA one-way delay")
    parser.add_argument("--radius-sockets", type=int, default=1,
                        help="the nAR's RADIUS sockets (strongSwan's default and the testbed's: 1; 0: no limit)")
    parser.add_argument("--timelines", type=Path, default=None,
                        help="a run's per_handover.json (default: the reference run's)")
    parser.add_argument("--capacity", type=Path, default=None,
                        help="a bench_capacity JSON: the ARs' IPsec work from it")
    parser.add_argument("--sampled", action="store_true", help="service times drawn from the timelines' samples")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    net = Network(ar_aaa_ms=args.ar_aaa_ms)
    timelines = args.timelines or reference_timelines()
    costs = calibrate(timelines, net, args.sampled) if timelines else Costs()
    if args.capacity:
        costs = with_capacity(costs, args.capacity)
    cpus = {"par": args.routers_cpus, "nar": args.routers_cpus, "ha": args.ha_cpus, "aaa": args.aaa_cpus}
    built = methods(net, costs)
    print(f"CPUs: pAR and nAR {args.routers_cpus}, HA {args.ha_cpus}, AAA {args.aaa_cpus}; the nAR's RADIUS "
          f"sockets {args.radius_sockets or 'unlimited'}; links {net.access_ms}/"
          f"{net.ar_ar_ms}/{net.ar_ha_ms}/{net.ar_aaa_ms} ms (access/AR-AR/AR-HA/AR-AAA), L2 {net.l2_delay_ms} ms; "
          f"service times from {_shown(timelines) if timelines else 'defaults'}"
          + (f" and {args.capacity.name}" if args.capacity else ""))
    results = []
    for name in args.methods.split(","):
        for k in (int(value) for value in args.k.split(",")):
            results.append(simulate(built[name], k, args.window_ms, cpus, args.seed,
                                    radius_sockets=args.radius_sockets or None))
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps({"cpus": cpus, "network": net.__dict__,
                                         "results": [r.summary() for r in results]}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
