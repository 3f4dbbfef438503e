"""The gate's parts from its two files: ``gate.yaml`` (roles, admission, audit) and the
registry host's ``provenance.yaml`` (backend, state database, DB and ``max_age``, keys and
the name signatures carry), and the audit records it writes."""

from __future__ import annotations

import os
from pathlib import Path

from airgapped_registry.audit import AuditEvent, AuditLog, audit_config
from airgapped_registry.audit.records import Identity as AuditIdentity
from airgapped_registry.gate.admission import Admission, Settings
from airgapped_registry.gate.decide import Decision, Gate
from airgapped_registry.gate.policy import GatePolicy, load_policy
from airgapped_registry.scanning import config as scanning_config
from airgapped_registry.signing.config import load_signing


def settings(provenance: str | os.PathLike[str]) -> Settings:
    scanning = scanning_config.load(provenance)
    signing = load_signing(Path(provenance))
    return Settings(
        backend=scanning.backend,
        state=scanning.state,
        keys_dir=signing.keys_dir,
        registry=signing.registry,
        cache_dir=scanning.cache_dir,
        max_age=scanning.db.max_age,
    )


def audit_event(decision: Decision) -> AuditEvent:
    """The audit record of a decision (the log adds sequence, time and chain)."""
    request, who = decision.request, decision.who
    return AuditEvent(
        identity=AuditIdentity(**who.to_json()) if who else AuditIdentity(),
        client=decision.client,
        request_id=decision.request_id,
        action=request.action if request else "unknown",
        method=decision.method,
        repository=request.repository or None if request else None,
        reference=request.reference or None if request else None,
        digest=decision.digest,
        decision="allow" if decision.allowed else "deny",
        # A denial's record says what the user was told (the finding, the missing signature).
        reason=f"{decision.reason}: {decision.message}" if decision.message else decision.reason,
    )


def open_audit(policy: GatePolicy, gate_down_log: Path | None = None) -> AuditLog:
    where = f"{policy.path}: audit"
    if gate_down_log is None:
        return AuditLog.open(audit_config(policy.audit, where))
    return AuditLog.open(audit_config(policy.audit, where, gate_down_log=gate_down_log))


def build(
    policy_path: str | os.PathLike[str],
    provenance: str | os.PathLike[str],
    audit: AuditLog | None,
) -> Gate:
    policy = load_policy(policy_path)
    return Gate(policy, Admission(settings(provenance)), audit, audit_event)
