"""Verdicts to and from their rows in the state store (``scan_verdicts``), and whether a
stored verdict stands: used by the scan service and by the gate."""

from __future__ import annotations

from datetime import UTC, datetime
from functools import lru_cache

from airgapped_registry.scanning.verdict import DbInfo, Finding, Verdict
from airgapped_registry.state.verdicts import VerdictRecord, VerdictStore

_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime(_FORMAT)


# The gate reads a verdict's two times on every pull; strptime is most of that read.
@lru_cache(maxsize=4096)
def parse_time(text: str) -> datetime:
    return datetime.strptime(text, _FORMAT).replace(tzinfo=UTC)


def to_record(verdict: Verdict, media_type: str | None = None) -> VerdictRecord:
    return VerdictRecord(
        repository=verdict.repository,
        digest=verdict.digest,
        status=verdict.status,
        fail_on=verdict.fail_on,
        counts=dict(verdict.counts),
        findings=[finding.to_json() for finding in verdict.findings],
        scanned_at=iso(verdict.scanned_at),
        media_type=media_type,
        db_digest=verdict.db.digest if verdict.db else None,
        db_updated_at=iso(verdict.db.updated_at) if verdict.db else None,
        error=verdict.error,
        children=verdict.children,
    )


def from_record(record: VerdictRecord) -> Verdict:
    db = None
    if record.db_digest and record.db_updated_at:
        db = DbInfo(record.db_digest, parse_time(record.db_updated_at))
    return Verdict(
        repository=record.repository,
        digest=record.digest,
        status=record.status,
        counts=dict(record.counts),
        findings=tuple(Finding.from_json(item) for item in record.findings),
        db=db,
        scanned_at=parse_time(record.scanned_at),
        fail_on=record.fail_on,
        error=record.error,
        children=record.children,
    )


def is_current(status: str, db_digest: str | None, current: DbInfo | None) -> bool:
    """Whether a stored verdict still stands for the reconciliation: ``skipped`` always;
    ``pass``/``fail`` when made with the current DB (a DB too old is not cured by scanning
    again with it); ``error`` never."""
    if status == "skipped":
        return True
    return status in ("pass", "fail") and current is not None and db_digest == current.digest


def stands(stored: VerdictRecord, verdicts: VerdictStore, current: DbInfo | None) -> bool:
    """Whether ``stored`` needs no new scan: current, and for an index its children's
    verdicts too (a child's queue item is dropped while its index is queued: the index's job
    answers for it)."""
    if not is_current(stored.status, stored.db_digest, current):
        return False
    for child in stored.children:
        found = verdicts.verdict(stored.repository, child)
        if found is None or not is_current(found.status, found.db_digest, current):
            return False
    return True
