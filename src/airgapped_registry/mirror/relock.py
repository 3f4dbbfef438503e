"""``airgap lock``: resolve a mirror list and write ``mirror.lock`` when it changes.

The relay runs it (alone, or inside ``airgap sync --relock``). The previous lock, when there
is one, lets unchanged tags cost one conditional ``GET`` (see
:class:`~airgapped_registry.mirror.resolve.Resolver`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, MutableMapping
from pathlib import Path
from typing import Any

from airgapped_registry.mirror.lock import Lock, diff, read_lock, write_atomically
from airgapped_registry.mirror.resolve import Resolver
from airgapped_registry.mirror.spec import MirrorSpec
from airgapped_registry.transport.registry import RegistryClient
from airgapped_registry.transport.retry import RetryPolicy
from airgapped_registry.transport.urls import UrlFetcher


def lock(
    spec: MirrorSpec,
    lock_path: str | os.PathLike[str],
    *,
    check: bool = False,
    clients: Mapping[str, RegistryClient] | None = None,
    fetch_url: UrlFetcher | None = None,
    retry: RetryPolicy | None = None,
) -> dict[str, Any]:
    """Resolve ``spec``, write ``lock_path`` if it changes (not with ``check``), report.

    The report: ``changed`` (the file's bytes would change), ``written``, ``entries``,
    ``reused`` (tags whose digest had not moved, taken from the previous lock after one
    ``GET``), ``diff`` (added / removed / moved / changed destination tags) and ``requests``
    per source. The file is replaced atomically, so a reader never sees half a lock.
    """
    return relock(spec, lock_path, check=check, clients=clients, fetch_url=fetch_url, retry=retry)[
        2
    ]


def relock(
    spec: MirrorSpec,
    lock_path: str | os.PathLike[str],
    *,
    check: bool = False,
    clients: Mapping[str, RegistryClient] | None = None,
    fetch_url: UrlFetcher | None = None,
    manifests: MutableMapping[str, bytes] | None = None,
    previous: Lock | None = None,
    retry: RetryPolicy | None = None,
) -> tuple[Lock | None, Lock, dict[str, Any]]:
    """:func:`lock`, returning ``(previous lock, new lock, report)`` for a caller that goes
    on (``airgap sync --relock``); ``manifests`` receives the manifests fetched. A caller that
    already read ``lock_path`` passes it as ``previous``. ``retry``: how the source requests
    are retried (default: :meth:`RetryPolicy.standard`)."""
    path = Path(lock_path)
    if previous is None:
        previous = read_lock(path)
    with Resolver(
        spec, clients, fetch_url, previous=previous, manifests=manifests, retry=retry
    ) as resolver:
        new = resolver.resolve()
        requests = resolver.requests()
        reused = resolver.reused
    # Equal content is no change (serialising a large lock only to compare costs more).
    changed = new != previous
    if changed and not check:
        write_atomically(path, new.to_json())
    changes = diff(previous, new)
    return (
        previous,
        new,
        {
            "lock": os.fspath(path),
            "changed": changed,
            "written": changed and not check,
            "check_mode": check,
            "entries": len(new.entries),
            "reused": reused,
            "summary": changes.summary() if previous is not None else "new lock",
            "diff": changes.to_json(),
            "requests": requests,
        },
    )
