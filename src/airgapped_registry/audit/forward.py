"""Forwarding records to syslog (RFC 5424) for a SIEM, from a thread of its own.

The forwarder reads the log's files, never the writer's memory: ``append`` only wakes it,
so a slow or absent syslog server neither blocks nor loses a local record. What was sent is
kept as a cursor (the last seq sent, ``syslog.cursor`` beside head.json); after a failure,
or a restart, sending resumes after it. Delivery is at least once: a record may reach the
server twice (every message carries the record and its seq), never zero times while the log
keeps it, except over UDP, which tells nobody when a datagram is lost.

One message per record: ``<PRI>1 TIME HOST airgapped-registry PID TYPE - LINE``, the line
being the record's JSON exactly as in the log. Over TCP, octet-counting framing (RFC 6587);
over UDP and unix datagram sockets, one datagram each.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from airgapped_registry.audit import files
from airgapped_registry.audit.config import FACILITIES, SyslogConfig
from airgapped_registry.audit.records import AuditError, decode

logger = logging.getLogger(__name__)

CURSOR = "syslog.cursor"
APP_NAME = "airgapped-registry"
# Severities: warning for denials, informational for the rest.
WARNING, NOTICE, INFO = 4, 5, 6
LONGEST_BACKOFF = 30.0
BATCH = 512
# Between two passes over the log: records sent in batches, not one wake-up per record.
PASS_INTERVAL = 0.05
_HEAD = re.compile(rb'\{"seq":([0-9]+),"time":"([0-9T:.Z-]+)","type":"([a-z_]+)",')


def head_of(line: bytes) -> tuple[int, str, str]:
    """``(seq, time, type)`` of a record's line. The writer puts them first, in this order:
    read with a pattern, since the forwarder shares the writers' interpreter and a JSON
    parse per record would slow them; any other line is parsed (and refused if need be)."""
    match = _HEAD.match(line)
    if match is not None:
        return int(match[1]), match[2].decode("ascii"), match[3].decode("ascii")
    fields = decode(line)
    return fields["seq"], fields["time"], fields["type"]


def message(line: bytes, facility: int, hostname: str, pid: int) -> bytes:
    """The RFC 5424 message for one record's line."""
    _, moment, type_ = head_of(line)
    if b'"decision":"deny"' in line:
        severity = WARNING
    elif type_ == "recovered":
        severity = NOTICE
    else:
        severity = INFO
    header = f"<{facility * 8 + severity}>1 {moment} {hostname} {APP_NAME} {pid} {type_} - "
    return header.encode("ascii") + line


class Connection:
    """One connection to the syslog server; raises OSError when it is gone."""

    def __init__(self, config: SyslogConfig, timeout: float = 5.0) -> None:
        self.scheme = config.scheme
        endpoint = config.endpoint()
        self.sock: socket.socket
        if isinstance(endpoint, str):
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self.sock.settimeout(timeout)
            try:
                self.sock.connect(endpoint)
            except OSError as exc:
                self.sock.close()
                if exc.errno != errno.EPROTOTYPE:
                    raise
                self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self.sock.settimeout(timeout)
                self.sock.connect(endpoint)
                self.scheme = "unix-stream"
        elif self.scheme == "tcp":
            self.sock = socket.create_connection(endpoint, timeout=timeout)
        else:
            host, port = endpoint
            family, kind, proto, _, address = socket.getaddrinfo(
                host, port, type=socket.SOCK_DGRAM
            )[0]
            self.sock = socket.socket(family, kind, proto)
            self.sock.settimeout(timeout)
            self.sock.connect(address)

    @property
    def streams(self) -> bool:
        return self.scheme in ("tcp", "unix-stream")

    def check(self) -> None:
        """Raise if a stream's peer has closed it (what TCP alone would tell only after
        another message or two had gone nowhere)."""
        if not self.streams:
            return
        self.sock.setblocking(False)
        try:
            data = self.sock.recv(1, socket.MSG_PEEK)
        except BlockingIOError:
            return
        finally:
            self.sock.settimeout(5.0)
        if not data:
            raise ConnectionResetError(errno.ECONNRESET, "closed by the syslog server")

    def send(self, payloads: list[bytes]) -> None:
        if self.streams:
            self.sock.sendall(b"".join(b"%d %s" % (len(payload), payload) for payload in payloads))
        else:
            for payload in payloads:
                self.sock.send(payload)

    def close(self) -> None:
        self.sock.close()


class SyslogForwarder:
    """Sends every record after the cursor, in order, from a daemon thread."""

    def __init__(
        self, config: SyslogConfig, log_dir: Path, state_dir: Path, last_seq: int | None = None
    ) -> None:
        """``last_seq``: the log's last record when the forwarder starts; a cursor past it
        belongs to a log that was replaced (a new chain), and forwarding starts over."""
        self.config = config
        self.log_dir = log_dir
        self.cursor_path = state_dir / CURSOR
        self.facility = FACILITIES[config.facility]
        self.hostname = socket.gethostname() or "-"
        self.sent = 0  # messages sent by this forwarder (a figure for tests and the bench)
        self.error: str | None = None  # why the last try failed; None once sending works
        self._cursor = self._load()
        if last_seq is not None and self._cursor > last_seq:
            logger.warning(
                "%s: seq %d is past the log's end (seq %d): a new chain; forwarding it from "
                "its start",
                self.cursor_path,
                self._cursor,
                last_seq,
            )
            self._cursor = 0
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._position: tuple[int, int] | None = None  # (inode, offset) after the cursor

    @property
    def cursor(self) -> int:
        return self._cursor

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="audit-syslog", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def stop(self, timeout: float = 5.0) -> None:
        """Send what is pending if the server is there (waiting at most ``timeout``), then
        stop; the cursor says where the next start resumes."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        connection: Connection | None = None
        backoff = 0.5
        while True:
            # Once stopping, one last pass sends what the log holds (the closing checkpoint).
            stopping = self._stop.is_set()
            try:
                if connection is None:
                    connection = Connection(self.config)
                connection.check()
                self._send_pending(connection)
                self.error = None
                backoff = 0.5
                if stopping:
                    break
                self._wake.wait(1.0)
                self._stop.wait(PASS_INTERVAL)
                self._wake.clear()
            except Exception as exc:
                # Anything (a bug too) only delays forwarding: the thread must live on.
                cause = f"syslog {self.config.address}: {exc}"
                if cause != self.error:
                    logger.warning(
                        "%s; records stay in the log and are sent later",
                        cause,
                        exc_info=not isinstance(exc, OSError | AuditError),
                    )
                self.error = cause
                if connection is not None:
                    connection.close()
                    connection = None
                self._position = None  # re-read from the cursor: what was in flight is resent
                if stopping:
                    break
                self._stop.wait(backoff)
                backoff = min(backoff * 2, LONGEST_BACKOFF)
        if connection is not None:
            connection.close()

    def _send_pending(self, connection: Connection) -> None:
        last_saved = time.monotonic()
        sent_since_save = 0
        pid = os.getpid()
        while True:
            batch = list(self._pending(BATCH))
            if not batch:
                break
            connection.send(
                [message(line, self.facility, self.hostname, pid) for _, line, _ in batch]
            )
            self._cursor, self._position = batch[-1][0], batch[-1][2]
            self.sent += len(batch)
            sent_since_save += len(batch)
            # A stream whose server went away after our last check took the batch into its
            # buffer and nowhere else: find out before the cursor moves past it on disk.
            connection.check()
            if time.monotonic() - last_saved >= 1.0:
                self._save()
                last_saved, sent_since_save = time.monotonic(), 0
        if sent_since_save:
            self._save()

    def _pending(self, limit: int) -> Iterator[tuple[int, bytes, tuple[int, int]]]:
        """Up to ``limit`` ``(seq, line, (inode, offset after it))`` past the cursor."""
        count = 0
        for path, inode, offset in self._files_from_position():
            try:
                handle = path.open("rb")
            except FileNotFoundError:
                self._position = None  # rotated away since the listing: list again
                return
            except OSError as exc:
                raise AuditError(f"audit log {path}: cannot read ({exc.strerror})") from None
            with handle:
                if os.fstat(handle.fileno()).st_ino != inode:
                    # audit.log was rotated between the listing and the open: the offset is
                    # the old file's. List again next pass.
                    self._position = None
                    return
                for line in files.lines_of(handle, offset):
                    if not line.complete:
                        return
                    try:
                        seq = head_of(line.data)[0]
                    except ValueError as exc:
                        raise AuditError(f"{path} after byte {offset}: {exc}") from None
                    if seq <= self._cursor:
                        continue
                    yield seq, line.data, (inode, line.end)
                    count += 1
                    if count >= limit:
                        return

    def _files_from_position(self) -> Iterator[tuple[Path, int, int]]:
        # A rotation between the listing and the stats would give audit.log the new file's
        # inode while the old one's rotated name is missing: list until two listings agree.
        paths = files.log_files(self.log_dir)
        while True:
            inodes = []
            for path in paths:
                try:
                    inodes.append(os.stat(path).st_ino)
                except FileNotFoundError:
                    inodes.append(-1)
            again = files.log_files(self.log_dir)
            if again == paths:
                break
            paths = again
        start, offset = 0, 0
        if self._position is not None and self._position[0] in inodes:
            start, offset = inodes.index(self._position[0]), self._position[1]
        else:
            # The last rotated file that starts at or before the record after the cursor.
            for index, path in enumerate(paths):
                first = files.rotated_first_seq(path)
                if first is not None and first <= self._cursor + 1:
                    start = index
        for index in range(start, len(paths)):
            yield paths[index], inodes[index], offset if index == start else 0

    def _save(self) -> None:
        try:
            files.write_json_atomically(self.cursor_path, {"seq": self._cursor})
        except AuditError as exc:
            logger.error("%s", exc)

    def _load(self) -> int:
        try:
            document = files.read_json(self.cursor_path)
        except AuditError as exc:
            logger.error("%s; forwarding from the start of the log", exc)
            return 0
        seq = document.get("seq") if document else 0
        return seq if isinstance(seq, int) else 0
