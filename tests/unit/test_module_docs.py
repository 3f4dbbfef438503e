"""The modules' documentation renders, shared options included (ansible-doc), and says what
the argument spec does (names, types, defaults, choices); what it says of the engine's
defaults is what the engine has: an option the engine has a default for has none of its own
in a module, and a number the text states is the engine's.

Two kinds of module: those that reach a registry (the registry options, as the CLI's
``--ca-file ... --timeout``), and the registry host's provenance modules, configured by its
provenance file (``config``, as the CLI's ``--config``), which take no registry options.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from airgapped_registry import defaults

PROJECT = Path(__file__).resolve().parents[2]
ANSIBLE_DOC = Path(sys.executable).parent / "ansible-doc"
MODULES = sorted(path.stem for path in (PROJECT / "plugins" / "modules").glob("*.py"))
# The CLI's registry options (cli/options.py), by the modules' names.
REGISTRY_OPTIONS = {"ca_file", "cert_file", "key_file", "auth_file", "timeout"}
# The provenance modules' shared options (doc fragment airgap_provenance).
PROVENANCE_OPTIONS = {"config", "cosign"}
PROVENANCE_MODULES = ["airgap_scan", "airgap_signature", "airgap_signing_key"]
# Options whose default is the engine's, by name (the same name means the same setting in
# every module): the value in defaults.py.
ENGINE_DEFAULTS: dict[str, object] = {
    "timeout": defaults.REQUEST_TIMEOUT,
    "workers": defaults.SYNC_WORKERS,
    "attempts": defaults.SYNC_ATTEMPTS,
    "backoff": defaults.SYNC_BACKOFF,
    "retry_times": defaults.SKOPEO_RETRY_TIMES,
    "tool_timeout": defaults.TOOL_TIMEOUT,
    "engine_copy_max_bytes": defaults.ENGINE_COPY_MAX_BYTES,
    "deadline": defaults.SYNC_DEADLINE,
    "state_db": defaults.STATE_PATH,
    "repository": defaults.LOCK_REPOSITORY,
    "tag": defaults.LOCK_TAG,
    "trusted_keys": defaults.TRANSFER_TRUSTED_DIR,
    "transfer_key": defaults.TRANSFER_KEY,
}
# "the engine's default (30)", "(16 MiB)", "(C(current))": what the text says the value is.
STATED = re.compile(r"engine's default \((C\([^)]*\)|[^()]*)\)")


@pytest.fixture(scope="module")
def docs() -> dict[str, Any]:
    result = subprocess.run(
        [str(ANSIBLE_DOC), "--json", *MODULES],
        env={**os.environ, "ANSIBLE_CONFIG": str(PROJECT / "ansible.cfg")},
        capture_output=True,
        text=True,
        cwd=PROJECT,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    found: dict[str, Any] = json.loads(result.stdout)
    return found


def test_every_module_documents_the_registry_options_from_the_fragment(docs) -> None:
    assert sorted(docs) == MODULES
    for name, doc in docs.items():
        options = doc["doc"]["options"]
        if name in PROVENANCE_MODULES:
            assert not set(options) & REGISTRY_OPTIONS, name
            continue
        assert set(options) >= REGISTRY_OPTIONS, name
        assert "auth_file" in options and "auth.json" in str(options["auth_file"]), name


def test_the_provenance_modules_document_config_from_their_fragment(docs) -> None:
    assert set(PROVENANCE_MODULES) <= set(docs)
    for name in PROVENANCE_MODULES:
        options = docs[name]["doc"]["options"]
        assert set(options) >= PROVENANCE_OPTIONS, name
        assert options["config"]["required"] is True, name
        assert "provenance.yaml" in str(options["config"]["description"]), name


def stated_value(text: str) -> object:
    """The value a description states: ``C(x)`` → ``"x"``, ``16 MiB`` → bytes, else a number."""
    if text.startswith("C("):
        return text[2:-1]
    number, _, unit = text.partition(" ")
    return float(number) * {"": 1, "MiB": 1024 * 1024}[unit]


@pytest.mark.parametrize(
    ("text", "value"),
    [("30", 30.0), ("16 MiB", 16 * 1024 * 1024), ("C(current)", "current"), ("1", 1)],
)
def test_stated_value(text: str, value: object) -> None:
    assert stated_value(text) == value


def test_a_default_the_text_states_is_the_engines(docs) -> None:
    stated: set[str] = set()
    for name, doc in docs.items():
        for option, spec in doc["doc"]["options"].items():
            description = (
                " ".join(spec["description"])
                if isinstance(spec["description"], list)
                else spec["description"]
            )
            match = STATED.search(description)
            if match is None:
                continue
            stated.add(option)
            where = f"{name} {option}"
            assert option in ENGINE_DEFAULTS, f"{where}: which of defaults.py is '{match[1]}'?"
            engine = ENGINE_DEFAULTS[option]
            value = stated_value(match[1])
            assert value == (str(engine) if isinstance(engine, Path) else engine), where
            assert "default" not in spec, f"{where}: documents a default of its own"
    assert stated == set(ENGINE_DEFAULTS)


def argument_spec(name: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """The argument spec module ``name`` gives ``engine_module()``, shared options included."""
    utils_spec = importlib.util.spec_from_file_location(
        "ansible.module_utils.airgap_engine", PROJECT / "plugins/module_utils/airgap_engine.py"
    )
    assert utils_spec and utils_spec.loader
    utils = importlib.util.module_from_spec(utils_spec)
    utils_spec.loader.exec_module(utils)
    monkeypatch.setitem(sys.modules, "ansible.module_utils.airgap_engine", utils)
    module_spec = importlib.util.spec_from_file_location(
        f"airgap_module_{name}", PROJECT / "plugins" / "modules" / f"{name}.py"
    )
    assert module_spec and module_spec.loader
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    captured: dict[str, Any] = {}
    shared: dict[str, Any] = {}

    class Built(Exception):
        pass

    def engine_module(
        spec: dict[str, Any], import_error: str | None, *, registry: bool = True, **_: Any
    ) -> None:
        assert import_error is None, import_error
        captured.update(spec)
        shared.update(utils.REGISTRY_OPTIONS if registry else {})
        raise Built

    monkeypatch.setattr(module, "engine_module", engine_module)
    with pytest.raises(Built):
        module.main()
    return {**captured, **shared}


@pytest.mark.parametrize("name", MODULES)
def test_no_module_writes_a_default_the_engine_has(name: str, monkeypatch) -> None:
    spec = argument_spec(name, monkeypatch)
    shared = PROVENANCE_OPTIONS if name in PROVENANCE_MODULES else REGISTRY_OPTIONS
    assert set(spec) >= shared
    own = {option for option in spec if option in ENGINE_DEFAULTS and "default" in spec[option]}
    assert not own, f"{name}: defaults of its own for {sorted(own)}; leave them to the engine"


def test_the_defaults_docs_mirror_md_lists_are_the_engines() -> None:
    text = " ".join((PROJECT / "docs" / "mirror.md").read_text().split())
    start = text.index("so each default is defined once, in the engine:")
    paragraph = text[start : text.index(". ", start)]
    listed = {
        option: value.strip("`") if value.startswith("`") else stated_value(value)
        for option, value in re.findall(r"`(\w+)` (`[^`]+`|[\d.]+(?: MiB)?)", paragraph)
    }
    assert listed == {
        option: str(value) if isinstance(value, Path) else value
        for option, value in ENGINE_DEFAULTS.items()
        if option not in ("repository", "tag")
    }
    assert f"`{defaults.LOCK_REPOSITORY}:{defaults.LOCK_TAG}`" in paragraph


# What ansible-doc shows of an option, against the argument spec that AnsibleModule enforces.
SPEC_FIELDS = {"type": "str", "default": None, "choices": None, "required": False}


@pytest.mark.parametrize("name", MODULES)
def test_the_documentation_says_what_the_argument_spec_does(name: str, docs, monkeypatch) -> None:
    """Every option documented, nothing documented that is not an option, and each one's
    type, default, choices, requirement, elements and aliases as the module enforces them:
    a default changed in one place and not the other fails here."""
    spec = argument_spec(name, monkeypatch)
    options = docs[name]["doc"]["options"]
    assert sorted(options) == sorted(spec), name
    for option, enforced in spec.items():
        documented = options[option]
        where = f"{name} {option}"
        for field, unset in SPEC_FIELDS.items():
            assert documented.get(field, unset) == enforced.get(field, unset), f"{where} {field}"
        assert documented.get("elements") == enforced.get("elements"), where
        assert sorted(documented.get("aliases", [])) == sorted(enforced.get("aliases", [])), where
