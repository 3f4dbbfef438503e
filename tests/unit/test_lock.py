"""The lock's data model: deterministic file, round trip, diff, platform selection, charts."""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path

import pytest

from airgap_lab.sample import CHART_REPOSITORY, build, tar_layer
from airgapped_registry.errors import AirgapError, ContentError
from airgapped_registry.mirror.lock import (
    LOCK_VERSION,
    Archive,
    Blob,
    Child,
    Lock,
    LockEntry,
    LockError,
    Manifest,
    Signature,
    diff,
    read_lock,
)
from airgapped_registry.mirror.sources import source_access
from airgapped_registry.mirror.spec import loads
from airgapped_registry.oci.helm import chart_manifest
from airgapped_registry.oci.manifest import filtered_index
from airgapped_registry.oci.mediatypes import (
    HELM_CHART_CONTENT,
    HELM_CONFIG,
    OCI_INDEX,
    OCI_MANIFEST,
)
from airgapped_registry.oci.platform import platform_matches
from airgapped_registry.oci.reference import digest_of


def digest(name: str) -> str:
    return digest_of(name.encode())


def image(name: str) -> Manifest:
    return Manifest(
        digest(name),
        OCI_MANIFEST,
        500,
        Blob(digest(f"{name}-config"), "application/vnd.oci.image.config.v1+json", 100),
        (Blob(digest(f"{name}-layer"), "application/vnd.oci.image.layer.v1.tar+gzip", 4096),),
    )


def entry(destination: str, tag: str, name: str | None = None, **changes) -> LockEntry:
    name = name or f"{destination}:{tag}"
    amd64, arm64 = image(f"{name}/amd64"), image(f"{name}/arm64")
    children = tuple(
        Child(**vars(manifest), platform=platform, selected=True, copy=True)
        for manifest, platform in ((amd64, "linux/amd64"), (arm64, "linux/arm64"))
    )
    fields = {
        "kind": "image",
        "destination": destination,
        "tag": tag,
        "manifest": Manifest(digest(name), OCI_INDEX, 700),
        "upstream_digest": digest(name),
        "source": "upstream",
        "registry": "upstream:5000",
        "repository": destination,
        "platform_mode": "preserve-index",
        "platforms": ("linux/amd64", "linux/arm64"),
        "children": children,
        **changes,
    }
    return LockEntry(**fields)


ENTRIES = [
    entry("sample/base", "1.0.0"),
    entry("sample/base", "1.1.0"),
    entry("sample/app-001", "2.0.0"),
    entry(
        "charts/demo",
        "0.1.0",
        kind="chart",
        manifest=image("chart"),
        upstream_digest=image("chart").digest,
        platform_mode=None,
        platforms=(),
        children=(),
    ),
]


def test_lock_file_is_sorted_and_stable_whatever_the_order() -> None:
    texts = set()
    for seed in range(5):
        shuffled = ENTRIES[:]
        random.Random(seed).shuffle(shuffled)
        texts.add(Lock(tuple(shuffled)).to_json())
    (text,) = texts
    document = json.loads(text)
    assert document["version"] == LOCK_VERSION
    assert [(e["destination"], e["tag"]) for e in document["entries"]] == [
        ("charts/demo", "0.1.0"),
        ("sample/app-001", "2.0.0"),
        ("sample/base", "1.0.0"),
        ("sample/base", "1.1.0"),
    ]
    assert text.endswith("}\n")
    assert text == json.dumps(document, indent=2, sort_keys=True) + "\n"


def test_lock_round_trips_through_its_file_format() -> None:
    signed = entry(
        "sample/base",
        "2.0.0",
        signatures=(
            Signature(
                digest("sig"),
                OCI_MANIFEST,
                558,
                Blob(digest("sig-config"), "application/vnd.oci.image.config.v1+json", 233),
                (Blob(digest("payload"), "application/vnd.dev.cosign.simplesigning.v1+json", 9),),
                tag=digest("sample/base:2.0.0").replace(":", "-") + ".sig",
                kind="sig",
                subject=digest("sample/base:2.0.0"),
                copy=True,
            ),
        ),
    )
    classic = entry(
        "charts/classic",
        "1.2.3",
        kind="chart",
        manifest=image("classic"),
        upstream_digest=image("classic").digest,
        source=None,
        registry=None,
        repository=None,
        platform_mode=None,
        platforms=(),
        children=(),
        archive=Archive("http://charts.example/demo-1.2.3.tgz", digest("tgz"), 1234),
    )
    original = Lock((*ENTRIES, signed, classic))
    again = Lock.from_json(original.to_json())
    assert again == original
    assert again.to_json() == original.to_json()


def test_entry_blobs_are_those_of_copied_manifests_once_each() -> None:
    locked = entry("sample/base", "1.0.0")
    shared = locked.children[0].layers[0]
    arm = locked.children[1]
    skipped = Child(**{**vars(arm), "layers": (shared,), "selected": False, "copy": False})
    locked = LockEntry(**{**vars(locked), "children": (locked.children[0], skipped)})
    blobs = locked.blobs()
    assert [blob.digest for blob in blobs] == [
        locked.children[0].config.digest,  # type: ignore[union-attr]
        shared.digest,
    ]


def test_diff_reports_added_removed_moved_and_changed() -> None:
    old = Lock(tuple(ENTRIES))
    moved = entry("sample/base", "1.1.0", name="rebuilt")
    changed = entry("sample/app-001", "2.0.0", platforms=("linux/amd64",))
    added = entry("sample/base", "2.0.0")
    new = Lock((ENTRIES[0], moved, changed, added))
    result = diff(old, new)
    assert result.to_json() == {
        "added": [{"destination": "sample/base", "tag": "2.0.0", "digest": added.digest}],
        "removed": [{"destination": "charts/demo", "tag": "0.1.0", "digest": ENTRIES[3].digest}],
        "moved": [
            {
                "destination": "sample/base",
                "tag": "1.1.0",
                "old": ENTRIES[1].digest,
                "new": moved.digest,
            }
        ],
        "changed": [
            {
                "destination": "sample/app-001",
                "tag": "2.0.0",
                "digest": changed.digest,
                "fields": ["platforms"],
            }
        ],
    }
    assert result.summary() == "1 added, 1 removed, 1 moved, 1 changed"
    assert not diff(old, Lock(tuple(reversed(ENTRIES))))
    assert diff(None, old).summary() == "4 added"


# What the mirror list asks now, for entry("sample/base", "1.0.0"): reusable as it is.
ASKED = {
    "kind": "image",
    "source": "upstream",
    "registry": "upstream:5000",
    "repository": "sample/base",
    "pinned": None,
    "platforms": ("linux/amd64", "linux/arm64"),
    "platform_mode": None,
}


@pytest.mark.parametrize(
    ("recorded", "asked", "expected"),
    [
        ({}, {}, True),
        ({}, {"platform_mode": "preserve-index"}, True),
        ({}, {"platform_mode": "filter"}, False),
        ({"platform_mode": "filter"}, {"platform_mode": "filter"}, True),
        ({}, {"kind": "artifact"}, False),
        ({}, {"source": "other"}, False),
        ({}, {"registry": "moved:5000"}, False),
        ({}, {"repository": "sample/other"}, False),
        ({}, {"pinned": digest("pin")}, False),
        ({"pinned": digest("pin")}, {"pinned": digest("pin")}, True),
        ({}, {"platforms": ("linux/amd64",)}, False),
        # A single manifest records no platform mode; one that does is not reused.
        ({"children": (), "platform_mode": None}, {}, True),
        ({"children": (), "platform_mode": "filter"}, {"platform_mode": "filter"}, False),
        # From a classic Helm repository: resolved from index.yaml every time.
        ({"archive": Archive("http://charts/demo-0.1.0.tgz", digest("tgz"), 10)}, {}, False),
    ],
)
def test_reusable_for_asks_every_field_the_list_decides(
    recorded: dict, asked: dict, expected: bool
) -> None:
    previous = entry("sample/base", "1.0.0", **recorded)
    assert previous.reusable_for(**{**ASKED, **asked}) is expected


def test_still_serves_compares_digest_media_type_and_the_size_of_a_stored_manifest() -> None:
    previous = entry("sample/base", "1.0.0")
    upstream = previous.upstream_digest
    assert previous.still_serves(upstream, OCI_INDEX, 700)
    assert not previous.still_serves(digest("moved"), OCI_INDEX, 700)
    assert not previous.still_serves(upstream, OCI_MANIFEST, 700)
    assert not previous.still_serves(upstream, OCI_INDEX, 701)
    # A filtered index is stored, not the upstream one: the upstream size is not recorded.
    filtered = entry("sample/base", "1.0.0", manifest=Manifest(digest("filtered"), OCI_INDEX, 9))
    assert filtered.still_serves(upstream, OCI_INDEX, 701)


@pytest.mark.parametrize(
    ("platform", "wanted", "expected"),
    [
        ("linux/amd64", "linux/amd64", True),
        ("linux/arm/v7", "linux/arm", True),
        ("linux/arm/v7", "linux/arm/v7", True),
        ("linux/arm/v6", "linux/arm/v7", False),
        ("linux/arm64", "linux/arm64/v8", True),
        ("linux/arm64/v8", "linux/arm64", True),
        ("linux/amd64", "linux/arm64", False),
        ("windows/amd64", "linux/amd64", False),
        ("unknown/unknown", "linux/amd64", False),
        (None, "linux/amd64", False),
    ],
)
def test_platform_matching(platform: str | None, wanted: str, expected: bool) -> None:
    assert platform_matches(platform, wanted) is expected


def test_filtered_index_keeps_everything_but_the_dropped_children() -> None:
    base = build().artifact("sample/base:1.0.0")
    amd64, _, arm_v7 = base.children
    filtered = filtered_index(base.manifest, {amd64.digest, arm_v7.digest})
    document = json.loads(filtered)
    original = json.loads(base.manifest)
    assert [item["digest"] for item in document["manifests"]] == [amd64.digest, arm_v7.digest]
    assert {k: v for k, v in document.items() if k != "manifests"} == {
        k: v for k, v in original.items() if k != "manifests"
    }
    assert filtered == filtered_index(base.manifest, {arm_v7.digest, amd64.digest})
    # Keeping every child reproduces the upstream bytes of a canonically written index.
    everything = {child.digest for child in base.children}
    assert filtered_index(base.manifest, everything) == base.manifest


def test_chart_manifest_of_a_classic_chart_archive() -> None:
    sample = build()
    chart = sample.artifact(f"{CHART_REPOSITORY}:0.1.0")
    archive = sample.blob(chart.blobs[1].digest)
    config, manifest = chart_manifest(archive)
    assert (config, manifest) == chart_manifest(archive)
    assert json.loads(config) == {
        "apiVersion": "v2",
        "appVersion": "1.0.0",
        "description": "Demo chart of the Airgapped Registry sample upstream",
        "name": "demo",
        "type": "application",
        "version": "0.1.0",
    }
    document = json.loads(manifest)
    assert document["mediaType"] == OCI_MANIFEST
    assert document["config"] == {
        "mediaType": HELM_CONFIG,
        "digest": digest_of(config),
        "size": len(config),
    }
    assert document["layers"] == [
        {"mediaType": HELM_CHART_CONTENT, "digest": digest_of(archive), "size": len(archive)}
    ]
    assert document["annotations"]["org.opencontainers.image.version"] == "0.1.0"


def test_chart_archive_without_chart_yaml_is_refused() -> None:
    archive = gzip.compress(tar_layer([("demo/values.yaml", b"a: 1\n", 0o644)]))
    with pytest.raises(ContentError, match=r"without <chart>/Chart\.yaml"):
        chart_manifest(archive)
    with pytest.raises(ContentError, match="unreadable"):
        chart_manifest(b"not gzip")


def test_read_lock(tmp_path: Path) -> None:
    path = tmp_path / "mirror.lock"
    assert read_lock(path) is None
    path.write_text(Lock(tuple(ENTRIES)).to_json())
    assert read_lock(path) == Lock(tuple(ENTRIES))
    path.write_text('{"version": 7, "entries": []}')
    with pytest.raises(LockError, match=rf"{path}: lock format version 7, expected 1"):
        read_lock(path)
    path.write_text('{"version": 1, "entries": [{"kind": "image"}]}')
    with pytest.raises(LockError, match=rf"{path}: malformed lock entry \(KeyError"):
        read_lock(path)
    path.write_text("{")
    with pytest.raises(LockError, match=rf"{path}: not a lock file"):
        read_lock(path)


# -- source clients ------------------------------------------------------------------------

SOURCE = """\
version: 1
sources:
  corp:
    registry: 127.0.0.1:5443
    signatures: none
{extra}
images:
  - {{source: corp, repository: a/b, tags: ["1.0.0"]}}
"""


def client_for(tmp_path: Path, extra: str):
    path = tmp_path / "mirror.yaml"
    path.write_text(SOURCE.format(extra=extra))
    spec = loads(path.read_text(), str(path))
    return source_access(spec, spec.sources["corp"]).client()


def test_cert_dir_follows_skopeo_rules(tmp_path: Path, pki) -> None:
    certs = tmp_path / "certs.d"
    certs.mkdir()
    (certs / "ca.crt").write_bytes(pki.ca_file.read_bytes())
    (certs / "client.cert").write_bytes(pki.client_cert.read_bytes())
    (certs / "client.key").write_bytes(pki.client_key.read_bytes())
    client = client_for(tmp_path, "    cert_dir: certs.d")
    assert client.base_url == "https://127.0.0.1:5443"

    (certs / "other.key").write_bytes(pki.client_key.read_bytes())
    with pytest.raises(AirgapError, match=r"certs\.d: other\.key has no other\.cert"):
        client_for(tmp_path, "    cert_dir: certs.d")
    (certs / "other.key").unlink()
    (certs / "broken.crt").write_text("not a certificate\n")
    with pytest.raises(AirgapError, match=r"CA file .*broken\.crt: not usable"):
        client_for(tmp_path, "    cert_dir: certs.d")


def test_insecure_source_is_plain_http(tmp_path: Path) -> None:
    client = client_for(tmp_path, "    insecure: true")
    assert client.base_url == "http://127.0.0.1:5443"
