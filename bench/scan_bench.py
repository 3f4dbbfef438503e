#!/usr/bin/env python3
"""Benchmark of the scan service: push → verdict, the push beside it, rescans, reconciliation.

Prints figures; it is not a test and asserts nothing about time. See docs/performance.md,
"Scanning" (issue 9, "Performance").

Everything is real and on loopback: Distribution processes (``/usr/bin/docker-registry``),
``skopeo copy``, ``airgap scan serve`` as a process of its own, Trivy (``.venv/bin/trivy``)
with the lab's fixture DB (:mod:`airgap_lab.trivydb`, carried by the sample as
``aquasecurity/trivy-db:2``) installed by ``airgap scan db update`` against a lock, as on the
registry host, and cosign with a key made by ``airgap signing-key init``.

- a **source** registry seeded with :mod:`airgap_lab.sample` (the images pushed);
- a **backend** (plain HTTP, notifying the service, as Distribution on the host) and a
  **gateway** (a second Distribution on the same storage, mutual TLS, notifying too: what
  nginx in front of the backend is on the host; cosign signs and attests through it);
- a **quiet** registry without notifications, for the same pushes with no scanner.

Phases (each on fresh storage, state and Trivy cache):

1. ``push``: ``--pushes`` images (``sample/app-NNN``, each an index of two platforms) copied
   one at a time with ``skopeo copy --all`` into the quiet registry, then into the backend,
   where the time until the index's verdict is in the state database is measured; first with
   a service that only scans (no signing section, ``attest: false``), then into ``ci/`` with
   a service that attests and signs (``attest: true``, ``signing.repositories: [ci/]``).
   Then ``--burst`` images pushed back to back while the service scans.
2. ``lab``: the lab's sample (``SampleSpec()``, as ``airgap-lab sample push`` serves it) in
   the backend; the service's first pass over it, then a new DB (another ``UpdatedAt``,
   lock and ``airgap scan db update``) and its rescan of everything; ``airgap scan reconcile``
   with nothing to do; then (unless ``--no-compare-modes``) the same scans made in this
   process by the engine's scanner, one Trivy process per image against Trivy's
   client/server mode, each cold and after a new DB.
3. ``scale``: the same at ``--repositories`` (default 160: 500 served digests with the
   showcase content).

Trivy and cosign are run through wrappers (in the work directory) that log each run's
subcommand, start and end: that is how processes are counted and their time split out.

    .venv/bin/python bench/scan_bench.py                    # everything (12-20 minutes)
    .venv/bin/python bench/scan_bench.py --quick            # a smoke run (a few minutes)
    .venv/bin/python bench/scan_bench.py --phases push --pushes 30
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

import airgapped_registry
from airgap_lab.sample import (
    APP_REPOSITORY_PREFIX,
    TRIVY_DB_REPOSITORY,
    TRIVY_DB_TAG,
    Sample,
    SampleSpec,
    build,
    db_day,
    push,
)
from airgapped_registry.scanning import db as vulndb
from airgapped_registry.scanning.scanner import Scanner
from airgapped_registry.state.store import StateStore
from airgapped_registry.state.verdicts import VerdictStore
from airgapped_registry.transport.registry import RegistryClient

DISTRIBUTION = "/usr/bin/docker-registry"
SKOPEO = "/usr/bin/skopeo"
VENV_BIN = Path(sys.executable).parent
PASSWORD = "bench password, never a real one"
PUSH_TARGET = 10.0  # issue 9: push → verdict p50 under 10 s on 2 cores
POLL = 0.05


# -- processes -------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def load1() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def run(argv: list[str], log: Path, env: dict[str, str] | None = None) -> str:
    """Run ``argv`` to its end; its stdout. A failure stops the bench, naming the command."""
    completed = subprocess.run(argv, capture_output=True, text=True, env=env)
    with log.open("a") as out:
        out.write(f"$ {' '.join(argv)}\n[exit {completed.returncode}]\n")
        out.write(completed.stdout[-20000:] + completed.stderr[-20000:] + "\n")
    if completed.returncode != 0:
        sys.stderr.write(completed.stderr[-3000:] + completed.stdout[-2000:])
        raise SystemExit(f"failed (exit {completed.returncode}): {' '.join(argv[:4])} ...")
    return completed.stdout


@dataclass
class Pki:
    """A throwaway CA, a server certificate for 127.0.0.1 and a client (the appliance)."""

    directory: Path

    @property
    def ca(self) -> Path:
        return self.directory / "ca.crt"

    def path(self, name: str) -> Path:
        return self.directory / name

    def create(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes")

        def openssl(*args: str) -> None:
            subprocess.run(["openssl", *args], cwd=self.directory, check=True, capture_output=True)

        openssl(
            *("req", "-x509", *ec, "-days", "2", "-keyout", "ca.key", "-out", "ca.crt"),
            *("-subj", "/CN=scan bench CA"),
            *("-addext", "basicConstraints=critical,CA:TRUE"),
            *("-addext", "keyUsage=critical,keyCertSign,cRLSign"),
        )
        for name, extensions in (
            ("server", "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n"),
            ("client", "extendedKeyUsage=clientAuth\n"),
        ):
            (self.directory / f"{name}.ext").write_text(extensions)
            openssl(
                *("req", "-new", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr"),
                *("-subj", f"/CN={'127.0.0.1' if name == 'server' else 'appliance'}"),
            )
            openssl(
                *("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key"),
                *("-CAcreateserial", "-days", "2", "-out", f"{name}.crt"),
                *("-extfile", f"{name}.ext"),
            )


@dataclass
class Registry:
    """One Distribution process. ``notify``: its notifications' URL; ``pki``: mutual TLS."""

    name: str
    root: Path
    storage: Path
    notify: str | None = None
    pki: Pki | None = None
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"{'https' if self.pki else 'http'}://{self.address}"

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        http_config: dict[str, Any] = {"addr": self.address, "secret": "scan-bench"}
        if self.pki:
            http_config["tls"] = {
                "certificate": str(self.pki.path("server.crt")),
                "key": str(self.pki.path("server.key")),
                "clientcas": [str(self.pki.ca)],
            }
        config: dict[str, Any] = {
            "version": 0.1,
            "log": {"level": "warn", "formatter": "text", "accesslog": {"disabled": True}},
            "storage": {
                "filesystem": {"rootdirectory": str(self.storage)},
                "delete": {"enabled": True},
                "maintenance": {"uploadpurging": {"enabled": False}},
            },
            "http": http_config,
        }
        if self.notify:
            # As roles/scanner configures the host's Distribution.
            config["notifications"] = {
                "endpoints": [
                    {
                        "name": "scanner",
                        "url": self.notify,
                        "timeout": "2s",
                        "threshold": 3,
                        "backoff": "1s",
                        "ignore": {"actions": ["pull"]},
                    }
                ]
            }
        path = self.root / "config.yml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        with (self.root / "registry.log").open("ab") as log:
            self.process = subprocess.Popen(
                [DISTRIBUTION, "serve", str(path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={"PATH": "/usr/bin:/bin"},
            )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"{self.name}: docker-registry exited; see {self.root}")
            with contextlib.suppress(OSError):
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            time.sleep(0.05)
        raise SystemExit(f"{self.name}: docker-registry did not listen on {self.address}")

    def stop(self) -> None:
        stop_process(self.process)
        self.process = None


def stop_process(process: subprocess.Popen[Any] | None, timeout: float = 30) -> None:
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


# -- tool wrappers: count Trivy and cosign runs ------------------------------------------------

WRAPPER = """#!/bin/bash
# Written by bench/scan_bench.py: one line per run (subcommand, start, end, exit status).
start=$EPOCHREALTIME
{real} "$@"
status=$?
echo "$1 $start $EPOCHREALTIME $status" >> {log}
exit $status
"""


Span = tuple[str, float, float]  # a logged run: subcommand, start, end (epoch seconds)


@dataclass
class ToolLog:
    """The runs a wrapper logged: ``(subcommand, start, end, status)``, wall-clock seconds."""

    path: Path

    def spans(
        self, since: float = 0.0, until: float = float("inf")
    ) -> list[tuple[str, float, float]]:
        """``(subcommand, start, end)`` of the runs that started between the two times."""
        if not self.path.exists():
            return []
        found = []
        for line in self.path.read_text().splitlines():
            parts = line.split()
            if len(parts) == 4 and since <= float(parts[1]) <= until:
                found.append((parts[0], float(parts[1]), float(parts[2])))
        return found

    def runs(self, since: float = 0.0, until: float = float("inf")) -> list[tuple[str, float]]:
        return [(name, end - start) for name, start, end in self.spans(since, until)]


def in_flight(spans: list[Span], start: float, end: float) -> str:
    """Seconds between ``start`` and ``end`` with 0, 1 and 2 or more ``image`` runs going."""
    events = sorted(
        [(a, 1) for name, a, _ in spans if name == "image"]
        + [(b, -1) for name, _, b in spans if name == "image"]
    )
    shares = [0.0, 0.0, 0.0]
    running, last = 0, start
    for moment, change in [*events, (end, 0)]:
        moment = min(max(moment, start), end)
        shares[min(running, 2)] += moment - last
        running, last = running + change, moment
    return " / ".join(f"{share:.1f}" for share in shares)


def write_wrapper(directory: Path, name: str, real: Path) -> ToolLog:
    directory.mkdir(parents=True, exist_ok=True)
    log = directory.parent / f"{name}-runs.log"
    wrapper = directory / name
    wrapper.write_text(WRAPPER.format(real=real, log=log))
    wrapper.chmod(0o755)
    return ToolLog(log)


def summary(runs: list[tuple[str, float]], subcommand: str) -> tuple[int, float]:
    walls = [wall for name, wall in runs if name == subcommand]
    return len(walls), sum(walls)


# -- one site: backend + gateway, provenance.yaml, the service ---------------------------------


@dataclass
class Site:
    """A registry host on loopback: backend, gateway, state, Trivy cache, provenance files."""

    work: Path
    pki: Pki
    tools_dir: Path
    trivy: Path
    port: int = field(default_factory=free_port)
    backend: Registry = field(init=False)
    gateway: Registry = field(init=False)
    service: subprocess.Popen[str] | None = None
    registries: list[Registry] = field(default_factory=list)
    db_hours: int = 0

    def __post_init__(self) -> None:
        storage = self.work / "storage"
        events = f"http://127.0.0.1:{self.port}/events"
        self.backend = Registry("backend", self.work / "backend", storage, notify=events)
        self.gateway = Registry("gateway", self.work / "gateway", storage, events, self.pki)
        self.lock = self.work / "relay.lock"
        self.state = self.work / "state.db"
        self.cache = self.work / "trivy"
        self.log = self.work / "commands.log"

    def start(self) -> None:
        for registry in (self.backend, self.gateway):
            self.registries.append(registry)
            registry.start()
        self.write_config("scan.yaml", sign=False)
        self.write_config("sign.yaml", sign=True)
        (self.work / "password").write_text(PASSWORD + "\n")
        os.chmod(self.work / "password", 0o600)
        self.airgap("signing-key", "init", "--config", str(self.config(True)))

    def stop(self) -> None:
        self.stop_service()
        for registry in self.registries:
            registry.stop()

    def config(self, sign: bool) -> Path:
        return self.work / ("sign.yaml" if sign else "scan.yaml")

    def write_config(self, name: str, *, sign: bool) -> None:
        """provenance.yaml as roles/scanner writes it; ``sign``: attest, and sign ``ci/``."""
        document: dict[str, Any] = {
            "version": 1,
            "backend": self.backend.url,
            "state": str(self.state),
            "scanning": {
                "trivy": str(self.trivy),
                "cache_dir": str(self.cache),
                "db": {"lock": str(self.lock), "max_age": "7d"},
                "listen": f"127.0.0.1:{self.port}",
                "workers": 2,
                "reconcile_interval": "1h",
                "attest": sign,
                "policy": {"default": {"fail_on": "CRITICAL"}},
            },
        }
        if sign:
            document["signing"] = {
                "registry": self.gateway.address,
                "ca_file": str(self.pki.ca),
                "cert_file": str(self.pki.path("client.crt")),
                "key_file": str(self.pki.path("client.key")),
                "keys_dir": str(self.work / "keys"),
                "password_file": str(self.work / "password"),
                "repositories": ["ci/"],
            }
        (self.work / name).write_text(yaml.safe_dump(document, sort_keys=False))

    def env(self) -> dict[str, str]:
        # The wrappers first: the signer runs "cosign" from PATH.
        path = f"{self.tools_dir}:{VENV_BIN}:/usr/bin:/bin"
        return {**os.environ, "PATH": path}

    def airgap(self, *args: str) -> dict[str, Any]:
        out = run([str(VENV_BIN / "airgap"), *args], self.log, self.env())
        return dict(json.loads(out)) if out.strip() else {}

    def next_db_time(self) -> datetime:
        """Another ``UpdatedAt`` each time (so another DB digest): today, plus an hour each."""
        moment = db_day() + timedelta(hours=self.db_hours)
        self.db_hours += 1
        return moment

    def install_db(self, updated_at: datetime) -> tuple[str, float]:
        """Push a DB with ``updated_at`` to the backend, lock it, ``airgap scan db update``."""
        sample = build(SampleSpec(repositories=0), db_updated_at=updated_at)
        only_db = replace(
            sample,
            artifacts=tuple(a for a in sample.artifacts if a.repository == TRIVY_DB_REPOSITORY),
        )
        with RegistryClient(self.backend.url, timeout=120) as client:
            push(only_db, client)
            head = client.head_manifest(TRIVY_DB_REPOSITORY, TRIVY_DB_TAG)
        assert head is not None
        entry = {"destination": TRIVY_DB_REPOSITORY, "tag": TRIVY_DB_TAG, "digest": head.digest}
        self.lock.write_text(json.dumps({"version": 1, "entries": [entry]}))
        started = time.monotonic()
        self.airgap("scan", "db", "update", "--config", str(self.config(False)))
        return head.digest, time.monotonic() - started

    def start_service(self, sign: bool) -> None:
        self.stop_service()
        log = (self.work / "serve.log").open("a")
        self.service = subprocess.Popen(
            [
                *(str(VENV_BIN / "airgap"), "scan", "serve", "--config", str(self.config(sign))),
                *("--cosign", str(self.tools_dir / "cosign")),
            ],
            stdout=subprocess.DEVNULL,
            stderr=log,
            text=True,
            env=self.env(),
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.service.poll() is not None:
                raise SystemExit(f"airgap scan serve exited; see {self.work / 'serve.log'}")
            try:
                connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                connection.request("GET", "/healthz")
                if connection.getresponse().status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise SystemExit(f"airgap scan serve did not answer on 127.0.0.1:{self.port}")

    def stop_service(self) -> None:
        stop_process(self.service, timeout=120)
        self.service = None

    @contextlib.contextmanager
    def verdicts(self) -> Iterator[VerdictStore]:
        with StateStore(self.state) as store:
            yield VerdictStore(store)

    def wait_for_verdict(self, repository: str, digest: str, timeout: float = 600) -> float:
        """Poll the state until ``repository@digest`` has a verdict; the moment it had one."""
        deadline = time.monotonic() + timeout
        with self.verdicts() as verdicts:
            while time.monotonic() < deadline:
                if verdicts.verdict(repository, digest) is not None:
                    return time.monotonic()
                time.sleep(POLL)
        raise SystemExit(f"no verdict for {repository}@{digest} within {timeout} s")

    def wait_for_pass(self, since: str, timeout: float = 3600) -> tuple[float, float]:
        """Wait until a reconciliation started after ``since`` (ISO) has run and the queue is
        empty; (the moment the pass was done, the moment the reconciliation finished)."""
        deadline = time.monotonic() + timeout
        with self.verdicts() as verdicts:
            while time.monotonic() < deadline:
                last = verdicts.last_reconciliation()
                if last and last.started_at > since and last.finished_at:
                    reconciled = time.monotonic()
                    while time.monotonic() < deadline:
                        if verdicts.queue_depth() == 0:
                            return time.monotonic(), reconciled
                        time.sleep(POLL)
                time.sleep(POLL)
        raise SystemExit(f"the service did not finish a pass within {timeout} s")

    def statuses(self) -> Counter[str]:
        with self.verdicts() as verdicts:
            return Counter(status for status, _ in verdicts.verdict_keys().values())


def utc_iso() -> str:
    return datetime.now(UTC).isoformat()


# -- measuring -------------------------------------------------------------------------------


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile (p95 of 20 values is the 19th)."""
    ordered = sorted(values)
    rank = max(1, -(-round(fraction * 100) * len(ordered) // 100))
    return ordered[min(rank, len(ordered)) - 1]


def skopeo_copy(source: str, destination: str) -> float:
    argv = [SKOPEO, "--insecure-policy", "copy", "--all", "--src-tls-verify=false"]
    argv += ["--dest-tls-verify=false", f"docker://{source}", f"docker://{destination}"]
    started = time.monotonic()
    completed = subprocess.run(argv, capture_output=True, text=True)
    if completed.returncode != 0:
        raise SystemExit(f"skopeo copy {source} {destination}: {completed.stderr.strip()}")
    return time.monotonic() - started


@dataclass
class PushRow:
    push_quiet: float
    push_scanned: float
    latency: float
    trivy_runs: int
    trivy_seconds: float
    cosign_runs: int
    cosign_seconds: float
    load: float


def rest(row: PushRow) -> float:
    """Push → verdict less the push, Trivy and cosign: the notification, the queue, the
    layouts written from the backend, the state; Trivy runs side by side count once each."""
    return row.latency - row.push_scanned - row.trivy_seconds - row.cosign_seconds


def push_phase(
    args: argparse.Namespace,
    work: Path,
    pki: Pki,
    tools: Path,
    trivy_log: ToolLog,
    cosign_log: ToolLog,
    stack: contextlib.ExitStack,
) -> list[str]:
    out = ["## push → verdict", ""]
    pushes, burst = args.pushes, args.burst
    spec = SampleSpec(
        repositories=2 * pushes + burst,
        tags_per_repository=1,
        unique_layer_bytes=args.unique_layer_bytes,
        base_layer_bytes=args.base_layer_bytes,
    )
    sample = build(spec)
    source = Registry("source", work / "source", work / "source" / "storage")
    quiet = Registry("quiet", work / "quiet", work / "quiet" / "storage")
    for registry in (source, quiet):
        stack.callback(registry.stop)
        registry.start()
    started = time.monotonic()
    with RegistryClient(source.url, timeout=120) as client:
        push(sample, client)
    print(f"push: seeded the source ({spec}) in {time.monotonic() - started:.1f} s", flush=True)
    site = Site(work / "site", pki, tools, tools / "trivy")
    stack.callback(site.stop)
    site.start()
    site.install_db(site.next_db_time())
    out.append(cosign_alone(site))
    out.append("")
    tag = "1.0.0"
    digests = {a.repository: a.digest for a in sample.artifacts}

    def one(number: int, prefix: str) -> PushRow:
        repository = f"{APP_REPOSITORY_PREFIX}{number:03d}"
        image = f"{source.address}/{repository}:{tag}"
        target = f"{prefix}{repository.rsplit('/', 1)[1]}"
        load = load1()
        quiet_seconds = skopeo_copy(image, f"{quiet.address}/{target}:{tag}")
        wall = time.time()
        begun = time.monotonic()
        scanned_seconds = skopeo_copy(image, f"{site.backend.address}/{target}:{tag}")
        done = site.wait_for_verdict(target, digests[repository])
        # The wrappers log at the end of each run: let the last line land.
        time.sleep(0.2)
        runs_t = trivy_log.runs(wall, time.time())
        runs_c = cosign_log.runs(wall, time.time())
        trivy_runs, trivy_seconds = summary(runs_t, "image")
        cosign_runs = len(runs_c)
        cosign_seconds = sum(w for _, w in runs_c)
        return PushRow(
            quiet_seconds,
            scanned_seconds,
            done - begun,
            trivy_runs,
            trivy_seconds,
            cosign_runs,
            cosign_seconds,
            load,
        )

    results: dict[str, list[PushRow]] = {}
    for label, sign, prefix, first in (
        ("scan only", False, "bench/", 1),
        ("scan + attest + sign", True, "ci/", pushes + 1),
    ):
        site.start_service(sign)
        rows = []
        for number in range(first, first + pushes):
            row = one(number, prefix)
            rows.append(row)
            print(
                f"push {label} #{number}: quiet {row.push_quiet:.2f} s, with the service "
                f"{row.push_scanned:.2f} s, verdict after {row.latency:.2f} s (trivy "
                f"{row.trivy_runs}x {row.trivy_seconds:.2f} s, cosign {row.cosign_runs}x "
                f"{row.cosign_seconds:.2f} s), load {row.load:.2f}",
                flush=True,
            )
        results[label] = rows
        if sign:
            # The signed pushes: back to back, while the service works through them.
            burst_rows = []
            first_burst = 2 * pushes + 1
            begun = time.monotonic()
            for number in range(first_burst, first_burst + burst):
                repository = f"{APP_REPOSITORY_PREFIX}{number:03d}"
                image = f"{source.address}/{repository}:{tag}"
                target = f"ci/{repository.rsplit('/', 1)[1]}"
                burst_rows.append(skopeo_copy(image, f"{site.backend.address}/{target}:{tag}"))
            last = max(
                site.wait_for_verdict(
                    f"ci/{APP_REPOSITORY_PREFIX.rsplit('/', 1)[1]}{n:03d}",
                    digests[f"{APP_REPOSITORY_PREFIX}{n:03d}"],
                )
                for n in range(first_burst, first_burst + burst)
            )
            results["burst"] = [
                PushRow(0, seconds, last - begun, 0, 0, 0, 0, 0) for seconds in burst_rows
            ]
        site.stop_service()
    out.append(
        "| service | pushes | push, no scanner (median) | push, service running (median) "
        "| push → verdict p50 | p95 | max | of which after the push (median) "
        "| trivy runs per push | trivy s per push | cosign runs per push | cosign s per push "
        "| the rest (median) | load (1 min) |"
    )
    out.append("|" + "---|" * 14)
    for label in ("scan only", "scan + attest + sign"):
        rows = results[label]
        latencies = [row.latency for row in rows]
        out.append(
            f"| {label} | {len(rows)} | {statistics.median(r.push_quiet for r in rows):.2f} s "
            f"| {statistics.median(r.push_scanned for r in rows):.2f} s "
            f"| {statistics.median(latencies):.2f} s | {percentile(latencies, 0.95):.2f} s "
            f"| {max(latencies):.2f} s "
            f"| {statistics.median(r.latency - r.push_scanned for r in rows):.2f} s "
            f"| {statistics.mean(r.trivy_runs for r in rows):.1f} "
            f"| {statistics.mean(r.trivy_seconds for r in rows):.2f} s "
            f"| {statistics.mean(r.cosign_runs for r in rows):.1f} "
            f"| {statistics.mean(r.cosign_seconds for r in rows):.2f} s "
            f"| {statistics.median(rest(r) for r in rows):.2f} s "
            f"| {min(r.load for r in rows):.2f}-{max(r.load for r in rows):.2f} |"
        )
    out.append("")
    for label in ("scan only", "scan + attest + sign"):
        latencies = [row.latency for row in results[label]]
        p50 = statistics.median(latencies)
        verdict = "met" if p50 < PUSH_TARGET else "NOT met"
        out.append(f"- {label}: p50 {p50:.2f} s (target under {PUSH_TARGET:.0f} s): {verdict}")
        out.append("  latencies: " + ", ".join(f"{v:.2f}" for v in latencies))
    if burst:
        rows = results["burst"]
        out.append(
            f"- burst of {burst} signed pushes back to back: median push "
            f"{statistics.median(r.push_scanned for r in rows):.2f} s (pushes "
            + ", ".join(f"{r.push_scanned:.2f}" for r in rows)
            + f"); the last verdict {rows[0].latency:.2f} s after the first push began"
        )
    out.append("")
    for label, rows in results.items():
        if label != "burst":
            pairs = ", ".join(f"{r.push_quiet:.2f}/{r.push_scanned:.2f}" for r in rows)
            out.append(f"- pushes {label} (no scanner / service running, s): {pairs}")
    site.stop()
    source.stop()
    quiet.stop()
    return out


# -- whole-registry passes ---------------------------------------------------------------------


@dataclass
class Pass:
    name: str
    wall: float
    detect: float
    manifests: int
    trivy_runs: int
    trivy_seconds: float
    statuses: dict[str, int]
    load: float
    flight: str = ""

    def row(self) -> str:
        rate = self.manifests / self.wall * 60 if self.wall else 0.0
        per = self.trivy_seconds / self.trivy_runs if self.trivy_runs else 0.0
        busy = self.trivy_seconds / (self.wall - self.detect) if self.wall > self.detect else 0.0
        return (
            f"| {self.name} | {self.wall:.1f} s | {self.detect:.1f} s | {self.manifests} "
            f"| {rate:.0f} | {self.trivy_runs} | {per:.2f} s | {busy:.2f} | {self.flight} "
            f"| {self.load:.2f} "
            f"| {json.dumps(self.statuses, sort_keys=True)} |"
        )


PASS_HEADER = (
    "| pass | wall | of which until the reconciliation queued it | image manifests scanned "
    "| images per minute | trivy processes | trivy wall per process "
    "| trivy runs at a time (mean) | seconds with 0 / 1 / 2+ trivy runs "
    "| load (1 min) | verdicts |\n|" + "---|" * 11
)


def image_manifests(sample: Sample) -> int:
    """Platform manifests Trivy reads: every image child, and single-manifest images."""
    count = 0
    for artifact in sample.artifacts:
        if artifact.children:
            count += len(artifact.children)
        elif artifact.repository.startswith("sample/"):
            count += 1
    return count


def registry_phase(
    args: argparse.Namespace,
    name: str,
    spec: SampleSpec,
    work: Path,
    pki: Pki,
    tools: Path,
    trivy_log: ToolLog,
    stack: contextlib.ExitStack,
) -> list[str]:
    out = [f"## {name}: {spec}", ""]
    site = Site(work / name, pki, tools, tools / "trivy")
    stack.callback(site.stop)
    site.start()
    day = db_day()
    sample = build(spec, db_updated_at=day)
    started = time.monotonic()
    with RegistryClient(site.backend.url, timeout=120) as client:
        push(sample, client)
    print(f"{name}: seeded the backend in {time.monotonic() - started:.1f} s", flush=True)
    manifests = image_manifests(sample)
    site.install_db(site.next_db_time())
    passes = []

    def measured(label: str, trigger: Any) -> Pass:
        load = load1()
        since = utc_iso()
        wall = time.time()
        begun = time.monotonic()
        trigger()
        done, reconciled = site.wait_for_pass(since)
        queued_at = wall + (reconciled - begun)
        finished_at = wall + (done - begun)
        time.sleep(0.2)
        spans = trivy_log.spans(wall, time.time())
        trivy_runs, trivy_seconds = summary(trivy_log.runs(wall, time.time()), "image")
        found = Pass(
            label,
            done - begun,
            reconciled - begun,
            manifests,
            trivy_runs,
            trivy_seconds,
            dict(site.statuses()),
            load,
            in_flight(spans, queued_at, finished_at),
        )
        print(f"{name}: {found.row()}", flush=True)
        return found

    passes.append(
        measured("first scan (service start, cold caches)", lambda: site.start_service(False))
    )
    new_db: dict[str, Any] = {}

    def change_db() -> None:
        digest, seconds = site.install_db(site.next_db_time())
        new_db.update(digest=digest, seconds=seconds)

    passes.append(measured("rescan after a DB change (scan db update → all current)", change_db))
    site.stop_service()
    out.append(PASS_HEADER)
    out += [p.row() for p in passes]
    out.append("")
    out.append(f"- `airgap scan db update` of the new DB: {new_db['seconds']:.2f} s")
    reconciliations = []
    for _ in range(args.reconcile_runs):
        reconciliations.append(
            site.airgap("scan", "reconcile", "--config", str(site.config(False)))
        )
    reconciliations.sort(key=lambda r: r["seconds"])
    median = reconciliations[len(reconciliations) // 2]
    out.append(
        f"- `airgap scan reconcile` with nothing to do: {median['digests']} digests, "
        f"{median['repositories']} repositories, {median['tags']} tags, queued "
        f"{median['queued'] + median['requeued']}; {median['seconds']:.3f} s (runs "
        + ", ".join(f"{r['seconds']:.3f}" for r in reconciliations)
        + f"), requests {json.dumps(median['requests'], sort_keys=True)}"
    )
    if args.compare_modes:
        out += compare_modes(args, name, site, trivy_log)
    site.stop()
    return out


def compare_modes(args: argparse.Namespace, name: str, site: Site, trivy_log: ToolLog) -> list[str]:
    """The same scans in this process with the engine's Scanner: a Trivy process per image
    (slots of their own) and as clients of one ``trivy server``; each cold, then after a new
    DB. The two modes take turns, pass by pass (``--compare-rounds`` rounds, the first
    mode alternating), so that a change of the machine's load falls on both. The service
    cannot be switched to server mode by its configuration (yet)."""
    from airgapped_registry.scanning.server import TrivyServer

    out = [
        "",
        "Process per image against client/server (the engine's Scanner in the bench process, "
        f"{args.workers} scans at a time, every tag the backend serves; the modes take turns):",
        "",
        "| mode | pass | wall | images per minute | trivy processes | trivy wall per process "
        "| trivy runs at a time (mean) | load (1 min) |",
        "|" + "---|" * 8,
    ]
    modes = ("process per image", "client/server")
    with RegistryClient(site.backend.url, timeout=120) as client, contextlib.ExitStack() as inner:
        targets = []
        for repository in client.catalog():
            for tag in client.tags(repository):
                head = client.head_manifest(repository, tag)
                if head is not None:
                    targets.append((repository, head.digest))
        scanners: dict[str, Scanner] = {}
        caches: dict[str, Path] = {}
        for round_number in range(args.compare_rounds):
            for label in ("cold", "after a new DB"):
                if label == "cold":
                    for mode in modes:
                        directory = "server" if mode == "client/server" else "slots"
                        caches[mode] = site.work / f"compare-{directory}-{round_number}"
                        server = None
                        if mode == "client/server":
                            server = inner.enter_context(
                                TrivyServer(VENV_BIN / "trivy", caches[mode])
                            )
                        scanners[mode] = Scanner(
                            client, caches[mode], site.trivy, workers=args.workers, server=server
                        )
                else:
                    site.install_db(site.next_db_time())
                for mode in modes[:: 1 if round_number % 2 == 0 else -1]:
                    vulndb.install(
                        client, caches[mode], TRIVY_DB_REPOSITORY, TRIVY_DB_TAG, site.lock
                    )
                    out.append(
                        one_pass(name, mode, label, scanners[mode], targets, trivy_log, args)
                    )
    return out


def one_pass(
    name: str,
    mode: str,
    label: str,
    scanner: Scanner,
    targets: list[tuple[str, str]],
    trivy_log: ToolLog,
    args: argparse.Namespace,
) -> str:
    load = load1()
    wall = time.time()
    begun = time.monotonic()
    scanned = 0
    errors: list[str] = []
    with ThreadPoolExecutor(max_workers=args.workers) as pool:
        for result in pool.map(scanner.scan, *zip(*targets, strict=True)):
            scanned += len(result.manifests)
            errors += [f"{i.digest}: {i.reason}" for i in result.failed]
    seconds = time.monotonic() - begun
    time.sleep(0.2)
    runs, run_seconds = summary(trivy_log.runs(wall, time.time()), "image")
    per = run_seconds / runs if runs else 0.0
    servers = " + 1 server" if scanner.server is not None else ""
    row = (
        f"| {mode} | {label} | {seconds:.1f} s | {scanned / seconds * 60:.0f} "
        f"| {runs}{servers} | {per:.2f} s | {run_seconds / seconds:.2f} | {load:.2f} |"
    )
    if errors:
        row += f" {len(errors)} errors, the first: {errors[0]}"
    print(f"{name}: {row}", flush=True)
    return row


# -- main ------------------------------------------------------------------------------------


def trivy_alone(trivy: Path, runs: int = 5) -> str:
    """What one Trivy process costs before it reads anything: ``trivy --version``."""
    walls = []
    for _ in range(runs):
        started = time.monotonic()
        subprocess.run([str(trivy), "--version"], capture_output=True, check=True)
        walls.append(time.monotonic() - started)
    median = statistics.median(walls)
    return f"`trivy --version` (process start, no DB): median {median:.2f} s of {runs}"


def cosign_alone(site: Site, runs: int = 5) -> str:
    """What a cosign run costs before it talks to a registry: its start (``cosign version``)
    and the private key's decryption (scrypt; ``cosign public-key --key``)."""
    key = next((site.work / "keys").glob("cosign-*.key"))
    env = {**os.environ, "COSIGN_PASSWORD": PASSWORD}
    cosign = str(VENV_BIN / "cosign")
    figures = []
    for argv in (["version"], ["public-key", "--key", str(key)]):
        walls = []
        for _ in range(runs):
            started = time.monotonic()
            subprocess.run([cosign, *argv], capture_output=True, check=True, env=env)
            walls.append(time.monotonic() - started)
        figures.append(f"`cosign {argv[0]}` median {statistics.median(walls):.2f} s")
    return f"- cosign alone ({runs} runs each, load {load1():.2f}): " + "; ".join(figures)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--phases",
        default="push,lab,scale",
        help="which phases, comma-separated: push, lab, scale (default all)",
    )
    parser.add_argument("--pushes", type=int, default=20, help="pushes per service (default 20)")
    parser.add_argument(
        "--burst", type=int, default=5, help="pushes back to back after the signed ones (5)"
    )
    parser.add_argument(
        "--repositories",
        type=int,
        default=160,
        help="sample/app-NNN repositories of the scale phase, one tag each (160: 500 digests)",
    )
    parser.add_argument(
        "--unique-layer-bytes",
        type=int,
        default=500_000,
        help="content bytes of each pushed image's own layer, per platform (500000)",
    )
    parser.add_argument(
        "--base-layer-bytes",
        type=int,
        default=4_000_000,
        help="content bytes of each shared base layer of the pushed images (4000000)",
    )
    parser.add_argument(
        "--workers", type=int, default=2, help="scans at a time in the mode comparison (2)"
    )
    parser.add_argument(
        "--reconcile-runs", type=int, default=3, help="idle reconciliations; the median (3)"
    )
    parser.add_argument(
        "--compare-rounds",
        type=int,
        default=2,
        help="rounds of the mode comparison, each mode cold then after a new DB (2)",
    )
    parser.add_argument(
        "--no-compare-modes",
        dest="compare_modes",
        action="store_false",
        help="skip process-per-image against client/server",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run: 3 pushes, burst 2, 10 repositories, 1 reconciliation",
    )
    parser.add_argument("--keep", action="store_true", help="leave the work directory")
    parser.add_argument("--workdir", help="where to work (default: a new temporary directory)")
    args = parser.parse_args()
    if args.quick:
        args.pushes, args.burst, args.repositories, args.reconcile_runs = 3, 2, 10, 1
        args.compare_rounds = 1
    phases = [phase.strip() for phase in args.phases.split(",") if phase.strip()]
    unknown = sorted(set(phases) - {"push", "lab", "scale"})
    if unknown:
        parser.error(f"--phases: unknown {', '.join(unknown)} (push, lab, scale)")
    for tool in (DISTRIBUTION, SKOPEO, VENV_BIN / "trivy", VENV_BIN / "cosign"):
        if not os.access(tool, os.X_OK):
            parser.error(f"{tool} is missing: scripts/bootstrap installs it")

    # Ctrl-C and SIGTERM unwind through the finally below: processes stopped, dirs removed.
    def interrupted(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="scan-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        with contextlib.ExitStack() as stack:
            return bench(args, phases, work, stack)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        if args.keep:
            print(f"kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


def bench(
    args: argparse.Namespace, phases: list[str], work: Path, stack: contextlib.ExitStack
) -> int:
    # Measured as installed: pip compiles a package's bytecode.
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", str(Path(airgapped_registry.__file__).parent)],
        check=True,
    )
    pki = Pki(work / "pki")
    pki.create()
    tools = work / "bin"
    trivy_log = write_wrapper(tools, "trivy", VENV_BIN / "trivy")
    cosign_log = write_wrapper(tools, "cosign", VENV_BIN / "cosign")
    version = subprocess.run(
        [str(VENV_BIN / "trivy"), "--version"], capture_output=True, text=True, check=True
    ).stdout.split("\n")[0]
    report = [
        f"machine: nproc={os.cpu_count()}, load {Path('/proc/loadavg').read_text().strip()}",
        f"{version}; {trivy_alone(VENV_BIN / 'trivy')}",
        "",
    ]
    print("\n".join(report), flush=True)
    if "push" in phases:
        report += push_phase(args, work / "push", pki, tools, trivy_log, cosign_log, stack)
        report.append("")
    if "lab" in phases:
        report += registry_phase(
            args, "lab", SampleSpec(), work / "lab", pki, tools, trivy_log, stack
        )
        report.append("")
    if "scale" in phases:
        spec = SampleSpec(repositories=args.repositories, tags_per_repository=1)
        report += registry_phase(args, "scale", spec, work / "scale", pki, tools, trivy_log, stack)
        report.append("")
    report.append(f"load average at the end: {Path('/proc/loadavg').read_text().strip()}")
    print("\n" + "\n".join(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
