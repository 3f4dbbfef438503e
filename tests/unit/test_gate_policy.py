"""gate.yaml: a valid file read into its model, and every refusal naming file and line."""

from __future__ import annotations

from pathlib import Path

import pytest

from airgapped_registry.gate.policy import (
    DEFAULT_UNSCANNED_CONFIG_TYPES,
    SCHEMA,
    load_policy,
    loads_policy,
    under,
)
from airgapped_registry.mirror.problems import SpecError
from airgapped_registry.mirror.schema import Field

VALID = """\
version: 1
landing_zones: [ci/]
grants:
  - identity: {ou: puller}
    role: puller
    repositories: [""]
  - {identity: {ou: pusher}, role: pusher, repositories: [ci/]}
  - {identity: {ou: admin}, role: admin}
  - {identity: {cn: sync}, role: sync}
admission:
  mode: observe
audit:
  directory: /var/log/airgapped-registry/audit
  fsync: 1s
  syslog: {address: "udp://127.0.0.1:514", facility: local0}
"""


def test_a_valid_policy_is_read() -> None:
    policy = loads_policy(VALID)
    assert [(g.attribute, g.value, g.role, g.repositories, g.line) for g in policy.grants] == [
        ("ou", "puller", "puller", ("",), 4),
        ("ou", "pusher", "pusher", ("ci/",), 7),
        ("ou", "admin", "admin", ("",), 8),
        ("cn", "sync", "sync", ("",), 9),
    ]
    assert policy.landing_zones == ("ci/",)
    assert policy.observing
    assert policy.unscanned_config_types == frozenset(DEFAULT_UNSCANNED_CONFIG_TYPES)
    assert policy.protected("prod/app") and policy.protected("cia/app")
    assert not policy.protected("ci/app")
    assert policy.audit["syslog"] == {"address": "udp://127.0.0.1:514", "facility": "local0"}


@pytest.mark.parametrize(
    ("repository", "prefix", "held"),
    [
        ("ci/app", "ci/", True),
        ("ci/app", "ci", True),
        ("ci", "ci/", True),
        ("cia/app", "ci", False),
        ("cia/app", "ci/", False),
        ("team/a/b", "team/a", True),
        ("team/ab", "team/a", False),
        ("anything", "", True),
    ],
)
def test_a_prefix_holds_whole_path_components(repository: str, prefix: str, held: bool) -> None:
    assert under(repository, prefix) is held


def test_the_defaults() -> None:
    policy = loads_policy("version: 1\ngrants: [{identity: {cn: a}, role: monitor}]\n")
    assert policy.mode == "enforce" and not policy.observing
    assert policy.landing_zones == ()
    assert policy.protected("ci/app")  # no landing zone: everything is protected


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            ("role: puller\n", "role: root\n"),
            "gate.yaml:5: grants[0]: role: 'root' is not one of: puller",
        ),
        (
            ("{ou: puller}", "{ou: puller, cn: x}"),
            "gate.yaml:4: grants[0]: identity.exactly one of cn, ou",
        ),
        (
            ("{ou: puller}", "{}"),
            "grants[0]: identity.exactly one of cn, ou is required (found: none)",
        ),
        (("[ci/]\ngrants", "[Ci/]\ngrants"), "gate.yaml:2: landing_zones[0]: 'Ci/' is not a"),
        (
            ('[""]', '["prod//"]'),
            "gate.yaml:6: grants[0]: repositories[0]: 'prod//' is not a repository",
        ),
        (("mode: observe", "mode: lax"), "gate.yaml:11: admission.mode: 'lax' is not one of"),
        (("fsync: 1s", "fsync: soon"), "gate.yaml:14: audit.fsync: 'soon' is not a duration"),
        (("version: 1", "version: 2"), "gate.yaml:1: version: 2 is not one of: 1"),
        (("landing_zones", "landing_zone"), "gate.yaml:2: landing_zone: unknown key (did you"),
        (("  - {identity: {cn: sync}", "  - {identity: {cn: 'a,b'}"), "'a,b' cannot be a"),
        (("udp://127.0.0.1:514", "http://x"), "gate.yaml:15: audit.syslog.address: 'http://x'"),
        (("{ou: admin}, role: admin}", "{ou: admin}, role: admin"), "gate.yaml:9: malformed YAML"),
    ],
)
def test_a_bad_policy_names_file_line_and_cause(edit: tuple[str, str], message: str) -> None:
    old, new = edit
    assert old in VALID
    with pytest.raises(SpecError) as refused:
        loads_policy(VALID.replace(old, new, 1))
    assert message in str(refused.value)


def test_every_problem_is_reported_at_once() -> None:
    text = VALID.replace("role: puller\n", "role: root\n").replace("mode: observe", "mode: lax")
    with pytest.raises(SpecError) as refused:
        loads_policy(text)
    assert len(refused.value.problems) == 2


def test_no_syslog_is_written_null() -> None:
    policy = loads_policy(
        VALID.replace('{address: "udp://127.0.0.1:514", facility: local0}', "null")
    )
    assert policy.audit["syslog"] is None


def test_a_duration_may_be_seconds() -> None:
    assert loads_policy(VALID.replace("fsync: 1s", "fsync: 0")).audit["fsync"] == 0
    with pytest.raises(SpecError, match=r"audit\.fsync: expected a string, got -1"):
        loads_policy(VALID.replace("fsync: 1s", "fsync: -1"))


def test_backend_storage_is_an_absolute_path_or_nothing() -> None:
    assert loads_policy(VALID).backend_storage is None
    for empty in ('""', "null"):
        assert loads_policy(VALID + f"backend_storage: {empty}\n").backend_storage is None
    policy = loads_policy(VALID + "backend_storage: /var/lib/docker-registry\n")
    assert policy.backend_storage == Path("/var/lib/docker-registry")
    with pytest.raises(SpecError, match=r"gate.yaml:16: backend_storage: 'var/lib' is not an"):
        loads_policy(VALID + "backend_storage: var/lib\n")


def test_grants_are_required() -> None:
    with pytest.raises(SpecError, match=r"gate.yaml:1: grants: required key missing"):
        loads_policy("version: 1\n")


def test_the_example_loads_and_shows_every_key() -> None:
    path = Path(__file__).resolve().parents[2] / "examples" / "gate.yaml"
    policy = load_policy(path)
    assert [grant.role for grant in policy.grants] == [
        "puller", "pusher", "puller", "admin", "sync", "scanner", "monitor",
    ]  # fmt: skip
    text = path.read_text()

    def keys(field: Field) -> set[str]:
        found = set()
        for name, option in (field.options or {}).items():
            found.add(name)
            found |= keys(option)
            if option.elements is not None:
                found |= keys(option.elements)
        return found

    missing = [key for key in sorted(keys(SCHEMA)) if f"{key}:" not in text]
    assert missing == []
