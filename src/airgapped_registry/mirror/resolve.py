"""Resolution: a mirror list's entries turned into lock entries against their sources.

For each entry of a :class:`~airgapped_registry.mirror.spec.MirrorSpec` the
:class:`Resolver` lists the repository's tags once, selects the tags the entry asks for,
fetches each selected manifest once (index, the children that will be copied) and records
what a later ``plan``/``sync``/``verify`` needs: the digest the destination tag must resolve
to, the upstream index with all its children (which platforms were asked for, which will be
copied), config and layer descriptors, and the cosign signatures, attestations and SBOMs
found by cosign's tag scheme. Classic Helm repository charts are resolved by
:mod:`~airgapped_registry.mirror.helmrepo`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, MutableMapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from typing import Any

from airgapped_registry import defaults
from airgapped_registry.errors import ContentError, InvariantError, RegistryError, UrlError
from airgapped_registry.mirror.helmrepo import ChartRepositories
from airgapped_registry.mirror.indexes import check_platforms, index_children
from airgapped_registry.mirror.lock import (
    FILTER,
    PRESERVE_INDEX,
    Child,
    Lock,
    LockEntry,
    LockError,
    Manifest,
)
from airgapped_registry.mirror.signatures import with_signatures
from airgapped_registry.mirror.sources import Fetched, SourceReader, source_access
from airgapped_registry.mirror.spec import Entry, MirrorSpec, TagPin
from airgapped_registry.oci.manifest import (
    filtered_index,
    image_parts,
    parse_manifest,
)
from airgapped_registry.oci.mediatypes import INDEX_MEDIA_TYPES
from airgapped_registry.oci.reference import digest_of
from airgapped_registry.transport.registry import RegistryClient
from airgapped_registry.transport.retry import RetryPolicy
from airgapped_registry.transport.urls import UrlFetcher, read_url

# What resolving an entry may raise, reported with the entry's file, line and name.
_ENTRY_FAILURES = (RegistryError, LockError, ContentError, UrlError)


class Resolver:
    """Resolves the entries of one mirror list against their sources.

    ``clients`` maps source names to ready clients (tests, callers sharing connections); the
    others are made from the mirror list and closed by :meth:`close`. ``fetch_url`` reads a
    classic Helm repository's files (default: urllib with the system trust).

    ``previous`` is the lock being replaced: a tag whose manifest digest at the source (one
    ``GET`` of the manifest) is still the one recorded there, for the same source,
    repository, pin and platform selection (:meth:`LockEntry.reusable_for
    <airgapped_registry.mirror.lock.LockEntry.reusable_for>`), keeps the recorded children,
    config and layers instead of fetching them again (``reused`` counts those). Signature
    tags come from the tag list as always; a recorded one costs a ``HEAD``, a new or moved
    one a ``GET``. Tags are resolved on ``workers`` threads; the result does not depend on
    their order. ``manifests``, when given, receives every manifest fetched, by digest (for
    a sync that follows to reuse).
    """

    def __init__(
        self,
        spec: MirrorSpec,
        clients: Mapping[str, RegistryClient] | None = None,
        fetch_url: UrlFetcher | None = None,
        *,
        previous: Lock | None = None,
        workers: int = defaults.RESOLVE_WORKERS,
        manifests: MutableMapping[str, bytes] | None = None,
        retry: RetryPolicy | None = None,
    ) -> None:
        self.spec = spec
        self.manifests = manifests
        # The clients made here retry a failed GET or HEAD (a 503, a dropped connection).
        self.retry = retry or RetryPolicy.standard()
        self._given = dict(clients or {})
        self._made: list[RegistryClient] = []
        self._readers: dict[str, SourceReader] = {}
        self.charts = ChartRepositories(fetch_url or read_url)
        self._previous = {entry.key: entry for entry in (previous.entries if previous else ())}
        self.workers = max(1, workers)
        self.reused = 0
        self._guard = threading.Lock()

    def __enter__(self) -> Resolver:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        for client in self._made:
            client.close()
        self._made = []

    def resolve(self) -> Lock:
        """Resolve every entry; the first failure stops with its file, line and entry.

        First every entry's tag list is read and its tags chosen, then every tag is resolved,
        each step on the thread pool. Results and failures are taken in the list's order, so
        the failure reported is the one a one-by-one run would stop at.
        """
        entries: list[LockEntry] = []
        owners: dict[tuple[str, str], Entry] = {}
        with ThreadPoolExecutor(self.workers, thread_name_prefix="airgap-lock") as pool:
            try:
                results = self._resolve_all(pool)
            except BaseException:
                pool.shutdown(wait=True, cancel_futures=True)
                raise
        for entry, resolved in zip(self.spec.entries, results, strict=True):
            for locked in resolved:
                first = owners.setdefault(locked.key, entry)
                if first is not entry:
                    raise LockError(
                        entry.location.problem(
                            f"duplicate destination '{locked.reference}', also written by "
                            f"{first.location.entry} (line {first.location.line})"
                        )
                    )
                entries.append(locked)
        return Lock(tuple(entries))

    def requests(self) -> dict[str, dict[str, Any]]:
        """Requests made so far, per source (and ``helm-repositories`` for index.yaml files)."""
        report = {name: reader.requests() for name, reader in sorted(self._readers.items())}
        if self.charts.requests:
            report["helm-repositories"] = {
                "total": self.charts.requests,
                "by_method": {"GET": self.charts.requests},
            }
        return report

    def resolve_entry(self, entry: Entry) -> list[LockEntry]:
        resolved: list[LockEntry] = self._located(entry, self._resolve_entry, entry)
        return resolved

    @staticmethod
    def _located(entry: Entry, work: Callable[..., Any], *args: Any) -> Any:
        try:
            return work(*args)
        except _ENTRY_FAILURES as exc:
            raise LockError(entry.location.problem(str(exc))) from exc

    def _resolve_entry(self, entry: Entry) -> list[LockEntry]:
        if entry.url:
            return self.charts.resolve(entry)
        reader, pins, available = self._pins(entry)
        return [self._resolve_tag(entry, reader, pin, available) for pin in pins]

    def _resolve_all(self, pool: ThreadPoolExecutor) -> list[list[LockEntry]]:
        """Every entry's locked tags, in the list's order; raises the first entry's failure."""
        located = self._located
        chosen: list[Future[Any]] = [
            pool.submit(located, entry, self.charts.resolve if entry.url else self._pins, entry)
            for entry in self.spec.entries
        ]
        tagged: list[list[Future[LockEntry]] | Future[list[LockEntry]]] = []
        for entry, future in zip(self.spec.entries, chosen, strict=True):
            if future.exception() is not None:
                break  # later entries are not reported: the list stops here
            if entry.url:
                tagged.append(future)
                continue
            reader, pins, available = future.result()
            tagged.append(
                [
                    pool.submit(located, entry, self._resolve_tag, entry, reader, pin, available)
                    for pin in pins
                ]
            )
        results: list[list[LockEntry]] = []
        for done in tagged:
            if isinstance(done, list):
                results.append([future.result() for future in done])
            else:
                results.append(done.result())
        if len(results) < len(chosen):
            chosen[len(results)].result()  # the failure the loop above stopped at
        return results

    # registry entries ---------------------------------------------------------------------

    def _reader(self, name: str) -> SourceReader:
        with self._guard:
            if name not in self._readers:
                access = source_access(self.spec, self.spec.sources[name])
                client = self._given.get(name)
                if client is None:
                    client = access.client()
                    client.retry = self.retry
                    self._made.append(client)
                self._readers[name] = SourceReader(client, access.throttle(), self.manifests)
            return self._readers[name]

    def _pins(self, entry: Entry) -> tuple[SourceReader, list[TagPin], set[str]]:
        """The entry's source, the tags it selects and every tag the repository lists."""
        if entry.source is None or entry.repository is None:
            raise InvariantError(entry.location.problem("a registry entry without source"))
        reader = self._reader(entry.source)
        listed = reader.tags(entry.repository)
        registry = self.spec.sources[entry.source].registry
        return reader, select_tags(entry, listed, registry), set(listed)

    def _unchanged(
        self, entry: Entry, reader: SourceReader, pin: TagPin
    ) -> tuple[LockEntry | None, Fetched | None]:
        """The previous lock's entry for this tag when the source still serves its digest.

        Asked with one conditional ``GET`` (``If-None-Match`` the recorded digest): 304 when
        unchanged, which costs the registry less than a ``HEAD``; when the tag moved, its
        manifest comes with the answer and is returned second, for the new entry.
        """
        if entry.source is None or entry.repository is None:
            raise InvariantError(entry.location.problem("a registry entry without source"))
        previous = self._previous.get((entry.destination, pin.tag))
        if previous is None or not previous.reusable_for(
            kind=entry.kind,
            source=entry.source,
            registry=self.spec.sources[entry.source].registry,
            repository=entry.repository,
            pinned=pin.digest,
            platforms=entry.platforms,
            platform_mode=entry.platform_mode,
        ):
            return None, None
        fetched = reader.get_unless(
            entry.repository, pin.digest or pin.tag, previous.upstream_digest
        )
        if fetched is None:  # 304: the tag still names the recorded digest
            return previous, None
        body, media_type, digest = fetched
        if not previous.still_serves(digest, media_type, len(body)):
            return None, fetched
        return previous, None

    def _resolve_tag(
        self, entry: Entry, reader: SourceReader, pin: TagPin, available: set[str]
    ) -> LockEntry:
        if entry.source is None or entry.repository is None:
            raise InvariantError(entry.location.problem("a registry entry without source"))
        repository = entry.repository
        previous, fetched = self._unchanged(entry, reader, pin)
        if previous is not None:
            where = f"{repository}:{pin.tag} ({previous.upstream_digest})"
            if previous.children and entry.kind == "image":
                check_platforms(entry, [child.platform for child in previous.children], where)
            with self._guard:
                self.reused += 1
            resolved = replace(previous, tag=pin.tag, pinned=pin.digest, platforms=entry.platforms)
            return with_signatures(
                resolved, reader, available, where, entry.signatures.required, previous
            )
        resolved, where = resolve_manifest(
            entry, reader, pin, self.spec.sources[entry.source].registry, fetched
        )
        return with_signatures(resolved, reader, available, where, entry.signatures.required)


def resolve_manifest(
    entry: Entry, reader: SourceReader, pin: TagPin, registry: str, fetched: Fetched | None
) -> tuple[LockEntry, str]:
    """The lock entry of one tag from its manifest as the source serves it now (``fetched``
    when the reuse check already has it), without signatures; and where it was read, for
    messages. An index's children are fetched as far as they will be copied."""
    if entry.source is None or entry.repository is None:
        raise InvariantError(entry.location.problem("a registry entry without source"))
    repository = entry.repository
    body, media_type, digest = fetched or reader.get(repository, pin.digest or pin.tag)
    where = f"{repository}:{pin.tag} ({digest})"
    document = parse_manifest(body, where)
    upstream = Manifest(digest, media_type, len(body))
    children: tuple[Child, ...] = ()
    platform_mode = None
    top = upstream
    if media_type in INDEX_MEDIA_TYPES or "manifests" in document:
        platform_mode = entry.platform_mode or PRESERVE_INDEX
        children = index_children(entry, reader, document, where, platform_mode)
        kept = {child.digest for child in children if child.copy}
        if platform_mode == FILTER and len(kept) < len(children):
            filtered = filtered_index(body, kept)
            top = Manifest(digest_of(filtered), media_type, len(filtered))
    else:
        config, layers = image_parts(document, where)
        upstream = top = replace(upstream, config=config, layers=layers)
    resolved = LockEntry(
        kind=entry.kind,
        destination=entry.destination,
        tag=pin.tag,
        manifest=top,
        upstream_digest=upstream.digest,
        source=entry.source,
        registry=registry,
        repository=repository,
        pinned=pin.digest,
        platform_mode=platform_mode,
        platforms=entry.platforms,
        children=children,
        signature_keys=entry.signatures.keys,
    )
    return resolved, where


def select_tags(entry: Entry, listed: list[str], registry: str) -> list[TagPin]:
    """The tags ``entry`` selects among those its repository lists (``listed``), pinned or
    not; an exact tag must be listed unless it is pinned to a digest."""
    available = set(listed)
    if entry.selection.exact:
        pins = list(entry.selection.tags)
        for pin in pins:
            if pin.digest is None and pin.tag not in available:
                raise LockError(
                    f"tag {pin.tag} not found at {registry} ({len(listed)} tags listed)"
                )
        return pins
    chosen = entry.selection.choose(listed)
    if not chosen:
        raise LockError(f"no tag matches {entry.selection.describe()} ({len(listed)} tags listed)")
    return [TagPin(tag) for tag in chosen]
