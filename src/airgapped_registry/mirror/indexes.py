"""An upstream index as the lock records it: each child, its platform, whether it is copied.

An entry asks for platforms; with ``preserve-index`` every child is copied (the index is
stored as upstream wrote it), with ``filter`` the selected ones and the attestations that
refer to them (docker buildx marks those with :data:`REFERENCE_DIGEST`). The children copied
are fetched once to record their config and layers.
"""

from __future__ import annotations

from typing import Any

from airgapped_registry.errors import InvariantError
from airgapped_registry.mirror.lock import PRESERVE_INDEX, Child, LockError
from airgapped_registry.mirror.sources import SourceReader
from airgapped_registry.mirror.spec import Entry
from airgapped_registry.oci.manifest import Descriptor, descriptor, image_parts, parse_manifest
from airgapped_registry.oci.mediatypes import INDEX_MEDIA_TYPES
from airgapped_registry.oci.platform import platform_matches, platform_text

# docker buildx stores provenance/SBOM manifests in the index with this annotation.
REFERENCE_DIGEST = "vnd.docker.reference.digest"


def index_children(
    entry: Entry,
    reader: SourceReader,
    document: dict[str, Any],
    where: str,
    mode: str,
) -> tuple[Child, ...]:
    """The children of an upstream ``document`` (an index) for ``entry`` in ``mode``."""
    if entry.repository is None:
        raise InvariantError(entry.location.problem("no source repository"))
    items = document.get("manifests")
    if not isinstance(items, list) or not items:
        raise LockError(f"{where}: index without manifests")
    listed = []
    for position, item in enumerate(items):
        found = descriptor(item, f"{where} manifests[{position}]")
        platform = platform_text(item.get("platform"))
        if entry.kind == "image":
            selected = any(platform_matches(platform, wanted) for wanted in entry.platforms)
        else:
            selected = True
        annotations = item.get("annotations") or {}
        listed.append((found, platform, selected, annotations.get(REFERENCE_DIGEST)))
    if entry.kind == "image":
        check_platforms(entry, [platform for _, platform, _, _ in listed], where)
    chosen = {found.digest for found, _, selected, _ in listed if selected}
    children = []
    for found, platform, selected, refers_to in listed:
        copy = mode == PRESERVE_INDEX or selected or refers_to in chosen
        config: Descriptor | None = None
        layers: tuple[Descriptor, ...] = ()
        if copy:
            child_where = f"{where} child {found.digest}"
            body, media_type, _ = reader.get(entry.repository, found.digest)
            if media_type in INDEX_MEDIA_TYPES:
                raise LockError(f"{child_where}: nested index, not supported")
            if len(body) != found.size:
                raise LockError(f"{child_where}: index says {found.size} bytes, got {len(body)}")
            config, layers = image_parts(parse_manifest(body, child_where), child_where)
        children.append(
            Child(
                found.digest,
                found.media_type,
                found.size,
                config,
                layers,
                platform=platform,
                selected=selected,
                copy=copy,
            )
        )
    return tuple(children)


def check_platforms(entry: Entry, platforms: list[str | None], where: str) -> None:
    """Refuse an index without the platforms an entry asks for (all of them when explicit)."""
    present = sorted({platform for platform in platforms if platform})
    missing = [
        wanted
        for wanted in entry.platforms
        if not any(platform_matches(platform, wanted) for platform in platforms)
    ]
    if entry.platforms_explicit and missing:
        raise LockError(
            f"{where}: platform {', '.join(missing)} not in the index (it has {', '.join(present)})"
        )
    if len(missing) == len(entry.platforms):
        raise LockError(
            f"{where}: none of {', '.join(entry.platforms)} in the index "
            f"(it has {', '.join(present)}); set platforms"
        )
