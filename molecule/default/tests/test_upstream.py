"""The sample upstream serves the seeded content with the expected digests.

The expected digests are computed here, by the generator, independently of
what the converge pushed; they are read back from the relay (the only zone
that reaches upstream) with curl and skopeo.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from airgap_lab.sample import TRIVY_DB_REPOSITORY, TRIVY_DB_TAG, SampleSpec, build, db_day

ACCEPT = ",".join(
    [
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    ]
)


@pytest.fixture(scope="module")
def db_updated_at(hosts):
    """The served DB's UpdatedAt (its manifest's created annotation): the converge took the
    day it ran on, which need not be today's."""
    manifest = json.loads(
        hosts["relay"].check_output(
            f"curl -sf -H 'Accept: {ACCEPT}' "
            f"http://upstream:5000/v2/{TRIVY_DB_REPOSITORY}/manifests/{TRIVY_DB_TAG}"
        )
    )
    created = manifest["annotations"]["org.opencontainers.image.created"]
    return datetime.fromisoformat(created)


@pytest.fixture(scope="module")
def expected(sample_params, db_updated_at):
    return build(SampleSpec(**sample_params), db_updated_at=db_updated_at).expected()


def served_digest(relay, ref):
    repo, tag = ref.rsplit(":", 1)
    head = relay.run(
        f"curl -sfI -H 'Accept: {ACCEPT}' http://upstream:5000/v2/{repo}/manifests/{tag}"
    )
    assert head.rc == 0, (ref, head.stderr)
    for line in head.stdout.splitlines():
        if line.lower().startswith("docker-content-digest:"):
            return line.split(":", 1)[1].strip()
    raise AssertionError(f"{ref}: no Docker-Content-Digest in {head.stdout!r}")


def test_every_tag_has_the_expected_digest(hosts, expected):
    served = {ref: served_digest(hosts["relay"], ref) for ref in expected}
    assert served == {ref: entry["digest"] for ref, entry in expected.items()}


def test_the_trivy_db_is_of_the_day_the_converge_ran(db_updated_at):
    # The role's default: the start of a UTC day, so the DB never looks stale to the scanner.
    assert db_updated_at == db_day(db_updated_at)
    assert datetime.now(UTC) - db_updated_at < timedelta(days=2)


def test_showcase_content_is_there(expected):
    base = [e for ref, e in expected.items() if ref.startswith("sample/base:")]
    assert any("linux/arm/v7" in e["platforms"] for e in base)
    assert any(ref.startswith("charts/demo:") for ref in expected)
    assert any(ref.startswith("sample/vulnerable:") for ref in expected)
    assert f"{TRIVY_DB_REPOSITORY}:{TRIVY_DB_TAG}" in expected


def test_skopeo_reads_a_multi_arch_image_per_platform(hosts, expected):
    """skopeo picks each platform's child of the index, arm/v7 included; the
    child's bytes hash to the digest the index names."""
    ref, entry = next((r, e) for r, e in expected.items() if "linux/arm/v7" in e["platforms"])
    repo = ref.rsplit(":", 1)[0]
    for platform, digest in entry["platforms"].items():
        os_, arch, *variant = platform.split("/")
        flags = f"--override-os {os_} --override-arch {arch}"
        if variant:
            flags += f" --override-variant {variant[0]}"
        url = f"docker://upstream:5000/{ref}"
        image = json.loads(
            hosts["relay"].check_output(f"skopeo {flags} inspect --tls-verify=false {url}")
        )
        config = json.loads(
            hosts["relay"].check_output(f"skopeo {flags} inspect --config --tls-verify=false {url}")
        )
        assert (config["os"], config["architecture"]) == (os_, arch), platform
        assert config.get("variant", "") == (variant[0] if variant else ""), platform
        # skopeo reports the digest of what the tag names: the index.
        assert image["Digest"] == entry["digest"]
        raw_sha = (
            hosts["relay"]
            .check_output(
                f"skopeo inspect --raw --tls-verify=false docker://upstream:5000/{repo}@{digest}"
                " | sha256sum"
            )
            .split()[0]
        )
        assert f"sha256:{raw_sha}" == digest, platform
