"""The sample upstream serves the seeded content with the expected digests.

The expected digests are computed here, by the generator, independently of
what the converge pushed; they are read back from the relay (the only zone
that reaches upstream) with curl and skopeo.
"""

from __future__ import annotations

import json

import pytest

from airgap_lab.sample import SampleSpec, build

ACCEPT = ",".join(
    [
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    ]
)


@pytest.fixture(scope="module")
def expected(sample_params):
    return build(SampleSpec(**sample_params)).expected()


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


def test_showcase_content_is_there(expected):
    base = [e for ref, e in expected.items() if ref.startswith("sample/base:")]
    assert any("linux/arm/v7" in e["platforms"] for e in base)
    assert any(ref.startswith("charts/demo:") for ref in expected)
    assert any(ref.startswith("sample/vulnerable:") for ref in expected)


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
