"""Scenario files (TOML) with built-in defaults, validated so that a bad field is named.

A scenario file only states what differs from the defaults below; see ``scenarios/default.toml``
for every field with a comment. Unknown fields are errors, not silently ignored: a typo in a
parameter would otherwise produce a run that measured something else than intended.
"""

from __future__ import annotations

import copy
import dataclasses
import tomllib
from pathlib import Path
from typing import Any

from topo import plan
from topo.network import LinkParams

METHODS = ("none", "cxtp-predictive", "cxtp-reactive", "cxtp-network", "cxtp-reactive-ike", "reauth-eap",
           "reauth-eap-md5", "reauth-psk")
DEFAULT_METHODS = ("none", "cxtp-predictive", "cxtp-reactive", "cxtp-network", "reauth-eap", "reauth-psk")
PROFILES = ("aes-cbc-sha256", "aes-gcm", "des-cbc")
AR_TRANSPORTS = ("sctp", "tcp")
SWEEPABLE = tuple(f"links.{link_class}.{field}" for link_class in plan.LINK_CLASSES
                  for field in ("delay_ms", "jitter_ms", "loss_percent", "rate_mbit")) + ("l2_delay_ms",)

DEFAULTS: dict[str, Any] = {
    "name": "default",
    "seed": 1,
    "methods": list(DEFAULT_METHODS),
    "handovers": 20,
    "warmup_handovers": 2,
    "l2_delay_ms": 50.0,
    "anticipation_ms": 100.0,
    "settle_ms": 400.0,
    "warmup_ms": 500.0,
    "profile": "aes-cbc-sha256",
    "ar_transport": "sctp",
    "sweep": {"parameter": "links.ar_aaa.delay_ms", "values": [0.0, 10.0, 20.0, 50.0], "methods": ["reauth-eap"]},
    "probe": {"rate": 1000.0, "size": 64},
    "links": {
        plan.ACCESS: {"delay_ms": 2.0, "jitter_ms": 0.0, "loss_percent": 0.0, "rate_mbit": 0.0},
        plan.AR_AR: {"delay_ms": 5.0, "jitter_ms": 0.0, "loss_percent": 0.0, "rate_mbit": 0.0},
        plan.AR_HA: {"delay_ms": 10.0, "jitter_ms": 0.0, "loss_percent": 0.0, "rate_mbit": 0.0},
        plan.AR_AAA: {"delay_ms": 10.0, "jitter_ms": 0.0, "loss_percent": 0.0, "rate_mbit": 0.0},
    },
}


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
            "l2_delay_ms": self.l2_delay_ms, "anticipation_ms": self.anticipation_ms,
            "settle_ms": self.settle_ms, "warmup_ms": self.warmup_ms, "profile": self.profile,
            "ar_transport": self.ar_transport,
            "sweep": {"parameter": self.sweep_parameter, "values": list(self.sweep_values),
                      "methods": list(self.sweep_methods)},
            "probe": {"rate": self.probe_rate, "size": self.probe_size},
            "links": {name: dataclasses.asdict(params) for name, params in self.links.items()},
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
    if value < minimum or (maximum is not None and value > maximum):
        bound = f"between {minimum} and {maximum}" if maximum is not None else f">= {minimum}"
        raise ScenarioError(f"{where}: must be {bound}, got {value!r}")
    return float(value)


def _integer(value: Any, where: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ScenarioError(f"{where}: must be an integer >= {minimum}, got {value!r}")
    return value


def from_dict(data: dict[str, Any], source: str = "built-in defaults") -> Scenario:
    if "sweep" not in data and "methods" in data:
        # The built-in sweep concerns the EAP baseline: it follows the scenario's methods.
        default_sweep = DEFAULTS["sweep"]
        kept = [m for m in default_sweep["methods"] if m in data["methods"]] if isinstance(data["methods"], list) else []
        data = {**data, "sweep": {**default_sweep, "methods": kept} if kept else
                {"parameter": "", "values": [], "methods": []}}
    merged = _merge(DEFAULTS, data, "")
    if not isinstance(merged["name"], str) or not merged["name"] or "/" in merged["name"]:
        raise ScenarioError(f"name: must be a non-empty string without '/', got {merged['name']!r}")
    methods = merged["methods"]
    if not isinstance(methods, list) or not methods:
        raise ScenarioError(f"methods: must be a non-empty list, got {methods!r}")
    for index, method in enumerate(methods):
        if method not in METHODS:
            raise ScenarioError(f"methods[{index}]: unknown method {method!r} (known: {', '.join(METHODS)})")
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
    links = {}
    for link_class, params in merged["links"].items():
        where = f"links.{link_class}"
        rate = _number(params["rate_mbit"], f"{where}.rate_mbit")
        links[link_class] = LinkParams(
            delay_ms=_number(params["delay_ms"], f"{where}.delay_ms", 0, 10_000),
            jitter_ms=_number(params["jitter_ms"], f"{where}.jitter_ms", 0, 10_000),
            loss_percent=_number(params["loss_percent"], f"{where}.loss_percent", 0, 100),
            rate_mbit=rate or None,
        )
    return Scenario(
        name=merged["name"],
        seed=_integer(merged["seed"], "seed", 0),
        methods=tuple(methods),
        handovers=_integer(merged["handovers"], "handovers", 1),
        warmup_handovers=_integer(merged["warmup_handovers"], "warmup_handovers", 0),
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
        probe_size=_integer(merged["probe"]["size"], "probe.size", 16),
        links=links,
        source=source,
    )


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
