"""The gate fails closed: an error while deciding, or an audit record that cannot be written,
is a denial; what the audit log gets for each decision."""

from __future__ import annotations

import json
import socket
from datetime import timedelta
from pathlib import Path

import pytest

from airgapped_registry.audit import AuditError
from airgapped_registry.gate.admission import Admission, Settings
from airgapped_registry.gate.decide import Gate
from airgapped_registry.gate.policy import loads_policy
from airgapped_registry.gate.setup import audit_event

POLICY = loads_policy(
    "version: 1\nlanding_zones: [ci/]\n"
    "grants: [{identity: {ou: puller}, role: puller}, {identity: {ou: admin}, role: admin}]\n"
)


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def admission(tmp_path: Path) -> Admission:
    """Admission against a backend that refuses every connection."""
    settings = Settings(
        backend=f"http://127.0.0.1:{closed_port()}",
        state=tmp_path / "state.db",
        keys_dir=tmp_path / "keys",
        registry="registry:443",
        cache_dir=tmp_path / "trivy",
        max_age=timedelta(days=7),
    )
    return Admission(settings)


class Sink:
    def __init__(self, fail: bool = False) -> None:
        self.events: list = []
        self.fail = fail

    def append(self, event: object) -> None:
        if self.fail:
            raise AuditError("audit.log: No space left on device")
        self.events.append(event)


def headers(method: str, uri: str, subject: str = "CN=node,OU=puller") -> dict[str, str]:
    return {
        "X-Original-Method": method,
        "X-Original-URI": uri,
        "X-SSL-Client-Verify": "SUCCESS",
        "X-SSL-Client-S-DN": subject,
        "X-Real-IP": "10.0.0.5",
        "X-Request-ID": "r1",
    }


def test_an_error_while_deciding_is_a_denial(admission: Admission) -> None:
    sink = Sink()
    decision = Gate(POLICY, admission, sink, audit_event).decide(
        headers("GET", "/v2/prod/app/manifests/1.0")
    )
    assert (decision.status, decision.reason) == (403, "gate_error")
    error = json.loads(decision.headers()["X-Airgap-Error"])["errors"][0]
    assert error["code"] == "UNAVAILABLE"
    (event,) = sink.events
    assert (event.decision, event.action, event.client) == ("deny", "pull", "10.0.0.5")


def test_a_record_that_cannot_be_written_refuses_the_request(admission: Admission) -> None:
    gate = Gate(POLICY, admission, Sink(fail=True), audit_event)
    digest = "sha256:" + "c" * 64
    # An admin's delete needs no backend: allowed, but only if it is on record.
    decision = gate.decide(headers("DELETE", f"/v2/prod/app/manifests/{digest}", "CN=a,OU=admin"))
    assert (decision.status, decision.reason) == (403, "audit_unavailable")
    assert "No space left on device" in decision.message
    # What is not recorded (an allowed HEAD of a blob) does not need the log.
    blob = gate.decide(headers("HEAD", f"/v2/prod/app/blobs/{digest}"))
    assert blob.allowed


def test_what_the_audit_log_gets(admission: Admission) -> None:
    sink = Sink()
    gate = Gate(POLICY, admission, sink, audit_event)
    digest = "sha256:" + "c" * 64
    gate.decide(headers("DELETE", f"/v2/prod/app/manifests/{digest}", "CN=a,OU=admin"))
    gate.decide(headers("GET", "/v2/_catalog"))
    gate.decide(headers("HEAD", f"/v2/ci/app/blobs/{digest}"))  # allowed, not recorded
    deleted, catalog = sink.events
    assert (deleted.action, deleted.digest, deleted.decision) == ("delete", digest, "allow")
    assert deleted.identity.subject == "CN=a,OU=admin"
    assert (catalog.action, catalog.decision) == ("catalog", "deny")
    assert catalog.reason == "no_role: CN=node,OU=puller may not catalog"


def test_no_verified_certificate_no_access(admission: Admission) -> None:
    gate = Gate(POLICY, admission, Sink(), audit_event)
    unverified = {**headers("GET", "/v2/"), "X-SSL-Client-Verify": "NONE"}
    assert gate.decide(unverified).reason == "no_role"
    assert gate.decide(headers("GET", "/v2/")).allowed
