"""The airgap_lab inventory plugin: one lab definition, concrete hosts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parents[2]
ANSIBLE_INVENTORY = Path(sys.executable).parent / "ansible-inventory"


def inventory(path: Path, prefix: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "ANSIBLE_CONFIG": str(PROJECT / "ansible.cfg")}
    env.pop("AIRGAP_LAB_PREFIX", None)
    if prefix is not None:
        env["AIRGAP_LAB_PREFIX"] = prefix
    return subprocess.run(
        [str(ANSIBLE_INVENTORY), "--list", "-i", str(path)],
        env=env,
        capture_output=True,
        text=True,
        cwd=PROJECT,
    )


def plain(value):
    if isinstance(value, dict):
        if set(value) == {"__ansible_unsafe"}:
            return value["__ansible_unsafe"]
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


def test_lab_definition_yields_docker_hosts_under_the_prefix():
    result = inventory(PROJECT / "inventories" / "lab", prefix="agrunit")
    assert result.returncode == 0, result.stderr
    data = plain(json.loads(result.stdout))
    hostvars = data["_meta"]["hostvars"]
    assert set(hostvars) == {"upstream", "relay", "registry", "node"}
    assert hostvars["node"]["ansible_host"] == "agrunit-node"
    assert hostvars["node"]["ansible_connection"] == "community.docker.docker"
    lab_hosts = hostvars["node"]["lab_hosts"]
    assert {name: spec["egress"] for name, spec in lab_hosts.items()} == {
        "upstream": True,
        "relay": True,
        "registry": False,
        "node": False,
    }
    networks = hostvars["node"]["lab_networks"]
    assert networks["vlan"] == {"name": "agrunit-vlan", "internal": True}
    assert networks["upstream"]["internal"] is False
    assert data["registries"]["hosts"] == ["registry"]
    assert data["sample_upstreams"]["hosts"] == ["upstream"]


def test_default_prefix_is_agr():
    result = inventory(PROJECT / "inventories" / "lab")
    assert result.returncode == 0, result.stderr
    assert (
        plain(json.loads(result.stdout))["_meta"]["hostvars"]["relay"]["ansible_host"]
        == "agr-relay"
    )


@pytest.mark.parametrize(
    ("definition", "message"),
    [
        (
            "networks: {dmz: {}}\nhosts: {relay: {networks: [wan]}}",
            "hosts.relay: unknown network(s) wan",
        ),
        ("networks: {dmz: {}}\nhosts: {relay: {networks: []}}", "hosts.relay: names no network"),
        (
            "networks: {dmz: {}}\nhosts: {Relay_1: {networks: [dmz]}}",
            "hosts.Relay_1: not a valid host name",
        ),
    ],
)
def test_bad_definition_is_refused_with_the_cause(tmp_path, definition, message):
    path = tmp_path / "lab.yml"
    path.write_text(f"plugin: airgap_lab\n{definition}\n")
    env_result = inventory(path)
    assert message in env_result.stderr


def test_bad_prefix_is_refused(tmp_path):
    result = inventory(PROJECT / "inventories" / "lab", prefix="Bad_Prefix")
    assert "prefix 'Bad_Prefix'" in result.stderr
