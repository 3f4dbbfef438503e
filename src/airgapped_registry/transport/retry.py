"""Trying again what a retry can fix: which failures are transient, how long to wait, stopping.

A failure is transient when the same request may well succeed later: no answer at all (a
dropped connection, a timeout, a cut body), 429, or a 5xx other than a full disk. Anything
else is permanent: a refusal (4xx), content with another digest, local files, a full
destination, and above all the program's own errors (``TypeError``, ``KeyError``, ...),
which the same code would only run into again.

Waits grow from ``first`` (doubled per attempt, up to ``longest``) with jitter, so clients
that failed together do not come back together, and never come before the registry's
``Retry-After``. :func:`pause` waits unless a stop event is set (Ctrl-C, SIGTERM, a run's
deadline), so a retry never holds a run that was told to stop.
"""

from __future__ import annotations

import errno
import http.client
import math
import random
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, TypeVar

from airgapped_registry import defaults
from airgapped_registry.errors import DigestMismatchError, RegistryError

T = TypeVar("T")

# What a retry of the same request can fix at the socket level.
_TRANSIENT_ERRNOS = frozenset(
    {
        errno.ECONNRESET,
        errno.ECONNREFUSED,
        errno.ECONNABORTED,
        errno.EPIPE,
        errno.ETIMEDOUT,
        errno.EHOSTUNREACH,
        errno.ENETUNREACH,
        errno.ENETDOWN,
        errno.EAGAIN,
    }
)


def is_storage_full(exc: BaseException) -> bool:
    """Distribution answered 500 because its storage is full (``ENOSPC``, errno 28)."""
    if not isinstance(exc, RegistryError) or exc.status != 500:
        return False
    return any(_names_enospc(error.detail) for error in exc.errors) or (
        b"no space left on device" in exc.body.lower()
    )


def _names_enospc(detail: Any) -> bool:
    if isinstance(detail, dict):
        if detail.get("Err") == errno.ENOSPC:
            return True
        return any(_names_enospc(value) for value in detail.values())
    if isinstance(detail, list):
        return any(_names_enospc(value) for value in detail)
    return isinstance(detail, str) and "no space left on device" in detail.lower()


def is_transient(exc: BaseException) -> bool:
    """Whether trying the same thing again may succeed; programming errors never do."""
    if isinstance(exc, DigestMismatchError) or is_storage_full(exc):
        return False
    if isinstance(exc, RegistryError):
        if exc.status is None:
            # No answer: the cause decides (a certificate that does not verify stays so).
            return exc.__cause__ is None or is_transient(exc.__cause__)
        return exc.status == 429 or exc.status >= 500
    if isinstance(exc, ssl.SSLError):
        return isinstance(exc, ssl.SSLEOFError | ssl.SSLZeroReturnError)
    if isinstance(exc, ConnectionError | TimeoutError | http.client.HTTPException):
        return True
    if isinstance(exc, OSError):
        return exc.errno in _TRANSIENT_ERRNOS
    return False


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds a ``Retry-After`` header asks to wait (delay-seconds or an HTTP-date)."""
    if value is None:
        return None
    text = value.strip()
    if text.isdigit():
        return float(text)
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


@dataclass(frozen=True)
class Backoff:
    """Waits between tries: ``first`` doubled per attempt up to ``longest``, jittered (each
    wait between half and all of that), never before ``Retry-After`` (itself capped)."""

    first: float = defaults.SYNC_BACKOFF
    longest: float = defaults.LONGEST_RETRY_WAIT
    rng: random.Random = field(default_factory=random.Random, compare=False, repr=False)

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """The wait after failed attempt number ``attempt`` (1 is the first)."""
        ceiling = min(self.longest, self.first * 2 ** min(max(attempt, 1) - 1, 64))
        wait = ceiling / 2 + self.rng.random() * ceiling / 2 if ceiling > 0 else 0.0
        if retry_after is not None and math.isfinite(retry_after):
            # A little past the registry's time, so that clients told the same do not collide.
            wait = max(wait, retry_after * (1 + self.rng.random() * 0.1))
        return min(wait, self.longest)


def pause(seconds: float, stop: threading.Event | None = None) -> bool:
    """Wait ``seconds``; False, at once, when ``stop`` is (or becomes) set."""
    if stop is None:
        if seconds > 0:
            time.sleep(seconds)
        return True
    return not stop.wait(max(seconds, 0.0))


@dataclass
class RetryPolicy:
    """How one kind of request is retried: ``attempts`` tries in all, waits from
    ``backoff``; none after ``stop`` is set, and none that would end past ``deadline`` (a
    ``time.monotonic()`` value)."""

    attempts: int = 1
    backoff: Backoff = field(default_factory=Backoff)
    stop: threading.Event | None = None
    deadline: float | None = None

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("retry policy: attempts must be >= 1")

    @classmethod
    def standard(cls, **changes: Any) -> RetryPolicy:
        """As many tries and waits as a sync gives an entry (``defaults.SYNC_ATTEMPTS``,
        ``SYNC_BACKOFF``), unless ``changes`` say otherwise."""
        return cls(**{"attempts": defaults.SYNC_ATTEMPTS, **changes})

    def call(self, work: Callable[[], T]) -> T:
        """``work()``, tried again after transient failures; the last failure is raised."""
        attempt = 0
        while True:
            attempt += 1
            try:
                return work()
            except Exception as exc:
                if attempt >= self.attempts or not is_transient(exc):
                    raise
                wait = self.backoff.delay(attempt, getattr(exc, "retry_after", None))
                if self.deadline is not None and time.monotonic() + wait > self.deadline:
                    raise
                if not pause(wait, self.stop):
                    raise
