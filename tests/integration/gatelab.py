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
            "log": {"level": "warn", "accesslog": {"disabled": True}},
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
