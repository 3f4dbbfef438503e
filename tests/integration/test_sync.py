"""Plan and sync against real Distribution instances, with the real skopeo and cosign.

The source is a loopback Distribution seeded with the sample upstream; the destination
starts empty. What a user would see is checked: digests at the destination, tags present or
absent, blobs uploaded according to the destination's own access log, exit codes, messages.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import re
import shutil
import signal
import ssl
import subprocess
import sys
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml
from mirror_lists import COSIGN, LAB_ENTRIES, MOVED, SMALL, lab_list

from airgap_lab.sample import BASE_REPOSITORY, Sample, SampleSpec, build, push
from airgap_lab.trivydb import LAYER_MEDIA_TYPE
from airgapped_registry.cli import main
from airgapped_registry.mirror.lock import Lock, LockEntry, read_lock
from airgapped_registry.mirror.relock import lock
from airgapped_registry.mirror.spec import load
from airgapped_registry.mirror.sync import Destination, SyncOptions, sync
from airgapped_registry.mirror.verify import verify
from airgapped_registry.state.runlock import EXIT_LOCKED, RunLock
from airgapped_registry.state.store import StateStore
from airgapped_registry.transport.auth import AuthenticatingClient
from airgapped_registry.transport.registry import RegistryClient

pytestmark = pytest.mark.integration

_UPLOAD = re.compile(
    r'"PUT /v2/(?P<repository>\S+?)/blobs/uploads/\S*digest=sha256%3A(?P<hex>[0-9a-f]{64})'
    r'\S* HTTP/1\.1" 201'
)


# -- helpers -------------------------------------------------------------------------------

# Who copies an entry's content: the engine (small entries, the default here since the
# sample is small) or skopeo (forced with a limit of 0). Tests of the copy run with both.
COPIERS = {"engine": {}, "skopeo": {"engine_copy_max_bytes": 0}}


@pytest.fixture(params=sorted(COPIERS))
def copier(request) -> str:
    return request.param


def copier_args(copier: str) -> list[str]:
    return [] if copier == "engine" else ["--engine-copy-max-bytes", "0"]


@pytest.fixture(scope="module")
def small() -> Sample:
    return build(SMALL)


@pytest.fixture(scope="module")
def upstream(distribution_factory, small):
    """The sample upstream, shared by the tests that only read it."""
    registry = seeded(distribution_factory, small)
    yield registry
    registry.stop()


@pytest.fixture
def own_upstream(distribution_factory, upstream):
    """A copy of the sample upstream for one test to change (its storage copied: seconds
    faster than pushing the sample again)."""
    registry = distribution_factory()
    registry.stop()
    shutil.rmtree(registry.storage, ignore_errors=True)
    shutil.copytree(upstream.storage, registry.storage)
    registry.start()
    yield registry
    registry.stop()


def seeded(distribution_factory, sample: Sample, **options):
    registry = distribution_factory(**options)
    client = RegistryClient(
        registry.url,
        **(
            {
                "ca_file": registry.pki.ca_file,
                "cert_file": registry.pki.client_cert,
                "key_file": registry.pki.client_key,
            }
            if registry.pki
            else {}
        ),
    )
    push(sample, client)
    return registry


def write_list(
    directory: Path, address: str, body: str, source: str = "    insecure: true\n"
) -> Path:
    path = directory / "mirror.yaml"
    path.write_text(
        f"version: 1\nsources:\n  upstream:\n    registry: {address}\n{source}"
        "    signatures: none\n" + body
    )
    return path


def locked(spec_path: Path) -> Lock:
    lock_path = spec_path.with_name("mirror.lock")
    lock(load(spec_path), lock_path)
    result = read_lock(lock_path)
    assert result is not None
    return result


def run_sync(
    spec_path: Path,
    destination,
    state: Path,
    copier: str = "engine",
    force: bool = False,
    **options,
) -> dict:
    options = {"cosign": str(COSIGN), "backoff": 0.1, **COPIERS[copier], **options}
    lock_path = spec_path.with_name("mirror.lock")
    lock_file = read_lock(lock_path)
    assert lock_file is not None
    target = destination if isinstance(destination, Destination) else Destination(destination.url)
    with StateStore(state) as store:
        return sync(
            lock_file,
            target,
            load(spec_path),
            options=SyncOptions(**options),
            state=store,
            lock_path=str(lock_path),
            force=force,
        )


def sync_args(spec_path: Path, registry, state: Path, *options: str) -> list[str]:
    """``airgap sync`` of the list beside its lock into ``registry``, then ``options``."""
    lock_path = str(spec_path.with_name("mirror.lock"))
    command = ["sync", "--lock", lock_path, "--spec", str(spec_path), "--registry", registry.url]
    return [*command, "--state", str(state), *options]


# The CLI as its own process, for tests that kill it or hold its run lock.
CLI = [sys.executable, "-m", "airgapped_registry.cli"]


def settled_log(registry) -> str:
    """The registry's log once its uploads stopped growing: Distribution writes an access-log
    line after the response has gone out, so a client can be faster than the log."""
    text = registry.log()
    for _ in range(50):
        time.sleep(0.2)
        again = registry.log()
        if uploads(again) == uploads(text):
            return again
        text = again
    raise AssertionError(f"{registry.url} kept receiving uploads")


def uploads(log: str) -> list[tuple[str, str]]:
    """``(repository, digest)`` of every blob upload the registry completed, in log order."""
    return [(m["repository"], f"sha256:{m['hex']}") for m in _UPLOAD.finditer(log)]


def head(client: RegistryClient, repository: str, reference: str) -> str | None:
    found = client.head_manifest(repository, reference)
    return found.digest if found else None


def tags(client: RegistryClient, repository: str) -> list[str]:
    try:
        return client.tags(repository)
    except Exception as exc:  # a repository never pushed to answers 404 NAME_UNKNOWN
        assert "404" in str(exc), exc
        return []


def incomplete(client: RegistryClient, entry: LockEntry) -> list[str]:
    """What ``destination:tag`` lacks, when the tag exists and names the lock's digest."""
    if head(client, entry.destination, entry.tag) != entry.digest:
        return []
    missing = [
        f"child {child.digest}"
        for child in entry.children
        if child.copy and head(client, entry.destination, child.digest) is None
    ]
    missing += [
        f"signature {signature.tag}"
        for signature in entry.signatures
        if signature.copy and head(client, entry.destination, signature.tag) != signature.digest
    ]
    return missing


def corrupt(registry, digest: str) -> None:
    """Flip one byte of a blob in the registry's storage (same size, other digest)."""
    hexdigest = digest.split(":")[1]
    data = registry.storage / "docker/registry/v2/blobs/sha256" / hexdigest[:2] / hexdigest
    content = bytearray((data / "data").read_bytes())
    content[len(content) // 2] ^= 0xFF
    (data / "data").write_bytes(bytes(content))


def cosign(*args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [str(COSIGN), *args],
        cwd=cwd,
        env={**os.environ, "COSIGN_PASSWORD": "airgap-tests", "COSIGN_YES": "true"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if check:
        assert result.returncode == 0, f"cosign {' '.join(args)}: {result.stderr}"
    return result


def sign(registry, repository: str, digest: str, directory: Path) -> None:
    options = ["--key", "cosign.key", "--tlog-upload=false", "--allow-http-registry"]
    reference = f"{registry.address}/{repository}@{digest}"
    cosign("sign", *options, "--recursive", reference, cwd=directory)


# -- the lab list: cold, no-op ---------------------------------------------------------------


def test_lab_list_cold_sync_then_noop(
    distribution_factory, upstream, small, tmp_path, capsys, copier
) -> None:
    target = distribution_factory()
    spec_path = lab_list(tmp_path, upstream.address)
    lock_file = locked(spec_path)
    state = tmp_path / "state.db"

    report = run_sync(spec_path, target, state, copier)
    assert (report["entries"], report["copied"], report["failed"]) == (LAB_ENTRIES, LAB_ENTRIES, 0)
    assert report["copies"] == {copier: LAB_ENTRIES}
    assert report["tools"] == ({} if copier == "engine" else {"skopeo": LAB_ENTRIES})
    client = RegistryClient(target.url)
    expected = small.expected()
    for entry in lock_file.entries:
        assert head(client, entry.destination, entry.tag) == entry.digest
        assert entry.digest == expected[f"{entry.repository}:{entry.tag}"]["digest"]
        assert incomplete(client, entry) == []
    # preserve-index: the arm/v7 child is copied although not selected; the index keeps
    # upstream's digest.
    base = lock_file.get(BASE_REPOSITORY, "1.0.0")
    assert base is not None and base.digest == base.upstream_digest
    (arm,) = [child for child in base.children if child.platform == "linux/arm/v7"]
    assert not arm.selected and arm.copy
    assert head(client, BASE_REPOSITORY, arm.digest) == arm.digest
    # The chart is an OCI artifact with Helm's config media type, copied as it is.
    body, _, digest = client.get_manifest("charts/demo", "0.1.0")
    assert digest == lock_file.get("charts/demo", "0.1.0").digest
    assert json.loads(body)["config"]["mediaType"] == "application/vnd.cncf.helm.config.v1+json"
    # So is the Trivy DB, with Trivy's own config and layer media types.
    body, _, digest = client.get_manifest("aquasecurity/trivy-db", "2")
    assert digest == expected["aquasecurity/trivy-db:2"]["digest"]
    assert [layer["mediaType"] for layer in json.loads(body)["layers"]] == [LAYER_MEDIA_TYPE]
    assert verify(lock_file, client)["failed"] == 0

    # Uploaded bytes per the destination's own log equal what the report says it sent.
    sizes = {blob.digest: blob.size for entry in lock_file.entries for blob in entry.blobs()}
    # Entries sharing a blob do not upload it side by side: each blob is sent once.
    sent = [digest for _, digest in uploads(settled_log(target))]
    assert sorted(sent) == sorted(sizes)
    assert report["bytes"] == sum(sizes.values())
    with StateStore(state) as store:
        states = store.entries(target.address)
        assert [(s.result, s.in_sync, s.detail) for s in states] == [
            ("ok", True, "copied")
        ] * LAB_ENTRIES
        assert store.last_run().summary == report["summary"]
    assert re.fullmatch(
        rf"entries={LAB_ENTRIES} copied={LAB_ENTRIES} bytes=\d+ duration=\d+s failures=0",
        report["summary"],
    )

    # No-op: one HEAD per entry at the destination, nothing at all at the source.
    upstream_log = upstream.log()
    again = run_sync(spec_path, target, state, copier)
    assert (again["copied"], again["up_to_date"], again["bytes"]) == (0, LAB_ENTRIES, 0)
    assert again["requests"] == {
        "destination": {"total": LAB_ENTRIES, "by_method": {"HEAD": LAB_ENTRIES}},
        "sources": {},
    }
    assert again["tools"] == {}
    assert upstream.log() == upstream_log, "a no-op sync must not contact the source"
    assert [r["result"] for r in again["results"]] == ["skipped"] * LAB_ENTRIES

    command = ["plan", "--lock", str(spec_path.with_name("mirror.lock")), "--registry", target.url]
    with pytest.raises(SystemExit) as exited:
        main([*command, "--state", str(state)])
    assert exited.value.code == 0
    table = capsys.readouterr().out
    entries = LAB_ENTRIES
    assert f"{entries} entries: 0 to copy, {entries} up to date; {entries} requests to" in table
    assert "none to the sources" in table


def test_plan_json_counts_bytes_and_checks_blobs(
    distribution_factory, upstream, small, tmp_path, capsys
):
    target = distribution_factory()
    spec_path = lab_list(tmp_path, upstream.address)
    lock_file = locked(spec_path)
    base = lock_file.get(BASE_REPOSITORY, "1.0.0")
    command = ["plan", "--lock", str(spec_path.with_name("mirror.lock"))]
    command += ["--registry", target.url, "--state", str(tmp_path / "none.db"), "--json"]
    assert main(command) == 0
    report = json.loads(capsys.readouterr().out)
    distinct = {blob.digest: blob.size for entry in lock_file.entries for blob in entry.blobs()}
    assert (report["to_copy"], report["bytes"], report["blobs"]) == (
        LAB_ENTRIES,
        sum(distinct.values()),
        len(distinct),
    )
    assert report["requests"]["destination"] == {
        "total": LAB_ENTRIES,
        "by_method": {"HEAD": LAB_ENTRIES},
    }

    # With sample/base:1.0.0's blobs there, its blob HEADs find nothing missing.
    client = RegistryClient(target.url)
    for blob in base.blobs():
        client.push_blob(BASE_REPOSITORY, blob.digest, small.blob(blob.digest))
    assert main([*command, "--blobs"]) == 0
    checked = json.loads(capsys.readouterr().out)
    entry = next(item for item in checked["plan"] if item["entry"] == base.reference)
    assert (entry["missing_blobs"], entry["missing_bytes"]) == (0, 0)
    others = [item for item in checked["plan"] if item["entry"].startswith("sample/base:")]
    # 1.1.0 and 2.0.0 share the three base layers per platform with 1.0.0.
    assert all(item["missing_bytes"] < item["bytes"] for item in others)
    assert checked["requests"]["destination"]["by_method"]["HEAD"] > LAB_ENTRIES


# -- platform modes ------------------------------------------------------------------------


def test_filter_mode_writes_the_index_the_lock_recorded(
    distribution_factory, upstream, small, tmp_path, copier
):
    target = distribution_factory()
    spec_path = write_list(
        tmp_path,
        upstream.address,
        """\
images:
  - source: upstream
    repository: sample/base
    tags: ["1.0.0"]
    platforms: [linux/arm/v7]
    platform_mode: filter
    destination: filtered/base
""",
    )
    (entry,) = locked(spec_path).entries
    assert entry.digest != entry.upstream_digest
    report = run_sync(spec_path, target, tmp_path / "state.db", copier)
    assert report["copied"] == 1, report
    assert report["copies"] == {copier: 1}
    client = RegistryClient(target.url)
    assert head(client, "filtered/base", "1.0.0") == entry.digest
    for child in entry.children:
        present = head(client, "filtered/base", child.digest) == child.digest
        assert present == (child.platform == "linux/arm/v7"), child.platform
    assert verify(read_lock(spec_path.with_name("mirror.lock")), client)["failed"] == 0


# -- signatures ----------------------------------------------------------------------------


APP_001_SIGNED = """\
images:
  - source: upstream
    repository: sample/app-001
    regex: '^[0-9]+\\.[0-9]+\\.[0-9]+$'
    max_tags: 2
    signatures: {keys: [cosign.pub]}
"""


def test_signed_image_signatures_copied_and_verified(
    distribution_factory, own_upstream, small, tmp_path, copier
):
    upstream = own_upstream
    cosign("generate-key-pair", cwd=tmp_path)
    signed = small.artifact("sample/app-001:2.0.0")
    older = small.artifact("sample/app-001:1.1.0")
    for artifact in (signed, older):
        sign(upstream, artifact.repository, artifact.digest, tmp_path)
    spec_path = write_list(tmp_path, upstream.address, APP_001_SIGNED)
    entry = locked(spec_path).get("sample/app-001", "2.0.0")
    assert len(entry.signatures) == 3  # the index and both platforms (--recursive)

    target = distribution_factory()
    report = run_sync(spec_path, target, tmp_path / "state.db", copier)
    tools = {"cosign": 2, **({"skopeo": 2} if copier == "skopeo" else {})}
    assert (report["copied"], report["tools"], report["copies"]) == (2, tools, {copier: 2})
    client = RegistryClient(target.url)
    for signature in entry.signatures:
        assert head(client, "sample/app-001", signature.tag) == signature.digest
    for reference in (
        f"{target.address}/sample/app-001:2.0.0",
        f"{target.address}/sample/app-001@{signed.children[1].digest}",
    ):
        verified = cosign(
            "verify",
            "--key",
            "cosign.pub",
            "--insecure-ignore-tlog",
            "--allow-http-registry",
            reference,
            cwd=tmp_path,
            check=False,
        )
        assert verified.returncode == 0, verified.stderr

    # A key that did not sign it: refused before anything is written, not retried.
    other = tmp_path / "other"
    other.mkdir()
    cosign("generate-key-pair", cwd=other)
    wrong = write_list(other, upstream.address, APP_001_SIGNED)
    locked(wrong)
    refused_target = distribution_factory()
    refused = run_sync(wrong, refused_target, tmp_path / "refused.db", copier, keep_going=True)
    assert (refused["copied"], refused["failed"], refused["tools"]) == (0, 2, {"cosign": 2})
    failure = next(r for r in refused["results"] if r["entry"] == "sample/app-001:2.0.0")
    assert failure["attempts"] == 1
    assert failure["error"].startswith(
        f"sample/app-001:2.0.0: upstream signature of {upstream.address}/sample/app-001@"
        f"{signed.digest} does not verify: cosign.pub: "
    )
    assert tags(RegistryClient(refused_target.url), "sample/app-001") == []


def test_signature_appearing_later_is_copied(
    distribution_factory, own_upstream, small, tmp_path
) -> None:
    upstream = own_upstream
    target = distribution_factory()
    spec_path = write_list(
        tmp_path,
        upstream.address,
        'images:\n  - {source: upstream, repository: sample/base, semver: ">=1.0.0"}\n',
    )
    locked(spec_path)
    state = tmp_path / "state.db"
    assert run_sync(spec_path, target, state)["copied"] == 3

    cosign("generate-key-pair", cwd=tmp_path)
    signed = small.artifact("sample/base:2.0.0")
    sign(upstream, signed.repository, signed.digest, tmp_path)
    entry = locked(spec_path).get("sample/base", "2.0.0")
    assert len(entry.signatures) == 4  # same digest, the lock entry changed
    report = run_sync(spec_path, target, state)
    (copied,) = [r for r in report["results"] if r["result"] == "ok"]
    assert (copied["entry"], copied["detail"]) == ("sample/base:2.0.0", "signatures copied")
    assert report["tools"] == {}, "the content was there: skopeo is not run"
    client = RegistryClient(target.url)
    assert incomplete(client, entry) == []
    assert run_sync(spec_path, target, state)["copied"] == 0


# -- an upstream tag that moved --------------------------------------------------------------


def test_moved_tags_move_only_the_new_blobs(
    distribution_factory, own_upstream, small, tmp_path, copier
) -> None:
    upstream = own_upstream
    target = distribution_factory()
    spec_path = lab_list(tmp_path, upstream.address)
    before = locked(spec_path)
    state = tmp_path / "state.db"
    run_sync(spec_path, target, state, copier)

    push(build(MOVED), RegistryClient(upstream.url))
    after = locked(spec_path)
    moved = {e.reference for e in after.entries if before.get(*e.key).digest != e.digest}
    assert len(moved) == 9
    old_blobs = {blob.digest for entry in before.entries for blob in entry.blobs()}
    sizes = {blob.digest: blob.size for entry in after.entries for blob in entry.blobs()}
    new_blobs = set(sizes) - old_blobs

    mark = len(settled_log(target))
    report = run_sync(spec_path, target, state, copier)
    assert {r["entry"] for r in report["results"] if r["result"] == "ok"} == moved
    assert report["copies"] == {copier: 9}
    assert report["up_to_date"] == LAB_ENTRIES - 9
    sent = [digest for _, digest in uploads(settled_log(target)[mark:])]
    assert sorted(sent) == sorted(new_blobs), "only the new blobs move, each once"
    assert report["bytes"] == sum(sizes[digest] for digest in new_blobs)
    client = RegistryClient(target.url)
    assert verify(after, client)["failed"] == 0


def test_relock_then_sync_in_one_process_fetches_no_manifest_twice(
    distribution_factory, own_upstream, small, tmp_path, capsys
) -> None:
    upstream = own_upstream
    target = distribution_factory()
    spec_path = lab_list(tmp_path, upstream.address)
    lock_path = spec_path.with_name("mirror.lock")
    state = tmp_path / "state.db"
    command = sync_args(spec_path, target, state, "--relock", "--cosign", str(COSIGN))

    assert main(command) == 0
    captured = capsys.readouterr()
    first = json.loads(captured.out)
    assert "airgap lock: new lock" in captured.err
    assert (first["relock"]["written"], first["copied"], first["failed"]) == (True, LAB_ENTRIES, 0)
    lock_file = read_lock(lock_path)
    assert verify(lock_file, RegistryClient(target.url))["failed"] == 0

    push(build(MOVED), RegistryClient(upstream.url))
    assert main(command) == 0
    report = json.loads(capsys.readouterr().out)
    after = read_lock(lock_path)
    assert report["relock"]["changed"] and report["copies"] == {"engine": 9}
    # The relock fetched every new manifest; the copies fetched blobs only, each new one once.
    new_blobs = {b.digest for e in after.entries for b in e.blobs()} - {
        b.digest for e in lock_file.entries for b in e.blobs()
    }
    assert report["requests"]["sources"]["upstream"]["by_method"] == {"GET": len(new_blobs)}
    assert verify(after, RegistryClient(target.url))["failed"] == 0


def test_summary_goes_to_stdout_and_the_report_to_a_file(
    distribution_factory, own_upstream, small, tmp_path, capsys
) -> None:
    """The nightly job's form: one summary line for the log, the JSON report for Ansible,
    written whether the run succeeded or not."""
    upstream = own_upstream
    target = distribution_factory()
    spec_path = lab_list(tmp_path, upstream.address)
    report_path = tmp_path / "report.json"
    options = ["--relock", "--keep-going", "--summary", "--quiet", "--report", str(report_path)]
    command = sync_args(spec_path, target, tmp_path / "state.db", *options)

    with pytest.raises(SystemExit) as done:
        main(command)
    assert done.value.code == 0
    line = capsys.readouterr().out.strip()
    report = json.loads(report_path.read_text())
    assert line == report["summary"]
    assert (report["copied"], report["failed"], report["relock"]["written"]) == (
        LAB_ENTRIES,
        0,
        True,
    )

    corrupt(
        upstream, read_lock(spec_path.with_name("mirror.lock")).entries[0].manifest.layers[0].digest
    )
    tampered = [*command[:-1], str(report_path)]
    target_two = distribution_factory()
    tampered[tampered.index("--registry") + 1] = target_two.url
    with pytest.raises(SystemExit) as failed:
        main(tampered)
    assert failed.value.code == 1
    line = capsys.readouterr().out.strip()
    report = json.loads(report_path.read_text())
    assert line == report["summary"] and report["failed"] == 1
    assert re.search(r"failures=1$", line)


def test_heavy_entries_go_to_skopeo_light_ones_are_mounted_by_the_engine(
    distribution_factory, upstream, tmp_path
) -> None:
    target = distribution_factory()
    spec_path = write_list(
        tmp_path,
        upstream.address,
        """images:
  - {source: upstream, repository: sample/base, tags: ["1.0.0"], destination: mirror/a}
  - {source: upstream, repository: sample/base, tags: ["1.0.0"], destination: mirror/b}
""",
    )
    lock_file = locked(spec_path)
    # One byte: any entry with something to upload is skopeo's; the second entry finds every
    # blob in the first's repository (the ledger) and is only mounted.
    report = run_sync(spec_path, target, tmp_path / "state.db", workers=1, engine_copy_max_bytes=1)
    assert report["copies"] == {"engine": 1, "skopeo": 1}
    by_entry = {r["entry"]: (r["copier"], r["bytes"]) for r in report["results"]}
    assert by_entry["mirror/b:1.0.0"] == ("engine", 0)
    log = settled_log(target)
    assert [repository for repository, _ in uploads(log)] == ["mirror/a"] * len(
        {b.digest for b in lock_file.entries[0].blobs()}
    )
    mounts = log.count('"POST /v2/mirror/b/blobs/uploads/?mount=sha256%3A')
    assert mounts == len(lock_file.entries[1].blobs())
    assert verify(lock_file, RegistryClient(target.url), deep=True)["failed"] == 0


def base_then_app(
    distribution_factory, upstream, tmp_path: Path
) -> tuple[Any, Path, Path, Lock, set[str]]:
    """The engine places ``sample/base`` in ``mirror/a``; then the list also names
    ``app-001`` (built on that base) for ``mirror/b``, locked. Returns the destination, the
    list, the state database, the lock and the digests ``mirror/a`` holds."""
    target = distribution_factory()
    line = "  - {source: upstream, repository: sample/%s, tags: [1.0.0], destination: mirror/%s}\n"
    base, app = line % ("base", "a"), line % ("app-001", "b")
    state = tmp_path / "state.db"
    spec_path = write_list(tmp_path, upstream.address, "images:\n" + base)
    locked(spec_path)
    assert run_sync(spec_path, target, state)["copies"] == {"engine": 1}
    spec_path = write_list(tmp_path, upstream.address, "images:\n" + base + app)
    lock_file = locked(spec_path)
    held = {blob.digest for blob in lock_file.get("mirror/a", "1.0.0").content_blobs()}
    return target, spec_path, state, lock_file, held


def test_skopeo_copies_count_only_what_the_repository_lacked(
    distribution_factory, upstream, tmp_path
) -> None:
    # The engine places the base image; skopeo, which knows nothing of it, copies an image
    # built on it into another repository.
    target, spec_path, state, lock_file, held = base_then_app(
        distribution_factory, upstream, tmp_path
    )
    entry = lock_file.get("mirror/b", "1.0.0")
    blobs = {blob.digest: blob.size for blob in entry.content_blobs()}
    lacked = set(blobs) - held
    assert lacked and held & set(blobs), "the image shares its base layers, not all its blobs"

    mark = len(settled_log(target))
    report = run_sync(spec_path, target, state, "skopeo")
    assert (report["copies"], report["up_to_date"]) == ({"skopeo": 1}, 1)
    log = settled_log(target)[mark:]
    # The shared blobs are mounted from the base's repository, not sent again; the report
    # counts exactly the blobs the repository lacked.
    assert sorted(uploads(log)) == sorted(("mirror/b", digest) for digest in lacked)
    assert log.count('"POST /v2/mirror/b/blobs/uploads/?mount=sha256%3A') == len(held & set(blobs))
    assert report["bytes"] == sum(blobs[digest] for digest in lacked)
    assert verify(lock_file, RegistryClient(target.url), deep=True)["failed"] == 0


def test_skopeo_copies_after_a_mount_the_ledger_got_wrong(
    distribution_factory, upstream, tmp_path
) -> None:
    target, spec_path, state, lock_file, held = base_then_app(
        distribution_factory, upstream, tmp_path
    )
    blobs = {b.digest: b.size for b in lock_file.get("mirror/b", "1.0.0").content_blobs()}
    lost = sorted(held & set(blobs))[0]
    # Behind the mirror's back, mirror/a loses a layer its tag still vouches for: the ledger
    # sends the mount there, the registry opens an upload instead.
    repositories = target.storage / "docker/registry/v2/repositories"
    (repositories / "mirror/a/_layers" / lost.replace(":", "/") / "link").unlink()

    mark = len(settled_log(target))
    report = run_sync(spec_path, target, state, "skopeo")
    assert report["copies"] == {"skopeo": 1}
    lacked = set(blobs) - held | {lost}
    assert sorted(uploads(settled_log(target)[mark:])) == sorted(
        ("mirror/b", digest) for digest in lacked
    )
    assert report["bytes"] == sum(blobs[digest] for digest in lacked)
    # The upload the refused mount opened was closed, not left to the registry's purge: a
    # closed session loses its data and start time (Distribution 2.8 keeps a hash state).
    sessions = (repositories / "mirror/b/_uploads").iterdir()
    assert [path.name for path in sessions if {"data", "startedat"} & set(os.listdir(path))] == []


def test_force_puts_back_what_a_deep_verify_found_missing(
    distribution_factory, upstream, small, tmp_path, copier
) -> None:
    target = distribution_factory()
    spec_path = lab_list(tmp_path, upstream.address)
    lock_file = locked(spec_path)
    state = tmp_path / "state.db"
    run_sync(spec_path, target, state, copier)
    entry = lock_file.get("sample/vulnerable", "1.0.0")
    (layer,) = entry.manifest.layers
    # Damage behind the mirror's back: the repository loses its link to one of its layers.
    repositories = target.storage / "docker/registry/v2/repositories"
    link = repositories / "sample/vulnerable/_layers" / layer.digest.replace(":", "/") / "link"
    link.unlink()
    client = RegistryClient(target.url)
    found = verify(lock_file, client, deep=True)
    assert found["failed"] == 1 and layer.digest in found["problems"][0], found["problems"]

    # A plain sync trusts the tag, which still names the locked digest: nothing to do.
    assert run_sync(spec_path, target, state, copier)["copied"] == 0
    mark = len(settled_log(target))
    forced = run_sync(spec_path, target, state, copier, force=True)
    assert (forced["copied"], forced["failed"]) == (len(lock_file.entries), 0)
    assert {r["detail"] for r in forced["results"]} == {"copied"}
    # Only the missing layer crossed again, into its repository.
    assert uploads(settled_log(target)[mark:]) == [("sample/vulnerable", layer.digest)]
    assert forced["bytes"] == layer.size
    assert verify(lock_file, client, deep=True)["failed"] == 0


def test_rate_limit_spaces_the_engine_copies_source_reads(
    distribution_factory, upstream, tmp_path
) -> None:
    target = distribution_factory()
    spec_path = lab_list(
        tmp_path,
        upstream.address,
        **{"    insecure: true\n": "    insecure: true\n    rate_limit: 100\n"},
    )
    locked(spec_path)
    started = time.monotonic()
    report = run_sync(spec_path, target, tmp_path / "state.db")
    elapsed = time.monotonic() - started
    assert report["copies"] == {"engine": LAB_ENTRIES}
    reads = report["requests"]["sources"]["upstream"]["total"]
    assert reads > 20
    assert elapsed >= (reads - 1) / 100


# -- failures ------------------------------------------------------------------------------


def test_corrupted_upstream_blob_is_refused_and_nothing_tagged(
    distribution_factory, own_upstream, small, tmp_path, capsys, copier
) -> None:
    upstream = own_upstream
    target = distribution_factory()
    spec_path = lab_list(tmp_path, upstream.address)
    entry = locked(spec_path).get("sample/vulnerable", "1.0.0")
    (layer,) = entry.manifest.layers
    corrupt(upstream, layer.digest)

    command = sync_args(
        spec_path,
        target,
        tmp_path / "state.db",
        *("--keep-going", "--quiet", "--cosign", str(COSIGN), "--backoff", "0.1"),
        *copier_args(copier),
    )
    assert main(command) == 1
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    (failure,) = [r for r in report["results"] if r["result"] == "failed"]
    assert failure["entry"] == "sample/vulnerable:1.0.0" and failure["attempts"] == 1
    assert failure["error"].startswith(
        f"sample/vulnerable:1.0.0: blob {layer.digest}: the source served content with digest "
    )
    assert "corrupt upstream blob" in failure["error"]
    assert captured.err.startswith(
        f"airgap: 1 of {LAB_ENTRIES} entries failed: sample/vulnerable:1.0.0: blob "
    )
    client = RegistryClient(target.url)
    assert tags(client, "sample/vulnerable") == []
    assert head(client, "sample/vulnerable", entry.digest) is None
    assert not client.blob_exists("sample/vulnerable", layer.digest)
    assert report["copied"] == LAB_ENTRIES - 1
    with StateStore(tmp_path / "state.db") as store:
        state = store.entry(f"{target.address}/sample/vulnerable:1.0.0")
        assert (state.result, state.in_sync, state.synced_at) == ("failed", False, None)
        assert store.last_run().failures == 1


def test_first_failure_stops_the_run_without_keep_going(
    distribution_factory, own_upstream, small, tmp_path, copier
) -> None:
    upstream = own_upstream
    target = distribution_factory()
    spec_path = lab_list(tmp_path, upstream.address)
    lock_file = locked(spec_path)
    first = lock_file.entries[0]
    assert first.reference == "aquasecurity/trivy-db:2"
    corrupt(upstream, first.manifest.layers[0].digest)
    report = run_sync(spec_path, target, tmp_path / "state.db", copier, workers=1)
    results = report["results"]
    assert [r["result"] for r in results] == ["failed"] + ["skipped"] * (LAB_ENTRIES - 1)
    assert {r["detail"] for r in results[1:]} == {
        "not attempted: an earlier entry failed (use --keep-going to go on)"
    }
    assert (report["failed"], report["not_attempted"], report["copied"]) == (1, LAB_ENTRIES - 1, 0)
    assert report["tools"] == ({"skopeo": 1} if copier == "skopeo" else {})
    assert report["copies"] == {}
    with StateStore(tmp_path / "state.db") as store:
        assert {(s.result, s.in_sync) for s in store.entries()} == {
            ("failed", False),
            ("skipped", False),
        }


# -- interruption and the run lock ------------------------------------------------------------


def test_killed_sync_resumes_and_never_tags_partial_content(
    distribution_factory, own_upstream, small, tmp_path, copier
) -> None:
    upstream = own_upstream
    cosign("generate-key-pair", cwd=tmp_path)
    for reference in ("sample/app-001:2.0.0", "sample/app-002:2.0.0", "sample/base:2.0.0"):
        artifact = small.artifact(reference)
        sign(upstream, artifact.repository, artifact.digest, tmp_path)
    target = distribution_factory()
    spec_path = lab_list(tmp_path, upstream.address)
    lock_file = locked(spec_path)
    state = tmp_path / "state.db"
    command = [
        *CLI,
        *sync_args(spec_path, target, state, "--workers", "1", "--cosign", str(COSIGN)),
        *copier_args(copier),
    ]

    violations: list[str] = []
    watching = threading.Event()

    def watch() -> None:
        client = RegistryClient(target.url)
        while not watching.wait(0.05):
            for entry in lock_file.entries:
                violations.extend(f"{entry.reference}: {gap}" for gap in incomplete(client, entry))

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        process = subprocess.Popen(
            command,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        finished = 0
        assert process.stderr is not None
        for line in process.stderr:
            finished += ": ok: " in line
            if finished == 4:
                os.killpg(process.pid, signal.SIGKILL)
                break
        process.wait(timeout=30)
        assert process.returncode == -signal.SIGKILL
        client = RegistryClient(target.url)
        done = [e for e in lock_file.entries if head(client, e.destination, e.tag) == e.digest]
        assert 4 <= len(done) < len(lock_file.entries), "killed midway"
        for entry in lock_file.entries:
            assert incomplete(client, entry) == []

        linked = {
            (
                path.parents[3]
                .relative_to(target.storage / "docker/registry/v2/repositories")
                .as_posix(),
                f"sha256:{path.parent.name}",
            )
            for path in (target.storage / "docker/registry/v2/repositories").glob(
                "**/_layers/sha256/*/link"
            )
        }
        mark = len(settled_log(target))
        rerun = subprocess.run(
            [*command, "--workers", "4"], capture_output=True, text=True, timeout=120, check=False
        )
        assert rerun.returncode == 0, rerun.stderr
        report = json.loads(rerun.stdout)
        assert report["failed"] == 0 and report["copied"] == len(lock_file.entries) - len(done)
    finally:
        watching.set()
        watcher.join()
    assert violations == [], "a tag pointed at partial content"
    resent = [upload for upload in uploads(settled_log(target)[mark:]) if upload in linked]
    assert resent == [], "blobs finished before the kill were sent again"
    assert verify(lock_file, RegistryClient(target.url))["failed"] == 0


def test_second_sync_is_refused_while_one_runs(
    distribution_factory, upstream, small, tmp_path
) -> None:
    target = distribution_factory()
    spec_path = lab_list(tmp_path, upstream.address)
    locked(spec_path)
    state = tmp_path / "var" / "state.db"
    command = [*CLI, *sync_args(spec_path, target, state, "--summary")]
    with RunLock.beside(state):
        refused = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert refused.returncode == EXIT_LOCKED == 75
    assert refused.stdout == ""
    assert refused.stderr.startswith(f"airgap: another sync is running (pid {os.getpid()} since ")
    assert f"run lock {state.parent / 'sync.lock'}); this run did nothing" in refused.stderr
    assert tags(RegistryClient(target.url), BASE_REPOSITORY) == []

    accepted = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert accepted.returncode == 0, accepted.stderr
    assert re.fullmatch(
        rf"entries={LAB_ENTRIES} copied={LAB_ENTRIES} bytes=\d+ duration=\d+s failures=0\n",
        accepted.stdout,
    )


# -- TLS, client certificates and credentials -------------------------------------------------


def _bcrypt(password: str) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import crypt

    return crypt.crypt(password, crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=1 << 4))


def with_password(upstream, pki, directory: Path) -> None:
    """Restart ``upstream`` (mutual TLS) asking for Basic credentials alice / s3cret."""
    (directory / "htpasswd").write_text(f"alice:{_bcrypt('s3cret')}\n")
    upstream.stop()
    plain = upstream.write_config

    def write_config() -> None:
        plain()
        config = yaml.safe_load(upstream.config_path.read_text())
        config["auth"] = {"htpasswd": {"realm": "airgap", "path": str(directory / "htpasswd")}}
        upstream.config_path.write_text(yaml.safe_dump(config))

    def answers_v2() -> bool:
        # Without credentials the API root answers 401: that is ready, too.
        context = ssl.create_default_context(cafile=str(pki.ca_file))
        context.load_cert_chain(str(pki.client_cert), str(pki.client_key))
        connection = http.client.HTTPSConnection("127.0.0.1", upstream.port, context=context)
        try:
            connection.request("GET", "/v2/")
            return connection.getresponse().status == 401
        finally:
            connection.close()

    upstream.write_config = write_config
    upstream._answers_v2 = answers_v2
    upstream.start()


def test_first_requests_racing_the_basic_challenge_all_get_in(
    distribution_factory, pki, tmp_path
) -> None:
    """The engine's copies start on several threads at once: every request that met the 401
    before the client switched to Basic is retried with the credentials."""
    sample = build(SampleSpec(repositories=0, base_layer_bytes=512))
    upstream = seeded(distribution_factory, sample, tls=pki)
    with_password(upstream, pki, tmp_path)
    artifact = sample.artifact("sample/base:1.0.0")
    for _ in range(3):
        client = AuthenticatingClient(
            upstream.url,
            username="alice",
            password="s3cret",
            ca_file=pki.ca_file,
            cert_file=pki.client_cert,
            key_file=pki.client_key,
        )
        start = threading.Barrier(8)

        def first_request(client=client, start=start) -> str | None:
            start.wait()
            found = client.head_manifest(artifact.repository, artifact.digest)
            return found.digest if found else None

        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda _: first_request(), range(8)))
        assert answers == [artifact.digest] * 8
        client.close()


def test_mutual_tls_both_sides_and_source_credentials(
    distribution_factory, pki, tmp_path, copier
) -> None:
    sample = build(SampleSpec(repositories=0, base_layer_bytes=512))
    upstream = seeded(distribution_factory, sample, tls=pki)
    with_password(upstream, pki, tmp_path)

    certs = tmp_path / "certs"
    certs.mkdir()
    (certs / "ca.crt").write_bytes(pki.ca_file.read_bytes())
    (certs / "client.cert").write_bytes(pki.client_cert.read_bytes())
    (certs / "client.key").write_bytes(pki.client_key.read_bytes())
    token = base64.b64encode(b"alice:s3cret").decode()
    (tmp_path / "auth.json").write_text(json.dumps({"auths": {upstream.address: {"auth": token}}}))
    spec_path = write_list(
        tmp_path,
        upstream.address,
        """\
images:
  - {source: upstream, repository: sample/base, tags: ["1.0.0"]}
charts:
  - {source: upstream, repository: charts/demo, versions: ["0.1.0"]}
""",
        source="    cert_dir: certs\n    credentials: {file: auth.json}\n",
    )
    lock_file = locked(spec_path)
    target = distribution_factory(tls=pki)
    destination = Destination(
        target.url,
        ca_file=str(pki.ca_file),
        cert_file=str(pki.client_cert),
        key_file=str(pki.client_key),
    )
    report = run_sync(spec_path, destination, tmp_path / "state.db", copier)
    assert (report["copied"], report["failed"]) == (2, 0), report["errors"]
    assert report["copies"] == {copier: 2}
    with destination.client() as client:
        assert verify(lock_file, client, deep=True)["failed"] == 0
