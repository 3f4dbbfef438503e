"""Which failures are retried, how long the engine waits between tries, and that it stops.

The classification decides what a night's run does with a failure: a transient one (no
answer, 429, 5xx) is tried again after a jittered, growing wait that never comes before
the registry's ``Retry-After``; anything else, above all a programming error, is not.
"""

from __future__ import annotations

import ast
import errno
import http.client
import random
import threading
import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import pytest

from airgapped_registry.errors import DigestMismatchError, RegistryError
from airgapped_registry.transport.retry import (
    Backoff,
    is_storage_full,
    is_transient,
    parse_retry_after,
    pause,
)

URL = "http://registry.test/v2/library/app/blobs/uploads/1?_state=secret"
ENOSPC_BODY = (
    b'{"errors":[{"code":"UNKNOWN","message":"unknown error","detail":{"DriverName":'
    b'"filesystem","Enclosed":{"Op":"write","Path":"/var/lib/registry/x/data","Err":28}}}]}'
)


def registry_error(status: int | None, body: bytes = b"", cause: str | None = None):
    return RegistryError("PUT", URL, status, body, cause=cause)


@pytest.mark.parametrize(
    "error",
    [
        TypeError("unsupported operand"),
        KeyError("digest"),
        AttributeError("'NoneType' object has no attribute 'digest'"),
        AssertionError("unreachable"),
        NameError("name 'x' is not defined"),
        IndexError("list index out of range"),
        ZeroDivisionError("division by zero"),
        RecursionError("maximum recursion depth exceeded"),
        ValueError("invalid repository name"),
        NotImplementedError(),
    ],
    ids=lambda error: type(error).__name__,
)
def test_programming_errors_are_never_transient(error: BaseException) -> None:
    assert not is_transient(error)


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (registry_error(None, cause="connection closed without a response"), True),
        (registry_error(None, cause="no answer within 30 s"), True),
        (registry_error(429), True),
        (registry_error(500), True),
        (registry_error(502), True),
        (registry_error(503), True),
        (registry_error(504), True),
        (registry_error(400), False),
        (registry_error(401), False),
        (registry_error(403), False),
        (registry_error(404), False),
        (registry_error(500, ENOSPC_BODY), False),
        (DigestMismatchError("GET", URL, 200, "sha256:" + "a" * 64, "sha256:" + "b" * 64), False),
        (ConnectionResetError(errno.ECONNRESET, "Connection reset by peer"), True),
        (TimeoutError("timed out"), True),
        (http.client.IncompleteRead(b"abc", 3), True),
        (FileNotFoundError(errno.ENOENT, "No such file or directory"), False),
        (PermissionError(errno.EACCES, "Permission denied"), False),
        (OSError(errno.ENOSPC, "No space left on device"), False),
    ],
    ids=lambda value: value if isinstance(value, bool) else type(value).__name__,
)
def test_transient_failures(error: BaseException, transient: bool) -> None:
    assert is_transient(error) is transient


def test_storage_full_is_recognised_in_distributions_answer() -> None:
    assert is_storage_full(registry_error(500, ENOSPC_BODY))
    assert not is_storage_full(registry_error(500, b'{"errors":[{"code":"UNKNOWN"}]}'))
    assert not is_storage_full(registry_error(503))
    assert not is_storage_full(TypeError("x"))


@pytest.mark.parametrize("attempt", [1, 2, 3, 4, 5, 6])
def test_backoff_grows_with_jitter_and_a_cap(attempt: int) -> None:
    backoff = Backoff(first=1.0, longest=20.0, rng=random.Random(attempt))
    ceiling = min(20.0, 1.0 * 2 ** (attempt - 1))
    delays = [backoff.delay(attempt) for _ in range(200)]
    assert all(ceiling / 2 <= delay <= ceiling for delay in delays)
    assert len(set(delays)) > 100, "no jitter: every client would retry in step"


def test_backoff_never_comes_before_retry_after() -> None:
    backoff = Backoff(first=0.1, longest=60.0, rng=random.Random(1))
    assert backoff.delay(1, retry_after=7.0) >= 7.0
    assert backoff.delay(1, retry_after=7.0) <= 7.0 * 1.1
    # A Retry-After beyond the longest wait is bounded by it (the run's deadline also is).
    assert backoff.delay(1, retry_after=3600.0) == 60.0


def test_backoff_of_zero_does_not_wait() -> None:
    assert Backoff(first=0.0).delay(3) == 0.0


def test_retry_after_in_seconds_or_as_a_date() -> None:
    now = datetime(2026, 11, 30, 3, 0, 0, tzinfo=UTC)
    assert parse_retry_after("5", now) == 5.0
    assert parse_retry_after(" 120 ", now) == 120.0
    later = format_datetime(now + timedelta(seconds=42), usegmt=True)
    assert parse_retry_after(later, now) == pytest.approx(42.0)
    earlier = format_datetime(now - timedelta(seconds=42), usegmt=True)
    assert parse_retry_after(earlier, now) == 0.0
    for garbage in ("", "soon", "-3", "1e9999", None):
        assert parse_retry_after(garbage, now) is None


def test_registry_error_carries_retry_after() -> None:
    error = RegistryError("GET", URL, 429, b"", retry_after=3.0)
    assert error.retry_after == 3.0


def test_pause_ends_at_once_when_stopped() -> None:
    stop = threading.Event()
    threading.Timer(0.1, stop.set).start()
    started = time.monotonic()
    assert pause(30.0, stop) is False
    assert time.monotonic() - started < 2.0
    assert pause(0.01, threading.Event()) is True


def test_registry_errors_never_show_an_upload_session_token() -> None:
    error = registry_error(503)
    assert "_state" not in str(error) and "secret" not in str(error)
    assert "PUT http://registry.test/v2/library/app/blobs/uploads/1" in str(error)


def test_no_assert_statements_for_runtime_checks_in_the_engine() -> None:
    """``python -O`` strips asserts: a check the engine relies on must be an ``if``."""
    root = Path(__file__).resolve().parents[2] / "src" / "airgapped_registry"
    found = [
        f"{path.relative_to(root)}:{node.lineno}"
        for path in sorted(root.rglob("*.py"))
        for node in ast.walk(ast.parse(path.read_text(), str(path)))
        if isinstance(node, ast.Assert)
    ]
    assert found == []
