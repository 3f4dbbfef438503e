"""The scan service's tables (migration 2): verdicts, index children, DBs, the queue."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from airgapped_registry.state.store import MIGRATIONS, SCHEMA_VERSION, StateStore
from airgapped_registry.state.verdicts import VerdictRecord, VerdictStore

INDEX = "sha256:" + "1" * 64
AMD64 = "sha256:" + "2" * 64
ARM64 = "sha256:" + "3" * 64
DB = "sha256:" + "d" * 64


def verdict(digest: str = INDEX, **changes: object) -> VerdictRecord:
    values: dict[str, object] = {
        "repository": "sample/app",
        "digest": digest,
        "status": "fail",
        "fail_on": "CRITICAL",
        "counts": {"CRITICAL": 1, "HIGH": 0, "MEDIUM": 0, "LOW": 0, "UNKNOWN": 0},
        "findings": [{"id": "CVE-2026-0001", "severity": "CRITICAL"}],
        "scanned_at": "2026-11-30T10:00:00Z",
        "media_type": "application/vnd.oci.image.index.v1+json",
        "db_digest": DB,
        "db_updated_at": "2026-11-29T00:00:00Z",
        "children": (AMD64, ARM64),
        **changes,
    }
    return VerdictRecord(**values)  # type: ignore[arg-type]


@pytest.fixture
def verdicts(tmp_path: Path):
    with StateStore(tmp_path / "state.db") as store:
        yield VerdictStore(store)


def test_a_version_1_database_with_data_is_migrated_to_the_scan_tables(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    old = sqlite3.connect(path)
    for statement in MIGRATIONS[0]:
        old.execute(statement)
    old.execute("PRAGMA user_version = 1")
    old.execute(
        "INSERT INTO sync_runs (destination, started_at, summary) "
        "VALUES ('https://registry', '2026-01-01T00:00:00Z', 'entries=1')"
    )
    old.execute(
        "INSERT INTO sync_entries (reference, registry, repository, tag, digest, result, "
        "in_sync, updated_at) VALUES ('r/sample/app:1', 'r', 'sample/app', '1', ?, 'ok', 1, "
        "'2026-01-01T00:00:00Z')",
        (AMD64,),
    )
    old.commit()
    old.close()

    with StateStore(path) as store:
        assert store.schema_version == SCHEMA_VERSION
        assert [entry.digest for entry in store.entries()] == [AMD64]
        assert [run.summary for run in store.runs()] == ["entries=1"]
        scans = VerdictStore(store)
        scans.record(verdict())
        assert scans.verdict("sample/app", INDEX) == verdict()
    assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)


def test_a_verdict_is_replaced_and_keeps_its_index_children(verdicts: VerdictStore) -> None:
    verdicts.record(verdict())
    verdicts.record(verdict(status="pass", findings=[], children=()))
    (stored,) = verdicts.verdicts()
    assert stored.status == "pass"
    # A record without children (a rescan that did not list them) keeps the known ones.
    assert stored.children == (AMD64, ARM64)
    assert verdicts.all_children() == {("sample/app", INDEX): (AMD64, ARM64)}
    assert verdicts.verdict_keys() == {("sample/app", INDEX): ("pass", DB)}


def test_forgetting_a_deleted_digest_drops_verdict_children_and_queued_scan(
    verdicts: VerdictStore,
) -> None:
    verdicts.record(verdict())
    verdicts.record(verdict(AMD64, children=()))
    verdicts.enqueue([("sample/app", INDEX)], "push")
    assert verdicts.forget("sample/app", INDEX) == 1
    assert [v.digest for v in verdicts.verdicts()] == [AMD64]
    assert verdicts.children("sample/app", INDEX) is None
    assert verdicts.queue_depth() == 0


def test_the_queue_dedupes_claims_retries_and_survives_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    with StateStore(path) as store:
        queue = VerdictStore(store)
        assert queue.enqueue([("a/x", INDEX), ("a/x", INDEX), ("b/y", AMD64)], "push") == 2
        assert queue.enqueue([("a/x", INDEX)], "reconcile") == 0
        first = queue.claim()
        assert first is not None and (first.repository, first.attempts) == ("a/x", 1)
        queue.retry(first, "trivy failed", not_before="2999-01-01T00:00:00Z")
        second = queue.claim()
        assert second is not None and second.repository == "b/y"
        assert queue.claim() is None  # one claimed, one not due
    # The process died with b/y claimed: the next start releases it.
    with StateStore(path) as store:
        queue = VerdictStore(store)
        assert queue.queue_depth() == 2
        assert queue.release_claims() == 1
        again = queue.claim()
        assert again is not None and (again.repository, again.attempts) == ("b/y", 2)
        queue.done(again)
        late = queue.claim(now="2999-01-01T00:00:00Z")
        assert late is not None and late.last_error == "trivy failed"
    with pytest.raises(ValueError, match="source 'later'"):
        VerdictStore(StateStore(path)).enqueue([("a/x", INDEX)], "later")


def test_a_reconciliation_is_logged(verdicts: VerdictStore) -> None:
    assert verdicts.last_reconciliation() is None
    number = verdicts.start_reconciliation()
    verdicts.finish_reconciliation(number, digests=12, queued=3, requests=9, duration=0.25)
    last = verdicts.last_reconciliation()
    assert last is not None and (last.digests, last.queued, last.requests) == (12, 3, 9)
