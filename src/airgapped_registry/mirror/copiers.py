"""Copiers: the strategies that move an entry's content (configs, layers, children) by digest.

The sync asks each copier in turn (:class:`EngineCopier` first, then :class:`SkopeoCopier`);
the first that takes the entry copies it. A copier writes the children by digest and leaves
the tag to the caller, which writes it last. Both check every blob against its digest (a
corrupt upstream blob fails the copy) and skip blobs the destination already holds.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from typing import Protocol

from airgapped_registry import defaults
from airgapped_registry.errors import DigestMismatchError, InvariantError, RegistryError
from airgapped_registry.mirror.ledger import BlobLedger
from airgapped_registry.mirror.lock import Blob, LockEntry, Manifest
from airgapped_registry.mirror.outcome import EntryFailure, storage_full_failure
from airgapped_registry.mirror.sources import CopySource
from airgapped_registry.oci.manifest import filtered_index
from airgapped_registry.oci.reference import digest_of
from airgapped_registry.tools import skopeo
from airgapped_registry.tools.process import Tools
from airgapped_registry.transport.registry import RegistryClient
from airgapped_registry.transport.retry import is_storage_full

ENGINE = "engine"
SKOPEO = "skopeo"

# (blob bytes sent, the top manifest's bytes when the copier holds them, else None)
Copied = tuple[int, bytes | None]


class Copier(Protocol):
    name: str

    def copy(self, entry: LockEntry, source: CopySource) -> Copied | None:
        """Copy the entry's content into the destination, or None: not this copier's job."""


class EngineCopier:
    """Copies light entries with the engine's own requests over its open connections.

    Each blob the ledger does not place in the destination repository is mounted from a
    repository the ledger names, or else mounted from the destination repository itself
    (found there: 201) and, where that opens an upload instead, fetched from the source
    (digest-checked in memory) and uploaded (one ``PUT``). When those unknown blobs together
    exceed ``max_bytes``, each is first looked up (``HEAD``) to see what is really missing.
    Then the children are written by digest; the top manifest is returned, digest-checked
    against the lock. It declines, having sent nothing, when the bytes to upload exceed
    ``max_bytes`` (0: always). ``manifests`` (digest → bytes) are used before the source.
    """

    name = ENGINE

    def __init__(
        self,
        client: RegistryClient,
        ledger: BlobLedger,
        max_bytes: int,
        manifests: Mapping[str, bytes] | None = None,
    ) -> None:
        self.client = client
        self.ledger = ledger
        self.max_bytes = max_bytes
        self.manifests = manifests or {}

    def copy(self, entry: LockEntry, source: CopySource) -> Copied | None:
        if self.max_bytes <= 0:
            return None
        todo = self._placements(entry)
        if todo is None:
            return None
        repository, upstream = entry.destination, entry.repository
        if upstream is None:
            raise InvariantError(f"lock entry {entry.reference}: no source repository")
        sent = 0
        for blob, mount_from in todo:
            fetch = functools.partial(source_blob, source, upstream, blob)
            try:
                how = self.client.place_blob(repository, blob.digest, fetch, mount_from)
            except RegistryError as exc:
                if mount_from != repository or exc.status not in (400, 404, 405):
                    raise
                # A registry that refuses a mount from the repository itself: ask, then upload.
                how = "uploaded" if self.client.push_blob(repository, blob.digest, fetch) else ""
            if how == "uploaded":
                sent += blob.size
            self.ledger.holds(repository, [blob])
        manifests = entry.content_manifests()
        if entry.children:
            for child in manifests:
                body = self._manifest(source, upstream, child)
                self.client.put_manifest(repository, child.digest, body, child.media_type)
        top = self._manifest(source, upstream, entry.manifest, entry.upstream_digest)
        if entry.children and entry.digest != entry.upstream_digest:
            top = filtered_index(top, {child.digest for child in manifests})
        if digest_of(top) != entry.digest:
            raise EntryFailure(
                f"the index to write is {digest_of(top)}, the lock says {entry.digest}",
                permanent=True,
            )
        return sent, top

    def _placements(self, entry: LockEntry) -> list[tuple[Blob, str]] | None:
        """``(blob, repository to mount it from)`` for each blob to place; None: too heavy."""
        repository = entry.destination
        todo: list[tuple[Blob, str]] = []
        unknown: list[Blob] = []
        for blob in entry.content_blobs():
            mount_from = self.ledger.place(repository, blob.digest)
            if mount_from is None:
                continue
            if mount_from:
                todo.append((blob, mount_from))
            else:
                unknown.append(blob)
        if sum(blob.size for blob in unknown) <= self.max_bytes:
            # Even if none is there, the engine may send them all: one mount-or-upload
            # request each, from the repository itself.
            return todo + [(blob, repository) for blob in unknown]
        upload = 0
        for blob in unknown:
            if self.client.blob_exists(repository, blob.digest):
                self.ledger.holds(repository, [blob])
                continue
            upload += blob.size
            if upload > self.max_bytes:
                return None
            todo.append((blob, repository))
        return todo

    def _manifest(
        self, source: CopySource, repository: str, manifest: Manifest, digest: str | None = None
    ) -> bytes:
        """A manifest's bytes by digest: from the relock's cache, else from the source."""
        digest = digest or manifest.digest
        body = self.manifests.get(digest)
        if body is None or digest_of(body) != digest:
            body = source.get_manifest(repository, digest)
        if digest == manifest.digest and len(body) != manifest.size:
            raise EntryFailure(
                f"manifest {digest}: {len(body)} bytes, the lock says {manifest.size}", True
            )
        return body


def source_blob(source: CopySource, repository: str, blob: Blob) -> bytes:
    """A blob read from the source, checked against the lock's digest and size."""
    try:
        data = source.get_blob(repository, blob.digest)
    except DigestMismatchError as exc:
        raise EntryFailure(
            f"blob {blob.digest}: the source served content with digest {exc.actual} "
            "(corrupt upstream blob); refused, nothing tagged",
            permanent=True,
        ) from exc
    if len(data) != blob.size:
        raise EntryFailure(
            f"blob {blob.digest}: {len(data)} bytes, the lock says {blob.size}", True
        )
    return data


class SkopeoCopier:
    """Copies any entry with ``skopeo copy --preserve-digests``, by digest.

    An index with ``--all`` (skopeo writes the index after its children), a single manifest
    as it is; a ``filter`` entry copies each kept child by digest, then writes the index the
    lock recorded (the filtered upstream index, checked against the lock's digest).

    Before skopeo runs, each content blob the ledger does not place in the destination
    repository is mounted from a repository the ledger names (skopeo does not know what the
    engine placed, and would upload it again), or else looked up (``HEAD``).

    Bytes sent: the sizes of the content blobs the destination repository lacked once those
    mounts were done, each digest once, counted when skopeo succeeds; its success proves the
    repository holds them (a registry stores a manifest only once its blobs are there), and
    the ledger records them. skopeo's log is not read: its lines change between versions.
    A blob skopeo mounts by itself (its blob-info cache may remember a copy in another
    repository from an earlier run) counts as sent too, so the figure is what the repository
    gained beyond the engine's mounts. A failed attempt counts nothing.
    """

    name = SKOPEO

    def __init__(
        self,
        client: RegistryClient,
        ledger: BlobLedger,
        tools: Tools,
        address: str,
        destination_options: list[str],
        *,
        skopeo_path: str = "skopeo",
        retry_times: int = defaults.SKOPEO_RETRY_TIMES,
    ) -> None:
        self.client = client
        self.ledger = ledger
        self.tools = tools
        self.address = address
        self.destination_options = destination_options
        self.skopeo = skopeo_path
        self.retry_times = retry_times

    def copy(self, entry: LockEntry, source: CopySource) -> Copied | None:
        missing = self._missing(entry)
        if entry.children and entry.digest != entry.upstream_digest:
            if entry.repository is None:
                raise InvariantError(f"lock entry {entry.reference}: no source repository")
            kept = [child for child in entry.children if child.copy]
            for child in kept:
                self._run(entry, source, child.digest, index=False)
            upstream = source.get_manifest(entry.repository, entry.upstream_digest)
            body = filtered_index(upstream, {child.digest for child in kept})
            if digest_of(body) != entry.digest:
                raise EntryFailure(
                    f"the filtered index is {digest_of(body)}, the lock says {entry.digest}",
                    permanent=True,
                )
            self.client.put_manifest(
                entry.destination, entry.digest, body, entry.manifest.media_type
            )
        else:
            self._run(entry, source, entry.upstream_digest, index=bool(entry.children))
        self.ledger.holds(entry.destination, missing)
        return sum(blob.size for blob in missing), None

    def _missing(self, entry: LockEntry) -> list[Blob]:
        """The content blobs the destination repository lacks, after mounting those the
        ledger knows in another repository; one ``HEAD`` per blob the ledger does not know."""
        repository = entry.destination
        missing: list[Blob] = []
        for blob in entry.content_blobs():
            mount_from = self.ledger.place(repository, blob.digest)
            if mount_from is None:
                continue
            if (mount_from and self.client.mount_blob(repository, blob.digest, mount_from)) or (
                self.client.blob_exists(repository, blob.digest)
            ):
                self.ledger.holds(repository, [blob])
            else:
                missing.append(blob)
        return missing

    def _run(self, entry: LockEntry, source: CopySource, digest: str, *, index: bool) -> None:
        argv = skopeo.skopeo_copy_argv(
            self.skopeo,
            f"docker://{entry.registry}/{entry.repository}@{digest}",
            f"docker://{self.address}/{entry.destination}@{digest}",
            index=index,
            retry_times=self.retry_times,
            source_options=source.skopeo_options,
            destination_options=self.destination_options,
        )
        completed = self.tools.run("skopeo", argv)
        if completed.returncode != 0:
            # skopeo leaves the uploads it gave up open: close those its messages name (a
            # finished one answers 404).
            for session in skopeo.upload_sessions(completed.stderr + completed.stdout):
                self.client.cancel_upload(session)
            failure = skopeo.copy_failure(completed)
            if not failure.permanent:
                # skopeo does not show the registry's error body: ask the destination whether
                # it can still take an upload (a full disk refuses it).
                try:
                    self.client.check_upload(entry.destination)
                except RegistryError as exc:
                    if is_storage_full(exc):
                        raise storage_full_failure(exc) from exc
            raise failure


def destination_manifest(client: RegistryClient, entry: LockEntry) -> bytes:
    """The entry's manifest as the destination holds it by digest, checked against the lock:
    its bytes, and the children or blobs it lists."""
    try:
        body, _, _ = client.get_manifest(entry.destination, entry.digest)
    except DigestMismatchError as exc:
        raise EntryFailure(
            f"destination serves other bytes for {entry.digest}: {exc}", True
        ) from exc
    if len(body) != entry.manifest.size:
        raise EntryFailure(
            f"destination manifest {entry.digest}: {len(body)} bytes, the lock says "
            f"{entry.manifest.size}",
            permanent=True,
        )
    document = json.loads(body)
    if entry.children:
        listed = [item.get("digest") for item in document.get("manifests", [])]
        expected = [
            child.digest
            for child in entry.children
            if child.copy or entry.digest == entry.upstream_digest
        ]
    else:
        layers = document.get("layers") or []
        listed = [
            document.get("config", {}).get("digest"),
            *(item.get("digest") for item in layers),
        ]
        expected = [blob.digest for blob in entry.manifest.blobs()]
    if listed != expected:
        raise EntryFailure(
            f"destination manifest {entry.digest} lists {len(listed)} descriptors that differ "
            "from the lock's",
            permanent=True,
        )
    return body
