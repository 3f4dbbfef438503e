"""The sync state store (SQLite, WAL), its run log and summary line, and the run lock."""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from airgapped_registry.errors import AirgapError
from airgapped_registry.state.runlock import RunLock, RunLockedError
from airgapped_registry.state.store import (
    SCHEMA_VERSION,
    EntryState,
    StateStore,
    recorded_fingerprints,
    summary_line,
)

REGISTRY = "registry.internal:5000"


def state(tag: str = "1.0.0", **changes) -> EntryState:
    values = {
        "reference": f"{REGISTRY}/sample/app:{tag}",
        "registry": REGISTRY,
        "repository": "sample/app",
        "tag": tag,
        "digest": "sha256:" + "a" * 64,
        "result": "ok",
        "in_sync": True,
        "detail": "copied",
        "bytes": 1234,
        "duration": 0.5,
        "fingerprint": "sha256:" + "f" * 64,
        **changes,
    }
    return EntryState(**values)


def test_the_database_is_created_in_wal_mode(tmp_path) -> None:
    path = tmp_path / "var" / "lib" / "state.db"
    with StateStore(path) as store:
        assert store.entries() == []
    connection = sqlite3.connect(path)
    assert connection.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master")}
    assert {"sync_runs", "sync_entries"} <= tables


# The schema the first release (0.1.0) created, verbatim, without a version (user_version 0).
FIRST_RELEASE_SCHEMA = """
CREATE TABLE IF NOT EXISTS sync_runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    destination TEXT NOT NULL,
    lock_path TEXT,
    started_at TEXT NOT NULL,
    finished_at TEXT,
    entries INTEGER NOT NULL DEFAULT 0,
    copied INTEGER NOT NULL DEFAULT 0,
    skipped INTEGER NOT NULL DEFAULT 0,
    failures INTEGER NOT NULL DEFAULT 0,
    bytes INTEGER NOT NULL DEFAULT 0,
    duration REAL,
    summary TEXT
);
CREATE TABLE IF NOT EXISTS sync_entries (
    reference TEXT PRIMARY KEY,
    registry TEXT NOT NULL,
    repository TEXT NOT NULL,
    tag TEXT NOT NULL,
    digest TEXT NOT NULL,
    fingerprint TEXT,
    result TEXT NOT NULL CHECK (result IN ('ok', 'failed', 'skipped')),
    in_sync INTEGER NOT NULL,
    detail TEXT,
    bytes INTEGER NOT NULL DEFAULT 0,
    duration REAL NOT NULL DEFAULT 0,
    error TEXT,
    updated_at TEXT NOT NULL,
    synced_at TEXT,
    run_id INTEGER REFERENCES sync_runs(id)
);
"""


def test_a_new_database_gets_the_current_schema_version(tmp_path) -> None:
    with StateStore(tmp_path / "state.db") as store:
        assert store.schema_version == SCHEMA_VERSION >= 1
    assert sqlite3.connect(tmp_path / "state.db").execute("PRAGMA user_version").fetchone() == (
        SCHEMA_VERSION,
    )


def test_a_database_of_the_first_release_is_migrated_in_place(tmp_path) -> None:
    path = tmp_path / "state.db"
    old = sqlite3.connect(path)
    old.executescript(FIRST_RELEASE_SCHEMA)
    old.execute(
        "INSERT INTO sync_runs (destination, lock_path, started_at, finished_at, entries, "
        "copied, summary) VALUES ('https://registry', 'mirror.lock', '2026-01-01T00:00:00Z', "
        "'2026-01-01T00:01:00Z', 1, 1, 'entries=1 copied=1')"
    )
    old.execute(
        "INSERT INTO sync_entries (reference, registry, repository, tag, digest, fingerprint, "
        "result, in_sync, updated_at, synced_at, run_id) VALUES (?, ?, 'sample/app', '1.0.0', "
        "?, ?, 'ok', 1, '2026-01-01T00:01:00Z', '2026-01-01T00:01:00Z', 1)",
        (f"{REGISTRY}/sample/app:1.0.0", REGISTRY, "sha256:" + "a" * 64, "sha256:" + "f" * 64),
    )
    old.commit()
    assert old.execute("PRAGMA user_version").fetchone() == (0,)
    old.close()

    with StateStore(path) as store:
        assert store.schema_version == SCHEMA_VERSION
        kept = store.entry(f"{REGISTRY}/sample/app:1.0.0")
        assert kept is not None
        assert (kept.digest, kept.synced_at, kept.run_id) == (
            "sha256:" + "a" * 64,
            "2026-01-01T00:01:00Z",
            1,
        )
        assert store.fingerprints(REGISTRY) == {kept.reference: "sha256:" + "f" * 64}
        (run,) = store.runs()
        assert (run.id, run.summary) == (1, "entries=1 copied=1")
        # And it goes on working: a new run, a new entry.
        second = store.start_run("https://registry")
        store.record(state("2.0.0", run_id=second))
        assert [entry.tag for entry in store.entries()] == ["1.0.0", "2.0.0"]
    with StateStore(path) as store:  # opening a current database again changes nothing
        assert store.schema_version == SCHEMA_VERSION
        assert len(store.entries()) == 2


def test_a_database_of_a_newer_engine_is_refused(tmp_path) -> None:
    path = tmp_path / "state.db"
    with StateStore(path):
        pass
    newer = sqlite3.connect(path)
    newer.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    newer.commit()
    newer.close()
    with pytest.raises(
        AirgapError, match=rf"schema version {SCHEMA_VERSION + 1} was written by a newer engine"
    ):
        StateStore(path)


def test_entry_state_round_trip_and_replacement(tmp_path) -> None:
    with StateStore(tmp_path / "state.db") as store:
        run = store.start_run(f"http://{REGISTRY}", "mirror.lock")
        store.record(state(run_id=run))
        first = store.entry(f"{REGISTRY}/sample/app:1.0.0")
        assert first is not None
        assert (first.result, first.in_sync, first.bytes, first.run_id) == ("ok", True, 1234, run)
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", first.updated_at)
        assert first.synced_at == first.updated_at

        # A later failure keeps when it was last in sync and what it was synced to.
        time.sleep(1.1)
        store.record(
            state(result="failed", in_sync=False, error="boom", fingerprint="sha256:" + "0" * 64)
        )
        failed = store.entry(f"{REGISTRY}/sample/app:1.0.0")
        assert failed is not None
        assert (failed.result, failed.in_sync, failed.error) == ("failed", False, "boom")
        assert failed.synced_at == first.synced_at != failed.updated_at
        assert failed.fingerprint == first.fingerprint
        assert store.fingerprints(REGISTRY) == {first.reference: first.fingerprint}
        assert store.fingerprints("elsewhere:5000") == {}

        store.record(state("2.0.0", registry="elsewhere:5000", reference="elsewhere:5000/a:2"))
        assert [s.reference for s in store.entries()] == [
            "elsewhere:5000/a:2",
            f"{REGISTRY}/sample/app:1.0.0",
        ]
        assert [s.reference for s in store.entries(REGISTRY)] == [first.reference]
        assert store.entries(REGISTRY)[0].to_json()["in_sync"] is False


def test_a_plan_reads_fingerprints_without_creating_a_state(tmp_path) -> None:
    path = tmp_path / "var" / "state.db"
    assert recorded_fingerprints(path, REGISTRY) is None
    assert not path.parent.exists()
    with StateStore(path) as store:
        store.record(state())
    assert recorded_fingerprints(path, REGISTRY) == {state().reference: state().fingerprint}
    assert recorded_fingerprints(path, "elsewhere:5000") == {}


def test_unknown_result_is_refused(tmp_path) -> None:
    with StateStore(tmp_path / "state.db") as store, pytest.raises(ValueError, match="result"):
        store.record(state(result="maybe"))


def test_run_log_and_summary_line(tmp_path) -> None:
    with StateStore(tmp_path / "state.db") as store:
        assert store.last_run() is None
        run = store.start_run("http://r:5000", "mirror.lock")
        assert store.last_run().finished_at is None, "an unfinished run shows as such"
        line = store.finish_run(
            run, entries=12, copied=3, skipped=8, failures=1, bytes_sent=2048, duration=4.6
        )
        assert line == "entries=12 copied=3 bytes=2048 duration=5s failures=1"
        last = store.last_run()
        assert last is not None
        assert (last.id, last.entries, last.copied, last.failures, last.bytes) == (
            run,
            12,
            3,
            1,
            2048,
        )
        assert last.summary == line and last.finished_at is not None
        assert [r.id for r in store.runs()] == [run]


@pytest.mark.parametrize(
    ("values", "line"),
    [
        ((0, 0, 0, 0.2, 0), "entries=0 copied=0 bytes=0 duration=0s failures=0"),
        (
            (200, 9, 20_000_000, 14.5, 2),
            "entries=200 copied=9 bytes=20000000 duration=14s failures=2",
        ),
    ],
)
def test_summary_line(values, line) -> None:
    assert summary_line(*values) == line


def test_an_unusable_database_path_is_reported(tmp_path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(AirgapError, match=r"state database .*file/state.db"):
        StateStore(tmp_path / "file" / "state.db")


# -- the run lock --------------------------------------------------------------------------


def test_run_lock_refuses_a_second_holder_and_names_the_first(tmp_path) -> None:
    state_path = tmp_path / "state.db"
    first = RunLock.beside(state_path)
    assert first.path == tmp_path / "sync.lock"
    with first:
        second = RunLock.beside(state_path)
        with pytest.raises(RunLockedError) as refused:
            second.acquire()
        assert re.fullmatch(
            rf"another sync is running \(pid {os.getpid()} since [0-9TZ:-]+; run lock "
            rf"{re.escape(str(first.path))}\); this run did nothing",
            str(refused.value),
        )
    with RunLock.beside(state_path):
        pass  # released on exit
    assert first.path.exists(), "the lock file stays, only the lock goes"


def test_run_lock_is_released_when_its_holder_is_killed(tmp_path) -> None:
    state_path = tmp_path / "state.db"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\n"
            "from airgapped_registry.state.runlock import RunLock\n"
            f"lock = RunLock.beside({str(state_path)!r}); lock.acquire()\n"
            "print('held', flush=True); time.sleep(60)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        with pytest.raises(RunLockedError, match=f"pid {holder.pid} since"):
            RunLock.beside(state_path).acquire()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with RunLock.beside(state_path):
        assert Path(tmp_path / "sync.lock").read_text().startswith(f"pid {os.getpid()} ")
