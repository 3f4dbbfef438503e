#!/usr/bin/env python3
"""Benchmark of the audit log: records appended per second by 1, 4 and 16 threads, and the
time one ``append`` takes, under each durability setting.

Prints figures; it is not a test and asserts nothing about time. See docs/performance.md,
"Audit log" (issue 10, "Performance"), and docs/audit.md, "Durability".

Each run opens a fresh log (a real Ed25519 key, checkpoints every 1000 records as shipped,
rotation at 64 MiB) in a directory on disk (``--directory``; its filesystem is printed:
tmpfs would make fsync free), starts the threads together, and has each append
``--records / threads`` gate-sized records (the contract's example, ~450 bytes). Settings:

- ``fsync=1s`` (the default): ``append`` returns once the line is in the page cache; a timer
  fsyncs within 1 s, and every checkpoint is fsynced with head.json.
- ``fsync=0``: ``append`` returns after fsync of the line (every record on disk before the
  gate answers).
- ``fsync=1s+syslog``: the default setting plus forwarding to a UDP receiver on loopback
  (in this process); ``sent``: the messages the forwarder had sent when the writers were
  done (it catches up afterwards: it reads the log, the writers never wait for it).

After each run the log is verified (``verify`` with head.json), so a figure never comes from
a broken chain.

    .venv/bin/python bench/audit_bench.py
    .venv/bin/python bench/audit_bench.py --records 5000 --fsync-records 500
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from airgapped_registry.audit import (
    AuditConfig,
    AuditEvent,
    AuditLog,
    Identity,
    SyslogConfig,
    init_key,
    verify,
)

EVENT = AuditEvent(
    identity=Identity(
        subject="CN=node,OU=puller",
        serial="4F2A91",
        issuer="CN=Airgapped Registry CA",
        fingerprint="9c" * 32,
    ),
    client="10.89.0.5",
    request_id="8f14e45fceea167a5a36dedd4bea2543",
    action="pull",
    method="GET",
    repository="prod/app",
    reference="1.0",
    digest="sha256:" + "ab" * 32,
    decision="allow",
    reason="signed+pass",
)


def run(config: AuditConfig, threads: int, records: int) -> dict[str, float]:
    per_thread = records // threads
    latencies: list[list[float]] = [[] for _ in range(threads)]
    start = threading.Barrier(threads + 1)

    with AuditLog.open(config) as log:

        def writer(index: int) -> None:
            mine = latencies[index]
            start.wait()
            for _ in range(per_thread):
                began = time.perf_counter()
                log.append(EVENT)
                mine.append(time.perf_counter() - began)

        workers = [threading.Thread(target=writer, args=(i,)) for i in range(threads)]
        for worker in workers:
            worker.start()
        start.wait()
        began = time.perf_counter()
        for worker in workers:
            worker.join()
        elapsed = time.perf_counter() - began
        sent = log.forwarder.sent if log.forwarder else 0
    result = verify(config.directory, config.key.with_suffix(".pub"), config.head)
    if not result.ok:
        raise SystemExit(f"the log does not verify: {result.first_bad}")
    every = sorted(value for chunk in latencies for value in chunk)
    return {
        "records": per_thread * threads,
        "seconds": elapsed,
        "per_second": per_thread * threads / elapsed,
        "p50_ms": statistics.median(every) * 1000,
        "p99_ms": every[int(len(every) * 0.99) - 1] * 1000,
        "max_ms": every[-1] * 1000,
        "checkpoints": result.checkpoints,
        "forwarded": sent,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--directory", type=Path, default=Path("/var/tmp"), help="where to write")
    parser.add_argument("--records", type=int, default=48000, help="records per run (fsync=1s)")
    parser.add_argument("--fsync-records", type=int, default=3200, help="records per fsync=0 run")
    parser.add_argument("--threads", default="1,4,16")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="audit-bench-", dir=args.directory))
    try:
        fs = subprocess.run(
            ["stat", "-f", "-c", "%T", str(work)], capture_output=True, text=True, check=False
        ).stdout.strip()
        load = Path("/proc/loadavg").read_text().split()[:3]
        print(f"directory {work} ({fs}); python {sys.version.split()[0]}; load {' '.join(load)}")
        key = work / "state" / "checkpoint.key"
        init_key(key)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sink:
            sink.bind(("127.0.0.1", 0))
            sink.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
            drained = threading.Event()

            def drain() -> None:
                sink.settimeout(0.2)
                while not drained.is_set():
                    try:
                        sink.recv(65536)
                    except OSError:
                        continue

            threading.Thread(target=drain, daemon=True).start()
            settings = [
                ("fsync=1s", {"fsync": 1.0}, args.records),
                ("fsync=0", {"fsync": 0.0}, args.fsync_records),
                (
                    "fsync=1s+syslog",
                    {
                        "fsync": 1.0,
                        "syslog": SyslogConfig(f"udp://127.0.0.1:{sink.getsockname()[1]}"),
                    },
                    args.records,
                ),
            ]
            print(
                f"{'setting':16} {'threads':>7} {'records':>8} {'rec/s':>9} {'p50 ms':>8} "
                f"{'p99 ms':>8} {'max ms':>8} {'ckpts':>6} {'sent':>6}"
            )
            for name, changes, records in settings:
                for threads in (int(n) for n in args.threads.split(",")):
                    run_dir = work / f"{name}-{threads}"
                    config = dataclasses.replace(
                        AuditConfig(
                            directory=run_dir / "log",
                            key=key,
                            head=run_dir / "state" / "head.json",
                        ),
                        **changes,
                    )
                    figures = run(config, threads, records)
                    print(
                        f"{name:16} {threads:7d} {figures['records']:8.0f} "
                        f"{figures['per_second']:9.0f} {figures['p50_ms']:8.3f} "
                        f"{figures['p99_ms']:8.3f} {figures['max_ms']:8.2f} "
                        f"{figures['checkpoints']:6.0f} {figures['forwarded']:6.0f}",
                        flush=True,
                    )
                    shutil.rmtree(run_dir)
            drained.set()
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
