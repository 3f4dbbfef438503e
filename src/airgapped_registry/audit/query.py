"""Questions to the log: who pulled a digest, what an identity did, what happened between
two times, which requests were denied.

Records are read in chain order from every file; checkpoints and ``recovered`` notes are
not answers. A ``gate_down`` record's time is when nginx refused the request
(``event_time``), not when the gate imported it.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO

from airgapped_registry.audit import files
from airgapped_registry.audit.records import GATE_DOWN, REQUEST, decode, parse_time


def event_time(record: dict[str, Any]) -> datetime | None:
    text = record.get("event_time") or record.get("time")
    try:
        return parse_time(str(text))
    except ValueError:
        return None


def identity_matches(record: dict[str, Any], identity: str) -> bool:
    """``identity`` is the whole subject (``CN=node,OU=puller``), one of its parts
    (``CN=node``, ``OU=puller``), the serial or the fingerprint; case does not matter."""
    who = record.get("identity") or {}
    if not isinstance(who, dict):
        return False
    wanted = identity.strip().lower()
    subject = str(who.get("subject") or "")
    parts = {part.strip().lower() for part in subject.split(",") if part.strip()}
    return (
        wanted == subject.lower()
        or wanted in parts
        or wanted
        in (str(who.get("serial") or "").lower(), str(who.get("fingerprint") or "").lower())
    ) and bool(wanted)


def query(
    directory: str | Path,
    digest: str | None = None,
    identity: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    action: str | None = None,
    decision: str | None = None,
) -> Iterator[dict[str, Any]]:
    """The request and gate_down records matching every filter given (``since`` inclusive,
    ``until`` exclusive), in chain order. Lines that are not records are passed over (verify
    is the tool that names them)."""
    with files.snapshot(Path(directory)) as opened:
        yield from _matching(opened, digest, identity, since, until, action, decision)


def _matching(
    opened: list[tuple[Path, BinaryIO]],
    digest: str | None,
    identity: str | None,
    since: datetime | None,
    until: datetime | None,
    action: str | None,
    decision: str | None,
) -> Iterator[dict[str, Any]]:
    for _, handle in opened:
        for line in files.lines_of(handle):
            if not line.complete:
                continue
            try:
                record = decode(line.data)
            except ValueError:
                continue
            if record["type"] not in (REQUEST, GATE_DOWN):
                continue
            if digest is not None and record.get("digest") != digest:
                continue
            if action is not None and record.get("action") != action:
                continue
            if decision is not None and record.get("decision") != decision:
                continue
            if identity is not None and not identity_matches(record, identity):
                continue
            if since is not None or until is not None:
                moment = event_time(record)
                if moment is None:
                    continue
                if since is not None and moment < since:
                    continue
                if until is not None and moment >= until:
                    continue
            yield record
