"""What an operator asks of the scanner outside the service: status, scan now, DB update.

One implementation for ``airgap scan status|now|db update`` and the ``airgap_scan``
module, so the command and the module cannot drift apart: each returns the report the CLI
prints; the module adds its ``changed``, summary and diff on top.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from airgapped_registry.errors import AirgapError
from airgapped_registry.scanning import config as scanning_config
from airgapped_registry.scanning import db
from airgapped_registry.scanning.records import from_record, stands
from airgapped_registry.scanning.verdict import DbInfo, read_status
from airgapped_registry.service.reconcile import served_tags
from airgapped_registry.service.setup import service_parts, settings_from
from airgapped_registry.service.worker import DigestJob
from airgapped_registry.signing.signer import split_reference
from airgapped_registry.state.store import StateStore
from airgapped_registry.state.verdicts import VerdictRecord, VerdictStore
from airgapped_registry.transport.access import RegistryAccess
from airgapped_registry.transport.registry import RegistryClient

Target = tuple[str, str]  # (repository, digest)


def current_db(installed: db.InstalledDb | None) -> DbInfo | None:
    return None if installed is None else DbInfo(installed.digest, installed.updated_at)


def db_summary(installed: db.InstalledDb | None, max_age_seconds: int, now: datetime) -> Any:
    """The installed DB as reports show it (None before the first install)."""
    if installed is None:
        return None
    return {
        "digest": installed.digest,
        "updated_at": installed.to_json().get("updated_at"),
        "stale": (now - installed.updated_at).total_seconds() > max_age_seconds,
        "max_age_seconds": max_age_seconds,
    }


def status(
    path: str | os.PathLike[str], repository: str | None = None, digest: str | None = None
) -> dict[str, Any]:
    """Verdicts as they stand now (``stale`` decided at read time): all, one repository's,
    or one digest's with its findings; a listing leaves findings out to stay readable."""
    config = scanning_config.load(path)
    settings = settings_from(config)
    installed = db.current(config.cache_dir)
    if not settings.state.exists():
        raise AirgapError(f"state database {settings.state}: none yet (no scan was recorded)")
    now = datetime.now(UTC)
    with StateStore(settings.state) as store:
        verdicts = VerdictStore(store)
        records = verdicts.verdicts(repository, digest)
        depth = verdicts.queue_depth()
        last = verdicts.last_reconciliation()
    listed = []
    totals: dict[str, int] = {}
    for record in records:
        verdict = from_record(record)
        shown_status, why = read_status(verdict, current_db(installed), settings.max_age, now)
        totals[shown_status] = totals.get(shown_status, 0) + 1
        shown = verdict.to_json(status=shown_status, stale=why)
        if not digest:
            del shown["findings"]
        listed.append(shown)
    if digest and not listed:
        where = f" in {repository}" if repository else ""
        raise AirgapError(f"{digest}: no verdict{where}")
    return {
        "db": db_summary(installed, int(settings.max_age.total_seconds()), now),
        "totals": dict(sorted(totals.items())),
        "queue": depth,
        "last_reconciliation": None if last is None else last.to_json(),
        "verdicts": listed,
    }


def targets(
    client: RegistryClient, backend: str, references: list[str], every: bool
) -> list[Target]:
    """``(repository, digest)`` to scan, in order, once each: every served tag's with
    ``every``, and each of ``references`` (``REPO@DIGEST`` or ``REPO:TAG``) resolved."""
    if bool(references) == every:
        raise ValueError("scan now: name REPO@DIGEST|REPO:TAG ... or all of them (not both)")
    found: dict[Target, None] = {}
    if every:
        for repository, _, head in served_tags(client):
            if head is not None:
                found[(repository, head.digest)] = None
    for text in references:
        repository, reference = split_reference(text)
        head = client.head_manifest(repository, reference)
        if head is None:
            raise AirgapError(f"{text}: not in the backend {backend}")
        found[(repository, head.digest)] = None
    return list(found)


@dataclass(frozen=True)
class Stored:
    """A target's verdict before a scan, and whether it stands (no scan needed)."""

    record: VerdictRecord | None
    stands: bool

    @property
    def status(self) -> str | None:
        return None if self.record is None else self.record.status


def stored_verdicts(
    state: Path, wanted: list[Target], current: DbInfo | None
) -> dict[Target, Stored]:
    """What the state holds for each target, judged by the rule :class:`DigestJob` uses
    without ``force``. A state database that does not exist yet is not created."""
    if not state.exists():
        return {target: Stored(None, False) for target in wanted}
    with StateStore(state) as store:
        verdicts = VerdictStore(store)
        found = {}
        for repository, digest in wanted:
            record = verdicts.verdict(repository, digest)
            found[(repository, digest)] = Stored(
                record, record is not None and stands(record, verdicts, current)
            )
        return found


def plan_now(
    path: str | os.PathLike[str], references: list[str], every: bool, force: bool
) -> dict[str, Any]:
    """What :func:`now` would scan (check mode): digests without a verdict that stands,
    or all with ``force``. Reads the backend and the state only."""
    config = scanning_config.load(path)
    installed = current_db(db.current(config.cache_dir))
    with RegistryAccess(config.backend, name="backend").client() as client:
        wanted = targets(client, config.backend, references, every)
    stored = stored_verdicts(config.state, wanted, installed)
    scan = [target for target in wanted if force or not stored[target].stands]
    return {
        "would_scan": [f"{repository}@{digest}" for repository, digest in scan],
        "current": [f"{r}@{d}" for r, d in wanted if (r, d) not in scan],
        "before": {f"{r}@{d}": stored[(r, d)].status for r, d in scan},
    }


class RecordingVerdicts(VerdictStore):
    """The state's verdicts, noting which ``(repository, digest)`` got one recorded."""

    def __init__(self, store: StateStore) -> None:
        super().__init__(store)
        self.recorded: set[Target] = set()

    def record(self, verdict: VerdictRecord) -> None:
        super().record(verdict)
        self.recorded.add((verdict.repository, verdict.digest))


def now(
    path: str | os.PathLike[str],
    references: list[str],
    every: bool,
    *,
    force: bool,
    cosign: str = "cosign",
) -> dict[str, Any]:
    """Scan, judge, attest and sign (as the service would) the targets; with ``force``
    even those whose verdict stands. A digest that cannot be scanned is reported in
    ``errors`` and does not stop the others. ``before``: each scanned target's status
    before (None when it had no verdict)."""
    with service_parts(path, cosign=cosign) as parts:
        client = parts.client
        wanted = targets(client, parts.config.backend, references, every)
        stored = stored_verdicts(parts.settings.state, wanted, parts.scanner.current_db())
        with StateStore(parts.settings.state) as store:
            verdicts = RecordingVerdicts(store)
            job = DigestJob(parts.settings, parts.scanner, parts.provenance, client, verdicts)
            results: list[dict[str, Any]] = []
            errors: list[str] = []
            for repository, digest in wanted:
                try:
                    outcome = job.run(repository, digest, force=force)
                except (AirgapError, ValueError) as exc:
                    errors.append(f"{repository}@{digest}: {exc}")
                    continue
                recorded = (repository, digest) in verdicts.recorded
                results.append({**outcome.to_json(), "recorded": recorded})
    scanned = [result for result in results if result["recorded"]]
    return {
        "scanned": len(scanned),
        "current": len(results) - len(scanned),
        "failed": sum(result["status"] == "fail" for result in scanned),
        "errors": errors,
        "results": results,
        "before": {
            f"{r['repository']}@{r['digest']}": stored[(r["repository"], r["digest"])].status
            for r in scanned
        },
    }


def db_update(path: str | os.PathLike[str], *, check: bool = False) -> dict[str, Any]:
    """Install the DB the lock names from the local registry (:func:`db.install`); with
    ``check``, only say whether it would (:func:`db.plan_install`)."""
    config = scanning_config.load(path)
    source = config.db
    with RegistryAccess(config.backend, name="backend").client() as client:
        plan = db.plan_install if check else db.install
        report = plan(client, config.cache_dir, source.repository, source.tag, source.lock)
    installed = db.current(config.cache_dir)
    if installed is not None:
        report["stale"] = installed.stale(source.max_age)
        report["max_age_seconds"] = int(source.max_age.total_seconds())
    return report
