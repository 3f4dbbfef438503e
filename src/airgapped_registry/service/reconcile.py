"""The reconciliation: every digest the backend serves that has no current verdict is queued.

Notifications are held in Distribution's memory and lost when it restarts or the service
is down; the reconciliation makes up for them. One pass walks the backend: the catalog, each
repository's tags, one ``HEAD`` per tag for its digest and media type, and for an index its
children from the stored record (a ``GET`` of the index only when none is recorded). Every
digest reached whose verdict is missing, ``error``, or made with another DB than the current
one is queued (``rescan`` when a verdict exists, ``reconcile`` when none does). cosign's
``.sig``/``.att``/``.sbom`` tags are not walked.

With nothing to do a pass costs ``1 + repositories + tags`` requests (more when the catalog
or a tag list is paginated) and no scan.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from airgapped_registry.errors import AirgapError
from airgapped_registry.oci.manifest import parse_manifest
from airgapped_registry.oci.mediatypes import INDEX_MEDIA_TYPES
from airgapped_registry.scanning.records import is_current
from airgapped_registry.scanning.verdict import DbInfo
from airgapped_registry.service.events import COSIGN_TAG
from airgapped_registry.service.worker import platform_children
from airgapped_registry.state.verdicts import VerdictStore
from airgapped_registry.transport.counters import RequestCount
from airgapped_registry.transport.registry import ManifestRef, RegistryClient


@dataclass
class Reconciliation:
    """What one pass found and did."""

    repositories: int = 0
    tags: int = 0
    digests: int = 0
    current: int = 0
    queued: int = 0
    requeued: int = 0
    indexes_fetched: int = 0
    errors: list[str] = field(default_factory=list)
    requests: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return dict(vars(self))


def served_tags(client: RegistryClient) -> Iterator[tuple[str, str, ManifestRef | None]]:
    """Every tag the backend serves (cosign's left out) with what a HEAD says it names."""
    for repository in client.catalog():
        for tag in client.tags(repository):
            if not COSIGN_TAG.fullmatch(tag):
                yield repository, tag, client.head_manifest(repository, tag)


def reconcile(
    client: RegistryClient, verdicts: VerdictStore, current_db: DbInfo | None
) -> Reconciliation:
    """One pass (see the module docstring); logged in ``scan_reconciliations``."""
    started = time.monotonic()
    before = RequestCount.of(client)
    number = verdicts.start_reconciliation()
    result = Reconciliation()
    try:
        known_children = verdicts.all_children()
        served: dict[tuple[str, str], None] = {}
        repositories: set[str] = set()
        for repository, _, head in served_tags(client):
            repositories.add(repository)
            result.repositories = len(repositories)
            result.tags += 1
            if head is None:  # untagged meanwhile
                continue
            served[(repository, head.digest)] = None
            if head.media_type not in INDEX_MEDIA_TYPES:
                continue
            children = known_children.get((repository, head.digest))
            if children is None:
                where = f"{repository}@{head.digest}"
                body, _, _ = client.get_manifest(repository, head.digest)
                result.indexes_fetched += 1
                try:
                    children = platform_children(parse_manifest(body, where), where)
                except AirgapError as exc:
                    # The index itself is queued: its job records the error verdict.
                    result.errors.append(str(exc))
                    continue
                verdicts.remember_children(repository, head.digest, children)
                known_children[(repository, head.digest)] = children
            for child in children:
                served[(repository, child)] = None
        result.digests = len(served)
        stored = verdicts.verdict_keys()
        missing, outdated = [], []
        for key in served:
            verdict = stored.get(key)
            if verdict is None:
                missing.append(key)
            elif is_current(verdict[0], verdict[1], current_db):
                result.current += 1
            else:
                outdated.append(key)
        result.queued = verdicts.enqueue(missing, "reconcile")
        result.requeued = verdicts.enqueue(outdated, "rescan")
    except BaseException as exc:
        _finish(result, verdicts, number, client, before, started, str(exc) or repr(exc))
        raise
    _finish(result, verdicts, number, client, before, started, "; ".join(result.errors) or None)
    return result


def _finish(
    result: Reconciliation,
    verdicts: VerdictStore,
    number: int,
    client: RegistryClient,
    before: RequestCount,
    started: float,
    error: str | None,
) -> None:
    result.seconds = round(time.monotonic() - started, 3)
    result.requests = before.since(client)
    verdicts.finish_reconciliation(
        number,
        digests=result.digests,
        queued=result.queued + result.requeued,
        requests=int(result.requests["total"]),
        duration=result.seconds,
        error=error,
    )
