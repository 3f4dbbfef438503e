"""The lock rewritten for the next hop, and the artifact that carries it: no registry needed."""

from __future__ import annotations

import dataclasses
import json

import pytest

from airgapped_registry.mirror.lock import Archive, Blob, Child, Lock, Manifest, Signature, diff
from airgapped_registry.mirror.lockstore import (
    CONFIG_MEDIA_TYPE,
    LOCK_MEDIA_TYPE,
    artifact,
    registry_address,
    relay_lock,
)
from airgapped_registry.oci.mediatypes import OCI_INDEX, OCI_MANIFEST
from airgapped_registry.oci.reference import digest_of
from tests.unit.test_lock import ENTRIES, digest, entry, image

SIGNED = entry(
    "mirror/sample/base",
    "1.0.0",
    repository="sample/base",
    signatures=(
        Signature(
            digest("sig"),
            OCI_MANIFEST,
            300,
            Blob(digest("sig-config"), "application/vnd.oci.image.config.v1+json", 50),
            (Blob(digest("sig-payload"), "application/vnd.dev.cosign.simplesigning.v1+json", 9),),
            tag=f"sha256-{digest('mirror/sample/base:1.0.0').split(':')[1]}.sig",
            kind="sig",
            subject=digest("mirror/sample/base:1.0.0"),
        ),
    ),
)
FILTERED = entry(
    "sample/filtered",
    "1.0.0",
    manifest=Manifest(digest("filtered index"), OCI_INDEX, 400),
    upstream_digest=digest("upstream index"),
    platform_mode="filter",
    platforms=("linux/amd64",),
    children=(
        Child(**vars(image("f/amd64")), platform="linux/amd64", selected=True, copy=True),
        Child(
            digest("f/arm64"), OCI_MANIFEST, 500, platform="linux/arm64", selected=False, copy=False
        ),
    ),
)
CLASSIC = entry(
    "charts/classic/demo",
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
    archive=Archive("https://charts.example.org/demo-1.2.3.tgz", digest("tgz"), 2048),
)
UPSTREAM = Lock((*ENTRIES, SIGNED, FILTERED, CLASSIC))


def test_every_entry_is_read_from_the_relay_at_its_destination_path() -> None:
    relayed = relay_lock(UPSTREAM, "relay", "relay:443")
    assert [e.key for e in relayed.entries] == [e.key for e in UPSTREAM.entries]
    for before, after in zip(UPSTREAM.entries, relayed.entries, strict=True):
        assert (after.source, after.registry, after.repository) == (
            "relay",
            "relay:443",
            before.destination,
        )
        assert after.archive is None
        assert after.upstream_digest == before.digest  # the relay stores what the tag names


def test_digests_blobs_and_signatures_are_unchanged() -> None:
    relayed = relay_lock(UPSTREAM, "relay", "relay:443")
    for before, after in zip(UPSTREAM.entries, relayed.entries, strict=True):
        assert after.manifest == before.manifest
        assert after.signatures == before.signatures
        assert after.blobs() == before.blobs()
        assert [c for c in before.children if c.copy] == list(after.children)
    # Only where the sync acts differs: the diff names no moved tag.
    changes = diff(UPSTREAM, relayed)
    assert not changes.moved and not changes.added and not changes.removed
    assert {tuple(c["fields"]) for c in changes.changed} >= {("registry", "source")}


def test_a_filter_entry_keeps_only_what_the_relay_holds() -> None:
    after = relay_lock(Lock((FILTERED,)), "relay", "relay:443").entries[0]
    assert after.digest == after.upstream_digest == FILTERED.digest
    assert [c.platform for c in after.children] == ["linux/amd64"]
    assert after.platform_mode == "filter"


def test_rewrite_is_deterministic_and_idempotent() -> None:
    shuffled = Lock(tuple(reversed(UPSTREAM.entries)))
    once = relay_lock(UPSTREAM, "relay", "relay:443")
    assert relay_lock(shuffled, "relay", "relay:443").to_json() == once.to_json()
    assert relay_lock(once, "relay", "relay:443").to_json() == once.to_json()
    assert Lock.from_json(once.to_json()) == once


def test_the_artifact_carries_the_lock_bytes_under_its_media_types() -> None:
    text = UPSTREAM.to_json().encode()
    manifest = json.loads(artifact(text))
    assert manifest["mediaType"] == OCI_MANIFEST
    assert manifest["artifactType"] == manifest["config"]["mediaType"] == CONFIG_MEDIA_TYPE
    assert manifest["config"]["digest"] == digest_of(b"{}")
    (layer,) = manifest["layers"]
    assert layer["mediaType"] == LOCK_MEDIA_TYPE
    assert (layer["digest"], layer["size"]) == (digest_of(text), len(text))
    assert layer["annotations"] == {"org.opencontainers.image.title": "mirror.lock"}
    assert artifact(text) == artifact(bytes(text))  # same lock, same manifest digest
    other = dataclasses.replace(ENTRIES[0], tag="9.9.9")
    assert artifact(Lock((other,)).to_json().encode()) != artifact(text)


@pytest.mark.parametrize(
    ("url", "address"),
    [
        ("https://relay:443", "relay:443"),
        ("https://relay", "relay"),
        ("http://127.0.0.1:5000", "127.0.0.1:5000"),
    ],
)
def test_registry_address(url: str, address: str) -> None:
    assert registry_address(url) == address
