"""Failures the engine reports to its callers (CLI, Ansible modules, cron, the gate).

Every message names the object concerned and the cause, so that one line on stderr or in
``fail_json`` is enough to act on it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass


class AirgapError(Exception):
    """Base of every failure the engine expects and reports without a traceback."""


@dataclass(frozen=True)
class RegistryErrorDetail:
    """One entry of the ``errors`` list of an OCI distribution error body."""

    code: str
    message: str
    detail: object = None

    def __str__(self) -> str:
        text = f"{self.code}: {self.message}" if self.message else self.code
        if self.detail in (None, "", {}, []):
            return text
        if isinstance(self.detail, dict):
            detail = ", ".join(f"{key}={value}" for key, value in self.detail.items())
        else:
            detail = str(self.detail)
        return f"{text} ({detail})"


class RegistryError(AirgapError):
    """A registry request failed: an unexpected HTTP status, or no answer at all.

    ``status`` is ``None`` when the request never got an HTTP answer (connection refused,
    TLS handshake failure, timeout); ``cause`` then says why.
    """

    def __init__(
        self,
        method: str,
        url: str,
        status: int | None,
        body: bytes = b"",
        cause: str | None = None,
    ) -> None:
        self.method = method
        self.url = url
        self.status = status
        self.body = body
        self.errors = parse_error_body(body)
        self.cause = cause
        super().__init__(self._message())

    @property
    def codes(self) -> list[str]:
        return [error.code for error in self.errors]

    def _message(self) -> str:
        where = f"{self.method} {self.url}"
        if self.status is None:
            return f"{where}: {self.cause or 'no response'}"
        if self.cause:
            return f"{where}: {self.status} {self.cause}"
        if self.errors:
            return f"{where}: {self.status} " + "; ".join(str(e) for e in self.errors)
        text = self.body[:200].decode("utf-8", "replace").strip()
        return f"{where}: {self.status} {text}" if text else f"{where}: {self.status}"


class DigestMismatchError(RegistryError):
    """The registry answered with content whose digest is not the one asked or announced."""

    def __init__(self, method: str, url: str, status: int, expected: str, actual: str) -> None:
        self.expected = expected
        self.actual = actual
        super().__init__(
            method, url, status, cause=f"digest mismatch: expected {expected}, got {actual}"
        )


def parse_error_body(body: bytes) -> list[RegistryErrorDetail]:
    """Read the distribution-spec error list; anything else (HTML from a proxy) yields []."""
    if not body:
        return []
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return []
    if not isinstance(document, dict) or not isinstance(document.get("errors"), list):
        return []
    return [
        RegistryErrorDetail(
            code=str(entry.get("code", "UNKNOWN")),
            message=str(entry.get("message", "")),
            detail=entry.get("detail"),
        )
        for entry in document["errors"]
        if isinstance(entry, dict)
    ]


class ContentError(AirgapError):
    """Content is not what its format says: a manifest that is not JSON, a bad descriptor,
    a chart archive without ``Chart.yaml``. The message names the content and the problem."""


class UrlError(AirgapError):
    """A plain HTTP(S) ``GET`` outside the registry API (a Helm repository's files) failed."""
