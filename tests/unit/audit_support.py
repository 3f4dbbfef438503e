"""What the audit tests share: a key pair, a log's configuration, events, the log's lines."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from airgapped_registry.audit import AuditConfig, AuditEvent, Identity, init_key

DIGEST = "sha256:" + "ab" * 32
OTHER_DIGEST = "sha256:" + "cd" * 32


def make_config(tmp_path: Path, **changes: Any) -> AuditConfig:
    """A log under ``tmp_path/log``, its key and head.json under ``tmp_path/state``; no timer
    fires during a test unless ``changes`` asks for it."""
    key = tmp_path / "state" / "checkpoint.key"
    if not key.exists():
        init_key(key)
    config = AuditConfig(
        directory=tmp_path / "log",
        key=key,
        head=tmp_path / "state" / "head.json",
        checkpoint_every=1000,
        checkpoint_interval=3600.0,
        fsync=1.0,
    )
    return dataclasses.replace(config, **changes)


def make_event(number: int = 0, **changes: Any) -> AuditEvent:
    event = AuditEvent(
        identity=Identity(
            subject="CN=node,OU=puller", serial="1F", issuer="CN=Lab CA", fingerprint="f" * 64
        ),
        client="10.89.0.5",
        request_id=f"req-{number}",
        action="pull",
        method="GET",
        repository="prod/app",
        reference="1.0",
        digest=DIGEST,
        decision="allow",
        reason="signed+pass",
    )
    return dataclasses.replace(event, **changes)


def log_lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines()
