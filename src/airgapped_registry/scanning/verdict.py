"""Verdicts: what a scan of one digest says under the policy, and whether it is still current.

A platform manifest's verdict comes from its findings (:func:`judge`); an index's is the
worst of its children's (:func:`combine`: ``error`` over ``fail`` over ``pass``, since an
index with a child nobody could scan is not known to pass, and the reconciliation retries
an ``error``). The stored status is ``pass``, ``fail``, ``error`` or ``skipped`` (an
artifact that is not a container image); ``stale`` is decided when a verdict is read
(:func:`stale_reason`): the DB it was made with is not the current one, or the current one
is older than ``max_age``. A stale verdict counts as not scanned.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta
from typing import Any

from airgapped_registry.scanning.policy import SEVERITIES, Policy, at_or_above, severity_rank

# ``skipped``: not a container image (a Helm chart, the Trivy DB, the mirror's lock): nothing
# for Trivy to scan, and no DB makes that verdict out of date.
STATUSES = ("pass", "fail", "error", "skipped")
STALE = "stale"
# Worst last: what an index gets from its children.
_ORDER = {"pass": 0, "fail": 1, "error": 2}


@dataclass(frozen=True)
class Finding:
    """One vulnerability in one package of one platform manifest.

    ``allowed``/``reason``: an allow-list entry covers it; ``allow_expired``: the expiry of
    an entry that covered it until then (it fails again). ``manifest``: the child digest, in
    an index's verdict.
    """

    id: str
    package: str
    installed: str
    fixed: str | None
    severity: str
    allowed: bool = False
    reason: str | None = None
    allow_expired: str | None = None
    manifest: str | None = None

    def to_json(self) -> dict[str, Any]:
        return dict(vars(self))

    @classmethod
    def from_json(cls, value: Mapping[str, Any]) -> Finding:
        return cls(
            id=str(value["id"]),
            package=str(value["package"]),
            installed=str(value["installed"]),
            fixed=value.get("fixed"),
            severity=str(value["severity"]),
            allowed=bool(value.get("allowed", False)),
            reason=value.get("reason"),
            allow_expired=value.get("allow_expired"),
            manifest=value.get("manifest"),
        )


@dataclass(frozen=True)
class DbInfo:
    """The vulnerability DB a scan used: the artifact's manifest digest and its UpdatedAt."""

    digest: str
    updated_at: datetime


@dataclass(frozen=True)
class Verdict:
    repository: str
    digest: str
    status: str
    counts: dict[str, int]
    findings: tuple[Finding, ...]
    db: DbInfo | None
    scanned_at: datetime
    fail_on: str
    error: str | None = None
    children: tuple[str, ...] = field(default=())

    @property
    def failing(self) -> list[Finding]:
        """The findings that make it fail: at or above the threshold and not allowed."""
        return [f for f in self.findings if not f.allowed and at_or_above(f.severity, self.fail_on)]

    def to_json(self, status: str | None = None, stale: str | None = None) -> dict[str, Any]:
        return {
            "repository": self.repository,
            "digest": self.digest,
            "status": status or self.status,
            "stale": stale,
            "counts": self.counts,
            "fail_on": self.fail_on,
            "failing": sorted({f.id for f in self.failing}),
            "findings": [f.to_json() for f in self.findings],
            "db": None
            if self.db is None
            else {"digest": self.db.digest, "updated_at": _iso(self.db.updated_at)},
            "scanned_at": _iso(self.scanned_at),
            "error": self.error,
            "children": list(self.children),
        }


def count(findings: Iterable[Finding]) -> dict[str, int]:
    """Findings by severity, every severity present (0 when none), worst first."""
    counts = dict.fromkeys(SEVERITIES, 0)
    for finding in findings:
        counts[SEVERITIES[severity_rank(finding.severity)]] += 1
    return counts


def judge(
    repository: str,
    digest: str,
    findings: Iterable[Finding],
    policy: Policy,
    *,
    db: DbInfo | None,
    scanned_at: datetime,
    today: date | None = None,
) -> Verdict:
    """The verdict on one platform manifest's findings under ``policy``; allow-list expiry
    is judged on ``today`` (default: ``scanned_at``'s date, UTC)."""
    day = today or scanned_at.date()
    judged = []
    for finding in findings:
        allowance = policy.allowance(finding.id, repository, day)
        if allowance.entry is not None:
            finding = replace(finding, allowed=True, reason=allowance.entry.reason)
        elif allowance.expired is not None:
            finding = replace(finding, allow_expired=allowance.expired.expires.isoformat())
        judged.append(finding)
    fail_on = policy.fail_on(repository)
    verdict = Verdict(
        repository=repository,
        digest=digest,
        status="pass",
        counts=count(judged),
        findings=tuple(judged),
        db=db,
        scanned_at=scanned_at,
        fail_on=fail_on,
    )
    return replace(verdict, status="fail") if verdict.failing else verdict


def failed(
    repository: str,
    digest: str,
    error: str,
    policy: Policy,
    *,
    db: DbInfo | None,
    scanned_at: datetime,
    children: tuple[str, ...] = (),
) -> Verdict:
    """The verdict of a digest that could not be scanned: status ``error``, no findings."""
    return Verdict(
        repository=repository,
        digest=digest,
        status="error",
        counts=count(()),
        findings=(),
        db=db,
        scanned_at=scanned_at,
        fail_on=policy.fail_on(repository),
        error=error,
        children=children,
    )


def combine(repository: str, digest: str, children: Iterable[Verdict]) -> Verdict:
    """An index's verdict: the worst child status, every child's findings (marked with the
    child's digest), summed counts, the oldest child's scan time and DB."""
    parts = list(children)
    if not parts:
        raise ValueError(f"{repository}@{digest}: an index verdict needs at least one child")
    worst = max(parts, key=lambda verdict: _ORDER[verdict.status])
    oldest = min(parts, key=lambda verdict: verdict.scanned_at)
    findings = tuple(
        replace(finding, manifest=child.digest) for child in parts for finding in child.findings
    )
    errors = [f"{child.digest}: {child.error}" for child in parts if child.error]
    return Verdict(
        repository=repository,
        digest=digest,
        status=worst.status,
        counts=count(findings),
        findings=findings,
        db=oldest.db,
        scanned_at=oldest.scanned_at,
        fail_on=worst.fail_on,
        error="; ".join(errors) or None,
        children=tuple(child.digest for child in parts),
    )


def stale_reason(
    verdict: Verdict, current: DbInfo | None, max_age: timedelta, now: datetime
) -> str | None:
    """Why ``verdict`` no longer counts as a scan (None: it does). ``current``: the DB in
    use now."""
    if verdict.status == "skipped":
        return None
    if current is None:
        return "no vulnerability DB is installed"
    if verdict.db is None or verdict.db.digest != current.digest:
        made_with = verdict.db.digest if verdict.db else "no DB"
        return f"made with {made_with}, the current DB is {current.digest}"
    age = now - current.updated_at
    if age > max_age:
        return (
            f"the vulnerability DB was updated {_iso(current.updated_at)}, "
            f"{_days(age)} ago, more than max_age {_days(max_age)}"
        )
    return None


def read_status(
    verdict: Verdict, current: DbInfo | None, max_age: timedelta, now: datetime
) -> tuple[str, str | None]:
    """``(status, why stale)``: the stored status, or ``stale`` and why."""
    reason = stale_reason(verdict, current, max_age, now)
    return (STALE if reason else verdict.status), reason


def _iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _days(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    if seconds % 86400 == 0:
        return f"{seconds // 86400}d"
    if seconds >= 86400:
        return f"{seconds / 86400:.1f}d"
    return f"{seconds // 3600}h" if seconds % 3600 == 0 else f"{seconds}s"


def skipped(
    repository: str, digest: str, why: str, policy: Policy, scanned_at: datetime
) -> Verdict:
    """The verdict of an artifact that is not a container image: nothing to scan."""
    return Verdict(
        repository=repository,
        digest=digest,
        status="skipped",
        counts=count(()),
        findings=(),
        db=None,
        scanned_at=scanned_at,
        fail_on=policy.fail_on(repository),
        error=why,
    )
