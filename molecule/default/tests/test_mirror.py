"""The nightly path: upstream -> relay -> registry, through the zones.

site.yml ends with a sync through the relay; here the nightly jobs are
checked as cron installed them, and run once more after upstream moved, to
see that only the new blobs cross from the relay to the registry host.
"""

from __future__ import annotations

import json
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


def nightly(host):
    ran = host.run("/usr/local/sbin/airgap-nightly")
    assert ran.rc == 0, host.run("tail -n 20 /var/log/airgapped-registry/sync.err").stdout


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
    summary = registry.check_output("tail -n 1 /var/log/airgapped-registry/sync.log")
    fields = dict(f.split("=", 1) for f in summary.split() if "=" in f)
    print(f"nightly delta: {len(new)} new blobs, {sum(s for _, s in new)} bytes; {summary}")
    assert new, "upstream moved but the relay's lock did not"
    assert int(fields["failures"]) == 0
    # Only the new blobs cross the DMZ link: the bytes pushed into the
    # registry are exactly the new blobs' sizes (manifests are not counted).
    assert int(fields["bytes"]) == sum(size for _, size in new)
