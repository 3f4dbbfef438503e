"""The inventory document read back: its signature verified with the trusted keys, every
digest checked, before a delta export leaves anything out for it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from airgapped_registry.bundle.inventory import (
    FORMAT,
    InventoryError,
    inventory_bytes,
    read_inventory,
)
from airgapped_registry.oci.reference import digest_of
from airgapped_registry.transfer import TransferSignatureError, TrustedKeys, init_key, load_key

BLOB = "sha256:" + "a" * 64
MANIFEST = "sha256:" + "b" * 64


def key_pair(directory: Path):
    directory.mkdir()
    init_key(directory / "transfer.key")
    return load_key(directory / "transfer.key"), TrustedKeys.load([directory / "transfer.pub"])


def write(path: Path, key, **changes) -> bytes:
    document = {
        "format": FORMAT,
        "created": "2026-11-30T00:00:00Z",
        "host": "registry",
        "registry": "unix:///run/docker-registry/registry.sock",
        "lock_digest": None,
        "manifests": [MANIFEST],
        "blobs": [BLOB],
        **changes,
    }
    data = inventory_bytes(document)
    path.write_bytes(data)
    path.with_name(path.name + ".sig").write_bytes(key.sign(data, "inventory"))
    return data


def test_a_signed_inventory_reads_back(tmp_path) -> None:
    key, trusted = key_pair(tmp_path / "k")
    data = write(tmp_path / "inventory.json", key)
    inventory = read_inventory(tmp_path / "inventory.json", trusted)
    assert inventory.holds(BLOB) and inventory.holds(MANIFEST)
    assert not inventory.holds("sha256:" + "c" * 64)
    assert inventory.base() == {
        "inventory_digest": digest_of(data),
        "host": "registry",
        "created": "2026-11-30T00:00:00Z",
    }
    assert inventory.key_id == key.key_id


def test_refusals(tmp_path) -> None:
    key, trusted = key_pair(tmp_path / "k")
    other, _ = key_pair(tmp_path / "other")
    path = tmp_path / "inventory.json"

    write(path, other)
    with pytest.raises(TransferSignatureError, match=r"inventory .*: signed by untrusted key"):
        read_inventory(path, trusted)

    write(path, key)
    path.write_bytes(path.read_bytes().replace(b'"registry"', b'"registry2"'))
    with pytest.raises(TransferSignatureError, match=r"edited after signing"):
        read_inventory(path, trusted)

    write(path, key)
    path.with_name("inventory.json.sig").unlink()
    with pytest.raises(TransferSignatureError, match=r"not signed"):
        read_inventory(path, trusted)

    write(path, key, blobs=["latest"])
    with pytest.raises(InventoryError, match=r"blobs: 'latest' is not a digest"):
        read_inventory(path, trusted)

    with pytest.raises(InventoryError, match=r"missing.json: no such file"):
        read_inventory(tmp_path / "missing.json", trusted)
    assert json.loads(path.read_text())["format"] == FORMAT
