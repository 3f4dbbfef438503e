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
from airgapped_registry.state.store import (
    EntryState,
    RunLock,
    RunLockedError,
    StateStore,
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
            "from airgapped_registry.state.store import RunLock\n"
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
