"""Which keys the sync verifies an upstream signature with: the lock's, else the list's."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from airgapped_registry.mirror.lock import Lock
from airgapped_registry.mirror.lockstore import relay_entry
from airgapped_registry.mirror.outcome import EntryFailure
from airgapped_registry.mirror.plan import fingerprint
from airgapped_registry.mirror.signatures import SignatureCheck
from airgapped_registry.mirror.spec import loads
from airgapped_registry.tools.process import Tools
from tests.unit.test_lock import entry

LIST = """\
version: 1
sources:
  upstream: {registry: "upstream:5000", insecure: true}
images:
  - source: upstream
    repository: sample/base
    tags: ["1.0.0"]
    signatures: {keys: [keys/list.pub]}
"""


def check(tmp_path: Path, text: str = LIST) -> SignatureCheck:
    path = tmp_path / "mirror.yaml"
    path.write_text(text)
    return SignatureCheck(loads(text, str(path)), Tools())


def test_recorded_keys_are_used_as_the_lock_names_them(tmp_path: Path) -> None:
    locked = entry("sample/base", "1.0.0", signature_keys=("keys/locked.pub",))
    assert check(tmp_path).keys(locked) == [tmp_path / "keys" / "locked.pub"]
    # Also after the entry left the list, without a relock: the lock is what is copied.
    gone = LIST.replace("sample/base", "sample/other")
    assert check(tmp_path, gone).keys(locked) == [tmp_path / "keys" / "locked.pub"]
    # ``signatures: none`` recorded: nothing to verify, whatever the list says now.
    assert check(tmp_path).keys(dataclasses.replace(locked, signature_keys=())) == []


def test_a_lock_without_recorded_keys_takes_them_from_the_list(tmp_path: Path) -> None:
    old = entry("sample/base", "1.0.0")
    assert old.signature_keys is None
    assert check(tmp_path).keys(old) == [tmp_path / "keys" / "list.pub"]
    other = entry("sample/app", "1.0.0")
    with pytest.raises(EntryFailure, match="the lock is older than the list, lock again"):
        check(tmp_path).keys(other)


def test_a_lock_without_keys_loads_and_keeps_its_fingerprints() -> None:
    with_keys = entry("sample/base", "1.0.0", signature_keys=("keys/list.pub",))
    text = Lock((with_keys,)).to_json()
    assert '"signature_keys": [\n' in text
    older = text.replace('      "signature_keys": [\n        "keys/list.pub"\n      ],\n', "")
    assert "signature_keys" not in older
    (loaded,) = Lock.from_json(older).entries
    assert loaded.signature_keys is None
    # The keys say how upstream was checked, not what the destination holds.
    assert fingerprint(loaded) == fingerprint(with_keys)


def test_the_next_hop_does_not_inherit_the_relay_s_key_paths() -> None:
    locked = entry("sample/base", "1.0.0", signature_keys=("keys/list.pub",))
    assert relay_entry(locked, "relay", "relay:443").signature_keys is None
