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
    from airgapped_registry.service import operations
except ImportError:
    ENGINE_IMPORT_ERROR = traceback.format_exc()
else:
    ENGINE_IMPORT_ERROR = None


def age_seconds(db):
    """Seconds since the DB's ``UpdatedAt`` (None without a DB)."""
    if db is None or not db.get("updated_at"):
        return None
    updated = datetime.strptime(db["updated_at"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    return int((datetime.now(UTC) - updated).total_seconds())


def describe_db(db):
    if db is None:
        return "no DB installed"
    age = age_seconds(db)
    return f"DB {db['updated_at']}" + ("" if age is None else f", {age // 3600} h old")


def status_diff(names, before, after):
    """``REPO@DIGEST status`` lines before and after, for the digests scanned."""
    old = "".join(f"{name} {before.get(name) or '(absent)'}\n" for name in names)
    new = "".join(f"{name} {after.get(name, '(scanned)')}\n" for name in names)
    return {"before": old, "after": new}


def status(p):
    report = operations.status(p["config"], p["repository"], p["digest"])
    counted = ", ".join(f"{name} {number}" for name, number in report["totals"].items())
    summary = f"{len(report['verdicts'])} verdicts" + (f": {counted}" if counted else "")
    db = report["db"]
    return {
        "changed": False,
        "report": report,
        "db_age_seconds": age_seconds(db),
        "summary": f"{summary}; {describe_db(db)}",
    }


def now_check(p):
    plan = operations.plan_now(p["config"], p["references"] or [], p["all"], p["force"])
    before = plan.pop("before")
    scan = plan["would_scan"]
    result = {
        "changed": bool(scan),
        "report": plan,
        "summary": f"would scan {len(scan)} of {len(scan) + len(plan['current'])} digests",
    }
    if scan:
        result["diff"] = status_diff(scan, before, {})
    return result


def now(p, cosign):
    report = operations.now(
        p["config"], p["references"] or [], p["all"], force=p["force"], **cosign
    )
    before = report.pop("before")
    scanned = {
        f"{r['repository']}@{r['digest']}": r["status"] for r in report["results"] if r["recorded"]
    }
    total = len(report["results"]) + len(report["errors"])
    result = {
        "changed": bool(scanned),
        "report": report,
        "summary": f"scanned {len(scanned)} of {total} digests "
        f"({report['failed']} fail, {len(report['errors'])} errors)",
    }
    if scanned:
        result["diff"] = status_diff(list(scanned), before, scanned)
    return result


def db_update(p, check):
    report = operations.db_update(p["config"], check=check)
    verb = "would install" if check else "installed"
    summary = f"{verb} {report['digest']}" if report["changed"] else "no change"
    installed = report.get("current") or report["previous"]
    after = report.get("current") or {"digest": report["digest"]}
    return {
        "changed": report["changed"],
        "report": report,
        "db_age_seconds": age_seconds(installed),
        "summary": f"{summary}; {describe_db(installed)}",
        "diff": {"before": db_line(report["previous"]), "after": db_line(after)},
    }


def db_line(record):
    if record is None:
        return "(no DB installed)\n"
    updated = record.get("updated_at")
    return f"{record['digest']}" + (f" UpdatedAt {updated}" if updated else "") + "\n"


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
