"""A sweep on a real Slurm cluster: scripts/slurm-cluster.sh starts a one-node cluster (Debian's
munge, slurmctld and slurmd, a configuration of its own, stopped by PID), and an ordinary user
(``testbed-slurm``, created when absent) runs scenarios/sweep-smoke.toml's 3 points twice: one
after the other on this machine (``python -m scenarios.sweep run``), then as a job array
(``slurm --submit``, ``merge --wait``). Both merges must list every point as ok, their figures
must agree within their 95% intervals (``compare``), and each has its report.html. The two wall
times are printed at the end of the session; everything stays in results/slurm-test/<time>/.
Needs root (to start the daemons and become the user); run by `make test` and `make test-slurm`.
"""

from __future__ import annotations

import datetime
import json
import os
import pwd
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from host import browser
from scenarios import sweep

REPOSITORY = Path(__file__).resolve().parents[2]
USER = "testbed-slurm"
HOME = Path("/var/lib/testbed-slurm")
SCENARIO = REPOSITORY / "scenarios" / "sweep-smoke.toml"
CLUSTER = REPOSITORY / "scripts" / "slurm-cluster.sh"
PYTHON = str(REPOSITORY / ".venv" / "bin" / "python")
SCREENSHOTS = REPOSITORY / "results" / "browser-test"
DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch")

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0 and not os.environ.get("CI"), reason="needs root"),
    pytest.mark.skipif(not all(shutil.which(d) for d in DAEMONS) and not os.environ.get("CI"),
                       reason="no Slurm or MUNGE (scripts/setup.sh installs them)"),
    pytest.mark.timeout(1800),
]


def _user_exists() -> bool:
    try:
        pwd.getpwnam(USER)
    except KeyError:
        return False
    return True


def as_user(arguments: list[str], environment: dict[str, str], timeout: float, check: bool = True
            ) -> subprocess.CompletedProcess:
    """Run a command as the test's ordinary user, in the repository, with only the environment given."""
    result = subprocess.run(["runuser", "-u", USER, "--", "env", "-i", *(f"{k}={v}" for k, v in environment.items()),
                             *arguments], cwd=REPOSITORY, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(arguments)} as {USER} exited {result.returncode}:\n"
                             f"{result.stdout[-3000:]}\n{result.stderr[-6000:]}")
    return result


@pytest.fixture(scope="module")
def user() -> Iterator[str]:
    """The ordinary user the jobs run as; the repository readable to it (ACLs for the traverse
    right where an ancestor directory denies it, removed afterwards)."""
    if not _user_exists():
        subprocess.run(["useradd", "--system", "--create-home", "--home-dir", str(HOME), "--shell", "/bin/bash",
                        USER], check=True)
    granted = []
    for directory in reversed(REPOSITORY.parents):
        if subprocess.run(["runuser", "-u", USER, "--", "test", "-x", str(directory)]).returncode != 0:
            subprocess.run(["setfacl", "-m", f"u:{USER}:x", str(directory)], check=True)
            granted.append(directory)
    readable = [REPOSITORY / "scenarios" / "sweep.py", REPOSITORY / ".venv" / "pyvenv.cfg"]
    recursive = False
    if any(subprocess.run(["runuser", "-u", USER, "--", "test", "-r", str(path)]).returncode for path in readable):
        # a checkout made with a umask that keeps others out: read rights for this user only
        subprocess.run(["setfacl", "-R", "-m", f"u:{USER}:rX", str(REPOSITORY)], check=True)
        recursive = True
    for path in readable:
        assert subprocess.run(["runuser", "-u", USER, "--", "test", "-r", str(path)]).returncode == 0, \
            f"{USER} cannot read {path}: the checkout must be readable to the user the jobs run as"
    yield USER
    for directory in granted:
        subprocess.run(["setfacl", "-x", f"u:{USER}", str(directory)], check=False)
    if recursive:
        subprocess.run(["setfacl", "-R", "-x", f"u:{USER}", str(REPOSITORY)], check=False)


@pytest.fixture(scope="module")
def output(user: str) -> Path:
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    directory = REPOSITORY / "results" / "slurm-test" / f"{stamp}-{os.getpid()}"
    directory.mkdir(parents=True)
    shutil.chown(directory, user)
    return directory


@pytest.fixture(scope="module")
def cluster(output: Path) -> Iterator[str]:
    """A one-node cluster for this module; its SLURM_CONF. Its logs are copied beside the results."""
    state = Path(f"/var/tmp/testbed-slurm-test-{os.getpid()}")  # short: the MUNGE socket's path is bounded
    environment = {**os.environ, "SLURM_PORT": str(_free_port_pair())}  # another test session may hold 16817
    started = subprocess.run(["bash", str(CLUSTER), "start", str(state)], capture_output=True, text=True, timeout=180,
                             env=environment)
    assert started.returncode == 0, f"the cluster did not start:\n{started.stderr}"
    try:
        yield started.stdout.strip().splitlines()[-1]
    finally:
        subprocess.run(["bash", str(CLUSTER), "stop", str(state)], timeout=300)
        shutil.copytree(state / "log", output / "cluster-logs", dirs_exist_ok=True)
        shutil.rmtree(state, ignore_errors=True)


def _free_port_pair(first: int = 16817) -> int:
    """The first of two free consecutive TCP ports (slurmctld's and slurmd's) from ``first`` on."""
    for base in range(first, first + 200, 2):
        free = True
        for port in (base, base + 1):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
                try:
                    probe.bind(("0.0.0.0", port))
                except OSError:
                    free = False
        if free:
            return base
    raise AssertionError(f"no two free ports from {first} on")


def _summary(directory: Path) -> dict:
    return json.loads((directory / "summary.json").read_text())


def _check_merged(directory: Path) -> dict:
    summary = _summary(directory)
    assert [point["state"] for point in summary["points"]] == ["ok"] * 3, \
        [(point["index"], point["state"], point.get("reason")) for point in summary["points"]]
    assert summary["missing"] == [] and summary["failed"] == []
    for point in summary["points"]:
        assert point["status"]["user"] == USER and point["status"]["exit_status"] == 0
        assert set(point["per_method"]) == {"none", "cxtp-predictive", "cxtp-reactive"}
        for entry in point["per_method"].values():
            assert entry["failed_handovers"] == 0
        assert (directory / point["report"]).is_file()  # each point's own report.html
    assert summary["plots"] == ["sweep_vs_links_ar_ar_delay_ms.png"]
    assert (directory / "report.html").stat().st_size > 50_000
    return summary


def test_a_sweep_runs_point_by_point_and_as_a_slurm_job_array_alike(user, output, cluster, keep_for_reader):
    environment = {"HOME": str(HOME), "PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin", "LANG": "C.UTF-8",
                   "SLURM_CONF": cluster, "CI": os.environ.get("CI", "")}
    local, array = output / "point-by-point", output / "slurm"
    for directory in (local, array):
        as_user([PYTHON, "-m", "scenarios.sweep", "plan", str(SCENARIO), "--out", str(directory)], environment, 60)
    # the same sweep: the same points, the same seeds
    assert (local / "sweep.json").read_text().split('"points"')[1] == (array / "sweep.json").read_text().split(
        '"points"')[1]

    started = time.monotonic()
    as_user([PYTHON, "-m", "scenarios.sweep", "run", str(local)], environment, 1200)
    sequential_s = time.monotonic() - started

    started = time.monotonic()
    submitted = as_user([PYTHON, "-m", "scenarios.sweep", "slurm", str(array), "--submit", "--concurrency", "2"],
                        environment, 60)
    job = submitted.stdout.strip()
    assert job.isdigit(), submitted.stdout + submitted.stderr
    script = (array / "slurm" / "sweep.sbatch").read_text()
    assert "#SBATCH --array=1-3%2" in script
    merged = as_user([PYTHON, "-m", "scenarios.sweep", "merge", str(array), "--wait", job, "--timeout", "1200"],
                     environment, 1300, check=False)
    array_s = time.monotonic() - started
    assert merged.returncode == 0, merged.stdout + merged.stderr
    logs = sorted(p.name for p in (array / "slurm").glob(f"{job}_*.out"))
    assert logs == [f"{job}_{i}.out" for i in (1, 2, 3)]  # each task's output in the sweep directory
    for log in logs:
        assert f"as {USER}" in (array / "slurm" / log).read_text()

    first, second = _check_merged(local), _check_merged(array)
    for point in second["points"]:
        assert point["status"]["slurm"]["array_job_id"] == job
        assert point["status"]["slurm"]["array_task_id"] == str(point["index"])
    for point in first["points"]:
        assert not point["status"]["slurm"]  # run here, not by Slurm
    compared = as_user([PYTHON, "-m", "scenarios.sweep", "compare", str(local), str(array)], environment, 60,
                       check=False)
    (output / "compare.txt").write_text(compared.stdout + compared.stderr)
    assert compared.returncode == 0, f"the two merges differ:\n{compared.stdout}"

    timing = {"point_by_point_s": round(sequential_s, 1), "slurm_array_s": round(array_s, 1),
              "points_sum_s": {"point_by_point": first["wall"]["sum_s"], "slurm": second["wall"]["sum_s"]},
              "slurm_span_s": second["wall"].get("span_s"), "concurrency": 2,
              "cpus_per_task": sweep.SlurmOptions.cpus_per_task, "cpus": os.cpu_count()}
    (output / "timing.json").write_text(json.dumps(timing, indent=2) + "\n")
    keep_for_reader("3-point sweep, point by point (wall s)", timing["point_by_point_s"])
    keep_for_reader(f"3-point sweep, one-node Slurm array (%2, {timing['cpus_per_task']} CPUs per task, "
                    f"{timing['cpus']} CPUs), submission to merge (wall s)", timing["slurm_array_s"])

    # the merged sweep's page, as a person opens it
    page = browser.open_page(array / "report.html", SCREENSHOTS / "slurm-sweep",
                             expressions={"cells": browser.CELLS, "images": browser.IMAGES})
    browser.check_clean(page)
    browser.check_numbers(page.values["cells"], {"summary": _summary(array)})
    keep_for_reader("the two merged sweeps", f"{local}/report.html, {array}/report.html")
    for path in page.screenshots:
        keep_for_reader("screenshot of the Slurm sweep's report.html", path)
