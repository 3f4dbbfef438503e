"""The nightly path: upstream -> relay -> registry, through the zones.

site.yml ends with a sync through the relay; here the nightly jobs are
checked as cron installed them, and run once more after upstream moved, to
see that only the new blobs cross from the relay to the registry host.
"""

from __future__ import annotations

import datetime
import json
import shlex
import time

import pytest

from airgap_lab.sample import SampleSpec, build, push
from airgapped_registry.mirror.lock import Lock
from airgapped_registry.transport.registry import RegistryClient

STATE = "/var/lib/airgapped-registry"
TLS = (
    "--ca-file /etc/airgapped-registry/sync/ca.crt "
    "--cert-file /etc/airgapped-registry/sync/client.cert "
    "--key-file /etc/airgapped-registry/sync/client.key"
)


def lock_of(host, path):
    return json.loads(host.check_output(f"cat {path}"))


def blobs(lock):
    """(digest, size) of every config and layer a lock's entries move (the
    engine's own reading of the lock: manifests are not blobs)."""
    return {
        (blob.digest, blob.size)
        for entry in Lock.from_json(json.dumps(lock)).entries
        for blob in entry.blobs()
    }


@pytest.mark.parametrize(("name", "hour"), [("relay", "1"), ("registry", "2")])
def test_nightly_job_is_scheduled_under_a_lock(hosts, name, hour):
    cron = hosts[name].file("/etc/cron.d/airgapped-registry-sync")
    assert cron.exists
    line = next(x for x in cron.content_string.splitlines() if "airgap-nightly" in x)
    fields = line.split()
    assert fields[1] == hour and fields[5] == "root"
    assert "flock -n" in line
    assert hosts[name].service("cron").is_running


def test_registry_holds_what_the_relay_locked(hosts):
    registry = hosts["registry"]
    result = registry.run(
        f"airgap verify --lock {STATE}/relay.lock --registry https://registry:443 {TLS}"
    )
    assert result.rc == 0, result.stdout + result.stderr
    relay_lock = lock_of(hosts["relay"], f"{STATE}/mirror.lock")
    fetched = lock_of(registry, f"{STATE}/relay.lock")
    assert {(e["destination"], e["tag"], e["digest"]) for e in fetched["entries"]} == {
        (e["destination"], e["tag"], e["digest"]) for e in relay_lock["entries"]
    }
    assert len(fetched["entries"]) >= 10


def test_registry_serves_mirrored_content_to_node(hosts):
    fetched = lock_of(hosts["registry"], f"{STATE}/relay.lock")
    entry = next(e for e in fetched["entries"] if e["destination"] == "sample/base")
    out = hosts["node"].check_output(
        f"skopeo inspect --raw docker://registry:443/{entry['destination']}:{entry['tag']}"
        " | sha256sum"
    )
    assert f"sha256:{out.split()[0]}" == entry["digest"]


def test_registry_serves_the_trivy_db_artifact(hosts):
    """The DB the scanner installs comes through the mirror like an image."""
    fetched = lock_of(hosts["registry"], f"{STATE}/relay.lock")
    (entry,) = [e for e in fetched["entries"] if e["destination"] == "aquasecurity/trivy-db"]
    assert (entry["kind"], entry["tag"]) == ("artifact", "2")
    # skopeo reads an artifact's raw manifest (only its inspect without --raw refuses one).
    url = "docker://registry:443/aquasecurity/trivy-db:2"
    manifest = json.loads(hosts["node"].check_output(f"skopeo inspect --raw {url}"))
    assert manifest["config"]["mediaType"] == "application/vnd.aquasec.trivy.config.v1+json"
    assert [layer["mediaType"] for layer in manifest["layers"]] == [
        "application/vnd.aquasec.trivy.db.layer.v1.tar+gzip"
    ]
    digest = hosts["node"].check_output(f"skopeo inspect --raw {url} | sha256sum").split()[0]
    assert f"sha256:{digest}" == entry["digest"]


LOG = "/var/log/airgapped-registry/sync.log"
# The environment cron gives a job (checked on a lab host): nothing else.
CRON_ENV = "env -i PATH=/usr/bin:/bin SHELL=/bin/sh HOME=/root LOGNAME=root"


def job_line(host):
    """The command of the nightly job, as cron reads it from its cron.d file."""
    cron = host.file("/etc/cron.d/airgapped-registry-sync").content_string
    line = next(x for x in cron.splitlines() if "airgap-nightly" in x and not x.startswith("#"))
    return line.split(None, 6)[6]


def summary(host):
    """The last line of the host's sync.log: (time, tier, fields)."""
    stamp, tier, *rest = host.check_output(f"tail -n 1 {LOG}").split()
    fields = dict(f.split("=", 1) for f in rest if "=" in f)
    return datetime.datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ"), tier, fields


def nightly(host):
    """One nightly run exactly as cron starts it: its job line, in its environment."""
    ran = host.run(f"{CRON_ENV} /bin/sh -c {shlex.quote(job_line(host))}")
    assert ran.rc == 0, host.run("tail -n 20 /var/log/airgapped-registry/sync.err").stdout


@pytest.mark.parametrize("name", ["relay", "registry"])
def test_nightly_job_runs_in_crons_environment(hosts, name):
    before = hosts[name].check_output(f"wc -l < {LOG}")
    nightly(hosts[name])
    assert int(hosts[name].check_output(f"wc -l < {LOG}")) == int(before) + 1
    _, tier, fields = summary(hosts[name])
    assert tier == name
    assert int(fields["entries"]) >= 10 and int(fields["failures"]) == 0


def test_cron_itself_fires_the_nightly_jobs(hosts):
    """A schedule a minute or two ahead, relay first, the registry host a minute later (it
    fetches the lock the relay published): cron runs each, and each writes its summary."""
    relay, registry = hosts["relay"], hosts["registry"]
    now = datetime.datetime.now(datetime.UTC).replace(tzinfo=None)
    # cron reads a new cron.d file when a minute starts: leave it time to see this one.
    first = (now + datetime.timedelta(minutes=1 if now.second < 45 else 2)).replace(
        second=0, microsecond=0
    )
    second = first + datetime.timedelta(minutes=1)
    test_file = "/etc/cron.d/airgapped-registry-sync-test"
    try:
        for host, at in ((relay, first), (registry, second)):
            entry = f"{at.minute} {at.hour} * * * root {job_line(host)}\n"
            host.run(f"printf %s {shlex.quote(entry)} > {test_file}")
        deadline = second + datetime.timedelta(seconds=75)
        seen = {}
        while datetime.datetime.now(datetime.UTC).replace(tzinfo=None) < deadline:
            for name, host, at in (("relay", relay, first), ("registry", registry, second)):
                stamp, tier, fields = summary(host)
                if stamp >= at:
                    seen[name] = (stamp, tier, fields)
            if len(seen) == 2:
                break
            time.sleep(5)
    finally:
        relay.run(f"rm -f {test_file}")
        registry.run(f"rm -f {test_file}")
    assert set(seen) == {"relay", "registry"}, f"cron ran only {sorted(seen)} by {deadline}"
    for name, at in (("relay", first), ("registry", second)):
        stamp, tier, fields = seen[name]
        assert tier == name and stamp < at + datetime.timedelta(minutes=1)
        assert int(fields["failures"]) == 0 and int(fields["entries"]) >= 10


@pytest.fixture
def upstream_moved(hosts, containers, sample_params):
    """Upstream moves every tag (one shared base layer per platform changes);
    afterwards upstream, relay and registry are put back as the converge
    left them, so the other tests see the sample they expect."""
    port = containers["upstream"]["NetworkSettings"]["Ports"]["5000/tcp"][0]["HostPort"]
    client = RegistryClient(f"http://127.0.0.1:{port}")
    # A generation no earlier run used, so its blobs are new everywhere and a
    # re-run of these tests measures a real delta too.
    generation = 1000 + time.time_ns() % 1_000_000
    push(build(SampleSpec(**{**sample_params, "base_generation": generation})), client)
    yield
    push(build(SampleSpec(**sample_params)), client)
    nightly(hosts["relay"])
    nightly(hosts["registry"])


def test_second_nightly_run_moves_only_the_new_blobs(hosts, upstream_moved):
    relay, registry = hosts["relay"], hosts["registry"]
    before = blobs(lock_of(registry, f"{STATE}/relay.lock"))

    nightly(relay)
    nightly(registry)

    after = blobs(lock_of(registry, f"{STATE}/relay.lock"))
    new = after - before
    _, _, fields = summary(registry)
    print(f"nightly delta: {len(new)} new blobs, {sum(s for _, s in new)} bytes; {fields}")
    assert new, "upstream moved but the relay's lock did not"
    assert int(fields["failures"]) == 0
    # Only the new blobs cross the DMZ link: the bytes pushed into the
    # registry are exactly the new blobs' sizes (manifests are not counted).
    assert int(fields["bytes"]) == sum(size for _, size in new)
