"""Bundle export, inventory and check against real Distributions, with the real skopeo.

The sample upstream (one image cosign-signed) is locked with the lab's mirror list and synced
into a relay registry by the engine, as the relay's nightly job does; the bundle is exported
from the relay registry. What a user would see is checked: the files in the bundle, skopeo
reading an image out of it, exit codes and the messages of refusals.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from airgap_lab.sample import build, push
from airgapped_registry.bundle.format import MANIFEST, open_bundle
from airgapped_registry.cli import main
from airgapped_registry.mirror.lock import Lock, read_lock
from airgapped_registry.oci.mediatypes import OCI_MANIFEST
from airgapped_registry.oci.reference import digest_of
from airgapped_registry.transfer import TrustedKeys, init_key
from airgapped_registry.transport.registry import RegistryClient
from tests.integration.mirror_lists import LAB_ENTRIES, MOVED, SMALL, lab_list
from tests.integration.test_sync import corrupt, cosign, locked, run_sync, seeded, sign

pytestmark = pytest.mark.integration

SIGNED = "sample/app-001"
EMPTY = "application/vnd.oci.empty.v1+json"
# An artifact larger than a test volume (256 KiB), so that splitting it is certain.
BIG = "sample/big"
BIG_LIST = '  - source: upstream\n    repository: sample/big\n    tags: ["1.0"]\n'


def push_big(registry) -> None:
    client = RegistryClient(registry.url)
    config = b"{}"
    layer = hashlib.sha256(b"big").digest() * (400 * 1024 // 32)
    client.push_blob(BIG, digest_of(config), config)
    client.push_blob(BIG, digest_of(layer), layer)
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": EMPTY, "digest": digest_of(config), "size": len(config)},
        "layers": [{"mediaType": EMPTY, "digest": digest_of(layer), "size": len(layer)}],
    }
    client.put_manifest(BIG, "1.0", json.dumps(manifest).encode(), OCI_MANIFEST)


def airgap(capsys, *argv: object) -> tuple[int, dict]:
    capsys.readouterr()
    status = main([str(arg) for arg in argv])
    out = capsys.readouterr()
    return status, (json.loads(out.out) if out.out.strip() else {"stderr": out.err})


def transfer_key(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    init_key(directory / "transfer.key")
    return directory / "transfer.key"


def lock_digests(lock: Lock) -> set[str]:
    """Every manifest and blob digest a bundle of ``lock`` must carry."""
    found = set()
    for entry in lock.entries:
        found.add(entry.digest)
        found |= {child.digest for child in entry.children if child.copy}
        found |= {signature.digest for signature in entry.signatures if signature.copy}
        found |= {blob.digest for blob in entry.blobs()}
    return found


def bundle_digests(root: Path) -> list[str]:
    """The digests stored in a bundle (volumes and parts included), with repeats."""
    names = [path.name.split(".")[0] for path in root.rglob("blobs/sha256/*")]
    parts = [path.name for path in root.rglob("blobs/sha256/*.part-*")]
    whole = [n for n in names if not any(p.startswith(n + ".") for p in parts)]
    return [f"sha256:{name}" for name in whole + sorted({p.split(".")[0] for p in parts})]


def sign_app(registry, sample, keys: Path) -> None:
    """Sign the two tags of app-001 the lab list mirrors, as its upstream would."""
    for tag in ("2.0.0", "1.1.0"):
        artifact = sample.artifact(f"{SIGNED}:{tag}")
        sign(registry, artifact.repository, artifact.digest, keys)


@pytest.fixture
def relay(distribution_factory, upstream, small, tmp_path):
    """(upstream, relay registry, mirror list, lock path): the sample with app-001 signed by
    cosign, locked with the lab list (app-001's signatures required) and synced into the
    relay registry by the engine."""
    own = distribution_factory()
    own.stop()
    shutil.rmtree(own.storage, ignore_errors=True)
    shutil.copytree(upstream.storage, own.storage)
    own.start()
    keys = tmp_path / "upstream-keys"
    keys.mkdir()
    cosign("generate-key-pair", cwd=keys)
    sign_app(own, small, keys)
    push_big(own)
    spec_path = lab_list(
        tmp_path,
        own.address,
        **{
            "    repository: sample/app-001\n    regex: '^[0-9]+\\.[0-9]+\\.[0-9]+$'\n"
            "    max_tags: 2\n": "    repository: sample/app-001\n"
            "    regex: '^[0-9]+\\.[0-9]+\\.[0-9]+$'\n    max_tags: 2\n"
            f"    signatures: {{keys: [{keys / 'cosign.pub'}]}}\n"
        },
    )
    spec_path.write_text(spec_path.read_text() + BIG_LIST)
    locked(spec_path)
    target = distribution_factory()
    report = run_sync(spec_path, target, tmp_path / "relay.db")
    assert report["failed"] == 0
    yield own, target, spec_path, spec_path.with_name("mirror.lock")
    own.stop()
    target.stop()


@pytest.fixture(scope="module")
def upstream(distribution_factory, small):
    registry = seeded(distribution_factory, small)
    yield registry
    registry.stop()


@pytest.fixture(scope="module")
def small():
    return build(SMALL)


def test_full_export_holds_every_digest_once_and_skopeo_reads_it(
    relay, distribution_factory, tmp_path, capsys
) -> None:
    _, registry, spec_path, lock_path = relay
    key = transfer_key(tmp_path / "relay-key")
    output = tmp_path / "drive" / "seed"
    status, report = airgap(
        capsys,
        *("bundle", "export", "--lock", lock_path, "--registry", registry.url),
        *("--output", output, "--transfer-key", key, "--spec", spec_path),
    )
    assert status == 0, report
    lock = read_lock(lock_path)
    expected = lock_digests(lock)
    stored = bundle_digests(output)
    assert sorted(stored) == sorted(expected), "every digest of the lock, each once"
    assert (report["kind"], report["entries"], report["volumes"]) == ("full", LAB_ENTRIES + 1, 1)
    assert report["manifests"] + report["blobs"] == len(expected)
    assert report["skipped"] == {"manifests": 0, "blobs": 0, "bytes": 0}
    assert not output.with_name("seed.partial").exists()
    # The lock travels byte for byte; the signature keys the list names come along.
    stored_lock = (output / "airgap" / "lock.json.gz").read_bytes()
    assert gzip.decompress(stored_lock) == lock_path.read_bytes()
    contents = json.loads(gzip.decompress((output / "airgap" / "contents.json.gz").read_bytes()))
    upstream_key = (spec_path.parent / "upstream-keys" / "cosign.pub").read_bytes()
    (key_path,) = contents["keys"][f"{SIGNED}:2.0.0"]
    assert (output / key_path).read_bytes() == upstream_key
    entry = lock.get(SIGNED, "2.0.0")
    assert entry is not None and len(entry.signatures) == 3
    (listed,) = [e for e in contents["entries"] if (e["destination"], e["tag"]) == entry.key]
    roles = [m["role"] for m in listed["manifests"]]
    assert roles == ["child", "child", "index", "signature", "signature", "signature"]

    trusted = TrustedKeys.load([key.with_suffix(".pub")])
    bundle = open_bundle([output], trusted)
    assert bundle.id == digest_of((output / MANIFEST).read_bytes()) == report["bundle"]
    status, checked = airgap(
        capsys, "bundle", "check", output, "--trusted-keys", key.with_suffix(".pub")
    )
    assert status == 0, checked
    assert (checked["files"], checked["missing_volumes"]) == (report["files"], [])

    # skopeo reads an image (every platform) out of the OCI layout, digests preserved.
    target = distribution_factory()
    reference = f"{SIGNED}:2.0.0"
    copied = subprocess.run(
        [
            *("skopeo", "copy", "--all", "--preserve-digests", "--dest-tls-verify=false"),
            f"oci:{output}:{reference}",
            f"docker://{target.address}/{reference}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert copied.returncode == 0, copied.stderr
    head = RegistryClient(target.url).head_manifest(SIGNED, "2.0.0")
    assert head is not None and head.digest == entry.digest


def test_export_refuses_a_bundle_directory_that_is_not_empty(relay, tmp_path, capsys) -> None:
    _, registry, _, lock_path = relay
    key = transfer_key(tmp_path / "key")
    output = tmp_path / "seed"
    output.mkdir()
    (output / "something").write_text("x")
    status, report = airgap(
        capsys,
        *("bundle", "export", "--lock", lock_path, "--registry", registry.url),
        *("--output", output, "--transfer-key", key),
    )
    assert status == 1
    assert report["stderr"] == (
        f"airgap: {output}: exists and is not empty (a bundle is never overwritten)\n"
    )


def test_a_blob_that_does_not_match_its_digest_fails_the_export(relay, tmp_path, capsys) -> None:
    _, registry, _, lock_path = relay
    entry = read_lock(lock_path).get(SIGNED, "2.0.0")
    layer = entry.children[0].layers[-1]
    corrupt(registry, layer.digest)
    key = transfer_key(tmp_path / "key")
    output = tmp_path / "drive" / "seed"
    status, report = airgap(
        capsys,
        *("bundle", "export", "--lock", lock_path, "--registry", registry.url),
        *("--output", output, "--transfer-key", key, "--workers", "2"),
    )
    assert status == 1
    assert report["stderr"].startswith(f"airgap: {SIGNED}@{layer.digest}: GET ")
    assert f"digest mismatch: expected {layer.digest}" in report["stderr"]
    assert list((tmp_path / "drive").iterdir()) == [], "neither DIR nor DIR.partial is left"


def test_delta_after_an_upstream_change_holds_only_the_new_digests(
    relay, distribution_factory, tmp_path, capsys
) -> None:
    upstream, registry, spec_path, lock_path = relay
    before = read_lock(lock_path)
    # The registry host holds what the first lock names: its Distribution on a unix socket.
    site = distribution_factory(unix=True)
    site.stop()
    shutil.rmtree(site.storage, ignore_errors=True)
    shutil.copytree(registry.storage, site.storage)
    site.start()
    site_key = transfer_key(tmp_path / "site-key")
    inventory = tmp_path / "drive" / "inventory.json"
    inventory.parent.mkdir()
    status, taken = airgap(
        capsys,
        *("bundle", "inventory", "--registry", site.url, "--output", inventory),
        *("--transfer-key", site_key, "--lock", lock_path),
    )
    assert status == 0, taken
    document = json.loads(inventory.read_text())
    assert set(document["manifests"]) | set(document["blobs"]) >= lock_digests(before)
    assert document["lock_digest"] == digest_of(lock_path.read_bytes())
    assert inventory.with_name("inventory.json.sig").exists()

    # Upstream rebuilds its base layers; the relay locks and syncs again.
    moved = build(MOVED)
    push(moved, RegistryClient(upstream.url))
    sign_app(upstream, moved, spec_path.parent / "upstream-keys")
    locked(spec_path)
    assert run_sync(spec_path, registry, tmp_path / "relay.db")["failed"] == 0
    after = read_lock(lock_path)
    new = lock_digests(after) - lock_digests(before)
    assert new

    relay_key = transfer_key(tmp_path / "relay-key")
    output = tmp_path / "drive" / "delta"
    command = [
        *("bundle", "export", "--lock", lock_path, "--registry", registry.url),
        *("--output", output, "--transfer-key", relay_key, "--inventory", inventory),
    ]
    status, report = airgap(capsys, *command, "--trusted-keys", site_key.with_suffix(".pub"))
    assert status == 0, report
    assert sorted(bundle_digests(output)) == sorted(new), "only what the site lacks"
    assert report["kind"] == "delta"
    assert report["manifests"] + report["blobs"] == len(new)
    assert report["skipped"]["manifests"] + report["skipped"]["blobs"] == len(
        lock_digests(after) - new
    )
    manifest = json.loads((output / MANIFEST).read_text())
    assert manifest["base"]["inventory_digest"] == digest_of(inventory.read_bytes())
    # The delta's content is close to the new unique content (the lock and index on top).
    sizes = {b.digest: b.size for e in after.entries for b in e.blobs()}
    new_bytes = sum(sizes.get(d, 0) for d in new)
    assert report["content_bytes"] >= new_bytes

    # Against an inventory of everything the lock names, the delta is the lock alone.
    everything = tmp_path / "drive" / "relay-inventory.json"
    command_inventory = ["bundle", "inventory", "--registry", registry.url, "--output", everything]
    assert airgap(capsys, *command_inventory, "--transfer-key", site_key)[0] == 0
    empty = tmp_path / "drive" / "empty"
    status, nothing = airgap(
        capsys,
        *command[:-6],
        *("--output", empty, "--transfer-key", relay_key, "--inventory", everything),
        *("--trusted-keys", site_key.with_suffix(".pub")),
    )
    assert status == 0, nothing
    assert (nothing["manifests"], nothing["blobs"], bundle_digests(empty)) == (0, 0, [])
    assert json.loads((empty / "index.json").read_text())["manifests"] == []
    assert open_bundle([empty], TrustedKeys.load([relay_key.with_suffix(".pub")])).kind == "delta"

    # An inventory the relay does not trust is refused, and no bundle is made.
    refused = tmp_path / "drive" / "refused"
    status, failed = airgap(
        capsys,
        *command[:-6],
        "--output",
        refused,
        "--transfer-key",
        relay_key,
        "--inventory",
        inventory,
        "--trusted-keys",
        relay_key.with_suffix(".pub"),
    )
    assert status == 1
    assert f"inventory {inventory}: signed by untrusted key" in failed["stderr"]
    assert not refused.exists() and not refused.with_name("refused.partial").exists()


def test_volumes_are_each_checkable(relay, tmp_path, capsys) -> None:
    _, registry, _, lock_path = relay
    key = transfer_key(tmp_path / "key")
    public = key.with_suffix(".pub")
    output = tmp_path / "drive" / "seed"
    command = ("bundle", "export", "--lock", lock_path, "--registry", registry.url)
    status, report = airgap(
        capsys, *command, "--output", output, "--transfer-key", key, "--volume-size", "256K"
    )
    assert status == 0, report
    volumes = sorted(output.iterdir())
    assert [v.name for v in volumes] == [f"vol-{n:03d}" for n in range(1, len(volumes) + 1)]
    assert len(volumes) == report["volumes"] >= 3
    big = read_lock(lock_path).get(BIG, "1.0").manifest.layers[0]
    parts = sorted(output.rglob(f"blobs/sha256/{big.digest[7:]}.part-*"))
    assert len(parts) >= 2, "a blob larger than a volume is split"
    assert b"".join(part.read_bytes() for part in parts) == bytes(
        hashlib.sha256(b"big").digest() * (400 * 1024 // 32)
    )
    total = 0
    for volume in volumes:
        size = sum(p.stat().st_size for p in volume.rglob("*") if p.is_file())
        assert size <= 256 * 1024
        total += size
        status, checked = airgap(capsys, "bundle", "check", volume, "--trusted-keys", public)
        assert status == 0, checked
        assert len(checked["checked_volumes"]) == 1
    assert total == report["bytes"]
    assert sorted(bundle_digests(output)) == sorted(lock_digests(read_lock(lock_path)))
    assert open_bundle([output], TrustedKeys.load([public])).kind == "full"

    # A byte flipped in volume 2 fails volume 2, naming the file; volume 1 still passes.
    victim = max((p for p in volumes[1].rglob("blobs/sha256/*")), key=lambda p: p.stat().st_size)
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 1
    victim.write_bytes(bytes(data))
    status, failed = airgap(capsys, "bundle", "check", volumes[1], "--trusted-keys", public)
    assert status == 1
    assert failed["stderr"].startswith(f"airgap: {victim}: sha256 ")
    assert airgap(capsys, "bundle", "check", volumes[0], "--trusted-keys", public)[0] == 0
    # Without volume 2, the rest still checks and says what is missing.
    shutil.rmtree(volumes[1])
    status, checked = airgap(capsys, "bundle", "check", output, "--trusted-keys", public)
    assert status == 0 and checked["missing_volumes"] == [2]
    assert os.path.exists(volumes[0])
