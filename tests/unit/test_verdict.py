"""The scan policy (thresholds by prefix, allow-list with expiry) and verdicts (index = worst
child, read-time staleness)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest
import yaml

from airgapped_registry.scanning.policy import AllowEntry, Policy, PolicyError, Threshold
from airgapped_registry.scanning.verdict import (
    DbInfo,
    Finding,
    Verdict,
    combine,
    failed,
    judge,
    read_status,
)

SOURCE = "/etc/airgapped-registry/provenance.yaml"
DB = DbInfo("sha256:" + "d" * 64, datetime(2026, 11, 29, 12, tzinfo=UTC))
SCANNED = datetime(2026, 11, 30, 9, tzinfo=UTC)

POLICY = Policy(
    default_fail_on="CRITICAL",
    thresholds=(
        Threshold("prod/", "HIGH"),
        Threshold("prod/strict/", "LOW"),
        Threshold("prod/strict/lenient/", "CRITICAL"),
    ),
    allow=(
        AllowEntry("CVE-2026-0001", "no fix; not reachable", date(2027, 1, 31), "sample/"),
        AllowEntry("CVE-2026-0002", "vendor says harmless", date(2026, 11, 30)),
    ),
)


def finding(id: str = "CVE-2026-9999", severity: str = "HIGH") -> Finding:
    return Finding(id, "busybox", "1.36.1-r1", "1.36.1-r2", severity)


@pytest.mark.parametrize(
    ("repository", "fail_on"),
    [
        ("sample/app", "CRITICAL"),  # no prefix: the default
        ("prod/app", "HIGH"),
        ("prod/strict/app", "LOW"),  # the longest prefix wins, whatever the order
        ("prod/strict/lenient/app", "CRITICAL"),
        ("production/app", "CRITICAL"),  # a prefix is a string prefix: "prod/" needs the slash
        ("prod", "CRITICAL"),
    ],
)
def test_the_longest_prefix_sets_the_threshold(repository: str, fail_on: str) -> None:
    assert POLICY.fail_on(repository) == fail_on
    reordered = Policy(thresholds=tuple(reversed(POLICY.thresholds)))
    assert reordered.fail_on(repository) == fail_on


@pytest.mark.parametrize(
    ("repository", "severities", "status"),
    [
        ("sample/app", [], "pass"),
        ("sample/app", ["HIGH", "MEDIUM"], "pass"),
        ("sample/app", ["CRITICAL"], "fail"),
        ("prod/app", ["HIGH"], "fail"),
        ("prod/app", ["MEDIUM", "LOW", "UNKNOWN"], "pass"),
        ("prod/strict/app", ["LOW"], "fail"),
        ("prod/strict/app", ["UNKNOWN"], "pass"),
        ("prod/strict/app", ["NEGLIGIBLE"], "pass"),  # unknown names rank as UNKNOWN
    ],
)
def test_a_finding_at_or_above_the_threshold_fails(
    repository: str, severities: list[str], status: str
) -> None:
    findings = [finding(f"CVE-2026-{n:04}", s) for n, s in enumerate(severities, 100)]
    verdict = judge(repository, "sha256:" + "a" * 64, findings, POLICY, db=DB, scanned_at=SCANNED)
    assert verdict.status == status
    assert sum(verdict.counts.values()) == len(severities)
    assert list(verdict.counts) == ["CRITICAL", "HIGH", "MEDIUM", "LOW", "UNKNOWN"]


@pytest.mark.parametrize(
    ("repository", "id", "today", "status", "allowed", "expired"),
    [
        # Allowed through its expiry day, not from the day after.
        ("sample/app", "CVE-2026-0001", date(2027, 1, 30), "pass", True, None),
        ("sample/app", "CVE-2026-0001", date(2027, 1, 31), "pass", True, None),
        ("sample/app", "CVE-2026-0001", date(2027, 2, 1), "fail", False, "2027-01-31"),
        # Its prefix limits it; an entry without one allows everywhere.
        ("other/app", "CVE-2026-0001", date(2027, 1, 1), "fail", False, None),
        ("other/app", "CVE-2026-0002", date(2026, 11, 30), "pass", True, None),
        ("other/app", "CVE-2026-0002", date(2026, 12, 1), "fail", False, "2026-11-30"),
        ("sample/app", "CVE-2026-0003", date(2026, 1, 1), "fail", False, None),
    ],
)
def test_the_allow_list_allows_until_its_expiry_day(
    repository: str, id: str, today: date, status: str, allowed: bool, expired: str | None
) -> None:
    verdict = judge(
        repository,
        "sha256:" + "a" * 64,
        [finding(id, "CRITICAL")],
        POLICY,
        db=DB,
        scanned_at=SCANNED,
        today=today,
    )
    (judged,) = verdict.findings
    assert (verdict.status, judged.allowed, judged.allow_expired) == (status, allowed, expired)
    assert judged.reason == (POLICY.allowance(id, repository, today).entry or judged).reason
    assert verdict.counts["CRITICAL"] == 1  # allowed findings are still counted
    assert verdict.to_json()["failing"] == ([] if allowed else [id])


def test_a_current_allow_entry_wins_over_an_expired_one() -> None:
    policy = Policy(
        allow=(
            AllowEntry("CVE-1", "old reason", date(2026, 1, 1)),
            AllowEntry("CVE-1", "renewed", date(2027, 1, 1)),
        )
    )
    allowance = policy.allowance("CVE-1", "any/repo", date(2026, 6, 1))
    assert allowance.entry is not None and allowance.entry.reason == "renewed"
    assert [entry.reason for entry in policy.expired_entries(date(2026, 6, 1))] == ["old reason"]


def test_the_policy_is_read_from_its_section() -> None:
    section = yaml.safe_load(
        """
default: {fail_on: high}
repositories:
  - {prefix: "prod/", fail_on: MEDIUM}
allow:
  - {id: CVE-2026-0001, reason: "no fix; not reachable", expires: 2027-01-31, prefix: "sample/"}
  - {id: CVE-2026-0002, reason: "quoted date", expires: "2027-02-01"}
"""
    )
    policy = Policy.from_config(section, source=SOURCE)
    assert policy == Policy(
        "HIGH",
        (Threshold("prod/", "MEDIUM"),),
        (
            AllowEntry("CVE-2026-0001", "no fix; not reachable", date(2027, 1, 31), "sample/"),
            AllowEntry("CVE-2026-0002", "quoted date", date(2027, 2, 1)),
        ),
    )
    assert Policy.from_config(None, source=SOURCE) == Policy()


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ("[]", "scanning.policy: expected a mapping, got list"),
        ("{default: {fail_on: SEVERE}}", "scanning.policy.default.fail_on: 'SEVERE' is not one"),
        ("{default: {}}", "scanning.policy.default.fail_on: required"),
        ("{defaults: {}}", "scanning.policy: unknown key defaults"),
        ("{repositories: [{fail_on: HIGH}]}", "scanning.policy.repositories[0].prefix: required"),
        (
            "{repositories: [{prefix: a/, fail_on: HIGH}, {prefix: a/, fail_on: LOW}]}",
            "scanning.policy.repositories[1].prefix: 'a/' is already "
            "scanning.policy.repositories[0]",
        ),
        (
            "{allow: [{id: CVE-1, expires: 2027-01-01}]}",
            "scanning.policy.allow[0].reason: required",
        ),
        ("{allow: [{id: CVE-1, reason: ''}]}", "scanning.policy.allow[0].reason: expected a non"),
        ("{allow: [{id: CVE-1, reason: why}]}", "scanning.policy.allow[0].expires: required"),
        (
            "{allow: [{id: CVE-1, reason: why, expires: soon}]}",
            "scanning.policy.allow[0].expires: 'soon' is not a date",
        ),
        ("{allow: {id: CVE-1}}", "scanning.policy.allow: expected a list, got dict"),
    ],
)
def test_a_wrong_policy_names_the_file_the_key_and_the_cause(section: str, message: str) -> None:
    with pytest.raises(PolicyError) as caught:
        Policy.from_config(yaml.safe_load(section), source=SOURCE)
    assert str(caught.value).startswith(f"{SOURCE}: ")
    assert message in str(caught.value)


def child(digest: str, status: str, scanned_at: datetime = SCANNED) -> Verdict:
    if status == "error":
        return failed("sample/app", digest, "trivy exited 1", POLICY, db=DB, scanned_at=scanned_at)
    severity = "CRITICAL" if status == "fail" else "LOW"
    return judge(
        "sample/app", digest, [finding("CVE-X", severity)], POLICY, db=DB, scanned_at=scanned_at
    )


@pytest.mark.parametrize(
    ("statuses", "status"),
    [
        (["pass", "pass"], "pass"),
        (["pass", "fail"], "fail"),
        (["fail", "error"], "error"),
        (["error", "pass"], "error"),
    ],
)
def test_an_index_verdict_is_its_worst_child(statuses: list[str], status: str) -> None:
    children = [child(f"sha256:{n}" + "0" * 63, s) for n, s in enumerate(statuses)]
    index = combine("sample/app", "sha256:" + "i" * 64, children)
    assert index.status == status
    assert index.children == tuple(f"sha256:{n}" + "0" * 63 for n in range(len(statuses)))
    assert sum(index.counts.values()) == sum(s != "error" for s in statuses)
    assert {f.manifest for f in index.findings} <= set(index.children)


def test_an_index_keeps_the_oldest_scan_time() -> None:
    early = SCANNED - timedelta(hours=1)
    index = combine(
        "sample/app",
        "sha256:" + "i" * 64,
        [child("sha256:" + "1" * 64, "pass"), child("sha256:" + "2" * 64, "pass", early)],
    )
    assert index.scanned_at == early


OTHER_DB = DbInfo("sha256:" + "e" * 64, datetime(2026, 11, 30, tzinfo=UTC))
WEEK = timedelta(days=7)


@pytest.mark.parametrize(
    ("current", "now", "status", "why"),
    [
        (DB, DB.updated_at + WEEK, "pass", None),  # exactly max_age old: still current
        (DB, DB.updated_at + WEEK + timedelta(seconds=1), "stale", "more than max_age 7d"),
        (OTHER_DB, OTHER_DB.updated_at, "stale", f"the current DB is {OTHER_DB.digest}"),
        (None, SCANNED, "stale", "no vulnerability DB is installed"),
    ],
)
def test_a_verdict_is_stale_when_its_db_is_old_or_not_current(
    current: DbInfo | None, now: datetime, status: str, why: str | None
) -> None:
    verdict = child("sha256:" + "1" * 64, "pass")
    found, reason = read_status(verdict, current, WEEK, now)
    assert found == status
    if why is None:
        assert reason is None
    else:
        assert reason is not None and why in reason
