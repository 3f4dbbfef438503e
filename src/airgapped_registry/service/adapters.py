"""The real scanner and signer behind the service's interfaces (:mod:`.ports`).

:class:`TrivyScanner`: :class:`~airgapped_registry.scanning.scanner.Scanner` (Trivy over an
OCI layout the engine writes from the backend) for one image manifest at a time, and the DB
installed under the cache dir as the current one.

:class:`SignerProvenance`: :class:`~airgapped_registry.signing.signer.Signer` (cosign through
the gateway with the appliance key). An image manifest's attestation is the cosign vuln
predicate of its scan (:func:`~airgapped_registry.scanning.predicate.vuln_predicate`); an
index's carries its children's Trivy results in one report (``Results`` of every child,
in the index's order), scan times from the first start to the last finish, so that
``cosign verify-attestation --type vuln`` on the tag a node pulls finds every finding. A
new attestation replaces the digest's earlier vuln attestations (cosign ``--replace``), so
the latest scan is the one a node reads, and the ``.att`` manifest does not grow by a layer
with every DB update.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from airgapped_registry.errors import AirgapError
from airgapped_registry.scanning import db as vulndb
from airgapped_registry.scanning.predicate import vuln_predicate
from airgapped_registry.scanning.scanner import ManifestScan
from airgapped_registry.scanning.scanner import Scanner as TrivyRunner
from airgapped_registry.scanning.verdict import DbInfo
from airgapped_registry.signing.signer import FAILED, Signer


class TrivyScanner:
    def __init__(self, runner: TrivyRunner, cache_dir: Path) -> None:
        self.runner = runner
        self.cache_dir = cache_dir

    def current_db(self) -> DbInfo | None:
        installed = vulndb.current(self.cache_dir)
        return None if installed is None else DbInfo(installed.digest, installed.updated_at)

    def scan(self, repository: str, digest: str) -> ManifestScan:
        result = self.runner.scan(repository, digest)
        if len(result.manifests) == 1 and not result.not_scanned:
            return result.manifests[0]
        reasons = "; ".join(f"{item.digest}: {item.reason}" for item in result.not_scanned)
        raise AirgapError(f"{repository}@{digest}: not scanned ({reasons or 'no manifest'})")


def index_scan(digest: str, scans: Sequence[ManifestScan]) -> ManifestScan:
    """One scan record for an index: its children's Trivy results together."""
    first = scans[0]
    results = [result for scan in scans for result in scan.report.get("Results") or []]
    report = {
        **first.report,
        "ArtifactName": str(first.report.get("ArtifactName", "")).split("@", 1)[0] + "@" + digest,
        "Results": results,
    }
    report.pop("Metadata", None)
    return replace(
        first,
        digest=digest,
        platform=None,
        findings=tuple(finding for scan in scans for finding in scan.findings),
        report=report,
        started=min(scan.started for scan in scans),
        finished=max(scan.finished for scan in scans),
    )


class SignerProvenance:
    def __init__(self, signer: Signer) -> None:
        self.signer = signer

    def attest(self, repository: str, digest: str, scans: Sequence[ManifestScan]) -> None:
        if not scans:
            raise AirgapError(f"{repository}@{digest}: nothing scanned to attest")
        scan = scans[0] if len(scans) == 1 and scans[0].digest == digest else None
        predicate = vuln_predicate(scan or index_scan(digest, scans))
        with tempfile.TemporaryDirectory(prefix="airgap-attest-") as scratch:
            path = Path(scratch) / "predicate.json"
            path.write_text(json.dumps(predicate), encoding="utf-8")
            # Every DB update makes a new predicate for every digest: appended, the .att
            # manifest would grow by a layer a night; the latest scan is the one to check.
            outcome = self.signer.attest(repository, digest, path, "vuln", replace=True)
        if outcome.result == FAILED:
            raise AirgapError(outcome.detail)

    def signs(self, repository: str) -> bool:
        return self.signer.config.signs(repository)

    def sign(self, repository: str, digest: str) -> None:
        failures = [o.detail for o in self.signer.sign(repository, digest) if o.result == FAILED]
        if failures:
            raise AirgapError("; ".join(failures))
