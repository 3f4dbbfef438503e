"""The gate's policy file (``gate.yaml``): its schema, defined once, and its loader.

Checked with the mirror list's schema language (:mod:`airgapped_registry.mirror.schema`)
over YAML that keeps line numbers, so a refusal names file, line, entry and cause the same
way (``gate.yaml:7: grants[1]: role: 'root' is not one of: puller, ...``); every problem of
a file is reported at once. docs/gate.md describes the format.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from airgapped_registry.mirror.document import LineList, LineMap, parse, read_text
from airgapped_registry.mirror.problems import Problems
from airgapped_registry.mirror.schema import Checker, Field, Rules

POLICY_VERSION = 1
ROLES = ("puller", "pusher", "admin", "sync", "scanner", "monitor")
MODES = ("enforce", "observe")
DEFAULT_UNSCANNED_CONFIG_TYPES = (
    "application/vnd.cncf.helm.config.v1+json",
    "application/vnd.aquasec.trivy.config.v1+json",
)
_DURATION = re.compile(r"([0-9]+)(ms|s|m|h)")
_UNITS = {"ms": "milliseconds", "s": "seconds", "m": "minutes", "h": "hours"}
_SYSLOG = re.compile(r"(udp|tcp)://[^/\s]+:[0-9]{1,5}|unix:///\S+")
_FACILITIES = (*tuple(f"local{n}" for n in range(8)), "auth", "authpriv", "daemon", "user")
# A prefix is a repository path, or one followed by "/", or "" (every repository).
_PREFIX = re.compile(r"(?:[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*(?:/|$))*")


def under(repository: str, prefix: str) -> bool:
    """Whether ``repository`` is under ``prefix``, by whole path components: ``ci`` and
    ``ci/`` hold ``ci/app`` (and ``ci``), never ``cia/app``; ``""`` holds everything."""
    base = prefix.rstrip("/")
    return not base or repository == base or repository.startswith(base + "/")


def parse_duration(text: str) -> timedelta | None:
    match = _DURATION.fullmatch(text.strip())
    return timedelta(**{_UNITS[match[2]]: int(match[1])}) if match else None


def _check_prefix(value: str) -> str | None:
    if value and not _PREFIX.fullmatch(value):
        return f"'{value}' is not a repository prefix (lowercase path parts, e.g. 'ci/')"
    return None


def _check_duration(value: str) -> str | None:
    return None if parse_duration(value) else f"'{value}' is not a duration (e.g. 1s, 500ms, 60s)"


def _check_name(value: str) -> str | None:
    if any(char in value for char in ',=+\\"<>;') or value != value.strip():
        return f"'{value}' cannot be a certificate CN/OU value as nginx writes it"
    return None


# '' (every repository) is a valid grant prefix: the only string the schema's "must not be
# empty" rule must let through (_PolicyChecker).
_ANY_PREFIX = Field("str", "prefix", check=_check_prefix)

# Durations are strings (1s, 500ms) or a number of seconds (fsync: 0 syncs every record),
# which the schema's single type per field cannot say: _PolicyChecker lets numbers through.
_INTERVAL = Field("str", "longest time between checkpoints", check=_check_duration)
_FSYNC = Field("str", "records reach disk within", check=_check_duration)


def _check_storage(value: str) -> str | None:
    return None if value.startswith("/") else f"'{value}' is not an absolute path"


# Distribution's filesystem storage (its rootdirectory); '' or null: ask the backend.
_STORAGE = Field(
    "str",
    "the backend's filesystem storage root, read for tags ('': ask the backend)",
    check=_check_storage,
    empty_ok=True,
)

_IDENTITY = Field(
    "dict",
    "the client certificate's subject: exactly one of cn / ou",
    required=True,
    options={
        "cn": Field("str", "common name", check=_check_name),
        "ou": Field("str", "organizational unit (any of the subject's OUs)", check=_check_name),
    },
    rules=Rules(one_of=(("cn", "ou"),)),
)
_GRANT = Field(
    "dict",
    "one identity's role on repository prefixes",
    options={
        "identity": _IDENTITY,
        "role": Field("str", "what it may do", required=True, choices=ROLES),
        "repositories": Field(
            "list",
            "repository prefixes; '' is every repository",
            default=[""],
            elements=_ANY_PREFIX,
        ),
    },
)
_SYSLOG_FIELD = Field(
    "dict",
    "RFC 5424 forwarding",
    options={
        "address": Field(
            "str",
            "udp://host:port, tcp://host:port or unix:///path",
            required=True,
            check=lambda v: None if _SYSLOG.fullmatch(v) else f"'{v}' is not a syslog address",
        ),
        "facility": Field("str", "syslog facility", default="local0", choices=_FACILITIES),
    },
)
SCHEMA = Field(
    "dict",
    "gate.yaml",
    options={
        "version": Field("int", "format version", required=True, choices=(POLICY_VERSION,)),
        "landing_zones": Field(
            "list",
            "prefixes CI pushes into: not protected",
            default=[],
            empty_ok=True,
            elements=Field("str", "prefix", check=_check_prefix),
        ),
        "grants": Field("list", "identity -> role on prefixes", required=True, elements=_GRANT),
        "backend_storage": _STORAGE,
        "admission": Field(
            "dict",
            "what a protected pull needs",
            empty_ok=True,
            options={
                "mode": Field("str", "enforce or observe", default="enforce", choices=MODES),
                "unscanned_config_types": Field(
                    "list",
                    "config media types a skipped verdict passes for",
                    empty_ok=True,
                    elements=Field("str", "media type"),
                ),
            },
        ),
        "audit": Field(
            "dict",
            "the audit log",
            empty_ok=True,
            options={
                "directory": Field("str", "log directory"),
                "key": Field("str", "checkpoint private key (Ed25519 PEM)"),
                "head": Field("str", "the last checkpoint, outside the log directory"),
                "checkpoint_every": Field("int", "records between checkpoints", minimum=1),
                "checkpoint_interval": _INTERVAL,
                "rotate_bytes": Field("int", "size of a file before rotation", minimum=4096),
                "fsync": _FSYNC,
                "syslog": Field(
                    "dict", "forwarding (null: none)", options=_SYSLOG_FIELD.options, empty_ok=True
                ),
            },
        ),
    },
)


@dataclass(frozen=True)
class Grant:
    """``attribute`` (``cn`` or ``ou``) = ``value`` holds ``role`` on ``repositories``."""

    attribute: str
    value: str
    role: str
    repositories: tuple[str, ...] = ("",)
    line: int = 0

    def covers(self, repository: str) -> bool:
        return any(under(repository, prefix) for prefix in self.repositories)


@dataclass(frozen=True)
class GatePolicy:
    path: Path
    grants: tuple[Grant, ...]
    landing_zones: tuple[str, ...] = ()
    mode: str = "enforce"
    unscanned_config_types: frozenset[str] = frozenset(DEFAULT_UNSCANNED_CONFIG_TYPES)
    audit: Mapping[str, Any] = field(default_factory=dict)
    # Where the gate reads a tag's digest from Distribution's own link files; None: HEAD.
    backend_storage: Path | None = None

    def protected(self, repository: str) -> bool:
        """Every repository outside the landing zones: a forgotten prefix fails closed."""
        return not any(under(repository, prefix) for prefix in self.landing_zones)

    @property
    def observing(self) -> bool:
        return self.mode == "observe"


def load_policy(path: str | os.PathLike[str]) -> GatePolicy:
    """Read and check ``gate.yaml``; :class:`SpecError` names every problem with its line."""
    name, text = read_text(path)
    return loads_policy(text, name)


def loads_policy(text: str, filename: str = "gate.yaml") -> GatePolicy:
    document = parse(text, filename)
    checker = _PolicyChecker(Problems(filename))
    if not isinstance(document, LineMap):
        checker.problems.add(getattr(document, "line", 1), "", "expected a mapping with grants")
        raise checker.problems.refuse()
    checker.check(document, SCHEMA, document.line, "", "")
    if checker.problems:
        raise checker.problems.refuse()
    grants = tuple(
        _grant(raw, line)
        for raw, line in zip(document["grants"], document["grants"].lines, strict=False)
    )
    admission = document.get("admission") or {}
    unscanned = admission.get("unscanned_config_types")
    return GatePolicy(
        path=Path(filename),
        grants=grants,
        landing_zones=tuple(document.get("landing_zones") or ()),
        mode=admission.get("mode", "enforce"),
        unscanned_config_types=frozenset(
            DEFAULT_UNSCANNED_CONFIG_TYPES if unscanned is None else unscanned
        ),
        audit=_plain(document.get("audit") or {}),
        backend_storage=Path(storage) if (storage := document.get("backend_storage")) else None,
    )


class _PolicyChecker(Checker):
    def check(self, value: Any, schema: Field, line: int, entry: str, key: str) -> None:
        if schema in (_ANY_PREFIX, _STORAGE) and value == "":
            return
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if schema in (_INTERVAL, _FSYNC) and number and value >= 0:
            return
        super().check(value, schema, line, entry, key)


def _grant(raw: LineMap, line: int) -> Grant:
    identity = raw["identity"]
    attribute = "cn" if "cn" in identity else "ou"
    repositories = raw.get("repositories")
    return Grant(
        attribute=attribute,
        value=identity[attribute],
        role=raw["role"],
        repositories=("",) if repositories is None else tuple(repositories),
        line=line,
    )


def _plain(value: Any) -> Any:
    if isinstance(value, LineMap):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, LineList):
        return [_plain(item) for item in value]
    return value
