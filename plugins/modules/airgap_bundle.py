#!/usr/bin/python
"""Ansible module: offline bundles - export (relay), inventory and import (registry host), check."""

from __future__ import annotations

DOCUMENTATION = r"""
module: airgap_bundle
short_description: Export, take the inventory for, check or import an offline bundle
description:
  - O(action=export) (the relay) writes a signed bundle of O(lock)'s content, read from
    O(registry), into the new directory O(output); with O(inventory) (the registry host's
    signed inventory) a delta of what it lacks; with O(volume_size) split into
    C(vol-001)... volumes (C(airgap bundle export)). An existing non-empty O(output) is
    refused (a bundle is never overwritten).
  - O(action=inventory) (the registry host) writes the signed list of every manifest and
    blob O(registry) holds to O(output) and O(output)C(.sig) (C(airgap bundle inventory)).
  - O(action=check) checks the signature and every file of the bundle or volumes in
    O(paths) (C(airgap bundle check)); it never changes anything.
  - O(action=import) (the registry host) checks the bundle in O(paths) whole, then pushes
    what O(registry) lacks, verifies it against the bundle's lock and records the import in
    O(state_db) (C(airgap bundle import)); a bundle already imported sends nothing and
    reports no change. Signing and scanning after an import (the CLI's C(--sign-config))
    are not in this module; the playbooks run the CLI for them.
  - Failures are the engine's one-line message, naming the file, digest or entry.
  - Format and every refusal in C(docs/bundles.md), the transfer keys in
    C(docs/transfer.md).
version_added: "0.1.0"
author: Airgapped Registry
requirements:
  - the airgapped_registry engine on the host that runs the module
options:
  action:
    description: What to do.
    type: str
    choices: [export, inventory, check, import]
    required: true
  registry:
    description:
      - URL of the registry read (export, inventory) or written (import); required with
        every O(action) but O(action=check).
    type: str
  lock:
    description:
      - With O(action=export), the lock file whose content is carried; required there.
      - With O(action=inventory), the lock the registry was last synced to (its digest is
        recorded in the inventory).
    type: path
  output:
    description:
      - With O(action=export), the bundle directory to make (absent or empty); with
        O(action=inventory), the inventory file. Required with both.
    type: path
  paths:
    description:
      - With O(action=check) and O(action=import), the bundle directory, or its volume
        directories (O(action=check) takes any subset of them).
    type: list
    elements: path
  spec:
    description:
      - With O(action=export), the mirror list; the upstream signature keys it names go
        into the bundle.
    type: path
  inventory:
    description:
      - With O(action=export), the registry host's signed inventory; what it lists is left
        out (a delta). Its signature is checked against O(trusted_keys).
    type: path
  volume_size:
    description:
      - With O(action=export), split into volumes of at most this size each, e.g. C(4G),
        C(700M).
    type: str
  transfer_key:
    description:
      - With O(action=export) and O(action=inventory), this host's transfer key, which
        signs. Unset, the engine's default
        (C(/var/lib/airgapped-registry/transfer/transfer.key)).
    type: path
  trusted_keys:
    description:
      - The transfer public keys the bundle (check, import) or the inventory (export) must
        be signed by, each a directory of C(*.pub) files or one C(.pub) file. Unset, the
        engine's default (C(/etc/airgapped-registry/transfer/trusted)).
    type: list
    elements: path
  state_db:
    description:
      - With O(action=import), the state database (resume ledger, import record); the run
        lock C(sync.lock) lives beside it. Unset, the engine's default
        (C(/var/lib/airgapped-registry/state.db)).
    type: path
  lock_output:
    description:
      - With O(action=import), after the verify, write the bundle's lock rewritten for the
        next hop to this file (as C(airgap lock fetch) writes C(relay.lock)); needs
        O(source_registry).
    type: path
  source:
    description: With O(lock_output), the source the written lock names.
    type: str
    default: relay
  source_registry:
    description: With O(lock_output), where that source is (C(host[:port]), the relay's).
    type: str
  workers:
    description:
      - Downloads (export), repositories walked (inventory) or pushes (import) side by
        side. Unset, the engine's default (4).
    type: int
extends_documentation_fragment:
  - airgap_registry_access
attributes:
  check_mode:
    support: full
    details:
      - Export - the plan only (entries, manifests, blobs and bytes that would be carried,
        what a delta leaves out); nothing is downloaded or written.
      - Inventory - the registry is walked, nothing is written.
      - Import - the bundle is checked whole and its completeness against the registry
        (what would be sent); nothing is pushed, written or recorded.
  diff_mode:
    support: none
"""

EXAMPLES = r"""
- name: Export a full bundle of the relay's lock onto the drive (relay)
  airgap_bundle:
    action: export
    lock: /var/lib/airgapped-registry/mirror.lock
    spec: /etc/airgapped-registry/mirror.yaml
    registry: http://127.0.0.1:5000
    output: /media/drive/bundle-2026-11-30
    volume_size: 4G

- name: Import the bundle (registry host)
  airgap_bundle:
    action: import
    paths: [/media/drive/bundle-2026-11-30]
    registry: https://registry.internal:443
    ca_file: /etc/airgapped-registry/sync/ca.crt
    cert_file: /etc/airgapped-registry/sync/client.cert
    key_file: /etc/airgapped-registry/sync/client.key
    lock_output: /var/lib/airgapped-registry/relay.lock
    source_registry: relay:443
"""

RETURN = r"""
report:
  description:
    - The engine's JSON report, as the CLI prints it. Export - C(output), C(bundle),
      C(kind), C(files), C(bytes), C(manifests), C(blobs), C(skipped), C(volumes),
      C(seconds) (check mode - C(planned) with the counts it would carry). Inventory -
      C(inventory), C(digest), C(manifests), C(blobs). Check - C(bundle), C(volumes),
      C(checked_volumes), C(missing_volumes), C(files), C(bytes). Import - C(bundle),
      C(bytes_sent), C(blobs_uploaded), C(blobs_mounted), C(manifests), C(tags),
      C(verify), C(status) (check mode - C(blobs_to_send), C(bytes_to_send)).
  returned: success
  type: dict
"""

import os
import tempfile
import traceback
from pathlib import Path

from ansible.module_utils.airgap_engine import (
    engine_module,
    registry_client,
    registry_failure,
    registry_files,
    set_options,
)

try:
    from airgapped_registry import defaults
    from airgapped_registry.bundle.export import export, select
    from airgapped_registry.bundle.format import check_volumes, open_bundle, parse_size
    from airgapped_registry.bundle.importer import ImportOptions, import_bundle
    from airgapped_registry.bundle.inventory import read_inventory, take_inventory, write_inventory
    from airgapped_registry.errors import AirgapError
    from airgapped_registry.mirror.lock import Lock, LockError, write_atomically
    from airgapped_registry.mirror.lockstore import relay_lock
    from airgapped_registry.mirror.spec import load
    from airgapped_registry.mirror.sync import Destination
    from airgapped_registry.oci.reference import digest_of
    from airgapped_registry.state.imports import ImportLedger
    from airgapped_registry.state.runlock import RunLock
    from airgapped_registry.transfer import TrustedKeys, load_key
    from airgapped_registry.transport.retry import RetryPolicy
except ImportError:
    ENGINE_IMPORT_ERROR = traceback.format_exc()
else:
    ENGINE_IMPORT_ERROR = None


def trusted(p):
    return TrustedKeys.load(
        [Path(path) for path in p["trusted_keys"] or [defaults.TRANSFER_TRUSTED_DIR]]
    )


def transfer_key(p):
    return load_key(Path(p["transfer_key"] or defaults.TRANSFER_KEY))


def workers(p):
    return set_options(p, ["workers"])


def plan_export(p, inventory):
    """What an export would carry, from the lock alone (the registry is not read)."""
    path = Path(p["output"])
    # The same refusal as the export's, so that check mode fails where the run would.
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        raise AirgapError(f"{path}: exists and is not a directory")
    if path.is_dir() and any(path.iterdir()):
        raise AirgapError(f"{path}: exists and is not empty (a bundle is never overwritten)")
    try:
        data = Path(p["lock"]).read_bytes()
    except OSError as exc:
        raise AirgapError(f"{p['lock']}: {exc.strerror or exc}") from exc
    try:
        lock = Lock.from_json(data.decode("utf-8", errors="replace"), p["lock"])
    except LockError as exc:
        raise AirgapError(str(exc)) from exc
    selection = select(lock, inventory)
    items = list(selection.items.values())
    skipped = list(selection.skipped.values())
    return {
        "output": p["output"],
        "kind": "delta" if inventory is not None else "full",
        "lock_digest": digest_of(data),
        "entries": len(lock.entries),
        "planned": {
            "manifests": sum(1 for item in items if item.manifest),
            "blobs": sum(1 for item in items if not item.manifest),
            "content_bytes": sum(item.size for item in items),
        },
        "skipped": {
            "manifests": sum(1 for item in skipped if item.manifest),
            "blobs": sum(1 for item in skipped if not item.manifest),
            "bytes": sum(item.size for item in skipped),
        },
        "volume_size": parse_size(p["volume_size"]) if p["volume_size"] else None,
    }


def run_export(module, p):
    # Loaded in check mode too: a missing or unreadable key fails there as the run would.
    key = transfer_key(p)
    inventory = read_inventory(p["inventory"], trusted(p)) if p["inventory"] else None
    if module.check_mode:
        return True, plan_export(p, inventory)
    spec = load(p["spec"]) if p["spec"] else None
    volume_size = parse_size(p["volume_size"]) if p["volume_size"] else None
    with registry_client(p) as client:
        report = export(
            p["lock"],
            client,
            p["output"],
            key,
            spec=spec,
            inventory=inventory,
            volume_size=volume_size,
            **workers(p),
        )
    return True, report


def run_inventory(module, p):
    with registry_client(p) as client:
        if module.check_mode:
            document = take_inventory(client, **workers(p))
            return True, {
                "inventory": p["output"],
                "registry": document["registry"],
                "repositories": document["repositories"],
                "tags": document["tags"],
                "manifests": len(document["manifests"]),
                "blobs": len(document["blobs"]),
            }
        key = transfer_key(p)
        return True, write_inventory(client, p["output"], key, lock=p["lock"], **workers(p))


def run_check(p):
    checked = check_volumes(p["paths"], trusted(p))
    return False, {
        "bundle": checked.id,
        "kind": checked.document["kind"],
        "key_id": checked.key_id,
        "lock_digest": checked.document["lock_digest"],
        "volumes": checked.count,
        "checked_volumes": sorted(checked.volumes),
        "missing_volumes": [n for n in range(1, checked.count + 1) if n not in checked.volumes],
        "files": checked.files_checked,
        "bytes": checked.bytes_read,
    }


def run_import(module, p):
    bundle = open_bundle(p["paths"], trusted(p))
    target = Destination(p["registry"], **registry_files(p))
    options = ImportOptions(check=module.check_mode, **workers(p))
    state_db = p["state_db"] or str(defaults.STATE_PATH)
    with tempfile.TemporaryDirectory(prefix="airgap-bundle-check-") as scratch:
        if module.check_mode and not os.path.exists(state_db):
            # Nothing recorded yet: an empty ledger answers the same, and none is created.
            state_db = os.path.join(scratch, "state.db")
        with RunLock.beside(state_db), ImportLedger(state_db) as ledger, target.client() as client:
            client.retry = RetryPolicy.standard()
            report = import_bundle(bundle, client, ledger, target.address, options)
    report["key_id"] = bundle.key_id
    changed = not imported_nothing(report)
    if p["lock_output"]:
        lock = Lock.from_json(bundle.lock_text, "airgap/lock.json")
        text = relay_lock(lock, p["source"], p["source_registry"]).to_json()
        output = Path(p["lock_output"])
        # Rewritten only when it differs: a second import of the bundle changes nothing.
        if not output.exists() or output.read_text() != text:
            if not module.check_mode:
                write_atomically(output, text)
            changed = True
        report["lock_output"] = os.fspath(output)
    return changed, report


def imported_nothing(report):
    """Whether the registry was left as it was (check mode: would be)."""
    if report.get("check_mode"):
        return report["blobs_to_send"] == 0 and report["bytes_to_send"] == 0
    return not any(
        report[name]
        for name in ("bytes_sent", "blobs_uploaded", "blobs_mounted", "manifests", "tags")
    )


def main():
    module = engine_module(
        {
            "action": {
                "type": "str",
                "choices": ["export", "inventory", "check", "import"],
                "required": True,
            },
            "registry": {"type": "str"},
            "lock": {"type": "path"},
            "output": {"type": "path"},
            "paths": {"type": "list", "elements": "path"},
            "spec": {"type": "path"},
            "inventory": {"type": "path"},
            "volume_size": {"type": "str"},
            "transfer_key": {"type": "path", "no_log": False},  # a path, not the key
            "trusted_keys": {"type": "list", "elements": "path", "no_log": False},
            "state_db": {"type": "path"},
            "lock_output": {"type": "path"},
            "source": {"type": "str", "default": "relay"},
            "source_registry": {"type": "str"},
            "workers": {"type": "int"},
        },
        ENGINE_IMPORT_ERROR,
        required_if=[
            ("action", "export", ("registry", "lock", "output")),
            ("action", "inventory", ("registry", "output")),
            ("action", "check", ("paths",)),
            ("action", "import", ("registry", "paths")),
        ],
        required_by={"lock_output": ("source_registry",)},
    )
    p = module.params
    action = p["action"]
    try:
        if action == "export":
            changed, report = run_export(module, p)
        elif action == "inventory":
            changed, report = run_inventory(module, p)
        elif action == "check":
            changed, report = run_check(p)
        else:
            changed, report = run_import(module, p)
    except (AirgapError, ValueError, OSError) as exc:
        where = p["registry"] if action in ("export", "inventory") else ", ".join(p["paths"] or [])
        module.fail_json(
            msg=f"{action} {where}: {registry_failure(exc, p)}",
            report=getattr(exc, "report", None),
        )
    module.exit_json(changed=changed, report=report)


if __name__ == "__main__":
    main()
