"""A registry host that never saw a network, bootstrapped from a drive, then
brought forward by a delta (molecule/offline/converge.yml, docs/offline.md)."""

from __future__ import annotations

import json

import pytest
from conftest import STATE, bundle_files, lock_of

TLS = (
    "--ca-file /etc/airgapped-registry/sync/ca.crt "
    "--cert-file /etc/airgapped-registry/sync/client.cert "
    "--key-file /etc/airgapped-registry/sync/client.key"
)
CONFIG = "/etc/airgapped-registry/provenance.yaml"
DRIVE_PACKAGES = [
    "docker-registry",
    "nginx",
    "skopeo",
    "cosign",
    "python3-yaml",
    "python3-cryptography",
]
VERIFY = f"airgap verify --lock {STATE}/relay.lock --registry https://registry:443 {TLS}"


def entries(lock):
    return {(e["destination"], e["tag"], e["digest"]) for e in lock["entries"]}


def test_registry_host_has_no_route_and_no_package_source(hosts):
    registry = hosts["registry"]
    assert registry.check_output("ip -4 route show default") == ""
    assert registry.run("timeout 5 bash -c 'exec 3<>/dev/tcp/relay/443'").rc != 0
    sources = registry.check_output(
        "cat /etc/apt/sources.list /etc/apt/sources.list.d/* 2>/dev/null | grep -v '^#' || true"
    )
    assert sources.strip() == ""
    assert registry.check_output("ls /var/lib/apt/lists | grep -c _debs_ || true") == "0"


@pytest.mark.parametrize("package", DRIVE_PACKAGES)
def test_appliance_packages_came_from_the_drive(hosts, drive, package):
    """create.yml purged them; apt installed them again from the drive's repository
    alone (its history names the bootstrap's private source list), at the drive's
    versions."""
    registry = hosts["registry"]
    history = registry.file("/var/log/apt/history.log").content_string.split("\n\n")
    runs = [run for run in history if "airgapped-registry-drive-apt/sources.list" in run]
    installed = " ".join(
        line for run in runs for line in run.splitlines() if line.startswith("Install:")
    )
    assert f"{package}:" in installed, runs
    index = (drive / "debs" / "Packages").read_text().split("\n\n")
    stanza = next(s for s in index if s.startswith(f"Package: {package}\n"))
    fields = dict(line.split(": ", 1) for line in stanza.splitlines() if ": " in line)
    assert registry.check_output(f"dpkg-query -W -f '${{Version}}' {package}") == fields["Version"]


def test_drive_checksums_hold(drive):
    listed = {line.split("  ", 1)[1] for line in (drive / "SHA256SUMS").read_text().splitlines()}
    assert {"./tools/trivy", "./controller/airgapped-registry.tar.gz", "./debs/Packages"} <= listed
    assert any(p.startswith("./engine/airgapped_registry-") for p in listed)
    assert any(p.startswith("./controller/wheels/ansible_core-") for p in listed)
    assert any(p.startswith("./bundles/full-seed/blobs/sha256/") for p in listed)


def test_nightly_job_is_off_without_a_relay(hosts):
    assert not hosts["registry"].file("/etc/cron.d/airgapped-registry-sync").exists


def test_registry_serves_the_relays_current_lock(hosts):
    """The delta brought the registry to the relay's lock after the upstream change."""
    registry = hosts["registry"]
    ran = registry.run(VERIFY)
    assert ran.rc == 0, ran.stdout + ran.stderr
    assert entries(lock_of(registry, f"{STATE}/relay.lock")) == entries(
        lock_of(hosts["relay"], f"{STATE}/mirror.lock")
    )


def test_the_delta_held_only_new_content(drive):
    seed = bundle_files(drive / "bundles" / "full-seed")
    delta = bundle_files(drive / "bundles" / "delta-1")
    seed_blobs = {p for p in seed if p.startswith("blobs/")}
    delta_blobs = {p for p in delta if p.startswith("blobs/")}
    assert delta_blobs, "the upstream change brought nothing"
    assert not delta_blobs & seed_blobs
    # The base layer changed, the application layers did not: far smaller.
    size = lambda b: sum(f["size"] for f in json.loads((b / "MANIFEST.json").read_text())["files"])  # noqa: E731
    assert size(drive / "bundles" / "delta-1") < size(drive / "bundles" / "full-seed") / 2


def test_a_tampered_bundle_was_refused_before_any_push(drive):
    tampered = json.loads((drive.parent / "tampered.json").read_text())
    assert int(tampered["rc"]) != 0
    assert tampered["blob"] in tampered["output"]
    before = json.loads((drive / "inventory.json").read_text())
    after = json.loads((drive / "inventory-after-tampered.json").read_text())
    assert (after["manifests"], after["blobs"]) == (before["manifests"], before["blobs"])


def test_every_served_digest_is_signed_and_judged(hosts):
    registry = hosts["registry"]
    lock = lock_of(registry, f"{STATE}/relay.lock")
    for entry in lock["entries"]:
        reference = f"{entry['destination']}@{entry['digest']}"
        ran = registry.run(f"airgap signature verify --config {CONFIG} {reference}")
        assert ran.rc == 0, f"{reference}: {ran.stdout}{ran.stderr}"
    status = json.loads(registry.check_output(f"airgap scan status --config {CONFIG}"))
    assert status["queue"] == 0 and status["db"]["stale"] is False
    verdicts = {(v["repository"], v["digest"]): v for v in status["verdicts"]}
    judged = set(verdicts) | {
        (v["repository"], child) for v in status["verdicts"] for child in v.get("children", [])
    }
    unjudged = [e for e in lock["entries"] if (e["destination"], e["digest"]) not in judged]
    assert not unjudged, unjudged
    by_repo = {}
    for (repository, _), verdict in verdicts.items():
        by_repo.setdefault(repository, set()).add(verdict["status"])
    assert by_repo["sample/vulnerable"] == {"fail"}
    assert by_repo["sample/app-001"] == {"pass"}


def test_the_gate_enforces(hosts, reader):
    """As a puller through the gateway: the signed, passing image is served, the
    vulnerable one refused."""
    registry = hosts["registry"]
    lock = lock_of(registry, f"{STATE}/relay.lock")
    app = next(e for e in lock["entries"] if e["destination"] == "sample/app-001")
    vulnerable = next(e for e in lock["entries"] if e["destination"] == "sample/vulnerable")
    inspect = f"skopeo inspect --raw --cert-dir {reader} docker://registry:443"
    served = registry.run(f"{inspect}/{app['destination']}@{app['digest']}")
    assert served.rc == 0, served.stderr
    refused = registry.run(f"{inspect}/{vulnerable['destination']}@{vulnerable['digest']}")
    assert refused.rc != 0 and "failed the scan" in refused.stderr, refused.stderr
    assert "CVE-2099-0001" in refused.stderr
