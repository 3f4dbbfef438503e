"""A real CNCF Distribution (Debian ``docker-registry``) on loopback, for integration tests.

``distribution_factory`` starts as many registries as a test needs (plain HTTP or TLS with
client certificates, optionally asking for Basic credentials from an htpasswd file, or plain
HTTP on a unix socket as the registry host runs it) and stops them at the end of the session;
``distribution`` is a fresh empty registry per test, ``socket_distribution`` one on a unix
socket, ``session_distribution`` one shared by a whole session, and
``registry_url`` the base URL of the fresh one.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import shutil
import socket
import ssl
import subprocess
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import yaml

if TYPE_CHECKING:
    from tests.conftest import Pki

DISTRIBUTION_BINARY = "/usr/bin/docker-registry"
_READY_TIMEOUT = 15.0


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def htpasswd_line(user: str, password: str) -> str:
    """``user:bcrypt(password)``, a line of the htpasswd file Distribution reads."""
    with warnings.catch_warnings():
        # crypt is the standard library's only bcrypt; it goes in Python 3.13.
        warnings.simplefilter("ignore", DeprecationWarning)
        import crypt

    return f"{user}:{crypt.crypt(password, crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=1 << 4))}\n"


def write_auth_json(path: Path, address: str, user: str, password: str) -> Path:
    """A docker ``auth.json`` holding ``user``/``password`` for ``address`` (host:port)."""
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    path.write_text(json.dumps({"auths": {address: {"auth": token}}}))
    return path


@dataclass
class Distribution:
    """One registry process; its storage and log live under ``root``.

    ``htpasswd``: a file of ``user:bcrypt`` lines; the registry then answers every request
    without those Basic credentials with 401. ``socket``: listen there (``http.net: unix``)
    instead of on ``port``.
    """

    root: Path
    port: int
    pki: Pki | None = None
    htpasswd: Path | None = None
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    socket: Path | None = None

    @property
    def url(self) -> str:
        if self.socket is not None:
            return f"unix://{self.socket}"
        scheme = "https" if self.pki else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    @property
    def address(self) -> str:
        """``host:port`` as skopeo and cosign name the registry."""
        return f"127.0.0.1:{self.port}"

    @property
    def config_path(self) -> Path:
        return self.root / "config.yml"

    @property
    def log_path(self) -> Path:
        return self.root / "registry.log"

    @property
    def storage(self) -> Path:
        return self.root / "storage"

    def write_config(self) -> None:
        http_config: dict[str, object] = {"addr": self.address, "secret": "airgap-tests"}
        if self.socket is not None:
            http_config.update(net="unix", addr=str(self.socket))
        if self.pki:
            http_config["tls"] = {
                "certificate": str(self.pki.server_cert),
                "key": str(self.pki.server_key),
                "clientcas": [str(self.pki.ca_file)],
                "minimumtls": "tls1.2",
            }
        config = {
            "version": 0.1,
            "log": {"level": "info", "formatter": "text", "accesslog": {"disabled": False}},
            "storage": {
                "filesystem": {"rootdirectory": str(self.storage)},
                "delete": {"enabled": True},
                "maintenance": {"uploadpurging": {"enabled": False}},
            },
            "http": http_config,
        }
        if self.htpasswd:
            config["auth"] = {"htpasswd": {"realm": "airgap", "path": str(self.htpasswd)}}
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))

    def start(self) -> None:
        self.write_config()
        with self.log_path.open("ab") as log:
            # REGISTRY_* variables override the config file: start from an empty environment.
            self.process = subprocess.Popen(
                [DISTRIBUTION_BINARY, "serve", str(self.config_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
            )
        self._wait_ready()

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None

    def restart(self) -> None:
        """Stop and start again on the same port and storage, dropping every connection."""
        self.stop()
        self.start()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + _READY_TIMEOUT
        last_error = "no attempt"
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                pytest.fail(
                    f"docker-registry exited with {self.process.returncode} before serving "
                    f"{self.url}; log {self.log_path}:\n{self.log()[-2000:]}"
                )
            try:
                if self._answers_v2():
                    return
            except (OSError, http.client.HTTPException) as exc:
                last_error = str(exc)
            time.sleep(0.05)
        self.stop()
        pytest.fail(
            f"docker-registry did not answer {self.url}/v2/ within {_READY_TIMEOUT} s "
            f"({last_error}); log:\n{self.log()[-2000:]}"
        )

    def _answers_v2(self) -> bool:
        connection: http.client.HTTPConnection
        if self.socket is not None:
            connection = _UnixHTTPConnection(str(self.socket))
        elif self.pki:
            context = ssl.create_default_context(cafile=str(self.pki.ca_file))
            context.load_cert_chain(str(self.pki.client_cert), str(self.pki.client_key))
            connection = http.client.HTTPSConnection(
                "127.0.0.1", self.port, context=context, timeout=2
            )
        else:
            connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
        try:
            connection.request("GET", "/v2/")
            # Without credentials the API root of a registry asking for them answers 401.
            return connection.getresponse().status == (401 if self.htpasswd else 200)
        finally:
            connection.close()


class _UnixHTTPConnection(http.client.HTTPConnection):
    """Readiness probe over a unix socket (the standard library only; not the engine's
    client, which the tests check)."""

    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=2)
        self.socket_path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(2)
        self.sock.connect(self.socket_path)


DistributionFactory = Callable[..., Distribution]


@pytest.fixture(scope="session")
def distribution_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DistributionFactory]:
    """``start(tls=pki, htpasswd=file, unix=False)`` → a running registry with empty
    storage (``unix``: on ``<its root>/registry.sock``); all stopped at the end."""
    if not (os.path.isfile(DISTRIBUTION_BINARY) and os.access(DISTRIBUTION_BINARY, os.X_OK)):
        found = shutil.which("docker-registry")
        pytest.fail(
            f"CNCF Distribution is missing: {DISTRIBUTION_BINARY} not found"
            f"{f' (but {found} is)' if found else ''}. The project's setup script installs "
            "the Debian package docker-registry; integration tests need the real registry."
        )
    started: list[Distribution] = []

    def start(
        tls: Pki | None = None, htpasswd: Path | None = None, unix: bool = False
    ) -> Distribution:
        root = tmp_path_factory.mktemp("distribution")
        registry = Distribution(root, _free_port(), tls, htpasswd)
        if unix:
            registry.socket = root / "registry.sock"
        started.append(registry)
        registry.start()
        return registry

    yield start
    for registry in started:
        registry.stop()


@pytest.fixture
def distribution(distribution_factory: DistributionFactory) -> Iterator[Distribution]:
    """A fresh, empty registry for one test."""
    registry = distribution_factory()
    yield registry
    registry.stop()


@pytest.fixture(scope="session")
def session_distribution(distribution_factory: DistributionFactory) -> Distribution:
    """One registry shared by the session: tests using it must not assume it is empty."""
    return distribution_factory()


@pytest.fixture
def socket_distribution(distribution_factory: DistributionFactory) -> Iterator[Distribution]:
    """A fresh, empty registry on a unix socket, as the registry host runs its backend."""
    registry = distribution_factory(unix=True)
    yield registry
    registry.stop()


@pytest.fixture
def registry_url(distribution: Distribution) -> str:
    return distribution.url
