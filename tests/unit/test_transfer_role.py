"""roles/mirror's transfer keys (tasks/transfer.yml) run by ansible-playbook against two
"hosts" on this machine, a relay and a registry host, each with its own paths in a temporary
directory, and the real engine's ``airgap transfer-key``.

Check mode on new hosts, apply, apply again, check again (community.docker's sequence); then
what the trusted directories hold, a stray key removed, and a host whose peer's public key
is not on the controller stopped with a message naming it. The lab runs the same tasks on
real hosts (molecule/default/tests/test_transfer.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from airgapped_registry.transfer import init_key, public_path

PROJECT = Path(__file__).resolve().parents[2]
ANSIBLE_PLAYBOOK = Path(sys.executable).with_name("ansible-playbook")
AIRGAP = Path(sys.executable).with_name("airgap")
HOSTS = ("relay", "registry")


def site(tmp_path: Path, extra: Path) -> Path:
    """The inventory (two local hosts) and the play including the role's task file."""
    hosts = {
        name: {
            "transfer_key": str(tmp_path / name / "state" / "transfer" / "transfer.key"),
            "transfer_trusted_dir": str(tmp_path / name / "etc" / "transfer" / "trusted"),
        }
        for name in HOSTS
    }
    inventory = {
        "all": {
            "vars": {
                "ansible_connection": "local",
                "ansible_python_interpreter": sys.executable,
                "mirror_airgap_command": str(AIRGAP),
                "transfer_public_keys_dir": str(tmp_path / "controller" / "transfer-keys"),
                "transfer_trusted_keys_extra": [str(extra)],
            },
            "children": {
                "relays": {"hosts": {"relay": hosts["relay"]}},
                "registries": {"hosts": {"registry": hosts["registry"]}},
            },
        }
    }
    (tmp_path / "hosts.yml").write_text(yaml.safe_dump(inventory))
    play = [
        {
            "hosts": "relays:registries",
            "gather_facts": False,
            "tasks": [
                {
                    "name": "Transfer keys",
                    "ansible.builtin.include_role": {"name": "mirror", "tasks_from": "transfer"},
                }
            ],
        }
    ]
    (tmp_path / "site.yml").write_text(yaml.safe_dump(play))
    return tmp_path / "site.yml"


def converge(tmp_path: Path, *args: str) -> tuple[int, dict]:
    """Run the play; (exit status, the ansible.posix.json report)."""
    done = subprocess.run(
        [
            str(ANSIBLE_PLAYBOOK),
            "-i",
            str(tmp_path / "hosts.yml"),
            str(tmp_path / "site.yml"),
            *args,
        ],
        env={
            **os.environ,
            "ANSIBLE_CONFIG": str(PROJECT / "ansible.cfg"),
            "ANSIBLE_STDOUT_CALLBACK": "ansible.posix.json",
        },
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    try:
        return done.returncode, json.loads(done.stdout)
    except json.JSONDecodeError:
        raise AssertionError(
            f"no JSON from ansible-playbook:\n{done.stdout}{done.stderr}"
        ) from None


def changed(report: dict) -> dict[str, int]:
    return {host: stats["changed"] for host, stats in report["stats"].items()}


def failures(report: dict) -> dict[str, str]:
    return {
        host: result.get("msg", "")
        for play in report["plays"]
        for task in play["tasks"]
        for host, result in task["hosts"].items()
        if result.get("failed")
    }


def test_check_apply_again_and_what_each_side_trusts(tmp_path: Path) -> None:
    extra_key = tmp_path / "exporter" / "transfer.key"
    init_key(extra_key)
    site(tmp_path, public_path(extra_key))

    status, check = converge(tmp_path, "--check")
    assert status == 0, failures(check)
    assert not (tmp_path / "relay").exists() and not (tmp_path / "registry").exists()

    status, applied = converge(tmp_path)
    assert status == 0, failures(applied)
    assert all(count > 0 for count in changed(applied).values()), changed(applied)
    status, again = converge(tmp_path)
    assert (status, changed(again)) == (0, {"relay": 0, "registry": 0}), failures(again)
    status, check = converge(tmp_path, "--check")
    assert (status, changed(check)) == (0, {"relay": 0, "registry": 0}), failures(check)

    keys = {name: tmp_path / name / "state" / "transfer" / "transfer.key" for name in HOSTS}
    trusted = {name: tmp_path / name / "etc" / "transfer" / "trusted" for name in HOSTS}
    controller = tmp_path / "controller" / "transfer-keys"
    for name, key in keys.items():
        assert key.stat().st_mode & 0o777 == 0o600
        assert (controller / f"{name}.pub").read_bytes() == public_path(key).read_bytes()
    # The registry host trusts the relay and the extra key, the relay the registry host.
    assert sorted(p.name for p in trusted["registry"].iterdir()) == [
        "extra-transfer.pub",
        "relay.pub",
    ]
    assert (trusted["registry"] / "relay.pub").read_bytes() == public_path(
        keys["relay"]
    ).read_bytes()
    assert (trusted["registry"] / "extra-transfer.pub").read_bytes() == public_path(
        extra_key
    ).read_bytes()
    assert sorted(p.name for p in trusted["relay"].iterdir()) == ["registry.pub"]
    assert (trusted["relay"] / "registry.pub").read_bytes() == public_path(
        keys["registry"]
    ).read_bytes()

    # A key put there by hand is not trusted past the next converge; the private keys stay.
    private = keys["relay"].read_bytes()
    (trusted["registry"] / "stray.pub").write_bytes(public_path(extra_key).read_bytes())
    status, applied = converge(tmp_path)
    assert (status, changed(applied)) == (0, {"relay": 0, "registry": 1}), failures(applied)
    assert not (trusted["registry"] / "stray.pub").exists()
    assert keys["relay"].read_bytes() == private


def test_a_peer_key_missing_on_the_controller_stops_the_host(tmp_path: Path) -> None:
    extra_key = tmp_path / "exporter" / "transfer.key"
    init_key(extra_key)
    site(tmp_path, public_path(extra_key))
    status, report = converge(tmp_path, "--limit", "registry")
    assert status != 0
    (message,) = failures(report).values()
    missing = tmp_path / "controller" / "transfer-keys" / "relay.pub"
    assert message.startswith(f"registry trusts the transfer keys in {missing}, which are not")
    assert not (tmp_path / "registry" / "etc" / "transfer" / "trusted").exists()


def test_a_relay_without_the_registry_hosts_key_is_warned_not_stopped(tmp_path: Path) -> None:
    # A registry host bootstrapped from a drive has no key until it is converged: the relay
    # side must converge before that (molecule/offline does), trusting nobody yet.
    extra_key = tmp_path / "exporter" / "transfer.key"
    init_key(extra_key)
    site(tmp_path, public_path(extra_key))
    status, report = converge(tmp_path, "--limit", "relay")
    assert status == 0, failures(report)
    assert (tmp_path / "controller" / "transfer-keys" / "relay.pub").is_file()
    assert list((tmp_path / "relay" / "etc" / "transfer" / "trusted").iterdir()) == []
    (warned,) = [
        result
        for play in report["plays"]
        for task in play["tasks"]
        if "Say which registry hosts" in task["task"]["name"]
        for host, result in task["hosts"].items()
        if host == "relay"
    ]
    assert warned.get("results") and not warned["results"][0].get("skipped"), warned
    missing = tmp_path / "controller" / "transfer-keys" / "registry.pub"
    assert str(missing) in warned["results"][0]["msg"]
