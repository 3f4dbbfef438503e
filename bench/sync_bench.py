#!/usr/bin/env python3
"""Side-by-side benchmark: ``airgap sync --relock`` against ``skopeo sync``.

Prints figures; it is not a test and asserts nothing about time. See docs/performance.md.

Starts real Distribution instances on loopback (``/usr/bin/docker-registry``): one source
seeded with :mod:`airgap_lab.sample` at scale, and one fresh, empty destination per
tool. Writes a ``mirror.yaml`` listing every sample repository and the equivalent
``skopeo sync --src yaml`` file, then measures, in one run on one machine:

1. cold sync into an empty registry;
2. no-op resync (ours: relock + sync; also ours with the current lock: sync only);
3. delta after the top shared base layer of every platform changed (``base_generation=1``).

Each of our figures includes re-resolving the lock against the source (``--relock``, in the
same process), as skopeo sync re-resolves its list on every run. Counted for each run:

- wall time of the run, and the 1-minute load average when it started;
- requests at the source and at the destination: lines of each Distribution's access log;
- bytes sent to the destination: the sizes of the blobs whose upload the destination
  completed (``PUT .../blobs/uploads/...?digest=`` answered 201), counted in its access log
  the same way for both tools; mounts send nothing;
- CPU seconds (user + system) of the sync process and everything it ran (our Python and its
  skopeo children; skopeo sync), from ``getrusage(RUSAGE_CHILDREN)``, and of each registry
  process, from ``/proc/<pid>/stat``.

    .venv/bin/python bench/sync_bench.py                 # full scale (200 repositories)
    .venv/bin/python bench/sync_bench.py --repositories 10 --unique-layer-bytes 100000
    .venv/bin/python bench/sync_bench.py --lab agr-relay --tls   # inside the lab's relay
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import resource
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import yaml

import airgap_lab
import airgapped_registry
from airgap_lab.sample import (
    APP_REPOSITORY_PREFIX,
    BASE_REPOSITORY,
    BASE_TAGS,
    CHART_REPOSITORY,
    CHART_TAGS,
    VULNERABLE_REPOSITORY,
    VULNERABLE_TAG,
    Sample,
    SampleSpec,
    build,
    push,
    semver_series,
)
from airgapped_registry.transport.registry import RegistryClient

DISTRIBUTION = "/usr/bin/docker-registry"
SKOPEO = "/usr/bin/skopeo"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
ACCESS_LINE = re.compile(
    r'"(?P<method>[A-Z]+) (?P<uri>\S+) HTTP/[0-9.]+" (?P<status>\d{3}) ', re.MULTILINE
)
UPLOAD_DIGEST = re.compile(r"[?&]digest=(sha256(?::|%3[aA])[0-9a-f]{64})")

# Targets of issue 4 ("Benchmark").
COLD_TARGET = 0.75  # our wall time at most this fraction of skopeo sync's
NOOP_TARGET = 10.0  # skopeo sync wall time / ours at least this
DELTA_TARGET = 3.0
DELTA_BYTES_TOLERANCE = 0.02


# -- registries ----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class Tls:
    """A throwaway CA and a server certificate for 127.0.0.1 (openssl)."""

    directory: Path

    @property
    def ca(self) -> Path:
        return self.directory / "ca.crt"

    @property
    def cert(self) -> Path:
        return self.directory / "server.cert"

    @property
    def key(self) -> Path:
        return self.directory / "server.key"

    @property
    def cert_dir(self) -> Path:
        """A skopeo --*-cert-dir holding only the CA (``*.crt``)."""
        return self.directory / "trust"

    def create(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        run = ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2"]
        ca_key = self.directory / "ca.key"
        # Key usage and key identifiers: Python 3.13 (Debian 13, the lab) verifies strictly.
        ca_extensions = [
            *("-addext", "basicConstraints=critical,CA:TRUE"),
            *("-addext", "keyUsage=critical,keyCertSign,cRLSign"),
            *("-addext", "subjectKeyIdentifier=hash"),
        ]
        subprocess.run(
            [
                *run,
                *("-keyout", str(ca_key), "-out", str(self.ca), "-subj", "/CN=bench CA"),
                *ca_extensions,
            ],
            check=True,
            capture_output=True,
        )
        csr = self.directory / "server.csr"
        subprocess.run(
            [
                *("openssl", "req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(self.key)),
                *("-out", str(csr), "-subj", "/CN=127.0.0.1"),
            ],
            check=True,
            capture_output=True,
        )
        extensions = self.directory / "san.cnf"
        extensions.write_text(
            "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n"
            "keyUsage=critical,digitalSignature,keyEncipherment\n"
            "authorityKeyIdentifier=keyid\nsubjectKeyIdentifier=hash\n"
        )
        subprocess.run(
            [
                *("openssl", "x509", "-req", "-in", str(csr), "-CA", str(self.ca)),
                *("-CAkey", str(ca_key), "-CAcreateserial", "-days", "2", "-out", str(self.cert)),
                *("-extfile", str(extensions)),
            ],
            check=True,
            capture_output=True,
        )
        self.cert_dir.mkdir(exist_ok=True)
        shutil.copy(self.ca, self.cert_dir / "ca.crt")


@dataclass
class Registry:
    name: str
    root: Path
    tls: Tls | None = None
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    _offset: int = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.address}"

    @property
    def log_path(self) -> Path:
        return self.root / "registry.log"

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        http_config: dict[str, object] = {"addr": self.address, "secret": "bench"}
        if self.tls:
            http_config["tls"] = {"certificate": str(self.tls.cert), "key": str(self.tls.key)}
        config = {
            "version": 0.1,
            # The access log (one line per HTTP request) goes to stderr with the rest; "warn"
            # keeps the application log out so that the registry's own CPU is not logging.
            "log": {"level": "warn", "formatter": "text", "accesslog": {"disabled": False}},
            "storage": {
                "filesystem": {"rootdirectory": str(self.root / "storage")},
                "delete": {"enabled": True},
                "maintenance": {"uploadpurging": {"enabled": False}},
            },
            "http": http_config,
        }
        config_path = self.root / "config.yml"
        config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [DISTRIBUTION, "serve", str(config_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={"PATH": "/usr/bin:/bin"},
            )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"{self.name}: docker-registry exited; see {self.log_path}")
            try:
                if self._answers():
                    return
            except (OSError, http.client.HTTPException):
                pass
            time.sleep(0.05)
        raise SystemExit(f"{self.name}: docker-registry did not answer {self.url}/v2/")

    def _answers(self) -> bool:
        if self.tls:
            context = ssl.create_default_context(cafile=str(self.tls.ca))
            connection: http.client.HTTPConnection = http.client.HTTPSConnection(
                "127.0.0.1", self.port, context=context, timeout=2
            )
        else:
            connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
        try:
            connection.request("GET", "/v2/")
            return connection.getresponse().status == 200
        finally:
            connection.close()

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

    def cpu(self) -> float:
        assert self.process is not None
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        # Fields 14 and 15 of stat (utime, stime); the split starts at field 3.
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS

    def mark(self) -> None:
        self._offset = self.log_path.stat().st_size

    def requests_since_mark(self) -> list[re.Match[str]]:
        with self.log_path.open("rb") as log:
            log.seek(self._offset)
            text = log.read().decode(errors="replace")
        return list(ACCESS_LINE.finditer(text))

    def blob_size(self, digest: str) -> int:
        hexdigest = digest.split(":", 1)[1]
        path = self.root / "storage/docker/registry/v2/blobs/sha256" / hexdigest[:2] / hexdigest
        return (path / "data").stat().st_size


# -- measuring -----------------------------------------------------------------------------


@dataclass
class Figures:
    tool: str
    run: str
    wall: float = 0.0
    load: float = 0.0
    sync_cpu: float = 0.0
    source_cpu: float = 0.0
    destination_cpu: float = 0.0
    source_requests: int = 0
    destination_requests: int = 0
    destination_methods: Counter[str] = field(default_factory=Counter)
    blobs_uploaded: int = 0
    blobs_mounted: int = 0
    bytes_sent: int = 0
    phases: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def load1() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


class Measure:
    """Counts around one run: wall, CPU of the tool and both registries, log lines, uploads."""

    def __init__(self, figures: Figures, source: Registry, destination: Registry) -> None:
        self.figures = figures
        self.source = source
        self.destination = destination

    def __enter__(self) -> Measure:
        self.figures.load = load1()
        self.source.mark()
        self.destination.mark()
        self._cpu = (children_cpu(), self.source.cpu(), self.destination.cpu())
        self._start = time.monotonic()
        return self

    def __exit__(self, *exc: object) -> None:
        wall = time.monotonic() - self._start
        # The access log line is written as each response completes; let the last ones land.
        time.sleep(0.3)
        f = self.figures
        f.wall = wall
        f.sync_cpu = children_cpu() - self._cpu[0]
        f.source_cpu = self.source.cpu() - self._cpu[1]
        f.destination_cpu = self.destination.cpu() - self._cpu[2]
        f.source_requests = len(self.source.requests_since_mark())
        uploaded: Counter[str] = Counter()
        for line in self.destination.requests_since_mark():
            f.destination_requests += 1
            f.destination_methods[line["method"]] += 1
            status, uri = line["status"], line["uri"]
            if line["method"] == "PUT" and status == "201" and "/blobs/uploads/" in uri:
                found = UPLOAD_DIGEST.search(uri)
                if found:
                    uploaded[found[1].replace("%3A", ":").replace("%3a", ":")] += 1
            elif line["method"] == "POST" and status == "201" and "mount=" in uri:
                f.blobs_mounted += 1
        f.blobs_uploaded = sum(uploaded.values())
        f.bytes_sent = sum(self.destination.blob_size(d) * n for d, n in uploaded.items())


def run(argv: list[str], log: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    completed = subprocess.run(argv, capture_output=True, text=True)
    with log.open("a") as out:
        out.write(f"$ {' '.join(argv)}\n[exit {completed.returncode}]\n")
        out.write(completed.stdout[-20000:])
        out.write(completed.stderr[-20000:])
        out.write("\n")
    if check and completed.returncode != 0:
        sys.stderr.write(completed.stderr[-3000:] + completed.stdout[-2000:])
        raise SystemExit(f"failed (exit {completed.returncode}): {' '.join(argv[:3])} ...")
    return completed


# -- the lists -----------------------------------------------------------------------------


def app_repositories(sample: Sample) -> list[str]:
    # Only the generated ones: the showcase (base, vulnerable, chart, Trivy DB) has its own tags.
    return [r for r in sample.repositories if r.startswith(APP_REPOSITORY_PREFIX)]


def write_mirror_yaml(path: Path, source: Registry, sample: Sample, tags: list[str]) -> None:
    source_entry: dict[str, object] = {"registry": source.address, "signatures": "none"}
    if source.tls:
        source_entry["ca_file"] = str(source.tls.ca)
    else:
        source_entry["insecure"] = True
    images: list[dict[str, object]] = [
        {"source": "upstream", "repository": BASE_REPOSITORY, "tags": list(BASE_TAGS)},
        {"source": "upstream", "repository": VULNERABLE_REPOSITORY, "tags": [VULNERABLE_TAG]},
    ]
    images += [
        {"source": "upstream", "repository": repository, "tags": tags}
        for repository in app_repositories(sample)
    ]
    charts = [{"source": "upstream", "repository": CHART_REPOSITORY, "versions": list(CHART_TAGS)}]
    document = {"version": 1, "sources": {"upstream": source_entry}, "images": images}
    document["charts"] = charts
    path.write_text(yaml.safe_dump(document, sort_keys=False))


def write_skopeo_yaml(path: Path, source: Registry, sample: Sample, tags: list[str]) -> None:
    images: dict[str, list[str]] = {
        BASE_REPOSITORY: list(BASE_TAGS),
        VULNERABLE_REPOSITORY: [VULNERABLE_TAG],
        CHART_REPOSITORY: list(CHART_TAGS),
    }
    images.update({repository: tags for repository in app_repositories(sample)})
    registry: dict[str, object] = {"images": images}
    if source.tls:
        registry["cert-dir"] = str(source.tls.cert_dir)
        registry["tls-verify"] = True
    else:
        registry["tls-verify"] = False
    path.write_text(yaml.safe_dump({source.address: registry}, sort_keys=False))


# -- the tools -----------------------------------------------------------------------------


class Ours:
    tool = "airgap"

    def __init__(
        self,
        work: Path,
        source: Registry,
        destination: Registry,
        workers: int,
        engine_copy_max_bytes: int | None = None,
    ):
        self.work = work
        self.engine_copy_max_bytes = engine_copy_max_bytes
        self.source = source
        self.destination = destination
        self.workers = workers
        self.spec = work / "mirror.yaml"
        self.lock = work / "mirror.lock"
        self.state = work / "state" / "state.db"
        self.state.parent.mkdir(parents=True, exist_ok=True)
        self.log = work / "airgap.log"
        self.airgap = str(Path(sys.executable).with_name("airgap"))
        if not os.path.exists(self.airgap):
            self.airgap = shutil.which("airgap") or "airgap"

    def run(self, name: str, relock: bool = True) -> Figures:
        figures = Figures(self.tool, name)
        destination = ["--registry", self.destination.url]
        if self.destination.tls:
            destination += ["--ca-file", str(self.destination.tls.ca)]
        argv = [self.airgap, "sync", *destination, "--lock", str(self.lock)]
        argv += ["--spec", str(self.spec), "--state", str(self.state)]
        argv += ["--workers", str(self.workers), "--quiet"]
        if self.engine_copy_max_bytes is not None:
            argv += ["--engine-copy-max-bytes", str(self.engine_copy_max_bytes)]
        if relock:
            # One process: resolve the list against the source, rewrite the lock, sync.
            argv.append("--relock")
        with Measure(figures, self.source, self.destination):
            started = time.monotonic()
            synced = run(argv, self.log)
            figures.phases["airgap sync" + (" --relock" if relock else "")] = (
                time.monotonic() - started
            )
        report = json.loads(synced.stdout)
        figures.phases["of which the sync's own duration"] = float(report["duration"])
        if relock:
            figures.notes.append(f"lock: {report['relock']['summary']}")
        figures.notes.append(
            f"sync: {report['summary']}; engine-counted bytes {report['bytes']}; "
            f"copies {json.dumps(report.get('copies'))}; tools {json.dumps(report.get('tools'))}"
        )
        return figures


class Skopeo:
    tool = "skopeo sync"

    def __init__(self, work: Path, source: Registry, destination: Registry):
        self.work = work
        self.source = source
        self.destination = destination
        self.file = work / "skopeo-sync.yaml"
        self.log = work / "skopeo.log"

    def run(self, name: str) -> Figures:
        figures = Figures(self.tool, name)
        argv = [SKOPEO, "--insecure-policy", "sync", "--src", "yaml", "--dest", "docker"]
        argv += ["--all", "--preserve-digests", "--src-tls-verify=false"]
        if self.destination.tls:
            argv += ["--dest-cert-dir", str(self.destination.tls.cert_dir)]
        else:
            argv.append("--dest-tls-verify=false")
        # Without --scoped, skopeo sync writes DEST/<last path component of the image>:
        # sample/app-001 → DEST/sample/app-001 (charts/demo → sample/demo).
        argv += [str(self.file), f"{self.destination.address}/sample"]
        with Measure(figures, self.source, self.destination):
            run(argv, self.log)
        return figures


# -- report --------------------------------------------------------------------------------


def megabytes(count: int) -> str:
    return f"{count / 1e6:,.1f} MB"


def floor(f: Figures, cores: int) -> float:
    """The wall time the measured CPU alone needs on an otherwise idle machine."""
    return (f.sync_cpu + f.source_cpu + f.destination_cpu) / cores


def table(rows: list[Figures]) -> str:
    header = (
        "| run | tool | wall | sync CPU | source CPU | destination CPU | load (1 min) "
        "| requests at source | requests at destination | blobs uploaded (mounted) "
        "| bytes sent | CPU floor |"
    )
    lines = [header, "|" + "---|" * 12]
    cores = os.cpu_count() or 1
    for f in rows:
        lines.append(
            f"| {f.run} | {f.tool} | {f.wall:.2f} s | {f.sync_cpu:.1f} s | {f.source_cpu:.1f} s "
            f"| {f.destination_cpu:.1f} s | {f.load:.2f} | {f.source_requests} "
            f"| {f.destination_requests} | {f.blobs_uploaded} ({f.blobs_mounted}) "
            f"| {f.bytes_sent:,} | {floor(f, cores):.1f} s |"
        )
    return "\n".join(lines)


def verdicts(results: dict[str, Figures], new_unique: int) -> list[str]:
    out = []

    def ratio(ours: str, theirs: str) -> float:
        return results[theirs].wall / max(results[ours].wall, 1e-9)

    cold = results["ours cold"].wall / results["skopeo cold"].wall
    out.append(
        f"- cold: ours / skopeo sync = {cold:.2f}x (target ≤ {COLD_TARGET}x): "
        f"{'met' if cold <= COLD_TARGET else 'NOT met'}"
    )
    noop = ratio("ours no-op", "skopeo no-op")
    out.append(
        f"- no-op (relock + sync): skopeo sync / ours = {noop:.1f}x faster (target ≥ "
        f"{NOOP_TARGET}x): {'met' if noop >= NOOP_TARGET else 'NOT met'}"
    )
    current = results["ours no-op, current lock"]
    noop_current = results["skopeo no-op"].wall / max(current.wall, 1e-9)
    out.append(
        f"- no-op with the current lock (sync only): {noop_current:.1f}x faster; "
        f"{current.source_requests} source requests (target 0): "
        f"{'met' if current.source_requests == 0 else 'NOT met'}"
    )
    delta = ratio("ours delta", "skopeo delta")
    sent = results["ours delta"].bytes_sent
    off = sent / new_unique - 1 if new_unique else float("inf")
    out.append(
        f"- delta: skopeo sync / ours = {delta:.1f}x faster (target ≥ {DELTA_TARGET}x): "
        f"{'met' if delta >= DELTA_TARGET else 'NOT met'}; bytes sent {sent:,} for "
        f"{new_unique:,} new ({off:+.1%}, target within ±{DELTA_BYTES_TOLERANCE:.0%}): "
        f"{'met' if abs(off) <= DELTA_BYTES_TOLERANCE else 'NOT met'}; skopeo sync sent "
        f"{results['skopeo delta'].bytes_sent:,}"
    )
    return out


# -- main ----------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repositories", type=int, default=200)
    parser.add_argument(
        "--unique-layer-bytes",
        type=int,
        default=500_000,
        help="content bytes of each image's own layer, per platform (default 500000)",
    )
    parser.add_argument(
        "--base-layer-bytes",
        type=int,
        default=4_000_000,
        help="content bytes of each shared base layer (default 4000000)",
    )
    parser.add_argument("--workers", type=int, default=4, help="airgap sync --workers")
    parser.add_argument(
        "--engine-copy-max-bytes",
        type=int,
        help="airgap sync --engine-copy-max-bytes (default: the engine's; 0: skopeo copies all)",
    )
    parser.add_argument("--tls", action="store_true", help="every registry on HTTPS")
    parser.add_argument(
        "--noop-runs",
        type=int,
        default=3,
        help="no-op runs per tool, alternating; the median is reported (default 3)",
    )
    parser.add_argument(
        "--lab",
        metavar="CONTAINER",
        help="run inside this lab container (e.g. agr-relay, after ./scripts/site): its "
        "Distribution, skopeo, openssl and engine, with the other options",
    )
    parser.add_argument("--keep", action="store_true", help="leave the work directory")
    parser.add_argument("--workdir", help="where to work (default: a new temporary directory)")
    args = parser.parse_args()
    if args.lab:
        return run_in_lab(args.lab, sys.argv[1:])

    # Ctrl-C and SIGTERM unwind through the finally below: registries stopped, dirs removed.
    def interrupted(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)

    work = Path(args.workdir or tempfile.mkdtemp(prefix="sync-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    registries: list[Registry] = []
    try:
        return bench(args, work, registries)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        for registry in registries:
            registry.stop()
        if args.keep:
            print(f"kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


def run_in_lab(container: str, argv: list[str]) -> int:
    """Run this script inside a lab container with the same options but ``--lab``.

    The relay has everything the benchmark runs, installed by ``site.yml`` from Debian 13:
    Distribution, skopeo, openssl, python3-yaml and the engine (``/usr/local/bin/airgap``).
    The sample generator is not part of the engine shipped to hosts: its package is copied
    beside this script, where python3 finds it first. The registries it starts listen on the
    container's loopback; nothing leaves it.
    """
    options: list[str] = []
    skip = False
    for item in argv:
        if skip:
            skip = False
        elif item == "--lab":
            skip = True
        elif not item.startswith("--lab="):
            options.append(item)
    # Not /tmp: the lab mounts a tmpfs there, which docker cp cannot see.
    target = "/var/tmp/sync_bench.py"
    subprocess.run(
        ["docker", "cp", str(Path(__file__).resolve()), f"{container}:{target}"], check=True
    )
    lab_package = Path(airgap_lab.__file__).resolve().parent
    subprocess.run(["docker", "cp", str(lab_package), f"{container}:/var/tmp/"], check=True)
    return subprocess.run(["docker", "exec", container, "python3", target, *options]).returncode


def bench(args: argparse.Namespace, work: Path, registries: list[Registry]) -> int:
    tls = None
    if args.tls:
        tls = Tls(work / "tls")
        tls.create()

    def start(name: str) -> Registry:
        registry = Registry(name, work / name, tls)
        registries.append(registry)
        registry.start()
        return registry

    spec0 = SampleSpec(
        repositories=args.repositories,
        tags_per_repository=1,
        unique_layer_bytes=args.unique_layer_bytes,
        base_layer_bytes=args.base_layer_bytes,
    )
    spec1 = SampleSpec(**{**spec0.__dict__, "base_generation": 1})
    sample0, sample1 = build(spec0), build(spec1)
    sizes1 = {d: sample1._blobs.sizes[d] for d in sample1.blob_digests}
    new_unique = sum(size for d, size in sizes1.items() if d not in sample0.blob_digests)
    # Measured as installed: pip compiles a package's bytecode, so the engine starts without
    # compiling itself (PYTHONDONTWRITEBYTECODE would otherwise make every run compile it).
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", str(Path(airgapped_registry.__file__).parent)],
        check=True,
    )
    nproc = os.cpu_count()
    print(f"machine: nproc={nproc}, load average {Path('/proc/loadavg').read_text().strip()}")
    print(
        f"sample: {spec0}\n  {len(sample0.artifacts)} tags, {len(sample0.blob_digests)} blobs, "
        f"{megabytes(sample0.unique_bytes)} unique content ({sample0.unique_bytes:,} bytes); "
        f"base_generation=1 adds {len(sample1.blob_digests - sample0.blob_digests)} blobs, "
        f"{new_unique:,} bytes",
        flush=True,
    )

    source = start("source")
    ca = str(tls.ca) if tls else None
    started = time.monotonic()
    with RegistryClient(source.url, ca_file=ca, timeout=120) as client:
        push(sample0, client)
    print(f"seeded the source in {time.monotonic() - started:.1f} s", flush=True)
    ours_destination = start("destination-airgap")
    skopeo_destination = start("destination-skopeo")

    tags = semver_series(1)
    ours = Ours(work, source, ours_destination, args.workers, args.engine_copy_max_bytes)
    skopeo = Skopeo(work, source, skopeo_destination)
    write_mirror_yaml(ours.spec, source, sample0, tags)
    write_skopeo_yaml(skopeo.file, source, sample0, tags)

    results: dict[str, Figures] = {}

    def record(key: str, figures: Figures) -> None:
        results[key] = figures
        print(
            f"{key}: {figures.wall:.2f} s, sync CPU {figures.sync_cpu:.1f} s, source CPU "
            f"{figures.source_cpu:.1f} s, destination CPU {figures.destination_cpu:.1f} s, "
            f"load {figures.load:.2f}, requests {figures.source_requests}/"
            f"{figures.destination_requests}, {figures.bytes_sent:,} bytes sent",
            flush=True,
        )

    record("ours cold", ours.run("cold"))
    record("skopeo cold", skopeo.run("cold"))
    # A no-op takes seconds: each tool's is run --noop-runs times, alternating, and the run
    # with the median wall time is reported (all walls are printed).
    noops: dict[str, list[Figures]] = {"ours": [], "skopeo": [], "current": []}
    for _ in range(args.noop_runs):
        noops["ours"].append(ours.run("no-op (relock + sync)"))
        noops["skopeo"].append(skopeo.run("no-op"))
        noops["current"].append(ours.run("no-op, current lock (sync only)", relock=False))
    for key, name in (
        ("ours", "ours no-op"),
        ("skopeo", "skopeo no-op"),
        ("current", "ours no-op, current lock"),
    ):
        runs = sorted(noops[key], key=lambda f: f.wall)
        median = runs[len(runs) // 2]
        median.notes.append("walls of the runs: " + ", ".join(f"{f.wall:.2f} s" for f in runs))
        record(name, median)

    started = time.monotonic()
    with RegistryClient(source.url, ca_file=ca, timeout=120) as client:
        push(sample1, client)
    print(f"re-pushed the source with base_generation=1 in {time.monotonic() - started:.1f} s")
    record("ours delta", ours.run("delta (relock + sync)"))
    record("skopeo delta", skopeo.run("delta"))

    order = [
        "ours cold",
        "skopeo cold",
        "ours no-op",
        "skopeo no-op",
        "ours no-op, current lock",
        "ours delta",
        "skopeo delta",
    ]
    rows = [results[key] for key in order]
    print()
    print(table(rows))
    print()
    print(f"new unique content after base_generation=1: {new_unique:,} bytes (blobs only)")
    print("\n".join(verdicts(results, new_unique)))
    print("\nour phases (wall seconds):")
    for key in order:
        f = results[key]
        if f.tool == "airgap":
            phases = ", ".join(f"{name} {value:.2f}" for name, value in f.phases.items())
            print(f"- {f.run}: {phases}")
            for note in f.notes:
                print(f"    {note}")
        elif f.notes:
            print(f"- skopeo sync, {f.run}: " + "; ".join(f.notes))
    print("\ndestination requests by method:")
    for key in order:
        f = results[key]
        print(f"- {f.tool}, {f.run}: {dict(sorted(f.destination_methods.items()))}")
    print(f"\nload average at the end: {Path('/proc/loadavg').read_text().strip()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
