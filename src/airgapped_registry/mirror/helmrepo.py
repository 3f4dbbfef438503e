"""Charts from classic Helm repositories: locked from ``index.yaml``, copied as OCI artifacts.

A classic repository serves an ``index.yaml`` and ``.tgz`` archives over plain HTTP(S). The
lock records each selected version as the OCI artifact the mirror will store
(:func:`~airgapped_registry.oci.helm.chart_manifest` of the archive) with the archive's URL
and digest; the sync fetches the archive again, checks it against the lock and pushes that
artifact by digest.
"""

from __future__ import annotations

import threading
from typing import Any
from urllib.parse import urljoin

import yaml

from airgapped_registry.errors import InvariantError
from airgapped_registry.mirror.lock import Archive, Blob, LockEntry, LockError, Manifest
from airgapped_registry.mirror.outcome import EntryFailure
from airgapped_registry.mirror.spec import Entry, tag_order_key
from airgapped_registry.oci.helm import chart_manifest
from airgapped_registry.oci.mediatypes import HELM_CHART_CONTENT, HELM_CONFIG, OCI_MANIFEST
from airgapped_registry.oci.reference import digest_of
from airgapped_registry.transport.registry import RegistryClient
from airgapped_registry.transport.urls import UrlFetcher


class ChartRepositories:
    """The classic Helm repositories of one resolution: each file is fetched once."""

    def __init__(self, fetch: UrlFetcher) -> None:
        self._fetch = fetch
        self._files: dict[str, bytes] = {}
        self._lock = threading.Lock()
        self.requests = 0

    def read(self, url: str) -> bytes:
        with self._lock:
            if url not in self._files:
                self.requests += 1
                self._files[url] = self._fetch(url)
            return self._files[url]

    def resolve(self, entry: Entry) -> list[LockEntry]:
        if entry.url is None or entry.chart is None:
            raise InvariantError(entry.location.problem("a classic chart entry without url"))
        index_url = urljoin(entry.url.rstrip("/") + "/", "index.yaml")
        try:
            index = yaml.safe_load(self.read(index_url))
        except yaml.YAMLError as exc:
            raise LockError(f"{index_url}: not a Helm repository index: {exc}") from exc
        releases = (
            (index or {}).get("entries", {}).get(entry.chart) if isinstance(index, dict) else None
        )
        if not releases:
            raise LockError(f"{index_url}: no chart named {entry.chart}")
        by_version = {str(release.get("version")): release for release in releases}
        if entry.selection.exact:
            versions = [pin.tag for pin in entry.selection.tags]
            for version in versions:
                if version not in by_version:
                    raise LockError(f"{index_url}: {entry.chart} has no version {version}")
        else:
            versions = entry.selection.choose(by_version)
            if not versions:
                raise LockError(
                    f"{index_url}: no version of {entry.chart} matches {entry.selection.describe()}"
                )
        pins = {pin.tag: pin.digest for pin in entry.selection.tags}
        return [
            self._lock_archive(entry, index_url, by_version[version], pins.get(version))
            for version in sorted(versions, key=tag_order_key)
        ]

    def _lock_archive(
        self, entry: Entry, index_url: str, release: dict[str, Any], pinned: str | None
    ) -> LockEntry:
        version = str(release["version"])
        urls = release.get("urls") or []
        if not urls:
            raise LockError(f"{index_url}: {entry.chart} {version} lists no archive URL")
        url = urljoin(index_url, str(urls[0]))
        archive = self.read(url)
        actual = digest_of(archive)
        announced = release.get("digest")
        if announced and f"sha256:{announced}" != actual:
            raise LockError(
                f"{url}: digest mismatch: index.yaml says sha256:{announced}, got {actual}"
            )
        config, body = chart_manifest(archive)
        manifest = Manifest(
            digest_of(body),
            OCI_MANIFEST,
            len(body),
            Blob(digest_of(config), HELM_CONFIG, len(config)),
            (Blob(actual, HELM_CHART_CONTENT, len(archive)),),
        )
        if pinned and pinned != manifest.digest:
            raise LockError(
                f"{url}: pinned {pinned}, the chart's OCI artifact is {manifest.digest}"
            )
        return LockEntry(
            kind=entry.kind,
            destination=entry.destination,
            tag=version,
            manifest=manifest,
            upstream_digest=manifest.digest,
            pinned=pinned,
            archive=Archive(url, actual, len(archive)),
        )


def copy_classic_chart(entry: LockEntry, client: RegistryClient, fetch: UrlFetcher) -> int:
    """Fetch the entry's archive, check it against the lock, push its artifact by digest.

    Returns the bytes sent; the caller writes the tag.
    """
    if entry.archive is None or entry.manifest.config is None:
        raise InvariantError(f"lock entry {entry.reference}: no chart archive or config")
    archive = fetch(entry.archive.url)
    if digest_of(archive) != entry.archive.digest:
        raise EntryFailure(
            f"chart archive {entry.archive.url}: digest {digest_of(archive)}, the lock "
            f"says {entry.archive.digest}",
            permanent=True,
        )
    config, body = chart_manifest(archive)
    if digest_of(body) != entry.digest:
        raise EntryFailure(
            f"chart archive {entry.archive.url}: its OCI manifest is {digest_of(body)}, the "
            f"lock says {entry.digest}",
            permanent=True,
        )
    sent = 0
    for data, blob in ((config, entry.manifest.config), (archive, entry.manifest.layers[0])):
        if client.push_blob(entry.destination, blob.digest, data):
            sent += len(data)
    client.put_manifest(entry.destination, entry.digest, body, entry.manifest.media_type)
    return sent
