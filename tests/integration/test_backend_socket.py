"""The engine against a real Distribution on a unix socket, as the registry host runs its
backend (``http.net: unix``; roles/registry): pushes with uploads and mounts, reads, deletes,
upload sessions through the ``Location`` URLs Distribution builds, keep-alive, counters, errors
that name the socket, and the scan service and its reconciliation reading the backend there.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from airgap_lab.sample import Sample, SampleSpec, build, push
from airgapped_registry.errors import AirgapError, RegistryError
from airgapped_registry.oci.reference import digest_of
from airgapped_registry.service.reconcile import reconcile
from airgapped_registry.service.server import ScanService
from airgapped_registry.state.store import StateStore
from airgapped_registry.state.verdicts import VerdictStore
from airgapped_registry.tools.skopeo import destination_flags
from airgapped_registry.transport.access import RegistryAccess
from airgapped_registry.transport.registry import RegistryClient
from tests.integration.conftest import Distribution, _free_port
from tests.integration.scan_service import (
    NotifyingDistribution,
    RecordingScanner,
    eventually,
    wait_for_verdict,
)
from tests.integration.test_scan_service import settings

pytestmark = pytest.mark.integration

SMALL = SampleSpec(
    repositories=2, tags_per_repository=1, base_layer_bytes=4096, unique_layer_bytes=4096
)


@pytest.fixture(scope="module")
def sample() -> Sample:
    return build(SMALL)


@pytest.fixture
def client(socket_distribution: Distribution) -> Iterator[RegistryClient]:
    with RegistryAccess(socket_distribution.url, name="backend").client() as opened:
        yield opened


def test_the_sample_is_pushed_and_read_back_over_the_socket(
    socket_distribution: Distribution, client: RegistryClient, sample: Sample
) -> None:
    assert socket_distribution.url.startswith("unix:///")
    report = push(sample, client)
    # Blobs shared between repositories are mounted: POST ?mount=&from= over the socket.
    assert report["changed"] and report["blobs_pushed"] > 0 and report["blobs_mounted"] > 0
    assert client.blobs_uploaded == report["blobs_pushed"]
    assert client.bytes_uploaded == report["bytes_pushed"] > 0
    for reference, expected in sample.expected().items():
        repository, tag = reference.rsplit(":", 1)
        found = client.head_manifest(repository, tag)
        assert found is not None and found.digest == expected["digest"]
        body, _, digest = client.get_manifest(repository, expected["digest"])
        assert digest == expected["digest"] == digest_of(body)
    for repository in sample.repositories:
        tags = {r.rsplit(":", 1)[1] for r in sample.expected() if r.startswith(repository + ":")}
        assert set(client.tags(repository)) == tags
    assert (
        sorted(client.catalog())
        == sorted(client.catalog(page_size=1))
        == sorted(sample.repositories)
    )
    # Nothing changed: one HEAD per tag, on the connection opened at the start.
    connection = client._thread_connection().sock
    before = client.requests
    again = push(sample, client)
    assert not again["changed"] and again["requests_by_method"] == {"HEAD": len(sample.artifacts)}
    assert client.requests - before == len(sample.artifacts)
    assert client._thread_connection().sock is connection


def test_upload_sessions_follow_the_location_distribution_builds(
    client: RegistryClient, tmp_path: Path
) -> None:
    data = b"layer over a unix socket\n" * 1000
    digest = digest_of(data)
    # POST, then PUT to the Location it answered (http://localhost/... read as the socket's).
    assert client.place_blob("ci/a", digest, data) == "uploaded"
    assert client.get_blob("ci/a", digest) == data
    with (tmp_path / "blob").open("w+b") as sink:
        assert client.download_blob("ci/a", digest, sink) == len(data)
    assert client.mount_blob("ci/b", digest, "ci/a")
    assert client.blob_exists("ci/b", digest)
    # POST, PATCH to the Location, DELETE of the Location the PATCH answered.
    client.check_upload("ci/c")
    response = client._call("POST", "/v2/ci/d/blobs/uploads/", expect=(202,))
    session = client._resolve(response.url, response.header("Location") or "")
    assert session.startswith(client.base_url + "/v2/ci/d/blobs/uploads/")
    assert client.cancel_upload(session)
    # A URL of another origin is never sent to the socket.
    assert not client.cancel_upload("http://localhost:5000/v2/ci/d/blobs/uploads/x")


def test_a_delete_over_the_socket(client: RegistryClient, sample: Sample) -> None:
    push(sample, client)
    reference, expected = next(iter(sample.expected().items()))
    repository, tag = reference.rsplit(":", 1)
    client.delete_manifest(repository, expected["digest"])
    assert client.head_manifest(repository, tag) is None


def test_errors_name_the_socket(
    socket_distribution: Distribution, client: RegistryClient, tmp_path: Path
) -> None:
    with pytest.raises(RegistryError) as missing:
        client.get_manifest("ci/none", "1.0")
    assert missing.value.status == 404
    assert str(missing.value).startswith(
        f"GET unix://{socket_distribution.socket}/v2/ci/none/manifests/1.0: 404 MANIFEST_UNKNOWN"
    )
    absent = tmp_path / "absent.sock"
    with pytest.raises(RegistryError) as no_file, RegistryClient(f"unix://{absent}") as nowhere:
        nowhere.ping()
    assert str(no_file.value) == f"GET unix://{absent}/v2/: no such file or directory"
    # A socket file nobody listens on (a backend that died without removing it).
    stale = tmp_path / "stale.sock"
    bound = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    bound.bind(str(stale))
    try:
        with pytest.raises(RegistryError) as refused, RegistryClient(f"unix://{stale}") as dead:
            dead.ping()
    finally:
        bound.close()
    assert str(refused.value) == f"GET unix://{stale}/v2/: connection refused"


def test_skopeo_is_refused_a_socket_by_name(socket_distribution: Distribution, tmp_path) -> None:
    access = RegistryAccess(socket_distribution.url, name="backend")
    with pytest.raises(AirgapError, match=r"backend unix:///\S+: skopeo cannot reach"):
        destination_flags(access, tmp_path)


def test_the_scan_service_reads_the_backend_over_the_socket(
    tmp_path: Path, distribution_factory, sample: Sample
) -> None:
    """Distribution on its socket notifies the service of a push made over the socket;
    the service and the reconciliation read every digest from there."""
    port = _free_port()
    root = tmp_path / "backend"
    root.mkdir()
    backend = NotifyingDistribution(
        root, 0, socket=root / "registry.sock", endpoint=f"http://127.0.0.1:{port}/events"
    )
    backend.start()
    try:
        config = settings(tmp_path, backend, port)
        assert config.backend == f"unix://{backend.socket}"
        with RegistryAccess(config.backend, name="backend").client() as reader:
            scanner = RecordingScanner(reader)
            service = ScanService(config, scanner, None, lambda: reader)
            service.start()
            try:
                with RegistryClient(backend.url) as pusher:
                    push(sample, pusher)
                apps = [r for r in sample.expected() if r.startswith("sample/app-")]
                assert len(apps) == 2
                for reference in apps:
                    entry = sample.expected()[reference]
                    repository = reference.rsplit(":", 1)[0]
                    index = wait_for_verdict(config.state, repository, entry["digest"])
                    assert index.status == "pass"
                    assert set(index.children) == set(entry["platforms"].values())
                eventually(lambda: service.health()["queue"] == 0, "the queue empties")
            finally:
                service.stop()
            with StateStore(config.state) as store:
                # Every digest the socket serves has its verdict: nothing left to queue.
                found = reconcile(reader, VerdictStore(store), scanner.current_db())
                assert found.repositories == len(sample.repositories)
                assert found.queued == 0 and found.current == found.digests > 0
    finally:
        backend.stop()
