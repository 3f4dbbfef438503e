"""The log's files on disk: their names and order, their lines, and the state files kept
beside the checkpoint key (head.json, cursors), written atomically.

The directory holds ``audit.log`` (being written) and ``audit-<first seq, 12 digits>.log``
(rotated, each ending with a signed checkpoint). Their order is the chain's order: rotated
files by first seq, then ``audit.log``. A partial line moved aside at recovery is kept as
``audit.log.partial-<UTC time>`` and is not part of the chain.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from airgapped_registry.audit.records import AuditError
from airgapped_registry.files import write_whole

CURRENT = "audit.log"
ROTATED = re.compile(r"audit-([0-9]{12})\.log")
LOCK = ".lock"


def rotated_name(first_seq: int) -> str:
    return f"audit-{first_seq:012d}.log"


def log_files(directory: Path) -> list[Path]:
    """The log's files in chain order (rotated by first seq, then the current one)."""
    try:
        names = os.listdir(directory)
    except OSError as exc:
        raise AuditError(f"audit log {directory}: cannot list ({exc.strerror})") from None
    rotated = sorted((int(match[1]), name) for name in names if (match := ROTATED.fullmatch(name)))
    files = [directory / name for _, name in rotated]
    if CURRENT in names:
        files.append(directory / CURRENT)
    return files


@contextmanager
def snapshot(directory: Path) -> Iterator[list[tuple[Path, BinaryIO]]]:
    """The log's files in chain order, each already open: a rotation while they are read
    (audit.log renamed, a new one begun) changes nothing in what is read."""
    opened: list[tuple[Path, BinaryIO]] = []
    try:
        for path in log_files(directory):
            _open_into(opened, path)
        # audit.log renamed between the listing and its open: the new audit.log was opened,
        # so the rotated file it became is listed now. Rotated names are never reused.
        names = {path.name for path, _ in opened}
        for path in log_files(directory):
            if path.name not in names and path.name != CURRENT:
                _open_into(opened, path)
        opened.sort(key=lambda item: _order(item[0]))
        yield opened
    finally:
        for _, handle in opened:
            handle.close()


def _open_into(opened: list[tuple[Path, BinaryIO]], path: Path) -> None:
    try:
        handle = path.open("rb")
    except FileNotFoundError:
        return  # removed meanwhile: verify names the gap it leaves
    except OSError as exc:
        raise AuditError(f"audit log {path}: cannot read ({exc.strerror})") from None
    # audit.log opened, then rotated: the second listing names the same file again.
    status = os.fstat(handle.fileno())
    for _, other in opened:
        other_status = os.fstat(other.fileno())
        if (other_status.st_dev, other_status.st_ino) == (status.st_dev, status.st_ino):
            handle.close()
            return
    opened.append((path, handle))


def _order(path: Path) -> tuple[int, int]:
    first = rotated_first_seq(path)
    return (0, first) if first is not None else (1, 0)


def lines_of(handle: BinaryIO, offset: int = 0) -> Iterator[Line]:
    """The lines of an open file from byte ``offset`` (see :class:`Line`)."""
    handle.seek(offset)
    number, position = 1, offset
    for raw in handle:
        position += len(raw)
        complete = raw.endswith(b"\n")
        yield Line(number, raw[:-1] if complete else raw, position, complete)
        number += 1


def writer_active(directory: Path) -> bool:
    """Whether an :class:`~airgapped_registry.audit.log.AuditLog` holds the directory's
    lock now (a last line without its newline may then be one being written)."""
    try:
        fd = os.open(directory / LOCK, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)
    return False


def rotated_first_seq(path: Path) -> int | None:
    """The first seq a rotated file's name promises; None for the current file."""
    match = ROTATED.fullmatch(path.name)
    return int(match[1]) if match else None


@dataclass(frozen=True)
class Line:
    """One line of a log file: 1-based ``number``, its bytes without the newline, the byte
    offset just after it, and whether it ended with a newline (only a last line may not)."""

    number: int
    data: bytes
    end: int
    complete: bool


def read_lines(path: Path, offset: int = 0) -> Iterator[Line]:
    """The lines of ``path`` from byte ``offset`` (the start of a line; numbers count from
    there)."""
    try:
        handle = path.open("rb")
    except OSError as exc:
        raise AuditError(f"audit log {path}: cannot read ({exc.strerror})") from None
    with handle:
        yield from lines_of(handle, offset)


def last_line(fd: int, size: int) -> tuple[bytes, int]:
    """The last complete line of the open file (``size`` bytes long) and the offset just
    after its newline; ``(b"", 0)`` when there is none. Bytes after the last newline (a
    partial line) are not part of it."""
    newline = _rfind_newline(fd, size)
    if newline < 0:
        return b"", 0
    begin = _rfind_newline(fd, newline) + 1
    return os.pread(fd, newline - begin, begin), newline + 1


def _rfind_newline(fd: int, before: int) -> int:
    """The offset of the last newline before offset ``before``, or -1."""
    chunk = 65536
    position = before
    while position > 0:
        start = max(0, position - chunk)
        found = os.pread(fd, position - start, start).rfind(b"\n")
        if found >= 0:
            return start + found
        position = start
    return -1


def first_line(path: Path) -> bytes | None:
    try:
        with path.open("rb") as handle:
            raw = handle.readline()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise AuditError(f"audit log {path}: cannot read ({exc.strerror})") from None
    return raw[:-1] if raw.endswith(b"\n") else None


def write_atomically(path: Path, data: bytes, mode: int, what: str | None = None) -> None:
    """Replace ``path`` with ``data``, whole and with its final mode from the start
    (:func:`airgapped_registry.files.write_whole`). Failures name ``what`` (default:
    the path)."""
    write_whole(path, data, mode, what=what or str(path), error=AuditError)


def write_json_atomically(path: Path, document: dict[str, Any], mode: int = 0o640) -> None:
    """Replace ``path`` with ``document`` (:func:`write_atomically`), its directory made
    first if missing."""
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise AuditError(f"{path}: cannot write ({exc.strerror or exc})") from None
    data = json.dumps(document, indent=2, sort_keys=True).encode("ascii") + b"\n"
    write_atomically(path, data, mode)


def read_json(path: Path) -> dict[str, Any] | None:
    """A state file's document; None when it does not exist."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise AuditError(f"{path}: cannot read ({exc.strerror})") from None
    try:
        document = json.loads(text)
    except ValueError:
        raise AuditError(f"{path}: not JSON") from None
    if not isinstance(document, dict):
        raise AuditError(f"{path}: not a JSON object")
    return document
