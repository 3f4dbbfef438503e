"""Verify: the destination serves what the lock says, byte for byte.

For every entry: ``GET destination:tag`` and compare the SHA-256 of the bytes with the lock's
digest (and size); ``GET`` every child the lock copies (each platform, selected or carried
along by ``preserve-index``) and every signature, attestation and SBOM it lists, by digest or
tag, comparing digests the same way (a signature manifest holding the locked layers and
the appliance's added ones passes, see :func:`~airgapped_registry.mirror.signatures.holds`).
With ``deep``, also ``HEAD`` every blob the entry references (``LockEntry.blobs()``) in its
destination repository. The sources are never contacted.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from airgapped_registry import defaults
from airgapped_registry.errors import ContentError, DigestMismatchError, RegistryError
from airgapped_registry.mirror.lock import Lock, LockEntry, Signature
from airgapped_registry.mirror.signatures import holds
from airgapped_registry.oci.reference import digest_of
from airgapped_registry.transport.counters import RequestCount
from airgapped_registry.transport.registry import RegistryClient


@dataclass
class EntryCheck:
    entry: LockEntry
    actual: str | None = None
    problems: list[str] = field(default_factory=list)
    manifests: int = 0
    blobs: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        return {
            "entry": self.entry.reference,
            "result": "ok" if self.ok else "failed",
            "digest": self.entry.digest,
            "actual": self.actual,
            "manifests_checked": self.manifests,
            "blobs_checked": self.blobs,
            "problems": self.problems,
        }


def verify(
    lock: Lock,
    destination: RegistryClient,
    *,
    deep: bool = False,
    workers: int = defaults.SYNC_WORKERS,
) -> dict[str, Any]:
    """Check every entry of ``lock`` at ``destination``; the report lists each problem."""
    before = RequestCount.of(destination)
    with ThreadPoolExecutor(max(1, workers)) as pool:
        checks = list(pool.map(lambda entry: _check(destination, entry, deep), lock.entries))
    failed = [check for check in checks if not check.ok]
    return {
        "destination": destination.base_url,
        "deep": deep,
        "entries": len(checks),
        "ok": len(checks) - len(failed),
        "failed": len(failed),
        "manifests_checked": sum(check.manifests for check in checks),
        "blobs_checked": sum(check.blobs for check in checks),
        "problems": [
            f"{check.entry.reference}: {problem}" for check in failed for problem in check.problems
        ],
        "requests": {"destination": before.since(destination), "sources": {}},
        "results": [check.to_json() for check in checks],
    }


def _check(client: RegistryClient, entry: LockEntry, deep: bool) -> EntryCheck:
    check = EntryCheck(entry)
    repository = entry.destination
    body = _get(client, check, repository, entry.tag, f"tag {entry.tag}")
    if body is None:
        return check
    check.actual = digest_of(body)
    if check.actual != entry.digest:
        check.problems.append(
            f"tag {entry.tag} resolves to {check.actual}, the lock says {entry.digest}"
        )
        return check
    if len(body) != entry.manifest.size:
        check.problems.append(f"manifest is {len(body)} bytes, the lock says {entry.manifest.size}")
    for child in entry.children:
        if child.copy:
            _get(client, check, repository, child.digest, f"platform {child.platform or '-'}")
    for signature in entry.signatures:
        if not signature.copy:
            continue
        signature_body = _get(
            client, check, repository, signature.tag, f"{signature.kind} {signature.tag}"
        )
        if (
            signature_body is not None
            and digest_of(signature_body) != signature.digest
            and not _holds(signature_body, signature, f"{repository}:{signature.tag}")
        ):
            check.problems.append(
                f"{signature.kind} {signature.tag} is {digest_of(signature_body)}, the lock says "
                f"{signature.digest}"
            )
    if deep:
        for blob in entry.blobs():
            check.blobs += 1
            try:
                present = client.blob_exists(repository, blob.digest)
            except RegistryError as exc:
                check.problems.append(f"blob {blob.digest}: {exc}")
                continue
            if not present:
                check.problems.append(f"blob {blob.digest} ({blob.size} bytes) is missing")
    return check


def _holds(body: bytes, signature: Signature, where: str) -> bool:
    try:
        return holds(body, signature, where)
    except ContentError:
        return False


def _get(
    client: RegistryClient, check: EntryCheck, repository: str, reference: str, what: str
) -> bytes | None:
    """A manifest's bytes (a digest reference is verified on them), or None with a problem."""
    check.manifests += 1
    try:
        body, _, _ = client.get_manifest(repository, reference)
    except DigestMismatchError as exc:
        check.problems.append(f"{what}: the destination serves other bytes ({exc.actual})")
        return None
    except RegistryError as exc:
        if exc.status == 404:
            check.problems.append(f"{what} ({reference}) is missing")
        else:
            check.problems.append(f"{what}: {exc}")
        return None
    return body
