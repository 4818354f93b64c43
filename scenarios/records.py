"""The records a run writes: the self-describing run record (how a number was made, so that it can
be traced and redone) and one :class:`HandoverRecord` per handover."""

from __future__ import annotations

import dataclasses
import datetime
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

#: the format of a run's records (``record.json``'s ``format_version``): format 1's ``handovers.json``
#: named no mobile node and carried the analysis's timelines; format 2's holds :class:`HandoverRecord`
#: serialisations and nothing else
FORMAT_VERSION = 2
REPOSITORY = Path(__file__).resolve().parent.parent
TRACKED_PACKAGES = ("pyroute2", "scapy", "cryptography", "matplotlib", "vici", "hypothesis", "pytest")


def _command_output(arguments: list[str]) -> str | None:
    try:
        result = subprocess.run(arguments, capture_output=True, text=True, timeout=20, cwd=REPOSITORY)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.strip() if result.returncode == 0 else None


def git_state() -> dict[str, Any]:
    revision = _command_output(["git", "-c", "safe.directory=*", "rev-parse", "HEAD"])
    status = _command_output(["git", "-c", "safe.directory=*", "status", "--porcelain", "--untracked-files=no"])
    return {"revision": revision, "dirty": bool(status) if status is not None else None}


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in TRACKED_PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    versions["mininet"] = _command_output(["dpkg-query", "-W", "-f=${Version}", "mininet"])
    versions["iproute2"] = _command_output(["ip", "-V"])
    versions["python"] = sys.version.split()[0]
    return versions


def environment() -> dict[str, Any]:
    return {
        "kernel_release": platform.release(),
        "kernel_version": platform.version(),
        "machine": platform.machine(),
        "in_uml_guest": os.environ.get("TESTBED_IN_GUEST") == "1",
        "verdict": os.environ.get("KERNEL_VERDICT"),
        "cpus": os.cpu_count(),
    }


def new_record(parameters: dict[str, Any]) -> dict[str, Any]:
    return {
        "format_version": FORMAT_VERSION,
        "created_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "git": git_state(),
        "environment": environment(),
        "packages": package_versions(),
        "parameters": parameters,
        "seed": parameters.get("seed"),
    }


# -- one handover --------------------------------------------------------------------------------
#: the identity of the one MN of the runs made before records named their MN
FORMAT_1_MN = "mn@testbed"
OUTCOMES = ("ok", "recovered", "failed")


class RecordError(ValueError):
    """A stored handover record cannot be read as a :class:`HandoverRecord`."""


@dataclasses.dataclass
class Failure:
    """Why a handover failed, and every node's SAD and SPD at that moment."""

    reason: str
    problems: list[str]
    t_ns: int
    state: dict[str, list[str]]


@dataclasses.dataclass
class Recovery:
    """What the runner did to bring the testbed back after a failed handover."""

    restarted_agents: list[str]
    fresh_attach_ns: int
    bound: bool


@dataclasses.dataclass
class HandoverRecord:
    """One handover of one mobile node, as the runner saw it. Timestamps are ns on the monotonic
    clock every namespace shares, so they line up with the agents' and probes' traces.

    The runner creates the record with what is known before the move; the experiment fills in
    the move and the method's steps; the runner's judgement (fidelity, checks, outcome) comes
    last. ``handovers.json`` is a list of these, and nothing else writes it."""

    index: int
    mn: str
    method: str
    from_ar: str
    to_ar: str
    mn_previous: str
    mn_new: str
    l2_delay_ms: float
    warmup: bool = False
    sweep_value: float | None = None
    note: str | None = None
    # -- the move (the emulator's steps) and the method's own
    anticipation_start_ns: int | None = None
    detach_start_ns: int | None = None
    detached_ns: int | None = None
    attach_start_ns: int | None = None
    attached_ns: int | None = None
    #: who started the MN's work at the attach: its kernel's route event, or the runner's fall-back
    trigger: str | None = None
    #: the MN's SPIs before the move, for the Tables I-IV check
    spi_mn_in: int | None = None
    spi_mn_out: int | None = None
    #: what a re-authentication measured of itself (IKE and RADIUS messages, its own timestamps)
    reauth: dict[str, Any] | None = None
    #: whether the MN reported its handover done (CXTP transaction and binding) when asked
    completed: bool | None = None
    #: why the method's own transfer failed, when the MN's reactive retry had to step in
    transfer_failure: str | None = None
    retry_sent_ns: int | None = None
    #: when the MN was done by the method's path (or its retry)
    restored_ns: int | None = None
    # -- the runner's judgement
    window_end_ns: int | None = None
    fidelity: dict[str, Any] | None = None
    tables_check: list[str] | None = None
    outcome: str | None = None
    failure: Failure | None = None
    recovery: Recovery | None = None
    #: the emulator slipped during this handover: it does not count, another ran in its place
    repeated: bool = False

    @property
    def restored_by(self) -> str | None:
        """How the traffic came back: the method, the MN's reactive retry, or (after a failure)
        the runner's fresh attach; None while the handover is not over."""
        if self.recovery is not None:
            return "fresh-attach"
        if self.completed is None:
            return None
        return "cxtp-retry" if self.retry_sent_ns is not None else "method"

    @property
    def moved(self) -> bool:
        """Whether the MN left its AR (a handover can fail before the detach)."""
        return self.detach_start_ns is not None

    @property
    def start_ns(self) -> int | None:
        """Where the handover begins: its anticipation, or the detach."""
        return self.anticipation_start_ns or self.detach_start_ns

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["restored_by"] = self.restored_by  # derived, written for a reader of the file
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any], format_version: int = FORMAT_VERSION) -> HandoverRecord:
        """Read one stored record; format 1 records (before records named their MN) read as the
        one MN those runs had."""
        data = dict(data)
        derived = {"restored_by"}
        if format_version < 2:
            data.setdefault("mn", FORMAT_1_MN)
            for name in ("from_ar", "to_ar", "mn_previous", "mn_new"):
                data.setdefault(name, "")  # format 1 wrote them only once the MN was about to move
            derived |= {"timeline_ms"}  # the analysis's, written into the raw records then
            if "recovery" in data and data.get("restored_ns") == data["recovery"].get("fresh_attach_ns"):
                data["restored_ns"] = None  # format 1 wrote the fresh attach's time here too
        fields = {field.name for field in dataclasses.fields(cls)}
        unknown = set(data) - fields - derived
        if unknown:
            raise RecordError(f"handover {data.get('index')}: unknown fields {sorted(unknown)}")
        try:
            if data.get("failure") is not None:
                data["failure"] = Failure(**data["failure"])
            if data.get("recovery") is not None:
                data["recovery"] = Recovery(**data["recovery"])
            return cls(**{name: value for name, value in data.items() if name in fields})
        except TypeError as error:
            raise RecordError(f"handover {data.get('index')}: {error}") from None


def write_handovers(path: Path, handovers: list[HandoverRecord]) -> None:
    path.write_text(json.dumps([handover.to_json() for handover in handovers], indent=2))


def read_handovers(run_dir: Path) -> list[HandoverRecord]:
    """A run's handover records, in the format its ``record.json`` names."""
    run_record = json.loads((run_dir / "record.json").read_text())
    version = run_record.get("format_version", 1)
    if version > FORMAT_VERSION:
        raise RecordError(f"{run_dir}: records of format {version}, newer than this code's {FORMAT_VERSION}")
    return [HandoverRecord.from_json(item, version) for item in json.loads((run_dir / "handovers.json").read_text())]
