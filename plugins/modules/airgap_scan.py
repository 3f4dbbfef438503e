#!/usr/bin/python
"""Ansible module: the registry host's scanner - verdicts, scans, the vulnerability DB."""

from __future__ import annotations

DOCUMENTATION = r"""
module: airgap_scan
short_description: Read verdicts, scan digests, install the vulnerability DB
description:
  - Works on the registry host, configured by its provenance file (O(config)), as
    C(airgap scan status|now|db update) do.
  - O(action=status) reads the verdicts the state database holds, per repository
    (O(repository)) or per digest (O(digest)), with counts by severity, their
    status as it stands now (C(stale) when the DB they were made with is not the
    current one or the current one is older than C(scanning.db.max_age)), and the
    DB in use with its C(UpdatedAt) and age. Never changes anything.
  - O(action=now) scans the digests O(references) name, or every tag the backend
    serves (O(all)), with Trivy and the installed DB, judges each by the policy,
    attests and signs as the scan service does, and records the verdict. A digest
    whose verdict is current (made with the current DB; C(skipped) for what is no
    container image) is not scanned again unless O(force) - unlike C(airgap scan now),
    which always scans, so that a play run twice changes nothing the second time.
  - O(action=db_update) installs the DB artifact (C(scanning.db.repository:tag)) from
    the backend when the lock names its digest, checked and swapped in atomically; a
    refused artifact fails the task and the previous DB stays in use.
  - Everything in C(docs/provenance-modules.md).
version_added: "0.2.0"
author: Airgapped Registry
requirements:
  - the airgapped_registry engine on the registry host; Trivy where
    C(scanning.trivy) says and cosign (O(cosign)) for O(action=now)
options:
  action:
    description: What to do.
    type: str
    choices: [status, now, db_update]
    default: status
  repository:
    description: With O(action=status), only the verdicts of this repository.
    type: str
  digest:
    description:
      - With O(action=status), only the verdict of this digest (C(sha256:...)); the
        task fails when there is none.
    type: str
  references:
    description:
      - With O(action=now), what to scan - C(REPO@DIGEST) or C(REPO:TAG), read from the
        backend (a tag is resolved there to its digest).
      - One of O(references) and O(all) is required with O(action=now).
    type: list
    elements: str
  all:
    description: With O(action=now), every tag the backend serves (cosign's own tags left out).
    type: bool
    default: false
  force:
    description: With O(action=now), scan even a digest whose verdict is current.
    type: bool
    default: false
extends_documentation_fragment:
  - airgap_provenance
attributes:
  check_mode:
    support: full
    details:
      - O(action=now) resolves O(references) (one HEAD each; with O(all) the catalog, tag
        lists and a HEAD per tag) and reports the digests it would scan; nothing is
        scanned, attested, signed or recorded.
      - O(action=db_update) compares the digest the backend serves, the lock's and the
        installed DB's; nothing is downloaded.
      - O(action=status) reads only; the same in check mode.
  diff_mode:
    support: partial
    details:
      - O(action=db_update) - the DB digest (and C(UpdatedAt)) before and after.
      - O(action=now) - per digest scanned, its status before (or absent) and after.
"""

EXAMPLES = r"""
- name: Verdicts of one repository
  airgap_scan:
    config: /etc/airgapped-registry/provenance.yaml
    repository: sample/vulnerable
  register: verdicts

- name: Fail when any verdict fails or is stale
  ansible.builtin.assert:
    that: >-
      (verdicts.report.totals.fail | default(0)) == 0 and
      (verdicts.report.totals.stale | default(0)) == 0
    fail_msg: "{{ verdicts.summary }}"

- name: Install the DB the nightly sync brought
  airgap_scan:
    config: /etc/airgapped-registry/provenance.yaml
    action: db_update

- name: Scan what has no current verdict, now
  airgap_scan:
    config: /etc/airgapped-registry/provenance.yaml
    action: now
    all: true

- name: Scan one image again, whatever its verdict
  airgap_scan:
    config: /etc/airgapped-registry/provenance.yaml
    action: now
    references: [ci/app:1.2.0]
    force: true
"""

RETURN = r"""
report:
  description:
    - O(action=status) - C(airgap scan status)'s report - C(db) (C(digest),
      C(updated_at), C(stale), C(max_age_seconds); null when no DB is installed),
      C(totals) (verdicts by status as read now, C(stale) included), C(queue) (digests
      waiting for the scan service), C(last_reconciliation), C(verdicts) (each with
      C(repository), C(digest), C(status), C(stale) (why, when stale), C(counts) by
      severity, C(fail_on), C(failing), C(db), C(scanned_at), C(error), C(children); with
      O(digest) also C(findings) - C(id), C(package), C(installed), C(fixed),
      C(severity), C(allowed), C(reason), ...).
    - O(action=now) - C(scanned) (verdicts recorded), C(current) (left as they were),
      C(failed) (recorded verdicts that fail), C(errors), C(results) (per digest -
      C(repository), C(digest), C(status), C(counts), C(failing), C(scans), C(reused),
      C(attested), C(signed), C(recorded)); in check mode C(would_scan) and C(current)
      (lists of C(REPO@DIGEST)).
    - O(action=db_update) - C(airgap scan db update)'s report - C(changed),
      C(repository), C(tag), C(digest), C(previous) and C(current) (the installed DB -
      C(digest), C(updated_at), C(installed_at), ...), C(stale), C(max_age_seconds); in
      check mode without C(current).
  returned: always
  type: dict
db_age_seconds:
  description: Age of the DB in use (now minus its C(UpdatedAt)); null when none is installed.
  returned: when O(action) is V(status) or V(db_update)
  type: int
summary:
  description:
    - One line, e.g. C(3 verdicts: fail 1, pass 2; DB 2026-11-30T00:00:00Z, 5 h old).
  returned: always
  type: str
"""

import traceback
from datetime import UTC, datetime

from ansible.module_utils.airgap_engine import engine_module

try:
    from airgapped_registry.errors import AirgapError
    from airgapped_registry.scanning import config as scanning_config
    from airgapped_registry.scanning import db
    from airgapped_registry.scanning.verdict import DbInfo, read_status
    from airgapped_registry.service.reconcile import served_tags
    from airgapped_registry.service.records import from_record, is_current
    from airgapped_registry.service.setup import service_parts, settings_from
    from airgapped_registry.service.worker import DigestJob
    from airgapped_registry.signing.signer import split_reference
    from airgapped_registry.state.store import StateStore
    from airgapped_registry.state.verdicts import VerdictStore
    from airgapped_registry.transport.access import RegistryAccess
except ImportError:
    ENGINE_IMPORT_ERROR = traceback.format_exc()
else:
    ENGINE_IMPORT_ERROR = None


def age_seconds(installed, now):
    return None if installed is None else int((now - installed.updated_at).total_seconds())


def describe_db(installed, now):
    if installed is None:
        return "no DB installed"
    hours = age_seconds(installed, now) // 3600
    return f"DB {installed.to_json()['updated_at']}, {hours} h old"


def current_db(installed):
    return None if installed is None else DbInfo(installed.digest, installed.updated_at)


# -- status --------------------------------------------------------------------------------


def status(p):
    """``airgap scan status``'s report (cli/scan.py run_status), read the same way."""
    config = scanning_config.load(p["config"])
    settings = settings_from(config)
    installed = db.current(config.cache_dir)
    if not settings.state.exists():
        raise AirgapError(f"state database {settings.state}: none yet (no scan was recorded)")
    now = datetime.now(UTC)
    with StateStore(settings.state) as store:
        verdicts = VerdictStore(store)
        records = verdicts.verdicts(p["repository"], p["digest"])
        depth = verdicts.queue_depth()
        last = verdicts.last_reconciliation()
    listed = []
    totals = {}
    for record in records:
        verdict = from_record(record)
        state, why = read_status(verdict, current_db(installed), settings.max_age, now)
        totals[state] = totals.get(state, 0) + 1
        shown = verdict.to_json(status=state, stale=why)
        if not p["digest"]:
            # As the CLI: a listing shows counts and failing IDs, one digest its findings.
            del shown["findings"]
        listed.append(shown)
    if p["digest"] and not listed:
        where = f" in {p['repository']}" if p["repository"] else ""
        raise AirgapError(f"{p['digest']}: no verdict{where}")
    report = {
        "db": None
        if installed is None
        else {
            "digest": installed.digest,
            "updated_at": installed.to_json().get("updated_at"),
            "stale": installed.stale(settings.max_age, now),
            "max_age_seconds": int(settings.max_age.total_seconds()),
        },
        "totals": dict(sorted(totals.items())),
        "queue": depth,
        "last_reconciliation": None if last is None else last.to_json(),
        "verdicts": listed,
    }
    counted = ", ".join(f"{name} {number}" for name, number in report["totals"].items())
    summary = f"{len(listed)} verdicts" + (f": {counted}" if counted else "")
    return {
        "changed": False,
        "report": report,
        "db_age_seconds": age_seconds(installed, now),
        "summary": f"{summary}; {describe_db(installed, now)}",
    }


# -- now -----------------------------------------------------------------------------------


def targets(client, backend, p):
    """``(repository, digest)`` to scan, in order, once each: as ``airgap scan now``."""
    found = {}
    if p["all"]:
        for repository, _, head in served_tags(client):
            if head is not None:
                found[(repository, head.digest)] = None
    for text in p["references"] or []:
        repository, reference = split_reference(text)
        head = client.head_manifest(repository, reference)
        if head is None:
            raise AirgapError(f"{text}: not in the backend {backend}")
        found[(repository, head.digest)] = None
    return list(found)


def stored_verdicts(state_path, wanted, installed):
    """The stored verdict of each ``(repository, digest)`` (None when there is none), and
    whether it stands: current, and for an index its children's verdicts too (the rule by
    which ``DigestJob.run`` without force leaves it as it is). A state database that does
    not exist yet is not created."""
    if not state_path.exists():
        return {target: (None, False) for target in wanted}
    with StateStore(state_path) as store:
        verdicts = VerdictStore(store)
        found = {}
        for repository, digest in wanted:
            record = verdicts.verdict(repository, digest)
            records = [record]
            if record is not None:
                records += [verdicts.verdict(repository, child) for child in record.children]
            stands = all(
                item is not None and is_current(item.status, item.db_digest, installed)
                for item in records
            )
            found[(repository, digest)] = (record, stands)
        return found


if ENGINE_IMPORT_ERROR is None:

    class RecordingVerdicts(VerdictStore):
        """The state's verdicts, noting which ``(repository, digest)`` got one recorded."""

        def __init__(self, store):
            super().__init__(store)
            self.recorded = set()

        def record(self, verdict):
            super().record(verdict)
            self.recorded.add((verdict.repository, verdict.digest))


def now_check(p):
    config = scanning_config.load(p["config"])
    installed = current_db(db.current(config.cache_dir))
    with RegistryAccess(config.backend, name="backend").client() as client:
        wanted = targets(client, config.backend, p)
    stored = stored_verdicts(config.state, wanted, installed)
    scan = [t for t in wanted if p["force"] or not stored[t][1]]
    left = [t for t in wanted if t not in scan]
    report = {
        "would_scan": [f"{repository}@{digest}" for repository, digest in scan],
        "current": [f"{repository}@{digest}" for repository, digest in left],
    }
    result = {
        "changed": bool(scan),
        "report": report,
        "summary": f"would scan {len(scan)} of {len(wanted)} digests",
    }
    if scan:
        result["diff"] = status_diff(scan, stored, {})
    return result


def status_diff(scanned, before, after):
    """``REPO@DIGEST status`` lines before and after, for the digests scanned."""
    old, new = [], []
    for target in scanned:
        name = "@".join(target)
        record, _ = before.get(target, (None, False))
        old.append(f"{name} {record.status if record else '(absent)'}\n")
        new.append(f"{name} {after.get(target, '(scanned)')}\n")
    return {"before": "".join(old), "after": "".join(new)}


def now(p, cosign):
    with service_parts(p["config"], **cosign) as parts:
        client = parts.client
        wanted = targets(client, parts.config.backend, p)
        stored = stored_verdicts(parts.settings.state, wanted, parts.scanner.current_db())
        with StateStore(parts.settings.state) as store:
            verdicts = RecordingVerdicts(store)
            job = DigestJob(parts.settings, parts.scanner, parts.provenance, client, verdicts)
            results, errors = [], []
            for repository, digest in wanted:
                try:
                    outcome = job.run(repository, digest, force=p["force"])
                except (AirgapError, ValueError) as exc:
                    errors.append(f"{repository}@{digest}: {exc}")
                    continue
                recorded = (repository, digest) in verdicts.recorded
                results.append({**outcome.to_json(), "recorded": recorded})
    scanned = [r for r in results if r["recorded"]]
    report = {
        "scanned": len(scanned),
        "current": len(results) - len(scanned),
        "failed": sum(r["status"] == "fail" for r in scanned),
        "errors": errors,
        "results": results,
    }
    result = {
        "changed": bool(scanned),
        "report": report,
        "summary": f"scanned {len(scanned)} of {len(wanted)} digests "
        f"({report['failed']} fail, {len(errors)} errors)",
    }
    if scanned:
        targets_scanned = [(r["repository"], r["digest"]) for r in scanned]
        after = {(r["repository"], r["digest"]): r["status"] for r in scanned}
        result["diff"] = status_diff(targets_scanned, stored, after)
    return result


# -- db update -----------------------------------------------------------------------------


def db_update(p, check):
    config = scanning_config.load(p["config"])
    source = config.db
    with RegistryAccess(config.backend, name="backend").client() as client:
        if check:
            report = db_update_check(client, config)
        else:
            report = db.install(
                client, config.cache_dir, source.repository, source.tag, source.lock
            )
    at = datetime.now(UTC)
    installed = db.current(config.cache_dir)
    if installed is not None:
        report["stale"] = installed.stale(source.max_age, at)
        report["max_age_seconds"] = int(source.max_age.total_seconds())
    if check:
        summary = f"would install {report['digest']}" if report["changed"] else "no change"
    else:
        summary = f"installed {report['digest']}" if report["changed"] else "no change"
    before = report["previous"]
    after = report.get("current") or {"digest": report["digest"]}
    return {
        "changed": report["changed"],
        "report": report,
        "db_age_seconds": age_seconds(installed, at),
        "summary": f"{summary}; {describe_db(installed, at)}",
        "diff": {"before": db_line(before), "after": db_line(after)},
    }


def db_line(record):
    if record is None:
        return "(no DB installed)\n"
    updated = record.get("updated_at")
    return f"{record['digest']}" + (f" UpdatedAt {updated}" if updated else "") + "\n"


def db_update_check(client, config):
    """What ``db.install`` would do, from digests alone: the lock's, the backend's, the
    installed one's. Refused as ``db.install`` refuses, before any download."""
    source = config.db
    expected = db.lock_digest(source.lock, source.repository, source.tag)
    artifact = f"{source.repository}:{source.tag}"
    head = client.head_manifest(source.repository, source.tag)
    if head is None:
        raise db.DbError(f"DB artifact {artifact}: not in the backend {config.backend}")
    if head.digest != expected:
        raise db.DbError(
            f"DB artifact {artifact}: the registry serves {head.digest}, "
            f"the lock {source.lock} says {expected}"
        )
    installed = db.current(config.cache_dir)
    return {
        "changed": installed is None or installed.digest != head.digest,
        "repository": source.repository,
        "tag": source.tag,
        "digest": head.digest,
        "previous": None if installed is None else installed.to_json(),
    }


def main():
    module = engine_module(
        {
            "config": {"type": "path", "required": True},
            "cosign": {"type": "path"},
            "action": {
                "type": "str",
                "choices": ["status", "now", "db_update"],
                "default": "status",
            },
            "repository": {"type": "str"},
            "digest": {"type": "str"},
            "references": {"type": "list", "elements": "str"},
            "all": {"type": "bool", "default": False},
            "force": {"type": "bool", "default": False},
        },
        ENGINE_IMPORT_ERROR,
        registry=False,
    )
    p = module.params
    cosign = {"cosign": p["cosign"]} if p["cosign"] else {}
    action = p["action"]
    try:
        if action == "status":
            result = status(p)
        elif action == "now":
            if bool(p["references"]) == p["all"]:
                module.fail_json(msg="action=now: name references or set all: true (not both)")
            result = now_check(p) if module.check_mode else now(p, cosign)
        else:
            result = db_update(p, module.check_mode)
    except (AirgapError, ValueError, OSError) as exc:
        module.fail_json(msg=f"scan {action.replace('_', ' ')} ({p['config']}): {exc}")
    if action == "now" and result["report"].get("errors"):
        errors = result["report"]["errors"]
        module.fail_json(
            msg=f"{len(errors)} of {len(errors) + len(result['report']['results'])} digests "
            "could not be scanned: " + "; ".join(errors),
            **result,
        )
    diff = result.pop("diff", None)
    if module._diff and diff and result["changed"]:
        result["diff"] = diff
    module.exit_json(**result)


if __name__ == "__main__":
    main()
