"""Why an entry could not be copied, and whether trying again can help."""

from __future__ import annotations

from airgapped_registry.errors import AirgapError, DigestMismatchError, RegistryError
from airgapped_registry.tools.process import ToolError


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
