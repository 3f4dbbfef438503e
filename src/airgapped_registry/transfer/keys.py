"""The appliance's transfer key: an Ed25519 pair whose private half signs what leaves a host
for another one (the relay's published lock, the registry host's inventory, a bundle).

The private half is ``transfer.key`` (PKCS#8 PEM, unencrypted, 0600), the public half
``transfer.pub`` beside it (SubjectPublicKeyInfo PEM, 0644): that is what the hosts that
check the documents install in their trusted directory. A key's id is
``sha256:<hex of the SHA-256 of its 32 raw public bytes>``.
"""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from airgapped_registry.files import write_whole
from airgapped_registry.transfer import pem
from airgapped_registry.transfer.errors import TransferError
from airgapped_registry.transfer.pem import private_from_pem, private_pem, public_pem
from airgapped_registry.transfer.signature import signature_document


def public_path(key: Path) -> Path:
    """Where the public half of the key at ``key`` lives: beside it, ``.pub``."""
    return key.with_suffix(".pub")


def key_id(public: Ed25519PublicKey) -> str:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return "sha256:" + hashlib.sha256(raw).hexdigest()


@dataclass(frozen=True)
class TransferKey:
    """A loaded private key: :meth:`sign` makes the detached signature document of a file."""

    path: Path
    private: Ed25519PrivateKey

    @property
    def key_id(self) -> str:
        return key_id(self.private.public_key())

    def sign(self, data: bytes, purpose: str) -> bytes:
        """The signature document (``<file>.sig`` bytes) of ``data`` for ``purpose``."""
        return signature_document(self.private, self.key_id, data, purpose)


def load_key(path: Path) -> TransferKey:
    """The private key at ``path``; refused when missing, readable by group or others, or not
    an unencrypted Ed25519 PEM key."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        hint = f"; make it with 'airgap transfer-key init --key {path}'" if exc.errno == 2 else ""
        raise TransferError(f"transfer key {path}: cannot read ({exc.strerror}){hint}") from None
    with os.fdopen(fd, "rb") as handle:
        mode = os.fstat(handle.fileno()).st_mode
        if not stat.S_ISREG(mode):
            raise TransferError(f"transfer key {path}: not a regular file")
        if mode & 0o077:
            # A key others can read signs for whoever read it: refuse before using it.
            raise TransferError(
                f"transfer key {path}: mode {stat.S_IMODE(mode):04o} lets group or others "
                f"read it; it must be 0600 (chmod 600 {path})"
            )
        data = handle.read()
    return TransferKey(path, private_from_pem(data, f"transfer key {path}", TransferError))


def load_public(path: Path) -> Ed25519PublicKey:
    """The Ed25519 public key in the PEM file at ``path``."""
    return pem.load_public(path, "transfer public key", TransferError)


def init_key(path: Path, *, check: bool = False) -> dict[str, Any]:
    """Make the pair at ``path`` (and its ``.pub``) unless the key is there; a report with
    ``changed``. An existing private key is never replaced: it is loaded (so a key others
    can read is refused) and its public half written again only when missing or different.
    With ``check``, nothing is written and the report says what would be."""
    pub = public_path(path)
    report: dict[str, Any] = {"key": str(path), "public": str(pub), "check_mode": check}
    if path.exists() or path.is_symlink():
        private = load_key(path).private
        expected = public_pem(private.public_key())
        try:
            current: bytes | None = pub.read_bytes()
        except FileNotFoundError:
            current = None
        except OSError as exc:
            raise TransferError(
                f"transfer public key {pub}: cannot read ({exc.strerror})"
            ) from None
        changed = current != expected
        if changed and not check:
            _write_new(pub, expected, 0o644, replace=True)
        return {**report, "key_id": key_id(private.public_key()), "changed": changed}
    if check:
        return {**report, "key_id": None, "changed": True}
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise TransferError(
            f"transfer key {path}: cannot make {path.parent} ({exc.strerror})"
        ) from None
    private = Ed25519PrivateKey.generate()
    _write_new(path, private_pem(private), 0o600, replace=False)
    _write_new(pub, public_pem(private.public_key()), 0o644, replace=True)
    return {**report, "key_id": key_id(private.public_key()), "changed": True}


def _write_new(path: Path, data: bytes, mode: int, *, replace: bool) -> None:
    """``path`` written whole with its final mode from the start; without ``replace`` an
    existing file is never overwritten (:func:`airgapped_registry.files.write_whole`)."""
    write_whole(path, data, mode, what=f"transfer key {path}", error=TransferError, replace=replace)
