"""The full re-authentication baseline: strongSwan charon on the MN and the ARs, FreeRADIUS on the
AAA node, IKEv2 (+ EAP relayed to RADIUS) driven over VICI from Python.

What runs where (see docs/baseline.md):

- ``mn``, ``par``, ``nar``: one ``charon`` each (strongSwan 5.9.8), started from the node's network
  namespace (``host.popen``) inside a private mount namespace where the node's own run directory is
  bind-mounted on ``/run``: charon hard-codes ``/var/run/charon.pid`` and refuses to start when it
  names a live process, so each charon needs its own ``/run``. Its VICI socket is the default
  ``/var/run/charon.vici``, i.e. ``<workdir>/<node>/run/charon.vici`` seen from outside.
  ``STRONGSWAN_CONF`` points charon at the node's generated ``strongswan.conf`` (explicit plugin
  list, file log, the AR's RADIUS server). Connections, keys, certificates and secrets are loaded
  over VICI (``load-conn``, ``load-key``, ``load-shared``; certificates inline in the auth rounds).
- ``aaa``: FreeRADIUS (:mod:`nodes.radius`).

The MN authenticates with EAP (MSCHAPv2 by default, or MD5), which the AR relays to RADIUS with
the ``eap-radius`` plugin; the AR authenticates with a self-signed ECDSA certificate made at
set-up with ``pki`` (:mod:`nodes.pki`) and pinned on the MN. ``psk`` is the cheaper baseline: a
pre-shared key on both sides, no AAA. The CHILD_SA is the paper's tunnel: inner MN CoA <-> HA
(2001:db8:3::1/128), outer MN CoA <-> AR access address, tunnel mode, both directions; charon
installs the AR's ``fwd`` policy, so the AR forwards decapsulated traffic to the HA.

A handover is a fresh ``initiate`` at the new AR (never a re-authentication ``rekey`` of the old
IKE_SA, which races in 5.9.8), then :meth:`IkeBaseline.detach_old` removes the old IKE/CHILD SAs
on the MN and on the previous AR.

Timing: ``initiate_sent_ns`` is taken just before the VICI ``initiate`` request is written;
``child_installed_ns`` is the arrival, in a listener thread of this process, of charon's
``child-updown`` (up) event, which charon raises after the kernel SAs and policies are installed.
Message counts come from AF_PACKET sockets with a kernel BPF filter (UDP port 500/4500 in the MN's
namespace, UDP port 1812 in the AR's), drained before and after each attach: real packets on the
wire, retransmissions included, nothing parsed during the measured interval. IKE messages are
those carrying the initiator SPI of the attach's own IKE_SA_INIT (a late DELETE of the previous
IKE_SA is counted apart); bytes are UDP payload bytes (the IKE or RADIUS message).
"""

from __future__ import annotations

import ctypes
import dataclasses
import os
import queue
import re
import signal
import socket
import struct
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import vici
from vici.exception import CommandException, SessionException

from nodes import netns
from nodes.agent import AGENT_NICE
from nodes import pki as pki_module
from nodes.radius import FreeRadius, RadiusConfig
from topo import plan

CHARON = "/usr/lib/ipsec/charon"
METHODS = ("eap-mschapv2", "eap-md5", "psk")
IKE_PROPOSAL = "aes128-sha256-x25519"
ESP_PROPOSAL = "aes128-sha256"   # kernel: cbc(aes) + hmac(sha256) truncated to 128 bits
MN_IDENTITY = "mn"
AR_CONNECTION = "access"         # the connection name on each AR
AR_NODES = plan.ACCESS_ROUTERS
CHARON_NODES = (plan.MN, *AR_NODES)
# The plugins charon loads, explicitly (no load_modular, nothing from /etc/strongswan.d).
CHARON_PLUGINS = ("nonce openssl kdf pem pkcs1 pkcs8 x509 pubkey revocation constraints hmac gcm "
                  "kernel-netlink socket-default vici eap-identity eap-md5 eap-mschapv2 eap-radius")
SUN_PATH_MAX = 107
VICI_REQUEST_TIMEOUT_S = 60.0


class IkeError(RuntimeError):
    """The IKE baseline failed (configuration, daemons, or an exchange)."""


class IkeStartError(IkeError):
    """A daemon (charon or FreeRADIUS) could not be configured or started."""


class IkeAttachError(IkeError):
    """``initiate`` failed for a reason other than authentication (timeout, no proposal, ...)."""

    def __init__(self, ar: str, reason: str, log: str = ""):
        super().__init__(f"IKE attach to {ar} failed: {reason}")
        self.ar, self.reason, self.log = ar, reason, log


class IkeAuthenticationError(IkeAttachError):
    """The peer refused our credentials (EAP failure from RADIUS, AUTHENTICATION_FAILED)."""


# -- configuration generation (pure) ------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class BaselineParams:
    method: str = "eap-mschapv2"
    password: str = "testbed-secret"   # the MN's EAP password (what the MN presents)
    radius_password: str | None = None  # what RADIUS holds (None: same as password)
    psk: str = "testbed-psk-0123456789"
    radius_secret: str = "testbed-radius"
    aaa: bool = True
    initiate_timeout_ms: int = 30_000

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if self.method != "psk" and not self.aaa:
            raise ValueError(f"method {self.method} needs the AAA server (aaa=True)")

    @property
    def eap(self) -> bool:
        return self.method.startswith("eap-")


def render_strongswan_conf(node: str, log_path: Path, radius: tuple[str, str] | None) -> str:
    """strongswan.conf for one node's charon; ``radius`` = (server address, secret) on an AR."""
    lines = [
        f"# Generated by nodes/ike.py for node {node}: do not edit.",
        "charon {",
        f"\tload = {CHARON_PLUGINS}",
        "\t# The MN's default route already points at its AR: no routing table 220.",
        "\tinstall_routes = no",
        "\tinstall_virtual_ip = no",
        "\tport = 500",
        "\tport_nat_t = 4500",
        "\t# A few worker threads are plenty for one MN.",
        "\tthreads = 8",
        "\tcrypto_test {",
        "\t\ton_add = no",
        "\t}",
        "\tfilelog {",
        "\t\tcharon {",
        f"\t\t\tpath = {log_path}",
        "\t\t\ttime_format = %H:%M:%S",
        "\t\t\ttime_add_ms = yes",
        "\t\t\tappend = no",
        "\t\t\tflush_line = yes",
        "\t\t\tdefault = 1",
        "\t\t\tike = 1",
        "\t\t\tcfg = 1",
        "\t\t}",
        "\t}",
        "\tsyslog {",
        "\t\tdaemon {",
        "\t\t\tdefault = -1",
        "\t\t}",
        "\t}",
        "\tplugins {",
    ]
    if radius is not None:
        address, secret = radius
        lines += [
            "\t\teap-radius {",
            "\t\t\taccounting = no",
            f"\t\t\tnas_identifier = {node}",
            "\t\t\tretransmit_tries = 4",
            "\t\t\tretransmit_timeout = 2.0",
            "\t\t\tservers {",
            "\t\t\t\taaa {",
            f"\t\t\t\t\taddress = {address}",
            f"\t\t\t\t\tsecret = {secret}",
            "\t\t\t\t\tauth_port = 1812",
            "\t\t\t\t}",
            "\t\t\t}",
            "\t\t}",
        ]
    lines += ["\t}", "}", ""]
    return "\n".join(lines)


def _child(local_ts: str, remote_ts: str) -> dict[str, Any]:
    return {
        "mode": "tunnel",
        "local_ts": [local_ts],
        "remote_ts": [remote_ts],
        "esp_proposals": [ESP_PROPOSAL],
        "start_action": "none",
        "dpd_action": "clear",
        "close_action": "none",
    }


# Options both ends share: no MOBIKE (a handover is a new IKE_SA at the new AR, never an update of
# the old one), no DPD, rekeying or re-authentication timers inside a run.
COMMON_CONNECTION_OPTIONS = {"version": "2", "proposals": [IKE_PROPOSAL], "mobike": "no", "fragmentation": "yes",
                             "dpd_delay": "0", "rekey_time": "0", "reauth_time": "0"}


def mn_connection_name(ar: str) -> str:
    return f"to-{ar}"


def mn_connection(ar: str, params: BaselineParams, ar_cert_pem: bytes | None) -> dict[str, Any]:
    """The MN's connection to ``ar``: from its CoA there to the AR's access address."""
    if params.eap:
        local = {"auth": params.method, "id": MN_IDENTITY, "eap_id": MN_IDENTITY}
        if ar_cert_pem is None:
            raise ValueError("EAP needs the AR's certificate to pin")
        remote = {"auth": "pubkey", "id": ar, "certs": [ar_cert_pem]}
    else:
        local = {"auth": "psk", "id": MN_IDENTITY}
        remote = {"auth": "psk", "id": ar}
    return {
        **COMMON_CONNECTION_OPTIONS,
        # The static local address keeps charon from "roaming" the old IKE_SA.
        "local_addrs": [plan.MN_COA[ar]],
        "remote_addrs": [plan.AR_ACCESS_ADDRESS[ar]],
        "keyingtries": "1",
        "local-1": local,
        "remote-1": remote,
        "children": {mn_connection_name(ar): _child("dynamic", f"{plan.HA_ADDRESS}/128")},
    }


def ar_connection(ar: str, params: BaselineParams, ar_cert_pem: bytes | None) -> dict[str, Any]:
    """The AR's responder connection for any MN on its access link."""
    if params.eap:
        if ar_cert_pem is None:
            raise ValueError("EAP needs the AR's certificate")
        local = {"auth": "pubkey", "id": ar, "certs": [ar_cert_pem]}
        # The MN's IKE identity is its EAP identity (no EAP-Identity round); RADIUS picks the method.
        remote = {"auth": "eap-radius", "id": "%any"}
    else:
        local = {"auth": "psk", "id": ar}
        remote = {"auth": "psk", "id": MN_IDENTITY}
    return {
        **COMMON_CONNECTION_OPTIONS,
        "local_addrs": [plan.AR_ACCESS_ADDRESS[ar]],
        "remote_addrs": [plan.ACCESS_PREFIX[ar]],
        "unique": "never",
        "local-1": local,
        "remote-1": remote,
        "children": {AR_CONNECTION: _child(f"{plan.HA_ADDRESS}/128", "dynamic")},
    }


def shared_secrets(node: str, params: BaselineParams) -> list[dict[str, Any]]:
    """``load-shared`` messages for ``node``."""
    secrets = []
    if params.method == "psk":
        secrets.append({"id": f"psk-{node}", "type": "IKE", "data": params.psk,
                        "owners": [MN_IDENTITY, *AR_NODES]})
    elif node == plan.MN:
        secrets.append({"id": "eap-mn", "type": "EAP", "data": params.password, "owners": [MN_IDENTITY]})
    return secrets


def classify_failure(log: str) -> tuple[type[IkeAttachError], str]:
    """Name an initiate failure from the MN's charon log lines written during the attempt."""
    patterns = (
        (IkeAuthenticationError, r"received EAP_FAILURE[^\n]*"),
        (IkeAuthenticationError, r"received AUTHENTICATION_FAILED[^\n]*"),
        (IkeAuthenticationError, r"EAP method \S+ failed[^\n]*"),
        (IkeAuthenticationError, r"[^\n]*authentication of '[^']*' with [^\n]* failed[^\n]*"),
        (IkeAuthenticationError, r"[^\n]*constraint check failed[^\n]*"),
        (IkeAttachError, r"[^\n]*NO_PROPOSAL_CHOSEN[^\n]*"),
        (IkeAttachError, r"[^\n]*TS_UNACCEPTABLE[^\n]*"),
        (IkeAttachError, r"[^\n]*key derivation failed[^\n]*"),
        (IkeAttachError, r"giving up after \d+ retransmits[^\n]*"),
    )
    for kind, pattern in patterns:
        match = re.search(pattern, log)
        if match:
            return kind, match.group(0).strip()
    return IkeAttachError, "initiate failed (no reason in the MN's charon log)"


# -- packet counting --------------------------------------------------------------------------
ETH_P_ALL = 0x0003
SO_ATTACH_FILTER = 26
PACKET_OUTGOING = 4
ETH_HLEN, IPV6_HLEN, UDP_HLEN = 14, 40, 8


def udp6_port_filter(ports: tuple[int, ...]) -> bytes:
    """A classic BPF program: accept IPv6/UDP packets (no extension headers) whose source or
    destination port is one of ``ports``; drop everything else (in the kernel)."""
    ld_h, ld_b, jeq, ret = 0x28, 0x30, 0x15, 0x06
    program: list[tuple[int, int, int, int]] = []
    n = len(ports)
    # Layout: 0 ldh ethertype; 1 jeq 86dd; 2 ldb nexthdr; 3 jeq udp; 4 ldh sport; n jeqs;
    # ldh dport; n jeqs; drop; accept.
    total = 4 + 1 + n + 1 + n + 2
    drop, accept = total - 2, total - 1
    program.append((ld_h, 0, 0, 12))
    program.append((jeq, 0, drop - 2, 0x86DD))
    program.append((ld_b, 0, 0, ETH_HLEN + 6))
    program.append((jeq, 0, drop - 4, 17))
    for offset in (ETH_HLEN + IPV6_HLEN, ETH_HLEN + IPV6_HLEN + 2):
        program.append((ld_h, 0, 0, offset))
        for index, port in enumerate(ports):
            here = len(program)
            last = index == n - 1
            program.append((jeq, accept - here - 1, 0 if not last else
                            (0 if offset == ETH_HLEN + IPV6_HLEN else drop - here - 1), port))
    program.append((ret, 0, 0, 0))
    program.append((ret, 0, 0, 0x40000))
    assert len(program) == total
    return b"".join(struct.pack("HBBI", *instruction) for instruction in program)


IKE_SA_INIT = 34


def summarize_ike(packets: list[tuple[str, bytes]]) -> dict[str, int]:
    """Count the IKE messages of the IKE_SA the MN initiated in ``packets`` (the first outgoing
    IKE_SA_INIT request names it by its initiator SPI): stray messages of older SAs, such as a
    late DELETE, are left out. Bytes are IKE message bytes (the UDP payload)."""
    spi = next((payload[:8] for direction, payload in packets
                if direction == "out" and len(payload) >= 28 and payload[18] == IKE_SA_INIT), None)
    own = [(direction, payload) for direction, payload in packets if spi is not None and payload[:8] == spi]
    return {
        "ike_messages": len(own),
        "ike_requests": sum(1 for direction, _ in own if direction == "out"),
        "ike_bytes": sum(len(payload) for _, payload in own),
        "ike_other_messages": len(packets) - len(own),
    }


def summarize_radius(packets: list[tuple[str, bytes]]) -> dict[str, int]:
    """RADIUS seen at an AR: requests are the packets it sends (to port 1812)."""
    return {
        "radius_messages": len(packets),
        "radius_requests": sum(1 for direction, _ in packets if direction == "out"),
        "radius_bytes": sum(len(payload) for _, payload in packets),
    }


class PacketCounter:
    """Counts IPv6/UDP packets to or from some ports in one namespace (all its interfaces, both
    directions) with an AF_PACKET socket and a kernel BPF filter. Nothing is read while an
    exchange runs: the queue is drained before (discarded) and after (counted)."""

    def __init__(self, target: int | str | None, ports: tuple[int, ...], header_extra: int = 0):
        self.ports = ports
        self._sock = netns.socket_in(target, socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        code = udp6_port_filter(ports)
        self._filter_buffer = ctypes.create_string_buffer(code)
        program = struct.pack("HL", len(code) // 8, ctypes.addressof(self._filter_buffer))
        self._sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, program)
        self._sock.setblocking(False)
        self.drain()  # whatever slipped in before the filter was attached

    def drain(self) -> list[tuple[str, bytes]]:
        """Everything queued since the last drain: (``"out"`` or ``"in"``, UDP payload)."""
        packets = []
        while True:
            try:
                data, address = self._sock.recvfrom(65535)
            except BlockingIOError:
                return packets
            if len(data) < ETH_HLEN + IPV6_HLEN + UDP_HLEN or data[12:14] != b"\x86\xdd" or data[20] != 17:
                continue
            sport, dport = struct.unpack("!HH", data[ETH_HLEN + IPV6_HLEN: ETH_HLEN + IPV6_HLEN + 4])
            payload = data[ETH_HLEN + IPV6_HLEN + UDP_HLEN:]
            if 4500 in (sport, dport):
                if payload[:4] != bytes(4):
                    continue  # UDP-encapsulated ESP, not IKE
                payload = payload[4:]  # the non-ESP marker
            packets.append(("out" if address[2] == PACKET_OUTGOING else "in", payload))

    def close(self) -> None:
        self._sock.close()


# -- one charon -------------------------------------------------------------------------------
class Charon:
    """strongSwan charon in one Mininet host, with its own /run, config and VICI socket."""

    def __init__(self, host, node: str, directory: Path, radius: tuple[str, str] | None):
        self.host, self.node, self.directory = host, node, directory
        self.radius = radius
        self.run_dir = directory / "run"
        self.socket_path = self.run_dir / "charon.vici"
        self.conf_path = directory / "strongswan.conf"
        self.log_path = directory / "charon.log"
        self.output_path = directory / "charon.out"
        self.swanctl_dir = directory / "swanctl"
        self.process: subprocess.Popen | None = None
        self.session: vici.Session | None = None
        if len(str(self.socket_path)) > SUN_PATH_MAX:
            raise IkeStartError(f"VICI socket path too long for AF_UNIX: {self.socket_path}")

    def write_config(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.swanctl_dir.mkdir(parents=True, exist_ok=True)
        self.conf_path.write_text(render_strongswan_conf(self.node, self.log_path, self.radius))
        for stale in (self.run_dir / "charon.pid", self.socket_path):
            if stale.exists():
                stale.unlink()

    def start(self, timeout: float = 30.0) -> None:
        self.write_config()
        environment = dict(os.environ, STRONGSWAN_CONF=str(self.conf_path),
                           SWANCTL_DIR=str(self.swanctl_dir))
        # A private mount namespace with the node's run directory on /run: charon's hard-coded
        # /var/run/charon.pid and its default VICI socket land there. `exec` keeps one PID.
        script = f"mount --bind {shellquote(self.run_dir)} /run && exec nice -n {AGENT_NICE} {CHARON}"
        with open(self.output_path, "wb") as output:
            self.process = self.host.popen(
                ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT, env=environment)
        self.session = self._connect(timeout)

    def _connect(self, timeout: float) -> vici.Session:
        deadline = time.monotonic() + timeout
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise IkeStartError(f"charon on {self.node} exited with {self.process.returncode}: "
                                    f"{_tail(self.output_path)} {_tail(self.log_path)}")
            if self.socket_path.exists():
                try:
                    session = open_session(self.socket_path)
                    session.version()
                    return session
                except (OSError, SessionException) as error:
                    last_error = error
            time.sleep(0.02)
        raise IkeStartError(f"charon on {self.node}: VICI socket not answering after {timeout} s "
                            f"({last_error}): {_tail(self.log_path)}")

    def new_session(self) -> vici.Session:
        return open_session(self.socket_path)

    def log_size(self) -> int:
        try:
            return self.log_path.stat().st_size
        except FileNotFoundError:
            return 0

    def log_since(self, offset: int) -> str:
        try:
            with open(self.log_path, "rb") as log:
                log.seek(offset)
                return log.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def sas(self) -> list[dict]:
        assert self.session is not None
        return list(self.session.list_sas())

    def terminate_all(self) -> None:
        """Terminate every IKE_SA of this charon at once, without waiting for the peer."""
        assert self.session is not None
        for entry in self.sas():
            for sa in entry.values():
                request(self.session, "terminate", {"ike-id": sa["uniqueid"], "force": "yes",
                                                    "timeout": "-1", "loglevel": "-1"})

    def stop(self, timeout: float = 10.0) -> None:
        if self.session is not None:
            try:
                self.session.transport.socket.close()
            except OSError:
                pass
            self.session = None
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        os.kill(process.pid, signal.SIGTERM)  # mnexec, unshare and sh exec() into charon: one PID
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout)


def shellquote(path: Path) -> str:
    import shlex
    return shlex.quote(str(path))


def _tail(path: Path, lines: int = 8) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return ""


def open_session(path: Path) -> vici.Session:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(5.0)
    try:
        sock.connect(str(path))
    except OSError:
        sock.close()
        raise
    # A hung charon must fail the run, not freeze it: no request (initiate included, whose own
    # timeout is 30 s) waits longer than this.
    sock.settimeout(VICI_REQUEST_TIMEOUT_S)
    return vici.Session(sock)


def request(session: vici.Session, command: str, message: dict | None = None) -> dict:
    """A plain VICI request (no event stream registered: nothing but the answer comes back)."""
    return session.request(command, message)


def _decode(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    if isinstance(value, dict):
        return {key: _decode(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_decode(item) for item in value]
    return value


class EventListener:
    """A VICI session registered for ``child-updown`` and ``ike-updown`` on its own thread; every
    event is queued with the CLOCK_MONOTONIC time (ns) of its arrival in this process."""

    EVENTS = ["child-updown", "ike-updown"]

    def __init__(self, charon: Charon):
        self.events: queue.Queue[tuple[int, str, dict]] = queue.Queue()
        self._session = charon.new_session()
        self._stopping = threading.Event()
        self._registered = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=f"vici-events-{charon.node}", daemon=True)
        self._thread.start()
        if not self._registered.wait(10.0):
            raise IkeStartError(f"VICI event registration on {charon.node} did not complete")

    def _run(self) -> None:
        try:
            stream = self._session.listen(self.EVENTS, timeout=0.2)
            first = True
            for event_type, message in stream:
                if first:  # listen() registered before yielding anything
                    self._registered.set()
                    first = False
                if event_type is not None:
                    self.events.put((time.monotonic_ns(), event_type.decode(), _decode(message)))
                if self._stopping.is_set():
                    stream.close()
                    break
        except BaseException as error:  # reported to whoever waits next
            if not self._stopping.is_set():
                self._error = error
            self._registered.set()

    def clear(self) -> None:
        while True:
            try:
                self.events.get_nowait()
            except queue.Empty:
                return

    def wait_for(self, event_type: str, predicate, timeout: float) -> tuple[int, dict]:
        deadline = time.monotonic() + timeout
        while True:
            if self._error is not None:
                raise IkeError(f"VICI event listener failed: {self._error}")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise IkeAttachError("?", f"no {event_type} event within {timeout} s")
            try:
                arrival, kind, message = self.events.get(timeout=min(remaining, 0.5))
            except queue.Empty:
                continue
            if kind == event_type and predicate(message):
                return arrival, message

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(2.0)
        try:
            self._session.transport.socket.close()
        except OSError:
            pass


# -- the baseline ------------------------------------------------------------------------------
class IkeBaseline:
    """IKEv2 (+ EAP through RADIUS) on the testbed: daemons, attach, and handover clean-up."""

    def __init__(self, testbed, workdir: Path, method: str = "eap-mschapv2",
                 password: str = "testbed-secret", aaa: bool = True, *,
                 radius_password: str | None = None, psk: str = "testbed-psk-0123456789",
                 radius_secret: str = "testbed-radius", initiate_timeout_ms: int = 30_000):
        self.testbed = testbed
        self.workdir = Path(workdir)
        self.params = BaselineParams(method=method, password=password, radius_password=radius_password,
                                     psk=psk, radius_secret=radius_secret, aaa=aaa,
                                     initiate_timeout_ms=initiate_timeout_ms)
        self.charons: dict[str, Charon] = {}
        self.radius: FreeRadius | None = None
        self.listener: EventListener | None = None
        self.ike_counter: PacketCounter | None = None
        self.radius_counters: dict[str, PacketCounter] = {}
        self.certificates: dict[str, pki_module.Credential] = {}
        self.attached_to: set[str] = set()

    # -- life cycle ---------------------------------------------------------------------------
    def start(self, warm_up: bool = True) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        try:
            self._warm_up_kernel_crypto()
            if self.params.eap:
                for ar in AR_NODES:
                    self.certificates[ar] = pki_module.make_server_credential(self.workdir / "pki", ar)
            if self.params.aaa:
                radius_config = RadiusConfig(
                    address=plan.AAA_ADDRESS, secret=self.params.radius_secret,
                    users={MN_IDENTITY: self.params.radius_password or self.params.password},
                    method=self.params.method if self.params.eap else "eap-mschapv2")
                self.radius = FreeRadius(self.testbed.host(plan.AAA), radius_config, self.workdir / plan.AAA)
                self.radius.start()
            for node in CHARON_NODES:
                radius = ((plan.AAA_ADDRESS, self.params.radius_secret)
                          if node in AR_NODES and self.params.aaa else None)
                charon = Charon(self.testbed.host(node), node, self.workdir / node, radius)
                self.charons[node] = charon
                charon.start()
            self._load()
            self.listener = EventListener(self.charons[plan.MN])
            self.ike_counter = PacketCounter(self.testbed.pid(plan.MN), (500, 4500))
            if self.params.aaa:
                for ar in AR_NODES:
                    self.radius_counters[ar] = PacketCounter(self.testbed.pid(ar), (1812,))
            if warm_up:
                ar = self.testbed.current_ar
                self.attach(ar)
                self.detach_old(ar)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        if self.listener is not None:
            self.listener.stop()
            self.listener = None
        for counter in [self.ike_counter, *self.radius_counters.values()]:
            if counter is not None:
                counter.close()
        self.ike_counter, self.radius_counters = None, {}
        for charon in self.charons.values():
            charon.stop()
        self.charons = {}
        if self.radius is not None:
            self.radius.stop()
            self.radius = None
        self.attached_to = set()

    def __enter__(self) -> "IkeBaseline":
        self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def _warm_up_kernel_crypto(self) -> None:
        """Add and delete one SA with the CHILD_SA's algorithms in the MN's namespace: the first
        SA of an algorithm in a fresh UML guest takes seconds (crypto templates)."""
        from ipsec.context import Algorithm, SecurityAssociation
        from ipsec.xfrm import Xfrm

        sa = SecurityAssociation(daddr="2001:db8:ff::2", saddr="2001:db8:ff::1", spi=0x7e57,
                                 algorithms=(Algorithm("crypt", "cbc(aes)", bytes(16)),
                                             Algorithm("auth_trunc", "hmac(sha256)", bytes(32), 128)))
        with Xfrm(netns=f"/proc/{self.testbed.pid(plan.MN)}/ns/net") as xfrm:
            xfrm.add_sa(sa)
            xfrm.delete_sa(sa.daddr, sa.spi)

    def _load(self) -> None:
        params = self.params
        for node, charon in self.charons.items():
            session = charon.session
            assert session is not None
            try:
                for secret in shared_secrets(node, params):
                    request(session, "load-shared", secret)
                if node == plan.MN:
                    for ar in AR_NODES:
                        cert = self.certificates[ar].cert_pem if params.eap else None
                        request(session, "load-conn", {mn_connection_name(ar): mn_connection(ar, params, cert)})
                else:
                    cert = None
                    if params.eap:
                        credential = self.certificates[node]
                        request(session, "load-key", {"type": "any", "data": credential.key_pem})
                        cert = credential.cert_pem
                    request(session, "load-conn", {AR_CONNECTION: ar_connection(node, params, cert)})
            except CommandException as error:
                raise IkeStartError(f"loading the configuration into charon on {node} failed: {error}") from error

    # -- measurements -------------------------------------------------------------------------
    def attach(self, ar: str) -> dict:
        """Authenticate from scratch at ``ar`` and install the CHILD_SA (MN CoA <-> HA through ``ar``).

        Returns ``initiate_sent_ns``, ``child_installed_ns`` (arrival of the MN's child-updown
        event), ``initiate_returned_ns``, ``elapsed_ms`` and the packet counts of the attempt.
        Raises :class:`IkeAuthenticationError` when credentials are refused, :class:`IkeAttachError`
        otherwise; no SA is left behind on the MN or the AR after a failure.
        """
        if ar not in AR_NODES:
            raise ValueError(f"unknown AR {ar!r}")
        mn = self.charons[plan.MN]
        assert mn.session is not None and self.listener is not None and self.ike_counter is not None
        name = mn_connection_name(ar)
        self.listener.clear()
        self.ike_counter.drain()
        radius_counter = self.radius_counters.get(ar)
        if radius_counter is not None:
            radius_counter.drain()
        log_offset = mn.log_size()
        message = {"child": name, "ike": name, "timeout": str(self.params.initiate_timeout_ms),
                   "init-limits": "no", "loglevel": "-1"}
        initiate_sent_ns = time.monotonic_ns()
        try:
            request(mn.session, "initiate", message)
        except CommandException as error:
            failed_ns = time.monotonic_ns()
            log = mn.log_since(log_offset)
            kind, reason = classify_failure(log)
            self._clean_after_failure(ar)
            exception = kind(ar, f"{reason} ({error}; after {(failed_ns - initiate_sent_ns) / 1e6:.1f} ms)", log)
            raise exception from error
        initiate_returned_ns = time.monotonic_ns()
        child_installed_ns, _ = self.listener.wait_for(
            "child-updown", lambda m: m.get("up") == "yes" and name in m, timeout=10.0)
        self.attached_to.add(ar)
        result = {
            "ar": ar,
            "method": self.params.method,
            "initiate_sent_ns": initiate_sent_ns,
            "child_installed_ns": child_installed_ns,
            "initiate_returned_ns": initiate_returned_ns,
            "elapsed_ms": (child_installed_ns - initiate_sent_ns) / 1e6,
            **summarize_ike(self.ike_counter.drain()),
        }
        if radius_counter is not None:
            result.update(summarize_radius(radius_counter.drain()))
        return result

    def set_mn_password(self, password: str) -> None:
        """Replace the EAP password the MN presents (RADIUS keeps its own): for refusal tests."""
        if not self.params.eap:
            raise IkeError("the MN has no EAP password in the psk baseline")
        session = self.charons[plan.MN].session
        assert session is not None
        request(session, "load-shared", {"id": "eap-mn", "type": "EAP", "data": password,
                                         "owners": [MN_IDENTITY]})

    def _clean_after_failure(self, ar: str) -> None:
        for node in (plan.MN, ar):
            try:
                self.charons[node].terminate_all()
            except (CommandException, SessionException, OSError):
                pass

    def detach_old(self, ar: str) -> None:
        """Remove the IKE and CHILD SAs between the MN and ``ar`` on both sides, at once (force:
        no waiting for the DELETE exchange, the MN may no longer reach ``ar``)."""
        name = mn_connection_name(ar)
        for node, ike in ((ar, AR_CONNECTION), (plan.MN, name)):
            session = self.charons[node].session
            assert session is not None
            for entry in list(session.list_sas({"ike": ike})):
                for sa in entry.values():
                    try:
                        request(session, "terminate", {"ike-id": sa["uniqueid"], "force": "yes",
                                                       "timeout": "-1", "loglevel": "-1"})
                    except CommandException as error:
                        # The peer's DELETE (sent by the terminate on the other side) may win.
                        if "no matching SAs" not in str(error):
                            raise IkeError(f"terminating the IKE_SA {ike} on {node} failed: {error}") from error
        self.wait_no_sas(ar)
        self.attached_to.discard(ar)

    def wait_no_sas(self, ar: str, timeout: float = 5.0) -> None:
        """Wait until neither the MN's nor ``ar``'s charon lists an IKE_SA between them and neither
        kernel holds an XFRM state or policy for the MN's CoA at ``ar`` (charon removes an IKE_SA
        from its list before it deletes the kernel state)."""
        name = mn_connection_name(ar)
        deadline = time.monotonic() + timeout
        while True:
            left = [node for node, ike in ((ar, AR_CONNECTION), (plan.MN, name))
                    if list(self.charons[node].session.list_sas({"ike": ike}))]
            left += [f"{node} kernel" for node in (ar, plan.MN) if self._kernel_holds(node, ar)]
            if not left:
                return
            if time.monotonic() > deadline:
                raise IkeError(f"SAs between the MN and {ar} still present on {left} after {timeout} s")
            time.sleep(0.02)

    def _kernel_holds(self, node: str, ar: str) -> bool:
        """Whether ``node``'s kernel has an XFRM state or policy for the MN's CoA at ``ar``."""
        from ipsec.xfrm import Xfrm

        coa = plan.MN_COA[ar]
        with Xfrm(netns=f"/proc/{self.testbed.pid(node)}/ns/net") as xfrm:
            if any(coa in (state.saddr, state.daddr) for state in xfrm.dump_sas()):
                return True
            return any(policy.dir < 3 and coa in (policy.selector.saddr, policy.selector.daddr)
                       for policy in xfrm.dump_policies())

    # -- inspection (tests, reports) ----------------------------------------------------------
    def list_sas(self, node: str) -> list[dict]:
        return [_decode(entry) for entry in self.charons[node].sas()]

