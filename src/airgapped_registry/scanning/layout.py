"""The OCI image layout trivy reads: one platform manifest, its config and layers, on disk.

Trivy cannot present a client certificate, and the backend leaves TCP in issue 10, so the
engine reads the image itself (its own :class:`~airgapped_registry.transport.registry.
RegistryClient`, every manifest and blob checked against its digest) and writes a layout
directory (``oci-layout``, ``index.json``, ``blobs/sha256/...``) for ``trivy image --input``.

Blobs come from a :class:`BlobCache`: content-addressed files under the scanner's cache
directory, fetched once and hard-linked into each layout (same file system, no copy). Trivy
needs a layer's bytes only when its own analysis cache lacks that layer: a layout may leave
such layers out (``skip``), so a rescan after a DB change fetches no layer at all. The cache
is bounded by size: the least recently used blobs go first (:meth:`BlobCache.prune`); a blob
removed while a layout links it stays readable through that link.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from airgapped_registry.errors import ContentError
from airgapped_registry.oci.manifest import Descriptor, image_parts, parse_manifest
from airgapped_registry.oci.mediatypes import OCI_INDEX
from airgapped_registry.oci.reference import check_digest, digest_of
from airgapped_registry.transport.registry import RegistryClient

LAYOUT_VERSION = '{"imageLayoutVersion":"1.0.0"}'


class BlobCache:
    """Blobs by digest under ``root`` (``sha256/<hex>``), at most ``max_bytes`` after a prune.

    Safe for threads of one process (one fetch per digest at a time) and for processes
    sharing ``root`` (files appear by rename, complete or not at all).
    """

    def __init__(self, root: Path, max_bytes: int) -> None:
        self.root = root
        self.max_bytes = max_bytes
        self.fetched = 0  # blobs read from a registry over this object's life
        self.fetched_bytes = 0
        self._lock = threading.Lock()
        self._fetching: dict[str, threading.Lock] = {}
        self._in_use: Counter[str] = Counter()  # being fetched or linked: never pruned

    def path(self, digest: str) -> Path:
        check_digest(digest)
        algorithm, hex_digest = digest.split(":", 1)
        return self.root / algorithm / hex_digest

    def link(self, client: RegistryClient, repository: str, blob: Descriptor, target: Path) -> bool:
        """Place ``blob`` at ``target`` as a hard link to the cached file, fetching it from
        ``repository`` first if the cache lacks it; True when it was fetched."""
        path = self.path(blob.digest)
        with self._lock:
            self._in_use[blob.digest] += 1
        try:
            with self._digest_lock(blob.digest):
                fetched = False
                for _ in range(2):
                    if not path.exists():
                        self._fetch(client, repository, blob, path)
                        fetched = True
                    try:
                        os.link(path, target)
                    except FileNotFoundError:
                        continue  # pruned by another process meanwhile: fetch it again
                    os.utime(path)  # recently used: pruned last
                    return fetched
        finally:
            with self._lock:
                self._in_use[blob.digest] -= 1
                if not self._in_use[blob.digest]:
                    # nobody waits on its lock either: a long-running service keeps no
                    # entry per digest it ever fetched
                    del self._in_use[blob.digest]
                    del self._fetching[blob.digest]
        raise ContentError(f"{repository}@{blob.digest}: blob vanished from {path} twice")

    def prune(self, keep: Iterable[str] = ()) -> int:
        """Remove the least recently used blobs until at most ``max_bytes`` remain (never one
        of ``keep``); returns the bytes removed."""
        kept = set(keep)
        files: list[tuple[float, int, Path]] = []
        total = 0
        for path in self.root.glob("*/*"):
            try:
                status = path.stat()
            except FileNotFoundError:
                continue
            total += status.st_size
            if f"{path.parent.name}:{path.name}" not in kept:
                files.append((status.st_mtime, status.st_size, path))
        removed = 0
        for _, size, path in sorted(files):
            if total - removed <= self.max_bytes:
                break
            with self._lock:
                if f"{path.parent.name}:{path.name}" in self._in_use:
                    continue
                path.unlink(missing_ok=True)
            removed += size
        return removed

    def _digest_lock(self, digest: str) -> threading.Lock:
        with self._lock:
            return self._fetching.setdefault(digest, threading.Lock())

    def _fetch(self, client: RegistryClient, repository: str, blob: Descriptor, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=".fetch-")
        try:
            with os.fdopen(descriptor, "w+b") as handle:
                # streamed to disk and checked against its digest by the client
                size = client.download_blob(repository, blob.digest, handle)
            if size != blob.size:
                raise ContentError(
                    f"{repository}@{blob.digest}: {size} bytes, the manifest says {blob.size}"
                )
            os.chmod(temporary, 0o444)
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        with self._lock:
            self.fetched += 1
            self.fetched_bytes += size


@dataclass(frozen=True)
class ImageLayout:
    """A layout written for one platform manifest, and what writing it cost."""

    path: Path
    digest: str  # the manifest's
    config: Descriptor
    layers: tuple[Descriptor, ...]
    skipped: tuple[str, ...]  # layer digests left out (trivy's cache holds their analysis)
    fetched: int  # blobs read from the registry for it


def write_layout(
    client: RegistryClient,
    cache: BlobCache,
    repository: str,
    manifest: tuple[bytes, str, str],
    directory: Path,
    skip: Iterable[str] = (),
) -> ImageLayout:
    """Write the layout of ``manifest`` (``(body, media_type, digest)`` as
    :meth:`RegistryClient.get_manifest` returns it) into the empty ``directory``.

    Layers whose digest is in ``skip`` are left out; the manifest, its config and the
    other layers come from ``cache`` (fetched from ``repository`` when missing).
    """
    body, media_type, digest = manifest
    where = f"{repository}@{digest}"
    if digest_of(body, digest.split(":", 1)[0]) != digest:
        raise ContentError(f"{where}: the manifest's bytes do not match its digest")
    config, layers = image_parts(parse_manifest(body, where), where)
    blobs = directory / "blobs"
    (blobs / "sha256").mkdir(parents=True)
    (directory / "oci-layout").write_text(LAYOUT_VERSION)
    _write_blob(blobs, digest, body)
    left_out = set(skip)
    fetched = 0
    seen: set[str] = {digest}
    for blob in (config, *layers):
        if blob.digest in seen or blob.digest in left_out:
            continue
        seen.add(blob.digest)
        target = blobs.joinpath(*blob.digest.split(":", 1))
        target.parent.mkdir(exist_ok=True)
        fetched += cache.link(client, repository, blob, target)
    index = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [{"mediaType": media_type, "digest": digest, "size": len(body)}],
    }
    (directory / "index.json").write_text(json.dumps(index))
    skipped = tuple(layer.digest for layer in layers if layer.digest in left_out)
    return ImageLayout(directory, digest, config, layers, skipped, fetched)


def remove_layout(layout: ImageLayout | Path) -> None:
    shutil.rmtree(layout.path if isinstance(layout, ImageLayout) else layout, ignore_errors=True)


def _write_blob(blobs: Path, digest: str, data: bytes) -> None:
    target = blobs.joinpath(*digest.split(":", 1))
    target.parent.mkdir(exist_ok=True)
    target.write_bytes(data)
