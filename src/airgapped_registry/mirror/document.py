"""YAML read into mappings and sequences that know their line numbers.

Every problem a mirror list check reports names a line, so the document keeps them:
:func:`parse` returns plain YAML values where each mapping is a :class:`LineMap` and each
sequence a :class:`LineList`. Duplicate keys, which PyYAML silently lets the last one win,
are refused.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from airgapped_registry.errors import AirgapError
from airgapped_registry.mirror.problems import Problem, SpecError


def read_text(path: str | os.PathLike[str]) -> tuple[str, str]:
    """``(name, text)`` of a YAML file to :func:`parse`: a file that cannot be read raises
    :class:`AirgapError` naming it and the cause; one that is not UTF-8, :class:`SpecError`."""
    name = os.fspath(path)
    try:
        return name, Path(name).read_text(encoding="utf-8")
    except OSError as exc:
        raise AirgapError(f"{name}: cannot read ({exc.strerror or exc})") from exc
    except UnicodeDecodeError as exc:
        raise SpecError([Problem(name, 1, "", f"not UTF-8 text ({exc.reason})")]) from exc


def parse(text: str, filename: str) -> Any:
    """The YAML document ``text``; malformed YAML raises :class:`SpecError` naming the line."""
    try:
        try:
            return yaml.load(text, Loader=_FastLoader)
        except yaml.YAMLError:
            return yaml.load(text, Loader=_Loader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 1
        cause = " ".join(part for part in (exc.context, exc.problem) if part)
        raise SpecError([Problem(filename, line, "", f"malformed YAML: {cause}")]) from exc
    except yaml.YAMLError as exc:
        raise SpecError([Problem(filename, 1, "", f"malformed YAML: {exc}")]) from exc


class LineMap(dict[Any, Any]):
    """A YAML mapping that remembers its own line and the line of each key."""

    line: int
    lines: dict[Any, int]


class LineList(list[Any]):
    """A YAML sequence that remembers its own line and the line of each item."""

    line: int
    lines: list[int]


class _DuplicateKeyError(yaml.MarkedYAMLError):
    pass


class _Loader(yaml.SafeLoader):
    """SafeLoader whose mappings and sequences carry 1-based line numbers."""


# mypy cannot check a base class chosen at run time (misc: "Unsupported dynamic base class").
class _FastLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """The same on libyaml's parser when PyYAML has it (Debian's python3-yaml does): a list
    of a few hundred entries parses in milliseconds instead of a tenth of a second. Its error
    messages are worded differently, so a list it refuses is parsed again by :class:`_Loader`
    for the message."""


def _construct_map(loader: _Loader, node: yaml.MappingNode) -> LineMap:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node, deep=True)
        if isinstance(key, list | dict):
            raise yaml.constructor.ConstructorError(
                None, None, "a mapping key must be a scalar", key_node.start_mark
            )
        if key in seen:
            raise _DuplicateKeyError(
                None,
                None,
                f"duplicate key '{key}' (first on line {seen[key]})",
                key_node.start_mark,
            )
        seen[key] = key_node.start_mark.line + 1
    loader.flatten_mapping(node)
    mapping = LineMap()
    mapping.line = node.start_mark.line + 1
    mapping.lines = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        mapping[key] = loader.construct_object(value_node, deep=True)
        mapping.lines[key] = key_node.start_mark.line + 1
    return mapping


def _construct_seq(loader: _Loader, node: yaml.SequenceNode) -> LineList:
    sequence = LineList(loader.construct_object(child, deep=True) for child in node.value)
    sequence.line = node.start_mark.line + 1
    sequence.lines = [child.start_mark.line + 1 for child in node.value]
    return sequence


for _loader in (_Loader, _FastLoader):
    _loader.add_constructor("tag:yaml.org,2002:map", _construct_map)
    _loader.add_constructor("tag:yaml.org,2002:seq", _construct_seq)
