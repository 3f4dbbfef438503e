"""What happened to one entry of a sync: its result, and why a failed one failed."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from airgapped_registry.errors import AirgapError, RegistryError
from airgapped_registry.mirror.lock import LockEntry
from airgapped_registry.mirror.plan import PlannedEntry
from airgapped_registry.state.store import EntryState
from airgapped_registry.tools.process import ToolError
from airgapped_registry.transport.retry import is_transient

OK = "ok"
FAILED = "failed"
SKIPPED = "skipped"

_log = logging.getLogger(__name__)


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
    """An entry could not be copied; ``permanent`` failures are not retried, and
    ``storage_full`` ones stop the run from starting other uploads."""

    def __init__(self, message: str, permanent: bool = False, storage_full: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent or storage_full
        self.storage_full = storage_full


def storage_full_failure(exc: RegistryError) -> EntryFailure:
    """The plain words for Distribution's ``500 UNKNOWN ... 'Err': 28``."""
    return EntryFailure(
        f"destination storage is full: {exc.method} {exc.url} was refused (no space left on "
        "device); no more uploads this run, free space and run again",
        storage_full=True,
    )


def classify(exc: BaseException) -> tuple[bool, str]:
    """``(permanent, message)`` of a failure: what a retry cannot fix is permanent."""
    if isinstance(exc, EntryFailure | ToolError):
        return exc.permanent, str(exc)
    if isinstance(exc, AirgapError | ValueError):
        return not is_transient(exc), str(exc)
    if isinstance(exc, OSError):
        return not is_transient(exc), exc.strerror or str(exc)
    # The engine's own error (TypeError, KeyError, ...): the same code would fail the same way.
    _log.debug("internal error", exc_info=exc)
    return True, f"internal error: {type(exc).__name__}: {exc} (airgap --debug shows where)"
