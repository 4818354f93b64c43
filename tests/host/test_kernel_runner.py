"""The UML runner as a user meets it: output streams through, the exit status comes back, the
boot log stays hidden, and a bad choice of kernel is a clear error. Boots the guest once."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from topo import kernel

REPOSITORY = Path(__file__).resolve().parents[2]

needs_root = pytest.mark.skipif(os.geteuid() != 0 and not os.environ.get("CI"), reason="needs root")


@needs_root
def test_failing_command_in_guest_fails_the_outer_command():
    command = "echo to-stdout; echo to-stderr >&2; test \"$TESTBED_IN_GUEST\" = 1 && uname -r; exit 7"
    result = subprocess.run(
        [sys.executable, "-m", "topo.kernel", "run", "--kernel", "uml", "--timeout", "120", "--", "sh", "-c", command],
        cwd=REPOSITORY, capture_output=True, text=True, timeout=180,
    )
    assert result.returncode == 7, result.stderr
    assert "to-stdout" in result.stdout
    assert kernel.uml_release() in result.stdout  # it really ran in the UML kernel
    assert "to-stderr" in result.stderr and "to-stderr" not in result.stdout
    assert "[testbed] kernel: UML" in result.stderr  # the verdict is printed first
    # The guest's boot log is hidden when all went well.
    assert "Linux version" not in result.stdout + result.stderr
    assert "Checking that ptrace" not in result.stdout + result.stderr


def test_unknown_kernel_choice_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("KERNEL", "qemu")
    with pytest.raises(kernel.KernelEnvironmentError, match="KERNEL must be auto, host or uml"):
        kernel.decide()


def test_guest_init_script_records_status_and_halts(tmp_path):
    script = kernel._guest_init_script(tmp_path, ["false", "it's quoted"], "/work dir", {"CI": "true"})
    assert "'it'\"'\"'s quoted'" in script  # arguments are shell-quoted, not interpolated
    assert f"echo $? > {tmp_path / 'status'}" in script
    assert "cd '/work dir'" in script
    assert script.rstrip().endswith("halt -f -d 2>/dev/null || poweroff -f")
    assert "export TESTBED_IN_GUEST=1" in script
