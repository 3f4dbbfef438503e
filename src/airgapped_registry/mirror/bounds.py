"""What ends a sync early, and says why: a stop request, the run's deadline, a full destination.

A sync asks :meth:`RunBounds.halted` before it starts an entry and before each retry; the
answer is the reason the entries left over are reported "not attempted". A stop request
(Ctrl-C, SIGTERM, a destination whose storage is full) also wakes every retry wait at once,
and the deadline bounds the waits and the tools' run times, so a hung source cannot make a
night's run grow with attempts times timeout per entry.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from airgapped_registry import defaults
from airgapped_registry.transport.retry import Backoff, RetryPolicy

STORAGE_FULL = "destination storage full"


class Stop(threading.Event):
    """A request to stop that remembers its first reason (and the signal, if one sent it)."""

    def __init__(self) -> None:
        super().__init__()
        self.reason = ""
        self.signal: str | None = None
        self._first = threading.Lock()

    def request(self, reason: str, signal: str | None = None) -> None:
        with self._first:
            if not self.is_set():
                self.reason, self.signal = reason, signal
                self.set()


@dataclass
class RunBounds:
    """The limits of one run. ``deadline``: seconds from ``started`` (None: no deadline)."""

    deadline: float | None = defaults.SYNC_DEADLINE
    stop: Stop = field(default_factory=Stop)
    started: float = field(default_factory=time.monotonic)

    @property
    def deadline_at(self) -> float | None:
        """The deadline as a ``time.monotonic()`` value."""
        return None if self.deadline is None else self.started + self.deadline

    def remaining(self) -> float | None:
        """Seconds left before the deadline (0 once it passed; None: no deadline)."""
        at = self.deadline_at
        return None if at is None else max(0.0, at - time.monotonic())

    def halted(self) -> str | None:
        """Why nothing new may start now, or None."""
        if self.stop.is_set():
            return self.stop.reason or "stopped"
        if self.remaining() == 0.0:
            return f"the run's deadline ({self.deadline:g} s) passed"
        return None

    def storage_full(self) -> None:
        """The destination cannot take another blob: start no more uploads."""
        self.stop.request(STORAGE_FULL)

    def policy(self, attempts: int, first_wait: float) -> RetryPolicy:
        """Retries of single requests within these bounds."""
        return RetryPolicy(
            attempts=attempts,
            backoff=Backoff(first=first_wait),
            stop=self.stop,
            deadline=self.deadline_at,
        )

    def wait_for(self, event: threading.Event) -> bool:
        """Wait for ``event`` (another entry's claim); False when the run halted first."""
        while not event.wait(0.1):
            if self.halted():
                return False
        return True
