#!/usr/bin/env python3
"""Benchmark of the gate: what nginx asking the gate (``auth_request``) adds to a pull.

Prints figures; it is not a test and asserts nothing about time. See docs/performance.md,
"Gate" (issue 10, "Performance").

Everything is real and on loopback:

- Distribution (``/usr/bin/docker-registry``), the backend, holding the lab's sample
  (:mod:`airgap_lab.sample`), among it ``sample/app-001:1.0.0`` (an index of two platforms);
- two nginx gateways rendered from ``roles/gateway/templates/airgapped-registry.conf.j2``
  with the role's defaults (mutual TLS against a throwaway CA and its CRL, the JSON access
  log), in front of that backend: one **without** the gate, one **with** it;
- the gate, ``airgap gate serve`` on its unix socket, with ``gate.yaml`` (landing zone
  ``ci/``, a ``puller`` grant by OU) and the audit log in the work directory;
- the image signed (``airgap sign``, cosign, through the gateway without the gate) and
  scanned (``airgap scan now``: Trivy with the lab's fixture DB, installed by
  ``airgap scan db update`` against a lock), as on the registry host, so the gate admits it.

The client is this script: one TLS connection per worker (the ``node`` identity, OU
``puller``), kept alive, as a container runtime pulling keeps its connection; workers are
processes (no shared interpreter lock). Phases:

1. ``latency``: one worker, ``--requests`` requests of each kind per gateway and round, the
   gateways alternating over ``--rounds`` rounds (so a drift of the machine's load falls on
   both): manifest GET by tag (what a pull starts with: the gate resolves the tag, checks
   the signature and the verdict, and writes an audit record) and blob GET of a layer of
   the admitted image (the gate checks the blob belongs to an admitted manifest). Then the
   same decisions asked of the gate's socket directly ("gate alone": the headers nginx
   sends, one kept-alive connection), to tell the gate's time from nginx's subrequest.
2. ``throughput``: ``--concurrency`` workers for ``--duration`` seconds per gateway and
   kind, alternating; requests per second, and the audit records the gate wrote meanwhile.
3. ``audit``: the audit log alone, in this process: records appended per second by
   ``--concurrency`` threads, with the durability of ``gate.yaml``'s default (``fsync: 1s``:
   a record is in the page cache before the answer, on disk within a second) and with
   ``fsync: 0`` (on disk before the answer).

    .venv/bin/python bench/gate_bench.py               # everything (about 3 minutes)
    .venv/bin/python bench/gate_bench.py --quick       # a smoke run
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import http.client
import json
import multiprocessing
import os
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from ipaddress import ip_address
from pathlib import Path
from typing import Any

import jinja2
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scan_bench import Registry, free_port, load1, percentile, run, stop_process

from airgap_lab.sample import (
    TRIVY_DB_REPOSITORY,
    TRIVY_DB_TAG,
    SampleSpec,
    build,
    db_day,
    push,
)
from airgapped_registry.audit import AuditEvent, AuditLog
from airgapped_registry.audit.config import AuditConfig
from airgapped_registry.audit.keys import init_key
from airgapped_registry.audit.records import Identity
from airgapped_registry.state.store import StateStore
from airgapped_registry.state.verdicts import VerdictStore
from airgapped_registry.transport.registry import RegistryClient

PROJECT = Path(__file__).resolve().parents[1]
ROLE = PROJECT / "roles" / "gateway"
NGINX = "/usr/sbin/nginx"
VENV_BIN = Path(sys.executable).parent
PASSWORD = "bench password, never a real one"
# scripts/bootstrap puts them in the virtual environment; airgap runs with it first in PATH.
TOOLS = ("airgap", "trivy", "cosign")
REPOSITORY, TAG = "sample/app-001", "1.0.0"
UNSIGNED = ("sample/vulnerable", "1.0.0")  # pushed, never signed: the gate must refuse it
MANIFEST_ACCEPT = ", ".join(
    [
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    ]
)
TARGET_ADDED_P50_MS = 2.0  # issue 10: at most 2 ms p50 added per manifest GET
TARGET_THROUGHPUT = 0.8  # issue 10: at least 0.8x the gateway without the gate


# -- the PKI: a CA, its (empty) CRL, the gateway's server certificate, two clients --------------


@dataclass
class Pki:
    directory: Path

    def path(self, name: str) -> Path:
        return self.directory / name

    def create(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        now = dt.datetime.now(dt.UTC)
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gate bench CA")])
        ca = (
            x509.CertificateBuilder()
            .subject_name(ca_name)
            .issuer_name(ca_name)
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                critical=True,
            )
            .sign(ca_key, hashes.SHA256())
        )
        self._write("ca.crt", ca.public_bytes(serialization.Encoding.PEM))
        crl = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(ca_name)
            .last_update(now - dt.timedelta(minutes=5))
            .next_update(now + dt.timedelta(days=2))
            .sign(ca_key, hashes.SHA256())
        )
        self._write("crl.pem", crl.public_bytes(serialization.Encoding.PEM))
        server_san = x509.SubjectAlternativeName([x509.IPAddress(ip_address("127.0.0.1"))])
        leaves = [
            ("server", [("CN", "127.0.0.1")], ExtendedKeyUsageOID.SERVER_AUTH, server_san),
            ("node", [("CN", "node"), ("OU", "puller")], ExtendedKeyUsageOID.CLIENT_AUTH, None),
            ("appliance", [("CN", "appliance")], ExtendedKeyUsageOID.CLIENT_AUTH, None),
        ]
        oids = {"CN": NameOID.COMMON_NAME, "OU": NameOID.ORGANIZATIONAL_UNIT_NAME}
        for name, subject, usage, san in leaves:
            key = ec.generate_private_key(ec.SECP256R1())
            builder = (
                x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(oids[k], v) for k, v in subject]))
                .issuer_name(ca_name)
                .public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - dt.timedelta(minutes=5))
                .not_valid_after(now + dt.timedelta(days=2))
                .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            )
            if san is not None:
                builder = builder.add_extension(san, critical=False)
            cert = builder.sign(ca_key, hashes.SHA256())
            self._write(f"{name}.crt", cert.public_bytes(serialization.Encoding.PEM))
            pem = key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
            self._write(f"{name}.key", pem, 0o600)

    def _write(self, name: str, data: bytes, mode: int = 0o644) -> None:
        path = self.path(name)
        path.write_bytes(data)
        path.chmod(mode)


# -- the gateway: nginx from the role's template ---------------------------------------------


def role_site(overrides: dict[str, Any]) -> str:
    """``airgapped-registry.conf.j2`` rendered with the role's defaults and ``overrides``, the
    defaults' own expressions resolved as Ansible would (the few filters they use)."""
    environment = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    environment.filters["bool"] = lambda value: str(value).lower() in ("1", "true", "yes", "on")
    values: dict[str, Any] = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())
    values.update(overrides)
    values.setdefault("ansible_managed", "Rendered by bench/gate_bench.py")
    for _ in range(3):
        for name, value in list(values.items()):
            if isinstance(value, str) and "{{" in value:
                values[name] = environment.from_string(value).render(values)
    template = (ROLE / "templates" / "airgapped-registry.conf.j2").read_text()
    return environment.from_string(template).render(values)


@dataclass
class Gateway:
    """One nginx in front of the backend; ``gate_socket``: ask the gate there (None: no gate)."""

    name: str
    root: Path
    pki: Pki
    backend: str
    gate_socket: Path | None
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        tls = self.root / "tls"
        tls.mkdir(exist_ok=True)
        for source, target in [
            ("server.crt", "server.crt"),
            ("server.key", "server.key"),
            ("ca.crt", "ca.crt"),
            ("crl.pem", "crl.pem"),
        ]:
            shutil.copy(self.pki.path(source), tls / target)
        gate = str(self.gate_socket) if self.gate_socket else ""
        site = role_site(
            {
                "inventory_hostname": "127.0.0.1",
                "gateway_port": self.port,
                "gateway_listen_addresses": ["127.0.0.1"],
                "gateway_backend_address": self.backend,
                "gateway_backend_standby_address": "",
                "gateway_tls_dir": str(tls),
                "gateway_access_log": str(self.root / "access.log"),
                "gateway_error_log": str(self.root / "error.log"),
                # The template's gate hook, whichever form it has (socket, or URL).
                "gateway_gate_socket": gate,
                "gateway_auth_request_url": f"http://unix:{gate}:/auth" if gate else "",
                "gateway_gate_unavailable_log": str(self.root / "gate-unavailable.log"),
            }
        )
        (self.root / "site.conf").write_text(site)
        temp = self.root / "temp"
        temp.mkdir(exist_ok=True)
        # Debian's nginx.conf around the site, as on the registry host (workers: one per core).
        user = "user root;\n" if os.geteuid() == 0 else ""
        (self.root / "nginx.conf").write_text(
            f"{user}worker_processes auto;\npid {self.root}/nginx.pid;\n"
            f"error_log {self.root}/error.log warn;\n"
            "events { worker_connections 1024; }\n"
            "http {\n  sendfile on;\n  tcp_nopush on;\n  types_hash_max_size 2048;\n"
            "  default_type application/octet-stream;\n"
            + "".join(
                f"  {kind}_temp_path {temp}/{kind};\n"
                for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
            )
            + f"  include {self.root}/site.conf;\n}}\n"
        )
        argv = [NGINX, "-p", str(self.root), "-c", str(self.root / "nginx.conf")]
        check = subprocess.run([*argv, "-t"], capture_output=True, text=True)
        if check.returncode != 0:
            raise SystemExit(f"{self.name}: nginx -t refused the configuration:\n{check.stderr}")
        with (self.root / "nginx.out").open("ab") as out:
            self.process = subprocess.Popen(
                [*argv, "-g", "daemon off;"], stdout=out, stderr=subprocess.STDOUT
            )
        wait_for_port(self.port, self.name, self.process)

    def stop(self) -> None:
        stop_process(self.process)
        self.process = None


def wait_for_port(port: int, name: str, process: subprocess.Popen[Any]) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{name} exited (status {process.returncode})")
        with contextlib.suppress(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        time.sleep(0.05)
    raise SystemExit(f"{name} did not listen on 127.0.0.1:{port}")


# -- the registry host: backend, provenance, gate ---------------------------------------------


@dataclass
class Host:
    work: Path
    pki: Pki
    backend: Registry = field(init=False)
    plain: Gateway = field(init=False)
    gated: Gateway = field(init=False)
    gate: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        self.backend = Registry("backend", self.work / "backend", self.work / "storage")
        self.socket = self.work / "gate" / "gate.sock"
        self.plain = Gateway("nginx without the gate", self.work / "nginx-plain", self.pki,
                             self.backend.address, None)  # fmt: skip
        self.gated = Gateway("nginx with the gate", self.work / "nginx-gate", self.pki,
                             self.backend.address, self.socket)  # fmt: skip
        self.provenance = self.work / "provenance.yaml"
        self.policy = self.work / "gate.yaml"
        self.audit_dir = self.work / "audit"
        self.log = self.work / "commands.log"
        self.digest = ""
        self.child = ""
        self.blob = ("", 0)

    def airgap(self, *args: str) -> dict[str, Any]:
        env = {**os.environ, "PATH": f"{VENV_BIN}:/usr/bin:/bin"}
        out = run([str(VENV_BIN / "airgap"), *args], self.log, env)
        return dict(json.loads(out)) if out.strip() else {}

    def start(self) -> None:
        self.backend.start()
        self.plain.start()
        sample = build(SampleSpec(repositories=1, tags_per_repository=1), db_updated_at=db_day())
        with RegistryClient(self.backend.url, timeout=120) as client:
            push(sample, client)
            db = client.head_manifest(TRIVY_DB_REPOSITORY, TRIVY_DB_TAG)
        image = sample.artifact(f"{REPOSITORY}:{TAG}")
        self.digest = image.digest
        child = image.children[0]
        self.child = child.digest
        layer = max(child.blobs[1:], key=lambda blob: (blob.size < 65536, blob.size))
        self.blob = (layer.digest, layer.size)
        assert db is not None
        lock = self.work / "relay.lock"
        entry = {"destination": TRIVY_DB_REPOSITORY, "tag": TRIVY_DB_TAG, "digest": db.digest}
        lock.write_text(json.dumps({"version": 1, "entries": [entry]}))
        (self.work / "password").write_text(PASSWORD + "\n")
        os.chmod(self.work / "password", 0o600)
        self.provenance.write_text(
            yaml.safe_dump(
                {
                    "version": 1,
                    "backend": self.backend.url,
                    "state": str(self.work / "state.db"),
                    "scanning": {
                        "trivy": str(VENV_BIN / "trivy"),
                        "cache_dir": str(self.work / "trivy"),
                        "db": {"lock": str(lock), "max_age": "7d"},
                        "attest": False,
                        "policy": {"default": {"fail_on": "CRITICAL"}},
                    },
                    "signing": {
                        "registry": f"127.0.0.1:{self.plain.port}",
                        "ca_file": str(self.pki.path("ca.crt")),
                        "cert_file": str(self.pki.path("appliance.crt")),
                        "key_file": str(self.pki.path("appliance.key")),
                        "keys_dir": str(self.work / "keys"),
                        "password_file": str(self.work / "password"),
                        "repositories": ["ci/"],
                    },
                },
                sort_keys=False,
            )
        )
        config = ("--config", str(self.provenance))
        self.airgap("scan", "db", "update", *config)
        self.airgap("signing-key", "init", *config)
        reference = f"{REPOSITORY}@{self.digest}"
        self.airgap("sign", *config, reference)
        self.airgap("scan", "now", *config, reference)
        with StateStore(self.work / "state.db") as store:
            verdict = VerdictStore(store).verdict(REPOSITORY, self.digest)
        if verdict is None or verdict.status != "pass":
            raise SystemExit(f"{reference}: expected a pass verdict, got {verdict}")
        self.start_gate()
        self.gated.start()

    def start_gate(self) -> None:
        key = self.work / "audit-state" / "checkpoint.key"
        init_key(key)
        self.policy.write_text(
            yaml.safe_dump(
                {
                    "version": 1,
                    "landing_zones": ["ci/"],
                    "grants": [
                        {"identity": {"ou": "puller"}, "role": "puller"},
                        {"identity": {"cn": "appliance"}, "role": "scanner"},
                    ],
                    "audit": {
                        "directory": str(self.audit_dir),
                        "key": str(key),
                        "head": str(self.work / "audit-state" / "head.json"),
                        "fsync": "1s",
                    },
                },
                sort_keys=False,
            )
        )
        self.socket.parent.mkdir(parents=True, exist_ok=True)
        argv = [str(VENV_BIN / "airgap"), "gate", "serve", "--policy", str(self.policy)]
        argv += ["--provenance", str(self.provenance), "--socket", str(self.socket)]
        argv += ["--gate-down-log", str(self.gated.root / "gate-unavailable.log")]
        with (self.work / "gate.log").open("ab") as out:
            self.gate = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while not self.socket.exists():
            if self.gate.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"airgap gate serve did not start; see {self.work / 'gate.log'}")
            time.sleep(0.05)

    def stop(self) -> None:
        for gateway in (self.gated, self.plain):
            gateway.stop()
        stop_process(self.gate)
        self.backend.stop()

    def audit_records(self) -> int:
        """Request records in the audit log (every file of it)."""
        count = 0
        for path in sorted(self.audit_dir.glob("*.log")):
            with path.open("rb") as lines:
                count += sum(1 for line in lines if b'"type":"request"' in line)
        return count


# -- the client ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    kind: str  # "manifest" or "blob"
    path: str
    accept: str | None = None


def tls_context(pki_dir: str) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=os.path.join(pki_dir, "ca.crt"))
    context.load_cert_chain(os.path.join(pki_dir, "node.crt"), os.path.join(pki_dir, "node.key"))
    return context


class Client:
    """One kept-alive TLS connection to a gateway, as the ``node`` identity."""

    def __init__(self, port: int, pki_dir: str) -> None:
        self.connection = http.client.HTTPSConnection(
            "127.0.0.1", port, context=tls_context(pki_dir), timeout=30
        )

    def get(self, request: Request) -> tuple[int, float]:
        headers = {"Accept": request.accept} if request.accept else {}
        started = time.perf_counter()
        self.connection.request("GET", request.path, headers=headers)
        response = self.connection.getresponse()
        response.read()
        return response.status, time.perf_counter() - started

    def close(self) -> None:
        self.connection.close()


def timed(port: int, pki_dir: str, request: Request, count: int) -> list[float]:
    client = Client(port, pki_dir)
    try:
        for _ in range(10):  # the handshake and first answers are not what is measured
            client.get(request)
        latencies = []
        for _ in range(count):
            status, seconds = client.get(request)
            if status != 200:
                raise SystemExit(f"GET {request.path} on :{port}: status {status}")
            latencies.append(seconds)
        return latencies
    finally:
        client.close()


class GateClient:
    """The gate's socket asked directly, with the headers nginx sends for the ``node``
    certificate: what the gate itself takes, without nginx's subrequest around it."""

    def __init__(self, path: Path) -> None:
        self.connection = http.client.HTTPConnection("localhost", timeout=30)
        unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        unix.connect(str(path))
        self.connection.sock = unix

    def get(self, request: Request) -> tuple[int, float]:
        headers = {
            "X-Original-Method": "GET",
            "X-Original-URI": request.path,
            "X-Real-IP": "127.0.0.1",
            "X-Request-ID": "0" * 32,
            "X-SSL-Client-Verify": "SUCCESS",
            "X-SSL-Client-S-DN": "OU=puller,CN=node",
            "X-SSL-Client-I-DN": "CN=gate bench CA",
            "X-SSL-Client-Serial": "01",
            "X-SSL-Client-Fingerprint": "0" * 40,
        }
        started = time.perf_counter()
        self.connection.request("GET", "/auth", headers=headers)
        response = self.connection.getresponse()
        response.read()
        return response.status, time.perf_counter() - started

    def close(self) -> None:
        self.connection.close()


def timed_gate(path: Path, request: Request, count: int) -> list[float]:
    client = GateClient(path)
    try:
        for _ in range(10):
            client.get(request)
        latencies = []
        for _ in range(count):
            status, seconds = client.get(request)
            if status != 200:
                raise SystemExit(f"the gate on {path}: {request.path}: status {status}")
            latencies.append(seconds)
        return latencies
    finally:
        client.close()


def worker(port: int, pki_dir: str, request: Request, start: float, end: float) -> int:
    """Requests completed between ``start`` and ``end`` (monotonic) by one connection."""
    client = Client(port, pki_dir)
    done = 0
    try:
        client.get(request)
        while time.monotonic() < start:
            time.sleep(0.001)
        while time.monotonic() < end:
            status, _ = client.get(request)
            if status != 200:
                raise SystemExit(f"GET {request.path} on :{port}: status {status}")
            done += 1
        return done
    finally:
        client.close()


def throughput(
    port: int, pki_dir: str, request: Request, concurrency: int, duration: float
) -> float:
    context = multiprocessing.get_context("fork")
    start = time.monotonic() + 1.0  # every worker connected before the clock starts
    with context.Pool(concurrency) as pool:
        counts = pool.starmap(
            worker, [(port, pki_dir, request, start, start + duration)] * concurrency
        )
    return sum(counts) / duration


# -- the audit log alone ---------------------------------------------------------------------


def audit_rate(work: Path, fsync: float, threads: int, seconds: float) -> float:
    directory = work / f"audit-alone-{fsync:g}"
    config = AuditConfig(
        directory=directory,
        key=work / "audit-state" / "checkpoint.key",
        head=work / f"audit-alone-{fsync:g}-head.json",
        fsync=fsync,
    )
    log = AuditLog.open(config)
    event = AuditEvent(
        identity=Identity(subject="CN=node,OU=puller", serial="01", issuer="CN=gate bench CA"),
        client="127.0.0.1",
        request_id="0" * 32,
        action="pull",
        method="GET",
        repository=REPOSITORY,
        reference=TAG,
        digest="sha256:" + "0" * 64,
        decision="allow",
        reason="signed+pass",
    )
    counts = [0] * threads
    end = time.monotonic() + seconds

    def append(index: int) -> None:
        while time.monotonic() < end:
            log.append(event)
            counts[index] += 1

    workers = [threading.Thread(target=append, args=(n,)) for n in range(threads)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()
    log.close()
    return sum(counts) / seconds


# -- the run ---------------------------------------------------------------------------------


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f}"


@contextlib.contextmanager
def host(keep: bool) -> Iterator[Host]:
    work = Path(tempfile.mkdtemp(prefix="gate-bench-"))
    pki = Pki(work / "pki")
    pki.create()
    site = Host(work, pki)
    try:
        site.start()
        yield site
    finally:
        site.stop()
        if keep:
            print(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=500, help="per kind, gateway and round")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--concurrency", type=int, default=8, help="connections for throughput")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per throughput run")
    parser.add_argument("--quick", action="store_true", help="a smoke run (small numbers)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--json", metavar="FILE", help="also write the figures here")
    args = parser.parse_args()
    if args.quick:
        args.requests, args.rounds, args.duration = 50, 2, 2.0
    for program in (NGINX, "/usr/bin/docker-registry", *(str(VENV_BIN / t) for t in TOOLS)):
        if shutil.which(program) is None:
            raise SystemExit(f"{program}: not found (run ./scripts/bootstrap)")

    figures: dict[str, Any] = {"cores": os.cpu_count(), "load1_before": load1()}
    started = time.monotonic()
    with host(args.keep) as site:
        pki_dir = str(site.pki.directory)
        manifest = Request("manifest", f"/v2/{REPOSITORY}/manifests/{TAG}", MANIFEST_ACCEPT)
        blob = Request("blob", f"/v2/{REPOSITORY}/blobs/{site.blob[0]}")
        child = Request("manifest", f"/v2/{REPOSITORY}/manifests/{site.child}", MANIFEST_ACCEPT)
        # The gate is in the path: the unsigned image passes without it, not with it; and
        # the image's child is admitted (so its blobs are) before blobs are asked for.
        unsigned = Request(
            "manifest", f"/v2/{UNSIGNED[0]}/manifests/{UNSIGNED[1]}", MANIFEST_ACCEPT
        )
        probe_plain, probe_gated = (
            Client(site.plain.port, pki_dir),
            Client(site.gated.port, pki_dir),
        )
        statuses = {
            "unsigned without the gate": probe_plain.get(unsigned)[0],
            "unsigned with the gate": probe_gated.get(unsigned)[0],
            "signed child with the gate": probe_gated.get(child)[0],
        }
        probe_plain.close()
        probe_gated.close()
        if list(statuses.values()) != [200, 403, 200]:
            raise SystemExit(f"the gate is not deciding as expected: {statuses}")
        figures["setup_seconds"] = round(time.monotonic() - started, 1)

        gateways = {"plain": site.plain, "gate": site.gated}
        latencies: dict[tuple[str, str], list[float]] = {}
        for round_number in range(args.rounds):
            order = ["plain", "gate"] if round_number % 2 == 0 else ["gate", "plain"]
            for name in order:
                for request in (manifest, blob):
                    latencies.setdefault((name, request.kind), []).extend(
                        timed(gateways[name].port, pki_dir, request, args.requests)
                    )
            for request in (manifest, blob):
                latencies.setdefault(("alone", request.kind), []).extend(
                    timed_gate(site.socket, request, args.requests)
                )
        rates: dict[tuple[str, str], list[float]] = {}
        audit: list[float] = []
        for request in (manifest, blob):
            for name in ("plain", "gate", "gate", "plain"):
                before = site.audit_records()
                rate = throughput(
                    gateways[name].port, pki_dir, request, args.concurrency, args.duration
                )
                rates.setdefault((name, request.kind), []).append(rate)
                if name == "gate" and request.kind == "manifest":
                    # Records reach the file before the answer: counted right after the run.
                    audit.append((site.audit_records() - before) / args.duration)
        figures["load1_after_requests"] = load1()
        alone_seconds = max(2.0, args.duration / 2)
        alone = {
            fsync: audit_rate(site.work, fsync, args.concurrency, alone_seconds)
            for fsync in (1.0, 0.0)
        }
    figures["load1_after"] = load1()
    figures["minutes"] = round((time.monotonic() - started) / 60, 1)

    rows = []
    for kind, label in (("manifest", "manifest GET by tag"), ("blob", "blob GET")):
        plain, gated = latencies[("plain", kind)], latencies[("gate", kind)]
        direct = latencies[("alone", kind)]
        for fraction in (0.5, 0.99):
            a, b = percentile(plain, fraction), percentile(gated, fraction)
            c = percentile(direct, fraction)
            name = f"{label} p{round(fraction * 100)} (ms)"
            rows.append((name, ms(a), ms(b), f"{(b - a) * 1000:+.2f}", ms(c)))
            figures[f"{kind}_p{round(fraction * 100)}_ms"] = [ms(a), ms(b), ms(b - a), ms(c)]
    for kind, label in (("manifest", "manifest GET/s"), ("blob", "blob GET/s")):
        a = sum(rates[("plain", kind)]) / 2
        b = sum(rates[("gate", kind)]) / 2
        rows.append(
            (f"{label} ({args.concurrency} conn.)", f"{a:.0f}", f"{b:.0f}", f"{b / a:.2f}x", "")
        )
        figures[f"{kind}_rps"] = [round(a), round(b), round(b / a, 2)]
    figures["audit_records_per_s_under_load"] = round(sum(audit) / len(audit))
    figures["audit_append_per_s"] = {f"fsync {k:g}s": round(v) for k, v in alone.items()}
    figures["statuses"] = statuses
    figures["blob_bytes"] = site.blob[1]

    print(
        f"\ngate bench: {figures['cores']} cores; load1 {figures['load1_before']:.2f} before,"
        f" {figures['load1_after_requests']:.2f} after the requests; {figures['minutes']} min"
    )
    print(f"{'':38} {'no gate':>10} {'gate':>10} {'added':>10} {'gate alone':>11}")
    for name, a, b, added, alone_figure in rows:
        print(f"{name:38} {a:>10} {b:>10} {added:>10} {alone_figure:>11}")
    print(
        f"\naudit records written during the gated manifest runs: "
        f"{figures['audit_records_per_s_under_load']}/s (one per manifest GET; fsync within 1 s)"
    )
    print(
        "audit log alone, "
        f"{args.concurrency} threads: {alone[1.0]:.0f} records/s with fsync: 1s (page cache"
        f" before the answer, disk within 1 s); {alone[0.0]:.0f}/s with fsync: 0 (disk before"
        " the answer)"
    )
    p50_added = float(figures["manifest_p50_ms"][2])
    ratio = figures["manifest_rps"][2]
    latency_met = "meets" if p50_added <= TARGET_ADDED_P50_MS else "misses"
    throughput_met = "meets" if ratio >= TARGET_THROUGHPUT else "misses"
    verdicts = [
        f"manifest GET p50 added {p50_added:.2f} ms ({latency_met} the"
        f" {TARGET_ADDED_P50_MS} ms target)",
        f"manifest throughput {ratio}x ({throughput_met} the {TARGET_THROUGHPUT}x target)",
    ]
    print("\n" + "; ".join(verdicts))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
