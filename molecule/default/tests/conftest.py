"""Fixtures for verifying the lab: hosts come from the lab inventory itself.

The hosts are resolved with ``ansible-inventory`` against ``inventories/lab``
under the same ``AIRGAP_LAB_PREFIX`` molecule converged with, so these tests
check exactly the containers the scenario created. The project's playbooks run
through the inventory the scenario converged with: the lab's, or the plain
static one of molecule/realsite (``AIRGAP_TEST_INVENTORY``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import testinfra
import yaml

from airgap_lab.sample import spec_fields

PROJECT = Path(__file__).resolve().parents[3]
# The inventory site.yml converged with (the hosts themselves always come from the lab's
# definition, which made the containers).
INVENTORY = os.environ.get("AIRGAP_TEST_INVENTORY") or str(PROJECT / "inventories" / "lab")


def _plain(value):
    """ansible-inventory marks strings as unsafe ({"__ansible_unsafe": s})."""
    if isinstance(value, dict):
        if set(value) == {"__ansible_unsafe"}:
            return value["__ansible_unsafe"]
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


@pytest.fixture(scope="session")
def lab():
    """The lab definition as the inventory plugin resolves it."""
    out = subprocess.run(
        [
            shutil.which("ansible-inventory") or "ansible-inventory",
            "--list",
            "-i",
            str(PROJECT / "inventories" / "lab"),
        ],
        cwd=PROJECT,
        env={**os.environ, "ANSIBLE_CONFIG": str(PROJECT / "ansible.cfg")},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    inventory = _plain(json.loads(out))
    any_host = next(iter(inventory["_meta"]["hostvars"].values()))
    return {
        "prefix": any_host["lab_prefix"],
        "hosts": any_host["lab_hosts"],
        "networks": any_host["lab_networks"],
        "groups": {g: v.get("hosts", []) for g, v in inventory.items() if g != "_meta"},
    }


@pytest.fixture(scope="session")
def hosts(lab):
    """testinfra hosts by lab name (upstream, relay, registry, node)."""
    return {
        name: testinfra.get_host(f"docker://{spec['container']}")
        for name, spec in lab["hosts"].items()
    }


@pytest.fixture(scope="session")
def containers(lab):
    """`docker inspect` of every lab host's container, by lab name."""
    names = [spec["container"] for spec in lab["hosts"].values()]
    out = subprocess.run(
        ["docker", "inspect", *names], capture_output=True, text=True, check=True
    ).stdout
    return dict(zip(lab["hosts"], json.loads(out), strict=True))


@pytest.fixture(scope="session")
def addresses(lab, containers):
    """IPv4 address of every lab host in every zone it sits in."""
    return {
        name: {
            zone: containers[name]["NetworkSettings"]["Networks"][lab["networks"][zone]["name"]][
                "IPAddress"
            ]
            for zone in spec["networks"]
        }
        for name, spec in lab["hosts"].items()
    }


@pytest.fixture(scope="session")
def sample_params():
    """The sample upstream's parameters as the role converged them."""
    defaults = yaml.safe_load(
        (PROJECT / "roles" / "sample_upstream" / "defaults" / "main.yml").read_text()
    )
    # The role's variables that are SampleSpec fields, whatever else the role grows.
    fields = {field.name for field in spec_fields()}
    params = {key.removeprefix("sample_upstream_"): value for key, value in defaults.items()}
    return {name: value for name, value in params.items() if name in fields}


@pytest.fixture(scope="session")
def package_mirror():
    """Host name of the Debian mirror this machine's apt uses: the only outside
    address an egress probe may try (it must fail from isolated hosts)."""
    out = subprocess.run(
        [str(PROJECT / "roles" / "lab" / "files" / "debian-mirror.sh")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert out, "no Debian source in this machine's apt configuration to probe egress with"
    return out.split("://", 1)[1].split("/", 1)[0].split(":")[0]


def ansible_env():
    return {**os.environ, "ANSIBLE_CONFIG": str(PROJECT / "ansible.cfg")}


@pytest.fixture(scope="session")
def playbook():
    """Runs a playbook of the project against this lab, as an operator would."""

    def run(path, *extra, check=True):
        result = subprocess.run(
            [
                "ansible-playbook",
                "-i",
                INVENTORY,
                str(PROJECT / path),
                *extra,
            ],
            cwd=PROJECT,
            env=ansible_env(),
            capture_output=True,
            text=True,
        )
        if check:
            assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
        return result

    return run


@pytest.fixture(scope="session")
def ansible_vars():
    """Variables of the lab inventory, templated as the plays see them."""
    out = subprocess.run(
        [
            "ansible",
            "localhost",
            "-i",
            INVENTORY,
            "-m",
            "ansible.builtin.debug",
            "-a",
            "msg={{ {'internal_ca_dir': internal_ca_dir,"
            " 'internal_ca_clients': internal_ca_clients,"
            " 'internal_ca_rotation_cron': internal_ca_rotation_cron | default(false),"
            " 'internal_ca_rotation_cron_file': internal_ca_rotation_cron_file"
            " | default('/etc/cron.d/airgapped-registry-rotate-certs'),"
            " 'signing_public_keys_dir': signing_public_keys_dir"
            " | default('/var/lib/airgapped-registry/signing')} | to_json }}",
        ],
        cwd=PROJECT,
        capture_output=True,
        text=True,
        check=True,
        env={
            **ansible_env(),
            "ANSIBLE_LOAD_CALLBACK_PLUGINS": "1",
            "ANSIBLE_STDOUT_CALLBACK": "ansible.posix.json",
        },
    ).stdout
    msg = json.loads(out)["plays"][0]["tasks"][0]["hosts"]["localhost"]["msg"]
    return json.loads(msg) if isinstance(msg, str) else msg


@pytest.fixture(scope="session")
def identities(lab, hosts, ansible_vars):
    """Client identities of the lab's CA besides the node's own, installed on `node` as
    skopeo cert dirs (/root/identities/<name>/{ca.crt,client.cert,client.key}; no ':' in
    the path, so curl takes them too): `reader` (OU puller) and `admin` (OU admin)."""
    node, container = hosts["node"], lab["hosts"]["node"]["container"]
    ca_dir = Path(ansible_vars["internal_ca_dir"])
    dirs = {}
    for name in ("reader", "admin"):
        target = f"/root/identities/{name}"
        node.check_output(f"rm -rf {target} && mkdir -p {target}")
        for source, dest in (
            (ca_dir / "ca-bundle.crt", "ca.crt"),
            (ca_dir / "clients" / f"{name}.crt", "client.cert"),
            (ca_dir / "clients" / f"{name}.key", "client.key"),
        ):
            subprocess.run(
                ["docker", "cp", "-q", str(source), f"{container}:{target}/{dest}"], check=True
            )
        node.check_output(f"chmod 600 {target}/client.key")
        dirs[name] = target
    return dirs
