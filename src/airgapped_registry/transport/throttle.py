"""Spacing the requests to one registry, for sources that ask for a rate limit."""

from __future__ import annotations

import threading
import time


class Throttle:
    """Spaces calls to one source so they stay under ``rate`` per second."""

    def __init__(self, rate: float | None) -> None:
        self.interval = 1 / rate if rate else 0.0
        self._next = 0.0
        self._lock = threading.Lock()

    def wait(self) -> None:
        if not self.interval:
            return
        with self._lock:
            now = time.monotonic()
            start = max(now, self._next)
            self._next = start + self.interval
        if start > now:
            time.sleep(start - now)
