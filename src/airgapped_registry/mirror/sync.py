"""The sync: copy what the plan says is missing, so that a tag only ever names complete content.

For each entry the plan marks ``copy``, one worker (``workers`` run side by side) does, in
this order:

1. when the entry's signature policy has keys: ``cosign verify`` the upstream digest at the
   source with each key until one verifies; none does → the entry fails, nothing is written;
2. copy the content **by digest**. An entry with at most ``engine_copy_max_bytes`` left to
   upload is copied by the engine: blobs mounted where its ledger knows they are, else
   mounted from the repository itself or uploaded (fetched from the source, digest-checked),
   then the children by digest; the top manifest is kept for step 5. A heavier one is
   copied by skopeo (``--preserve-digests``): an index with ``--all`` (the index is written
   by skopeo after its children), a single manifest as it is; a ``filter`` entry copies each
   kept child by digest, then writes the index the lock recorded
   (:func:`~airgapped_registry.oci.manifest.filtered_index` of the upstream index, checked
   against the lock's digest). A classic Helm chart is fetched, checked against the lock and
   pushed as :func:`~airgapped_registry.oci.helm.chart_manifest` by digest;
3. copy the cosign signatures, attestations and SBOMs the lock lists (small manifests: read
   from the source into memory, digest-checked, pushed blob by blob, then tagged);
4. after skopeo, check the destination holds the lock's manifest by digest (``GET``, the
   digest is verified on the bytes) and that it lists the children / blobs the lock
   recorded (after the engine, the bytes it checked in step 2 are those);
5. only then write ``destination:tag``: a ``PUT`` of those same bytes (same digest).

Both copiers check every blob they copy against its digest (a corrupt upstream blob fails
the copy) and skip blobs the destination already holds (a rerun after an interrupted one
sends only what is missing); the registry refuses a manifest whose blobs or children it does
not hold. A failure before step 5 leaves the tag where it was.

Each entry is retried with exponential, jittered backoff on transient failures (network,
5xx, 429; never before ``Retry-After``); digest mismatches, failed signature verifications,
stale locks, a full destination and the engine's own errors are not retried. Without
``keep_going``, the first failure stops the run from starting further entries; a full
destination, the run's deadline or a stop request (:mod:`~airgapped_registry.mirror.bounds`)
stop it in any case.

The pieces: :mod:`~airgapped_registry.mirror.copiers` (the engine and skopeo copiers),
:mod:`~airgapped_registry.mirror.ledger` (blobs known held), :mod:`~airgapped_registry.mirror.
signatures` (policy, cosign, signature copies), :mod:`~airgapped_registry.mirror.helmrepo`
(classic charts). This module runs them: the plan, the workers, retries, state and report.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

from airgapped_registry import defaults
from airgapped_registry.errors import AirgapError
from airgapped_registry.mirror.bounds import RunBounds, Stop
from airgapped_registry.mirror.lock import Lock
from airgapped_registry.mirror.outcome import (
    FAILED,
    OK,
    SKIPPED,
    EntryResult,
)
from airgapped_registry.mirror.plan import (
    Plan,
    destination_reference,
    fingerprint,
    plan,
)
from airgapped_registry.mirror.spec import MirrorSpec
from airgapped_registry.mirror.worker import Destination, EntryWorker, SyncOptions
from airgapped_registry.state.store import StateStore, summary_line
from airgapped_registry.tools.process import Runner, run_command
from airgapped_registry.transport.counters import RequestCount
from airgapped_registry.transport.registry import RegistryClient
from airgapped_registry.transport.retry import RetryPolicy
from airgapped_registry.transport.urls import UrlFetcher, read_url

Progress = Callable[["EntryResult", int, int], None]

# The sync's surface for its callers (CLI, modules, tests): the run and its two inputs.
__all__ = ["Destination", "Progress", "SyncOptions", "sync"]

# -- the run -------------------------------------------------------------------------------


def sync(
    lock: Lock | Callable[[RetryPolicy], Lock],
    destination: Destination,
    spec: MirrorSpec | None = None,
    *,
    options: SyncOptions | None = None,
    state: StateStore | None = None,
    lock_path: str | None = None,
    runner: Runner = run_command,
    fetch_url: UrlFetcher | None = None,
    progress: Progress | None = None,
    manifests: Mapping[str, bytes] | None = None,
    previous: Lock | None = None,
    force: bool = False,
    stop: Stop | None = None,
) -> dict[str, Any]:
    """Bring ``destination`` in line with ``lock``; returns the run's report.

    ``spec`` (the mirror list the lock came from) tells how to reach each source and which
    signature policy applies; it is needed only when something must be copied. With
    ``state``, the plan uses the fingerprints of the last sync, each entry's outcome is
    recorded as it finishes, and the run enters the run log. ``progress`` is called from the
    calling thread after each copied or failed entry, with the count done and the total.

    ``manifests`` (digest → bytes, e.g. what the relock just fetched) spares the engine's
    copies fetching those manifests again; ``previous`` (the lock this one replaced) tells
    which blobs a destination tag that still names a previous digest already holds.

    ``lock`` may be a function making the lock (a relock against the sources), given the
    retry policy its requests follow: it is called while the destination tags ``previous``
    names are HEADed side by side, so that the source and the destination work at the same
    time. The relock's and the plan's requests are retried like copies (``attempts``,
    ``backoff``); a run that still cannot resolve or plan reports it (``error``, one
    failure) and enters the run log, with nothing copied.

    ``stop`` (set from a signal handler, or by the run itself when the destination's storage
    is full) ends retry waits at once and starts no further entry; with the deadline
    (``options.deadline``), the entries left are reported ``not attempted: <why>``.

    ``force`` copies every entry again (see :func:`~airgapped_registry.mirror.plan.plan`) and
    trusts no tag for the ledger: what a deep verify found missing is put back.
    """
    options = options or SyncOptions()
    bounds = RunBounds(options.deadline, stop or Stop())
    started = bounds.started
    with destination.client() as client:
        before = RequestCount.of(client)
        fingerprints = state.fingerprints(destination.address) if state else None
        client.retry = bounds.policy(options.attempts, options.backoff)
        try:
            lock, currents = _resolve(lock, client, previous, bounds.policy, options)
            the_plan = plan(
                lock,
                client,
                fingerprints=fingerprints,
                workers=max(options.workers, defaults.PLAN_WORKERS),
                currents=currents,
                force=force,
            )
        except AirgapError as exc:
            known = lock if isinstance(lock, Lock) else previous
            return _unfinished(exc, destination, known, state, lock_path, bounds, options)
        finally:
            # Copies retry whole entries: their requests are tried once each.
            client.retry = RetryPolicy()
        run_id = state.start_run(destination.url, lock_path) if state else None
        results: dict[tuple[str, str], EntryResult] = {}
        for planned in the_plan.up_to_date:
            reference = destination_reference(destination.address, planned.entry)
            results[planned.entry.key] = EntryResult(
                planned, SKIPPED, "up to date", reference, in_sync=True
            )
        if state:
            for result in results.values():
                state.record(result.state(run_id, fingerprint(result.entry)))
        with TemporaryDirectory(prefix="airgap-sync-") as workdir:
            worker = EntryWorker(
                destination,
                client,
                spec,
                options,
                Path(workdir),
                runner,
                fetch_url or read_url,
                manifests,
                bounds,
            )
            if not force:
                worker.ledger.seed(the_plan, previous)
            try:
                _copy_all(the_plan, worker, options, results, state, run_id, progress)
            finally:
                worker.close()
            sources = worker.source_requests()
            tools = dict(sorted(worker.tools.runs.items()))
            copies = dict(sorted(worker.copies.items()))
        requests = {"destination": before.since(client), "sources": sources}
    ordered = [results[entry.key] for entry in lock.entries]
    copied = sum(result.result == OK for result in ordered)
    failed = [result for result in ordered if result.result == FAILED]
    not_attempted = sum(result.result == SKIPPED and not result.in_sync for result in ordered)
    sent = sum(result.bytes for result in ordered)
    duration = time.monotonic() - started
    counts = {"entries": len(ordered), "copied": copied, "failures": len(failed)}
    if state and run_id is not None:
        summary = state.finish_run(
            run_id,
            skipped=len(ordered) - copied - len(failed),
            bytes_sent=sent,
            duration=duration,
            **counts,
        )
    else:
        summary = summary_line(len(ordered), copied, sent, duration, len(failed))
    return {
        "destination": destination.url,
        "lock": lock_path,
        "run_id": run_id,
        "entries": len(ordered),
        "copied": copied,
        "up_to_date": len(the_plan.up_to_date),
        "failed": len(failed),
        "not_attempted": not_attempted,
        "bytes": sent,
        "duration": round(duration, 3),
        "summary": summary,
        "errors": [result.error for result in failed],
        "deadline": options.deadline,
        "stopped": bounds.halted(),
        "interrupted": bounds.stop.signal,
        "requests": requests,
        "tools": tools,
        "copies": copies,
        "results": [result.to_json() for result in ordered],
    }


def _resolve(
    lock: Lock | Callable[[RetryPolicy], Lock],
    client: RegistryClient,
    previous: Lock | None,
    policy: Callable[[int, float], RetryPolicy],
    options: SyncOptions,
) -> tuple[Lock, dict[tuple[str, str], Any]]:
    """The lock (made now when ``lock`` is a function), and what the destination tags of
    ``previous`` resolved to meanwhile."""
    if not callable(lock):
        return lock, {}
    keys = [entry.key for entry in previous.entries] if previous else []
    with ThreadPoolExecutor(defaults.PLAN_WORKERS, thread_name_prefix="airgap-plan") as pool:
        heads = {key: pool.submit(client.head_manifest, *key) for key in keys}
        try:
            made = lock(policy(options.attempts, options.backoff))
        finally:
            for future in heads.values():
                future.cancel()
        return made, {key: f.result() for key, f in heads.items() if not f.cancelled()}


def _unfinished(
    exc: AirgapError,
    destination: Destination,
    known: Lock | None,
    state: StateStore | None,
    lock_path: str | None,
    bounds: RunBounds,
    options: SyncOptions,
) -> dict[str, Any]:
    """The report (and run log record) of a run that failed before copying anything."""
    entries = len(known.entries) if known else 0
    duration = time.monotonic() - bounds.started
    run_id = None
    if state:
        run_id = state.start_run(destination.url, lock_path)
        summary = state.finish_run(
            run_id,
            entries=entries,
            copied=0,
            skipped=entries,
            failures=1,
            bytes_sent=0,
            duration=duration,
        )
    else:
        summary = summary_line(entries, 0, 0, duration, 1)
    return {
        "destination": destination.url,
        "lock": lock_path,
        "run_id": run_id,
        "entries": entries,
        "copied": 0,
        "up_to_date": 0,
        "failed": 1,
        "not_attempted": entries,
        "bytes": 0,
        "duration": round(duration, 3),
        "summary": summary,
        "error": str(exc),
        "errors": [str(exc)],
        "deadline": options.deadline,
        "stopped": bounds.halted(),
        "interrupted": bounds.stop.signal,
        "results": [],
    }


def _copy_all(
    the_plan: Plan,
    worker: EntryWorker,
    options: SyncOptions,
    results: dict[tuple[str, str], EntryResult],
    state: StateStore | None,
    run_id: int | None,
    progress: Progress | None,
) -> None:
    stop = threading.Event()
    to_copy = the_plan.to_copy
    with ThreadPoolExecutor(options.workers) as pool:
        futures = [pool.submit(worker.run, planned, stop) for planned in to_copy]
        for done, future in enumerate(as_completed(futures), start=1):
            result = future.result()
            results[result.entry.key] = result
            if state:
                state.record(result.state(run_id, fingerprint(result.entry)))
            if progress:
                progress(result, done, len(to_copy))
