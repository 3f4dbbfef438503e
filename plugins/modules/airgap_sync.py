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
  relock:
    description:
      - First resolve O(spec) against its sources and rewrite O(lock) if it changed, in the
        same run and under the same run lock (C(airgap sync --relock), the relay's nightly
        run). O(lock) need not exist yet.
    type: bool
    default: false
  workers:
    description: Entries handled side by side; unset, the engine's default (4).
    type: int
  keep_going:
    description: Go on with the other entries after a failure (the module still fails).
    type: bool
    default: false
  attempts:
    description: Tries per entry on a transient failure; unset, the engine's default (3).
    type: int
  backoff:
    description: Seconds before the second try, doubled after each; unset, the engine's
      default (1).
    type: float
  retry_times:
    description: skopeo's own retries within one try; unset, the engine's default (2).
    type: int
  tool_timeout:
    description: Seconds one skopeo or cosign run may take; unset, the engine's default (3600).
    type: float
  deadline:
    description:
      - Seconds the whole run (relock included) may take; no entry or retry starts after it,
        and the entries left are reported not attempted. V(0) for no deadline. Unset, the
        engine's default (21600).
    type: float
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
      - Unset, the engine's default (16 MiB).
    type: int
  state_db:
    description:
      - The state database; the run lock C(sync.lock) lives beside it. Unset, the
        engine's default (C(/var/lib/airgapped-registry/state.db)).
    type: path
extends_documentation_fragment:
  - airgap_registry_access
attributes:
  check_mode:
    support: full
    details:
      - The plan only - one manifest HEAD per entry, nothing copied, the state database
        not written. No source is contacted, except with O(relock), which resolves the
        mirror list (tags lists, changed manifests) and plans against that lock without
        writing it.
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

- name: Re-resolve the mirror list and sync the relay, as its nightly job does
  airgap_sync:
    relock: true
    lock: /var/lib/airgapped-registry/mirror.lock
    spec: /etc/airgapped-registry/mirror.yaml
    registry: http://127.0.0.1:5000
    keep_going: true
    attempts: 5
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
relock:
  description: With O(relock), the report of the lock's resolution (C(changed),
    C(written), C(summary), C(diff)).
  returned: when O(relock) is true
  type: dict
summary:
  description: The one-line summary, as cron logs it.
  returned: always
  type: str
"""

import traceback

from ansible.module_utils.airgap_engine import (
    engine_module,
    registry_failure,
    registry_files,
    set_options,
)

try:
    from airgapped_registry import defaults
    from airgapped_registry.errors import AirgapError
    from airgapped_registry.mirror.lock import read_lock
    from airgapped_registry.mirror.plan import plan
    from airgapped_registry.mirror.relock import relock
    from airgapped_registry.mirror.spec import load
    from airgapped_registry.mirror.sync import Destination, SyncOptions, sync
    from airgapped_registry.state.runlock import RunLock
    from airgapped_registry.state.store import StateStore, recorded_fingerprints
except ImportError:
    ENGINE_IMPORT_ERROR = traceback.format_exc()
else:
    ENGINE_IMPORT_ERROR = None


def current_plan(locked, target, state_db):
    """The plan as ``airgap plan`` makes it: the state's fingerprints when there is a state."""
    fingerprints = recorded_fingerprints(state_db, target.address)
    with target.client() as client:
        return plan(locked, client, fingerprints=fingerprints)


def plan_diff(planned):
    before, after = [], []
    for item in planned["plan"]:
        if item["action"] == "copy":
            before.append(f"{item['entry']} {item['current'] or '(absent)'}\n")
            after.append(f"{item['entry']} {item['digest']}\n")
    return {"before": "".join(before), "after": "".join(after)}


# Options passed to SyncOptions only when set: the engine holds their defaults.
SYNC_OPTIONS = (
    "workers",
    "attempts",
    "backoff",
    "retry_times",
    "engine_copy_max_bytes",
)


def sync_options(p):
    options = set_options(p, SYNC_OPTIONS)
    if p["tool_timeout"] is not None:
        options["timeout"] = p["tool_timeout"]
    if p["deadline"] is not None:
        options["deadline"] = p["deadline"] or None
    return SyncOptions(keep_going=p["keep_going"], **options)


def main():
    module = engine_module(
        {
            "lock": {"type": "path", "required": True},
            "spec": {"type": "path", "required": True},
            "registry": {"type": "str", "required": True},
            "relock": {"type": "bool", "default": False},
            "workers": {"type": "int"},
            "keep_going": {"type": "bool", "default": False},
            "attempts": {"type": "int"},
            "backoff": {"type": "float"},
            "retry_times": {"type": "int"},
            "tool_timeout": {"type": "float"},
            "deadline": {"type": "float"},
            "engine_copy_max_bytes": {"type": "int"},
            "force": {"type": "bool", "default": False},
            "state_db": {"type": "path"},
        },
        ENGINE_IMPORT_ERROR,
    )
    p = module.params
    state_db = p["state_db"] or str(defaults.STATE_PATH)
    relocked = {}
    try:
        options = sync_options(p)
        spec = load(p["spec"]) if p["relock"] else None
        previous = read_lock(p["lock"])
        if previous is None and not p["relock"]:
            module.fail_json(msg=f"{p['lock']}: no lock file (write one with airgap_lock)")
        target = Destination(p["registry"], **registry_files(p))
        planned = None
        if module.check_mode or module._diff:
            locked = previous
            if p["relock"]:
                _, locked, report = relock(spec, p["lock"], check=True, previous=previous)
                relocked.update(report)
            planned = current_plan(locked, target, state_db).to_json()
        if module.check_mode:
            result = {
                "changed": planned["to_copy"] > 0 or relocked.get("changed", False),
                "report": planned,
                "summary": f"entries={planned['entries']} to_copy={planned['to_copy']} "
                f"bytes<={planned['bytes']}",
            }
            if p["relock"]:
                result["relock"] = relocked
            if module._diff and planned["to_copy"]:
                result["diff"] = plan_diff(planned)
            module.exit_json(**result)
        spec = spec or load(p["spec"])
        manifests = {}

        def relock_now(retry):
            # retry: the sync's retry policy for the source requests (its attempts, backoff)
            _, new, report = relock(
                spec, p["lock"], manifests=manifests, previous=previous, retry=retry
            )
            relocked.update(report)
            return new

        with RunLock.beside(state_db), StateStore(state_db) as store:
            report = sync(
                relock_now if p["relock"] else previous,
                target,
                spec,
                options=options,
                state=store,
                lock_path=p["lock"],
                manifests=manifests,
                previous=previous if p["relock"] else None,
                force=p["force"],
            )
    except (AirgapError, ValueError, OSError) as exc:
        module.fail_json(
            msg=f"sync {p['lock']} into {p['registry']}: {registry_failure(exc, p)}",
            relock=relocked,
        )

    result = {
        "changed": report["copied"] > 0 or relocked.get("written", False),
        "report": report,
        "summary": report["summary"],
    }
    if p["relock"]:
        result["relock"] = relocked
    if module._diff and planned is not None and report["copied"]:
        copied = {item["entry"] for item in report["results"] if item["result"] == "ok"}
        planned["plan"] = [item for item in planned["plan"] if item["entry"] in copied]
        result["diff"] = plan_diff(planned)
    if report["failed"]:
        module.fail_json(
            # "error": the run failed before copying (the relock or the plan)
            msg=registry_failure(report["error"], p)
            if "error" in report
            else f"{report['failed']} of {report['entries']} entries failed: "
            + registry_failure("; ".join(report["errors"]), p),
            **result,
        )
    module.exit_json(**result)


if __name__ == "__main__":
    main()
