"""strongSwan's charon as a testbed daemon, and the pieces of the IKE baseline that know no topology:
its configuration, VICI plumbing, its event listener, and counting IKE and RADIUS on the wire.
The baseline itself (which node runs what, the attach, the clean-up) is runner code:
:mod:`scenarios.runner.baseline`.

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
- under MOBIKE (``mobike``) instead: charon on ``mn`` and ``ha`` only, one IKE_SA between them for
  the whole run, moved to each new care-of address (:class:`scenarios.runner.baseline.MobikeBaseline`;
  :func:`mobike_steps` reads the steps of a move from the MN's log).

Both are :class:`nodes.daemon.Daemon`: configuration rendered from data (``dry_run`` shows it),
readiness checked (VICI answers; FreeRADIUS logs that it is ready), stopped by PID.

The MN authenticates with EAP (MSCHAPv2 by default, or MD5), which the AR relays to RADIUS with
the ``eap-radius`` plugin; the AR authenticates with a self-signed ECDSA certificate made at
set-up with ``pki`` (:mod:`nodes.pki`) and pinned on the MN. ``psk`` is the cheaper baseline: a
pre-shared key on both sides, no AAA. The CHILD_SA is the paper's tunnel: inner MN CoA <-> HA
(2001:db8:3::1/128), outer MN CoA <-> AR access address, tunnel mode, both directions; charon
installs the AR's ``fwd`` policy, so the AR forwards decapsulated traffic to the HA.

A handover is a fresh ``initiate`` at the new AR (never a re-authentication ``rekey`` of the old
IKE_SA, which races in 5.9.8), then :meth:`IkeBaseline.detach_old` removes the old IKE/CHILD SAs
on the MN and on the previous AR (:meth:`scenarios.runner.baseline.IkeBaseline.detach_old`).

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
import ipaddress
import os
import queue
import re
import shutil
import socket
import struct
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import vici
from vici.exception import SessionException

from nodes import netns
from nodes.agent import AGENT_NICE
from nodes.daemon import Daemon, DaemonError

CHARON = "/usr/lib/ipsec/charon"
#: ``eap-tls-resumed`` is EAP-TLS against a RADIUS server that caches TLS sessions for resumption
#: ``mobike``: not a re-authentication: one IKE_SA with a fixed security gateway (the HA), kept across
#: every move with MOBIKE (RFC 4555), authenticated once with a pre-shared key
#: ``preauth-*``: pre-authentication (make-before-break): the IKE_SA and CHILD_SA with the nAR are set
#: up before the move, through the pAR, with EAP-MSCHAPv2 or a pre-shared key
#: (:class:`scenarios.runner.baseline.PreauthBaseline`)
PREAUTH_PREFIX = "preauth-"
PREAUTH_METHODS = (f"{PREAUTH_PREFIX}eap-mschapv2", f"{PREAUTH_PREFIX}psk")
METHODS = ("eap-mschapv2", "eap-md5", "eap-tls", "eap-tls-resumed", "psk", "mobike", *PREAUTH_METHODS)
#: what a baseline of several MNs (a storm's) runs: re-authentication with a pre-shared key or EAP
#: through RADIUS (EAP-TLS would need a client certificate per MN; MOBIKE and pre-authentication
#: keep one MN's state)
MULTI_MN_METHODS = ("psk", "eap-mschapv2", "eap-md5")
IKE_PROPOSAL = "aes128-sha256-x25519"
ESP_PROPOSAL = "aes128-sha256"   # kernel: cbc(aes) + hmac(sha256) truncated to 128 bits
# The plugins charon loads, explicitly (no load_modular, nothing from /etc/strongswan.d).
CHARON_PLUGINS = ("nonce openssl kdf pem pkcs1 pkcs8 x509 pubkey revocation constraints hmac gcm "
                  "kernel-netlink socket-default vici eap-identity eap-md5 eap-mschapv2 eap-radius")
#: added on the MN for EAP-TLS (the ARs only relay EAP to RADIUS)
CHARON_TLS_PLUGINS = "eap-tls"
TLS_VERSION = "1.2"  # the TLS version of EAP-TLS, on both ends (session-ID resumption is TLS 1.2's)
SUN_PATH_MAX = 107
VICI_REQUEST_TIMEOUT_S = 60.0


class IkeError(RuntimeError):
    """The IKE baseline failed (configuration, daemons, or an exchange)."""


class IkeStartError(IkeError, DaemonError):
    """A daemon (charon or FreeRADIUS) could not be configured or started."""


class IkeAttachError(IkeError):
    """``initiate`` failed for a reason other than authentication (timeout, no proposal, ...)."""

    def __init__(self, ar: str, reason: str, log: str = ""):
        super().__init__(f"IKE attach to {ar} failed: {reason}")
        self.ar, self.reason, self.log = ar, reason, log


class IkeAuthenticationError(IkeAttachError):
    """The peer refused our credentials (EAP failure from RADIUS, AUTHENTICATION_FAILED)."""


class IkeResumptionError(IkeError):
    """An EAP-TLS authentication that should have resumed a cached TLS session ran the full
    handshake; ``result`` holds the attach's figures (RADIUS round trips, what each side sent)."""

    def __init__(self, result: dict[str, Any]):
        offered = result.get("tls_client_session_id_octets", 0)
        if not offered and not result.get("tls_client_offers_ticket"):
            why = "the MN's ClientHello offered no session to resume (no session ID, no ticket)"
        elif not result.get("tls_resumed"):
            why = "the server did not accept the session the MN offered"
        else:
            why = "the abbreviated handshake took no fewer RADIUS round trips than the full one"
        super().__init__(
            f"EAP-TLS session not resumed at {result.get('ar')}: {result.get('radius_requests')} RADIUS round "
            f"trips (the first, full handshake: {result.get('tls_first_radius_requests')}), the server sent "
            f"{'/'.join(result.get('tls_server_handshake', [])) or 'nothing in clear'}; {why}")
        self.result = result


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
        if self.eap and not self.aaa:
            raise ValueError(f"method {self.method} needs the AAA server (aaa=True)")

    @property
    def preauth(self) -> bool:
        """The IKE_SA and CHILD_SA with the nAR are set up before the move (pre-authentication)."""
        return self.method.startswith(PREAUTH_PREFIX)

    @property
    def auth(self) -> str:
        """How the MN authenticates: the method without the pre-authentication prefix."""
        return self.method.removeprefix(PREAUTH_PREFIX)

    @property
    def eap(self) -> bool:
        return self.auth.startswith("eap-")

    @property
    def mobike(self) -> bool:
        """One IKE_SA with the HA for the whole run, its addresses updated at each move."""
        return self.method == "mobike"

    @property
    def eap_method(self) -> str:
        """strongSwan's (and RADIUS's) name of the EAP method: both EAP-TLS variants are ``eap-tls``."""
        return "eap-tls" if self.tls else self.auth

    @property
    def tls(self) -> bool:
        return self.method.startswith("eap-tls")

    @property
    def tls_resumption(self) -> bool:
        """The RADIUS server caches TLS sessions, and every attach after the first completed EAP-TLS
        authentication must resume one."""
        return self.method == "eap-tls-resumed"


def needs_aaa(method: str) -> bool:
    """Whether the method authenticates the MN through the AAA server (EAP relayed to RADIUS)."""
    return method.removeprefix(PREAUTH_PREFIX).startswith("eap-")


def render_strongswan_conf(node: str, log_path: Path, radius: tuple[str, str] | None, tls: bool = False,
                           interfaces: tuple[str, ...] | None = None) -> str:
    """strongswan.conf for one node's charon; ``radius`` = (server address, secret) on an AR;
    ``tls``: the node is an EAP-TLS peer (the eap-tls plugin, libtls pinned to TLS 1.2);
    ``interfaces``: the only interfaces whose addresses charon uses and watches (``interfaces_use``:
    under MOBIKE, the MN's access interfaces, so that neither its loopback's home address nor a
    tunnel's appearance is taken for a new path; the HA's loopback, so that it offers its one
    address and no other)."""
    plugins = f"{CHARON_PLUGINS} {CHARON_TLS_PLUGINS}" if tls else CHARON_PLUGINS
    lines = [
        f"# Generated by nodes/ike.py for node {node}: do not edit.",
        "charon {",
        f"\tload = {plugins}",
        "\t# The MN's default route already points at its AR: no routing table 220.",
        "\tinstall_routes = no",
        "\tinstall_virtual_ip = no",
    ]
    if interfaces:
        lines += [f"\tinterfaces_use = {', '.join(interfaces)}"]
    lines += [
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
    lines += ["\t}", "}"]
    if tls:
        lines += [
            "libtls {",
            f"\tversion_min = {TLS_VERSION}",
            f"\tversion_max = {TLS_VERSION}",
            "}",
        ]
    lines += [""]
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
AR_CONNECTION = "access"         # the connection name on each AR


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


# -- MOBIKE's steps, from charon's log ------------------------------------------------------------
_LOG_TIME = re.compile(r"^(\d\d):(\d\d):(\d\d)\.(\d\d\d) ")


def _log_seconds(line: str) -> float | None:
    """The time of day (s) of one line of charon's file log (``time_format = %H:%M:%S``, ms added)."""
    match = _LOG_TIME.match(line)
    if match is None:
        return None
    hours, minutes, seconds, millis = (int(group) for group in match.groups())
    return hours * 3600 + minutes * 60 + seconds + millis / 1000


def mobike_steps(log: str, care_of: str) -> dict[str, float]:
    """When the initiator's charon took each step of one MOBIKE move to ``care_of``, as times of day
    (s) from its log (ms resolution): ``detach_seen`` (an interface deactivated), ``address_seen``
    (``care_of`` appeared on an interface), ``roam`` (its roam job found the old path gone and a
    route from the new address: the kernel events' trigger, fired ROAM_DELAY = 100 ms after the
    first of them), ``roam_deferred`` (an earlier roam job found no route at all: it fired while
    the MN was detached, and the next event scheduled another), ``path_checked``
    (the peer answered the empty INFORMATIONAL that probes the new path), ``update_sent`` (the
    INFORMATIONAL request with UPDATE_SA_ADDRESSES) and ``update_answered`` (its response). A step
    not in the log is absent."""
    steps: dict[str, float] = {}
    update_id = None
    probe_ids: list[str] = []
    for line in log.splitlines():
        at = _log_seconds(line)
        if at is None:
            continue
        if "[KNL] interface" in line and line.endswith("deactivated"):
            steps.setdefault("detach_seen", at)
        elif f"[KNL] {care_of} appeared on" in line:
            steps.setdefault("address_seen", at)
        elif "MOBIKE update deferred" in line:
            steps.setdefault("roam_deferred", at)
        elif "requesting address change using MOBIKE" in line:
            steps.setdefault("roam", at)
        elif (match := re.search(r"generating INFORMATIONAL request (\d+) \[ (.*)\]", line)) is not None:
            if "N(UPD_SA_ADDR)" in match.group(2):
                if "update_sent" not in steps:
                    steps["update_sent"], update_id = at, match.group(1)
            elif "roam" in steps and not match.group(2).strip():
                probe_ids.append(match.group(1))
        elif (match := re.search(r"parsed INFORMATIONAL response (\d+) ", line)) is not None:
            if match.group(1) == update_id:
                steps.setdefault("update_answered", at)
            elif match.group(1) in probe_ids:
                steps.setdefault("path_checked", at)
    return steps


def log_seconds_to_monotonic_ns(seconds: float) -> int:
    """A time of day of this host's local clock (a charon log line's) on CLOCK_MONOTONIC (ns)."""
    now_wall, now_monotonic = time.time(), time.monotonic_ns()
    local = time.localtime(now_wall)
    of_day = local.tm_hour * 3600 + local.tm_min * 60 + local.tm_sec + now_wall % 1
    if seconds > of_day + 60:   # logged before midnight, read after it
        seconds -= 86400
    return now_monotonic - int((of_day - seconds) * 1e9)


# -- packet counting --------------------------------------------------------------------------
ETH_P_ALL = 0x0003
SO_ATTACH_FILTER = 26
PACKET_OUTGOING = 4
ETH_HLEN, IPV6_HLEN, UDP_HLEN = 14, 40, 8


def udp6_port_filter(ports: tuple[int, ...]) -> bytes:
    """A classic BPF program, compiled by libpcap from a filter expression (through scapy): IPv6/UDP
    packets whose source or destination port is one of ``ports``; the kernel drops the rest."""
    from scapy.arch.common import compile_filter
    from scapy.data import DLT_EN10MB

    expression = "ip6 and udp and (" + " or ".join(f"port {port}" for port in ports) + ")"
    program = compile_filter(expression, linktype=DLT_EN10MB)
    return b"".join(struct.pack("HBBI", program.bf_insns[i].code, program.bf_insns[i].jt,
                                program.bf_insns[i].jf, program.bf_insns[i].k) for i in range(program.bf_len))


IKE_SA_INIT = 34  # RFC 7296 §3.1 exchange type


def summarize_ike(packets: list[tuple[str, bytes]]) -> dict[str, int]:
    """Count the IKE messages of the IKE_SA the MN initiated in ``packets`` (the first outgoing
    IKE_SA_INIT request names it by its initiator SPI): stray messages of older SAs, such as a
    late DELETE, are left out. Bytes are IKE message bytes (the UDP payload). The headers are read
    by scapy's IKEv2 layer, after the measured interval."""
    from scapy.contrib.ikev2 import IKEv2

    headers = [(direction, payload, IKEv2(payload) if len(payload) >= 28 else None) for direction, payload in packets]
    spi = next((header.init_SPI for direction, _, header in headers
                if header is not None and direction == "out" and header.exch_type == IKE_SA_INIT), None)
    own = [(direction, payload) for direction, payload, header in headers
           if spi is not None and header is not None and header.init_SPI == spi]
    return {
        "ike_messages": len(own),
        "ike_requests": sum(1 for direction, _ in own if direction == "out"),
        "ike_bytes": sum(len(payload) for _, payload in own),
        "ike_other_messages": len(packets) - len(own),
    }


def summarize_ike_sa(packets: list[tuple[str, bytes]], initiator_spi: int) -> dict[str, int]:
    """Count the IKE messages of one existing IKE_SA (named by its initiator SPI) in ``packets``: a
    MOBIKE address update runs in an IKE_SA made earlier, so no IKE_SA_INIT names it here."""
    from scapy.contrib.ikev2 import IKEv2

    own = [(direction, payload) for direction, payload in packets
           if len(payload) >= 28 and IKEv2(payload).init_SPI == initiator_spi.to_bytes(8, "big")]
    return {
        "ike_messages": len(own),
        "ike_requests": sum(1 for direction, _ in own if direction == "out"),
        "ike_bytes": sum(len(payload) for _, payload in own),
        "ike_other_messages": len(packets) - len(own),
    }


IKE_EXCHANGE_NAMES = {34: "IKE_SA_INIT", 35: "IKE_AUTH", 36: "CREATE_CHILD_SA", 37: "INFORMATIONAL"}


def ike_exchanges(packets: list[tuple[str, bytes]]) -> dict[str, int]:
    """How many IKE messages of each exchange type ``packets`` hold, whatever their IKE_SA (by
    name: ``IKE_SA_INIT``, ``IKE_AUTH``, ``CREATE_CHILD_SA``, ``INFORMATIONAL``; others by number)."""
    from scapy.contrib.ikev2 import IKEv2

    counts: dict[str, int] = {}
    for _, payload in packets:
        if len(payload) < 28:
            continue
        kind = int(IKEv2(payload).exch_type)
        name = IKE_EXCHANGE_NAMES.get(kind, str(kind))
        counts[name] = counts.get(name, 0) + 1
    return counts


def summarize_radius(packets: list[tuple[str, bytes]]) -> dict[str, int]:
    """RADIUS seen at an AR: requests are the packets it sends (to port 1812)."""
    return {
        "radius_messages": len(packets),
        "radius_requests": sum(1 for direction, _ in packets if direction == "out"),
        "radius_bytes": sum(len(payload) for _, payload in packets),
    }


# -- EAP-TLS inside RADIUS, read after the measured interval ---------------------------------------
RADIUS_EAP_MESSAGE = 79    # RFC 3579 attribute
EAP_TYPE_TLS = 13
EAP_TLS_LENGTH_INCLUDED, EAP_TLS_START = 0x80, 0x20
TLS_HANDSHAKE, TLS_CHANGE_CIPHER_SPEC = 22, 20
TLS_HANDSHAKE_NAMES = {1: "ClientHello", 2: "ServerHello", 4: "NewSessionTicket", 11: "Certificate",
                       12: "ServerKeyExchange", 13: "CertificateRequest", 14: "ServerHelloDone",
                       15: "CertificateVerify", 16: "ClientKeyExchange"}
TLS_EXT_SESSION_TICKET, TLS_EXT_PRE_SHARED_KEY = 35, 41


def _radius_eap(payload: bytes) -> bytes:
    """The EAP packet a RADIUS message carries (its EAP-Message attributes, concatenated)."""
    eap, offset, end = b"", 20, min(len(payload), int.from_bytes(payload[2:4], "big") if len(payload) >= 4 else 0)
    while offset + 2 <= end:
        kind, length = payload[offset], payload[offset + 1]
        if length < 2:
            break
        if kind == RADIUS_EAP_MESSAGE:
            eap += payload[offset + 2: offset + length]
        offset += length
    return eap


def _eap_tls_data(eap: bytes) -> bytes:
    """The TLS bytes of one EAP-TLS request or response (b"" for anything else)."""
    if len(eap) < 6 or eap[0] not in (1, 2) or eap[4] != EAP_TYPE_TLS:
        return b""
    length = int.from_bytes(eap[2:4], "big")
    start = 10 if eap[5] & EAP_TLS_LENGTH_INCLUDED else 6
    return eap[start:length]


def _tls_handshake(stream: bytes) -> tuple[list[tuple[int, bytes]], bool]:
    """The cleartext handshake messages (type, body) of one direction's TLS records, up to its
    ChangeCipherSpec (what follows is encrypted), and whether a ChangeCipherSpec came."""
    handshake, offset, changed = b"", 0, False
    while offset + 5 <= len(stream) and not changed:
        kind, length = stream[offset], int.from_bytes(stream[offset + 3: offset + 5], "big")
        if kind == TLS_HANDSHAKE:
            handshake += stream[offset + 5: offset + 5 + length]
        changed = kind == TLS_CHANGE_CIPHER_SPEC
        offset += 5 + length
    messages, offset = [], 0
    while offset + 4 <= len(handshake):
        kind, length = handshake[offset], int.from_bytes(handshake[offset + 1: offset + 4], "big")
        messages.append((kind, handshake[offset + 4: offset + 4 + length]))
        offset += 4 + length
    return messages, changed


def _hello_session_id(body: bytes) -> bytes:
    """A ClientHello's or ServerHello's session ID (after the version and the 32-octet random)."""
    return body[35: 35 + body[34]] if len(body) > 34 else b""


def _client_hello_extensions(body: bytes) -> list[int]:
    offset = 35 + body[34] if len(body) > 34 else len(body)
    if offset + 2 > len(body):
        return []
    offset += 2 + int.from_bytes(body[offset: offset + 2], "big")   # cipher suites
    if offset + 1 > len(body):
        return []
    offset += 1 + body[offset]                                       # compression methods
    if offset + 2 > len(body):
        return []
    end, offset, types = offset + 2 + int.from_bytes(body[offset: offset + 2], "big"), offset + 2, []
    while offset + 4 <= min(end, len(body)):
        types.append(int.from_bytes(body[offset: offset + 2], "big"))
        offset += 4 + int.from_bytes(body[offset + 2: offset + 4], "big")
    return types


def summarize_eap_tls(packets: list[tuple[str, bytes]]) -> dict[str, Any]:
    """What the EAP-TLS handshake relayed in RADIUS packets (seen at the AR: ``out`` are its
    Access-Requests, carrying the MN's EAP responses; ``in`` the server's answers) says of itself:
    whether the MN's ClientHello offered a session (its session ID, a SessionTicket or a
    pre_shared_key extension), the handshake messages each side sent in clear, and whether the
    handshake was abbreviated: the server answered with the session ID the client offered and
    went straight to its ChangeCipherSpec, without a Certificate. {} when no EAP-TLS was seen."""
    streams = {"out": b"", "in": b""}
    for direction, payload in packets:
        streams[direction] += _eap_tls_data(_radius_eap(payload))
    if not streams["out"] and not streams["in"]:
        return {}
    client, _ = _tls_handshake(streams["out"])
    server, server_changed = _tls_handshake(streams["in"])
    client_hello = next((body for kind, body in client if kind == 1), b"")
    server_hello = next((body for kind, body in server if kind == 2), b"")
    offered, chosen = _hello_session_id(client_hello), _hello_session_id(server_hello)
    extensions = _client_hello_extensions(client_hello)
    server_names = [TLS_HANDSHAKE_NAMES.get(kind, str(kind)) for kind, _ in server]
    return {
        "tls_client_session_id_octets": len(offered),
        "tls_client_offers_ticket": TLS_EXT_SESSION_TICKET in extensions or TLS_EXT_PRE_SHARED_KEY in extensions,
        "tls_server_session_id_octets": len(chosen),
        "tls_client_handshake": [TLS_HANDSHAKE_NAMES.get(kind, str(kind)) for kind, _ in client],
        "tls_server_handshake": server_names,
        "tls_resumed": bool(offered) and offered == chosen and server_changed and "Certificate" not in server_names,
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
        packets: list[tuple[str, bytes]] = []
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


# -- timed captures (the storms' AAA queue, the re-authentication benchmark) ---------------------
SO_TIMESTAMPNS, SO_RCVBUFFORCE = 35, 33
SOL_PACKET, PACKET_STATISTICS = 263, 6
#: a timed capture's kernel buffer: a storm's packets wait there until it is drained
TAP_BUFFER = 8 << 20
RADIUS_PORT = 1812
# RADIUS (RFC 2865) codes and attributes
ACCESS_REQUEST, ACCESS_ACCEPT, ACCESS_REJECT, ACCESS_CHALLENGE = 1, 2, 3, 11
CALLING_STATION_ID = 31


@dataclasses.dataclass(frozen=True)
class Packet:
    t_ns: int          # CLOCK_REALTIME, the kernel's timestamp
    out: bool          # sent by this namespace
    src: str
    dst: str
    sport: int
    dport: int
    payload: bytes     # the UDP payload (IKE without the non-ESP marker)


class Tap:
    """IPv6/UDP packets to or from ``ports`` in one namespace, all interfaces, with the kernel's
    receive timestamps; nothing is read while a round runs (the queue holds them)."""

    def __init__(self, target: int | str, ports: tuple[int, ...]) -> None:
        self.sock = netns.socket_in(target, socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, TAP_BUFFER)
        except OSError:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, TAP_BUFFER)
        code = udp6_port_filter(ports)
        self._filter = ctypes.create_string_buffer(code)
        program = struct.pack("HL", len(code) // 8, ctypes.addressof(self._filter))
        self.sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, program)
        self.sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        self.sock.setblocking(False)
        self.drain()
        self.drops()

    def drain(self) -> list[Packet]:
        packets: list[Packet] = []
        while True:
            try:
                data, ancillary, _, address = self.sock.recvmsg(65535, socket.CMSG_SPACE(16))
            except BlockingIOError:
                return packets
            if len(data) < ETH_HLEN + IPV6_HLEN + UDP_HLEN or data[12:14] != b"\x86\xdd" or data[20] != 17:
                continue
            t_ns = 0
            for level, kind, value in ancillary:
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(value) >= 16:
                    seconds, nanoseconds = struct.unpack("qq", value[:16])
                    t_ns = seconds * 1_000_000_000 + nanoseconds
            udp = ETH_HLEN + IPV6_HLEN
            sport, dport = struct.unpack("!HH", data[udp:udp + 4])
            payload = data[udp + UDP_HLEN:]
            if 4500 in (sport, dport):
                if payload[:4] != bytes(4):
                    continue  # UDP-encapsulated ESP
                payload = payload[4:]
            packets.append(Packet(t_ns or time.time_ns(), address[2] == PACKET_OUTGOING,
                                  socket.inet_ntop(socket.AF_INET6, data[22:38]),
                                  socket.inet_ntop(socket.AF_INET6, data[38:54]), sport, dport, payload))

    def drops(self) -> int:
        """Packets the kernel dropped for this socket since the last call (the counters reset)."""
        _, dropped = struct.unpack("II", self.sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8))
        return int(dropped)

    def close(self) -> None:
        self.sock.close()


def radius_attribute(payload: bytes, kind: int) -> bytes | None:
    offset, end = 20, min(len(payload), int.from_bytes(payload[2:4], "big") if len(payload) >= 4 else 0)
    while offset + 2 <= end:
        code, length = payload[offset], payload[offset + 1]
        if length < 2:
            break
        if code == kind:
            return payload[offset + 2:offset + length]
        offset += length
    return None


def station_address(payload: bytes) -> str | None:
    """The MN's address in an Access-Request's Calling-Station-Id (strongSwan writes ``addr[port]``)."""
    value = radius_attribute(payload, CALLING_STATION_ID)
    if value is None:
        return None
    text = value.decode(errors="replace").split("[", 1)[0]
    try:
        return str(ipaddress.IPv6Address(text))
    except ValueError:
        return None


def radius_at_aaa(packets: list[Packet], slots: dict[str, str], aaa_delay_ns: int) -> list[dict[str, Any]]:
    """FreeRADIUS's side: each Access-Request's arrival and its answer's departure, less the AAA
    link's delay (the answer is timestamped after the AAA's egress netem)."""
    requests: dict[tuple[str, int, int], dict[str, Any]] = {}
    done: list[dict[str, Any]] = []
    for packet in sorted(packets, key=lambda p: p.t_ns):
        if RADIUS_PORT not in (packet.sport, packet.dport) or len(packet.payload) < 20:
            continue
        code, identifier = packet.payload[0], packet.payload[1]
        if not packet.out and packet.dport == RADIUS_PORT and code == ACCESS_REQUEST:
            key = (packet.src, packet.sport, identifier)
            if key not in requests:
                address = station_address(packet.payload)
                requests[key] = {"slot": slots.get(address or ""), "arrived_ns": packet.t_ns}
        elif packet.out and packet.sport == RADIUS_PORT:
            pending = requests.pop((packet.dst, packet.dport, identifier), None)
            if pending is not None:
                done.append({**pending, "answered_ns": packet.t_ns - aaa_delay_ns, "code": code})
    return done


# -- one charon -------------------------------------------------------------------------------
class Charon(Daemon):
    """strongSwan charon in one Mininet host, with its own /run, config and VICI socket."""

    name = "charon"

    def __init__(self, host, node: str, directory: Path, radius: tuple[str, str] | None, tls: bool = False,
                 interfaces: tuple[str, ...] | None = None):
        super().__init__(host, directory)
        self.node, self.radius, self.tls, self.interfaces = node, radius, tls, interfaces
        self.run_dir = self.directory / "run"
        self.socket_path = self.run_dir / "charon.vici"
        self.conf_path = self.directory / "strongswan.conf"
        self.log_path = self.directory / "charon.log"
        self.swanctl_dir = self.directory / "swanctl"
        self.session: vici.Session | None = None
        #: a short directory of its own for /run when the run directory's is too deep for the VICI
        #: socket's path (an AF_UNIX path has at most 107 octets); removed at the stop
        self._short_run_dir: Path | None = None

    def config_files(self) -> dict[Path, str]:
        return {self.conf_path: render_strongswan_conf(self.node, self.log_path, self.radius, self.tls,
                                                       self.interfaces)}

    def prepare(self) -> None:
        if len(str(self.socket_path)) > SUN_PATH_MAX:
            self._short_run_dir = self.run_dir = Path(tempfile.mkdtemp(prefix=f"charon-{self.node}-"))
            self.socket_path = self.run_dir / "charon.vici"
            if len(str(self.socket_path)) > SUN_PATH_MAX:
                raise IkeStartError(f"VICI socket path too long for AF_UNIX: {self.socket_path}")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.swanctl_dir.mkdir(parents=True, exist_ok=True)
        for stale in (self.run_dir / "charon.pid", self.socket_path):
            if stale.exists():
                stale.unlink()

    def command(self) -> list[str]:
        # A private mount namespace with the node's run directory on /run: charon's hard-coded
        # /var/run/charon.pid and its default VICI socket land there. `exec` keeps one PID.
        script = f"mount --bind {shellquote(self.run_dir)} /run && exec nice -n {AGENT_NICE} {CHARON}"
        return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script]

    def environment(self) -> dict[str, str]:
        return dict(os.environ, STRONGSWAN_CONF=str(self.conf_path), SWANCTL_DIR=str(self.swanctl_dir))

    def ready(self) -> bool:
        """VICI answers a version request."""
        if not self.socket_path.exists():
            return False
        try:
            session = open_session(self.socket_path)
            session.version()
        except (OSError, SessionException):
            return False
        self.session = session
        return True

    def start(self, timeout: float = 30.0) -> None:
        try:
            super().start(timeout)
        except DaemonError as error:
            raise IkeStartError(f"charon on {self.node}: {error} {self.tail(path=self.log_path)}") from None

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
        super().stop(timeout)
        if self._short_run_dir is not None:
            shutil.rmtree(self._short_run_dir, ignore_errors=True)
            self._short_run_dir = None


def shellquote(path: Path) -> str:
    import shlex
    return shlex.quote(str(path))


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
    """A VICI session registered for ``child-updown`` and ``ike-updown`` (or ``events``) on its own
    thread; every event is queued with the CLOCK_MONOTONIC time (ns) of its arrival in this process."""

    EVENTS = ["child-updown", "ike-updown"]

    def __init__(self, charon: Charon, events: list[str] | None = None):
        self.EVENTS = list(events or self.EVENTS)
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
