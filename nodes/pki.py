"""Certificates for the IKEv2 baseline, made at set-up with strongSwan's ``pki``.

Each AR authenticates to the MN with a plain self-signed ECDSA certificate carrying the
``serverAuth`` extended key usage and its identity as a subjectAltName; the MN pins it with
``certs =`` in its remote auth round. A ``pki --self --ca`` certificate is refused by the client
(no digitalSignature key usage), hence plain self-signed (see docs/baseline.md).

EAP-TLS needs a chain of trust instead: the testbed's own CA (:func:`make_authority`, a
self-signed ECDSA CA certificate) issues the RADIUS server's certificate (``serverAuth``, its
identity as subject CN and subjectAltName) and the MN's client certificate (``clientAuth``, the MN's
EAP identity as CN and subjectAltName) with :func:`issue_credential`. FreeRADIUS trusts the CA for
the client certificate, the MN's charon for the server's.

``pki`` is started a few times per baseline, at set-up only (a process start is slow in UML: docs/kernel.md).
"""

from __future__ import annotations

import dataclasses
import subprocess
from pathlib import Path

PKI = "/usr/bin/pki"


class PkiError(RuntimeError):
    """``pki`` failed to make a key or certificate."""


@dataclasses.dataclass(frozen=True)
class Credential:
    identity: str
    key_path: Path
    cert_path: Path
    #: the CA certificate that issued it (None: self-signed)
    issuer_path: Path | None = None

    @property
    def key_pem(self) -> bytes:
        return self.key_path.read_bytes()

    @property
    def cert_pem(self) -> bytes:
        return self.cert_path.read_bytes()


def _pki(arguments: list[str]) -> bytes:
    result = subprocess.run([PKI, *arguments], capture_output=True)
    if result.returncode != 0:
        raise PkiError(f"`pki {' '.join(arguments)}` failed ({result.returncode}): "
                       f"{result.stderr.decode(errors='replace').strip()}")
    return result.stdout


def make_server_credential(directory: Path, identity: str, lifetime_days: int = 30) -> Credential:
    """An ECDSA P-256 key and a self-signed serverAuth certificate for ``identity`` (an FQDN-type
    identity, also the subjectAltName). Reuses files already present in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    key_path, cert_path = directory / f"{identity}.key.pem", directory / f"{identity}.cert.pem"
    if not key_path.exists():
        key_path.write_bytes(_pki(["--gen", "--type", "ecdsa", "--size", "256", "--outform", "pem"]))
        key_path.chmod(0o600)
    if not cert_path.exists():
        cert_path.write_bytes(_pki(["--self", "--in", str(key_path), "--type", "ecdsa",
                                    "--dn", f"CN={identity}", "--san", identity,
                                    "--flag", "serverAuth", "--lifetime", str(lifetime_days),
                                    "--outform", "pem"]))
    return Credential(identity, key_path, cert_path)


@dataclasses.dataclass(frozen=True)
class Authority:
    """A CA: its key and self-signed CA certificate."""

    name: str
    key_path: Path
    cert_path: Path

    @property
    def cert_pem(self) -> bytes:
        return self.cert_path.read_bytes()


def _key(key_path: Path) -> None:
    if not key_path.exists():
        key_path.write_bytes(_pki(["--gen", "--type", "ecdsa", "--size", "256", "--outform", "pem"]))
        key_path.chmod(0o600)


def make_authority(directory: Path, name: str = "testbed CA", lifetime_days: int = 30) -> Authority:
    """An ECDSA P-256 CA (``CN=<name>``, CA basic constraint). Reuses files already present."""
    directory.mkdir(parents=True, exist_ok=True)
    stem = name.replace(" ", "-")
    key_path, cert_path = directory / f"{stem}.key.pem", directory / f"{stem}.cert.pem"
    _key(key_path)
    if not cert_path.exists():
        cert_path.write_bytes(_pki(["--self", "--ca", "--in", str(key_path), "--type", "ecdsa",
                                    "--dn", f"CN={name}", "--lifetime", str(lifetime_days),
                                    "--outform", "pem"]))
    return Authority(name, key_path, cert_path)


USAGES = ("serverAuth", "clientAuth")


def issue_credential(directory: Path, authority: Authority, identity: str, usage: str,
                     lifetime_days: int = 30) -> Credential:
    """An ECDSA P-256 key and a certificate for ``identity`` (subject CN and subjectAltName) with
    the extended key usage ``usage`` (serverAuth or clientAuth), issued by ``authority``. Reuses
    files already present in ``directory``."""
    if usage not in USAGES:
        raise ValueError(f"usage must be one of {USAGES}, got {usage!r}")
    directory.mkdir(parents=True, exist_ok=True)
    key_path, cert_path = directory / f"{identity}.key.pem", directory / f"{identity}.cert.pem"
    _key(key_path)
    if not cert_path.exists():
        cert_path.write_bytes(_pki(["--issue", "--in", str(key_path), "--type", "priv",
                                    "--cacert", str(authority.cert_path), "--cakey", str(authority.key_path),
                                    "--dn", f"CN={identity}", "--san", identity, "--flag", usage,
                                    "--lifetime", str(lifetime_days), "--outform", "pem"]))
    return Credential(identity, key_path, cert_path, authority.cert_path)
