"""The cosign vulnerability predicate (``cosign attest --type vuln``) of one manifest's scan.

The format is cosign's "Vulnerability Scan Record" (predicate type
``https://cosign.sigstore.dev/attestation/vuln/v1``), as trivy's own ``--format
cosign-vuln`` writes it: ``invocation`` (parameters, uri, event_id, builder.id),
``scanner`` (``uri`` a package URL of trivy, ``version``, ``db`` {uri, version}, ``result``
= trivy's JSON report) and ``metadata`` (``scanStartedOn``, ``scanFinishedOn``). Trivy
leaves ``db`` empty; here it names the DB artifact the scan used (a package URL of the OCI
artifact, its manifest digest) and its ``UpdatedAt``, so that a node can tell how current
the verdict was without asking the appliance.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from airgapped_registry.scanning.scanner import ManifestScan

PREDICATE_TYPE = "https://cosign.sigstore.dev/attestation/vuln/v1"
SCANNER_PURL = "pkg:github/aquasecurity/trivy"


def db_uri(repository: str, digest: str, tag: str | None = None) -> str:
    """The DB artifact as a package URL (``pkg:oci/NAME@DIGEST?repository_url=...``)."""
    name = repository.rsplit("/", 1)[-1]
    uri = f"pkg:oci/{name}@{quote(digest, safe='')}?repository_url={quote(repository, safe='/')}"
    return f"{uri}&tag={quote(tag, safe='')}" if tag else uri


def vuln_predicate(scan: ManifestScan, invocation_uri: str = "") -> dict[str, Any]:
    """The predicate of ``scan`` (see the module docstring)."""
    return {
        "invocation": {
            "parameters": None,
            "uri": invocation_uri,
            "event_id": "",
            "builder.id": "",
        },
        "scanner": {
            "uri": f"{SCANNER_PURL}@{scan.trivy_version}",
            "version": scan.trivy_version,
            "db": {
                "uri": db_uri(scan.db.repository, scan.db.digest, scan.db.tag),
                "version": _rfc3339(scan.db.updated_at),
            },
            "result": scan.report,
        },
        "metadata": {
            "scanStartedOn": _rfc3339(scan.started),
            "scanFinishedOn": _rfc3339(scan.finished),
        },
    }


def _rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")
