"""Issue 9's acceptance for scanning on the lab, beyond what test_provenance checks.

From `node` with its own clients (cosign, skopeo, podman under the sigstoreSigned
policy), and on the registry host with the engine's command: the fixture DB's finding
in sample/vulnerable's verdict and attestation, a CI push scanned and signed by the
service (and by its reconciliation when the notification endpoint is down), a DB past
max_age turning verdicts stale, and a tampered DB artifact refused with the DB in use
kept. Whatever a test changes on the lab (the service stopped, scratch repositories,
copies of the configuration) is put back before it ends: the rotation tests run after.
"""

from __future__ import annotations

import base64
import json
import shlex
import time

import pytest
import yaml
from test_provenance import (
    CONFIG,
    COSIGN_TLS,
    NODE_KEYS,
    REGISTRY,
    STATE,
    keys_json,
    podman_pull,
    push_unsigned,
)

from airgap_lab.trivydb import FIXTURE_VULNERABILITY_ID

SERVICE = "airgap-scanner"
# Generous: the measured push -> signed verdict is about 2 s on a quiet machine
# (docs/performance.md); the lab shares 2 cores with whatever else runs.
POLL_SECONDS = 60
SCRATCH = "/root/scan-acceptance"


@pytest.fixture(scope="module")
def registry(hosts):
    return hosts["registry"]


@pytest.fixture(scope="module")
def node(hosts):
    return hosts["node"]


def lock_entry(registry, destination):
    lock = json.loads(registry.check_output(f"cat {STATE}/relay.lock"))
    return next(e for e in lock["entries"] if e["destination"] == destination)


def status(registry, *args, config=CONFIG):
    quoted = " ".join(shlex.quote(a) for a in args)
    return json.loads(registry.check_output(f"airgap scan status --config {config} {quoted}"))


def verdict_of(registry, repository, digest):
    """The digest's verdict with its findings, or None when it has none yet."""
    ran = registry.run(f"airgap scan status --config {CONFIG} --repository {repository} {digest}")
    if ran.rc != 0:
        assert "no verdict" in ran.stderr, ran.stderr
        return None
    (verdict,) = json.loads(ran.stdout)["verdicts"]
    return verdict


def wait_for_verdict(registry, repository, digest, bound=POLL_SECONDS):
    """(verdict, seconds until it was recorded as read from here)."""
    started = time.monotonic()
    while True:
        verdict = verdict_of(registry, repository, digest)
        if verdict is not None:
            return verdict, time.monotonic() - started
        assert time.monotonic() - started < bound, f"{repository}@{digest}: no verdict in {bound}s"
        time.sleep(0.25)


def active_key(registry):
    (active,) = [key["id"] for key in keys_json(registry)["keys"] if key["state"] == "active"]
    return f"{NODE_KEYS}/cosign-{active}.pub"


def test_the_vulnerable_sample_fails_with_the_fixture_vulnerability(registry):
    entry = lock_entry(registry, "sample/vulnerable")
    verdict = verdict_of(registry, "sample/vulnerable", entry["digest"])
    assert verdict is not None and verdict["status"] == "fail"
    assert FIXTURE_VULNERABILITY_ID in verdict["failing"]
    assert FIXTURE_VULNERABILITY_ID in {finding["id"] for finding in verdict["findings"]}


def test_every_other_sample_image_passes(registry):
    # test_provenance checks sample/app-*; here every other sample repository's too.
    verdicts = status(registry)["verdicts"]
    samples = [
        v
        for v in verdicts
        if v["repository"].startswith("sample/") and v["repository"] != "sample/vulnerable"
    ]
    scanned = [v for v in samples if v["status"] != "skipped"]
    assert {v["repository"] for v in scanned} > {"sample/base"}
    wrong = [f"{v['repository']}@{v['digest']}: {v['status']}" for v in scanned]
    assert all(v["status"] == "pass" for v in scanned), wrong


def test_the_vulnerable_samples_attestation_verifies_on_the_node(registry, node):
    entry = lock_entry(registry, "sample/vulnerable")
    ran = node.run(
        f"cosign verify-attestation --type vuln --key {active_key(registry)} "
        f"--insecure-ignore-tlog {COSIGN_TLS} {REGISTRY}/sample/vulnerable@{entry['digest']}"
    )
    assert ran.rc == 0, ran.stderr[-500:]
    statements = [
        json.loads(base64.b64decode(json.loads(line)["payload"]))
        for line in ran.stdout.splitlines()
        if line.strip()
    ]
    assert statements
    named = []
    for statement in statements:
        assert statement["predicateType"] == "https://cosign.sigstore.dev/attestation/vuln/v1"
        predicate = statement["predicate"]
        assert predicate["scanner"]["uri"] and predicate["scanner"]["db"]["version"]
        results = predicate["scanner"]["result"]
        reports = results if isinstance(results, list) else [results]
        named += [
            vulnerability["VulnerabilityID"]
            for report in reports
            for result in report.get("Results") or []
            for vulnerability in result.get("Vulnerabilities") or []
        ]
    assert FIXTURE_VULNERABILITY_ID in named


def test_a_ci_push_from_the_node_is_scanned_signed_and_pulls(registry, node, capsys):
    digest = push_unsigned(node, "ci/acceptance", f"pushed by CI at {time.time()}\n")
    # From the push's end: Distribution notifies the service, which scans, attests and
    # signs, then records the verdict (recorded last, so a verdict means signed too).
    verdict, seconds = wait_for_verdict(registry, "ci/acceptance", digest)
    with capsys.disabled():
        print(f"\nci/acceptance@{digest}: push -> signed verdict {seconds:.2f} s")
    assert verdict["status"] == "pass", verdict
    pulled = podman_pull(node, f"{REGISTRY}/ci/acceptance@{digest}")
    assert pulled.rc == 0, pulled.stderr


def test_the_reconciliation_scans_what_no_notification_announced(registry, node):
    try:
        registry.check_output(f"systemctl stop {SERVICE}")
        digest = push_unsigned(node, "ci/unannounced", f"pushed while down at {time.time()}\n")
        assert verdict_of(registry, "ci/unannounced", digest) is None
        # One pass while the service is down: the push is found on the backend and
        # queued persistently; the service's workers take it when it starts.
        report = json.loads(registry.check_output(f"airgap scan reconcile --config {CONFIG}"))
        assert report["queued"] >= 1 and report["queue"] >= 1, report
    finally:
        registry.check_output(f"systemctl start {SERVICE}")
    verdict, _ = wait_for_verdict(registry, "ci/unannounced", digest)
    assert verdict["status"] == "pass", verdict
    pulled = podman_pull(node, f"{REGISTRY}/ci/unannounced@{digest}")
    assert pulled.rc == 0, pulled.stderr


def test_the_service_is_back(registry):
    assert registry.service(SERVICE).is_running
    health = registry.run("curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:5060/healthz")
    assert health.stdout == "200"


@pytest.fixture
def scratch(registry):
    """A directory for configuration copies on the registry host, removed afterwards."""
    registry.check_output(f"rm -rf {SCRATCH} && mkdir -m 700 {SCRATCH}")
    yield SCRATCH
    registry.check_output(f"rm -rf {SCRATCH}")


def config_copy(registry, scratch, **db):
    """provenance.yaml with scanning.db changed, written beside the scratch files."""
    config = yaml.safe_load(registry.file(CONFIG).content_string)
    config["scanning"]["db"].update(db)
    path = f"{scratch}/provenance.yaml"
    registry.check_output(
        f"printf %s {shlex.quote(yaml.safe_dump(config))} > {path} && chmod 600 {path}"
    )
    return path


def test_a_db_older_than_max_age_makes_verdicts_stale(registry, scratch):
    before = status(registry)
    assert before["db"]["stale"] is False
    judged = {
        (v["repository"], v["digest"])
        for v in before["verdicts"]
        if v["status"] in ("pass", "fail")
    }
    assert judged
    aged = status(registry, config=config_copy(registry, scratch, max_age="1s"))
    assert aged["db"]["stale"] is True and aged["db"]["digest"] == before["db"]["digest"]
    now = {(v["repository"], v["digest"]): v for v in aged["verdicts"]}
    for key in judged:
        assert now[key]["status"] == "stale", now[key]
        assert "more than max_age 1s" in now[key]["stale"]
    assert "pass" not in aged["totals"] and "fail" not in aged["totals"]
    # The service's own configuration was not touched.
    assert status(registry)["db"]["stale"] is False


# Runs on the registry host with its Python (no engine import): copies the DB artifact
# within the backend into a scratch repository with one byte of its layer flipped. The
# layer is pushed under the digest of its flipped bytes, as anyone able to push can: what
# must refuse it is the install's check of the layer's contents.
TAMPER = r"""
import hashlib, http.client, json, socket, sys, urllib.parse
backend, source, tag, target = sys.argv[1:5]
OCI = "application/vnd.oci.image.manifest.v1+json"
where = urllib.parse.urlsplit(backend)
class Backend(http.client.HTTPConnection):
    # The backend's unix socket (unix:///path), or http://host:port.
    def connect(self):
        if where.scheme != "unix":
            return super().connect()
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.connect(where.path)
def call(method, path, data=None, headers=None):
    if path.startswith("http"):  # a Location Distribution built
        parts = urllib.parse.urlsplit(path)
        path = parts.path + ("?" + parts.query if parts.query else "")
    connection = Backend("localhost" if where.scheme == "unix" else where.netloc)
    connection.request(method, path, body=data, headers=headers or {})
    response = connection.getresponse()
    body = response.read()
    if response.status >= 400:
        sys.exit(f"{method} {path}: {response.status} {body[:200]!r}")
    return body, response.headers
body, _ = call("GET", f"/v2/{source}/manifests/{tag}", headers={"Accept": OCI})
manifest = json.loads(body)
(layer,) = manifest["layers"]
blob = bytearray(call("GET", f"/v2/{source}/blobs/{layer['digest']}")[0])
blob[len(blob) // 2] ^= 0x01
blob = bytes(blob)
digest = "sha256:" + hashlib.sha256(blob).hexdigest()
config = manifest["config"]["digest"]
call("POST", f"/v2/{target}/blobs/uploads/?mount={config}&from={source}")
_, headers = call("POST", f"/v2/{target}/blobs/uploads/")
location = headers["Location"]
location += ("&" if "?" in location else "?") + "digest=" + digest
call("PUT", location, data=blob, headers={"Content-Type": "application/octet-stream"})
layer.update(digest=digest, size=len(blob))
_, headers = call(
    "PUT", f"/v2/{target}/manifests/{tag}", data=json.dumps(manifest).encode(),
    headers={"Content-Type": OCI},
)
print(headers["Docker-Content-Digest"])
"""


def test_a_db_artifact_with_a_flipped_byte_is_refused(registry, scratch):
    config = yaml.safe_load(registry.file(CONFIG).content_string)
    backend, db = config["backend"], config["scanning"]["db"]
    # curl's way to the backend: its unix socket (the registry host's), or its URL.
    curl_backend = (
        f"--unix-socket {backend.removeprefix('unix://')} http://localhost"
        if backend.startswith("unix://")
        else backend
    )
    link = f"{config['scanning']['cache_dir']}/databases/current"
    in_use = registry.check_output(f"readlink {link}")
    before = status(registry)["db"]
    target = "test/tampered-trivy-db"
    registry.check_output(f"cat > {scratch}/tamper.py <<'EOF'\n{TAMPER}\nEOF")
    digest = registry.check_output(
        f"python3 {scratch}/tamper.py {backend} {db['repository']} {db['tag']} {target}"
    )
    try:
        lock = {
            "version": 1,
            "entries": [{"destination": target, "tag": str(db["tag"]), "digest": digest}],
        }
        registry.check_output(f"printf %s {shlex.quote(json.dumps(lock))} > {scratch}/relay.lock")
        copy = config_copy(registry, scratch, repository=target, lock=f"{scratch}/relay.lock")
        ran = registry.run(f"airgap scan db update --config {copy}")
        assert ran.rc != 0, ran.stdout
        # One line naming the artifact and the cause.
        assert f"DB artifact {target}@{digest}" in ran.stderr, ran.stderr
        assert "not a valid tar.gz" in ran.stderr, ran.stderr
        assert registry.check_output(f"readlink {link}") == in_use
        assert status(registry)["db"] == before
        assert (
            registry.run(f"ls -a {config['scanning']['cache_dir']}/databases | grep '^\\.new-'").rc
            == 1
        )
        # Scans still use the DB in use: the vulnerable sample, scanned again, fails with
        # the fixture's finding under that DB's digest.
        vulnerable = lock_entry(registry, "sample/vulnerable")["digest"]
        scanned = json.loads(
            registry.check_output(
                f"airgap scan now --config {CONFIG} sample/vulnerable@{vulnerable}"
            )
        )
        assert scanned["scanned"] == 1 and scanned["failed"] == 1, scanned
        verdict = verdict_of(registry, "sample/vulnerable", vulnerable)
        assert verdict["db"]["digest"] == before["digest"]
        assert FIXTURE_VULNERABILITY_ID in verdict["failing"]
    finally:
        # Should the artifact have been taken, the service gets its DB back for the
        # tests after this one (this one has failed already).
        registry.run(f"test $(readlink {link}) = {in_use} || ln -sfn {in_use} {link}")
        # The scratch repository goes (Distribution deletes by digest; GC frees the blobs).
        registry.run(f"curl -s -X DELETE {curl_backend}/v2/{target}/manifests/{digest}")
    assert registry.run(f"curl -sf {curl_backend}/v2/{target}/manifests/{db['tag']}").rc != 0
