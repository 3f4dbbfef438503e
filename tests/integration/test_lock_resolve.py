"""Locking mirror lists against a real Distribution seeded with the sample upstream.

The lab's own list (inventories/lab/mirror.yaml) is locked with its registry address pointed
at a loopback Distribution; digests must equal the generator's. Signatures are made with the
real cosign; authentication runs against Distribution's own htpasswd and token checks.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import http.client
import http.server
import json
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml
from mirror_lists import COSIGN, LAB_LIST, MOVED, SMALL, lab_list

from airgap_lab.sample import BASE_REPOSITORY, CHART_REPOSITORY, Sample, SampleSpec, build, push
from airgapped_registry.cli import main
from airgapped_registry.mirror.lock import Lock, LockError, read_lock
from airgapped_registry.mirror.relock import lock
from airgapped_registry.mirror.spec import load, loads
from airgapped_registry.oci.helm import chart_manifest
from airgapped_registry.oci.manifest import filtered_index
from airgapped_registry.oci.reference import digest_of
from airgapped_registry.transport.auth import AuthenticatingClient
from airgapped_registry.transport.registry import RegistryClient
from tests.integration.conftest import htpasswd_line, write_auth_json

pytestmark = pytest.mark.integration

# What the lab list selects from SMALL: semver >=1.0.0 leaves out 2.0.0-rc.1; the apps keep
# their newest two tags of 1.0.0, 1.1.0, 2.0.0.
LAB_SELECTION = {
    ("charts/demo", "0.1.0"),
    ("charts/demo", "0.2.0"),
    ("sample/base", "1.0.0"),
    ("sample/base", "1.1.0"),
    ("sample/base", "2.0.0"),
    *{(f"sample/app-00{n}", tag) for n in (1, 2, 3) for tag in ("1.1.0", "2.0.0")},
    ("sample/vulnerable", "1.0.0"),
    ("aquasecurity/trivy-db", "2"),
}


@pytest.fixture(scope="module")
def small() -> Sample:
    return build(SMALL)


@pytest.fixture(scope="module")
def upstream(distribution_factory, small):
    """A registry serving the sample, shared by the tests that only read it."""
    registry = distribution_factory()
    push(small, RegistryClient(registry.url))
    yield registry
    registry.stop()


def write_list(directory: Path, address: str, body: str, name: str = "mirror.yaml") -> Path:
    path = directory / name
    path.write_text(
        "version: 1\n"
        "sources:\n"
        "  upstream:\n"
        f"    registry: {address}\n"
        "    insecure: true\n"
        "    signatures: none\n" + body
    )
    return path


def manifests_fetched(locked: Lock) -> int:
    """GETs the lock needs: one per tagged manifest, copied child and signature."""
    return sum(
        1 + sum(child.copy for child in entry.children) + len(entry.signatures)
        for entry in locked.entries
    )


def described(manifest: Any) -> list[tuple[str, str, int]]:
    """Config then layers of a lock manifest or a sample artifact, as comparable tuples."""
    # A sample artifact lists its blobs; a lock manifest derives them.
    blobs = manifest.blobs() if callable(manifest.blobs) else manifest.blobs
    return [(blob.digest, blob.media_type, blob.size) for blob in blobs]


def assert_matches_sample(locked: Lock, sample: Sample) -> None:
    expected = sample.expected()
    for entry in locked.entries:
        reference = f"{entry.repository}:{entry.tag}"
        artifact = sample.artifact(reference)
        assert entry.digest == entry.upstream_digest == expected[reference]["digest"]
        assert entry.manifest.media_type == expected[reference]["media_type"]
        assert entry.manifest.size == len(artifact.manifest)
        if artifact.children:
            assert {c.platform: c.digest for c in entry.children} == expected[reference][
                "platforms"
            ]
            for child, generated in zip(entry.children, artifact.children, strict=True):
                assert child.copy, "preserve-index copies every child"
                assert child.size == len(generated.manifest)
                assert described(child) == described(generated)
        else:
            assert entry.children == ()
            assert described(entry.manifest) == described(artifact)


# -- the lab list --------------------------------------------------------------------------


def test_lab_list_locks_to_the_sample_digests(upstream, small, tmp_path) -> None:
    spec = load(lab_list(tmp_path, upstream.address))
    report = lock(spec, tmp_path / "mirror.lock")
    locked = read_lock(tmp_path / "mirror.lock")
    assert locked is not None
    assert {entry.key for entry in locked.entries} == LAB_SELECTION
    assert_matches_sample(locked, small)

    base = locked.get(BASE_REPOSITORY, "1.0.0")
    assert base is not None and base.platform_mode == "preserve-index"
    by_platform = {child.platform: child for child in base.children}
    assert list(by_platform) == ["linux/amd64", "linux/arm64", "linux/arm/v7"]
    assert [(c.selected, c.copy) for c in by_platform.values()] == [
        (True, True),
        (True, True),
        (False, True),  # listed and copied with the index, but not asked for
    ]
    chart = locked.get(CHART_REPOSITORY, "0.1.0")
    assert chart is not None and chart.kind == "chart" and chart.platform_mode is None

    # One tag list per repository, one GET per manifest, nothing else.
    repositories = len({entry.repository for entry in locked.entries})
    total = repositories + manifests_fetched(locked)
    # 7 repositories; manifests: base 3 x (index + 3), apps 6 x (index + 2), vulnerable,
    # charts 2, DB 1.
    assert total == 7 + 12 + 18 + 1 + 2 + 1
    assert report["requests"] == {"upstream": {"total": total, "by_method": {"GET": total}}}
    assert (report["changed"], report["written"], report["summary"]) == (True, True, "new lock")
    assert report["diff"]["added"] == [
        {"destination": e.destination, "tag": e.tag, "digest": e.digest} for e in locked.entries
    ]


def test_second_lock_run_is_byte_identical_and_check_passes(upstream, tmp_path, capsys) -> None:
    spec_path = lab_list(tmp_path, upstream.address)
    lock_path = tmp_path / "mirror.lock"
    lock(load(spec_path), lock_path)
    first = lock_path.read_bytes()
    stat = lock_path.stat()

    report = lock(load(spec_path), lock_path)
    assert lock_path.read_bytes() == first
    assert lock_path.stat().st_mtime_ns == stat.st_mtime_ns, "an unchanged lock is not rewritten"
    assert (report["changed"], report["written"], report["summary"]) == (False, False, "no change")
    assert report["diff"] == {"added": [], "removed": [], "moved": [], "changed": []}

    assert main(["lock", "--spec", str(spec_path), "--lock", str(lock_path), "--check"]) == 0
    output = json.loads(capsys.readouterr().out)
    assert output["changed"] is False and output["check_mode"] is True


def test_arm_v7_is_selected_only_when_asked(upstream, small, tmp_path) -> None:
    spec = load(
        write_list(
            tmp_path,
            upstream.address,
            """\
images:
  - source: upstream
    repository: sample/base
    tags: ["2.0.0-rc.1"]
    platforms: [linux/arm/v7]
  - source: upstream
    repository: sample/base
    tags: ["2.0.0-rc.1"]
    platforms: [linux/arm/v7]
    platform_mode: filter
    destination: filtered/sample/base
""",
        )
    )
    client = RegistryClient(upstream.url)
    report = lock(spec, tmp_path / "mirror.lock", clients={"upstream": client})
    locked = read_lock(tmp_path / "mirror.lock")
    assert locked is not None
    artifact = small.artifact(f"{BASE_REPOSITORY}:2.0.0-rc.1")
    arm = artifact.children[2]
    assert arm.platform == "linux/arm/v7"

    preserved = locked.get(BASE_REPOSITORY, "2.0.0-rc.1")
    assert preserved is not None
    assert preserved.digest == preserved.upstream_digest == artifact.digest
    assert [(c.platform, c.selected, c.copy) for c in preserved.children] == [
        ("linux/amd64", False, True),
        ("linux/arm64", False, True),
        ("linux/arm/v7", True, True),
    ]

    filtered = locked.get("filtered/sample/base", "2.0.0-rc.1")
    assert filtered is not None
    assert filtered.upstream_digest == artifact.digest
    assert filtered.digest == digest_of(filtered_index(artifact.manifest, {arm.digest}))
    assert filtered.digest != artifact.digest
    assert [(c.platform, c.selected, c.copy) for c in filtered.children] == [
        ("linux/amd64", False, False),
        ("linux/arm64", False, False),
        ("linux/arm/v7", True, True),
    ]
    assert [c.config is None for c in filtered.children] == [True, True, False]
    assert [blob.digest for blob in filtered.blobs()] == [blob.digest for blob in arm.blobs]
    # 1 tag list; preserve: index + 3 children; filter: index + the arm child.
    assert report["requests"]["upstream"]["total"] == 1 + 4 + 2

    # The filtered index is one Distribution stores under the digest the lock recorded.
    body = filtered_index(artifact.manifest, {arm.digest})
    with_arm_only = RegistryClient(upstream.url)
    stored = with_arm_only.put_manifest(
        BASE_REPOSITORY, filtered.digest, body, filtered.manifest.media_type
    )
    assert stored == filtered.digest
    assert with_arm_only.head_manifest(BASE_REPOSITORY, filtered.digest) is not None


REFUSED = [
    pytest.param(
        """\
images:
  - source: upstream
    repository: sample/base
    tags: ["1.0.0"]
    platforms: [linux/amd64, linux/s390x]
""",
        "{path}:8: images[0] 'sample/base': sample/base:1.0.0 ({digest}): platform linux/s390x "
        "not in the index (it has linux/amd64, linux/arm/v7, linux/arm64)",
        id="platform-not-in-index",
    ),
    pytest.param(
        """\
images:
  - source: upstream
    repository: sample/base
    tags: ["1.0.0", "9.9.9"]
""",
        "{path}:8: images[0] 'sample/base': tag 9.9.9 not found at {address} (4 tags listed)",
        id="missing-tag",
    ),
    pytest.param(
        """\
images:
  - source: upstream
    repository: sample/app-001
    regex: '^v'
""",
        "{path}:8: images[0] 'sample/app-001': no tag matches regex '^v' (3 tags listed)",
        id="regex-matches-nothing",
    ),
    pytest.param(
        """\
images:
  - source: upstream
    repository: sample/nothing-here
    tags: ["1.0.0"]
""",
        "{path}:8: images[0] 'sample/nothing-here': GET {url}/v2/sample/nothing-here/tags/list: "
        "404 NAME_UNKNOWN: repository name not known to registry (name=sample/nothing-here)",
        id="unknown-repository",
    ),
    pytest.param(
        """\
images:
  - source: upstream
    repository: sample/base
    semver: "^1.0.0"
  - source: upstream
    repository: sample/base
    semver: ">=1.1.0 <2.0.0"
""",
        "{path}:11: images[1] 'sample/base': duplicate destination 'sample/base:1.1.0', also "
        "written by images[0] 'sample/base' (line 8)",
        id="duplicate-destination-after-resolution",
    ),
    pytest.param(
        """\
images:
  - source: upstream
    repository: sample/vulnerable
    tags: ["1.0.0"]
    signatures: {keys: [cosign.pub]}
""",
        "{path}:8: images[0] 'sample/vulnerable': sample/vulnerable:1.0.0 ({digest}): the "
        "signature policy asks for a signature, but upstream has none ({tag}.sig)",
        id="unsigned-but-keys-required",
    ),
]


@pytest.mark.parametrize(("body", "message"), REFUSED)
def test_lock_refusals_name_file_line_and_entry(
    upstream, small, tmp_path, body: str, message: str
) -> None:
    path = write_list(tmp_path, upstream.address, body)
    spec = load(path)
    first = spec.entries[0]
    tag = first.selection.tags[0].tag if first.selection.tags else ""
    digest = small.expected().get(f"{first.repository}:{tag}", {}).get("digest", "")
    with pytest.raises(LockError) as caught:
        lock(spec, tmp_path / "mirror.lock")
    assert str(caught.value) == message.format(
        path=path,
        address=upstream.address,
        url=upstream.url,
        digest=digest,
        tag=digest.replace(":", "-"),
    )
    assert not (tmp_path / "mirror.lock").exists(), "a failed lock writes nothing"


# -- an upstream that changes --------------------------------------------------------------


def test_moved_tags_show_in_the_diff(distribution, small, tmp_path, capsys) -> None:
    client = RegistryClient(distribution.url)
    push(small, client)
    spec_path = lab_list(tmp_path, distribution.address)
    lock_path = tmp_path / "mirror.lock"
    lock(load(spec_path), lock_path)
    before = lock_path.read_bytes()

    rebuilt = build(MOVED)
    push(rebuilt, client)
    old, new = small.expected(), rebuilt.expected()
    expected_moves = [
        {
            "destination": destination,
            "tag": tag,
            "old": old[key]["digest"],
            "new": new[key]["digest"],
        }
        for destination, tag in sorted(LAB_SELECTION)
        if old[key := f"{destination}:{tag}"]["digest"] != new[key]["digest"]
    ]
    assert {move["destination"] for move in expected_moves} == {
        "sample/base",
        "sample/app-001",
        "sample/app-002",
        "sample/app-003",
    }

    # CI's check: non-zero, the diff on stdout, the lock untouched.
    command = ["lock", "--spec", str(spec_path), "--lock", str(lock_path), "--check"]
    assert main(command) == 1
    captured = capsys.readouterr()
    assert json.loads(captured.out)["diff"]["moved"] == expected_moves
    assert captured.err == f"airgap: {lock_path} is out of date: 9 moved\n"
    assert lock_path.read_bytes() == before

    report = lock(load(spec_path), lock_path)
    assert report["diff"] == {"added": [], "removed": [], "moved": expected_moves, "changed": []}
    assert report["summary"] == "9 moved"
    locked = read_lock(lock_path)
    assert locked is not None
    assert_matches_sample(locked, rebuilt)


# -- signatures ----------------------------------------------------------------------------


def cosign(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    if not os.access(COSIGN, os.X_OK):
        pytest.fail(f"{COSIGN} is missing: the project's setup script installs cosign")
    result = subprocess.run(
        [str(COSIGN), *args],
        cwd=cwd,
        env={**os.environ, "COSIGN_PASSWORD": "airgap-tests", "COSIGN_YES": "true"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, f"cosign {' '.join(args)}: {result.stderr}"
    return result


def test_cosign_signatures_are_locked(distribution, small, tmp_path) -> None:
    client = RegistryClient(distribution.url)
    push(small, client)
    cosign("generate-key-pair", cwd=tmp_path)
    signed = small.artifact("sample/app-001:2.0.0")
    older = small.artifact("sample/app-001:1.1.0")
    options = ["--key", "cosign.key", "--tlog-upload=false", "--allow-http-registry"]
    older_reference = f"{distribution.address}/{older.repository}@{older.digest}"
    cosign("sign", *options, older_reference, cwd=tmp_path)
    (tmp_path / "predicate.json").write_text('{"built-by": "airgap-tests"}')
    cosign("attest", *options, "--predicate", "predicate.json", older_reference, cwd=tmp_path)
    # The index and, with --recursive, each platform manifest get a signature.
    cosign(
        "sign",
        *options,
        "--recursive",
        f"{distribution.address}/{signed.repository}@{signed.digest}",
        cwd=tmp_path,
    )
    spec_path = lab_list(
        tmp_path,
        distribution.address,
        **{
            "    repository: sample/app-001\n": "    repository: sample/app-001\n"
            "    signatures: {keys: [cosign.pub]}\n"
        },
    )
    report = lock(load(spec_path), tmp_path / "mirror.lock")
    locked = read_lock(tmp_path / "mirror.lock")
    assert locked is not None
    older_entry = locked.get("sample/app-001", "1.1.0")
    assert older_entry is not None
    assert [(s.kind, s.subject, s.tag) for s in older_entry.signatures] == [
        (kind, older.digest, older.digest.replace(":", "-") + f".{kind}") for kind in ("att", "sig")
    ]
    (attestation,) = older_entry.signatures[0].layers
    assert attestation.media_type == "application/vnd.dsse.envelope.v1+json"
    entry = locked.get("sample/app-001", "2.0.0")
    assert entry is not None
    subjects = [signed.digest, *(child.digest for child in signed.children)]
    assert sorted((s.subject, s.tag, s.kind, s.copy) for s in entry.signatures) == sorted(
        (subject, subject.replace(":", "-") + ".sig", "sig", True) for subject in subjects
    )
    for signature in entry.signatures:
        head = client.head_manifest("sample/app-001", signature.tag)
        assert head is not None and head.digest == signature.digest
        (layer,) = signature.layers
        assert layer.media_type == "application/vnd.dev.cosign.simplesigning.v1+json"
        payload = json.loads(client.get_blob("sample/app-001", layer.digest))
        assert payload["critical"]["image"]["docker-manifest-digest"] == signature.subject
    assert {blob.digest for s in entry.signatures for blob in s.layers} <= {
        blob.digest for blob in entry.blobs()
    }
    # Signature tags are never taken for image tags, and cost one GET each.
    assert {e.tag for e in locked.entries if e.destination == "sample/app-001"} == {
        "1.1.0",
        "2.0.0",
    }
    repositories = len({e.repository for e in locked.entries})
    assert report["requests"]["upstream"]["total"] == repositories + manifests_fetched(locked)

    # The policy holds for app-001 only: app-002 under the same keys is refused.
    strict = lab_list(
        tmp_path,
        distribution.address,
        **{"    signatures: none\n": "    signatures: {keys: [cosign.pub]}\n"},
    )
    with pytest.raises(LockError, match=r"images\[0\] 'sample/base': .*upstream has none"):
        lock(load(strict), tmp_path / "strict.lock")


# -- classic Helm repositories -------------------------------------------------------------


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def helm_repository(tmp_path, small) -> Iterator[tuple[str, Path, bytes]]:
    """A classic chart repository (index.yaml + archive) on a loopback HTTP server."""
    root = tmp_path / "charts"
    root.mkdir()
    archive = small.blob(small.artifact(f"{CHART_REPOSITORY}:0.1.0").blobs[1].digest)
    (root / "demo-0.1.0.tgz").write_bytes(archive)
    index = {
        "apiVersion": "v1",
        "entries": {
            "demo": [
                {
                    "name": "demo",
                    "version": "0.1.0",
                    "digest": hashlib.sha256(archive).hexdigest(),
                    "urls": ["demo-0.1.0.tgz"],
                }
            ]
        },
    }
    (root / "index.yaml").write_text(yaml.safe_dump(index))
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(root))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/", root, archive
    server.shutdown()
    server.server_close()


def test_classic_helm_chart_is_locked_as_an_oci_artifact(helm_repository, tmp_path) -> None:
    url, root, archive = helm_repository
    spec_path = tmp_path / "mirror.yaml"
    spec_path.write_text(
        "version: 1\n"
        "charts:\n"
        f"  - url: {url}\n"
        "    name: demo\n"
        "    semver: '>=0.1.0'\n"
        "    destination: charts/classic/demo\n"
    )
    report = lock(load(spec_path), tmp_path / "mirror.lock")
    locked = read_lock(tmp_path / "mirror.lock")
    assert locked is not None
    (entry,) = locked.entries
    config, manifest = chart_manifest(archive)
    assert (entry.destination, entry.tag, entry.kind) == ("charts/classic/demo", "0.1.0", "chart")
    assert entry.digest == entry.upstream_digest == digest_of(manifest)
    assert entry.archive is not None
    assert (entry.archive.url, entry.archive.digest) == (f"{url}demo-0.1.0.tgz", digest_of(archive))
    assert [layer.digest for layer in entry.manifest.layers] == [digest_of(archive)]
    assert entry.manifest.config is not None
    assert entry.manifest.config.digest == digest_of(config)
    assert report["requests"] == {"helm-repositories": {"total": 2, "by_method": {"GET": 2}}}

    index = yaml.safe_load((root / "index.yaml").read_text())
    index["entries"]["demo"][0]["digest"] = "0" * 64
    (root / "index.yaml").write_text(yaml.safe_dump(index))
    with pytest.raises(LockError) as caught:
        lock(load(spec_path), tmp_path / "mirror.lock")
    assert str(caught.value) == (
        f"{spec_path}:3: charts[0] 'demo': {url}demo-0.1.0.tgz: digest mismatch: index.yaml "
        f"says sha256:{'0' * 64}, got {digest_of(archive)}"
    )


# -- sources: rate limit, credentials ------------------------------------------------------


def test_rate_limit_spaces_requests(upstream, tmp_path) -> None:
    spec_path = lab_list(
        tmp_path,
        upstream.address,
        **{"    insecure: true\n": "    insecure: true\n    rate_limit: 100\n"},
    )
    started = time.monotonic()
    report = lock(load(spec_path), tmp_path / "mirror.lock")
    elapsed = time.monotonic() - started
    requests = report["requests"]["upstream"]["total"]
    assert elapsed >= (requests - 1) / 100


def with_auth(registry, auth: dict[str, Any]) -> None:
    """Restart ``registry`` with Distribution's ``auth`` section set to ``auth``."""
    registry.stop()
    plain = registry.write_config

    def write_config() -> None:
        plain()
        config = yaml.safe_load(registry.config_path.read_text())
        config["auth"] = auth
        registry.config_path.write_text(yaml.safe_dump(config))

    def answers_v2() -> bool:
        # Without credentials the API root answers 401: that is ready, too.
        connection = http.client.HTTPConnection("127.0.0.1", registry.port, timeout=2)
        try:
            connection.request("GET", "/v2/")
            return connection.getresponse().status in (200, 401)
        finally:
            connection.close()

    registry.write_config = write_config
    registry._answers_v2 = answers_v2
    registry.start()


def credentials_list(directory: Path, address: str) -> Path:
    return (
        write_list(
            directory,
            address,
            """\
images:
  - {source: upstream, repository: sample/base, tags: ["1.0.0", "1.1.0"]}
""",
        ).parent
        / "mirror.yaml"
    )


def add_credentials(path: Path, reference: str) -> None:
    path.write_text(
        path.read_text().replace(
            "    insecure: true\n", f"    insecure: true\n    credentials: {reference}\n"
        )
    )


def test_basic_auth_with_an_auth_json_file(distribution, small, tmp_path) -> None:
    (tmp_path / "htpasswd").write_text(htpasswd_line("alice", "s3cret"))
    with_auth(distribution, {"htpasswd": {"realm": "airgap", "path": str(tmp_path / "htpasswd")}})
    writer = AuthenticatingClient(distribution.url, username="alice", password="s3cret")
    push(build(SampleSpec(repositories=0, base_layer_bytes=512)), writer)

    spec_path = credentials_list(tmp_path, distribution.address)
    add_credentials(spec_path, "{file: auth.json}")
    write_auth_json(tmp_path / "auth.json", distribution.address, "alice", "s3cret")
    report = lock(load(spec_path), tmp_path / "mirror.lock")
    locked = read_lock(tmp_path / "mirror.lock")
    assert locked is not None and len(locked.entries) == 2
    # One challenge, then Basic up front: 1 tag list + 2 x (index + 3 children) + the 401.
    assert report["requests"]["upstream"] == {"total": 1 + 8 + 1, "by_method": {"GET": 10}}

    write_auth_json(tmp_path / "auth.json", distribution.address, "alice", "wrong")
    with pytest.raises(LockError, match=r"mirror\.yaml:9: images\[0\] 'sample/base': GET .*: 401"):
        lock(load(spec_path), tmp_path / "mirror.lock")


def _der_to_raw(signature: bytes) -> bytes:
    """ECDSA DER (SEQUENCE of two INTEGERs) → the 64-byte r||s a JWS ES256 carries."""
    assert signature[0] == 0x30
    position = 2 if signature[1] < 0x80 else 3
    parts = []
    for _ in range(2):
        assert signature[position] == 0x02
        length = signature[position + 1]
        value = signature[position + 2 : position + 2 + length]
        parts.append(value.lstrip(b"\0").rjust(32, b"\0"))
        position += 2 + length
    return b"".join(parts)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class TokenServer:
    """A Docker token issuer: Basic-authenticated GET /token → an ES256 JWT with x5c."""

    def __init__(self, directory: Path, user: str, password: str) -> None:
        self.key = directory / "token.key"
        self.cert = directory / "token.pem"
        subprocess.run(
            [
                "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                "-nodes", "-keyout", str(self.key), "-out", str(self.cert), "-days", "1",
                "-subj", "/CN=airgap-test-token-issuer",
            ],
            capture_output=True,
            check=True,
        )  # fmt: skip
        der = subprocess.run(
            ["openssl", "x509", "-in", str(self.cert), "-outform", "DER"],
            capture_output=True,
            check=True,
        ).stdout
        self.x5c = base64.b64encode(der).decode()
        self.expected = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        self.issued = 0
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.headers.get("Authorization") != server.expected:
                    self.send_response(401)
                    self.end_headers()
                    return
                query = parse_qs(urlsplit(self.path).query)
                body = json.dumps({"token": server.token(query)}).encode()
                server.issued += 1
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.http = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.http.serve_forever, daemon=True).start()
        self.realm = f"http://127.0.0.1:{self.http.server_address[1]}/token"

    def token(self, query: dict[str, list[str]]) -> str:
        access = []
        for scope in " ".join(query.get("scope", [])).split():
            kind, name, actions = scope.split(":")
            access.append({"type": kind, "name": name, "actions": actions.split(",")})
        now = int(time.time())
        claims = {
            "iss": "airgap-test-issuer",
            "sub": "alice",
            "aud": query["service"][0],
            "exp": now + 300,
            "nbf": now - 10,
            "iat": now,
            "jti": os.urandom(8).hex(),
            "access": access,
        }
        header = {"typ": "JWT", "alg": "ES256", "x5c": [self.x5c]}
        signing_input = (
            f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
        )
        der = subprocess.run(
            ["openssl", "dgst", "-sha256", "-sign", str(self.key)],
            input=signing_input.encode(),
            capture_output=True,
            check=True,
        ).stdout
        return f"{signing_input}.{_b64url(_der_to_raw(der))}"

    def close(self) -> None:
        self.http.shutdown()
        self.http.server_close()


def test_bearer_token_flow_with_an_auth_json_variable(distribution, tmp_path, monkeypatch) -> None:
    issuer = TokenServer(tmp_path, "alice", "s3cret")
    try:
        with_auth(
            distribution,
            {
                "token": {
                    "realm": issuer.realm,
                    "service": "airgap-test",
                    "issuer": "airgap-test-issuer",
                    "rootcertbundle": str(issuer.cert),
                }
            },
        )
        anonymous = RegistryClient(distribution.url)
        with pytest.raises(Exception, match="401"):
            anonymous.tags(BASE_REPOSITORY)
        writer = AuthenticatingClient(distribution.url, username="alice", password="s3cret")
        push(build(SampleSpec(repositories=0, base_layer_bytes=512)), writer)

        spec_path = credentials_list(tmp_path, distribution.address)
        add_credentials(spec_path, "{env: AIRGAP_TEST_AUTH}")
        token = base64.b64encode(b"alice:s3cret").decode()
        monkeypatch.setenv(
            "AIRGAP_TEST_AUTH", json.dumps({"auths": {distribution.address: {"auth": token}}})
        )
        issued = issuer.issued
        report = lock(load(spec_path), tmp_path / "mirror.lock")
        locked = read_lock(tmp_path / "mirror.lock")
        assert locked is not None and len(locked.entries) == 2
        # One repository: one challenge and one token, then 1 tag list + 2 x (index + 3).
        assert issuer.issued - issued == 1
        assert report["requests"]["upstream"] == {"total": 1 + 1 + 9, "by_method": {"GET": 11}}

        monkeypatch.setenv(
            "AIRGAP_TEST_AUTH",
            json.dumps(
                {"auths": {distribution.address: {"auth": base64.b64encode(b"alice:x").decode()}}}
            ),
        )
        with pytest.raises(
            LockError,
            match=r"images\[0\] 'sample/base': GET http://127\.0\.0\.1:\d+/token\?.*: 401",
        ):
            lock(load(spec_path), tmp_path / "mirror.lock")
    finally:
        issuer.close()


# -- the command line ----------------------------------------------------------------------


def test_cli_spec_check_reports_every_problem(tmp_path, capsys) -> None:
    path = tmp_path / "mirror.yaml"
    path.write_text(
        "version: 1\nsources: {up: {registry: 'up:5000', signatures: none}}\n"
        "images:\n  - {source: up, repository: a/b, tags: [latest]}\n"
        "  - {source: down, repository: a/c, tags: ['1.0.0']}\n"
    )
    assert main(["spec", "check", str(path)]) == 1
    assert capsys.readouterr().err == (
        f"airgap: {path}:4: images[0] 'a/b:latest': floating tag, pin a version or a digest "
        "(latest@sha256:...)\n"
        f"{path}:5: images[1] 'a/c': unknown source 'down' (sources: up)\n"
    )
    assert main(["spec", "check", str(LAB_LIST)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary == loads(LAB_LIST.read_text(), str(LAB_LIST)).summary()


# -- relocking: unchanged tags are taken from the previous lock ----------------------------


def fresh_lock(spec_path: Path, directory: Path) -> bytes:
    """The lock a run without a previous lock writes, for comparison with a relock."""
    directory.mkdir()
    lock(load(spec_path), directory / "mirror.lock")
    return (directory / "mirror.lock").read_bytes()


def test_relock_of_an_unchanged_upstream_makes_one_request_per_tag(upstream, tmp_path) -> None:
    spec_path = lab_list(tmp_path, upstream.address)
    lock_path = tmp_path / "mirror.lock"
    first = lock(load(spec_path), lock_path)
    assert first["reused"] == 0
    before = lock_path.read_bytes()
    locked = read_lock(lock_path)
    assert locked is not None

    report = lock(load(spec_path), lock_path, clients={"upstream": RegistryClient(upstream.url)})
    assert lock_path.read_bytes() == before
    assert (report["changed"], report["summary"], report["reused"]) == (
        False,
        "no change",
        len(locked.entries),
    )
    # One tag list per repository, one GET per tag (its manifest only) and one HEAD per
    # recorded signature: no child or config fetched.
    repositories = len({entry.repository for entry in locked.entries})
    tags = len(locked.entries)
    heads = sum(len(entry.signatures) for entry in locked.entries)
    assert report["requests"]["upstream"] == {
        "total": repositories + tags + heads,
        "by_method": {"GET": repositories + tags, **({"HEAD": heads} if heads else {})},
    }
    assert repositories + tags + heads < first["requests"]["upstream"]["total"]


def test_relock_resolves_moved_tags_in_full_and_matches_a_fresh_lock(
    distribution, small, tmp_path
) -> None:
    client = RegistryClient(distribution.url)
    push(small, client)
    spec_path = lab_list(tmp_path, distribution.address)
    lock_path = tmp_path / "mirror.lock"
    lock(load(spec_path), lock_path)

    rebuilt = build(MOVED)
    push(rebuilt, client)
    old, new = small.expected(), rebuilt.expected()
    unchanged = {
        (destination, tag)
        for destination, tag in LAB_SELECTION
        if old[f"{destination}:{tag}"]["digest"] == new[f"{destination}:{tag}"]["digest"]
    }
    assert unchanged and len(unchanged) < len(LAB_SELECTION)

    report = lock(load(spec_path), lock_path)
    assert report["summary"] == f"{len(LAB_SELECTION) - len(unchanged)} moved"
    assert report["reused"] == len(unchanged)
    assert lock_path.read_bytes() == fresh_lock(spec_path, tmp_path / "fresh")
    locked = read_lock(lock_path)
    assert locked is not None
    assert_matches_sample(locked, rebuilt)
    # Every tag costs a GET of its manifest; a moved one then fetches what else it copies.
    moved = [entry for entry in locked.entries if entry.key not in unchanged]
    repositories = len({entry.repository for entry in locked.entries})
    assert report["requests"]["upstream"]["by_method"] == {
        "GET": repositories + len(unchanged) + manifests_fetched(Lock(tuple(moved))),
    }

    # Another platform selection for an unchanged digest is resolved again, not reused.
    spec_path.write_text(
        spec_path.read_text().replace(
            '    semver: ">=1.0.0"\n',
            '    semver: ">=1.0.0"\n    platforms: [linux/arm/v7]\n    platform_mode: filter\n',
        )
    )
    report = lock(load(spec_path), lock_path)
    assert report["reused"] == len(LAB_SELECTION) - 3
    assert lock_path.read_bytes() == fresh_lock(spec_path, tmp_path / "fresh-filter")


def test_the_lock_records_each_entry_s_signature_keys(distribution, small, tmp_path) -> None:
    """The policy's keys go into the lock, so the sync reads them there, not in the list."""
    client = RegistryClient(distribution.url)
    push(small, client)
    cosign("generate-key-pair", cwd=tmp_path)
    signed = small.artifact("sample/app-002:1.0.0")
    options = ["--key", "cosign.key", "--tlog-upload=false", "--allow-http-registry"]
    cosign(
        "sign",
        *options,
        f"{distribution.address}/{signed.repository}@{signed.digest}",
        cwd=tmp_path,
    )
    spec_path = lab_list(
        tmp_path,
        distribution.address,
        **{
            "    repository: sample/app-002\n    regex: '^[0-9]+\\.[0-9]+\\.[0-9]+$'\n"
            "    max_tags: 2\n": "    repository: sample/app-002\n    tags: ['1.0.0']\n"
            "    signatures: {keys: [cosign.pub]}\n"
        },
    )
    lock(load(spec_path), tmp_path / "mirror.lock")
    locked = read_lock(tmp_path / "mirror.lock")
    assert locked is not None
    keys = {entry.reference: entry.signature_keys for entry in locked.entries}
    assert keys.pop("sample/app-002:1.0.0") == ("cosign.pub",)
    # The rest of the lab list says `signatures: none` at its source; no key is recorded.
    assert keys and set(keys.values()) == {()}
    document = json.loads((tmp_path / "mirror.lock").read_text())
    (recorded,) = [e for e in document["entries"] if e["destination"] == "sample/app-002"]
    assert recorded["signature_keys"] == ["cosign.pub"]


def test_relock_finds_a_new_signature_of_an_unchanged_digest(distribution, small, tmp_path) -> None:
    client = RegistryClient(distribution.url)
    push(small, client)
    cosign("generate-key-pair", cwd=tmp_path)
    options = ["--key", "cosign.key", "--tlog-upload=false", "--allow-http-registry"]
    older = small.artifact("sample/app-001:1.1.0")
    reference = f"{distribution.address}/{older.repository}@{older.digest}"
    cosign("sign", *options, reference, cwd=tmp_path)
    spec_path = lab_list(tmp_path, distribution.address)
    lock_path = tmp_path / "mirror.lock"
    lock(load(spec_path), lock_path)
    locked = read_lock(lock_path)
    assert locked is not None
    entries = len(locked.entries)
    repositories = len({entry.repository for entry in locked.entries})

    signed = small.artifact("sample/app-001:2.0.0")
    cosign(
        "sign",
        *options,
        f"{distribution.address}/{signed.repository}@{signed.digest}",
        cwd=tmp_path,
    )
    report = lock(load(spec_path), lock_path)
    assert report["reused"] == entries
    assert report["diff"]["changed"] == [
        {
            "destination": "sample/app-001",
            "tag": "2.0.0",
            "digest": signed.digest,
            "fields": ["signatures"],
        }
    ]
    locked = read_lock(lock_path)
    assert locked is not None
    entry = locked.get("sample/app-001", "2.0.0")
    assert entry is not None
    assert [(s.subject, s.kind) for s in entry.signatures] == [(signed.digest, "sig")]
    # The new signature is fetched; the one already locked costs a HEAD.
    assert report["requests"]["upstream"]["by_method"] == {
        "GET": repositories + entries + 1,
        "HEAD": 1,
    }
    assert lock_path.read_bytes() == fresh_lock(spec_path, tmp_path / "fresh")

    # A second signature on the same digest moves the .sig tag: fetched again.
    cosign("generate-key-pair", "--output-key-prefix", "other", cwd=tmp_path)
    other = ["--key", "other.key", *options[2:]]
    cosign("sign", *other, reference, cwd=tmp_path)
    report = lock(load(spec_path), lock_path)
    assert report["reused"] == entries
    assert [change["tag"] for change in report["diff"]["changed"]] == ["1.1.0"]
    locked = read_lock(lock_path)
    assert locked is not None
    older_entry = locked.get("sample/app-001", "1.1.0")
    assert older_entry is not None
    (signature,) = older_entry.signatures
    assert len(signature.layers) == 2
    assert report["requests"]["upstream"]["by_method"] == {
        "GET": repositories + entries + 1,
        "HEAD": 2,
    }
    assert lock_path.read_bytes() == fresh_lock(spec_path, tmp_path / "fresh-again")
