"""One digest through the service: scan, judge by policy, attest, sign, record the verdict.

:class:`DigestJob` reads the manifest from the backend once. An image manifest is scanned;
an index's children are each taken like one (a child whose verdict is current is not
scanned again, so the children pushed by digest just before their index cost one scan
each, whoever takes them first; a child whose index is queued is left to the index's
job), and the index's verdict is the worst of theirs. An
artifact whose config is not a container image's (a Helm chart, the Trivy DB) is
``skipped``. The verdict is recorded last, after the attestation and the signature: a
recorded verdict means all three were done, and a failure leaves the digest queued for
another try (:class:`Worker`), then an ``error`` verdict that the reconciliation retries.

Two workers never scan one digest at once (:class:`DigestLocks`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from airgapped_registry.errors import AirgapError, RegistryError
from airgapped_registry.oci.manifest import descriptor, parse_manifest
from airgapped_registry.oci.mediatypes import INDEX_MEDIA_TYPES, OCI_CONFIG
from airgapped_registry.scanning.records import from_record, is_current, iso, stands, to_record
from airgapped_registry.scanning.scanner import ManifestScan
from airgapped_registry.scanning.verdict import (
    DbInfo,
    Finding,
    Verdict,
    combine,
    failed,
    judge,
    skipped,
)
from airgapped_registry.service.ports import Provenance, Scanner, ServiceSettings
from airgapped_registry.state.store import StateStore
from airgapped_registry.state.verdicts import QueueItem, VerdictStore
from airgapped_registry.transport.registry import RegistryClient

log = logging.getLogger(__name__)

DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
IMAGE_CONFIGS = frozenset({OCI_CONFIG, DOCKER_CONFIG})
# docker buildx lists its provenance/SBOM manifests in the index as platform unknown/unknown.
ATTESTATION_TYPE = "vnd.docker.reference.type"


class DigestLocks:
    """One lock per ``(repository, digest)`` being worked on, dropped when free."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[tuple[str, str], tuple[threading.Lock, int]] = {}

    @contextmanager
    def hold(self, repository: str, digest: str) -> Iterator[None]:
        key = (repository, digest)
        with self._guard:
            lock, users = self._locks.get(key, (threading.Lock(), 0))
            self._locks[key] = (lock, users + 1)
        try:
            with lock:
                yield
        finally:
            with self._guard:
                lock, users = self._locks[key]
                if users == 1:
                    del self._locks[key]
                else:
                    self._locks[key] = (lock, users - 1)


@dataclass
class Outcome:
    """What one job did, for reports: the verdict, and what it cost."""

    verdict: Verdict
    scans: int = 0
    reused: int = 0
    attested: int = 0
    signed: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "repository": self.verdict.repository,
            "digest": self.verdict.digest,
            "status": self.verdict.status,
            "counts": self.verdict.counts,
            "failing": sorted({f.id for f in self.verdict.failing}),
            "scans": self.scans,
            "reused": self.reused,
            "attested": self.attested,
            "signed": self.signed,
        }


@dataclass
class DigestJob:
    """Everything a worker thread needs to take digests through (one per thread: it holds
    that thread's state connection and registry client)."""

    settings: ServiceSettings
    scanner: Scanner
    provenance: Provenance | None
    client: RegistryClient
    verdicts: VerdictStore
    locks: DigestLocks = field(default_factory=DigestLocks)

    def run(self, repository: str, digest: str, *, force: bool = False) -> Outcome:
        """Take ``digest`` through; ``force``: scan even when its verdict is current."""
        with self.locks.hold(repository, digest):
            current = self.scanner.current_db()
            if not force:
                stored = self.verdicts.verdict(repository, digest)
                if stored and stands(stored, self.verdicts, current):
                    return Outcome(from_record(stored), reused=1)
            body, media_type, _ = self.client.get_manifest(repository, digest)
            where = f"{repository}@{digest}"
            document = parse_manifest(body, where)
            if media_type in INDEX_MEDIA_TYPES:
                return self._index(repository, digest, media_type, document, force)
            config = document.get("config")
            config_type = config.get("mediaType") if isinstance(config, dict) else None
            if config_type not in IMAGE_CONFIGS:
                verdict = skipped(
                    repository,
                    digest,
                    f"not a container image (config {config_type})",
                    self.settings.policy,
                    datetime.now(UTC),
                )
                self.verdicts.record(to_record(verdict, media_type))
                return Outcome(verdict)
            scan = self.scanner.scan(repository, digest)
            verdict = self._judge(repository, scan)
            attested = self._attest(repository, digest, [scan])
            signed = self._sign(repository, digest)
            self.verdicts.record(to_record(verdict, media_type))
            return Outcome(verdict, scans=1, attested=attested, signed=signed)

    def _index(
        self, repository: str, digest: str, media_type: str, document: dict[str, Any], force: bool
    ) -> Outcome:
        where = f"{repository}@{digest}"
        children = platform_children(document, where)
        if not children:
            raise AirgapError(f"{where}: the index lists no platform manifest to scan")
        self.verdicts.remember_children(repository, digest, children)
        verdicts: list[Verdict] = []
        scans: dict[str, ManifestScan] = {}
        reused = attested = 0
        for child in children:
            with self.locks.hold(repository, child):
                stored = self.verdicts.verdict(repository, child)
                if (
                    not force
                    and stored
                    and stored.status in ("pass", "fail")
                    and is_current(stored.status, stored.db_digest, self.scanner.current_db())
                ):
                    verdicts.append(from_record(stored))
                    reused += 1
                    continue
                scan = scans[child] = self.scanner.scan(repository, child)
                verdict = self._judge(repository, scan)
                attested += self._attest(repository, child, [scan])
                self.verdicts.record(to_record(verdict))
                verdicts.append(verdict)
        outcome = Outcome(combine(repository, digest, verdicts), scans=len(scans), reused=reused)
        if self.attesting:
            # The index's predicate holds every child's report, and a reused child's is
            # gone: scan it again (Trivy's layer cache makes that cheap). Rare, since a
            # child pushed by digest waits in the queue for its index's job.
            for child in children:
                if child not in scans:
                    scans[child] = self.scanner.scan(repository, child)
                    outcome.scans += 1
            attested += self._attest(repository, digest, [scans[c] for c in children])
        outcome.attested = attested
        outcome.signed = self._sign(repository, digest)
        self.verdicts.record(to_record(outcome.verdict, media_type))
        return outcome

    @property
    def attesting(self) -> bool:
        return self.settings.attest and self.provenance is not None

    def _judge(self, repository: str, scan: ManifestScan) -> Verdict:
        findings = [
            Finding(item.id, item.package, item.installed, item.fixed, item.severity)
            for item in scan.findings
        ]
        return judge(
            repository,
            scan.digest,
            findings,
            self.settings.policy,
            db=DbInfo(scan.db.digest, scan.db.updated_at),
            scanned_at=scan.finished,
        )

    def _attest(self, repository: str, digest: str, scans: list[ManifestScan]) -> int:
        """Attest ``digest`` when the settings say so; 1 when it did."""
        if not self.attesting or self.provenance is None:
            return 0
        self.provenance.attest(repository, digest, scans)
        return 1

    def _sign(self, repository: str, digest: str) -> bool:
        if self.provenance is None or not self.provenance.signs(repository):
            return False
        self.provenance.sign(repository, digest)
        return True


def platform_children(document: dict[str, Any], where: str) -> tuple[str, ...]:
    """The platform manifests of an index, without buildx's attestation manifests."""
    items = document.get("manifests")
    if not isinstance(items, list):
        raise AirgapError(f"{where}: index without a manifests list")
    children = []
    for position, item in enumerate(items):
        found = descriptor(item, f"{where} manifests[{position}]")
        annotations = item.get("annotations") or {}
        if isinstance(annotations, dict) and ATTESTATION_TYPE in annotations:
            continue
        if found.media_type in INDEX_MEDIA_TYPES:
            raise AirgapError(f"{where}: nested index {found.digest}, not supported")
        children.append(found.digest)
    return tuple(dict.fromkeys(children))


class Worker:
    """A thread's loop: claim a queued digest, run its job, done or retried later."""

    def __init__(
        self,
        settings: ServiceSettings,
        scanner: Scanner,
        provenance: Provenance | None,
        client: RegistryClient,
        locks: DigestLocks,
        stop: threading.Event,
        wake: threading.Condition,
    ) -> None:
        self.settings = settings
        self.scanner = scanner
        self.provenance = provenance
        self.client = client
        self.locks = locks
        self.stop = stop
        self.wake = wake
        self.done = 0

    def loop(self) -> None:
        with StateStore(self.settings.state) as store:
            verdicts = VerdictStore(store)
            job = DigestJob(
                self.settings, self.scanner, self.provenance, self.client, verdicts, self.locks
            )
            while not self.stop.is_set():
                # Without a DB every scan would fail and end as an error verdict: the queue
                # waits for one instead (the reconciliation thread wakes us when it comes).
                item = verdicts.claim() if self.scanner.current_db() is not None else None
                if item is None:
                    with self.wake:
                        self.wake.wait(timeout=1.0)
                    continue
                self.take(job, verdicts, item)

    def take(self, job: DigestJob, verdicts: VerdictStore, item: QueueItem) -> None:
        where = f"{item.repository}@{item.digest}"
        if verdicts.parent_queued(item.repository, item.digest):
            # Its index's job scans it (and needs its report for the index's attestation).
            log.info("%s: left to its index's job", where)
            verdicts.done(item)
            return
        try:
            outcome = job.run(item.repository, item.digest)
        except RegistryError as exc:
            if exc.status != 404 or job.client.head_manifest(item.repository, item.digest):
                self.give_back(verdicts, item, exc)
                return
            # Deleted before its scan: nothing is served, so there is nothing to judge.
            log.info("%s: gone from the backend (%s)", where, exc)
            verdicts.forget(item.repository, item.digest)
            return
        except (AirgapError, ValueError) as exc:
            self.give_back(verdicts, item, exc)
            return
        log.info("%s: %s (%s)", where, outcome.verdict.status, item.source)
        verdicts.done(item)
        self.done += 1

    def give_back(self, verdicts: VerdictStore, item: QueueItem, exc: Exception) -> None:
        """Try ``item`` again later, or after the last try record an ``error`` verdict."""
        where = f"{item.repository}@{item.digest}"
        if item.attempts < self.settings.attempts:
            wait = self.settings.backoff * 2 ** (item.attempts - 1)
            due = iso(datetime.now(UTC) + timedelta(seconds=wait))
            log.warning("%s: %s (try %d; again after %s)", where, exc, item.attempts, due)
            verdicts.retry(item, str(exc), due)
            return
        log.error("%s: %s (gave up after %d tries)", where, exc, item.attempts)
        verdict = failed(
            item.repository,
            item.digest,
            str(exc),
            self.settings.policy,
            db=self.scanner.current_db(),
            scanned_at=datetime.now(UTC),
        )
        verdicts.record(to_record(verdict))
        verdicts.done(item)
