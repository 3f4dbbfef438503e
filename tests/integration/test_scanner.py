"""The scanner against a real Distribution, real trivy and the lab's fixture DB: the DB
installed from the registry as the lock names it, each platform manifest of an index
scanned, what a rescan reads, and slots that let trivy runs go side by side."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from mirror_lists import TRIVY

from airgap_lab import trivydb
from airgap_lab.sample import (
    BASE_REPOSITORY,
    CHART_REPOSITORY,
    TRIVY_DB_REPOSITORY,
    TRIVY_DB_TAG,
    VULNERABLE_REPOSITORY,
    VULNERABLE_TAG,
    Sample,
    SampleSpec,
    build,
    push,
)
from airgap_lab.trivydb import FIXTURE_VULNERABILITY_ID
from airgapped_registry.errors import DigestMismatchError
from airgapped_registry.oci.mediatypes import OCI_INDEX, OCI_MANIFEST
from airgapped_registry.oci.reference import canonical_json, digest_of
from airgapped_registry.scanning import db as vulndb
from airgapped_registry.scanning.layout import BlobCache, write_layout
from airgapped_registry.scanning.predicate import PREDICATE_TYPE, vuln_predicate
from airgapped_registry.scanning.scanner import Scanner
from airgapped_registry.scanning.server import TrivyServer
from airgapped_registry.tools.process import Tools, run_command
from airgapped_registry.transport.auth import AuthenticatingClient
from airgapped_registry.transport.registry import RegistryClient
from tests.integration.conftest import Distribution, DistributionFactory, htpasswd_line

pytestmark = pytest.mark.integration

UPDATED_AT = datetime(2026, 11, 29, tzinfo=UTC)
SPEC = SampleSpec(
    repositories=1, tags_per_repository=1, base_layer_bytes=2048, unique_layer_bytes=2048
)
MULTI_VULNERABLE = "scan/vulnerable-multi"


@pytest.fixture(scope="module")
def sample() -> Sample:
    return build(SPEC, db_updated_at=UPDATED_AT)


@pytest.fixture(scope="module")
def registry(distribution_factory: DistributionFactory, sample: Sample) -> Distribution:
    registry = distribution_factory()
    with RegistryClient(registry.url) as client:
        push(sample, client)
        push_two_platform_vulnerable(client)
    return registry


@pytest.fixture
def client(registry: Distribution) -> Iterator[RegistryClient]:
    with RegistryClient(registry.url) as client:
        yield client


def db_digest(sample: Sample) -> str:
    return sample.artifact(f"{TRIVY_DB_REPOSITORY}:{TRIVY_DB_TAG}").digest


def write_lock(path: Path, digest: str, tag: str = TRIVY_DB_TAG) -> Path:
    entry = {"destination": TRIVY_DB_REPOSITORY, "tag": tag, "digest": digest}
    path.write_text(json.dumps({"version": 1, "entries": [entry]}))
    return path


@pytest.fixture(scope="module")
def installed_cache(
    tmp_path_factory: pytest.TempPathFactory, registry: Distribution, sample: Sample
) -> Path:
    """A cache directory with the sample's DB installed (shared: tests only scan in it)."""
    cache = tmp_path_factory.mktemp("trivy-cache")
    lock = write_lock(cache.parent / f"{cache.name}.lock", db_digest(sample))
    with RegistryClient(registry.url) as client:
        vulndb.install(client, cache, TRIVY_DB_REPOSITORY, TRIVY_DB_TAG, lock)
    return cache


def push_two_platform_vulnerable(client: RegistryClient) -> None:
    """``scan/vulnerable-multi:1``: an index of the vulnerable image for linux/amd64 and a
    linux/arm64 twin (same layer, a config that says arm64)."""
    body, media_type, _ = client.get_manifest(VULNERABLE_REPOSITORY, VULNERABLE_TAG)
    manifest = json.loads(body)
    config = json.loads(client.get_blob(VULNERABLE_REPOSITORY, manifest["config"]["digest"]))
    children = []
    for architecture in ("amd64", "arm64"):
        config_bytes = canonical_json({**config, "architecture": architecture})
        config_digest = digest_of(config_bytes)
        client.push_blob(MULTI_VULNERABLE, config_digest, config_bytes)
        for layer in manifest["layers"]:
            client.push_blob(MULTI_VULNERABLE, layer["digest"], b"", VULNERABLE_REPOSITORY)
        child = canonical_json(
            {
                **manifest,
                "config": {
                    **manifest["config"],
                    "digest": config_digest,
                    "size": len(config_bytes),
                },
            }
        )
        digest = client.put_manifest(MULTI_VULNERABLE, digest_of(child), child, media_type)
        children.append(
            {
                "mediaType": media_type,
                "digest": digest,
                "size": len(child),
                "platform": {"os": "linux", "architecture": architecture},
            }
        )
    index = canonical_json({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": children})
    client.put_manifest(MULTI_VULNERABLE, "1", index, OCI_INDEX)


def push_db_artifact(client: RegistryClient, layer: bytes, tag: str = TRIVY_DB_TAG) -> str:
    config = b"{}"
    client.push_blob(TRIVY_DB_REPOSITORY, digest_of(config), config)
    client.push_blob(TRIVY_DB_REPOSITORY, digest_of(layer), layer)
    manifest = canonical_json(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": vulndb.DB_CONFIG, "digest": digest_of(config), "size": 2},
            "layers": [
                {"mediaType": vulndb.DB_LAYER, "digest": digest_of(layer), "size": len(layer)}
            ],
        }
    )
    return client.put_manifest(TRIVY_DB_REPOSITORY, tag, manifest, OCI_MANIFEST)


# -- scans ---------------------------------------------------------------------------------


def test_vulnerable_image_fails_on_every_platform(
    client: RegistryClient, installed_cache: Path, sample: Sample
) -> None:
    scanner = Scanner(client, installed_cache, TRIVY, workers=2)
    result = scanner.scan(MULTI_VULNERABLE, "1")
    assert result.not_scanned == ()
    assert sorted(scan.platform for scan in result.manifests) == ["linux/amd64", "linux/arm64"]
    for scan in result.manifests:
        assert [finding.id for finding in scan.findings] == [FIXTURE_VULNERABILITY_ID]
        finding = scan.findings[0]
        assert (finding.package, finding.installed, finding.fixed, finding.severity) == (
            "busybox",
            "1.37.0-r18",
            "1.37.0-r19",
            "CRITICAL",
        )
        assert scan.db.digest == db_digest(sample)
        assert scan.db.updated_at == UPDATED_AT
        assert scan.trivy_version == scanner.version()
        assert scan.started <= scan.finished
        # trivy's report names the image, not the temporary layout it read
        assert scan.report["ArtifactName"] == f"{MULTI_VULNERABLE}@{scan.digest}"
        assert str(installed_cache) not in json.dumps(scan.report)
    # the lab's own single-platform image
    single = scanner.scan(VULNERABLE_REPOSITORY, VULNERABLE_TAG)
    assert [[f.id for f in scan.findings] for scan in single.manifests] == [
        [FIXTURE_VULNERABILITY_ID]
    ]
    assert single.manifests[0].platform == "linux/amd64"


@pytest.mark.parametrize("reference", [f"{BASE_REPOSITORY}:1.0.0", "sample/app-001:1.0.0"])
def test_other_sample_images_have_no_findings(
    client: RegistryClient, installed_cache: Path, sample: Sample, reference: str
) -> None:
    repository, tag = reference.split(":")
    result = Scanner(client, installed_cache, TRIVY, workers=2).scan(repository, tag)
    expected = sample.artifact(reference)
    assert result.digest == expected.digest
    assert result.failed == ()
    assert {scan.digest for scan in result.manifests} == {
        child.digest for child in expected.manifests()
    }
    assert all(scan.findings == () for scan in result.manifests)


def test_what_is_not_an_image_is_not_scanned(client: RegistryClient, installed_cache: Path) -> None:
    scanner = Scanner(client, installed_cache, TRIVY)
    chart = scanner.scan(CHART_REPOSITORY, "0.1.0")
    assert chart.manifests == () and chart.failed == ()
    assert "helm.config" in chart.not_scanned[0].reason
    database = scanner.scan(TRIVY_DB_REPOSITORY, TRIVY_DB_TAG)
    assert database.manifests == () and "trivy.config" in database.not_scanned[0].reason
    # a cosign signature (the .sig tag scheme): an OCI image config, a simplesigning layer
    payload = b'{"critical":{}}'
    config = b'{"architecture":"","os":"","rootfs":{"type":"layers","diff_ids":[]}}'
    client.push_blob("scan/signed", digest_of(payload), payload)
    client.push_blob("scan/signed", digest_of(config), config)
    signature = canonical_json(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": digest_of(config),
                "size": len(config),
            },
            "layers": [
                {
                    "mediaType": "application/vnd.dev.cosign.simplesigning.v1+json",
                    "digest": digest_of(payload),
                    "size": len(payload),
                }
            ],
        }
    )
    client.put_manifest("scan/signed", "sha256-" + "a" * 64 + ".sig", signature, OCI_MANIFEST)
    sig = scanner.scan("scan/signed", "sha256-" + "a" * 64 + ".sig")
    assert sig.manifests == () and sig.failed == ()
    assert "simplesigning" in sig.not_scanned[0].reason
    assert scanner.tools.runs["trivy"] <= 1  # at most the version; never a scan


def test_rescan_reads_no_layer_and_a_lost_trivy_cache_reads_them_again(
    tmp_path: Path, registry: Distribution, sample: Sample
) -> None:
    cache = tmp_path / "cache"
    lock = write_lock(tmp_path / "relay.lock", db_digest(sample))
    with RegistryClient(registry.url) as client:
        vulndb.install(client, cache, TRIVY_DB_REPOSITORY, TRIVY_DB_TAG, lock)
        first = Scanner(client, cache, TRIVY).scan(f"{BASE_REPOSITORY}", "1.0.0")
        assert all(scan.blobs_fetched > 0 for scan in first.manifests)
        # the blob cache is bounded to nothing: only trivy's own cache remembers the layers
        shutil.rmtree(cache / "blobs")
        before = dict(client.requests_by_method)
        again = Scanner(client, cache, TRIVY, blob_cache_bytes=0).scan(BASE_REPOSITORY, "1.0.0")
        blob_gets = client.requests_by_method["GET"] - before.get("GET", 0)
        children = len(again.manifests)
        # GETs: the index, each child manifest, each child's config; never a layer
        assert blob_gets == 1 + 2 * children
        assert all(scan.layers_skipped >= 1 for scan in again.manifests)
        assert [s.findings for s in again.manifests] == [s.findings for s in first.manifests]
        assert not any((cache / "blobs").glob("*/*"))  # pruned to the bound
        # trivy's analysis cache is lost: the scan notices and reads every layer
        for fanal in (cache / "slots").glob("*/fanal"):
            shutil.rmtree(fanal)
        lost = Scanner(client, cache, TRIVY).scan(BASE_REPOSITORY, "1.0.0")
        assert lost.failed == ()
        # (a layer shared by two platforms may be analysed again by the first one's retry)
        assert all(scan.blobs_fetched > 1 for scan in lost.manifests)
        assert [s.findings for s in lost.manifests] == [s.findings for s in first.manifests]


def test_parallel_scans_share_slots(tmp_path: Path, registry: Distribution, sample: Sample) -> None:
    """Two scanners (as two processes would) with two trivy runs each, on one cache."""
    cache = tmp_path / "cache"
    lock = write_lock(tmp_path / "relay.lock", db_digest(sample))
    with RegistryClient(registry.url) as client:
        vulndb.install(client, cache, TRIVY_DB_REPOSITORY, TRIVY_DB_TAG, lock)
    results = {}
    errors: list[BaseException] = []

    def scan(name: str, repository: str, tag: str) -> None:
        try:
            with RegistryClient(registry.url) as own:
                results[name] = Scanner(own, cache, TRIVY, workers=2).scan(repository, tag)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [
        threading.Thread(target=scan, args=("base", BASE_REPOSITORY, "1.0.0")),
        threading.Thread(target=scan, args=("multi", MULTI_VULNERABLE, "1")),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert results["base"].failed == () and len(results["base"].manifests) == 3
    assert results["multi"].failed == () and len(results["multi"].manifests) == 2
    assert sorted(p.name for p in (cache / "slots").iterdir()) == ["0", "1"]


def test_predicate(client: RegistryClient, installed_cache: Path, sample: Sample) -> None:
    scan = Scanner(client, installed_cache, TRIVY).scan(VULNERABLE_REPOSITORY, VULNERABLE_TAG)
    predicate = vuln_predicate(scan.manifests[0])
    assert PREDICATE_TYPE.endswith("/vuln/v1")
    assert set(predicate) == {"invocation", "scanner", "metadata"}
    scanner_part = predicate["scanner"]
    assert scanner_part["uri"] == f"pkg:github/aquasecurity/trivy@{scanner_part['version']}"
    assert scanner_part["db"] == {
        "uri": "pkg:oci/trivy-db@sha256%3A"
        + db_digest(sample).split(":")[1]
        + "?repository_url=aquasecurity/trivy-db&tag=2",
        "version": "2026-11-29T00:00:00Z",
    }
    assert scanner_part["result"]["Results"][0]["Vulnerabilities"][0]["VulnerabilityID"] == (
        FIXTURE_VULNERABILITY_ID
    )
    started = predicate["metadata"]["scanStartedOn"]
    assert started.endswith("Z") and started <= predicate["metadata"]["scanFinishedOn"]


# -- the DB --------------------------------------------------------------------------------


def scan_once(registry: Distribution, cache: Path) -> list[str]:
    with RegistryClient(registry.url) as client:
        result = Scanner(client, cache, TRIVY).scan(VULNERABLE_REPOSITORY, VULNERABLE_TAG)
    assert result.failed == ()
    return [finding.id for scan in result.manifests for finding in scan.findings]


@pytest.fixture
def db_cache(tmp_path: Path, registry: Distribution, sample: Sample) -> Path:
    cache = tmp_path / "cache"
    lock = write_lock(tmp_path / "relay.lock", db_digest(sample))
    with RegistryClient(registry.url) as client:
        report = vulndb.install(client, cache, TRIVY_DB_REPOSITORY, TRIVY_DB_TAG, lock)
        assert report["changed"] is True
        again = vulndb.install(client, cache, TRIVY_DB_REPOSITORY, TRIVY_DB_TAG, lock)
        assert again["changed"] is False
    return cache


def test_db_install_records_the_artifact(db_cache: Path, sample: Sample) -> None:
    current = vulndb.current(db_cache)
    assert current is not None
    assert (current.digest, current.updated_at) == (db_digest(sample), UPDATED_AT)
    assert sorted(p.name for p in current.path.iterdir()) == [
        "installed.json",
        "metadata.json",
        "trivy.db",
    ]
    assert vulndb.current_link(db_cache).is_symlink()
    assert current.stale(timedelta(days=7), now=UPDATED_AT + timedelta(days=7)) is False
    assert current.stale(timedelta(days=7), now=UPDATED_AT + timedelta(days=7, seconds=1))


def test_wrong_lock_digest_is_refused(
    db_cache: Path, tmp_path: Path, registry: Distribution
) -> None:
    before = vulndb.current(db_cache)
    lock = write_lock(tmp_path / "other.lock", "sha256:" + "0" * 64)
    with RegistryClient(registry.url) as client, pytest.raises(vulndb.DbError) as refused:
        vulndb.install(client, db_cache, TRIVY_DB_REPOSITORY, TRIVY_DB_TAG, lock)
    assert "the lock" in str(refused.value) and "0" * 64 in str(refused.value)
    assert vulndb.current(db_cache) == before


def tar_gz(files: list[tuple[str, bytes]], kind: bytes = b"0") -> bytes:
    import io
    import tarfile

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, data in files:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.type = kind
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def good_files(sample: Sample) -> dict[str, bytes]:
    import io
    import tarfile

    artifact = sample.artifact(f"{TRIVY_DB_REPOSITORY}:{TRIVY_DB_TAG}")
    layer = sample.blob(json.loads(artifact.manifest)["layers"][0]["digest"])
    with tarfile.open(fileobj=io.BytesIO(layer), mode="r:gz") as archive:
        return {
            member.name: archive.extractfile(member).read()  # type: ignore[union-attr]
            for member in archive
        }


def bad_layers(sample: Sample) -> dict[str, tuple[bytes, str]]:
    files = good_files(sample)
    good = tar_gz(list(files.items()))
    flipped = bytearray(good)
    flipped[len(flipped) // 2] ^= 0x01
    return {
        "flipped byte": (bytes(flipped), "not a valid tar.gz"),
        "not bbolt": (
            tar_gz(
                [
                    ("trivy.db", b"SQLite format 3\0" * 1024),
                    ("metadata.json", files["metadata.json"]),
                ]
            ),
            "not a bbolt database",
        ),
        "no metadata": (tar_gz([("trivy.db", files["trivy.db"])]), "holds no metadata.json"),
        "path traversal": (
            tar_gz([("../trivy.db", files["trivy.db"]), ("metadata.json", files["metadata.json"])]),
            "unexpected entry '../trivy.db'",
        ),
        "symlink": (
            tar_gz([("trivy.db", b""), ("metadata.json", files["metadata.json"])], kind=b"2"),
            "not a regular file",
        ),
        "metadata version 1": (
            tar_gz(
                [
                    ("trivy.db", files["trivy.db"]),
                    (
                        "metadata.json",
                        json.dumps({"Version": 1, "UpdatedAt": "2026-11-29T00:00:00Z"}).encode(),
                    ),
                ]
            ),
            "Version 1, expected 2",
        ),
    }


@pytest.mark.parametrize(
    "case",
    ["flipped byte", "not bbolt", "no metadata", "path traversal", "symlink", "metadata version 1"],
)
def test_bad_db_artifact_is_refused_and_the_previous_db_stays(
    case: str, db_cache: Path, tmp_path: Path, registry: Distribution, sample: Sample
) -> None:
    before = vulndb.current(db_cache)
    layer, message = bad_layers(sample)[case]
    tag = "bad-" + case.replace(" ", "-")
    with RegistryClient(registry.url) as client:
        digest = push_db_artifact(client, layer, tag)
        lock = write_lock(tmp_path / "bad.lock", digest, tag)
        with pytest.raises(vulndb.DbError) as refused:
            vulndb.install(client, db_cache, TRIVY_DB_REPOSITORY, tag, lock)
    assert message in str(refused.value)
    assert f"{TRIVY_DB_REPOSITORY}@{digest}" in str(refused.value)
    assert vulndb.current(db_cache) == before
    assert [p.name for p in (db_cache / "databases").iterdir() if p.name.startswith(".")] == []
    assert scan_once(registry, db_cache) == [FIXTURE_VULNERABILITY_ID]


def test_corrupted_blob_in_the_registry_is_refused(
    db_cache: Path, tmp_path: Path, distribution: Distribution, sample: Sample
) -> None:
    """The lock names the artifact, but the registry's copy of its layer has a flipped byte:
    the layer's digest check refuses it."""
    with RegistryClient(distribution.url) as client:
        push(build(SPEC, db_updated_at=UPDATED_AT + timedelta(days=1)), client)
        body, _, digest = client.get_manifest(TRIVY_DB_REPOSITORY, TRIVY_DB_TAG)
        layer = json.loads(body)["layers"][0]["digest"].split(":")[1]
        data = distribution.storage / "docker/registry/v2/blobs/sha256" / layer[:2] / layer / "data"
        content = bytearray(data.read_bytes())
        content[100] ^= 0x01
        data.write_bytes(bytes(content))
        lock = write_lock(tmp_path / "relay.lock", digest)
        before = vulndb.current(db_cache)
        with pytest.raises(vulndb.DbError) as refused:
            vulndb.install(client, db_cache, TRIVY_DB_REPOSITORY, TRIVY_DB_TAG, lock)
    assert f"layer sha256:{layer}" in str(refused.value)
    assert vulndb.current(db_cache) == before


def test_new_db_is_swapped_in_and_the_previous_kept(
    db_cache: Path, tmp_path: Path, distribution: Distribution
) -> None:
    newer = build(SPEC, db_updated_at=UPDATED_AT + timedelta(days=1))
    before = vulndb.current(db_cache)
    assert before is not None
    with RegistryClient(distribution.url) as client:
        push(newer, client)
        lock = write_lock(tmp_path / "relay.lock", db_digest(newer))
        report = vulndb.install(client, db_cache, TRIVY_DB_REPOSITORY, TRIVY_DB_TAG, lock)
        result = Scanner(client, db_cache, TRIVY).scan(VULNERABLE_REPOSITORY, VULNERABLE_TAG)
    assert report["changed"] and report["previous"]["digest"] == before.digest
    current = vulndb.current(db_cache)
    assert current is not None and current.digest == db_digest(newer)
    assert current.updated_at == UPDATED_AT + timedelta(days=1)
    assert before.path.is_dir()  # kept
    assert result.manifests[0].db.digest == db_digest(newer)
    assert [f.id for f in result.manifests[0].findings] == [FIXTURE_VULNERABILITY_ID]


def test_cli_scan_db_update(tmp_path: Path, registry: Distribution, sample: Sample) -> None:
    lock = write_lock(tmp_path / "relay.lock", db_digest(sample))
    config = tmp_path / "provenance.yaml"
    config.write_text(
        "version: 1\n"
        f"backend: {registry.url}\n"
        "scanning:\n"
        f"  trivy: {TRIVY}\n"
        f"  cache_dir: {tmp_path / 'cache'}\n"
        "  db:\n"
        f"    repository: {TRIVY_DB_REPOSITORY}\n"
        f"    tag: {TRIVY_DB_TAG}\n"
        f"    lock: {lock}\n"
        "    max_age: 12h\n"
        "  policy: {default: {fail_on: CRITICAL}}\n"
    )
    command = [sys.executable, "-m", "airgapped_registry.cli", "scan", "db", "update"]
    first = subprocess.run([*command, "--config", str(config)], capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    report = json.loads(first.stdout)
    assert report["changed"] is True and report["digest"] == db_digest(sample)
    assert report["current"]["updated_at"] == "2026-11-29T00:00:00Z"
    assert report["stale"] is True  # UpdatedAt is more than 12 h ago
    second = subprocess.run([*command, "--config", str(config)], capture_output=True, text=True)
    assert json.loads(second.stdout)["changed"] is False
    write_lock(lock, "sha256:" + "1" * 64)
    refused = subprocess.run([*command, "--config", str(config)], capture_output=True, text=True)
    assert refused.returncode == 1 and refused.stdout == ""
    assert refused.stderr.startswith("airgap: DB artifact aquasecurity/trivy-db:2: the registry")
    assert len(refused.stderr.strip().splitlines()) == 1


def test_trivy_reads_the_installed_db(client: RegistryClient, installed_cache: Path) -> None:
    """What trivy itself says about the DB the scanner installed (through a slot's link)."""
    assert Scanner(client, installed_cache, TRIVY).version() == "0.76.0"
    started = time.monotonic()
    completed = subprocess.run(
        [
            str(TRIVY),
            "--version",
            "--format",
            "json",
            "--cache-dir",
            str(installed_cache / "slots/0"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert completed.returncode == 0, completed.stderr
    assert json.loads(completed.stdout)["VulnerabilityDB"]["UpdatedAt"] == "2026-11-29T00:00:00Z"
    assert time.monotonic() - started < 30


def test_client_server_mode(tmp_path: Path, registry: Distribution, sample: Sample) -> None:
    """Clients of one trivy server: the same findings, one shared analysis cache, and the
    server restarted when another DB is installed."""
    cache = tmp_path / "cache"
    lock = write_lock(tmp_path / "relay.lock", db_digest(sample))
    with RegistryClient(registry.url) as client, TrivyServer(TRIVY, cache) as server:
        vulndb.install(client, cache, TRIVY_DB_REPOSITORY, TRIVY_DB_TAG, lock)
        scanner = Scanner(client, cache, TRIVY, workers=2, server=server)
        multi = scanner.scan(MULTI_VULNERABLE, "1")
        assert [[f.id for f in scan.findings] for scan in multi.manifests] == [
            [FIXTURE_VULNERABILITY_ID]
        ] * 2
        clean = scanner.scan(BASE_REPOSITORY, "1.0.0")
        assert clean.failed == () and all(scan.findings == () for scan in clean.manifests)
        assert not (cache / "slots").exists()
        # a second scanner of the same server reads no layer: the server's cache has them
        again = Scanner(client, cache, TRIVY, workers=2, server=server).scan(
            BASE_REPOSITORY, "1.0.0"
        )
        assert all(scan.layers_skipped >= 1 for scan in again.manifests)
        first_url = server.url
        # the token is required
        layout = write_layout(
            client,
            BlobCache(tmp_path / "blobs", 1 << 20),
            VULNERABLE_REPOSITORY,
            client.get_manifest(VULNERABLE_REPOSITORY, VULNERABLE_TAG),
            tmp_path / "layout",
        )
        command = [str(TRIVY), "image", "--server", server.url, "--input", str(layout.path)]
        env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
        completed = subprocess.run(
            [*command, "--quiet"], capture_output=True, text=True, timeout=60, env=env
        )
        assert completed.returncode != 0 and "invalid token" in completed.stderr
        # another DB installed: the server is started again with it
        installed = vulndb.current(cache)
        assert installed is not None
        other = dataclasses.replace(installed, digest="sha256:" + "f" * 64)
        server.ensure(other)
        assert server.database == other and server.url != first_url
        assert scanner.scan(VULNERABLE_REPOSITORY, VULNERABLE_TAG).failed == ()


def test_download_blob_streams_to_a_file_and_checks_the_digest(
    tmp_path: Path, distribution_factory: DistributionFactory
) -> None:
    """Layers and the DB reach the disk without being held in memory; through Basic auth
    too (the 401 answer is read, the retry with credentials streamed)."""
    (tmp_path / "htpasswd").write_text(htpasswd_line("alice", "s3cret"))
    guarded = distribution_factory(htpasswd=tmp_path / "htpasswd")
    data = bytes(range(256)) * 9000  # several stream chunks
    with AuthenticatingClient(guarded.url, username="alice", password="s3cret") as client:
        client.push_blob("scan/blob", digest_of(data), data)
        with (tmp_path / "blob").open("w+b") as sink:
            sink.write(b"left over from an earlier try" * 100)
            assert client.download_blob("scan/blob", digest_of(data), sink) == len(data)
        assert (tmp_path / "blob").read_bytes() == data
        hex_digest = digest_of(data).split(":")[1]
        stored = guarded.storage / "docker/registry/v2/blobs/sha256" / hex_digest[:2] / hex_digest
        (stored / "data").write_bytes(data[:-1] + b"\0")
        with (tmp_path / "bad").open("w+b") as sink, pytest.raises(DigestMismatchError):
            client.download_blob("scan/blob", digest_of(data), sink)


def test_a_db_installed_during_a_scan_is_not_the_one_it_reports(
    db_cache: Path, tmp_path: Path, registry: Distribution, sample: Sample
) -> None:
    """Trivy reads the DB the scan reports, even when another is installed meanwhile: here
    one without any advisory, installed just before trivy runs."""
    empty_layer = trivydb.db_archive(updated_at=UPDATED_AT + timedelta(days=2), advisories=())
    installed_first = vulndb.current(db_cache)
    assert installed_first is not None

    def install_then_run(
        argv: Sequence[str], env: Mapping[str, str] | None, timeout: float
    ) -> subprocess.CompletedProcess[str]:
        if argv[1] == "image" and vulndb.current(db_cache) == installed_first:
            with RegistryClient(registry.url) as other:
                digest = push_db_artifact(other, empty_layer, "empty")
                lock = write_lock(tmp_path / "empty.lock", digest, "empty")
                vulndb.install(other, db_cache, TRIVY_DB_REPOSITORY, "empty", lock)
        return run_command(argv, env, timeout)

    with RegistryClient(registry.url) as client:
        scanner = Scanner(client, db_cache, TRIVY, tools=Tools(runner=install_then_run))
        during = scanner.scan(VULNERABLE_REPOSITORY, VULNERABLE_TAG).manifests[0]
        after = scanner.scan(VULNERABLE_REPOSITORY, VULNERABLE_TAG).manifests[0]
    assert during.db.digest == installed_first.digest
    assert [f.id for f in during.findings] == [FIXTURE_VULNERABILITY_ID]
    assert after.db.digest != installed_first.digest and after.findings == ()
