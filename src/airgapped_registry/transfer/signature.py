"""The detached transfer signature: a small JSON document beside the file it signs.

``<file>.sig`` (or a layer beside the file's, in an OCI artifact)::

    {"algorithm": "ed25519", "digest": "sha256:<hex of the file's bytes>",
     "format": "airgapped-registry.transfer-signature.v1", "key_id": "sha256:<hex>",
     "purpose": "lock" | "inventory" | "bundle", "signature": "<base64>"}

The Ed25519 signature is over ``b"airgapped-registry transfer-signature v1\\n" + purpose +
b"\\n" + digest``: it binds the purpose, so a signed inventory never passes for a lock, and
the digest, so a file edited after signing no longer matches. The document is written with
sorted keys and no spaces: the same file, purpose and key always give the same bytes
(Ed25519 signatures are deterministic), so publishing the same lock again changes nothing.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from airgapped_registry.transfer.errors import TransferError, TransferSignatureError

FORMAT = "airgapped-registry.transfer-signature.v1"
ALGORITHM = "ed25519"
PURPOSES = ("lock", "inventory", "bundle")
# The document's media type, when it travels as a layer of an OCI artifact.
MEDIA_TYPE = "application/vnd.airgapped-registry.transfer-signature.v1+json"
# A document is a few hundred bytes: anything much bigger is not one, and is not parsed.
MAX_DOCUMENT_BYTES = 64 * 1024
_CONTEXT = b"airgapped-registry transfer-signature v1\n"
_FIELDS = ("algorithm", "digest", "format", "key_id", "purpose", "signature")


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def signed_message(purpose: str, digest: str) -> bytes:
    """The bytes the Ed25519 signature is over."""
    return _CONTEXT + purpose.encode("ascii") + b"\n" + digest.encode("ascii")


def check_purpose(purpose: str) -> None:
    if purpose not in PURPOSES:
        raise TransferError(
            f"transfer signature purpose {purpose!r}: not one of {', '.join(PURPOSES)}"
        )


def signature_document(private: Ed25519PrivateKey, key_id: str, data: bytes, purpose: str) -> bytes:
    """The signature document of ``data`` for ``purpose``, made with ``private``."""
    check_purpose(purpose)
    digest = sha256_digest(data)
    document = {
        "format": FORMAT,
        "algorithm": ALGORITHM,
        "purpose": purpose,
        "key_id": key_id,
        "digest": digest,
        "signature": base64.b64encode(private.sign(signed_message(purpose, digest))).decode(),
    }
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode("ascii") + b"\n"


@dataclass(frozen=True)
class SignatureDocument:
    """A parsed signature document (nothing verified yet)."""

    purpose: str
    key_id: str
    digest: str
    signature: bytes


def parse_document(data: bytes, what: str) -> SignatureDocument:
    """``data`` read as a signature document, or :class:`TransferSignatureError` naming
    ``what`` (the signed document) and what is wrong with it."""

    def refuse(cause: str) -> TransferSignatureError:
        return TransferSignatureError(f"{what}: not a transfer signature document ({cause})")

    if len(data) > MAX_DOCUMENT_BYTES:
        raise refuse(f"{len(data)} bytes, at most {MAX_DOCUMENT_BYTES} expected")
    try:
        document = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise refuse("not JSON") from None
    if not isinstance(document, dict):
        raise refuse("not a JSON object")
    if document.get("format") != FORMAT:
        raise refuse(f"format {document.get('format')!r}, expected {FORMAT!r}")
    missing = [name for name in _FIELDS if not isinstance(document.get(name), str)]
    if missing:
        raise refuse(f"no string {', '.join(missing)}")
    if document["algorithm"] != ALGORITHM:
        raise refuse(f"algorithm {document['algorithm']!r}, expected {ALGORITHM!r}")
    try:
        signature = base64.b64decode(document["signature"], validate=True)
    except (binascii.Error, ValueError):
        raise refuse("signature is not base64") from None
    return SignatureDocument(
        purpose=document["purpose"],
        key_id=document["key_id"],
        digest=document["digest"],
        signature=signature,
    )
