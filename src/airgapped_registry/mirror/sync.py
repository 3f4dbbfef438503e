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
from collections import Counter
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

from airgapped_registry import defaults
from airgapped_registry.errors import AirgapError, InvariantError, RegistryError
from airgapped_registry.mirror.bounds import RunBounds, Stop
from airgapped_registry.mirror.copiers import (
    ENGINE,
    Copier,
    EngineCopier,
    SkopeoCopier,
    destination_manifest,
)
from airgapped_registry.mirror.helmrepo import copy_classic_chart
from airgapped_registry.mirror.ledger import BlobLedger
from airgapped_registry.mirror.lock import Lock, LockEntry
from airgapped_registry.mirror.outcome import (
    FAILED,
    OK,
    SKIPPED,
    EntryFailure,
    EntryResult,
    classify,
    storage_full_failure,
)
from airgapped_registry.mirror.plan import (
    Plan,
    PlannedEntry,
    destination_reference,
    fingerprint,
    plan,
)
from airgapped_registry.mirror.signatures import SignatureCheck, copy_signatures
from airgapped_registry.mirror.sources import CopySource, source_access
from airgapped_registry.mirror.spec import MirrorSpec
from airgapped_registry.state.store import StateStore, summary_line
from airgapped_registry.tools import skopeo
from airgapped_registry.tools.process import Runner, Tools, run_command
from airgapped_registry.transport.access import RegistryAccess
from airgapped_registry.transport.counters import RequestCount
from airgapped_registry.transport.registry import RegistryClient
from airgapped_registry.transport.retry import Backoff, RetryPolicy, is_storage_full, pause
from airgapped_registry.transport.urls import UrlFetcher, read_url

Progress = Callable[["EntryResult", int, int], None]


@dataclass(frozen=True)
class Destination:
    """The registry a sync writes to, with what skopeo and the engine need to reach it.

    ``auth_file``: a docker-style auth.json holding an entry for this registry (else the
    registry is reached without credentials).
    """

    url: str
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    auth_file: str | None = None
    timeout: float = defaults.REQUEST_TIMEOUT

    @property
    def address(self) -> str:
        return self.access().address

    def access(self) -> RegistryAccess:
        return RegistryAccess.endpoint(
            self.url,
            ca_file=self.ca_file,
            cert_file=self.cert_file,
            key_file=self.key_file,
            auth_file=self.auth_file,
            timeout=self.timeout,
            name="destination",
        )

    def client(self) -> RegistryClient:
        return self.access().client()


@dataclass(frozen=True)
class SyncOptions:
    """How a sync runs.

    ``attempts``: tries per entry (transient failures only), waiting ``backoff`` seconds
    doubled after each. ``retry_times``: skopeo's own retries of one copy. ``timeout``: the
    longest one skopeo or cosign run may take, in seconds. ``engine_copy_max_bytes``: an entry
    whose blobs still to upload (after those the destination holds or can mount) weigh at
    most this much is copied by the engine itself over its open connections; a heavier one
    by skopeo. 0: skopeo copies every entry. ``deadline``: seconds the whole run (relock and
    plan included) may take; no entry or retry starts after it, and the entries left are
    reported not attempted (None: no deadline).
    """

    workers: int = defaults.SYNC_WORKERS
    attempts: int = defaults.SYNC_ATTEMPTS
    backoff: float = defaults.SYNC_BACKOFF
    retry_times: int = defaults.SKOPEO_RETRY_TIMES
    keep_going: bool = False
    timeout: float = defaults.TOOL_TIMEOUT
    skopeo: str = "skopeo"
    cosign: str = "cosign"
    engine_copy_max_bytes: int = defaults.ENGINE_COPY_MAX_BYTES
    deadline: float | None = defaults.SYNC_DEADLINE

    def __post_init__(self) -> None:
        if self.workers < 1 or self.attempts < 1 or self.retry_times < 0:
            raise ValueError("sync options: workers and attempts must be >= 1, retry_times >= 0")
        if self.engine_copy_max_bytes < 0:
            raise ValueError("sync options: engine_copy_max_bytes must be >= 0")
        if self.backoff < 0 or self.timeout <= 0:
            raise ValueError("sync options: backoff must be >= 0 and timeout > 0")
        if self.deadline is not None and self.deadline <= 0:
            raise ValueError("sync options: deadline must be > 0 (or None: no deadline)")


class EntryWorker:
    """Copies planned entries, one per call of :meth:`run`, from the worker threads.

    Shared by the workers: the destination client, the ledger, the copiers (the engine's
    first, then skopeo), the signature check and the sources, opened once each.
    """

    def __init__(
        self,
        destination: Destination,
        client: RegistryClient,
        spec: MirrorSpec | None,
        options: SyncOptions,
        workdir: Path,
        runner: Runner,
        fetch_url: UrlFetcher,
        manifests: Mapping[str, bytes] | None = None,
        bounds: RunBounds | None = None,
    ) -> None:
        self.destination = destination
        self.client = client
        self.spec = spec
        self.options = options
        self.workdir = workdir
        self.fetch_url = fetch_url
        self.bounds = bounds or RunBounds(options.deadline)
        self.backoff = Backoff(first=options.backoff)
        self.tools = Tools(runner, options.timeout, self.bounds.remaining)
        self.ledger = BlobLedger()
        self.copiers: list[Copier] = [
            EngineCopier(client, self.ledger, options.engine_copy_max_bytes, manifests),
            SkopeoCopier(
                client,
                self.ledger,
                self.tools,
                destination.address,
                skopeo.destination_flags(destination.access(), workdir),
                skopeo_path=options.skopeo,
                retry_times=options.retry_times,
            ),
        ]
        self.signatures = SignatureCheck(spec, self.tools, options.cosign) if spec else None
        self.copies: Counter[str] = Counter()
        self._sources: dict[str, CopySource] = {}
        self._lock = threading.Lock()

    def close(self) -> None:
        for source in self._sources.values():
            source.client.close()

    def source_requests(self) -> dict[str, dict[str, Any]]:
        return {
            name: source.before.since(source.client)
            for name, source in sorted(self._sources.items())
        }

    def run(self, planned: PlannedEntry, stop: threading.Event) -> EntryResult:
        reference = destination_reference(self.destination.address, planned.entry)
        if stop.is_set():
            detail = "not attempted: an earlier entry failed (use --keep-going to go on)"
            return EntryResult(planned, SKIPPED, detail, reference)
        halted = self.bounds.halted()
        if halted is None:
            done = self.ledger.claim(planned.blobs, self.bounds.wait_for)
            try:
                halted = self.bounds.halted()
                if halted is None:
                    return self._attempts(planned, reference, stop)
            finally:
                done.set()
        return EntryResult(planned, SKIPPED, f"not attempted: {halted}", reference)

    def _attempts(
        self, planned: PlannedEntry, reference: str, stop: threading.Event
    ) -> EntryResult:
        started = time.monotonic()
        attempt = 0
        while True:
            attempt += 1
            try:
                sent, copier = self._copy(planned)
            except Exception as exc:
                permanent, message = classify(exc)
                if isinstance(exc, EntryFailure) and exc.storage_full:
                    self.bounds.storage_full()
                if not permanent and attempt < self.options.attempts:
                    refused = self._before_retry(attempt, exc)
                    if refused is None:
                        continue
                    message = f"{message} (not tried again: {refused})"
                if not self.options.keep_going:
                    stop.set()
                tries = f" (after {attempt} attempts)" if attempt > 1 else ""
                return EntryResult(
                    planned,
                    FAILED,
                    "failed",
                    reference,
                    duration=time.monotonic() - started,
                    attempts=attempt,
                    error=f"{planned.reference}: {message}{tries}",
                )
            detail = "signatures copied" if planned.content_present else "copied"
            return EntryResult(
                planned,
                OK,
                detail,
                reference,
                in_sync=True,
                bytes=sent,
                duration=time.monotonic() - started,
                attempts=attempt,
                copier=copier,
            )

    def _before_retry(self, attempt: int, exc: BaseException) -> str | None:
        """Wait before the next try (jittered, not before ``Retry-After``); or why not."""
        wait = self.backoff.delay(attempt, getattr(exc, "retry_after", None))
        remaining = self.bounds.remaining()
        if remaining is not None and wait >= remaining:
            return f"the run's deadline ({self.bounds.deadline:g} s) leaves no time"
        pause(wait, self.bounds.stop)
        return self.bounds.halted()

    def _copy(self, planned: PlannedEntry) -> tuple[int, str | None]:
        """Copy one entry; ``(bytes sent, who copied the content)``."""
        try:
            return self._copy_entry(planned)
        except RegistryError as exc:
            if is_storage_full(exc):
                raise storage_full_failure(exc) from exc
            raise

    def _copy_entry(self, planned: PlannedEntry) -> tuple[int, str | None]:
        entry = planned.entry
        sent = 0
        body: bytes | None = None
        copier = None
        if entry.archive is not None:
            if not planned.content_present:
                sent += copy_classic_chart(entry, self.client, self.fetch_url)
                copier = ENGINE
        else:
            source = self._source(entry)
            if self.signatures is None:  # _source refuses a sync without a list
                raise InvariantError(f"{entry.reference}: no mirror list for its signatures")
            keys = self.signatures.keys(entry)
            if keys:
                self.signatures.verify(entry, source, keys)
            if not planned.content_present:
                for strategy in self.copiers:
                    copied = strategy.copy(entry, source)
                    if copied is not None:
                        sent, body = copied
                        copier = strategy.name
                        break
            sent += copy_signatures(entry, source, self.client, check_all=planned.forced)
        if body is None:
            body = destination_manifest(self.client, entry)
        if not planned.content_present:
            self.client.put_manifest(entry.destination, entry.tag, body, entry.manifest.media_type)
        self.ledger.holds(entry.destination, entry.content_blobs())
        if copier:
            with self._lock:
                self.copies[copier] += 1
        return sent, copier

    def _source(self, entry: LockEntry) -> CopySource:
        name = entry.source
        if self.spec is None or name is None or name not in self.spec.sources:
            where = self.spec.path if self.spec else "no mirror list given"
            raise EntryFailure(f"source {name!r} is not in the mirror list ({where})", True)
        with self._lock:
            if name not in self._sources:
                access = source_access(self.spec, self.spec.sources[name], self.destination.timeout)
                try:
                    self._sources[name] = CopySource.open(access, self.workdir / f"source-{name}")
                except (AirgapError, OSError) as exc:
                    # Files named by the list (CA, client pair, credentials): a retry cannot help.
                    cause = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
                    raise EntryFailure(f"source {name!r}: {cause}", permanent=True) from exc
            source = self._sources[name]
        if source.access.registry != entry.registry:
            raise EntryFailure(
                f"the lock reads source {name!r} at {entry.registry}, the mirror list at "
                f"{source.access.registry}: lock again",
                permanent=True,
            )
        return source


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
