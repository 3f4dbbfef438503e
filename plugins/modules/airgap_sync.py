#!/usr/bin/python
"""Ansible module: bring a registry in line with the mirror lock (plan in check mode)."""

from __future__ import annotations

DOCUMENTATION = r"""
module: airgap_sync
short_description: Copy what a registry lacks of the mirror lock
description:
  - Plans with one manifest HEAD per lock entry at O(registry), then copies the
    entries that are missing or moved from their source (skopeo, by digest;
    signatures alongside), checks them and writes each tag last
    (C(airgap sync), C(docs/mirror.md)).
  - On the relay the sources are the upstream registries of the mirror list; on
    the registry host O(spec) holds only the relay as source and O(lock) is the
    lock fetched with M(airgap_lock) O(airgap_lock#module:mode=fetch).
  - Records each entry in the state database and holds the run lock beside it,
    so a cron run and this module never overlap.
  - Fails, with the report, when any entry failed.
version_added: "0.1.0"
author: Airgapped Registry
requirements:
  - the airgapped_registry engine, skopeo (and cosign for signature policies)
    on the host that runs the module
options:
  lock:
    description: The lock file.
    type: path
    required: true
  spec:
    description: The mirror list (how to reach each source, signature policies).
    type: path
    required: true
  registry:
    description: URL of the destination registry, e.g. C(https://registry:443).
    type: str
    required: true
  auth_file:
    description: An C(auth.json) with credentials for O(registry).
    type: path
  workers:
    description: Entries handled side by side.
    type: int
    default: 4
  keep_going:
    description: Go on with the other entries after a failure.
    type: bool
    default: false
  force:
    description:
      - Copy every entry again, checking each blob and child, whatever its tag names
        (repairs what M(airgap_verify) with O(airgap_verify#module:deep) found missing).
    type: bool
    default: false
  engine_copy_max_bytes:
    description:
      - An entry with at most this many bytes left to upload (after the blobs the
        destination holds or can mount) is copied by the engine over its own connections;
        a heavier one by skopeo. V(0) makes skopeo copy every entry.
    type: int
    default: 16777216
  state_db:
    description: The state database; the run lock C(sync.lock) lives beside it.
    type: path
    default: /var/lib/airgapped-registry/state.db
extends_documentation_fragment:
  - airgap_registry_tls
attributes:
  check_mode:
    support: full
    details:
      - The plan only - one manifest HEAD per entry, nothing copied, no source
        contacted, the state database not written.
  diff_mode:
    support: full
    details:
      - Per entry to copy, the digest the destination tag held (or absent) and
        the lock's. Outside check mode this costs the plan's HEADs once more.
"""

EXAMPLES = r"""
- name: Sync the registry from the relay (registry host)
  airgap_sync:
    lock: /var/lib/airgapped-registry/relay.lock
    spec: /etc/airgapped-registry/relay-source.yaml
    registry: https://registry:443
    ca_file: /etc/airgapped-registry/sync/ca.crt
    cert_file: /etc/airgapped-registry/sync/client.cert
    key_file: /etc/airgapped-registry/sync/client.key
    keep_going: true
"""

RETURN = r"""
report:
  description:
    - The engine's sync report (C(entries), C(copied), C(up_to_date),
      C(failed), C(bytes), C(duration), C(summary), C(errors), C(requests),
      C(results) per entry); in check mode the plan (C(entries), C(to_copy),
      C(up_to_date), C(bytes), C(requests), C(plan) per entry).
  returned: always
  type: dict
summary:
  description: The one-line summary, as cron logs it.
  returned: always
  type: str
"""

import os
import traceback

from ansible.module_utils.airgap_engine import engine_module

try:
    from airgapped_registry.errors import AirgapError
    from airgapped_registry.mirror.lock import read_lock
    from airgapped_registry.mirror.plan import plan
    from airgapped_registry.mirror.spec import load
    from airgapped_registry.mirror.sync import Destination, SyncOptions, sync
    from airgapped_registry.state.runlock import RunLock
    from airgapped_registry.state.store import StateStore
except ImportError:
    ENGINE_IMPORT_ERROR = traceback.format_exc()
else:
    ENGINE_IMPORT_ERROR = None


def current_plan(locked, target, state_db):
    """The plan as ``airgap plan`` makes it: the state's fingerprints when there is a state."""
    fingerprints = None
    if state_db and os.path.exists(state_db):
        with StateStore(state_db) as store:
            fingerprints = store.fingerprints(target.address)
    with target.client() as client:
        return plan(locked, client, fingerprints=fingerprints)


def plan_diff(planned):
    before, after = [], []
    for item in planned["plan"]:
        if item["action"] == "copy":
            before.append(f"{item['entry']} {item['current'] or '(absent)'}\n")
            after.append(f"{item['entry']} {item['digest']}\n")
    return {"before": "".join(before), "after": "".join(after)}


def main():
    module = engine_module(
        {
            "lock": {"type": "path", "required": True},
            "spec": {"type": "path", "required": True},
            "registry": {"type": "str", "required": True},
            "auth_file": {"type": "path", "no_log": False},
            "workers": {"type": "int", "default": 4},
            "keep_going": {"type": "bool", "default": False},
            "engine_copy_max_bytes": {"type": "int", "default": 16777216},
            "force": {"type": "bool", "default": False},
            "state_db": {"type": "path", "default": "/var/lib/airgapped-registry/state.db"},
        },
        ENGINE_IMPORT_ERROR,
    )
    p = module.params
    try:
        locked = read_lock(p["lock"])
        if locked is None:
            module.fail_json(msg=f"{p['lock']}: no lock file (write one with airgap_lock)")
        target = Destination(
            p["registry"],
            ca_file=p["ca_file"],
            cert_file=p["cert_file"],
            key_file=p["key_file"],
            auth_file=p["auth_file"],
        )
        planned = None
        if module.check_mode or module._diff:
            planned = current_plan(locked, target, p["state_db"]).to_json()
        if module.check_mode:
            result = {
                "changed": planned["to_copy"] > 0,
                "report": planned,
                "summary": f"entries={planned['entries']} to_copy={planned['to_copy']} "
                f"bytes<={planned['bytes']}",
            }
            if module._diff and result["changed"]:
                result["diff"] = plan_diff(planned)
            module.exit_json(**result)
        spec = load(p["spec"])
        options = SyncOptions(
            workers=p["workers"],
            keep_going=p["keep_going"],
            engine_copy_max_bytes=p["engine_copy_max_bytes"],
        )
        with RunLock.beside(p["state_db"]), StateStore(p["state_db"]) as store:
            report = sync(
                locked,
                target,
                spec,
                options=options,
                state=store,
                lock_path=p["lock"],
                force=p["force"],
            )
    except (AirgapError, ValueError, OSError) as exc:
        module.fail_json(msg=f"sync {p['lock']} into {p['registry']}: {exc}")

    result = {"changed": report["copied"] > 0, "report": report, "summary": report["summary"]}
    if module._diff and planned is not None and result["changed"]:
        copied = {item["entry"] for item in report["results"] if item["result"] == "ok"}
        planned["plan"] = [item for item in planned["plan"] if item["entry"] in copied]
        result["diff"] = plan_diff(planned)
    if report["failed"]:
        module.fail_json(
            msg=f"{report['failed']} of {report['entries']} entries failed: "
            + "; ".join(report["errors"]),
            **result,
        )
    module.exit_json(**result)


if __name__ == "__main__":
    main()
