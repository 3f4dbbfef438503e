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
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

from airgap_lab.sample import Sample, SampleSpec, build, push
from airgapped_registry.errors import AirgapError
from airgapped_registry.scanning.policy import Policy
from airgapped_registry.scanning.scanner import Finding
from airgapped_registry.scanning.verdict import DbInfo
from airgapped_registry.service.events import ENVELOPE_MEDIA_TYPE, ManifestPush, parse_envelope
from airgapped_registry.service.ports import ServiceSettings
from airgapped_registry.service.reconcile import reconcile
from airgapped_registry.service.server import ScanService
from airgapped_registry.service.worker import DigestJob, DigestLocks, Worker
from airgapped_registry.state.store import StateStore
from airgapped_registry.state.verdicts import VerdictStore
from airgapped_registry.transport.registry import RegistryClient
from tests.integration.conftest import Distribution, DistributionFactory, _free_port
from tests.integration.scan_service import (
    NotifyingDistribution,
    RecordingProvenance,
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


def test_a_new_db_rescans_every_served_digest_once(service, source, sample) -> None:
    running, scanner, backend = service
    children = 0
    for number in range(3):
        reference, digest, platforms = index_of(sample, number)
        skopeo_copy(f"{source.address}/{reference}", f"{backend.address}/ci/app-{number}:1")
        wait_for_verdict(running.settings.state, f"ci/app-{number}", digest)
        children += len(platforms)
    eventually(lambda: running.health()["queue"] == 0, "the queue empties")
    assert len(scanner.scans) == children  # each child once, by its index's job
    new_db = DbInfo("sha256:" + "e" * 64, scanner.db.updated_at)  # type: ignore[union-attr]
    scanner.db = new_db

    def rescanned() -> bool:
        with StateStore(running.settings.state) as store:
            made_with = {v.db_digest for v in VerdictStore(store).verdicts()}
        return made_with == {new_db.digest}

    eventually(rescanned, "every verdict made with the new DB", timeout=30)
    eventually(lambda: running.health()["queue"] == 0, "the queue empties")
    # Children queued beside their index are left to its job: each scanned once more.
    assert len(scanner.scans) == 2 * children


def take_all(worker: Worker, job: DigestJob, verdicts: VerdictStore) -> None:
    while (item := verdicts.claim()) is not None:
        worker.take(job, verdicts, item)


def test_children_queued_with_their_index_are_scanned_once_by_its_job(
    tmp_path, notifying, source, sample
) -> None:
    backend, _ = notifying
    reference, digest, platforms = index_of(sample, 0)
    skopeo_copy(f"{source.address}/{reference}", f"{backend.address}/ci/app:1")
    client = RegistryClient(backend.url)
    scanner = RecordingScanner(client)
    provenance = RecordingProvenance()
    config = settings(tmp_path, backend, attest=True)
    children = tuple(platforms.values())
    with StateStore(config.state) as store:
        verdicts = VerdictStore(store)
        job = DigestJob(config, scanner, provenance, client, verdicts)
        worker = Worker(config, scanner, provenance, client, DigestLocks(), threading.Event(), None)  # type: ignore[arg-type]
        verdicts.remember_children("ci/app", digest, children)
        # The children come first in the queue, as when they are pushed before the index.
        verdicts.enqueue([("ci/app", child) for child in children], "push")
        verdicts.enqueue([("ci/app", digest)], "push")
        take_all(worker, job, verdicts)
        assert sorted(scanner.scans) == sorted(("ci/app", child) for child in children)
        assert provenance.attested[-1] == ("ci/app", digest, children)
        assert provenance.signed == [("ci/app", digest)]
        # The index's verdict stands, but a child's is gone (deleted and pushed again, say):
        # queued with its index, the child is still scanned.
        verdicts.forget("ci/app", children[0])
        verdicts.enqueue([("ci/app", children[0]), ("ci/app", digest)], "push")
        take_all(worker, job, verdicts)
        assert verdicts.verdict("ci/app", children[0]) is not None
        assert scanner.scans.count(("ci/app", children[0])) == 2


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


def test_without_a_db_the_queue_waits_for_one(service, source, sample) -> None:
    running, scanner, backend = service
    db = scanner.db
    scanner.db = None
    reference, digest, platforms = index_of(sample, 2)
    skopeo_copy(f"{source.address}/{reference}", f"{backend.address}/ci/waiting:1")
    eventually(lambda: running.health()["queue"] == 3, "the index and its children queued")
    time.sleep(2.5)  # past the children's delay: still nothing scanned, nothing recorded
    assert running.health()["queue"] == 3
    assert scanner.scans == []
    scanner.db = db
    verdict = wait_for_verdict(running.settings.state, "ci/waiting", digest, timeout=30)
    assert verdict.status == "pass"
    assert len(scanner.scans) == len(platforms)


def test_a_port_in_use_is_named(tmp_path, notifying, service) -> None:
    running, scanner, _ = service
    backend, _ = notifying
    taken = settings(tmp_path, backend, running.address[1])
    with pytest.raises(AirgapError, match=rf"cannot listen on 127\.0\.0\.1:{running.address[1]}"):
        ScanService(taken, scanner, None, lambda: RegistryClient(backend.url))


def test_what_distribution_sends_parses_as_the_captured_fixture(tmp_path, source, sample) -> None:
    """Capture the envelopes a real Distribution POSTs while skopeo pushes a multi-arch
    image (what tests/unit/fixtures/notifications holds), and parse them."""
    received: list[tuple[str | None, bytes]] = []

    class Capture(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append((self.headers.get("Content-Type"), body))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    listener = HTTPServer(("127.0.0.1", 0), Capture)
    threading.Thread(target=listener.serve_forever, daemon=True).start()
    backend = NotifyingDistribution(
        tmp_path / "backend",
        _free_port(),
        endpoint=f"http://127.0.0.1:{listener.server_address[1]}/events",
    )
    backend.root.mkdir()
    backend.start()
    try:
        reference, digest, platforms = index_of(sample, 0)
        skopeo_copy(f"{source.address}/{reference}", f"{backend.address}/ci/app:1.0.0")

        def pushes() -> list[ManifestPush]:
            return [p for _, body in list(received) for p in parse_envelope(body).pushes]

        eventually(lambda: len(pushes()) == 3, "three manifest pushes notified")
    finally:
        backend.stop()
        listener.shutdown()
    assert {content_type for content_type, _ in received} == {ENVELOPE_MEDIA_TYPE}
    # Distribution does not promise the order: the index is the tagged push.
    tagged = [(p.digest, p.tag) for p in pushes() if p.tag]
    untagged = {p.digest for p in pushes() if not p.tag}
    assert (tagged, untagged) == ([(digest, "1.0.0")], set(platforms.values()))


def test_a_digest_gone_before_its_scan_is_dropped_without_a_verdict(service) -> None:
    running, scanner, _ = service
    gone = "sha256:" + "7" * 64
    envelope = {
        "events": [
            {
                "action": "push",
                "target": {
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "repository": "ci/gone",
                    "digest": gone,
                    "tag": "1",
                },
            }
        ]
    }
    host, port = running.address
    connection = http.client.HTTPConnection(host, port, timeout=5)
    connection.request(
        "POST", "/events", body=json.dumps(envelope), headers={"Content-Type": ENVELOPE_MEDIA_TYPE}
    )
    assert json.loads(connection.getresponse().read())["queued"] == 1
    eventually(lambda: running.health()["queue"] == 0, "the item dropped")
    time.sleep(1.0)  # a retry would have been due by now (backoff 0.2 s)
    with StateStore(running.settings.state) as store:
        assert VerdictStore(store).verdicts("ci/gone") == []
    assert scanner.scans == []
