"""The plan's decisions, totals and table, and the pieces of the sync that read tool output.

Plans against real registries are in ``tests/integration/test_sync.py``; here the lock
entries are built by hand and the destination's answer is a ``ManifestRef``.
"""

from __future__ import annotations

import subprocess
from dataclasses import replace

import pytest

from airgapped_registry.mirror.lock import Blob, Child, LockEntry, Manifest, Signature
from airgapped_registry.mirror.plan import (
    COPY,
    SKIP,
    Plan,
    PlannedEntry,
    blobs_to_move,
    decide,
    fingerprint,
    human_bytes,
)
from airgapped_registry.oci.mediatypes import OCI_INDEX, OCI_MANIFEST
from airgapped_registry.oci.reference import digest_of
from airgapped_registry.tools.process import tool_error
from airgapped_registry.tools.skopeo import copy_failure, skopeo_copy_argv
from airgapped_registry.transport.registry import ManifestRef


def digest(name: str) -> str:
    return digest_of(name.encode())


def blob(name: str, size: int) -> Blob:
    return Blob(digest(name), "application/vnd.oci.image.layer.v1.tar+gzip", size)


BASE = blob("base", 1000)


def child(name: str, platform: str) -> Child:
    return Child(
        digest(name),
        OCI_MANIFEST,
        400,
        blob(f"{name}-config", 10),
        (BASE, blob(f"{name}-layer", 100)),
        platform=platform,
        selected=True,
        copy=True,
    )


def entry(tag: str = "1.0.0", **changes) -> LockEntry:
    index = Manifest(digest(f"index-{tag}"), OCI_INDEX, 300)
    made = LockEntry(
        kind="image",
        destination="sample/app",
        tag=tag,
        manifest=index,
        upstream_digest=index.digest,
        source="upstream",
        registry="upstream:5000",
        repository="sample/app",
        platform_mode="preserve-index",
        platforms=("linux/amd64", "linux/arm64"),
        children=(child(f"amd64-{tag}", "linux/amd64"), child(f"arm64-{tag}", "linux/arm64")),
    )
    return replace(made, **changes)


def signature(subject: str) -> Signature:
    tag = subject.replace(":", "-") + ".sig"
    return Signature(
        digest(tag),
        OCI_MANIFEST,
        250,
        blob(f"{tag}-config", 20),
        (blob(f"{tag}-payload", 30),),
        tag=tag,
        subject=subject,
    )


def ref(digest_value: str) -> ManifestRef:
    return ManifestRef(digest_value, OCI_INDEX, 300)


# -- decisions -----------------------------------------------------------------------------

SIGNED = entry(signatures=(signature(digest("index-1.0.0")),))

DECISIONS = [
    pytest.param(entry(), None, None, COPY, "absent at the destination", id="absent"),
    pytest.param(
        entry(),
        ref(digest("older")),
        None,
        COPY,
        f"destination tag holds {digest('older')}",
        id="moved",
    ),
    pytest.param(entry(), ref(entry().digest), None, SKIP, "up to date", id="up-to-date"),
    pytest.param(
        entry(),
        ref(entry().digest),
        fingerprint(entry()),
        SKIP,
        "up to date",
        id="up-to-date-same-fingerprint",
    ),
    pytest.param(
        SIGNED,
        ref(SIGNED.digest),
        fingerprint(entry()),
        COPY,
        "same digest, but the lock entry changed since the last sync",
        id="signature-appeared",
    ),
]


@pytest.mark.parametrize(("locked", "current", "synced", "action", "reason"), DECISIONS)
def test_decide(locked, current, synced, action, reason) -> None:
    assert decide(locked, current, synced) == (action, reason)


def test_fingerprint_is_stable_and_sees_every_field() -> None:
    assert fingerprint(entry()) == fingerprint(entry())
    assert fingerprint(entry()).startswith("sha256:")
    assert fingerprint(SIGNED) != fingerprint(entry())
    assert fingerprint(entry(platforms=("linux/amd64",))) != fingerprint(entry())


def test_blobs_to_move_are_the_entry_blobs_or_only_its_signatures() -> None:
    everything = blobs_to_move(SIGNED, content_present=False)
    assert everything == tuple(SIGNED.blobs())
    assert [b.size for b in everything].count(1000) == 1, "the shared base layer, once"
    only_signatures = blobs_to_move(SIGNED, content_present=True)
    assert [b.size for b in only_signatures] == [20, 30]


# -- totals and the table ------------------------------------------------------------------


def planned(locked: LockEntry, current: str | None) -> PlannedEntry:
    action, reason = decide(locked, ref(current) if current else None)
    content = current == locked.digest
    blobs = blobs_to_move(locked, content) if action == COPY else ()
    return PlannedEntry(locked, action, reason, current, blobs)


def test_plan_totals_count_each_blob_once_across_entries() -> None:
    first, second, third = entry("1.0.0"), entry("2.0.0"), entry("3.0.0")
    result = Plan(
        "http://registry:5000",
        (planned(first, None), planned(second, digest("old")), planned(third, third.digest)),
        {"destination": {"total": 3, "by_method": {"HEAD": 3}}, "sources": {}},
    )
    assert [p.action for p in result.entries] == [COPY, COPY, SKIP]
    # Per entry: base 1000 + 2 x (config 10 + layer 100) = 1220; the base layer is shared.
    assert [p.bytes for p in result.entries] == [1220, 1220, 0]
    assert result.bytes == 1220 + 220
    assert result.to_json()["blobs"] == 9
    assert result.missing_bytes is None
    assert result.summary() == (
        "3 entries: 2 to copy, 1 up to date; at most 1.4 KiB to send (9 blobs, present ones "
        "are skipped); 3 requests to registry:5000 (3 HEAD), none to the sources"
    )


def test_table_has_one_line_per_entry_then_the_summary() -> None:
    signed_now = planned(SIGNED, SIGNED.digest)
    signed_now = replace(signed_now, action=COPY, blobs=blobs_to_move(SIGNED, True))
    result = Plan(
        "https://registry.internal",
        (planned(entry("2.0.0"), None), signed_now, planned(entry("3.0.0"), entry("3.0.0").digest)),
        {"destination": {"total": 3, "by_method": {"HEAD": 3}}, "sources": {}},
    )
    lines = result.table().splitlines()
    assert lines[0].split() == ["ACTION", "ENTRY", "DIGEST", "NOW", "BLOBS", "BYTES"]
    first = ["copy", "sample/app:2.0.0", entry("2.0.0").digest[:19], "absent", "5", "1.2", "KiB"]
    assert lines[1].split() == first
    assert lines[2].split()[:4] == ["copy", "sample/app:1.0.0", SIGNED.digest[:19], "signatures"]
    assert lines[2].split()[4:] == ["2", "50", "B"]
    assert lines[3].split()[:2] == ["skip", "sample/app:3.0.0"]
    assert lines[3].endswith("up to date")
    assert lines[4].startswith(
        "3 entries: 2 to copy, 1 up to date; at most 1.2 KiB to send (7 blobs"
    )


@pytest.mark.parametrize(
    ("count", "text"),
    [(0, "0 B"), (1023, "1023 B"), (1024, "1.0 KiB"), (1536, "1.5 KiB"), (5 << 20, "5.0 MiB")],
)
def test_human_bytes(count: int, text: str) -> None:
    assert human_bytes(count) == text


# -- reading skopeo's and cosign's output ----------------------------------------------------


def test_tool_error_keeps_the_fatal_message_without_upload_tokens() -> None:
    stderr = (
        "Getting image source signatures\n"
        'time="t" level=fatal msg="writing blob: Patch \\"http://r/v2/x/blobs/uploads/u?_state'
        '=SECRET\\": Digest did not match, expected sha256:1, got sha256:2"\n'
    )
    assert tool_error(stderr) == (
        'writing blob: Patch "http://r/v2/x/blobs/uploads/u": Digest did not match, expected '
        "sha256:1, got sha256:2"
    )
    cosign = "WARNING: Skipping tlog verification\nError: no matching signatures: invalid\nmain.go"
    assert tool_error(cosign) == "Error: no matching signatures: invalid"
    assert tool_error("") == "no output"


@pytest.mark.parametrize(
    ("stderr", "message", "permanent"),
    [
        (
            'time="t" level=fatal msg="initializing source docker://up/a@sha256:1: reading '
            'manifest sha256:1 in up/a: manifest unknown: manifest unknown"\n',
            "skopeo copy failed (exit 1): initializing source docker://up/a@sha256:1: reading "
            "manifest sha256:1 in up/a: manifest unknown: manifest unknown",
            True,
        ),
        (
            'time="t" level=fatal msg="writing blob: happened during read: Digest did not '
            f'match, expected {"sha256:" + "a" * 64}, got {"sha256:" + "b" * 64}"\n',
            f"blob {'sha256:' + 'a' * 64}: the source served content with digest "
            f"{'sha256:' + 'b' * 64} (corrupt upstream blob); refused, nothing tagged",
            True,
        ),
        (
            'time="t" level=fatal msg="initializing source docker://up/a@sha256:1: pinging '
            'container registry up: Get \\"http://up/v2/\\": connect: connection refused"\n',
            "skopeo copy failed (exit 1): initializing source docker://up/a@sha256:1: pinging "
            'container registry up: Get "http://up/v2/": connect: connection refused',
            False,
        ),
    ],
)
def test_copy_failure_reads_skopeos_fatal_line(stderr: str, message: str, permanent: bool) -> None:
    # What skopeo prints without --debug: progress on stdout, the fatal line on stderr.
    completed = subprocess.CompletedProcess(
        ["skopeo"], 1, "Getting image source signatures\nCopying blob sha256:1\n", stderr
    )
    failure = copy_failure(completed)
    assert (str(failure), failure.permanent) == (message, permanent)


def test_skopeo_copy_argv() -> None:
    argv = skopeo_copy_argv(
        "skopeo",
        "docker://up:5000/a@sha256:1",
        "docker://down:5000/a@sha256:1",
        index=True,
        retry_times=3,
        source_options=["--src-tls-verify=false", "--src-no-creds"],
        destination_options=["--dest-cert-dir", "/d"],
    )
    assert argv == [
        "skopeo",
        "--insecure-policy",
        "--debug",
        "copy",
        "--preserve-digests",
        "--remove-signatures",
        "--retry-times=3",
        "--all",
        "--src-tls-verify=false",
        "--src-no-creds",
        "--dest-cert-dir",
        "/d",
        "docker://up:5000/a@sha256:1",
        "docker://down:5000/a@sha256:1",
    ]
    single = skopeo_copy_argv("skopeo", "s", "d", index=False, retry_times=0)
    assert "--all" not in single and single[-2:] == ["s", "d"]
