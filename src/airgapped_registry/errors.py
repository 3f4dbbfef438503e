"""Failures the engine reports to its callers (CLI, Ansible modules, cron, the gate).

Every message names the object concerned and the cause, so that one line on stderr or in
``fail_json`` is enough to act on it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

# An upload session's state in its URL (Distribution's ``_state``, an HMAC-signed token).
_UPLOAD_STATE = re.compile(r"([?&])_state=[A-Za-z0-9_.~%=-]*&?")


class AirgapError(Exception):
    """Base of every failure the engine expects and reports without a traceback.

    ``exit_status``: what the CLI exits with when this failure ends a command.
    """

    exit_status = 1


class InvariantError(AirgapError):
    """What the engine's own logic rules out happened (a bug, or a lock edited by hand): the
    message names the object. Checked with ``if``, since ``python -O`` drops asserts."""


class Interrupted(AirgapError):
    """A signal stopped the command (after it wrote what it had done)."""

    def __init__(self, signal_name: str, signal_number: int) -> None:
        super().__init__(f"stopped by {signal_name}")
        self.exit_status = 128 + signal_number


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
    TLS handshake failure, timeout); ``cause`` then says why. ``retry_after``: the seconds
    the registry's ``Retry-After`` asked to wait. ``url`` never holds an upload session's
    ``_state`` token (a bearer of the session, which must not reach logs or reports).
    """

    def __init__(
        self,
        method: str,
        url: str,
        status: int | None,
        body: bytes = b"",
        cause: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        self.method = method
        self.url = redacted(url)
        self.status = status
        self.body = body
        self.errors = parse_error_body(body)
        self.cause = cause
        self.retry_after = retry_after
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


def redacted(text: str) -> str:
    """``text`` without the ``_state`` tokens of the upload URLs it names."""
    return _UPLOAD_STATE.sub(_keep_separator, text)


def _keep_separator(match: re.Match[str]) -> str:
    # "?_state=x&digest=y" keeps "?digest=y"; "?_state=x" loses its "?" too.
    return match[1] if match[0].endswith("&") else ""


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
