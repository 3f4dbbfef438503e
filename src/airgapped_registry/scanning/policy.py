"""The scan policy: which findings fail a digest (the ``scanning.policy`` section).

A finding fails its digest when its severity is at or above the threshold of the
repository (``fail_on``: the longest matching ``repositories[].prefix``, else ``default``)
and no allow-list entry covers it. An allow entry names a vulnerability ID, a reason and
an expiry date (both required: an exception nobody explained, or that never ends, is not
an exception), and optionally a repository prefix. It allows through its expiry day (UTC)
and no longer from the day after; a finding it would have allowed is then reported with
the expired entry, so the operator sees why a digest that passed now fails.

```yaml
policy:
  default: {fail_on: CRITICAL}
  repositories:
    - {prefix: "prod/", fail_on: HIGH}
  allow:
    - {id: CVE-2026-0001, reason: "no fix; not reachable", expires: 2027-01-31, prefix: "sample/"}
```
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from airgapped_registry.errors import AirgapError

# Worst first. Trivy reports UNKNOWN for findings no source rated: it ranks last, so
# ``fail_on: UNKNOWN`` fails on any finding at all.
SEVERITIES = ("CRITICAL", "HIGH", "MEDIUM", "LOW", "UNKNOWN")
DEFAULT_FAIL_ON = "CRITICAL"


class PolicyError(AirgapError):
    """The policy section is wrong; the message names the file, the key and the cause."""


def severity_rank(severity: str) -> int:
    """0 for CRITICAL ... 4 for UNKNOWN; a severity Trivy might add later ranks as UNKNOWN."""
    try:
        return SEVERITIES.index(severity.upper())
    except ValueError:
        return SEVERITIES.index("UNKNOWN")


def at_or_above(severity: str, threshold: str) -> bool:
    return severity_rank(severity) <= severity_rank(threshold)


@dataclass(frozen=True)
class Threshold:
    prefix: str
    fail_on: str


@dataclass(frozen=True)
class AllowEntry:
    """An exception: ``id`` does not fail digests (under ``prefix``) until ``expires``."""

    id: str
    reason: str
    expires: date
    prefix: str | None = None

    def covers(self, vulnerability_id: str, repository: str) -> bool:
        return self.id == vulnerability_id and (
            self.prefix is None or repository.startswith(self.prefix)
        )

    def expired(self, today: date) -> bool:
        return today > self.expires

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "reason": self.reason,
            "expires": self.expires.isoformat(),
            "prefix": self.prefix,
        }


@dataclass(frozen=True)
class Allowance:
    """What the allow-list says about one finding: the entry allowing it, or the expired
    entry that would have."""

    entry: AllowEntry | None = None
    expired: AllowEntry | None = None


@dataclass(frozen=True)
class Policy:
    default_fail_on: str = DEFAULT_FAIL_ON
    thresholds: tuple[Threshold, ...] = ()
    allow: tuple[AllowEntry, ...] = ()

    def fail_on(self, repository: str) -> str:
        """The threshold of ``repository``: the longest matching prefix wins."""
        matching = [item for item in self.thresholds if repository.startswith(item.prefix)]
        if not matching:
            return self.default_fail_on
        return max(matching, key=lambda item: len(item.prefix)).fail_on

    def allowance(self, vulnerability_id: str, repository: str, today: date) -> Allowance:
        """The entry allowing ``vulnerability_id`` in ``repository`` on ``today``; when only
        expired entries cover it, the one that expired last."""
        covering = [item for item in self.allow if item.covers(vulnerability_id, repository)]
        current = [item for item in covering if not item.expired(today)]
        if current:
            return Allowance(entry=max(current, key=lambda item: item.expires))
        if covering:
            return Allowance(expired=max(covering, key=lambda item: item.expires))
        return Allowance()

    def expired_entries(self, today: date) -> list[AllowEntry]:
        return [item for item in self.allow if item.expired(today)]

    @classmethod
    def from_config(cls, value: object, *, source: str, key: str = "scanning.policy") -> Policy:
        """The policy from its parsed YAML section (None: the defaults). ``source`` names the
        file in errors, ``key`` the section's place in it."""
        if value is None:
            return cls()
        section = _mapping(value, source, key, known=("default", "repositories", "allow"))
        default = DEFAULT_FAIL_ON
        if section.get("default") is not None:
            where = f"{key}.default"
            default_section = _mapping(section["default"], source, where, known=("fail_on",))
            default = _severity(default_section.get("fail_on"), source, f"{where}.fail_on")
        thresholds = []
        seen: dict[str, int] = {}
        for number, item in enumerate(
            _list(section.get("repositories"), source, f"{key}.repositories")
        ):
            where = f"{key}.repositories[{number}]"
            entry = _mapping(item, source, where, known=("prefix", "fail_on"))
            prefix = _text(entry.get("prefix"), source, f"{where}.prefix")
            if prefix in seen:
                raise PolicyError(
                    f"{source}: {where}.prefix: {prefix!r} is already "
                    f"{key}.repositories[{seen[prefix]}]"
                )
            seen[prefix] = number
            thresholds.append(
                Threshold(prefix, _severity(entry.get("fail_on"), source, f"{where}.fail_on"))
            )
        allow = []
        for number, item in enumerate(_list(section.get("allow"), source, f"{key}.allow")):
            where = f"{key}.allow[{number}]"
            entry = _mapping(item, source, where, known=("id", "reason", "expires", "prefix"))
            scope = entry.get("prefix")
            allow.append(
                AllowEntry(
                    id=_text(entry.get("id"), source, f"{where}.id"),
                    reason=_text(entry.get("reason"), source, f"{where}.reason"),
                    expires=_date(entry.get("expires"), source, f"{where}.expires"),
                    prefix=None if scope is None else _text(scope, source, f"{where}.prefix"),
                )
            )
        return cls(default, tuple(thresholds), tuple(allow))

    def to_json(self) -> dict[str, Any]:
        return {
            "default": {"fail_on": self.default_fail_on},
            "repositories": [vars(item) for item in self.thresholds],
            "allow": [item.to_json() for item in self.allow],
        }


def _mapping(value: object, source: str, key: str, *, known: tuple[str, ...]) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise PolicyError(f"{source}: {key}: expected a mapping, got {type(value).__name__}")
    unknown = sorted(str(name) for name in value if name not in known)
    if unknown:
        raise PolicyError(
            f"{source}: {key}: unknown key {', '.join(unknown)} (known: {', '.join(known)})"
        )
    return value


def _list(value: object, source: str, key: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise PolicyError(f"{source}: {key}: expected a list, got {type(value).__name__}")
    return value


def _text(value: object, source: str, key: str) -> str:
    if value is None:
        raise PolicyError(f"{source}: {key}: required")
    if not isinstance(value, str) or not value.strip():
        raise PolicyError(f"{source}: {key}: expected a non-empty string, got {value!r}")
    return value


def _severity(value: object, source: str, key: str) -> str:
    if value is None:
        raise PolicyError(f"{source}: {key}: required (one of {', '.join(SEVERITIES)})")
    if not isinstance(value, str) or value.upper() not in SEVERITIES:
        raise PolicyError(f"{source}: {key}: {value!r} is not one of {', '.join(SEVERITIES)}")
    return value.upper()


def _date(value: object, source: str, key: str) -> date:
    if value is None:
        raise PolicyError(f"{source}: {key}: required (a date, YYYY-MM-DD)")
    # YAML reads an unquoted 2027-01-31 as a date already; a quoted one is a string.
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    if isinstance(value, str):
        try:
            return date.fromisoformat(value)
        except ValueError:
            pass
    raise PolicyError(f"{source}: {key}: {value!r} is not a date (YYYY-MM-DD)")
