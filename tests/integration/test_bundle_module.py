"""The airgap_bundle module, run by ansible-playbook against real Distributions on loopback.

A relay registry is synced from the sample upstream; one playbook exports its lock (check
mode, then for real, then again into the same directory, refused), checks the bundle and
takes an inventory; a second imports it into an empty registry (check mode, apply, again)
and a copy with one flipped byte. What was pushed is read from the registry's access log.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from airgap_lab.sample import build
from airgapped_registry.mirror.lock import read_lock
from airgapped_registry.mirror.relock import lock
from airgapped_registry.mirror.spec import load
from airgapped_registry.mirror.sync import Destination, SyncOptions, sync
from airgapped_registry.mirror.verify import verify
from airgapped_registry.transfer import init_key, load_key, public_path
from airgapped_registry.transport.registry import RegistryClient
from tests.integration.test_modules import ENTRIES, run_playbook_allowing
from tests.integration.test_sync import SMALL, seeded, write_list

pytestmark = pytest.mark.integration


def pushes(target) -> list[str]:
    """The access log's lines of requests that write (nothing else changes a registry)."""
    return [
        line
        for line in target.log().splitlines()
        if any(f'"{method} ' in line for method in ("PUT", "POST", "PATCH", "DELETE"))
    ]


def write_play(path: Path, tasks: list[dict[str, Any]]) -> Path:
    path.write_text(yaml.safe_dump([{"hosts": "localhost", "gather_facts": False, "tasks": tasks}]))
    return path


def test_export_check_import_again_and_a_tampered_bundle(distribution_factory, tmp_path) -> None:
    upstream = seeded(distribution_factory, build(SMALL))
    relay = distribution_factory()
    registry = distribution_factory()
    write_list(tmp_path, upstream.address, ENTRIES)
    spec_path = tmp_path / "mirror.yaml"
    lock_path = tmp_path / "mirror.lock"
    lock(load(spec_path), lock_path)
    locked = read_lock(lock_path)
    assert locked is not None
    assert (
        sync(locked, Destination(relay.url), load(spec_path), options=SyncOptions())["failed"] == 0
    )
    key = tmp_path / "transfer" / "transfer.key"
    init_key(key)
    trusted = [str(public_path(key))]
    bundle = tmp_path / "drive" / "bundle"
    export_args = {
        "action": "export",
        "lock": str(lock_path),
        "spec": str(spec_path),
        "registry": relay.url,
        "output": str(bundle),
        "transfer_key": str(key),
    }
    # Check mode alone first: what it left on the drive and asked of the relay is seen.
    reads_before = len(relay.log().splitlines())
    results = run_playbook_allowing(
        write_play(
            tmp_path / "plan.yml",
            [{"name": "export: check", "airgap_bundle": export_args, "check_mode": True}],
        )
    )
    planned = results["export: check"]
    assert planned["changed"] is True
    assert planned["report"]["kind"] == "full" and planned["report"]["planned"]["blobs"] > 0
    assert not bundle.exists() and not bundle.parent.exists(), "check mode wrote nothing"
    assert len(relay.log().splitlines()) == reads_before, "check mode read nothing"

    volumes = tmp_path / "drive" / "volumes"
    volume_size = str(planned["report"]["planned"]["content_bytes"] // 2)
    relay_tasks = [
        {"name": "export: apply", "airgap_bundle": export_args},
        {"name": "export: again", "airgap_bundle": export_args, "ignore_errors": True},
        {
            "name": "export: again, check mode",
            "airgap_bundle": export_args,
            "check_mode": True,
            "ignore_errors": True,
        },
        {
            "name": "check",
            "airgap_bundle": {"action": "check", "paths": [str(bundle)], "trusted_keys": trusted},
        },
        {
            "name": "export in volumes",
            "airgap_bundle": {**export_args, "output": str(volumes), "volume_size": volume_size},
        },
        {
            "name": "check the first volume",
            "airgap_bundle": {
                "action": "check",
                "paths": [str(volumes / "vol-001")],
                "trusted_keys": trusted,
            },
        },
    ]
    results = run_playbook_allowing(
        write_play(tmp_path / "relay.yml", relay_tasks),
        "export: again",
        "export: again, check mode",
    )

    exported = results["export: apply"]
    assert exported["changed"] is True
    report = exported["report"]
    assert (report["kind"], report["key_id"]) == ("full", load_key(key).key_id)
    assert report["blobs"] == planned["report"]["planned"]["blobs"]
    assert report["content_bytes"] == planned["report"]["planned"]["content_bytes"]
    for name in ("export: again", "export: again, check mode"):
        refused = results[name]
        assert refused["failed"] and refused.get("changed") is False, name
        assert refused["msg"].endswith(
            f"{bundle}: exists and is not empty (a bundle is never overwritten)"
        ), refused["msg"]
    checked = results["check"]
    assert checked["changed"] is False
    assert (checked["report"]["bundle"], checked["report"]["files"]) == (
        report["bundle"],
        report["files"],
    )
    split = results["export in volumes"]["report"]
    assert split["volumes"] >= 2 and split["volume_size"] == int(volume_size)
    first = results["check the first volume"]["report"]
    assert (first["checked_volumes"], first["missing_volumes"]) == (
        [1],
        list(range(2, split["volumes"] + 1)),
    )

    tampered = tmp_path / "drive" / "tampered"
    shutil.copytree(bundle, tampered)
    biggest = max(
        (p for p in (tampered / "blobs" / "sha256").iterdir()), key=lambda p: p.stat().st_size
    )
    data = bytearray(biggest.read_bytes())
    data[len(data) // 2] ^= 0x01
    biggest.write_bytes(bytes(data))

    state = tmp_path / "registry" / "state.db"
    state.parent.mkdir()
    relay_lock_path = tmp_path / "registry" / "relay.lock"
    import_args = {
        "action": "import",
        "paths": [str(bundle)],
        "registry": registry.url,
        "trusted_keys": trusted,
        "state_db": str(state),
        "lock_output": str(relay_lock_path),
        "source_registry": relay.address,
    }
    inventory = tmp_path / "registry" / "inventory.json"
    delta = tmp_path / "drive" / "delta"
    delta_args = {
        **export_args,
        "output": str(delta),
        "inventory": str(inventory),
        "trusted_keys": trusted,
    }
    registry_tasks = [
        {
            "name": "tampered",
            "airgap_bundle": {**import_args, "paths": [str(tampered)]},
            "ignore_errors": True,
        },
        {"name": "import: check", "airgap_bundle": import_args, "check_mode": True},
        {"name": "import: apply", "airgap_bundle": import_args},
        {"name": "import: again", "airgap_bundle": import_args},
        {
            "name": "inventory",
            "airgap_bundle": {
                "action": "inventory",
                "registry": registry.url,
                "output": str(inventory),
                "lock": str(relay_lock_path),
                "transfer_key": str(key),
            },
        },
        {"name": "delta: check", "airgap_bundle": delta_args, "check_mode": True},
        {"name": "delta: apply", "airgap_bundle": delta_args},
    ]
    # The check is read before the apply pushes: a playbook of its own.
    checked_only = run_playbook_allowing(
        write_play(tmp_path / "check.yml", registry_tasks[:2]), "tampered"
    )
    tampered_result = checked_only["tampered"]
    assert tampered_result["failed"] and str(biggest) in tampered_result["msg"]
    assert ": sha256 " in tampered_result["msg"]
    check = checked_only["import: check"]
    assert check["changed"] is True and check["report"]["check_mode"] is True
    assert check["report"]["bytes_to_send"] > 0
    assert pushes(registry) == [], "check mode (and the tampered bundle) pushed nothing"
    assert not state.exists(), "check mode created no state database"
    assert not relay_lock_path.exists()

    results = run_playbook_allowing(write_play(tmp_path / "import.yml", registry_tasks[2:]))
    applied, again = results["import: apply"], results["import: again"]
    assert applied["changed"] is True and applied["report"]["status"] == "ok"
    assert applied["report"]["bytes_sent"] > 0 and applied["report"]["verify"]["failed"] == 0
    assert again["changed"] is False
    assert (again["report"]["bytes_sent"], again["report"]["blobs_uploaded"]) == (0, 0)
    assert read_lock(relay_lock_path) is not None
    assert verify(locked, RegistryClient(registry.url), deep=True)["failed"] == 0
    assert results["inventory"]["changed"] is True
    assert inventory.exists() and Path(f"{inventory}.sig").exists()
    # The registry holds everything the lock names: the delta carries no content.
    plan = results["delta: check"]["report"]
    made = results["delta: apply"]["report"]
    assert plan["kind"] == made["kind"] == "delta"
    assert plan["planned"] == {"manifests": 0, "blobs": 0, "content_bytes": 0}
    assert (made["manifests"], made["blobs"], made["content_bytes"]) == (0, 0, 0)
    assert made["skipped"] == plan["skipped"]
    assert made["skipped"]["blobs"] == report["blobs"]
