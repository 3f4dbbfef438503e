"""The lock (``mirror.lock``): every entry of a mirror list resolved to digests, as data.

The model (:class:`Lock` of :class:`LockEntry`, with the manifests, children, signatures and
archives each entry records), reading and writing the file, and the diff between two locks.
Resolution (:mod:`~airgapped_registry.mirror.resolve`) makes one; plan, sync, verify and
lockstore read one.

The lock file is deterministic JSON (sorted keys, indent 2, entries sorted by destination then
tag, no timestamps): locking twice against an unchanged upstream writes identical bytes.
``docs/mirror.md`` documents the format field by field.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from airgapped_registry.errors import AirgapError
from airgapped_registry.oci.manifest import Descriptor

LOCK_VERSION = 1
PRESERVE_INDEX = "preserve-index"
FILTER = "filter"


class LockError(AirgapError):
    """An entry could not be resolved, or a lock file could not be read."""


# -- the data model ------------------------------------------------------------------------

# A config or layer: what the destination must hold, byte for byte.
Blob = Descriptor


@dataclass(frozen=True)
class Manifest:
    """An image manifest (config + layers) or an index (children listed elsewhere)."""

    digest: str
    media_type: str
    size: int
    config: Blob | None = None
    layers: tuple[Blob, ...] = ()

    def blobs(self) -> list[Blob]:
        """Its config (if any) then its layers: what it references, in order."""
        return [blob for blob in (self.config, *self.layers) if blob is not None]

    def to_json(self) -> dict[str, Any]:
        return {
            "digest": self.digest,
            "media_type": self.media_type,
            "size": self.size,
            "config": self.config.to_json() if self.config else None,
            "layers": [layer.to_json() for layer in self.layers],
        }

    @classmethod
    def from_json(cls, document: Mapping[str, Any]) -> Manifest:
        config = document.get("config")
        return cls(
            document["digest"],
            document["media_type"],
            document["size"],
            Blob.from_json(config) if config else None,
            tuple(Blob.from_json(layer) for layer in document.get("layers", ())),
        )


@dataclass(frozen=True)
class Child(Manifest):
    """One manifest listed by an upstream index.

    ``selected``: its platform is one the entry asks for. ``copy``: the sync copies it (every
    child with ``preserve-index``; the selected ones and their attestations with ``filter``).
    Config and layers are recorded for the children that are copied only.
    """

    platform: str | None = None
    selected: bool = False
    copy: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            **super().to_json(),
            "platform": self.platform,
            "selected": self.selected,
            "copy": self.copy,
        }

    @classmethod
    def from_json(cls, document: Mapping[str, Any]) -> Child:
        base = Manifest.from_json(document)
        return cls(
            **{name: getattr(base, name) for name in base.__dataclass_fields__},
            platform=document.get("platform"),
            selected=document["selected"],
            copy=document["copy"],
        )


@dataclass(frozen=True)
class Signature(Manifest):
    """A cosign signature (``sig``), attestation (``att``) or SBOM (``sbom``) by tag scheme.

    ``subject`` is the digest it belongs to; ``copy`` is false for the signature of an upstream
    index that the mirror does not store (``filter`` mode with platforms left out).
    """

    tag: str = ""
    kind: str = "sig"
    subject: str = ""
    copy: bool = True

    def to_json(self) -> dict[str, Any]:
        return {
            **super().to_json(),
            "tag": self.tag,
            "kind": self.kind,
            "subject": self.subject,
            "copy": self.copy,
        }

    @classmethod
    def from_json(cls, document: Mapping[str, Any]) -> Signature:
        base = Manifest.from_json(document)
        return cls(
            **{name: getattr(base, name) for name in base.__dataclass_fields__},
            tag=document["tag"],
            kind=document["kind"],
            subject=document["subject"],
            copy=document["copy"],
        )


@dataclass(frozen=True)
class Archive:
    """The chart archive a classic Helm repository serves, as its ``index.yaml`` names it."""

    url: str
    digest: str
    size: int

    def to_json(self) -> dict[str, Any]:
        return {"url": self.url, "digest": self.digest, "size": self.size}

    @classmethod
    def from_json(cls, document: Mapping[str, Any]) -> Archive:
        return cls(document["url"], document["digest"], document["size"])


@dataclass(frozen=True)
class LockEntry:
    """One destination tag and everything it will resolve to.

    ``manifest`` is what ``destination:tag`` must resolve to in the mirror; for an image index
    in ``filter`` mode with platforms left out this is the filtered index, and
    ``upstream_digest`` keeps the upstream one. ``pinned`` is the digest the mirror list
    pinned the tag to, if any. ``signature_keys``: the public keys the mirror list's policy
    named for the entry when it was locked (as written there, relative to its directory; empty:
    ``signatures: none``), so that the sync need not look the entry up in the list again;
    None when not recorded (a lock written before 0.2, a lock fetched from the previous hop,
    a classic Helm chart): the sync then takes the policy from the mirror list it is given.
    """

    kind: str
    destination: str
    tag: str
    manifest: Manifest
    upstream_digest: str
    source: str | None = None
    registry: str | None = None
    repository: str | None = None
    pinned: str | None = None
    platform_mode: str | None = None
    platforms: tuple[str, ...] = ()
    children: tuple[Child, ...] = ()
    signatures: tuple[Signature, ...] = ()
    archive: Archive | None = None
    signature_keys: tuple[str, ...] | None = None

    @property
    def digest(self) -> str:
        return self.manifest.digest

    @property
    def key(self) -> tuple[str, str]:
        return (self.destination, self.tag)

    @property
    def reference(self) -> str:
        return f"{self.destination}:{self.tag}"

    def reusable_for(
        self,
        *,
        kind: str,
        source: str,
        registry: str,
        repository: str,
        pinned: str | None,
        platforms: tuple[str, ...],
        platform_mode: str | None,
    ) -> bool:
        """Whether this entry of the previous lock still answers what the mirror list asks.

        The same kind, source (at the same registry), repository, pin and platforms; for an
        index the same platform mode (``platform_mode`` None meaning ``preserve-index``), for
        a single manifest none. An entry from a classic Helm repository is never reused.
        Whether the source still serves the recorded digest is :meth:`still_serves`.
        """
        if self.archive is not None:
            return False
        if self.children:
            same_mode = self.platform_mode == (platform_mode or PRESERVE_INDEX)
        else:
            same_mode = self.platform_mode is None
        return (
            same_mode
            and self.kind == kind
            and self.source == source
            and self.registry == registry
            and self.repository == repository
            and self.pinned == pinned
            and self.platforms == platforms
        )

    def still_serves(self, digest: str, media_type: str, size: int) -> bool:
        """Whether a manifest the source serves now for this tag is the one recorded.

        Its size is known when the entry stores the upstream manifest itself (not a filtered
        index).
        """
        return (
            digest == self.upstream_digest
            and media_type == self.manifest.media_type
            and (self.digest != self.upstream_digest or size == self.manifest.size)
        )

    def blobs(self) -> list[Blob]:
        """Every config and layer the sync copies for this entry, in order, once each."""
        manifests: list[Manifest] = [self.manifest]
        manifests += [child for child in self.children if child.copy]
        manifests += [signature for signature in self.signatures if signature.copy]
        seen: dict[str, Blob] = {}
        for manifest in manifests:
            for blob in manifest.blobs():
                seen.setdefault(blob.digest, blob)
        return list(seen.values())

    def content_manifests(self) -> list[Manifest]:
        """The manifests holding the entry's content: the children it copies, or itself."""
        if self.children:
            return [child for child in self.children if child.copy]
        return [self.manifest]

    def content_blobs(self) -> list[Blob]:
        """The configs and layers of :meth:`content_manifests`, each digest once."""
        blobs = (blob for manifest in self.content_manifests() for blob in manifest.blobs())
        return list({blob.digest: blob for blob in blobs}.values())

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "destination": self.destination,
            "tag": self.tag,
            **self.manifest.to_json(),
            "upstream_digest": self.upstream_digest,
            "source": self.source,
            "registry": self.registry,
            "repository": self.repository,
            "pinned": self.pinned,
            "platform_mode": self.platform_mode,
            "platforms": list(self.platforms),
            "children": [child.to_json() for child in self.children],
            "signatures": [signature.to_json() for signature in self.signatures],
            "archive": self.archive.to_json() if self.archive else None,
            "signature_keys": (
                list(self.signature_keys) if self.signature_keys is not None else None
            ),
        }

    @classmethod
    def from_json(cls, document: Mapping[str, Any]) -> LockEntry:
        archive = document.get("archive")
        keys = document.get("signature_keys")  # absent in locks written before 0.2
        return cls(
            kind=document["kind"],
            destination=document["destination"],
            tag=document["tag"],
            manifest=Manifest.from_json(document),
            upstream_digest=document["upstream_digest"],
            source=document.get("source"),
            registry=document.get("registry"),
            repository=document.get("repository"),
            pinned=document.get("pinned"),
            platform_mode=document.get("platform_mode"),
            platforms=tuple(document.get("platforms", ())),
            children=tuple(Child.from_json(child) for child in document.get("children", ())),
            signatures=tuple(Signature.from_json(sig) for sig in document.get("signatures", ())),
            archive=Archive.from_json(archive) if archive else None,
            signature_keys=tuple(keys)
            if (keys := document.get("signature_keys")) is not None
            else None,
        )


@dataclass(frozen=True)
class Lock:
    """All entries, kept sorted by destination then tag (the file's order)."""

    entries: tuple[LockEntry, ...] = ()

    def __post_init__(self) -> None:
        ordered = tuple(sorted(self.entries, key=lambda entry: entry.key))
        object.__setattr__(self, "entries", ordered)

    def get(self, destination: str, tag: str) -> LockEntry | None:
        for entry in self.entries:
            if entry.key == (destination, tag):
                return entry
        return None

    def to_json(self) -> str:
        """The file's text: sorted keys, indent 2, trailing newline, nothing time-dependent."""
        document = {"version": LOCK_VERSION, "entries": [e.to_json() for e in self.entries]}
        return json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n"

    @classmethod
    def from_json(cls, text: str, name: str = "mirror.lock") -> Lock:
        try:
            document = json.loads(text)
        except ValueError as exc:
            raise LockError(f"{name}: not a lock file: {exc}") from exc
        if not isinstance(document, dict) or document.get("version") != LOCK_VERSION:
            version = document.get("version") if isinstance(document, dict) else None
            raise LockError(f"{name}: lock format version {version!r}, expected {LOCK_VERSION}")
        try:
            return cls(tuple(LockEntry.from_json(entry) for entry in document["entries"]))
        except (KeyError, TypeError, AttributeError) as exc:
            raise LockError(f"{name}: malformed lock entry ({type(exc).__name__}: {exc})") from exc


def read_lock(path: str | os.PathLike[str]) -> Lock | None:
    """The lock stored at ``path``, or None when there is none yet."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise LockError(f"{os.fspath(path)}: {exc.strerror or exc}") from exc
    return Lock.from_json(text, os.fspath(path))


# -- the diff ------------------------------------------------------------------------------


@dataclass(frozen=True)
class LockDiff:
    """What changed between two locks, by destination tag.

    ``moved``: the tag resolves to another digest. ``changed``: same digest, but something the
    sync acts on differs (a signature appeared, another platform selected, ...); ``fields``
    names what.
    """

    added: tuple[dict[str, Any], ...] = ()
    removed: tuple[dict[str, Any], ...] = ()
    moved: tuple[dict[str, Any], ...] = ()
    changed: tuple[dict[str, Any], ...] = ()

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.moved or self.changed)

    def to_json(self) -> dict[str, list[dict[str, Any]]]:
        return {
            "added": list(self.added),
            "removed": list(self.removed),
            "moved": list(self.moved),
            "changed": list(self.changed),
        }

    def summary(self) -> str:
        counts = {name: len(items) for name, items in self.to_json().items() if items}
        return ", ".join(f"{count} {name}" for name, count in counts.items()) or "no change"


def diff(old: Lock | None, new: Lock) -> LockDiff:
    before = {entry.key: entry for entry in (old.entries if old else ())}
    after = {entry.key: entry for entry in new.entries}
    added, removed, moved, changed = [], [], [], []
    for key, entry in after.items():
        previous = before.get(key)
        where = {"destination": key[0], "tag": key[1]}
        if previous is None:
            added.append({**where, "digest": entry.digest})
        elif previous.digest != entry.digest:
            moved.append({**where, "old": previous.digest, "new": entry.digest})
        else:
            old_json, new_json = previous.to_json(), entry.to_json()
            fields = sorted(name for name in new_json if old_json.get(name) != new_json[name])
            if fields:
                changed.append({**where, "digest": entry.digest, "fields": fields})
    for key, entry in before.items():
        if key not in after:
            removed.append({"destination": key[0], "tag": key[1], "digest": entry.digest})
    return LockDiff(tuple(added), tuple(removed), tuple(moved), tuple(changed))


def write_atomically(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` so that a reader sees the old file or the new, whole."""
    directory = path.resolve().parent
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=directory)
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
