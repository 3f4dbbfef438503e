#!/usr/bin/python
"""Ansible module: the mirror lock - resolve it, publish it at the relay, fetch it beyond."""

from __future__ import annotations

DOCUMENTATION = r"""
module: airgap_lock
short_description: Resolve, publish or fetch the mirror lock
description:
  - O(mode=resolve) (the relay) resolves the mirror list against the upstream
    registries and writes the lock (C(airgap lock)).
  - O(mode=publish) (the relay) pushes the lock as an OCI artifact into a
    registry, normally the relay's own, signed with O(transfer_key); nothing is
    pushed when the tag already names the same artifact (C(airgap lock publish)).
  - O(mode=fetch) (the registry host) fetches the published lock, verifies its
    transfer signature with O(trusted_keys), and rewrites it so that every
    entry is read from O(source), the relay, at its destination path; digests
    are unchanged (C(airgap lock fetch)). An unsigned or wrongly signed lock, a
    garbled or a tampered artifact fails the task and leaves O(lock) as it was.
  - Format and rules in C(docs/mirror.md), the transfer signature in
    C(docs/transfer.md).
version_added: "0.1.0"
author: Airgapped Registry
requirements:
  - the airgapped_registry engine on the host that runs the module
options:
  mode:
    description: What to do with the lock.
    type: str
    choices: [resolve, publish, fetch]
    default: resolve
  lock:
    description:
      - The lock file; written by O(mode=resolve) and O(mode=fetch), read by
        O(mode=publish).
    type: path
    required: true
  spec:
    description: The mirror list; required with O(mode=resolve).
    type: path
  registry:
    description:
      - URL of the registry holding the published lock, e.g.
        C(https://relay:443); required with O(mode=publish) and O(mode=fetch).
    type: str
  repository:
    description: Repository of the lock artifact; unset, the engine's default
      (C(airgapped-registry/mirror-lock)).
    type: str
  tag:
    description: Tag of the lock artifact; unset, the engine's default (C(current)).
    type: str
  source:
    description:
      - With O(mode=fetch), the name the registry host's mirror list gives the
        registry the lock is fetched from (its C(sources) key).
    type: str
  source_registry:
    description:
      - With O(mode=fetch), that source's C(registry) as the list writes it
        (C(host[:port])); default the host and port of O(registry).
    type: str
  transfer_key:
    description:
      - With O(mode=publish), the relay's transfer key (C(airgap transfer-key
        init)); the lock is published with its signature. Unset, the lock is
        published unsigned, and a fetch that requires a signature refuses it.
    type: path
  trusted_keys:
    description:
      - With O(mode=fetch), the transfer public keys the lock must be signed
        by, each a directory of C(*.pub) files or one C(.pub) file. Unset, the
        engine's default (C(/etc/airgapped-registry/transfer/trusted)).
    type: list
    elements: path
  allow_unsigned:
    description:
      - With O(mode=fetch), do not check the lock's transfer signature. Only
        for a site that has not deployed transfer keys yet; the task warns.
    type: bool
    default: false
extends_documentation_fragment:
  - airgap_registry_access
attributes:
  check_mode:
    support: full
    details:
      - Resolves or fetches and compares, but writes and pushes nothing.
  diff_mode:
    support: full
    details:
      - Digests per destination tag before and after (resolve, fetch), or of
        the lock artifact (publish).
"""

EXAMPLES = r"""
- name: Lock the mirror list against upstream (relay)
  airgap_lock:
    spec: /etc/airgapped-registry/mirror.yaml
    lock: /var/lib/airgapped-registry/mirror.lock

- name: Publish the lock in the relay's registry, signed with its transfer key
  airgap_lock:
    mode: publish
    lock: /var/lib/airgapped-registry/mirror.lock
    registry: http://127.0.0.1:5000
    transfer_key: /var/lib/airgapped-registry/transfer/transfer.key

- name: Fetch the relay's lock, rewritten to read from the relay (registry host)
  airgap_lock:
    mode: fetch
    lock: /var/lib/airgapped-registry/relay.lock
    registry: https://relay:443
    ca_file: /etc/airgapped-registry/sync/ca.crt
    cert_file: /etc/airgapped-registry/sync/client.cert
    key_file: /etc/airgapped-registry/sync/client.key
    source: relay
    trusted_keys: [/etc/airgapped-registry/transfer/trusted]
"""

RETURN = r"""
report:
  description:
    - The engine's report. Resolve and fetch - C(lock), C(changed), C(written),
      C(entries), C(summary), C(diff) (added, removed, moved, changed
      destination tags), C(requests); fetch also C(signed_by) (the trusted
      key's id) and C(signature). Publish - C(reference), C(digest),
      C(previous), C(lock_digest), C(signed_by), C(entries), C(published),
      C(requests).
  returned: always
  type: dict
summary:
  description: What changed, e.g. C(2 moved), C(no change), C(new lock).
  returned: always
  type: str
"""

import traceback
from pathlib import Path

from ansible.module_utils.airgap_engine import (
    engine_module,
    registry_client,
    registry_failure,
    set_options,
)

try:
    from airgapped_registry import defaults
    from airgapped_registry.errors import AirgapError
    from airgapped_registry.mirror import lockstore
    from airgapped_registry.mirror.relock import lock
    from airgapped_registry.mirror.spec import load
    from airgapped_registry.transfer import TrustedKeys, load_key
except ImportError:
    ENGINE_IMPORT_ERROR = traceback.format_exc()
else:
    ENGINE_IMPORT_ERROR = None


def lock_diff(report):
    """``before``/``after`` text: one ``destination:tag digest`` line per tag that differs."""
    before, after = [], []
    changes = report["diff"]
    for item in changes["moved"]:
        before.append(f"{item['destination']}:{item['tag']} {item['old']}\n")
        after.append(f"{item['destination']}:{item['tag']} {item['new']}\n")
    for item in changes["added"]:
        after.append(f"{item['destination']}:{item['tag']} {item['digest']}\n")
    for item in changes["removed"]:
        before.append(f"{item['destination']}:{item['tag']} {item['digest']}\n")
    for item in changes["changed"]:
        reference = f"{item['destination']}:{item['tag']} {item['digest']}"
        before.append(f"{reference}\n")
        after.append(f"{reference} ({', '.join(item['fields'])} changed)\n")
    return {"before": "".join(sorted(before)), "after": "".join(sorted(after))}


def main():
    module = engine_module(
        {
            "mode": {
                "type": "str",
                "choices": ["resolve", "publish", "fetch"],
                "default": "resolve",
            },
            "lock": {"type": "path", "required": True},
            "spec": {"type": "path"},
            "registry": {"type": "str"},
            "repository": {"type": "str"},
            "tag": {"type": "str"},
            "source": {"type": "str"},
            "source_registry": {"type": "str"},
            "transfer_key": {"type": "path"},
            "trusted_keys": {"type": "list", "elements": "path"},
            "allow_unsigned": {"type": "bool", "default": False},
        },
        ENGINE_IMPORT_ERROR,
        required_if=[
            ("mode", "resolve", ("spec",)),
            ("mode", "publish", ("registry",)),
            ("mode", "fetch", ("registry", "source")),
        ],
        mutually_exclusive=[("trusted_keys", "allow_unsigned")],
    )
    p = module.params
    check = module.check_mode
    client = None
    try:
        if p["mode"] == "resolve":
            report = lock(load(p["spec"]), p["lock"], check=check)
        else:
            artifact = set_options(p, ["repository", "tag"])
            if p["mode"] == "publish":
                key = load_key(Path(p["transfer_key"])) if p["transfer_key"] else None
            elif p["allow_unsigned"]:
                trusted = None
                module.warn(
                    "allow_unsigned: the lock's transfer signature is not checked (deploy "
                    "transfer keys and drop this option; docs/transfer.md)"
                )
            else:
                paths = p["trusted_keys"] or [defaults.TRANSFER_TRUSTED_DIR]
                trusted = TrustedKeys.load([Path(path) for path in paths])
            client = registry_client(p)
            with client:
                if p["mode"] == "publish":
                    report = lockstore.publish(p["lock"], client, key=key, check=check, **artifact)
                else:
                    report = lockstore.fetch(
                        client,
                        p["lock"],
                        source=p["source"],
                        source_registry=p["source_registry"],
                        trusted=trusted,
                        check=check,
                        **artifact,
                    )
    except (AirgapError, ValueError, OSError) as exc:
        where = p["spec"] if p["mode"] == "resolve" else p["registry"]
        module.fail_json(
            msg=f"{p['mode']} {where}: {registry_failure(exc, p)}",
            requests=client.requests if client else 0,
        )

    if p["mode"] == "publish":
        summary = "published" if report["changed"] else "no change"
        diff = {
            "before": f"{report['reference']} {report['previous'] or '(absent)'}\n",
            "after": f"{report['reference']} {report['digest']}\n",
        }
    else:
        summary = report["summary"]
        diff = lock_diff(report)
    result = {"changed": report["changed"], "report": report, "summary": summary}
    if module._diff and report["changed"]:
        result["diff"] = diff
    module.exit_json(**result)


if __name__ == "__main__":
    main()
