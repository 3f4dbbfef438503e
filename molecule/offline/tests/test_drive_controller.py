"""The drive's Ansible content works on a controller that cannot reach any
network (docs/offline.md, "Day one", step 1): on this controller, in a network
namespace with loopback alone, a fresh venv of Debian's python3 installs
requirements.lock from the drive's wheels, and the unpacked project runs."""

from __future__ import annotations

import hashlib
import json
import subprocess
import tarfile

import pytest
from conftest import PROJECT

# The interpreter the drive's wheels are for (docs/offline.md): Debian's, as
# scripts/bootstrap builds the connected controller's venv with.
PYTHON = "/usr/bin/python3"
COLLECTIONS = ("community.crypto", "community.docker")

# Each step writes its output and exit code beside the others, so one
# namespace run serves every test and a failure shows the step's own output.
SCRIPT = r"""
set -u
step() {
  name=$1; shift
  "$@" > "$out/$name.log" 2>&1
  echo $? > "$out/$name.rc"
}
ip -o link show > "$out/links.log" 2>&1
mkdir -p "$work/project" "$work/home"
step unpack tar --extract --gzip --file "$drive/controller/airgapped-registry.tar.gz" \
  --directory "$work/project"
step venv "$python" -m venv "$work/venv"
step install "$work/venv/bin/pip" install --quiet --no-index --disable-pip-version-check \
  --find-links "$drive/controller/wheels" --require-hashes \
  -r "$work/project/requirements.lock"
cd "$work/project"
export PATH="$work/venv/bin:/usr/sbin:/usr/bin:/sbin:/bin" HOME="$work/home"
export ANSIBLE_CONFIG="$work/project/ansible.cfg"
step site ansible-playbook --syntax-check --inventory localhost, site.yml
step bootstrap ansible-playbook --syntax-check --inventory localhost, \
  playbooks/bootstrap-offline.yml
step collections ansible-galaxy collection list --format json
"""


@pytest.fixture(scope="session")
def isolated(drive, tmp_path_factory):
    """Runs the isolated controller's steps with no network; step name -> (rc, output)."""
    out = tmp_path_factory.mktemp("isolated-out")
    work = tmp_path_factory.mktemp("isolated-controller")
    # A clean environment: molecule's ANSIBLE_* would point at this tree.
    env = {
        "out": str(out),
        "work": str(work),
        "drive": str(drive),
        "python": PYTHON,
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        "LANG": "C.UTF-8",
        # The isolated controller has no pip configuration of this one.
        "PIP_CONFIG_FILE": "/dev/null",
    }
    subprocess.run(
        ["unshare", "--net", "--", "bash", "-c", SCRIPT],
        env=env,
        check=True,
        timeout=300,
    )
    results = {"links": (0, (out / "links.log").read_text())}
    for log in out.glob("*.rc"):
        name = log.stem
        results[name] = (int(log.read_text()), (out / f"{name}.log").read_text())
    return results


def test_the_namespace_has_no_network(isolated):
    links = isolated["links"][1].splitlines()
    assert [line.split(":")[1].strip() for line in links] == ["lo"], links


@pytest.mark.parametrize("step", ["unpack", "venv", "install", "site", "bootstrap"])
def test_isolated_controller_step_succeeds(isolated, step):
    rc, output = isolated[step]
    assert rc == 0, f"{step} failed with no network (exit {rc}):\n{output}"


def test_collections_come_with_the_ansible_package(isolated):
    rc, output = isolated["collections"]
    assert rc == 0, output
    listing = json.loads(output[output.index("{") :])
    found = {name: path for path, names in listing.items() for name in names}
    for collection in COLLECTIONS:
        assert collection in found, f"{collection} not installed from the drive: {found}"
        assert "/venv/" in found[collection], found[collection]


def test_archive_is_this_tree(drive):
    """The archive holds the bootstrap playbook and exactly this tree's engine."""
    with tarfile.open(drive / "controller" / "airgapped-registry.tar.gz") as archive:
        members = {
            m.name.removeprefix("./"): archive.extractfile(m).read()
            for m in archive.getmembers()
            if m.isfile()
        }
    assert "playbooks/bootstrap-offline.yml" in members
    assert "requirements.lock" in members
    tracked = subprocess.run(
        ["git", "ls-files", "src"], cwd=PROJECT, capture_output=True, text=True, check=True
    ).stdout.split()
    assert tracked
    archived = sorted(name for name in members if name.startswith("src/"))
    assert archived == sorted(tracked)
    for name in tracked:
        expected = hashlib.sha256((PROJECT / name).read_bytes()).hexdigest()
        assert hashlib.sha256(members[name]).hexdigest() == expected, name
