"""The scan commands and service with real Trivy and the lab's fixture DB: a real Distribution
holding the sample (its DB artifact included) and notifying ``airgap scan serve``, images
pushed by skopeo, verdicts by policy, the reconciliation with the service stopped."""

from __future__ import annotations

import base64
import contextlib
import http.client
import io
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
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
from airgapped_registry.cli import main
from airgapped_registry.transport.registry import RegistryClient
from tests.integration.conftest import Distribution, DistributionFactory, _free_port
from tests.integration.scan_service import NotifyingDistribution, skopeo_copy, wait_for_verdict

pytestmark = pytest.mark.integration

PROJECT = Path(__file__).resolve().parents[2]
SPEC = SampleSpec(
    repositories=1, tags_per_repository=1, base_layer_bytes=2048, unique_layer_bytes=2048
)


@pytest.fixture(scope="module")
def sample() -> Sample:
    return build(SPEC)


@pytest.fixture
def site(tmp_path: Path, sample: Sample) -> Iterator[dict[str, Any]]:
    """A backend Distribution with the sample, notifying 127.0.0.1:<port>/events; a lock
    naming its DB artifact; provenance.yaml for it; the DB installed."""
    if not os.access(TRIVY, os.X_OK):
        pytest.fail(f"{TRIVY} is missing: scripts/bootstrap installs trivy into .venv")
    port = _free_port()
    backend = NotifyingDistribution(
        tmp_path / "backend", _free_port(), endpoint=f"http://127.0.0.1:{port}/events"
    )
    backend.root.mkdir()
    backend.start()
    client = RegistryClient(backend.url)
    push(sample, client)
    db = client.head_manifest(TRIVY_DB_REPOSITORY, TRIVY_DB_TAG)
    assert db is not None
    lock = tmp_path / "relay.lock"
    lock.write_text(
        json.dumps(
            {
                "version": 1,
                "entries": [
                    {"destination": TRIVY_DB_REPOSITORY, "tag": TRIVY_DB_TAG, "digest": db.digest}
                ],
            }
        )
    )
    config = tmp_path / "provenance.yaml"
    document = {
        "version": 1,
        "backend": backend.url,
        "state": str(tmp_path / "state.db"),
        "scanning": {
            "trivy": str(TRIVY),
            "cache_dir": str(tmp_path / "trivy"),
            "db": {"lock": str(lock), "max_age": "7d"},
            "listen": f"127.0.0.1:{port}",
            "workers": 2,
            "reconcile_interval": "1h",
            "attest": False,
            "policy": {"default": {"fail_on": "HIGH"}},
        },
    }
    config.write_text(yaml.safe_dump(document))
    assert airgap("scan", "db", "update", "--config", str(config))["changed"] is True
    yield {"backend": backend, "config": config, "document": document, "port": port}
    backend.stop()


def airgap(*args: str, status: int = 0) -> dict[str, Any]:
    """Run ``airgap ARGS`` in this process; its JSON report."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(list(args)) == status, args
    return json.loads(out.getvalue()) if status == 0 else {}


def test_scan_now_fails_the_vulnerable_image_and_passes_the_others(site) -> None:
    config = str(site["config"])
    report = airgap(
        "scan",
        "now",
        "--config",
        config,
        f"{VULNERABLE_REPOSITORY}:{VULNERABLE_TAG}",
        f"{BASE_REPOSITORY}:1.0.0",
    )
    statuses = {r["repository"]: (r["status"], r["failing"]) for r in report["results"]}
    assert statuses == {
        VULNERABLE_REPOSITORY: ("fail", [FIXTURE_VULNERABILITY_ID]),
        BASE_REPOSITORY: ("pass", []),
    }
    status = airgap("scan", "status", "--config", config, "--repository", VULNERABLE_REPOSITORY)
    assert {v["status"] for v in status["verdicts"]} == {"fail"}
    assert all("findings" not in v for v in status["verdicts"])
    digest = report["results"][0]["digest"]
    (one,) = airgap("scan", "status", "--config", config, digest)["verdicts"]
    assert FIXTURE_VULNERABILITY_ID in {f["id"] for f in one["findings"]}
    assert status["db"]["stale"] is False
    # The allow-list lets it pass, until its expiry day.
    document = dict(site["document"])
    document["scanning"] = {
        **document["scanning"],
        "policy": {
            "default": {"fail_on": "HIGH"},
            "allow": [
                {
                    "id": FIXTURE_VULNERABILITY_ID,
                    "reason": "fixture",
                    "expires": "2999-12-31",
                    "prefix": "sample/",
                }
            ],
        },
    }
    site["config"].write_text(yaml.safe_dump(document))
    again = airgap("scan", "now", "--config", config, f"{VULNERABLE_REPOSITORY}:{VULNERABLE_TAG}")
    assert [r["status"] for r in again["results"]] == ["pass"]
    # A DB older than max_age (its UpdatedAt is the start of today) makes every verdict stale.
    document["scanning"]["db"] = {**document["scanning"]["db"], "max_age": "1s"}
    site["config"].write_text(yaml.safe_dump(document))
    stale = airgap("scan", "status", "--config", config)
    assert stale["db"]["stale"] is True
    assert set(stale["totals"]) == {"stale"}
    assert all("more than max_age 1s" in v["stale"] for v in stale["verdicts"])


def test_the_service_scans_a_push_and_the_reconciliation_one_it_missed(
    site, sample, distribution_factory: DistributionFactory, tmp_path, capsys
) -> None:
    config = str(site["config"])
    backend = site["backend"]
    source = distribution_factory()
    push(sample, RegistryClient(source.url))
    vulnerable = sample.expected()[f"{VULNERABLE_REPOSITORY}:{VULNERABLE_TAG}"]["digest"]
    base = sample.expected()[f"{BASE_REPOSITORY}:1.0.0"]["digest"]

    service = start_service(config, tmp_path / "serve.log")
    try:
        wait_healthy(site["port"])
        latencies = []
        for number in range(3):
            started = time.monotonic()
            skopeo_copy(
                f"{source.address}/{VULNERABLE_REPOSITORY}:{VULNERABLE_TAG}",
                f"{backend.address}/ci/vulnerable-{number}:1",
            )
            verdict = wait_for_verdict(
                Path(site["document"]["state"]), f"ci/vulnerable-{number}", vulnerable
            )
            latencies.append(time.monotonic() - started)
            assert verdict.status == "fail"
            assert FIXTURE_VULNERABILITY_ID in {f["id"] for f in verdict.findings}
    finally:
        service.send_signal(signal.SIGTERM)
        output, _ = service.communicate(timeout=60)
    assert service.returncode == 0, (tmp_path / "serve.log").read_text()
    assert json.loads(output)["stopped"] == "SIGTERM"

    # The service is down: a push is not noticed, until a reconciliation.
    skopeo_copy(f"{source.address}/{BASE_REPOSITORY}:1.0.0", f"{backend.address}/ci/missed:1")
    found = airgap("scan", "reconcile", "--config", config)
    assert found["queue"] >= 1
    missed = airgap("scan", "status", "--config", config, "--repository", "ci/missed")
    assert missed["verdicts"] == []
    service = start_service(config, tmp_path / "serve2.log")
    try:
        verdict = wait_for_verdict(Path(site["document"]["state"]), "ci/missed", base)
        assert verdict.status == "pass"
    finally:
        service.send_signal(signal.SIGTERM)
        service.communicate(timeout=60)
    idle = airgap("scan", "reconcile", "--config", config)
    with capsys.disabled():
        print(
            f"\ntrivy: push->verdict (skopeo copy included) median "
            f"{statistics.median(latencies):.2f} s, max {max(latencies):.2f} s over "
            f"{len(latencies)}; reconciliation at {idle['digests']} digests: "
            f"{idle['requests']['total']} requests, {idle['seconds']:.3f} s, "
            f"queued {idle['queued'] + idle['requeued']}"
        )


def start_service(config: str, log: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "airgapped_registry.cli",
            "scan",
            "serve",
            "--config",
            config,
            "--cosign",
            str(COSIGN),
        ],
        stdout=subprocess.PIPE,
        stderr=log.open("w"),
        text=True,
        env={**os.environ, "PYTHONPATH": str(PROJECT / "src")},
    )


def wait_healthy(port: int, timeout: float = 30.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            connection.request("GET", "/healthz")
            answer = connection.getresponse()
            if answer.status == 200:
                return dict(json.loads(answer.read()))
        except OSError:
            pass
        time.sleep(0.1)
    pytest.fail(f"the scan service did not answer on 127.0.0.1:{port} within {timeout} s")


@dataclass
class GatewayDistribution(Distribution):
    """Distribution with TLS and client certificates over another one's storage: the
    appliance's gateway in front of the backend the scanner reads (as on the host)."""

    shared: Path = Path()

    @property
    def storage(self) -> Path:
        return self.shared


def test_a_push_into_a_ci_repository_is_scanned_attested_and_signed(
    site, sample, distribution_factory: DistributionFactory, pki, tmp_path
) -> None:
    backend = site["backend"]
    gateway = GatewayDistribution(tmp_path / "gateway", _free_port(), pki, shared=backend.storage)
    gateway.root.mkdir()
    gateway.start()
    try:
        config = signing_site(site, gateway, pki, tmp_path)
        source = distribution_factory()
        push(sample, RegistryClient(source.url))
        entry = sample.expected()[f"{VULNERABLE_REPOSITORY}:{VULNERABLE_TAG}"]
        service = start_service(config, tmp_path / "serve.log")
        try:
            wait_healthy(site["port"])
            skopeo_copy(
                f"{source.address}/{VULNERABLE_REPOSITORY}:{VULNERABLE_TAG}",
                f"{backend.address}/ci/vulnerable:1",
            )
            verdict = wait_for_verdict(
                Path(site["document"]["state"]), "ci/vulnerable", entry["digest"], timeout=120
            )
        finally:
            service.send_signal(signal.SIGTERM)
            service.communicate(timeout=60)
        assert verdict.status == "fail", (tmp_path / "serve.log").read_text()
        public = next((tmp_path / "keys").glob("cosign-*.pub"))
        for digest in [entry["digest"], *entry["platforms"].values()]:
            reference = f"{gateway.address}/ci/vulnerable@{digest}"
            checked = cosign(
                pki, "verify", "--key", str(public), "--insecure-ignore-tlog", reference
            )
            assert checked.returncode == 0, checked.stderr
        (statement,) = vuln_statements(pki, public, f"{gateway.address}/ci/vulnerable:1")
        found = {
            vulnerability["VulnerabilityID"]
            for result in statement["predicate"]["scanner"]["result"]["Results"]
            for vulnerability in result.get("Vulnerabilities") or []
        }
        assert FIXTURE_VULNERABILITY_ID in found
        # Scanned again (a new DB would do the same): the new attestation replaces the old.
        airgap("scan", "now", "--config", config, "--cosign", str(COSIGN), "ci/vulnerable:1")
        (latest,) = vuln_statements(pki, public, f"{gateway.address}/ci/vulnerable:1")
        finished = "scanFinishedOn"
        assert (
            latest["predicate"]["metadata"][finished] > statement["predicate"]["metadata"][finished]
        )
    finally:
        gateway.stop()


def signing_site(site: dict[str, Any], gateway: Distribution, pki: Any, tmp_path: Path) -> str:
    """The site's provenance file with a signing section for ``gateway``, keys made."""
    (tmp_path / "password").write_text("correct horse\n")
    os.chmod(tmp_path / "password", 0o600)
    document = dict(site["document"])
    document["scanning"] = {**document["scanning"], "attest": True}
    document["signing"] = {
        "registry": gateway.address,
        "ca_file": str(pki.ca_file),
        "cert_file": str(pki.client_cert),
        "key_file": str(pki.client_key),
        "keys_dir": str(tmp_path / "keys"),
        "password_file": str(tmp_path / "password"),
        "repositories": ["ci/"],
    }
    site["config"].write_text(yaml.safe_dump(document))
    config = str(site["config"])
    airgap("signing-key", "init", "--config", config, "--cosign", str(COSIGN))
    return config


def vuln_statements(pki: Any, public: Path, reference: str) -> list[dict[str, Any]]:
    """The in-toto statements ``cosign verify-attestation --type vuln`` verifies with
    ``public`` on ``reference`` (it must verify)."""
    checked = cosign(
        pki, "verify-attestation", "--type", "vuln", "--key", str(public),
        "--insecure-ignore-tlog", reference,
    )  # fmt: skip
    assert checked.returncode == 0, checked.stderr
    return [
        json.loads(base64.b64decode(json.loads(line)["payload"]))
        for line in checked.stdout.splitlines()
    ]


def cosign(pki: Any, *args: str) -> subprocess.CompletedProcess[str]:
    tls = [
        "--registry-cacert",
        str(pki.ca_file),
        "--registry-client-cert",
        str(pki.client_cert),
        "--registry-client-key",
        str(pki.client_key),
    ]
    return subprocess.run(
        [str(COSIGN), *args, *tls], capture_output=True, text=True, timeout=60, check=False
    )
