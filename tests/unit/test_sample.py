"""The sample generator: deterministic, structurally valid images, indexes and charts."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
import yaml

from airgap_lab.sample import (
    BASE_PLATFORMS,
    BASE_REPOSITORY,
    BASE_TAGS,
    CHART_REPOSITORY,
    CHART_TAGS,
    TRIVY_DB_REPOSITORY,
    TRIVY_DB_TAG,
    VULNERABLE_OS,
    VULNERABLE_PACKAGE,
    VULNERABLE_REPOSITORY,
    VULNERABLE_TAG,
    Artifact,
    Sample,
    SampleSpec,
    build,
    db_day,
    gzip_stored,
    semver_series,
)
from airgap_lab.trivydb import CONFIG_MEDIA_TYPE, LAYER_MEDIA_TYPE, metadata
from airgapped_registry.oci.mediatypes import (
    HELM_CHART_CONTENT,
    HELM_CONFIG,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER_GZIP,
    OCI_MANIFEST,
)

SRC = Path(__file__).resolve().parents[2] / "src"
SHOWCASE_TAGS = len(BASE_TAGS) + 1 + len(CHART_TAGS) + 1
SMALL = SampleSpec(
    repositories=2, tags_per_repository=3, base_layer_bytes=2048, unique_layer_bytes=3000
)
# Fixed, so no test here depends on the day it runs.
DB_UPDATED_AT = datetime(2026, 11, 30, tzinfo=UTC)
# Content that neither the seed nor the base generation changes.
FIXED_REPOSITORIES = (VULNERABLE_REPOSITORY, CHART_REPOSITORY, TRIVY_DB_REPOSITORY)


@pytest.fixture(scope="module")
def sample() -> Sample:
    return build(SMALL, db_updated_at=DB_UPDATED_AT)


def app_artifacts(sample: Sample) -> list[Artifact]:
    return [a for a in sample.artifacts if a.repository.startswith("sample/app-")]


def layer_digests(child: Artifact) -> list[str]:
    return [blob.digest for blob in child.blobs[1:]]


def config_of(sample: Sample, child: Artifact) -> dict:
    return json.loads(sample.blob(child.blobs[0].digest))


def layer_files(sample: Sample, digest: str) -> dict[str, tarfile.TarInfo | bytes]:
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(sample.blob(digest)))) as archive:
        return {
            member.name: (archive.extractfile(member).read() if member.isfile() else member)
            for member in archive.getmembers()
        }


# -- determinism ---------------------------------------------------------------------------


def test_same_spec_builds_identical_digests(sample: Sample) -> None:
    again = build(SMALL, db_updated_at=DB_UPDATED_AT)
    assert again.expected() == sample.expected()
    assert again.blob_digests == sample.blob_digests


def test_digests_are_the_same_in_another_process(sample: Sample) -> None:
    # A different hash seed shows no digest depends on str hashing or dict order.
    code = (
        "import json, datetime; from airgap_lab.sample import SampleSpec, build; "
        f"print(json.dumps(build(SampleSpec(**{SMALL.__dict__!r}), "
        f"db_updated_at=datetime.datetime.fromisoformat({DB_UPDATED_AT.isoformat()!r}))"
        ".expected()))"
    )
    env = {**os.environ, "PYTHONPATH": str(SRC), "PYTHONHASHSEED": "12345"}
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert json.loads(result.stdout) == sample.expected()


def test_another_seed_changes_generated_content_but_not_fixed_showcase(sample: Sample) -> None:
    other = build(
        SampleSpec(**{**SMALL.__dict__, "seed": 2}), db_updated_at=DB_UPDATED_AT
    ).expected()
    mine = sample.expected()
    assert other.keys() == mine.keys()
    for reference, entry in mine.items():
        repository = reference.split(":")[0]
        if repository in FIXED_REPOSITORIES:
            assert other[reference] == entry, reference
        else:
            assert other[reference]["digest"] != entry["digest"], reference


# -- structure -----------------------------------------------------------------------------


def test_artifacts_cover_showcase_and_generated_repositories(sample: Sample) -> None:
    expected = sample.expected()
    assert list(expected) == [
        *(f"{BASE_REPOSITORY}:{tag}" for tag in BASE_TAGS),
        f"{VULNERABLE_REPOSITORY}:{VULNERABLE_TAG}",
        *(f"{CHART_REPOSITORY}:{tag}" for tag in CHART_TAGS),
        f"{TRIVY_DB_REPOSITORY}:{TRIVY_DB_TAG}",
        *(f"sample/app-{n:03d}:{tag}" for n in (1, 2) for tag in ("1.0.0", "1.1.0", "2.0.0")),
    ]
    assert "2.0.0-rc.1" in BASE_TAGS
    assert json.loads(json.dumps(expected)) == expected


def test_indexes_list_one_manifest_per_platform(sample: Sample) -> None:
    for artifact in sample.artifacts:
        if artifact.repository in FIXED_REPOSITORIES:
            continue
        index = json.loads(artifact.manifest)
        assert artifact.media_type == index["mediaType"] == OCI_INDEX
        platforms = [
            "/".join(
                filter(
                    None,
                    (
                        e["platform"]["os"],
                        e["platform"]["architecture"],
                        e["platform"].get("variant"),
                    ),
                )
            )
            for e in index["manifests"]
        ]
        wanted = BASE_PLATFORMS if artifact.repository == BASE_REPOSITORY else SMALL.platforms
        assert platforms == list(wanted)
        assert [e["digest"] for e in index["manifests"]] == list(artifact.platforms.values())
        for entry, child in zip(index["manifests"], artifact.children, strict=True):
            assert entry["size"] == len(child.manifest)
            assert hashlib.sha256(child.manifest).hexdigest() == child.digest.split(":")[1]
            assert json.loads(child.manifest)["mediaType"] == OCI_MANIFEST


def test_arm_v7_only_in_sample_base(sample: Sample) -> None:
    holders = {
        artifact.repository for artifact in sample.artifacts if "linux/arm/v7" in artifact.platforms
    }
    assert holders == {BASE_REPOSITORY}


def test_base_layers_shared_by_every_image_of_a_platform(sample: Sample) -> None:
    for platform in SMALL.platforms:
        stacks = [
            layer_digests(child)[: SMALL.base_layers]
            for artifact in sample.artifacts
            for child in artifact.children
            if child.platform == platform
        ]
        assert len(stacks) == len(BASE_TAGS) + SMALL.repositories * SMALL.tags_per_repository
        assert all(stack == stacks[0] for stack in stacks)
    assert (
        layer_digests(sample.artifacts[0].children[0])[:2]
        != layer_digests(sample.artifacts[0].children[1])[:2]
    ), "each platform has its own base layers"


def test_platforms_of_an_image_share_one_layer_and_differ_in_the_top_one(sample: Sample) -> None:
    for artifact in app_artifacts(sample):
        amd64, arm64 = (layer_digests(child) for child in artifact.children)
        assert len(amd64) == SMALL.base_layers + 2
        assert amd64[SMALL.base_layers] == arm64[SMALL.base_layers]
        assert amd64[-1] != arm64[-1]
    tops = [layer_digests(c)[-1] for a in app_artifacts(sample) for c in a.children]
    assert len(set(tops)) == len(tops), "unique layers are unique"


def test_configs_declare_platform_and_diff_ids_of_the_uncompressed_layers(sample: Sample) -> None:
    children = [child for artifact in sample.artifacts for child in artifact.manifests()]
    images = [child for child in children if child.blobs[0].media_type == OCI_CONFIG]
    assert len(images) == len(BASE_TAGS) * 3 + 1 + 6 * len(SMALL.platforms)
    for child in images:
        config = config_of(sample, child)
        manifest = json.loads(child.manifest)
        assert manifest["config"] == {
            "mediaType": OCI_CONFIG,
            "digest": child.blobs[0].digest,
            "size": child.blobs[0].size,
        }
        os_name, architecture, *variant = (child.platform or "").split("/")
        assert (config["os"], config["architecture"]) == (os_name, architecture)
        assert config.get("variant") == (variant[0] if variant else None)
        diff_ids = []
        for layer in manifest["layers"]:
            assert layer["mediaType"] == OCI_LAYER_GZIP
            blob = sample.blob(layer["digest"])
            assert len(blob) == layer["size"]
            assert "sha256:" + hashlib.sha256(blob).hexdigest() == layer["digest"]
            diff_ids.append("sha256:" + hashlib.sha256(gzip.decompress(blob)).hexdigest())
        assert config["rootfs"] == {"type": "layers", "diff_ids": diff_ids}


def test_layers_are_tars_with_fixed_metadata(sample: Sample) -> None:
    artifact = app_artifacts(sample)[0]
    files = {}
    for digest in layer_digests(artifact.children[0]):
        files.update(layer_files(sample, digest))
    assert {"usr/lib/sample-base/layer-0.bin", "app/share/assets.bin", "app/bin/app"} <= set(files)
    with tarfile.open(
        fileobj=io.BytesIO(gzip.decompress(sample.blob(layer_digests(artifact.children[0])[-1])))
    ) as archive:
        members = archive.getmembers()
    assert [m.name for m in members] == ["app", "app/bin", "app/bin/app"]
    assert {(m.uid, m.gid, m.mtime) for m in members} == {(0, 0, 1704067200)}
    assert members[-1].mode == 0o755


def test_unique_layer_holds_unique_layer_bytes_of_incompressible_content() -> None:
    spec = SampleSpec(repositories=1, tags_per_repository=1, unique_layer_bytes=200_000)
    sample = build(spec)
    child = app_artifacts(sample)[0].children[0]
    top = child.blobs[-1]
    content = layer_files(sample, top.digest)["app/bin/app"]
    assert len(content) == 200_000
    assert len(gzip.compress(content)) > 199_000, "gzip cannot shrink it"
    assert 200_000 < top.size < 200_000 + 16 * 1024, "tar headers and padding only"


def test_large_blobs_regenerate_to_their_digest() -> None:
    sample = build(
        SampleSpec(
            repositories=1,
            tags_per_repository=1,
            base_layer_bytes=300_000,
            unique_layer_bytes=300_000,
        )
    )
    for digest in sample.blob_digests:
        assert "sha256:" + hashlib.sha256(sample.blob(digest)).hexdigest() == digest


def test_vulnerable_image_holds_alpine_release_and_package_below_fixed_version(
    sample: Sample,
) -> None:
    artifact = sample.artifact(f"{VULNERABLE_REPOSITORY}:{VULNERABLE_TAG}")
    assert artifact.media_type == OCI_MANIFEST
    assert artifact.platforms == {"linux/amd64": artifact.digest}
    (layer,) = layer_digests(artifact)
    files = layer_files(sample, layer)
    os_release = dict(line.split("=", 1) for line in files["etc/os-release"].decode().splitlines())
    assert os_release["ID"] == VULNERABLE_OS[0] == "alpine"
    assert os_release["VERSION_ID"].startswith(VULNERABLE_OS[1] + ".")
    assert files["etc/alpine-release"].decode().startswith(VULNERABLE_OS[1] + ".")
    installed = files["lib/apk/db/installed"].decode()
    assert f"P:{VULNERABLE_PACKAGE.name}\nV:{VULNERABLE_PACKAGE.version}\n" in installed
    assert installed.endswith("\n\n"), "apk separates packages with a blank line"

    def apk_version(text: str) -> tuple[tuple[int, ...], int]:
        version, release = text.split("-r")
        return tuple(map(int, version.split("."))), int(release)

    assert apk_version(VULNERABLE_PACKAGE.version) < apk_version(VULNERABLE_PACKAGE.fixed_version)


@pytest.mark.parametrize("version", CHART_TAGS)
def test_chart_is_an_oci_helm_chart(sample: Sample, version: str) -> None:
    artifact = sample.artifact(f"{CHART_REPOSITORY}:{version}")
    manifest = json.loads(artifact.manifest)
    assert manifest["config"]["mediaType"] == HELM_CONFIG
    assert [layer["mediaType"] for layer in manifest["layers"]] == [HELM_CHART_CONTENT]
    assert artifact.platforms == {}
    config = json.loads(sample.blob(manifest["config"]["digest"]))
    assert (config["name"], config["version"], config["apiVersion"]) == ("demo", version, "v2")
    files = layer_files(sample, manifest["layers"][0]["digest"])
    assert set(files) == {"demo/Chart.yaml", "demo/values.yaml", "demo/templates/deployment.yaml"}
    chart = yaml.safe_load(files["demo/Chart.yaml"])
    assert chart == {**chart, "apiVersion": "v2", "name": "demo", "version": version}
    assert yaml.safe_load(files["demo/values.yaml"])["image"]["repository"] == BASE_REPOSITORY
    assert b"kind: Deployment" in files["demo/templates/deployment.yaml"]


def test_trivy_db_is_the_artifact_trivy_downloads(sample: Sample) -> None:
    artifact = sample.artifact(f"{TRIVY_DB_REPOSITORY}:{TRIVY_DB_TAG}")
    manifest = json.loads(artifact.manifest)
    assert artifact.media_type == manifest["mediaType"] == OCI_MANIFEST
    assert artifact.platforms == {}
    assert manifest["config"]["mediaType"] == CONFIG_MEDIA_TYPE
    assert sample.blob(manifest["config"]["digest"]) == b"{}"
    (layer,) = manifest["layers"]
    assert layer["mediaType"] == LAYER_MEDIA_TYPE
    assert layer["annotations"] == {"org.opencontainers.image.title": "db.tar.gz"}
    assert manifest["annotations"] == {"org.opencontainers.image.created": "2026-11-30T00:00:00Z"}
    files = layer_files(sample, layer["digest"])
    assert set(files) == {"trivy.db", "metadata.json"}
    assert json.loads(files["metadata.json"]) == metadata(DB_UPDATED_AT)
    assert [blob.digest for blob in artifact.blobs] == [
        manifest["config"]["digest"],
        layer["digest"],
    ]


def test_another_db_day_moves_the_db_tag_only(sample: Sample) -> None:
    later = build(SMALL, db_updated_at=DB_UPDATED_AT + timedelta(days=1)).expected()
    moved = [ref for ref, entry in sample.expected().items() if later[ref] != entry]
    assert moved == [f"{TRIVY_DB_REPOSITORY}:{TRIVY_DB_TAG}"]


def test_the_db_is_updated_at_the_start_of_the_current_utc_day_by_default() -> None:
    assert db_day(datetime(2026, 11, 30, 23, 59, 59, tzinfo=UTC)) == DB_UPDATED_AT
    # 01:30 at UTC+2 is still the day before in UTC.
    east = datetime(2026, 12, 1, 1, 30, tzinfo=timezone(timedelta(hours=2)))
    assert db_day(east) == DB_UPDATED_AT
    before, sample, after = db_day(), build(SampleSpec(repositories=0)), db_day()
    reference = f"{TRIVY_DB_REPOSITORY}:{TRIVY_DB_TAG}"
    candidates = {
        build(SampleSpec(repositories=0), db_updated_at=day).expected()[reference]["digest"]
        for day in {before, after}
    }
    assert sample.expected()[reference]["digest"] in candidates


# -- base generation -----------------------------------------------------------------------


def test_base_generation_changes_one_base_layer_per_platform(sample: Sample) -> None:
    rebuilt = build(
        SampleSpec(**{**SMALL.__dict__, "base_generation": 1}), db_updated_at=DB_UPDATED_AT
    )

    def layers(s: Sample) -> set[str]:
        return {d for a in s.artifacts for c in a.manifests() for d in layer_digests(c)}

    new_layers = layers(rebuilt) - layers(sample)
    assert len(new_layers) == len(BASE_PLATFORMS), "one per platform, arm/v7 included"
    for before, after in zip(sample.artifacts, rebuilt.artifacts, strict=True):
        uses_base = before.repository not in FIXED_REPOSITORIES
        assert (before.digest != after.digest) == uses_base, before.reference
        for old, new in zip(before.manifests(), after.manifests(), strict=True):
            changed = [
                position
                for position, (a, b) in enumerate(
                    zip(layer_digests(old), layer_digests(new), strict=True)
                )
                if a != b
            ]
            assert changed == ([SMALL.base_layers - 1] if uses_base else [])


# -- spec ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"repositories": -1}, "repositories: expected an integer >= 0, got -1"),
        ({"tags_per_repository": 0}, "tags_per_repository: expected an integer >= 1"),
        ({"base_layers": 0}, "base_layers: expected an integer >= 1"),
        ({"unique_layer_bytes": 0}, "unique_layer_bytes: expected an integer >= 1"),
        ({"base_layer_bytes": 1.5}, "base_layer_bytes: expected an integer >= 1, got 1.5"),
        ({"seed": True}, "seed: expected an integer >= 0, got True"),
        ({"base_generation": -2}, "base_generation: expected an integer >= 0"),
        ({"platforms": ()}, "at least one platform"),
        ({"platforms": "linux/amd64"}, "expected a list"),
        ({"platforms": ("linux",)}, "'linux' is not os/arch"),
        ({"platforms": ("linux/amd64", "linux/amd64")}, "duplicates"),
    ],
)
def test_spec_rejects_invalid_values(overrides: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SampleSpec(**overrides)


@pytest.mark.parametrize(
    ("repositories", "tags_per_repository"), [(0, 1), (1, 1), (3, 3), (12, 5), (150, 1)]
)
def test_scale_sets_the_number_of_artifacts(repositories: int, tags_per_repository: int) -> None:
    spec = SampleSpec(
        repositories=repositories,
        tags_per_repository=tags_per_repository,
        base_layer_bytes=64,
        unique_layer_bytes=64,
    )
    sample = build(spec)
    apps = app_artifacts(sample)
    assert len(sample.artifacts) == SHOWCASE_TAGS + repositories * tags_per_repository
    assert len({a.repository for a in apps}) == repositories
    assert len({a.digest for a in apps}) == len(apps)


@pytest.mark.parametrize(
    ("count", "series"),
    [
        (1, ["1.0.0"]),
        (3, ["1.0.0", "1.1.0", "2.0.0"]),
        (7, ["1.0.0", "1.1.0", "2.0.0", "2.0.1", "2.1.0", "3.0.0", "3.0.1"]),
    ],
)
def test_semver_series_spans_minors_and_majors(count: int, series: list[str]) -> None:
    assert semver_series(count) == series


@pytest.mark.parametrize("size", [0, 1, 65_534, 65_535, 65_536, 200_001])
def test_gzip_stored_round_trips_through_gzip(size: int) -> None:
    data = bytes(range(256)) * (size // 256) + bytes(size % 256)
    assert gzip.decompress(gzip_stored(data)) == data
