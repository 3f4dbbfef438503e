"""Ed25519 keys in PEM files, read the one way both key pairs of the appliance are read: the
transfer key (this package) and the audit log's checkpoint key (``audit/keys.py``).

Each refusal names the key as its caller calls it (``what``) and is raised as the caller's
error, so the two keys keep their own words and error types.
"""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from airgapped_registry.errors import AirgapError


def public_pem(public: Ed25519PublicKey) -> bytes:
    return public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def private_pem(private: Ed25519PrivateKey) -> bytes:
    return private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def private_from_pem(data: bytes, what: str, error: type[AirgapError]) -> Ed25519PrivateKey:
    """The unencrypted Ed25519 private key in ``data``, read from ``what``."""
    try:
        private = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise error(f"{what}: not an unencrypted PEM key ({exc})") from None
    if not isinstance(private, Ed25519PrivateKey):
        raise error(f"{what}: not an Ed25519 key")
    return private


def load_public(path: Path, label: str, error: type[AirgapError]) -> Ed25519PublicKey:
    """The Ed25519 public key in the PEM file at ``path`` (``label`` names the kind of key)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise error(f"{label} {path}: cannot read ({exc.strerror})") from None
    try:
        public = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        raise error(f"{label} {path}: not a PEM public key ({exc})") from None
    if not isinstance(public, Ed25519PublicKey):
        raise error(f"{label} {path}: not an Ed25519 key")
    return public
