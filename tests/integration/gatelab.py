"""The gateway on loopback: real nginx (roles/gateway's template) in front of a real
Distribution, asking a real ``airgap gate serve`` over its unix socket.

No pytest in here: ``tests/integration/test_gate.py`` and ``bench/gate_bench.py`` both use
it. :class:`GateLab` makes, under one directory:

- a CA with a CRL, nginx's server certificate for 127.0.0.1, and one client certificate per
  identity asked for (:meth:`GateLab.identity`: a subject, e.g. ``/CN=node/OU=puller``), each
  also as a skopeo/containers cert directory;
- Distribution (``/usr/bin/docker-registry``) on a loopback port: the backend;
- the appliance's signing keys (``airgap signing-key init``'s engine, real cosign), a
  provenance.yaml (backend, state, scanning DB, signing through the gateway as
  ``CN=appliance``), an installed-DB record, gate.yaml, the audit checkpoint key;
- the gate as a process of its own, and nginx with the role's template rendered by Jinja2
  (``gateway_gate_socket`` set; ``gate=False`` renders it without the gate, for a bench's
  baseline).

Content: :meth:`GateLab.push_image` (straight into the backend), :meth:`GateLab.sign` (cosign
through the gateway), :meth:`GateLab.record_verdict` (the real verdict store),
:meth:`GateLab.admitted_image` (all three); :meth:`GateLab.request` asks nginx as one of the
identities (``appliance``, ``puller``, ``pusher``, ``admin``, ``sync``, ``stranger``).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jinja2
import yaml

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "roles" / "gateway" / "templates" / "airgapped-registry.conf.j2"
ROLE_DEFAULTS = ROOT / "roles" / "gateway" / "defaults" / "main.yml"
COSIGN = ROOT / ".venv" / "bin" / "cosign"
DISTRIBUTION = "/usr/bin/docker-registry"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
PASSWORD = "gate lab signing password"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
LAYER = "application/vnd.oci.image.layer.v1.tar"
DB_DIGEST = "sha256:" + "d" * 64
ACCEPT = ", ".join(
    (
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
    )
)
EC_KEY = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes")

POLICY = """\
version: 1
landing_zones: [ci/]
grants:
  - {identity: {ou: puller}, role: puller}
  - {identity: {ou: pusher}, role: pusher, repositories: [ci/]}
  - {identity: {ou: pusher}, role: puller}
  - {identity: {ou: admin}, role: admin}
  - {identity: {cn: sync}, role: sync}
  - {identity: {cn: appliance}, role: scanner}
  - {identity: {cn: monitor}, role: monitor}
admission:
  mode: enforce
audit:
  directory: {audit_dir}
  key: {audit_key}
  head: {audit_head}
  fsync: 1s
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def openssl(*args: str | Path, cwd: Path) -> None:
    result = subprocess.run(
        ["openssl", *map(str, args)], cwd=cwd, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"openssl {args[0]}: {result.stderr.strip()}")


def wait_for(check: Any, what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{what}: not ready within {timeout} s")


@dataclass(frozen=True)
class Image:
    """An image in the backend: its manifest digest and its one layer's."""

    repository: str
    tag: str
    digest: str
    layer: str


@dataclass(frozen=True)
class Client:
    """One client identity: its certificate pair, and a cert directory for skopeo."""

    name: str
    subject: str
    cert: Path
    key: Path
    cert_dir: Path


class GateLab:
    def __init__(self, root: Path, gate: bool = True, policy: str = POLICY) -> None:
        self.root = root
        self.with_gate = gate
        self.pki = root / "pki"
        self.tls = root / "tls"
        self.nginx_dir = root / "nginx"
        self.logs = root / "logs"
        self.socket = root / "gate" / "gate.sock"
        self.policy_path = root / "gate.yaml"
        self.provenance = root / "provenance.yaml"
        self.state = root / "state" / "state.db"
        self.cache_dir = root / "trivy"
        self.keys_dir = root / "keys"
        self.audit_dir = root / "audit" / "log"
        self.audit_key = root / "audit" / "state" / "checkpoint.key"
        self.gate_down_log = self.logs / "gate-unavailable.log"
        self.access_log = self.logs / "access.log"
        self.backend_port = free_port()
        self.port = free_port()
        self.clients: dict[str, Client] = {}
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self._policy_text = policy

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def backend(self) -> str:
        return f"http://127.0.0.1:{self.backend_port}"

    # -- set-up --------------------------------------------------------------------------

    def start(self) -> GateLab:
        for directory in (self.pki, self.tls, self.nginx_dir, self.logs, self.socket.parent):
            directory.mkdir(parents=True, exist_ok=True)
        self.make_ca()
        for name, subject in (
            ("appliance", "/CN=appliance/O=Airgap"),
            ("puller", "/CN=node/OU=puller/O=Airgap"),
            ("pusher", "/CN=ci/OU=pusher/O=Airgap"),
            ("admin", "/CN=operator/OU=admin/O=Airgap"),
            ("sync", "/CN=sync/O=Airgap"),
            ("stranger", "/CN=stranger/OU=guests/O=Airgap"),
        ):
            self.identity(name, subject)
        self.start_distribution()
        self.write_provenance()
        if self.with_gate:
            self.write_policy(self._policy_text)
            self.init_keys()
            self.install_db(DB_DIGEST, datetime.now(UTC))
            from airgapped_registry.audit import init_key

            init_key(self.audit_key)
            self.start_gate()
        self.start_nginx()
        return self

    def make_ca(self) -> None:
        ext = "basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\n"
        (self.pki / "ca.ext").write_text(ext)
        openssl(
            "req", "-x509", *EC_KEY, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
            "-subj", "/CN=Gate Lab CA", "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=self.pki,
        )  # fmt: skip
        (self.pki / "index.txt").write_text("")
        (self.pki / "crlnumber").write_text("01\n")
        (self.pki / "ca.cnf").write_text(
            "[ca]\ndefault_ca = lab\n[lab]\ndatabase = index.txt\ncrlnumber = crlnumber\n"
            "default_md = sha256\ndefault_crl_days = 2\n"
        )
        openssl(
            "ca", "-config", "ca.cnf", "-gencrl", "-keyfile", "ca.key", "-cert", "ca.pem",
            "-out", "crl.pem", cwd=self.pki,
        )  # fmt: skip
        self.issue("server", "/CN=127.0.0.1", "subjectAltName=IP:127.0.0.1,DNS:localhost\n")
        shutil.copy(self.pki / "server.pem", self.tls / "server.crt")
        shutil.copy(self.pki / "server.key", self.tls / "server.key")
        shutil.copy(self.pki / "ca.pem", self.tls / "ca.crt")
        shutil.copy(self.pki / "crl.pem", self.tls / "crl.pem")

    def issue(self, name: str, subject: str, extensions: str = "") -> tuple[Path, Path]:
        key, csr, cert = (self.pki / f"{name}.{ext}" for ext in ("key", "csr", "pem"))
        (self.pki / f"{name}.ext").write_text(extensions or "extendedKeyUsage=clientAuth\n")
        openssl("req", "-new", *EC_KEY, "-keyout", key, "-out", csr, "-subj", subject, cwd=self.pki)
        openssl(
            "x509", "-req", "-in", csr, "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-days", "2", "-out", cert, "-extfile", f"{name}.ext", cwd=self.pki,
        )  # fmt: skip
        return cert, key

    def identity(self, name: str, subject: str) -> Client:
        cert, key = self.issue(f"client-{name}", subject)
        cert_dir = self.root / "certs.d" / name
        cert_dir.mkdir(parents=True, exist_ok=True)
        shutil.copy(cert, cert_dir / "client.cert")
        shutil.copy(key, cert_dir / "client.key")
        shutil.copy(self.pki / "ca.pem", cert_dir / "ca.crt")
        client = Client(name, subject, cert, key, cert_dir)
        self.clients[name] = client
        return client

    def start_distribution(self) -> None:
        config = {
            "version": 0.1,
            # The access log shows what nginx asked the backend (by digest, or not).
            "log": {"level": "warn", "accesslog": {"disabled": False}},
            "storage": {
                "filesystem": {"rootdirectory": str(self.root / "storage")},
                "delete": {"enabled": True},
                "maintenance": {"uploadpurging": {"enabled": False}},
            },
            "http": {"addr": f"127.0.0.1:{self.backend_port}", "secret": "gate-lab"},
        }
        path = self.root / "registry.yml"
        path.write_text(yaml.safe_dump(config))
        log = (self.logs / "registry.log").open("ab")
        self.processes["registry"] = subprocess.Popen(
            [DISTRIBUTION, "serve", str(path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
        )
        wait_for(
            lambda: urllib.request.urlopen(f"{self.backend}/v2/", timeout=1).status == 200,
            "Distribution",
        )

    def write_provenance(self) -> None:
        appliance = self.clients["appliance"]
        (self.root / "password").write_text(PASSWORD + "\n")
        os.chmod(self.root / "password", 0o600)
        self.provenance.write_text(
            yaml.safe_dump(
                {
                    "version": 1,
                    "backend": self.backend,
                    "state": str(self.state),
                    "scanning": {"cache_dir": str(self.cache_dir), "db": {"max_age": "7d"}},
                    "signing": {
                        "registry": self.address,
                        "ca_file": str(self.pki / "ca.pem"),
                        "cert_file": str(appliance.cert),
                        "key_file": str(appliance.key),
                        "keys_dir": str(self.keys_dir),
                        "password_file": str(self.root / "password"),
                        "repositories": ["ci/"],
                    },
                }
            )
        )

    def write_policy(self, text: str) -> None:
        self.policy_path.write_text(
            text.replace("{audit_dir}", str(self.audit_dir))
            .replace("{audit_key}", str(self.audit_key))
            .replace("{audit_head}", str(self.audit_key.parent / "head.json"))
        )

    def init_keys(self) -> None:
        from airgapped_registry.signing import keys
        from airgapped_registry.tools.process import Tools

        keys.init(self.keys_dir, PASSWORD, Tools(), str(COSIGN))

    def install_db(self, digest: str, updated_at: datetime) -> None:
        """Record ``digest`` as the DB in use, as ``airgap scan db update`` leaves it."""
        from airgapped_registry.scanning import db

        name = digest.replace(":", "-")[:20] + updated_at.strftime("%Y%m%dT%H%M%S")
        directory = db.databases(self.cache_dir) / name
        directory.mkdir(parents=True, exist_ok=True)
        stamp = updated_at.strftime("%Y-%m-%dT%H:%M:%SZ")
        (directory / db.RECORD_FILE).write_text(
            json.dumps(
                {
                    "digest": digest,
                    "updated_at": stamp,
                    "installed_at": stamp,
                    "repository": "aquasecurity/trivy-db",
                    "tag": "2",
                }
            )
        )
        link = db.current_link(self.cache_dir)
        temporary = link.with_name(".current.new")
        temporary.unlink(missing_ok=True)
        temporary.symlink_to(name)
        temporary.replace(link)

    # -- content -------------------------------------------------------------------------

    def push_image(
        self, repository: str, tag: str, content: str = "", layer_bytes: int = 0
    ) -> Image:
        """A one-layer image put straight into the backend, as the nightly sync leaves one;
        ``layer_bytes`` pads the layer (a bench's blob GETs)."""
        from airgapped_registry.oci.reference import digest_of

        layer = f"layer of {repository}:{tag} {content}".encode()
        layer += b"\0" * max(0, layer_bytes - len(layer))
        config = json.dumps(
            {"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}}
        ).encode()
        manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": {
                    "mediaType": OCI_CONFIG,
                    "digest": digest_of(config),
                    "size": len(config),
                },
                "layers": [{"mediaType": LAYER, "digest": digest_of(layer), "size": len(layer)}],
            }
        ).encode()
        with self.backend_client() as client:
            client.push_blob(repository, digest_of(config), config)
            client.push_blob(repository, digest_of(layer), layer)
            digest = client.put_manifest(repository, tag, manifest, OCI_MANIFEST)
        return Image(repository, tag, digest, digest_of(layer))

    def sign(self, image: Image) -> None:
        """Signed with cosign through nginx and the gate, as the appliance (scanner role)."""
        from airgapped_registry.signing.config import load_signing
        from airgapped_registry.signing.signer import Signer

        with Signer(load_signing(self.provenance), cosign_path=str(COSIGN)) as signer:
            outcomes = signer.sign(image.repository, image.digest)  # an index's children too
        for outcome in outcomes:
            if outcome.result not in ("signed", "skipped"):  # skipped: signed before
                raise RuntimeError(f"{image.repository}@{outcome.digest}: {outcome.detail}")

    def record_verdict(
        self,
        image: Image,
        status: str,
        findings: list[dict[str, Any]] | None = None,
        children: tuple[str, ...] = (),
    ) -> None:
        """A verdict made with the DB in use, through the real verdict store."""
        from airgapped_registry.scanning.records import iso
        from airgapped_registry.state.store import StateStore
        from airgapped_registry.state.verdicts import VerdictRecord, VerdictStore

        now = iso(datetime.now(UTC))
        with StateStore(self.state) as store:
            VerdictStore(store).record(
                VerdictRecord(
                    repository=image.repository,
                    digest=image.digest,
                    status=status,
                    fail_on="HIGH",
                    counts={"CRITICAL": len(findings or [])},
                    findings=findings or [],
                    scanned_at=now,
                    media_type=OCI_MANIFEST,
                    db_digest=DB_DIGEST,
                    db_updated_at=now,
                    children=children,
                )
            )

    def push_index(self, repository: str, tag: str, children: list[Image]) -> Image:
        """An OCI index of ``children`` (amd64, arm64, ...) under ``tag``."""
        from airgapped_registry.oci.reference import digest_of

        architectures = ("amd64", "arm64", "riscv64", "s390x")
        index = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": OCI_INDEX,
                "manifests": [
                    {
                        "mediaType": OCI_MANIFEST,
                        "digest": child.digest,
                        "size": self._manifest_size(child),
                        "platform": {"architecture": architecture, "os": "linux"},
                    }
                    for child, architecture in zip(children, architectures, strict=False)
                ],
            }
        ).encode()
        with self.backend_client() as client:
            digest = client.put_manifest(repository, tag, index, OCI_INDEX)
        return Image(repository, tag, digest, digest_of(index))

    def _manifest_size(self, image: Image) -> int:
        with self.backend_client() as client:
            head = client.head_manifest(image.repository, image.digest)
        if head is None:
            raise RuntimeError(f"{image.repository}@{image.digest}: not in the backend")
        return int(head.size)

    def admitted_image(self, repository: str, tag: str = "1.0", layer_bytes: int = 0) -> Image:
        """Pushed, signed by the appliance and passed: what a puller may pull."""
        image = self.push_image(repository, tag, "admitted", layer_bytes)
        self.sign(image)
        self.record_verdict(image, "pass")
        return image

    # -- the gate ------------------------------------------------------------------------

    def start_gate(self) -> None:
        log = (self.logs / "gate.log").open("ab")
        self.processes["gate"] = subprocess.Popen(
            [
                sys.executable, "-m", "airgapped_registry.cli", "gate", "serve",
                "--policy", str(self.policy_path), "--provenance", str(self.provenance),
                "--socket", str(self.socket), "--gate-down-log", str(self.gate_down_log),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        wait_for(self._gate_answers, "the gate")

    def _gate_answers(self) -> bool:
        process = self.processes["gate"]
        if process.poll() is not None:
            raise RuntimeError(f"the gate exited ({process.returncode}):\n{self.gate_log()}")
        if not self.socket.is_socket():
            return False
        with socket.socket(socket.AF_UNIX) as probe:
            probe.connect(str(self.socket))
        return True

    def stop_gate(self) -> None:
        self._stop("gate")

    def reload_gate(self) -> None:
        self.processes["gate"].send_signal(signal.SIGHUP)

    def backend_log(self) -> str:
        return (self.logs / "registry.log").read_text(errors="replace")

    def gate_log(self) -> str:
        path = self.logs / "gate.log"
        return path.read_text(errors="replace") if path.exists() else ""

    # -- nginx ---------------------------------------------------------------------------

    def render(self) -> str:
        defaults = yaml.safe_load(ROLE_DEFAULTS.read_text())
        values = {
            **{key: value for key, value in defaults.items() if "{{" not in str(value)},
            "ansible_managed": "rendered by tests/integration/gatelab.py",
            "gateway_server_name": "127.0.0.1",
            "gateway_port": self.port,
            "gateway_listen_addresses": ["127.0.0.1"],
            "gateway_backend_address": f"127.0.0.1:{self.backend_port}",
            "gateway_backend_standby_address": "",
            "gateway_tls_dir": str(self.tls),
            "gateway_ssl_ciphers": "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384",
            "gateway_gate_socket": str(self.socket) if self.with_gate else "",
            "gateway_gate_unavailable_log": str(self.gate_down_log),
            "gateway_access_log": str(self.access_log),
            "gateway_error_log": str(self.logs / "nginx-error.log"),
        }
        environment = jinja2.Environment(
            undefined=jinja2.StrictUndefined, keep_trailing_newline=True
        )
        return environment.from_string(TEMPLATE.read_text()).render(values)

    def start_nginx(self) -> None:
        site = self.nginx_dir / "airgapped-registry.conf"
        site.write_text(self.render())
        temp = self.nginx_dir / "temp"
        temp.mkdir(exist_ok=True)
        conf = self.nginx_dir / "nginx.conf"
        # Root workers: the test's gate socket belongs to root (www-data on the host).
        conf.write_text(
            f"""\
user root;
daemon off;
worker_processes 1;
pid {self.nginx_dir}/nginx.pid;
error_log {self.logs}/nginx-main-error.log;
events {{ worker_connections 256; }}
http {{
  client_body_temp_path {temp}/body;
  proxy_temp_path {temp}/proxy;
  fastcgi_temp_path {temp}/fastcgi;
  uwsgi_temp_path {temp}/uwsgi;
  scgi_temp_path {temp}/scgi;
  include {site};
}}
"""
        )
        check = subprocess.run(
            [NGINX, "-t", "-p", str(self.nginx_dir), "-c", str(conf), "-e", "stderr"],
            capture_output=True,
            text=True,
            check=False,
        )
        if check.returncode != 0:
            raise RuntimeError(f"nginx -t refused the rendered site:\n{check.stderr}")
        self.processes["nginx"] = subprocess.Popen(
            [NGINX, "-p", str(self.nginx_dir), "-c", str(conf), "-e", "stderr"],
            stdout=subprocess.DEVNULL,
            stderr=(self.logs / "nginx-stderr.log").open("ab"),
        )

        def answers() -> bool:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return True

        wait_for(answers, "nginx")

    # -- clients -------------------------------------------------------------------------

    def context(self, name: str) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.pki / "ca.pem"))
        client = self.clients[name]
        context.load_cert_chain(str(client.cert), str(client.key))
        return context

    def request(
        self,
        name: str,
        method: str,
        path: str,
        headers: dict[str, str] | None = None,
        body: bytes | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        """One request through nginx as identity ``name``: status, headers, body. Every
        manifest type is accepted (Distribution answers 404 to a GET of an OCI manifest
        whose Accept does not name it)."""
        import http.client

        headers = {"Accept": ACCEPT, **(headers or {})}

        connection = http.client.HTTPSConnection(
            "127.0.0.1", self.port, context=self.context(name), timeout=30
        )
        try:
            connection.request(method, path, body=body, headers=headers)
            response = connection.getresponse()
            return response.status, dict(response.getheaders()), response.read()
        finally:
            connection.close()

    def registry_client(self, name: str) -> Any:
        """The engine's registry client through nginx as ``name``."""
        from airgapped_registry.transport.registry import RegistryClient

        client = self.clients[name]
        return RegistryClient(
            f"https://{self.address}",
            ca_file=self.pki / "ca.pem",
            cert_file=client.cert,
            key_file=client.key,
        )

    def backend_client(self) -> Any:
        from airgapped_registry.transport.registry import RegistryClient

        return RegistryClient(self.backend)

    # -- the end -------------------------------------------------------------------------

    def _stop(self, name: str) -> None:
        process = self.processes.pop(name, None)
        if process is None:
            return
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def stop(self) -> None:
        for name in ("nginx", "gate", "registry"):
            self._stop(name)

    def __enter__(self) -> GateLab:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
