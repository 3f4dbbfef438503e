"""The mirror list schema: every refusal names file, line and entry; semver; tag selection."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import pytest

from airgapped_registry.mirror.spec import (
    DEFAULT_PLATFORMS,
    SCHEMA,
    Selection,
    SpecError,
    TagPin,
    Version,
    VersionRange,
    argument_spec,
    is_floating,
    load,
    loads,
    tag_order_key,
)

ROOT = Path(__file__).resolve().parents[2]
DIGEST = "sha256:" + "ab" * 32

# Lines 1-7; entries written after it start on line 8.
HEADER = """\
version: 1
sources:
  upstream:
    registry: upstream:5000
    insecure: true
    signatures: none
images:
"""


def refusal(text: str, filename: str = "mirror.yaml") -> list[str]:
    with pytest.raises(SpecError) as caught:
        loads(text, filename)
    assert str(caught.value) == "\n".join(caught.value.problems)
    return caught.value.problems


REFUSALS = [
    pytest.param(
        HEADER
        + """\
  - source: upstream
    repository: library/nginx
    tags: ["1.27.3", latest]
""",
        "mirror.yaml:10: images[0] 'library/nginx:latest': floating tag, pin a version or a "
        "digest (latest@sha256:...)",
        id="floating-latest",
    ),
    pytest.param(
        HEADER
        + """\
  - source: upstream
    repository: sample/base
    tags: ["1.0.0"]
  - source: upstream
    repository: library/nginx
    tags:
      - "1.27.3"
      - stable-alpine
""",
        "mirror.yaml:15: images[1] 'library/nginx:stable-alpine': floating tag, pin a version "
        "or a digest (stable-alpine@sha256:...)",
        id="floating-word-in-tag",
    ),
    pytest.param(
        HEADER.replace("images:\n", "")
        + """\
artifacts:
  - source: upstream
    repository: aquasecurity/trivy-db
    tags: [nightly]
""",
        "mirror.yaml:10: artifacts[0] 'aquasecurity/trivy-db:nightly': floating tag, pin a "
        "version or a digest (nightly@sha256:...)",
        id="floating-artifact",
    ),
    pytest.param(
        HEADER
        + """\
  - source: upstream
    repository: sample/base
    tag: "1.0.0"
""",
        [
            "mirror.yaml:8: images[0] 'sample/base': exactly one of tags, semver, regex is "
            "required (found: none)",
            "mirror.yaml:10: images[0] 'sample/base': tag: unknown key (did you mean 'tags'? "
            "expected one of: source, repository, tags, semver, regex, max_tags, platforms, "
            "platform_mode, destination, signatures)",
        ],
        id="unknown-key-entry",
    ),
    pytest.param(
        HEADER.replace("images:\n", "imagez:\n  - {}\n"),
        "mirror.yaml:7: imagez: unknown key (did you mean 'images'? expected one of: version, "
        "sources, images, charts, artifacts)",
        id="unknown-key-top",
    ),
    pytest.param(
        HEADER.replace("    insecure: true\n", "    insecure: true\n    mirror: true\n")
        + "  - {source: upstream, repository: a/b, tags: ['1.0.0']}\n",
        "mirror.yaml:6: sources.upstream: mirror: unknown key (expected one of: registry, "
        "insecure, ca_file, cert_dir, credentials, rate_limit, signatures)",
        id="unknown-key-source",
    ),
    pytest.param(
        HEADER.replace("    signatures: none\n", "    signatures: {keys: [a.pub], trust: x}\n")
        + "  - {source: upstream, repository: a/b, tags: ['1.0.0']}\n",
        "mirror.yaml:6: sources.upstream: signatures.trust: unknown key (expected one of: keys)",
        id="unknown-key-nested",
    ),
    pytest.param(
        HEADER
        + """\
  - source: upstream
    repository: sample/base
    tags: ["1.0.0", "1.1.0"]
  - source: upstream
    repository: mirror/base
    tags: ["2.0.0"]
    destination: sample/base
  - source: upstream
    repository: mirror/base
    tags: ["1.1.0"]
    destination: sample/base
""",
        "mirror.yaml:15: images[2] 'mirror/base': duplicate destination 'sample/base:1.1.0', "
        "also written by images[0] 'sample/base' (line 8)",
        id="duplicate-destination",
    ),
    pytest.param(
        HEADER
        + """\
  - source: upstream
    repository: sample/base
    regex: "^1\\\\.([0-9]+$"
""",
        "mirror.yaml:10: images[0] 'sample/base': regex: bad regex '^1\\.([0-9]+$': "
        "missing ), unterminated subpattern at position 4",
        id="bad-regex",
    ),
    pytest.param(
        HEADER
        + """\
  - source: upstream
    repository: sample/base
    semver: ">=1.0.0 <two"
""",
        "mirror.yaml:10: images[0] 'sample/base': semver: bad semver range '>=1.0.0 <two': "
        "'two' is not a version",
        id="bad-semver",
    ),
    pytest.param(
        HEADER
        + """\
  - source: upstream
    repository: sample/base
    semver: "=>1.0.0"
""",
        "mirror.yaml:10: images[0] 'sample/base': semver: bad semver range '=>1.0.0': "
        "unknown operator in '=>1.0.0'",
        id="bad-semver-operator",
    ),
    pytest.param(
        HEADER
        + """\
  - source: upstream
    repository: sample/base
    tags: ["1.0.0"]
    platforms:
      - linux/amd64
      - arm64
""",
        "mirror.yaml:13: images[0] 'sample/base': platforms[1]: bad platform 'arm64': "
        "expected os/arch[/variant], e.g. linux/arm/v7",
        id="bad-platform",
    ),
    pytest.param(
        HEADER
        + """\
  - source: upstream
    repository: sample/base
    tags: ["1.0.0"]
    platforms: [linux/amd64, linux/arm/v7/extra]
""",
        "mirror.yaml:11: images[0] 'sample/base': platforms[1]: bad platform "
        "'linux/arm/v7/extra': expected os/arch[/variant], e.g. linux/arm/v7",
        id="bad-platform-depth",
    ),
    pytest.param(
        HEADER
        + """\
  - source: dockerhub
    repository: library/nginx
    tags: ["1.27.3"]
""",
        "mirror.yaml:8: images[0] 'library/nginx': unknown source 'dockerhub' (sources: upstream)",
        id="unknown-source",
    ),
    pytest.param(
        HEADER
        + """\
  - source: upstream
    repository: sample/base
    tags: ["1.0.0"]
    semver: ">=1.0.0"
""",
        "mirror.yaml:8: images[0] 'sample/base': exactly one of tags, semver, regex is "
        "required (found: tags, semver)",
        id="tags-and-semver",
    ),
    pytest.param(
        HEADER
        + """\
  - source: upstream
    repository: sample/base
""",
        "mirror.yaml:8: images[0] 'sample/base': exactly one of tags, semver, regex is "
        "required (found: none)",
        id="no-selector",
    ),
    pytest.param(
        HEADER
        + """\
  - source: upstream
    repository: sample/base
    tags: ["1.0.0"
""",
        "mirror.yaml:11: malformed YAML: while parsing a flow sequence expected ',' or ']', "
        "but got '<stream end>'",
        id="malformed-yaml",
    ),
    pytest.param(
        HEADER
        + """\
  - source: upstream
    repository: sample/base
    tags: ["1.0.0"]
    repository: sample/other
""",
        "mirror.yaml:11: malformed YAML: duplicate key 'repository' (first on line 9)",
        id="duplicate-yaml-key",
    ),
    pytest.param(
        HEADER.replace("    insecure: true\n", "    insecure: true\n    password: hunter2\n")
        + "  - {source: upstream, repository: a/b, tags: ['1.0.0']}\n",
        "mirror.yaml:6: sources.upstream: password: inline secret refused; reference an "
        "auth.json with credentials: {file: PATH} or {env: VARIABLE}",
        id="inline-secret",
    ),
    pytest.param(
        HEADER
        + """\
  - source: upstream
    repository: sample/base
    tags: [1.10]
""",
        "mirror.yaml:10: images[0] 'sample/base': tags[0]: expected a string, got 1.1 "
        "(quote it: YAML reads 1.1 as a number)",
        id="unquoted-number-tag",
    ),
    pytest.param(
        HEADER
        + """\
  - source: upstream
    repository: library/nginx
    tags: ["latest@sha256:1234"]
""",
        "mirror.yaml:10: images[0] 'library/nginx': tags[0]: 'latest@sha256:1234': the pin "
        "after @ must be sha256:<64 hex> or sha512:<128 hex>",
        id="bad-digest-pin",
    ),
    pytest.param(
        HEADER
        + """\
  - source: upstream
    repository: sample/base
    tags: ["1.0.0"]
    max_tags: 2
""",
        "mirror.yaml:11: images[0] 'sample/base': max_tags cannot be used with tags",
        id="max-tags-with-tags",
    ),
    pytest.param(
        HEADER
        + """\
  - source: upstream
    repository: Sample/Base
    tags: ["1.0.0"]
""",
        "mirror.yaml:9: images[0] 'Sample/Base': repository: 'Sample/Base' is not a "
        "repository path (lowercase, [a-z0-9._-] parts joined by /)",
        id="bad-repository",
    ),
    pytest.param(
        HEADER
        + """\
  - source: upstream
    repository: sample/base
    tags: []
""",
        "mirror.yaml:10: images[0] 'sample/base': tags: must not be empty",
        id="empty-tags",
    ),
    pytest.param(
        HEADER
        + """\
  - source: upstream
    repository: sample/base
    semver: ">=1.0.0"
    platform_mode: sparse
""",
        "mirror.yaml:11: images[0] 'sample/base': platform_mode: 'sparse' is not one of: "
        "preserve-index, filter",
        id="bad-platform-mode",
    ),
    pytest.param(
        HEADER.replace("    signatures: none\n", "")
        + "  - {source: upstream, repository: a/b, tags: ['1.0.0']}\n",
        "mirror.yaml:7: images[0] 'a/b': no signature policy: set signatures: {keys: [...]} "
        "or signatures: none on the entry or on source 'upstream'",
        id="no-signature-policy",
    ),
    pytest.param(
        HEADER.replace("upstream:5000", "http://upstream:5000")
        + "  - {source: upstream, repository: a/b, tags: ['1.0.0']}\n",
        "mirror.yaml:4: sources.upstream: registry: 'http://upstream:5000': expected "
        "host[:port] without a scheme (plain http: insecure: true)",
        id="registry-with-scheme",
    ),
    pytest.param(
        HEADER.replace("    insecure: true\n", "    insecure: true\n    ca_file: ca.pem\n")
        + "  - {source: upstream, repository: a/b, tags: ['1.0.0']}\n",
        "mirror.yaml:6: sources.upstream: ca_file cannot be used with insecure",
        id="insecure-with-ca",
    ),
    pytest.param(
        HEADER.replace("images:\n", "")
        + """\
charts:
  - url: https://charts.example.org/
    name: demo
    versions: ["1.2.3"]
""",
        "mirror.yaml:8: charts[0] 'demo': url requires destination",
        id="classic-chart-without-destination",
    ),
    pytest.param(
        HEADER.replace("images:\n", "")
        + """\
charts:
  - source: upstream
    repository: charts/demo
    versions: ["0.1"]
""",
        "mirror.yaml:10: charts[0] 'charts/demo': versions[0]: '0.1' is not a semver version",
        id="chart-version-not-semver",
    ),
    pytest.param(
        HEADER.replace("version: 1", "version: 2")
        + "  - {source: upstream, repository: a/b, tags: ['1.0.0']}\n",
        "mirror.yaml:1: version: 2 is not one of: 1",
        id="unknown-version",
    ),
    pytest.param(
        "- just\n- a list\n",
        "mirror.yaml:1: expected a mapping with version, sources, images, ...",
        id="not-a-mapping",
    ),
]


@pytest.mark.parametrize(("text", "message"), REFUSALS)
def test_refusal_names_file_line_and_entry(text: str, message: str | list[str]) -> None:
    assert refusal(text) == ([message] if isinstance(message, str) else message)


def test_every_problem_of_a_file_is_reported_in_line_order() -> None:
    problems = refusal(
        HEADER
        + """\
  - source: upstream
    repository: library/nginx
    tags: [latest]
  - source: nowhere
    repository: sample/base
    tags: ["1.0.0"]
    platforms: [amd64]
"""
    )
    assert [int(problem.split(":")[1]) for problem in problems] == [10, 14]
    assert "floating tag" in problems[0]
    assert "bad platform 'amd64'" in problems[1]


def test_inline_secret_values_never_appear_in_messages() -> None:
    problems = refusal(
        HEADER.replace(
            "    signatures: none\n",
            "    signatures: none\n    credentials: {token: ghp_SECRETVALUE}\n",
        )
        + "  - {source: upstream, repository: a/b, tags: ['1.0.0']}\n"
    )
    assert any("credentials.token: inline secret refused" in problem for problem in problems)
    assert not any("SECRETVALUE" in problem for problem in problems)


def test_the_file_name_given_is_the_one_reported(tmp_path: Path) -> None:
    path = tmp_path / "lists" / "edge.yaml"
    path.parent.mkdir()
    path.write_text(HEADER + "  - {source: upstream, repository: a/b, tags: [edge]}\n")
    with pytest.raises(SpecError) as caught:
        load(path)
    assert caught.value.problems == [
        f"{path}:8: images[0] 'a/b:edge': floating tag, pin a version or a digest (edge@sha256:...)"
    ]


def test_floating_tag_pinned_to_a_digest_is_accepted_with_defaults() -> None:
    spec = loads(
        HEADER
        + f"""\
  - source: upstream
    repository: library/nginx
    tags: ["latest@{DIGEST}", "1.27.3"]
"""
    )
    (entry,) = spec.entries
    assert entry.selection.tags == (TagPin("latest", DIGEST), TagPin("1.27.3"))
    assert entry.destination == "library/nginx"
    assert entry.platforms == DEFAULT_PLATFORMS
    assert entry.platforms_explicit is False
    assert entry.platform_mode == "preserve-index"
    assert entry.signatures.required is False
    assert entry.location.line == 8
    assert entry.location.entry == "images[0] 'library/nginx'"


def test_entry_signature_policy_overrides_the_source() -> None:
    spec = loads(
        HEADER.replace("    signatures: none\n", "    signatures: {keys: [vendor.pub]}\n")
        + """\
  - {source: upstream, repository: a/b, tags: ['1.0.0']}
  - {source: upstream, repository: a/c, tags: ['1.0.0'], signatures: none}
"""
    )
    assert [entry.signatures.keys for entry in spec.entries] == [("vendor.pub",), ()]


@pytest.mark.parametrize("path", ["examples/mirror.yaml", "inventories/lab/mirror.yaml"])
def test_shipped_mirror_lists_are_valid(path: str) -> None:
    spec = load(ROOT / path)
    assert spec.entries
    for entry in spec.entries:
        assert entry.destination


def test_lab_list_covers_the_sample_upstream() -> None:
    spec = load(ROOT / "inventories/lab/mirror.yaml")
    assert [(e.kind, e.repository) for e in spec.entries] == [
        ("image", "sample/base"),
        ("image", "sample/app-001"),
        ("image", "sample/app-002"),
        ("image", "sample/app-003"),
        ("image", "sample/vulnerable"),
        ("chart", "charts/demo"),
        ("artifact", "aquasecurity/trivy-db"),
    ]
    assert {entry.platforms for entry in spec.entries if entry.kind == "image"} == {
        DEFAULT_PLATFORMS
    }


def test_example_list_shows_every_key_of_the_schema() -> None:
    text = (ROOT / "examples/mirror.yaml").read_text()
    keys: set[str] = set()

    def collect(field) -> None:
        for name, option in (field.options or {}).items():
            keys.add(name)
            collect(option)
        if field.elements is not None:
            collect(field.elements)

    collect(SCHEMA)
    missing = sorted(key for key in keys if not re.search(rf"^\s*(- )?{key}:", text, re.M))
    assert missing == []


def test_argument_spec_is_derived_from_the_schema() -> None:
    spec = argument_spec()
    assert spec["version"] == {"type": "int", "required": True, "choices": [1]}
    image = spec["images"]
    assert (image["type"], image["elements"]) == ("list", "dict")
    assert image["options"]["platforms"]["default"] == list(DEFAULT_PLATFORMS)
    assert image["options"]["signatures"]["type"] == "raw"
    assert image["required_one_of"] == [["tags", "semver", "regex"]]
    assert ["max_tags", "tags"] in image["mutually_exclusive"]
    chart = spec["charts"]
    assert chart["required_by"] == {"source": ["repository"], "url": ["name", "destination"]}


# -- semver --------------------------------------------------------------------------------

# semver.org, item 11.
PRECEDENCE = [
    "1.0.0-alpha",
    "1.0.0-alpha.1",
    "1.0.0-alpha.beta",
    "1.0.0-beta",
    "1.0.0-beta.2",
    "1.0.0-beta.11",
    "1.0.0-rc.1",
    "1.0.0",
    "1.0.1",
    "1.1.0",
    "2.0.0-0",
    "2.0.0",
    "10.0.0",
]


def test_versions_order_by_semver_precedence() -> None:
    versions = [Version.parse(text) for text in PRECEDENCE]
    assert all(versions)
    assert sorted(reversed(versions)) == versions  # type: ignore[type-var]
    for lower, higher in itertools.pairwise(versions):
        assert lower < higher  # type: ignore[operator]


def test_version_parsing() -> None:
    assert Version.parse("v1.2.3") == Version(1, 2, 3)
    assert Version.parse("1.2.3+build.5") == Version(1, 2, 3)
    assert str(Version.parse("v1.2.3-rc.1+b")) == "1.2.3-rc.1+b"
    for text in ("1.2", "01.2.3", "1.2.3-", "1.2.3-01", "latest", "1.2.3.4", ""):
        assert Version.parse(text) is None, text


RANGES = [
    (">=1.0.0 <3.0.0", "1.0.0", True),
    (">=1.0.0 <3.0.0", "2.9.9", True),
    (">=1.0.0 <3.0.0", "3.0.0", False),
    (">=1.0.0 <3.0.0", "2.0.0-rc.1", False),  # no pre-release named
    (">=1.0.0", "2.0.0-rc.1", False),
    (">=2.0.0-rc.0", "2.0.0-rc.1", True),  # named: same major.minor.patch
    (">=2.0.0-rc.0", "2.0.1-rc.1", False),  # named, but another release
    (">=2.0.0-rc.0", "2.0.1", True),
    (">= 1.2.0", "1.2.0", True),
    ("=1.2.3", "1.2.3", True),
    ("1.2.3", "1.2.4", False),
    (">1.2.3", "1.2.3", False),
    ("<=1.2.3", "1.2.3", True),
    ("^1.2.3", "1.9.0", True),
    ("^1.2.3", "2.0.0", False),
    ("^1.2.3", "1.2.2", False),
    ("^0.2.3", "0.2.9", True),
    ("^0.2.3", "0.3.0", False),
    ("^0.0.3", "0.0.4", False),
    ("~1.2.3", "1.2.9", True),
    ("~1.2.3", "1.3.0", False),
    ("^2.0.0-rc.1", "2.0.0-rc.2", True),
    ("^2.0.0-rc.1", "2.1.0", True),
    ("^2.0.0-rc.1", "3.0.0-rc.1", False),
    ("1.x", "1.9.9", True),
    ("1.x", "2.0.0", False),
    ("1.2", "1.2.7", True),
    ("~1.2", "1.3.0", False),
    ("<=1.2", "1.2.9", True),
    (">1.2", "1.2.9", False),
    (">1.2", "1.3.0", True),
    ("<2", "1.99.0", True),
    ("*", "7.0.0", True),
    ("*", "7.0.0-beta", False),
    ("<1.0.0 || >=2.0.0", "0.9.0", True),
    ("<1.0.0 || >=2.0.0", "1.5.0", False),
    ("<1.0.0 || >=2.0.0", "2.0.0", True),
    ("v1.0.0", "1.0.0", True),
]


@pytest.mark.parametrize(("text", "version", "expected"), RANGES)
def test_range_matching(text: str, version: str, expected: bool) -> None:
    parsed = Version.parse(version)
    assert parsed is not None
    assert VersionRange.parse(text).matches(parsed) is expected


@pytest.mark.parametrize(
    ("text", "cause"),
    [
        ("", "empty range"),
        (">=1.0.0 ||", "empty alternative around '||'"),
        (">=", "operator '>=' without a version"),
        ("!=1.0.0", "unknown operator in '!=1.0.0'"),
        ("1.0.0 - 2.0.0", "'-' is not a version"),
        ("<*", "'<*' matches nothing"),
    ],
)
def test_bad_ranges_say_why(text: str, cause: str) -> None:
    with pytest.raises(ValueError, match=re.escape(cause)):
        VersionRange.parse(text)


# -- tag selection -------------------------------------------------------------------------

UPSTREAM_TAGS = [
    "1.0.0",
    "1.10.0",
    "1.9.0",
    "2.0.0-rc.1",
    "2.0.0",
    "latest",
    "stable",
    "sha256-" + "a" * 64 + ".sig",
    "1.9",
    "nightly-2024",
]


def test_semver_selection_takes_the_newest_n() -> None:
    selection = Selection(semver=VersionRange.parse(">=1.0.0"), max_tags=3)
    assert selection.choose(UPSTREAM_TAGS) == ["1.9.0", "1.10.0", "2.0.0"]
    assert Selection(semver=VersionRange.parse("<2.0.0")).choose(UPSTREAM_TAGS) == [
        "1.0.0",
        "1.9.0",
        "1.10.0",
    ]


def test_regex_selection_skips_floating_and_cosign_tags() -> None:
    assert Selection(regex=re.compile(".*")).choose(UPSTREAM_TAGS) == [
        "1.9",
        "1.0.0",
        "1.9.0",
        "1.10.0",
        "2.0.0-rc.1",
        "2.0.0",
    ]
    assert Selection(regex=re.compile(r"^1\.[0-9]+$")).choose(UPSTREAM_TAGS) == ["1.9"]


def test_tag_order_is_natural_for_non_semver_tags() -> None:
    tags = ["3.10-alpine", "3.9-alpine", "3.19-alpine", "3.2-alpine"]
    assert sorted(tags, key=tag_order_key) == [
        "3.2-alpine",
        "3.9-alpine",
        "3.10-alpine",
        "3.19-alpine",
    ]


@pytest.mark.parametrize(
    ("tag", "floating"),
    [
        ("latest", True),
        ("Latest", True),
        ("stable-alpine", True),
        ("3.12-lts", True),
        ("main", True),
        ("edge", True),
        ("1.0.0-dev.1", False),  # a semver pre-release is a release
        ("1.27.3-alpine", False),
        ("2", False),
        ("mainframe", False),
    ],
)
def test_floating_tags(tag: str, floating: bool) -> None:
    assert is_floating(tag) is floating
