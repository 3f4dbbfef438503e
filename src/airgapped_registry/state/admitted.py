"""The gate's record of the blobs it may serve (migration 3's ``gate_admitted_blobs``).

A blob of a protected repository is served only when a manifest listing it was admitted in
that repository and that manifest still is (the gate asks again: a signature deleted or a
verdict failed since takes its blobs with it). The record is kept in the state database, not
in the gate's memory, so a pull that started before a gate restart continues after it. One
row per ``(repository, blob, manifest)``: every admitted manifest that lists the blob. One
:class:`AdmittedBlobs` per thread, as for :class:`StateStore`.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable

from airgapped_registry.errors import AirgapError
from airgapped_registry.state.store import StateStore, utc_now


class AdmittedBlobs:
    def __init__(self, store: StateStore) -> None:
        self.store = store
        self._db = store.connection

    def admit(self, repository: str, manifest: str, blobs: Iterable[str]) -> None:
        now = utc_now()
        try:
            self._db.executemany(
                "INSERT OR IGNORE INTO gate_admitted_blobs (repository, digest, manifest, "
                "admitted_at) VALUES (?, ?, ?, ?)",
                [(repository, blob, manifest, now) for blob in blobs],
            )
        except sqlite3.Error as exc:
            raise AirgapError(f"state database {self.store.path}: {exc}") from exc

    def manifests(self, repository: str, blob: str) -> list[str]:
        """The manifests admitted in ``repository`` that list ``blob``, most recent first."""
        try:
            rows = self._db.execute(
                "SELECT manifest FROM gate_admitted_blobs WHERE repository = ? AND digest = ? "
                "ORDER BY admitted_at DESC",
                (repository, blob),
            ).fetchall()
        except sqlite3.Error as exc:
            raise AirgapError(f"state database {self.store.path}: {exc}") from exc
        return [row[0] for row in rows]
