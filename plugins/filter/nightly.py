"""Filter plugin: what one run of the nightly job changed, from its ``--json`` output.

``/usr/local/sbin/airgap-nightly --json`` (roles/mirror) prints the reports of its
steps as one object: ``sync`` (``airgap sync --report``, with ``relock`` on the relay),
``lock`` (``airgap lock publish`` on the relay, ``fetch`` on the registry host),
``verify``, and on the registry host ``scan_db`` (``airgap scan db update``) and
``sign`` (``airgap sign --lock``). playbooks/sync.yml reports ``changed`` from it.
"""

from __future__ import annotations

DOCUMENTATION = r"""
name: airgap_nightly_changed
short_description: Whether a nightly run changed anything
description:
  - True when the run copied an entry, rewrote the relay's lock, published a new
    lock (relay) or fetched one that differs (registry host), installed another
    vulnerability DB or signed a digest (registry host).
options:
  _input:
    description: The object C(airgap-nightly --json) printed.
    type: dict
    required: true
"""


def airgap_nightly_changed(run):
    sync = run.get("sync") or {}
    lock = run.get("lock") or {}
    return bool(
        sync.get("copied", 0) > 0
        or (sync.get("relock") or {}).get("written", False)
        or lock.get("changed", False)
        or (run.get("scan_db") or {}).get("changed", False)
        or _signed(run.get("sign") or {})
    )


def _signed(report):
    """``airgap sign`` counts the digests it signed (``signed``); digests the active key
    had signed already are ``skipped``."""
    return bool(report.get("changed", False) or report.get("signed", 0) > 0)


class FilterModule:
    def filters(self):
        return {"airgap_nightly_changed": airgap_nightly_changed}
