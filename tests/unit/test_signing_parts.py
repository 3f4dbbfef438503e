"""The signing domain's pure parts: durations, references, predicates, key records, and the
mirror's view of a signature manifest the appliance added a layer to."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest

from airgapped_registry.errors import ContentError
from airgapped_registry.mirror.lock import Blob, Signature
from airgapped_registry.mirror.signatures import holds, merged
from airgapped_registry.oci.reference import digest_of
from airgapped_registry.signing import keys
from airgapped_registry.signing.config import SigningConfigError, parse_duration
from airgapped_registry.signing.signer import same_predicate, split_reference
from airgapped_registry.tools import cosign


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30d", timedelta(days=30)),
        ("12h", timedelta(hours=12)),
        ("5m", timedelta(minutes=5)),
        ("90s", timedelta(seconds=90)),
        ("0d", timedelta(0)),
    ],
)
def test_durations(text: str, expected: timedelta) -> None:
    assert parse_duration(text, "--overlap") == expected


@pytest.mark.parametrize("text", ["30", "d", "1w", "-1d", "1.5h", " "])
def test_a_bad_duration_is_refused_by_name(text: str) -> None:
    with pytest.raises(SigningConfigError, match=r"^--overlap: .* is not a duration"):
        parse_duration(text, "--overlap")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("ci/app@sha256:" + "a" * 64, ("ci/app", "sha256:" + "a" * 64)),
        ("ci/app:1.0", ("ci/app", "1.0")),
        ("sample/base:2.0.0-rc.1", ("sample/base", "2.0.0-rc.1")),
    ],
)
def test_references(text: str, expected: tuple[str, str]) -> None:
    assert split_reference(text) == expected


@pytest.mark.parametrize("text", ["ci/app", "ci/app@sha256:12", "registry:443/ci/app"])
def test_a_bad_reference_is_refused(text: str) -> None:
    with pytest.raises(ContentError, match=text.split("@")[0]):
        split_reference(text)


PREDICATE = {
    "scanner": {"uri": "pkg:trivy", "result": {"Results": [{"Target": "x"}]}},
    "metadata": {"scanFinishedOn": "2026-11-30T10:00:05Z"},
}


@pytest.mark.parametrize(
    ("stored", "same"),
    [
        (PREDICATE, True),
        ({**PREDICATE, "invocation": {"uri": ""}}, True),  # cosign's own empty fields
        ({**PREDICATE, "metadata": {"scanFinishedOn": "2026-12-01T10:00:05Z"}}, False),
        ({"scanner": PREDICATE["scanner"]}, False),
        ({**PREDICATE, "scanner": {"uri": "pkg:trivy", "result": {"Results": []}}}, False),
    ],
)
def test_an_attestation_is_the_same_when_it_holds_the_predicate(stored: dict, same: bool) -> None:
    assert same_predicate(PREDICATE, stored) is same


def test_the_password_is_masked_in_tool_output() -> None:
    assert cosign.hide("bad password s3cr3t!", "s3cr3t!", "") == "bad password ***"
    argv = cosign.sign_argv("cosign", Path("k.key"), "r/x@sha256:" + "a" * 64)
    assert "--tlog-upload=false" in argv and not any("PASSWORD" in a for a in argv)


def test_a_keys_record_with_a_bad_field_names_it(tmp_path: Path) -> None:
    (tmp_path / "keys.json").write_text(
        json.dumps(
            {
                "version": 1,
                "keys": [{"id": "20261130T100000Z", "state": "gone", "created": "2026-11-30"}],
            }
        )
    )
    with pytest.raises(keys.SigningKeyError, match=r"keys\[0\]: state 'gone' is not one of"):
        keys.load(tmp_path)
    assert keys.load(tmp_path / "none").keys == ()


# -- a signature manifest with the appliance's layer added ---------------------------------

SIMPLE = "application/vnd.dev.cosign.simplesigning.v1+json"


def layer(payload: bytes, signature: str) -> dict:
    return {
        "mediaType": SIMPLE,
        "digest": digest_of(payload),
        "size": len(payload),
        "annotations": {"dev.cosignproject.cosign/signature": signature},
    }


def manifest(*layers: dict) -> bytes:
    config = b'{"rootfs":{"type":"layers","diff_ids":[]},"history":[{"created":"0001"}]}'
    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": digest_of(config),
                "size": len(config),
            },
            "layers": list(layers),
        }
    ).encode()


def locked(*layers: dict) -> Signature:
    body = manifest(*layers)
    return Signature(
        digest_of(body),
        "application/vnd.oci.image.manifest.v1+json",
        len(body),
        None,
        tuple(Blob(item["digest"], SIMPLE, item["size"]) for item in layers),
        tag="sha256-" + "a" * 64 + ".sig",
    )


UPSTREAM = layer(b'{"upstream"}', "MEUC-upstream")
UPSTREAM_AGAIN = layer(b'{"upstream"}', "MEUC-second-key")  # same payload, another key
APPLIANCE = layer(b'{"appliance"}', "MEUC-appliance")


@pytest.mark.parametrize(
    ("held", "signature", "expected"),
    [
        (manifest(UPSTREAM), locked(UPSTREAM), True),
        (manifest(UPSTREAM, APPLIANCE), locked(UPSTREAM), True),
        (manifest(APPLIANCE), locked(UPSTREAM), False),
        # Two signatures of one payload share a digest: each must be there.
        (manifest(UPSTREAM, APPLIANCE), locked(UPSTREAM, UPSTREAM_AGAIN), False),
    ],
)
def test_verify_accepts_the_locked_layers_with_the_appliance_s_added(
    held: bytes, signature: Signature, expected: bool
) -> None:
    assert holds(held, signature, "where") is expected


def test_new_upstream_signatures_are_merged_with_the_appliance_s() -> None:
    config = b'{"rootfs":{"type":"layers","diff_ids":["x"]},"history":[{"created":"0001"}]}'
    body, new_config = merged(
        manifest(UPSTREAM, UPSTREAM_AGAIN), manifest(UPSTREAM, APPLIANCE), config, "where"
    )
    document = json.loads(body)
    assert document["layers"] == [UPSTREAM, UPSTREAM_AGAIN, APPLIANCE]
    image_config = json.loads(new_config)
    assert image_config["rootfs"]["diff_ids"] == [item["digest"] for item in document["layers"]]
    assert len(image_config["history"]) == 2
    assert document["config"]["digest"] == digest_of(new_config)
    assert document["config"]["size"] == len(new_config)
