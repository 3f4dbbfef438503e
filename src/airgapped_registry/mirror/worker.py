"""One sync worker's side: where it writes (:class:`Destination`), how the run goes
(:class:`SyncOptions`), and :class:`EntryWorker`, which copies one planned entry per call:
signatures verified, content by the first copier that takes it, signatures copied, tag last,
retried with jittered backoff on transient failures. :mod:`~airgapped_registry.mirror.sync`
runs the workers, the plan, the state and the report.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from airgapped_registry import defaults
from airgapped_registry.errors import AirgapError, InvariantError, RegistryError
from airgapped_registry.mirror.bounds import RunBounds
from airgapped_registry.mirror.copiers import (
    ENGINE,
    Copier,
    EngineCopier,
    SkopeoCopier,
    destination_manifest,
)
from airgapped_registry.mirror.helmrepo import copy_classic_chart
from airgapped_registry.mirror.ledger import BlobLedger
from airgapped_registry.mirror.lock import LockEntry
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
    PlannedEntry,
    destination_reference,
)
from airgapped_registry.mirror.signatures import SignatureCheck, copy_signatures
from airgapped_registry.mirror.sources import CopySource, source_access
from airgapped_registry.mirror.spec import MirrorSpec
from airgapped_registry.tools import skopeo
from airgapped_registry.tools.process import Runner, Tools
from airgapped_registry.transport.access import RegistryAccess
from airgapped_registry.transport.registry import RegistryClient
from airgapped_registry.transport.retry import Backoff, is_storage_full, pause
from airgapped_registry.transport.urls import UrlFetcher


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
    reported not attempted (None: no deadline). ``before_tag``: called with the destination
    repository and the entry's digest once its content is in place and before its tag moves
    (the registry host signs there, so a tag never names an unsigned digest); what it raises
    fails the entry, and the tag stays where it was.
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
    before_tag: Callable[[str, str], None] | None = field(default=None, compare=False)

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
            if self.options.before_tag is not None:
                # Stored by digest first (the copiers leave the top manifest to the tag), so
                # the hook finds it; the tag then names what is already there.
                media_type = entry.manifest.media_type
                self.client.put_manifest(entry.destination, entry.digest, body, media_type)
                self.options.before_tag(entry.destination, entry.digest)
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
