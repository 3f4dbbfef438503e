"""``airgap audit init|verify|query`` as an operator runs them: in a subprocess, reading
stdout, stderr and the exit status."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from airgapped_registry.audit import AuditLog, Identity
from tests.unit.audit_support import DIGEST, OTHER_DIGEST, log_lines, make_config, make_event


def airgap(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "airgapped_registry.cli", "audit", *map(str, args)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def test_init_verify_and_query_from_the_command_line(tmp_path: Path) -> None:
    key = tmp_path / "state" / "checkpoint.key"
    made = airgap("init", "--key", key, "--json")
    assert made.returncode == 0, made.stderr
    assert json.loads(made.stdout)["changed"] is True
    assert key.stat().st_mode & 0o777 == 0o600
    kept = airgap("init", "--key", key)
    assert (kept.returncode, kept.stdout.split(":")[0]) == (0, "kept")

    admin = Identity(subject="CN=alice,OU=admin", serial="2A", issuer="CN=Lab CA")
    with AuditLog.open(make_config(tmp_path)) as log:
        log.append(make_event(1))
        log.append(make_event(2, digest=OTHER_DIGEST, decision="deny", reason="unsigned"))
        log.append(make_event(3, identity=admin, action="delete", method="DELETE"))
    where = ("--directory", tmp_path / "log", "--key", key.with_suffix(".pub"))
    head = ("--head", tmp_path / "state" / "head.json")

    ok = airgap("verify", *where, *head)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith("ok: 4 records (last seq 4), 1 checkpoints")
    report = json.loads(airgap("verify", *where, *head, "--json").stdout)
    assert (report["ok"], report["records"]) == (True, 4)

    pulled = airgap(
        "query", "--directory", tmp_path / "log", "--digest", DIGEST, "--action", "pull", "--json"
    )
    assert pulled.returncode == 0, pulled.stderr
    assert [json.loads(line)["request_id"] for line in pulled.stdout.splitlines()] == ["req-1"]
    by_admin = airgap("query", "--directory", tmp_path / "log", "--identity", "ou=admin")
    (line,) = by_admin.stdout.splitlines()
    assert " seq=3 request CN=alice,OU=admin 10.89.0.5 delete prod/app@" in line
    denied = airgap("query", "--directory", tmp_path / "log", "--decision", "deny", "--json")
    assert [json.loads(x)["reason"] for x in denied.stdout.splitlines()] == ["unsigned"]
    window = airgap(
        "query", "--directory", tmp_path / "log", "--since", "2000-01-01", "--until", "2000-01-02"
    )
    assert (window.returncode, window.stdout) == (0, "")
    bad_time = airgap("query", "--directory", tmp_path / "log", "--since", "yesterday")
    assert bad_time.returncode == 2 and "not an ISO 8601 time" in bad_time.stderr

    # One line edited: exit 1 and one line naming where.
    current = tmp_path / "log" / "audit.log"
    lines = log_lines(current)
    lines[1] = lines[1].replace(b'"deny"', b'"allow"')
    current.write_bytes(b"".join(item + b"\n" for item in lines))
    failed = airgap("verify", *where, *head)
    assert failed.returncode == 1
    assert failed.stdout == ""
    assert failed.stderr.splitlines() == [
        f"airgap: audit verify: {tmp_path / 'log'}/audit.log line 2 (seq 2): changed after it "
        "was written: its hash is not the prev of the next record (audit.log line 3, seq 3)"
    ]
    as_json = airgap("verify", *where, *head, "--json")
    assert as_json.returncode == 1
    assert json.loads(as_json.stdout)["first_bad"] == {
        "file": "audit.log",
        "line": 2,
        "seq": 2,
        "cause": "changed after it was written: its hash is not the prev of the next record "
        "(audit.log line 3, seq 3)",
    }


def test_verify_names_a_missing_public_key(tmp_path: Path) -> None:
    result = airgap("verify", "--directory", tmp_path, "--key", tmp_path / "none.pub", "--no-head")
    assert result.returncode == 1
    assert "none.pub: cannot read (No such file or directory)" in result.stderr
