"""Fixtures for the offline scenario: hosts from its own lab definition
(molecule/offline/inventory) under the prefix molecule converged with, and the
drive converge.yml prepared on the controller."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import testinfra

SCENARIO = Path(__file__).resolve().parents[1]
PROJECT = SCENARIO.parents[1]
STATE = "/var/lib/airgapped-registry"


@pytest.fixture(scope="session")
def hosts():
    """testinfra hosts by lab name (upstream, relay, registry)."""
    out = subprocess.run(
        ["ansible-inventory", "--list", "-i", str(SCENARIO / "inventory")],
        cwd=PROJECT,
        env={**os.environ, "ANSIBLE_CONFIG": str(PROJECT / "ansible.cfg")},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    hostvars = json.loads(out)["_meta"]["hostvars"]
    return {
        name: testinfra.get_host(f"docker://{_plain(spec['ansible_host'])}")
        for name, spec in hostvars.items()
    }


def _plain(value):
    """ansible-inventory marks strings as unsafe ({"__ansible_unsafe": s})."""
    return value["__ansible_unsafe"] if isinstance(value, dict) else value


@pytest.fixture(scope="session")
def drive():
    """The drive as playbooks/drive.yml and the converge wrote it on the controller."""
    return Path(os.environ["AIRGAP_TEST_DRIVE"])


def lock_of(host, path):
    return json.loads(host.check_output(f"cat {path}"))


def bundle_files(bundle: Path) -> dict[str, str]:
    """path -> sha256 of every file a bundle's signed manifest lists."""
    manifest = json.loads((bundle / "MANIFEST.json").read_text())
    return {f["path"]: f["sha256"] for f in manifest["files"]}


@pytest.fixture(scope="session")
def reader(hosts):
    """The CA's `reader` identity (a puller) as a skopeo cert dir on the registry host."""
    ca_dir = Path("/var/lib/airgapped-registry") / os.environ["AIRGAP_LAB_PREFIX"] / "ca"
    container = hosts["registry"].backend.name
    target = "/root/reader"
    hosts["registry"].check_output(f"rm -rf {target} && mkdir -p {target}")
    for source, dest in (
        (ca_dir / "ca-bundle.crt", "ca.crt"),
        (ca_dir / "clients" / "reader.crt", "client.cert"),
        (ca_dir / "clients" / "reader.key", "client.key"),
    ):
        subprocess.run(
            ["docker", "cp", "-q", str(source), f"{container}:{target}/{dest}"], check=True
        )
    return target
