"""Real Trivy reads the lab's DB: the sample pushed to a real Distribution, the DB artifact and
the images copied out of it with skopeo, and ``trivy image --input`` run offline on them."""

from __future__ import annotations

import gzip
import io
import json
import os
import subprocess
import tarfile
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from mirror_lists import TRIVY

from airgap_lab.sample import (
    BASE_REPOSITORY,
    TRIVY_DB_REPOSITORY,
    TRIVY_DB_TAG,
    VULNERABLE_PACKAGE,
    VULNERABLE_REPOSITORY,
    VULNERABLE_TAG,
    Sample,
    SampleSpec,
    build,
    push,
)
from airgap_lab.trivydb import (
    FIXTURE,
    FIXTURE_VULNERABILITY_ID,
    LAYER_MEDIA_TYPE,
    Advisory,
    metadata,
    write_db,
)
from airgapped_registry.transport.registry import RegistryClient

pytestmark = pytest.mark.integration

SKOPEO = "/usr/bin/skopeo"
UPDATED_AT = datetime(2026, 11, 30, tzinfo=UTC)
SPEC = SampleSpec(
    repositories=1, tags_per_repository=1, base_layer_bytes=2048, unique_layer_bytes=2048
)
# One image of each kind the sample holds besides the vulnerable one.
CLEAN_IMAGES = (f"{BASE_REPOSITORY}:1.0.0", "sample/app-001:1.0.0")
OFFLINE = (
    "--skip-db-update",
    "--skip-java-db-update",
    "--offline-scan",
    "--skip-version-check",
    "--disable-telemetry",
    "--quiet",
)


def run(argv: list[str | Path], **kwargs) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(item) for item in argv], capture_output=True, text=True, timeout=300, **kwargs
    )


def skopeo_copy(source: str, destination: str) -> None:
    if not os.access(SKOPEO, os.X_OK):
        pytest.fail(f"{SKOPEO} is missing: the project's setup script installs skopeo")
    result = run(
        [SKOPEO, "--insecure-policy", "copy", "--src-tls-verify=false", source, destination]
    )
    assert result.returncode == 0, f"skopeo copy {source}: {result.stderr}"


def trivy(layout: Path, cache: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    if not os.access(TRIVY, os.X_OK):
        pytest.fail(f"{TRIVY} is missing: ./scripts/bootstrap installs trivy into .venv")
    argv = [TRIVY, "image", "--input", layout, "--cache-dir", cache, *OFFLINE, *extra]
    return run(argv, env={**os.environ, "HOME": str(cache)})


def findings(result: subprocess.CompletedProcess[str]) -> list[dict]:
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    return [
        vulnerability
        for target in report.get("Results") or []
        for vulnerability in target.get("Vulnerabilities") or []
    ]


@pytest.fixture(scope="module")
def sample() -> Sample:
    return build(SPEC, db_updated_at=UPDATED_AT)


@pytest.fixture(scope="module")
def served(distribution_factory, sample, tmp_path_factory) -> dict[str, Path]:
    """The sample's images as OCI layouts (amd64) and a cache dir holding the served DB."""
    registry = distribution_factory()
    push(sample, RegistryClient(registry.url))
    root = tmp_path_factory.mktemp("trivydb")
    address = registry.address
    layouts = {}
    for reference in (f"{VULNERABLE_REPOSITORY}:{VULNERABLE_TAG}", *CLEAN_IMAGES):
        layout = root / reference.replace("/", "_").replace(":", "_")
        skopeo_copy(f"docker://{address}/{reference}", f"oci:{layout}:{reference.split(':')[1]}")
        layouts[reference] = layout
    # The DB as the scanner gets it: the artifact as served, its layer unpacked.
    artifact = root / "trivy-db"
    skopeo_copy(
        f"docker://{address}/{TRIVY_DB_REPOSITORY}:{TRIVY_DB_TAG}",
        f"oci:{artifact}:{TRIVY_DB_TAG}",
    )
    (entry,) = json.loads((artifact / "index.json").read_text())["manifests"]
    assert entry["digest"] == sample.expected()[f"{TRIVY_DB_REPOSITORY}:{TRIVY_DB_TAG}"]["digest"]
    manifest = json.loads((artifact / "blobs" / "sha256" / entry["digest"][7:]).read_text())
    (layer,) = manifest["layers"]
    assert layer["mediaType"] == LAYER_MEDIA_TYPE
    cache = root / "cache"
    (cache / "db").mkdir(parents=True)
    archive = (artifact / "blobs" / "sha256" / layer["digest"][7:]).read_bytes()
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(archive))) as tar:
        for member in tar.getmembers():
            assert member.name in ("trivy.db", "metadata.json") and member.isfile(), member
            (cache / "db" / member.name).write_bytes(tar.extractfile(member).read())  # type: ignore[union-attr]
    return {**layouts, "cache": cache}


def test_trivy_reports_the_fixture_for_sample_vulnerable_only(served) -> None:
    cache = served["cache"]
    assert json.loads((cache / "db" / "metadata.json").read_text()) == metadata(UPDATED_AT)
    vulnerable = served[f"{VULNERABLE_REPOSITORY}:{VULNERABLE_TAG}"]
    started = time.monotonic()
    result = trivy(vulnerable, cache, "--format", "json")
    elapsed = time.monotonic() - started
    (finding,) = findings(result)
    assert {
        key: finding[key]
        for key in ("VulnerabilityID", "PkgName", "InstalledVersion", "FixedVersion", "Severity")
    } == {
        "VulnerabilityID": FIXTURE_VULNERABILITY_ID,
        "PkgName": VULNERABLE_PACKAGE.name,
        "InstalledVersion": VULNERABLE_PACKAGE.version,
        "FixedVersion": VULNERABLE_PACKAGE.fixed_version,
        "Severity": "CRITICAL",
    }
    assert finding["DataSource"]["ID"] == "alpine"
    print(f"trivy image on {VULNERABLE_REPOSITORY}: {elapsed:.2f} s")
    for reference in CLEAN_IMAGES:
        assert findings(trivy(served[reference], cache, "--format", "json")) == [], reference


def test_exit_code_fires_on_critical_for_sample_vulnerable_only(served) -> None:
    gate = ("--exit-code", "1", "--severity", "CRITICAL")
    vulnerable = trivy(served[f"{VULNERABLE_REPOSITORY}:{VULNERABLE_TAG}"], served["cache"], *gate)
    assert vulnerable.returncode == 1, vulnerable.stderr
    assert FIXTURE_VULNERABILITY_ID in vulnerable.stdout
    for reference in CLEAN_IMAGES:
        clean = trivy(served[reference], served["cache"], *gate)
        assert clean.returncode == 0, (reference, clean.stderr)


def test_trivy_reads_a_db_spread_over_overflow_pages(served, tmp_path) -> None:
    """Thousands of advisories: every bucket here is one leaf continued on overflow pages."""
    template = FIXTURE[0]
    on_busybox = [
        Advisory(**{**vars(template), "vulnerability_id": f"CVE-2099-{number:05d}"})
        for number in range(1000, 1400)
    ]
    elsewhere = [
        Advisory(
            **{
                **vars(template),
                "vulnerability_id": f"CVE-2098-{number:05d}",
                "package": f"package-{number:05d}",
                "severity": "LOW",
            }
        )
        for number in range(3000)
    ]
    cache = tmp_path / "cache"
    (cache / "db").mkdir(parents=True)
    database = cache / "db" / "trivy.db"
    write_db(database, updated_at=UPDATED_AT, advisories=[*elsewhere, *on_busybox])
    assert database.stat().st_size > 100 * 4096

    result = trivy(served[f"{VULNERABLE_REPOSITORY}:{VULNERABLE_TAG}"], cache, "--format", "json")
    reported = findings(result)
    assert sorted(item["VulnerabilityID"] for item in reported) == sorted(
        advisory.vulnerability_id for advisory in on_busybox
    )
    assert {(item["PkgName"], item["Severity"]) for item in reported} == {
        (VULNERABLE_PACKAGE.name, "CRITICAL")
    }
