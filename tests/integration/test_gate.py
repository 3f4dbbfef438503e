"""The gate behind real nginx (roles/gateway's template), with a real Distribution behind it,
real cosign signatures made through the gateway by the appliance's identity, verdicts
written through the real verdict store, and skopeo as the client (tests/integration/gatelab.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from gatelab import COSIGN, DB_DIGEST, GateLab

from airgapped_registry.audit import query, verify
from airgapped_registry.signing.signer import signature_tag

pytestmark = pytest.mark.integration

SKOPEO = "/usr/bin/skopeo"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER = "application/vnd.oci.image.layer.v1.tar"


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GateLab]:
    with GateLab(tmp_path_factory.mktemp("gatelab")) as running:
        yield running


def reason(answer: tuple[int, dict[str, str], bytes]) -> tuple[int, str | None]:
    status, headers, _ = answer
    return status, headers.get("X-Airgap-Reason")


def skopeo_copy(
    lab: GateLab, who: str, source: str, destination: str
) -> subprocess.CompletedProcess:
    cert_dir = str(lab.clients[who].cert_dir)
    argv = [SKOPEO, "--insecure-policy", "copy", "--preserve-digests", "--retry-times", "0"]
    if source.startswith("docker://"):
        argv += ["--src-cert-dir", cert_dir]
    if destination.startswith("docker://"):
        argv += ["--dest-cert-dir", cert_dir]
    return subprocess.run(
        [*argv, source, destination], capture_output=True, text=True, timeout=120, check=False
    )


def audit_records(lab: GateLab, **filters: str) -> list[dict]:
    return list(query(lab.audit_dir, **filters))


# -- admission -------------------------------------------------------------------------------


def test_an_unsigned_image_is_denied_get_and_head_by_tag_and_digest(lab: GateLab) -> None:
    image = lab.push_image("prod/unsigned", "1.0", "unsigned")
    lab.record_verdict(image, "pass")  # a passing scan does not make up for no signature
    for method in ("GET", "HEAD"):
        for reference in (image.tag, image.digest):
            answer = lab.request("puller", method, f"/v2/prod/unsigned/manifests/{reference}")
            assert reason(answer) == (403, "unsigned"), (method, reference)
    _status, headers, body = lab.request("puller", "GET", "/v2/prod/unsigned/manifests/1.0")
    error = json.loads(body)["errors"][0]
    assert error["code"] == "DENIED" and error["detail"] == {"reason": "unsigned"}
    assert f"prod/unsigned@{image.digest}: not signed by the appliance" == error["message"]
    assert headers["Content-Type"] == "application/json"
    denials = audit_records(lab, digest=image.digest, decision="deny")
    assert {(r["action"], r["identity"]["subject"]) for r in denials} == {
        ("pull", "O=Airgap,OU=puller,CN=node"),
        ("head", "O=Airgap,OU=puller,CN=node"),
    }


def test_a_blob_of_a_manifest_not_admitted_is_denied(lab: GateLab) -> None:
    image = lab.push_image("prod/blobs", "1.0", "not admitted")
    answer = lab.request("puller", "GET", f"/v2/prod/blobs/blobs/{image.layer}")
    assert reason(answer) == (403, "blob_not_admitted")
    # A blob HEAD is not gated: it serves no content.
    assert lab.request("puller", "HEAD", f"/v2/prod/blobs/blobs/{image.layer}")[0] == 200


def test_a_signed_and_passed_image_is_served_to_skopeo(lab: GateLab, tmp_path: Path) -> None:
    image = lab.admitted_image("prod/app")
    copied = skopeo_copy(
        lab, "puller", f"docker://{lab.address}/prod/app:1.0", f"oci:{tmp_path / 'out'}:app"
    )
    assert copied.returncode == 0, copied.stderr
    index = json.loads((tmp_path / "out" / "index.json").read_text())
    assert index["manifests"][0]["digest"] == image.digest
    # nginx asked the backend for the digest the gate decided on, not for the tag.
    assert f'"GET /v2/prod/app/manifests/{image.digest} HTTP/1.1"' in lab.backend_log()
    assert '"GET /v2/prod/app/manifests/1.0 HTTP/1.1"' not in lab.backend_log()
    pulls = audit_records(lab, digest=image.digest, action="pull")
    assert pulls and pulls[-1]["decision"] == "allow"
    assert pulls[-1]["reason"] == "signed+pass" and pulls[-1]["reference"] == "1.0"
    assert pulls[-1]["identity"]["subject"] == "O=Airgap,OU=puller,CN=node"
    # cosign's signature manifest is served as metadata (nodes verify with it).
    status, headers, _ = lab.request(
        "puller",
        "GET",
        f"/v2/prod/app/manifests/{signature_tag(image.digest)}",
        {"Accept": OCI_MANIFEST},
    )
    assert (status, headers["Content-Type"]) == (200, OCI_MANIFEST)


def test_a_blob_goes_with_the_signature_or_the_verdict_that_let_it_out(lab: GateLab) -> None:
    image = lab.admitted_image("prod/revoked")
    assert lab.request("puller", "GET", "/v2/prod/revoked/manifests/1.0")[0] == 200
    layer = f"/v2/prod/revoked/blobs/{image.layer}"
    assert lab.request("puller", "GET", layer)[0] == 200
    # A new scan fails the image: its manifest and its blobs are refused from then on.
    lab.record_verdict(image, "fail", [])
    assert reason(lab.request("puller", "GET", "/v2/prod/revoked/manifests/1.0"))[1] == "failed"
    assert reason(lab.request("puller", "GET", layer)) == (403, "blob_not_admitted")
    lab.record_verdict(image, "pass")
    assert lab.request("puller", "GET", layer)[0] == 200
    # So does a deleted signature.
    signatures = lab.request(
        "admin", "HEAD", f"/v2/prod/revoked/manifests/{signature_tag(image.digest)}"
    )[1]["Docker-Content-Digest"]
    assert lab.request("admin", "DELETE", f"/v2/prod/revoked/manifests/{signatures}")[0] == 202
    assert reason(lab.request("puller", "GET", layer)) == (403, "blob_not_admitted")


def test_a_failed_image_is_denied_naming_the_finding(lab: GateLab) -> None:
    image = lab.push_image("prod/vulnerable", "1.0", "vulnerable")
    lab.sign(image)
    finding = {
        "id": "CVE-2024-0001",
        "package": "openssl",
        "installed": "3.0.0",
        "fixed": "3.0.1",
        "severity": "CRITICAL",
    }
    lab.record_verdict(image, "fail", [finding])
    status, headers, body = lab.request("puller", "GET", "/v2/prod/vulnerable/manifests/1.0")
    assert (status, headers["X-Airgap-Reason"]) == (403, "failed")
    message = json.loads(body)["errors"][0]["message"]
    assert "1 critical" in message and "CVE-2024-0001" in message


def test_a_stale_verdict_is_denied(lab: GateLab) -> None:
    lab.admitted_image("prod/stale")
    assert lab.request("puller", "GET", "/v2/prod/stale/manifests/1.0")[0] == 200
    lab.install_db("sha256:" + "e" * 64, datetime.now(UTC))  # a new DB: the verdict is old
    try:
        status, headers, body = lab.request("puller", "GET", "/v2/prod/stale/manifests/1.0")
        assert (status, headers["X-Airgap-Reason"]) == (403, "stale")
        assert "the current DB is sha256:eeee" in json.loads(body)["errors"][0]["message"]
    finally:
        lab.install_db(DB_DIGEST, datetime.now(UTC))
    lab.install_db(DB_DIGEST, datetime.now(UTC) - timedelta(days=8))  # the DB itself too old
    try:
        assert reason(lab.request("puller", "GET", "/v2/prod/stale/manifests/1.0")) == (
            403,
            "stale",
        )
    finally:
        lab.install_db(DB_DIGEST, datetime.now(UTC))
    assert lab.request("puller", "GET", "/v2/prod/stale/manifests/1.0")[0] == 200


def test_a_deleted_signature_denies_the_next_pull(lab: GateLab) -> None:
    image = lab.admitted_image("prod/resigned")
    assert lab.request("puller", "GET", "/v2/prod/resigned/manifests/1.0")[0] == 200
    status, headers, _ = lab.request(
        "admin", "HEAD", f"/v2/prod/resigned/manifests/{signature_tag(image.digest)}"
    )
    assert status == 200
    signatures = headers["Docker-Content-Digest"]
    deleted = lab.request("admin", "DELETE", f"/v2/prod/resigned/manifests/{signatures}")
    assert deleted[0] == 202
    assert reason(lab.request("puller", "GET", "/v2/prod/resigned/manifests/1.0")) == (
        403,
        "unsigned",
    )
    (deletion,) = audit_records(lab, action="delete", digest=signatures)
    assert (deletion["decision"], deletion["identity"]["subject"]) == (
        "allow",
        "O=Airgap,OU=admin,CN=operator",
    )


def test_a_signature_by_another_key_is_invalid(lab: GateLab, tmp_path: Path) -> None:
    image = lab.push_image("prod/forged", "1.0", "forged")
    lab.record_verdict(image, "pass")
    env = {**os.environ, "COSIGN_PASSWORD": "x"}
    subprocess.run(
        [str(COSIGN), "generate-key-pair"], cwd=tmp_path, env=env, check=True, capture_output=True
    )
    appliance = lab.clients["appliance"]
    signed = subprocess.run(
        [
            str(COSIGN), "sign", "--key", "cosign.key", "--tlog-upload=false", "--yes",
            "--registry-cacert", str(lab.pki / "ca.pem"),
            "--registry-client-cert", str(appliance.cert),
            "--registry-client-key", str(appliance.key),
            f"{lab.address}/prod/forged@{image.digest}",
        ],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert signed.returncode == 0, signed.stderr
    assert reason(lab.request("puller", "GET", "/v2/prod/forged/manifests/1.0")) == (
        403,
        "signature_invalid",
    )


# -- roles -----------------------------------------------------------------------------------


def test_a_puller_cannot_push_nor_delete(lab: GateLab) -> None:
    image = lab.admitted_image("prod/kept")
    manifest = b'{"schemaVersion":2}'
    put = lab.request(
        "puller", "PUT", "/v2/prod/kept/manifests/2.0", {"Content-Type": OCI_MANIFEST}, manifest
    )
    assert reason(put) == (403, "no_role")
    assert reason(lab.request("puller", "POST", "/v2/prod/kept/blobs/uploads/")) == (403, "no_role")
    delete = lab.request("puller", "DELETE", f"/v2/prod/kept/manifests/{image.digest}")
    assert reason(delete) == (403, "no_role")
    assert "may not delete on prod/kept" in json.loads(delete[2])["errors"][0]["message"]
    assert lab.request("puller", "GET", "/v2/prod/kept/manifests/1.0")[0] == 200


def test_a_forged_identity_header_is_ignored(lab: GateLab) -> None:
    forged = {
        "X-SSL-Client-Verify": "SUCCESS",
        "X-SSL-Client-S-DN": "CN=root,OU=admin",
        "X-Original-URI": "/v2/",
        "X-Original-Method": "GET",
    }
    assert reason(lab.request("puller", "GET", "/v2/_catalog", forged)) == (403, "no_role")
    assert reason(lab.request("stranger", "GET", "/v2/_catalog", forged)) == (403, "no_role")
    assert lab.request("admin", "GET", "/v2/_catalog")[0] == 200


def test_the_catalog_is_for_admins_only(lab: GateLab) -> None:
    assert reason(lab.request("puller", "GET", "/v2/_catalog")) == (403, "no_role")
    assert reason(lab.request("pusher", "GET", "/v2/_catalog")) == (403, "no_role")
    assert reason(lab.request("sync", "GET", "/v2/_catalog")) == (403, "no_role")
    status, _, body = lab.request("admin", "GET", "/v2/_catalog")
    assert status == 200 and "repositories" in json.loads(body)


def test_a_pusher_pushes_and_pushes_again_into_its_landing_zone(
    lab: GateLab, tmp_path: Path
) -> None:
    lab.push_image("staging/source", "1.0", "ci build")
    layout = f"oci:{tmp_path / 'build'}:app"
    exported = subprocess.run(
        [SKOPEO, "--insecure-policy", "copy", "--src-tls-verify=false",
         f"docker://127.0.0.1:{lab.backend_port}/staging/source:1.0", layout],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert exported.returncode == 0, exported.stderr
    for attempt in range(2):  # the second push HEADs what is there first: not gated
        pushed = skopeo_copy(lab, "pusher", layout, f"docker://{lab.address}/ci/app:1.0")
        assert pushed.returncode == 0, (attempt, pushed.stderr)
    tags = audit_records(lab, action="tag", identity="O=Airgap,OU=pusher,CN=ci")
    assert [r["repository"] for r in tags] == ["ci/app", "ci/app"]
    assert reason(lab.request("pusher", "PUT", "/v2/prod/app/manifests/9", {}, b"{}")) == (
        403,
        "no_role",
    )


# -- failing closed --------------------------------------------------------------------------


def test_the_gate_stopped_refuses_with_503_and_logs_it(lab: GateLab) -> None:
    lab.admitted_image("prod/down")
    lab.stop_gate()
    try:
        status, _headers, body = lab.request("puller", "GET", "/v2/prod/down/manifests/1.0")
        assert status == 503
        assert json.loads(body)["errors"][0]["code"] == "UNAVAILABLE"
        assert lab.request("admin", "GET", "/v2/_catalog")[0] == 503
        wanted = {("/v2/prod/down/manifests/1.0", 503), ("/v2/_catalog", 503)}
        deadline = time.monotonic() + 5  # nginx logs a request after its answer is sent
        while True:
            lines = [json.loads(line) for line in lab.gate_down_log.read_text().splitlines()]
            if {(line["uri"], line["status"]) for line in lines} >= wanted:
                break
            assert time.monotonic() < deadline, lines
            time.sleep(0.05)
        assert lines[0]["ssl_client_s_dn"] == "O=Airgap,OU=puller,CN=node"
    finally:
        lab.start_gate()
    assert lab.request("puller", "GET", "/v2/prod/down/manifests/1.0")[0] == 200
    # The gate, started again, took nginx's refusals into its audit log.
    imported = [r for r in audit_records(lab, action="pull") if r["type"] == "gate_down"]
    assert [(r["repository"], r["reference"], r["identity"]["subject"]) for r in imported] == [
        ("prod/down", "1.0", "O=Airgap,OU=puller,CN=node")
    ]


def test_observe_mode_and_a_broken_policy_on_reload(lab: GateLab) -> None:
    image = lab.push_image("prod/observed", "1.0", "observed")
    original = lab.policy_path.read_text()
    try:
        lab.policy_path.write_text(original.replace("mode: enforce", "mode: observe"))
        lab.reload_gate()
        deadline = time.monotonic() + 10
        while lab.request("puller", "GET", "/v2/prod/observed/manifests/1.0")[0] != 200:
            assert time.monotonic() < deadline, lab.gate_log()
            time.sleep(0.1)
        (record,) = audit_records(lab, digest=image.digest, decision="allow")[-1:]
        assert record["reason"].startswith("observe: would deny: unsigned")
        lab.policy_path.write_text(original.replace("role: puller}", "role: root}", 1))
        lab.reload_gate()
        time.sleep(1)
        assert "gate.yaml:4: grants[0]: role: 'root' is not one of" in lab.gate_log()
        assert lab.request("puller", "GET", "/v2/prod/observed/manifests/1.0")[0] == 200
    finally:
        lab.policy_path.write_text(original)
        lab.reload_gate()
    time.sleep(1)
    assert reason(lab.request("puller", "GET", "/v2/prod/observed/manifests/1.0")) == (
        403,
        "unsigned",
    )


def test_the_audit_log_verifies(lab: GateLab) -> None:
    lab.request("puller", "GET", "/v2/_catalog")
    result = verify(lab.audit_dir, lab.audit_key.with_suffix(".pub"))
    assert result.ok, result


# -- caches ----------------------------------------------------------------------------------


def test_a_tag_is_kept_only_until_the_gate_allows_a_change_in_its_repository(
    lab: GateLab,
) -> None:
    """In-process gate on the lab's backend: a pull by tag costs no backend request once the
    tag is known, and a push the gate allows makes the next pull read the tag again."""
    from airgapped_registry.gate.setup import build

    first = lab.admitted_image("prod/moving")
    gate = build(lab.policy_path, lab.provenance, None)
    gate.admission.settle = 0.0
    pull = {
        "X-Original-Method": "GET",
        "X-Original-URI": "/v2/prod/moving/manifests/1.0",
        "X-SSL-Client-Verify": "SUCCESS",
        "X-SSL-Client-S-DN": "O=Airgap,OU=puller,CN=node",
    }
    assert gate.decide(pull, record=False).digest == first.digest
    before = gate.admission.client.requests
    assert gate.decide(pull, record=False).digest == first.digest
    assert gate.admission.client.requests == before  # tag and signature tag known
    second = lab.push_image("prod/moving", "1.0", "second")
    lab.sign(second)
    lab.record_verdict(second, "pass")
    # Written straight into the backend: this gate saw nothing, and keeps what it knew.
    assert gate.decide(pull, record=False).digest == first.digest
    put = {**pull, "X-Original-Method": "PUT", "X-SSL-Client-S-DN": "CN=sync,O=Airgap"}
    assert gate.decide(put, record=False).allowed
    assert gate.decide(pull, record=False).digest == second.digest
    gate.admission.close()


def test_with_backend_storage_a_tag_is_read_from_distribution_s_links(
    lab: GateLab, tmp_path: Path
) -> None:
    """In-process gate with ``backend_storage`` on the lab's Distribution: right after a push
    into the repository (when a HEAD-asking gate HEADs the tag and the signature tag for
    every decision) no tag is asked of the backend; a tag moved or a signature deleted
    behind the gate's back counts at once; a storage where the links are not falls back
    to asking the backend."""
    from airgapped_registry.gate.setup import build

    first = lab.admitted_image("prod/linked")
    policy = tmp_path / "gate.yaml"
    policy.write_text(f"{lab.policy_path.read_text()}backend_storage: {lab.root / 'storage'}\n")
    gate = build(policy, lab.provenance, None)
    pull = {
        "X-Original-Method": "GET",
        "X-Original-URI": "/v2/prod/linked/manifests/1.0",
        "X-SSL-Client-Verify": "SUCCESS",
        "X-SSL-Client-S-DN": "O=Airgap,OU=puller,CN=node",
    }
    gate.admission.changed("prod/linked")  # as after a push the gate let through
    assert gate.decide(pull, record=False).reason == "signed+pass"
    before = gate.admission.client.requests
    for _ in range(3):
        decision = gate.decide(pull, record=False)
        assert (decision.reason, decision.digest) == ("signed+pass", first.digest)
    assert gate.admission.client.requests == before  # neither tag asked of the backend
    second = lab.push_image("prod/linked", "1.0", "second")
    assert gate.decide(pull, record=False).digest == second.digest  # unsigned yet
    assert gate.decide(pull, record=False).reason == "unsigned"
    lab.sign(second)
    lab.record_verdict(second, "pass")
    assert gate.decide(pull, record=False).reason == "signed+pass"
    with lab.backend_client() as backend:
        signatures = backend.head_manifest("prod/linked", signature_tag(second.digest))
        backend.delete_manifest("prod/linked", signatures.digest)
    assert gate.decide(pull, record=False).reason == "unsigned"
    gate.admission.close()

    policy.write_text(f"{lab.policy_path.read_text()}backend_storage: {tmp_path / 'none'}\n")
    asking = build(policy, lab.provenance, None)
    asking.admission.changed("prod/linked")
    before = asking.admission.client.requests
    decision = asking.decide(pull, record=False)
    assert (decision.reason, decision.digest) == ("unsigned", second.digest)
    assert asking.admission.client.requests > before  # the backend was asked
    asking.admission.close()


def test_gate_decide_explains_without_recording(lab: GateLab, capsys) -> None:
    from airgapped_registry.cli import main

    image = lab.push_image("prod/explained", "1.0", "explained")
    records = len(audit_records(lab))
    argv = ["gate", "decide", "GET", "/v2/prod/explained/manifests/1.0"]
    argv += ["--subject", "CN=node,OU=puller", "--policy", str(lab.policy_path)]
    assert main([*argv, "--provenance", str(lab.provenance)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["decision"], report["reason"], report["digest"]) == (
        "deny",
        "unsigned",
        image.digest,
    )
    assert report["headers"]["X-Airgap-Reason"] == "unsigned"
    assert len(audit_records(lab)) == records


def test_a_retired_key_stops_admitting_what_it_signed(lab: GateLab) -> None:
    """keys.json is read again when it changes: a rotation keeps the old key's signatures
    during the overlap, its retirement ends them (last in this module: it rotates the key)."""
    from airgapped_registry.signing import keys
    from airgapped_registry.tools.process import Tools

    lab.admitted_image("prod/rotated")
    time.sleep(1.1)  # key ids are UTC seconds
    keys.rotate(lab.keys_dir, "gate lab signing password", timedelta(days=1), Tools(), str(COSIGN))
    assert lab.request("puller", "GET", "/v2/prod/rotated/manifests/1.0")[0] == 200
    keys.retire(lab.keys_dir, force=True)
    assert reason(lab.request("puller", "GET", "/v2/prod/rotated/manifests/1.0")) == (
        403,
        "signature_invalid",
    )
    resigned = lab.admitted_image("prod/rotated", "2.0")  # signed with the new key
    assert lab.request("puller", "GET", f"/v2/prod/rotated/manifests/{resigned.digest}")[0] == 200


def test_a_multi_platform_image_is_pulled_whole_and_each_child_is_gated(
    lab: GateLab, tmp_path: Path
) -> None:
    amd64 = lab.push_image("prod/multi", "amd64", "amd64")
    arm64 = lab.push_image("prod/multi", "arm64", "arm64")
    index = lab.push_index("prod/multi", "1.0", [amd64, arm64])
    lab.sign(index)  # the index and each child, as the appliance signs
    for child in (amd64, arm64):
        lab.record_verdict(child, "pass")
    lab.record_verdict(index, "pass", children=(amd64.digest, arm64.digest))
    copied = skopeo_copy(
        lab, "puller", f"docker://{lab.address}/prod/multi:1.0", f"oci:{tmp_path / 'all'}:m"
    )
    assert copied.returncode == 0, copied.stderr
    copied_all = subprocess.run(
        [SKOPEO, "--insecure-policy", "copy", "--all", "--preserve-digests",
         "--src-cert-dir", str(lab.clients["puller"].cert_dir),
         f"docker://{lab.address}/prod/multi:1.0", f"oci:{tmp_path / 'every'}:m"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert copied_all.returncode == 0, copied_all.stderr
    # A child with no verdict: the index does not stand, and the child itself is refused.
    riscv = lab.push_image("prod/multi", "riscv64", "riscv64")
    bigger = lab.push_index("prod/multi", "2.0", [amd64, arm64, riscv])
    lab.sign(bigger)
    lab.record_verdict(bigger, "pass", children=(amd64.digest, arm64.digest, riscv.digest))
    status, headers, body = lab.request("puller", "GET", "/v2/prod/multi/manifests/2.0")
    assert (status, headers["X-Airgap-Reason"]) == (403, "stale")
    assert "a platform manifest has no verdict" in json.loads(body)["errors"][0]["message"]
    assert reason(lab.request("puller", "GET", f"/v2/prod/multi/manifests/{riscv.digest}")) == (
        403,
        "not_scanned",
    )
