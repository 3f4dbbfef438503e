"""The airgap_scan, airgap_signature and airgap_signing_key modules, run by ansible-playbook
against real Distributions on loopback, with the real Trivy and the lab's fixture DB, and the
real cosign.

The scan play installs the DB, scans, reads verdicts per repository and per digest, and
rescans; the signing play makes a key, signs, verifies, rotates and retires. Each step that
changes something runs in check mode, applied, and applied again (check / apply /
idempotence), so a check that did the work would leave the apply unchanged and fail here.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from mirror_lists import COSIGN, TRIVY

from airgap_lab.sample import (
    BASE_REPOSITORY,
    TRIVY_DB_REPOSITORY,
    TRIVY_DB_TAG,
    VULNERABLE_REPOSITORY,
    VULNERABLE_TAG,
    Sample,
    SampleSpec,
    build,
    push,
)
from airgap_lab.trivydb import FIXTURE_VULNERABILITY_ID
from airgapped_registry.cli import main as airgap_main
from airgapped_registry.mirror.lock import Child, Lock, LockEntry, Manifest
from airgapped_registry.signing import keys
from airgapped_registry.signing.config import load_signing
from airgapped_registry.transport.registry import RegistryClient
from tests.integration.conftest import _free_port
from tests.integration.scan_service import skopeo_copy
from tests.integration.test_modules import (
    run_playbook_allowing,
    three_times,
)
from tests.integration.test_scan_trivy import GatewayDistribution

pytestmark = pytest.mark.integration

PASSWORD = "correct horse battery staple"
SPEC = SampleSpec(
    repositories=1, tags_per_repository=1, base_layer_bytes=2048, unique_layer_bytes=2048
)
BASE = f"{BASE_REPOSITORY}:1.0.0"
VULNERABLE = f"{VULNERABLE_REPOSITORY}:{VULNERABLE_TAG}"


@pytest.fixture(scope="module")
def sample() -> Sample:
    return build(SPEC)


def write_play(path: Path, tasks: list[dict[str, Any]]) -> Path:
    path.write_text(yaml.safe_dump([{"hosts": "localhost", "gather_facts": False, "tasks": tasks}]))
    return path


def lock_naming(path: Path, digest: str) -> Path:
    """A lock whose only entry is the DB artifact at ``digest`` (what db update reads)."""
    entry = {"destination": TRIVY_DB_REPOSITORY, "tag": TRIVY_DB_TAG, "digest": digest}
    path.write_text(json.dumps({"version": 1, "entries": [entry]}))
    return path


def scanning_config(directory: Path, backend, lock: Path, **changes: Any) -> dict[str, Any]:
    return {
        "version": 1,
        "backend": backend.url,
        "state": str(directory / "state.db"),
        "scanning": {
            "trivy": str(TRIVY),
            "cache_dir": str(directory / "trivy"),
            "db": {"lock": str(lock), "max_age": "7d"},
            "workers": 2,
            "attest": False,
            "policy": {"default": {"fail_on": "HIGH"}},
            **changes,
        },
    }


def airgap(*args: str) -> dict[str, Any]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert airgap_main(list(args)) == 0, args
    return dict(json.loads(out.getvalue()))


def test_scan_db_update_now_status(distribution_factory, sample, tmp_path) -> None:
    if not os.access(TRIVY, os.X_OK):
        pytest.fail(f"{TRIVY} is missing: scripts/bootstrap installs trivy into .venv")
    backend = distribution_factory()
    with RegistryClient(backend.url) as client:
        push(sample, client)
        db_head = client.head_manifest(TRIVY_DB_REPOSITORY, TRIVY_DB_TAG)
    assert db_head is not None
    lock = lock_naming(tmp_path / "relay.lock", db_head.digest)
    config = tmp_path / "provenance.yaml"
    config.write_text(yaml.safe_dump(scanning_config(tmp_path, backend, lock)))
    # The same host, where the DB counts as too old after one second.
    strict = tmp_path / "strict.yaml"
    strict.write_text(
        yaml.safe_dump(
            scanning_config(tmp_path, backend, lock, db={"lock": str(lock), "max_age": "1s"})
        )
    )
    other = lock_naming(tmp_path / "other.lock", "sha256:" + "0" * 64)
    moved = tmp_path / "moved.yaml"
    moved.write_text(yaml.safe_dump(scanning_config(tmp_path, backend, other)))
    vulnerable = sample.expected()[VULNERABLE]["digest"]
    base = sample.expected()[BASE]["digest"]

    common = {"config": str(config)}
    now = {**common, "action": "now", "references": [VULNERABLE, BASE]}
    tasks: list[dict[str, Any]] = [
        {"name": "status before any scan", "airgap_scan": common, "ignore_errors": True},
        {
            "name": "now without a DB",
            "airgap_scan": {**now, "references": [VULNERABLE]},
            "ignore_errors": True,
        },
        *three_times("db update", "airgap_scan", {**common, "action": "db_update"}),
        *three_times("now", "airgap_scan", now),
        {"name": "now: check again", "airgap_scan": now, "check_mode": True},
        *three_times("now all", "airgap_scan", {**common, "action": "now", "all": True}),
        {"name": "status", "airgap_scan": common},
        {
            "name": "status vulnerable",
            "airgap_scan": {**common, "repository": VULNERABLE_REPOSITORY},
        },
        {"name": "status digest", "airgap_scan": {**common, "digest": base}},
        {
            "name": "status unknown digest",
            "airgap_scan": {**common, "digest": "sha256:" + "1" * 64},
            "ignore_errors": True,
        },
        {"name": "status stale", "airgap_scan": {"config": str(strict)}},
        {
            "name": "now forced: check",
            "airgap_scan": {**now, "references": [VULNERABLE], "force": True},
            "check_mode": True,
        },
        {"name": "now forced", "airgap_scan": {**now, "references": [VULNERABLE], "force": True}},
        {"name": "status forced digest", "airgap_scan": {**common, "digest": vulnerable}},
        {
            "name": "now not in the backend",
            "airgap_scan": {**now, "references": ["sample/absent:1"]},
            "ignore_errors": True,
        },
        {
            "name": "db update refused: check",
            "airgap_scan": {"config": str(moved), "action": "db_update"},
            "check_mode": True,
            "ignore_errors": True,
        },
        {
            "name": "db update refused",
            "airgap_scan": {"config": str(moved), "action": "db_update"},
            "ignore_errors": True,
        },
        {
            "name": "now with references and all",
            "airgap_scan": {**now, "all": True},
            "ignore_errors": True,
        },
        {
            "name": "status vulnerable at the end",
            "airgap_scan": {**common, "repository": VULNERABLE_REPOSITORY},
        },
    ]
    may_fail = [task["name"] for task in tasks if task.get("ignore_errors")]
    results = run_playbook_allowing(write_play(tmp_path / "scan.yml", tasks), *may_fail)
    changed = {name: result.get("changed") for name, result in results.items()}

    assert "none yet (no scan was recorded)" in results["status before any scan"]["msg"]
    assert results["status before any scan"]["msg"].startswith(f"scan status ({config}): ")
    without = results["now without a DB"]
    assert without["msg"].startswith("1 of 1 digests could not be scanned: ")
    assert f"{VULNERABLE_REPOSITORY}@{vulnerable}: " in without["msg"]
    assert "no vulnerability DB installed" in without["msg"], without["msg"]

    for step in ("db update", "now"):
        assert (changed[f"{step}: check"], changed[f"{step}: apply"]) == (True, True), step
        assert changed[f"{step}: again"] is False, f"{step} is not idempotent"
    check = results["db update: check"]
    assert check["report"]["digest"] == db_head.digest and check["report"]["previous"] is None
    assert check["diff"] == {"before": "(no DB installed)\n", "after": f"{db_head.digest}\n"}
    applied = results["db update: apply"]
    assert applied["report"]["current"]["digest"] == db_head.digest
    assert applied["report"]["stale"] is False and 0 <= applied["db_age_seconds"] < 86400 + 60
    assert f"UpdatedAt {applied['report']['current']['updated_at']}" in applied["diff"]["after"]

    check = results["now: check"]
    assert check["report"]["would_scan"] == [
        f"{VULNERABLE_REPOSITORY}@{vulnerable}",
        f"{BASE_REPOSITORY}@{base}",
    ]
    assert f"{VULNERABLE_REPOSITORY}@{vulnerable} (absent)" in check["diff"]["before"]
    applied = results["now: apply"]["report"]
    statuses = {r["repository"]: (r["status"], r["failing"]) for r in applied["results"]}
    assert statuses == {
        VULNERABLE_REPOSITORY: ("fail", [FIXTURE_VULNERABILITY_ID]),
        BASE_REPOSITORY: ("pass", []),
    }
    assert (applied["scanned"], applied["failed"], applied["current"]) == (2, 1, 0)
    assert sum(r["scans"] for r in applied["results"]) >= 2
    assert f"{VULNERABLE_REPOSITORY}@{vulnerable} fail" in results["now: apply"]["diff"]["after"]
    # Check mode tells as the job decides: nothing to scan once verdicts stand (the index's
    # children's included).
    assert results["now: check again"]["changed"] is False
    assert results["now: check again"]["report"]["would_scan"] == []
    again = results["now: again"]["report"]
    assert (again["scanned"], again["current"]) == (0, 2)
    assert all(r["scans"] == 0 for r in again["results"])

    # all: what the backend serves beyond the two (the DB artifact: not an image, skipped).
    everything = results["now all: check"]["report"]
    assert f"{TRIVY_DB_REPOSITORY}@{db_head.digest}" in everything["would_scan"]
    assert f"{BASE_REPOSITORY}@{base}" in everything["current"]
    assert changed["now all: apply"] is True and changed["now all: again"] is False
    skipped = {r["repository"]: r["status"] for r in results["now all: apply"]["report"]["results"]}
    assert skipped[TRIVY_DB_REPOSITORY] == "skipped"

    status = results["status vulnerable"]
    assert status["changed"] is False
    (verdict,) = [v for v in status["report"]["verdicts"] if v["digest"] == vulnerable]
    assert (verdict["status"], verdict["stale"]) == ("fail", None)
    assert verdict["counts"]["CRITICAL"] >= 1
    assert verdict["failing"] == [FIXTURE_VULNERABILITY_ID] and "findings" not in verdict
    assert status["report"]["db"]["digest"] == db_head.digest
    assert status["report"]["db"]["stale"] is False
    # The module reads verdicts as the CLI does: the same report.
    cli = airgap("scan", "status", "--config", str(config), "--repository", VULNERABLE_REPOSITORY)
    assert results["status vulnerable at the end"]["report"] == cli
    assert results["status"]["report"]["totals"]["fail"] >= 1
    assert "fail" in results["status"]["summary"] and "DB " in results["status"]["summary"]
    per_digest = results["status digest"]["report"]["verdicts"]
    assert [(v["repository"], v["digest"], v["status"]) for v in per_digest] == [
        (BASE_REPOSITORY, base, "pass")
    ]
    assert per_digest[0]["findings"] == []  # one digest: its findings (none), shown
    (forced,) = results["status forced digest"]["report"]["verdicts"]
    assert FIXTURE_VULNERABILITY_ID in {f["id"] for f in forced["findings"]}
    assert forced["status"] == "fail"
    cli = airgap("scan", "status", "--config", str(config), vulnerable)
    assert results["status forced digest"]["report"] == cli
    assert "no verdict" in results["status unknown digest"]["msg"]

    stale = results["status stale"]["report"]
    assert stale["db"]["stale"] is True
    assert {v["status"] for v in stale["verdicts"] if v["status"] != "skipped"} == {"stale"}

    assert results["now forced: check"]["changed"] is True
    assert results["now forced: check"]["report"]["would_scan"] == [
        f"{VULNERABLE_REPOSITORY}@{vulnerable}"
    ]
    forced = results["now forced"]
    assert forced["changed"] is True and forced["report"]["scanned"] == 1
    assert "sample/absent:1: not in the backend" in results["now not in the backend"]["msg"]
    for step in ("db update refused: check", "db update refused"):
        refused = results[step]["msg"]
        assert f"the lock {other} says sha256:{'0' * 64}" in refused, refused
    assert "not both" in results["now with references and all"]["msg"]


def signing_config(directory: Path, gateway, pki) -> Path:
    (directory / "password").write_text(PASSWORD + "\n")
    os.chmod(directory / "password", 0o600)
    path = directory / "provenance.yaml"
    document = {
        "version": 1,
        "backend": "http://127.0.0.1:5000",
        "signing": {
            "registry": gateway.address,
            "ca_file": str(pki.ca_file),
            "cert_file": str(pki.client_cert),
            "key_file": str(pki.client_key),
            "keys_dir": "keys",
            "password_file": "password",
            "repositories": ["ci/"],
        },
    }
    path.write_text(yaml.safe_dump(document))
    return path


def published(sample: Sample, tag: str) -> list[str]:
    """The digests ``sample/base:TAG`` publishes: the index, then its children."""
    entry = sample.expected()[f"{BASE_REPOSITORY}:{tag}"]
    return [entry["digest"], *entry["platforms"].values()]


def publishing_lock(path: Path, gateway, pki, repository: str, *tags: str) -> Path:
    """A lock whose entries are ``repository:TAG`` as the gateway serves them, indexes with
    every child copied (as the mirror's preserve-index locks them)."""
    entries = []
    with RegistryClient(
        gateway.url, ca_file=pki.ca_file, cert_file=pki.client_cert, key_file=pki.client_key
    ) as client:
        for tag in tags:
            body, media_type, digest = client.get_manifest(repository, tag)
            children = tuple(
                Child(item["digest"], item["mediaType"], item["size"], copy=True, selected=True)
                for item in json.loads(body).get("manifests", [])
            )
            manifest = Manifest(digest, media_type, len(body))
            entries.append(LockEntry("image", repository, tag, manifest, digest, children=children))
    path.write_text(Lock(tuple(entries)).to_json())
    return path


def test_signing_keys_sign_verify_rotate_retire(
    distribution_factory, pki, sample, tmp_path
) -> None:
    gateway = distribution_factory(tls=pki)
    with RegistryClient(
        gateway.url, ca_file=pki.ca_file, cert_file=pki.client_cert, key_file=pki.client_key
    ) as client:
        push(sample, client)
    config = signing_config(tmp_path, gateway, pki)
    base = sample.expected()[BASE]
    children = len(base["platforms"])
    common = {"config": str(config), "cosign": str(COSIGN)}
    verify = {**common, "reference": BASE}
    sign = {**common, "action": "sign", "references": [BASE]}
    lock = publishing_lock(tmp_path / "relay.lock", gateway, pki, BASE_REPOSITORY, "1.0.0", "1.1.0")
    tasks: list[dict[str, Any]] = [
        {"name": "list before", "airgap_signing_key": common},
        {"name": "sign without a key", "airgap_signature": sign, "ignore_errors": True},
        {"name": "verify without a key", "airgap_signature": verify, "ignore_errors": True},
        *three_times("init", "airgap_signing_key", {**common, "action": "init"}),
        {"name": "verify unsigned", "airgap_signature": verify, "ignore_errors": True},
        *three_times("sign", "airgap_signature", sign),
        {"name": "verify", "airgap_signature": verify},
        {
            "name": "rotate: check",
            "airgap_signing_key": {**common, "action": "rotate", "overlap": "30d"},
            "check_mode": True,
        },
        {
            "name": "rotate",
            "airgap_signing_key": {**common, "action": "rotate", "overlap": "30d"},
        },
        {
            "name": "rotate with a bad overlap",
            "airgap_signing_key": {**common, "action": "rotate", "overlap": "a month"},
            "ignore_errors": True,
        },
        *three_times("sign after rotation", "airgap_signature", sign),
        {"name": "verify during the overlap", "airgap_signature": verify},
        {"name": "retire: too early", "airgap_signing_key": {**common, "action": "retire"}},
        *three_times(
            "retire now", "airgap_signing_key", {**common, "action": "retire", "now": True}
        ),
        {"name": "verify after retirement", "airgap_signature": verify},
        {"name": "list", "airgap_signing_key": common},
        {
            "name": "sign with another cosign",
            "airgap_signature": {
                **sign,
                "references": [f"{BASE_REPOSITORY}:1.1.0"],
                "cosign": str(tmp_path / "no-cosign"),
            },
            "ignore_errors": True,
        },
        *three_times(
            "sign the lock", "airgap_signature", {**common, "action": "sign", "lock": str(lock)}
        ),
    ]
    may_fail = [task["name"] for task in tasks if task.get("ignore_errors")]
    results = run_playbook_allowing(write_play(tmp_path / "signing.yml", tasks), *may_fail)
    changed = {name: result.get("changed") for name, result in results.items()}

    assert results["list before"]["report"]["keys"] == [] and changed["list before"] is False
    assert "no active signing key" in results["sign without a key"]["msg"]
    assert "no active signing key" in results["verify without a key"]["msg"]
    for step in ("init", "sign", "sign after rotation", "retire now", "sign the lock"):
        assert (changed[f"{step}: check"], changed[f"{step}: apply"]) == (True, True), step
        assert changed[f"{step}: again"] is False, f"{step} is not idempotent"
    first = results["init: apply"]["report"]["active"]
    assert results["init: check"]["diff"]["after"] == "(new key) active -\n"
    assert results["init: again"]["report"]["active"] == first

    unsigned = results["verify unsigned"]
    assert unsigned["failed"] and unsigned["verified"] == {BASE: []}
    assert (
        f"{gateway.address}/{BASE}: no published key verifies it (key {first}: " in unsigned["msg"]
    )

    assert len(results["sign: check"]["report"]["would_sign"]) == 1 + children
    assert results["sign: check"]["report"]["signed"] == []
    assert (
        results["sign: apply"]["report"]["signed"],
        results["sign: again"]["report"]["skipped"],
    ) == (
        1 + children,
        1 + children,
    )
    assert results["sign: again"]["report"]["tools"]["cosign"] == 0
    assert results["verify"]["verified"] == {BASE: [first]} and changed["verify"] is False

    rotate_check = results["rotate: check"]
    assert rotate_check["changed"] and rotate_check["report"]["rotated"] == {
        "from": first,
        "to": None,
    }
    second = results["rotate"]["report"]["rotated"]["to"]
    assert results["rotate"]["report"]["rotated"]["from"] == first and second != first
    # The check made no key: the rotation's ring holds the first key and one new key.
    assert [k["id"] for k in results["rotate"]["report"]["keys"]] == [first, second]
    assert f"{first} verifying" in results["rotate"]["diff"]["after"]
    assert "'a month' is not a duration" in results["rotate with a bad overlap"]["msg"]

    assert results["sign after rotation: check"]["report"]["key"] == second
    assert results["sign after rotation: apply"]["report"]["signed"] == 1 + children
    assert sorted(results["verify during the overlap"]["verified"][BASE]) == sorted([first, second])

    assert (changed["retire: too early"], results["retire: too early"]["report"]["retired"]) == (
        False,
        [],
    )
    assert results["retire now: check"]["report"]["retired"] == [first]
    assert results["retire now: apply"]["report"]["retired"] == [first]
    assert results["verify after retirement"]["verified"] == {BASE: [second]}
    listed = results["list"]["report"]
    assert [(k["id"], k["state"]) for k in listed["keys"]] == [
        (first, "retired"),
        (second, "active"),
    ]
    assert [item["id"] for item in listed["published"]] == [second]
    assert listed["published"][0]["pem"].startswith("-----BEGIN PUBLIC KEY-----")
    failed = results["sign with another cosign"]
    assert failed["msg"].startswith(
        f"{1 + children} of {1 + children} digests could not be signed: "
    )
    assert (
        str(tmp_path / "no-cosign") in failed["msg"] and failed["report"]["failed"] == 1 + children
    )
    # The lock publishes base:1.0.0 and 1.1.0 with their children: 1.0.0's are signed by the
    # active key already, 1.1.0's are not.
    assert sorted(results["sign the lock: check"]["report"]["would_sign"]) == sorted(
        f"{BASE_REPOSITORY}@{digest}" for digest in published(sample, "1.1.0")
    )
    assert results["sign the lock: apply"]["report"]["skipped"] == 1 + children
    ring = keys.load(load_signing(config).keys_dir)
    assert ring.active.id == second
    # No password in what the modules returned.
    assert PASSWORD not in json.dumps(results)


def test_scan_now_attests_and_signs_a_ci_push(distribution_factory, pki, sample, tmp_path) -> None:
    """With a signing section and attest: true, airgap_scan now attests the verdict and
    signs a digest pushed into a CI repository, with the key airgap_signing_key made, through
    a gateway over the backend's storage (as on the host); airgap_signature then verifies it
    with that key."""
    backend = distribution_factory()
    with RegistryClient(backend.url) as client:
        push(sample, client)
        db_head = client.head_manifest(TRIVY_DB_REPOSITORY, TRIVY_DB_TAG)
    assert db_head is not None
    skopeo_copy(f"{backend.address}/{VULNERABLE}", f"{backend.address}/ci/vulnerable:1")
    gateway = GatewayDistribution(tmp_path / "gateway", _free_port(), pki, shared=backend.storage)
    gateway.root.mkdir()
    gateway.start()
    try:
        lock = lock_naming(tmp_path / "relay.lock", db_head.digest)
        signing = yaml.safe_load(signing_config(tmp_path, gateway, pki).read_text())["signing"]
        document = {**scanning_config(tmp_path, backend, lock, attest=True), "signing": signing}
        config = tmp_path / "provenance.yaml"
        config.write_text(yaml.safe_dump(document))
        common = {"config": str(config), "cosign": str(COSIGN)}
        tasks: list[dict[str, Any]] = [
            {"name": "key", "airgap_signing_key": {**common, "action": "init"}},
            {"name": "db", "airgap_scan": {**common, "action": "db_update"}},
            *three_times(
                "now", "airgap_scan", {**common, "action": "now", "references": ["ci/vulnerable:1"]}
            ),
            {
                "name": "now with another cosign",
                "airgap_scan": {
                    **common,
                    "cosign": str(tmp_path / "no-cosign"),
                    "action": "now",
                    "references": ["ci/vulnerable:1"],
                    "force": True,
                },
                "ignore_errors": True,
            },
            {"name": "verify", "airgap_signature": {**common, "reference": "ci/vulnerable:1"}},
            {
                "name": "sign",
                "airgap_signature": {**common, "action": "sign", "reference": "ci/vulnerable:1"},
            },
        ]
        results = run_playbook_allowing(
            write_play(tmp_path / "ci.yml", tasks), "now with another cosign"
        )
    finally:
        gateway.stop()
    changed = {name: result.get("changed") for name, result in results.items()}
    assert (changed["now: check"], changed["now: apply"], changed["now: again"]) == (
        True,
        True,
        False,
    )
    (scanned,) = results["now: apply"]["report"]["results"]
    assert (scanned["repository"], scanned["status"]) == ("ci/vulnerable", "fail")
    assert scanned["failing"] == [FIXTURE_VULNERABILITY_ID]
    assert scanned["attested"] >= 1 and scanned["signed"] is True
    # The cosign named is the one run (the attestation fails without it).
    assert str(tmp_path / "no-cosign") in results["now with another cosign"]["msg"]
    key = results["key"]["report"]["active"]
    assert results["verify"]["verified"] == {"ci/vulnerable:1": [key]}
    # The scan signed it already: nothing left to sign.
    assert changed["sign"] is False and results["sign"]["report"]["signed"] == 0


def test_without_the_engine_the_modules_say_what_is_missing(tmp_path) -> None:
    """Run under a Python without the engine (the system's), each module fails naming it."""
    python = Path("/usr/bin/python3")
    probe = subprocess.run(
        [str(python), "-c", "import airgapped_registry"], capture_output=True, check=False
    )
    assert probe.returncode != 0, f"{python} has the engine; this test needs one without"
    modules = ("airgap_scan", "airgap_signature", "airgap_signing_key")
    tasks: list[dict[str, Any]] = [
        {
            "name": module,
            module: {"config": str(tmp_path / "provenance.yaml"), "reference": "a/b:1"}
            if module == "airgap_signature"
            else {"config": str(tmp_path / "provenance.yaml")},
            "ignore_errors": True,
        }
        for module in modules
    ]
    path = write_play(tmp_path / "missing.yml", tasks)
    results = run_playbook_allowing(path, *modules, interpreter=str(python))
    for module in modules:
        message = results[module]["msg"]
        assert results[module]["failed"], module
        assert "Failed to import the required Python library" in message, message
        assert "airgapped_registry (the project's engine)" in message, message
    assert sys.executable != str(python)
