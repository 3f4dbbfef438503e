"""Full and delta export: a lock's content, read from a registry, written as a signed bundle.

Run on the relay against its own registry, where every entry of its lock is stored under the
entry's ``destination``. For every entry: the manifest the tag resolves to, the index
children the sync copies, the signatures, attestations and SBOMs the lock records (by
digest), and every config and layer they reference, each digest once. A delta leaves out
every digest a verified inventory of the receiving registry lists.

Everything is planned first (volumes and parts, :func:`~.format.plan_layout`), then
downloaded by parallel workers straight into its place, each blob's digest and size checked
(:meth:`~airgapped_registry.transport.registry.RegistryClient.download_blob`), into
``DIR.partial``; the signed MANIFEST.json is written last and ``DIR.partial`` renamed to
``DIR``. A ``DIR`` that exists is never a finished bundle unless the export finished.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airgapped_registry import defaults
from airgapped_registry.bundle.format import (
    CONTENTS,
    CONTENTS_FORMAT,
    INDEX,
    KEYS,
    LAYOUT,
    LAYOUT_BYTES,
    LOCK,
    REF_NAME,
    BundleError,
    BundleWriter,
    blob_file,
    compress,
    plan_layout,
    sync_directory,
)
from airgapped_registry.bundle.inventory import Inventory, now
from airgapped_registry.errors import AirgapError
from airgapped_registry.mirror.lock import Lock, LockEntry, LockError
from airgapped_registry.mirror.outcome import EntryFailure
from airgapped_registry.mirror.signatures import SignatureCheck
from airgapped_registry.mirror.spec import MirrorSpec
from airgapped_registry.oci.mediatypes import INDEX_MEDIA_TYPES, OCI_INDEX
from airgapped_registry.oci.reference import digest_of
from airgapped_registry.tools.process import Tools
from airgapped_registry.transport.registry import RegistryClient

if TYPE_CHECKING:
    from airgapped_registry.transfer import TransferKey


@dataclass
class Item:
    """A manifest or blob to carry: where to read it, and its size as the lock says."""

    digest: str
    size: int
    repository: str
    manifest: bool
    media_type: str = ""


@dataclass
class Selection:
    """What the bundle holds and what each entry needs, before anything is downloaded."""

    items: dict[str, Item] = field(default_factory=dict)  # held, in lock order
    skipped: dict[str, Item] = field(default_factory=dict)  # the inventory lists them
    entries: list[dict[str, Any]] = field(default_factory=list)  # contents.json's
    index: list[dict[str, Any]] = field(default_factory=list)  # index.json's descriptors


def entry_manifests(entry: LockEntry) -> list[dict[str, Any]]:
    """What ``entry`` needs pushed, in push order: copied children, the manifest its tag
    names, then the signatures, attestations and SBOMs the lock records (by their tags)."""
    manifests: list[dict[str, Any]] = []
    for child in entry.children:
        if child.copy:
            manifests.append(_manifest(child.digest, child.media_type, child.size, "child"))
    role = "index" if entry.manifest.media_type in INDEX_MEDIA_TYPES else "image"
    top = entry.manifest
    manifests.append(_manifest(top.digest, top.media_type, top.size, role))
    for signature in entry.signatures:
        if signature.copy:
            manifests.append(
                _manifest(
                    signature.digest,
                    signature.media_type,
                    signature.size,
                    "signature",
                    signature.tag,
                )
            )
    return manifests


def _manifest(
    digest: str, media_type: str, size: int, role: str, tag: str | None = None
) -> dict[str, Any]:
    return {"digest": digest, "media_type": media_type, "size": size, "role": role, "tag": tag}


def select(lock: Lock, inventory: Inventory | None = None) -> Selection:
    """Every entry's manifests and blobs; those the inventory lists are left out."""
    selection = Selection()
    for entry in lock.entries:
        manifests = entry_manifests(entry)
        blobs: list[dict[str, Any]] = [{"digest": b.digest, "size": b.size} for b in entry.blobs()]
        selection.entries.append(
            {
                "destination": entry.destination,
                "tag": entry.tag,
                "digest": entry.digest,
                "manifests": manifests,
                "blobs": blobs,
            }
        )
        found = [
            Item(m["digest"], m["size"], entry.destination, True, m["media_type"])
            for m in manifests
        ]
        found += [Item(b["digest"], b["size"], entry.destination, False) for b in blobs]
        for item in found:
            if item.digest in selection.items or item.digest in selection.skipped:
                continue
            if inventory is not None and inventory.holds(item.digest):
                selection.skipped[item.digest] = item
            else:
                selection.items[item.digest] = item
        if entry.digest in selection.items:
            selection.index.append(
                {
                    "mediaType": entry.manifest.media_type,
                    "digest": entry.digest,
                    "size": entry.manifest.size,
                    "annotations": {REF_NAME: entry.reference},
                }
            )
    return selection


def upstream_keys(lock: Lock, spec: MirrorSpec) -> tuple[dict[str, bytes], dict[str, list[str]]]:
    """The public keys the mirror list names for each entry's upstream signature:
    ``({bundle path: key bytes}, {"destination:tag": [bundle paths]})``; a key shared by
    entries is carried once, named by the SHA-256 of its file."""
    check = SignatureCheck(spec, Tools())
    files: dict[str, bytes] = {}
    by_entry: dict[str, list[str]] = {}
    for entry in lock.entries:
        try:
            paths = check.keys(entry)
        except EntryFailure as exc:
            raise BundleError(f"{entry.reference}: {exc}") from exc
        names = []
        for path in paths:
            try:
                data = path.read_bytes()
            except OSError as exc:
                raise BundleError(
                    f"{entry.reference}: signature key {path}: {exc.strerror or exc}"
                ) from exc
            name = f"{KEYS}/{hashlib.sha256(data).hexdigest()}.pub"
            files[name] = data
            names.append(name)
        if names:
            by_entry[entry.reference] = names
    return files, by_entry


def _json_bytes(document: Any) -> bytes:
    """Compact: these files count against the delta's size, which should be its content's."""
    return (json.dumps(document, separators=(",", ":"), sort_keys=True) + "\n").encode()


def _prepare_output(output: Path) -> Path:
    """``output.partial``, empty; ``output`` must not exist or be an empty directory."""
    if output.is_symlink() or (output.exists() and not output.is_dir()):
        raise BundleError(f"{output}: exists and is not a directory")
    if output.is_dir() and any(output.iterdir()):
        raise BundleError(f"{output}: exists and is not empty (a bundle is never overwritten)")
    partial = output.with_name(output.name + ".partial")
    # What an interrupted export left is not trusted: it starts over.
    if partial.is_symlink() or partial.is_file():
        partial.unlink()
    elif partial.exists():
        shutil.rmtree(partial)
    partial.mkdir(parents=True)
    return partial


def export(
    lock_path: str | os.PathLike[str],
    client: RegistryClient,
    output: str | os.PathLike[str],
    key: TransferKey,
    *,
    spec: MirrorSpec | None = None,
    inventory: Inventory | None = None,
    volume_size: int | None = None,
    workers: int = defaults.SYNC_WORKERS,
) -> dict[str, Any]:
    """Write the bundle of the lock at ``lock_path`` from ``client``'s registry to ``output``;
    a delta with ``inventory``. The report counts files, bytes, volumes and seconds."""
    started = time.monotonic()
    lock_file = Path(lock_path)
    try:
        lock_bytes = lock_file.read_bytes()
    except OSError as exc:
        raise BundleError(f"{lock_file}: {exc.strerror or exc}") from exc
    try:
        lock = Lock.from_json(lock_bytes.decode("utf-8", errors="replace"), os.fspath(lock_file))
    except LockError as exc:
        raise BundleError(str(exc)) from exc
    lock_digest = digest_of(lock_bytes)
    selection = select(lock, inventory)
    key_files, key_map = upstream_keys(lock, spec) if spec is not None else ({}, {})
    contents = {"format": CONTENTS_FORMAT, "entries": selection.entries, "keys": key_map}
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": selection.index}
    front = {
        LAYOUT: LAYOUT_BYTES,
        INDEX: _json_bytes(index),
        LOCK: compress(lock_bytes),
        CONTENTS: compress(_json_bytes(contents)),
        **dict(sorted(key_files.items())),
    }
    kind = "delta" if inventory is not None else "full"
    base = inventory.base() if inventory is not None else None
    items = list(selection.items.values())
    layout = plan_layout(
        [(path, len(data)) for path, data in front.items()],
        [(blob_file(item.digest), item.size) for item in items],
        volume_size,
        kind=kind,
        base=base,
    )
    destination = Path(output)
    partial = _prepare_output(destination)
    before = client.requests
    try:
        writer = BundleWriter(partial, layout)
        for path, data in front.items():
            writer.put_bytes(path, data)
        downloaded = _download(client, writer, items, workers)
        manifest = writer.finish(key, kind=kind, created=now(), lock_digest=lock_digest, base=base)
        # Every file and directory was synced as written: the bundle is on the medium
        # before it has its final name, and the name is, before the export reports success.
        if destination.is_dir():
            destination.rmdir()
        os.replace(partial, destination)
        sync_directory(destination.parent)
    except BaseException:
        # Half a bundle helps nobody, and on a drive it takes the room the next try needs.
        shutil.rmtree(partial, ignore_errors=True)
        raise
    manifests = [item for item in items if item.manifest]
    skipped = list(selection.skipped.values())
    return {
        "output": os.fspath(destination),
        "bundle": digest_of(manifest),
        "kind": kind,
        "key_id": key.key_id,
        "lock_digest": lock_digest,
        "base": base,
        "entries": len(lock.entries),
        "files": len(layout.placements),
        "bytes": sum(p.stat().st_size for p in destination.rglob("*") if p.is_file()),
        "content_bytes": sum(item.size for item in items),
        "manifests": len(manifests),
        "blobs": len(items) - len(manifests),
        "keys": len(key_files),
        "skipped": {
            "manifests": sum(1 for item in skipped if item.manifest),
            "blobs": sum(1 for item in skipped if not item.manifest),
            "bytes": sum(item.size for item in skipped),
        },
        "volumes": layout.volumes,
        "volume_size": volume_size,
        "downloaded_bytes": downloaded,
        "requests": client.requests - before,
        "seconds": round(time.monotonic() - started, 3),
    }


def _download(client: RegistryClient, writer: BundleWriter, items: list[Item], workers: int) -> int:
    """Fetch every item into its place, ``workers`` at a time; the first failure stops the
    rest and is raised."""
    if not items:
        return 0
    # Large blobs first: the slowest downloads start early and the tail is short.
    ordered = sorted(items, key=lambda item: item.size, reverse=True)
    pool = ThreadPoolExecutor(max(1, workers))
    try:
        futures = [pool.submit(_fetch, client, writer, item) for item in ordered]
        done, _ = wait(futures, return_when=FIRST_EXCEPTION)
        for future in futures:
            error = future.exception() if future in done else None
            if error is not None:
                raise error
        return sum(future.result() for future in futures)
    finally:
        # On a failure or an interrupt, downloads not started are dropped, not waited for.
        pool.shutdown(wait=True, cancel_futures=True)


def _fetch(client: RegistryClient, writer: BundleWriter, item: Item) -> int:
    path = blob_file(item.digest)
    where = f"{item.repository}@{item.digest}"
    try:
        if item.manifest:
            body, _, _ = client.get_manifest(item.repository, item.digest)
            if len(body) != item.size:
                raise BundleError(f"{where}: {len(body)} bytes, the lock says {item.size}")
            writer.put_bytes(path, body)
            return len(body)
        split = writer.layout.split(path)
        target = writer.staging(path) if split else writer.target(path)
        with target.open("w+b") as sink:
            size = client.download_blob(item.repository, item.digest, sink)
            os.fsync(sink.fileno())
        if size != item.size:
            raise BundleError(f"{where}: {size} bytes, the lock says {item.size}")
        if split:
            writer.place_split(path, target)
        else:
            writer.record(path, item.digest.split(":", 1)[1])
        return size
    except AirgapError as exc:
        if isinstance(exc, BundleError):
            raise
        raise BundleError(f"{where}: {exc}") from exc
