"""Checking a log: the chain across its files, the checkpoints' signatures, and head.json.

The first record that does not hold is named with its file, line and seq and the cause, so
an operator knows where to look:

- a line changed after it was written: the next record's ``prev`` is not its hash;
- a line removed, or two swapped: a seq missing where it should follow;
- a line inserted: a seq that does not follow, or a next record that chains past it;
- a checkpoint whose signature does not verify with the key given;
- a rotated file removed: the next file starts seq records later;
- the tail cut: head.json (kept outside the log directory) names a checkpoint past the end.

A line edited at the very end, after the last checkpoint and with no record after it, is
the one change the chain cannot show; checkpoints every ``checkpoint_every`` records or
``checkpoint_interval`` seconds bound that window.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from airgapped_registry.audit import files
from airgapped_registry.audit.keys import load_public, signature_problem
from airgapped_registry.audit.records import CHECKPOINT, ZERO_HASH, decode, line_hash


@dataclass(frozen=True)
class BadRecord:
    """Where the log stops holding: the file, 1-based line, the seq there (None when the
    line has none) and why."""

    file: str
    line: int
    seq: int | None
    cause: str

    def __str__(self) -> str:
        seq = f" (seq {self.seq})" if self.seq is not None else ""
        return f"{self.file} line {self.line}{seq}: {self.cause}"


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    records: int
    checkpoints: int
    last_seq: int
    files: list[str] = field(default_factory=list)
    unsigned: int = 0  # records after the last checkpoint
    first_bad: BadRecord | None = None

    def to_json(self) -> dict[str, Any]:
        bad = self.first_bad
        return {
            "ok": self.ok,
            "records": self.records,
            "checkpoints": self.checkpoints,
            "last_seq": self.last_seq,
            "unsigned": self.unsigned,
            "files": self.files,
            "first_bad": None
            if bad is None
            else {"file": bad.file, "line": bad.line, "seq": bad.seq, "cause": bad.cause},
        }


@dataclass
class _Previous:
    file: str
    line: int
    seq: int
    hash: str
    before: str  # the hash the previous record named as its own prev


class _Bad(Exception):
    def __init__(self, bad: BadRecord) -> None:
        super().__init__(str(bad))
        self.bad = bad


def verify(
    directory: str | Path, public_key_path: str | Path, head_path: str | Path | None = None
) -> VerifyResult:
    """Check the log in ``directory`` with the checkpoint public key; with ``head_path``,
    also that the log reaches the checkpoint head.json records (a missing head file passes
    only while the log has no checkpoint)."""
    directory = Path(directory)
    public = load_public(Path(public_key_path))
    # head.json before the log: the writer names a checkpoint there only once it is in the
    # log, so a log read after it holds what it names, even while the gate writes.
    head = files.read_json(Path(head_path)) if head_path is not None else None
    with files.snapshot(directory) as opened:
        return _verify(directory, opened, public, head_path, head)


def _verify(
    directory: Path,
    opened: list[tuple[Path, BinaryIO]],
    public: Ed25519PublicKey,
    head_path: str | Path | None,
    head: dict[str, Any] | None,
) -> VerifyResult:
    paths = [path for path, _ in opened]
    names = [path.name for path in paths]
    live = files.writer_active(directory)
    counts = {"records": 0, "checkpoints": 0, "unsigned": 0}
    previous: _Previous | None = None
    hashes_at: dict[int, str] = {}
    pending: tuple[_Previous, _Previous] | None = None  # a broken link, to be blamed
    head_seq = head.get("seq") if head else None

    def result(bad: BadRecord | None) -> VerifyResult:
        return VerifyResult(
            ok=bad is None,
            records=counts["records"],
            checkpoints=counts["checkpoints"],
            last_seq=previous.seq if previous else 0,
            files=names,
            unsigned=counts["unsigned"],
            first_bad=bad,
        )

    if not paths:
        return result(BadRecord(str(directory), 0, None, "no audit log files here"))
    try:
        for index, (path, handle) in enumerate(opened):
            at_file_start = True
            for line in files.lines_of(handle):
                where = (path.name, line.number)
                if not line.complete:
                    if live and index == len(opened) - 1:
                        break  # the gate is writing this line now
                    raise _Bad(
                        BadRecord(
                            *where,
                            None,
                            "last line unterminated (a write cut "
                            "short; opening the log moves it aside)",
                        )
                    )
                try:
                    record = decode(line.data)
                except ValueError as exc:
                    raise _Bad(BadRecord(*where, None, f"not an audit record: {exc}")) from None
                seq = record["seq"]
                if pending is not None:
                    raise _edited(*pending, next_prev=record["prev"])
                if at_file_start:
                    _check_file_start(path, line.number, seq, previous)
                    at_file_start = False
                broken = _check_link(path.name, line.number, record, previous)
                if record["type"] == CHECKPOINT:
                    _check_checkpoint(public, path.name, line.number, record)
                    counts["checkpoints"] += 1
                    counts["unsigned"] = 0
                else:
                    counts["unsigned"] += 1
                counts["records"] += 1
                digest = line_hash(line.data)
                if seq == head_seq or record["type"] == CHECKPOINT:
                    # What head.json may name (read again later while the gate writes).
                    hashes_at[seq] = digest
                current = _Previous(path.name, line.number, seq, digest, record["prev"])
                if broken and previous is not None:
                    pending = (previous, current)
                previous = current
            if at_file_start and files.rotated_first_seq(path) is not None:
                raise _Bad(BadRecord(path.name, 0, None, "rotated file is empty"))
        if pending is not None:
            raise _edited(*pending, next_prev=None)
        if head_path is not None and head is None and counts["checkpoints"]:
            if live:
                # The gate names a checkpoint in head.json just after writing it to the log:
                # the first one may be in the log read here and not yet there.
                head = _wait_for_head(Path(head_path), previous.seq if previous else 0)
            if head is None:
                raise _Bad(
                    BadRecord(
                        str(head_path),
                        0,
                        None,
                        "missing, but the log has checkpoints: removed? (--no-head checks a copy)",
                    )
                )
            if head.get("seq", 0) > (previous.seq if previous else 0):
                head = None  # named after the log was read: the part read holds no more
        if head is not None:
            _check_head(Path(str(head_path)), head, public, previous, hashes_at, paths[-1].name)
    except _Bad as bad:
        return result(bad.bad)
    return result(None)


def _wait_for_head(path: Path, last_seq: int, timeout: float = 2.0) -> dict[str, Any] | None:
    deadline = time.monotonic() + timeout
    while True:
        head = files.read_json(path)
        if head is not None or time.monotonic() > deadline:
            return head
        time.sleep(0.02)


def _check_file_start(path: Path, number: int, seq: int, previous: _Previous | None) -> None:
    promised = files.rotated_first_seq(path)
    if promised is not None and promised != seq:
        raise _Bad(
            BadRecord(
                path.name,
                number,
                seq,
                f"file named for seq {promised} starts at seq {seq} (renamed, or lines removed)",
            )
        )
    if previous is not None and seq > previous.seq + 1:
        raise _Bad(
            BadRecord(
                path.name,
                number,
                seq,
                f"records {previous.seq + 1}..{seq - 1} missing between {previous.file} and this "
                f"file: rotated file {files.rotated_name(previous.seq + 1)} removed?",
            )
        )


def _check_link(name: str, number: int, record: dict[str, Any], previous: _Previous | None) -> bool:
    """Raise for a record out of sequence; True when its prev is not the previous line's
    hash (which of the two lines changed is decided with the line after)."""
    seq, prev = record["seq"], record["prev"]
    if previous is None:
        if seq != 1:
            raise _Bad(
                BadRecord(
                    name,
                    number,
                    seq,
                    f"the log starts at seq {seq}: records "
                    f"1..{seq - 1} missing (a rotated file removed?)",
                )
            )
        if prev != ZERO_HASH:
            raise _Bad(BadRecord(name, number, seq, "first record's prev is not the zero hash"))
        return False
    expected = previous.seq + 1
    if seq > expected:
        missing = str(expected) if seq == expected + 1 else f"{expected}..{seq - 1}"
        raise _Bad(
            BadRecord(
                name,
                number,
                seq,
                f"seq {missing} missing before this record (removed, or lines reordered)",
            )
        )
    if seq < expected:
        if prev == previous.before:
            # This record chains to the one before the previous line: that line is foreign.
            raise _Bad(
                BadRecord(
                    previous.file,
                    previous.line,
                    previous.seq,
                    "inserted: the next record chains past it",
                )
            )
        raise _Bad(
            BadRecord(
                name,
                number,
                seq,
                f"seq {seq} after seq {previous.seq} (inserted, or lines reordered)",
            )
        )
    return bool(prev != previous.hash)


def _edited(before: _Previous, suspect: _Previous, next_prev: str | None) -> _Bad:
    """Which of two lines whose link broke was changed. If ``suspect`` (the later one) was,
    the link after it breaks too; if ``before`` was, the link after ``suspect`` holds."""
    if next_prev is not None and next_prev != suspect.hash:
        return _Bad(
            BadRecord(
                suspect.file,
                suspect.line,
                suspect.seq,
                "changed after it was written: its prev is not the hash of the record before "
                "it, and its hash is not the prev of the record after it",
            )
        )
    unsure = "" if next_prev is not None else " (or the last line's prev was changed)"
    return _Bad(
        BadRecord(
            before.file,
            before.line,
            before.seq,
            f"changed after it was written: its hash is not the prev of the next record "
            f"({suspect.file} line {suspect.line}, seq {suspect.seq}){unsure}",
        )
    )


def _check_checkpoint(
    public: Ed25519PublicKey, name: str, number: int, record: dict[str, Any]
) -> None:
    seq = record["seq"]
    if record.get("head_seq") != seq - 1 or record.get("head") != record["prev"]:
        raise _Bad(BadRecord(name, number, seq, "checkpoint's head is not the record before it"))
    problem = signature_problem(public, record)
    if problem is not None:
        raise _Bad(BadRecord(name, number, seq, problem))


def _check_head(
    path: Path,
    head: dict[str, Any],
    public: Ed25519PublicKey,
    previous: _Previous | None,
    hashes_at: dict[int, str],
    last_file: str,
) -> None:
    seq, digest, record = head.get("seq"), head.get("hash"), head.get("record")
    if not isinstance(seq, int) or not isinstance(digest, str) or not isinstance(record, dict):
        raise _Bad(BadRecord(str(path), 0, None, "not a head file (seq, hash, record)"))
    problem = signature_problem(public, record)
    if problem is not None or record.get("seq") != seq:
        raise _Bad(BadRecord(str(path), 0, seq, problem or "record's seq is not the head's"))
    last = previous.seq if previous else 0
    if seq > last:
        where = (previous.file, previous.line + 1) if previous else (last_file, 1)
        raise _Bad(
            BadRecord(
                *where,
                seq,
                f"the log ends at seq {last}, but {path} records a "
                f"checkpoint at seq {seq}: records {last + 1}..{seq} cut",
            )
        )
    if hashes_at.get(seq) != digest:
        raise _Bad(
            BadRecord(
                str(path),
                0,
                seq,
                f"the record at seq {seq} is not the "
                "checkpoint head.json records (the log was rewritten)",
            )
        )
