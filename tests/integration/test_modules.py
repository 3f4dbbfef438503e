"""The airgap_lock, airgap_sync, airgap_verify and sample_upstream modules, run by
ansible-playbook.

One playbook walks the nightly path on localhost against real Distributions: the relay's
lock, sync and publish, then the registry host's fetch, sync and verify. Every module is run
in check mode, applied, and applied again (community.docker's check / apply / idempotence);
the outcomes are read from the ``ansible.posix.json`` callback and from the registries.
Another reaches a registry that asks for Basic credentials through every module, with and
without ``auth_file``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from airgap_lab.sample import build
from airgapped_registry.mirror.lock import read_lock
from airgapped_registry.transfer import init_key, load_key, public_path
from airgapped_registry.transport.registry import RegistryClient
from tests.integration.conftest import htpasswd_line, write_auth_json
from tests.integration.test_sync import SMALL, seeded, write_list

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
ANSIBLE_PLAYBOOK = Path(sys.executable).with_name("ansible-playbook")
ENTRIES = """\
images:
  - {source: upstream, repository: sample/base, tags: ["1.0.0", "1.1.0"], destination: mirror/base}
charts:
  - {source: upstream, repository: charts/demo, versions: ["0.1.0"]}
"""


def three_times(name: str, module: str, args: dict[str, Any]) -> list[dict[str, Any]]:
    """Check mode, apply, apply again: three tasks named ``NAME: check|apply|again``."""
    return [
        {"name": f"{name}: {step}", module: args, "check_mode": step == "check"}
        for step in ("check", "apply", "again")
    ]


def playbook(directory: Path, relay, registry, pki) -> Path:
    tls = {
        "ca_file": str(pki.ca_file),
        "cert_file": str(pki.client_cert),
        "key_file": str(pki.client_key),
    }
    relay_lock = str(directory / "relay" / "mirror.lock")
    fetched = str(directory / "registry" / "mirror.lock")
    transfer_key = str(directory / "relay" / "transfer" / "transfer.key")
    trusted = [str(directory / "registry" / "trusted")]
    relay_side = {"registry": relay.url, **tls}
    registry_side = {"registry": registry.url, **tls}
    registry_sync = three_times(
        "registry sync",
        "airgap_sync",
        {
            "lock": fetched,
            "spec": str(directory / "registry" / "relay-source.yaml"),
            "state_db": str(directory / "registry" / "state.db"),
            **registry_side,
        },
    )
    tasks = [
        *three_times(
            "relay lock",
            "airgap_lock",
            {"spec": str(directory / "relay" / "mirror.yaml"), "lock": relay_lock},
        ),
        *three_times(
            "relay sync",
            "airgap_sync",
            {
                "lock": relay_lock,
                "spec": str(directory / "relay" / "mirror.yaml"),
                "state_db": str(directory / "relay" / "state.db"),
                **relay_side,
            },
        ),
        *three_times(
            "publish",
            "airgap_lock",
            {"mode": "publish", "lock": relay_lock, "transfer_key": transfer_key, **relay_side},
        ),
        {
            "name": "fetch trusting another key",
            "airgap_lock": {
                "mode": "fetch",
                "lock": fetched,
                "source": "relay",
                "trusted_keys": [str(directory / "other.pub")],
                **relay_side,
            },
            "ignore_errors": True,
        },
        {
            "name": "fetch unchecked",
            "airgap_lock": {
                "mode": "fetch",
                "lock": fetched,
                "source": "relay",
                "allow_unsigned": True,
                **relay_side,
            },
            "check_mode": True,
        },
        *three_times(
            "fetch",
            "airgap_lock",
            {
                "mode": "fetch",
                "lock": fetched,
                "source": "relay",
                "trusted_keys": trusted,
                **relay_side,
            },
        ),
        *registry_sync[:1],
        {
            "name": "verify after the check",
            "airgap_verify": {"lock": fetched, **registry_side},
            "ignore_errors": True,
        },
        *registry_sync[1:],
        {"name": "verify", "airgap_verify": {"lock": fetched, "deep": True, **registry_side}},
    ]
    play = [{"hosts": "localhost", "gather_facts": False, "tasks": tasks}]
    path = directory / "nightly.yml"
    path.write_text(yaml.safe_dump(play, sort_keys=False))
    return path


def run_playbook(path: Path) -> dict[str, dict[str, Any]]:
    """Run the playbook (with --diff); each task's result by task name."""
    return run_playbook_allowing(path, "verify after the check", "fetch trusting another key")


def run_playbook_allowing(
    path: Path, *may_fail: str, interpreter: str = sys.executable
) -> dict[str, dict[str, Any]]:
    """:func:`run_playbook`, where the tasks named in ``may_fail`` may fail; the modules run
    under ``interpreter`` (this test's Python, which has the engine, by default)."""
    completed = subprocess.run(
        [
            str(ANSIBLE_PLAYBOOK),
            "-i",
            "localhost,",
            "-c",
            "local",
            "-e",
            f"ansible_python_interpreter={interpreter}",
            "--diff",
            str(path),
        ],
        cwd=ROOT,
        env=os.environ
        | {
            "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"),
            "ANSIBLE_STDOUT_CALLBACK": "ansible.posix.json",
        },
        capture_output=True,
        text=True,
        check=False,
    )
    try:
        report = json.loads(completed.stdout)
    except json.JSONDecodeError:
        pytest.fail(f"ansible-playbook printed no JSON:\n{completed.stdout}{completed.stderr}")
    results = {
        task["task"]["name"]: task["hosts"]["localhost"]
        for play in report["plays"]
        for task in play["tasks"]
    }
    failed = {
        name: result.get("msg")
        for name, result in results.items()
        if result.get("failed") and name not in may_fail
    }
    assert completed.returncode == 0 and not failed, f"{failed}\n{completed.stderr[-3000:]}"
    return results


def test_nightly_path_check_apply_again(distribution_factory, pki, tmp_path) -> None:
    upstream = seeded(distribution_factory, build(SMALL))
    relay = distribution_factory(tls=pki)
    registry = distribution_factory(tls=pki)
    (tmp_path / "relay").mkdir()
    (tmp_path / "registry").mkdir()
    write_list(tmp_path / "relay", upstream.address, ENTRIES)
    certs = tmp_path / "registry" / "sync"
    certs.mkdir()
    shutil.copy(pki.ca_file, certs / "ca.crt")
    shutil.copy(pki.client_cert, certs / "client.cert")
    shutil.copy(pki.client_key, certs / "client.key")
    (tmp_path / "registry" / "relay-source.yaml").write_text(
        f"version: 1\nsources:\n  relay:\n    registry: {relay.address}\n    cert_dir: sync\n"
    )
    key = tmp_path / "relay" / "transfer" / "transfer.key"
    init_key(key)
    (tmp_path / "registry" / "trusted").mkdir()
    shutil.copy(public_path(key), tmp_path / "registry" / "trusted" / "relay.pub")
    init_key(tmp_path / "other" / "transfer.key")
    shutil.copy(tmp_path / "other" / "transfer.pub", tmp_path / "other.pub")

    results = run_playbook(playbook(tmp_path, relay, registry, pki))
    changed = {name: result.get("changed") for name, result in results.items()}
    for step in ("relay lock", "relay sync", "publish", "fetch", "registry sync"):
        assert (changed[f"{step}: check"], changed[f"{step}: apply"]) == (True, True), step
        assert changed[f"{step}: again"] is False, f"{step} is not idempotent"
    assert changed["verify"] is False

    # Check mode wrote nothing and copied nothing: the plan, one HEAD per entry.
    check = results["registry sync: check"]
    assert (check["report"]["to_copy"], check["report"]["requests"]["destination"]) == (
        3,
        {"total": 3, "by_method": {"HEAD": 3}},
    )
    assert "mirror/base:1.0.0 (absent)" in check["diff"]["before"]
    before = results["verify after the check"]
    assert before["failed"] and "mirror/base:1.0.0" in before["msg"]

    applied = results["registry sync: apply"]
    assert applied["report"]["copied"] == 3 and applied["report"]["failed"] == 0
    lock = read_lock(tmp_path / "registry" / "mirror.lock")
    assert {entry.source for entry in lock.entries} == {"relay"}
    for entry in lock.entries:
        line = f"{entry.reference} {entry.digest}"
        assert line in applied["diff"]["after"]
        assert line in results["fetch: apply"]["diff"]["after"]
    assert results["registry sync: again"]["report"]["copied"] == 0
    assert results["publish: again"]["report"]["published"] is False
    assert results["publish: apply"]["report"]["signed_by"] == load_key(key).key_id
    assert results["fetch: apply"]["report"]["signed_by"] == load_key(key).key_id
    refused = results["fetch trusting another key"]
    assert refused["failed"] and "fetch " + relay.url in refused["msg"]
    assert f": signed by untrusted key {load_key(key).key_id} (trusted: " in refused["msg"]
    unchecked = results["fetch unchecked"]
    assert unchecked["report"]["signature"] == "not checked (unsigned allowed)"
    assert any("allow_unsigned" in warning for warning in unchecked["warnings"]), unchecked
    assert results["verify"]["report"]["failed"] == 0

    with RegistryClient(registry.url, pki.ca_file, pki.client_cert, pki.client_key) as client:
        for entry in lock.entries:
            assert client.head_manifest(entry.destination, entry.tag).digest == entry.digest


def test_relock_sync_with_the_cli_options(distribution_factory, tmp_path) -> None:
    """airgap_sync relock: true is the relay's nightly run (airgap sync --relock): check mode
    resolves and plans without writing the lock, apply writes and copies, again is a no-op.
    The options reach the engine (attempts: 0 is refused by it, not by the module)."""
    upstream = seeded(distribution_factory, build(SMALL))
    relay = distribution_factory()
    write_list(tmp_path, upstream.address, ENTRIES)
    lock_path = tmp_path / "mirror.lock"
    args = {
        "relock": True,
        "lock": str(lock_path),
        "spec": str(tmp_path / "mirror.yaml"),
        "registry": relay.url,
        "state_db": str(tmp_path / "state.db"),
        "workers": 2,
        "attempts": 2,
        "backoff": 0.1,
        "retry_times": 1,
        "timeout": 20,
        "tool_timeout": 120,
        "deadline": 600,
        "engine_copy_max_bytes": 0,
    }
    tasks = [
        *three_times("relock sync", "airgap_sync", args),
        {
            "name": "refused by the engine",
            "airgap_sync": {**args, "attempts": 0},
            "ignore_errors": True,
        },
        {
            "name": "deadline refused by the engine",
            "airgap_sync": {**args, "deadline": -1},
            "ignore_errors": True,
        },
    ]
    path = tmp_path / "relock.yml"
    path.write_text(yaml.safe_dump([{"hosts": "localhost", "gather_facts": False, "tasks": tasks}]))
    results = run_playbook_allowing(path, "refused by the engine", "deadline refused by the engine")

    check, applied, again = (results[f"relock sync: {s}"] for s in ("check", "apply", "again"))
    assert check["changed"] and check["relock"]["changed"] and not check["relock"]["written"]
    assert check["report"]["to_copy"] == 3
    assert applied["changed"] and applied["relock"]["written"]
    assert (applied["report"]["copied"], applied["report"]["copies"]) == (3, {"skopeo": 3})
    assert read_lock(lock_path) is not None
    assert again["changed"] is False and again["relock"]["changed"] is False
    refused = results["refused by the engine"]
    assert refused["failed"] and "attempts must be >= 1" in refused["msg"]
    refused = results["deadline refused by the engine"]
    assert refused["failed"] and "deadline must be > 0" in refused["msg"]


def test_every_module_answers_basic_auth_from_auth_file(distribution_factory, tmp_path) -> None:
    """A registry asking for credentials: each module given the CLI's --auth-file as
    ``auth_file`` gets in (Basic, as the CLI and airgap_sync do); without it, the task fails
    on the registry's 401 and says that no auth_file was given."""
    upstream = seeded(distribution_factory, build(SMALL))
    (tmp_path / "htpasswd").write_text(htpasswd_line("alice", "s3cret"))
    guarded = distribution_factory(htpasswd=tmp_path / "htpasswd")
    write_list(tmp_path, upstream.address, ENTRIES)
    auth = write_auth_json(tmp_path / "auth.json", guarded.address, "alice", "s3cret")
    relay_lock, fetched = str(tmp_path / "mirror.lock"), str(tmp_path / "fetched.lock")
    key = tmp_path / "transfer" / "transfer.key"
    init_key(key)
    steps = {
        "sync": (
            "airgap_sync",
            {
                "lock": relay_lock,
                "spec": str(tmp_path / "mirror.yaml"),
                "state_db": str(tmp_path / "state.db"),
            },
        ),
        "publish": (
            "airgap_lock",
            {"mode": "publish", "lock": relay_lock, "transfer_key": str(key)},
        ),
        "fetch": (
            "airgap_lock",
            {
                "mode": "fetch",
                "lock": fetched,
                "source": "relay",
                "trusted_keys": [str(public_path(key))],
            },
        ),
        "verify": ("airgap_verify", {"lock": fetched, "deep": True}),
        "seed": ("sample_upstream", {"repositories": 1, "base_layer_bytes": 512}),
    }
    tasks: list[dict[str, Any]] = [
        {"name": "lock", "airgap_lock": {"spec": str(tmp_path / "mirror.yaml"), "lock": relay_lock}}
    ]
    for step, (module, args) in steps.items():
        args = {**args, "registry": guarded.url}
        tasks.append({"name": f"{step} without", module: args, "ignore_errors": True})
        tasks.append({"name": step, module: {**args, "auth_file": str(auth)}})
    path = tmp_path / "auth.yml"
    path.write_text(yaml.safe_dump([{"hosts": "localhost", "gather_facts": False, "tasks": tasks}]))
    results = run_playbook_allowing(path, *(f"{step} without" for step in steps))

    for step in steps:
        refused = results[f"{step} without"]
        assert refused.get("failed"), step
        assert re.search(rf"{guarded.url}/v2/\S*: 401\b", refused["msg"]), refused["msg"]
        assert refused["msg"].endswith(f"(no auth_file given: {guarded.url} asks for credentials)")
        assert results[step]["changed"] is (step != "verify"), step
    assert (results["sync"]["report"]["copied"], results["sync"]["report"]["failed"]) == (3, 0)
    assert results["publish"]["report"]["published"] is True
    assert results["verify"]["report"]["failed"] == 0
    assert read_lock(fetched) is not None


def test_sample_upstream_check_apply_again_then_a_new_db_day(distribution, tmp_path) -> None:
    """The seed module is idempotent for a fixed DB day; another day moves the DB tag only."""
    spec = {"repositories": 1, "tags_per_repository": 1, "base_layer_bytes": 512}
    day = {**spec, "registry": distribution.url, "db_updated_at": "2026-11-30T00:00:00Z"}
    next_day = {**day, "db_updated_at": "2026-12-01T00:00:00Z"}
    tasks = [
        *three_times("seed", "sample_upstream", day),
        {"name": "next day", "sample_upstream": next_day},
        {
            "name": "no zone",
            "sample_upstream": {**day, "db_updated_at": "2026-12-01"},
            "ignore_errors": True,
        },
    ]
    path = tmp_path / "seed.yml"
    path.write_text(yaml.safe_dump([{"hosts": "localhost", "gather_facts": False, "tasks": tasks}]))
    results = run_playbook_allowing(path, "no zone")

    reference = "aquasecurity/trivy-db:2"
    check, apply, again = (results[f"seed: {step}"] for step in ("check", "apply", "again"))
    assert (check["changed"], apply["changed"], again["changed"]) == (True, True, False)
    assert check["pushed"] == apply["pushed"] and reference in apply["pushed"]
    assert again["requests"] == len(apply["tags"]), "one HEAD per tag"
    assert apply["db_updated_at"] == "2026-11-30T00:00:00Z"
    moved = results["next day"]
    assert (moved["changed"], moved["pushed"]) == (True, [reference])
    assert moved["tags"][reference] != apply["tags"][reference]
    head = RegistryClient(distribution.url).head_manifest("aquasecurity/trivy-db", "2")
    assert head is not None and head.digest == moved["tags"][reference]
    assert moved["diff"]["after"] == f"{reference} {moved['tags'][reference]}\n"
    assert results["no zone"]["msg"] == (
        "db_updated_at: '2026-12-01' is not an ISO 8601 time with a time zone "
        "(e.g. 2026-11-30T00:00:00Z)"
    )
