"""The bundle format: volumes and parts arithmetic, and every refusal of open_bundle.

Bundles are written with the real writer and signed with real Ed25519 transfer keys; each
refusal test changes one thing on disk and expects the error to name the file and cause.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from airgapped_registry.bundle import format as format_module
from airgapped_registry.bundle.format import (
    CONTENTS,
    CONTENTS_FORMAT,
    INDEX,
    LAYOUT,
    LAYOUT_BYTES,
    LOCK,
    MANIFEST,
    SIGNATURE,
    VOLUME,
    BundleError,
    BundleWriter,
    blob_file,
    check_volumes,
    compress,
    decompress,
    open_bundle,
    parse_size,
    plan_layout,
    volume_name,
)
from airgapped_registry.transfer import TransferSignatureError, TrustedKeys, init_key, load_key

LOCK_TEXT = b'{"entries": [], "version": 1}\n'


def digest(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


@pytest.fixture
def keys(tmp_path: Path) -> tuple[object, TrustedKeys]:
    path = tmp_path / "keys" / "transfer.key"
    path.parent.mkdir()
    init_key(path)
    return load_key(path), TrustedKeys.load([path.with_suffix(".pub")])


def blobs_of(*sizes: int) -> dict[str, bytes]:
    found = {}
    for number, size in enumerate(sizes):
        data = hashlib.sha256(str(number).encode()).digest() * (size // 32 + 1)
        found[digest(data[:size])] = data[:size]
    return found


def write_bundle(
    root: Path, key: object, blobs: dict[str, bytes], volume_size: int | None = None
) -> Path:
    front = {
        LAYOUT: LAYOUT_BYTES,
        INDEX: b'{"schemaVersion": 2, "manifests": []}',
        LOCK: compress(LOCK_TEXT),
        CONTENTS: compress(
            json.dumps({"format": CONTENTS_FORMAT, "entries": [], "keys": {}}).encode()
        ),
    }
    layout = plan_layout(
        [(path, len(data)) for path, data in front.items()],
        [(blob_file(d), len(data)) for d, data in blobs.items()],
        volume_size,
    )
    writer = BundleWriter(root, layout)
    for path, data in front.items():
        writer.put_bytes(path, data)
    for d, data in blobs.items():
        writer.put_bytes(blob_file(d), data)
    writer.finish(
        key,  # type: ignore[arg-type]
        kind="full",
        created="2026-11-30T00:00:00Z",
        lock_digest=digest(LOCK_TEXT),
        base=None,
    )
    return root


# -- sizes and volumes -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [("4G", 4 * 1024**3), ("700M", 700 * 1024**2), ("512k", 512 * 1024), ("1000", 1000)],
)
def test_parse_size(text: str, expected: int) -> None:
    assert parse_size(text) == expected


def test_parse_size_refuses_nonsense() -> None:
    with pytest.raises(ValueError, match="volume size '4 gigs'"):
        parse_size("4 gigs")


def test_one_directory_without_a_volume_size(tmp_path, keys) -> None:
    key, trusted = keys
    blobs = blobs_of(100, 5000)
    root = write_bundle(tmp_path / "b", key, blobs)
    assert not list(root.glob("vol-*"))
    bundle = open_bundle([root], trusted)
    assert bundle.manifest["volumes"] == 1
    for d, data in blobs.items():
        assert bundle.has(d) and bundle.read_blob(d) == data
        assert bundle.blob_path(d).read_bytes() == data
    assert bundle.lock_text == LOCK_TEXT.decode()
    assert bundle.id == digest((root / MANIFEST).read_bytes())
    assert bundle.key_id == key.key_id  # type: ignore[attr-defined]


def volume_total(directory: Path) -> int:
    return sum(path.stat().st_size for path in directory.rglob("*") if path.is_file())


def test_volumes_stay_within_their_size_and_big_blobs_are_split(tmp_path, keys) -> None:
    key, trusted = keys
    size = 600 * 1024
    blobs = blobs_of(300 * 1024, 1500 * 1024, 10, 200 * 1024, 700)
    root = write_bundle(tmp_path / "b", key, blobs, size)
    volumes = sorted(root.iterdir())
    assert [v.name for v in volumes] == [volume_name(n) for n in range(1, len(volumes) + 1)]
    assert len(volumes) == 4  # 2.2 MiB of blobs in 600 KiB volumes, filled to the brim
    for number, volume in enumerate(volumes, 1):
        assert volume_total(volume) <= size
        assert json.loads((volume / VOLUME).read_text()) == {"volume": number, "volumes": 4}
        assert (volume / MANIFEST).read_bytes() == (volumes[0] / MANIFEST).read_bytes()
    # Every volume but the last is full to within the smallest part.
    assert all(size - volume_total(volume) < size // 64 for volume in volumes[:-1])
    big = next(d for d, data in blobs.items() if len(data) == 1500 * 1024)
    parts = sorted(root.glob(f"vol-*/{blob_file(big)}.part-*"))
    assert len(parts) >= 3
    assert not list(root.glob(f"vol-*/{blob_file(big)}"))
    bundle = open_bundle([root], trusted)
    assert bundle.read_blob(big) == blobs[big]
    with bundle.open_blob(big) as handle:
        handle.seek(700 * 1024)
        assert handle.read(5000) == blobs[big][700 * 1024 : 705 * 1024 - 120]
    with pytest.raises(BundleError, match=r"stored in .* parts"):
        bundle.blob_path(big)
    # Each volume checks on its own.
    for volume in volumes:
        assert check_volumes([volume], trusted).volumes == {
            json.loads((volume / VOLUME).read_text())["volume"]: volume
        }


def test_a_small_remainder_is_not_split(tmp_path, keys) -> None:
    key, _ = keys
    size = 400 * 1024
    # The first blob leaves less than a 64th of a volume in volume 1: the second goes to
    # volume 2 whole.
    blobs = blobs_of(size - 8 * 1024, 100 * 1024)
    root = write_bundle(tmp_path / "b", key, blobs, size)
    assert not list(root.glob("vol-*/blobs/sha256/*.part-*"))
    assert len(list(root.iterdir())) == 2


def test_volume_one_too_small_for_the_front_files(tmp_path, keys) -> None:
    key, _ = keys
    with pytest.raises(BundleError, match="volume size 1500 bytes"):
        write_bundle(tmp_path / "b", key, blobs_of(10), 1500)


# -- refusals --------------------------------------------------------------------------------


def first_blob(root: Path) -> Path:
    return min(root.glob("blobs/sha256/*"))


def flip_byte(root: Path) -> None:
    path = first_blob(root)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 1
    path.write_bytes(bytes(data))


def truncate(root: Path) -> None:
    path = first_blob(root)
    path.write_bytes(path.read_bytes()[:-1])


def remove(root: Path) -> None:
    first_blob(root).unlink()


def extra(root: Path) -> None:
    (root / "blobs" / "sha256" / "notes.txt").write_text("hello")


def symlink(root: Path) -> None:
    path = first_blob(root)
    data = path.read_bytes()
    target = root.parent / "elsewhere"
    target.write_bytes(data)
    path.unlink()
    path.symlink_to(target)


def hard_link(root: Path) -> None:
    os.link(first_blob(root), root.parent / "second-name")


def fifo(root: Path) -> None:
    os.mkfifo(root / "blobs" / "sha256" / "pipe")


def linked_directory(root: Path) -> None:
    elsewhere = root.parent / "elsewhere"
    shutil.move(root / "airgap", elsewhere)
    (root / "airgap").symlink_to(elsewhere)


def edit_manifest(root: Path) -> None:
    document = json.loads((root / MANIFEST).read_text())
    document["kind"] = "delta"
    (root / MANIFEST).write_text(json.dumps(document))


def unsigned(root: Path) -> None:
    (root / SIGNATURE).unlink()


def no_manifest(root: Path) -> None:
    (root / MANIFEST).unlink()


def edit_lock(root: Path) -> None:
    (root / LOCK).write_bytes(compress(LOCK_TEXT.replace(b"[]", b'[{"x": 1}]')))


def resign(root: Path, key: object, document: dict) -> None:
    data = json.dumps(document).encode()
    (root / MANIFEST).write_bytes(data)
    (root / SIGNATURE).write_bytes(key.sign(data, "bundle"))  # type: ignore[attr-defined]


def listed_path(path: str) -> Callable[[Path, object], None]:
    """A MANIFEST.json naming ``path``, signed by the bundle's own key (the signer is not
    the only defence: a path that escapes is refused whoever signed it)."""

    def change(root: Path, key: object) -> None:
        document = json.loads((root / MANIFEST).read_text())
        document["files"][0]["path"] = path
        resign(root, key, document)

    return change


REFUSALS: dict[str, tuple[Callable[..., None], str]] = {
    "flipped byte": (flip_byte, r"blobs/sha256/\w+: sha256 \w+, MANIFEST.json says \w+"),
    "truncated": (truncate, r"blobs/sha256/\w+: \d+ bytes, MANIFEST.json says \d+ \(truncated\)"),
    "removed": (remove, r"blobs/sha256/\w+: missing \(listed in MANIFEST.json"),
    "unlisted": (extra, r"blobs/sha256/notes.txt: not listed in MANIFEST.json"),
    "symlink": (symlink, r"blobs/sha256/\w+: a symbolic link, refused"),
    "hard link": (hard_link, r"blobs/sha256/\w+: has 2 hard links, refused"),
    "linked directory": (linked_directory, r"/airgap: a symbolic link, refused"),
    "fifo": (fifo, r"blobs/sha256/pipe: not a regular file \(a fifo\), refused"),
    "edited manifest": (edit_manifest, r"MANIFEST.json.*digest mismatch"),
    "unsigned": (unsigned, r"MANIFEST.json: not signed"),
    "no manifest": (no_manifest, r"b/MANIFEST.json: missing \(not a bundle or volume directory\)"),
    "edited lock": (edit_lock, r"airgap/lock.json.gz: \d+ bytes, MANIFEST.json says \d+"),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_open_bundle_refuses(tmp_path, keys, case: str) -> None:
    key, trusted = keys
    root = write_bundle(tmp_path / "b", key, blobs_of(3000, 40))
    change, message = REFUSALS[case]
    change(root)
    with pytest.raises((BundleError, TransferSignatureError), match=message):
        open_bundle([root], trusted)


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("../outside", r"path '../outside' refused: '\.\.' component"),
        ("blobs/../../etc/passwd", r"'\.\.' component"),
        ("/etc/passwd", "absolute path '/etc/passwd' refused"),
        ("blobs//x", "component ''"),
        ("MANIFEST.json", "MANIFEST.json cannot be listed"),
    ],
)
def test_open_bundle_refuses_a_path_that_escapes(tmp_path, keys, path, message) -> None:
    key, trusted = keys
    root = write_bundle(tmp_path / "b", key, blobs_of(30))
    listed_path(path)(root, key)
    with pytest.raises(BundleError, match=message):
        open_bundle([root], trusted)


def test_open_bundle_refuses_another_key(tmp_path, keys) -> None:
    other = tmp_path / "other" / "transfer.key"
    other.parent.mkdir()
    init_key(other)
    root = write_bundle(tmp_path / "b", load_key(other), blobs_of(30))
    _, trusted = keys
    with pytest.raises(TransferSignatureError, match=r"MANIFEST.json.*untrusted key"):
        open_bundle([root], trusted)


def test_open_bundle_refuses_a_lock_other_than_lock_digest(tmp_path, keys) -> None:
    """A lock.json.gz listed correctly but decompressing to another lock than the one
    lock_digest names (a signer cannot slip a lock past the bundle's own statement)."""
    key, trusted = keys
    root = write_bundle(tmp_path / "b", key, blobs_of(30))
    replace_front_file(root, key, LOCK, compress(b'{"entries": [{}], "version": 1}\n'))
    with pytest.raises(
        BundleError, match=r"lock.json.gz: decompresses to sha256:\w+, MANIFEST.json lock_digest"
    ):
        open_bundle([root], trusted)


def replace_front_file(root: Path, key: object, path: str, data: bytes) -> None:
    """``path`` holds ``data``, listed with its size and checksum and signed again."""
    (root / path).write_bytes(data)
    document = json.loads((root / MANIFEST).read_text())
    for item in document["files"]:
        if item["path"] == path:
            item["size"], item["sha256"] = len(data), hashlib.sha256(data).hexdigest()
    resign(root, key, document)


@pytest.mark.parametrize(
    ("path", "data", "message"),
    [
        (LOCK, LOCK_TEXT, r"lock.json.gz: not valid gzip \(.*incorrect header check"),
        (CONTENTS, compress(b"{}")[:-6], r"contents.json.gz: gzip data truncated"),
        (LOCK, compress(LOCK_TEXT) + b"junk", r"lock.json.gz: 4 bytes after the gzip data"),
    ],
    ids=["not gzip", "truncated", "trailing bytes"],
)
def test_open_bundle_refuses_a_corrupt_gzip(tmp_path, keys, path, data, message) -> None:
    key, trusted = keys
    root = write_bundle(tmp_path / "b", key, blobs_of(30))
    replace_front_file(root, key, path, data)
    with pytest.raises(BundleError, match=message):
        open_bundle([root], trusted)


def test_open_bundle_refuses_a_gzip_bomb(tmp_path, keys, monkeypatch) -> None:
    """Never inflated past the cap: 64 MiB of zeros compress to ~64 KB."""
    key, trusted = keys
    root = write_bundle(tmp_path / "b", key, blobs_of(30))
    replace_front_file(root, key, CONTENTS, compress(bytes(64 * 1024 * 1024)))
    monkeypatch.setattr(format_module, "_DECOMPRESSED_LIMIT", 1024 * 1024)
    with pytest.raises(
        BundleError, match=r"contents.json.gz: decompresses to more than 1048576 bytes, refused"
    ):
        open_bundle([root], trusted)


def test_front_files_are_compressed_deterministically() -> None:
    assert compress(LOCK_TEXT) == compress(LOCK_TEXT)
    assert compress(LOCK_TEXT)[4:8] == bytes(4), "mtime 0"
    assert decompress(compress(LOCK_TEXT), "lock") == LOCK_TEXT


def test_open_bundle_names_missing_volumes(tmp_path, keys) -> None:
    key, trusted = keys
    root = write_bundle(tmp_path / "b", key, blobs_of(300 * 1024, 900 * 1024), 300 * 1024)
    volumes = sorted(root.iterdir())
    assert len(volumes) == 5
    shutil.rmtree(volumes[1])
    shutil.rmtree(volumes[3])
    with pytest.raises(BundleError, match="volumes 2, 4 of 5 missing"):
        open_bundle([root], trusted)
    # The volumes that are there still check one by one.
    assert sorted(check_volumes([root], trusted).volumes) == [1, 3, 5]


def test_open_bundle_refuses_a_flipped_byte_in_a_part(tmp_path, keys) -> None:
    key, trusted = keys
    root = write_bundle(tmp_path / "b", key, blobs_of(900 * 1024), 300 * 1024)
    part = sorted(root.glob("vol-*/blobs/sha256/*.part-0002"))[0]
    data = bytearray(part.read_bytes())
    data[0] ^= 0xFF
    part.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"vol-\d+/blobs/sha256/\w+\.part-0002: sha256"):
        open_bundle([root], trusted)


def test_a_volume_that_lies_about_its_number_fails(tmp_path, keys) -> None:
    key, trusted = keys
    root = write_bundle(tmp_path / "b", key, blobs_of(300 * 1024, 300 * 1024), 300 * 1024)
    volumes = sorted(root.iterdir())
    (volumes[1] / VOLUME).write_text(json.dumps({"volume": 3, "volumes": len(volumes)}))
    with pytest.raises(BundleError, match=r"not listed in MANIFEST.json for this volume"):
        check_volumes([volumes[1]], trusted)


def test_volumes_of_different_bundles_are_refused(tmp_path, keys) -> None:
    key, trusted = keys
    first = write_bundle(tmp_path / "a", key, blobs_of(300 * 1024, 300 * 1024), 300 * 1024)
    second = write_bundle(tmp_path / "b", key, blobs_of(300 * 1024, 301 * 1024), 300 * 1024)
    with pytest.raises(BundleError, match=r"differs from .*volumes of different bundles"):
        check_volumes([first / "vol-001", second / "vol-002"], trusted)


def test_a_bundle_directory_holds_volumes_only(tmp_path, keys) -> None:
    key, trusted = keys
    root = write_bundle(tmp_path / "b", key, blobs_of(300 * 1024), 300 * 1024)
    (root / "README").write_text("hello")
    with pytest.raises(BundleError, match=r"b/README: not a volume directory"):
        open_bundle([root], trusted)


def test_a_linked_bundle_directory_is_refused(tmp_path, keys) -> None:
    key, trusted = keys
    root = write_bundle(tmp_path / "b", key, blobs_of(30))
    (tmp_path / "link").symlink_to(root)
    with pytest.raises(BundleError, match=r"link: a symbolic link, refused"):
        open_bundle([tmp_path / "link"], trusted)
