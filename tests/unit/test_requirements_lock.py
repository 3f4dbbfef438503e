"""requirements.lock pins and hashes every package, and bootstrap's install checks them.

The install tests run the pip command scripts/bootstrap runs on a one-entry copy of the
lock (mdurl, one 10 KB wheel), fetched from the index pip is configured with.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parents[2]
LOCK = PROJECT / "requirements.lock"
PROBE = "mdurl"
# One lock entry: "name==version \" and its "--hash=sha256:..." continuation lines.
ENTRY = re.compile(
    r"^(?P<name>[A-Za-z0-9._-]+)==(?P<version>\S+)(?P<hashes>(?: \\\n\s+--hash=\S+)*)", re.M
)


def normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def lock_entries() -> dict[str, str]:
    return {normalized(m["name"]): m[0] for m in ENTRY.finditer(LOCK.read_text())}


def bootstrap_install_options() -> list[str]:
    """The options scripts/bootstrap gives pip when it installs requirements.lock."""
    script = (PROJECT / "scripts" / "bootstrap").read_text()
    found = re.search(r'-m pip install (.*) -r "\$top/requirements\.lock"', script)
    assert found, "scripts/bootstrap no longer installs requirements.lock with pip"
    return shlex.split(found[1])


def bootstrap_install(lock: Path, target: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            *(sys.executable, "-m", "pip", "install", *bootstrap_install_options()),
            *("--target", str(target), "-r", str(lock)),
        ],
        capture_output=True,
        text=True,
        check=False,
    )


def test_every_lock_entry_is_pinned_with_hashes() -> None:
    requirement_lines = [
        line for line in LOCK.read_text().splitlines() if line and not line[0].isspace()
    ]
    requirement_lines = [line for line in requirement_lines if not line.startswith("#")]
    entries = list(ENTRY.finditer(LOCK.read_text()))
    assert len(entries) == len(requirement_lines), "a lock entry is not name==version"
    unhashed = [m["name"] for m in entries if "--hash=sha256:" not in m["hashes"]]
    assert not unhashed, f"lock entries without a sha256: {unhashed}"


def test_the_lock_covers_every_requirement() -> None:
    wanted = {
        normalized(re.split(r"[\[=<>~! ]", line, maxsplit=1)[0])
        for line in (PROJECT / "requirements.in").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert wanted - set(lock_entries()) == set()


def test_bootstrap_installs_the_genuine_entry(tmp_path: Path) -> None:
    lock = tmp_path / "requirements.lock"
    lock.write_text(lock_entries()[PROBE] + "\n")
    result = bootstrap_install(lock, tmp_path / "site")
    assert result.returncode == 0, result.stderr
    assert list((tmp_path / "site").glob(f"{PROBE}-*.dist-info"))


def with_wrong_hashes(entry: str) -> str:
    """The entry as a swapped file would meet it: the last hex digit of every hash changed."""

    def changed(digest: re.Match[str]) -> str:
        return digest[1] + ("1" if digest[2] == "0" else "0")

    return re.sub(r"(sha256:[0-9a-f]{63})([0-9a-f])", changed, entry)


def without_hashes(entry: str) -> str:
    return entry.split(" \\", 1)[0]


@pytest.mark.parametrize(
    ("tamper", "error"),
    [
        (with_wrong_hashes, "DO NOT MATCH THE HASHES"),
        (without_hashes, "Hashes are required in --require-hashes mode"),
    ],
    ids=["wrong-hash", "no-hash"],
)
def test_bootstrap_refuses_a_tampered_entry(
    tamper: Callable[[str], str], error: str, tmp_path: Path
) -> None:
    genuine = lock_entries()[PROBE]
    tampered = tamper(genuine)
    assert tampered != genuine
    lock = tmp_path / "requirements.lock"
    lock.write_text(tampered + "\n")
    result = bootstrap_install(lock, tmp_path / "site")
    assert result.returncode != 0, f"pip installed {PROBE} from a tampered lock"
    assert error in result.stderr, result.stderr
    assert PROBE in result.stderr, result.stderr
    assert not list((tmp_path / "site").glob(f"{PROBE}-*.dist-info"))
