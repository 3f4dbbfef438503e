"""Provenance on the lab: the appliance's signing keys on the registry host, every
mirrored digest signed, and nodes that check the signatures at pull time.

Real clients on the lab hosts: cosign and podman on `node` (podman under the
policy.json roles/registry_client wrote), the engine's own command on the
registry host.
"""

from __future__ import annotations

import hashlib
import json
import shlex
import sys
from pathlib import Path

import pytest
import yaml

REGISTRY = "registry:443"
CERTS = f"/etc/containers/certs.d/{REGISTRY}"
COSIGN_TLS = (
    f"--registry-cacert {CERTS}/ca.crt --registry-client-cert {CERTS}/client.cert "
    f"--registry-client-key {CERTS}/client.key"
)
KEYS_DIR = "/etc/airgapped-registry/signing"
CONFIG = "/etc/airgapped-registry/provenance.yaml"
NODE_KEYS = "/etc/containers/keys/airgapped-registry"
STATE = "/var/lib/airgapped-registry"
# podman with its own storage, as the upgrade scenario's pull loop runs it (the lab
# containers have no overlay for podman's default one).
PODMAN = (
    "podman --storage-driver vfs --root /root/provenance/storage --runroot /root/provenance/run"
)


def keys_json(registry):
    return json.loads(registry.check_output(f"cat {KEYS_DIR}/keys.json"))


def served_digests(registry):
    """(repository, digest) of every manifest the registry serves from its lock: each
    entry's digest and each platform manifest it copied."""
    lock = json.loads(registry.check_output(f"cat {STATE}/relay.lock"))
    digests = set()
    for entry in lock["entries"]:
        digests.add((entry["destination"], entry["digest"]))
        for child in entry.get("children", []):
            if child.get("copy", True):
                digests.add((entry["destination"], child["digest"]))
    return sorted(digests)


def cosign_verify(node, key, repository, digest):
    return node.run(
        f"cosign verify --key {key} --insecure-ignore-tlog {COSIGN_TLS} "
        f"{REGISTRY}/{repository}@{digest}"
    )


def podman_pull(node, reference):
    node.run(f"{PODMAN} rmi -f {reference}")
    return node.run(f"{PODMAN} pull -q {reference}")


def push_unsigned(node, repository, text, cert_dir=None):
    """An image built on the node and pushed with its own client certificate, or the
    identity in ``cert_dir`` (the gate lets the node's, a pusher's, push into the
    landing zones only: a protected repository takes an admin's, `identities`)."""
    dest_certs = f"--dest-cert-dir {cert_dir} " if cert_dir else ""
    ran = node.run(
        "set -e; rm -rf /root/unsigned /root/uh; "
        "B='buildah --storage-driver vfs --root /root/uh/root --runroot /root/uh/run'; "
        f"c=$($B from scratch); printf {shlex.quote(text)} > /root/unsigned.txt; "
        "$B copy $c /root/unsigned.txt /unsigned.txt >/dev/null; "
        "$B commit -q --format oci $c oci:/root/unsigned:v1 >/dev/null; $B rm $c >/dev/null; "
        f"skopeo copy -q --preserve-digests --digestfile /root/unsigned.digest {dest_certs}"
        f"oci:/root/unsigned:v1 docker://{REGISTRY}/{repository}:v1; cat /root/unsigned.digest"
    )
    assert ran.rc == 0, ran.stderr
    return ran.stdout.strip()


@pytest.fixture(scope="module")
def registry(hosts):
    return hosts["registry"]


@pytest.fixture(scope="module")
def node(hosts):
    return hosts["node"]


def test_keys_and_password_are_private(registry):
    keys = registry.file(KEYS_DIR)
    assert keys.is_directory and keys.mode == 0o700 and keys.user == "root"
    password = registry.file(f"{KEYS_DIR}/password")
    assert password.mode == 0o600 and password.user == "root" and password.size > 0
    listed = keys_json(registry)["keys"]
    assert [key["state"] for key in listed].count("active") == 1
    for key in listed:
        private = registry.file(f"{KEYS_DIR}/cosign-{key['id']}.key")
        assert private.mode == 0o600 and private.user == "root"
        assert "ENCRYPTED" in private.content_string
        assert registry.file(f"{KEYS_DIR}/cosign-{key['id']}.pub").exists


def test_the_signing_identity_is_installed_for_the_gateway(registry):
    identity = registry.file("/etc/airgapped-registry/appliance")
    assert identity.is_directory and identity.mode == 0o700
    assert registry.file("/etc/airgapped-registry/appliance/client.key").mode == 0o600
    subject = registry.check_output(
        "openssl x509 -noout -subject -in /etc/airgapped-registry/appliance/client.cert"
    )
    assert "CN=appliance" in subject.replace(" ", "") and "OU=pusher" in subject.replace(" ", "")


def test_the_password_is_in_no_log(registry):
    password = registry.check_output(f"cat {KEYS_DIR}/password")
    assert len(password) >= 8
    quoted = shlex.quote(password)
    # grep -r exits 1 when nothing matched anywhere.
    assert registry.run(f"grep -rlF -- {quoted} /var/log").rc == 1
    journal = registry.run(f"journalctl --no-pager -o cat | grep -cF -- {quoted}")
    assert journal.stdout.strip() == "0"


def test_the_node_trusts_the_published_public_keys(registry, node):
    published = {
        key["id"] for key in keys_json(registry)["keys"] if key["state"] in ("active", "verifying")
    }
    installed = node.check_output(f"ls {NODE_KEYS}").split()
    assert sorted(installed) == sorted(f"cosign-{key}.pub" for key in published)
    for key in published:
        assert (
            node.file(f"{NODE_KEYS}/cosign-{key}.pub").content_string
            == registry.file(f"{KEYS_DIR}/cosign-{key}.pub").content_string
        )


def test_the_node_policy_requires_signatures_for_the_registry_only(node):
    policy = json.loads(node.check_output("cat /etc/containers/policy.json"))
    # Other registries: the node's own default, kept.
    assert policy["default"] == [{"type": "insecureAcceptAnything"}]
    (requirement,) = policy["transports"]["docker"][REGISTRY]
    assert requirement["type"] == "sigstoreSigned"
    assert requirement["signedIdentity"] == {"type": "matchRepository"}
    attachments = node.check_output("cat /etc/containers/registries.d/airgapped-registry.yaml")
    assert "use-sigstore-attachments: true" in attachments and REGISTRY in attachments


def test_every_mirrored_digest_verifies_with_cosign_on_the_node(registry, node):
    (active,) = [key["id"] for key in keys_json(registry)["keys"] if key["state"] == "active"]
    digests = served_digests(registry)
    assert len(digests) >= 10
    failed = []
    for repository, digest in digests:
        ran = cosign_verify(node, f"{NODE_KEYS}/cosign-{active}.pub", repository, digest)
        if ran.rc != 0:
            failed.append(f"{repository}@{digest}: {ran.stderr.strip()[-300:]}")
    assert not failed, "\n".join(failed)


def test_a_mirrored_image_pulls_under_the_policy(registry, node):
    lock = json.loads(registry.check_output(f"cat {STATE}/relay.lock"))
    entry = next(e for e in lock["entries"] if e["destination"] == "sample/base")
    pulled = podman_pull(node, f"{REGISTRY}/sample/base:{entry['tag']}")
    assert pulled.rc == 0, pulled.stderr
    by_digest = podman_pull(node, f"{REGISTRY}/sample/base@{entry['digest']}")
    assert by_digest.rc == 0, by_digest.stderr


def test_the_node_policy_accepts_the_landing_zones_unsigned(node):
    policy = json.loads(node.check_output("cat /etc/containers/policy.json"))
    assert policy["transports"]["docker"][f"{REGISTRY}/ci"] == [{"type": "insecureAcceptAnything"}]


# An unsigned image refused by the node's policy alone (the gate serving it) is in
# test_gate.py, which can make the gate serve one.


def test_the_nightly_run_signs_and_reports_it(registry):
    reports = STATE + "/nightly"
    sign = json.loads(registry.check_output(f"cat {reports}/sign.json"))
    scan_db = json.loads(registry.check_output(f"cat {reports}/scan-db.json"))
    assert isinstance(sign, dict) and isinstance(scan_db, dict)
    # Signed already: a second signing changes nothing.
    again = json.loads(
        registry.check_output(f"airgap sign --config {CONFIG} --lock {STATE}/relay.lock")
    )
    assert again["signed"] == 0 and again["failed"] == 0 and again["skipped"] > 0


def test_trivy_is_the_controllers_binary(registry):
    controller = Path(sys.executable).with_name("trivy")
    digest = hashlib.sha256(controller.read_bytes()).hexdigest()
    installed = registry.file("/usr/local/libexec/airgapped-registry/trivy")
    assert installed.mode == 0o755 and installed.sha256sum == digest
    assert registry.file("/var/lib/airgapped-registry/trivy").mode == 0o750


def test_the_provenance_configuration_names_the_contracts_paths(registry):
    config = yaml.safe_load(registry.file(CONFIG).content_string)
    assert (
        config["version"] == 1 and config["backend"] == "unix:///run/docker-registry/registry.sock"
    )
    assert config["signing"]["registry"] == REGISTRY
    assert config["signing"]["keys_dir"] == KEYS_DIR
    assert config["signing"]["cert_file"] == "/etc/airgapped-registry/appliance/client.cert"
    assert config["scanning"]["trivy"] == "/usr/local/libexec/airgapped-registry/trivy"
    assert config["scanning"]["listen"] == "127.0.0.1:5060"
    assert config["scanning"]["policy"]["default"] == {"fail_on": "CRITICAL"}


def test_distribution_notifies_the_scan_service_of_pushes(registry):
    config = yaml.safe_load(registry.file("/etc/docker/registry/config.yml").content_string)
    (endpoint,) = config["notifications"]["endpoints"]
    assert endpoint["url"] == "http://127.0.0.1:5060/events"
    assert endpoint["ignore"]["actions"] == ["pull"]


def test_the_scan_service_runs(registry):
    service = registry.service("airgap-scanner")
    assert service.is_enabled and service.is_running
    health = registry.run("curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:5060/healthz")
    assert health.stdout == "200"


def test_every_mirrored_digest_has_a_verdict(registry):
    """site.yml ends when the scan service has judged everything served."""
    status = json.loads(registry.check_output(f"airgap scan status --config {CONFIG}"))
    verdicts = {(v["repository"], v["digest"]): v for v in status["verdicts"]}
    judged = set(verdicts) | {
        (v["repository"], child) for v in status["verdicts"] for child in v.get("children", [])
    }
    missing = [f"{r}@{d}" for r, d in served_digests(registry) if (r, d) not in judged]
    assert not missing, missing
    assert status["db"]["stale"] is False
    vulnerable = [v for (repo, _), v in verdicts.items() if repo == "sample/vulnerable"]
    assert vulnerable and all(v["status"] == "fail" for v in vulnerable)
    images = [v for (repo, _), v in verdicts.items() if repo.startswith("sample/app-")]
    assert images and all(v["status"] == "pass" for v in images)
