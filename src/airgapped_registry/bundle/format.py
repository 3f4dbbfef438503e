"""The bundle on disk: an OCI image layout plus the lock, a signed file manifest, volumes.

A bundle is one directory (a single volume) or a directory of volume directories
``vol-001``..``vol-NNN``. Every volume holds ``MANIFEST.json`` (identical bytes in each: every
file of every volume with its size, SHA-256 and volume), its transfer signature
``MANIFEST.json.sig`` (purpose ``bundle``) and ``volume.json`` (which volume this is, not listed:
a wrong one only makes the check fail). Volume 1 also holds ``oci-layout``, ``index.json``
and ``airgap/`` (the lock and what to push where, both gzip-compressed, upstream signature
keys); blobs and manifests
live under ``blobs/sha256/<hex>``, once each, or as ``<hex>.part-0001``... when a blob did not
fit in the room a volume had left. docs/bundles.md describes every field.

Writing: :func:`plan_layout` places every file (volumes and parts) before a byte is written,
:class:`BundleWriter` writes them there and signs the manifest last. Reading:
:func:`open_bundle` checks everything (signature, path safety, every file's size and
SHA-256, every volume present, parts reassembling) before it returns a :class:`Bundle`;
:func:`check_volumes` does the same for any subset of the volumes.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import io
import json
import os
import re
import shutil
import stat
import zlib
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from airgapped_registry.errors import AirgapError

if TYPE_CHECKING:
    from airgapped_registry.transfer import TransferKey, TrustedKeys

FORMAT = "airgapped-registry.bundle.v1"
CONTENTS_FORMAT = "airgapped-registry.bundle-contents.v1"
PURPOSE = "bundle"
KINDS = ("full", "delta")

MANIFEST = "MANIFEST.json"
SIGNATURE = "MANIFEST.json.sig"
VOLUME = "volume.json"
CONTROL_FILES = (MANIFEST, SIGNATURE, VOLUME)
LAYOUT = "oci-layout"
INDEX = "index.json"
# Compressed: both grow with the lock's entries, not with what changed, and a delta carries
# them whole (gzip takes them to ~1/6, the difference between a delta at 1.1x the new
# content and one under 1.05x). MANIFEST.json and index.json stay plain for tools to read.
LOCK = "airgap/lock.json.gz"
CONTENTS = "airgap/contents.json.gz"
KEYS = "airgap/keys"
BLOBS = "blobs/sha256"
# What must sit in volume 1, whatever the volume size.
FRONT_FILES = (LAYOUT, INDEX, LOCK, CONTENTS)
REF_NAME = "org.opencontainers.image.ref.name"
LAYOUT_BYTES = b'{"imageLayoutVersion": "1.0.0"}'

_COMPONENT = re.compile(r"[A-Za-z0-9._-]+")
_HEX = re.compile(r"[0-9a-f]{64}")
_BLOB = re.compile(r"blobs/sha256/(?P<hex>[0-9a-f]{64})(?:\.part-(?P<index>[0-9]{4,}))?")
_VOLUME_DIR = re.compile(r"vol-(?P<number>[0-9]{3,})")
_CHUNK = 1024 * 1024
# A blob is split only when at least this much room (or a 64th of a volume, if less) is left
# in a volume; a smaller rest of a volume stays empty rather than holding a sliver of a part.
MIN_PART = 64 * 1024
# Room kept in every volume for the signature document and volume.json (both ~0.3 KiB).
_SIGNATURE_ROOM = 1024
_VOLUME_ROOM = 64
_SIZE = re.compile(r"(?P<number>[0-9]+)(?P<unit>[KMGT]?)(?:i?B)?", re.IGNORECASE)


class BundleError(AirgapError):
    """A bundle could not be written, or is refused: the message names the file and cause."""


def volume_name(number: int) -> str:
    return f"vol-{number:03d}"


def blob_file(digest: str) -> str:
    """``sha256:<hex>`` → the path of that blob (or manifest) in a bundle."""
    algorithm, _, hexdigest = digest.partition(":")
    if algorithm != "sha256" or not _HEX.fullmatch(hexdigest):
        raise BundleError(f"{digest}: a bundle stores sha256 digests only")
    return f"{BLOBS}/{hexdigest}"


def parse_size(text: str) -> int:
    """``4G``, ``700M``, ``512K``, ``1048576``: bytes (binary units: K is 1024)."""
    match = _SIZE.fullmatch(text.strip())
    if not match:
        raise ValueError(f"volume size {text!r}: expected a number with K, M, G or T (e.g. 4G)")
    power = " KMGT".index(match["unit"].upper() or " ")
    return int(match["number"]) << (10 * power)


# -- the file manifest -----------------------------------------------------------------------


@dataclass(frozen=True)
class Part:
    """One piece of a blob split across volumes: ``index`` of ``count``, of file ``of``."""

    of: str
    index: int
    count: int

    def to_json(self) -> dict[str, Any]:
        return {"of": self.of, "index": self.index, "count": self.count}


@dataclass(frozen=True)
class FileEntry:
    """A file of the bundle as MANIFEST.json lists it."""

    path: str
    size: int
    sha256: str
    volume: int
    part: Part | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "size": self.size,
            "sha256": self.sha256,
            "volume": self.volume,
            "part": self.part.to_json() if self.part else None,
        }


def manifest_bytes(
    files: Iterable[FileEntry],
    *,
    kind: str,
    created: str,
    lock_digest: str,
    volumes: int,
    base: dict[str, Any] | None,
) -> bytes:
    """MANIFEST.json: sorted keys, files sorted by path, one per line (readable, diffable)."""
    head = {
        "format": FORMAT,
        "kind": kind,
        "created": created,
        "lock_digest": lock_digest,
        "volumes": volumes,
        "base": base,
    }
    lines = [json.dumps(item.to_json(), sort_keys=True) for item in sorted(files, key=_path_key)]
    body = json.dumps(head, sort_keys=True)[:-1]
    return (body + ', "files": [\n' + ",\n".join(lines) + "\n]}\n").encode()


def _path_key(item: FileEntry) -> str:
    return item.path


def check_path(path: Any, where: str) -> str:
    """A relative POSIX path of ``[A-Za-z0-9._-]+`` components, no ``.``/``..``, or refused."""
    if not isinstance(path, str) or not path:
        raise BundleError(f"{where}: path {path!r} is not a relative file name")
    if path.startswith("/"):
        raise BundleError(f"{where}: absolute path {path!r} refused")
    for component in path.split("/"):
        if component in (".", ".."):
            raise BundleError(f"{where}: path {path!r} refused: '{component}' component")
        if not _COMPONENT.fullmatch(component):
            raise BundleError(f"{where}: path {path!r} refused: component {component!r}")
    if path in CONTROL_FILES:
        raise BundleError(f"{where}: {path} cannot be listed in {MANIFEST}")
    return path


def parse_manifest(data: bytes, where: str) -> tuple[dict[str, Any], dict[str, FileEntry]]:
    """MANIFEST.json's document and its files by path; every field checked."""
    try:
        document = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BundleError(f"{where}: not JSON ({exc})") from exc
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        found = document.get("format") if isinstance(document, dict) else None
        raise BundleError(f"{where}: format {found!r}, expected {FORMAT}")
    if document.get("kind") not in KINDS:
        raise BundleError(f"{where}: kind {document.get('kind')!r}, expected full or delta")
    volumes = document.get("volumes")
    if isinstance(volumes, bool) or not isinstance(volumes, int) or volumes < 1:
        raise BundleError(f"{where}: volumes {volumes!r} is not a positive number")
    lock_digest = document.get("lock_digest")
    if not isinstance(lock_digest, str) or not _HEX.fullmatch(lock_digest.removeprefix("sha256:")):
        raise BundleError(f"{where}: lock_digest {lock_digest!r} is not a sha256 digest")
    base = document.get("base")
    if base is not None and not isinstance(base, dict):
        raise BundleError(f"{where}: base is neither null nor an object")
    listed = document.get("files")
    if not isinstance(listed, list):
        raise BundleError(f"{where}: files is not a list")
    files: dict[str, FileEntry] = {}
    for position, item in enumerate(listed):
        entry = _file_entry(item, f"{where}: files[{position}]", volumes)
        if entry.path in files:
            raise BundleError(f"{where}: {entry.path} is listed twice")
        files[entry.path] = entry
    _check_parts(files, where)
    for path in FRONT_FILES:
        found = files.get(path)
        if found is None or found.volume != 1:
            raise BundleError(f"{where}: {path} is not listed in volume 1")
    return document, files


def _file_entry(item: Any, where: str, volumes: int) -> FileEntry:
    if not isinstance(item, dict):
        raise BundleError(f"{where}: not an object")
    path = check_path(item.get("path"), where)
    where = f"{where} ({path})"
    size, digest, volume = item.get("size"), item.get("sha256"), item.get("volume")
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise BundleError(f"{where}: size {size!r} is not a byte count")
    if not isinstance(digest, str) or not _HEX.fullmatch(digest):
        raise BundleError(f"{where}: sha256 {digest!r} is not 64 hex digits")
    if isinstance(volume, bool) or not isinstance(volume, int) or not 1 <= volume <= volumes:
        raise BundleError(f"{where}: volume {volume!r} is not one of 1..{volumes}")
    part = item.get("part")
    blob = _BLOB.fullmatch(path)
    if part is None:
        if blob and blob["index"]:
            raise BundleError(f"{where}: a part's name without a part field")
        if blob and blob["hex"] != digest:
            raise BundleError(f"{where}: listed sha256 {digest} is not the blob's name")
        return FileEntry(path, size, digest, volume)
    if not isinstance(part, dict):
        raise BundleError(f"{where}: part is not an object")
    of, index, count = part.get("of"), part.get("index"), part.get("count")
    if not isinstance(of, str) or not _BLOB.fullmatch(of) or ".part-" in of:
        raise BundleError(f"{where}: part of {of!r}: parts are of blobs/sha256/<hex> only")
    if (
        not isinstance(index, int)
        or not isinstance(count, int)
        or isinstance(index, bool)
        or isinstance(count, bool)
        or not 1 <= index <= count
    ):
        raise BundleError(f"{where}: part {index!r} of {count!r} is not a part number")
    if path != f"{of}.part-{index:04d}":
        raise BundleError(f"{where}: part {index} of {of} must be named {of}.part-{index:04d}")
    return FileEntry(path, size, digest, volume, Part(of, index, count))


def _check_parts(files: dict[str, FileEntry], where: str) -> None:
    """Every split blob lists all its parts, with one count, and is not also listed whole."""
    groups: dict[str, list[FileEntry]] = {}
    for entry in files.values():
        if entry.part:
            groups.setdefault(entry.part.of, []).append(entry)
    for of, parts in groups.items():
        if of in files:
            raise BundleError(f"{where}: {of} is listed whole and in parts")
        count = parts[0].part.count if parts[0].part else 0
        indexes = sorted(p.part.index for p in parts if p.part and p.part.count == count)
        if indexes != list(range(1, count + 1)) or len(parts) != count:
            raise BundleError(f"{where}: {of}: parts listed do not make 1..{count}")


def split_blobs(files: dict[str, FileEntry]) -> dict[str, list[FileEntry]]:
    """Every split blob's parts, in order, by the blob's path."""
    parts: dict[str, list[FileEntry]] = {}
    for entry in files.values():
        if entry.part:
            parts.setdefault(entry.part.of, []).append(entry)
    for pieces in parts.values():
        pieces.sort(key=lambda entry: entry.part.index if entry.part else 0)
    return parts


# -- planning the volumes --------------------------------------------------------------------


@dataclass(frozen=True)
class Placement:
    """Where bytes ``offset``..``offset + size`` of logical file ``of`` go: ``path`` in
    ``volume`` (``part`` None: the whole file)."""

    path: str
    of: str
    offset: int
    size: int
    volume: int
    part: Part | None = None


@dataclass(frozen=True)
class Layout:
    """Every file's place: volume 1's front files first, then blobs in the order given."""

    placements: tuple[Placement, ...]
    volumes: int
    volume_size: int | None  # None: one directory, no vol-NNN

    @functools.cached_property
    def _by_file(self) -> dict[str, list[Placement]]:
        found: dict[str, list[Placement]] = {}
        for placement in self.placements:
            found.setdefault(placement.of, []).append(placement)
        return found

    def of(self, path: str) -> list[Placement]:
        """Where the file ``path`` goes: one placement, or its parts in order."""
        return self._by_file.get(path, [])

    def split(self, path: str) -> bool:
        return any(placement.part is not None for placement in self.of(path))

    def volume_bytes(self) -> dict[int, int]:
        used = dict.fromkeys(range(1, self.volumes + 1), 0)
        for placement in self.placements:
            used[placement.volume] += placement.size
        return used


def plan_layout(
    front: Sequence[tuple[str, int]],
    blobs: Sequence[tuple[str, int]],
    volume_size: int | None,
    *,
    kind: str = "full",
    base: dict[str, Any] | None = None,
) -> Layout:
    """Place ``front`` (volume 1, never split) then ``blobs`` (path, size).

    A volume's size counts every file in it: MANIFEST.json, its signature and volume.json,
    whose sizes depend on the plan, so the plan is redone with the manifest's exact size
    (its text has the same length whatever the checksums) until it no longer grows.
    """
    if volume_size is None:
        placements = tuple(Placement(p, p, 0, s, 1) for p, s in [*front, *blobs])
        return Layout(placements, 1, None)
    reserve = _SIGNATURE_ROOM + _VOLUME_ROOM
    for _ in range(20):
        layout = _place(front, blobs, volume_size, reserve)
        needed = _SIGNATURE_ROOM + _VOLUME_ROOM + _manifest_size(layout, kind, base)
        if needed <= reserve:
            return layout
        reserve = needed
    raise BundleError(f"volume size {volume_size}: the volume plan does not settle")


def _manifest_size(layout: Layout, kind: str, base: dict[str, Any] | None) -> int:
    files = [FileEntry(p.path, p.size, "0" * 64, p.volume, p.part) for p in layout.placements]
    created = "2000-01-01T00:00:00Z"
    lock = "sha256:" + "0" * 64
    return len(
        manifest_bytes(
            files, kind=kind, created=created, lock_digest=lock, volumes=layout.volumes, base=base
        )
    )


def _place(
    front: Sequence[tuple[str, int]],
    blobs: Sequence[tuple[str, int]],
    volume_size: int,
    reserve: int,
) -> Layout:
    room = volume_size - reserve
    if room <= 0:
        raise BundleError(f"volume size {volume_size} bytes leaves no room for the files")
    front_bytes = sum(size for _, size in front)
    if front_bytes > room:
        raise BundleError(
            f"volume size {volume_size} bytes: volume 1 needs {front_bytes + reserve} bytes for "
            f"the layout, the lock and the manifest"
        )
    placements = [Placement(path, path, 0, size, 1) for path, size in front]
    volume, left = 1, room - front_bytes
    smallest = min(MIN_PART, volume_size // 64)
    for path, size in blobs:
        if size <= left:
            placements.append(Placement(path, path, 0, size, volume))
            left -= size
            continue
        if left < min(smallest, size):
            volume, left = volume + 1, room
            if size <= left:
                placements.append(Placement(path, path, 0, size, volume))
                left -= size
                continue
        pieces = []
        offset = 0
        while offset < size:
            if left == 0:
                volume, left = volume + 1, room
            take = min(left, size - offset)
            pieces.append((volume, offset, take))
            offset += take
            left -= take
        count = len(pieces)
        for index, (where, start, take) in enumerate(pieces, 1):
            name = f"{path}.part-{index:04d}"
            placements.append(Placement(name, path, start, take, where, Part(path, index, count)))
    return Layout(tuple(placements), volume, volume_size)


# -- writing ---------------------------------------------------------------------------------


def write_durably(path: Path, data: bytes) -> None:
    """Write ``path`` and wait until it is on the medium (a drive may be pulled next)."""
    with path.open("wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def sync_directory(path: Path) -> None:
    """Wait until the names in directory ``path`` are on the medium."""
    descriptor = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


class BundleWriter:
    """Writes a planned bundle under ``root`` (the export's ``DIR.partial``).

    Whole files are written where :meth:`target` says (a download streams straight there);
    a split blob is written whole to :meth:`staging` first and cut into its parts by
    :meth:`place_split`. :meth:`finish` writes MANIFEST.json, its signature and volume.json
    into every volume, once every file has its checksum.
    """

    def __init__(self, root: Path, layout: Layout) -> None:
        self.root = root
        self.layout = layout
        self._sums: dict[str, str] = {}
        self._staging = root / ".staging"
        for number in range(1, layout.volumes + 1):
            self.volume_dir(number).mkdir(parents=True, exist_ok=True)

    def volume_dir(self, number: int) -> Path:
        if self.layout.volume_size is None:
            return self.root
        return self.root / volume_name(number)

    def target(self, path: str) -> Path:
        """Where the whole file ``path`` goes (a blob not split)."""
        (placement,) = self.layout.of(path)
        destination = self.volume_dir(placement.volume) / placement.path
        destination.parent.mkdir(parents=True, exist_ok=True)
        return destination

    def staging(self, path: str) -> Path:
        """A scratch file for a blob that is split after it arrived."""
        self._staging.mkdir(exist_ok=True)
        return self._staging / path.replace("/", "_")

    def put_bytes(self, path: str, data: bytes) -> None:
        if self.layout.split(path):
            staged = self.staging(path)
            staged.write_bytes(data)
            self.place_split(path, staged)
            return
        write_durably(self.target(path), data)
        self.record(path, hashlib.sha256(data).hexdigest())

    def record(self, path: str, sha256: str) -> None:
        """The checksum of the whole file ``path``, written where :meth:`target` said."""
        self._sums[path] = sha256

    def place_split(self, path: str, source: Path) -> None:
        """Cut ``source`` (the whole blob) into its parts, then remove it."""
        with source.open("rb") as handle:
            for placement in self.layout.of(path):
                destination = self.volume_dir(placement.volume) / placement.path
                destination.parent.mkdir(parents=True, exist_ok=True)
                hasher = hashlib.sha256()
                handle.seek(placement.offset)
                left = placement.size
                with destination.open("wb") as out:
                    while left:
                        chunk = handle.read(min(_CHUNK, left))
                        if not chunk:
                            raise BundleError(f"{source}: ended before {placement.path}'s bytes")
                        hasher.update(chunk)
                        out.write(chunk)
                        left -= len(chunk)
                    out.flush()
                    os.fsync(out.fileno())
                self._sums[placement.path] = hasher.hexdigest()
        source.unlink()

    def finish(
        self,
        key: TransferKey,
        *,
        kind: str,
        created: str,
        lock_digest: str,
        base: dict[str, Any] | None,
    ) -> bytes:
        """Write MANIFEST.json, its signature and volume.json in every volume; the manifest."""
        missing = [p.path for p in self.layout.placements if p.path not in self._sums]
        if missing:
            raise BundleError(f"{self.root}: {len(missing)} files not written, first {missing[0]}")
        files = [
            FileEntry(p.path, p.size, self._sums[p.path], p.volume, p.part)
            for p in self.layout.placements
        ]
        data = manifest_bytes(
            files,
            kind=kind,
            created=created,
            lock_digest=lock_digest,
            volumes=self.layout.volumes,
            base=base,
        )
        signature = key.sign(data, PURPOSE)
        shutil.rmtree(self._staging, ignore_errors=True)
        for number in range(1, self.layout.volumes + 1):
            directory = self.volume_dir(number)
            write_durably(directory / MANIFEST, data)
            write_durably(directory / SIGNATURE, signature)
            volume = {"volume": number, "volumes": self.layout.volumes}
            write_durably(directory / VOLUME, (json.dumps(volume, sort_keys=True) + "\n").encode())
        # Files were synced as they were written; their names are in the directories.
        for walked, _, _ in os.walk(self.root):
            sync_directory(Path(walked))
        return data


# -- reading and checking --------------------------------------------------------------------


@dataclass
class Volume:
    """One volume directory as found: its number (from volume.json) and control files."""

    path: Path
    number: int
    volumes: int
    manifest: bytes
    signature: bytes | None


def find_volumes(paths: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """The volume directories ``paths`` name: a volume itself, or a bundle directory of
    ``vol-NNN`` directories (which may hold nothing else)."""
    found: list[Path] = []
    for given in paths:
        path = Path(given)
        _require_directory(path)
        if os.path.lexists(path / MANIFEST):
            found.append(path)
            continue
        entries = sorted(os.scandir(path), key=lambda entry: entry.name)
        if not entries:
            raise BundleError(f"{path}: empty directory, not a bundle")
        if not any(_VOLUME_DIR.fullmatch(entry.name) for entry in entries):
            raise BundleError(f"{path / MANIFEST}: missing (not a bundle or volume directory)")
        for entry in entries:
            if not _VOLUME_DIR.fullmatch(entry.name) or not entry.is_dir(follow_symlinks=False):
                raise BundleError(
                    f"{path / entry.name}: not a volume directory (a bundle directory holds "
                    f"{MANIFEST} or vol-NNN directories only)"
                )
            found.append(path / entry.name)
    seen: set[Path] = set()
    unique = []
    for path in found:
        key = path.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(path)
    return unique


def _require_directory(path: Path) -> None:
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        raise BundleError(f"{path}: no such bundle or volume directory") from None
    except OSError as exc:
        raise BundleError(f"{path}: {exc.strerror or exc}") from exc
    if stat.S_ISLNK(mode):
        raise BundleError(f"{path}: a symbolic link, refused (give the directory itself)")
    if not stat.S_ISDIR(mode):
        raise BundleError(f"{path}: not a directory")


def _open_regular(path: Path, display: str) -> io.BufferedReader:
    """Open a file that must be a regular file with one link, never following a link."""
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        raise BundleError(f"{display}: missing") from None
    except OSError as exc:
        if os.path.islink(path):
            raise BundleError(f"{display}: a symbolic link, refused") from exc
        raise BundleError(f"{display}: cannot open ({exc.strerror or exc})") from exc
    handle = os.fdopen(descriptor, "rb")
    try:
        _check_inode(os.fstat(descriptor), display)
    except BaseException:
        handle.close()
        raise
    return handle


def _check_inode(status: os.stat_result, display: str) -> None:
    mode = status.st_mode
    if stat.S_ISLNK(mode):
        raise BundleError(f"{display}: a symbolic link, refused")
    if not stat.S_ISREG(mode):
        raise BundleError(f"{display}: not a regular file ({_kind(mode)}), refused")
    if status.st_nlink != 1:
        raise BundleError(
            f"{display}: has {status.st_nlink} hard links, refused (a bundle file has one)"
        )


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a fifo"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISLNK, "a symbolic link"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def _read_small(path: Path, display: str, limit: int) -> bytes:
    with _open_regular(path, display) as handle:
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise BundleError(f"{display}: larger than {limit} bytes, refused")
    return data


# MANIFEST.json of a million files is ~250 MB; anything larger is not a bundle of ours.
_MANIFEST_LIMIT = 512 * 1024 * 1024
# The lock and contents of a million entries stay under this decompressed; more is a bomb.
_DECOMPRESSED_LIMIT = 1024 * 1024 * 1024


def compress(data: bytes) -> bytes:
    """gzip of ``data``, deterministic (no name, mtime 0): the same lock, the same bytes."""
    return gzip.compress(data, 9, mtime=0)


def decompress(data: bytes, display: str, limit: int | None = None) -> bytes:
    """The one gzip member in ``data``, refused when corrupt, truncated, followed by other
    bytes, or larger than ``limit`` once decompressed (never inflated past it)."""
    limit = _DECOMPRESSED_LIMIT if limit is None else limit
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = inflater.decompress(data, limit + 1)
    except zlib.error as exc:
        raise BundleError(f"{display}: not valid gzip ({exc})") from exc
    if len(out) > limit:
        raise BundleError(f"{display}: decompresses to more than {limit} bytes, refused")
    if not inflater.eof:
        raise BundleError(f"{display}: gzip data truncated")
    if inflater.unused_data:
        raise BundleError(f"{display}: {len(inflater.unused_data)} bytes after the gzip data")
    return out


_SMALL_LIMIT = 64 * 1024


def read_volume(path: Path) -> Volume:
    """A volume's control files: volume.json, MANIFEST.json and its signature."""
    text = _read_small(path / VOLUME, f"{path / VOLUME}", _SMALL_LIMIT)
    try:
        document = json.loads(text)
        number, volumes = document["volume"], document["volumes"]
    except (ValueError, UnicodeDecodeError, TypeError, KeyError) as exc:
        raise BundleError(f"{path / VOLUME}: not a volume description ({exc})") from exc
    if any(isinstance(n, bool) or not isinstance(n, int) for n in (number, volumes)) or not (
        1 <= number <= volumes
    ):
        raise BundleError(f"{path / VOLUME}: volume {number!r} of {volumes!r} is not a volume")
    manifest = _read_small(path / MANIFEST, f"{path / MANIFEST}", _MANIFEST_LIMIT)
    signature: bytes | None = None
    if os.path.lexists(path / SIGNATURE):  # without one, the check says "not signed"
        signature = _read_small(path / SIGNATURE, f"{path / SIGNATURE}", _SMALL_LIMIT)
    return Volume(path, number, volumes, manifest, signature)


def _walk(volume: Volume) -> Iterator[tuple[str, os.stat_result]]:
    """Every file under the volume as (relative path, lstat); links and devices refused
    here, wherever they are."""
    stack = [""]
    while stack:
        relative = stack.pop()
        directory = volume.path / relative if relative else volume.path
        try:
            entries = list(os.scandir(directory))
        except OSError as exc:
            raise BundleError(f"{directory}: cannot list ({exc.strerror or exc})") from exc
        for entry in entries:
            name = f"{relative}/{entry.name}" if relative else entry.name
            display = f"{volume.path / name}"
            status = entry.stat(follow_symlinks=False)
            if stat.S_ISDIR(status.st_mode):
                stack.append(name)
                continue
            _check_inode(status, display)
            yield name, status


@dataclass
class Checked:
    """What a check found: the manifest, the signer, the volumes looked at, bytes read."""

    manifest_bytes: bytes
    document: dict[str, Any]
    files: dict[str, FileEntry]
    key_id: str
    volumes: dict[int, Path]
    bytes_read: int = 0
    files_checked: int = 0
    problems: list[str] = field(default_factory=list)
    parts: dict[str, list[FileEntry]] = field(init=False)  # split blobs by path

    def __post_init__(self) -> None:
        self.parts = split_blobs(self.files)

    @functools.cached_property
    def id(self) -> str:
        # Computed once: the importer names the bundle in every ledger row (thousands of
        # them), and MANIFEST.json is hundreds of KiB at 200 images.
        return f"sha256:{hashlib.sha256(self.manifest_bytes).hexdigest()}"

    @property
    def count(self) -> int:
        return int(self.document["volumes"])


def check_volumes(paths: Sequence[str | os.PathLike[str]], trusted: TrustedKeys) -> Checked:
    """Check the volumes ``paths`` name (any subset of a bundle's): the signature, that each
    holds exactly the files listed for it, each with its size and SHA-256, and the split
    blobs whose parts are all among them. The first problem raises :class:`BundleError`."""
    directories = find_volumes(paths)
    if not directories:
        raise BundleError("no bundle or volume directory given")
    volumes = [read_volume(path) for path in directories]
    first = volumes[0]
    signer = trusted.verify(
        first.manifest, first.signature, purpose=PURPOSE, what=f"{first.path / MANIFEST}"
    )
    by_number: dict[int, Path] = {}
    for volume in volumes:
        if volume.manifest != first.manifest:
            raise BundleError(
                f"{volume.path / MANIFEST}: differs from {first.path / MANIFEST} "
                "(volumes of different bundles?)"
            )
        if volume.signature != first.signature:
            trusted.verify(
                volume.manifest,
                volume.signature,
                purpose=PURPOSE,
                what=f"{volume.path / MANIFEST}",
            )
        if volume.number in by_number:
            raise BundleError(
                f"{volume.path}: volume {volume.number} given twice "
                f"(also {by_number[volume.number]})"
            )
        by_number[volume.number] = volume.path
    document, files = parse_manifest(first.manifest, f"{first.path / MANIFEST}")
    for volume in volumes:
        if volume.volumes != document["volumes"]:
            raise BundleError(
                f"{volume.path / VOLUME}: says {volume.volumes} volumes, "
                f"{MANIFEST} says {document['volumes']}"
            )
    checked = Checked(first.manifest, document, files, signer, dict(sorted(by_number.items())))
    for volume in volumes:
        _check_listing(volume, files)
    _check_contents(checked)
    return checked


def _check_listing(volume: Volume, files: dict[str, FileEntry]) -> None:
    """The volume holds exactly its listed files (and the control files), sizes as listed."""
    expected = {path: entry for path, entry in files.items() if entry.volume == volume.number}
    for name, status in sorted(_walk(volume)):
        display = f"{volume.path / name}"
        if name in CONTROL_FILES:
            continue
        entry = expected.pop(name, None)
        if entry is None:
            elsewhere = files.get(name)
            where = f" (listed in volume {elsewhere.volume})" if elsewhere else ""
            raise BundleError(f"{display}: not listed in {MANIFEST} for this volume{where}")
        if status.st_size != entry.size:
            cause = "truncated" if status.st_size < entry.size else "longer than listed"
            raise BundleError(
                f"{display}: {status.st_size} bytes, {MANIFEST} says {entry.size} ({cause})"
            )
    if expected:
        path = min(expected)
        raise BundleError(
            f"{volume.path / path}: missing (listed in {MANIFEST}, {expected[path].size} bytes)"
        )


def _check_contents(checked: Checked) -> None:
    """Hash every file of the volumes given, in parallel; a split blob whose parts are all
    here is also hashed whole against its name. The first problem in path order raises."""
    groups: list[tuple[str, list[FileEntry]]] = []
    seen: set[str] = set()
    for path, entry in sorted(checked.files.items()):
        if entry.part is None:
            if entry.volume in checked.volumes:
                groups.append((path, [entry]))
            continue
        if entry.part.of in seen:
            continue
        seen.add(entry.part.of)
        parts = [p for p in checked.parts[entry.part.of] if p.volume in checked.volumes]
        if parts:
            groups.append((entry.part.of, parts))
    workers = min(4, os.cpu_count() or 1, max(1, len(groups)))
    with ThreadPoolExecutor(workers) as pool:
        results = list(pool.map(lambda group: _hash_group(checked, *group), groups))
    for problem, read, count in results:
        checked.bytes_read += read
        checked.files_checked += count
        if problem:
            checked.problems.append(problem)
    if checked.problems:
        more = len(checked.problems) - 1
        tail = f" (and {more} more problem{'s' if more > 1 else ''})" if more else ""
        raise BundleError(checked.problems[0] + tail)


def _hash_group(checked: Checked, of: str, entries: list[FileEntry]) -> tuple[str | None, int, int]:
    """(problem, bytes read, files) for a whole file, or the parts of ``of`` found here."""
    whole = hashlib.sha256()
    first = entries[0].part
    complete = first is not None and len(entries) == first.count
    read = 0
    for entry in entries:
        display = f"{checked.volumes[entry.volume] / entry.path}"
        hasher = hashlib.sha256()
        size = 0
        with _open_regular(checked.volumes[entry.volume] / entry.path, display) as handle:
            while chunk := handle.read(_CHUNK):
                hasher.update(chunk)
                if complete:
                    whole.update(chunk)
                size += len(chunk)
        read += size
        if size != entry.size:
            return f"{display}: {size} bytes, {MANIFEST} says {entry.size}", read, 0
        if hasher.hexdigest() != entry.sha256:
            return (
                f"{display}: sha256 {hasher.hexdigest()}, {MANIFEST} says {entry.sha256} "
                "(changed after signing)",
                read,
                0,
            )
    if complete:
        expected = _BLOB.fullmatch(of)
        if expected and whole.hexdigest() != expected["hex"]:
            return f"{of}: its parts reassemble to sha256:{whole.hexdigest()}", read, 0
    return None, read, len(entries)


# -- the checked bundle ----------------------------------------------------------------------


@dataclass
class Bundle:
    """A bundle :func:`open_bundle` checked whole: every volume present, every file as
    signed. Blobs and manifests are read by digest (split ones with their parts chained)."""

    checked: Checked
    lock_text: str
    contents: dict[str, Any]

    @property
    def id(self) -> str:
        """``sha256:<hex of MANIFEST.json>``."""
        return self.checked.id

    @property
    def manifest(self) -> dict[str, Any]:
        return self.checked.document

    @property
    def kind(self) -> str:
        return str(self.manifest["kind"])

    @property
    def key_id(self) -> str:
        """The transfer key that signed it."""
        return self.checked.key_id

    @property
    def volumes(self) -> dict[int, Path]:
        return self.checked.volumes

    def _pieces(self, digest: str) -> list[FileEntry]:
        try:
            path = blob_file(digest)
        except BundleError:
            return []
        entry = self.checked.files.get(path)
        return [entry] if entry else self.checked.parts.get(path, [])

    def has(self, digest: str) -> bool:
        return bool(self._pieces(digest))

    def blob_size(self, digest: str) -> int:
        pieces = self._pieces(digest)
        if not pieces:
            raise BundleError(f"{digest}: not in bundle {self.id}")
        return sum(piece.size for piece in pieces)

    def blob_path(self, digest: str) -> Path:
        """The file holding ``digest`` whole; a split blob has none (read it with
        :meth:`open_blob`)."""
        pieces = self._pieces(digest)
        if not pieces:
            raise BundleError(f"{digest}: not in bundle {self.id}")
        if pieces[0].part is not None:
            raise BundleError(f"{digest}: stored in {len(pieces)} parts, read it with open_blob")
        return self.volumes[pieces[0].volume] / pieces[0].path

    def open_blob(self, digest: str) -> BinaryIO:
        """``digest``'s bytes, its parts chained; seekable (a resumed upload starts midway)."""
        pieces = self._pieces(digest)
        if not pieces:
            raise BundleError(f"{digest}: not in bundle {self.id}")
        files = [(self.volumes[piece.volume] / piece.path, piece.size) for piece in pieces]
        return io.BufferedReader(_Chain(files), _CHUNK)

    def read_blob(self, digest: str) -> bytes:
        with self.open_blob(digest) as handle:
            return handle.read()


class _Chain(io.RawIOBase):
    """Files read one after the other as one stream, seekable."""

    def __init__(self, files: list[tuple[Path, int]]) -> None:
        super().__init__()
        self._files = files
        self._size = sum(size for _, size in files)
        self._position = 0
        self._current: tuple[int, io.BufferedReader] | None = None

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self._size}[whence]
        self._position = max(0, base + offset)
        return self._position

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        start = 0
        for number, (path, size) in enumerate(self._files):
            if self._position < start + size:
                if self._current is None or self._current[0] != number:
                    self._close_current()
                    self._current = (number, _open_regular(path, str(path)))
                handle = self._current[1]
                handle.seek(self._position - start)
                count = handle.readinto(view[: min(len(view), start + size - self._position)])
                self._position += count
                return int(count)
            start += size
        return 0

    def _close_current(self) -> None:
        if self._current is not None:
            self._current[1].close()
            self._current = None

    def close(self) -> None:
        self._close_current()
        super().close()


def open_bundle(paths: Sequence[str | os.PathLike[str]], trusted: TrustedKeys) -> Bundle:
    """The bundle ``paths`` name, after every check (see the module docstring): signature,
    path safety, every file's size and SHA-256, all volumes present, parts reassembling, the
    lock as listed. Nothing of an unchecked bundle is ever returned."""
    checked = check_volumes(paths, trusted)
    missing = [n for n in range(1, checked.count + 1) if n not in checked.volumes]
    if missing:
        raise BundleError(
            f"bundle {checked.id}: volume{'s' if len(missing) > 1 else ''} "
            f"{', '.join(str(n) for n in missing)} of {checked.count} missing "
            f"(give every {volume_name(1)}..{volume_name(checked.count)})"
        )
    front = checked.volumes[1]
    stored = {
        path: _read_small(front / path, f"{front / path}", _MANIFEST_LIMIT)
        for path in (LOCK, CONTENTS)
    }
    # Read again after the check: bytes that differ now were swapped under it.
    for path, data in stored.items():
        if hashlib.sha256(data).hexdigest() != checked.files[path].sha256:
            raise BundleError(f"{front / path}: changed while the bundle was being checked")
    lock = decompress(stored[LOCK], f"{front / LOCK}")
    contents_bytes = decompress(stored[CONTENTS], f"{front / CONTENTS}")
    lock_digest = checked.document["lock_digest"]
    if f"sha256:{hashlib.sha256(lock).hexdigest()}" != lock_digest:
        raise BundleError(
            f"{front / LOCK}: decompresses to sha256:{hashlib.sha256(lock).hexdigest()}, "
            f"MANIFEST.json lock_digest says {lock_digest}"
        )
    try:
        lock_text = lock.decode("utf-8")
        contents = json.loads(contents_bytes)
    except (UnicodeDecodeError, ValueError) as exc:
        raise BundleError(f"{front}: {LOCK} or {CONTENTS} unreadable ({exc})") from exc
    if not isinstance(contents, dict) or contents.get("format") != CONTENTS_FORMAT:
        raise BundleError(f"{front / CONTENTS}: format is not {CONTENTS_FORMAT}")
    return Bundle(checked, lock_text, contents)
