"""The kernel environment: use the host kernel when it can run the testbed, a UML guest otherwise.

The testbed needs IPv6 ESP, netem, SCTP, veth and ip6tnl. Distribution kernels have them; the
project's development and CI kernels do not. Rather than ask users to care, every privileged
command goes through :func:`run`: a probe tries each feature in a scratch network namespace, and
when anything is missing the command runs inside Debian's User-Mode Linux kernel
(``/usr/bin/linux.uml``) with the host's root file system mounted through hostfs. The guest's
standard output and error are two serial lines wired to ours, so output streams as it is written;
its exit status comes back through a file; its boot log is shown only when the guest fails.

Command line::

    python -m topo.kernel probe            # print the verdict
    python -m topo.kernel run -- CMD ...   # run CMD in the chosen kernel, exit with its status

``KERNEL=host`` or ``KERNEL=uml`` in the environment forces the choice (``auto`` is the default).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

UML_BINARY = "/usr/bin/linux.uml"
UML_MODULES_ROOT = Path("/usr/lib/uml/modules")
# backed by a file in the guest's work directory: only what is touched costs host memory
UML_MEMORY = os.environ.get("UML_MEMORY", "8G")
IN_GUEST_VARIABLE = "TESTBED_IN_GUEST"

# Kernel modules the guest loads before the command runs: ESP/AH and the XFRM user interface,
# the ciphers our algorithm profiles use, netem and the qdiscs Mininet's TCLink stacks under it,
# SCTP for CXTP between access routers, and the IPv6 tunnels and MIPv6 options for the HA.
GUEST_MODULES = (
    "xfrm_user", "xfrm_algo", "esp6", "esp4", "ah6", "xfrm6_tunnel", "tunnel6", "mip6",
    "authenc", "authencesn", "cbc", "ctr", "gcm", "ghash_generic", "seqiv", "echainiv",
    "aes_generic", "des_generic", "sha1_generic", "sha256_generic", "sha512_generic", "md5",
    "veth", "sch_netem", "sch_htb", "sch_tbf", "sctp", "ip6_tunnel",
)

# Each feature is tried alone in its own scratch network namespace, so one missing feature
# cannot hide another.
FEATURE_PROBES = {
    "veth": "ip link add name tbprobe0 type veth peer name tbprobe1",
    "esp6": (
        "ip xfrm state add src 2001:db8::1 dst 2001:db8::2 proto esp spi 0x100 mode tunnel "
        "enc 'cbc(aes)' 0x00112233445566778899aabbccddeeff "
        "auth-trunc 'hmac(sha256)' 0x00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff 128"
    ),
    "netem": "ip link set lo up && tc qdisc add dev lo root netem delay 1ms",
    "sctp": (
        f"{shlex.quote(sys.executable)} -c "
        "'import socket; socket.socket(socket.AF_INET6, socket.SOCK_STREAM, socket.IPPROTO_SCTP)'"
    ),
    "ip6tnl": "ip link add name tbprobe6 type ip6tnl local 2001:db8::1 remote 2001:db8::2 mode ip6ip6",
}


class KernelEnvironmentError(RuntimeError):
    """The testbed cannot get a kernel that runs it (no root, no UML, the guest died)."""


@dataclasses.dataclass(frozen=True)
class Verdict:
    """What the probe found and which kernel the work will run in."""

    host_release: str
    missing: tuple[str, ...]
    choice: str  # "host" or "uml"
    reason: str

    def describe(self) -> str:
        if self.choice == "host":
            return f"kernel: host {self.host_release} ({self.reason})"
        return f"kernel: UML {uml_release() or '?'} guest ({self.reason})"


def in_guest() -> bool:
    return os.environ.get(IN_GUEST_VARIABLE) == "1"


def uml_release() -> str | None:
    """The UML kernel's release, from the module tree Debian's package installs beside it."""
    if not UML_MODULES_ROOT.is_dir():
        return None
    releases = sorted(p.name for p in UML_MODULES_ROOT.iterdir() if p.is_dir())
    return releases[-1] if releases else None


def probe_host() -> tuple[str, ...]:
    """Return the features the running kernel lacks, by trying each in a scratch netns."""
    if os.geteuid() != 0:
        raise KernelEnvironmentError("probing the kernel needs root: run with sudo")
    missing = []
    for feature, command in FEATURE_PROBES.items():
        result = subprocess.run(
            ["unshare", "--net", "sh", "-c", command],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=30,
        )
        if result.returncode != 0:
            missing.append(feature)
    return tuple(missing)


def decide(requested: str | None = None) -> Verdict:
    """Choose the kernel: forced by ``KERNEL``, else the host when the probe finds everything."""
    requested = (requested or os.environ.get("KERNEL") or "auto").lower()
    release = platform.release()
    if requested not in ("auto", "host", "uml"):
        raise KernelEnvironmentError(f"KERNEL must be auto, host or uml, not {requested!r}")
    if in_guest():
        return Verdict(release, (), "host", "already inside the UML guest")
    if requested == "uml":
        return Verdict(release, (), "uml", "forced by KERNEL=uml")
    missing = probe_host()
    if requested == "host":
        note = f"forced by KERNEL=host; lacks {', '.join(missing)}" if missing else "forced by KERNEL=host"
        return Verdict(release, missing, "host", note)
    if not missing:
        return Verdict(release, missing, "host", "has esp6, netem, sctp, veth, ip6tnl")
    return Verdict(release, missing, "uml", f"host {release} lacks {', '.join(missing)}")


def ensure_uml_modules_visible() -> None:
    """modprobe in the guest looks in /lib/modules/<release>; point it at Debian's UML modules."""
    release = uml_release()
    if release is None:
        raise KernelEnvironmentError(
            "user-mode-linux is not installed (no /usr/lib/uml/modules): run `sudo make setup`")
    link = Path("/lib/modules") / release
    if link.exists():
        return
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(UML_MODULES_ROOT / release)


#: SCHED_FIFO priority of the guest's ksoftirqd: above the probes' 50, below the handover steps' 70
KSOFTIRQD_PRIORITY = 60


def _guest_init_script(workdir: Path, command: list[str], cwd: str, environment: dict[str, str]) -> str:
    exports = "\n".join(f"export {key}={shlex.quote(value)}" for key, value in sorted(environment.items()))
    modules = " ".join(GUEST_MODULES)
    status_file = workdir / "status"
    return f"""#!/bin/sh
# PID 1 of the UML guest: prepare a minimal system on the host's root (hostfs), run the
# command with its output on the two serial lines, record its status, halt.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t tmpfs -o mode=755 tmpfs /run
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /dev/pts /dev/shm
mount -t devpts -o newinstance,ptmxmode=0666 devpts /dev/pts
ln -sf pts/ptmx /dev/ptmx 2>/dev/null
mount -t tmpfs tmpfs /dev/shm
mount -t cgroup2 cgroup2 /sys/fs/cgroup 2>/dev/null
stty -F /dev/ttyS0 raw -echo 2>/dev/null
stty -F /dev/ttyS1 raw -echo 2>/dev/null
modprobe -a {modules} 2>/dev/null || for m in {modules}; do modprobe $m 2>/dev/null; done
ip link set lo up
hostname testbed-guest
# The kernel's deferred packet work (ksoftirqd) runs above the probes' real-time threads (50,
# nodes/probe.py): else, once the softirq load goes to ksoftirqd, every packet waits behind the
# probes, and an interface going down waits a jiffy (10 ms here) for its queue to drain.
for task in /proc/[0-9]*; do
  case "$(cat $task/comm 2>/dev/null)" in ksoftirqd/*) chrt -f -p {KSOFTIRQD_PRIORITY} "${{task#/proc/}}" >/dev/null 2>&1;; esac
done
{exports}
export {IN_GUEST_VARIABLE}=1
cd {shlex.quote(cwd)} || echo 126 > {status_file}
if [ ! -f {status_file} ]; then
  {shlex.join(command)} </dev/null >/dev/ttyS0 2>/dev/ttyS1
  echo $? > {status_file}
fi
sync
halt -f -d 2>/dev/null || poweroff -f
"""  # noqa: E501 (a line of the script)


# Variables worth carrying into the guest; the rest of the host's environment stays out.
PASSED_VARIABLES = (
    "HOME", "LANG", "LC_ALL", "TERM", "CI", "HYPOTHESIS_PROFILE", "PYTHONPATH", "PYTHONDONTWRITEBYTECODE",
    "SCENARIO", "RUN", "TESTBED_RESULTS", "PYTEST_ADDOPTS", "KERNEL_VERDICT",
)


def run_in_uml(command: list[str], timeout: float | None = None) -> int:
    """Boot the UML guest, run ``command`` in it, stream its output, return its exit status."""
    if not Path(UML_BINARY).exists():
        raise KernelEnvironmentError(f"{UML_BINARY} is missing: run `sudo make setup`")
    ensure_uml_modules_visible()
    workdir = Path(tempfile.mkdtemp(prefix="testbed-uml-"))
    try:
        environment = {k: os.environ[k] for k in PASSED_VARIABLES if k in os.environ}
        environment["PYTHONUNBUFFERED"] = "1"
        # The guest's output goes to a serial line, which programs take for a terminal: tell
        # them it is not one unless ours is, so that CI logs get no colour codes.
        if not sys.stdout.isatty():
            environment.pop("TERM", None)
            environment.update(NO_COLOR="1", PY_COLORS="0")
        init = workdir / "init.sh"
        init.write_text(_guest_init_script(workdir, command, os.getcwd(), environment))
        init.chmod(0o755)
        boot_log = workdir / "boot.log"
        sys.stdout.flush()
        sys.stderr.flush()
        out_fd, err_fd = os.dup(sys.stdout.fileno()), os.dup(sys.stderr.fileno())
        arguments = [
            UML_BINARY, f"mem={UML_MEMORY}", "rootfstype=hostfs", "rootflags=/", "rw",
            f"init={init}", "quiet", "con=null",
            f"ssl0=null,fd:{out_fd}", f"ssl1=null,fd:{err_fd}",
        ]
        started = time.monotonic()
        with open(boot_log, "wb") as log:
            guest = subprocess.Popen(
                arguments, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                pass_fds=(out_fd, err_fd), start_new_session=True,
                env={**os.environ, "TMPDIR": str(workdir)},
            )
            os.close(out_fd)
            os.close(err_fd)
            # A runner stopped by SIGTERM or SIGHUP (CI's timeout, a closed terminal) ends its
            # guest as Ctrl-C does: the guest's session, recorded above, goes with it.
            previous = {number: signal.signal(number, _raise_interrupt) for number in (signal.SIGTERM, signal.SIGHUP)}
            try:
                guest.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                _kill_session(guest.pid)
                guest.wait()
                print(f"[testbed] UML guest timed out after {timeout:.0f} s", file=sys.stderr)
                return 124
            except KeyboardInterrupt:
                _kill_session(guest.pid)
                guest.wait()
                raise
            finally:
                # UML leaves helper processes in its session; end them by the session we recorded.
                _kill_session(guest.pid)
                for number, handler in previous.items():
                    signal.signal(number, handler)
        status_file = workdir / "status"
        if not status_file.exists():
            sys.stderr.write("[testbed] the UML guest died before the command finished; boot log:\n")
            sys.stderr.write(boot_log.read_text(errors="replace")[-8000:])
            return 125
        status = int(status_file.read_text().strip() or 125)
        elapsed = time.monotonic() - started
        print(f"[testbed] UML guest exited with status {status} after {elapsed:.1f} s", file=sys.stderr)
        return status
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _raise_interrupt(number, _frame) -> None:
    raise KeyboardInterrupt(f"signal {number}")


def _kill_session(session_id: int) -> None:
    try:
        os.killpg(session_id, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def run(command: list[str], requested: str | None = None, timeout: float | None = None) -> int:
    """Run ``command`` in a kernel that has what the testbed needs; return its exit status."""
    verdict = decide(requested)
    print(f"[testbed] {verdict.describe()}", file=sys.stderr, flush=True)
    os.environ["KERNEL_VERDICT"] = verdict.describe()
    if verdict.choice == "host":
        return subprocess.run(command).returncode
    return run_in_uml(command, timeout=timeout)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m topo.kernel", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="action", required=True)
    sub.add_parser("probe", help="print which features the host kernel lacks and the choice")
    run_parser = sub.add_parser("run", help="run a command in the chosen kernel")
    run_parser.add_argument("--kernel", choices=("auto", "host", "uml"), default=None)
    run_parser.add_argument("--timeout", type=float, default=None, help="seconds before the guest is killed")
    run_parser.add_argument("command", nargs=argparse.REMAINDER)
    arguments = parser.parse_args(argv)
    try:
        if arguments.action == "probe":
            verdict = decide()
            print(verdict.describe())
            print("missing on host:", ", ".join(verdict.missing) or "nothing")
            return 0
        command = arguments.command
        if command and command[0] == "--":
            command = command[1:]
        if not command:
            parser.error("run needs a command after --")
        return run(command, arguments.kernel, arguments.timeout)
    except KernelEnvironmentError as error:
        print(f"[testbed] {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
