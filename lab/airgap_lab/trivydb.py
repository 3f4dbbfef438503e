"""The lab's Trivy vulnerability DB: a small but real ``trivy.db`` written without Trivy.

Trivy reads its DB from a bbolt file (go.etcd.io/bbolt) in ``<cache-dir>/db/`` beside a
``metadata.json``; upstream publishes both as the OCI artifact ``aquasecurity/trivy-db:2``.
The lab cannot download that artifact, and a copy of it would be 50 MB of facts about other
software, so the sample upstream serves one written here: one advisory that makes
``sample/vulnerable`` fail (its busybox is below the fixed version) and nothing that matches
any other sample image.

The bbolt file is written the way bbolt's own ``Open`` lays out a fresh database (meta pages
0 and 1, an empty freelist on page 2, the root bucket's leaf on page 3; an empty tree is
byte-identical to trivy-db's ``pkg/db/testdata/normal.db``), followed by one leaf page per
bucket that is not inlined. Each bucket is a single leaf, continued on overflow pages when it
is larger than a page: bbolt reads that as it reads any node its writer could not split.
Nothing here depends on the clock, so the same ``updated_at`` gives the same bytes.
"""

from __future__ import annotations

import io
import json
import struct
import tarfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from airgap_lab.sample import VULNERABLE_OS, VULNERABLE_PACKAGE, gzip_stored

PAGE_SIZE = 4096
SCHEMA_VERSION = 2
# The artifact's media types, as Trivy's --db-repository download expects them.
CONFIG_MEDIA_TYPE = "application/vnd.aquasec.trivy.config.v1+json"
LAYER_MEDIA_TYPE = "application/vnd.aquasec.trivy.db.layer.v1.tar+gzip"

_MAGIC = 0xED0CDAED
_FORMAT_VERSION = 2
_PAGE_HEADER = struct.Struct("<QHHI")  # id, flags, count, overflow
_ELEMENT = struct.Struct("<IIII")  # flags, pos (from the element), key size, value size
_BUCKET_HEADER = struct.Struct("<QQ")  # root page (0: inline), sequence
_META = struct.Struct("<IIII16sQQQ")  # magic, version, page size, flags, root, freelist, pgid, txid
_LEAF_PAGE = 0x02
_META_PAGE = 0x04
_FREELIST_PAGE = 0x10
_BUCKET_ELEMENT = 0x01
_FREELIST_PGID = 2
_ROOT_PGID = 3
# bbolt keeps a bucket inside its parent's value when it has no sub-buckets and its leaf
# would fill at most a quarter page; doing the same keeps small DBs a handful of pages.
_MAX_INLINE = PAGE_SIZE // 4
_MAX_KEY = 32768
_MAX_ELEMENTS = 0xFFFF

# A bucket: key (str or bytes) -> value bytes, or key -> nested bucket. Any, because a
# Mapping's key type is invariant: a dict[str, ...] would not be a Mapping[str | bytes, ...].
Tree = Mapping[Any, "bytes | Tree"]

# Made up on purpose: a real ID would claim a fact about busybox that this DB cannot back,
# and the lab's results must not change when the real advisory's details do. CVE IDs carry
# the year they were reserved in, so 2099 cannot be confused with a published one.
FIXTURE_VULNERABILITY_ID = "CVE-2099-0001"


@dataclass(frozen=True)
class Advisory:
    """One vulnerability of one OS package, as trivy-db stores it for an OS data source."""

    vulnerability_id: str
    os: tuple[str, str]  # ("alpine", "3.22"): the DB names the bucket "alpine 3.22"
    package: str
    fixed_version: str
    severity: str  # UNKNOWN, LOW, MEDIUM, HIGH, CRITICAL
    title: str
    description: str
    references: tuple[str, ...] = ()


FIXTURE = (
    Advisory(
        vulnerability_id=FIXTURE_VULNERABILITY_ID,
        os=VULNERABLE_OS,
        package=VULNERABLE_PACKAGE.name,
        fixed_version=VULNERABLE_PACKAGE.fixed_version,
        # CRITICAL: the scanner's default policy (fail_on: CRITICAL) must fail the image.
        severity="CRITICAL",
        title=f"{VULNERABLE_PACKAGE.name}: lab fixture vulnerability (not a real advisory)",
        description=(
            "Written by the Airgapped Registry lab (airgap_lab.trivydb) so that "
            "sample/vulnerable fails its scan. It describes no real flaw."
        ),
        references=(f"https://sample.invalid/advisories/{FIXTURE_VULNERABILITY_ID}",),
    ),
)

_SEVERITIES = ("UNKNOWN", "LOW", "MEDIUM", "HIGH", "CRITICAL")
# trivy-db's data sources for OS families (pkg/vulnsrc/*): trivy looks the vendor severity
# up under this ID and reports the name and URL beside each finding.
_DATA_SOURCES = {
    "alpine": {
        "ID": "alpine",
        "Name": "Alpine Secdb (Airgapped Registry lab fixture)",
        "URL": "https://sample.invalid/trivy-db/alpine",
    },
}


def write_db(path: Path, *, updated_at: datetime, advisories: Iterable[Advisory] = FIXTURE) -> None:
    """Write ``trivy.db`` holding ``advisories`` to ``path``, and ``metadata.json`` beside it.

    Trivy reads both from ``<cache-dir>/db/`` (and refuses ``--skip-db-update`` without the
    metadata), so ``write_db(cache / "db" / "trivy.db", ...)`` makes a usable DB directory.
    """
    path = Path(path)
    document = _json(metadata(updated_at))
    path.write_bytes(bolt_file(db_tree(advisories)))
    (path.parent / "metadata.json").write_bytes(document)


def db_tree(advisories: Iterable[Advisory]) -> dict[str, dict[str, Any]]:
    """The buckets trivy reads: per-OS advisories, vulnerability details, data sources."""
    tree: dict[str, dict[str, Any]] = {"vulnerability": {}, "data-source": {}}
    for advisory in advisories:
        family, version = advisory.os
        if family not in _DATA_SOURCES:
            raise ValueError(
                f"advisory {advisory.vulnerability_id}: OS {family!r} has no data source here "
                f"(known: {', '.join(sorted(_DATA_SOURCES))})"
            )
        if advisory.severity not in _SEVERITIES:
            raise ValueError(
                f"advisory {advisory.vulnerability_id}: severity {advisory.severity!r} is not "
                f"one of {', '.join(_SEVERITIES)}"
            )
        platform = f"{family} {version}"
        packages = tree.setdefault(platform, {})
        packages.setdefault(advisory.package, {})[advisory.vulnerability_id] = _json(
            {"FixedVersion": advisory.fixed_version}
        )
        tree["data-source"][platform] = _json(_DATA_SOURCES[family])
        tree["vulnerability"][advisory.vulnerability_id] = _json(
            {
                "Title": advisory.title,
                "Description": advisory.description,
                "Severity": advisory.severity,
                # trivy prefers the data source's own severity, then NVD's; the fixture's
                # OS source rates nothing, as Alpine's secdb does not.
                "VendorSeverity": {"nvd": _SEVERITIES.index(advisory.severity)},
                "References": list(advisory.references),
            }
        )
    return tree


def metadata(updated_at: datetime) -> dict[str, object]:
    """``metadata.json`` as trivy-db publishes it (DownloadedAt is filled in by trivy)."""
    updated = _utc(updated_at)
    return {
        "Version": SCHEMA_VERSION,
        # The lab publishes daily; upstream every 6 hours. Only --skip-db-update=false reads it.
        "NextUpdate": _go_time(updated + timedelta(days=1)),
        "UpdatedAt": _go_time(updated),
        "DownloadedAt": "0001-01-01T00:00:00Z",
    }


def db_archive(*, updated_at: datetime, advisories: Iterable[Advisory] = FIXTURE) -> bytes:
    """The artifact's layer: ``db.tar.gz`` holding ``trivy.db`` and ``metadata.json``.

    The same ``updated_at`` gives the same bytes: fixed owners and modes, ``updated_at`` as
    every mtime, and a gzip stream of stored blocks with no timestamp (as the sample layers).
    """
    updated = _utc(updated_at)
    files = (
        ("trivy.db", bolt_file(db_tree(advisories))),
        ("metadata.json", _json(metadata(updated))),
    )
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as archive:
        for name, content in files:
            entry = tarfile.TarInfo(name)
            entry.size = len(content)
            entry.mode = 0o644
            entry.mtime = int(updated.timestamp())
            entry.uid = entry.gid = 0
            entry.uname = entry.gname = ""
            archive.addfile(entry, io.BytesIO(content))
    return gzip_stored(buffer.getvalue())


# -- bbolt ---------------------------------------------------------------------------------


def bolt_file(tree: Tree) -> bytes:
    """A bbolt database file whose root bucket holds ``tree``.

    Values are bytes; a mapping is a nested bucket. Keys are sorted bytewise, as bbolt's
    cursor expects.
    """
    writer = _PageWriter()
    writer.place(tree)
    pgid = writer.next_pgid
    pages = [
        _meta_page(0, pgid, txid=0),
        _meta_page(1, pgid, txid=1),
        _page(_FREELIST_PGID, _FREELIST_PAGE, 0, b""),
        *(writer.pages[number] for number in sorted(writer.pages)),
    ]
    data = b"".join(pages)
    assert len(data) == pgid * PAGE_SIZE, (len(data), pgid)
    return data


class _PageWriter:
    """Lays out buckets from page 3 on, each before its sub-buckets (the root lands on 3)."""

    def __init__(self) -> None:
        self.next_pgid = _ROOT_PGID
        self.pages: dict[int, bytes] = {}

    def place(self, bucket: Tree) -> int:
        items = _items(bucket)
        pgid = self.next_pgid
        self.next_pgid += _pages_for(_leaf_size(items))
        encoded = []
        for key, value in items:
            if isinstance(value, bytes):
                encoded.append((key, 0, value))
            elif _inlineable(value):
                encoded.append((key, _BUCKET_ELEMENT, _inline_bucket(value)))
            else:
                child = self.place(value)
                encoded.append((key, _BUCKET_ELEMENT, _BUCKET_HEADER.pack(child, 0)))
        body = _leaf_body(encoded)
        overflow = _pages_for(_PAGE_HEADER.size + len(body)) - 1
        self.pages[pgid] = _page(pgid, _LEAF_PAGE, len(encoded), body, overflow)
        return pgid


def _items(bucket: Tree) -> list[tuple[bytes, bytes | Tree]]:
    items: dict[bytes, bytes | Tree] = {}
    for key, value in bucket.items():
        raw = key.encode() if isinstance(key, str) else key
        if not isinstance(raw, bytes) or not 0 < len(raw) <= _MAX_KEY:
            raise ValueError(f"bbolt key {key!r}: expected 1 to {_MAX_KEY} bytes")
        if raw in items:
            raise ValueError(f"bbolt key {key!r}: given twice")
        if not isinstance(value, bytes | Mapping):
            raise ValueError(f"bbolt key {key!r}: value must be bytes or a bucket")
        items[raw] = value
    if len(items) > _MAX_ELEMENTS:
        raise ValueError(f"bbolt bucket: {len(items)} keys, a single leaf holds {_MAX_ELEMENTS}")
    return sorted(items.items())


def _value_size(value: bytes | Tree) -> int:
    if isinstance(value, bytes):
        return len(value)
    if _inlineable(value):
        return _BUCKET_HEADER.size + _leaf_size(_items(value))
    return _BUCKET_HEADER.size


def _leaf_size(items: list[tuple[bytes, bytes | Tree]]) -> int:
    return _PAGE_HEADER.size + sum(
        _ELEMENT.size + len(key) + _value_size(value) for key, value in items
    )


def _inlineable(bucket: Tree) -> bool:
    items = _items(bucket)
    if any(not isinstance(value, bytes) for _, value in items):
        return False
    return _leaf_size(items) <= _MAX_INLINE


def _inline_bucket(bucket: Tree) -> bytes:
    items = _items(bucket)
    body = _leaf_body([(key, 0, value) for key, value in items])  # type: ignore[misc]
    # An inline page keeps id 0 and no padding: bbolt reads it straight from the value.
    header = _PAGE_HEADER.pack(0, _LEAF_PAGE, len(items), 0)
    return _BUCKET_HEADER.pack(0, 0) + header + body


def _leaf_body(elements: list[tuple[bytes, int, bytes]]) -> bytes:
    """Element headers, then each key followed by its value, in key order."""
    headers = []
    data: list[bytes] = []
    offset = len(elements) * _ELEMENT.size
    for index, (key, flags, value) in enumerate(elements):
        position = offset - index * _ELEMENT.size
        headers.append(_ELEMENT.pack(flags, position, len(key), len(value)))
        data += (key, value)
        offset += len(key) + len(value)
    return b"".join(headers) + b"".join(data)


def _page(pgid: int, flags: int, count: int, body: bytes, overflow: int = 0) -> bytes:
    content = _PAGE_HEADER.pack(pgid, flags, count, overflow) + body
    size = (overflow + 1) * PAGE_SIZE
    assert len(content) <= size, (pgid, len(content), overflow)
    return content.ljust(size, b"\0")


def _pages_for(size: int) -> int:
    return max(1, -(-size // PAGE_SIZE))


def _meta_page(pgid: int, high_water: int, txid: int) -> bytes:
    meta = _META.pack(
        _MAGIC,
        _FORMAT_VERSION,
        PAGE_SIZE,
        0,
        _BUCKET_HEADER.pack(_ROOT_PGID, 0),
        _FREELIST_PGID,
        high_water,
        txid,
    )
    checksum = struct.pack("<Q", fnv64a(meta))
    return _page(pgid, _META_PAGE, 0, meta + checksum)


def fnv64a(data: bytes) -> int:
    """FNV-1a, 64 bits: bbolt's meta page checksum."""
    value = 0xCBF29CE484222325
    for byte in data:
        value = ((value ^ byte) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return value


# -- encoding ------------------------------------------------------------------------------


def _json(document: object) -> bytes:
    # Go's encoding/json: compact, fields in declaration order, no ASCII escaping.
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()


def _utc(moment: datetime) -> datetime:
    if not isinstance(moment, datetime) or moment.tzinfo is None:
        raise ValueError(f"updated_at: expected a timezone-aware datetime, got {moment!r}")
    return moment.astimezone(UTC).replace(microsecond=0)


def _go_time(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")
