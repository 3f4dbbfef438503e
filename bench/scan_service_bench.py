#!/usr/bin/env python3
"""Push -> verdict through the scan service, and the push itself with and without it.

Prints figures; it is not a test. Starts real Distribution instances on loopback: a source
holding :mod:`airgap_lab.sample` (its Trivy DB artifact included), a backend that notifies
``airgap scan serve`` (real Trivy, the fixture DB installed with ``airgap scan db update``,
no attestation), and a plain backend without any scanner. Each of ``--pushes`` distinct
sample images (two platforms each) is copied with ``skopeo copy --all`` into a ``ci/``
repository of both backends in turn; measured for each push:

- the ``skopeo copy`` time into each backend (the push "no slower with the scanner running");
- push -> verdict: from the start of the copy until the index's verdict is in the state
  store (polled every 20 ms).

Then an idle reconciliation over everything the backend serves: time and requests.

``--reconcile-repositories N``: instead, the reconciliation alone at scale: the sample with
N repositories of 3 tags (about 9 N + 20 digests) in one backend, a first pass (which fetches
each index once), every digest given a current verdict as workers would record it, then
three passes with nothing to do.

    .venv/bin/python bench/scan_service_bench.py --pushes 20
    .venv/bin/python bench/scan_service_bench.py --reconcile-repositories 55
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import io
import json
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(PROJECT / "src"), str(PROJECT / "lab"), str(PROJECT)]

from airgap_lab.sample import SampleSpec, build, push  # noqa: E402
from airgapped_registry.cli import main as airgap  # noqa: E402
from airgapped_registry.transport.registry import RegistryClient  # noqa: E402

REGISTRY = "/usr/bin/docker-registry"
SKOPEO = "/usr/bin/skopeo"
TRIVY = PROJECT / ".venv" / "bin" / "trivy"


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def registry(root: Path, notify: str | None = None) -> tuple[subprocess.Popen[bytes], str]:
    root.mkdir(parents=True)
    port = free_port()
    config: dict[str, object] = {
        "version": 0.1,
        "log": {"level": "warn"},
        "storage": {"filesystem": {"rootdirectory": str(root / "storage")}},
        "http": {"addr": f"127.0.0.1:{port}", "secret": "bench"},
    }
    if notify:
        config["notifications"] = {
            "endpoints": [
                {
                    "name": "scanner",
                    "url": notify,
                    "timeout": "2s",
                    "threshold": 3,
                    "backoff": "1s",
                    "ignore": {"actions": ["pull"]},
                }
            ]
        }
    (root / "config.yml").write_text(json.dumps(config))
    process = subprocess.Popen(
        [REGISTRY, "serve", str(root / "config.yml")],
        stdout=(root / "log").open("wb"),
        stderr=subprocess.STDOUT,
        env={"PATH": "/usr/bin:/bin"},
    )
    address = f"127.0.0.1:{port}"
    for _ in range(200):
        with contextlib.suppress(OSError):
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            connection.request("GET", "/v2/")
            if connection.getresponse().status == 200:
                return process, address
        time.sleep(0.05)
    raise SystemExit(f"registry in {root} did not start")


def run_airgap(*args: str) -> dict[str, object]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        status = airgap(list(args))
    if status:
        raise SystemExit(f"airgap {' '.join(args)}: exit {status}")
    return dict(json.loads(out.getvalue()))


def copy(source: str, destination: str) -> float:
    started = time.monotonic()
    subprocess.run(
        [
            SKOPEO,
            "--insecure-policy",
            "copy",
            "--all",
            "--src-tls-verify=false",
            "--dest-tls-verify=false",
            f"docker://{source}",
            f"docker://{destination}",
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return time.monotonic() - started


def verdict_of(state: Path, repository: str, digest: str) -> str | None:
    if not state.exists():
        return None
    with contextlib.closing(sqlite3.connect(state, timeout=5)) as db:
        row = db.execute(
            "SELECT status FROM scan_verdicts WHERE repository = ? AND digest = ?",
            (repository, digest),
        ).fetchone()
    return row[0] if row else None


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def reconcile_at_scale(repositories: int) -> None:
    from airgapped_registry.scanning.verdict import DbInfo
    from airgapped_registry.service.reconcile import reconcile
    from airgapped_registry.state.store import StateStore, utc_now
    from airgapped_registry.state.verdicts import VerdictRecord, VerdictStore

    sample = build(
        SampleSpec(
            repositories=repositories,
            tags_per_repository=3,
            base_layer_bytes=512,
            unique_layer_bytes=512,
        )
    )
    with tempfile.TemporaryDirectory(prefix="scan-bench-") as scratch:
        work = Path(scratch)
        process, address = registry(work / "backend")
        try:
            client = RegistryClient(f"http://{address}")
            push(sample, client)
            db = DbInfo("sha256:" + "d" * 64, datetime.now(UTC))
            with StateStore(work / "state.db") as store:
                verdicts = VerdictStore(store)
                first = reconcile(client, verdicts, db).to_json()
                now = utc_now()
                for item in verdicts.queue():
                    verdicts.record(
                        VerdictRecord(
                            item.repository,
                            item.digest,
                            "pass",
                            "CRITICAL",
                            {},
                            [],
                            now,
                            db_digest=db.digest,
                            db_updated_at=now,
                        )
                    )
                    verdicts.done(item)
                idle = [reconcile(client, verdicts, db).to_json() for _ in range(3)]
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=60)
    print(
        f"first pass: {first['digests']} digests ({first['repositories']} repositories, "
        f"{first['tags']} tags), {first['indexes_fetched']} indexes fetched, "
        f"{first['requests']['total']} requests, {first['seconds']} s, queued {first['queued']}"
    )
    for number, result in enumerate(idle, 1):
        print(
            f"idle pass {number}: {result['current']} current, queued "
            f"{result['queued'] + result['requeued']}, {result['requests']['total']} "
            f"requests {result['requests']['by_method']}, {result['seconds']} s"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--pushes", type=int, default=20)
    parser.add_argument("--reconcile-repositories", type=int, metavar="N")
    args = parser.parse_args()
    if args.reconcile_repositories:
        reconcile_at_scale(args.reconcile_repositories)
        return
    sample = build(
        SampleSpec(
            repositories=args.pushes,
            tags_per_repository=1,
            base_layer_bytes=64 * 1024,
            unique_layer_bytes=256 * 1024,
        )
    )
    apps = sorted(r for r in sample.expected() if r.startswith("sample/app-"))[: args.pushes]
    processes = []
    with tempfile.TemporaryDirectory(prefix="scan-bench-") as scratch:
        work = Path(scratch)
        try:
            source, source_address = registry(work / "source")
            processes.append(source)
            push(sample, RegistryClient(f"http://{source_address}"))
            listen = free_port()
            backend, backend_address = registry(
                work / "backend", f"http://127.0.0.1:{listen}/events"
            )
            plain, plain_address = registry(work / "plain")
            processes += [backend, plain]
            client = RegistryClient(f"http://{backend_address}")
            for name in ("aquasecurity/trivy-db:2",):
                copy(f"{source_address}/{name}", f"{backend_address}/{name}")
            db = client.head_manifest("aquasecurity/trivy-db", "2")
            assert db is not None
            lock = work / "relay.lock"
            lock.write_text(
                json.dumps(
                    {
                        "version": 1,
                        "entries": [
                            {
                                "destination": "aquasecurity/trivy-db",
                                "tag": "2",
                                "digest": db.digest,
                            }
                        ],
                    }
                )
            )
            state = work / "state.db"
            config = work / "provenance.yaml"
            config.write_text(
                json.dumps(
                    {
                        "version": 1,
                        "backend": f"http://{backend_address}",
                        "state": str(state),
                        "scanning": {
                            "trivy": str(TRIVY),
                            "cache_dir": str(work / "trivy"),
                            "db": {"lock": str(lock)},
                            "listen": f"127.0.0.1:{listen}",
                            "workers": 2,
                            "reconcile_interval": "1h",
                            "attest": False,
                        },
                    }
                )
            )
            run_airgap("scan", "db", "update", "--config", str(config))
            service = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "airgapped_registry.cli",
                    "scan",
                    "serve",
                    "--config",
                    str(config),
                ],
                stdout=subprocess.DEVNULL,
                stderr=(work / "serve.log").open("w"),
                env={**os.environ, "PYTHONPATH": str(PROJECT / "src")},
            )
            processes.append(service)
            time.sleep(2)
            latencies, with_scanner, without = [], [], []
            for number, reference in enumerate(apps):
                digest = sample.expected()[reference]["digest"]
                started = time.monotonic()
                with_scanner.append(
                    copy(f"{source_address}/{reference}", f"{backend_address}/ci/bench-{number}:1")
                )
                while verdict_of(state, f"ci/bench-{number}", digest) is None:
                    if time.monotonic() - started > 300:
                        raise SystemExit(f"no verdict for {reference}; see {work}/serve.log")
                    time.sleep(0.02)
                latencies.append(time.monotonic() - started)
                without.append(
                    copy(f"{source_address}/{reference}", f"{plain_address}/ci/bench-{number}:1")
                )
            idle = run_airgap("scan", "reconcile", "--config", str(config))
        finally:
            for process in reversed(processes):
                process.send_signal(signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(timeout=60)
    print(f"pushes: {len(latencies)} distinct two-platform images, skopeo copy --all")
    print(
        f"push -> verdict: p50 {statistics.median(latencies):.2f} s, "
        f"p95 {percentile(latencies, 0.95):.2f} s, max {max(latencies):.2f} s"
    )
    print(
        f"push alone, scanner running: p50 {statistics.median(with_scanner):.2f} s, "
        f"p95 {percentile(with_scanner, 0.95):.2f} s"
    )
    print(
        f"push alone, no scanner:      p50 {statistics.median(without):.2f} s, "
        f"p95 {percentile(without, 0.95):.2f} s"
    )
    requests = idle["requests"]
    assert isinstance(requests, dict)
    print(
        f"idle reconciliation: {idle['digests']} digests, {requests['total']} requests, "
        f"{idle['seconds']} s, queued {idle['queued']}"
    )


if __name__ == "__main__":
    main()
