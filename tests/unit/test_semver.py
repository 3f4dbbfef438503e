"""Semver versions, ranges and tag order: our own table, then a differential run against
node-semver, the reference for ``^``, ``~``, ``||`` and x-ranges.

The reference is the real npm package, pinned and installed by ``scripts/bootstrap`` into
``.cache/node``; one ``node`` process answers every (range, version) pair at once. It runs
in node-semver's default mode (not loose, pre-releases only when the range names one), which
is the behaviour a mirror list promises.
"""

from __future__ import annotations

import functools
import itertools
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from airgapped_registry.mirror.semver import Version, VersionRange, tag_order_key

ROOT = Path(__file__).resolve().parents[2]
NODE_SEMVER = ROOT / ".cache" / "node" / "node_modules" / "semver"
NODE_SEMVER_VERSION = "7.8.5"  # the pin in scripts/bootstrap

# -- our own table -------------------------------------------------------------------------

# (range, version, selected): the kinds of cases of node-semver's range-include and
# range-exclude fixtures, default options only. A failure here names the one pair.
TABLE = [
    # plain comparators, spaces after an operator, the v prefix
    ("1.0.0", "1.0.0", True),
    ("1.0.0", "1.0.1", False),
    ("=1.2.3", "1.2.3", True),
    ("=1.2.3", "1.2.3-beta", False),
    ("v1.0.0", "1.0.0", True),
    (">=1.0.0", "1.0.0", True),
    (">=1.0.0", "0.1.0", False),
    (">1.0.0", "1.0.1", True),
    (">1.0.0", "1.0.0", False),
    ("<=2.0.0", "2.0.0", True),
    ("<=2.0.0", "2.0.1", False),
    ("<2.0.0", "1.9999.9999", True),
    ("<2.0.0", "2.0.0", False),
    (">=  1.0.0", "1.0.1", True),
    ("<\t2.0.0", "0.2.9", True),
    (">=0.1.97", "v0.1.97", True),
    (">=0.1.97", "0.1.93", False),
    ("1.2.3", "1.2.3+build.5", True),  # build metadata plays no part
    # intersections and unions
    (">=1.0.0 <3.0.0", "2.9.9", True),
    (">=1.0.0 <3.0.0", "3.0.0", False),
    ("~1.2.1 >=1.2.3", "1.2.3", True),
    ("~1.2.1 >=1.2.3", "1.2.2", False),
    ("0.1.20 || 1.2.4", "1.2.4", True),
    ("0.1.20 || 1.2.4", "1.2.3", False),
    (">=0.2.3 || <0.0.1", "0.0.0", True),
    (">=0.2.3 || <0.0.1", "0.2.2", False),
    # x-ranges and partial versions
    ("*", "1.2.3", True),
    ("x", "1.2.3", True),
    ("2.x.x", "2.1.3", True),
    ("2.x.x", "3.1.3", False),
    ("1.2.*", "1.2.3", True),
    ("1.2.*", "1.3.3", False),
    ("1.2.x || 2.x", "2.1.3", True),
    ("1.2.x || 2.x", "1.1.3", False),
    ("2", "2.1.2", True),
    ("2", "1.1.2", False),
    ("2.3", "2.3.1", True),
    ("2.3", "2.4.1", False),
    (">=1.2", "1.2.8", True),
    (">=1.2", "1.1.1", False),
    (">1.2", "1.3.0", True),
    (">1.2", "1.2.8", False),
    ("<1.2", "1.1.1", True),
    ("<1", "1.0.0", False),
    ("<=0.7.x", "0.7.2", True),
    ("<0.7.x", "0.7.2", False),
    ("<=7.x", "7.9.9", True),
    (">=*", "0.2.4", True),
    ("<=*", "0.2.4", True),
    # tilde: patch-level changes (minor-level when only the major is given)
    ("~1.2.3", "1.2.9", True),
    ("~1.2.3", "1.3.0", False),
    ("~2.4", "2.4.5", True),
    ("~2.4", "2.5.0", False),
    ("~2.4", "2.3.9", False),
    ("~1", "1.2.3", True),
    ("~1", "2.0.0", False),
    ("~0.0.1", "0.0.2", True),
    ("~0.0.1", "0.1.0", False),
    ("~ 1.0.3", "1.0.12", True),
    ("~v0.5.4-pre", "0.5.5", True),
    ("~v0.5.4-beta", "0.5.4-alpha", False),
    # caret: changes that do not modify the left-most non-zero part
    ("^1.2.3", "1.8.1", True),
    ("^1.2.3", "2.0.0", False),
    ("^1.2.3", "1.2.2", False),
    ("^0.1.2", "0.1.9", True),
    ("^0.1.2", "0.2.0", False),
    ("^0.0.1", "0.0.1", True),
    ("^0.0.1", "0.0.2", False),
    ("^1.2", "1.4.2", True),
    ("^1.2", "1.1.9", False),
    ("^0.1", "0.1.2", True),
    ("^0.0", "0.0.9", True),
    ("^0.0", "0.1.0", False),
    ("^0", "0.9.0", True),
    ("^0", "1.0.0", False),
    ("^1.2 ^1", "1.4.2", True),
    ("^x", "1.2.3", True),
    ("^1.2.3+build", "1.3.0", True),
    ("^1.2.3+build", "1.2.0", False),
    # pre-releases: selected only by a range naming one of the same major.minor.patch
    ("^1.2.3-alpha", "1.2.3-pre", True),
    ("^0.0.1-alpha", "0.0.1-beta", True),
    ("^1.2.3-alpha", "1.2.4-pre", False),
    ("^1.2.3", "1.2.3-beta", False),
    ("^1.2", "1.2.0-pre", False),
    (">1.2", "1.3.0-beta", False),
    ("<=1.2.3", "1.2.3-beta", False),
    ("<1.2.3", "1.2.3-beta", False),
    ("=0.7.x", "0.7.0-asdf", False),
    ("*", "7.0.0-beta", False),
    ("^1.2.3", "2.0.0-alpha", False),
    (">=1.0.0 <1.1.0", "1.1.0-pre", False),
    (">=1.0.0 <1.1.0-pre", "1.1.0-pre", False),
    (">=2.0.0-rc.0", "2.0.0-rc.1", True),
    (">=2.0.0-rc.0", "2.0.1-rc.1", False),
    (">=2.0.0-rc.0", "2.0.1", True),
    # An x-range's upper bound is below every pre-release of that release (node's -0), also
    # when the set names such a pre-release.
    (">=1.3.0-rc.0 <=1.2", "1.3.0-rc.1", False),
    (">=1.2.0-rc.0 <1.2", "1.2.0-rc.1", False),
    (">=1.3.0-rc.0 <1.3.0", "1.3.0-rc.1", True),
    ("~1.2.3-rc.0 <1.3.0-rc.2", "1.3.0-rc.1", False),
    ("^1.2.3 >=2.0.0-rc.0", "2.0.0-rc.1", False),
]


@pytest.mark.parametrize(("text", "version", "selected"), TABLE)
def test_range_table(text: str, version: str, selected: bool) -> None:
    parsed = Version.parse(version)
    assert parsed is not None
    assert VersionRange.parse(text).matches(parsed) is selected


# Ranges we refuse, with the reason the mirror list check shows. The first ones node-semver
# refuses too; the rest are deliberate differences, see DELIBERATE.
REFUSED = [
    ("!=1.0.0", "unknown operator in '!=1.0.0'"),
    ("=>1.0.0", "unknown operator in '=>1.0.0'"),
    (">=1.0.0 <two", "'two' is not a version"),
    (">=", "operator '>=' without a version"),
    ("1.2.3.4", "'1.2.3.4' is not a version"),
    ("1.x.3", "'1.x.3': a number after x"),
    ("x.2", "'x.2': a number after x"),
    ("", "empty range"),
    (">=1.0.0 ||", "empty alternative around '||'"),
    ("1.0.0 - 2.0.0", "'-' is not a version"),
    ("~>1.2.3", "unknown operator in '~>1.2.3'"),
    ("<*", "'<*' matches nothing"),
]


@pytest.mark.parametrize(("text", "cause"), REFUSED)
def test_refused_ranges_say_why(text: str, cause: str) -> None:
    with pytest.raises(ValueError) as refused:
        VersionRange.parse(text)
    assert str(refused.value) == cause


def test_tag_order_puts_semver_tags_last_in_precedence_order() -> None:
    tags = ["2.0.0", "v1.0.0", "1.0.0", "1.10.0", "1.9.0", "2.0.0-rc.1", "edge-3", "1.9"]
    assert sorted(tags, key=tag_order_key) == [
        "1.9",
        "edge-3",
        "1.0.0",
        "v1.0.0",
        "1.9.0",
        "1.10.0",
        "2.0.0-rc.1",
        "2.0.0",
    ]


# -- the differential run against node-semver ----------------------------------------------

# Every range is tried with every version of VERSIONS.
RANGES = sorted(
    {text for text, _, _ in TABLE}
    | {text for text, _ in REFUSED}
    | {
        "=v1.0.0",
        ">=v1.2.3",
        "v1.x",
        "X",
        "2.*.*",
        "1.2.* || 2.*",
        "~x",
        "~*",
        "^*",
        "=*",
        ">*",
        "~2",
        "~0",
        "~0.0",
        "~1.0",
        "~ 1.0",
        "~1.2",
        "~1.2.x",
        ">= 1",
        "< 1.2",
        "<=1.2",
        "=0.7.x",
        ">=0.7.x",
        "~1.2.1 =1.2.3",
        "~1.2.1 1.2.3",
        "~1.2.1 >=1.2.3 1.2.3",
        ">=1.2.1 1.2.3",
        ">=1.2.3 >=1.2.1",
        "^0.x",
        "^0.0.x",
        "^0.0.0",
        "^0.1.x",
        "^1.x",
        "^1.2.0-alpha",
        "^0.1.1-alpha",
        "^2.0.0-rc.1",
        "~2.0.0-rc.1",
        "~1.2.3-beta.2",
        "2.0.0-rc.1",
        "<2.0.0-rc.1",
        ">2.0.0-rc.1",
        "<0.0.0-0",
        ">=1.0.0 <2.0.0 || >=3.0.0-rc.1",
        "^1.2.3-alpha.1 <1.2.3",
        "1.2.3+build || 2",
        "  1.2.3  ",
        ">=1.0.0  <2.0.0",
        ">=1.0.0<2.0.0",
        "x.x.x",
        "1.x.x",
        "1.2.x.x",
        "x.1",
        "^x.1",
        "~1.x.3",
        "^1.x.3",
        "~>1",
        "~> 1",
        "||",
        "|| 1.0.0",
        "1.2.3 - *",
        ">=01.2.3",
        "1.2.3-01",
        "1.2.3-",
        "latest",
    }
)

VERSIONS = sorted(
    {version for _, version, _ in TABLE}
    | {
        "0.0.0",
        "0.0.2-alpha",
        "0.0.3",
        "0.1.0-alpha",
        "0.1.1-beta",
        "0.5.4",
        "0.6.2",
        "0.8.2",
        "0.9.7",
        "1.0.0-rc.1",
        "1.1.0",
        "1.2.0",
        "1.2.0-rc.1",
        "1.2.3-alpha",
        "1.2.3-alpha.1",
        "1.2.4",
        "1.3.0-rc.1",
        "1.3.0-rc.2",
        "2.0.0-rc.0",
        "2.0.0-rc.2",
        "2.0.9",
        "2.2.3",
        "2.4.0",
        "2.5.0",
        "3.0.0-rc.1",
        "3.2.2",
        "3.3.2",
        "10.0.0",
        "1.27.3-alpine",
        "v2.0.0",
    }
)

# Strings tried as versions (tags): valid or not, ours and node-semver's answers agree.
VERSION_TEXTS = [
    *VERSIONS,
    "1.2",
    "1",
    "01.2.3",
    "1.02.3",
    "1.2.3-",
    "1.2.3-01",
    "1.2.3-0a",
    "1.2.3+",
    "1.2.3.4",
    "1.2.3-rc..1",
    "=1.2.3",
    "V1.2.3",
    "latest",
    "",
    "1.2.3-alpha+build.1.2",
    "1.2.3+build-01",
]

# Ranges node-semver accepts and we refuse on purpose: a mirror list is checked before a
# night's run, and a range that could be a typo is better refused with a reason than read
# the way node-semver reads it.
DELIBERATE = {
    "": "node-semver reads an empty range as '*'; in a mirror list it is a mistake",
    "||": "an empty alternative is '*' to node-semver; refused as a probable mistake",
    "|| 1.0.0": "an empty alternative is '*' to node-semver; refused as a probable mistake",
    ">=1.0.0 ||": "an empty alternative is '*' to node-semver; refused as a probable mistake",
    "1.0.0 - 2.0.0": "hyphen ranges are not supported (never were): '>=1.0.0 <=2.0.0' says it",
    "1.2.3 - *": "hyphen ranges are not supported (never were)",
    "~>1.2.3": "'~>' is Ruby's spelling of '~'; not supported, '~' says it",
    "~>1": "'~>' is Ruby's spelling of '~'; not supported, '~' says it",
    "~> 1": "'~>' is Ruby's spelling of '~'; not supported, '~' says it",
    "<*": "node-semver reads it as '<0.0.0-0', a range that selects nothing: refused",
    ">*": "node-semver reads it as '<0.0.0-0', a range that selects nothing: refused",
    # node-semver 7.8 refuses a number after x ('1.x.3', 'x.1') except after ^ and ~.
    "^x.1": "a number after x is refused after every operator alike",
    "~1.x.3": "a number after x is refused after every operator alike",
    "^1.x.3": "a number after x is refused after every operator alike",
}


def _node_semver(ranges: list[str], versions: list[str]) -> dict[str, Any]:
    """node-semver's answers: which ranges are valid, satisfies() for every pair,
    valid() for every version and compare() for every pair of valid versions."""
    node = shutil.which("node")
    if node is None or not (NODE_SEMVER / "package.json").is_file():
        pytest.fail(f"node or node-semver missing ({NODE_SEMVER}): run ./scripts/bootstrap")
    script = """
const semver = require(process.env.NODE_SEMVER);
const input = JSON.parse(require("fs").readFileSync(0, "utf8"));
const valid = input.versions.filter((v) => semver.valid(v) !== null);
process.stdout.write(JSON.stringify({
  version: require(process.env.NODE_SEMVER + "/package.json").version,
  ranges: input.ranges.map((r) => [
    semver.validRange(r) !== null,
    input.versions.map((v) => semver.satisfies(v, r)),
  ]),
  valid: input.versions.map((v) => semver.valid(v) !== null),
  compare: valid.map((a) => valid.map((b) => semver.compare(a, b))),
}));
"""
    result = subprocess.run(
        [node, "-e", script],
        input=json.dumps({"ranges": ranges, "versions": versions}),
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "NODE_SEMVER": str(NODE_SEMVER)},
        timeout=60,
    )
    if result.returncode != 0:
        pytest.fail(f"node-semver failed: {result.stderr.strip()}")
    answer = json.loads(result.stdout)
    assert answer["version"] == NODE_SEMVER_VERSION
    return answer


@functools.cache
def reference() -> dict[str, Any]:
    answer = _node_semver(RANGES, VERSIONS)
    return {
        "ranges": dict(zip(RANGES, answer["ranges"], strict=True)),
        "versions": _node_semver([], VERSION_TEXTS),
    }


def test_the_differential_covers_the_reference_cases() -> None:
    # Keeps the differential from shrinking unnoticed when the tables are edited.
    assert len(RANGES) * len(VERSIONS) >= 9000


@pytest.mark.parametrize("text", RANGES)
def test_range_agrees_with_node_semver(text: str) -> None:
    node_valid, node_selected = reference()["ranges"][text]
    try:
        ours = VersionRange.parse(text)
    except ValueError as refused:
        if text in DELIBERATE:
            assert node_valid, f"node-semver refuses {text!r} too: drop it from DELIBERATE"
            return
        assert not node_valid, f"we refuse {text!r} ({refused}), node-semver accepts it"
        return
    assert text not in DELIBERATE, f"{text!r} is accepted now: drop it from DELIBERATE"
    assert node_valid, f"we accept {text!r}, node-semver refuses it"
    differ = []
    for version, node_says in zip(VERSIONS, node_selected, strict=True):
        parsed = Version.parse(version)
        assert parsed is not None
        if ours.matches(parsed) is not node_says:
            differ.append(f"{version}: node-semver {node_says}")
    assert not differ, f"{text!r} disagrees with node-semver on " + ", ".join(differ)


def test_versions_agree_with_node_semver() -> None:
    answer = reference()["versions"]
    ours = [Version.parse(text) is not None for text in VERSION_TEXTS]
    differ = [
        f"{text!r}: node-semver {node}"
        for text, mine, node in zip(VERSION_TEXTS, ours, answer["valid"], strict=True)
        if mine is not node
    ]
    assert not differ, "version validity differs: " + ", ".join(differ)
    valid = [Version.parse(text) for text, ok in zip(VERSION_TEXTS, ours, strict=True) if ok]
    differ = []
    for (i, a), (j, b) in itertools.product(enumerate(valid), repeat=2):
        assert a is not None and b is not None
        mine = (a > b) - (a < b)
        if mine != answer["compare"][i][j]:
            differ.append(f"{a} vs {b}: node-semver {answer['compare'][i][j]}")
    assert not differ, "precedence differs: " + ", ".join(differ[:20])
