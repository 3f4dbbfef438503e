"""The site after an upgrade: stood up by the previous release (create.yml),
then converged by this tree, twice, while `node` pulled through the gateway
(converge.yml, pull-loop.sh).

Everything here reads what a user of the site would see: the pulls' exit
statuses, the hosts' files and state store, `airgap verify`, and the nightly
job run the way cron runs it.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest

PULLS = "/root/upgrade-pulls"
RECORD = (Path(__file__).parent / "site_record.py").read_text()
BEFORE = Path(os.environ.get("MOLECULE_EPHEMERAL_DIRECTORY", ".")) / "before-upgrade.json"
# Pulls that must start and end while site.yml upgrades the site: a pull
# takes about a second, the upgrade minutes.
MIN_PULLS_DURING_UPGRADE = 20
STATE = "/var/lib/airgapped-registry"
TLS = (
    "--ca-file /etc/airgapped-registry/sync/ca.crt "
    "--cert-file /etc/airgapped-registry/sync/client.cert "
    "--key-file /etc/airgapped-registry/sync/client.key"
)
# What cron gives a job (cron(8)): no login shell, this PATH.
CRON_ENV = "env -i PATH=/usr/bin:/bin SHELL=/bin/sh HOME=/root LOGNAME=root"


@dataclass(frozen=True)
class Pull:
    start: float
    end: float
    status: int
    kind: str
    ref: str


@dataclass(frozen=True)
class Loop:
    """One converge's pull loop, as pull-loop.sh left it on the node."""

    name: str
    pulls: list[Pull]
    converge: tuple[float, float]
    done: str
    failures: str


def read_loop(node, path):
    def cat(name):
        return node.run(f"cat {path}/{name}").stdout

    pulls = []
    for line in cat("pulls.log").splitlines():
        start, end, status, kind, ref = line.split()
        pulls.append(Pull(float(start), float(end), int(status), kind, ref))
    converge = (float(cat("converge.start")), float(cat("converge.end")))
    return Loop(path.rsplit("/", 1)[1], pulls, converge, cat("done").strip(), cat("failures.log"))


@pytest.fixture(scope="module")
def loops(hosts):
    """Every converge's loop, oldest first: the first is the upgrade."""
    node = hosts["node"]
    paths = node.check_output(f"ls -d {PULLS}/*/").split()
    found = [read_loop(node, path.rstrip("/")) for path in sorted(paths)]
    assert found, f"no pull loop ran on node ({PULLS} is empty)"
    return found


@pytest.fixture(scope="module")
def before():
    """What create.yml recorded on each host before the upgrade."""
    assert BEFORE.exists(), f"{BEFORE} missing: create.yml records it before the upgrade"
    return json.loads(BEFORE.read_text())


def record(host):
    return json.loads(host.check_output(f"python3 - <<'EOF'\n{RECORD}\nEOF"))


def test_every_pull_succeeded(loops):
    for loop in loops:
        total, failed = map(int, loop.done.split())
        print(f"{loop.name}: {total} pulls, {failed} failed")
        assert total == len(loop.pulls), f"{loop.name}: the loop did not stop cleanly"
        assert failed == 0 and all(p.status == 0 for p in loop.pulls), loop.failures


def test_pulls_spanned_the_upgrade(loops):
    upgrade = loops[0]
    start, end = upgrade.converge
    during = [p for p in upgrade.pulls if start <= p.start and p.end <= end]
    kinds = {p.kind for p in during}
    print(
        f"upgrade: {len(upgrade.pulls)} pulls, {len(during)} during the {end - start:.0f} s "
        f"converge ({', '.join(sorted(kinds))}), "
        f"{sum(p.status != 0 for p in upgrade.pulls)} failed"
    )
    assert any(p.end < start for p in upgrade.pulls), "no pull finished before the upgrade began"
    assert any(p.start > end for p in upgrade.pulls), "no pull started after the upgrade ended"
    assert len(during) >= MIN_PULLS_DURING_UPGRADE
    assert kinds == {"podman", "skopeo"}


@pytest.mark.parametrize("name", ["relay", "registry"])
def test_state_store_migrated_to_the_engines_schema(hosts, before, name):
    # Imported here, so the other tests run whatever this tree's engine holds.
    expected = importlib.import_module("airgapped_registry.state.store").SCHEMA_VERSION
    was = before[name]["state_user_version"]
    now = record(hosts[name])["state_user_version"]
    print(f"{name}: state store schema {was} -> {now} (engine: {expected})")
    assert was is not None, "the previous release left no state store to migrate"
    assert was <= expected
    assert now == expected


@pytest.mark.parametrize("name", ["relay", "registry", "node"])
def test_tls_material_was_adopted_not_reissued(hosts, before, name):
    assert before[name]["tls"], f"nothing recorded on {name} before the upgrade"
    assert record(hosts[name])["tls"] == before[name]["tls"]


def pull(node, ref):
    return node.run(
        f"rm -rf /root/probe-pull && skopeo copy -q docker://{ref} dir:/root/probe-pull"
    )


def wait_for(host, socket):
    """Until GET /v2/ answers 200 on a unix socket (the registry host's backend)."""
    url = f"--unix-socket {socket} http://localhost/v2/"
    ran = host.run(
        f"for i in $(seq 30); do curl -sf -o /dev/null {url} && exit 0; sleep 1; done; exit 1"
    )
    assert ran.rc == 0, f"{socket} did not answer on {host}"


def test_the_gateway_falls_back_to_the_standby_while_distribution_is_down(hosts, loops):
    """What the registry role's restart relies on, step by step: with
    docker-registry stopped a pull fails, and succeeds once the standby runs."""
    registry, node = hosts["registry"], hosts["node"]
    ref = loops[0].pulls[0].ref
    assert pull(node, ref).rc == 0
    try:
        registry.check_output("systemctl stop docker-registry")
        assert pull(node, ref).rc != 0, "pulled with no registry behind the gateway"
        registry.check_output("systemctl start docker-registry-standby")
        wait_for(registry, "/run/docker-registry-standby/registry.sock")
        fallback = pull(node, ref)
        assert fallback.rc == 0, fallback.stderr
    finally:
        registry.run("systemctl start docker-registry")
        wait_for(registry, "/run/docker-registry/registry.sock")
        registry.run("systemctl stop docker-registry-standby")
    assert pull(node, ref).rc == 0


def test_the_backend_moved_off_tcp(hosts):
    """The previous release's Distribution listened on 127.0.0.1:5000; after
    the upgrade it answers on its socket only, and its standby is stopped."""
    registry = hosts["registry"]
    wait_for(registry, "/run/docker-registry/registry.sock")
    assert registry.socket("tcp://127.0.0.1:5000").is_listening is False
    assert registry.run("systemctl is-active docker-registry-standby").stdout.strip() != "active"


def test_mirrored_content_still_verifies(hosts):
    result = hosts["registry"].run(
        f"airgap verify --lock {STATE}/relay.lock --registry https://registry:443 {TLS}"
    )
    assert result.rc == 0, result.stdout + result.stderr


def test_nightly_path_runs_from_cron_after_the_upgrade(hosts):
    """The nightly job of each host, its command taken from the cron file
    and run in cron's environment: relay first, then the registry host."""
    for name in ("relay", "registry"):
        host = hosts[name]
        cron = host.file("/etc/cron.d/airgapped-registry-sync").content_string
        lines = [x.strip() for x in cron.splitlines() if x.strip() and not x.startswith("#")]
        # NAME=value lines set the job's environment (crontab(5)).
        assignments = [x for x in lines if re.match(r"[A-Za-z_][A-Za-z0-9_]*=", x)]
        job = next(x for x in lines if x not in assignments)
        command = " ".join(job.split()[6:])
        log = "/var/log/airgapped-registry/sync.log"
        lines_before = int(host.check_output(f"cat {log} 2>/dev/null | wc -l"))
        env = " ".join(shlex.quote(x) for x in assignments)
        ran = host.run(f"cd / && {CRON_ENV} {env} /bin/sh -c {shlex.quote(command)}")
        err = host.run("tail -n 5 /var/log/airgapped-registry/sync.err").stdout
        assert ran.rc == 0, f"{name}: {command!r} exited {ran.rc}: {ran.stderr}{err}"
        written = host.check_output(f"tail -n +{lines_before + 1} {log}").splitlines()
        assert len(written) == 1, written
        fields = dict(f.split("=", 1) for f in written[0].split() if "=" in f)
        assert written[0].split()[1] == name, written
        assert int(fields["failures"]) == 0, written
