"""The schema language of the mirror list, its checker and the Ansible spec derived from it.

A schema is a tree of :class:`Field` nodes (types, required keys, defaults, choices, checks)
with :class:`Rules` between the keys of a mapping. :class:`Checker` walks a document read by
:mod:`airgapped_registry.mirror.document` against it and reports every way it does not fit,
each with its line and entry path (``images[3] 'nginx': platforms[1]: ...``).
:func:`ansible_argument_spec` derives an Ansible ``argument_spec`` from the same tree, so a
module cannot drift from the file format. The mirror list's own schema is
:data:`airgapped_registry.mirror.spec_schema.SCHEMA`.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from airgapped_registry.mirror.document import LineList, LineMap
from airgapped_registry.mirror.problems import Problems

# Names of a "map" (sources by name): they become labels in messages and in the lock.
_NAME = re.compile(r"[a-z0-9][a-z0-9_-]*")


@dataclass(frozen=True)
class Rules:
    """Relations between the keys of one mapping.

    ``one_of``: exactly one key of each group; ``requires``: a key needs these others;
    ``forbids``: a key excludes these others. They map onto Ansible's ``required_one_of`` +
    ``mutually_exclusive``, ``required_by`` and ``mutually_exclusive``.
    """

    one_of: tuple[tuple[str, ...], ...] = ()
    requires: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    forbids: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


@dataclass(frozen=True)
class Field:
    """One node of the schema.

    ``type`` is ``str``, ``int``, ``number``, ``bool``, ``list`` (items follow ``elements``),
    ``dict`` (keys from ``options``), or ``map`` (free names, values follow ``elements``).
    ``literal`` names a string accepted in place of a ``dict`` (``signatures: none``).
    ``check`` returns a problem for a well-typed value, or None. ``empty_ok`` accepts an
    empty (or null) list or mapping, which otherwise is refused as a probable mistake.
    """

    type: str
    help: str
    required: bool = False
    default: Any = None
    choices: tuple[Any, ...] = ()
    minimum: int | float | None = None
    elements: Field | None = None
    options: Mapping[str, Field] | None = None
    rules: Rules = field(default_factory=Rules)
    literal: str | None = None
    check: Callable[[Any], str | None] | None = None
    empty_ok: bool = False


class Checker:
    """Reports, into ``problems``, every way a document does not fit a schema.

    The items of the document's top-level lists are its entries: problems name them by
    :meth:`entry_label`. An entry, or a value of a top-level map (``sources.upstream``), with
    any problem is recorded in ``broken``, so that checks which assume well-typed values can
    skip it.
    """

    def __init__(self, problems: Problems) -> None:
        self.problems = problems
        self.broken: set[tuple[str, int | str]] = set()

    def entry_label(self, key: str, index: int, item: Any) -> str:
        """How messages name item ``index`` of the top-level list ``key``."""
        return f"{key}[{index}]"

    def unknown_key(self, name: Any, known: Mapping[str, Field]) -> str:
        """The cause reported for a key the schema does not have."""
        close = difflib.get_close_matches(str(name), list(known), n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        return f"unknown key ({hint}expected one of: {', '.join(known)})"

    def check(self, value: Any, schema: Field, line: int, entry: str, key: str) -> None:
        """Report every way ``value`` does not fit ``schema``; ``key`` is its path in entry."""
        if schema.literal is not None and value == schema.literal:
            return
        if schema.empty_ok and value is None:
            return
        cause = _value_problem(value, schema)
        if cause:
            self.problems.add(line, entry, f"{key}: {cause}" if key else cause)
        elif schema.type == "list":
            self.check_list(value, schema, entry, key)
        elif schema.type == "dict":
            self.check_dict(value, schema, entry, key)
        elif schema.type == "map":
            self.check_map(value, schema, entry, key)

    def check_list(self, value: LineList, schema: Field, entry: str, key: str) -> None:
        if schema.elements is None:
            raise TypeError(f"schema error: list {key!r} without elements")
        if not value and not schema.empty_ok:
            self.problems.add(value.line, entry, f"{key}: must not be empty")
            return
        seen: dict[Any, int] = {}
        top_level = not entry
        for index, item in enumerate(value):
            item_line = value.lines[index]
            if top_level:
                item_entry, item_key = self.entry_label(key, index, item), ""
            else:
                item_entry, item_key = entry, f"{key}[{index}]"
            if isinstance(item, str) and item in seen:
                self.problems.add(
                    item_line, item_entry, f"{item_key}: '{item}' repeats line {seen[item]}"
                )
                continue
            if isinstance(item, str):
                seen[item] = item_line
            before = len(self.problems)
            self.check(item, schema.elements, item_line, item_entry, item_key)
            if top_level and len(self.problems) > before:
                self.broken.add((key, index))

    def check_map(self, value: LineMap, schema: Field, entry: str, key: str) -> None:
        if schema.elements is None:
            raise TypeError(f"schema error: map {key!r} without elements")
        prefix = f"{key}: " if key else ""
        for name, item in value.items():
            item_line = value.lines[name]
            before = len(self.problems)
            if not isinstance(name, str) or not _NAME.fullmatch(name):
                self.problems.add(item_line, entry, f"{prefix}{_show(name)} is not a valid name")
            else:
                label = f"{key}.{name}" if key else name
                self.check(item, schema.elements, item_line, label, "")
            if len(self.problems) > before:
                self.broken.add((key, name))

    def check_dict(self, value: LineMap, schema: Field, entry: str, key: str) -> None:
        if schema.options is None:
            raise TypeError(f"schema error: mapping {key!r} without options")
        prefix = f"{key}." if key else ""
        known = schema.options
        for name in value:
            if name not in known:
                cause = self.unknown_key(name, known)
                self.problems.add(value.lines[name], entry, f"{prefix}{name}: {cause}")
        for name, option in known.items():
            if option.required and name not in value:
                self.problems.add(value.line, entry, f"{prefix}{name}: required key missing")
        self.check_rules(value, schema.rules, entry, prefix)
        for name, item in value.items():
            if name in known:
                self.check(item, known[name], value.lines[name], entry, f"{prefix}{name}")

    def check_rules(self, value: LineMap, rules: Rules, entry: str, prefix: str) -> None:
        for group in rules.one_of:
            present = [name for name in group if name in value]
            if len(present) != 1:
                found = ", ".join(present) if present else "none"
                self.problems.add(
                    value.line,
                    entry,
                    f"{prefix}exactly one of {', '.join(group)} is required (found: {found})",
                )
        for name, needed in rules.requires.items():
            for other in needed:
                if name in value and other not in value:
                    self.problems.add(value.line, entry, f"{prefix}{name} requires {other}")
        for name, excluded in rules.forbids.items():
            for other in excluded:
                if name in value and other in value:
                    self.problems.add(
                        value.lines[name], entry, f"{prefix}{name} cannot be used with {other}"
                    )


def _value_problem(value: Any, schema: Field) -> str | None:
    """What is wrong with ``value`` itself (type, choice, bounds, check), or None."""
    if not _has_type(value, schema.type):
        hint = ""
        if isinstance(value, int | float) and schema.type == "str":
            hint = f" (quote it: YAML reads {value} as a number)"
        return f"expected {_describe_type(schema)}, got {_show(value)}{hint}"
    if schema.choices and value not in schema.choices:
        return f"{_show(value)} is not one of: {', '.join(map(str, schema.choices))}"
    if schema.minimum is not None and value <= schema.minimum and schema.type == "number":
        return f"must be greater than {schema.minimum}"
    if schema.minimum is not None and value < schema.minimum:
        return f"must be at least {schema.minimum}"
    if schema.type == "str" and not value.strip():
        return "must not be empty"
    if schema.check is not None:
        return schema.check(value)
    return None


def _has_type(value: Any, kind: str) -> bool:
    if kind == "str":
        return isinstance(value, str)
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "list":
        return isinstance(value, LineList)
    return isinstance(value, LineMap)


def _describe_type(schema: Field) -> str:
    names = {
        "str": "a string",
        "int": "an integer",
        "number": "a number",
        "bool": "true or false",
        "list": "a list",
        "dict": "a mapping",
        "map": "a mapping of names",
    }
    text = names[schema.type]
    return f"'{schema.literal}' or {text}" if schema.literal else text


def _show(value: Any) -> str:
    if isinstance(value, str):
        return f"'{value}'"
    if value is None:
        return "nothing"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return repr(value)


# -- the Ansible argument spec -------------------------------------------------------------

_ANSIBLE_TYPES = {
    "str": "str",
    "int": "int",
    "number": "float",
    "bool": "bool",
    "list": "list",
    "dict": "dict",
    "map": "dict",
}


def ansible_argument_spec(schema: Field) -> dict[str, Any]:
    """The Ansible ``argument_spec`` of a mapping of the schema."""
    if schema.options is None:
        raise TypeError(f"an argument spec needs a mapping, not {schema.type!r}")
    return {name: _ansible_option(option) for name, option in schema.options.items()}


def _ansible_option(option: Field) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "type": "raw" if option.literal else _ANSIBLE_TYPES[option.type],
        "required": option.required,
    }
    if option.default is not None:
        spec["default"] = option.default
    if option.choices:
        spec["choices"] = list(option.choices)
    element = option.elements
    if option.type == "list" and element is not None:
        spec["elements"] = _ANSIBLE_TYPES[element.type]
        if element.options is not None:
            spec["options"] = ansible_argument_spec(element)
            spec.update(_ansible_rules(element.rules))
    elif option.type == "dict" and option.options is not None and not option.literal:
        spec["options"] = ansible_argument_spec(option)
        spec.update(_ansible_rules(option.rules))
    return spec


def _ansible_rules(rules: Rules) -> dict[str, Any]:
    exclusive = [list(group) for group in rules.one_of]
    exclusive += [[key, other] for key, others in rules.forbids.items() for other in others]
    result: dict[str, Any] = {}
    if rules.one_of:
        result["required_one_of"] = [list(group) for group in rules.one_of]
    if exclusive:
        result["mutually_exclusive"] = exclusive
    if rules.requires:
        result["required_by"] = {key: list(value) for key, value in rules.requires.items()}
    return result
