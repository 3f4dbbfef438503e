"""``verify`` names the first bad record for every kind of tampering, and passes the log
as written (so each failing case fails because of the tampering, not the set-up)."""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from airgapped_registry.audit import AuditLog, init_key, query, verify
from airgapped_registry.audit.keys import key_id
from airgapped_registry.audit.records import canonical
from tests.unit.audit_support import log_lines, make_config, make_event

# With checkpoint_every=5 and 16 events, seqs 6, 12 and 18 are checkpoints; 20 records in all,
# the last one (seq 20) the checkpoint close() writes.


def sha(line: bytes) -> str:
    return "sha256:" + hashlib.sha256(line).hexdigest()


@pytest.fixture
def written(tmp_path: Path) -> Path:
    with AuditLog.open(make_config(tmp_path, checkpoint_every=5)) as log:
        for n in range(16):
            log.append(make_event(n, decision="deny" if n % 4 == 3 else "allow"))
    return tmp_path


def current(tmp_path: Path) -> Path:
    return tmp_path / "log" / "audit.log"


def rewrite(tmp_path: Path, change: Callable[[list[bytes]], list[bytes]]) -> None:
    lines = change(log_lines(current(tmp_path)))
    current(tmp_path).write_bytes(b"".join(line + b"\n" for line in lines))


def check(tmp_path: Path, head: bool = True, public: Path | None = None):
    return verify(
        tmp_path / "log",
        public or tmp_path / "state" / "checkpoint.pub",
        tmp_path / "state" / "head.json" if head else None,
    )


def test_the_log_as_written_passes(written: Path) -> None:
    result = check(written)
    assert result.ok and result.first_bad is None
    assert (result.records, result.checkpoints, result.last_seq, result.unsigned) == (20, 4, 20, 0)


def edit(lines: list[bytes]) -> list[bytes]:
    lines[7] = lines[7].replace(b'"decision":"allow"', b'"decision":"deny"')
    assert b'"deny"' in lines[7]
    return lines


def edit_prev(lines: list[bytes]) -> list[bytes]:
    record = json.loads(lines[8])
    record["prev"] = "sha256:" + "1" * 64
    lines[8] = json.dumps(record, separators=(",", ":")).encode()
    return lines


def remove(lines: list[bytes]) -> list[bytes]:
    del lines[7]
    return lines


def reorder(lines: list[bytes]) -> list[bytes]:
    lines[7], lines[8] = lines[8], lines[7]
    return lines


def insert_copy(lines: list[bytes]) -> list[bytes]:
    return [*lines[:7], lines[2], *lines[7:]]


def insert_forged(lines: list[bytes]) -> list[bytes]:
    # A well-formed record with the next seq, chained to line 7: only the record after it
    # gives it away.
    forged = json.loads(lines[7])
    forged["request_id"] = "forged"
    data = json.dumps(forged, separators=(",", ":")).encode()
    return [*lines[:7], data, *lines[7:]]


def edit_checkpoint(lines: list[bytes]) -> list[bytes]:
    lines[5] = lines[5].replace(b'"head_seq":5', b'"head_seq":4')
    return lines


def edit_and_rechain(lines: list[bytes]) -> list[bytes]:
    # Line 8 edited and every later prev recomputed: the chain holds, the checkpoint's
    # signature over the old head does not.
    lines[7] = lines[7].replace(b"req-6", b"req-X")
    for index in range(8, len(lines)):
        record = json.loads(lines[index])
        record["prev"] = sha(lines[index - 1])
        if record["type"] == "checkpoint":
            record["head"] = record["prev"]
        lines[index] = json.dumps(record, separators=(",", ":")).encode()
    return lines


@pytest.mark.parametrize(
    ("change", "line", "seq", "cause"),
    [
        (
            edit,
            8,
            8,
            "changed after it was written: its hash is not the prev of the next record "
            "(audit.log line 9, seq 9)",
        ),
        (edit_prev, 9, 9, "its prev is not the hash of the record before it, and its hash"),
        (remove, 8, 9, "seq 8 missing before this record"),
        (reorder, 8, 9, "seq 8 missing before this record (removed, or lines reordered)"),
        (insert_copy, 8, 3, "seq 3 after seq 7"),
        (insert_forged, 8, 8, "inserted: the next record chains past it"),
        (edit_checkpoint, 6, 6, "checkpoint's head is not the record before it"),
        (edit_and_rechain, 12, 12, "checkpoint signature does not verify"),
    ],
    ids=lambda value: getattr(value, "__name__", None),
)
def test_tampering_names_the_first_bad_record(
    written: Path, change: Callable[[list[bytes]], list[bytes]], line: int, seq: int, cause: str
) -> None:
    rewrite(written, change)
    result = check(written, head=False)
    assert not result.ok
    assert result.first_bad is not None
    assert (result.first_bad.file, result.first_bad.line, result.first_bad.seq) == (
        "audit.log",
        line,
        seq,
    ), result.first_bad
    assert cause in result.first_bad.cause


def test_a_cut_tail_is_found_through_head_json(written: Path) -> None:
    rewrite(written, lambda lines: lines[:15])
    # Without head.json, a log cut right after a record looks whole: that is what it is for.
    assert check(written, head=False).ok
    result = check(written)
    assert result.first_bad is not None
    assert (result.first_bad.file, result.first_bad.line, result.first_bad.seq) == (
        "audit.log",
        16,
        20,
    )
    assert "the log ends at seq 15" in result.first_bad.cause
    assert "records 16..20 cut" in result.first_bad.cause


def test_a_rewritten_log_does_not_match_head_json(written: Path) -> None:
    # The tail cut and head.json removed, the writer started again (it writes seqs 16.. anew),
    # then head.json put back: seq 20 exists again, but it is not the checkpoint recorded.
    head = (written / "state" / "head.json").read_bytes()
    rewrite(written, lambda lines: lines[:15])
    (written / "state" / "head.json").unlink()
    with AuditLog.open(make_config(written)) as log:
        for n in range(6):
            log.append(make_event(100 + n))
    assert check(written).ok
    (written / "state" / "head.json").write_bytes(head)
    result = check(written)
    assert result.first_bad is not None
    assert (result.first_bad.seq, result.first_bad.cause) == (
        20,
        "the record at seq 20 is not the checkpoint head.json records (the log was rewritten)",
    )


def test_a_removed_head_json_fails_once_the_log_has_checkpoints(written: Path) -> None:
    (written / "state" / "head.json").unlink()
    result = check(written)
    assert result.first_bad is not None
    assert "head.json" in result.first_bad.file
    assert "missing, but the log has checkpoints" in result.first_bad.cause


def test_checkpoints_checked_with_another_key_fail_at_the_first(
    written: Path, tmp_path: Path
) -> None:
    other = tmp_path / "other" / "checkpoint.key"
    init_key(other)
    result = check(written, public=other.with_suffix(".pub"))
    assert result.first_bad is not None
    assert (result.first_bad.line, result.first_bad.seq) == (6, 6)
    assert "not " in result.first_bad.cause and "(the key given)" in result.first_bad.cause


def test_a_checkpoint_re_signed_with_another_key_under_the_right_id_fails(written: Path) -> None:
    lines = log_lines(current(written))
    record = json.loads(lines[5])
    del record["signature"]
    record["signature"] = base64.b64encode(
        Ed25519PrivateKey.generate().sign(canonical(record))
    ).decode()
    lines[5] = json.dumps(record, separators=(",", ":")).encode()
    # The next record's prev no longer matches either, but the bad signature comes first.
    current(written).write_bytes(b"".join(line + b"\n" for line in lines))
    result = check(written, head=False)
    assert result.first_bad is not None
    assert (result.first_bad.line, result.first_bad.cause) == (
        6,
        "checkpoint signature does not verify with the key given",
    )


def rotated_log(tmp_path: Path) -> list[Path]:
    with AuditLog.open(make_config(tmp_path, rotate_bytes=4096)) as log:
        for n in range(60):
            log.append(make_event(n))
    files = sorted((tmp_path / "log").glob("audit-*.log"))
    assert len(files) >= 3
    assert check(tmp_path).ok
    return files


def test_a_removed_rotated_file_is_named(tmp_path: Path) -> None:
    files = rotated_log(tmp_path)
    files[1].unlink()
    result = check(tmp_path)
    assert result.first_bad is not None
    assert (result.first_bad.file, result.first_bad.line) == (files[2].name, 1)
    assert f"rotated file {files[1].name} removed?" in result.first_bad.cause


def test_a_removed_first_rotated_file_is_named(tmp_path: Path) -> None:
    files = rotated_log(tmp_path)
    files[0].unlink()
    result = check(tmp_path)
    assert result.first_bad is not None
    assert (result.first_bad.file, result.first_bad.line) == (files[1].name, 1)
    assert "the log starts at seq" in result.first_bad.cause


def test_a_renamed_rotated_file_is_named(tmp_path: Path) -> None:
    files = rotated_log(tmp_path)
    files[1].rename(files[1].with_name("audit-000000009999.log"))
    result = check(tmp_path)
    assert result.first_bad is not None
    assert result.first_bad.file == files[2].name


def test_the_key_id_in_checkpoints_is_the_public_keys(written: Path) -> None:
    record = json.loads(log_lines(current(written))[5])
    private = (written / "state" / "checkpoint.key").read_bytes()
    from cryptography.hazmat.primitives import serialization

    loaded = serialization.load_pem_private_key(private, password=None)
    assert isinstance(loaded, Ed25519PrivateKey)
    assert record["key"] == key_id(loaded.public_key())


def test_verify_and_query_while_the_gate_writes_and_rotates(tmp_path: Path) -> None:
    config = make_config(tmp_path, rotate_bytes=8192, checkpoint_every=7)
    stop = threading.Event()
    with AuditLog.open(config) as log:

        def writer() -> None:
            n = 0
            while not stop.is_set():
                log.append(make_event(n))
                n += 1

        thread = threading.Thread(target=writer)
        thread.start()
        try:
            while log.seq < 10:
                time.sleep(0.001)
            results = []
            deadline = time.monotonic() + 2.0
            while time.monotonic() < deadline:
                results.append(check(tmp_path))
                assert sum(1 for _ in query(tmp_path / "log", action="pull")) > 0
        finally:
            stop.set()
            thread.join()
    assert results and all(result.ok for result in results), [
        result.first_bad for result in results if not result.ok
    ][:1]
    assert max(len(result.files) for result in results) > 3


@pytest.mark.parametrize("position", [0.1, 0.3, 0.5, 0.7, 0.95])
def test_one_byte_changed_in_any_line_is_named_at_that_line(written: Path, position: float) -> None:
    original = log_lines(current(written))
    for index, line in enumerate(original):
        at = int(len(line) * position)
        while not line[at : at + 1].isalnum():
            at += 1
        byte = line[at : at + 1]
        other = (
            b"1" if byte == b"0" else (b"0" if byte.isdigit() else (b"b" if byte == b"a" else b"a"))
        )
        lines = list(original)
        lines[index] = line[:at] + other + line[at + 1 :]
        current(written).write_bytes(b"".join(item + b"\n" for item in lines))
        result = check(written)
        assert result.first_bad is not None, (index, at)
        assert result.first_bad.line == index + 1, (index, at, result.first_bad)
    current(written).write_bytes(b"".join(item + b"\n" for item in original))
    assert check(written).ok
