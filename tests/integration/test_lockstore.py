"""The nightly path through the relay, with three real Distributions and the real skopeo.

upstream (plain HTTP, the sample) → relay (mTLS) → registry (mTLS). The relay locks against
upstream and syncs; it publishes its lock into its own registry; the registry host fetches it
rewritten to read from the relay, syncs from the relay with a list of sources only, and
verifies. Everything runs through ``airgap`` as cron would run it.
"""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path

import pytest

from airgap_lab.sample import SampleSpec, build, push
from airgapped_registry.cli import main
from airgapped_registry.defaults import LOCK_REPOSITORY as DEFAULT_REPOSITORY
from airgapped_registry.mirror.lock import Lock, read_lock
from airgapped_registry.mirror.lockstore import CONFIG_MEDIA_TYPE, LOCK_MEDIA_TYPE
from airgapped_registry.oci.mediatypes import OCI_MANIFEST
from airgapped_registry.oci.reference import digest_of
from airgapped_registry.transport.registry import RegistryClient
from tests.integration.test_sync import (
    MOVED,
    SMALL,
    corrupt,
    seeded,
    settled_log,
    uploads,
    with_password,
    write_list,
)

pytestmark = pytest.mark.integration

ENTRIES = """\
images:
  - {source: upstream, repository: sample/base, semver: ">=1.0.0", destination: mirror/base}
  - source: upstream
    repository: sample/app-001
    regex: '^[0-9]+\\.[0-9]+\\.[0-9]+$'
    max_tags: 2
charts:
  - {source: upstream, repository: charts/demo, versions: ["0.1.0"]}
"""


def airgap(capsys, *argv: str) -> tuple[int, dict]:
    capsys.readouterr()
    status = main([str(arg) for arg in argv])
    out = capsys.readouterr()
    return status, (json.loads(out.out) if out.out.strip() else {"stderr": out.err})


def tls(pki) -> list[str]:
    return [
        "--ca-file",
        str(pki.ca_file),
        "--cert-file",
        str(pki.client_cert),
        "--key-file",
        str(pki.client_key),
    ]


def cert_dir(directory: Path, pki) -> Path:
    """A client cert dir as skopeo reads it (and the hosts hold in /etc/airgapped-registry)."""
    directory.mkdir()
    (directory / "ca.crt").write_bytes(pki.ca_file.read_bytes())
    (directory / "client.cert").write_bytes(pki.client_cert.read_bytes())
    (directory / "client.key").write_bytes(pki.client_key.read_bytes())
    return directory


@pytest.fixture(scope="module")
def sample_upstream(distribution_factory):
    registry = seeded(distribution_factory, build(SMALL))
    yield registry
    registry.stop()


@pytest.fixture
def own_upstream(distribution_factory, sample_upstream):
    """A copy of the sample upstream this test may move tags in."""
    registry = distribution_factory()
    registry.stop()
    shutil.rmtree(registry.storage, ignore_errors=True)
    shutil.copytree(sample_upstream.storage, registry.storage)
    registry.start()
    yield registry
    registry.stop()


@pytest.fixture
def hops(distribution_factory, own_upstream, pki, tmp_path):
    """The relay and registry hosts' files, their registries, and the first round done."""
    relay = distribution_factory(tls=pki)
    registry = distribution_factory(tls=pki)
    relay_dir, registry_dir = tmp_path / "relay", tmp_path / "registry"
    relay_dir.mkdir()
    registry_dir.mkdir()
    spec = write_list(relay_dir, own_upstream.address, ENTRIES)
    cert_dir(registry_dir / "sync", pki)
    source = registry_dir / "relay-source.yaml"
    source.write_text(
        f"version: 1\nsources:\n  relay:\n    registry: {relay.address}\n    cert_dir: sync\n"
    )
    return {
        "upstream": own_upstream,
        "relay": relay,
        "registry": registry,
        "spec": spec,
        "relay_lock": relay_dir / "mirror.lock",
        "source": source,
        "fetched": registry_dir / "mirror.lock",
        "registry_state": registry_dir / "state.db",
        "relay_state": relay_dir / "state.db",
    }


def relay_round(capsys, hops, pki) -> dict:
    """The relay's cron: lock, sync upstream → relay, publish."""
    status, report = airgap(capsys, "lock", "--spec", hops["spec"], "--lock", hops["relay_lock"])
    assert status == 0, report
    status, report = airgap(
        capsys,
        "sync",
        "--lock",
        hops["relay_lock"],
        "--spec",
        hops["spec"],
        "--registry",
        hops["relay"].url,
        *tls(pki),
        "--state",
        hops["relay_state"],
        "--quiet",
    )
    assert status == 0, report
    status, published = airgap(
        capsys,
        "lock",
        "publish",
        "--lock",
        hops["relay_lock"],
        "--registry",
        hops["relay"].url,
        *tls(pki),
    )
    assert status == 0, published
    return published


def registry_round(capsys, hops, pki) -> tuple[dict, dict, dict]:
    """The registry host's cron: fetch from the relay, sync relay → registry, verify."""
    relay, registry = hops["relay"], hops["registry"]
    status, fetched = airgap(
        capsys,
        "lock",
        "fetch",
        "--registry",
        relay.url,
        *tls(pki),
        "--source",
        "relay",
        "--output",
        hops["fetched"],
    )
    assert status == 0, fetched
    destination = ["--registry", registry.url, *tls(pki)]
    status, synced = airgap(
        capsys,
        "sync",
        "--lock",
        hops["fetched"],
        "--spec",
        hops["source"],
        *destination,
        "--state",
        hops["registry_state"],
        "--quiet",
    )
    assert status == 0, synced
    status, verified = airgap(capsys, "verify", "--lock", hops["fetched"], *destination)
    assert status == 0, verified
    return fetched, synced, verified


def test_nightly_path_through_the_relay(capsys, hops, pki) -> None:
    relay, registry = hops["relay"], hops["registry"]
    published = relay_round(capsys, hops, pki)
    assert published["changed"] and published["published"]
    # Publishing the same lock again pushes nothing.
    status, again = airgap(
        capsys, "lock", "publish", "--lock", hops["relay_lock"], "--registry", relay.url, *tls(pki)
    )
    assert (status, again["changed"], again["digest"]) == (0, False, published["digest"])

    fetched, synced, verified = registry_round(capsys, hops, pki)
    upstream_lock = read_lock(hops["relay_lock"])
    relayed = read_lock(hops["fetched"])
    assert fetched["changed"] and fetched["summary"] == "new lock"
    assert len(relayed.entries) == len(upstream_lock.entries) == synced["copied"] == 6
    for before, after in zip(upstream_lock.entries, relayed.entries, strict=True):
        assert (after.source, after.registry, after.repository) == (
            "relay",
            relay.address,
            before.destination,
        )
        assert after.digest == before.digest
    assert "mirror/base" in {e.destination for e in relayed.entries}
    assert verified["failed"] == 0
    # The registry holds what upstream resolved to, byte for byte.
    with RegistryClient(registry.url, pki.ca_file, pki.client_cert, pki.client_key) as client:
        for entry in upstream_lock.entries:
            assert client.head_manifest(entry.destination, entry.tag).digest == entry.digest

    # Nothing changed: fetching again leaves the file as it was, the sync copies nothing.
    text = hops["fetched"].read_bytes()
    fetched, synced, _ = registry_round(capsys, hops, pki)
    assert (fetched["changed"], synced["copied"], synced["bytes"]) == (False, 0, 0)
    assert fetched["requests"] == 3  # HEAD and GET of the manifest, GET of the lock blob
    assert hops["fetched"].read_bytes() == text

    # A tag moves upstream: the next night moves only the new blobs across the DMZ link.
    push(build(MOVED), RegistryClient(hops["upstream"].url))
    old_blobs = {blob.digest for entry in upstream_lock.entries for blob in entry.blobs()}
    assert relay_round(capsys, hops, pki)["changed"]
    moved_lock = read_lock(hops["relay_lock"])
    sizes = {blob.digest: blob.size for entry in moved_lock.entries for blob in entry.blobs()}
    new_blobs = set(sizes) - old_blobs
    assert new_blobs
    mark = len(settled_log(registry))
    fetched, synced, verified = registry_round(capsys, hops, pki)
    moved = {f"{m['destination']}:{m['tag']}" for m in fetched["diff"]["moved"]}
    assert moved and fetched["changed"]
    assert {r["entry"] for r in synced["results"] if r["result"] == "ok"} == moved
    sent = [digest for _, digest in uploads(settled_log(registry)[mark:])]
    assert sorted(sent) == sorted(new_blobs), "only the new blobs cross, each once"
    assert synced["bytes"] == sum(sizes[digest] for digest in new_blobs)
    assert verified["failed"] == 0


def test_a_garbled_or_tampered_artifact_is_refused_and_the_previous_lock_kept(
    capsys, hops, pki
) -> None:
    relay = hops["relay"]
    relay_round(capsys, hops, pki)
    fetch = [
        "lock",
        "fetch",
        "--registry",
        relay.url,
        *tls(pki),
        "--source",
        "relay",
        "--output",
        hops["fetched"],
    ]
    assert airgap(capsys, *fetch)[0] == 0
    good = hops["fetched"].read_bytes()

    # Garbled: a well-formed artifact whose lock layer is not a lock.
    garbage = b'{"entries": "nonsense", "version": 1}'
    config = b"{}"
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": CONFIG_MEDIA_TYPE,
            "config": {"mediaType": CONFIG_MEDIA_TYPE, "digest": digest_of(config), "size": 2},
            "layers": [
                {"mediaType": LOCK_MEDIA_TYPE, "digest": digest_of(garbage), "size": len(garbage)}
            ],
        }
    ).encode()
    with RegistryClient(relay.url, pki.ca_file, pki.client_cert, pki.client_key) as client:
        client.push_blob(DEFAULT_REPOSITORY, digest_of(config), config)
        client.push_blob(DEFAULT_REPOSITORY, digest_of(garbage), garbage)
        client.put_manifest(DEFAULT_REPOSITORY, "garbled", manifest, OCI_MANIFEST)
        # Not a lock artifact at all: an image.
        image = read_lock(hops["relay_lock"]).entries[0]
    status, report = airgap(capsys, *fetch, "--tag", "garbled")
    assert status == 1
    assert "published lock refused" in report["stderr"] and "malformed" in report["stderr"]
    assert hops["fetched"].read_bytes() == good

    status, report = airgap(
        capsys, *fetch[:-2], "--repository", image.destination, "--tag", image.tag, "--output",
        hops["fetched"],
    )  # fmt: skip
    assert status == 1 and "not a lock artifact" in report["stderr"], report
    assert hops["fetched"].read_bytes() == good

    # Tampered: the published lock's blob altered in the relay's storage.
    layer = json.loads(
        RegistryClient(relay.url, pki.ca_file, pki.client_cert, pki.client_key).get_manifest(
            DEFAULT_REPOSITORY, "current"
        )[0]
    )["layers"][0]
    corrupt(relay, layer["digest"])
    status, report = airgap(capsys, *fetch)
    assert status == 1 and layer["digest"] in report["stderr"], report
    assert hops["fetched"].read_bytes() == good
    assert not [p for p in hops["fetched"].parent.iterdir() if p.name.startswith(".mirror.lock")]

    status, report = airgap(capsys, *fetch[:-2], "--tag", "absent", "--output", hops["fetched"])
    assert status == 1 and "no published lock" in report["stderr"]


def test_lock_publish_and_fetch_reach_a_registry_that_asks_for_credentials(
    capsys, distribution_factory, pki, tmp_path
) -> None:
    """``--auth-file`` reaches the relay as it reaches a sync destination (Basic, here)."""
    relay = seeded(distribution_factory, build(SampleSpec(repositories=0)), tls=pki)
    with_password(relay, pki, tmp_path)
    token = base64.b64encode(b"alice:s3cret").decode()
    auth = tmp_path / "auth.json"
    auth.write_text(json.dumps({"auths": {relay.address: {"auth": token}}}))
    lock_file = tmp_path / "mirror.lock"
    lock_file.write_text(Lock(()).to_json())
    endpoint = ["--registry", relay.url, *tls(pki)]

    status, refused = airgap(capsys, "lock", "publish", "--lock", lock_file, *endpoint)
    assert status == 1 and refused["stderr"].endswith(": 401\n"), refused
    status, published = airgap(
        capsys, "lock", "publish", "--lock", lock_file, *endpoint, "--auth-file", auth
    )
    assert (status, published["changed"]) == (0, True), published
    output = tmp_path / "fetched.lock"
    status, fetched = airgap(
        capsys,
        "lock",
        "fetch",
        *endpoint,
        "--auth-file",
        auth,
        "--source",
        "relay",
        "--output",
        output,
    )
    assert (status, fetched["digest"]) == (0, published["digest"]), fetched
    assert read_lock(output) == Lock(())
