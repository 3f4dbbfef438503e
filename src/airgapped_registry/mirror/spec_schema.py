"""The mirror list format (``mirror.yaml``), defined once: :data:`SCHEMA`.

Every key a mirror list may hold, with its type, default, help and the check of its value,
lives here and nowhere else: :mod:`airgapped_registry.mirror.spec` checks files against it, and
:func:`argument_spec` derives the Ansible argument spec of the module that takes a mirror
list inline. ``tests/unit/test_spec.py`` checks that ``examples/mirror.yaml`` shows every key.
"""

from __future__ import annotations

import re
from typing import Any

from airgapped_registry.mirror.schema import Field, Rules, ansible_argument_spec
from airgapped_registry.mirror.semver import Version, VersionRange
from airgapped_registry.oci.platform import parse_platform
from airgapped_registry.oci.reference import DIGEST_PATTERN, REPOSITORY_PATTERN, TAG_PATTERN

SPEC_VERSION = 1
DEFAULT_PLATFORMS = ("linux/amd64", "linux/arm64")
PLATFORM_MODES = ("preserve-index", "filter")
# The top-level lists and the kind of entry each holds.
ENTRY_KINDS = {"images": "image", "charts": "chart", "artifacts": "artifact"}

_HOST_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
_REGISTRY = re.compile(rf"(?:{_HOST_LABEL}(?:\.{_HOST_LABEL})*|\[[0-9A-Fa-f:.]+\])(?::\d{{1,5}})?")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _check_registry(value: str) -> str | None:
    if "://" in value:
        return f"'{value}': expected host[:port] without a scheme (plain http: insecure: true)"
    if not _REGISTRY.fullmatch(value):
        return f"'{value}' is not host[:port]"
    return None


def _check_repository(value: str) -> str | None:
    if not REPOSITORY_PATTERN.fullmatch(value):
        return f"'{value}' is not a repository path (lowercase, [a-z0-9._-] parts joined by /)"
    return None


def _check_tag(value: str) -> str | None:
    tag, _, digest = value.partition("@")
    if not TAG_PATTERN.fullmatch(tag):
        return f"'{value}' is not a valid tag"
    if "@" in value and not DIGEST_PATTERN.fullmatch(digest):
        return f"'{value}': the pin after @ must be sha256:<64 hex> or sha512:<128 hex>"
    return None


def _check_version(value: str) -> str | None:
    tag = value.partition("@")[0]
    problem = _check_tag(value)
    if problem or "@" in value:
        return problem
    if Version.parse(tag) is None:
        return f"'{value}' is not a semver version"
    return None


def _check_semver(value: str) -> str | None:
    try:
        VersionRange.parse(value)
    except ValueError as exc:
        return f"bad semver range '{value}': {exc}"
    return None


def _check_regex(value: str) -> str | None:
    try:
        re.compile(value)
    except re.error as exc:
        return f"bad regex '{value}': {exc}"
    return None


def _check_platform(value: str) -> str | None:
    if parse_platform(value) is None:
        return f"bad platform '{value}': expected os/arch[/variant], e.g. linux/arm/v7"
    return None


def _check_env(value: str) -> str | None:
    if not _ENV_NAME.fullmatch(value):
        return f"'{value}' is not an environment variable name"
    return None


def _check_url(value: str) -> str | None:
    if not re.fullmatch(r"https?://[^\s/]+(?:/\S*)?", value):
        return f"'{value}' is not an http(s) URL"
    return None


_PATH = Field("str", "a path; relative paths are relative to the mirror list's directory")

_SIGNATURES = Field(
    "dict",
    "upstream signature policy: `none`, or the cosign public keys one of which must verify",
    literal="none",
    options={
        "keys": Field(
            "list",
            "cosign public key files (PEM)",
            required=True,
            elements=_PATH,
        )
    },
)

_DESTINATION = Field(
    "str",
    "repository in the mirror (default: the upstream path)",
    check=_check_repository,
)

_SELECTION = {
    "tags": Field(
        "list",
        "exact tags; `tag@sha256:<hex>` pins a tag to a digest (required for floating tags)",
        elements=Field("str", "a tag", check=_check_tag),
    ),
    "semver": Field(
        "str", "semver range selecting tags, e.g. '>=1.0.0 <3.0.0'", check=_check_semver
    ),
    "regex": Field(
        "str",
        "regex selecting tags (searched, anchor it with ^...$); floating and cosign tags "
        "never match",
        check=_check_regex,
    ),
    "max_tags": Field("int", "keep only the newest N selected tags", minimum=1),
}
_SELECTION_RULES = Rules(one_of=(("tags", "semver", "regex"),), forbids={"max_tags": ("tags",)})

SOURCE = Field(
    "dict",
    "an upstream registry",
    options={
        "registry": Field("str", "host[:port]", required=True, check=_check_registry),
        "insecure": Field("bool", "plain http instead of https (lab only)", default=False),
        "ca_file": Field("str", "CA bundle trusted for the registry (instead of the system's)"),
        "cert_dir": Field(
            "str",
            "skopeo-style certificate directory: *.crt CAs, one *.cert + *.key client pair",
        ),
        "credentials": Field(
            "dict",
            "where a docker-style auth.json is read from; never the secret itself",
            options={
                "file": Field("str", "path of an auth.json file"),
                "env": Field(
                    "str",
                    "environment variable holding an auth.json document",
                    check=_check_env,
                ),
            },
            rules=Rules(one_of=(("file", "env"),)),
        ),
        "rate_limit": Field("number", "maximum requests per second to this source", minimum=0),
        "signatures": _SIGNATURES,
    },
)

IMAGE = Field(
    "dict",
    "a container image repository and the tags to mirror",
    options={
        "source": Field("str", "name of a source", required=True),
        "repository": Field(
            "str", "repository path at the source", required=True, check=_check_repository
        ),
        **_SELECTION,
        "platforms": Field(
            "list",
            "platforms to mirror, os/arch[/variant]",
            default=list(DEFAULT_PLATFORMS),
            elements=Field("str", "a platform", check=_check_platform),
        ),
        "platform_mode": Field(
            "str",
            "preserve-index: copy the upstream index and all its children unchanged (digest "
            "and signatures stay valid); filter: copy only the selected platforms under a new "
            "index digest",
            default="preserve-index",
            choices=PLATFORM_MODES,
        ),
        "destination": _DESTINATION,
        "signatures": _SIGNATURES,
    },
    rules=_SELECTION_RULES,
)

CHART = Field(
    "dict",
    "a Helm chart: OCI (source + repository) or classic repository (url + name)",
    options={
        "source": Field("str", "name of a source (OCI chart)"),
        "repository": Field(
            "str", "repository path at the source (OCI chart)", check=_check_repository
        ),
        "url": Field("str", "classic Helm repository URL (serves index.yaml)", check=_check_url),
        "name": Field("str", "chart name in the classic repository's index.yaml"),
        "versions": Field(
            "list", "exact chart versions", elements=Field("str", "a version", check=_check_version)
        ),
        "semver": _SELECTION["semver"],
        "max_versions": Field("int", "keep only the newest N selected versions", minimum=1),
        "destination": _DESTINATION,
        "signatures": _SIGNATURES,
    },
    rules=Rules(
        one_of=(("source", "url"), ("versions", "semver")),
        requires={"source": ("repository",), "url": ("name", "destination")},
        forbids={
            "source": ("name",),
            "url": ("repository", "signatures"),
            "max_versions": ("versions",),
        },
    ),
)

ARTIFACT = Field(
    "dict",
    "an OCI artifact (e.g. the Trivy DB) mirrored as one manifest",
    options={
        "source": Field("str", "name of a source", required=True),
        "repository": Field(
            "str", "repository path at the source", required=True, check=_check_repository
        ),
        **_SELECTION,
        "destination": _DESTINATION,
        "signatures": _SIGNATURES,
    },
    rules=_SELECTION_RULES,
)

SCHEMA = Field(
    "dict",
    "a mirror list",
    options={
        "version": Field("int", "format version", required=True, choices=(SPEC_VERSION,)),
        "sources": Field("map", "upstream registries by name", elements=SOURCE, empty_ok=True),
        "images": Field("list", "container images", elements=IMAGE, empty_ok=True),
        "charts": Field("list", "Helm charts", elements=CHART, empty_ok=True),
        "artifacts": Field("list", "OCI artifacts", elements=ARTIFACT, empty_ok=True),
    },
)
"""The mirror list format: the only definition (the Ansible argument spec derives from it)."""


def argument_spec(schema: Field = SCHEMA) -> dict[str, Any]:
    """The Ansible ``argument_spec`` of a mapping of the schema (the mirror list by default)."""
    return ansible_argument_spec(schema)
