"""Migration 3: the gate's admitted blobs, added to a database of version 2 with its data."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from airgapped_registry.state.admitted import AdmittedBlobs
from airgapped_registry.state.store import MIGRATIONS, SCHEMA_VERSION, StateStore

BLOB = "sha256:" + "1" * 64
MANIFEST = "sha256:" + "2" * 64
LATER = "sha256:" + "3" * 64


def test_a_version_2_database_gets_the_admitted_blobs(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    old = sqlite3.connect(path)
    for migration in MIGRATIONS[:2]:
        for statement in migration:
            old.execute(statement)
    old.execute("PRAGMA user_version = 2")
    old.execute(
        "INSERT INTO scan_queue (repository, digest, source, queued_at) "
        "VALUES ('prod/app', ?, 'push', '2026-01-01T00:00:00Z')",
        (MANIFEST,),
    )
    old.commit()
    old.close()
    with StateStore(path) as store:
        assert store.schema_version == SCHEMA_VERSION
        assert store.connection.execute("SELECT count(*) FROM scan_queue").fetchone()[0] == 1
        blobs = AdmittedBlobs(store)
        assert blobs.manifests("prod/app", BLOB) == []
        blobs.admit("prod/app", MANIFEST, [BLOB, BLOB])
        assert blobs.manifests("prod/app", BLOB) == [MANIFEST]
        assert blobs.manifests("prod/other", BLOB) == []  # per repository
        # Every manifest that lists the blob is kept: the gate asks each again.
        store.connection.execute(
            "UPDATE gate_admitted_blobs SET admitted_at = '2026-01-01T00:00:00Z'"
        )
        blobs.admit("prod/app", LATER, [BLOB])
        assert blobs.manifests("prod/app", BLOB) == [LATER, MANIFEST]
    with StateStore(path) as store:  # kept across restarts
        assert AdmittedBlobs(store).manifests("prod/app", BLOB) == [LATER, MANIFEST]
