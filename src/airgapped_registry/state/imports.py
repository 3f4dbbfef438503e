"""Bundle imports (migration 4's ``bundle_*`` tables): their record, the resume ledger, and
the upload sessions an interrupted import left open.

- ``bundle_imports``: one row per import run (bundle id, kind, lock digest, when the bundle
  was made, started, finished, status, counts, bytes sent); the health endpoint and
  ``airgap bundle status`` read the latest.
- ``bundle_import_items``: what an import of a bundle made the registry hold, per
  ``(bundle, registry, repository, digest, kind)`` (``kind``: ``blob``, ``manifest`` or
  ``tag``, the tag's name beside its digest): a rerun of the same bundle skips each of
  them without asking the registry, so it sends nothing that arrived.
- ``bundle_upload_sessions``: an upload cut between two chunks, per ``(registry,
  repository, digest)``: the session's ``Location`` (Distribution's signed state included)
  and the offset the registry acknowledged; the rerun asks the registry where the session
  stands and sends only the rest.

Writers run in the importer's worker threads: one :class:`ImportLedger` per process, each
thread with its own connection (SQLite connections stay in the thread that opened them).
"""

from __future__ import annotations

import os
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from airgapped_registry.errors import AirgapError
from airgapped_registry.state.store import StateStore, utc_now

STATUSES = ("running", "ok", "failed", "refused", "interrupted")
KINDS = ("blob", "manifest", "tag")


@dataclass(frozen=True)
class UploadSession:
    """An upload the registry acknowledged up to ``offset`` bytes, to go on at ``location``."""

    location: str
    offset: int
    bundle: str


@dataclass(frozen=True)
class ImportRecord:
    """One import run as ``bundle_imports`` keeps it."""

    id: int
    bundle: str
    kind: str
    lock_digest: str
    created: str | None
    registry: str
    started_at: str
    finished_at: str | None
    status: str
    entries: int
    blobs_uploaded: int
    blobs_mounted: int
    blobs_present: int
    manifests: int
    tags: int
    bytes_sent: int
    resumed_bytes: int
    duration: float | None
    error: str | None

    def to_json(self) -> dict[str, Any]:
        return dict(vars(self))


class ImportLedger:
    """The ``bundle_*`` tables of the state database at ``path``, usable from any thread."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._local = threading.local()
        self._lock = threading.Lock()
        self._stores: list[tuple[int, StateStore]] = []
        self._store()  # opened (and migrated) now, so a bad database fails before any push

    def _store(self) -> StateStore:
        store = getattr(self._local, "store", None)
        if store is None:
            store = StateStore(self.path)
            self._local.store = store
            with self._lock:
                self._stores.append((threading.get_ident(), store))
        return store

    def close(self) -> None:
        """Close this thread's connection; those of worker threads (SQLite refuses to close
        them from here) are dropped, and closed when collected."""
        with self._lock:
            stores, self._stores = self._stores, []
        for owner, store in stores:
            if owner == threading.get_ident():
                store.close()
        self._local = threading.local()

    def __enter__(self) -> ImportLedger:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _execute(self, sql: str, parameters: tuple[Any, ...] = ()) -> sqlite3.Cursor:
        try:
            return self._store().connection.execute(sql, parameters)
        except sqlite3.Error as exc:
            raise AirgapError(f"state database {self.path}: {exc}") from exc

    # -- the record ---------------------------------------------------------------------

    def start(
        self, bundle: str, kind: str, lock_digest: str, created: str | None, registry: str
    ) -> int:
        cursor = self._execute(
            "INSERT INTO bundle_imports (bundle, kind, lock_digest, created, registry, "
            "started_at, status) VALUES (?, ?, ?, ?, ?, ?, 'running')",
            (bundle, kind, lock_digest, created, registry, utc_now()),
        )
        if cursor.lastrowid is None:
            raise AirgapError(f"state database {self.path}: the new import got no id")
        return cursor.lastrowid

    def finish(self, import_id: int, status: str, counts: dict[str, Any]) -> None:
        """Close an import's record; ``counts`` holds the columns after ``status``."""
        if status not in STATUSES:
            raise ValueError(f"status {status!r}: expected one of {', '.join(STATUSES)}")
        columns = (
            "entries",
            "blobs_uploaded",
            "blobs_mounted",
            "blobs_present",
            "manifests",
            "tags",
            "bytes_sent",
            "resumed_bytes",
            "duration",
            "error",
        )
        assignments = ", ".join(f"{column} = ?" for column in columns)
        self._execute(
            f"UPDATE bundle_imports SET finished_at = ?, status = ?, {assignments} WHERE id = ?",
            (
                utc_now(),
                status,
                *(
                    counts.get(column, 0 if column not in ("duration", "error") else None)
                    for column in columns
                ),
                import_id,
            ),
        )

    def imports(self, limit: int = 10) -> list[ImportRecord]:
        """The latest imports, newest first (a run killed before it finished stays
        ``running``, without ``finished_at``)."""
        rows = self._execute(
            "SELECT * FROM bundle_imports ORDER BY id DESC LIMIT ?", (limit,)
        ).fetchall()
        return [ImportRecord(**dict(row)) for row in rows]

    # -- the ledger ---------------------------------------------------------------------

    def done(self, bundle: str, registry: str) -> set[tuple[str, str, str, str]]:
        """``(repository, kind, digest, tag)`` an import of ``bundle`` already completed."""
        rows = self._execute(
            "SELECT repository, kind, digest, tag FROM bundle_import_items "
            "WHERE bundle = ? AND registry = ?",
            (bundle, registry),
        ).fetchall()
        return {(row[0], row[1], row[2], row[3]) for row in rows}

    def mark(
        self,
        bundle: str,
        registry: str,
        repository: str,
        kind: str,
        digest: str,
        how: str,
        sent: int = 0,
        tag: str = "",
    ) -> None:
        """Record that the registry now holds ``digest`` (or ``tag`` naming it)."""
        if kind not in KINDS:
            raise ValueError(f"kind {kind!r}: expected one of {', '.join(KINDS)}")
        self._execute(
            "INSERT OR REPLACE INTO bundle_import_items (bundle, registry, repository, digest, "
            "kind, tag, how, bytes, done_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (bundle, registry, repository, digest, kind, tag, how, sent, utc_now()),
        )

    def items(self, bundle: str, registry: str) -> list[dict[str, Any]]:
        rows = self._execute(
            "SELECT * FROM bundle_import_items WHERE bundle = ? AND registry = ? "
            "ORDER BY done_at, repository, kind, digest",
            (bundle, registry),
        ).fetchall()
        return [dict(row) for row in rows]

    # -- upload sessions ----------------------------------------------------------------

    def session(self, registry: str, repository: str, digest: str) -> UploadSession | None:
        row = self._execute(
            "SELECT location, offset, bundle FROM bundle_upload_sessions "
            "WHERE registry = ? AND repository = ? AND digest = ?",
            (registry, repository, digest),
        ).fetchone()
        return UploadSession(row[0], row[1], row[2]) if row else None

    def save_session(
        self, registry: str, repository: str, digest: str, bundle: str, location: str, offset: int
    ) -> None:
        self._execute(
            "INSERT OR REPLACE INTO bundle_upload_sessions (registry, repository, digest, "
            "bundle, location, offset, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (registry, repository, digest, bundle, location, offset, utc_now()),
        )

    def drop_session(self, registry: str, repository: str, digest: str) -> None:
        self._execute(
            "DELETE FROM bundle_upload_sessions WHERE registry = ? AND repository = ? "
            "AND digest = ?",
            (registry, repository, digest),
        )

    def sessions(self, registry: str | None = None) -> list[dict[str, Any]]:
        query = "SELECT * FROM bundle_upload_sessions"
        parameters: tuple[Any, ...] = ()
        if registry is not None:
            query += " WHERE registry = ?"
            parameters = (registry,)
        return [dict(row) for row in self._execute(query, parameters).fetchall()]
