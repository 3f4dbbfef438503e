"""The notification parser, on envelopes a real Distribution 2.8 sent (see the fixture's
``source``), and on what a stray client might send."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from airgapped_registry.service.events import (
    ENVELOPE_MEDIA_TYPE,
    EnvelopeError,
    ManifestDelete,
    ManifestPush,
    check_content_type,
    parse_envelope,
)

CAPTURED = json.loads(
    (Path(__file__).parent / "fixtures" / "notifications" / "distribution-2.8.json").read_text()
)
INDEX = "sha256:50e6c2d069f56f94036d51aa6f4634d6b22b0829c7843608dde769224ab106d0"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def parsed_all() -> list[object]:
    events: list[object] = []
    for body in CAPTURED["requests"]:
        events += parse_envelope(json.dumps(body).encode()).events
    return events


def test_distribution_sends_its_media_type() -> None:
    assert CAPTURED["content_type"] == ENVELOPE_MEDIA_TYPE
    check_content_type(CAPTURED["content_type"])


def test_only_manifest_pushes_and_digest_deletes_are_kept_from_a_real_session() -> None:
    events = parsed_all()
    pushes = [e for e in events if isinstance(e, ManifestPush)]
    # skopeo copy --all: two platform manifests by digest, then the index by tag; then a
    # single Docker v2s2 manifest by tag. cosign's .sig and .att manifests are dropped.
    assert [(p.repository, p.media_type, p.tag) for p in pushes] == [
        ("ci/app", OCI_MANIFEST, None),
        ("ci/app", OCI_MANIFEST, None),
        ("ci/app", "application/vnd.oci.image.index.v1+json", "1.0.0"),
        ("ci/single", "application/vnd.docker.distribution.manifest.v2+json", "v2s2"),
    ]
    assert pushes[2].digest == INDEX
    deletes = [e for e in events if isinstance(e, ManifestDelete)]
    assert [d.repository for d in deletes] == ["ci/single"]
    assert deletes[0].digest == pushes[3].digest
    # What was dropped: blobs, mounts, pulls, the tag-only delete, cosign's pushes.
    total = sum(len(body["events"]) for body in CAPTURED["requests"])
    assert total - len(events) == 28
    cosign_tags = [
        e["target"]["tag"]
        for body in CAPTURED["requests"]
        for e in body["events"]
        if e["action"] == "push" and e["target"].get("tag", "").startswith("sha256-")
    ]
    assert [tag.rsplit(".", 1)[1] for tag in cosign_tags] == ["sig", "att"]


def event(**target: object) -> dict[str, object]:
    return {"action": "push", "target": {"repository": "ci/app", "digest": INDEX, **target}}


@pytest.mark.parametrize(
    ("item", "kept"),
    [
        (event(mediaType="application/vnd.docker.distribution.manifest.list.v2+json"), True),
        (event(mediaType=OCI_MANIFEST, tag="sha256-" + "a" * 64 + ".sbom"), False),
        (event(mediaType=OCI_MANIFEST, tag="sha256-notacosigntag.sig.extra"), True),
        (event(mediaType="application/vnd.dev.cosign.simplesigning.v1+json"), False),
        (event(mediaType="application/vnd.cncf.helm.config.v1+json"), False),
        (event(mediaType="application/octet-stream"), False),
        ({**event(mediaType=OCI_MANIFEST), "action": "pull"}, False),
        ({**event(mediaType=OCI_MANIFEST), "action": "mount"}, False),
        (event(mediaType=OCI_MANIFEST, tag=7), False),
        (event(mediaType=OCI_MANIFEST, repository="Not/Valid"), False),
        (event(mediaType=OCI_MANIFEST, digest="sha256:short"), False),
        ({"action": "push", "target": "ci/app"}, False),
        ("push", False),
        ({"action": "delete", "target": {"repository": "ci/app", "tag": "1.0.0"}}, False),
        ({"action": "delete", "target": {"repository": "ci/app", "digest": INDEX}}, True),
    ],
)
def test_an_odd_event_is_skipped_not_refused(item: object, kept: bool) -> None:
    parsed = parse_envelope(json.dumps({"events": [item]}).encode())
    assert parsed.total == 1
    assert len(parsed.events) == int(kept)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"not json", "the body is not JSON"),
        (b"\xff\xfe", "the body is not JSON"),
        (b"[]", "the body is not an envelope"),
        (b'{"events": {}}', "the body is not an envelope"),
        (b"{}", "the body is not an envelope"),
    ],
)
def test_a_body_that_is_no_envelope_is_refused(body: bytes, message: str) -> None:
    with pytest.raises(EnvelopeError, match=message):
        parse_envelope(body)


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded"])
def test_a_body_not_declared_as_an_envelope_is_refused(content_type: str | None) -> None:
    with pytest.raises(EnvelopeError, match=r"expected application/vnd\.docker"):
        check_content_type(content_type)
    check_content_type("application/json; charset=utf-8")
