"""Small files written whole: the state files and key pairs the engine must never leave half
written or, for a private key, readable by others even for a moment.

One writer for the audit log's state files and checkpoint key (``audit/files.py``) and the
transfer key (``transfer/keys.py``); failures are raised as the caller's error, naming what
the caller calls the file.
"""

from __future__ import annotations

import os
from pathlib import Path

from airgapped_registry.errors import AirgapError


def fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_whole(
    path: Path,
    data: bytes,
    mode: int,
    *,
    what: str,
    error: type[AirgapError],
    replace: bool = True,
) -> None:
    """Put ``data`` at ``path`` through a temporary file beside it, made with its final mode
    from the start (a stale one of the same name is removed first, so the mode applies),
    fsynced, then put in place: renamed over the old file with ``replace``; otherwise linked,
    which fails if the file appeared meanwhile, so an existing file is never overwritten.
    Then the directory is fsynced. Readers see the old file or the new one, never a part.
    A failure raises ``error`` naming ``what``."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        temporary.unlink(missing_ok=True)
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        if replace:
            os.replace(temporary, path)
        else:
            os.link(temporary, path)
            temporary.unlink()
        fsync_directory(path.parent)
    except OSError as exc:
        temporary.unlink(missing_ok=True)
        raise error(f"{what}: cannot write ({exc.strerror or exc})") from None
