"""The audit log: records appended in order, hash-chained, checkpointed, rotated.

:class:`AuditLog` is the only writer of a log directory (an ``flock`` on ``.lock`` keeps a
second one out). ``append`` takes one lock, writes the whole line with ``write(2)`` on an
``O_APPEND`` descriptor and returns once the kernel has it (page cache): a record written is
never lost to a crash of the gate, only to one of the host within ``fsync`` seconds, which a
timer thread bounds; every checkpoint and rotation is fsynced too (docs/audit.md,
"Durability"). A write that fails raises :class:`AuditError`, after removing the bytes it
may have left, so the caller can refuse the request and the next record starts a clean line.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from airgapped_registry.audit import files
from airgapped_registry.audit.config import AuditConfig
from airgapped_registry.audit.forward import SyslogForwarder
from airgapped_registry.audit.gatedown import GateDownImporter
from airgapped_registry.audit.keys import key_id, load_private, sign
from airgapped_registry.audit.records import (
    CHECKPOINT,
    RECOVERED,
    REQUEST,
    ZERO_HASH,
    AuditError,
    AuditEvent,
    AuditRecord,
    decode,
    encode,
    line_hash,
    utc_text,
)
from airgapped_registry.errors import AirgapError
from airgapped_registry.files import fsync_directory

logger = logging.getLogger(__name__)


class AuditLog:
    """One log directory, open for appending. Build it with :meth:`open`."""

    def __init__(self, config: AuditConfig, private_key: Ed25519PrivateKey) -> None:
        self.config = config
        self.path = config.directory / files.CURRENT
        self._private = private_key
        self._key_id = key_id(private_key.public_key())
        self._lock = threading.Lock()
        self._fd = -1
        self._lock_fd = -1
        self._seq = 0
        self._prev = ZERO_HASH
        self._size = 0
        self._first_seq = 1
        self._rotate_at = config.rotate_bytes
        self._unsigned = 0
        self._last_checkpoint = time.monotonic()
        self._synced = 0  # the last seq known to be on disk
        self._sync_lock = threading.Lock()  # one fsync at a time; taken before self._lock
        self._last_fsync = time.monotonic()
        self._head_lock = threading.Lock()  # taken after self._lock
        self._head_seq = 0
        self._head_pending: AuditRecord | None = None
        self._broken: str | None = None
        self._closed = False
        self._stop = threading.Event()
        self._kick = threading.Event()
        self._timer: threading.Thread | None = None
        self._importer: GateDownImporter | None = None
        self._forwarder: SyslogForwarder | None = None

    @classmethod
    def open(cls, config: AuditConfig) -> AuditLog:
        """Open the log in ``config.directory`` (made if missing) and continue its chain.

        A partial last line (a crash mid-write) is moved aside and noted in a ``recovered``
        record. Refused when another process has the log open, when the last record is not
        readable, or when head.json names a checkpoint past the log's end (a cut tail:
        ``airgap audit verify`` says where)."""
        log = cls(config, load_private(config.key))
        try:
            log._start()
        except BaseException:
            log._release()
            raise
        return log

    @property
    def seq(self) -> int:
        """The last record's seq (0 for an empty log)."""
        return self._seq

    @property
    def forwarder(self) -> SyslogForwarder | None:
        """The syslog forwarder (its ``cursor``, ``sent``, ``error``), when configured."""
        return self._forwarder

    def append(self, event: AuditEvent) -> AuditRecord:
        """Write ``event`` as the next record; returns once the line is in the page cache.
        Thread-safe. Raises :class:`AuditError` when the record could not be written."""
        return self.append_fields(REQUEST, event.fields())

    def append_fields(self, type_: str, fields: dict[str, Any]) -> AuditRecord:
        """Write a record of ``type_`` (``request``, ``gate_down``, ``recovered``) with
        ``fields`` after seq, time, type and prev."""
        if type_ == CHECKPOINT:
            raise AuditError("checkpoints are written by the log itself")
        with self._lock:
            record = self._write(type_, fields)
            if self._unsigned >= self.config.checkpoint_every:
                self._try_checkpoint()
        if self.config.fsync == 0:
            # Group commit: one fsync covers every record written before it started, so
            # the threads waiting here share it.
            self._sync_to(record.seq)
        if self._forwarder is not None:
            self._forwarder.wake()
        return record

    def checkpoint(self) -> AuditRecord | None:
        """Write a signed checkpoint now (None when the last record is one already)."""
        with self._lock:
            if self._unsigned == 0:
                return None
            return self._checkpoint(publish=True)

    def sync(self) -> None:
        """Make every record written so far durable (fsync)."""
        self._sync_to(self._seq)

    def import_gate_down(self) -> int:
        """Import what nginx logged while the gate was down; the number of records added."""
        if self._importer is None:
            return 0
        return self._importer.run()

    def close(self) -> None:
        """Stop the timers, sign and fsync what is unsigned, close the file."""
        self._stop.set()
        self._kick.set()
        if self._timer is not None and self._timer is not threading.current_thread():
            self._timer.join()
        with self._lock:
            if not self._closed and self._fd >= 0 and self._broken is None:
                try:
                    if self._unsigned:
                        self._checkpoint(publish=True)
                    elif self._head_pending is not None:
                        self._fsync()
                        self._write_head(self._head_pending)
                    self._fsync()
                except AuditError as exc:
                    logger.error("%s", exc)
            self._closed = True
        if self._forwarder is not None:
            self._forwarder.stop()
        self._release()

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # Opening.

    def _start(self) -> None:
        directory = self.config.directory
        try:
            directory.mkdir(mode=0o750, parents=True, exist_ok=True)
            self._lock_fd = os.open(
                directory / files.LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600
            )
        except OSError as exc:
            raise AuditError(f"audit log {directory}: cannot open ({exc.strerror})") from None
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                raise AuditError(
                    f"audit log {directory}: in use by another process (lock {files.LOCK})"
                ) from None
            raise AuditError(f"audit log {directory}: cannot lock ({exc.strerror})") from None
        try:
            self._fd = os.open(
                self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o640
            )
            self._size = os.fstat(self._fd).st_size
        except OSError as exc:
            raise AuditError(f"audit log {self.path}: cannot open ({exc.strerror})") from None
        recovered = self._recover_partial_line()
        self._continue_chain()
        self._check_head()
        if recovered is not None:
            with self._lock:
                self._write(RECOVERED, recovered)
        if self.config.gate_down_log is not None:
            self._importer = GateDownImporter(
                self, self.config.gate_down_log, self.config.state_dir, directory
            )
            self._run_import()
        if self.config.syslog is not None:
            self._forwarder = SyslogForwarder(
                self.config.syslog, directory, self.config.state_dir, last_seq=self._seq
            )
            self._forwarder.start()
        self._timer = threading.Thread(target=self._tick, name="audit-timer", daemon=True)
        self._timer.start()

    def _recover_partial_line(self) -> dict[str, Any] | None:
        if self._size == 0 or os.pread(self._fd, 1, self._size - 1) == b"\n":
            return None
        _, end = files.last_line(self._fd, self._size)
        partial = os.pread(self._fd, self._size - end, end)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        aside = self.config.directory / f"{files.CURRENT}.partial-{stamp}"
        try:
            fd = os.open(aside, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o640)
            try:
                os.write(fd, partial)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.ftruncate(self._fd, end)
            os.fsync(self._fd)
            fsync_directory(self.config.directory)
        except OSError as exc:
            raise AuditError(
                f"audit log {self.path}: cannot move its partial last line aside to {aside} "
                f"({exc.strerror})"
            ) from None
        logger.warning(
            "audit log %s: partial last line (%d bytes) moved to %s", self.path, len(partial), aside
        )
        self._size = end
        return {"file": aside.name, "bytes": len(partial), "hash": line_hash(partial)}

    def _continue_chain(self) -> None:
        source, line = self.path, b""
        if self._size:
            line, _ = files.last_line(self._fd, self._size)
        else:
            rotated = [path for path in files.log_files(self.config.directory) if path != self.path]
            if rotated:
                source = rotated[-1]
                line = _last_line_of(source)
        if not line:
            return
        try:
            last = decode(line)
        except ValueError as exc:
            raise AuditError(
                f"audit log {source}: last record unreadable ({exc}); check it with 'airgap "
                "audit verify', then move the log directory and head.json aside for a new chain"
            ) from None
        self._seq, self._prev = last["seq"], line_hash(line)
        self._unsigned = 0 if last["type"] == CHECKPOINT else 1
        self._first_seq = self._seq + 1
        if self._size:
            first = files.first_line(self.path)
            try:
                self._first_seq = decode(first)["seq"] if first else self._seq
            except ValueError as exc:
                raise AuditError(
                    f"audit log {self.path}: first record unreadable ({exc})"
                ) from None

    def _check_head(self) -> None:
        head = files.read_json(self.config.head)
        if head is None:
            return
        seq = head.get("seq")
        if isinstance(seq, int) and seq > self._seq:
            raise AuditError(
                f"audit log {self.config.directory}: ends at seq {self._seq}, but "
                f"{self.config.head} records a checkpoint at seq {seq}: the log was cut; "
                "'airgap audit verify' says where (docs/audit.md: starting a new chain)"
            )

    # Writing (callers hold self._lock).

    def _write(self, type_: str, fields: dict[str, Any], signed: bool = False) -> AuditRecord:
        if self._closed:
            raise AuditError(f"audit log {self.path}: closed")
        if self._broken is not None:
            raise AuditError(f"audit log {self.path}: unusable since {self._broken}")
        if type_ != CHECKPOINT and self._size >= self._rotate_at:
            self._rotate()
        seq = self._seq + 1
        record: dict[str, Any] = {
            "seq": seq,
            "time": utc_text(),
            "type": type_,
            "prev": self._prev,
            **fields,
        }
        if signed:
            record["signature"] = sign(self._private, record)
        line = encode(record)
        self._write_line(line + b"\n", seq)
        self._seq, self._prev = seq, line_hash(line)
        self._unsigned = 0 if type_ == CHECKPOINT else self._unsigned + 1
        return AuditRecord(seq, record["time"], type_, line, record)

    def _write_line(self, data: bytes, seq: int) -> None:
        written = 0
        try:
            while written < len(data):
                count = os.write(self._fd, data[written:])
                if count <= 0:
                    raise OSError(errno.EIO, "write wrote nothing")
                written += count
        except OSError as exc:
            if written:
                # A partial line would glue itself to the next record: take it back.
                try:
                    os.ftruncate(self._fd, self._size)
                except OSError as again:
                    self._broken = (
                        f"record seq {seq} was written in part and could not be removed "
                        f"({again.strerror})"
                    )
            raise AuditError(
                f"audit log {self.path}: cannot write record seq {seq} ({exc.strerror or exc})"
            ) from None
        self._size += len(data)

    def _fsync(self) -> None:
        """fsync under self._lock (rotation, close, a checkpoint published at once)."""
        if self._synced >= self._seq or self._fd < 0:
            return
        try:
            os.fsync(self._fd)
        except OSError as exc:
            self._broken = f"fsync failed ({exc.strerror})"
            raise AuditError(f"audit log {self.path}: {self._broken}") from None
        self._synced = self._seq
        self._last_fsync = time.monotonic()

    def _sync_to(self, seq: int) -> None:
        """Make records up to ``seq`` durable, without holding self._lock during the fsync:
        on a duplicate of the descriptor, so appends go on meanwhile and a rotation closing
        the original changes nothing (it fsyncs the old file itself first)."""
        with self._sync_lock:
            if self._synced >= seq:
                return
            with self._lock:
                if self._broken is not None:
                    raise AuditError(f"audit log {self.path}: unusable since {self._broken}")
                if self._fd < 0 or self._closed:
                    raise AuditError(f"audit log {self.path}: closed")
                target = self._seq
                try:
                    fd = os.dup(self._fd)
                except OSError as exc:
                    raise AuditError(
                        f"audit log {self.path}: cannot fsync ({exc.strerror})"
                    ) from None
            try:
                os.fsync(fd)
            except OSError as exc:
                # After a failed fsync the kernel may have dropped the pages: nothing written
                # since the last good one can be trusted to be on disk.
                with self._lock:
                    self._broken = f"fsync failed ({exc.strerror})"
                raise AuditError(f"audit log {self.path}: {self._broken}") from None
            finally:
                os.close(fd)
            self._synced = max(self._synced, target)
            self._last_fsync = time.monotonic()

    def _checkpoint(self, publish: bool = False) -> AuditRecord:
        """Write a signed checkpoint. head.json follows once the line is on disk: at once
        with ``publish``, else from the timer thread (woken now), so the request whose record
        reached ``checkpoint_every`` does not wait for two fsyncs."""
        fields = {"head_seq": self._seq, "head": self._prev, "key": self._key_id}
        record = self._write(CHECKPOINT, fields, signed=True)
        self._last_checkpoint = time.monotonic()
        if publish:
            self._fsync()
            self._write_head(record)
            self._head_pending = None
        else:
            self._head_pending = record
            self._kick.set()
        return record

    def _write_head(self, record: AuditRecord) -> None:
        with self._head_lock:
            if record.seq <= self._head_seq:
                return
            files.write_json_atomically(
                self.config.head,
                {"version": 1, "seq": record.seq, "hash": record.hash, "record": record.fields},
            )
            self._head_seq = record.seq

    def _publish_head(self) -> None:
        with self._lock:
            record, self._head_pending = self._head_pending, None
        if record is None:
            return
        try:
            self._sync_to(record.seq)
            self._write_head(record)
        except AuditError as exc:
            logger.error("audit checkpoint seq %d: head not written: %s", record.seq, exc)

    def _try_checkpoint(self) -> None:
        # The records are written; a checkpoint that fails now is tried again by the timer.
        try:
            self._checkpoint()
        except AuditError as exc:
            logger.error("audit checkpoint: %s", exc)

    def _rotate(self) -> None:
        # The old file ends with a checkpoint and is on disk before it is renamed.
        if self._unsigned:
            self._checkpoint(publish=True)
        else:
            self._fsync()
            if self._head_pending is not None:
                self._write_head(self._head_pending)
                self._head_pending = None
        target = self.config.directory / files.rotated_name(self._first_seq)
        try:
            if target.exists():
                raise OSError(errno.EEXIST, f"{target.name} exists")
            os.rename(self.path, target)
        except OSError as exc:
            # Keep writing this file: a late rotation loses nothing.
            self._rotate_at = self._size + max(self.config.rotate_bytes // 8, 4096)
            logger.error("audit log %s: cannot rotate to %s (%s)", self.path, target, exc.strerror)
            return
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o640)
            fsync_directory(self.config.directory)
        except OSError as exc:
            # The open file is the rotated one now; appending to it keeps the chain whole
            # and open() finds its tail there.
            self._rotate_at = self._size + max(self.config.rotate_bytes // 8, 4096)
            logger.error("audit log %s: cannot start a new file (%s)", self.path, exc.strerror)
            return
        os.close(self._fd)
        self._fd, self._size = fd, 0
        self._first_seq = self._seq + 1
        self._rotate_at = self.config.rotate_bytes

    # The timer thread.

    def _tick(self) -> None:
        periods = [self.config.checkpoint_interval]
        if self.config.fsync > 0:
            periods.append(self.config.fsync)
        if self._importer is not None:
            periods.append(self.config.import_interval)
        tick = min(1.0, max(0.01, min(periods) / 2))
        last_import = time.monotonic()
        while not self._stop.is_set():
            self._kick.wait(tick)
            self._kick.clear()
            if self._stop.is_set():
                break
            try:
                last_import = self._timed_work(last_import)
            except Exception:
                # A bug must not end fsyncs and checkpoints for the rest of the gate's life.
                logger.exception("audit timer")

    def _timed_work(self, last_import: float) -> float:
        self._publish_head()
        now = time.monotonic()
        if (
            self.config.fsync > 0
            and now - self._last_fsync >= self.config.fsync
            and self._synced < self._seq
        ):
            try:
                self._sync_to(self._seq)
            except AuditError as exc:
                logger.error("%s", exc)
        if now - self._last_checkpoint >= self.config.checkpoint_interval:
            with self._lock:
                if self._unsigned and not self._closed and self._broken is None:
                    self._try_checkpoint()
                self._last_checkpoint = now
        if self._importer is not None and now - last_import >= self.config.import_interval:
            last_import = now
            self._run_import()
        return last_import

    def _run_import(self) -> None:
        if self._importer is None:
            return
        try:
            count = self._importer.run()
        except AirgapError as exc:
            logger.error("audit import: %s", exc)
            return
        if count:
            logger.info("audit: %d gate_down records imported", count)

    def _release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1


def _last_line_of(path: Path) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise AuditError(f"audit log {path}: cannot read ({exc.strerror})") from None
    try:
        line, _ = files.last_line(fd, os.fstat(fd).st_size)
    finally:
        os.close(fd)
    return line
