"""Helpers for the scan service's integration tests: a Distribution that sends notifications,
the sample pushed into a source registry, skopeo copies from there, waiting for verdicts."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from airgapped_registry.scanning.db import InstalledDb
from airgapped_registry.scanning.scanner import Finding, ManifestScan
from airgapped_registry.scanning.verdict import DbInfo
from airgapped_registry.state.store import StateStore
from airgapped_registry.state.verdicts import VerdictRecord, VerdictStore
from airgapped_registry.transport.registry import RegistryClient
from tests.integration.conftest import Distribution

SKOPEO = "/usr/bin/skopeo"


@dataclass
class NotifyingDistribution(Distribution):
    """A Distribution whose notifications go to ``endpoint`` (as roles/scanner sets it)."""

    endpoint: str = ""

    def write_config(self) -> None:
        super().write_config()
        config = yaml.safe_load(self.config_path.read_text())
        config["notifications"] = {
            "endpoints": [
                {
                    "name": "scanner",
                    "url": self.endpoint,
                    "timeout": "2s",
                    "threshold": 3,
                    "backoff": "1s",
                    "ignore": {"actions": ["pull"]},
                }
            ]
        }
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))


def skopeo_copy(source: str, destination: str, *extra: str) -> float:
    """``skopeo copy --all`` between two plain-HTTP registries; returns its seconds."""
    if not os.access(SKOPEO, os.X_OK):
        pytest.fail(f"{SKOPEO} is missing: the project's setup script installs skopeo")
    started = time.monotonic()
    result = subprocess.run(
        [
            SKOPEO,
            "--insecure-policy",
            "copy",
            "--all",
            "--src-tls-verify=false",
            "--dest-tls-verify=false",
            *extra,
            f"docker://{source}",
            f"docker://{destination}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, f"skopeo copy {source} {destination}: {result.stderr}"
    return time.monotonic() - started


def wait_for_verdict(
    state: Path, repository: str, digest: str, timeout: float = 60.0
) -> VerdictRecord:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with StateStore(state) as store:
            found = VerdictStore(store).verdict(repository, digest)
        if found is not None:
            return found
        time.sleep(0.05)
    pytest.fail(f"no verdict for {repository}@{digest} within {timeout} s")


@dataclass
class RecordingScanner:
    """A scanner for the service's plumbing tests: it reads the manifest from the backend
    (a real read, so a digest the backend lacks fails as with Trivy) and reports the
    findings given for its repository; it counts every scan. The real Trivy scanner is
    exercised in test_scan_trivy.py."""

    client: RegistryClient
    db: DbInfo | None = field(
        default_factory=lambda: DbInfo("sha256:" + "d" * 64, datetime.now(UTC))
    )
    findings: dict[str, Sequence[Finding]] = field(default_factory=dict)
    scans: list[tuple[str, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def current_db(self) -> DbInfo | None:
        return self.db

    def scan(self, repository: str, digest: str) -> ManifestScan:
        started = datetime.now(UTC)
        body, _, _ = self.client.get_manifest(repository, digest)
        document: dict[str, Any] = json.loads(body)
        assert "config" in document, f"{repository}@{digest} is not an image manifest"
        with self.lock:
            self.scans.append((repository, digest))
        if self.db is None:
            raise AssertionError("scanned without a DB")
        db = InstalledDb(
            Path("/nonexistent"),
            self.db.digest,
            self.db.updated_at,
            started,
            "aquasecurity/trivy-db",
            "2",
        )
        return ManifestScan(
            digest=digest,
            platform=None,
            findings=tuple(self.findings.get(repository, ())),
            report={"SchemaVersion": 2, "ArtifactName": f"{repository}@{digest}", "Results": []},
            trivy_version="recording",
            db=db,
            started=started,
            finished=datetime.now(UTC),
            blobs_fetched=0,
            layers_skipped=0,
        )


Poll = Callable[[], bool]


def eventually(check: Poll, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    pytest.fail(f"{what}: not within {timeout} s")


@dataclass
class RecordingProvenance:
    """Records what the worker asks to attest and sign (cosign itself is exercised in
    test_scan_trivy.py): ``(repository, digest, digests of the scans given)``."""

    signed_prefixes: tuple[str, ...] = ("ci/",)
    attested: list[tuple[str, str, tuple[str, ...]]] = field(default_factory=list)
    signed: list[tuple[str, str]] = field(default_factory=list)

    def attest(self, repository: str, digest: str, scans: Sequence[ManifestScan]) -> None:
        self.attested.append((repository, digest, tuple(scan.digest for scan in scans)))

    def signs(self, repository: str) -> bool:
        return repository.startswith(self.signed_prefixes)

    def sign(self, repository: str, digest: str) -> None:
        self.signed.append((repository, digest))
