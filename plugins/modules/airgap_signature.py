#!/usr/bin/python
"""Ansible module: the appliance's signatures - verify a reference, sign digests."""

from __future__ import annotations

DOCUMENTATION = r"""
module: airgap_signature
short_description: Verify or make the appliance's cosign signatures
description:
  - Works on the registry host through the gateway named by C(signing.registry) of its
    provenance file (O(config)), with the appliance's client identity, as
    C(airgap signature verify) and C(airgap sign) do.
  - O(action=verify) checks each of O(references) with every published key (the active
    one and those still verifying after a rotation; C(cosign verify
    --insecure-ignore-tlog)) and returns which keys verify it. A reference no published
    key verifies - unsigned, or signed by a retired or foreign key - fails the task,
    naming it and what cosign said per key. Never changes anything.
  - O(action=sign) signs with the active key every digest O(references) name, or every
    digest O(lock) publishes - an index and each of its children, so a pull by a child's
    digest verifies too - with C(--tlog-upload=false). A digest that already carries the
    active key's signature for that repository is left alone (nothing uploaded), so
    signing again changes nothing.
  - Keys are made and rotated with M(airgap_signing_key). Everything in
    C(docs/provenance-modules.md).
version_added: "0.2.0"
author: Airgapped Registry
requirements:
  - the airgapped_registry engine and cosign (O(cosign)) on the registry host
options:
  action:
    description: What to do.
    type: str
    choices: [verify, sign]
    default: verify
  references:
    description:
      - C(REPO@DIGEST) or C(REPO:TAG), read through the gateway (a tag is resolved
        there). Required with O(action=verify); with O(action=sign), this or O(lock).
    type: list
    elements: str
    aliases: [reference]
  lock:
    description:
      - With O(action=sign), a mirror lock file - every digest it publishes is signed
        (each entry's, and the children it copies), as C(airgap sign --lock).
    type: path
  tool_timeout:
    description: Seconds one cosign run may take; unset, the engine's default (3600).
    type: float
extends_documentation_fragment:
  - airgap_provenance
attributes:
  check_mode:
    support: full
    details:
      - O(action=sign) reads each digest's C(.sig) manifest and checks its signatures
        against the active public key, as before signing, and reports the digests it
        would sign; no cosign runs, nothing is uploaded.
      - O(action=verify) reads only; the same in check mode.
  diff_mode:
    support: none
"""

EXAMPLES = r"""
- name: Which published key verifies the image?
  airgap_signature:
    config: /etc/airgapped-registry/provenance.yaml
    reference: sample/base:1.0.0
  register: signature

- name: Sign what the nightly sync published (as the nightly job does)
  airgap_signature:
    config: /etc/airgapped-registry/provenance.yaml
    action: sign
    lock: /var/lib/airgapped-registry/relay.lock

- name: Sign an image pushed by hand
  airgap_signature:
    config: /etc/airgapped-registry/provenance.yaml
    action: sign
    references: [ci/app@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef]
"""

RETURN = r"""
verified:
  description: With O(action=verify), per reference as given, the ids of the keys that verify it.
  returned: when O(action) is V(verify)
  type: dict
  sample: {"sample/base:1.0.0": ["20261130T104100Z"]}
report:
  description:
    - O(action=verify) - C(results), the engine's report per reference - C(reference)
      (as the gateway names it), C(verified), C(keys), C(published) (the ids of the
      published keys), C(problems) (per key that did not verify, cosign's reason).
    - O(action=sign) - C(airgap sign)'s report - C(registry), C(key) (the active key's
      id), C(signed), C(skipped), C(failed), C(errors), C(results) (per digest -
      C(repository), C(digest), C(result), C(detail), C(seconds)), C(requests),
      C(tools) (cosign runs), C(seconds); in check mode C(key), C(would_sign) and
      C(signed) (lists of C(REPO@DIGEST)), C(requests).
  returned: always
  type: dict
summary:
  description: One line, e.g. C(signed 3, already signed 5 (key 20261130T104100Z)).
  returned: always
  type: str
"""

import traceback

from ansible.module_utils.airgap_engine import engine_module

try:
    from airgapped_registry.errors import AirgapError
    from airgapped_registry.mirror.lock import read_lock
    from airgapped_registry.signing.config import load_signing
    from airgapped_registry.signing.signer import PublicKey, Signer, split_reference
    from airgapped_registry.tools.process import Tools
    from airgapped_registry.transport.counters import RequestCount
except ImportError:
    ENGINE_IMPORT_ERROR = traceback.format_exc()
else:
    ENGINE_IMPORT_ERROR = None


def signer_for(p):
    tools = Tools(**({"timeout": p["tool_timeout"]} if p["tool_timeout"] is not None else {}))
    cosign = {"cosign_path": p["cosign"]} if p["cosign"] else {}
    return Signer(load_signing(p["config"]), tools=tools, **cosign)


def lock_targets(path):
    """Every ``(repository, digest)`` the lock publishes, once each (as ``airgap sign --lock``):
    each entry's digest and the children it copies."""
    locked = read_lock(path)
    if locked is None:
        raise AirgapError(f"{path}: no lock file")
    found = {}
    for entry in locked.entries:
        found[(entry.destination, entry.digest)] = None
        for child in entry.children:
            if child.copy:
                found[(entry.destination, child.digest)] = None
    return list(found)


def targets(signer, p):
    """What to sign, and whether an index's children are still to be looked up (a lock
    lists them already, which saves a GET per digest)."""
    if p["lock"]:
        return lock_targets(p["lock"]), False
    found = {}
    for text in p["references"]:
        repository, reference = split_reference(text)
        found[(repository, signer.resolve(repository, reference))] = None
    return list(found), True


def verify(module, p):
    results, verified, unverified = [], {}, []
    with signer_for(p) as signer:
        for text in p["references"]:
            report = signer.verify(*split_reference(text))
            results.append(report)
            verified[text] = report["keys"]
            if not report["verified"]:
                unverified.append(
                    f"{report['reference']}: no published key verifies it "
                    f"({'; '.join(report['problems']) or 'no key is published'})"
                )
    result = {
        "changed": False,
        "verified": verified,
        "report": {"results": results},
        "summary": "; ".join(
            f"{text}: key {', '.join(ids)}" for text, ids in verified.items() if ids
        )
        or "nothing verified",
    }
    if unverified:
        module.fail_json(msg="; ".join(unverified), **result)
    return result


def sign_check(p):
    """What ``Signer.sign_all`` would sign: each subject without the active key's signature."""
    with signer_for(p) as signer:
        before = RequestCount.of(signer.client)
        active = signer.ring.active
        key = PublicKey(active.public_key(signer.ring.directory))
        subjects = {}
        wanted, expand = targets(signer, p)
        for repository, digest in wanted:
            for subject in signer.subjects(repository, digest) if expand else [digest]:
                subjects[(repository, subject)] = None
        would, done = [], []
        for repository, digest in subjects:
            (done if signer.signed_by(repository, digest, key) else would).append(
                f"{repository}@{digest}"
            )
        report = {
            "registry": signer.config.registry,
            "key": active.id,
            "would_sign": would,
            "signed": done,
            "requests": before.since(signer.client),
        }
    return {
        "changed": bool(would),
        "report": report,
        "summary": f"would sign {len(would)}, already signed {len(done)} (key {active.id})",
    }


def sign(module, p):
    with signer_for(p) as signer:
        wanted, expand = targets(signer, p)
        report = signer.sign_all(wanted, expand=expand)
    result = {
        "changed": report["signed"] > 0,
        "report": report,
        "summary": f"signed {report['signed']}, already signed {report['skipped']} "
        f"(key {report['key']})" + (f", failed {report['failed']}" if report["failed"] else ""),
    }
    if report["failed"]:
        module.fail_json(
            msg=f"{report['failed']} of {len(report['results'])} digests could not be signed: "
            + "; ".join(report["errors"]),
            **result,
        )
    return result


def main():
    module = engine_module(
        {
            "config": {"type": "path", "required": True},
            "cosign": {"type": "path"},
            "action": {"type": "str", "choices": ["verify", "sign"], "default": "verify"},
            "references": {"type": "list", "elements": "str", "aliases": ["reference"]},
            "lock": {"type": "path"},
            "tool_timeout": {"type": "float"},
        },
        ENGINE_IMPORT_ERROR,
        registry=False,
        mutually_exclusive=[("references", "lock")],
        required_if=[
            ("action", "verify", ("references",)),
            ("action", "sign", ("references", "lock"), True),
        ],
    )
    p = module.params
    if p["lock"] and p["action"] == "verify":
        module.fail_json(msg="lock: only with action=sign; verify names references")
    try:
        if p["action"] == "verify":
            result = verify(module, p)
        elif module.check_mode:
            result = sign_check(p)
        else:
            result = sign(module, p)
    except (AirgapError, ValueError, OSError) as exc:
        module.fail_json(msg=f"{p['action']} ({p['config']}): {exc}")
    module.exit_json(**result)


if __name__ == "__main__":
    main()
