"""Pushing the sample into a real Distribution, read back by our client and by skopeo."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import socket
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from airgap_lab.cli import main
from airgap_lab.sample import (
    BASE_REPOSITORY,
    BASE_TAGS,
    CHART_REPOSITORY,
    TRIVY_DB_REPOSITORY,
    TRIVY_DB_TAG,
    VULNERABLE_REPOSITORY,
    Sample,
    SampleSpec,
    build,
    push,
)
from airgapped_registry.errors import RegistryError
from airgapped_registry.oci.mediatypes import OCI_INDEX
from airgapped_registry.transport.registry import RegistryClient

pytestmark = pytest.mark.integration

PROJECT = Path(__file__).resolve().parents[2]
SRC = PROJECT / "src"
LAB = PROJECT / "lab"
SMALL = SampleSpec(
    repositories=2, tags_per_repository=3, base_layer_bytes=4096, unique_layer_bytes=8192
)
SMALL_OPTIONS = [
    "--repositories=2",
    "--tags-per-repository=3",
    "--base-layer-bytes=4096",
    "--unique-layer-bytes=8192",
]
SKOPEO = "/usr/bin/skopeo"


@pytest.fixture(scope="module")
def small() -> Sample:
    return build(SMALL)


def assert_registry_serves(client: RegistryClient, sample: Sample) -> None:
    for reference, entry in sample.expected().items():
        repository, tag = reference.split(":")
        head = client.head_manifest(repository, tag)
        assert head is not None, reference
        assert (head.digest, head.media_type) == (entry["digest"], entry["media_type"])
        body, media_type, digest = client.get_manifest(repository, tag)
        assert (digest, media_type) == (entry["digest"], entry["media_type"])
        assert body == sample.artifact(reference).manifest
        for platform, child_digest in entry["platforms"].items():
            child = client.head_manifest(repository, child_digest)
            assert child is not None, f"{reference} {platform}"
            assert child.digest == child_digest


def skopeo(*args: str) -> subprocess.CompletedProcess[str]:
    if not os.access(SKOPEO, os.X_OK):
        pytest.fail(f"{SKOPEO} is missing: the project's setup script installs skopeo")
    result = subprocess.run(
        [SKOPEO, "--insecure-policy", *args], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, f"skopeo {' '.join(args)}: {result.stderr}"
    return result


def test_push_makes_every_tag_resolve_to_the_expected_digest(distribution, small) -> None:
    client = RegistryClient(distribution.url)
    report = push(small, client)
    expected = small.expected()
    assert report["changed"] is True
    assert report["pushed"] == list(expected)
    assert report["unchanged"] == 0
    # Each distinct blob crosses the wire once; other repositories get it by mount.
    assert report["blobs_pushed"] == len(small.blob_digests)
    assert report["bytes_pushed"] == sum(len(small.blob(d)) for d in small.blob_digests)
    assert report["blobs_mounted"] > 0
    assert_registry_serves(client, small)
    assert sorted(client.catalog(page_size=2)) == sorted(small.repositories)
    assert sorted(client.tags(BASE_REPOSITORY, page_size=3)) == sorted(BASE_TAGS)
    layer = small.artifact(f"{VULNERABLE_REPOSITORY}:1.0.0").blobs[1]
    assert client.get_blob(VULNERABLE_REPOSITORY, layer.digest) == small.blob(layer.digest)


def test_second_push_changes_nothing_and_only_heads_tags(distribution, small) -> None:
    client = RegistryClient(distribution.url)
    push(small, client)
    report = push(small, client)
    tags = len(small.artifacts)
    assert report["changed"] is False
    assert report["pushed"] == []
    assert report["unchanged"] == tags
    assert (report["blobs_pushed"], report["blobs_mounted"], report["bytes_pushed"]) == (0, 0, 0)
    assert report["requests"] == tags
    assert report["requests_by_method"] == {"HEAD": tags}


def test_check_mode_reports_changes_and_stores_nothing(distribution, small) -> None:
    client = RegistryClient(distribution.url)
    check = push(small, client, check_mode=True)
    assert check["changed"] is True
    assert check["check_mode"] is True
    assert check["pushed"] == list(small.expected())
    assert check["requests_by_method"] == {"HEAD": len(small.artifacts)}
    assert client.catalog() == []

    push(small, client)
    assert push(small, client, check_mode=True)["changed"] is False


def test_changed_base_layer_moves_tags_and_pushes_only_new_blobs(distribution, small) -> None:
    client = RegistryClient(distribution.url)
    push(small, client)
    rebuilt = build(SampleSpec(**{**SMALL.__dict__, "base_generation": 1}))
    before, after = small.expected(), rebuilt.expected()
    moved = [reference for reference in after if after[reference] != before[reference]]
    assert {reference.split(":")[0] for reference in after if reference not in moved} == {
        VULNERABLE_REPOSITORY,
        CHART_REPOSITORY,
        TRIVY_DB_REPOSITORY,
    }

    report = push(rebuilt, client)
    new_blobs = rebuilt.blob_digests - small.blob_digests
    assert report["pushed"] == moved
    assert report["unchanged"] == len(after) - len(moved)
    assert report["blobs_pushed"] == len(new_blobs)
    assert report["bytes_pushed"] == sum(len(rebuilt.blob(d)) for d in new_blobs)
    assert_registry_serves(client, rebuilt)


def test_deleted_manifest_is_restored_by_the_next_push(distribution, small) -> None:
    client = RegistryClient(distribution.url)
    push(small, client)
    reference = f"{CHART_REPOSITORY}:0.2.0"
    client.delete_manifest(CHART_REPOSITORY, small.expected()[reference]["digest"])
    assert client.head_manifest(CHART_REPOSITORY, "0.2.0") is None

    report = push(small, client)
    assert report["pushed"] == [reference]
    assert report["blobs_pushed"] == 0, "the chart's blobs survived the manifest deletion"
    assert_registry_serves(client, small)


def test_index_pushed_before_its_children_is_refused_with_the_cause(distribution, small) -> None:
    client = RegistryClient(distribution.url)
    artifact = small.artifact(f"{BASE_REPOSITORY}:1.0.0")
    with pytest.raises(RegistryError) as caught:
        client.put_manifest(BASE_REPOSITORY, "1.0.0", artifact.manifest, OCI_INDEX)
    assert caught.value.status == 400
    assert caught.value.codes == ["MANIFEST_BLOB_UNKNOWN"] * len(artifact.children)
    assert str(caught.value) == (
        f"PUT {distribution.url}/v2/{BASE_REPOSITORY}/manifests/1.0.0: 400 "
        + "; ".join(
            f"MANIFEST_BLOB_UNKNOWN: blob unknown to registry ({child.digest})"
            for child in artifact.children
        )
    )


def test_push_survives_a_registry_restart_on_a_kept_alive_client(distribution, small) -> None:
    client = RegistryClient(distribution.url)
    push(small, client)
    distribution.restart()
    report = push(small, client)
    assert report["changed"] is False
    # The first HEAD ran into the dropped connection and was sent again on a new one.
    assert report["requests_by_method"] == {"HEAD": len(small.artifacts) + 1}


def test_push_over_mutual_tls_trusts_only_the_given_ca(
    distribution_factory, pki, monkeypatch
) -> None:
    # Tools that honour these would trust the system bundle instead of the internal CA.
    for variable in ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        monkeypatch.setenv(variable, "/etc/ssl/certs/ca-certificates.crt")
    sample = build(
        SampleSpec(
            repositories=1, tags_per_repository=1, base_layer_bytes=512, unique_layer_bytes=512
        )
    )
    registry = distribution_factory(tls=pki)
    client = RegistryClient(registry.url, pki.ca_file, pki.client_cert, pki.client_key)
    assert push(sample, client)["changed"] is True
    assert_registry_serves(client, sample)

    with pytest.raises(RegistryError, match="TLS certificate verification failed"):
        RegistryClient(registry.url, cert_file=pki.client_cert, key_file=pki.client_key).ping()
    with pytest.raises(RegistryError) as caught:
        RegistryClient(registry.url, ca_file=pki.ca_file).ping()
    assert caught.value.status is None, "no client certificate, no HTTP answer"
    registry.stop()


def test_skopeo_reads_the_pushed_index_with_the_same_digests(distribution, small, tmp_path) -> None:
    push(small, RegistryClient(distribution.url))
    reference = f"{BASE_REPOSITORY}:2.0.0-rc.1"
    expected = small.expected()[reference]
    image = f"docker://{distribution.address}/{reference}"

    raw = skopeo("inspect", "--tls-verify=false", "--raw", image).stdout.encode()
    assert "sha256:" + hashlib.sha256(raw).hexdigest() == expected["digest"]
    arm = json.loads(
        skopeo(
            "inspect",
            "--tls-verify=false",
            "--override-arch",
            "arm",
            "--override-variant",
            "v7",
            image,
        ).stdout
    )
    arm_child = small.artifact(reference).children[2]
    assert arm_child.platform == "linux/arm/v7"
    assert (arm["Os"], arm["Architecture"]) == ("linux", "arm")
    assert arm["Layers"] == [blob.digest for blob in arm_child.blobs[1:]]

    layout = tmp_path / "layout"
    skopeo(
        "copy",
        "--all",
        "--preserve-digests",
        "--src-tls-verify=false",
        image,
        f"oci:{layout}:2.0.0-rc.1",
    )
    (entry,) = json.loads((layout / "index.json").read_text())["manifests"]
    assert entry["digest"] == expected["digest"]
    blobs = layout / "blobs" / "sha256"
    for child_digest in expected["platforms"].values():
        assert (blobs / child_digest.split(":")[1]).is_file()


def test_layers_copied_by_skopeo_decompress_to_their_diff_ids(distribution, small, tmp_path):
    push(small, RegistryClient(distribution.url))
    target = tmp_path / "dir"
    skopeo(
        "copy",
        "--src-tls-verify=false",
        "--override-arch",
        "arm64",
        f"docker://{distribution.address}/sample/app-002:2.0.0",
        f"dir:{target}",
    )
    manifest = json.loads((target / "manifest.json").read_text())
    config = json.loads((target / manifest["config"]["digest"].split(":")[1]).read_bytes())
    assert config["architecture"] == "arm64"
    diff_ids = [
        "sha256:"
        + hashlib.sha256(
            gzip.decompress((target / layer["digest"].split(":")[1]).read_bytes())
        ).hexdigest()
        for layer in manifest["layers"]
    ]
    assert config["rootfs"]["diff_ids"] == diff_ids


def test_skopeo_copies_the_helm_chart_artifact(distribution, small, tmp_path) -> None:
    push(small, RegistryClient(distribution.url))
    layout = tmp_path / "chart"
    skopeo(
        "copy",
        "--preserve-digests",
        "--src-tls-verify=false",
        f"docker://{distribution.address}/{CHART_REPOSITORY}:0.1.0",
        f"oci:{layout}:0.1.0",
    )
    (entry,) = json.loads((layout / "index.json").read_text())["manifests"]
    assert entry["digest"] == small.expected()[f"{CHART_REPOSITORY}:0.1.0"]["digest"]


def test_cli_push_then_check_then_catalog(distribution, capsys) -> None:
    options = ["--registry", distribution.url, *SMALL_OPTIONS]
    assert main(["sample", "push", *options]) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["changed"] is True
    assert first["pushed"] == list(build(SMALL).expected())

    assert main(["sample", "push", *options, "--check"]) == 0
    assert json.loads(capsys.readouterr().out)["changed"] is False

    assert main(["sample", "catalog", *SMALL_OPTIONS]) == 0
    assert json.loads(capsys.readouterr().out) == build(SMALL).expected()

    assert main(["sample", "catalog", "--repositories=1", "--platforms=linux/s390x"]) == 0
    catalog = json.loads(capsys.readouterr().out)
    assert list(catalog["sample/app-001:1.0.0"]["platforms"]) == ["linux/s390x"]


def test_a_new_db_day_republishes_the_db_tag_only(distribution, capsys) -> None:
    options = ["sample", "push", "--registry", distribution.url, *SMALL_OPTIONS]
    assert main([*options, "--db-updated-at", "2026-11-30T00:00:00Z"]) == 0
    tags = len(json.loads(capsys.readouterr().out)["pushed"])
    next_day = [*options, "--db-updated-at", "2026-12-01T01:00:00+01:00"]
    assert main(next_day) == 0
    report = json.loads(capsys.readouterr().out)
    reference = f"{TRIVY_DB_REPOSITORY}:{TRIVY_DB_TAG}"
    assert report["pushed"] == [reference]
    assert report["blobs_pushed"] == 1, "a new db.tar.gz; the {} config is already there"
    later = build(SMALL, db_updated_at=datetime(2026, 12, 1, tzinfo=UTC)).expected()[reference]
    head = RegistryClient(distribution.url).head_manifest(TRIVY_DB_REPOSITORY, TRIVY_DB_TAG)
    assert head is not None and head.digest == later["digest"]

    assert main(next_day) == 0
    again = json.loads(capsys.readouterr().out)
    assert (again["changed"], again["requests_by_method"]) == (False, {"HEAD": tags})
    with pytest.raises(SystemExit) as exited:
        main([*options, "--db-updated-at", "2026-12-01T00:00:00"])
    assert exited.value.code == 2
    assert "'2026-12-01T00:00:00' has no time zone (add Z for UTC)" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (
            ["--repositories=-1"],
            "airgap-lab: sample repositories: expected an integer >= 0, got -1",
        ),
        (
            [],
            "airgap-lab: HEAD http://{address}/v2/sample/base/manifests/1.0.0: connection refused",
        ),
        (
            ["--ca-file", "/nonexistent.pem"],
            "airgap-lab: CA file /nonexistent.pem: No such file or directory",
        ),
    ],
)
def test_cli_reports_failures_in_one_line(arguments: list[str], message: str) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{probe.getsockname()[1]}"
    scheme = "https" if "--ca-file" in arguments else "http"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "airgap_lab",
            "sample",
            "push",
            "--registry",
            f"{scheme}://{address}",
            *arguments,
        ],
        env={**os.environ, "PYTHONPATH": f"{SRC}:{LAB}"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == message.format(address=address) + "\n"


def test_cli_version() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "airgapped_registry.cli", "--version"],
        env={**os.environ, "PYTHONPATH": str(SRC)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0
    assert result.stdout.startswith("airgap 0.")
