"""A tag's digest read from Distribution's filesystem storage (``backend_storage``): only a
link file exactly as Distribution writes it, whose manifest revision link is there too;
anything else is None, and the gate asks the backend instead."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from airgapped_registry.gate.admission import linked, read_link

DIGEST = "sha256:" + "a" * 64
OTHER = "sha256:" + "b" * 64


def manifests(storage: Path, repository: str = "prod/app") -> Path:
    return storage / "docker/registry/v2/repositories" / repository / "_manifests"


def write(path: Path, content: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)


def tag_link(storage: Path, tag: str = "1.0") -> Path:
    return manifests(storage) / "tags" / tag / "current" / "link"


def revision_link(storage: Path, digest: str = DIGEST) -> Path:
    return manifests(storage) / "revisions" / "sha256" / digest[7:] / "link"


@pytest.fixture
def storage(tmp_path: Path) -> Path:
    """``prod/app:1.0`` -> DIGEST, as Distribution 2.8's filesystem driver leaves it."""
    write(tag_link(tmp_path), DIGEST.encode())
    write(revision_link(tmp_path), DIGEST.encode())
    return tmp_path


def test_a_tag_is_read_from_its_links(storage: Path) -> None:
    assert linked(storage, "prod/app", "1.0") == DIGEST
    write(tag_link(storage, "sha256-" + "a" * 64 + ".sig"), OTHER.encode())
    write(revision_link(storage, OTHER), OTHER.encode())
    assert linked(storage, "prod/app", "sha256-" + "a" * 64 + ".sig") == OTHER


@pytest.mark.parametrize(
    "content",
    [
        b"",  # truncated, not yet written again
        DIGEST[:40].encode(),  # partial
        DIGEST.encode() + b"\n",
        b" " + DIGEST.encode(),
        DIGEST.upper().encode(),
        b"sha512:" + b"a" * 128,  # Distribution reads it; the gate asks the backend
        b"sha256:" + b"g" * 64,
    ],
)
def test_a_link_not_exactly_one_sha256_digest_is_not_read(storage: Path, content: bytes) -> None:
    tag_link(storage).write_bytes(content)
    assert linked(storage, "prod/app", "1.0") is None


def test_a_missing_tag_or_revision_is_not_read(storage: Path) -> None:
    assert linked(storage, "prod/app", "2.0") is None
    assert linked(storage, "prod/other", "1.0") is None
    # A manifest delete removes the revision link before it untags: the tag is not trusted.
    revision_link(storage).unlink()
    assert linked(storage, "prod/app", "1.0") is None
    write(revision_link(storage), OTHER.encode())
    assert linked(storage, "prod/app", "1.0") is None
    assert linked(storage / "nowhere", "prod/app", "1.0") is None


def test_names_outside_the_grammar_are_not_read(storage: Path) -> None:
    write(manifests(storage, "x") / "tags" / "1.0" / "current" / "link", DIGEST.encode())
    assert linked(storage / "docker", "../docker/registry/v2/repositories/x", "1.0") is None
    assert linked(storage, "prod/app", "../1.0") is None


def test_a_symlink_or_a_fifo_is_not_followed_nor_waited_on(storage: Path) -> None:
    elsewhere = storage / "elsewhere"
    elsewhere.write_bytes(DIGEST.encode())
    link = tag_link(storage)
    link.unlink()
    link.symlink_to(elsewhere)
    assert read_link(str(link)) is None
    link.unlink()
    os.mkfifo(link)
    answers: list[object] = []
    reader = threading.Thread(target=lambda: answers.append(linked(storage, "prod/app", "1.0")))
    reader.start()
    reader.join(timeout=5)
    assert answers == [None]
