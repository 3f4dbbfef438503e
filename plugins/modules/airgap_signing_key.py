#!/usr/bin/python
"""Ansible module: the appliance's signing keys - first key, rotation, retirement, listing."""

from __future__ import annotations

DOCUMENTATION = r"""
module: airgap_signing_key
short_description: Make, rotate, retire and list the appliance's cosign keys
description:
  - The keys in C(signing.keys_dir) of the provenance file (O(config)) - C(keys.json) and
    one cosign key pair per key, the private key encrypted with the password in
    C(signing.password_file) (never logged) - as C(airgap signing-key) keeps them.
  - O(action=init) makes the first key when there is none; otherwise nothing changes.
  - O(action=rotate) makes a new active key and leaves the previous one verifying for
    O(overlap), so that images signed before the rotation keep verifying on nodes that
    trust both public keys. Every run rotates (changed).
  - O(action=retire) retires the verifying keys whose overlap has passed (every verifying
    key with O(now)); changed when one was retired.
  - O(action=list) reports the keys and the public keys to publish (active and verifying,
    paths and PEM text). Never changes anything.
  - Everything in C(docs/provenance-modules.md).
version_added: "0.2.0"
author: Airgapped Registry
requirements:
  - the airgapped_registry engine and cosign (O(cosign)) on the registry host
options:
  action:
    description: What to do.
    type: str
    choices: [init, rotate, retire, list]
    default: list
  overlap:
    description:
      - With O(action=rotate), how long the previous key keeps verifying -
        C(<int>[s|m|h|d]), e.g. C(30d).
    type: str
  now:
    description: With O(action=retire), retire every verifying key, whatever its overlap.
    type: bool
    default: false
  tool_timeout:
    description: Seconds one cosign run may take; unset, the engine's default (3600).
    type: float
extends_documentation_fragment:
  - airgap_provenance
attributes:
  check_mode:
    support: full
    details:
      - Reads C(keys.json) and reports what would change; no key is made, nothing written.
  diff_mode:
    support: full
    details:
      - One C(id state retire_after) line per key, before and after.
"""

EXAMPLES = r"""
- name: The first signing key
  airgap_signing_key:
    config: /etc/airgapped-registry/provenance.yaml
    action: init

- name: Rotate; the old key verifies for 30 days
  airgap_signing_key:
    config: /etc/airgapped-registry/provenance.yaml
    action: rotate
    overlap: 30d

- name: Retire what is past its overlap
  airgap_signing_key:
    config: /etc/airgapped-registry/provenance.yaml
    action: retire

- name: The public keys to publish
  airgap_signing_key:
    config: /etc/airgapped-registry/provenance.yaml
  register: signing_keys
"""

RETURN = r"""
report:
  description:
    - C(airgap signing-key)'s report - C(keys_dir), C(active) (its id), C(keys) (each
      C(id), C(state), C(created), C(retire_after), C(public_key)), C(published) (each
      C(id), C(state), C(path), C(pem)); C(rotated) (C(from), C(to)) after a rotation,
      C(retired) (ids) after a retirement.
    - In check mode, the keys as they are, with C(rotated) (C(from), C(to) null) or
      C(retired) as they would be.
  returned: always
  type: dict
summary:
  description: One line, e.g. C(rotated 20261130T104100Z -> 20261201T090000Z).
  returned: always
  type: str
"""

import traceback
from datetime import UTC, datetime

from ansible.module_utils.airgap_engine import engine_module

try:
    from airgapped_registry.errors import AirgapError
    from airgapped_registry.signing import keys
    from airgapped_registry.signing.config import load_signing, parse_duration
    from airgapped_registry.tools.process import Tools
except ImportError:
    ENGINE_IMPORT_ERROR = traceback.format_exc()
else:
    ENGINE_IMPORT_ERROR = None


def key_lines(items):
    return "".join(
        f"{item['id']} {item['state']} {item.get('retire_after') or '-'}\n" for item in items
    )


def to_retire(ring, force):
    moment = datetime.now(UTC)
    return [
        key.id
        for key in ring.keys
        if key.state == keys.VERIFYING
        and (force or (key.retire_after is not None and key.retire_after <= moment))
    ]


def check(p, config):
    """What the action would do, from keys.json alone."""
    ring = keys.load(config.keys_dir)
    before = [key.to_json() for key in ring.keys]
    report = keys.listing(ring)
    action = p["action"]
    if action == "init":
        changed = not ring.keys
        after = before + ([{"id": "(new key)", "state": keys.ACTIVE}] if changed else [])
        summary = "would make the first key" if changed else "a key exists"
    elif action == "rotate":
        active = ring.active.id
        changed = True
        report["rotated"] = {"from": active, "to": None}
        after = [
            {**item, "state": keys.VERIFYING, "retire_after": f"(now + {p['overlap']})"}
            if item["id"] == active
            else item
            for item in before
        ] + [{"id": "(new key)", "state": keys.ACTIVE}]
        summary = f"would rotate {active} -> a new key"
    elif action == "retire":
        retired = to_retire(ring, p["now"])
        changed = bool(retired)
        report["retired"] = retired
        after = [
            {**item, "state": keys.RETIRED} if item["id"] in retired else item for item in before
        ]
        summary = f"would retire {', '.join(retired)}" if retired else "nothing to retire"
    else:
        changed, after, summary = False, before, listed(report)
    return changed, report, summary, before, after


def listed(report):
    published = ", ".join(f"{item['id']} ({item['state']})" for item in report["published"])
    return f"published: {published or 'none'}"


def apply(p, config):
    tools = Tools(**({"timeout": p["tool_timeout"]} if p["tool_timeout"] is not None else {}))
    cosign = p["cosign"] or "cosign"
    before = [key.to_json() for key in keys.load(config.keys_dir).keys]
    action = p["action"]
    if action == "init":
        report = keys.init(config.keys_dir, config.password(), tools, cosign)
        summary = f"made key {report['active']}" if report["changed"] else listed(report)
    elif action == "rotate":
        overlap = parse_duration(p["overlap"], "overlap")
        report = keys.rotate(config.keys_dir, config.password(), overlap, tools, cosign)
        summary = f"rotated {report['rotated']['from']} -> {report['rotated']['to']}"
    elif action == "retire":
        report = keys.retire(config.keys_dir, force=p["now"])
        summary = (
            f"retired {', '.join(report['retired'])}"
            if report["changed"]
            else ("nothing to retire")
        )
    else:
        report = {"changed": False, **keys.listing(keys.load(config.keys_dir))}
        summary = listed(report)
    changed = report.pop("changed")
    return changed, report, summary, before, report["keys"]


def main():
    module = engine_module(
        {
            "config": {"type": "path", "required": True},
            "cosign": {"type": "path"},
            "action": {
                "type": "str",
                "choices": ["init", "rotate", "retire", "list"],
                "default": "list",
            },
            "overlap": {"type": "str"},
            "now": {"type": "bool", "default": False},
            "tool_timeout": {"type": "float"},
        },
        ENGINE_IMPORT_ERROR,
        registry=False,
        required_if=[("action", "rotate", ("overlap",))],
    )
    p = module.params
    try:
        config = load_signing(p["config"])
        if p["action"] == "rotate":
            parse_duration(p["overlap"], "overlap")  # refused before anything is done
        if module.check_mode:
            changed, report, summary, before, after = check(p, config)
        else:
            changed, report, summary, before, after = apply(p, config)
    except (AirgapError, ValueError, OSError) as exc:
        module.fail_json(msg=f"signing-key {p['action']} ({p['config']}): {exc}")
    result = {"changed": changed, "report": report, "summary": summary}
    if module._diff and changed:
        result["diff"] = {"before": key_lines(before), "after": key_lines(after)}
    module.exit_json(**result)


if __name__ == "__main__":
    main()
