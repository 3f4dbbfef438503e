"""Running a tool: the injected runner, run counts, and the message of a failed run."""

from __future__ import annotations

import os
import re
import subprocess
import threading
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from airgapped_registry import defaults
from airgapped_registry.errors import AirgapError

Runner = Callable[
    [Sequence[str], Mapping[str, str] | None, float], "subprocess.CompletedProcess[str]"
]

_FATAL = re.compile(r'level=fatal msg="((?:[^"\\]|\\.)*)"')
_UPLOAD_STATE = re.compile(r"\?_state=[^\s\"]*")


class ToolError(AirgapError):
    """A tool could not be run, or did not finish; ``permanent``: a retry cannot help."""

    def __init__(self, message: str, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


def run_command(
    argv: Sequence[str], env: Mapping[str, str] | None, timeout: float
) -> subprocess.CompletedProcess[str]:
    """The default runner: the program's output captured as text, no shell."""
    return subprocess.run(
        list(argv),
        env=dict(env) if env is not None else None,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


class Tools:
    """Runs tools through ``runner`` with a time limit, counting the runs of each tool.

    ``remaining``, when given, says how many seconds the caller has left (None: no limit); a
    run never gets more than that (at least a second), so a deadline bounds tools too.
    """

    def __init__(
        self,
        runner: Runner = run_command,
        timeout: float = defaults.TOOL_TIMEOUT,
        remaining: Callable[[], float | None] | None = None,
    ) -> None:
        self.runner = runner
        self.timeout = timeout
        self.remaining = remaining
        self.runs: Counter[str] = Counter()
        self._lock = threading.Lock()

    def run(
        self, tool: str, argv: Sequence[str], env: Mapping[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        with self._lock:
            self.runs[tool] += 1
        timeout = self.timeout
        left = self.remaining() if self.remaining else None
        if left is not None and left < timeout:
            timeout = max(left, 1.0)
        try:
            return self.runner(argv, env, timeout)
        except FileNotFoundError as exc:
            raise ToolError(f"{argv[0]}: not found (the {tool} program)", True) from exc
        except subprocess.TimeoutExpired as exc:
            raise ToolError(f"{tool} did not finish within {timeout:g} s") from exc


def tool_error(output: str) -> str:
    """The message of a failed skopeo or cosign run, without upload-session tokens."""
    fatal = _FATAL.findall(output)
    if fatal:
        message = fatal[-1].replace('\\"', '"')
    else:
        lines = [
            line.strip()
            for line in output.splitlines()
            if line.strip() and "level=debug" not in line and not line.startswith("WARNING")
        ]
        errors = [line for line in lines if line.startswith("Error")]
        message = (errors or lines or ["no output"])[-1]
    return _UPLOAD_STATE.sub("", message)


def write_secret(path: Path, text: str) -> None:
    """Write a new file readable by its owner only (it must not exist yet)."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        handle.write(text)
