"""Sync state: what each destination tag holds after the last run, and a log of runs.

One SQLite database per host (WAL mode, so the health endpoint can read while a sync writes)
holds the appliance's state and its migrations; this module owns its ``sync_*`` tables
(``scan_*`` are :mod:`airgapped_registry.state.verdicts`', ``gate_*``
:mod:`airgapped_registry.state.admitted`', ``bundle_*``
:mod:`airgapped_registry.state.imports`'):

- ``sync_entries``: one row per destination tag (``host[:port]/repository:tag``), replaced by
  every run that looks at the entry: the digest the lock wants, the result of the last run
  (``ok``, ``failed``, ``skipped``), whether the destination holds the lock's digest, bytes
  sent, duration, error, and when the entry was last copied successfully;
- ``sync_runs``: one row per run (start, end, entries, copied, failures, bytes, summary).

The schema carries a version (``PRAGMA user_version``): opening a database written by an
older engine migrates it in place, in one transaction (:data:`MIGRATIONS`); a database
written by a newer engine is refused rather than misread.
"""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from airgapped_registry import defaults
from airgapped_registry.errors import AirgapError

RESULTS = ("ok", "failed", "skipped")

# Each item brings the schema from the version before it to its own number (its position,
# from 1), as statements run in one transaction with the new ``user_version``. Append a
# migration for every change; never edit one a release has shipped. Version 1 is the schema
# the first release created without a version (user_version 0): ``IF NOT EXISTS`` makes it
# a no-op on such a database, which is then simply stamped.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """
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
)
""",
        """
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
)
""",
    ),
    # 2: the scan service's tables (issue 9), owned by state/verdicts.py.
    (
        """
CREATE TABLE scan_verdicts (
    repository TEXT NOT NULL,
    digest TEXT NOT NULL,
    media_type TEXT,
    status TEXT NOT NULL CHECK (status IN ('pass', 'fail', 'error', 'skipped')),
    fail_on TEXT NOT NULL,
    counts TEXT NOT NULL,
    findings TEXT NOT NULL,
    db_digest TEXT,
    db_updated_at TEXT,
    scanned_at TEXT NOT NULL,
    error TEXT,
    PRIMARY KEY (repository, digest)
)
""",
        """
CREATE TABLE scan_children (
    repository TEXT NOT NULL,
    digest TEXT NOT NULL,
    child TEXT NOT NULL,
    position INTEGER NOT NULL,
    PRIMARY KEY (repository, digest, child)
)
""",
        """
CREATE TABLE scan_queue (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    repository TEXT NOT NULL,
    digest TEXT NOT NULL,
    source TEXT NOT NULL CHECK (source IN ('push', 'reconcile', 'rescan')),
    queued_at TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    not_before TEXT,
    claimed_at TEXT,
    last_error TEXT,
    UNIQUE (repository, digest)
)
""",
        """
CREATE TABLE scan_reconciliations (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    started_at TEXT NOT NULL,
    finished_at TEXT,
    digests INTEGER NOT NULL DEFAULT 0,
    queued INTEGER NOT NULL DEFAULT 0,
    requests INTEGER NOT NULL DEFAULT 0,
    duration REAL,
    error TEXT
)
""",
    ),
    # 3: the gate's record of blobs it may serve (issue 10), owned by state/admitted.py.
    (
        """
CREATE TABLE gate_admitted_blobs (
    repository TEXT NOT NULL,
    digest TEXT NOT NULL,
    manifest TEXT NOT NULL,
    admitted_at TEXT NOT NULL,
    PRIMARY KEY (repository, digest, manifest)
)
""",
    ),
    # 4: bundle imports (issue 11): their record, the resume ledger and the open upload
    # sessions, owned by state/imports.py.
    (
        """
CREATE TABLE bundle_imports (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    bundle TEXT NOT NULL,
    kind TEXT NOT NULL,
    lock_digest TEXT NOT NULL,
    created TEXT,
    registry TEXT NOT NULL,
    started_at TEXT NOT NULL,
    finished_at TEXT,
    status TEXT NOT NULL
        CHECK (status IN ('running', 'ok', 'failed', 'refused', 'interrupted')),
    entries INTEGER NOT NULL DEFAULT 0,
    blobs_uploaded INTEGER NOT NULL DEFAULT 0,
    blobs_mounted INTEGER NOT NULL DEFAULT 0,
    blobs_present INTEGER NOT NULL DEFAULT 0,
    manifests INTEGER NOT NULL DEFAULT 0,
    tags INTEGER NOT NULL DEFAULT 0,
    bytes_sent INTEGER NOT NULL DEFAULT 0,
    resumed_bytes INTEGER NOT NULL DEFAULT 0,
    duration REAL,
    error TEXT
)
""",
        """
CREATE TABLE bundle_import_items (
    bundle TEXT NOT NULL,
    registry TEXT NOT NULL,
    repository TEXT NOT NULL,
    digest TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('blob', 'manifest', 'tag')),
    tag TEXT NOT NULL DEFAULT '',
    how TEXT NOT NULL,
    bytes INTEGER NOT NULL DEFAULT 0,
    done_at TEXT NOT NULL,
    PRIMARY KEY (bundle, registry, repository, kind, digest, tag)
)
""",
        """
CREATE TABLE bundle_upload_sessions (
    registry TEXT NOT NULL,
    repository TEXT NOT NULL,
    digest TEXT NOT NULL,
    bundle TEXT NOT NULL,
    location TEXT NOT NULL,
    offset INTEGER NOT NULL,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (registry, repository, digest)
)
""",
    ),
)
SCHEMA_VERSION = len(MIGRATIONS)


def utc_now() -> str:
    """The current time as the state stores it: ISO 8601, UTC, whole seconds."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class EntryState:
    """The state of one destination tag after the last run that looked at it.

    ``in_sync``: when the run ended, the destination held what the lock entry asks for
    (copied now, or found up to date). ``synced_at``: the last time it was.
    ``fingerprint``: the lock entry the destination was last brought in line with (see
    :func:`airgapped_registry.mirror.plan.fingerprint`); kept from before when not in sync.
    """

    reference: str
    registry: str
    repository: str
    tag: str
    digest: str
    result: str
    in_sync: bool
    detail: str | None = None
    bytes: int = 0
    duration: float = 0.0
    error: str | None = None
    fingerprint: str | None = None
    updated_at: str = ""
    synced_at: str | None = None
    run_id: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "reference": self.reference,
            "registry": self.registry,
            "repository": self.repository,
            "tag": self.tag,
            "digest": self.digest,
            "result": self.result,
            "in_sync": self.in_sync,
            "detail": self.detail,
            "bytes": self.bytes,
            "duration": self.duration,
            "error": self.error,
            "fingerprint": self.fingerprint,
            "updated_at": self.updated_at,
            "synced_at": self.synced_at,
            "run_id": self.run_id,
        }


@dataclass(frozen=True)
class RunRecord:
    """One sync run as the run log keeps it."""

    id: int
    destination: str
    lock_path: str | None
    started_at: str
    finished_at: str | None
    entries: int
    copied: int
    skipped: int
    failures: int
    bytes: int
    duration: float | None
    summary: str | None

    def to_json(self) -> dict[str, Any]:
        return dict(vars(self))


def summary_line(entries: int, copied: int, bytes_sent: int, duration: float, failures: int) -> str:
    """The one line a cron log gets: ``entries=N copied=N bytes=N duration=Ns failures=N``."""
    return (
        f"entries={entries} copied={copied} bytes={bytes_sent} "
        f"duration={round(duration)}s failures={failures}"
    )


class StateStore:
    """The ``sync_*`` tables of the host's state database.

    Use from one thread (SQLite connections are not shared between threads); the sync
    records results from its main thread as workers finish.
    """

    def __init__(self, path: str | os.PathLike[str] = defaults.STATE_PATH) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            self._db.row_factory = sqlite3.Row
            mode = self._db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise AirgapError(f"state database {self.path}: cannot use WAL mode ({mode})")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._migrate()
        except (OSError, sqlite3.Error) as exc:
            raise AirgapError(f"state database {self.path}: {exc}") from exc

    @property
    def connection(self) -> sqlite3.Connection:
        """The database connection, for the accessors of other tables (``state/verdicts.py``);
        autocommit, rows as :class:`sqlite3.Row`, this thread only."""
        return self._db

    @property
    def schema_version(self) -> int:
        return int(self._db.execute("PRAGMA user_version").fetchone()[0])

    def _migrate(self) -> None:
        """Bring the schema to :data:`SCHEMA_VERSION`; one transaction, so a crash or a
        second process opening the database meanwhile sees the old schema or the new."""
        if self._checked_version() == SCHEMA_VERSION:
            return
        self._db.execute("BEGIN IMMEDIATE")
        try:
            # Read again under the write lock: another process may have migrated meanwhile.
            for number in range(self._checked_version() + 1, SCHEMA_VERSION + 1):
                for statement in MIGRATIONS[number - 1]:
                    self._db.execute(statement)
                self._db.execute(f"PRAGMA user_version = {number}")
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    def _checked_version(self) -> int:
        version = self.schema_version
        if version > SCHEMA_VERSION:
            raise AirgapError(
                f"state database {self.path}: schema version {version} was written by a newer "
                f"engine (this one knows up to {SCHEMA_VERSION}); upgrade the engine"
            )
        return version

    def __enter__(self) -> StateStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._db.close()

    # -- runs -----------------------------------------------------------------------------

    def start_run(self, destination: str, lock_path: str | None = None) -> int:
        cursor = self._execute(
            "INSERT INTO sync_runs (destination, lock_path, started_at) VALUES (?, ?, ?)",
            (destination, lock_path, utc_now()),
        )
        if cursor.lastrowid is None:
            raise AirgapError(f"state database {self.path}: the new run got no id")
        return cursor.lastrowid

    def finish_run(
        self,
        run_id: int,
        *,
        entries: int,
        copied: int,
        skipped: int,
        failures: int,
        bytes_sent: int,
        duration: float,
    ) -> str:
        """Close a run's log record; returns its summary line."""
        summary = summary_line(entries, copied, bytes_sent, duration, failures)
        self._execute(
            "UPDATE sync_runs SET finished_at = ?, entries = ?, copied = ?, skipped = ?, "
            "failures = ?, bytes = ?, duration = ?, summary = ? WHERE id = ?",
            (utc_now(), entries, copied, skipped, failures, bytes_sent, duration, summary, run_id),
        )
        return summary

    def runs(self, limit: int = 20) -> list[RunRecord]:
        """The latest runs, newest first (an unfinished run has no ``finished_at``)."""
        rows = self._db.execute(
            "SELECT * FROM sync_runs ORDER BY id DESC LIMIT ?", (limit,)
        ).fetchall()
        return [RunRecord(**dict(row)) for row in rows]

    def last_run(self) -> RunRecord | None:
        runs = self.runs(1)
        return runs[0] if runs else None

    # -- entries --------------------------------------------------------------------------

    def record(self, state: EntryState) -> None:
        """Replace an entry's state; ``fingerprint`` and ``synced_at`` change only when the
        entry is in sync now."""
        if state.result not in RESULTS:
            raise ValueError(f"result {state.result!r}: expected one of {', '.join(RESULTS)}")
        now = state.updated_at or utc_now()
        self._execute(
            "INSERT INTO sync_entries (reference, registry, repository, tag, digest, "
            "fingerprint, result, in_sync, detail, bytes, duration, error, updated_at, "
            "synced_at, run_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (reference) DO UPDATE SET registry = excluded.registry, "
            "repository = excluded.repository, tag = excluded.tag, digest = excluded.digest, "
            "fingerprint = COALESCE(excluded.fingerprint, sync_entries.fingerprint), "
            "result = excluded.result, in_sync = excluded.in_sync, detail = excluded.detail, "
            "bytes = excluded.bytes, duration = excluded.duration, error = excluded.error, "
            "updated_at = excluded.updated_at, "
            "synced_at = COALESCE(excluded.synced_at, sync_entries.synced_at), "
            "run_id = excluded.run_id",
            (
                state.reference,
                state.registry,
                state.repository,
                state.tag,
                state.digest,
                state.fingerprint if state.in_sync else None,
                state.result,
                int(state.in_sync),
                state.detail,
                state.bytes,
                state.duration,
                state.error,
                now,
                now if state.in_sync else None,
                state.run_id,
            ),
        )

    def entries(self, registry: str | None = None) -> list[EntryState]:
        """Every entry's state (of one destination ``host[:port]`` when given), by reference."""
        query = "SELECT * FROM sync_entries"
        parameters: tuple[Any, ...] = ()
        if registry is not None:
            query += " WHERE registry = ?"
            parameters = (registry,)
        rows = self._db.execute(query + " ORDER BY reference", parameters).fetchall()
        return [_entry_state(row) for row in rows]

    def entry(self, reference: str) -> EntryState | None:
        row = self._db.execute(
            "SELECT * FROM sync_entries WHERE reference = ?", (reference,)
        ).fetchone()
        return _entry_state(row) if row else None

    def fingerprints(self, registry: str) -> dict[str, str]:
        """``reference`` → the fingerprint each entry was last brought in line with."""
        rows = self._db.execute(
            "SELECT reference, fingerprint FROM sync_entries "
            "WHERE registry = ? AND fingerprint IS NOT NULL",
            (registry,),
        ).fetchall()
        return {row["reference"]: row["fingerprint"] for row in rows}

    def _execute(self, sql: str, parameters: tuple[Any, ...]) -> sqlite3.Cursor:
        try:
            return self._db.execute(sql, parameters)
        except sqlite3.Error as exc:
            raise AirgapError(f"state database {self.path}: {exc}") from exc


def recorded_fingerprints(path: str | os.PathLike[str], registry: str) -> dict[str, str] | None:
    """:meth:`StateStore.fingerprints` of the database at ``path``; None when there is none
    (a plan reads the state, it never creates one)."""
    if not Path(path).exists():
        return None
    with StateStore(path) as store:
        return store.fingerprints(registry)


def _entry_state(row: sqlite3.Row) -> EntryState:
    values = dict(row)
    values["in_sync"] = bool(values["in_sync"])
    return EntryState(**values)
