"""What a transfer key or a transfer signature refuses."""

from __future__ import annotations

from airgapped_registry.errors import AirgapError


class TransferError(AirgapError):
    """A transfer key or the trusted keys cannot be used: missing, unreadable, not Ed25519,
    readable by others. The message names the file and the cause."""


class TransferSignatureError(TransferError):
    """A transfer document is not signed, or its signature does not hold under the trusted
    keys. The message names the document and the cause."""
