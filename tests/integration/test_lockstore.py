"""The nightly path through the relay, with three real Distributions and the real skopeo.

upstream (plain HTTP, the sample) → relay (mTLS) → registry (mTLS). The relay locks against
upstream and syncs; it publishes its lock into its own registry, signed with its transfer
key; the registry host fetches it (the signature verified with its trusted keys) rewritten
to read from the relay, syncs from the relay with a list of sources only, and verifies.
Everything runs through ``airgap`` as cron would run it. A lock that is unsigned, signed by
another key, or edited after signing is refused, and the registry host's lock kept.
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
from airgapped_registry.mirror.lockstore import LOCK_MEDIA_TYPE, artifact
from airgapped_registry.oci.mediatypes import OCI_MANIFEST
from airgapped_registry.oci.reference import digest_of
from airgapped_registry.transfer import init_key, load_key, public_path
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


def push_artifact(
    client: RegistryClient,
    tag: str,
    lock_text: bytes,
    signature: bytes | None,
    repository: str = DEFAULT_REPOSITORY,
) -> None:
    """Publish ``lock_text`` with ``signature`` as the lock artifact, whatever they hold."""
    config = b"{}"
    client.push_blob(repository, digest_of(config), config)
    client.push_blob(repository, digest_of(lock_text), lock_text)
    if signature is not None:
        client.push_blob(repository, digest_of(signature), signature)
    client.put_manifest(repository, tag, artifact(lock_text, signature), OCI_MANIFEST)


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


def transfer_key(directory: Path) -> Path:
    """A host's transfer key pair in ``directory`` (``transfer.key``, ``transfer.pub``)."""
    key = directory / "transfer" / "transfer.key"
    init_key(key)
    return key


def trusted_dir(directory: Path, *keys: Path) -> Path:
    """A trusted directory holding the public halves of ``keys``, as the role installs it."""
    directory.mkdir(parents=True)
    for number, key in enumerate(keys):
        (directory / f"host-{number}.pub").write_bytes(public_path(key).read_bytes())
    return directory


@pytest.fixture
def hops(distribution_factory, own_upstream, pki, tmp_path):
    """The relay and registry hosts' files, their registries: the relay's transfer key, the
    registry host's trusted directory with its public half."""
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
    key = transfer_key(relay_dir)
    return {
        "transfer_key": key,
        "trusted": trusted_dir(registry_dir / "trusted", key),
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
        "--transfer-key",
        hops["transfer_key"],
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
        "--trusted-keys",
        hops["trusted"],
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
    key_id = load_key(hops["transfer_key"]).key_id
    assert published["signed_by"] == key_id
    # Publishing the same lock again with the same key pushes nothing.
    status, again = airgap(
        capsys, "lock", "publish", "--lock", hops["relay_lock"], "--registry", relay.url,
        *tls(pki), "--transfer-key", hops["transfer_key"],
    )  # fmt: skip
    assert (status, again["changed"], again["digest"]) == (0, False, published["digest"])
    with RegistryClient(relay.url, pki.ca_file, pki.client_cert, pki.client_key) as client:
        layers = json.loads(client.get_manifest(DEFAULT_REPOSITORY, "current")[0])["layers"]
    assert [(layer["mediaType"], layer["annotations"]) for layer in layers] == [
        (LOCK_MEDIA_TYPE, {"org.opencontainers.image.title": "mirror.lock"}),
        (
            "application/vnd.airgapped-registry.transfer-signature.v1+json",
            {"org.opencontainers.image.title": "mirror.lock.sig"},
        ),
    ]

    fetched, synced, verified = registry_round(capsys, hops, pki)
    upstream_lock = read_lock(hops["relay_lock"])
    relayed = read_lock(hops["fetched"])
    assert fetched["changed"] and fetched["summary"] == "new lock"
    assert (fetched["signed_by"], fetched["signature"]) == (key_id, "verified")
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
    # HEAD and GET of the manifest, GET of the lock blob and of its signature.
    assert fetched["requests"] == 4
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
        "--trusted-keys",
        hops["trusted"],
    ]
    assert airgap(capsys, *fetch)[0] == 0
    good = hops["fetched"].read_bytes()

    # Garbled: a well-formed artifact, signed by the relay, whose lock layer is not a lock.
    garbage = b'{"entries": "nonsense", "version": 1}'
    with RegistryClient(relay.url, pki.ca_file, pki.client_cert, pki.client_key) as client:
        push_artifact(
            client, "garbled", garbage, load_key(hops["transfer_key"]).sign(garbage, "lock")
        )
        # Not a lock artifact at all: an image.
        image = read_lock(hops["relay_lock"]).entries[0]
    status, report = airgap(capsys, *fetch, "--tag", "garbled")
    assert status == 1
    assert "published lock refused" in report["stderr"] and "malformed" in report["stderr"]
    assert hops["fetched"].read_bytes() == good

    status, report = airgap(capsys, *fetch, "--repository", image.destination, "--tag", image.tag)
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

    status, report = airgap(capsys, *fetch, "--tag", "absent")
    assert status == 1 and "no published lock" in report["stderr"]


def test_a_lock_not_signed_by_a_trusted_key_is_refused_and_the_previous_lock_kept(
    capsys, hops, pki, tmp_path
) -> None:
    """Unsigned, signed by another transfer key, edited after signing, signed for another
    purpose, or with a signature layer that is no signature: each fetch fails naming the lock
    and the cause, in check mode too, and the registry host's lock stays as it was."""
    relay = hops["relay"]
    relay_round(capsys, hops, pki)
    fetch = [
        "lock", "fetch", "--registry", relay.url, *tls(pki), "--source", "relay",
        "--output", hops["fetched"], "--trusted-keys", hops["trusted"],
    ]  # fmt: skip
    assert airgap(capsys, *fetch)[0] == 0
    good, written = hops["fetched"].read_bytes(), hops["fetched"].stat().st_mtime_ns
    key, other = load_key(hops["transfer_key"]), load_key(transfer_key(tmp_path / "other"))
    lock_text = hops["relay_lock"].read_bytes()
    # A valid lock that says something else: one entry fewer.
    edited = Lock(read_lock(hops["relay_lock"]).entries[:-1]).to_json().encode()
    publish = ["lock", "publish", "--lock", hops["relay_lock"], "--registry", relay.url, *tls(pki)]
    assert airgap(capsys, *publish, "--tag", "unsigned")[0] == 0
    status, by_other = airgap(capsys, *publish, "--tag", "other-key", "--transfer-key", other.path)
    assert (status, by_other["signed_by"]) == (0, other.key_id)
    with RegistryClient(relay.url, pki.ca_file, pki.client_cert, pki.client_key) as client:
        push_artifact(client, "edited", edited, key.sign(lock_text, "lock"))
        push_artifact(client, "inventory", lock_text, key.sign(lock_text, "inventory"))
        push_artifact(client, "not-a-signature", lock_text, b"not a signature")
    where = f"published lock {relay.url}/{DEFAULT_REPOSITORY}"
    refusals = {
        "unsigned": "not signed (no transfer signature); the relay signs it with 'airgap lock "
        "publish --transfer-key' (a site without transfer keys yet may fetch with "
        "--allow-unsigned)",
        "other-key": f"signed by untrusted key {other.key_id} (trusted: {key.key_id} "
        f"({hops['trusted'] / 'host-0.pub'}))",
        "edited": f"digest mismatch, signed {digest_of(lock_text)} but it is "
        f"{digest_of(edited)} (edited after signing)",
        "inventory": "signature is for purpose 'inventory', not 'lock'",
        "not-a-signature": "not a transfer signature document (not JSON)",
    }
    for tag, cause in refusals.items():
        for check in ([], ["--check"]):
            status, report = airgap(capsys, *fetch, "--tag", tag, *check)
            assert status == 1, (tag, report)
            assert report["stderr"] == f"airgap: {where}:{tag}: {cause}\n", tag
            assert hops["fetched"].read_bytes() == good, tag
            assert hops["fetched"].stat().st_mtime_ns == written, tag
    assert sorted(p.name for p in hops["fetched"].parent.iterdir()) == [
        "mirror.lock", "relay-source.yaml", "sync", "trusted"
    ]  # fmt: skip

    # The signature is what refused them: unchecked, the unsigned and the edited lock pass.
    scratch = tmp_path / "unchecked.lock"
    for tag in ("unsigned", "edited"):
        capsys.readouterr()
        unchecked = [*fetch[:-4], "--output", scratch, "--allow-unsigned", "--tag", tag]
        assert main([str(arg) for arg in unchecked]) == 0
        out = capsys.readouterr()
        assert json.loads(out.out)["signature"] == "not checked (unsigned allowed)"
        assert "--allow-unsigned: the lock's transfer signature is not checked" in out.err
    assert len(read_lock(scratch).entries) == len(read_lock(hops["fetched"]).entries) - 1

    # Without any trusted key the fetch refuses before asking the relay.
    status, report = airgap(capsys, *fetch[:-1], tmp_path / "absent")
    assert status == 1 and report["stderr"].startswith(
        f"airgap: trusted transfer keys {tmp_path / 'absent'}: no such file or directory"
    ), report
    assert hops["fetched"].read_bytes() == good


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
    key = transfer_key(tmp_path / "relay")
    signed = ["--transfer-key", key]

    status, refused = airgap(capsys, "lock", "publish", "--lock", lock_file, *endpoint, *signed)
    assert status == 1 and refused["stderr"].endswith(": 401\n"), refused
    status, published = airgap(
        capsys, "lock", "publish", "--lock", lock_file, *endpoint, "--auth-file", auth, *signed
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
        "--trusted-keys",
        public_path(key),
    )
    assert (status, fetched["digest"]) == (0, published["digest"]), fetched
    assert read_lock(output) == Lock(())
