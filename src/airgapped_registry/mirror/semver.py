"""Semver versions and node-semver style ranges, for selecting tags by range.

:class:`Version` follows semver 2.0.0 for precedence; :class:`VersionRange` follows node-semver
(the reference for ``^``, ``~``, ``||`` and x-ranges), including its rule that a pre-release
is selected only by a range that names a pre-release of the same ``major.minor.patch``.
:func:`tag_order_key` orders any tags, semver or not, from oldest to newest.

Where it parts from node-semver (refusing empty ranges, hyphen ranges, ``~>``, ranges that
select nothing) is listed, with the reasons, in ``tests/unit/test_semver.py``, which compares
both on every range it knows.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Any

_NUMBER = r"0|[1-9]\d*"
_PRE_PART = r"0|[1-9]\d*|\d*[A-Za-z-][0-9A-Za-z-]*"
_VERSION = re.compile(
    rf"v?(?P<major>{_NUMBER})\.(?P<minor>{_NUMBER})\.(?P<patch>{_NUMBER})"
    rf"(?:-(?P<pre>(?:{_PRE_PART})(?:\.(?:{_PRE_PART}))*))?"
    r"(?:\+(?P<build>[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*))?"
)
_WILDCARD = r"x|X|\*"
_PARTIAL = re.compile(
    rf"v?(?P<major>{_NUMBER}|{_WILDCARD})"
    rf"(?:\.(?P<minor>{_NUMBER}|{_WILDCARD})(?:\.(?P<patch>{_NUMBER}|{_WILDCARD}))?)?"
)
# Two-character operators first: ">=1" is ">=" then "1", not ">" then "=1".
_OPERATORS = (">=", "<=", ">", "<", "=", "^", "~")


@functools.total_ordering
@dataclass(frozen=True, eq=False)
class Version:
    """A semver 2.0.0 version (``1.2.3``, ``v1.2.3``, ``1.2.3-rc.1``); build data is kept
    but, as the spec says, plays no part in precedence or equality."""

    major: int
    minor: int
    patch: int
    prerelease: tuple[int | str, ...] = ()
    build: str = ""

    @classmethod
    def parse(cls, text: str) -> Version | None:
        """The version ``text`` spells, or None when it is not a semver version."""
        match = _VERSION.fullmatch(text)
        if not match:
            return None
        pre = match["pre"]
        return cls(
            int(match["major"]),
            int(match["minor"]),
            int(match["patch"]),
            tuple(int(p) if p.isdigit() else p for p in pre.split(".")) if pre else (),
            match["build"] or "",
        )

    @property
    def release(self) -> tuple[int, int, int]:
        return (self.major, self.minor, self.patch)

    @property
    def key(self) -> tuple[Any, ...]:
        # A release sorts after its pre-releases; numeric identifiers sort before alphanumeric
        # ones; a shorter identifier list sorts first when it is a prefix of the longer.
        pre = tuple((0, p, "") if isinstance(p, int) else (1, 0, p) for p in self.prerelease)
        return (*self.release, 0 if self.prerelease else 1, pre)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Version) and self.key == other.key

    def __lt__(self, other: Version) -> bool:
        return self.key < other.key

    def __hash__(self) -> int:
        return hash(self.key)

    def __str__(self) -> str:
        text = ".".join(map(str, self.release))
        if self.prerelease:
            text += "-" + ".".join(map(str, self.prerelease))
        return f"{text}+{self.build}" if self.build else text


@dataclass(frozen=True)
class _Comparator:
    operator: str
    version: Version

    def test(self, version: Version) -> bool:
        if self.operator == ">=":
            return version >= self.version
        if self.operator == ">":
            return version > self.version
        if self.operator == "<=":
            return version <= self.version
        if self.operator == "<":
            return version < self.version
        return version == self.version


@dataclass(frozen=True)
class _ComparatorSet:
    comparators: tuple[_Comparator, ...]
    # major.minor.patch of the pre-releases the range itself names: only those may match.
    prerelease_releases: frozenset[tuple[int, int, int]]

    def test(self, version: Version) -> bool:
        if not all(comparator.test(version) for comparator in self.comparators):
            return False
        return not version.prerelease or version.release in self.prerelease_releases


@dataclass(frozen=True)
class VersionRange:
    """A node-semver style range: space-separated comparators are ANDed, ``||`` ORs sets.

    Operators ``>= > <= < =`` (none means ``=``), ``^`` (compatible: same major, or same
    minor below 1.0.0) and ``~`` (same minor); partial versions (``1``, ``1.2``, ``1.x``)
    stand for the versions they cover, ``*`` for any release.
    """

    text: str
    sets: tuple[_ComparatorSet, ...]

    @classmethod
    def parse(cls, text: str) -> VersionRange:
        """Parse ``text``; a ValueError says which part is wrong."""
        if not isinstance(text, str) or not text.strip():
            raise ValueError("empty range")
        sets = []
        for alternative in text.split("||"):
            # Allow a space between an operator and its version (">= 1.0.0").
            tokens = re.sub(r"(>=|<=|>|<|=|\^|~)\s+", r"\1", alternative.strip()).split()
            if not tokens:
                raise ValueError("empty alternative around '||'")
            comparators: list[_Comparator] = []
            named: set[tuple[int, int, int]] = set()
            for token in tokens:
                comparators.extend(_desugar(token, named))
            sets.append(_ComparatorSet(tuple(comparators), frozenset(named)))
        return cls(text, tuple(sets))

    def matches(self, version: Version) -> bool:
        return any(comparator_set.test(version) for comparator_set in self.sets)

    def __str__(self) -> str:
        return self.text


def _desugar(token: str, named: set[tuple[int, int, int]]) -> list[_Comparator]:
    written = next((operator for operator in _OPERATORS if token.startswith(operator)), "")
    operator, operand = written or "=", token[len(written) :]
    if not operand:
        raise ValueError(f"operator {operator!r} without a version")
    full = Version.parse(operand)
    if full is not None:
        if full.prerelease:
            named.add(full.release)
        if operator in (">=", ">", "<=", "<", "="):
            return [_Comparator(operator, full)]
        major, minor, patch = full.release
        if operator == "~":
            upper = _below(major, minor + 1, 0)
        elif major:
            upper = _below(major + 1, 0, 0)
        elif minor:
            upper = _below(0, minor + 1, 0)
        else:
            upper = _below(0, 0, patch + 1)
        return [_Comparator(">=", full), _Comparator("<", upper)]
    partial = _PARTIAL.fullmatch(operand)
    if not partial:
        if re.match(r"[!~><=^]", operand):
            raise ValueError(f"unknown operator in {token!r}")
        raise ValueError(f"{operand!r} is not a version")
    parts = [partial["major"], partial["minor"], partial["patch"]]
    numbers = []
    for part in parts:
        if part is None or part in ("x", "X", "*"):
            break
        numbers.append(int(part))
    if any(part not in (None, "x", "X", "*") for part in parts[len(numbers) :]):
        # node-semver refuses these too (but for ^ and ~): 1.x.3 is probably a typo
        raise ValueError(f"{operand!r}: a number after x")
    if len(numbers) == 3:  # 1.2.x with an explicit patch is a full version: already handled
        raise ValueError(f"{operand!r} is not a version")
    if not numbers:
        if operator in ("<", ">"):
            raise ValueError(f"{token!r} matches nothing")
        return [_Comparator(">=", Version(0, 0, 0))]
    major, minor, patch = (*numbers, 0, 0)[:3]
    lower = Version(major, minor, patch)
    # The first release above what the partial version covers.
    above = (numbers[0] + 1, 0, 0) if len(numbers) == 1 else (numbers[0], numbers[1] + 1, 0)
    if operator in ("=", "~"):
        return [_Comparator(">=", lower), _Comparator("<", _below(*above))]
    if operator == "^":
        if len(numbers) == 2 and numbers[0] == 0:
            return [_Comparator(">=", lower), _Comparator("<", _below(*above))]
        return [_Comparator(">=", lower), _Comparator("<", _below(numbers[0] + 1, 0, 0))]
    if operator == ">=":
        return [_Comparator(">=", lower)]
    if operator == ">":
        return [_Comparator(">=", Version(*above))]
    if operator == "<":
        return [_Comparator("<", _below(*lower.release))]
    return [_Comparator("<", _below(*above))]  # "<="


def _below(major: int, minor: int, patch: int) -> Version:
    """The lowest pre-release of a release (node-semver's ``-0``): as an upper bound it
    keeps out every pre-release of that release, even one the range names elsewhere."""
    return Version(major, minor, patch, (0,))


def tag_order_key(tag: str) -> tuple[Any, ...]:
    """Order of tags from oldest to newest, for ``max_tags``.

    Semver tags follow semver precedence and sort after every other tag; other tags follow
    a natural order (digit runs compared as numbers: ``1.9`` before ``1.10``). The tag
    itself breaks ties (``v1.0.0`` and ``1.0.0``), so the order is total and stable.
    """
    version = Version.parse(tag)
    if version is not None:
        return (1, version.key, tag)
    natural = tuple(
        (0, int(part), "") if part.isdigit() else (1, 0, part)
        for part in re.split(r"(\d+)", tag)
        if part
    )
    return (0, natural, tag)
