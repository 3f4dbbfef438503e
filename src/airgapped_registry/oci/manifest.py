"""Manifests and indexes: descriptors read from them, and the filtered index of a mirror.

Every reader names the content it reads (``where``) in its :class:`ContentError`, so a bad
upstream manifest is reported with its repository, tag and digest.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from airgapped_registry.errors import ContentError
from airgapped_registry.oci.reference import DIGEST_PATTERN, canonical_json


@dataclass(frozen=True)
class Descriptor:
    """What a manifest references: a config, a layer or a child manifest, by digest."""

    digest: str
    media_type: str
    size: int

    def to_json(self) -> dict[str, Any]:
        return {"digest": self.digest, "media_type": self.media_type, "size": self.size}

    @classmethod
    def from_json(cls, document: Mapping[str, Any]) -> Descriptor:
        return cls(document["digest"], document["media_type"], document["size"])


def parse_manifest(body: bytes, where: str) -> dict[str, Any]:
    """A manifest's JSON object."""
    try:
        document = json.loads(body)
    except ValueError as exc:
        raise ContentError(f"{where}: manifest is not JSON: {exc}") from exc
    if not isinstance(document, dict):
        raise ContentError(f"{where}: manifest is not a JSON object")
    return document


def descriptor(item: Any, where: str) -> Descriptor:
    """A descriptor object (``digest``, ``mediaType``, ``size``), each field checked."""
    if not isinstance(item, dict):
        raise ContentError(f"{where}: descriptor is not an object")
    digest, media_type, size = item.get("digest"), item.get("mediaType"), item.get("size")
    if not isinstance(digest, str) or not DIGEST_PATTERN.fullmatch(digest):
        raise ContentError(f"{where}: bad digest {digest!r}")
    if not isinstance(media_type, str) or not media_type:
        raise ContentError(f"{where}: no mediaType")
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise ContentError(f"{where}: bad size {size!r}")
    return Descriptor(digest, media_type, size)


def image_parts(document: dict[str, Any], where: str) -> tuple[Descriptor, tuple[Descriptor, ...]]:
    """``(config, layers)`` of an image manifest."""
    if "config" not in document or not isinstance(document.get("layers", []), list):
        raise ContentError(f"{where}: not an image manifest (no config)")
    config = descriptor(document["config"], f"{where} config")
    layers = tuple(
        descriptor(layer, f"{where} layers[{position}]")
        for position, layer in enumerate(document.get("layers") or [])
    )
    return config, layers


def filtered_index(body: bytes, keep: set[str]) -> bytes:
    """The index a ``filter`` entry stores: the upstream one listing only the kept children.

    This is the one definition of that index: the lock records its digest, the sync writes
    these bytes. Everything but ``manifests`` is kept as upstream wrote it.
    """
    document = json.loads(body)
    document["manifests"] = [item for item in document["manifests"] if item["digest"] in keep]
    return canonical_json(document)
