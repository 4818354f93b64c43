"""Scenario files (TOML) with built-in defaults, validated so that a bad field is named.

A scenario file only states what differs from the defaults below; see ``scenarios/default.toml``
for every field with a comment. Unknown fields are errors, not silently ignored: a typo in a
parameter would otherwise produce a run that measured something else than intended.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import re
import sys
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from nodes import provisioning
from scenarios.runner import methods as method_registry
from topo import plan
from topo.network import LinkParams

PROFILES = tuple(provisioning.PROFILES)
AR_TRANSPORTS = ("sctp", "tcp")
SWEEPABLE = tuple(f"links.{link_class}.{field}" for link_class in plan.LINK_CLASSES
                  for field in ("delay_ms", "jitter_ms", "loss_percent", "rate_mbit")) + ("l2_delay_ms", "ping_pong_ms")

DEFAULTS: dict[str, Any] = {
    "name": "default",
    "seed": 1,
    "methods": list(method_registry.default_names()),
    "handovers": 20,
    "warmup_handovers": 2,
    "l2_delay_ms": 50.0,
    # >= 0: every handover is a ping-pong, the MN moving back this long after the attach; -1: none
    "ping_pong_ms": -1.0,
    "anticipation_ms": 100.0,
    "settle_ms": 400.0,
    "warmup_ms": 500.0,
    "profile": "aes-cbc-sha256",
    "ar_transport": "sctp",
    # packet captures (pcapng per capture point, and a Wireshark profile that decrypts the ESP):
    # [] for none, ["all"], or link classes, e.g. ["access", "ar_ar"]
    "captures": [],
    "sweep": {"parameter": "links.ar_aaa.delay_ms", "values": [0.0, 10.0, 20.0, 50.0],
              "methods": [name for name in method_registry.default_names()
                          if method_registry.get(name).sweeps == plan.AR_AAA]},
    # 500 probes/s each way: 2 ms resolution, at a load the UML guest keeps up with (measured by
    # benchmarks/bench_probe_load.py; docs/performance.md)
    "probe": {"rate": 500.0, "size": 64, "tcp_interval_ms": 20.0},
    # Emulation fidelity (in the way of Mininet-HiFi's monitors): a handover during which the
    # emulator did not keep its own timing is marked, left out of the figures and repeated
    "fidelity": {"max_l2_drift_ms": 10.0, "max_step_ms": 10.0, "max_probe_late_ms": 10.0,
                 "max_guest_busy": 0.8, "max_repeats": 5},
    # CXTP timers (ms); 0 derives them from the scenario's network (see Scenario.cxtp_timers)
    # request_rate: CTARs (and CT-Reqs) per second an AR serves, CT_REQUEST_RATE; RFC 4067 §6.3 says
    # to configure it to the handover rate the access network must support (a storm's)
    "cxtp": {"transfer_time_ms": 0.0, "handover_time_ms": 0.0, "release_hold_ms": 0.0,
             "processing_allowance_ms": 1000.0, "request_rate": 10.0},
    # many MNs: each AR's access network a cell with a port per MN (topo/cells.py); with one, the
    # paper's point-to-point access links
    "topology": {"mns": 1},
    # handover storms (scenarios/runner/storm.py): K of the MNs move at once, for each K of
    # `sizes` and each method, `repeats` times; [] runs the ordinary handovers of MN 0 instead.
    # window_ms > 0 spreads the moves uniformly over it, rate_per_s > 0 makes them Poisson
    # arrivals; the moving MNs carry probes at probe_rate each way, slowed so that all of them
    # together send at most probe_budget a second (what the guest keeps up with), the others none
    "storm": {"sizes": [], "repeats": 3, "window_ms": 0.0, "rate_per_s": 0.0, "probe_rate": 50.0,
              "probe_budget": 1000.0},
    "links": {
        plan.ACCESS: {"delay_ms": 2.0, "jitter_ms": 0.0, "loss_percent": 0.0, "rate_mbit": 0.0},
        plan.AR_AR: {"delay_ms": 5.0, "jitter_ms": 0.0, "loss_percent": 0.0, "rate_mbit": 0.0},
        plan.AR_HA: {"delay_ms": 10.0, "jitter_ms": 0.0, "loss_percent": 0.0, "rate_mbit": 0.0},
        plan.AR_AAA: {"delay_ms": 10.0, "jitter_ms": 0.0, "loss_percent": 0.0, "rate_mbit": 0.0},
    },
}


#: a name is a directory under results/: no path separators, no hidden or parent directories
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
#: the largest probe payload whose ESP tunnel packet fits a 1500-octet MTU with every profile
#: (outer IPv6 40 + ESP 8 + IV 16 + inner IPv6 40 + UDP 8 + payload, padded to 16, + ICV 16)
MAX_PROBE_SIZE = 1370
MAX_HANDOVERS = 10_000


#: the section of a scenario file that names a grid of points (scenarios/sweep.py plans them)
GRID = "grid"


class ScenarioError(ValueError):
    """A scenario file is unreadable or has a bad field; the message names the field."""


@dataclasses.dataclass(frozen=True)
class Scenario:
    name: str
    seed: int
    methods: tuple[str, ...]
    handovers: int
    warmup_handovers: int
    l2_delay_ms: float
    anticipation_ms: float
    settle_ms: float
    warmup_ms: float
    profile: str
    ar_transport: str
    sweep_parameter: str
    sweep_values: tuple[float, ...]
    sweep_methods: tuple[str, ...]
    probe_rate: float
    probe_size: int
    links: dict[str, LinkParams]
    source: str  # the file it came from, or "built-in defaults"
    captures: tuple[str, ...] = ()
    #: a record each way this often on a TCP connection from the MN's home address (0: none)
    tcp_interval_ms: float = 20.0
    #: every handover a ping-pong: the MN moves back this long after its attach (None: not)
    ping_pong_ms: float | None = None
    fidelity: dict[str, float] = dataclasses.field(default_factory=lambda: dict(DEFAULTS["fidelity"]))
    cxtp: dict[str, float] = dataclasses.field(default_factory=lambda: dict(DEFAULTS["cxtp"]))
    #: the MNs of the testbed (MN 0 is the one the ordinary handovers move)
    mns: int = 1
    #: storms: sizes (K values), repeats, window_ms, rate_per_s, probe_rate; no sizes: no storms
    storm: dict[str, Any] = dataclasses.field(default_factory=lambda: copy.deepcopy(DEFAULTS["storm"]))

    @property
    def storms(self) -> bool:
        return bool(self.storm["sizes"])

    def cxtp_timers(self, links: Mapping[str, LinkParams], l2_delay_ms: float | None = None) -> dict[str, float]:
        """The ARs' CXTP timers (seconds, as ``cxtp.Config`` takes them), set in ``[cxtp]`` or derived
        from the network, so that no timer is tuned to one machine:

        * transfer (CT_MAX_TRANSFER_TIME, a reactive transfer at the pAR and the nAR's wait for the
          context): a CT-Req/CTD round trip over the AR-AR link plus an SCTP association set-up
          (six one-way delays, jitter included), plus the processing allowance;
        * handover (CT_MAX_HANDOVER_TIME, how long a predictive transfer is held): the anticipation,
          the L2 delay, an access round trip, a transfer, and the allowance again;
        * release hold (how long the pAR keeps a failed transfer's state before releasing it, and
          how long a late CTDR still releases it): one handover time.
        """
        ar_ar, access = links[plan.AR_AR], links[plan.ACCESS]
        allowance = self.cxtp["processing_allowance_ms"]
        l2 = self.l2_delay_ms if l2_delay_ms is None else l2_delay_ms
        transfer = self.cxtp["transfer_time_ms"] or 6 * (ar_ar.delay_ms + ar_ar.jitter_ms) + allowance
        handover = self.cxtp["handover_time_ms"] or (
            self.anticipation_ms + l2 + 2 * (access.delay_ms + access.jitter_ms) + transfer + allowance)
        hold = self.cxtp["release_hold_ms"] or handover
        return {"ct_max_transfer_time": transfer / 1000, "ct_max_handover_time": handover / 1000,
                "release_hold": hold / 1000, "late_ctdr_grace": hold / 1000,
                "ct_request_rate": self.cxtp["request_rate"]}

    def schedule(self) -> list[tuple[float | None, str]]:
        """(swept value or None, method) blocks in run order: methods outside the sweep run once
        at the base parameters, first; then each swept value with the swept methods."""
        if not self.sweep_values:
            return [(None, method) for method in self.methods]
        blocks: list[tuple[float | None, str]] = [(None, m) for m in self.methods if m not in self.sweep_methods]
        return blocks + [(value, m) for value in self.sweep_values for m in self.methods if m in self.sweep_methods]

    def parameters(self) -> dict[str, Any]:
        """Everything that defines the experiment, for the run record."""
        return {
            "name": self.name, "seed": self.seed, "methods": list(self.methods),
            "handovers": self.handovers, "warmup_handovers": self.warmup_handovers,
            "l2_delay_ms": self.l2_delay_ms, "ping_pong_ms": self.ping_pong_ms, "anticipation_ms": self.anticipation_ms,
            "settle_ms": self.settle_ms, "warmup_ms": self.warmup_ms, "profile": self.profile,
            "ar_transport": self.ar_transport,
            "sweep": {"parameter": self.sweep_parameter, "values": list(self.sweep_values),
                      "methods": list(self.sweep_methods)},
            "probe": {"rate": self.probe_rate, "size": self.probe_size, "tcp_interval_ms": self.tcp_interval_ms},
            "links": {name: dataclasses.asdict(params) for name, params in self.links.items()},
            "cxtp": dict(self.cxtp), "cxtp_timers_s": self.cxtp_timers(self.links),
            "captures": list(self.captures), "fidelity": dict(self.fidelity),
            "topology": {"mns": self.mns}, "storm": {**self.storm, "sizes": list(self.storm["sizes"])},
            "source": self.source,
        }


def _merge(defaults: dict, overrides: dict, path: str) -> dict:
    merged = copy.deepcopy(defaults)
    for key, value in overrides.items():
        where = f"{path}{key}"
        if key not in defaults:
            raise ScenarioError(f"{where}: unknown field (known: {', '.join(sorted(defaults))})")
        if isinstance(defaults[key], dict):
            if not isinstance(value, dict):
                raise ScenarioError(f"{where}: must be a table")
            merged[key] = _merge(defaults[key], value, where + ".")
        else:
            merged[key] = value
    return merged


def _number(value: Any, where: str, minimum: float = 0.0, maximum: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ScenarioError(f"{where}: must be a number, got {value!r}")
    if not math.isfinite(value):
        raise ScenarioError(f"{where}: must be a finite number, got {value!r}")
    if value < minimum or (maximum is not None and value > maximum):
        bound = f"between {minimum} and {maximum}" if maximum is not None else f">= {minimum}"
        raise ScenarioError(f"{where}: must be {bound}, got {value!r}")
    return float(value)


def _integer(value: Any, where: str, minimum: int, maximum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
        raise ScenarioError(f"{where}: must be an integer between {minimum} and {maximum}, got {value!r}")
    return value


def from_dict(data: dict[str, Any], source: str = "built-in defaults") -> Scenario:
    if GRID in data:
        # A grid is several runs, not one: `python -m scenarios.sweep plan` makes a scenario of each point.
        raise ScenarioError(f"{GRID}: a grid is run as one scenario per point: plan them with "
                            f"`python -m scenarios.sweep plan FILE` (docs/sweeps.md)")
    if "sweep" not in data and "methods" in data:
        # The built-in sweep concerns the EAP baseline: it follows the scenario's methods (a storm
        # scenario sweeps its sizes instead).
        default_sweep = DEFAULTS["sweep"]
        storm = data.get("storm")
        kept = ([m for m in default_sweep["methods"] if m in data["methods"]]
                if isinstance(data["methods"], list) and not (isinstance(storm, dict) and storm.get("sizes")) else [])
        data = {**data, "sweep": {**default_sweep, "methods": kept} if kept else
                {"parameter": "", "values": [], "methods": []}}
    merged = _merge(DEFAULTS, data, "")
    name = merged["name"]
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise ScenarioError(f"name: must be 1-64 letters, digits, '.', '_' or '-', starting with a letter or "
                            f"digit (it names a directory under results/), got {name!r}")
    methods = merged["methods"]
    if not isinstance(methods, list) or not methods:
        raise ScenarioError(f"methods: must be a non-empty list, got {methods!r}")
    known = method_registry.names()
    for index, method in enumerate(methods):
        if method not in known:
            raise ScenarioError(f"methods[{index}]: unknown method {method!r} (known: {', '.join(known)})")
        if method in methods[:index]:
            raise ScenarioError(f"methods[{index}]: {method!r} is listed twice")
        if method_registry.get(method).unavailable:
            raise ScenarioError(f"methods[{index}]: {method!r} cannot succeed here: "
                                f"{method_registry.get(method).unavailable}")
    for field, choices in (("profile", PROFILES), ("ar_transport", AR_TRANSPORTS)):
        if merged[field] not in choices:
            raise ScenarioError(f"{field}: must be one of {', '.join(choices)}, got {merged[field]!r}")
    sweep = merged["sweep"]
    if sweep["parameter"] and sweep["parameter"] not in SWEEPABLE:
        raise ScenarioError(f"sweep.parameter: {sweep['parameter']!r} cannot be swept "
                            f"(one of: {', '.join(SWEEPABLE)})")
    if not isinstance(sweep["values"], list):
        raise ScenarioError("sweep.values: must be a list of numbers")
    sweep_values = tuple(_number(value, f"sweep.values[{index}]", 0, 100_000)
                         for index, value in enumerate(sweep["values"]))
    if bool(sweep["parameter"]) != bool(sweep_values):
        raise ScenarioError("sweep: give both parameter and values, or neither")
    if not isinstance(sweep["methods"], list):
        raise ScenarioError("sweep.methods: must be a list of methods")
    for index, method in enumerate(sweep["methods"]):
        if method not in methods:
            raise ScenarioError(f"sweep.methods[{index}]: {method!r} is not one of this scenario's methods")
        if method in sweep["methods"][:index]:
            raise ScenarioError(f"sweep.methods[{index}]: {method!r} is listed twice")
    if len(set(sweep_values)) != len(sweep_values):
        raise ScenarioError("sweep.values: a value is listed twice")
    cxtp = {field: _number(value, f"cxtp.{field}", 0, 600_000) for field, value in merged["cxtp"].items()}
    cxtp["request_rate"] = _number(merged["cxtp"]["request_rate"], "cxtp.request_rate", 0.1, 1_000_000)
    fidelity = {field: _number(value, f"fidelity.{field}", 0, 600_000) for field, value in merged["fidelity"].items()}
    fidelity["max_repeats"] = _integer(merged["fidelity"]["max_repeats"], "fidelity.max_repeats", 0, MAX_HANDOVERS)
    fidelity["max_guest_busy"] = _number(merged["fidelity"]["max_guest_busy"], "fidelity.max_guest_busy", 0.01, 1.0)
    captures = merged["captures"]
    if not isinstance(captures, list):
        raise ScenarioError(f"captures: must be a list of link classes or [\"all\"], got {captures!r}")
    for index, link_class in enumerate(captures):
        if link_class not in (*plan.LINK_CLASSES, "all") or link_class in captures[:index]:
            raise ScenarioError(f"captures[{index}]: must be one of all, {', '.join(plan.LINK_CLASSES)}, "
                                f"each once, got {link_class!r}")
    captures = plan.LINK_CLASSES if "all" in captures else tuple(captures)
    links = {}
    for link_class, params in merged["links"].items():
        where = f"links.{link_class}"
        rate = _number(params["rate_mbit"], f"{where}.rate_mbit", 0, 100_000)
        links[link_class] = LinkParams(
            delay_ms=_number(params["delay_ms"], f"{where}.delay_ms", 0, 10_000),
            jitter_ms=_number(params["jitter_ms"], f"{where}.jitter_ms", 0, 10_000),
            loss_percent=_number(params["loss_percent"], f"{where}.loss_percent", 0, 100),
            rate_mbit=rate or None,
        )
    mns = _integer(merged["topology"]["mns"], "topology.mns", 1, plan.MAX_MNS)
    storm = _storm(merged["storm"], mns, methods, sweep_values)
    if storm["sizes"] and merged["probe"]["rate"] != storm["probe_rate"]:
        raise ScenarioError(f"probe.rate: MN 0 is one of a storm's MNs: give it storm.probe_rate "
                            f"({storm['probe_rate']:g}), got {merged['probe']['rate']!r}")
    return Scenario(
        name=merged["name"],
        seed=_integer(merged["seed"], "seed", 0, 2**63 - 1),
        methods=tuple(methods),
        handovers=_integer(merged["handovers"], "handovers", 1, MAX_HANDOVERS),
        warmup_handovers=_integer(merged["warmup_handovers"], "warmup_handovers", 0, 100),
        l2_delay_ms=_number(merged["l2_delay_ms"], "l2_delay_ms", 0, 60_000),
        anticipation_ms=_number(merged["anticipation_ms"], "anticipation_ms", 0, 60_000),
        profile=merged["profile"],
        ar_transport=merged["ar_transport"],
        sweep_parameter=sweep["parameter"],
        sweep_values=sweep_values,
        sweep_methods=tuple(sweep["methods"]) or (tuple(methods) if sweep_values else ()),
        settle_ms=_number(merged["settle_ms"], "settle_ms", 50, 600_000),
        warmup_ms=_number(merged["warmup_ms"], "warmup_ms", 0, 600_000),
        probe_rate=_number(merged["probe"]["rate"], "probe.rate", 1, 20_000),
        probe_size=_integer(merged["probe"]["size"], "probe.size", 16, MAX_PROBE_SIZE),
        tcp_interval_ms=_number(merged["probe"]["tcp_interval_ms"], "probe.tcp_interval_ms", 0, 10_000),
        ping_pong_ms=_ping_pong(merged["ping_pong_ms"]),
        links=links,
        source=source,
        captures=captures,
        fidelity=fidelity,
        cxtp=cxtp,
        mns=mns,
        storm=storm,
    )


def storm_probe_every(k: int, rate: float, budget: float) -> int:
    """In a storm of K MNs, each moving MN sends one probe in this many of its stream's slots: K
    MNs' probes both ways stay within ``budget`` a second (the resolution is this many intervals)."""
    return max(1, math.ceil(2 * k * rate / budget))


def storm_capable(name: str) -> bool:
    """Whether a storm can run ``name``: no security, CXTP over the paper's static SAs, or
    re-authentication with a pre-shared key or EAP through RADIUS (a charon per MN)."""
    from nodes.ike import MULTI_MN_METHODS

    method = method_registry.get(name)
    if method.security.ike_auth is not None:
        return (not method.cxtp and method.name in method_registry.reauth_names()
                and method.security.ike_auth in MULTI_MN_METHODS)
    return not method.cxtp or method.security.static_tunnel


def _storm(storm: dict[str, Any], mns: int, methods: list[str], sweep_values: tuple) -> dict[str, Any]:
    sizes = storm["sizes"]
    if not isinstance(sizes, list):
        raise ScenarioError(f"storm.sizes: must be a list of MN counts, got {sizes!r}")
    sizes = [_integer(size, f"storm.sizes[{index}]", 1, mns) for index, size in enumerate(sizes)]
    if len(set(sizes)) != len(sizes):
        raise ScenarioError("storm.sizes: a size is listed twice")
    result = {"sizes": tuple(sizes), "repeats": _integer(storm["repeats"], "storm.repeats", 1, 1000),
              "window_ms": _number(storm["window_ms"], "storm.window_ms", 0, 600_000),
              "rate_per_s": _number(storm["rate_per_s"], "storm.rate_per_s", 0, 100_000),
              "probe_rate": _number(storm["probe_rate"], "storm.probe_rate", 1, 1000),
              "probe_budget": _number(storm["probe_budget"], "storm.probe_budget", 1, 1_000_000)}
    if sizes:
        for index, name in enumerate(methods):
            if not storm_capable(name):
                raise ScenarioError(f"methods[{index}]: a storm cannot run {name!r} (no security, CXTP over "
                                    f"static SAs, or re-authentication with a pre-shared key or EAP-MSCHAPv2/MD5)")
        if sweep_values:
            raise ScenarioError("storm: a storm scenario sweeps its sizes; give it no [sweep]")
    return result


def _ping_pong(value: Any) -> float | None:
    """-1 (no ping-pong) or a gap of 0 ms or more."""
    gap = _number(value, "ping_pong_ms", -1, 60_000)
    if -1 < gap < 0:
        raise ScenarioError(f"ping_pong_ms: -1 (no ping-pong) or a gap of 0 ms or more, got {value!r}")
    return None if gap < 0 else gap


def load(path: str | Path | None) -> Scenario:
    """Load a scenario file, or the built-in defaults when ``path`` is None or empty."""
    if not path:
        return from_dict({})
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except OSError as error:
        raise ScenarioError(f"{path}: cannot read: {error.strerror}") from None
    except tomllib.TOMLDecodeError as error:
        raise ScenarioError(f"{path}: not valid TOML: {error}") from None
    try:
        return from_dict(data, source=str(path))
    except ScenarioError as error:
        raise ScenarioError(f"{path}: {error}") from None


def main(argv: list[str] | None = None) -> int:
    """Check a scenario file on the host, before anything boots: one line, and exit status 2 if bad."""
    arguments = sys.argv[1:] if argv is None else argv
    try:
        scenario = load(arguments[0] if arguments else None)
    except ScenarioError as error:
        print(f"scenario error: {error}", file=sys.stderr)
        return 2
    print(f"scenario {scenario.name} ({scenario.source}): ok", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
