"""The audit log as the gate uses it: the chain, checkpoints, rotation, restarts, crashes,
many threads, and a write that fails."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from airgapped_registry.audit import AuditError, AuditLog, audit_config, init_key, query, verify
from airgapped_registry.audit.config import AuditConfigError
from tests.unit.audit_support import DIGEST, log_lines, make_config, make_event

ZERO = "sha256:" + "0" * 64
TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


def sha(line: bytes) -> str:
    return "sha256:" + hashlib.sha256(line).hexdigest()


def check(tmp_path: Path) -> None:
    result = verify(
        tmp_path / "log", tmp_path / "state" / "checkpoint.pub", tmp_path / "state" / "head.json"
    )
    assert result.first_bad is None and result.ok, result.first_bad


def test_records_are_chained_from_the_zero_hash(tmp_path: Path) -> None:
    with AuditLog.open(make_config(tmp_path)) as log:
        records = [log.append(make_event(n)) for n in range(3)]
        lines = log_lines(tmp_path / "log" / "audit.log")
    assert [record.seq for record in records] == [1, 2, 3]
    assert lines[:3] == [record.line for record in records]
    first = json.loads(lines[0])
    assert first["prev"] == ZERO
    assert TIME.fullmatch(first["time"])
    assert first["identity"] == {
        "subject": "CN=node,OU=puller",
        "serial": "1F",
        "issuer": "CN=Lab CA",
        "fingerprint": "f" * 64,
    }
    assert (first["type"], first["action"], first["digest"], first["decision"]) == (
        "request",
        "pull",
        DIGEST,
        "allow",
    )
    assert [json.loads(line)["prev"] for line in lines[1:3]] == [sha(lines[0]), sha(lines[1])]
    # close() signs what was unsigned.
    last = json.loads(log_lines(tmp_path / "log" / "audit.log")[-1])
    assert (last["seq"], last["type"], last["head"]) == (4, "checkpoint", sha(lines[2]))
    check(tmp_path)


def test_a_checkpoint_every_n_records_signed_and_kept_in_head_json(tmp_path: Path) -> None:
    with AuditLog.open(make_config(tmp_path, checkpoint_every=5)) as log:
        for n in range(11):
            log.append(make_event(n))
        lines = log_lines(tmp_path / "log" / "audit.log")
        types = [json.loads(line)["type"] for line in lines]
        assert types == ["request"] * 5 + ["checkpoint"] + ["request"] * 5 + ["checkpoint"] + [
            "request"
        ]
        checkpoint = json.loads(lines[11])
        assert (checkpoint["head_seq"], checkpoint["head"]) == (11, sha(lines[10]))
        # head.json follows from the timer thread once the checkpoint is on disk.
        head_file = tmp_path / "state" / "head.json"
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            if head_file.exists() and json.loads(head_file.read_text())["seq"] == 12:
                break
            time.sleep(0.01)
        head = json.loads(head_file.read_text())
        assert (head["seq"], head["hash"]) == (12, sha(lines[11]))
    check(tmp_path)


def test_a_checkpoint_after_checkpoint_interval_without_more_records(tmp_path: Path) -> None:
    with AuditLog.open(make_config(tmp_path, checkpoint_interval=0.2)) as log:
        log.append(make_event())
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            if (tmp_path / "state" / "head.json").exists():
                break
            time.sleep(0.05)
        lines = log_lines(tmp_path / "log" / "audit.log")
        assert json.loads(lines[-1])["type"] == "checkpoint"
        assert json.loads((tmp_path / "state" / "head.json").read_text())["seq"] == 2
        time.sleep(0.5)  # nothing new: no further checkpoint
        assert len(log_lines(tmp_path / "log" / "audit.log")) == 2


def test_reopening_continues_seq_and_chain(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    with AuditLog.open(config) as log:
        log.append(make_event(1))
    before = log_lines(tmp_path / "log" / "audit.log")
    with AuditLog.open(config) as log:
        record = log.append(make_event(2))
    assert record.seq == len(before) + 1
    assert record.fields["prev"] == sha(before[-1])
    check(tmp_path)


def test_a_killed_writer_leaves_a_log_the_next_one_continues(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    script = (
        "import os, sys\n"
        "sys.path.insert(0, sys.argv[1])\n"
        "from tests.unit.audit_support import make_config, make_event\n"
        "from pathlib import Path\n"
        "from airgapped_registry.audit import AuditLog\n"
        "log = AuditLog.open(make_config(Path(sys.argv[2])))\n"
        "for n in range(5):\n"
        "    log.append(make_event(n))\n"
        "os._exit(0)\n"  # no close: no checkpoint, no fsync, the lock freed by the kernel
    )
    subprocess.run(
        [sys.executable, "-c", script, str(Path(__file__).parents[2]), str(tmp_path)], check=True
    )
    assert len(log_lines(tmp_path / "log" / "audit.log")) == 5
    with AuditLog.open(config) as log:
        assert log.append(make_event(9)).seq == 6
    check(tmp_path)


def test_a_partial_last_line_is_moved_aside_and_recorded(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    with AuditLog.open(config) as log:
        log.append(make_event(1))
    partial = b'{"seq":3,"time":"2026-11-30T13:50:01.1'
    with (tmp_path / "log" / "audit.log").open("ab") as handle:
        handle.write(partial)
    count = len(log_lines(tmp_path / "log" / "audit.log"))
    bad = verify(tmp_path / "log", tmp_path / "state" / "checkpoint.pub").first_bad
    assert bad is not None and (bad.file, bad.line) == ("audit.log", count)
    assert "unterminated" in bad.cause

    with AuditLog.open(config) as log:
        log.append(make_event(2))
    (aside,) = (tmp_path / "log").glob("audit.log.partial-*")
    assert aside.read_bytes() == partial
    lines = log_lines(tmp_path / "log" / "audit.log")
    recovered = json.loads(lines[count - 1])
    assert recovered["type"] == "recovered"
    assert (recovered["file"], recovered["bytes"], recovered["hash"]) == (
        aside.name,
        len(partial),
        sha(partial),
    )
    assert json.loads(lines[count])["request_id"] == "req-2"
    check(tmp_path)


def test_rotation_keeps_the_chain_across_files(tmp_path: Path) -> None:
    config = make_config(tmp_path, rotate_bytes=4096)
    with AuditLog.open(config) as log:
        for n in range(60):
            log.append(make_event(n))
    rotated = sorted((tmp_path / "log").glob("audit-*.log"))
    assert len(rotated) >= 3
    previous: bytes | None = None
    for path in [*rotated, tmp_path / "log" / "audit.log"]:
        lines = log_lines(path)
        first = json.loads(lines[0])
        if path.name != "audit.log":
            assert path.name == f"audit-{first['seq']:012d}.log"
            assert json.loads(lines[-1])["type"] == "checkpoint"
            assert path.stat().st_size < 4096 + 2 * 1024
        if previous is not None:
            assert first["prev"] == sha(previous)
        previous = lines[-1]
    check(tmp_path)
    # A restart after rotations continues; a query reads every file.
    with AuditLog.open(config) as log:
        log.append(make_event(60))
    assert len(list(query(tmp_path / "log", action="pull"))) == 61
    check(tmp_path)


def test_reopening_after_a_rotation_cut_short_continues_from_the_rotated_file(
    tmp_path: Path,
) -> None:
    config = make_config(tmp_path, rotate_bytes=4096)
    with AuditLog.open(config) as log:
        for n in range(40):
            log.append(make_event(n))
    # As if the host stopped between the rename and the new file's first record.
    current = tmp_path / "log" / "audit.log"
    last = sorted((tmp_path / "log").glob("audit-*.log"))[-1]
    current.unlink()
    (tmp_path / "state" / "head.json").unlink()
    with AuditLog.open(config) as log:
        record = log.append(make_event(99))
    assert record.fields["prev"] == sha(log_lines(last)[-1])
    check(tmp_path)


def test_many_threads_get_contiguous_seqs_and_a_valid_chain(tmp_path: Path) -> None:
    config = make_config(tmp_path, checkpoint_every=100, rotate_bytes=256 * 1024)
    seqs: list[int] = []
    with AuditLog.open(config) as log:

        def writer(number: int) -> None:
            for n in range(200):
                seqs.append(log.append(make_event(number * 1000 + n)).seq)

        threads = [threading.Thread(target=writer, args=(number,)) for number in range(16)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert len(seqs) == 3200 == len(set(seqs))
    result = verify(
        tmp_path / "log", tmp_path / "state" / "checkpoint.pub", tmp_path / "state" / "head.json"
    )
    assert result.ok, result.first_bad
    assert result.records == result.last_seq == 3200 + result.checkpoints
    assert len(list(query(tmp_path / "log"))) == 3200


def test_a_record_that_cannot_be_written_raises(tmp_path: Path) -> None:
    (tmp_path / "log").mkdir()
    (tmp_path / "log" / "audit.log").symlink_to("/dev/full")
    with AuditLog.open(make_config(tmp_path)) as log:
        with pytest.raises(AuditError, match=r"audit.log: cannot write record seq 1 \(No space"):
            log.append(make_event())
        with pytest.raises(AuditError, match="seq 1"):
            log.append(make_event())


def test_a_second_writer_is_refused(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    with AuditLog.open(config), pytest.raises(AuditError, match="in use by another process"):
        AuditLog.open(config)


def test_opening_a_cut_log_is_refused(tmp_path: Path) -> None:
    config = make_config(tmp_path, checkpoint_every=5)
    with AuditLog.open(config) as log:
        for n in range(12):
            log.append(make_event(n))
    current = tmp_path / "log" / "audit.log"
    current.write_bytes(b"".join(line + b"\n" for line in log_lines(current)[:4]))
    with pytest.raises(
        AuditError,
        match=r"ends at seq 4, but .*head.json records a checkpoint at seq 1[0-9]: the log was cut",
    ):
        AuditLog.open(config)


def test_opening_without_the_key_names_it_and_the_way_out(tmp_path: Path) -> None:
    config = make_config(tmp_path, key=tmp_path / "nowhere" / "checkpoint.key")
    with pytest.raises(
        AuditError, match=r"nowhere/checkpoint.key: cannot read .*airgap audit init"
    ):
        AuditLog.open(config)


def test_init_key_makes_a_private_key_only_root_reads_and_keeps_it(tmp_path: Path) -> None:
    key = tmp_path / "audit" / "checkpoint.key"
    first = init_key(key)
    assert first["changed"] is True
    assert key.stat().st_mode & 0o777 == 0o600
    assert b"PUBLIC KEY" in key.with_suffix(".pub").read_bytes()
    again = init_key(key)
    assert (again["changed"], again["key_id"]) == (False, first["key_id"])


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        (None, {"fsync": 1.0, "checkpoint_interval": 60.0, "checkpoint_every": 1000}),
        (
            {"fsync": "500ms", "checkpoint_interval": "2m"},
            {"fsync": 0.5, "checkpoint_interval": 120.0},
        ),
        ({"fsync": 0, "rotate_bytes": 8192}, {"fsync": 0.0, "rotate_bytes": 8192}),
        ({"syslog": {"address": "tcp://127.0.0.1:514"}}, {}),
    ],
)
def test_the_audit_section_is_read(section: dict | None, expected: dict) -> None:
    config = audit_config(section, "gate.yaml:30: audit")
    for name, value in expected.items():
        assert getattr(config, name) == value


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"fsync": "soon"}, "gate.yaml:30: audit.fsync: 'soon' is not a duration"),
        ({"rotate": 1}, "gate.yaml:30: audit.rotate: unknown key"),
        ({"directory": "relative"}, "audit.directory: 'relative', expected an absolute path"),
        ({"checkpoint_every": 0}, "audit: checkpoint_every: 0, expected >= 1"),
        ({"syslog": {"address": "http://x"}}, "audit.syslog: syslog address 'http://x': expected"),
        ({"syslog": {"address": "udp://h:514", "facility": "nope"}}, "facility 'nope'"),
        (
            {"directory": "/var/lib/airgapped-registry/audit"},
            "must live outside the log directory",
        ),
    ],
)
def test_a_bad_audit_section_is_refused_naming_the_key(section: dict, message: str) -> None:
    with pytest.raises(AuditConfigError) as caught:
        audit_config(section, "gate.yaml:30: audit")
    assert message in str(caught.value)


def test_the_fsync_setting_zero_is_accepted_and_records_still_chain(tmp_path: Path) -> None:
    with AuditLog.open(make_config(tmp_path, fsync=0.0)) as log:
        for n in range(3):
            log.append(make_event(n))
    check(tmp_path)
    assert os.path.getsize(tmp_path / "log" / "audit.log") > 0


def test_a_record_written_in_part_is_taken_back(tmp_path: Path) -> None:
    # A file size limit lets write(2) put part of the line down, then fail (EFBIG): the
    # part must go, or the next record would be glued to it. In a child: limits are per process.
    script = (
        "import os, resource, signal, sys\n"
        "sys.path.insert(0, sys.argv[1])\n"
        "from pathlib import Path\n"
        "from tests.unit.audit_support import make_config, make_event\n"
        "from airgapped_registry.audit import AuditError, AuditLog\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "log = AuditLog.open(make_config(Path(sys.argv[2])))\n"
        "log.append(make_event(1))\n"
        "size = os.path.getsize(log.path)\n"
        "soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (size + 100, hard))\n"
        "try:\n"
        "    log.append(make_event(2))\n"
        "except AuditError as exc:\n"
        "    print(exc)\n"
        "assert os.path.getsize(log.path) == size, os.path.getsize(log.path)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))\n"
        "print(log.append(make_event(3)).seq)\n"
        "log.close()\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, str(Path(__file__).parents[2]), str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        f"audit log {tmp_path / 'log' / 'audit.log'}: cannot write record seq 2 (File too large)",
        "2",
    ]
    check(tmp_path)


def test_appends_with_fsync_zero_from_many_threads_share_fsyncs_and_chain(tmp_path: Path) -> None:
    seqs: list[int] = []
    with AuditLog.open(make_config(tmp_path, fsync=0.0, checkpoint_every=50)) as log:

        def writer(number: int) -> None:
            for n in range(40):
                seqs.append(log.append(make_event(number * 100 + n)).seq)

        threads = [threading.Thread(target=writer, args=(number,)) for number in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert len(set(seqs)) == 320
    check(tmp_path)
