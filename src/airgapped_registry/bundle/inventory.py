"""The registry host's inventory: every manifest and blob digest it holds, signed.

The delta handshake: the registry host walks its registry (catalog, tags, manifests, index
children, configs and layers) and writes the digests it found into a small JSON document with
a transfer signature (purpose ``inventory``); the relay verifies it with the keys it trusts
and exports only what the inventory does not list (:mod:`~airgapped_registry.bundle.export`).

Digests only: what a repository holds is not recorded. A blob the site holds in one
repository is mounted into another at import; a manifest is small and fetched from where it
is (docs/bundles.md, "Delta").
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airgapped_registry import defaults
from airgapped_registry.errors import AirgapError, ContentError, RegistryError
from airgapped_registry.oci.manifest import descriptor, parse_manifest
from airgapped_registry.oci.mediatypes import INDEX_MEDIA_TYPES
from airgapped_registry.oci.reference import DIGEST_PATTERN, digest_of
from airgapped_registry.transport.registry import RegistryClient

if TYPE_CHECKING:
    from airgapped_registry.transfer import TransferKey, TrustedKeys

FORMAT = "airgapped-registry.inventory.v1"
PURPOSE = "inventory"
SIGNATURE_SUFFIX = ".sig"
# An inventory of a million digests is ~70 MB; anything much larger is not one of ours.
_LIMIT = 1024 * 1024 * 1024


class InventoryError(AirgapError):
    """An inventory could not be taken, or a given one is refused (named, with the cause)."""


def now() -> str:
    """UTC, to the second, as the documents write it."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class _Walk:
    manifests: set[str]
    blobs: set[str]
    tags: int = 0


def _walk_repository(client: RegistryClient, repository: str) -> _Walk:
    """The digests one repository's tags reach (children of indexes followed)."""
    found = _Walk(set(), set())
    try:
        tags = client.tags(repository)
    except RegistryError as exc:
        if exc.status == 404:  # listed by the catalog, emptied since
            return found
        raise
    found.tags = len(tags)
    pending = list(tags)
    while pending:
        reference = pending.pop()
        try:
            body, media_type, digest = client.get_manifest(repository, reference)
        except RegistryError as exc:
            if exc.status == 404:  # deleted while we walked, or a child not stored here
                continue
            raise
        if digest in found.manifests:
            continue
        found.manifests.add(digest)
        where = f"{repository}@{digest}"
        document = parse_manifest(body, where)
        if media_type in INDEX_MEDIA_TYPES or "manifests" in document:
            for position, item in enumerate(document.get("manifests") or []):
                child = descriptor(item, f"{where} manifests[{position}]").digest
                if child not in found.manifests:
                    pending.append(child)
            continue
        if isinstance(document.get("config"), dict):
            found.blobs.add(descriptor(document["config"], f"{where} config").digest)
        for position, layer in enumerate(document.get("layers") or []):
            found.blobs.add(descriptor(layer, f"{where} layers[{position}]").digest)
    return found


def take_inventory(
    client: RegistryClient,
    *,
    lock_digest: str | None = None,
    host: str | None = None,
    workers: int = defaults.SYNC_WORKERS,
) -> dict[str, Any]:
    """The inventory document of the registry ``client`` reaches (not yet signed)."""
    repositories = client.catalog()
    with ThreadPoolExecutor(max(1, workers)) as pool:
        walks = list(pool.map(lambda name: _walk_repository(client, name), repositories))
    manifests: set[str] = set().union(*(walk.manifests for walk in walks))
    blobs: set[str] = set().union(*(walk.blobs for walk in walks))
    return {
        "format": FORMAT,
        "created": now(),
        "host": host or socket.gethostname(),
        "registry": client.base_url,
        "lock_digest": lock_digest,
        "repositories": len(repositories),
        "tags": sum(walk.tags for walk in walks),
        "manifests": sorted(manifests),
        "blobs": sorted(blobs),
    }


def inventory_bytes(document: dict[str, Any]) -> bytes:
    """Sorted keys, one digest per line: diffable, and a few bytes per digest."""
    return (json.dumps(document, sort_keys=True, indent=0) + "\n").encode()


def write_inventory(
    client: RegistryClient,
    output: str | os.PathLike[str],
    key: TransferKey,
    *,
    lock: str | os.PathLike[str] | None = None,
    workers: int = defaults.SYNC_WORKERS,
) -> dict[str, Any]:
    """Walk the registry, write ``output`` and ``output.sig``; the report."""
    started = time.monotonic()
    path = Path(output)
    lock_digest = None
    if lock is not None:
        try:
            lock_digest = digest_of(Path(lock).read_bytes())
        except OSError as exc:
            raise InventoryError(f"{os.fspath(lock)}: {exc.strerror or exc}") from exc
    before = client.requests
    try:
        document = take_inventory(client, lock_digest=lock_digest, workers=workers)
    except ContentError as exc:
        raise InventoryError(f"inventory of {client.base_url}: {exc}") from exc
    data = inventory_bytes(document)
    signature = key.sign(data, PURPOSE)
    _write_atomically(path, data)
    _write_atomically(signature_path(path), signature)
    return {
        "inventory": os.fspath(path),
        "signature": os.fspath(signature_path(path)),
        "digest": digest_of(data),
        "key_id": key.key_id,
        "registry": client.base_url,
        "host": document["host"],
        "lock_digest": lock_digest,
        "repositories": document["repositories"],
        "tags": document["tags"],
        "manifests": len(document["manifests"]),
        "blobs": len(document["blobs"]),
        "bytes": len(data),
        "requests": client.requests - before,
        "seconds": round(time.monotonic() - started, 3),
    }


def signature_path(path: Path) -> Path:
    return path.with_name(path.name + SIGNATURE_SUFFIX)


def _write_atomically(path: Path, data: bytes) -> None:
    temporary = path.with_name(f".{path.name}.partial")
    try:
        temporary.write_bytes(data)
        os.replace(temporary, path)
    except OSError as exc:
        temporary.unlink(missing_ok=True)
        raise InventoryError(f"{path}: cannot write ({exc.strerror or exc})") from exc


@dataclass(frozen=True)
class Inventory:
    """A verified inventory: what the site holds, and who signed it."""

    path: str
    digest: str
    key_id: str
    host: str
    created: str
    lock_digest: str | None
    manifests: frozenset[str]
    blobs: frozenset[str]

    def holds(self, digest: str) -> bool:
        return digest in self.manifests or digest in self.blobs

    def base(self) -> dict[str, Any]:
        """What a delta bundle's MANIFEST.json says it was computed from."""
        return {"inventory_digest": self.digest, "host": self.host, "created": self.created}


def read_inventory(path: str | os.PathLike[str], trusted: TrustedKeys) -> Inventory:
    """The inventory at ``path``, its signature ``path.sig`` verified with ``trusted``."""
    where = Path(path)
    try:
        data = _read(where, _LIMIT)
    except FileNotFoundError:
        raise InventoryError(f"inventory {where}: no such file") from None
    try:
        signature: bytes | None = _read(signature_path(where), 64 * 1024)
    except FileNotFoundError:
        signature = None
    key_id = trusted.verify(data, signature, purpose=PURPOSE, what=f"inventory {where}")
    try:
        document = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InventoryError(f"inventory {where}: not JSON ({exc})") from exc
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise InventoryError(f"inventory {where}: format is not {FORMAT}")
    return Inventory(
        path=os.fspath(where),
        digest=digest_of(data),
        key_id=key_id,
        host=str(document.get("host", "")),
        created=str(document.get("created", "")),
        lock_digest=document.get("lock_digest"),
        manifests=frozenset(_digests(document.get("manifests"), f"inventory {where}: manifests")),
        blobs=frozenset(_digests(document.get("blobs"), f"inventory {where}: blobs")),
    )


def _digests(items: Any, where: str) -> Iterable[str]:
    if not isinstance(items, list):
        raise InventoryError(f"{where} is not a list")
    for item in items:
        if not isinstance(item, str) or not DIGEST_PATTERN.fullmatch(item):
            raise InventoryError(f"{where}: {item!r} is not a digest")
        yield item


def _read(path: Path, limit: int) -> bytes:
    try:
        with path.open("rb") as handle:
            data = handle.read(limit + 1)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise InventoryError(f"{path}: {exc.strerror or exc}") from exc
    if len(data) > limit:
        raise InventoryError(f"{path}: larger than {limit} bytes, not an inventory")
    return data
