"""The ``scanning:`` section of the registry host's ``provenance.yaml``, and what it needs
from the top level (``backend``, ``state``).

```yaml
version: 1
backend: unix:///run/docker-registry/registry.sock   # or http://127.0.0.1:5000
state: /var/lib/airgapped-registry/state.db
scanning:
  trivy: /usr/local/libexec/airgapped-registry/trivy
  cache_dir: /var/lib/airgapped-registry/trivy
  db: {repository: aquasecurity/trivy-db, tag: "2",
       lock: /var/lib/airgapped-registry/relay.lock, max_age: 7d}
  listen: 127.0.0.1:5060
  workers: 2
  reconcile_interval: 5m
  attest: true
  policy: {...}     # kept as written: scanning.policy reads it
```

Each key may be left out for its default (``defaults.py``); an unknown key is refused, so a
typo does not silently fall back to a default. Durations are ``<int>[s|m|h|d]``. Errors
name the file, the key and the cause.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import yaml

from airgapped_registry import defaults
from airgapped_registry.errors import AirgapError
from airgapped_registry.oci.reference import REPOSITORY_PATTERN, TAG_PATTERN

CONFIG_VERSION = 1
_DURATION = re.compile(r"([0-9]+)([smhd])")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}
_LISTEN = re.compile(r"(?:\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+):([0-9]{1,5})")
_SECTION_KEYS = frozenset(
    {"trivy", "cache_dir", "db", "listen", "workers", "reconcile_interval", "attest", "policy"}
)
_DB_KEYS = frozenset({"repository", "tag", "lock", "max_age"})


class ConfigError(AirgapError):
    """The configuration file is missing or wrong; the message names file, key and cause."""


@dataclass(frozen=True)
class DbSource:
    """Where the vulnerability DB comes from: ``repository:tag`` on the backend, whose
    digest must be the one ``lock`` records for that entry; ``max_age``: older makes every
    verdict stale."""

    repository: str = defaults.SCAN_DB_REPOSITORY
    tag: str = defaults.SCAN_DB_TAG
    lock: Path = defaults.SCAN_DB_LOCK
    max_age: timedelta = defaults.SCAN_DB_MAX_AGE

    @property
    def reference(self) -> str:
        return f"{self.repository}:{self.tag}"


@dataclass(frozen=True)
class ScanningConfig:
    path: Path
    backend: str = defaults.BACKEND_URL
    state: Path = defaults.STATE_PATH
    trivy: Path = defaults.TRIVY_PATH
    cache_dir: Path = defaults.SCAN_CACHE_DIR
    db: DbSource = field(default_factory=DbSource)
    listen: str = defaults.SCAN_LISTEN
    workers: int = defaults.SCAN_WORKERS
    reconcile_interval: timedelta = defaults.SCAN_RECONCILE_INTERVAL
    attest: bool = True
    policy: Mapping[str, Any] = field(default_factory=dict)


def parse_duration(text: object, where: str) -> timedelta:
    """``30s``, ``5m``, ``12h``, ``7d`` (a bare integer: seconds)."""
    if isinstance(text, timedelta):
        return text
    if isinstance(text, int) and not isinstance(text, bool) and text >= 0:
        return timedelta(seconds=text)
    match = _DURATION.fullmatch(text.strip()) if isinstance(text, str) else None
    if match is None:
        raise ConfigError(f"{where}: {text!r} is not a duration (<int>[s|m|h|d], e.g. 7d)")
    return timedelta(**{_UNITS[match[2]]: int(match[1])})


def load(path: str | os.PathLike[str]) -> ScanningConfig:
    """Read ``path`` and check its ``scanning`` section (and ``backend``, ``state``)."""
    name = os.fspath(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{name}: cannot read: {exc.strerror or exc}") from exc
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{name}: not YAML: {exc}") from exc
    return parse(document, Path(path))


def parse(document: object, path: Path) -> ScanningConfig:
    name = os.fspath(path)
    if not isinstance(document, dict):
        raise ConfigError(f"{name}: expected a mapping at the top")
    if document.get("version") != CONFIG_VERSION:
        raise ConfigError(
            f"{name}: version: {document.get('version')!r}, expected {CONFIG_VERSION}"
        )
    section = document.get("scanning") or {}
    if not isinstance(section, dict):
        raise ConfigError(f"{name}: scanning: expected a mapping")
    _no_unknown(section, _SECTION_KEYS, f"{name}: scanning")
    db_section = section.get("db") or {}
    if not isinstance(db_section, dict):
        raise ConfigError(f"{name}: scanning.db: expected a mapping")
    _no_unknown(db_section, _DB_KEYS, f"{name}: scanning.db")
    where = f"{name}: scanning"

    repository = _text(db_section, "repository", f"{where}.db", defaults.SCAN_DB_REPOSITORY)
    if not REPOSITORY_PATTERN.fullmatch(repository):
        raise ConfigError(f"{where}.db.repository: {repository!r} is not a repository name")
    tag = _text(db_section, "tag", f"{where}.db", defaults.SCAN_DB_TAG, numbers=True)
    if not TAG_PATTERN.fullmatch(tag):
        raise ConfigError(f"{where}.db.tag: {tag!r} is not a tag")
    db = DbSource(
        repository=repository,
        tag=tag,
        lock=Path(_text(db_section, "lock", f"{where}.db", str(defaults.SCAN_DB_LOCK))),
        max_age=parse_duration(
            db_section.get("max_age", defaults.SCAN_DB_MAX_AGE), f"{where}.db.max_age"
        ),
    )
    listen = _text(section, "listen", where, defaults.SCAN_LISTEN)
    if not _LISTEN.fullmatch(listen) or not 0 < int(listen.rsplit(":", 1)[1]) < 65536:
        raise ConfigError(f"{where}.listen: {listen!r} is not host:port")
    workers = section.get("workers", defaults.SCAN_WORKERS)
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"{where}.workers: {workers!r} is not a positive integer")
    attest = section.get("attest", True)
    if not isinstance(attest, bool):
        raise ConfigError(f"{where}.attest: {attest!r} is not true or false")
    policy = section.get("policy") or {}
    if not isinstance(policy, dict):
        raise ConfigError(f"{where}.policy: expected a mapping")
    backend = _text(document, "backend", name, defaults.BACKEND_URL)
    if not re.fullmatch(r"https?://[^/\s]+|unix:///\S+", backend):
        raise ConfigError(
            f"{name}: backend: {backend!r} is not http(s)://host[:port] or unix:///path/to/socket"
        )
    return ScanningConfig(
        path=path,
        backend=backend,
        state=Path(_text(document, "state", name, str(defaults.STATE_PATH))),
        trivy=Path(_text(section, "trivy", where, str(defaults.TRIVY_PATH))),
        cache_dir=Path(_text(section, "cache_dir", where, str(defaults.SCAN_CACHE_DIR))),
        db=db,
        listen=listen,
        workers=workers,
        reconcile_interval=parse_duration(
            section.get("reconcile_interval", defaults.SCAN_RECONCILE_INTERVAL),
            f"{where}.reconcile_interval",
        ),
        attest=attest,
        policy=policy,
    )


def _no_unknown(section: Mapping[str, Any], known: frozenset[str], where: str) -> None:
    unknown = sorted(str(key) for key in section if key not in known)
    if unknown:
        known_keys = ", ".join(sorted(known))
        raise ConfigError(f"{where}: unknown key {unknown[0]!r} (known: {known_keys})")


def _text(
    section: Mapping[str, Any], key: str, where: str, default: str, numbers: bool = False
) -> str:
    value = section.get(key, default)
    if numbers and isinstance(value, int) and not isinstance(value, bool):
        value = str(value)  # tag: 2 written without quotes
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}.{key}: {value!r} is not a non-empty string")
    return value
