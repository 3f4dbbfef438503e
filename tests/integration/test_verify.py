"""Verify against a real Distribution mirrored by a real sync: what it proves, what it catches.

One mirror is made for the module (the lab list synced from the sample upstream); each test
damages it in one way, checks that ``verify`` names the damage, and repairs it.
"""

from __future__ import annotations

import http.client
import json
from dataclasses import dataclass
from pathlib import Path

import pytest
from mirror_lists import LAB_ENTRIES, SMALL, lab_list

from airgap_lab.sample import Sample, build, push
from airgapped_registry.cli import main
from airgapped_registry.mirror.lock import Lock, read_lock
from airgapped_registry.mirror.relock import lock
from airgapped_registry.mirror.spec import load
from airgapped_registry.mirror.sync import Destination, SyncOptions, sync
from airgapped_registry.mirror.verify import verify
from airgapped_registry.transport.registry import RegistryClient

pytestmark = pytest.mark.integration


@dataclass
class Mirror:
    upstream: object
    target: object
    sample: Sample
    lock: Lock
    lock_path: Path
    spec_path: Path

    @property
    def client(self) -> RegistryClient:
        return RegistryClient(self.target.url)

    def cli(self, *extra: str) -> int:
        command = ["verify", "--lock", str(self.lock_path), "--registry", self.target.url]
        return main([*command, *extra])


@pytest.fixture(scope="module")
def mirror(distribution_factory, tmp_path_factory) -> Mirror:
    directory = tmp_path_factory.mktemp("mirror")
    sample = build(SMALL)
    upstream = distribution_factory()
    push(sample, RegistryClient(upstream.url))
    spec_path = lab_list(directory, upstream.address)
    lock_path = directory / "mirror.lock"
    lock(load(spec_path), lock_path)
    locked = read_lock(lock_path)
    assert locked is not None
    target = distribution_factory()
    report = sync(locked, Destination(target.url), load(spec_path), options=SyncOptions())
    assert report["copied"] == len(locked.entries) == LAB_ENTRIES
    return Mirror(upstream, target, sample, locked, lock_path, spec_path)


def test_verify_reads_every_manifest_from_the_destination_only(mirror, capsys) -> None:
    upstream_log = mirror.upstream.log()
    report = verify(mirror.lock, mirror.client)
    manifests = sum(
        1 + sum(child.copy for child in entry.children) + sum(s.copy for s in entry.signatures)
        for entry in mirror.lock.entries
    )
    assert (report["ok"], report["failed"], report["problems"]) == (LAB_ENTRIES, 0, [])
    assert report["manifests_checked"] == manifests == LAB_ENTRIES + 3 * 3 + 6 * 2
    assert report["requests"] == {
        "destination": {"total": manifests, "by_method": {"GET": manifests}},
        "sources": {},
    }
    assert mirror.upstream.log() == upstream_log

    assert mirror.cli("--deep") == 0
    deep = json.loads(capsys.readouterr().out)
    blobs = sum(len(entry.blobs()) for entry in mirror.lock.entries)
    assert deep["blobs_checked"] == blobs
    assert deep["requests"]["destination"]["by_method"] == {"GET": manifests, "HEAD": blobs}


def test_verify_detects_a_tampered_tag(mirror, capsys) -> None:
    client = mirror.client
    entry = mirror.lock.get("sample/app-001", "2.0.0")
    older = mirror.sample.artifact("sample/app-001:1.1.0")
    client.put_manifest("sample/app-001", "2.0.0", older.manifest, older.media_type)

    report = verify(mirror.lock, client)
    assert (report["ok"], report["failed"]) == (LAB_ENTRIES - 1, 1)
    assert report["problems"] == [
        f"sample/app-001:2.0.0: tag 2.0.0 resolves to {older.digest}, the lock says {entry.digest}"
    ]
    (result,) = [r for r in report["results"] if r["result"] == "failed"]
    assert (result["entry"], result["actual"]) == ("sample/app-001:2.0.0", older.digest)

    assert mirror.cli() == 1
    captured = capsys.readouterr()
    assert json.loads(captured.out)["failed"] == 1
    assert captured.err == (
        f"airgap: 1 of {LAB_ENTRIES} entries differ from the lock: sample/app-001:2.0.0: tag 2.0.0 "
        f"resolves to {older.digest}, the lock says {entry.digest}\n"
    )

    # The plan sees it with its one HEAD, and a sync puts the lock's digest back.
    repaired = sync(mirror.lock, Destination(mirror.target.url), load(mirror.spec_path))
    assert [r["entry"] for r in repaired["results"] if r["result"] == "ok"] == [
        "sample/app-001:2.0.0"
    ]
    assert verify(mirror.lock, client)["failed"] == 0


def test_verify_detects_a_missing_platform(mirror) -> None:
    client = mirror.client
    entry = mirror.lock.get("sample/base", "1.1.0")
    (arm,) = [child for child in entry.children if child.platform == "linux/arm/v7"]
    body, media_type, _ = RegistryClient(mirror.upstream.url).get_manifest(
        "sample/base", arm.digest
    )
    client.delete_manifest("sample/base", arm.digest)
    try:
        report = verify(mirror.lock, client)
        assert report["problems"] == [
            f"sample/base:1.1.0: platform linux/arm/v7 ({arm.digest}) is missing"
        ]
    finally:
        client.put_manifest("sample/base", arm.digest, body, media_type)
    assert verify(mirror.lock, client)["failed"] == 0


def test_deep_verify_detects_a_missing_blob(mirror) -> None:
    client = mirror.client
    entry = mirror.lock.get("sample/vulnerable", "1.0.0")
    (layer,) = entry.manifest.layers
    connection = http.client.HTTPConnection("127.0.0.1", mirror.target.port, timeout=10)
    connection.request("DELETE", f"/v2/sample/vulnerable/blobs/{layer.digest}")
    assert connection.getresponse().status == 202
    connection.close()
    try:
        assert verify(mirror.lock, client)["failed"] == 0, "manifests alone do not see it"
        report = verify(mirror.lock, client, deep=True)
        assert report["problems"] == [
            f"sample/vulnerable:1.0.0: blob {layer.digest} ({layer.size} bytes) is missing"
        ]
    finally:
        client.push_blob("sample/vulnerable", layer.digest, mirror.sample.blob(layer.digest))
    assert verify(mirror.lock, client, deep=True)["failed"] == 0
