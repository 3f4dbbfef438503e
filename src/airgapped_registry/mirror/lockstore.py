"""The lock carried from one hop to the next through a registry: publish, fetch, rewrite.

The relay publishes its ``mirror.lock`` as an OCI artifact in its own registry (no other
service crosses the DMZ); the registry host fetches it and rewrites it for its own hop:
every entry now comes from the relay, at the path the relay stores it under (its
``destination``). Digests do not change, since the relay holds the same bytes.

The artifact: an OCI image manifest with ``artifactType`` and config media type
:data:`CONFIG_MEDIA_TYPE` (config ``{}``), a layer of :data:`LOCK_MEDIA_TYPE`, the lock
file's bytes, titled ``mirror.lock``, and, when published with the relay's transfer key, a
second layer of :data:`SIGNATURE_MEDIA_TYPE` titled ``mirror.lock.sig``: the lock's transfer
signature (purpose ``lock``, docs/transfer.md). The registry host's fetch verifies it with
its trusted keys before anything else reads the lock.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from airgapped_registry import defaults
from airgapped_registry.errors import AirgapError
from airgapped_registry.mirror.lock import Lock, LockEntry, LockError, diff, write_atomically
from airgapped_registry.oci.mediatypes import OCI_MANIFEST
from airgapped_registry.oci.reference import digest_of
from airgapped_registry.transfer import MEDIA_TYPE as SIGNATURE_MEDIA_TYPE
from airgapped_registry.transfer import TransferKey, TransferSignatureError, TrustedKeys
from airgapped_registry.transfer.signature import MAX_DOCUMENT_BYTES
from airgapped_registry.transport.registry import RegistryClient

CONFIG_MEDIA_TYPE = "application/vnd.airgapped-registry.lock.config.v1+json"
LOCK_MEDIA_TYPE = "application/vnd.airgapped-registry.lock.v1+json"
TITLE = "mirror.lock"
SIGNATURE_TITLE = "mirror.lock.sig"
# The transfer signature's purpose: a lock's signature never passes for another document's.
PURPOSE = "lock"
_CONFIG = b"{}"


class LockStoreError(AirgapError):
    """The published lock is missing, is not a lock artifact, or its bytes do not check."""


def artifact(lock_text: bytes, signature: bytes | None = None) -> bytes:
    """The manifest publishing ``lock_text`` (and its transfer ``signature``); the same lock
    signed by the same key gives the same manifest digest."""
    layers: list[dict[str, Any]] = [
        {
            "mediaType": LOCK_MEDIA_TYPE,
            "digest": digest_of(lock_text),
            "size": len(lock_text),
            "annotations": {"org.opencontainers.image.title": TITLE},
        }
    ]
    if signature is not None:
        layers.append(
            {
                "mediaType": SIGNATURE_MEDIA_TYPE,
                "digest": digest_of(signature),
                "size": len(signature),
                "annotations": {"org.opencontainers.image.title": SIGNATURE_TITLE},
            }
        )
    document = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": CONFIG_MEDIA_TYPE,
        "config": {
            "mediaType": CONFIG_MEDIA_TYPE,
            "digest": digest_of(_CONFIG),
            "size": len(_CONFIG),
        },
        "layers": layers,
    }
    return json.dumps(document, indent=2, sort_keys=True).encode()


def publish(
    lock_path: str | os.PathLike[str],
    client: RegistryClient,
    *,
    key: TransferKey | None = None,
    repository: str = defaults.LOCK_REPOSITORY,
    tag: str = defaults.LOCK_TAG,
    check: bool = False,
) -> dict[str, Any]:
    """Push the lock file as ``repository:tag``, signed with the transfer ``key`` (unsigned
    without one: a fetch that requires a signature refuses it); nothing is pushed when it is
    already there.

    One manifest HEAD decides: the tag names the artifact's digest → ``changed`` false.
    """
    path = Path(lock_path)
    try:
        text = path.read_bytes()
    except OSError as exc:
        raise LockStoreError(f"{os.fspath(path)}: {exc.strerror or exc}") from exc
    locked = Lock.from_json(text.decode("utf-8", errors="replace"), os.fspath(path))
    signature = key.sign(text, PURPOSE) if key is not None else None
    manifest = artifact(text, signature)
    digest = digest_of(manifest)
    before = client.requests
    current = client.head_manifest(repository, tag)
    previous = current.digest if current else None
    changed = previous != digest
    if changed and not check:
        client.push_blob(repository, digest_of(_CONFIG), _CONFIG)
        client.push_blob(repository, digest_of(text), text)
        if signature is not None:
            client.push_blob(repository, digest_of(signature), signature)
        client.put_manifest(repository, tag, manifest, OCI_MANIFEST)
    return {
        "lock": os.fspath(path),
        "reference": f"{client.base_url}/{repository}:{tag}",
        "changed": changed,
        "published": changed and not check,
        "check_mode": check,
        "digest": digest,
        "previous": previous,
        "lock_digest": digest_of(text),
        "signed_by": key.key_id if key is not None else None,
        "entries": len(locked.entries),
        "requests": client.requests - before,
    }


@dataclasses.dataclass(frozen=True)
class Published:
    """The published lock as fetched: its text, parsed, the artifact's manifest digest, and
    the id of the trusted transfer key that signed it (None when not checked)."""

    text: str
    lock: Lock
    digest: str
    signed_by: str | None


def read_published(
    client: RegistryClient,
    repository: str = defaults.LOCK_REPOSITORY,
    tag: str = defaults.LOCK_TAG,
    *,
    trusted: TrustedKeys | None,
) -> Published:
    """The published lock, every digest checked and its transfer signature verified with
    ``trusted`` before the lock is parsed. ``trusted`` None: the signature is not asked for
    (a site that has not deployed transfer keys yet, and says so)."""
    where = f"{client.base_url}/{repository}:{tag}"
    if client.head_manifest(repository, tag) is None:
        raise LockStoreError(f"{where}: no published lock (publish one with airgap lock publish)")
    try:
        body, _, digest = client.get_manifest(repository, tag, accept=(OCI_MANIFEST,))
    except AirgapError as exc:
        raise LockStoreError(f"{where}: {exc}") from exc
    try:
        document = json.loads(body)
        layers = document["layers"]
        config_type = document["config"]["mediaType"]
    except (ValueError, KeyError, TypeError) as exc:
        raise LockStoreError(f"{where}: not a lock artifact (unreadable manifest)") from exc
    expected = (LOCK_MEDIA_TYPE, SIGNATURE_MEDIA_TYPE)
    if (
        config_type != CONFIG_MEDIA_TYPE
        or not isinstance(layers, list)
        or not 1 <= len(layers) <= 2
        or not all(isinstance(layer, dict) for layer in layers)
        or [layer.get("mediaType") for layer in layers] != list(expected[: len(layers)])
    ):
        raise LockStoreError(
            f"{where}: not a lock artifact (expected config {CONFIG_MEDIA_TYPE}, one "
            f"{LOCK_MEDIA_TYPE} layer and at most one {SIGNATURE_MEDIA_TYPE} layer after it)"
        )
    data = _layer_blob(client, repository, layers[0], where, "lock blob")
    signed_by = None
    if trusted is not None:
        signature = None
        if len(layers) == 2:
            if not isinstance(layers[1].get("size"), int) or layers[1]["size"] > MAX_DOCUMENT_BYTES:
                raise TransferSignatureError(
                    f"published lock {where}: not a transfer signature document (its layer "
                    f"says {layers[1].get('size')!r} bytes, at most {MAX_DOCUMENT_BYTES})"
                )
            signature = _layer_blob(client, repository, layers[1], where, "signature blob")
        try:
            signed_by = trusted.verify(
                data, signature, purpose=PURPOSE, what=f"published lock {where}"
            )
        except TransferSignatureError as exc:
            if signature is not None:
                raise
            raise TransferSignatureError(
                f"{exc}; the relay signs it with 'airgap lock publish --transfer-key' (a site "
                "without transfer keys yet may fetch with --allow-unsigned)"
            ) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise LockStoreError(f"{where}: published lock refused: not UTF-8 text") from exc
    try:
        return Published(text, Lock.from_json(text, where), digest, signed_by)
    except LockError as exc:
        raise LockStoreError(f"published lock refused: {exc}") from exc


def _layer_blob(
    client: RegistryClient, repository: str, layer: dict[str, Any], where: str, what: str
) -> bytes:
    try:
        data = client.get_blob(repository, str(layer.get("digest")))
    except AirgapError as exc:
        raise LockStoreError(f"{where}: {what}: {exc}") from exc
    if len(data) != layer.get("size"):
        raise LockStoreError(
            f"{where}: {what} is {len(data)} bytes, the manifest says {layer.get('size')}"
        )
    return data


def registry_address(url: str) -> str:
    """``host[:port]`` of a registry URL, as a mirror list names a source's registry."""
    return urlsplit(url).netloc


def relay_entry(entry: LockEntry, source: str, registry: str) -> LockEntry:
    """``entry`` as the next hop reads it: from ``source`` at ``registry``, at its destination.

    What the relay stores under ``destination@digest`` is what the entry resolves to, so that
    is the "upstream" of the next hop: a ``filter`` index is the filtered one (its left-out
    children are not on the relay and are dropped), a classic chart is its OCI manifest.
    The signature keys are not carried: they are paths on the relay, whose sync verified
    with them; the next hop's own mirror list (its source's policy) decides there.
    """
    children = entry.children
    if children and entry.digest != entry.upstream_digest:
        children = tuple(child for child in children if child.copy)
    return dataclasses.replace(
        entry,
        source=source,
        registry=registry,
        repository=entry.destination,
        upstream_digest=entry.digest,
        children=children,
        archive=None,
        signature_keys=None,
    )


def relay_lock(locked: Lock, source: str, registry: str) -> Lock:
    """Every entry of ``locked`` rewritten by :func:`relay_entry`."""
    return Lock(tuple(relay_entry(entry, source, registry) for entry in locked.entries))


def fetch(
    client: RegistryClient,
    output: str | os.PathLike[str],
    *,
    source: str,
    source_registry: str | None = None,
    repository: str = defaults.LOCK_REPOSITORY,
    tag: str = defaults.LOCK_TAG,
    trusted: TrustedKeys | None,
    check: bool = False,
) -> dict[str, Any]:
    """Fetch the published lock, rewrite it for ``source``, write ``output`` if it changes.

    ``source_registry`` is the ``host[:port]`` the mirror list names the source by (default:
    the one of the client's URL). ``trusted``: the transfer keys the lock must be signed by
    (None only where unsigned locks are allowed). A refused artifact, an unsigned lock or
    one whose signature does not verify raises before ``output`` is touched; the file is
    replaced atomically.
    """
    path = Path(output)
    registry = source_registry or registry_address(client.base_url)
    before = client.requests
    published = read_published(client, repository, tag, trusted=trusted)
    digest = published.digest
    new = relay_lock(published.lock, source, registry)
    text = new.to_json()
    try:
        old_text: str | None = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        old_text = None
    except OSError as exc:
        raise LockStoreError(f"{os.fspath(path)}: {exc.strerror or exc}") from exc
    try:
        previous = Lock.from_json(old_text, os.fspath(path)) if old_text is not None else None
    except LockError:
        previous = None  # an unreadable previous file is replaced; the diff shows all added
    changed = text != old_text
    if changed and not check:
        write_atomically(path, text)
    changes = diff(previous, new)
    return {
        "lock": os.fspath(path),
        "reference": f"{client.base_url}/{repository}:{tag}",
        "digest": digest,
        "signed_by": published.signed_by,
        "signature": "verified" if trusted is not None else "not checked (unsigned allowed)",
        "source": source,
        "registry": registry,
        "changed": changed,
        "written": changed and not check,
        "check_mode": check,
        "entries": len(new.entries),
        "summary": changes.summary() if previous is not None else "new lock",
        "diff": changes.to_json(),
        "requests": client.requests - before,
    }
