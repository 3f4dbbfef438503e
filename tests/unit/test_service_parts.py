"""The scan service's small decisions: an index's platform children, which stored verdicts
still stand, and verdicts through their rows."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest

from airgapped_registry.errors import AirgapError
from airgapped_registry.scanning.policy import AllowEntry, Policy
from airgapped_registry.scanning.records import from_record, is_current, to_record
from airgapped_registry.scanning.verdict import DbInfo, Finding, combine, judge
from airgapped_registry.service.worker import platform_children

MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DB = DbInfo("sha256:" + "d" * 64, datetime(2026, 11, 29, tzinfo=UTC))


def item(digit: str, media_type: str = MANIFEST, **extra: object) -> dict[str, object]:
    return {"mediaType": media_type, "digest": "sha256:" + digit * 64, "size": 100, **extra}


def test_an_index_children_leave_out_buildx_attestations() -> None:
    document = {
        "manifests": [
            item("1", platform={"os": "linux", "architecture": "amd64"}),
            item(
                "2",
                platform={"os": "unknown", "architecture": "unknown"},
                annotations={"vnd.docker.reference.type": "attestation-manifest"},
            ),
            item("3", platform={"os": "linux", "architecture": "arm64"}),
            item("1"),
        ]
    }
    assert platform_children(document, "ci/app@x") == ("sha256:" + "1" * 64, "sha256:" + "3" * 64)


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({}, "index without a manifests list"),
        ({"manifests": [item("1", "application/vnd.oci.image.index.v1+json")]}, "nested index"),
        ({"manifests": [{"digest": "sha256:bad"}]}, "bad digest"),
    ],
)
def test_an_index_the_service_cannot_walk_is_named(document: dict, message: str) -> None:
    with pytest.raises(AirgapError, match=message):
        platform_children(document, "ci/app@x")


@pytest.mark.parametrize(
    ("status", "made_with", "current", "stands"),
    [
        ("pass", DB.digest, DB, True),
        ("fail", DB.digest, DB, True),
        ("pass", "sha256:" + "e" * 64, DB, False),  # another DB: rescan
        ("pass", DB.digest, None, False),
        ("error", DB.digest, DB, False),  # retried by every pass
        ("skipped", None, None, True),  # not an image: no DB makes it out of date
    ],
)
def test_which_stored_verdicts_still_stand(
    status: str, made_with: str | None, current: DbInfo | None, stands: bool
) -> None:
    assert is_current(status, made_with, current) is stands


def test_a_verdict_survives_its_row() -> None:
    policy = Policy(allow=(AllowEntry("CVE-1", "why", date(2027, 1, 1)),))
    scanned = datetime(2026, 11, 30, 10, tzinfo=UTC)
    children = [
        judge(
            "ci/app",
            "sha256:" + digit * 64,
            [
                Finding("CVE-1", "busybox", "1.0", "1.1", "CRITICAL"),
                Finding("CVE-2", "a", "1", None, "LOW"),
            ],
            policy,
            db=DB,
            scanned_at=scanned,
        )
        for digit in "12"
    ]
    index = combine("ci/app", "sha256:" + "9" * 64, children)
    assert from_record(to_record(index)) == index
    assert from_record(to_record(children[0])) == children[0]
