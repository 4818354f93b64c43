"""Sweeps as lists of independent points: planned into scenario files, run one by one or as a
Slurm job array, merged into one summary, one set of figures and one report.

    python -m scenarios.sweep plan SCENARIO [--out DIR]     # DIR/points/<i>.toml and DIR/sweep.json
    python -m scenarios.sweep run DIR [--points 1,3]        # the points in sequence, here; then merge
    python -m scenarios.sweep point DIR I                   # one point (what a Slurm task runs)
    python -m scenarios.sweep slurm DIR [--submit]          # DIR/slurm/sweep.sbatch: one array task per point
    python -m scenarios.sweep merge DIR [--wait JOB]        # DIR/summary.json, table.txt, plots, report.html
    python -m scenarios.sweep compare DIR DIR               # two merges of one sweep agree, within intervals

A sweep's dimensions are the scenario's ``[grid]`` (several parameters, every combination) and
its one-parameter ``[sweep]``: with no ``[grid]``, the ``[sweep]``'s values are the points; with a
``[grid]``, a ``[sweep]`` the file states is one more dimension. Each point is a complete
scenario (every field written out, no sweep left, its own seed derived from the scenario's) that
runs every method of the scenario, ``none`` included, so that each point has its own overheads.
A point writes its run under ``DIR/results/<i>/``; ``make run-scenario SCENARIO=DIR/points/<i>.toml``
does too, so a failed point is rerun by itself. docs/sweeps.md has the rest.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import datetime
import getpass
import hashlib
import itertools
import json
import math
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from scenarios import config, records
from scenarios.analysis import targets

REPOSITORY = records.REPOSITORY
FORMAT_VERSION = 1
MANIFEST = "sweep.json"
STATUS = "status.json"
DIRECTIONS = (("ha_to_mn", "HA->MN"), ("mn_to_ha", "MN->HA"))
#: fields a grid cannot sweep: the point's identity, and the in-run sweep it replaces
NOT_GRIDDABLE = ("name", "seed", "sweep")
#: the time a Slurm task may take: FACTOR x (the guest's boot, the network and agents' start,
#: the report) + each handover's worst case (its settle, L2 delay and anticipation, and the
#: method's own exchange and checks), counting every fidelity repeat the scenario allows
BOOT_S, HANDOVER_S, TIME_FACTOR, MIN_TIME_S = 120.0, 2.5, 3.0, 600.0
#: two merges agree on a figure when its 95% intervals overlap at the probes' resolution (each
#: widened by one probe interval: an interruption is a whole number of them, and so is a median of
#: few), or else when the medians are within max(5 ms, 10%), the agreement of two runs of
#: scenarios.analysis.targets: an interval says how a run's handovers vary, not how runs do (the
#: reactive uplink's median moved by 6 ms between two runs whose intervals were 2 ms wide)
AGREEMENT_MS, AGREEMENT_SHARE = targets.AGREEMENT_MS, targets.AGREEMENT_SHARE


class SweepError(RuntimeError):
    """A sweep cannot be planned, read or merged; the message says why."""


# -- plan -----------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Dimension:
    parameter: str  # a dotted path into the scenario: "l2_delay_ms", "links.access.delay_ms", "profile"
    values: tuple[Any, ...]


def _flatten(table: dict, prefix: str = "") -> dict[str, Any]:
    """``{"links": {"access": {"delay_ms": [..]}}}`` and ``{"links.access.delay_ms": [..]}`` alike."""
    flat: dict[str, Any] = {}
    for key, value in table.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _default_at(parameter: str) -> Any:
    node: Any = config.DEFAULTS
    for part in parameter.split("."):
        if not isinstance(node, dict) or part not in node:
            raise KeyError(parameter)
        node = node[part]
    return node


def _grid_dimensions(grid: Any) -> list[Dimension]:
    if not isinstance(grid, dict) or not grid:
        raise SweepError(f"{config.GRID}: must be a table of parameter = [values], e.g. "
                         f"\"links.access.delay_ms\" = [2, 10]")
    dimensions = []
    for parameter, values in _flatten(grid).items():
        where = f"{config.GRID}.{parameter}"
        try:
            default = _default_at(parameter)
        except KeyError:
            raise SweepError(f"{where}: not a field of a scenario (see scenarios/default.toml)") from None
        if parameter.split(".")[0] in NOT_GRIDDABLE or isinstance(default, (dict, list)):
            raise SweepError(f"{where}: cannot be a dimension of a grid (a single number or name can)")
        if not isinstance(values, list) or not values:
            raise SweepError(f"{where}: must be a non-empty list of values")
        if len(set(map(repr, values))) != len(values):
            raise SweepError(f"{where}: a value is listed twice")
        dimensions.append(Dimension(parameter, tuple(values)))
    return dimensions


def dimensions_of(data: dict[str, Any], base: config.Scenario) -> list[Dimension]:
    """The sweep's dimensions: the ``[grid]``'s, and the ``[sweep]``'s parameter (when there is no
    grid, or when the file states a ``[sweep]`` beside it)."""
    dimensions = _grid_dimensions(data[config.GRID]) if config.GRID in data else []
    if base.sweep_parameter and (not dimensions or "sweep" in data):
        if any(d.parameter == base.sweep_parameter for d in dimensions):
            raise SweepError(f"{base.sweep_parameter}: both in [sweep] and in [{config.GRID}]")
        dimensions.append(Dimension(base.sweep_parameter, base.sweep_values))
    if not dimensions:
        raise SweepError(f"nothing to sweep: give a [{config.GRID}] or a [sweep] with a parameter and values")
    return dimensions


def point_seed(seed: int, index: int) -> int:
    """Point ``index``'s seed, derived from the sweep's: independent handover phases per point,
    the same in every plan of the same file."""
    digest = hashlib.sha256(f"testbed-sweep:{seed}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1  # a seed is at most 2**63 - 1


def point_name(name: str, index: int) -> str:
    suffix = f"-{index}"
    return name[:64 - len(suffix)] + suffix


def _toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise SweepError(f"{value!r} cannot be written to a scenario")
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string: JSON's escapes are TOML's
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    raise SweepError(f"{value!r} cannot be written to a scenario")


def to_toml(data: dict[str, Any], header: Iterable[str] = ()) -> str:
    """A scenario dictionary as TOML: scalars first, then each table (nested tables dotted)."""
    lines = [f"# {line}" if line else "#" for line in header]

    def table(node: dict, path: list[str]) -> None:
        scalars = [(k, v) for k, v in node.items() if not isinstance(v, dict)]
        if path and scalars:
            lines.append("")
            lines.append("[" + ".".join(_toml_key(part) for part in path) + "]")
        lines.extend(f"{_toml_key(key)} = {_toml_value(value)}" for key, value in scalars)
        for key, value in node.items():
            if isinstance(value, dict):
                table(value, [*path, key])

    table(data, [])
    return "\n".join(lines) + "\n"


def _set(data: dict, parameter: str, value: Any) -> None:
    *parents, last = parameter.split(".")
    for part in parents:
        data = data[part]
    data[last] = value


def plan(scenario_path: Path, out: Path | None = None) -> Path:
    """Write the sweep directory: ``points/<i>.toml`` (1..N), ``scenario.toml`` (the file planned)
    and the manifest ``sweep.json``. Every point is checked as ``make run-scenario`` checks it."""
    try:
        text = scenario_path.read_text()
        data = tomllib.loads(text)
    except OSError as error:
        raise SweepError(f"{scenario_path}: cannot read: {error.strerror}") from None
    except tomllib.TOMLDecodeError as error:
        raise SweepError(f"{scenario_path}: not valid TOML: {error}") from None
    without_grid = {key: value for key, value in data.items() if key != config.GRID}
    try:
        base = config.from_dict(without_grid, source=str(scenario_path))
    except config.ScenarioError as error:
        raise SweepError(f"{scenario_path}: {error}") from None
    try:
        dimensions = dimensions_of(data, base)
    except SweepError as error:
        raise SweepError(f"{scenario_path}: {error}") from None
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    directory = out or REPOSITORY / "results" / base.name / f"sweep-{stamp}"
    if directory.exists() and any(directory.iterdir()):
        raise SweepError(f"{directory}: exists and is not empty")
    (directory / "points").mkdir(parents=True, exist_ok=True)
    (directory / "scenario.toml").write_text(text)
    # the point's fields: the defaults, the file's, then the point's own
    stated = {key: value for key, value in without_grid.items() if key != "sweep"}
    base_fields = config._merge(config.DEFAULTS, stated, "")  # the same merge the loader does
    base_fields["methods"] = list(base.methods)
    base_fields["sweep"] = {"parameter": "", "values": [], "methods": []}
    points = []
    combinations = list(itertools.product(*(d.values for d in dimensions)))
    for index, combination in enumerate(combinations, start=1):
        fields = copy.deepcopy(base_fields)
        values = {d.parameter: value for d, value in zip(dimensions, combination)}
        for parameter, value in values.items():
            _set(fields, parameter, value)
        fields["name"] = point_name(base.name, index)
        fields["seed"] = point_seed(base.seed, index)
        header = [f"Point {index} of {len(combinations)} of the sweep {base.name} ({scenario_path}),",
                  "planned by `python -m scenarios.sweep plan`: "
                  + ", ".join(f"{p} = {_toml_value(v)}" for p, v in values.items()) + ".",
                  "A complete scenario: every field, the point's values set, no sweep left.",
                  f"Run alone: make run-scenario SCENARIO=<this file> (its run goes to ../results/{index}/)."]
        point_file = directory / "points" / f"{index}.toml"
        point_file.write_text(to_toml(fields, header))
        try:
            scenario = config.load(point_file)
        except config.ScenarioError as error:
            raise SweepError(f"point {index} ({', '.join(f'{p} = {v!r}' for p, v in values.items())}): "
                             f"{error}") from None
        handovers = planned_handovers(scenario)
        points.append({"index": index, "file": f"points/{index}.toml", "name": scenario.name, "values": values,
                       "seed": scenario.seed, "handovers": handovers["handovers"],
                       "max_handovers": handovers["max_handovers"], "time_limit_s": time_limit_s(scenario)})
    manifest = {
        "format_version": FORMAT_VERSION,
        "name": base.name,
        "created_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "source": str(scenario_path),
        "git": records.git_state(),
        "repository": str(REPOSITORY),
        "seed": base.seed,
        "methods": list(base.methods),
        "parameters": [{"name": d.parameter, "values": list(d.values)} for d in dimensions],
        "points": points,
    }
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return directory


def planned_handovers(scenario: config.Scenario) -> dict[str, int]:
    """Handovers of a point's run: as planned, and with every fidelity repeat it allows."""
    blocks = len(scenario.schedule())
    planned = blocks * (scenario.handovers + scenario.warmup_handovers)
    return {"handovers": planned, "max_handovers": planned + blocks * int(scenario.fidelity["max_repeats"])}


def time_limit_s(scenario: config.Scenario, factor: float = TIME_FACTOR) -> int:
    """A Slurm task's time limit for one point, from its handover count (see BOOT_S)."""
    per_handover = HANDOVER_S + (scenario.settle_ms + scenario.l2_delay_ms + scenario.anticipation_ms) / 1000
    estimate = BOOT_S + scenario.warmup_ms / 1000 + per_handover * planned_handovers(scenario)["max_handovers"]
    return int(math.ceil(max(MIN_TIME_S, factor * estimate) / 60) * 60)


# -- reading a sweep --------------------------------------------------------------------------------

def load_manifest(directory: Path) -> dict[str, Any]:
    try:
        manifest = json.loads((directory / MANIFEST).read_text())
    except OSError as error:
        raise SweepError(f"{directory}: not a sweep directory (no {MANIFEST}: {error.strerror})") from None
    except ValueError as error:
        raise SweepError(f"{directory / MANIFEST}: not JSON: {error}") from None
    if manifest.get("format_version") != FORMAT_VERSION:
        raise SweepError(f"{directory / MANIFEST}: format {manifest.get('format_version')!r}, "
                         f"this code reads {FORMAT_VERSION}")
    return manifest


def _point(manifest: dict[str, Any], index: int) -> dict[str, Any]:
    for point in manifest["points"]:
        if point["index"] == index:
            return point
    raise SweepError(f"no point {index} (points 1-{len(manifest['points'])})")


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def point_runs(directory: Path, point: dict[str, Any]) -> list[Path]:
    """The runs made of one point (its results directory), oldest first."""
    root = directory / "results" / str(point["index"]) / point["name"]
    return sorted((p for p in root.iterdir() if p.is_dir() and (p / "record.json").is_file()),
                  key=lambda p: p.name) if root.is_dir() else []


def _utc() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


# -- run one point, or all in sequence --------------------------------------------------------------

def slurm_identity() -> dict[str, str]:
    names = ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_JOB_NODELIST", "SLURM_CLUSTER_NAME")
    return {name.removeprefix("SLURM_").lower(): os.environ[name] for name in names if name in os.environ}


#: the longest path a run directory may have: the agents' control sockets and charon's VICI socket
#: (``<run>/ike-<method>/<node>/run/charon.vici``) are made in it, and an AF_UNIX path has at most
#: 107 octets
MAX_RUN_PATH = 60


def short_root(results: Path, name: str) -> tuple[Path, Path | None]:
    """The results root to give the runner: ``results`` itself when its runs' paths are short
    enough for their sockets, else a short symbolic link to it in /tmp (and the directory that
    holds the link, to remove once the run is over). A sweep's runs are deep in its directory."""
    if len(str(results)) + len(name) + len("/20260101T000000Z/") <= MAX_RUN_PATH:
        return results, None
    holder = Path(tempfile.mkdtemp(prefix="tbsw-", dir="/tmp" if os.access("/tmp", os.W_OK) else None))
    holder.chmod(0o755)
    (holder / "r").symlink_to(results, target_is_directory=True)
    return holder / "r", holder


def run_point(directory: Path, index: int, kernel: str | None = None, progress=print) -> int:
    """Run one point in the testbed's kernel, its run under ``results/<index>/``; record how it
    went in ``results/<index>/status.json``. Return the runner's exit status."""
    manifest = load_manifest(directory)
    point = _point(manifest, index)
    results = directory / "results" / str(index)
    results.mkdir(parents=True, exist_ok=True)
    if kernel is None and not os.environ.get("KERNEL") and os.geteuid() != 0:
        kernel = "uml"  # the probe of the host kernel needs root; an ordinary user has the guest
    status: dict[str, Any] = {"index": index, "state": "running", "started_utc": _utc(),
                              "host": socket.gethostname(), "user": getpass.getuser(), "slurm": slurm_identity()}
    (results / STATUS).write_text(json.dumps(status, indent=2) + "\n")
    python = sys.executable
    root, alias = short_root(results.resolve(), point["name"])
    command = [python, "-m", "topo.kernel", "run", *(["--kernel", kernel] if kernel else []), "--",
               python, "-m", "scenarios.runner.run", "--scenario", str((directory / point["file"]).resolve()),
               "--results", str(root)]
    progress(f"[sweep] point {index}/{len(manifest['points'])}: "
             + ", ".join(f"{p} = {v}" for p, v in point["values"].items()) + f" ({shlex.join(command)})"
             + (f"; {root} is {results}" if alias else ""))
    started = time.monotonic()
    try:
        child = subprocess.Popen(command, cwd=REPOSITORY)
        try:
            code = child.wait()
        except KeyboardInterrupt:
            # topo.kernel ends its guest on SIGTERM (and on the terminal's SIGINT, which it got too)
            child.send_signal(signal.SIGTERM)
            child.wait()
            code = 130
    finally:
        if alias:
            shutil.rmtree(alias, ignore_errors=True)  # the link and its directory, not what it points to
    runs = point_runs(directory, point)
    status.update(state="done", exit_status=code, finished_utc=_utc(), wall_time_s=round(time.monotonic() - started, 1),
                  run=str(runs[-1].relative_to(directory)) if runs else None)
    (results / STATUS).write_text(json.dumps(status, indent=2) + "\n")
    progress(f"[sweep] point {index}: exit status {code} after {status['wall_time_s']} s")
    return code


#: exit statuses of a point that was stopped (Ctrl-C, SIGTERM, a guest timeout), not one that failed
INTERRUPTED = (124, 130, 143)


def run_points(directory: Path, indices: list[int] | None = None, kernel: str | None = None) -> int:
    """The points one after the other on this machine; a point that fails does not stop the
    others, one that was interrupted does."""
    manifest = load_manifest(directory)
    chosen = indices or [point["index"] for point in manifest["points"]]
    started = time.monotonic()
    codes: dict[int, int] = {}
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        for index in chosen:
            codes[index] = run_point(directory, index, kernel, progress=lambda line: print(line, file=sys.stderr))
            if codes[index] in INTERRUPTED or codes[index] < 0:
                print(f"[sweep] point {index} was interrupted: the points after it are not run", file=sys.stderr)
                break
    finally:
        signal.signal(signal.SIGTERM, previous)
    print(f"[sweep] {len(codes)} points in sequence in {time.monotonic() - started:.1f} s; "
          f"exit status {', '.join(f'{i}: {c}' for i, c in codes.items())}", file=sys.stderr)
    return 0 if not any(codes.values()) and len(codes) == len(chosen) else 1


def _interrupt(number, _frame) -> None:
    raise KeyboardInterrupt(f"signal {number}")


# -- Slurm ----------------------------------------------------------------------------------------

@dataclasses.dataclass
class SlurmOptions:
    concurrency: int = 4
    #: a point's UML guest keeps one CPU busy (its one virtual CPU) and its host side (the runner,
    #: the guest's I/O threads) needs room beside it: two points on two CPUs lost their timing in
    #: a few handovers, and with a third guest busy their interruptions grew by 22 ms (docs/sweeps.md)
    cpus_per_task: int = 2
    time_factor: float = TIME_FACTOR
    partition: str | None = None
    account: str | None = None
    mem: str | None = None
    image: str | None = None  # run each point in the testbed's OCI image instead of this checkout
    engine: str = "podman"
    extra: tuple[str, ...] = ()  # more #SBATCH lines, as "--option=value"


def slurm_script(directory: Path, options: SlurmOptions) -> str:
    """The sbatch script: one array task per point, at most ``concurrency`` at once, each with
    the time limit of the sweep's longest point, each task's output in ``slurm/``."""
    manifest = load_manifest(directory)
    directory = directory.resolve()
    points = manifest["points"]
    limits = []
    for point in points:
        scenario = config.load(directory / point["file"])
        limits.append(time_limit_s(scenario, options.time_factor))
    limit = max(limits)
    repository = Path(manifest.get("repository") or REPOSITORY)
    options_lines = [
        f"--job-name=testbed-{manifest['name']}",
        f"--array=1-{len(points)}%{max(1, options.concurrency)}",
        f"--time={limit // 3600}:{limit % 3600 // 60:02d}:00",
        f"--output={directory}/slurm/%A_%a.out",
        f"--cpus-per-task={options.cpus_per_task}",
        "--ntasks=1",
        f"--chdir={repository}",
    ]
    options_lines += [f"--{name}={value}" for name, value in
                      (("partition", options.partition), ("account", options.account), ("mem", options.mem)) if value]
    options_lines += list(options.extra)
    if options.image:
        # the image holds the testbed at /testbed; the sweep directory is mounted where it is here
        run = (f"exec {shlex.quote(options.engine)} run --rm --network none --privileged "
               f"-v \"$SWEEP:$SWEEP\" -w /testbed {shlex.quote(options.image)} "
               f"/testbed/.venv/bin/python -m scenarios.sweep point \"$SWEEP\" \"$i\"")
    else:
        run = 'exec "$REPO/.venv/bin/python" -m scenarios.sweep point "$SWEEP" "$i"'
    return "\n".join([
        "#!/bin/bash",
        f"# Sweep {manifest['name']}: {len(points)} points, one job array task each; written by",
        f"# `python -m scenarios.sweep slurm` on {_utc()}. Time limit: the longest point's, from its",
        f"# handover count ({max(p['max_handovers'] for p in points)} at most, every fidelity repeat included).",
        *(f"#SBATCH {line}" for line in options_lines),
        "set -euo pipefail",
        f"REPO={shlex.quote(str(repository))}",
        f"SWEEP={shlex.quote(str(directory))}",
        'i=${SLURM_ARRAY_TASK_ID:?"run this script with sbatch: it is a job array"}',
        'echo "[sweep] task $i of job ${SLURM_ARRAY_JOB_ID:-?} on $(hostname) as $(id -un)"',
        run,
        "",
    ])


def _sbatch(arguments: list[str]) -> str:
    try:
        result = subprocess.run(["sbatch", "--parsable", *arguments], capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        raise SweepError("sbatch not found: is this a Slurm submission host?") from None
    if result.returncode != 0:
        raise SweepError(f"sbatch failed: {result.stderr.strip() or result.stdout.strip()}")
    return result.stdout.strip().split(";")[0]


def slurm(directory: Path, options: SlurmOptions, submit: bool = False, merge_after: bool = False) -> dict[str, Any]:
    """Write ``slurm/sweep.sbatch``; with ``submit``, submit it (and with ``merge_after`` a job that
    merges the sweep once the array has ended, however its tasks ended)."""
    (directory / "slurm").mkdir(exist_ok=True)
    script = directory / "slurm" / "sweep.sbatch"
    script.write_text(slurm_script(directory, options))
    script.chmod(0o755)
    result: dict[str, Any] = {"script": str(script)}
    if not submit:
        return result
    result["job_id"] = _sbatch([str(script)])
    result["submitted_utc"] = _utc()
    result["submitted_unix"] = time.time()
    if merge_after:
        manifest = load_manifest(directory)
        repository = Path(manifest.get("repository") or REPOSITORY)
        command = (f"cd {shlex.quote(str(repository))} && exec .venv/bin/python -m scenarios.sweep merge "
                   f"{shlex.quote(str(directory.resolve()))}")
        result["merge_job_id"] = _sbatch([f"--dependency=afterany:{result['job_id']}", "--time=0:15:00",
                                          f"--job-name=testbed-{manifest['name']}-merge",
                                          f"--output={directory.resolve()}/slurm/merge-%j.out", f"--wrap={command}"])
    (directory / "slurm" / "submitted.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def wait_for_job(job_id: str, timeout_s: float | None = None, poll_s: float = 5.0) -> None:
    """Until Slurm has no task of ``job_id`` left pending or running."""
    started = time.monotonic()
    while True:
        try:
            result = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%i %T"], capture_output=True, text=True,
                                    timeout=60)
        except FileNotFoundError:
            raise SweepError("squeue not found: is this a Slurm submission host?") from None
        if result.returncode != 0 and "Invalid job id" not in result.stderr:
            raise SweepError(f"squeue -j {job_id} failed: {result.stderr.strip()}")
        if not result.stdout.strip():
            return
        if timeout_s is not None and time.monotonic() - started > timeout_s:
            raise SweepError(f"job {job_id} still queued or running after {timeout_s:.0f} s")
        time.sleep(poll_s)


# -- merge ----------------------------------------------------------------------------------------

def _figures(entry: dict[str, Any]) -> dict[str, Any]:
    """What the merged summary keeps of one method's entry in a point's summary."""
    kept: dict[str, Any] = {key: entry.get(key) for key in ("method", "handovers", "failed_handovers",
                                                             "fidelity_violations")}
    for direction, _ in DIRECTIONS:
        figures = entry.get(direction) or {}
        interruption = figures.get("interruption_ms") or {}
        kept[direction] = {
            "interruption_ms": {key: interruption[key] for key in ("median", "ci95", "p95", "n")
                                if key in interruption},
            "lost": (figures.get("lost") or {}).get("median"),
            "overhead_ms": figures.get("overhead_ms"),
        }
    return kept


def _point_result(directory: Path, point: dict[str, Any]) -> dict[str, Any]:
    """One point's state and figures: ``ok``, ``failed handovers`` (merged, and listed), ``failed``
    (a run that did not finish, or a task that ended without one) or ``missing`` (never ran)."""
    result: dict[str, Any] = {key: point[key] for key in ("index", "name", "values", "seed")}
    status = _read_json(directory / "results" / str(point["index"]) / STATUS) or {}
    result["status"] = {key: status[key] for key in ("state", "exit_status", "started_utc", "finished_utc",
                                                     "wall_time_s", "host", "user", "slurm") if key in status}
    runs = point_runs(directory, point)
    complete = [run for run in runs if (run / "summary.json").is_file()
                and (_read_json(run / "record.json") or {}).get("seed") == point["seed"]]
    logs = sorted(str(p.relative_to(directory)) for p in (directory / "slurm").glob(f"*_{point['index']}.out"))
    if logs:
        result["logs"] = logs
    if not complete:
        if runs or status:
            result["state"] = "failed"
            why = ("its run did not finish (no summary.json in " + str(runs[-1].relative_to(directory)) + ")"
                   if runs else "no run was written")
            if status.get("state") == "running":
                why += "; the task ended without recording its end (killed: time limit, node failure?)"
            elif "exit_status" in status:
                why += f"; exit status {status['exit_status']}"
            result["reason"] = why + (f"; see {logs[-1]}" if logs else "")
        else:
            result["state"] = "missing"
            result["reason"] = "never ran (no results/" + str(point["index"]) + "/)"
        return result
    run = complete[-1]
    summary = _read_json(run / "summary.json") or {}
    record = _read_json(run / "record.json") or {}
    failed = int(record.get("failed_handovers") or 0)
    result.update(
        state="ok" if not failed else "failed handovers",
        run=str(run.relative_to(directory)),
        report=str((run / "report.html").relative_to(directory)) if (run / "report.html").is_file() else None,
        failed_handovers=failed,
        probe_interval_ms=1000 / float(((record.get("parameters") or {}).get("probe") or {}).get("rate") or 500),
        wall_time_s=record.get("wall_time_s"),
        git=record.get("git"),
        kernel=(record.get("environment") or {}).get("verdict"),
        fidelity=summary.get("fidelity"),
        per_method={key: _figures(entry) for key, entry in (summary.get("per_method") or {}).items()},
        ratios=summary.get("ratios") or [],
    )
    if failed:
        result["reason"] = f"{failed} handovers failed (left out of its figures): see {run.relative_to(directory)}"
    return result


def _wall(points: list[dict[str, Any]], submitted: dict[str, Any] | None) -> dict[str, Any]:
    """How long the points took: each one's, their sum, and the span from the first start to the
    last end (with several at once, less than the sum); with a Slurm submission, from it."""
    def parsed(text: str | None) -> float | None:
        return datetime.datetime.fromisoformat(text).timestamp() if text else None

    starts = [parsed(p["status"].get("started_utc")) for p in points if p["status"].get("finished_utc")]
    ends = [parsed(p["status"].get("finished_utc")) for p in points if p["status"].get("finished_utc")]
    walls = [p["status"]["wall_time_s"] for p in points if p["status"].get("wall_time_s") is not None]
    wall: dict[str, Any] = {"points_s": {str(p["index"]): p["status"].get("wall_time_s") for p in points},
                            "sum_s": round(sum(walls), 1) if walls else None}
    known_starts = [s for s in starts if s is not None]
    known_ends = [e for e in ends if e is not None]
    if known_starts and known_ends:
        wall["span_s"] = round(max(known_ends) - min(known_starts), 1)
        if submitted and submitted.get("submitted_unix"):
            wall["from_submission_s"] = round(max(known_ends) - submitted["submitted_unix"], 1)
    return wall


def merge(directory: Path) -> dict[str, Any]:
    """Merge the points' runs into ``summary.json``, ``table.txt``, the figures against each swept
    parameter and ``report.html``. Points missing or failed are listed, never dropped silently."""
    manifest = load_manifest(directory)
    points = [_point_result(directory, point) for point in manifest["points"]]
    submitted = _read_json(directory / "slurm" / "submitted.json")
    summary = {
        "format_version": FORMAT_VERSION,
        "sweep": {key: manifest[key] for key in ("name", "created_utc", "source", "git", "seed", "methods",
                                                  "parameters")},
        "merged_utc": _utc(),
        "units": "interruption and overheads in milliseconds, lost in probes; ci95: 95% bootstrap intervals",
        "points": points,
        "missing": [p["index"] for p in points if p["state"] == "missing"],
        "failed": [{"index": p["index"], "state": p["state"], "reason": p.get("reason")}
                   for p in points if p["state"] in ("failed", "failed handovers")],
        "wall": _wall(points, submitted),
        "slurm": submitted,
    }
    (directory / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (directory / "table.txt").write_text(table(summary) + "\n")
    summary["plots"] = plot(directory, summary)
    (directory / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    from scenarios.analysis import htmlreport

    htmlreport.write_sweep(directory)
    return summary


def _format_value(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def table(summary: dict[str, Any]) -> str:
    parameters = [d["name"] for d in summary["sweep"]["parameters"]]
    point_width = max(12, *(len(", ".join(f"{p.split('.')[-1] if len(parameters) > 1 else p}="
                                        f"{_format_value(v)}" for p, v in point["values"].items()))
                            for point in summary["points"]))
    lines = [f"sweep {summary['sweep']['name']}: {len(summary['points'])} points over "
             + " x ".join(f"{d['name']} [{', '.join(_format_value(v) for v in d['values'])}]"
                          for d in summary["sweep"]["parameters"]),
             "interruption at the receiver (ms): median [95% interval], n; overhead: median minus none's at the "
             "same point [95% interval]",
             f"{'method':<18} {'dir':<7} {'point':>5} {'values':<{point_width}} {'median':>8} {'95% interval':>17} "
             f"{'n':>4} {'overhead':>9} {'95% interval':>17}"]
    methods = list(dict.fromkeys(key for point in summary["points"] for key in point.get("per_method", {})))
    for method in methods:
        for direction, label in DIRECTIONS:
            for point in summary["points"]:
                entry = (point.get("per_method") or {}).get(method)
                values = ", ".join(f"{p.split('.')[-1] if len(parameters) > 1 else p}={_format_value(v)}"
                                   for p, v in point["values"].items())
                if entry is None:
                    continue
                stats = entry[direction]["interruption_ms"]
                overhead = entry[direction].get("overhead_ms") or {}
                median = f"{stats['median']:8.1f}" if stats.get("n") else f"{'-':>8}"
                interval = _interval_text(stats.get("ci95"))
                extra = (f" {overhead['median']:>+9.1f} {_interval_text(overhead.get('ci95'))}"
                         if "median" in overhead else "")
                lines.append(f"{method:<18} {label:<7} {point['index']:>5} {values:<{point_width}} {median} "
                             f"{interval} {stats.get('n', 0):>4}{extra}")
    lines.append("")
    for point in summary["points"]:
        if point["state"] != "ok":
            lines.append(f"point {point['index']} {point['state'].upper()}: {point.get('reason', '')}")
    if not summary["missing"] and not summary["failed"]:
        lines.append("every point ran, and every handover of every point succeeded")
    wall = summary["wall"]
    if wall.get("sum_s") is not None:
        lines.append(f"wall time: points {wall['sum_s']} s in all"
                     + (f", {wall['span_s']} s from the first start to the last end" if "span_s" in wall else "")
                     + (f", {wall['from_submission_s']} s from the Slurm submission" if "from_submission_s" in wall
                        else ""))
    return "\n".join(lines)


def _interval_text(interval: list[float] | None, width: int = 17) -> str:
    return f"{f'[{interval[0]:.1f}, {interval[1]:.1f}]':>{width}}" if interval else f"{'-':>{width}}"


#: the figures plotted against each swept parameter: (label, what of a direction's entry, interval)
PLOTTED = (("median interruption (ms)", ("interruption_ms", "median"), ("interruption_ms", "ci95")),
           ("overhead over none (ms)", ("overhead_ms", "median"), ("overhead_ms", "ci95")),
           ("lost probes (median)", ("lost",), None))


#: (line style, marker) per combination of the other parameters' values; the colour is the method's
STYLES = (("-", "o"), ("--", "s"), (":", "^"), ("-.", "D"), ((0, (5, 1)), "v"), ((0, (1, 3)), "P"))


def _lookup(entry: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        entry = entry.get(key) if isinstance(entry, dict) else None
    return entry


def plot(directory: Path, summary: dict[str, Any]) -> list[str]:
    """``sweep_vs_<parameter>.png`` per swept parameter: each figure (rows) per direction
    (columns), one line per method and combination of the other parameters, with 95% intervals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    parameters = [d["name"] for d in summary["sweep"]["parameters"]]
    merged = [p for p in summary["points"] if p.get("per_method")]
    if not merged:
        return []
    methods = list(dict.fromkeys(key for point in merged for key in point["per_method"]))
    written = []
    for parameter in parameters:
        others = [p for p in parameters if p != parameter]
        values = next(d["values"] for d in summary["sweep"]["parameters"] if d["name"] == parameter)
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
        position = {repr(v): (v if numeric else i) for i, v in enumerate(values)}
        groups = list(dict.fromkeys(tuple(point["values"][o] for o in others) for point in merged))
        figure, axes = plt.subplots(len(PLOTTED), 2, figsize=(11, 3.2 * len(PLOTTED)), squeeze=False, sharex=True)
        for column, (direction, label) in enumerate(DIRECTIONS):
            for row, (ylabel, path, interval_path) in enumerate(PLOTTED):
                axis = axes[row][column]
                for method in methods:
                    for group in groups:
                        xs, ys, low, high = [], [], [], []
                        for point in merged:
                            if tuple(point["values"][o] for o in others) != group:
                                continue
                            entry = point["per_method"].get(method, {}).get(direction, {})
                            y = _lookup(entry, path)
                            if y is None:
                                continue
                            interval = _lookup(entry, interval_path) if interval_path else None
                            xs.append(position[repr(point["values"][parameter])])
                            ys.append(y)
                            low.append(y - interval[0] if interval else 0.0)
                            high.append(interval[1] - y if interval else 0.0)
                        if not xs:
                            continue
                        order = sorted(range(len(xs)), key=lambda i: xs[i])
                        name = method + (" (" + ", ".join(f"{o.split('.')[-1]}={_format_value(v)}"
                                                          for o, v in zip(others, group)) + ")" if others else "")
                        style = STYLES[groups.index(group) % len(STYLES)]
                        axis.errorbar([xs[i] for i in order], [ys[i] for i in order],
                                      yerr=[[low[i] for i in order], [high[i] for i in order]], marker=style[1],
                                      linestyle=style[0], capsize=3, linewidth=1.2, markersize=4, label=name,
                                      color=f"C{methods.index(method) % 10}")
                axis.set_ylabel(ylabel, fontsize=8)
                axis.grid(alpha=0.3)
                if row == 0:
                    axis.set_title(label)
                if row == len(PLOTTED) - 1:
                    axis.set_xlabel(parameter)
                    if not numeric:
                        axis.set_xticks(range(len(values)), [str(v) for v in values])
        handles, labels = axes[0][0].get_legend_handles_labels()
        if handles:
            figure.legend(handles, labels, loc="lower center", ncol=min(4, len(labels)), fontsize=7)
        figure.suptitle(f"sweep {summary['sweep']['name']}: figures against {parameter} (95% intervals)")
        figure.tight_layout(rect=(0, 0.04 + 0.015 * ((len(labels) - 1) // 4), 1, 1))
        name = f"sweep_vs_{parameter.replace('.', '_')}.png"
        figure.savefig(directory / name, dpi=100)
        plt.close(figure)
        written.append(name)
    return written


# -- compare two merges -----------------------------------------------------------------------------

def _drift_allowance(point: dict[str, Any] | None) -> float:
    """How far a run's emulation may drift and still pass its fidelity verdict (ms): the L2 step's
    tolerance, by which every handover's interruption may be longer than the scenario's."""
    tolerances = ((point or {}).get("fidelity") or {}).get("tolerances") or {}
    return float(tolerances.get("max_l2_drift_ms") or 0.0)


def agreement(first: dict[str, Any], second: dict[str, Any]) -> list[dict[str, Any]]:
    """Per point, method and direction: do the two merges' median interruptions and overheads agree
    (95% intervals overlap, each widened by one probe interval; without intervals, within
    max(5 ms, 10%))? An absolute interruption also includes the emulation's own delay, which two
    runs that each passed their fidelity verdict may have drifted apart by up to its tolerance
    (a loaded host); an overhead is taken within one run, against ``none``, and cancels it."""
    rows = []
    by_index = {point["index"]: point for point in second["points"]}
    for point in first["points"]:
        other = by_index.get(point["index"])
        slack = max(point.get("probe_interval_ms") or 0.0, (other or {}).get("probe_interval_ms") or 0.0)
        drift = max(_drift_allowance(point), _drift_allowance(other))
        for method, entry in (point.get("per_method") or {}).items():
            for direction, label in DIRECTIONS:
                for figure in ("interruption_ms", "overhead_ms"):
                    a = entry[direction].get(figure) or {}
                    b = (((other or {}).get("per_method") or {}).get(method, {}).get(direction, {}) or {}).get(figure)
                    if "median" not in a and not b:
                        continue
                    row = {"point": point["index"], "method": method, "direction": label, "figure": figure,
                           "a": a.get("median"), "b": (b or {}).get("median"),
                           "a_ci95": a.get("ci95"), "b_ci95": (b or {}).get("ci95")}
                    if row["a"] is None or row["b"] is None:
                        row["agree"], row["how"] = False, "missing on one side"
                        rows.append(row)
                        continue
                    allowed = drift if figure == "interruption_ms" else 0.0
                    limit = max(AGREEMENT_MS, AGREEMENT_SHARE * max(abs(row["a"]), abs(row["b"]))) + allowed
                    close = abs(row["a"] - row["b"]) <= limit
                    closeness = f"|difference| {abs(row['a'] - row['b']):.1f} {'<=' if close else '>'} {limit:.1f} ms"
                    if row["a_ci95"] and row["b_ci95"]:
                        gap = max(row["a_ci95"][0] - row["b_ci95"][1], row["b_ci95"][0] - row["a_ci95"][1])
                        overlap = gap <= 2 * slack + allowed
                        row["agree"] = overlap or close
                        within = f"one probe interval ({slack:g} ms) each" + (
                            f" and the emulation's drift tolerance ({allowed:g} ms)" if allowed else "")
                        apart = f"intervals {gap:.1f} ms apart"
                        row["how"] = ("intervals overlap" if gap <= 0 else f"{apart}, within {within}"
                                      if overlap else f"{apart}; {closeness}")
                    else:
                        row["agree"] = close
                        row["how"] = f"no intervals: {closeness}"
                    rows.append(row)
    return rows


# -- command line ---------------------------------------------------------------------------------

def _indices(text: str | None) -> list[int] | None:
    if not text:
        return None
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise SweepError(f"--points: a comma-separated list of point numbers, got {text!r}") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scenarios.sweep", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="action", required=True)
    planner = sub.add_parser("plan", help="expand a scenario's sweep or grid into point scenarios")
    planner.add_argument("scenario", type=Path)
    planner.add_argument("--out", type=Path, default=None, help="the sweep directory "
                         "(default: results/<name>/sweep-<UTC time>/)")
    runner = sub.add_parser("run", help="run the points in sequence here, then merge")
    runner.add_argument("directory", type=Path)
    runner.add_argument("--points", default=None, help="only these, e.g. 2,5")
    runner.add_argument("--kernel", choices=("auto", "host", "uml"), default=None)
    runner.add_argument("--no-merge", action="store_true")
    one = sub.add_parser("point", help="run one point (what each Slurm array task runs)")
    one.add_argument("directory", type=Path)
    one.add_argument("index", type=int)
    one.add_argument("--kernel", choices=("auto", "host", "uml"), default=None)
    batch = sub.add_parser("slurm", help="write the sbatch script (a job array, one task per point)")
    batch.add_argument("directory", type=Path)
    batch.add_argument("--concurrency", type=int, default=SlurmOptions.concurrency, help="%%K: tasks at once")
    batch.add_argument("--cpus-per-task", type=int, default=SlurmOptions.cpus_per_task,
                       help="CPUs Slurm gives each point (default 2: the guest's and its host side's)")
    batch.add_argument("--time-factor", type=float, default=TIME_FACTOR,
                       help="the time limit is this many times a point's estimated duration")
    batch.add_argument("--partition")
    batch.add_argument("--account")
    batch.add_argument("--mem", help="memory per task, e.g. 4G (the guest touches what it uses of its 8G)")
    batch.add_argument("--image", help="run each point in this OCI image of the testbed (docs/containers.md)")
    batch.add_argument("--engine", default="podman", help="the container engine on the compute nodes, with --image")
    batch.add_argument("--sbatch", action="append", default=[], help="another #SBATCH option, e.g. --qos=long")
    batch.add_argument("--submit", action="store_true", help="submit it and print the job id")
    batch.add_argument("--merge-after", action="store_true",
                       help="with --submit: a job that merges when the array ends")
    merger = sub.add_parser("merge", help="merge the points' results: summary, table, figures, report.html")
    merger.add_argument("directory", type=Path)
    merger.add_argument("--wait", metavar="JOB", help="first wait until this Slurm job has left the queue")
    merger.add_argument("--timeout", type=float, default=None, help="seconds to wait at most")
    comparer = sub.add_parser("compare", help="do two merges of one sweep agree within their intervals?")
    comparer.add_argument("first", type=Path)
    comparer.add_argument("second", type=Path)
    arguments = parser.parse_args(argv)
    try:
        if arguments.action == "plan":
            directory = plan(arguments.scenario, arguments.out)
            manifest = load_manifest(directory)
            print(f"sweep {manifest['name']}: {len(manifest['points'])} points in {directory}/points/ over "
                  + " x ".join(f"{d['name']} {d['values']}" for d in manifest["parameters"]), file=sys.stderr)
            print(directory)
            return 0
        if arguments.action == "run":
            code = run_points(arguments.directory, _indices(arguments.points), arguments.kernel)
            if not arguments.no_merge:
                summary = merge(arguments.directory)
                print(table(summary))
                code = code or (1 if summary["missing"] or summary["failed"] else 0)
            return code
        if arguments.action == "point":
            return run_point(arguments.directory, arguments.index, arguments.kernel,
                             progress=lambda line: print(line, file=sys.stderr, flush=True))
        if arguments.action == "slurm":
            options = SlurmOptions(arguments.concurrency, arguments.cpus_per_task, arguments.time_factor,
                                   arguments.partition, arguments.account, arguments.mem, arguments.image,
                                   arguments.engine, tuple(arguments.sbatch))
            result = slurm(arguments.directory, options, arguments.submit, arguments.merge_after)
            print(f"sbatch script: {result['script']}", file=sys.stderr)
            if "job_id" in result:
                print(f"submitted job {result['job_id']}"
                      + (f"; the merge follows as job {result['merge_job_id']}" if "merge_job_id" in result else
                         f"; merge it with: python -m scenarios.sweep merge {arguments.directory} "
                         f"--wait {result['job_id']}"), file=sys.stderr)
                print(result["job_id"])
            return 0
        if arguments.action == "merge":
            if arguments.wait:
                wait_for_job(arguments.wait, arguments.timeout)
            summary = merge(arguments.directory)
            print(table(summary))
            print(f"\nmerged into {arguments.directory}/ (summary.json, table.txt, "
                  f"{', '.join(summary['plots'])}, report.html)", file=sys.stderr)
            return 1 if summary["missing"] or summary["failed"] else 0
        if arguments.action == "compare":
            first, second = (_read_json(path / "summary.json") for path in (arguments.first, arguments.second))
            if not first or not second:
                raise SweepError("both directories need a merged summary.json (python -m scenarios.sweep merge)")
            rows = agreement(first, second)
            for row in rows:
                print(f"point {row['point']:>3} {row['method']:<18} {row['direction']:<7} {row['figure']:<16} "
                      f"{_number(row['a'])} {_interval_text(row['a_ci95'])}  {_number(row['b'])} "
                      f"{_interval_text(row['b_ci95'])}  {'agree' if row['agree'] else 'DIFFER'} ({row['how']})")
            differ = [row for row in rows if not row["agree"]]
            print(f"{len(rows) - len(differ)} of {len(rows)} figures agree", file=sys.stderr)
            return 0 if rows and not differ else 1
    except (SweepError, config.ScenarioError) as error:
        print(f"sweep: {error}", file=sys.stderr)
        return 2
    return 2


def _number(value: float | None) -> str:
    return f"{value:8.1f}" if value is not None else f"{'-':>8}"


if __name__ == "__main__":
    sys.exit(main())
