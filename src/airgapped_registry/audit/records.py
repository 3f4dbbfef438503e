"""What one audit record is: the event the gate reports, and its line in the log.

A record is one JSON object on one line, ASCII only, keys in a fixed order. ``prev`` holds
``sha256:`` + the hex SHA-256 of the previous line's exact bytes (without its newline), so a
line changed, removed, inserted or moved breaks the chain at the record after it; the first
record of a log names :data:`ZERO_HASH`. The hash is taken over the bytes as written, never
over a re-encoding, so readers need no canonical form to check the chain.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from airgapped_registry.errors import AirgapError

ZERO_HASH = "sha256:" + "0" * 64
# Record types.
REQUEST, CHECKPOINT, GATE_DOWN, RECOVERED = "request", "checkpoint", "gate_down", "recovered"
TYPES = (REQUEST, CHECKPOINT, GATE_DOWN, RECOVERED)
ALLOW, DENY = "allow", "deny"


class AuditError(AirgapError):
    """An audit record could not be written, or the log cannot be used as it is. The gate
    denies the request a record was for."""


@dataclass(frozen=True)
class Identity:
    """Who asked: the client certificate nginx verified (empty strings when there was none)."""

    subject: str = ""
    serial: str = ""
    issuer: str = ""
    fingerprint: str = ""

    def to_json(self) -> dict[str, str]:
        return {
            "subject": self.subject,
            "serial": self.serial,
            "issuer": self.issuer,
            "fingerprint": self.fingerprint,
        }


@dataclass(frozen=True)
class AuditEvent:
    """One decision of the gate, as the gate reports it (the log adds seq, time and prev).

    ``action``: ``pull``, ``push``, ``tag``, ``delete``, ``blob_delete``, or for a denial
    whatever was asked (``head``, ``blob_pull``, ``blob_push``, ``catalog``, ``tags``,
    ``base``, ...). ``digest``: the digest a tag resolved to, or the one asked for.
    """

    identity: Identity
    client: str
    request_id: str
    action: str
    method: str
    repository: str | None
    reference: str | None
    digest: str | None
    decision: str
    reason: str

    def fields(self) -> dict[str, Any]:
        return {
            "identity": self.identity.to_json(),
            "client": self.client,
            "request_id": self.request_id,
            "action": self.action,
            "method": self.method,
            "repository": self.repository,
            "reference": self.reference,
            "digest": self.digest,
            "decision": self.decision,
            "reason": self.reason,
        }


@dataclass(frozen=True)
class AuditRecord:
    """A record as written: its fields, the line's bytes (no newline) and their hash."""

    seq: int
    time: str
    type: str
    line: bytes
    fields: dict[str, Any] = field(repr=False)

    @property
    def hash(self) -> str:
        return line_hash(self.line)


def line_hash(line: bytes) -> str:
    """``sha256:<hex>`` of a line's exact bytes, without its newline."""
    return "sha256:" + hashlib.sha256(line).hexdigest()


def encode(fields: dict[str, Any]) -> bytes:
    """The line for ``fields``: compact JSON in the order given, ASCII only (a name or a
    subject with other characters is escaped, so a line is always one line of bytes)."""
    return json.dumps(fields, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def canonical(fields: dict[str, Any]) -> bytes:
    """The bytes a checkpoint's signature covers: sorted keys, compact, ASCII."""
    return json.dumps(fields, separators=(",", ":"), sort_keys=True, ensure_ascii=True).encode(
        "ascii"
    )


def utc_text(moment: datetime | None = None) -> str:
    """UTC with milliseconds: ``2026-11-30T13:50:01.123Z``."""
    moment = (moment or datetime.now(UTC)).astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def parse_time(text: str) -> datetime:
    """An ISO 8601 time (``Z`` or an offset; a time without one is UTC) as an aware datetime.
    Raises ValueError naming the text."""
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ValueError(f"{text!r} is not an ISO 8601 time (e.g. 2026-11-30T13:50:01Z)") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def decode(line: bytes) -> dict[str, Any]:
    """A line's fields; ValueError saying why it is not a record."""
    try:
        fields = json.loads(line)
    except (ValueError, UnicodeDecodeError):
        raise ValueError("not JSON") from None
    if not isinstance(fields, dict):
        raise ValueError("not a JSON object")
    seq = fields.get("seq")
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 1:
        raise ValueError("no seq (a positive integer)")
    for name in ("time", "type", "prev"):
        if not isinstance(fields.get(name), str):
            raise ValueError(f"no {name}")
    if fields["type"] not in TYPES:
        raise ValueError(f"unknown type {fields['type']!r}")
    return fields
