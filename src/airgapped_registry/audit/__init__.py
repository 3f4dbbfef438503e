"""The tamper-evident audit log of the gate's decisions (docs/audit.md).

Append-only JSON lines, hash-chained, with signed checkpoints also kept in head.json outside
the log directory; rotation keeps the chain; nginx's refusals while the gate was down are
imported; records may be forwarded to syslog. :class:`AuditLog` writes, :func:`verify`
checks, :func:`query` answers.
"""

from __future__ import annotations

from airgapped_registry.audit.config import AuditConfig, SyslogConfig, audit_config
from airgapped_registry.audit.keys import init_key
from airgapped_registry.audit.log import AuditLog
from airgapped_registry.audit.query import query
from airgapped_registry.audit.records import (
    ALLOW,
    DENY,
    AuditError,
    AuditEvent,
    AuditRecord,
    Identity,
)
from airgapped_registry.audit.verify import BadRecord, VerifyResult, verify
from airgapped_registry.transfer.keys import public_path

__all__ = [
    "ALLOW",
    "DENY",
    "AuditConfig",
    "AuditError",
    "AuditEvent",
    "AuditLog",
    "AuditRecord",
    "BadRecord",
    "Identity",
    "SyslogConfig",
    "VerifyResult",
    "audit_config",
    "init_key",
    "public_path",
    "query",
    "verify",
]
