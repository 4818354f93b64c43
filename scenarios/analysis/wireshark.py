"""Packet evidence a researcher opens in Wireshark: a profile that decrypts the testbed's ESP and
dissects its CXTP messages.

:func:`write_profile` makes a Wireshark configuration directory (what ``WIRESHARK_CONFIG_DIR``
points at) holding one profile, ``cxtp``:

=====================================  ===========================================================
``<dir>/profiles/cxtp/esp_sa``         the ESP SA table (UAT), one line per SA, with keys
``<dir>/profiles/cxtp/preferences``    ``esp.enable_encryption_decode`` and
                                       ``esp.enable_authentication_check`` switched on
``<dir>/plugins/cxtp.lua``             a copy of ``wireshark/cxtp.lua``, the CXTP dissector
``<dir>/init.lua``                     loads that copy (Wireshark 4.0 runs the ``init.lua`` of its
                                       personal configuration directory at start-up)
=====================================  ===========================================================

Open a capture with it (``-C`` takes a profile *name*, looked up under ``WIRESHARK_CONFIG_DIR``;
a path is refused)::

    WIRESHARK_CONFIG_DIR=<dir> wireshark -C cxtp capture.pcap
    WIRESHARK_CONFIG_DIR=<dir> tshark -C cxtp -r capture.pcap -Y cxtp

``-X lua_script:<dir>/plugins/cxtp.lua`` may be added (the dissector ignores a second load), and
is the way to use the dissector without the profile. :func:`tshark_options` gives the ``-o``
form of the same ESP settings, for a one-off command without any directory.

:func:`add_sas` appends SAs to the profile and :func:`export_namespace_sas` reads the SAs that a
network namespace's kernel holds (a thin wrapper around ``ipsec.Xfrm.dump_sas``) and appends them:
the runner calls it after each handover, while the SAs of that handover still exist.

The ``esp_sa`` format and the algorithm names are those of Wireshark 4.0 (Debian 12's 4.0.17):
eight quoted fields per line, protocol, source, destination, SPI, encryption algorithm, its key,
authentication algorithm, its key. Wireshark takes the first line that matches a packet's
(addresses, SPI), so an SA re-keyed under the same addresses and SPI replaces its older line.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path

from ipsec import SecurityAssociation, Xfrm
from nodes import netns

REPOSITORY = Path(__file__).resolve().parents[2]
DISSECTOR = REPOSITORY / "wireshark" / "cxtp.lua"
PROFILE_NAME = "cxtp"
IPPROTO_ESP = 50  # Wireshark decrypts ESP only (not AH, not IPComp)

#: Linux crypto API name of an encryption algorithm -> Wireshark 4.0's ESP UAT name.
ENCRYPTION_NAMES = {
    "ecb(cipher_null)": "NULL",
    "cipher_null": "NULL",
    "cbc(des3_ede)": "TripleDES-CBC [RFC2451]",
    "cbc(aes)": "AES-CBC [RFC3602]",
    "rfc3686(ctr(aes))": "AES-CTR [RFC3686]",
    "cbc(des)": "DES-CBC [RFC2405]",
    "cbc(cast5)": "CAST5-CBC [RFC2144]",
    "cbc(blowfish)": "BLOWFISH-CBC [RFC2451]",
    "cbc(twofish)": "TWOFISH-CBC",
}
#: AEAD (key includes the 4-octet salt, as in the kernel): ICV bits -> Wireshark name.
AEAD_NAMES = {
    "rfc4106(gcm(aes))": {64: "AES-GCM with 8 octet ICV [RFC4106]",
                          96: "AES-GCM with 12 octet ICV [RFC4106]",
                          128: "AES-GCM with 16 octet ICV [RFC4106]"},
}
#: (Linux name, truncation bits) -> Wireshark 4.0 name; checked with the key.
AUTHENTICATION_NAMES = {
    ("hmac(sha1)", 96): "HMAC-SHA-1-96 [RFC2404]",
    ("hmac(sha256)", 96): "HMAC-SHA-256-96 [draft-ietf-ipsec-ciph-sha-256-00]",
    ("hmac(sha256)", 128): "HMAC-SHA-256-128 [RFC4868]",
    ("hmac(sha384)", 192): "HMAC-SHA-384-192 [RFC4868]",
    ("hmac(sha512)", 256): "HMAC-SHA-512-256 [RFC4868]",
    ("hmac(md5)", 96): "HMAC-MD5-96 [RFC2403]",
    ("hmac(rmd160)", 96): "MAC-RIPEMD-160-96 [RFC2857]",
}
#: ICV lengths Wireshark can skip without checking (decryption still works).
UNCHECKED_AUTHENTICATION = {64: "ANY 64 bit authentication [no checking]",
                            96: "ANY 96 bit authentication [no checking]",
                            128: "ANY 128 bit authentication [no checking]",
                            192: "ANY 192 bit authentication [no checking]",
                            256: "ANY 256 bit authentication [no checking]"}
#: The kernel's truncation for an XFRMA_ALG_AUTH (not _TRUNC) algorithm (net/xfrm/xfrm_algo.c).
KERNEL_DEFAULT_TRUNCATION = {"hmac(md5)": 96, "hmac(sha1)": 96, "hmac(sha256)": 96, "hmac(sha384)": 192,
                             "hmac(sha512)": 256, "hmac(rmd160)": 96}

PREFERENCES = """\
# Written by scenarios/wireshark.py: decrypt ESP with the SAs in esp_sa and check their ICVs.
esp.enable_encryption_decode: TRUE
esp.enable_authentication_check: TRUE
"""

INIT_LUA = """\
-- Written by scenarios/wireshark.py: load the CXTP dissector next to this file.
local here = debug.getinfo(1, "S").source:match("^@(.*[/\\\\])") or "./"
dofile(here .. "plugins/cxtp.lua")
"""


class UnsupportedSa(ValueError):
    """An SA Wireshark cannot decrypt (not ESP, or an algorithm its ESP dissector lacks)."""


@dataclasses.dataclass(frozen=True)
class EspSaEntry:
    """One line of Wireshark's ``esp_sa`` table."""

    protocol: str  # "IPv4" or "IPv6"
    source: str
    destination: str
    spi: int
    encryption: str
    encryption_key: bytes
    authentication: str
    authentication_key: bytes

    @property
    def key(self) -> tuple[str, str, str, int]:
        """What Wireshark matches a packet on."""
        return (self.protocol, self.source, self.destination, self.spi)

    def fields(self) -> tuple[str, ...]:
        return (self.protocol, self.source, self.destination, f"0x{self.spi:08x}", self.encryption,
                _hex(self.encryption_key), self.authentication, _hex(self.authentication_key))

    def line(self) -> str:
        """The UAT line: every field double-quoted, comma-separated."""
        return ",".join(f'"{value}"' for value in self.fields())

    @classmethod
    def parse(cls, line: str) -> EspSaEntry:
        values = re.findall(r'"((?:[^"\\]|\\.)*)"', line)
        if len(values) != 8:
            raise ValueError(f"not an esp_sa line of 8 fields: {line!r}")
        protocol, source, destination, spi, encryption, encryption_key, authentication, authentication_key = values
        return cls(protocol, source, destination, int(spi, 16), encryption, _unhex(encryption_key),
                   authentication, _unhex(authentication_key))


def _hex(key: bytes) -> str:
    return "0x" + key.hex() if key else ""


def _unhex(text: str) -> bytes:
    return bytes.fromhex(text[2:]) if text.lower().startswith("0x") else text.encode()


def esp_sa_entry(sa: SecurityAssociation) -> EspSaEntry:
    """Wireshark's ESP SA for one ``ipsec.SecurityAssociation``; UnsupportedSa if it has none."""
    if sa.proto != IPPROTO_ESP:
        raise UnsupportedSa(f"SPI {sa.spi:#x}: protocol {sa.proto} is not ESP")
    algorithms = {algorithm.kind: algorithm for algorithm in sa.algorithms}
    encryption, encryption_key = "NULL", b""
    authentication, authentication_key = "NULL", b""
    if "aead" in algorithms:
        aead = algorithms["aead"]
        name = AEAD_NAMES.get(aead.name, {}).get(aead.bits)
        if name is None:
            raise UnsupportedSa(f"SPI {sa.spi:#x}: AEAD {aead.name} with a {aead.bits}-bit ICV")
        encryption, encryption_key = name, aead.key
    elif "crypt" in algorithms:
        crypt = algorithms["crypt"]
        if crypt.name not in ENCRYPTION_NAMES:
            raise UnsupportedSa(f"SPI {sa.spi:#x}: cipher {crypt.name}")
        encryption, encryption_key = ENCRYPTION_NAMES[crypt.name], crypt.key
    auth = algorithms.get("auth_trunc") or algorithms.get("auth")
    if auth is not None and "aead" not in algorithms:
        bits = auth.bits if auth.kind == "auth_trunc" else KERNEL_DEFAULT_TRUNCATION.get(auth.name, 0)
        name = AUTHENTICATION_NAMES.get((auth.name, bits))
        if name is not None:
            authentication, authentication_key = name, auth.key
        elif bits in UNCHECKED_AUTHENTICATION:
            authentication = UNCHECKED_AUTHENTICATION[bits]  # decrypts; the ICV is skipped unchecked
        else:
            raise UnsupportedSa(f"SPI {sa.spi:#x}: authentication {auth.name} truncated to {bits} bits")
    address = ipaddress.ip_address(sa.daddr)
    return EspSaEntry("IPv4" if address.version == 4 else "IPv6", ipaddress.ip_address(sa.saddr).compressed,
                      address.compressed, sa.spi, encryption, encryption_key, authentication, authentication_key)


@dataclasses.dataclass(frozen=True)
class WiresharkProfile:
    """A Wireshark configuration directory with the ``cxtp`` profile (see the module doc)."""

    config_dir: Path
    name: str = PROFILE_NAME

    @property
    def profile_dir(self) -> Path:
        return self.config_dir / "profiles" / self.name

    @property
    def esp_sa_path(self) -> Path:
        return self.profile_dir / "esp_sa"

    @property
    def dissector(self) -> Path:
        return self.config_dir / "plugins" / "cxtp.lua"

    def entries(self) -> list[EspSaEntry]:
        if not self.esp_sa_path.exists():
            return []
        return [EspSaEntry.parse(line) for line in self.esp_sa_path.read_text().splitlines()
                if line.strip() and not line.lstrip().startswith("#")]

    def environment(self, base: dict | None = None) -> dict:
        import os

        environment = dict(os.environ if base is None else base)
        environment["WIRESHARK_CONFIG_DIR"] = str(self.config_dir)
        return environment

    def tshark_command(self, capture: str | Path, *arguments: str, tshark: str = "tshark") -> list[str]:
        """``tshark -C cxtp -r capture ...``; run it with :meth:`environment`."""
        return [tshark, "-C", self.name, "-r", str(capture), *arguments]

    def shell_command(self, capture: str | Path, program: str = "wireshark") -> str:
        """What a reader types to open ``capture`` with this profile."""
        read = "-r " if program == "tshark" else ""
        return f"WIRESHARK_CONFIG_DIR={self.config_dir} {program} -C {self.name} {read}{capture}"


@dataclasses.dataclass(frozen=True)
class AddResult:
    """What :func:`add_sas` did: lines added, lines replaced (re-keyed SAs), SAs skipped."""

    added: int = 0
    replaced: int = 0
    skipped: tuple[str, ...] = ()

    def __add__(self, other: AddResult) -> AddResult:
        return AddResult(self.added + other.added, self.replaced + other.replaced, self.skipped + other.skipped)


def write_profile(config_dir: str | Path, sas: Iterable[SecurityAssociation] = (), name: str = PROFILE_NAME,
                  dissector: str | Path = DISSECTOR) -> WiresharkProfile:
    """Create (or refresh) the configuration directory and its profile, with ``sas`` in esp_sa.

    An existing esp_sa is kept (SAs only accumulate); preferences, init.lua and the dissector copy
    are rewritten. The directory holds keys: it is as secret as the SAs are.
    """
    profile = WiresharkProfile(Path(config_dir).resolve(), name)
    profile.profile_dir.mkdir(parents=True, exist_ok=True)
    (profile.profile_dir / "preferences").write_text(PREFERENCES)
    profile.esp_sa_path.touch()
    profile.dissector.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(dissector, profile.dissector)
    (profile.config_dir / "init.lua").write_text(INIT_LUA)
    add_sas(profile, sas)
    return profile


def add_sas(profile: WiresharkProfile, sas: Iterable[SecurityAssociation]) -> AddResult:
    """Append the SAs Wireshark can use to the profile's esp_sa (an identical line is not repeated;
    a line for the same addresses and SPI with other keys is replaced in place)."""
    entries = profile.entries()
    index = {entry.key: position for position, entry in enumerate(entries)}
    added = replaced = 0
    skipped = []
    for sa in sas:
        try:
            entry = esp_sa_entry(sa)
        except UnsupportedSa as reason:
            skipped.append(str(reason))
            continue
        position = index.get(entry.key)
        if position is None:
            index[entry.key] = len(entries)
            entries.append(entry)
            added += 1
        elif entries[position] != entry:
            entries[position] = entry
            replaced += 1
    if added or replaced or not profile.esp_sa_path.exists():
        profile.esp_sa_path.parent.mkdir(parents=True, exist_ok=True)
        temporary = profile.esp_sa_path.with_suffix(".tmp")
        temporary.write_text("".join(entry.line() + "\n" for entry in entries))
        temporary.replace(profile.esp_sa_path)
    return AddResult(added, replaced, tuple(skipped))


def namespace_sas(target: int | str | None = None) -> list[SecurityAssociation]:
    """Every SA (with keys) in the kernel of a network namespace: a Mininet host's PID, an
    ``ip netns`` name or a path (as :func:`nodes.netns.namespace_path`); None for our own."""
    with netns.entered(target):
        xfrm = Xfrm()  # its netlink socket stays in that namespace
    try:
        return xfrm.dump_sas()
    finally:
        xfrm.close()


def export_namespace_sas(profile: WiresharkProfile, target: int | str | None = None) -> AddResult:
    """Append the SAs a namespace's kernel holds now to the profile (call it after each handover)."""
    return add_sas(profile, namespace_sas(target))


def export_testbed_sas(profile: WiresharkProfile, testbed, nodes: Iterable[str] = ("mn", "par", "nar")) -> AddResult:
    """:func:`export_namespace_sas` for several nodes of a running ``topo.network.Testbed``."""
    result = AddResult()
    for node in nodes:
        result = result + export_namespace_sas(profile, testbed.pid(node))
    return result


def tshark_options(sas: Iterable[SecurityAssociation]) -> list[str]:
    """The same ESP settings as ``-o`` arguments, for a command that uses no profile."""
    options = ["-o", "esp.enable_encryption_decode:TRUE", "-o", "esp.enable_authentication_check:TRUE"]
    for sa in sas:
        try:
            options += ["-o", "uat:esp_sa:" + esp_sa_entry(sa).line()]
        except UnsupportedSa:
            continue
    return options


def tshark_version(tshark: str = "tshark") -> tuple[int, ...] | None:
    """(major, minor, micro) of the installed tshark, None when there is none."""
    if shutil.which(tshark) is None:
        return None
    output = subprocess.run([tshark, "-v"], capture_output=True, text=True).stdout
    match = re.search(r"TShark \(Wireshark\) (\d+)\.(\d+)\.(\d+)", output)
    return tuple(int(part) for part in match.groups()) if match else None
