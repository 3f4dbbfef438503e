"""Transfer keys on the lab: each host's key made once and private, the relays' public halves
trusted on the registry host (and the registry host's on the relay), and the registry host's
nightly fetch refusing a lock the relay's own key did not sign.

The refused locks are published on the relay into a scratch repository (signed by a key made
in a temporary directory there, and unsigned) and fetched by the registry host exactly as its
nightly job fetches, in cron's environment, into the real relay.lock, which must not change.
The scratch manifests and the temporary key are removed afterwards.
"""

from __future__ import annotations

import json
import shlex

import pytest

STATE = "/var/lib/airgapped-registry"
KEY = f"{STATE}/transfer/transfer.key"
TRUSTED = "/etc/airgapped-registry/transfer/trusted"
NIGHTLY = "/usr/local/sbin/airgap-nightly"
SCRATCH = "airgapped-registry/transfer-test"
TLS = (
    "--ca-file /etc/airgapped-registry/sync/ca.crt "
    "--cert-file /etc/airgapped-registry/sync/client.cert "
    "--key-file /etc/airgapped-registry/sync/client.key"
)
CRON_ENV = "env -i PATH=/usr/bin:/bin SHELL=/bin/sh HOME=/root LOGNAME=root"


def key_id(host) -> str:
    return json.loads(host.check_output(f"airgap transfer-key show --key {KEY}"))["key_id"]


@pytest.mark.parametrize("name", ["relay", "registry"])
def test_each_host_has_its_own_private_transfer_key(hosts, name):
    host = hosts[name]
    key = host.file(KEY)
    assert (key.mode, key.user, key.group) == (0o600, "root", "root")
    assert host.file(f"{STATE}/transfer").mode == 0o700
    assert host.file(f"{STATE}/transfer/transfer.pub").mode == 0o644
    assert key_id(host).startswith("sha256:")
    # Converged twice, the key was made once: init finds it and keeps it.
    again = json.loads(host.check_output(f"airgap transfer-key init --key {KEY}"))
    assert (again["changed"], again["key_id"]) == (False, key_id(host))


def test_each_side_trusts_exactly_the_other_sides_key(hosts):
    relay, registry = hosts["relay"], hosts["registry"]
    for host, peer, name in ((registry, relay, "relay"), (relay, registry, "registry")):
        assert host.check_output(f"ls {TRUSTED}").split() == [f"{name}.pub"]
        installed = host.file(f"{TRUSTED}/{name}.pub")
        assert installed.mode == 0o644
        assert installed.content == peer.file(f"{STATE}/transfer/transfer.pub").content
    assert key_id(relay) != key_id(registry)


def test_the_nightly_jobs_sign_and_check_the_lock(hosts):
    assert f"--transfer-key {KEY}" in hosts["relay"].file(NIGHTLY).content_string
    assert f"--trusted-keys {TRUSTED}" in hosts["registry"].file(NIGHTLY).content_string
    fetched = json.loads(hosts["registry"].check_output(f"cat {STATE}/nightly/lock.json"))
    assert (fetched["signature"], fetched["signed_by"]) == ("verified", key_id(hosts["relay"]))


@pytest.fixture
def foreign_locks(hosts):
    """On the relay: the relay's own lock published into a scratch repository signed by a
    transfer key made in a temporary directory (tag ``other-key``) and unsigned (tag
    ``unsigned``); afterwards the manifests and the key are removed."""
    relay = hosts["relay"]
    scratch = relay.check_output("mktemp -d")
    published = {}
    try:
        other = json.loads(
            relay.check_output(f"airgap transfer-key init --key {scratch}/transfer.key")
        )
        base = (
            f"airgap lock publish --lock {STATE}/mirror.lock --registry http://127.0.0.1:5000 "
            f"--repository {SCRATCH}"
        )
        for tag, signing in (
            ("other-key", f"--transfer-key {scratch}/transfer.key"),
            ("unsigned", ""),
        ):
            report = json.loads(relay.check_output(f"{base} --tag {tag} {signing}"))
            published[tag] = report["digest"]
        yield other["key_id"]
    finally:
        for digest in published.values():
            relay.check_output(
                "python3 -c "
                + shlex.quote(
                    "from airgapped_registry.transport.registry import RegistryClient\n"
                    "with RegistryClient('http://127.0.0.1:5000') as client:\n"
                    f"    client.delete_manifest({SCRATCH!r}, {digest!r})\n"
                )
            )
        relay.run(f"rm -rf {scratch}")


def nightly_fetch(registry, *extra: str):
    """The registry host's lock fetch as its nightly job runs it: cron's environment, the
    same registry, identity, trusted keys and output file."""
    command = (
        f"/usr/local/bin/airgap lock fetch --registry https://relay:443 {TLS} --source relay "
        f"--output {STATE}/relay.lock --trusted-keys {TRUSTED} {' '.join(extra)}"
    )
    return registry.run(f"{CRON_ENV} /bin/sh -c {shlex.quote(command)}")


def test_the_registry_host_refuses_a_lock_not_signed_by_the_relay(hosts, foreign_locks):
    relay, registry = hosts["relay"], hosts["registry"]
    before = registry.check_output(
        f"sha256sum {STATE}/relay.lock; stat -c %Y.%i {STATE}/relay.lock"
    )
    where = f"published lock https://relay:443/{SCRATCH}"
    refusals = {
        "other-key": f"{where}:other-key: signed by untrusted key {foreign_locks} "
        f"(trusted: {key_id(relay)} ({TRUSTED}/relay.pub))",
        "unsigned": f"{where}:unsigned: not signed (no transfer signature)",
    }
    for tag, message in refusals.items():
        refused = nightly_fetch(registry, "--repository", SCRATCH, "--tag", tag)
        assert refused.rc == 1, refused.stdout
        assert refused.stderr.startswith(f"airgap: {message}"), refused.stderr
        after = registry.check_output(
            f"sha256sum {STATE}/relay.lock; stat -c %Y.%i {STATE}/relay.lock"
        )
        assert after == before, f"{tag}: relay.lock changed"

    # The relay's own lock, signed with its key, is taken (checked, not written: relay.lock
    # stays what the registry host last synced).
    accepted = nightly_fetch(registry, "--check")
    assert accepted.rc == 0, accepted.stderr
    report = json.loads(accepted.stdout)
    assert (report["signed_by"], report["signature"]) == (key_id(relay), "verified")
