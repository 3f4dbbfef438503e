"""The plan: which entries of a lock the destination registry lacks, and how much they weigh.

One manifest ``HEAD destination:tag`` per entry, nothing else by default and nothing at all to
the sources: a tag that already resolves to the lock's digest needs no copy. When the caller
passes the fingerprints the state store kept for the entries it last synced, an entry whose
digest is unchanged but whose lock entry changed (a signature appeared upstream, another
platform was selected) is planned again, so the new signature is copied.

Bytes are the sizes the lock records: ``bytes`` is what an entry references (its blobs, once
each; only its signature blobs when the destination already holds its content), and the
plan's total counts each digest once across entries. That is an upper bound of what will be
sent: the copy skips blobs the destination already holds. ``check_blobs`` makes the bound
exact at the price of one blob HEAD per distinct blob per repository (``missing_bytes``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from airgapped_registry import defaults
from airgapped_registry.mirror.lock import Blob, Lock, LockEntry
from airgapped_registry.oci.reference import digest_of
from airgapped_registry.transport.counters import RequestCount
from airgapped_registry.transport.registry import ManifestRef, RegistryClient

COPY = "copy"
SKIP = "skip"


def fingerprint(entry: LockEntry) -> str:
    """A digest of everything the lock says about an entry's content: equal means nothing to
    redo. The signature policy's keys are left out: they say how the upstream was checked,
    not what the destination holds (and a lock written before they were recorded keeps its
    fingerprints)."""
    document = entry.to_json()
    del document["signature_keys"]
    text = json.dumps(document, sort_keys=True, separators=(",", ":"))
    return digest_of(text.encode())


def registry_address(client: RegistryClient) -> str:
    """``host[:port]`` of a client's registry, as skopeo, cosign and the state name it."""
    return urlsplit(client.base_url).netloc


def destination_reference(address: str, entry: LockEntry) -> str:
    """``host[:port]/repository:tag``: the key of an entry in the state store."""
    return f"{address}/{entry.destination}:{entry.tag}"


@dataclass(frozen=True)
class PlannedEntry:
    """One lock entry and what the sync does with it.

    ``current``: the digest ``destination:tag`` resolves to now (None: absent).
    ``content_present``: the destination already holds the entry's manifest under its tag;
    only signatures remain to copy. ``missing_*`` are None unless blobs were checked.
    """

    entry: LockEntry
    action: str
    reason: str
    current: str | None
    blobs: tuple[Blob, ...] = ()
    missing_blobs: int | None = None
    missing_bytes: int | None = None
    forced: bool = False

    @property
    def reference(self) -> str:
        return self.entry.reference

    @property
    def content_present(self) -> bool:
        """The tag names the lock's digest (and the run does not force a full copy)."""
        return self.current == self.entry.digest and not self.forced

    @property
    def bytes(self) -> int:
        return sum(blob.size for blob in self.blobs)

    def to_json(self) -> dict[str, Any]:
        return {
            "entry": self.reference,
            "kind": self.entry.kind,
            "action": self.action,
            "reason": self.reason,
            "digest": self.entry.digest,
            "current": self.current,
            "blobs": len(self.blobs),
            "bytes": self.bytes,
            "missing_blobs": self.missing_blobs,
            "missing_bytes": self.missing_bytes,
        }


@dataclass(frozen=True)
class Plan:
    destination: str
    entries: tuple[PlannedEntry, ...]
    requests: dict[str, Any] = field(default_factory=dict)
    checked_blobs: bool = False

    @property
    def to_copy(self) -> list[PlannedEntry]:
        return [planned for planned in self.entries if planned.action == COPY]

    @property
    def up_to_date(self) -> list[PlannedEntry]:
        return [planned for planned in self.entries if planned.action == SKIP]

    def distinct_blobs(self) -> dict[str, Blob]:
        """Every blob the entries to copy reference, each digest once."""
        blobs: dict[str, Blob] = {}
        for planned in self.to_copy:
            for blob in planned.blobs:
                blobs.setdefault(blob.digest, blob)
        return blobs

    @property
    def bytes(self) -> int:
        return sum(blob.size for blob in self.distinct_blobs().values())

    @property
    def missing_bytes(self) -> int | None:
        if not self.checked_blobs:
            return None
        return sum(planned.missing_bytes or 0 for planned in self.to_copy)

    def to_json(self) -> dict[str, Any]:
        return {
            "destination": self.destination,
            "entries": len(self.entries),
            "to_copy": len(self.to_copy),
            "up_to_date": len(self.up_to_date),
            "blobs": len(self.distinct_blobs()),
            "bytes": self.bytes,
            "checked_blobs": self.checked_blobs,
            "missing_bytes": self.missing_bytes,
            "requests": self.requests,
            "plan": [planned.to_json() for planned in self.entries],
        }

    def table(self) -> str:
        """The plan for people: one line per entry, then a summary line."""
        rows = [("ACTION", "ENTRY", "DIGEST", "NOW", "BLOBS", "BYTES")]
        for planned in self.entries:
            if planned.action == SKIP:
                now, blobs, size = "up to date", "", ""
            else:
                now = _short(planned.current) if planned.current else "absent"
                if planned.current and planned.content_present:
                    now = "signatures"
                blobs = str(len(planned.blobs))
                size = human_bytes(planned.bytes)
                if planned.missing_bytes is not None:
                    blobs = f"{planned.missing_blobs}/{len(planned.blobs)}"
                    size = human_bytes(planned.missing_bytes)
            rows.append(
                (planned.action, planned.reference, _short(planned.entry.digest), now, blobs, size)
            )
        widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
        lines = [
            "  ".join(
                cell.rjust(width) if column >= 4 else cell.ljust(width)
                for column, (cell, width) in enumerate(zip(row, widths, strict=True))
            ).rstrip()
            for row in rows
        ]
        lines.append(self.summary())
        return "\n".join(lines)

    def summary(self) -> str:
        copy, skip = len(self.to_copy), len(self.up_to_date)
        text = f"{len(self.entries)} entries: {copy} to copy, {skip} up to date"
        if copy:
            if self.missing_bytes is not None:
                text += f"; {human_bytes(self.missing_bytes)} missing at the destination"
            else:
                text += (
                    f"; at most {human_bytes(self.bytes)} to send "
                    f"({len(self.distinct_blobs())} blobs, present ones are skipped)"
                )
        requests = self.requests.get("destination", {})
        methods = ", ".join(f"{n} {m}" for m, n in requests.get("by_method", {}).items())
        text += (
            f"; {requests.get('total', 0)} requests to {urlsplit(self.destination).netloc}"
            f"{f' ({methods})' if methods else ''}, none to the sources"
        )
        return text


def decide(
    entry: LockEntry, current: ManifestRef | None, synced: str | None = None
) -> tuple[str, str]:
    """``(action, reason)`` for an entry, from what its destination tag resolves to now.

    ``synced`` is the fingerprint recorded when the entry was last brought in line (None when
    unknown: then a tag holding the digest counts as complete).
    """
    if current is None:
        return COPY, "absent at the destination"
    if current.digest != entry.digest:
        return COPY, f"destination tag holds {current.digest}"
    if synced is not None and synced != fingerprint(entry):
        return COPY, "same digest, but the lock entry changed since the last sync"
    return SKIP, "up to date"


def blobs_to_move(entry: LockEntry, content_present: bool) -> tuple[Blob, ...]:
    """The blobs a copy of ``entry`` may send: all of them, or only its signatures'."""
    if not content_present:
        return tuple(entry.blobs())
    blobs: dict[str, Blob] = {}
    for signature in entry.signatures:
        if signature.copy:
            for blob in signature.blobs():
                blobs.setdefault(blob.digest, blob)
    return tuple(blobs.values())


def plan(
    lock: Lock,
    destination: RegistryClient,
    *,
    fingerprints: Mapping[str, str] | None = None,
    check_blobs: bool = False,
    workers: int = defaults.PLAN_WORKERS,
    currents: Mapping[tuple[str, str], ManifestRef | None] | None = None,
    force: bool = False,
) -> Plan:
    """Compare ``lock`` with ``destination``: one manifest HEAD per entry (see the module doc).

    ``fingerprints`` maps ``host[:port]/repository:tag`` to the fingerprint the state store
    recorded at the last sync. With ``check_blobs``, each distinct blob of the entries to copy
    is HEADed once in its destination repository. ``currents``: HEADs already made (by
    destination and tag) during this run, not made again; ``requests`` counts only the
    plan's own. ``force``: every entry is copied again in full, whatever its tag names (the
    repair of content damaged behind the mirror's back: the copy checks every blob).
    """
    before = RequestCount.of(destination)
    address = registry_address(destination)
    fingerprints = fingerprints or {}
    entries = lock.entries
    known = currents or {}

    def current(entry: LockEntry) -> ManifestRef | None:
        if entry.key in known:
            return known[entry.key]
        return destination.head_manifest(entry.destination, entry.tag)

    with ThreadPoolExecutor(max(1, workers)) as pool:
        currents_now = list(pool.map(current, entries))
        planned = []
        for entry, found in zip(entries, currents_now, strict=True):
            action, reason = decide(
                entry, found, fingerprints.get(destination_reference(address, entry))
            )
            if force and action == SKIP:
                action, reason = COPY, "forced: every blob and child checked again"
            digest = found.digest if found else None
            present = digest == entry.digest and not force
            blobs = blobs_to_move(entry, present) if action == COPY else ()
            planned.append(PlannedEntry(entry, action, reason, digest, blobs, forced=force))
        if check_blobs:
            planned = _check_blobs(destination, planned, pool)
    return Plan(
        destination=destination.base_url,
        entries=tuple(planned),
        requests={"destination": before.since(destination), "sources": {}},
        checked_blobs=check_blobs,
    )


def _check_blobs(
    destination: RegistryClient, planned: list[PlannedEntry], pool: ThreadPoolExecutor
) -> list[PlannedEntry]:
    wanted = sorted(
        {
            (p.entry.destination, blob.digest)
            for p in planned
            if p.action == COPY
            for blob in p.blobs
        }
    )
    present = dict(
        zip(wanted, pool.map(lambda key: destination.blob_exists(*key), wanted), strict=True)
    )
    checked = []
    for item in planned:
        if item.action != COPY:
            checked.append(item)
            continue
        missing = [b for b in item.blobs if not present[(item.entry.destination, b.digest)]]
        checked.append(
            PlannedEntry(
                item.entry,
                item.action,
                item.reason,
                item.current,
                item.blobs,
                missing_blobs=len(missing),
                missing_bytes=sum(blob.size for blob in missing),
            )
        )
    return checked


def human_bytes(count: int) -> str:
    """``1.4 MiB``: binary units, one decimal above bytes."""
    size = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{count} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def _short(digest: str | None) -> str:
    return digest[:19] if digest else ""
