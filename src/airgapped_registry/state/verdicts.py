"""The scan service's state: verdicts, index children, the scan queue, reconciliations.

Tables (migration 2 of :mod:`airgapped_registry.state.store`):

- ``scan_verdicts``: the last verdict per ``(repository, digest)``: status ``pass``,
  ``fail`` or ``error`` (``stale`` is decided when read), counts and findings as JSON, the
  DB (digest, UpdatedAt) it was made with, when;
- ``scan_children``: an index's platform manifests, so the reconciliation walks an index
  without fetching it again;
- ``scan_queue``: digests waiting for a scan (``push`` from a notification, ``reconcile``
  from the reconciliation, ``rescan`` after a new DB), one row per ``(repository, digest)``;
  a worker claims a row, and deletes it when the verdict is recorded. It survives restarts:
  a row claimed by a process that died is released when the service starts again;
- ``scan_reconciliations``: one row per reconciliation pass.

Values are plain (JSON-able dicts and ISO 8601 strings); the scanning domain maps them onto
its model. The installed vulnerability DB is recorded where it is installed, beside it
(:mod:`airgapped_registry.scanning.db`), not here: one record of it. One
:class:`VerdictStore` per thread, as for :class:`StateStore`.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from airgapped_registry.errors import AirgapError
from airgapped_registry.state.store import StateStore, utc_now

SOURCES = ("push", "reconcile", "rescan")


@dataclass(frozen=True)
class VerdictRecord:
    repository: str
    digest: str
    status: str
    fail_on: str
    counts: dict[str, int]
    findings: list[dict[str, Any]]
    scanned_at: str
    media_type: str | None = None
    db_digest: str | None = None
    db_updated_at: str | None = None
    error: str | None = None
    children: tuple[str, ...] = field(default=())


@dataclass(frozen=True)
class QueueItem:
    id: int
    repository: str
    digest: str
    source: str
    queued_at: str
    attempts: int
    not_before: str | None = None
    claimed_at: str | None = None
    last_error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return dict(vars(self))


@dataclass(frozen=True)
class ReconciliationRecord:
    id: int
    started_at: str
    finished_at: str | None
    digests: int
    queued: int
    requests: int
    duration: float | None
    error: str | None

    def to_json(self) -> dict[str, Any]:
        return dict(vars(self))


class VerdictStore:
    """The ``scan_*`` tables of the host's state database (see the module docstring)."""

    def __init__(self, store: StateStore) -> None:
        self.store = store
        self._db = store.connection

    # -- verdicts -------------------------------------------------------------------------

    def record(self, verdict: VerdictRecord) -> None:
        """Replace the verdict of ``(repository, digest)``; an index's children with it."""
        with self._transaction():
            self._db.execute(
                "INSERT OR REPLACE INTO scan_verdicts (repository, digest, media_type, status, "
                "fail_on, counts, findings, db_digest, db_updated_at, scanned_at, error) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    verdict.repository,
                    verdict.digest,
                    verdict.media_type,
                    verdict.status,
                    verdict.fail_on,
                    json.dumps(verdict.counts),
                    json.dumps(verdict.findings),
                    verdict.db_digest,
                    verdict.db_updated_at,
                    verdict.scanned_at,
                    verdict.error,
                ),
            )
            if verdict.children:
                self._remember_children(verdict.repository, verdict.digest, verdict.children)

    def verdict(self, repository: str, digest: str) -> VerdictRecord | None:
        row = self._db.execute(
            "SELECT * FROM scan_verdicts WHERE repository = ? AND digest = ?",
            (repository, digest),
        ).fetchone()
        return self._verdict(row) if row else None

    def verdicts(
        self, repository: str | None = None, digest: str | None = None
    ) -> list[VerdictRecord]:
        """Every verdict (of one repository, of one digest), by repository and digest."""
        conditions, parameters = [], []
        if repository is not None:
            conditions.append("repository = ?")
            parameters.append(repository)
        if digest is not None:
            conditions.append("digest = ?")
            parameters.append(digest)
        where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
        rows = self._db.execute(
            f"SELECT * FROM scan_verdicts{where} ORDER BY repository, digest", parameters
        ).fetchall()
        return [self._verdict(row) for row in rows]

    def verdict_keys(self) -> dict[tuple[str, str], tuple[str, str | None]]:
        """``(repository, digest)`` → ``(status, DB digest)`` of every verdict: what the
        reconciliation compares with the registry, in one query."""
        rows = self._db.execute("SELECT repository, digest, status, db_digest FROM scan_verdicts")
        return {(row[0], row[1]): (row[2], row[3]) for row in rows}

    def forget(self, repository: str, digest: str) -> int:
        """Drop what is known of a digest deleted from a repository (verdict, children,
        queued scan); returns the verdicts dropped."""
        with self._transaction():
            dropped = self._db.execute(
                "DELETE FROM scan_verdicts WHERE repository = ? AND digest = ?",
                (repository, digest),
            ).rowcount
            for table in ("scan_children", "scan_queue"):
                self._db.execute(
                    f"DELETE FROM {table} WHERE repository = ? AND digest = ?", (repository, digest)
                )
        return dropped

    def children(self, repository: str, digest: str) -> tuple[str, ...] | None:
        """The platform manifests of an index, as recorded; None when none are."""
        rows = self._db.execute(
            "SELECT child FROM scan_children WHERE repository = ? AND digest = ? ORDER BY position",
            (repository, digest),
        ).fetchall()
        return tuple(row[0] for row in rows) or None

    def all_children(self) -> dict[tuple[str, str], tuple[str, ...]]:
        """Every recorded index's children, in one query."""
        found: dict[tuple[str, str], list[str]] = {}
        for row in self._db.execute(
            "SELECT repository, digest, child FROM scan_children ORDER BY position"
        ):
            found.setdefault((row[0], row[1]), []).append(row[2])
        return {key: tuple(value) for key, value in found.items()}

    def remember_children(self, repository: str, digest: str, children: Iterable[str]) -> None:
        with self._transaction():
            self._remember_children(repository, digest, children)

    def _remember_children(self, repository: str, digest: str, children: Iterable[str]) -> None:
        self._db.execute(
            "DELETE FROM scan_children WHERE repository = ? AND digest = ?", (repository, digest)
        )
        self._db.executemany(
            "INSERT OR IGNORE INTO scan_children (repository, digest, child, position) "
            "VALUES (?, ?, ?, ?)",
            [(repository, digest, child, n) for n, child in enumerate(children)],
        )

    # -- the queue ------------------------------------------------------------------------

    def enqueue(
        self, items: Iterable[tuple[str, str]], source: str, not_before: str | None = None
    ) -> int:
        """Queue ``(repository, digest)`` pairs for a scan (due from ``not_before``); one
        already queued stays as it is. Returns how many were added."""
        if source not in SOURCES:
            raise ValueError(f"scan queue source {source!r}: expected one of {', '.join(SOURCES)}")
        now = utc_now()
        with self._transaction():
            before = self._db.total_changes
            self._db.executemany(
                "INSERT INTO scan_queue (repository, digest, source, queued_at, not_before) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (repository, digest) DO NOTHING",
                [(repository, digest, source, now, not_before) for repository, digest in items],
            )
            return self._db.total_changes - before

    def claim(self, now: str | None = None) -> QueueItem | None:
        """Take the oldest unclaimed item that is due; its attempts count up by one."""
        moment = now or utc_now()
        with self._transaction():
            row = self._db.execute(
                "UPDATE scan_queue SET claimed_at = ?, attempts = attempts + 1 WHERE id = ("
                "SELECT id FROM scan_queue WHERE claimed_at IS NULL AND "
                "(not_before IS NULL OR not_before <= ?) ORDER BY id LIMIT 1) RETURNING *",
                (moment, moment),
            ).fetchone()
        return QueueItem(**dict(row)) if row else None

    def done(self, item: QueueItem) -> None:
        self._execute("DELETE FROM scan_queue WHERE id = ?", (item.id,))

    def retry(self, item: QueueItem, error: str, not_before: str) -> None:
        """Put a claimed item back, due again at ``not_before``."""
        self._execute(
            "UPDATE scan_queue SET claimed_at = NULL, last_error = ?, not_before = ? WHERE id = ?",
            (error, not_before, item.id),
        )

    def release_claims(self) -> int:
        """Unclaim every item (at start-up: whoever claimed them is gone)."""
        return self._execute(
            "UPDATE scan_queue SET claimed_at = NULL WHERE claimed_at IS NOT NULL", ()
        ).rowcount

    def parent_queued(self, repository: str, digest: str) -> bool:
        """Whether an index listing ``digest`` in ``repository`` is queued too."""
        row = self._db.execute(
            "SELECT 1 FROM scan_children AS c JOIN scan_queue AS q "
            "ON q.repository = c.repository AND q.digest = c.digest "
            "WHERE c.repository = ? AND c.child = ? LIMIT 1",
            (repository, digest),
        ).fetchone()
        return row is not None

    def queue(self) -> list[QueueItem]:
        rows = self._db.execute("SELECT * FROM scan_queue ORDER BY id").fetchall()
        return [QueueItem(**dict(row)) for row in rows]

    def queue_depth(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM scan_queue").fetchone()[0])

    # -- reconciliations ------------------------------------------------------------------

    def start_reconciliation(self) -> int:
        cursor = self._execute(
            "INSERT INTO scan_reconciliations (started_at) VALUES (?)", (utc_now(),)
        )
        if cursor.lastrowid is None:
            raise AirgapError(f"state database {self.store.path}: the reconciliation got no id")
        return cursor.lastrowid

    def finish_reconciliation(
        self,
        number: int,
        *,
        digests: int,
        queued: int,
        requests: int,
        duration: float,
        error: str | None = None,
    ) -> None:
        self._execute(
            "UPDATE scan_reconciliations SET finished_at = ?, digests = ?, queued = ?, "
            "requests = ?, duration = ?, error = ? WHERE id = ?",
            (utc_now(), digests, queued, requests, duration, error, number),
        )

    def last_reconciliation(self) -> ReconciliationRecord | None:
        row = self._db.execute(
            "SELECT * FROM scan_reconciliations ORDER BY id DESC LIMIT 1"
        ).fetchone()
        return ReconciliationRecord(**dict(row)) if row else None

    # -- plumbing -------------------------------------------------------------------------

    def _verdict(self, row: sqlite3.Row) -> VerdictRecord:
        values = dict(row)
        values["counts"] = json.loads(values["counts"])
        values["findings"] = json.loads(values["findings"])
        values["children"] = self.children(values["repository"], values["digest"]) or ()
        return VerdictRecord(**values)

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        try:
            self._db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise AirgapError(f"state database {self.store.path}: {exc}") from exc
        try:
            yield
        except sqlite3.Error as exc:
            self._db.execute("ROLLBACK")
            raise AirgapError(f"state database {self.store.path}: {exc}") from exc
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def _execute(self, sql: str, parameters: tuple[Any, ...]) -> sqlite3.Cursor:
        try:
            return self._db.execute(sql, parameters)
        except sqlite3.Error as exc:
            raise AirgapError(f"state database {self.store.path}: {exc}") from exc
