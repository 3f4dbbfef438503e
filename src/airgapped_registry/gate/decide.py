"""One decision: nginx's sub-request in, the answer and its audit record out.

:meth:`Gate.decide` reads the request (:mod:`.request`), checks the roles (:mod:`.rbac`),
then admission for protected repositories (:mod:`.admission`), and records what the audit
log keeps (pulls, pushes, tags, deletes, blob deletes, every denial). It fails closed: an
exception becomes a denial with reason ``gate_error``, a record that cannot be written a
denial with reason ``audit_unavailable``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from airgapped_registry.gate import rbac
from airgapped_registry.gate.admission import BLOB_NOT_ADMITTED, Admission
from airgapped_registry.gate.policy import GatePolicy
from airgapped_registry.gate.request import (
    BLOB_DELETE,
    BLOB_PULL,
    BLOB_PUSH,
    DELETE,
    HEAD,
    PULL,
    PUSH,
    TAG,
    BadRequest,
    Identity,
    Request,
    classify,
    identity,
)

log = logging.getLogger(__name__)

NO_ROLE, BAD_REQUEST = "no_role", "bad_request"
AUDIT_UNAVAILABLE, GATE_ERROR = "audit_unavailable", "gate_error"
# Allowed requests the audit log keeps; every denial is kept whatever its action.
RECORDED = frozenset({PULL, PUSH, TAG, DELETE, BLOB_DELETE})
_UNAVAILABLE = frozenset({AUDIT_UNAVAILABLE, GATE_ERROR})


class AuditSink(Protocol):
    def append(self, event: Any) -> Any: ...


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str
    message: str = ""
    request: Request | None = None
    who: Identity | None = None
    digest: str | None = None  # what a manifest reference resolved to
    client: str = ""
    request_id: str = ""
    method: str = ""
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def status(self) -> int:
        return 200 if self.allowed else 403

    @property
    def action(self) -> str:
        return self.request.action if self.request else ""

    def headers(self) -> dict[str, str]:
        """The answer's headers (see docs/gate.md for the protocol)."""
        if self.allowed:
            # The reason of an allow too: nginx writes it into its access log.
            headers = {"X-Airgap-Reason": _ascii(self.reason)}
            request = self.request
            if request and request.action in (PULL, HEAD):
                headers["X-Airgap-Reference"] = self.digest or request.reference
            elif request and request.action in (PUSH, TAG, DELETE):
                headers["X-Airgap-Reference"] = request.reference
            return headers
        code = "UNAVAILABLE" if self.reason in _UNAVAILABLE else "DENIED"
        error = {
            "errors": [{"code": code, "message": self.message, "detail": {"reason": self.reason}}]
        }
        return {
            "X-Airgap-Error": json.dumps(error, separators=(",", ":"), ensure_ascii=True),
            "X-Airgap-Reason": self.reason,
        }

    def to_json(self) -> dict[str, Any]:
        request = self.request
        return {
            "decision": "allow" if self.allowed else "deny",
            "status": self.status,
            "reason": self.reason,
            "message": self.message,
            "action": request.action if request else None,
            "repository": request.repository if request else None,
            "reference": request.reference if request else None,
            "digest": self.digest,
            "identity": self.who.to_json() if self.who else None,
            "headers": self.headers(),
        }


def _described(base: Decision, headers: Mapping[str, str]) -> Decision:
    """``base`` with who asked and what for, as far as they can be read: the record of a
    failed decision still names them."""
    try:
        request = classify(headers.get("X-Original-Method", ""), headers.get("X-Original-URI", ""))
    except BadRequest:
        request = None
    return replace(base, who=identity(headers), request=request)


def _ascii(text: str) -> str:
    return "".join(char if 32 <= ord(char) < 127 else "?" for char in text)


EventFactory = Callable[[Decision], Any]


class Gate:
    """The decisions of one gate process. ``policy`` is swapped whole on a reload."""

    def __init__(
        self,
        policy: GatePolicy,
        admission: Admission,
        audit: AuditSink | None,
        event: EventFactory | None = None,
    ) -> None:
        self.policy = policy
        self.admission = admission
        self.audit = audit
        self.event = event

    def decide(self, headers: Mapping[str, str], record: bool = True) -> Decision:
        base = Decision(
            False,
            GATE_ERROR,
            client=headers.get("X-Real-IP", ""),
            request_id=headers.get("X-Request-ID", ""),
            method=headers.get("X-Original-Method", ""),
        )
        try:
            decision = self._decide(headers, base)
        except Exception as exc:  # fail closed: whatever broke, nothing is served
            log.exception("gate error on %s %s", base.method, headers.get("X-Original-URI", ""))
            decision = replace(
                _described(base, headers),
                reason=GATE_ERROR,
                message=f"the gate failed: {type(exc).__name__}",
            )
        if (
            record
            and self.audit is not None
            and (not decision.allowed or decision.action in RECORDED)
        ):
            try:
                if self.event is None:
                    raise RuntimeError("no audit event factory")
                self.audit.append(self.event(decision))
            except Exception as exc:
                log.error("audit record not written, request refused: %s", exc)
                decision = replace(
                    decision,
                    allowed=False,
                    reason=AUDIT_UNAVAILABLE,
                    message=f"the audit log cannot record this request: {exc}",
                )
        return decision

    def _decide(self, headers: Mapping[str, str], base: Decision) -> Decision:
        policy = self.policy
        who = identity(headers)
        method, uri = headers.get("X-Original-Method", ""), headers.get("X-Original-URI", "")
        try:
            request = classify(method, uri)
        except BadRequest as exc:
            return replace(base, who=who, reason=BAD_REQUEST, message=f"bad request: {exc}")
        base = replace(base, who=who, request=request)
        if who is None:
            return replace(base, reason=NO_ROLE, message="no verified client certificate")
        granted = rbac.authorize(policy, who, request)
        if not granted.allowed:
            target = f" on {request.repository}" if request.repository else ""
            return replace(
                base, reason=NO_ROLE, message=f"{who.subject} may not {request.action}{target}"
            )
        guarded = policy.protected(request.repository) and not granted.exempt
        base = replace(base, digest=request.reference if request.by_digest else None)
        allowed = replace(base, allowed=True, reason="+".join(granted.roles))
        if request.action in (PUSH, TAG, DELETE):
            self.admission.changed(request.repository)
        if request.action in (PULL, HEAD):
            if not guarded:
                digest = self.admission.resolve(
                    request.repository, request.reference, policy.backend_storage
                )
                why = "exempt" if policy.protected(request.repository) else "landing_zone"
                return replace(allowed, digest=digest, reason=f"{why}: {allowed.reason}")
            admitted = self.admission.admit(policy, request.repository, request.reference)
            if admitted.allowed:
                return replace(allowed, reason=admitted.reason, digest=admitted.digest)
            denial = replace(
                base, reason=admitted.reason, message=admitted.message, digest=admitted.digest
            )
            return self._observed(denial, allowed)
        if (
            request.action == BLOB_PULL
            and guarded
            and not self.admission.blob_admitted(policy, request.repository, request.reference)
        ):
            denial = replace(
                base,
                reason=BLOB_NOT_ADMITTED,
                message=f"{request.repository}@{request.reference}: "
                "not a blob of a manifest admitted in this repository",
            )
            return self._observed(denial, allowed)
        if request.action == BLOB_PUSH and request.mount_from:
            source_guarded = (
                policy.protected(request.mount_from)
                and not rbac.authorize(
                    policy, who, Request("GET", BLOB_PULL, request.mount_from, request.reference)
                ).exempt
            )
            if source_guarded and not self.admission.blob_admitted(
                policy, request.mount_from, request.reference
            ):
                denial = replace(
                    base,
                    reason=BLOB_NOT_ADMITTED,
                    message=f"mount from {request.mount_from}@{request.reference}: "
                    "not a blob of a manifest admitted there",
                )
                return self._observed(denial, allowed)
        return allowed

    def _observed(self, denial: Decision, allowed: Decision) -> Decision:
        """In ``observe`` mode an admission denial is recorded, not enforced."""
        if not self.policy.observing:
            return denial
        return replace(
            allowed,
            reason=f"observe: would deny: {denial.reason}",
            message=denial.message,
            digest=denial.digest,
        )
