"""gate.yaml: a valid file read into its model, and every refusal naming file and line."""

from __future__ import annotations

import pytest

from airgapped_registry.gate.policy import DEFAULT_UNSCANNED_CONFIG_TYPES, loads_policy
from airgapped_registry.mirror.problems import SpecError

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


def test_grants_are_required() -> None:
    with pytest.raises(SpecError, match=r"gate.yaml:1: grants: required key missing"):
        loads_policy("version: 1\n")
