"""Transfer keys and signed transfer documents (docs/transfer.md).

What one host hands another outside the registry protocol's own checks (the relay's
published lock, the registry host's inventory, a bundle's file manifest) carries a detached
signature made with the sending host's transfer key; the receiving host verifies it with the
public keys in its trusted directory before it uses the document.
"""

from __future__ import annotations

from airgapped_registry.transfer.errors import TransferError, TransferSignatureError
from airgapped_registry.transfer.keys import (
    TransferKey,
    init_key,
    key_id,
    load_key,
    load_public,
    public_path,
)
from airgapped_registry.transfer.signature import MEDIA_TYPE, PURPOSES, sha256_digest
from airgapped_registry.transfer.trust import TrustedKeys

__all__ = [
    "MEDIA_TYPE",
    "PURPOSES",
    "TransferError",
    "TransferKey",
    "TransferSignatureError",
    "TrustedKeys",
    "init_key",
    "key_id",
    "load_key",
    "load_public",
    "public_path",
    "sha256_digest",
]
