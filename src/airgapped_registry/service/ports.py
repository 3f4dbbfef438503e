"""What the scan service needs from the scanner and the signer, and its own settings.

The service composes the scanning and signing domains through these two interfaces, so
the glue to the real ones (Trivy through ``scanning.scanner``, cosign through
``signing.signer``) is one small adapter each (:mod:`airgapped_registry.service.adapters`),
and the worker and the reconciliation are tested against a real registry with any scanner.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Protocol

from airgapped_registry.scanning.policy import Policy
from airgapped_registry.scanning.scanner import ManifestScan
from airgapped_registry.scanning.verdict import DbInfo


class Scanner(Protocol):
    def current_db(self) -> DbInfo | None:
        """The vulnerability DB installed now (None: none is)."""
        ...

    def scan(self, repository: str, digest: str) -> ManifestScan:
        """Scan one image manifest (not an index) of the backend: Trivy's report and its
        findings, the DB used, when; AirgapError on failure."""
        ...


class Provenance(Protocol):
    def attest(self, repository: str, digest: str, scans: Sequence[ManifestScan]) -> None:
        """Attach the vuln attestation of ``digest`` (made from ``scans``: one for an image
        manifest, its children's for an index); AirgapError on failure. Idempotent."""
        ...

    def signs(self, repository: str) -> bool:
        """Whether pushes into ``repository`` are signed by the service."""
        ...

    def sign(self, repository: str, digest: str) -> None:
        """Sign ``digest`` (an index with its children); AirgapError on failure. Idempotent."""
        ...


@dataclass(frozen=True)
class ServiceSettings:
    """The ``scanning`` settings the service reads, and where the backend and state are."""

    backend: str
    state: Path
    policy: Policy = field(default_factory=Policy)
    max_age: timedelta = timedelta(days=7)
    listen: tuple[str, int] = ("127.0.0.1", 5060)
    workers: int = 2
    reconcile_interval: float = 300.0
    attest: bool = True
    # Tries of one queued digest before an ``error`` verdict is recorded, and the first wait.
    attempts: int = 3
    backoff: float = 5.0
