"""nginx's record of the requests it refused while the gate was down, imported into the
chain as ``gate_down`` denial records.

nginx writes one JSON object per refused request to ``gate-unavailable.log`` (log_format
``airgapped_registry_gate_down``: the access log's field names). The import reads from a
cursor (the file's inode and the offset after the last line imported), kept in
``gate-unavailable.cursor`` beside head.json and, per record, in its ``source`` field: a
crash between a record and the cursor's update is caught up from the log itself, so no line
is imported twice. A file truncated below the cursor is read again from its start; a file
rotated away (a new inode) is finished from ``<name>.1`` first when it is still there.
"""

from __future__ import annotations

import json
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from airgapped_registry.audit import files
from airgapped_registry.audit.records import (
    DENY,
    GATE_DOWN,
    AuditError,
    AuditRecord,
    parse_time,
    utc_text,
)

CURSOR = "gate-unavailable.cursor"
REASON = "gate_unavailable"
# How many records between two saves of the cursor file (the records carry it anyway).
SAVE_EVERY = 256

_NAME = (
    r"(?P<name>[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*)"
)
_ENDPOINTS = (
    (re.compile(r"/v2/?"), "base"),
    (re.compile(r"/v2/_catalog"), "catalog"),
    (re.compile(rf"/v2/{_NAME}/tags/list"), "tags"),
    (re.compile(rf"/v2/{_NAME}/manifests/(?P<reference>[^/]+)"), "manifests"),
    (re.compile(rf"/v2/{_NAME}/blobs/uploads/?(?P<session>[^/]*)"), "uploads"),
    (re.compile(rf"/v2/{_NAME}/blobs/(?P<reference>[^/]+)"), "blobs"),
)
_MANIFEST_ACTIONS = {"GET": "pull", "HEAD": "head", "DELETE": "delete"}
_BLOB_ACTIONS = {"GET": "blob_pull", "HEAD": "blob_head", "DELETE": "blob_delete"}


class AppendTarget(Protocol):
    def append_fields(self, type_: str, fields: dict[str, Any]) -> AuditRecord: ...


@dataclass(frozen=True)
class Cursor:
    inode: int
    offset: int


def classify(method: str, uri: str) -> tuple[str, str | None, str | None]:
    """``(action, repository, reference)`` of a registry API request, from its raw URI."""
    path = uri.split("?", 1)[0]
    for pattern, endpoint in _ENDPOINTS:
        match = pattern.fullmatch(path)
        if match is None:
            continue
        groups = match.groupdict()
        repository, reference = groups.get("name"), groups.get("reference")
        if endpoint == "manifests":
            if method == "PUT":
                return ("push" if _is_digest(reference) else "tag"), repository, reference
            return _MANIFEST_ACTIONS.get(method, "manifest"), repository, reference
        if endpoint == "blobs":
            return _BLOB_ACTIONS.get(method, "blob"), repository, reference
        if endpoint == "uploads":
            return "blob_push", repository, None
        return endpoint, repository, None
    return "unknown", None, None


def _is_digest(reference: str | None) -> bool:
    return bool(reference) and ":" in str(reference)


def gate_down_fields(raw: bytes, cursor: Cursor) -> dict[str, Any]:
    """The fields of the ``gate_down`` record for one line of nginx's log."""
    source = {"inode": cursor.inode, "offset": cursor.offset}
    try:
        entry = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        entry = None
    if not isinstance(entry, dict):
        return {
            "decision": DENY,
            "reason": REASON,
            "unparsed": raw.decode("utf-8", "replace"),
            "source": source,
        }

    def text(name: str) -> str:
        value = entry.get(name)
        return "" if value is None else str(value)

    method, uri = text("method"), text("uri")
    action, repository, reference = classify(method, uri)
    try:
        event_time = utc_text(parse_time(text("time")))
    except ValueError:
        event_time = text("time")
    status = entry.get("status")
    return {
        "identity": {
            "subject": text("ssl_client_s_dn"),
            "serial": text("ssl_client_serial"),
            "issuer": text("ssl_client_i_dn"),
            "fingerprint": "",
        },
        "client": text("remote_addr"),
        "request_id": text("request_id"),
        "action": action,
        "method": method,
        "repository": repository,
        "reference": reference,
        "digest": reference if _is_digest(reference) else None,
        "decision": DENY,
        "reason": REASON,
        "status": status if isinstance(status, int) else text("status"),
        "uri": uri,
        "verify": text("ssl_client_verify"),
        "event_time": event_time,
        "source": source,
    }


class GateDownImporter:
    """Imports new lines of ``source`` into ``log``; :meth:`run` is safe from any thread."""

    def __init__(self, log: AppendTarget, source: Path, state_dir: Path, log_dir: Path) -> None:
        self.log = log
        self.source = source
        self.cursor_path = state_dir / CURSOR
        self.log_dir = log_dir
        self._lock = threading.Lock()
        self._cursor: Cursor | None = None
        self._loaded = False

    @property
    def cursor(self) -> Cursor | None:
        return self._cursor

    def run(self) -> int:
        """Import every complete line past the cursor; the number of records written.
        Raises AuditError when a record cannot be written (the cursor stays before it)."""
        with self._lock:
            if not self._loaded:
                self._cursor = self._load()
                self._loaded = True
            try:
                status = os.stat(self.source)
            except FileNotFoundError:
                return 0
            except OSError as exc:
                raise AuditError(f"{self.source}: cannot read ({exc.strerror})") from None
            count = 0
            cursor = self._cursor
            if cursor is not None and cursor.inode != status.st_ino:
                rotated = self.source.with_name(self.source.name + ".1")
                try:
                    if os.stat(rotated).st_ino == cursor.inode:
                        count += self._import(rotated, cursor)
                except FileNotFoundError:
                    pass
                cursor = None
            if cursor is None or cursor.offset > status.st_size:
                cursor = Cursor(status.st_ino, 0)
            count += self._import(self.source, cursor)
            return count

    def _import(self, path: Path, cursor: Cursor) -> int:
        try:
            handle = path.open("rb")
        except FileNotFoundError:
            return 0
        except OSError as exc:
            raise AuditError(f"{path}: cannot read ({exc.strerror})") from None
        with handle:
            if os.fstat(handle.fileno()).st_ino != cursor.inode:
                return 0  # rotated between the stat and the open: the next run sees it
            return self._import_lines(handle, cursor)

    def _import_lines(self, handle: BinaryIO, cursor: Cursor) -> int:
        count = 0
        try:
            for line in files.lines_of(handle, cursor.offset):
                if not line.complete:
                    break  # nginx is still writing it
                after = Cursor(cursor.inode, line.end)
                if line.data.strip():
                    self.log.append_fields(GATE_DOWN, gate_down_fields(line.data, after))
                    count += 1
                self._cursor = after
                if count and count % SAVE_EVERY == 0:
                    self._save()
        finally:
            if count:
                self._save()
        return count

    def _save(self) -> None:
        if self._cursor is not None:
            files.write_json_atomically(
                self.cursor_path,
                {
                    "source": str(self.source),
                    "inode": self._cursor.inode,
                    "offset": self._cursor.offset,
                },
            )

    def _load(self) -> Cursor | None:
        # The log's own last gate_down record is at least as new as the cursor file (which is
        # saved after the records it covers); only the current file can hold a newer one.
        from_log = _last_source(self.log_dir / files.CURRENT)
        if from_log is not None:
            return from_log
        document = files.read_json(self.cursor_path)
        if document is None:
            return None
        inode, offset = document.get("inode"), document.get("offset")
        if not isinstance(inode, int) or not isinstance(offset, int):
            raise AuditError(f"{self.cursor_path}: expected integers inode and offset")
        return Cursor(inode, offset)


def _last_source(path: Path) -> Cursor | None:
    found = None
    try:
        for line in files.read_lines(path):
            if b'"type":"gate_down"' not in line.data:
                continue
            try:
                source = json.loads(line.data).get("source")
            except ValueError:
                continue
            if isinstance(source, dict) and isinstance(source.get("inode"), int):
                found = Cursor(source["inode"], int(source.get("offset", 0)))
    except AuditError:
        return None
    return found
