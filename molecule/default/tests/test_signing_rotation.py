"""Rotating the appliance's signing key (playbooks/rotate-signing-key.yml) on the lab.

During the overlap both keys verify: what was signed before (an image signed only
with the old key) and what is signed after (every mirrored digest, re-signed with the
new key, and a CI push the running scan service signed after the rotation, with the new
key only) pull on the node under its policy and verify with cosign. After retirement
the node trusts the new key alone: the image signed only with the old key is refused,
what the new key signed pulls.
"""

from __future__ import annotations

import json

import pytest
from test_provenance import (
    CONFIG,
    NODE_KEYS,
    REGISTRY,
    cosign_verify,
    keys_json,
    podman_pull,
    push_unsigned,
    served_digests,
)
from test_scan_acceptance import wait_for_verdict


def key_ids(registry, *states):
    return [key["id"] for key in keys_json(registry)["keys"] if key["state"] in states]


@pytest.fixture(scope="module")
def rotation(hosts, playbook, identities):
    """An image signed with the key in use, then a rotation with an overlap."""
    registry, node = hosts["registry"], hosts["node"]
    (old,) = key_ids(registry, "active")
    # A protected repository (outside the landing zones, where the node's policy and
    # the gate require signatures): the admin pushes there.
    digest = push_unsigned(
        node, "test/signed-before", "signed before the rotation\n", identities["admin"]
    )
    signed = registry.run(f"airgap sign --config {CONFIG} test/signed-before@{digest}")
    assert signed.rc == 0, signed.stderr
    playbook("playbooks/rotate-signing-key.yml", "-e", "signing_rotation_overlap=1d")
    (new,) = key_ids(registry, "active")
    # Pushed after the rotation into a CI repository: the scan service, running since
    # before the rotation, signs it, and with the new key.
    after = push_unsigned(node, "ci/signed-after", "signed after the rotation\n")
    wait_for_verdict(registry, "ci/signed-after", after)
    return {
        "old": old,
        "new": new,
        "before": f"{REGISTRY}/test/signed-before@{digest}",
        "after": f"{REGISTRY}/ci/signed-after@{after}",
    }


def test_a_rotation_makes_a_new_active_key_and_keeps_the_old_one_verifying(hosts, rotation):
    registry = hosts["registry"]
    assert rotation["new"] != rotation["old"]
    assert key_ids(registry, "verifying") == [rotation["old"]]
    installed = sorted(hosts["node"].check_output(f"ls {NODE_KEYS}").split())
    assert installed == sorted(f"cosign-{k}.pub" for k in (rotation["old"], rotation["new"]))
    policy = json.loads(hosts["node"].check_output("cat /etc/containers/policy.json"))
    (requirement,) = policy["transports"]["docker"][REGISTRY]
    assert len(requirement["keyPaths"]) == 2


def test_during_the_overlap_old_and_new_signatures_verify(hosts, rotation):
    registry, node = hosts["registry"], hosts["node"]
    old_key = f"{NODE_KEYS}/cosign-{rotation['old']}.pub"
    new_key = f"{NODE_KEYS}/cosign-{rotation['new']}.pub"
    repository, digest = rotation["before"].removeprefix(f"{REGISTRY}/").split("@")
    assert cosign_verify(node, old_key, repository, digest).rc == 0
    pulled = podman_pull(node, rotation["before"])
    assert pulled.rc == 0, pulled.stderr
    repository, digest = rotation["after"].removeprefix(f"{REGISTRY}/").split("@")
    ran = cosign_verify(node, new_key, repository, digest)
    assert ran.rc == 0, f"{rotation['after']} with the new key: {ran.stderr[-300:]}"
    assert cosign_verify(node, old_key, repository, digest).rc != 0
    pulled = podman_pull(node, rotation["after"])
    assert pulled.rc == 0, pulled.stderr
    for repository, digest in served_digests(registry):
        for key in (old_key, new_key):
            ran = cosign_verify(node, key, repository, digest)
            assert ran.rc == 0, f"{repository}@{digest} with {key}: {ran.stderr[-300:]}"


def test_after_retirement_only_new_signatures_verify(hosts, playbook, rotation):
    registry, node = hosts["registry"], hosts["node"]
    retire = ["-e", "signing_retire=true", "-e", "signing_retire_now=true"]
    playbook("playbooks/rotate-signing-key.yml", *retire)
    assert key_ids(registry, "active", "verifying") == [rotation["new"]]
    assert key_ids(registry, "retired") == [rotation["old"]]
    assert node.check_output(f"ls {NODE_KEYS}").split() == [f"cosign-{rotation['new']}.pub"]
    refused = podman_pull(node, rotation["before"])
    assert refused.rc != 0
    assert "signature" in refused.stderr.lower()
    repository, digest = rotation["before"].removeprefix(f"{REGISTRY}/").split("@")
    new_key = f"{NODE_KEYS}/cosign-{rotation['new']}.pub"
    assert cosign_verify(node, new_key, repository, digest).rc != 0
    pulled = podman_pull(node, rotation["after"])
    assert pulled.rc == 0, pulled.stderr
    # Mirrored images carry the new key's signature too (re-signed by the rotation).
    (base, digest) = next(d for d in served_digests(registry) if d[0] == "sample/base")
    pulled = podman_pull(node, f"{REGISTRY}/{base}@{digest}")
    assert pulled.rc == 0, pulled.stderr
