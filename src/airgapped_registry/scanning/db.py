"""The vulnerability DB: installed from the local registry, checked, swapped in atomically.

The mirror carries trivy's DB like an image (``aquasecurity/trivy-db:2``, an OCI artifact
with one ``tar+gzip`` layer holding ``trivy.db`` and ``metadata.json``). :func:`install`
takes it from the backend only when its manifest digest is the one the lock records for
that entry, checks the media types and the layer's digest and size, unpacks the two files
(nothing else, no links, no paths, bounded sizes) into a new directory, reads
``metadata.json`` (``Version`` 2, ``UpdatedAt``), checks that ``trivy.db`` is a bbolt file,
then points the ``current`` symlink at the new directory with one rename. Every refusal
names the artifact and the cause and leaves the DB in use as it was; the previous DB stays
on disk beside the new one.

Layout under ``<cache_dir>/databases``::

    current -> 20261130T104400Z-0123456789ab     (symlink, swapped by rename)
    20261130T104400Z-0123456789ab/trivy.db, metadata.json, installed.json
    20261129T...-.../                              (the previous one, kept)

``installed.json`` records which DB a directory holds (artifact digest, ``UpdatedAt``,
when it was installed), so what is current is read with the DB it describes, never apart
from it.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import struct
import tarfile
import tempfile
import zlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, BinaryIO

from airgapped_registry import defaults
from airgapped_registry.errors import AirgapError, ContentError, RegistryError
from airgapped_registry.oci.manifest import Descriptor, image_parts, parse_manifest
from airgapped_registry.oci.mediatypes import OCI_MANIFEST
from airgapped_registry.transport.registry import RegistryClient

DB_CONFIG = "application/vnd.aquasec.trivy.config.v1+json"
DB_LAYER = "application/vnd.aquasec.trivy.db.layer.v1.tar+gzip"
DB_FILE = "trivy.db"
METADATA_FILE = "metadata.json"
RECORD_FILE = "installed.json"
SCHEMA_VERSION = 2
CURRENT = "current"
# bbolt's meta page (page 0): a 16-byte page header, then magic and format version.
_BOLT_META = struct.Struct("<QHHIIII")  # id, flags, count, overflow, magic, version, page size
_BOLT_MAGIC = 0xED0CDAED
_BOLT_META_PAGE = 0x04
_RFC3339 = re.compile(r"(\d{4}-\d{2}-\d{2})T(\d{2}:\d{2}:\d{2})(?:\.(\d+))?(Z|[+-]\d{2}:\d{2})")


class DbError(AirgapError):
    """A DB artifact was refused or could not be installed; the previous DB stays in use."""


@dataclass(frozen=True)
class InstalledDb:
    """A DB on disk: the artifact's manifest digest, its ``UpdatedAt``, when it came."""

    path: Path
    digest: str
    updated_at: datetime
    installed_at: datetime
    repository: str
    tag: str

    def age(self, now: datetime | None = None) -> timedelta:
        return (now or datetime.now(UTC)) - self.updated_at

    def stale(self, max_age: timedelta, now: datetime | None = None) -> bool:
        """Older than ``max_age``: every verdict made with it counts as not scanned."""
        return self.age(now) > max_age

    def to_json(self) -> dict[str, Any]:
        return {
            "digest": self.digest,
            "updated_at": _iso(self.updated_at),
            "installed_at": _iso(self.installed_at),
            "repository": self.repository,
            "tag": self.tag,
            "path": str(self.path),
        }


def databases(cache_dir: Path) -> Path:
    return cache_dir / "databases"


def current_link(cache_dir: Path) -> Path:
    """The symlink naming the DB in use; trivy's ``db`` directories point through it."""
    return databases(cache_dir) / CURRENT


def current(cache_dir: Path) -> InstalledDb | None:
    """The DB in use, or None when none was installed yet."""
    link = current_link(cache_dir)
    try:
        target = link.parent / os.readlink(link)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise DbError(f"{link}: not a DB link: {exc.strerror or exc}") from exc
    return read_record(target)


def read_record(directory: Path) -> InstalledDb:
    path = directory / RECORD_FILE
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
        return InstalledDb(
            path=directory,
            digest=str(document["digest"]),
            updated_at=parse_time(document["updated_at"], f"{path}: updated_at"),
            installed_at=parse_time(document["installed_at"], f"{path}: installed_at"),
            repository=str(document["repository"]),
            tag=str(document["tag"]),
        )
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DbError(f"{path}: unreadable DB record ({type(exc).__name__}: {exc})") from exc


def lock_digest(lock: Path, repository: str, tag: str) -> str:
    """The digest the lock file records for ``repository:tag`` (its ``destination`` and
    ``tag``). Read minimally: the lock's model belongs to the mirror."""
    where = f"{lock}"
    try:
        document = json.loads(lock.read_text(encoding="utf-8"))
    except OSError as exc:
        raise DbError(f"{where}: cannot read the lock: {exc.strerror or exc}") from exc
    except ValueError as exc:
        raise DbError(f"{where}: the lock is not JSON: {exc}") from exc
    entries = document.get("entries") if isinstance(document, dict) else None
    if not isinstance(entries, list) or document.get("version") != 1:
        raise DbError(f"{where}: not a lock file (version 1 with entries)")
    for entry in entries:
        if (
            isinstance(entry, dict)
            and entry.get("destination") == repository
            and entry.get("tag") == tag
        ):
            digest = entry.get("digest")
            if not isinstance(digest, str):
                raise DbError(f"{where}: entry {repository}:{tag} has no digest")
            return digest
    raise DbError(f"{where}: no entry for {repository}:{tag} (is the DB in the mirror list?)")


def plan_install(
    client: RegistryClient, cache_dir: Path, repository: str, tag: str, lock: Path
) -> dict[str, Any]:
    """What :func:`install` would do, from digests alone (the lock's, the registry's, the
    installed DB's), refusing what it would refuse before any download: check mode."""
    expected = lock_digest(lock, repository, tag)
    artifact = f"{repository}:{tag}"
    try:
        head = client.head_manifest(repository, tag)
    except RegistryError as exc:
        raise DbError(f"DB artifact {artifact}: cannot read it from the registry: {exc}") from exc
    if head is None:
        raise DbError(f"DB artifact {artifact}: not in the registry")
    if head.digest != expected:
        raise DbError(
            f"DB artifact {artifact}: the registry serves {head.digest}, "
            f"the lock {lock} says {expected}"
        )
    installed = current(cache_dir)
    return {
        "changed": installed is None or installed.digest != head.digest,
        "repository": repository,
        "tag": tag,
        "digest": head.digest,
        "previous": None if installed is None else installed.to_json(),
    }


def install(
    client: RegistryClient,
    cache_dir: Path,
    repository: str,
    tag: str,
    lock: Path,
    *,
    now: datetime | None = None,
    max_layer_bytes: int = defaults.SCAN_DB_MAX_LAYER_BYTES,
    max_file_bytes: int = defaults.SCAN_DB_MAX_FILE_BYTES,
) -> dict[str, Any]:
    """Install ``repository:tag`` from ``client``'s registry if the lock names its digest.

    Returns a report (``changed`` false when that DB is already the current one). Any
    refusal raises :class:`DbError` with the current DB untouched.
    """
    expected = lock_digest(lock, repository, tag)
    artifact = f"{repository}:{tag}"
    try:
        body, media_type, digest = client.get_manifest(repository, tag)
    except RegistryError as exc:
        raise DbError(f"DB artifact {artifact}: cannot read it from the registry: {exc}") from exc
    artifact = f"{repository}@{digest}"
    if digest != expected:
        raise DbError(
            f"DB artifact {repository}:{tag}: the registry serves {digest}, "
            f"the lock {lock} says {expected}"
        )
    previous = current(cache_dir)
    report: dict[str, Any] = {
        "changed": False,
        "repository": repository,
        "tag": tag,
        "digest": digest,
        "previous": previous.to_json() if previous else None,
    }
    if previous is not None and previous.digest == digest:
        report["current"] = previous.to_json()
        return report
    layer = _db_layer(body, media_type, artifact, max_layer_bytes)
    root = databases(cache_dir)
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=root, prefix=".new-"))
    try:
        with tempfile.TemporaryFile(dir=root) as archive:
            try:
                size = client.download_blob(repository, layer.digest, archive)
            except (RegistryError, ContentError) as exc:
                raise DbError(f"DB artifact {artifact}: layer {layer.digest}: {exc}") from exc
            if size != layer.size:
                raise DbError(
                    f"DB artifact {artifact}: layer {layer.digest} has {size} bytes, "
                    f"the manifest says {layer.size}"
                )
            archive.seek(0)
            unpack(archive, staging, artifact, max_file_bytes)
        updated_at = read_metadata(staging / METADATA_FILE, artifact)
        check_bolt(staging / DB_FILE, artifact)
        installed_at = (now or datetime.now(UTC)).replace(microsecond=0)
        name = f"{installed_at:%Y%m%dT%H%M%SZ}-{digest.split(':', 1)[1][:12]}"
        record = {
            "digest": digest,
            "updated_at": _iso(updated_at),
            "installed_at": _iso(installed_at),
            "repository": repository,
            "tag": tag,
        }
        (staging / RECORD_FILE).write_text(json.dumps(record, indent=2) + "\n")
        for path in staging.iterdir():
            path.chmod(0o444)
        staging.chmod(0o755)
        final = root / name
        if final.exists():
            _remove_tree(final)
        staging.rename(final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _point_current(root, name)
    _remove_older(root, keep={name, previous.path.name if previous else name})
    installed = read_record(final)
    report.update(changed=True, current=installed.to_json())
    return report


def unpack(data: BinaryIO, directory: Path, artifact: str, max_file_bytes: int) -> None:
    """Write ``trivy.db`` and ``metadata.json`` from the gzipped tar read from ``data`` into
    ``directory``; anything else in the archive, a second copy, a link or a path refuses it."""
    limits = {DB_FILE: max_file_bytes, METADATA_FILE: defaults.SCAN_DB_MAX_METADATA_BYTES}
    seen: set[str] = set()
    try:
        stream = gzip.GzipFile(fileobj=data, mode="rb")
        with stream, tarfile.open(fileobj=stream, mode="r:") as archive:
            for member in archive:
                name = member.name[2:] if member.name.startswith("./") else member.name
                if name in ("", ".") and member.isdir():
                    continue
                if name not in limits:
                    raise DbError(
                        f"DB artifact {artifact}: unexpected entry {member.name!r} in the "
                        f"layer (only {DB_FILE} and {METADATA_FILE})"
                    )
                if not member.isreg():
                    raise DbError(f"DB artifact {artifact}: {member.name!r} is not a regular file")
                if name in seen:
                    raise DbError(f"DB artifact {artifact}: {member.name!r} appears twice")
                if member.size > limits[name]:
                    raise DbError(
                        f"DB artifact {artifact}: {name} is {member.size} bytes, "
                        f"more than the limit of {limits[name]}"
                    )
                seen.add(name)
                source = archive.extractfile(member)
                if source is None:
                    raise DbError(f"DB artifact {artifact}: cannot read {name}")
                with source, (directory / name).open("xb") as target:
                    shutil.copyfileobj(source, target, 1024 * 1024)
            # The tar ends before the gzip stream does: read it to its end, where gzip
            # checks its CRC and length (a flipped byte inside a member fails only there).
            while stream.read(1024 * 1024):
                pass
    except (tarfile.TarError, EOFError, OSError, ValueError, zlib.error) as exc:
        raise DbError(f"DB artifact {artifact}: the layer is not a valid tar.gz: {exc}") from exc
    for name in (DB_FILE, METADATA_FILE):
        if name not in seen:
            raise DbError(f"DB artifact {artifact}: the layer holds no {name}")


def read_metadata(path: Path, artifact: str) -> datetime:
    """``UpdatedAt`` of a ``metadata.json`` whose ``Version`` is 2."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DbError(f"DB artifact {artifact}: {METADATA_FILE} is not JSON: {exc}") from exc
    if not isinstance(document, dict):
        raise DbError(f"DB artifact {artifact}: {METADATA_FILE} is not a JSON object")
    if document.get("Version") != SCHEMA_VERSION:
        raise DbError(
            f"DB artifact {artifact}: {METADATA_FILE} Version {document.get('Version')!r}, "
            f"expected {SCHEMA_VERSION}"
        )
    return parse_time(document.get("UpdatedAt"), f"DB artifact {artifact}: UpdatedAt")


def check_bolt(path: Path, artifact: str) -> None:
    """Refuse a ``trivy.db`` that is not a bbolt file: its first page must be a meta page
    with bbolt's magic and format version 2, the file a whole number of pages."""
    size = path.stat().st_size
    with path.open("rb") as handle:
        head = handle.read(_BOLT_META.size)
    if len(head) < _BOLT_META.size:
        raise DbError(f"DB artifact {artifact}: {DB_FILE} is too short for a bbolt file")
    _, flags, _, _, magic, version, page_size = _BOLT_META.unpack(head)
    if magic != _BOLT_MAGIC or not flags & _BOLT_META_PAGE or version != 2:
        raise DbError(f"DB artifact {artifact}: {DB_FILE} is not a bbolt database (bad magic)")
    if page_size < 512 or page_size & (page_size - 1) or size % page_size or size < 4 * page_size:
        raise DbError(
            f"DB artifact {artifact}: {DB_FILE} is not a bbolt database "
            f"({size} bytes, page size {page_size})"
        )


def parse_time(value: object, where: str) -> datetime:
    """An RFC 3339 time as Go writes it (nanoseconds allowed), in UTC."""
    match = _RFC3339.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        raise DbError(f"{where}: {value!r} is not an RFC 3339 time")
    fraction = (match[3] or "")[:6].ljust(6, "0")
    zone = "+00:00" if match[4] == "Z" else match[4]
    try:
        moment = datetime.fromisoformat(f"{match[1]}T{match[2]}.{fraction}{zone}")
    except ValueError as exc:
        raise DbError(f"{where}: {value!r}: {exc}") from exc
    return moment.astimezone(UTC)


def _db_layer(body: bytes, media_type: str, artifact: str, max_bytes: int) -> Descriptor:
    if media_type != OCI_MANIFEST:
        raise DbError(f"DB artifact {artifact}: media type {media_type!r}, expected {OCI_MANIFEST}")
    try:
        config, layers = image_parts(parse_manifest(body, artifact), artifact)
    except ContentError as exc:
        raise DbError(f"DB artifact {artifact}: {exc}") from exc
    if config.media_type != DB_CONFIG:
        raise DbError(
            f"DB artifact {artifact}: config media type {config.media_type!r}, expected {DB_CONFIG}"
        )
    if len(layers) != 1 or layers[0].media_type != DB_LAYER:
        found = ", ".join(layer.media_type for layer in layers) or "none"
        raise DbError(f"DB artifact {artifact}: expected one {DB_LAYER} layer, found {found}")
    if layers[0].size > max_bytes:
        raise DbError(
            f"DB artifact {artifact}: layer of {layers[0].size} bytes, "
            f"more than the limit of {max_bytes}"
        )
    return layers[0]


def _point_current(root: Path, name: str) -> None:
    """Make ``current`` name ``name`` in one step: a new link renamed over the old one."""
    temporary = root / f".{CURRENT}-{os.getpid()}"
    temporary.unlink(missing_ok=True)
    os.symlink(name, temporary)
    os.replace(temporary, root / CURRENT)


def _remove_older(root: Path, keep: set[str]) -> None:
    for path in root.iterdir():
        if path.name in keep or path.name == CURRENT or path.is_symlink():
            continue
        if path.is_dir() and not path.name.startswith("."):
            _remove_tree(path)


def _remove_tree(path: Path) -> None:
    path.chmod(0o755)
    shutil.rmtree(path, ignore_errors=True)


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")
