"""Fixtures shared by unit and integration tests: a throwaway PKI made with the openssl CLI."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass(frozen=True)
class Pki:
    """An internal CA with one server certificate (127.0.0.1, localhost) and one client."""

    ca_file: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


_NEW_EC_KEY = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes")


def _openssl(*args: str | Path, cwd: Path) -> None:
    result = subprocess.run(
        ["openssl", *map(str, args)], cwd=cwd, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        pytest.fail(f"openssl {args[0]} failed: {result.stderr.strip()}")


def _issue(directory: Path, name: str, subject: str, extensions: str) -> tuple[Path, Path]:
    key, csr, cert = (directory / f"{name}.{ext}" for ext in ("key", "csr", "pem"))
    (directory / f"{name}.ext").write_text(extensions)
    _openssl(
        "req", "-new", *_NEW_EC_KEY, "-keyout", key, "-out", csr, "-subj", subject, cwd=directory
    )
    _openssl(
        "x509",
        "-req",
        "-in",
        csr,
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-out",
        cert,
        "-extfile",
        f"{name}.ext",
        cwd=directory,
    )
    return cert, key


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    if shutil.which("openssl") is None:
        pytest.fail("the openssl command is needed to make test certificates (Debian: openssl)")
    directory = tmp_path_factory.mktemp("pki")
    ca_extensions = ("basicConstraints=critical,CA:TRUE", "keyUsage=critical,keyCertSign,cRLSign")
    _openssl(
        "req",
        "-x509",
        *_NEW_EC_KEY,
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=Airgap Test CA",
        "-addext",
        ca_extensions[0],
        "-addext",
        ca_extensions[1],
        cwd=directory,
    )
    server_cert, server_key = _issue(
        directory,
        "server",
        "/CN=127.0.0.1",
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
    )
    client_cert, client_key = _issue(
        directory, "client", "/CN=airgap-test-client", "extendedKeyUsage=clientAuth\n"
    )
    return Pki(directory / "ca.pem", server_cert, server_key, client_cert, client_key)
