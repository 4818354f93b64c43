"""The self-describing run record: how a number was made, so that it can be traced and redone."""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

FORMAT_VERSION = 1
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
        "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "git": git_state(),
        "environment": environment(),
        "packages": package_versions(),
        "parameters": parameters,
        "seed": parameters.get("seed"),
    }
