"""The mirror list (``mirror.yaml``): loading, checking and the model of what it says.

:func:`load` reads a file, checks it against the format (:data:`SCHEMA`, defined once in
:mod:`airgapped_registry.mirror.spec_schema`), then checks what a schema cannot say
(floating tags, unknown sources, duplicate destinations, the signature policy) and returns a
:class:`MirrorSpec`: sources and entries with every default applied.

Every refusal names the file, the line and the entry, e.g.
``mirror.yaml:14: images[3] 'nginx:latest': floating tag, pin a version or a digest``; all
problems of a file are reported at once (:class:`SpecError`).

Tags are selected by semver range with :mod:`airgapped_registry.mirror.semver`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from airgapped_registry.mirror.document import LineList, LineMap, parse, read_text
from airgapped_registry.mirror.problems import Problem, Problems, SpecError
from airgapped_registry.mirror.schema import Checker, Field
from airgapped_registry.mirror.semver import Version, VersionRange, tag_order_key
from airgapped_registry.mirror.spec_schema import (
    DEFAULT_PLATFORMS,
    ENTRY_KINDS,
    SCHEMA,
    argument_spec,
)

# What the engine and its tests import from here, including names that now live in mirror/.
__all__ = [
    "COSIGN_TAG",
    "DEFAULT_PLATFORMS",
    "FLOATING_WORDS",
    "SCHEMA",
    "SECRET_KEYS",
    "SIGNATURE_KINDS",
    "Credentials",
    "Entry",
    "Location",
    "MirrorSpec",
    "Problem",
    "Selection",
    "SignaturePolicy",
    "Source",
    "SpecError",
    "TagPin",
    "Version",
    "VersionRange",
    "argument_spec",
    "is_floating",
    "load",
    "loads",
    "tag_order_key",
]

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

_WORDS = re.compile(r"[-_.]")


def is_floating(tag: str) -> bool:
    """True for tags naming a channel (``latest``, ``stable-alpine``), see FLOATING_WORDS."""
    if Version.parse(tag) is not None:
        return False
    return any(word.lower() in FLOATING_WORDS for word in _WORDS.split(tag))


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
    name, text = read_text(path)
    return loads(text, name)


def loads(text: str, filename: str = "mirror.yaml") -> MirrorSpec:
    """Validate a mirror list given as text; ``filename`` appears in the messages."""
    return _Validator(filename).run(parse(text, filename))


class _Validator(Checker):
    """The schema's checks, then what a schema cannot say, on entries without problems."""

    def __init__(self, filename: str) -> None:
        super().__init__(Problems(filename))
        self.file = filename

    def entry_label(self, key: str, index: int, item: Any) -> str:
        return _entry_label(key, index, item)

    def unknown_key(self, name: Any, known: Mapping[str, Field]) -> str:
        if isinstance(name, str) and name.lower() in SECRET_KEYS:
            return (
                "inline secret refused; reference an auth.json with "
                "credentials: {file: PATH} or {env: VARIABLE}"
            )
        return super().unknown_key(name, known)

    def run(self, document: Any) -> MirrorSpec:
        if not isinstance(document, LineMap):
            line = getattr(document, "line", 1)
            self.problems.add(line, "", "expected a mapping with version, sources, images, ...")
            raise self.problems.refuse()
        self.check(document, SCHEMA, document.line, "", "")
        # Semantic checks assume well-typed values: they skip what is structurally broken.
        found = document.get("sources")
        raw_sources = found if isinstance(found, LineMap) else LineMap()
        sources = {
            name: self.source(name, raw, raw_sources.lines[name])
            for name, raw in raw_sources.items()
            if ("sources", name) not in self.broken
        }
        entries = []
        for key, kind in ENTRY_KINDS.items():
            items = document.get(key)
            for index, raw in enumerate(items if isinstance(items, LineList) else ()):
                if (key, index) not in self.broken:
                    entries.append(self.entry(kind, key, index, raw, sources, set(raw_sources)))
        self.check_destinations(entries)
        if self.problems:
            raise self.problems.refuse()
        return MirrorSpec(self.file, document["version"], sources, tuple(entries))

    # semantic --------------------------------------------------------------------------

    def source(self, name: str, raw: LineMap, line: int) -> Source:
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
        raw: LineMap,
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
            # The schema requires a repository with a source, a destination with a url.
            destination=cast(str, raw.get("destination") or repository),
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
