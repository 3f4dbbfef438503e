"""Names and digests: the distribution-spec grammar of repositories, tags and digests."""

from __future__ import annotations

import hashlib
import json
import re

_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
REPOSITORY_PATTERN = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
TAG_PATTERN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")
DIGEST_PATTERN = re.compile(r"(?:sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128})")


def digest_of(data: bytes, algorithm: str = "sha256") -> str:
    """The content digest of ``data`` in ``algorithm:hex`` form."""
    return f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"


def canonical_json(document: object) -> bytes:
    """Compact JSON in the document's own key order: the bytes a written manifest gets."""
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()


def check_repository(repository: str) -> None:
    """Refuse a repository name the distribution spec does not allow (ValueError)."""
    if not REPOSITORY_PATTERN.fullmatch(repository):
        raise ValueError(f"invalid repository name {repository!r}")


def check_digest(digest: str) -> None:
    """Refuse a string that is not a sha256 or sha512 digest (ValueError)."""
    if not DIGEST_PATTERN.fullmatch(digest):
        raise ValueError(f"invalid digest {digest!r}: expected sha256:<64 hex> or sha512:<128 hex>")
