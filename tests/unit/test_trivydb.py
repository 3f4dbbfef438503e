"""The lab's Trivy DB writer: bbolt bytes as bbolt lays them out, read back page by page.

Real Trivy reading these files is in tests/integration/test_trivydb_scan.py; here a minimal
bbolt reader (below) checks the structure: meta checksums, sorted keys, inline buckets,
overflow pages.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import struct
import tarfile
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from airgap_lab.sample import VULNERABLE_OS, VULNERABLE_PACKAGE
from airgap_lab.trivydb import (
    FIXTURE,
    FIXTURE_VULNERABILITY_ID,
    PAGE_SIZE,
    Advisory,
    bolt_file,
    db_archive,
    fnv64a,
    metadata,
    write_db,
)

# SHA-256 of trivy-db's pkg/db/testdata/normal.db (aquasecurity/trivy-db at commit
# a0049d7a, 16,384 bytes): the empty database bbolt's Open writes, which Trivy's own tests
# open as a valid DB.
NORMAL_DB_SHA256 = "f80ea184425737cdc7de57b1c8d4797e8a57ccee797991395e3800cd4ed0ac1e"
UPDATED_AT = datetime(2026, 11, 30, tzinfo=UTC)


# -- a minimal bbolt reader ----------------------------------------------------------------


def read_bolt(data: bytes) -> tuple[dict, dict[str, int]]:
    """The tree a bbolt file holds, and facts about its pages (for structural asserts)."""
    assert len(data) % PAGE_SIZE == 0
    metas = [_read_meta(data, number) for number in (0, 1)]
    meta = max(metas, key=lambda item: item["txid"])
    assert meta["pgid"] * PAGE_SIZE == len(data), "high-water mark is the file's end"
    freelist = _header(data, meta["freelist"] * PAGE_SIZE)
    assert freelist["flags"] == 0x10 and freelist["count"] == 0
    facts = {"overflow_pages": 0, "inline_buckets": 0, "page_buckets": 0}
    tree = _read_leaf(data, meta["root"] * PAGE_SIZE, facts, inline=False)
    return tree, facts


def _read_meta(data: bytes, number: int) -> dict[str, int]:
    offset = number * PAGE_SIZE
    header = _header(data, offset)
    assert header["id"] == number and header["flags"] == 0x04
    body = data[offset + 16 : offset + 16 + 64]
    magic, version, page_size, flags, root, _seq, freelist, pgid, txid, checksum = struct.unpack(
        "<IIIIQQQQQQ", body
    )
    assert (magic, version, page_size, flags) == (0xED0CDAED, 2, PAGE_SIZE, 0)
    assert checksum == fnv64a(body[:56]), f"meta page {number}: checksum"
    return {"root": root, "freelist": freelist, "pgid": pgid, "txid": txid}


def _header(data: bytes, offset: int) -> dict[str, int]:
    pgid, flags, count, overflow = struct.unpack_from("<QHHI", data, offset)
    return {"id": pgid, "flags": flags, "count": count, "overflow": overflow}


def _read_leaf(data: bytes, offset: int, facts: dict[str, int], inline: bool) -> dict:
    header = _header(data, offset)
    assert header["flags"] == 0x02, f"leaf expected at {offset}"
    if not inline:
        assert header["id"] * PAGE_SIZE == offset
        facts["overflow_pages"] += header["overflow"]
    tree: dict[bytes, object] = {}
    keys = []
    for index in range(header["count"]):
        element = offset + 16 + 16 * index
        flags, position, ksize, vsize = struct.unpack_from("<IIII", data, element)
        key = data[element + position : element + position + ksize]
        value = data[element + position + ksize : element + position + ksize + vsize]
        if not inline:
            limit = offset + (header["overflow"] + 1) * PAGE_SIZE
            assert element + position + ksize + vsize <= limit, "element beyond its pages"
        keys.append(key)
        if flags & 0x01:
            root, _sequence = struct.unpack_from("<QQ", value)
            if root == 0:
                facts["inline_buckets"] += 1
                tree[key] = _read_leaf(value[16:], 0, facts, inline=True)
            else:
                facts["page_buckets"] += 1
                tree[key] = _read_leaf(data, root * PAGE_SIZE, facts, inline=False)
        else:
            tree[key] = value
    assert keys == sorted(keys), "keys in bytewise order"
    return tree


def as_bytes(tree: dict) -> dict:
    return {
        (key.encode() if isinstance(key, str) else key): (
            as_bytes(value) if isinstance(value, dict) else value
        )
        for key, value in tree.items()
    }


# -- bbolt layout --------------------------------------------------------------------------


def test_an_empty_tree_is_byte_identical_to_trivy_dbs_normal_db() -> None:
    data = bolt_file({})
    assert len(data) == 16384
    assert hashlib.sha256(data).hexdigest() == NORMAL_DB_SHA256


def test_meta_checksum_is_fnv_1a_64() -> None:
    # Published FNV-1a 64-bit test vectors.
    assert fnv64a(b"") == 0xCBF29CE484222325
    assert fnv64a(b"a") == 0xAF63DC4C8601EC8C
    assert fnv64a(b"foobar") == 0x85944171F73967E8


def test_small_buckets_are_inlined_and_read_back() -> None:
    tree = {"b": {"k2": b"v2", "k1": b"v1"}, "a": b"top-level value", "empty": {}}
    read, facts = read_bolt(bolt_file(tree))
    assert read == as_bytes(tree)
    assert facts == {"overflow_pages": 0, "inline_buckets": 2, "page_buckets": 0}


def test_many_keys_spill_onto_overflow_pages_in_sorted_order() -> None:
    many = {f"key-{number:05d}": f"value {number}".encode() * 3 for number in range(5000)}
    large_value = bytes(range(256)) * 40  # 10,240 bytes: one value across three pages
    tree = {
        "many": many,
        "nested": {"inner": {"deep": b"x"}, "big": large_value},
        # Keys sort bytewise, as bbolt compares them: b"B" < b"a" < b"\xc3\xa9".
        "order": {"a": b"1", "B": b"2", "é": b"3"},
    }
    data = bolt_file(tree)
    read, facts = read_bolt(data)
    assert read == as_bytes(tree)
    assert list(read[b"order"]) == [b"B", b"a", "é".encode()]
    assert facts["overflow_pages"] >= 60
    assert facts["page_buckets"] == 2  # "many" and "nested" (which holds a sub-bucket)


def test_a_sub_bucket_keeps_a_bucket_off_its_parents_page() -> None:
    # bbolt never inlines a bucket holding buckets, however small.
    _, facts = read_bolt(bolt_file({"outer": {"inner": {"k": b"v"}}}))
    assert facts == {"overflow_pages": 0, "inline_buckets": 1, "page_buckets": 1}


@pytest.mark.parametrize(
    ("tree", "message"),
    [
        ({"": b"v"}, "bbolt key '': expected 1 to 32768 bytes"),
        ({"k": "text"}, "bbolt key 'k': value must be bytes or a bucket"),
        ({"k": b"1", b"k": b"2"}, "bbolt key b'k': given twice"),
        ({f"{n}": b"" for n in range(65536)}, "65536 keys, a single leaf holds 65535"),
    ],
)
def test_invalid_trees_are_refused(tree: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        bolt_file(tree)


# -- the trivy-db content ------------------------------------------------------------------


def test_the_fixture_names_the_sample_images_vulnerable_package(tmp_path: Path) -> None:
    path = tmp_path / "trivy.db"
    write_db(path, updated_at=UPDATED_AT)
    assert json.loads((tmp_path / "metadata.json").read_text()) == metadata(UPDATED_AT)
    read, _ = read_bolt(path.read_bytes())
    platform = f"{VULNERABLE_OS[0]} {VULNERABLE_OS[1]}".encode()
    assert platform == b"alpine 3.22"
    assert set(read) == {platform, b"vulnerability", b"data-source"}
    identifier = FIXTURE_VULNERABILITY_ID.encode()
    assert read[platform] == {
        VULNERABLE_PACKAGE.name.encode(): {
            identifier: f'{{"FixedVersion":"{VULNERABLE_PACKAGE.fixed_version}"}}'.encode()
        }
    }
    assert VULNERABLE_PACKAGE.fixed_version != VULNERABLE_PACKAGE.version
    detail = json.loads(read[b"vulnerability"][identifier])
    assert detail["Severity"] == "CRITICAL"
    assert detail["VendorSeverity"] == {"nvd": 4}
    assert "not a real advisory" in detail["Title"]
    assert json.loads(read[b"data-source"][platform])["ID"] == "alpine"


def test_the_fixture_id_cannot_be_a_published_cve() -> None:
    assert [advisory.vulnerability_id for advisory in FIXTURE] == [FIXTURE_VULNERABILITY_ID]
    assert FIXTURE_VULNERABILITY_ID.startswith("CVE-2099-")


def test_advisories_of_an_unknown_os_or_severity_are_refused(tmp_path: Path) -> None:
    advisory = FIXTURE[0]
    debian = Advisory(**{**vars(advisory), "os": ("debian", "12")})
    with pytest.raises(ValueError, match="OS 'debian' has no data source here"):
        write_db(tmp_path / "db", updated_at=UPDATED_AT, advisories=[debian])
    loud = Advisory(**{**vars(advisory), "severity": "URGENT"})
    with pytest.raises(ValueError, match="severity 'URGENT' is not one of"):
        write_db(tmp_path / "db", updated_at=UPDATED_AT, advisories=[loud])


# -- metadata and the archive --------------------------------------------------------------


def test_metadata_is_trivy_dbs_schema_2_with_go_times() -> None:
    moment = datetime(2026, 11, 30, 6, 30, 15, 123456, tzinfo=timezone(timedelta(hours=2)))
    assert metadata(moment) == {
        "Version": 2,
        "NextUpdate": "2026-12-01T04:30:15Z",
        "UpdatedAt": "2026-11-30T04:30:15Z",
        "DownloadedAt": "0001-01-01T00:00:00Z",
    }


def test_a_naive_time_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="updated_at: expected a timezone-aware datetime"):
        db_archive(updated_at=datetime(2026, 11, 30))
    with pytest.raises(ValueError, match="updated_at: expected a timezone-aware datetime"):
        write_db(tmp_path / "trivy.db", updated_at=datetime(2026, 11, 30))
    assert list(tmp_path.iterdir()) == [], "nothing written"


def test_the_archive_holds_the_db_and_its_metadata_with_fixed_bytes() -> None:
    archive = db_archive(updated_at=UPDATED_AT)
    assert archive == db_archive(updated_at=UPDATED_AT)
    assert archive != db_archive(updated_at=UPDATED_AT + timedelta(days=1))
    assert archive[4:8] == b"\0\0\0\0", "gzip MTIME is 0"
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(archive))) as tar:
        members = tar.getmembers()
        assert [member.name for member in members] == ["trivy.db", "metadata.json"]
        for member in members:
            assert (member.uid, member.gid, member.mode) == (0, 0, 0o644)
            assert member.mtime == int(UPDATED_AT.timestamp())
        database = tar.extractfile("trivy.db").read()  # type: ignore[union-attr]
        document = json.loads(tar.extractfile("metadata.json").read())  # type: ignore[union-attr]
    assert document == metadata(UPDATED_AT)
    read, _ = read_bolt(database)
    assert FIXTURE_VULNERABILITY_ID.encode() in read[b"vulnerability"]
