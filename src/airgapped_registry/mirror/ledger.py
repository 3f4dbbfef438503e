"""The blob ledger: which blobs a destination holds, per repository, as this run knows for sure.

A registry stores a manifest only when the blobs it references are there, so a tag resolving
to a known manifest vouches for its blobs in that repository; every blob placed or found
present is recorded too. The engine copier mounts a blob from a repository the ledger names
instead of asking the registry, and skips one the ledger already places. The ledger also
orders copies that need the same missing blob (:meth:`BlobLedger.claim`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable

from airgapped_registry.mirror.lock import Blob, Lock
from airgapped_registry.mirror.plan import Plan


class BlobLedger:
    """Blobs held per destination repository, and one repository per digest to mount from."""

    def __init__(self) -> None:
        self._held: set[tuple[str, str]] = set()
        self._where: dict[str, str] = {}
        self._claims: dict[str, threading.Event] = {}
        self._lock = threading.Lock()

    def holds(self, repository: str, blobs: Iterable[Blob]) -> None:
        """Record that ``repository`` holds ``blobs`` (seen, placed, or vouched for by a tag
        naming a manifest that references them)."""
        with self._lock:
            for blob in blobs:
                self._held.add((repository, blob.digest))
                self._where.setdefault(blob.digest, repository)

    def place(self, repository: str, digest: str) -> str | None:
        """Where to get ``digest`` for ``repository``: None when it holds it already, else a
        repository known to hold it (to mount from), or ``""`` when none is known."""
        with self._lock:
            if (repository, digest) in self._held:
                return None
            return self._where.get(digest, "")

    def claim(
        self,
        blobs: Iterable[Blob],
        wait_for: Callable[[threading.Event], bool] | None = None,
    ) -> threading.Event:
        """Wait for the copies already moving blobs this one needs; claim the others.

        Two skopeo runs that need the same missing blob at the same time both upload it (into
        their own repositories); one after the other, the second finds it or mounts it from
        the first's repository. Waits only go to copies that claimed earlier, so they cannot
        form a cycle. Set the event returned when done. ``wait_for(event)`` waits for one
        earlier copy and returns False to stop waiting (the run halted; the caller then asks
        why).
        """
        blobs = list(blobs)
        done = threading.Event()
        with self._lock:
            others = {
                id(claim): claim
                for blob in blobs
                if (claim := self._claims.get(blob.digest)) is not None and not claim.is_set()
            }
            for blob in blobs:
                self._claims.setdefault(blob.digest, done)
        for claim in others.values():
            if wait_for is None:
                claim.wait()
            elif not wait_for(claim):
                break
        return done

    def seed(self, the_plan: Plan, previous: Lock | None) -> None:
        """What the plan's HEADs proved present: the blobs of every tag naming a known digest.

        A tag resolving to the lock's digest, or to the digest the previous lock recorded for
        it, vouches for those blobs in its repository. They are not looked up again, and
        serve as mount sources for other repositories.
        """
        before = {entry.key: entry for entry in previous.entries} if previous else {}
        for planned in the_plan.entries:
            entry = planned.entry
            if planned.content_present:
                self.holds(entry.destination, entry.content_blobs())
                continue
            old = before.get(entry.key)
            if old is not None and planned.current == old.digest:
                self.holds(old.destination, old.content_blobs())
