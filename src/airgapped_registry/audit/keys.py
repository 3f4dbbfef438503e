"""The checkpoint key: an Ed25519 pair that signs the log's checkpoints.

The private half (PKCS#8 PEM, 0600) stays on the registry host, read by the gate; the public
half (``<key>.pub``, SubjectPublicKeyInfo PEM) is what ``airgap audit verify`` needs, and is
fetched to the controller so a log can be checked away from the host that wrote it.
A key's id is the first 16 hex digits of the SHA-256 of its raw public bytes.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from airgapped_registry.audit.files import write_atomically
from airgapped_registry.audit.records import AuditError, canonical
from airgapped_registry.transfer import pem
from airgapped_registry.transfer.keys import public_path
from airgapped_registry.transfer.pem import private_from_pem, private_pem, public_pem


def key_id(public: Ed25519PublicKey) -> str:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def init_key(key: Path) -> dict[str, Any]:
    """Make the pair at ``key`` (and ``key.pub``) unless it is there; a report with
    ``changed``. An existing private key is kept and its public half rewritten if missing."""
    pub = public_path(key)
    if key.exists():
        private = load_private(key)
        changed = False
        if not pub.exists():
            write_atomically(pub, public_pem(private.public_key()), 0o644, f"checkpoint key {pub}")
            changed = True
        return {
            "changed": changed,
            "key": str(key),
            "public_key": str(pub),
            "key_id": key_id(private.public_key()),
        }
    try:
        key.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise AuditError(
            f"checkpoint key {key}: cannot make {key.parent} ({exc.strerror})"
        ) from None
    private = Ed25519PrivateKey.generate()
    write_atomically(key, private_pem(private), 0o600, f"checkpoint key {key}")
    write_atomically(pub, public_pem(private.public_key()), 0o644, f"checkpoint key {pub}")
    return {
        "changed": True,
        "key": str(key),
        "public_key": str(pub),
        "key_id": key_id(private.public_key()),
    }


def load_private(key: Path) -> Ed25519PrivateKey:
    try:
        data = key.read_bytes()
    except OSError as exc:
        raise AuditError(
            f"checkpoint key {key}: cannot read ({exc.strerror}); make it with "
            f"'airgap audit init --key {key}'"
        ) from None
    return private_from_pem(data, f"checkpoint key {key}", AuditError)


def load_public(path: Path) -> Ed25519PublicKey:
    return pem.load_public(path, "checkpoint public key", AuditError)


def sign(private: Ed25519PrivateKey, fields: dict[str, Any]) -> str:
    """The base64 signature over the canonical JSON of ``fields``."""
    return base64.b64encode(private.sign(canonical(fields))).decode("ascii")


def signature_problem(public: Ed25519PublicKey, record: dict[str, Any]) -> str | None:
    """Why a checkpoint record's signature does not hold under ``public``, or None."""
    signature = record.get("signature")
    if not isinstance(signature, str):
        return "checkpoint without a signature"
    signed = {name: value for name, value in record.items() if name != "signature"}
    if signed.get("key") != key_id(public):
        return (
            f"checkpoint signed by key {signed.get('key')!r}, not {key_id(public)} (the key given)"
        )
    try:
        public.verify(base64.b64decode(signature, validate=True), canonical(signed))
    except (InvalidSignature, binascii.Error, ValueError):
        return "checkpoint signature does not verify with the key given"
    return None
