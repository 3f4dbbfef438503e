"""What happened to one entry of a sync: its result, and why a failed one failed."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from airgapped_registry.errors import AirgapError, DigestMismatchError, RegistryError
from airgapped_registry.mirror.lock import LockEntry
from airgapped_registry.mirror.plan import PlannedEntry
from airgapped_registry.state.store import EntryState
from airgapped_registry.tools.process import ToolError

OK = "ok"
FAILED = "failed"
SKIPPED = "skipped"


@dataclass(frozen=True)
class EntryResult:
    """What happened to one entry: ``ok`` (copied), ``failed``, or ``skipped``.

    ``in_sync``: the destination holds what the lock entry asks for (copied now, or found up
    to date). ``bytes``: blob bytes sent to the destination for it.
    """

    planned: PlannedEntry
    result: str
    detail: str
    reference: str
    in_sync: bool = False
    bytes: int = 0
    duration: float = 0.0
    attempts: int = 0
    error: str | None = None
    copier: str | None = None

    @property
    def entry(self) -> LockEntry:
        return self.planned.entry

    def to_json(self) -> dict[str, Any]:
        return {
            "entry": self.entry.reference,
            "destination": self.reference,
            "result": self.result,
            "detail": self.detail,
            "digest": self.entry.digest,
            "bytes": self.bytes,
            "duration": round(self.duration, 3),
            "attempts": self.attempts,
            "error": self.error,
            "copier": self.copier,
        }

    def state(self, run_id: int | None, fingerprint: str) -> EntryState:
        address, _, _ = self.reference.partition("/")
        return EntryState(
            reference=self.reference,
            registry=address,
            repository=self.entry.destination,
            tag=self.entry.tag,
            digest=self.entry.digest,
            result=self.result,
            in_sync=self.in_sync,
            detail=self.detail,
            bytes=self.bytes,
            duration=round(self.duration, 3),
            error=self.error,
            fingerprint=fingerprint,
            run_id=run_id,
        )


class EntryFailure(AirgapError):
    """An entry could not be copied; ``permanent`` failures are not retried."""

    def __init__(self, message: str, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


def classify(exc: BaseException) -> tuple[bool, str]:
    """``(permanent, message)`` of a failure: what a retry cannot fix is permanent."""
    if isinstance(exc, EntryFailure | ToolError):
        return exc.permanent, str(exc)
    if isinstance(exc, DigestMismatchError):
        return True, str(exc)
    if isinstance(exc, RegistryError):
        transient = exc.status is None or exc.status == 429 or exc.status >= 500
        return not transient, str(exc)
    if isinstance(exc, OSError):
        return False, exc.strerror or str(exc)
    return False, str(exc)
