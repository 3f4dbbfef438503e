"""The zones hold: isolated hosts reach nothing outside, the relay reaches upstream.

Every negative probe has a positive twin from a host that must get through, so
a probe that fails for a reason of its own cannot pass as isolation.
"""

from __future__ import annotations

import ipaddress
import socket
import subprocess
import time
from pathlib import Path

import pytest

PROBE = (Path(__file__).parent / "probe.py").read_text()
ISOLATED = ["registry", "node"]
REACHED = {"open", "refused"}  # a reset comes from the host: it was reached


def probe(host, target, port):
    result = host.run(f"python3 - {target} {port} <<'EOF'\n{PROBE}\nEOF")
    assert result.rc == 0, result.stderr
    return result.stdout.strip()


def dns_answer(host, name):
    """A records the host's resolver returns for name (dig: 2 s, one try)."""
    result = host.run(f"dig +short +time=2 +tries=1 A {name}")
    answers = []
    for line in result.stdout.splitlines():
        try:
            answers.append(str(ipaddress.IPv4Address(line.strip())))
        except ValueError:
            continue  # dig's own comments, e.g. ";; communications error ... timed out"
    return answers


@pytest.fixture(scope="module")
def mirror_address(package_mirror):
    return socket.getaddrinfo(package_mirror, 80, socket.AF_INET)[0][4][0]


@pytest.mark.parametrize("name", ISOLATED)
def test_isolated_host_has_no_default_route(hosts, name, mirror_address):
    assert hosts[name].run("ip -4 route show default").stdout.strip() == ""
    route = hosts[name].run(f"ip -4 route get {mirror_address}")
    assert route.rc != 0 and "unreachable" in route.stderr


def test_relay_has_a_default_route(hosts):
    assert "default via" in hosts["relay"].run("ip -4 route show default").stdout


@pytest.mark.parametrize("name", ISOLATED)
def test_isolated_host_gets_no_dns_answer_for_the_outside(hosts, name, package_mirror):
    assert dns_answer(hosts[name], package_mirror) == []


@pytest.mark.parametrize("name", ISOLATED)
def test_isolated_host_has_no_tcp_to_the_outside(hosts, name, mirror_address):
    assert probe(hosts[name], mirror_address, 80) in {"unreachable", "timeout"}


@pytest.mark.parametrize("name", ISOLATED)
def test_isolated_host_cannot_reach_the_upstream_zone(hosts, addresses, name):
    assert dns_answer(hosts[name], "upstream") == []
    assert probe(hosts[name], addresses["upstream"]["upstream"], 5000) in {"unreachable", "timeout"}


def test_relay_reaches_upstream(hosts, addresses):
    assert dns_answer(hosts["relay"], "upstream") == [addresses["upstream"]["upstream"]]
    assert probe(hosts["relay"], "upstream", 5000) == "open"


def test_registry_reaches_the_relay_across_the_dmz(hosts, addresses):
    assert probe(hosts["registry"], "relay", 5000) in REACHED


def test_node_reaches_the_registry(hosts):
    assert probe(hosts["node"], "registry", 443) in REACHED


def test_node_reaches_nothing_but_the_registry(hosts, addresses):
    for name, zones in addresses.items():
        if name in ("node", "registry"):
            continue
        for address in zones.values():
            assert probe(hosts["node"], address, 5000) in {"unreachable", "timeout"}, (
                name,
                address,
            )


def test_relay_cannot_reach_into_the_vlan(hosts, addresses):
    assert probe(hosts["relay"], addresses["node"]["vlan"], 22) in {"unreachable", "timeout"}
    assert probe(hosts["relay"], addresses["registry"]["vlan"], 443) in {"unreachable", "timeout"}


def test_isolated_host_has_no_default_route_after_a_restart(hosts, lab, mirror_address):
    """Docker gives the default route back at every container start; the lab host drops
    it again at boot (last in this file: the host restarts)."""
    subprocess.run(["docker", "restart", lab["hosts"]["registry"]["container"]], check=True)
    # Until systemd answers on its bus, systemctl prints nothing: ask again.
    deadline = time.monotonic() + 90
    state = ""
    while state not in ("running", "degraded") and time.monotonic() < deadline:
        state = hosts["registry"].run("systemctl is-system-running --wait").stdout.strip()
        if state not in ("running", "degraded"):
            time.sleep(1)
    assert state == "running", hosts["registry"].run("systemctl --failed").stdout
    assert hosts["registry"].run("ip -4 route show default").stdout.strip() == ""
    route = hosts["registry"].run(f"ip -4 route get {mirror_address}")
    assert route.rc != 0 and "unreachable" in route.stderr
