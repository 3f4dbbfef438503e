"""Migration 4: bundle imports, their resume ledger and upload sessions, added to a database
of version 3 with its data."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from airgapped_registry.state.imports import ImportLedger
from airgapped_registry.state.store import MIGRATIONS, SCHEMA_VERSION, StateStore

BUNDLE = "sha256:" + "b" * 64
LOCK = "sha256:" + "c" * 64
BLOB = "sha256:" + "1" * 64
MANIFEST = "sha256:" + "2" * 64


def version_3_database(path: Path) -> None:
    old = sqlite3.connect(path)
    for migration in MIGRATIONS[:3]:
        for statement in migration:
            old.execute(statement)
    old.execute("PRAGMA user_version = 3")
    old.execute(
        "INSERT INTO gate_admitted_blobs (repository, digest, manifest, admitted_at) "
        "VALUES ('prod/app', ?, ?, '2026-01-01T00:00:00Z')",
        (BLOB, MANIFEST),
    )
    old.commit()
    old.close()


def test_a_version_3_database_gets_the_bundle_tables(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    version_3_database(path)
    with StateStore(path) as store:
        assert store.schema_version == SCHEMA_VERSION == 4
        count = "SELECT count(*) FROM gate_admitted_blobs"
        assert store.connection.execute(count).fetchone()[0] == 1
    with ImportLedger(path) as ledger:
        run = ledger.start(BUNDLE, "full", LOCK, "2026-11-30T00:00:00Z", "127.0.0.1:5000")
        ledger.mark(BUNDLE, "127.0.0.1:5000", "sample/app", "blob", BLOB, "uploaded", 123)
        ledger.mark(BUNDLE, "127.0.0.1:5000", "sample/app", "tag", MANIFEST, "tagged", tag="1.0")
        ledger.save_session("127.0.0.1:5000", "sample/app", BLOB, BUNDLE, "http://x/u?_state=s", 7)
        ledger.finish(run, "interrupted", {"entries": 1, "bytes_sent": 123})
    with ImportLedger(path) as ledger:  # kept across processes
        assert ledger.done(BUNDLE, "127.0.0.1:5000") == {
            ("sample/app", "blob", BLOB, ""),
            ("sample/app", "tag", MANIFEST, "1.0"),
        }
        assert ledger.done(BUNDLE, "127.0.0.1:5001") == set()  # per registry
        session = ledger.session("127.0.0.1:5000", "sample/app", BLOB)
        assert session is not None and (session.location, session.offset) == (
            "http://x/u?_state=s",
            7,
        )
        ledger.drop_session("127.0.0.1:5000", "sample/app", BLOB)
        assert ledger.session("127.0.0.1:5000", "sample/app", BLOB) is None
        [record] = ledger.imports()
        assert (record.status, record.bytes_sent, record.entries) == ("interrupted", 123, 1)
        assert record.finished_at is not None


def test_the_ledger_refuses_unknown_kinds_and_statuses(tmp_path: Path) -> None:
    with ImportLedger(tmp_path / "state.db") as ledger:
        with pytest.raises(ValueError, match="kind 'layer'"):
            ledger.mark(BUNDLE, "r", "a", "layer", BLOB, "uploaded")
        run = ledger.start(BUNDLE, "full", LOCK, None, "r")
        with pytest.raises(ValueError, match="status 'done'"):
            ledger.finish(run, "done", {})
