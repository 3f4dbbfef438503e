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


def message(line: bytes, facility: int, hostname: str, pid: int) -> bytes:
    """The RFC 5424 message for one record's line."""
    fields = decode(line)
    if fields.get("decision") == "deny":
        severity = WARNING
    elif fields["type"] == "recovered":
        severity = NOTICE
    else:
        severity = INFO
    header = f"<{facility * 8 + severity}>1 {fields['time']} {hostname} {APP_NAME} {pid} "
    return f"{header}{fields['type']} - ".encode("ascii") + line


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

    def send(self, payload: bytes) -> None:
        if self.streams:
            self.sock.sendall(f"{len(payload)} ".encode("ascii") + payload)
        else:
            self.sock.send(payload)

    def close(self) -> None:
        self.sock.close()


class SyslogForwarder:
    """Sends every record after the cursor, in order, from a daemon thread."""

    def __init__(self, config: SyslogConfig, log_dir: Path, state_dir: Path) -> None:
        self.config = config
        self.log_dir = log_dir
        self.cursor_path = state_dir / CURSOR
        self.facility = FACILITIES[config.facility]
        self.hostname = socket.gethostname() or "-"
        self.sent = 0  # messages sent by this forwarder (a figure for tests and the bench)
        self.error: str | None = None  # why the last try failed; None once sending works
        self._cursor = self._load()
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
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        connection: Connection | None = None
        backoff = 0.5
        while not self._stop.is_set():
            try:
                if connection is None:
                    connection = Connection(self.config)
                connection.check()
                self._send_pending(connection)
                self.error = None
                backoff = 0.5
                self._wake.wait(1.0)
                self._wake.clear()
            except (OSError, AuditError) as exc:
                cause = f"syslog {self.config.address}: {exc}"
                if cause != self.error:
                    logger.warning("%s; records stay in the log and are sent later", cause)
                self.error = cause
                if connection is not None:
                    connection.close()
                    connection = None
                self._position = None  # re-read from the cursor: what was in flight is resent
                self._stop.wait(backoff)
                backoff = min(backoff * 2, LONGEST_BACKOFF)
        if connection is not None:
            connection.close()

    def _send_pending(self, connection: Connection) -> None:
        last_saved = time.monotonic()
        sent_since_save = 0
        pid = os.getpid()
        while not self._stop.is_set():
            batch = list(self._pending(BATCH))
            if not batch:
                break
            for seq, line, position in batch:
                connection.send(message(line, self.facility, self.hostname, pid))
                self._cursor, self._position = seq, position
                self.sent += 1
                sent_since_save += 1
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
            for line in files.read_lines(path, offset):
                if not line.complete:
                    return
                try:
                    seq = decode(line.data)["seq"]
                except ValueError as exc:
                    raise AuditError(f"{path} line {line.number}: {exc}") from None
                if seq <= self._cursor:
                    continue
                yield seq, line.data, (inode, line.end)
                count += 1
                if count >= limit:
                    return

    def _files_from_position(self) -> Iterator[tuple[Path, int, int]]:
        paths = files.log_files(self.log_dir)
        inodes = []
        for path in paths:
            try:
                inodes.append(os.stat(path).st_ino)
            except FileNotFoundError:
                inodes.append(-1)
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
