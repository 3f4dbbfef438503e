#!/usr/bin/python
"""Ansible module: check that a registry serves the mirror lock byte for byte."""

from __future__ import annotations

DOCUMENTATION = r"""
module: airgap_verify
short_description: Check a registry against the mirror lock
description:
  - For every lock entry, the destination tag resolves to the lock's digest,
    and every child and signature the lock copies is there by digest
    (C(airgap verify), C(docs/mirror.md)). O(deep) also checks every blob.
  - Never changes anything; fails naming each entry that differs.
version_added: "0.1.0"
author: Airgapped Registry
requirements:
  - the airgapped_registry engine on the host that runs the module
options:
  lock:
    description: The lock file.
    type: path
    required: true
  registry:
    description: URL of the registry to check, e.g. C(https://registry:443).
    type: str
    required: true
  deep:
    description: Also HEAD every blob of every entry.
    type: bool
    default: false
  workers:
    description: Entries checked side by side; unset, the engine's default (4).
    type: int
extends_documentation_fragment:
  - airgap_registry_access
attributes:
  check_mode:
    support: full
    details: Reads only; the same in check mode.
  diff_mode:
    support: none
"""

EXAMPLES = r"""
- name: Verify the registry against the lock it was synced from
  airgap_verify:
    lock: /var/lib/airgapped-registry/relay.lock
    registry: https://registry:443
    ca_file: /etc/airgapped-registry/sync/ca.crt
    cert_file: /etc/airgapped-registry/sync/client.cert
    key_file: /etc/airgapped-registry/sync/client.key
"""

RETURN = r"""
report:
  description:
    - The engine's report - C(entries), C(ok), C(failed), C(manifests_checked),
      C(blobs_checked), C(problems) (one line per problem, naming the entry),
      C(requests), C(results).
  returned: always
  type: dict
"""

import traceback

from ansible.module_utils.airgap_engine import (
    engine_module,
    registry_client,
    registry_failure,
    set_options,
)

try:
    from airgapped_registry.errors import AirgapError
    from airgapped_registry.mirror.lock import read_lock
    from airgapped_registry.mirror.verify import verify
except ImportError:
    ENGINE_IMPORT_ERROR = traceback.format_exc()
else:
    ENGINE_IMPORT_ERROR = None


def main():
    module = engine_module(
        {
            "lock": {"type": "path", "required": True},
            "registry": {"type": "str", "required": True},
            "deep": {"type": "bool", "default": False},
            "workers": {"type": "int"},
        },
        ENGINE_IMPORT_ERROR,
    )
    p = module.params
    try:
        locked = read_lock(p["lock"])
        if locked is None:
            module.fail_json(msg=f"{p['lock']}: no lock file")
        with registry_client(p) as client:
            report = verify(locked, client, deep=p["deep"], **set_options(p, ["workers"]))
    except (AirgapError, ValueError, OSError) as exc:
        module.fail_json(
            msg=f"verify {p['registry']} against {p['lock']}: {registry_failure(exc, p)}"
        )
    if report["failed"]:
        problems = "; ".join(report["problems"])
        module.fail_json(
            msg=f"{report['failed']} of {report['entries']} entries differ from the lock: "
            + registry_failure(problems, p),
            changed=False,
            report=report,
        )
    module.exit_json(changed=False, report=report)


if __name__ == "__main__":
    main()
