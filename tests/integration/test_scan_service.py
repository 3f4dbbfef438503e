"""The scan service against a real Distribution that notifies it, with images pushed by
skopeo: push -> verdict, the reconciliation without notifications, and its cost when there is
nothing to do. The scanner here reads the backend and counts scans (``RecordingScanner``);
Trivy itself is in test_scan_trivy.py."""

from __future__ import annotations

import http.client
import json
import statistics
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from airgap_lab.sample import Sample, SampleSpec, build, push
from airgapped_registry.scanning.policy import Policy
from airgapped_registry.scanning.scanner import Finding
from airgapped_registry.scanning.verdict import DbInfo
from airgapped_registry.service.ports import ServiceSettings
from airgapped_registry.service.reconcile import reconcile
from airgapped_registry.service.server import ScanService
from airgapped_registry.service.worker import DigestJob
from airgapped_registry.state.store import StateStore
from airgapped_registry.state.verdicts import VerdictStore
from airgapped_registry.transport.registry import RegistryClient
from tests.integration.conftest import Distribution, DistributionFactory, _free_port
from tests.integration.scan_service import (
    NotifyingDistribution,
    RecordingScanner,
    eventually,
    skopeo_copy,
    wait_for_verdict,
)

pytestmark = pytest.mark.integration

SMALL = SampleSpec(
    repositories=3, tags_per_repository=1, base_layer_bytes=2048, unique_layer_bytes=2048
)
CRITICAL = Finding("CVE-2026-0001", "busybox", "1.36.1-r1", "1.36.1-r2", "CRITICAL", None)


@pytest.fixture(scope="module")
def sample() -> Sample:
    return build(SMALL)


@pytest.fixture(scope="module")
def source(distribution_factory: DistributionFactory, sample: Sample) -> Distribution:
    """A registry holding the sample, for skopeo to copy from."""
    registry = distribution_factory()
    push(sample, RegistryClient(registry.url))
    return registry


@pytest.fixture
def notifying(tmp_path: Path) -> Iterator[tuple[NotifyingDistribution, int]]:
    """A backend Distribution whose notifications go to 127.0.0.1:<port>/events."""
    port = _free_port()
    backend = NotifyingDistribution(
        tmp_path / "backend", _free_port(), endpoint=f"http://127.0.0.1:{port}/events"
    )
    backend.root.mkdir()
    backend.start()
    yield backend, port
    backend.stop()


def settings(tmp_path: Path, backend: Distribution, port: int = 0, **changes) -> ServiceSettings:
    values = {
        "backend": backend.url,
        "state": tmp_path / "state.db",
        "listen": ("127.0.0.1", port),
        "workers": 2,
        "reconcile_interval": 3600.0,
        "attest": False,
        "policy": Policy(),
        "backoff": 0.2,
        **changes,
    }
    return ServiceSettings(**values)


@pytest.fixture
def service(tmp_path, notifying) -> Iterator[tuple[ScanService, RecordingScanner, Distribution]]:
    backend, port = notifying
    client = RegistryClient(backend.url)
    scanner = RecordingScanner(client, findings={"ci/vulnerable": [CRITICAL]})
    running = ScanService(settings(tmp_path, backend, port), scanner, None, lambda: client)
    running.start()
    yield running, scanner, backend
    running.stop()


def index_of(sample: Sample, number: int) -> tuple[str, str, dict[str, str]]:
    reference = sorted(r for r in sample.expected() if r.startswith("sample/app-"))[number]
    entry = sample.expected()[reference]
    return reference, entry["digest"], entry["platforms"]


def test_a_skopeo_push_gets_a_verdict_for_the_index_and_each_child(service, source, sample) -> None:
    running, scanner, backend = service
    reference, digest, platforms = index_of(sample, 0)
    skopeo_copy(f"{source.address}/{reference}", f"{backend.address}/ci/app:1.0.0")
    index = wait_for_verdict(running.settings.state, "ci/app", digest)
    assert index.status == "pass"
    assert set(index.children) == set(platforms.values())
    with StateStore(running.settings.state) as store:
        children = {v.digest: v.status for v in VerdictStore(store).verdicts("ci/app")}
    assert children == {digest: "pass", **{child: "pass" for child in platforms.values()}}
    # The children pushed by digest before their index were scanned once, by the index's job.
    eventually(lambda: running.health()["queue"] == 0, "the queue empties")
    assert sorted(scanner.scans) == sorted(("ci/app", child) for child in platforms.values())


def test_a_failing_image_fails_and_the_health_endpoint_reports(service, source, sample) -> None:
    running, _, backend = service
    reference, digest, _ = index_of(sample, 1)
    skopeo_copy(f"{source.address}/{reference}", f"{backend.address}/ci/vulnerable:1")
    verdict = wait_for_verdict(running.settings.state, "ci/vulnerable", digest)
    assert verdict.status == "fail"
    assert verdict.counts["CRITICAL"] == len(verdict.children) == 2
    host, port = running.address
    connection = http.client.HTTPConnection(host, port, timeout=5)
    connection.request("GET", "/healthz")
    answer = connection.getresponse()
    health = json.loads(answer.read())
    assert answer.status == 200
    assert health["db"]["digest"] == "sha256:" + "d" * 64
    assert health["last_reconciliation"] is not None  # the pass at start


@pytest.mark.parametrize(
    ("body", "content_type", "status"),
    [
        (b"{not json", "application/vnd.docker.distribution.events.v1+json", 400),
        (b'{"events": 3}', "application/json", 400),
        (b'{"events": []}', "text/plain", 415),
        (b'{"events": [{"action": "push", "target": 5}]}', "application/json", 200),
    ],
)
def test_a_bad_request_is_answered_and_the_service_keeps_serving(
    service, body: bytes, content_type: str, status: int
) -> None:
    running, _, _ = service
    host, port = running.address
    for _ in range(2):
        connection = http.client.HTTPConnection(host, port, timeout=5)
        connection.request("POST", "/events", body=body, headers={"Content-Type": content_type})
        answer = connection.getresponse()
        assert answer.status == status, answer.read()
        assert "error" in json.loads(answer.read()) or status == 200


def test_without_the_service_the_reconciliation_finds_the_push(
    tmp_path, notifying, source, sample
) -> None:
    backend, _ = notifying  # nothing listens on its notification endpoint
    reference, digest, platforms = index_of(sample, 2)
    skopeo_copy(f"{source.address}/{reference}", f"{backend.address}/ci/missed:2")
    client = RegistryClient(backend.url)
    scanner = RecordingScanner(client)
    config = settings(tmp_path, backend)
    with StateStore(config.state) as store:
        verdicts = VerdictStore(store)
        found = reconcile(client, verdicts, scanner.current_db())
        assert (found.repositories, found.tags, found.digests) == (1, 1, 3)
        assert (found.queued, found.indexes_fetched) == (3, 1)
        job = DigestJob(config, scanner, None, client, verdicts)
        while (item := verdicts.claim()) is not None:
            job.run(item.repository, item.digest)
            verdicts.done(item)
        assert verdicts.verdict("ci/missed", digest) is not None
        assert len(scanner.scans) == len(platforms)
        # A second pass has nothing to do: no scan, no index fetched, 1 + 1 + 1 requests.
        again = reconcile(client, verdicts, scanner.current_db())
        assert (again.queued, again.requeued, again.current) == (0, 0, 3)
        assert again.requests == {"total": 3, "by_method": {"GET": 2, "HEAD": 1}}


def test_reconciliation_at_scale_and_push_latency_figures(
    tmp_path, distribution_factory, service, source, sample, capsys
) -> None:
    """Figures for the report: push -> verdict over a few pushes, and a reconciliation
    with nothing to do over every digest the backend serves."""
    running, scanner, backend = service
    latencies = []
    for number in range(3):
        reference, digest, _ = index_of(sample, number)
        started = time.monotonic()
        skopeo_copy(f"{source.address}/{reference}", f"{backend.address}/ci/latency-{number}:1")
        wait_for_verdict(running.settings.state, f"ci/latency-{number}", digest)
        latencies.append(time.monotonic() - started)
    eventually(lambda: running.health()["queue"] == 0, "the queue empties")
    client = RegistryClient(backend.url)
    with StateStore(running.settings.state) as store:
        verdicts = VerdictStore(store)
        before = len(scanner.scans)
        idle = reconcile(client, verdicts, scanner.current_db())
    assert idle.queued == idle.requeued == 0
    assert len(scanner.scans) == before
    assert idle.requests["total"] == 1 + idle.repositories + idle.tags
    with capsys.disabled():
        print(
            f"\npush->verdict (skopeo copy included): median {statistics.median(latencies):.2f} s "
            f"over {len(latencies)}; idle reconciliation: {idle.digests} digests, "
            f"{idle.requests['total']} requests, {idle.seconds:.3f} s"
        )
    assert threading.active_count() < 50


def test_a_new_db_rescans_every_served_digest(service, source, sample) -> None:
    running, scanner, backend = service
    reference, digest, platforms = index_of(sample, 0)
    skopeo_copy(f"{source.address}/{reference}", f"{backend.address}/ci/app:1.0.0")
    wait_for_verdict(running.settings.state, "ci/app", digest)
    eventually(lambda: running.health()["queue"] == 0, "the queue empties")
    scans_before = len(scanner.scans)
    new_db = DbInfo("sha256:" + "e" * 64, scanner.db.updated_at)  # type: ignore[union-attr]
    scanner.db = new_db

    def rescanned() -> bool:
        with StateStore(running.settings.state) as store:
            made_with = {v.db_digest for v in VerdictStore(store).verdicts("ci/app")}
        return made_with == {new_db.digest}

    eventually(rescanned, "every verdict made with the new DB", timeout=30)
    assert len(scanner.scans) - scans_before == len(platforms)


def test_a_delete_forgets_the_verdict(service, source, sample) -> None:
    running, _, backend = service
    reference, digest, _ = index_of(sample, 1)
    skopeo_copy(f"{source.address}/{reference}", f"{backend.address}/ci/gone:1")
    wait_for_verdict(running.settings.state, "ci/gone", digest)
    RegistryClient(backend.url).delete_manifest("ci/gone", digest)

    def forgotten() -> bool:
        with StateStore(running.settings.state) as store:
            return VerdictStore(store).verdict("ci/gone", digest) is None

    eventually(forgotten, "the deleted index's verdict forgotten")
