"""The run lock: one sync at a time on a host, however the other one was started.

An exclusive ``flock`` on a file beside the state database, released by the kernel when the
holder exits, however it exits.
"""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

from airgapped_registry.errors import AirgapError
from airgapped_registry.state.store import utc_now

RUN_LOCK_NAME = "sync.lock"
# EX_TEMPFAIL from sysexits.h: cron wrappers and systemd read it as "try again later".
EXIT_LOCKED = 75


class RunLockedError(AirgapError):
    """Another sync holds the run lock."""


class RunLock:
    """An exclusive, non-blocking ``flock`` on ``<state dir>/sync.lock``.

    The file keeps the holder's pid and start time, so the refusal can say who holds it. The
    lock belongs to the open file: it is released when the holder exits or is killed, and a
    stale file left behind locks nothing.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._fd: int | None = None

    @classmethod
    def beside(cls, state_path: str | os.PathLike[str]) -> RunLock:
        return cls(Path(state_path).with_name(RUN_LOCK_NAME))

    def acquire(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise AirgapError(f"run lock {self.path}: {exc.strerror or exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = _read_holder(fd)
            os.close(fd)
            if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise RunLockedError(
                    f"another sync is running ({holder or 'holder unknown'}; run lock "
                    f"{self.path}); this run did nothing"
                ) from exc
            raise AirgapError(f"run lock {self.path}: {exc.strerror or exc}") from exc
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} since {utc_now()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            # The file stays: removing it would let a third run lock a new inode while a
            # second one still waits on the old.
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()


def _read_holder(fd: int) -> str:
    try:
        return os.pread(fd, 200, 0).decode(errors="replace").strip()
    except OSError:
        return ""
