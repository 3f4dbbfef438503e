"""The mirror list (``mirror.yaml``): its schema, defined once, and its validation.

``SCHEMA`` is the single definition of what a mirror list may hold. :func:`load` checks a file
against it, then checks what a schema cannot say (floating tags, unknown sources, duplicate
destinations, the signature policy) and returns a :class:`MirrorSpec`. :func:`argument_spec`
derives an Ansible-style argument spec from the same ``SCHEMA``, so the module that takes a
mirror list inline cannot drift from the file format.

Every refusal names the file, the line and the entry, e.g.
``mirror.yaml:14: images[3] 'nginx:latest': floating tag, pin a version or a digest``; all
problems of a file are reported at once (:class:`SpecError`).

Tags are selected by semver range with :mod:`airgapped_registry.mirror.semver`.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from airgapped_registry.errors import AirgapError
from airgapped_registry.mirror.semver import Version, VersionRange, tag_order_key
from airgapped_registry.registry import DIGEST_PATTERN, REPOSITORY_PATTERN, TAG_PATTERN

SPEC_VERSION = 1
DEFAULT_PLATFORMS = ("linux/amd64", "linux/arm64")
PLATFORM_MODES = ("preserve-index", "filter")
SIGNATURE_KINDS = ("sig", "att", "sbom")

# Tags that name a channel rather than a release: what they point at moves by design. A tag is
# floating when one of its [-_.] separated words is in this set (``latest``, ``stable-slim``,
# ``3.12-lts``) and it is not a semver version (``1.0.0-dev.1`` is a release).
FLOATING_WORDS = frozenset(
    {
        "latest",
        "stable",
        "main",
        "master",
        "edge",
        "nightly",
        "dev",
        "devel",
        "develop",
        "head",
        "current",
        "rolling",
        "canary",
        "snapshot",
        "unstable",
        "testing",
        "trunk",
        "lts",
        "mainline",
        "next",
        "weekly",
        "daily",
    }
)
# Keys that would put a secret into the list; a source names a file or a variable instead.
SECRET_KEYS = frozenset(
    {
        "auth",
        "auths",
        "identitytoken",
        "password",
        "passwd",
        "registrytoken",
        "secret",
        "token",
        "username",
        "user",
    }
)
# cosign's tag scheme: sha256-<hex>.sig / .att / .sbom in the signed image's repository.
COSIGN_TAG = re.compile(r"sha256-([a-f0-9]{64})\.(sig|att|sbom)")

_PLATFORM = re.compile(r"([a-z0-9]+)/([a-z0-9_]+)(?:/([a-z0-9]+))?")
_HOST_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
_REGISTRY = re.compile(rf"(?:{_HOST_LABEL}(?:\.{_HOST_LABEL})*|\[[0-9A-Fa-f:.]+\])(?::\d{{1,5}})?")
_SOURCE_NAME = re.compile(r"[a-z0-9][a-z0-9_-]*")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_WORDS = re.compile(r"[-_.]")


@dataclass(frozen=True)
class Problem:
    """One reason a mirror list is refused: where (file and line), which entry
    (``images[3] 'nginx'``, ``sources.upstream``, or none for the file itself) and why."""

    file: str
    line: int
    entry: str
    cause: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}"
        return f"{where}: {self.entry}: {self.cause}" if self.entry else f"{where}: {self.cause}"


class SpecError(AirgapError):
    """A mirror list was refused; ``problems`` holds one ``file:line: entry: cause`` each,
    in line order."""

    def __init__(self, problems: Iterable[Problem]) -> None:
        ordered = sorted(problems, key=lambda problem: problem.line)
        self.problems = list(dict.fromkeys(map(str, ordered)))
        super().__init__("\n".join(self.problems))


class Problems:
    """Collects every problem of one file, so that all are reported at once."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.found: list[Problem] = []

    def add(self, line: int, entry: str, cause: str) -> None:
        self.found.append(Problem(self.file, line, entry, cause))

    def __len__(self) -> int:
        return len(self.found)

    def refuse(self) -> SpecError:
        return SpecError(self.found)


def is_floating(tag: str) -> bool:
    """True for tags naming a channel (``latest``, ``stable-alpine``), see FLOATING_WORDS."""
    if Version.parse(tag) is not None:
        return False
    return any(word.lower() in FLOATING_WORDS for word in _WORDS.split(tag))


def parse_platform(text: str) -> tuple[str, str, str | None] | None:
    """``linux/arm/v7`` → ``("linux", "arm", "v7")``; None when not ``os/arch[/variant]``."""
    match = _PLATFORM.fullmatch(text)
    return (match[1], match[2], match[3]) if match else None


# -- the schema ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Rules:
    """Relations between the keys of one mapping.

    ``one_of``: exactly one key of each group; ``requires``: a key needs these others;
    ``forbids``: a key excludes these others. They map onto Ansible's ``required_one_of`` +
    ``mutually_exclusive``, ``required_by`` and ``mutually_exclusive``.
    """

    one_of: tuple[tuple[str, ...], ...] = ()
    requires: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    forbids: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


@dataclass(frozen=True)
class Field:
    """One node of the schema.

    ``type`` is ``str``, ``int``, ``number``, ``bool``, ``list`` (items follow ``elements``),
    ``dict`` (keys from ``options``), or ``map`` (free names, values follow ``elements``).
    ``literal`` names a string accepted in place of a ``dict`` (``signatures: none``).
    ``check`` returns a problem for a well-typed value, or None. ``empty_ok`` accepts an
    empty (or null) list or mapping, which otherwise is refused as a probable mistake.
    """

    type: str
    help: str
    required: bool = False
    default: Any = None
    choices: tuple[Any, ...] = ()
    minimum: int | float | None = None
    elements: Field | None = None
    options: Mapping[str, Field] | None = None
    rules: Rules = field(default_factory=Rules)
    literal: str | None = None
    check: Callable[[Any], str | None] | None = None
    empty_ok: bool = False


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

_ENTRY_KINDS = {"images": "image", "charts": "chart", "artifacts": "artifact"}

_ANSIBLE_TYPES = {
    "str": "str",
    "int": "int",
    "number": "float",
    "bool": "bool",
    "list": "list",
    "dict": "dict",
    "map": "dict",
}


def argument_spec(schema: Field = SCHEMA) -> dict[str, Any]:
    """The Ansible ``argument_spec`` of a mapping of the schema (the mirror list by default)."""
    assert schema.options is not None
    return {name: _ansible_option(option) for name, option in schema.options.items()}


def _ansible_option(option: Field) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "type": "raw" if option.literal else _ANSIBLE_TYPES[option.type],
        "required": option.required,
    }
    if option.default is not None:
        spec["default"] = option.default
    if option.choices:
        spec["choices"] = list(option.choices)
    element = option.elements
    if option.type == "list" and element is not None:
        spec["elements"] = _ANSIBLE_TYPES[element.type]
        if element.options is not None:
            spec["options"] = argument_spec(element)
            spec.update(_ansible_rules(element.rules))
    elif option.type == "dict" and option.options is not None and not option.literal:
        spec["options"] = argument_spec(option)
        spec.update(_ansible_rules(option.rules))
    return spec


def _ansible_rules(rules: Rules) -> dict[str, Any]:
    exclusive = [list(group) for group in rules.one_of]
    exclusive += [[key, other] for key, others in rules.forbids.items() for other in others]
    result: dict[str, Any] = {}
    if rules.one_of:
        result["required_one_of"] = [list(group) for group in rules.one_of]
    if exclusive:
        result["mutually_exclusive"] = exclusive
    if rules.requires:
        result["required_by"] = {key: list(value) for key, value in rules.requires.items()}
    return result


# -- YAML with line numbers ----------------------------------------------------------------


class _Map(dict):
    """A YAML mapping that remembers its own line and the line of each key."""

    line: int
    lines: dict[Any, int]


class _Seq(list):
    """A YAML sequence that remembers its own line and the line of each item."""

    line: int
    lines: list[int]


class _DuplicateKeyError(yaml.MarkedYAMLError):
    pass


class _Loader(yaml.SafeLoader):
    """SafeLoader whose mappings and sequences carry 1-based line numbers."""


class _FastLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """The same on libyaml's parser when PyYAML has it (Debian's python3-yaml does): a list
    of a few hundred entries parses in milliseconds instead of a tenth of a second. Its error
    messages are worded differently, so a list it refuses is parsed again by :class:`_Loader`
    for the message."""


def _construct_map(loader: _Loader, node: yaml.MappingNode) -> _Map:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node, deep=True)
        if isinstance(key, list | dict):
            raise yaml.constructor.ConstructorError(
                None, None, "a mapping key must be a scalar", key_node.start_mark
            )
        if key in seen:
            raise _DuplicateKeyError(
                None,
                None,
                f"duplicate key '{key}' (first on line {seen[key]})",
                key_node.start_mark,
            )
        seen[key] = key_node.start_mark.line + 1
    loader.flatten_mapping(node)
    mapping = _Map()
    mapping.line = node.start_mark.line + 1
    mapping.lines = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        mapping[key] = loader.construct_object(value_node, deep=True)
        mapping.lines[key] = key_node.start_mark.line + 1
    return mapping


def _construct_seq(loader: _Loader, node: yaml.SequenceNode) -> _Seq:
    sequence = _Seq(loader.construct_object(child, deep=True) for child in node.value)
    sequence.line = node.start_mark.line + 1
    sequence.lines = [child.start_mark.line + 1 for child in node.value]
    return sequence


for _loader in (_Loader, _FastLoader):
    _loader.add_constructor("tag:yaml.org,2002:map", _construct_map)
    _loader.add_constructor("tag:yaml.org,2002:seq", _construct_seq)


# -- the validated mirror list -------------------------------------------------------------


@dataclass(frozen=True)
class Location:
    """Where an entry is written: the file, the line, and ``images[3] 'sample/base'``."""

    file: str
    line: int
    entry: str

    def problem(self, cause: str) -> str:
        """``cause`` as a message naming this entry, e.g. for a lock that cannot resolve it."""
        return str(Problem(self.file, self.line, self.entry, cause))


@dataclass(frozen=True)
class Credentials:
    """Where the auth.json of a source comes from: a file, or an environment variable."""

    file: str | None = None
    env: str | None = None


@dataclass(frozen=True)
class SignaturePolicy:
    """``keys`` empty means ``signatures: none``: the upstream is explicitly not verified."""

    keys: tuple[str, ...] = ()

    @property
    def required(self) -> bool:
        return bool(self.keys)

    def to_json(self) -> str | dict[str, list[str]]:
        return {"keys": list(self.keys)} if self.keys else "none"


@dataclass(frozen=True)
class Source:
    name: str
    registry: str
    insecure: bool = False
    ca_file: str | None = None
    cert_dir: str | None = None
    credentials: Credentials | None = None
    rate_limit: float | None = None
    signatures: SignaturePolicy | None = None
    line: int = 0

    @property
    def url(self) -> str:
        """Base URL of the registry API; Docker Hub's API host differs from its name."""
        host = "registry-1.docker.io" if self.registry == "docker.io" else self.registry
        return f"{'http' if self.insecure else 'https'}://{host}"


@dataclass(frozen=True)
class TagPin:
    """A tag, optionally pinned to a digest (``latest@sha256:...``)."""

    tag: str
    digest: str | None = None

    @classmethod
    def parse(cls, text: str) -> TagPin:
        tag, _, digest = text.partition("@")
        return cls(tag, digest or None)

    def __str__(self) -> str:
        return f"{self.tag}@{self.digest}" if self.digest else self.tag


@dataclass(frozen=True)
class Selection:
    """Which tags of a repository an entry mirrors: exact tags, a semver range or a regex."""

    tags: tuple[TagPin, ...] = ()
    semver: VersionRange | None = None
    regex: re.Pattern[str] | None = None
    max_tags: int | None = None

    @property
    def exact(self) -> bool:
        return self.semver is None and self.regex is None

    def choose(self, available: Iterable[str]) -> list[str]:
        """The tags a range or regex selects among ``available``, oldest first.

        Floating tags and cosign's signature tags are never selected by a range or regex.
        """
        if self.exact:
            return [pin.tag for pin in self.tags]
        chosen = []
        for tag in set(available):
            if is_floating(tag) or COSIGN_TAG.fullmatch(tag):
                continue
            if self.semver is not None:
                version = Version.parse(tag)
                if version is None or not self.semver.matches(version):
                    continue
            elif self.regex is not None and not self.regex.search(tag):
                continue
            chosen.append(tag)
        chosen.sort(key=tag_order_key)
        return chosen[-self.max_tags :] if self.max_tags else chosen

    def describe(self) -> str:
        if self.semver is not None:
            text = f"semver '{self.semver}'"
        elif self.regex is not None:
            text = f"regex '{self.regex.pattern}'"
        else:
            return "tags " + ", ".join(map(str, self.tags))
        return f"{text}, newest {self.max_tags}" if self.max_tags else text


@dataclass(frozen=True)
class Entry:
    """One image, chart or artifact of the list, with every default applied."""

    kind: str  # "image", "chart" or "artifact"
    location: Location
    selection: Selection
    destination: str
    signatures: SignaturePolicy
    source: str | None = None
    repository: str | None = None
    url: str | None = None
    chart: str | None = None
    platforms: tuple[str, ...] = ()
    platforms_explicit: bool = False
    platform_mode: str | None = None

    def to_json(self) -> dict[str, Any]:
        document: dict[str, Any] = {"kind": self.kind}
        if self.url:
            document.update(url=self.url, chart=self.chart)
        else:
            document.update(source=self.source, repository=self.repository)
        document.update(destination=self.destination, select=self.selection.describe())
        if self.kind == "image":
            document.update(platforms=list(self.platforms), platform_mode=self.platform_mode)
        document["signatures"] = self.signatures.to_json()
        return document


@dataclass(frozen=True)
class MirrorSpec:
    path: str
    version: int
    sources: dict[str, Source]
    entries: tuple[Entry, ...]

    @property
    def base_dir(self) -> Path:
        return Path(self.path).resolve().parent

    def resolve_path(self, path: str) -> Path:
        """A path written in the list, relative to the list's own directory."""
        return self.base_dir / os.path.expanduser(path)

    def summary(self) -> dict[str, Any]:
        return {
            "file": self.path,
            "version": self.version,
            "sources": {
                name: {"registry": source.registry, "insecure": source.insecure}
                for name, source in self.sources.items()
            },
            "entries": [entry.to_json() for entry in self.entries],
        }


def load(path: str | os.PathLike[str]) -> MirrorSpec:
    """Read and validate a mirror list file; raises :class:`SpecError` naming every problem."""
    name = os.fspath(path)
    try:
        text = Path(name).read_text(encoding="utf-8")
    except OSError as exc:
        raise AirgapError(f"{name}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise SpecError([Problem(name, 1, "", f"not UTF-8 text ({exc.reason})")]) from exc
    return loads(text, name)


def loads(text: str, filename: str = "mirror.yaml") -> MirrorSpec:
    """Validate a mirror list given as text; ``filename`` appears in the messages."""
    try:
        try:
            document = yaml.load(text, Loader=_FastLoader)
        except yaml.YAMLError:
            document = yaml.load(text, Loader=_Loader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 1
        cause = " ".join(part for part in (exc.context, exc.problem) if part)
        raise SpecError([Problem(filename, line, "", f"malformed YAML: {cause}")]) from exc
    except yaml.YAMLError as exc:
        raise SpecError([Problem(filename, 1, "", f"malformed YAML: {exc}")]) from exc
    return _Validator(filename).run(document)


class _Validator:
    def __init__(self, filename: str) -> None:
        self.file = filename
        self.problems = Problems(filename)
        # Entries and sources with structural problems get no semantic checks.
        self.broken: set[tuple[str, int | str]] = set()

    def run(self, document: Any) -> MirrorSpec:
        if not isinstance(document, _Map):
            line = getattr(document, "line", 1)
            self.problems.add(line, "", "expected a mapping with version, sources, images, ...")
            raise self.problems.refuse()
        self.check(document, SCHEMA, document.line, "", "")
        # Semantic checks assume well-typed values: they skip what is structurally broken.
        raw_sources = document.get("sources") if isinstance(document.get("sources"), _Map) else {}
        sources = {
            name: self.source(name, raw, raw_sources.lines[name])
            for name, raw in raw_sources.items()
            if ("sources", name) not in self.broken
        }
        entries = []
        for key, kind in _ENTRY_KINDS.items():
            items = document.get(key)
            for index, raw in enumerate(items if isinstance(items, _Seq) else ()):
                if (key, index) not in self.broken:
                    entries.append(self.entry(kind, key, index, raw, sources, set(raw_sources)))
        self.check_destinations(entries)
        if self.problems:
            raise self.problems.refuse()
        return MirrorSpec(self.file, document["version"], sources, tuple(entries))

    # structural ------------------------------------------------------------------------

    def check(self, value: Any, schema: Field, line: int, entry: str, key: str) -> None:
        """Report every way ``value`` does not fit ``schema``; ``key`` is its path in entry."""
        prefix = f"{key}: " if key else ""
        if schema.literal is not None and value == schema.literal:
            return
        if schema.empty_ok and value is None:
            return
        expected = _describe_type(schema)
        if not _has_type(value, schema.type):
            hint = ""
            if isinstance(value, int | float) and schema.type == "str":
                hint = f" (quote it: YAML reads {value} as a number)"
            self.problems.add(line, entry, f"{prefix}expected {expected}, got {_show(value)}{hint}")
            return
        if schema.choices and value not in schema.choices:
            choices = ", ".join(map(str, schema.choices))
            self.problems.add(line, entry, f"{prefix}{_show(value)} is not one of: {choices}")
            return
        if schema.minimum is not None and value <= schema.minimum and schema.type == "number":
            self.problems.add(line, entry, f"{prefix}must be greater than {schema.minimum}")
            return
        if schema.minimum is not None and value < schema.minimum:
            self.problems.add(line, entry, f"{prefix}must be at least {schema.minimum}")
            return
        if schema.type == "str" and not value.strip():
            self.problems.add(line, entry, f"{prefix}must not be empty")
            return
        if schema.check is not None:
            problem = schema.check(value)
            if problem:
                self.problems.add(line, entry, f"{prefix}{problem}")
                return
        if schema.type == "list":
            self.check_list(value, schema, entry, key)
        elif schema.type == "dict":
            self.check_dict(value, schema, entry, key)
        elif schema.type == "map":
            assert schema.elements is not None
            for name, item in value.items():
                item_line = value.lines[name]
                before = len(self.problems)
                if not isinstance(name, str) or not _SOURCE_NAME.fullmatch(name):
                    self.problems.add(
                        item_line, entry, f"{prefix}{_show(name)} is not a valid name"
                    )
                else:
                    label = f"{key}.{name}" if key else name
                    self.check(item, schema.elements, item_line, label, "")
                if len(self.problems) > before:
                    self.broken.add((key, name))

    def check_list(self, value: _Seq, schema: Field, entry: str, key: str) -> None:
        assert schema.elements is not None
        if not value and not schema.empty_ok:
            self.problems.add(value.line, entry, f"{key}: must not be empty")
            return
        seen: dict[Any, int] = {}
        top_level = not entry
        for index, item in enumerate(value):
            item_line = value.lines[index]
            if top_level:
                item_entry, item_key = _entry_label(key, index, item), ""
            else:
                item_entry, item_key = entry, f"{key}[{index}]"
            if isinstance(item, str) and item in seen:
                self.problems.add(
                    item_line, item_entry, f"{item_key}: '{item}' repeats line {seen[item]}"
                )
                continue
            if isinstance(item, str):
                seen[item] = item_line
            before = len(self.problems)
            self.check(item, schema.elements, item_line, item_entry, item_key)
            if top_level and len(self.problems) > before:
                self.broken.add((key, index))

    def check_dict(self, value: _Map, schema: Field, entry: str, key: str) -> None:
        assert schema.options is not None
        prefix = f"{key}." if key else ""
        known = schema.options
        for name in value:
            if name in known:
                continue
            where = value.lines[name]
            if isinstance(name, str) and name.lower() in SECRET_KEYS:
                self.problems.add(
                    where,
                    entry,
                    f"{prefix}{name}: inline secret refused; reference an auth.json with "
                    "credentials: {file: PATH} or {env: VARIABLE}",
                )
            else:
                close = difflib.get_close_matches(str(name), list(known), n=1)
                hint = f"did you mean '{close[0]}'? " if close else ""
                expected = ", ".join(known)
                self.problems.add(
                    where,
                    entry,
                    f"{prefix}{name}: unknown key ({hint}expected one of: {expected})",
                )
        for name, option in known.items():
            if option.required and name not in value:
                self.problems.add(value.line, entry, f"{prefix}{name}: required key missing")
        for group in schema.rules.one_of:
            present = [name for name in group if name in value]
            if len(present) != 1:
                found = ", ".join(present) if present else "none"
                self.problems.add(
                    value.line,
                    entry,
                    f"{prefix}exactly one of {', '.join(group)} is required (found: {found})",
                )
        for name, needed in schema.rules.requires.items():
            if name in value:
                for other in needed:
                    if other not in value:
                        self.problems.add(value.line, entry, f"{prefix}{name} requires {other}")
        for name, excluded in schema.rules.forbids.items():
            if name in value:
                for other in excluded:
                    if other in value:
                        self.problems.add(
                            value.lines[name], entry, f"{prefix}{name} cannot be used with {other}"
                        )
        for name, item in value.items():
            if name in known:
                self.check(item, known[name], value.lines[name], entry, f"{prefix}{name}")

    # semantic --------------------------------------------------------------------------

    def source(self, name: str, raw: _Map, line: int) -> Source:
        credentials = raw.get("credentials")
        if raw.get("insecure"):
            for key in ("ca_file", "cert_dir"):
                if key in raw:
                    self.problems.add(
                        raw.lines[key], f"sources.{name}", f"{key} cannot be used with insecure"
                    )
        return Source(
            name=name,
            registry=raw["registry"],
            insecure=raw.get("insecure", False),
            ca_file=raw.get("ca_file"),
            cert_dir=raw.get("cert_dir"),
            credentials=Credentials(credentials.get("file"), credentials.get("env"))
            if credentials
            else None,
            rate_limit=raw.get("rate_limit"),
            signatures=_policy(raw["signatures"]) if "signatures" in raw else None,
            line=line,
        )

    def entry(
        self,
        kind: str,
        key: str,
        index: int,
        raw: _Map,
        sources: dict[str, Source],
        names: set[str],
    ) -> Entry:
        location = Location(self.file, raw.line, _entry_label(key, index, raw))
        source = sources.get(raw["source"]) if "source" in raw else None
        if "source" in raw and raw["source"] not in names:
            known = ", ".join(sorted(names)) or "none defined"
            self.problems.add(
                raw.lines["source"],
                location.entry,
                f"unknown source '{raw['source']}' (sources: {known})",
            )
        repository = raw.get("repository")
        listed = raw.get("tags", raw.get("versions"))
        pins = tuple(TagPin.parse(tag) for tag in listed or ())
        name = repository or raw.get("name", "")
        for pin, line in zip(pins, listed.lines if listed else [], strict=True):
            if pin.digest is None and is_floating(pin.tag):
                self.problems.add(
                    line,
                    f"{key}[{index}] '{name}:{pin.tag}'",
                    f"floating tag, pin a version or a digest ({pin.tag}@sha256:...)",
                )
        semver = raw.get("semver")
        regex = raw.get("regex")
        selection = Selection(
            tags=pins,
            semver=VersionRange.parse(semver) if semver is not None else None,
            regex=re.compile(regex) if regex is not None else None,
            max_tags=raw.get("max_tags", raw.get("max_versions")),
        )
        if "signatures" in raw:
            policy = _policy(raw["signatures"])
        elif source is not None and source.signatures is not None:
            policy = source.signatures
        elif "url" in raw:
            policy = SignaturePolicy()
        else:
            policy = SignaturePolicy()
            if source is not None:
                self.problems.add(
                    location.line,
                    location.entry,
                    "no signature policy: set signatures: {keys: [...]} or signatures: none "
                    f"on the entry or on source '{source.name}'",
                )
        platforms = tuple(raw.get("platforms", DEFAULT_PLATFORMS)) if kind == "image" else ()
        return Entry(
            kind=kind,
            location=location,
            selection=selection,
            destination=raw.get("destination") or repository,
            signatures=policy,
            source=raw.get("source"),
            repository=repository,
            url=raw.get("url"),
            chart=raw.get("name"),
            platforms=platforms,
            platforms_explicit="platforms" in raw,
            platform_mode=raw.get("platform_mode", "preserve-index") if kind == "image" else None,
        )

    def check_destinations(self, entries: list[Entry]) -> None:
        """Refuse one destination tag written by two entries (exact tags; ranges at lock)."""
        owner: dict[tuple[str, str], Entry] = {}
        for entry in entries:
            if not entry.selection.exact:
                continue
            for pin in entry.selection.tags:
                target = (entry.destination, pin.tag)
                first = owner.setdefault(target, entry)
                if first is entry:
                    continue
                self.problems.add(
                    entry.location.line,
                    entry.location.entry,
                    f"duplicate destination '{entry.destination}:{pin.tag}', also written "
                    f"by {first.location.entry} (line {first.location.line})",
                )


def _policy(raw: Any) -> SignaturePolicy:
    return SignaturePolicy() if raw == "none" else SignaturePolicy(tuple(raw["keys"]))


def _entry_label(key: str, index: int, raw: Any) -> str:
    label = f"{key}[{index}]"
    if isinstance(raw, dict):
        name = raw.get("repository") or raw.get("name")
        if isinstance(name, str):
            return f"{label} '{name}'"
    return label


def _has_type(value: Any, kind: str) -> bool:
    if kind == "str":
        return isinstance(value, str)
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "list":
        return isinstance(value, _Seq)
    return isinstance(value, _Map)


def _describe_type(schema: Field) -> str:
    names = {
        "str": "a string",
        "int": "an integer",
        "number": "a number",
        "bool": "true or false",
        "list": "a list",
        "dict": "a mapping",
        "map": "a mapping of names",
    }
    text = names[schema.type]
    return f"'{schema.literal}' or {text}" if schema.literal else text


def _show(value: Any) -> str:
    if isinstance(value, str):
        return f"'{value}'"
    if value is None:
        return "nothing"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return repr(value)
