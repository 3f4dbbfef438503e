"""The keys a host trusts for transfer documents, and the check of a signature against them.

A trusted directory holds public keys, one ``*.pub`` (PEM) each: the registry host trusts
the relays' transfer keys (the locks they publish), a relay the registry hosts' keys (the
inventories they export). Adding a key file is how a new key is trusted; removing it, how an
old one stops being.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from airgapped_registry.transfer.errors import TransferError, TransferSignatureError
from airgapped_registry.transfer.keys import key_id, load_public
from airgapped_registry.transfer.signature import (
    check_purpose,
    parse_document,
    sha256_digest,
    signed_message,
)


@dataclass(frozen=True)
class TrustedKey:
    public: Ed25519PublicKey
    path: Path  # the file it was read from, for messages


@dataclass(frozen=True)
class TrustedKeys:
    """Public keys by key id; :meth:`verify` accepts a document signed by any of them."""

    keys: Mapping[str, TrustedKey]
    sources: tuple[Path, ...]

    @classmethod
    def load(cls, paths: Sequence[Path]) -> TrustedKeys:
        """Every key in ``paths``: each a directory (its ``*.pub`` files) or one ``.pub``
        file. A path that does not exist, a file that is not an Ed25519 public key, or no key
        at all is refused: verifying against an empty or half-read set would refuse every
        document for a reason that says nothing of the real one."""
        keys: dict[str, TrustedKey] = {}
        sources = tuple(Path(path) for path in paths)
        for path in sources:
            if path.is_dir():
                try:
                    files = sorted(p for p in path.iterdir() if p.suffix == ".pub")
                except OSError as exc:
                    raise TransferError(
                        f"trusted transfer keys {path}: cannot list ({exc.strerror})"
                    ) from None
            elif path.exists():
                files = [path]
            else:
                raise TransferError(
                    f"trusted transfer keys {path}: no such file or directory (install the "
                    "public transfer keys of the hosts this one takes documents from)"
                )
            for file in files:
                public = load_public(file)
                keys.setdefault(key_id(public), TrustedKey(public, file))
        if not keys:
            named = ", ".join(str(path) for path in sources) or "(no path given)"
            raise TransferError(f"trusted transfer keys {named}: no *.pub key found")
        return cls(keys, sources)

    @property
    def key_ids(self) -> list[str]:
        return sorted(self.keys)

    def verify(self, data: bytes, signature: bytes | None, *, purpose: str, what: str) -> str:
        """The id of the trusted key that signed ``data`` for ``purpose``; otherwise
        :class:`TransferSignatureError` naming ``what`` and the cause."""
        check_purpose(purpose)
        if signature is None:
            raise TransferSignatureError(f"{what}: not signed (no transfer signature)")
        document = parse_document(signature, what)
        if document.purpose != purpose:
            raise TransferSignatureError(
                f"{what}: signature is for purpose {document.purpose!r}, not {purpose!r}"
            )
        trusted = self.keys.get(document.key_id)
        if trusted is None:
            raise TransferSignatureError(
                f"{what}: signed by untrusted key {document.key_id} "
                f"(trusted: {', '.join(self._described())})"
            )
        actual = sha256_digest(data)
        if document.digest != actual:
            raise TransferSignatureError(
                f"{what}: digest mismatch, signed {document.digest} but it is {actual} "
                "(edited after signing)"
            )
        try:
            trusted.public.verify(document.signature, signed_message(purpose, document.digest))
        except InvalidSignature:
            raise TransferSignatureError(
                f"{what}: signature invalid (does not verify with trusted key "
                f"{document.key_id} from {trusted.path})"
            ) from None
        return document.key_id

    def _described(self) -> list[str]:
        return [f"{key} ({self.keys[key].path})" for key in self.key_ids]
