"""Every lab host is a systemd machine built from the offline base image."""

from __future__ import annotations

import pytest

HOSTS = ["upstream", "relay", "registry", "node"]
# What the roles expect to find installed on hosts with no package source.
TOOLS = ["docker-registry", "nginx", "skopeo", "cosign", "oras", "podman", "buildah", "python3"]


@pytest.mark.parametrize("name", HOSTS)
def test_systemd_is_running(hosts, name):
    state = hosts[name].run("systemctl is-system-running").stdout.strip()
    failed = hosts[name].run("systemctl --failed --no-legend --plain").stdout
    assert state == "running", failed


@pytest.mark.parametrize("name", HOSTS)
def test_tools_are_installed(hosts, name):
    for tool in TOOLS:
        assert hosts[name].exists(tool), tool


@pytest.mark.parametrize("name", HOSTS)
def test_no_package_source(hosts, name):
    """Like an isolated site without an internal apt mirror."""
    listed = hosts[name].run("cat /etc/apt/sources.list /etc/apt/sources.list.d/* 2>/dev/null")
    assert listed.stdout.strip() == ""


def test_hosts_run_the_lab_image(containers):
    images = {info["Config"]["Image"] for info in containers.values()}
    assert len(images) == 1
    assert next(iter(images)).startswith("airgapped-registry/lab-base:")
