#!/usr/bin/env python3
"""Benchmark of the gate: what nginx asking the gate (``auth_request``) adds to a pull.

Prints figures; it is not a test and asserts nothing about time. See docs/performance.md,
"Gate" (issue 10, "Performance").

Everything is real and on loopback, set up by the gate's loopback lab
(``tests/integration/gatelab.py``, the one the gate's tests use): Distribution
(``/usr/bin/docker-registry``), nginx with ``roles/gateway``'s template (mutual TLS against a
throwaway CA and its CRL, the JSON access log) and, for the gated side, ``airgap gate serve``
on its unix socket with the lab's ``gate.yaml`` (landing zone ``ci/``, a ``puller`` grant by
OU; the audit log with ``fsync: 1s``). Two such gateways run side by side, each with its own
backend holding the same image: one **without** the gate, one **with** it. nginx runs one
worker per core, as Debian's ``nginx.conf`` (``worker_processes auto``).

The image (``bench/app:1.0``: a config and one ``--blob-bytes`` layer, one platform) is
signed with real cosign through the gated gateway as the appliance (``CN=appliance``, role
scanner), and its ``pass`` verdict written through the verdict store against the lab's
installed DB record, so the gate admits it as it admits a mirrored image.

The client is this script: one TLS connection per worker (the lab's ``CN=node,OU=puller``),
kept alive, as a container runtime pulling keeps its connection; workers are processes (no
shared interpreter lock). Phases:

1. ``latency``: one connection, ``--requests`` requests of each kind per gateway and round,
   the gateways alternating over ``--rounds`` rounds (so a drift of the machine's load falls
   on both): manifest GET by tag (what a pull starts with: the gate resolves the tag, checks
   the signature and the verdict, writes an audit record; nginx then asks the backend for
   the digest the gate named) and blob GET of the layer (the gate checks that the blob
   belongs to a manifest admitted in that repository). Then the same decisions asked of the
   gate's socket directly ("gate alone": the headers nginx sends, one kept-alive
   connection), to tell the gate's own time from nginx's subrequest around it. The gated
   lab's gate.yaml names Distribution's storage (``backend_storage``, as roles/gate sets
   it): the gate reads a tag's digest from Distribution's link files. With
   ``--ask-backend`` it HEADs tags on Distribution instead, and keeps a tag's digest only
   once the repository has had no change it let through for ``SETTLE_SECONDS`` (30 s).
   The image was just signed (a push into its repository), so manifest GETs are first
   measured in that window ("< 30 s after a push": with ``--ask-backend`` a backend HEAD
   per tag, the image's and its signature's), and everything else after it.
2. ``throughput``: ``--concurrency`` connections for ``--duration`` seconds per gateway and
   kind, in the order without, with, with, without; requests per second, and the audit
   records the gate wrote meanwhile.
3. ``audit``: the audit log alone, in this process: records appended per second by
   ``--concurrency`` threads, with the lab's durability (``fsync: 1s``: a record is in the
   page cache before the answer, on disk within a second) and with ``fsync: 0`` (on disk
   before the answer).

    .venv/bin/python bench/gate_bench.py               # everything (about 3 minutes)
    .venv/bin/python bench/gate_bench.py --quick       # a smoke run (about a minute)

Processes and the work directory are cleaned up at exit, Ctrl-C and SIGTERM included.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import multiprocessing
import os
import shutil
import signal
import socket
import ssl
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT / "tests" / "integration"))
from gatelab import ACCEPT, COSIGN, DB_DIGEST, NGINX, POLICY, GateLab  # noqa: E402

from airgapped_registry.audit import AuditEvent, AuditLog  # noqa: E402
from airgapped_registry.audit.config import AuditConfig  # noqa: E402
from airgapped_registry.audit.records import Identity  # noqa: E402
from airgapped_registry.gate.admission import SETTLE_SECONDS  # noqa: E402
from airgapped_registry.oci.reference import digest_of  # noqa: E402
from airgapped_registry.scanning.records import iso  # noqa: E402
from airgapped_registry.signing.config import load_signing  # noqa: E402
from airgapped_registry.signing.signer import Signer  # noqa: E402
from airgapped_registry.state.store import StateStore  # noqa: E402
from airgapped_registry.state.verdicts import VerdictRecord, VerdictStore  # noqa: E402

REPOSITORY, TAG = "bench/app", "1.0"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
# nginx's $ssl_client_s_dn for the lab's puller certificate (/CN=node/OU=puller/O=Airgap).
PULLER_DN = "O=Airgap,OU=puller,CN=node"
TARGET_ADDED_P50_MS = 2.0  # issue 10: at most 2 ms p50 added per manifest GET
TARGET_THROUGHPUT = 0.8  # issue 10: at least 0.8x the gateway without the gate


def load1() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile (p99 of 200 values is the 198th)."""
    ordered = sorted(values)
    rank = max(1, -(-round(fraction * 100) * len(ordered) // 100))
    return ordered[min(rank, len(ordered)) - 1]


# -- the two gateways ------------------------------------------------------------------------


@dataclass(frozen=True)
class Image:
    config: str
    layer: str
    digest: str


def push_image(lab: GateLab, blob_bytes: int) -> Image:
    """``bench/app:1.0`` put straight into the lab's backend, as the nightly sync leaves one;
    the same bytes in every lab (so the same digests)."""
    config = json.dumps(
        {"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}}
    ).encode()
    layer = (b"gate bench layer " * (blob_bytes // 17 + 1))[:blob_bytes]
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": digest_of(config),
                "size": len(config),
            },
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": digest_of(layer),
                    "size": len(layer),
                }
            ],
        }
    ).encode()
    with lab.backend_client() as client:
        client.push_blob(REPOSITORY, digest_of(config), config)
        client.push_blob(REPOSITORY, digest_of(layer), layer)
        digest = client.put_manifest(REPOSITORY, TAG, manifest, OCI_MANIFEST)
    return Image(digest_of(config), digest_of(layer), digest)


def admit(lab: GateLab, image: Image) -> None:
    """Signed by the appliance through the gated gateway; a pass verdict on record."""
    with Signer(load_signing(lab.provenance), cosign_path=str(COSIGN)) as signer:
        (outcome,) = signer.sign(REPOSITORY, image.digest)
    if outcome.result != "signed":
        raise SystemExit(f"signing {REPOSITORY}@{image.digest}: {outcome.detail}")
    now = iso(datetime.now(UTC))
    with StateStore(lab.state) as store:
        VerdictStore(store).record(
            VerdictRecord(
                repository=REPOSITORY,
                digest=image.digest,
                status="pass",
                fail_on="CRITICAL",
                counts={},
                findings=[],
                scanned_at=now,
                media_type=OCI_MANIFEST,
                db_digest=DB_DIGEST,
                db_updated_at=now,
            )
        )


def one_worker_per_core(lab: GateLab) -> None:
    """The lab's nginx runs one worker; the host's runs ``worker_processes auto``."""
    conf = lab.nginx_dir / "nginx.conf"
    conf.write_text(conf.read_text().replace("worker_processes 1;", "worker_processes auto;"))
    lab.processes["nginx"].send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    wanted = os.cpu_count() or 1
    while time.monotonic() < deadline:
        if len(nginx_workers(lab.processes["nginx"].pid)) == wanted:
            return
        time.sleep(0.1)
    raise SystemExit(f"nginx in {lab.nginx_dir} did not reload with {wanted} workers")


def nginx_workers(master: int) -> list[int]:
    workers = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            cmdline = (entry / "cmdline").read_bytes()
            if int(fields[1]) == master and b"worker process" in cmdline:
                workers.append(int(entry.name))
    return workers


@dataclass
class Site:
    plain: GateLab
    gated: GateLab
    image: Image
    blob_bytes: int
    signed_at: float  # monotonic: the signature's push, the repository's last change

    def audit_records(self) -> int:
        """Request records in the gate's audit log (every file of it)."""
        count = 0
        for path in sorted(self.gated.audit_dir.glob("*.log")):
            with path.open("rb") as lines:
                count += sum(1 for line in lines if b'"type":"request"' in line)
        return count


@contextlib.contextmanager
def site(work: Path, blob_bytes: int, ask_backend: bool = False) -> Iterator[Site]:
    # As roles/gate configures it: tags read from the backend's storage (backend_storage).
    storage = "" if ask_backend else f"backend_storage: {work / 'gated' / 'storage'}\n"
    with (
        GateLab(work / "plain", gate=False) as plain,
        GateLab(work / "gated", policy=POLICY + storage) as gated,
    ):
        images = [push_image(lab, blob_bytes) for lab in (plain, gated)]
        admit(gated, images[1])
        signed_at = time.monotonic()
        for lab in (plain, gated):
            one_worker_per_core(lab)
        yield Site(plain, gated, images[1], blob_bytes, signed_at)


# -- the client ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    kind: str  # "manifest" or "blob"
    path: str
    accept: str | None = None


@dataclass(frozen=True)
class Endpoint:
    """Where a client connects and with what: picklable, for the worker processes."""

    port: int
    ca: str
    cert: str
    key: str

    @classmethod
    def of(cls, lab: GateLab) -> Endpoint:
        puller = lab.clients["puller"]
        return cls(lab.port, str(lab.pki / "ca.pem"), str(puller.cert), str(puller.key))


class Client:
    """One kept-alive TLS connection to a gateway, as the lab's ``puller``."""

    def __init__(self, who: Endpoint) -> None:
        context = ssl.create_default_context(cafile=who.ca)
        context.load_cert_chain(who.cert, who.key)
        self.connection = http.client.HTTPSConnection(
            "127.0.0.1", who.port, context=context, timeout=30
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


class GateClient:
    """The gate's socket asked directly, with the headers nginx sends for the puller:
    what the gate itself takes, without nginx's subrequest around it."""

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
            "X-SSL-Client-S-DN": PULLER_DN,
            "X-SSL-Client-I-DN": "CN=Gate Lab CA",
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


def timed(client: Client | GateClient, request: Request, count: int) -> list[float]:
    """``count`` latencies of ``request`` on one connection, after 10 unmeasured ones."""
    try:
        for _ in range(10):
            client.get(request)
        latencies = []
        for _ in range(count):
            status, seconds = client.get(request)
            if status != 200:
                raise SystemExit(f"GET {request.path}: status {status}")
            latencies.append(seconds)
        return latencies
    finally:
        client.close()


def worker(who: Endpoint, request: Request, start: float, end: float) -> int:
    """Requests completed between ``start`` and ``end`` (monotonic) by one connection."""
    client = Client(who)
    done = 0
    try:
        client.get(request)
        while time.monotonic() < start:
            time.sleep(0.001)
        while time.monotonic() < end:
            status, _ = client.get(request)
            if status != 200:
                raise SystemExit(f"GET {request.path} on :{who.port}: status {status}")
            done += 1
        return done
    finally:
        client.close()


def throughput(who: Endpoint, request: Request, concurrency: int, duration: float) -> float:
    context = multiprocessing.get_context("fork")
    start = time.monotonic() + 1.0  # every worker connected before the clock starts
    # The workers must not inherit main()'s SIGTERM handler: the pool ends them with
    # SIGTERM, and a worker unwinding through sys.exit there could hang the run.
    with context.Pool(concurrency, signal.signal, (signal.SIGTERM, signal.SIG_DFL)) as pool:
        counts = pool.starmap(worker, [(who, request, start, start + duration)] * concurrency)
    return sum(counts) / duration


# -- the audit log alone ---------------------------------------------------------------------


def audit_rate(work: Path, key: Path, fsync: float, threads: int, seconds: float) -> float:
    config = AuditConfig(
        directory=work / f"audit-alone-{fsync:g}",
        key=key,
        head=work / f"audit-alone-{fsync:g}-head.json",
        fsync=fsync,
        gate_down_log=None,
    )
    log = AuditLog.open(config)
    event = AuditEvent(
        identity=Identity(subject=PULLER_DN, serial="01", issuer="CN=Gate Lab CA"),
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


def measure(args: argparse.Namespace, site: Site, figures: dict[str, Any]) -> None:
    plain, gated = Endpoint.of(site.plain), Endpoint.of(site.gated)
    manifest = Request("manifest", f"/v2/{REPOSITORY}/manifests/{TAG}", ACCEPT)
    blob = Request("blob", f"/v2/{REPOSITORY}/blobs/{site.image.layer}")
    # The gate is in the path (a stranger is refused by one gateway, not the other), and the
    # image is admitted (so its blobs are) before blobs are asked for.
    probe = Request("manifest", f"/v2/{REPOSITORY}/manifests/{TAG}", ACCEPT)
    statuses = {
        "stranger without the gate": site.plain.request("stranger", "GET", probe.path)[0],
        "stranger with the gate": site.gated.request("stranger", "GET", probe.path)[0],
        "puller with the gate": site.gated.request("puller", "GET", probe.path)[0],
    }
    if list(statuses.values()) != [200, 403, 200]:
        raise SystemExit(f"the gate is not deciding as expected: {statuses}")
    figures["statuses"] = statuses

    targets = {"plain": plain, "gate": gated}
    latencies: dict[tuple[str, str], list[float]] = {}
    # Within SETTLE_SECONDS of a change in the repository (the signature's push), the gate
    # reads a tag's digest from the backend for every decision; after it, a tag's digest is
    # kept until the next change the gate lets through. Both are measured: first the
    # fresh one, then (once settled) everything else.
    fresh = timed(Client(gated), manifest, args.requests)
    fresh_alone = timed(GateClient(site.gated.socket), manifest, args.requests)
    if time.monotonic() - site.signed_at >= SETTLE_SECONDS:
        raise SystemExit(
            f"the fresh runs outlasted the gate's {SETTLE_SECONDS} s: fewer --requests"
        )
    time.sleep(max(0.0, site.signed_at + SETTLE_SECONDS + 1 - time.monotonic()))
    for round_number in range(args.rounds):
        order = ["plain", "gate"] if round_number % 2 == 0 else ["gate", "plain"]
        for name in order:
            for request in (manifest, blob):
                latencies.setdefault((name, request.kind), []).extend(
                    timed(Client(targets[name]), request, args.requests)
                )
        for request in (manifest, blob):
            latencies.setdefault(("alone", request.kind), []).extend(
                timed(GateClient(site.gated.socket), request, args.requests)
            )
    figures["load1_after_latency"] = load1()

    rates: dict[tuple[str, str], list[float]] = {}
    audit: list[float] = []
    for request in (manifest, blob):
        for name in ("plain", "gate", "gate", "plain"):
            before = site.audit_records()
            rate = throughput(targets[name], request, args.concurrency, args.duration)
            rates.setdefault((name, request.kind), []).append(rate)
            if name == "gate" and request.kind == "manifest":
                # A record is written before the gate answers: counted right after the run.
                audit.append((site.audit_records() - before) / args.duration)
    figures["load1_after_throughput"] = load1()

    alone_seconds = max(2.0, args.duration / 2)
    alone = {
        fsync: audit_rate(site.gated.root, site.gated.audit_key, fsync, args.concurrency,
                          alone_seconds)
        for fsync in (1.0, 0.0)
    }  # fmt: skip

    for fraction in (0.5, 0.99):
        a = percentile(latencies[("plain", "manifest")], fraction)
        b, c = percentile(fresh, fraction), percentile(fresh_alone, fraction)
        figures[f"manifest_fresh_p{round(fraction * 100)}_ms"] = {
            "no_gate": ms(a), "gate": ms(b), "added": f"{(b - a) * 1000:+.2f}",
            "gate_alone": ms(c),
        }  # fmt: skip
    for kind in ("manifest", "blob"):
        for fraction in (0.5, 0.99):
            a = percentile(latencies[("plain", kind)], fraction)
            b = percentile(latencies[("gate", kind)], fraction)
            c = percentile(latencies[("alone", kind)], fraction)
            figures[f"{kind}_p{round(fraction * 100)}_ms"] = {
                "no_gate": ms(a), "gate": ms(b), "added": f"{(b - a) * 1000:+.2f}",
                "gate_alone": ms(c),
            }  # fmt: skip
        a = sum(rates[("plain", kind)]) / 2
        b = sum(rates[("gate", kind)]) / 2
        figures[f"{kind}_per_s"] = {"no_gate": round(a), "gate": round(b), "ratio": round(b / a, 2)}
    figures["audit_records_per_s_under_load"] = round(sum(audit) / len(audit))
    figures["audit_append_per_s"] = {f"fsync {k:g}s": round(v) for k, v in alone.items()}


def report(args: argparse.Namespace, figures: dict[str, Any]) -> str:
    lines = [
        f"gate bench: {figures['cores']} cores; load1 {figures['load1_before']:.2f} before,"
        f" {figures['load1_after_latency']:.2f} after the latency runs,"
        f" {figures['load1_after_throughput']:.2f} after the throughput runs;"
        f" {figures['minutes']} min; blob {figures['blob_bytes']} bytes; tags"
        f" {figures['tags']}",
        f"{'':38} {'no gate':>10} {'gate':>10} {'added':>10} {'gate alone':>11}",
    ]
    for kind, label in (
        ("manifest", "manifest GET by tag"),
        ("blob", "blob GET"),
        ("manifest_fresh", "  the same < 30 s after a push"),
    ):
        for p in (50, 99):
            row = figures[f"{kind}_p{p}_ms"]
            lines.append(
                f"{f'{label} p{p} (ms)':38} {row['no_gate']:>10} {row['gate']:>10}"
                f" {row['added']:>10} {row['gate_alone']:>11}"
            )
    for kind, label in (("manifest", "manifest GET/s"), ("blob", "blob GET/s")):
        row = figures[f"{kind}_per_s"]
        name = f"{label} ({args.concurrency} connections)"
        lines.append(f"{name:38} {row['no_gate']:>10} {row['gate']:>10} {row['ratio']:>9}x")
    alone = figures["audit_append_per_s"]
    lines += [
        "",
        f"audit records written during the gated manifest runs:"
        f" {figures['audit_records_per_s_under_load']}/s (one per manifest GET; fsync within 1 s)",
        f"audit log alone, {args.concurrency} threads: {alone['fsync 1s']} records/s with"
        f" fsync: 1s (page cache before the answer, disk within 1 s); {alone['fsync 0s']}/s with"
        " fsync: 0 (disk before the answer)",
    ]
    added = float(figures["manifest_p50_ms"]["added"])
    ratio = figures["manifest_per_s"]["ratio"]
    latency_met = "meets" if added <= TARGET_ADDED_P50_MS else "misses"
    throughput_met = "meets" if ratio >= TARGET_THROUGHPUT else "misses"
    lines.append(
        f"\nmanifest GET p50 added {added:.2f} ms ({latency_met} the {TARGET_ADDED_P50_MS} ms"
        f" target); manifest throughput {ratio}x ({throughput_met} the {TARGET_THROUGHPUT}x"
        " target)"
    )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=500, help="per kind, gateway and round")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--concurrency", type=int, default=8, help="connections for throughput")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per throughput run")
    parser.add_argument("--blob-bytes", type=int, default=65536, help="size of the image's layer")
    parser.add_argument("--quick", action="store_true", help="a smoke run (small numbers)")
    parser.add_argument(
        "--ask-backend",
        action="store_true",
        help="no backend_storage: the gate HEADs tags on Distribution (kept once settled)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--json", metavar="FILE", help="also write the figures here")
    args = parser.parse_args()
    if args.quick:
        args.requests, args.rounds, args.duration = 50, 2, 2.0
    for program in (NGINX, "/usr/bin/docker-registry", str(COSIGN)):
        if shutil.which(program) is None:
            raise SystemExit(f"{program}: not found (run ./scripts/bootstrap)")

    # SIGTERM unwinds like Ctrl-C: the labs' processes and the work directory go too.
    signal.signal(signal.SIGTERM, lambda number, frame: sys.exit(128 + number))
    figures: dict[str, Any] = {
        "cores": os.cpu_count(),
        "load1_before": load1(),
        "blob_bytes": args.blob_bytes,
        "tags": "asked of the backend" if args.ask_backend else "read from backend_storage",
    }
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="gate-bench-"))
    try:
        with site(work, args.blob_bytes, args.ask_backend) as running:
            figures["setup_seconds"] = round(time.monotonic() - started, 1)
            measure(args, running, figures)
    finally:
        if args.keep:
            print(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    figures["minutes"] = round((time.monotonic() - started) / 60, 1)
    print(report(args, figures))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
