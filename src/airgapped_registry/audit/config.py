"""How the audit log is kept: the ``audit:`` section of the gate's policy file, checked.

The gate's loader hands the section (a mapping) to :func:`audit_config`; every refusal names
``where`` (the loader's file:line) and the key. Durations are seconds, or ``<n>ms``, ``<n>s``,
``<n>m``, ``<n>h``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from airgapped_registry import defaults
from airgapped_registry.audit.records import AuditError

FACILITIES = {
    "kern": 0, "user": 1, "mail": 2, "daemon": 3, "auth": 4, "syslog": 5, "lpr": 6,
    "news": 7, "uucp": 8, "cron": 9, "authpriv": 10, "ftp": 11,
    **{f"local{number}": 16 + number for number in range(8)},
}  # fmt: skip
_ADDRESS = re.compile(r"(udp|tcp)://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):([0-9]{1,5})|unix://(/.+)")
_DURATION = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)?")
_SCALE = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
_KEYS = frozenset(
    {"directory", "key", "head", "checkpoint_every", "checkpoint_interval", "rotate_bytes",
     "fsync", "syslog"}
)  # fmt: skip


class AuditConfigError(AuditError):
    """The audit section cannot be used as written."""


@dataclass(frozen=True)
class SyslogConfig:
    """Where records are forwarded: ``udp://host:port``, ``tcp://host:port`` or
    ``unix:///dev/log``; ``facility`` by name (``local0``)."""

    address: str
    facility: str = "local0"

    def __post_init__(self) -> None:
        if _ADDRESS.fullmatch(self.address) is None:
            raise AuditConfigError(
                f"syslog address {self.address!r}: expected udp://host:port, tcp://host:port "
                "or unix:///path"
            )
        if self.facility not in FACILITIES:
            raise AuditConfigError(
                f"syslog facility {self.facility!r}: expected one of {', '.join(FACILITIES)}"
            )

    @property
    def scheme(self) -> str:
        return self.address.split("://", 1)[0]

    def endpoint(self) -> tuple[str, int] | str:
        """``(host, port)`` for udp/tcp, the socket's path for unix."""
        match = _ADDRESS.fullmatch(self.address)
        if match is None:  # checked in __post_init__
            raise AuditConfigError(f"syslog address {self.address!r} is not valid")
        if match[4]:
            return match[4]
        return match[2].strip("[]"), int(match[3])


@dataclass(frozen=True)
class AuditConfig:
    """Where the log lives and how it is kept (docs/audit.md).

    ``key``: the checkpoint private key; ``head``: the last checkpoint kept outside
    ``directory``; the state of the import and the syslog forwarder lives beside ``head``.
    ``fsync``: seconds within which a record reaches the disk (0: before ``append`` returns).
    ``gate_down_log``: nginx's log of refusals while the gate was down, imported as
    ``gate_down`` records at open and every ``import_interval`` seconds (None: no import).
    """

    directory: Path = defaults.AUDIT_DIRECTORY
    key: Path = defaults.AUDIT_KEY
    head: Path = defaults.AUDIT_HEAD
    checkpoint_every: int = defaults.AUDIT_CHECKPOINT_EVERY
    checkpoint_interval: float = defaults.AUDIT_CHECKPOINT_INTERVAL
    rotate_bytes: int = defaults.AUDIT_ROTATE_BYTES
    fsync: float = defaults.AUDIT_FSYNC
    syslog: SyslogConfig | None = None
    gate_down_log: Path | None = None
    import_interval: float = defaults.AUDIT_IMPORT_INTERVAL

    def __post_init__(self) -> None:
        if self.checkpoint_every < 1:
            raise AuditConfigError(f"checkpoint_every: {self.checkpoint_every}, expected >= 1")
        if self.checkpoint_interval <= 0:
            raise AuditConfigError(
                f"checkpoint_interval: {self.checkpoint_interval}, expected > 0 seconds"
            )
        if self.rotate_bytes < 4096:
            raise AuditConfigError(f"rotate_bytes: {self.rotate_bytes}, expected >= 4096")
        if self.fsync < 0:
            raise AuditConfigError(f"fsync: {self.fsync}, expected >= 0 seconds")
        if self.import_interval <= 0:
            raise AuditConfigError(f"import_interval: {self.import_interval}, expected > 0")
        if self.head.parent.resolve() == self.directory.resolve():
            raise AuditConfigError(
                f"head {self.head}: must live outside the log directory {self.directory}, or "
                "removing files there could hide a cut"
            )

    @property
    def state_dir(self) -> Path:
        """Where the import's and the forwarder's cursors live (beside head.json)."""
        return self.head.parent


def parse_seconds(value: Any, where: str) -> float:
    """A duration (``1s``, ``500ms``, ``2m``, or a number of seconds) in seconds."""
    if isinstance(value, bool):
        raise AuditConfigError(f"{where}: {value!r} is not a duration (e.g. 1s, 500ms, 60s)")
    if isinstance(value, int | float):
        return float(value)
    match = _DURATION.fullmatch(value.strip()) if isinstance(value, str) else None
    if match is None:
        raise AuditConfigError(f"{where}: {value!r} is not a duration (e.g. 1s, 500ms, 60s)")
    return float(match[1]) * _SCALE[match[2]]


def audit_config(
    section: Mapping[str, Any] | None,
    where: str = "audit",
    gate_down_log: Path | None = defaults.GATE_UNAVAILABLE_LOG,
) -> AuditConfig:
    """The ``audit:`` section (None: every default) as an :class:`AuditConfig`.

    ``where`` prefixes refusals (``gate.yaml:40: audit``); ``gate_down_log``: nginx's log
    the gate imports (the default path on the registry host)."""
    section = section or {}
    if not isinstance(section, Mapping):
        raise AuditConfigError(f"{where}: not a mapping")
    unknown = sorted(str(key) for key in section if key not in _KEYS)
    if unknown:
        raise AuditConfigError(
            f"{where}.{unknown[0]}: unknown key (known: {', '.join(sorted(_KEYS))})"
        )
    values: dict[str, Any] = {"gate_down_log": gate_down_log}
    for name in ("directory", "key", "head"):
        if name in section:
            if not isinstance(section[name], str) or not section[name].startswith("/"):
                raise AuditConfigError(
                    f"{where}.{name}: {section[name]!r}, expected an absolute path"
                )
            values[name] = Path(section[name])
    for name in ("checkpoint_every", "rotate_bytes"):
        if name in section:
            value = section[name]
            if not isinstance(value, int) or isinstance(value, bool):
                raise AuditConfigError(f"{where}.{name}: {value!r}, expected an integer")
            values[name] = value
    for name in ("checkpoint_interval", "fsync"):
        if name in section:
            values[name] = parse_seconds(section[name], f"{where}.{name}")
    syslog = section.get("syslog")
    if syslog is not None:
        if not isinstance(syslog, Mapping) or not isinstance(syslog.get("address"), str):
            raise AuditConfigError(
                f"{where}.syslog: expected {{address: udp://host:port, facility: local0}} or null"
            )
        extra = sorted(str(key) for key in syslog if key not in ("address", "facility"))
        if extra:
            raise AuditConfigError(f"{where}.syslog.{extra[0]}: unknown key (address, facility)")
        try:
            values["syslog"] = SyslogConfig(
                syslog["address"], str(syslog.get("facility", "local0"))
            )
        except AuditConfigError as exc:
            raise AuditConfigError(f"{where}.syslog: {exc}") from None
    try:
        return AuditConfig(**values)
    except AuditConfigError as exc:
        raise AuditConfigError(f"{where}: {exc}") from None
