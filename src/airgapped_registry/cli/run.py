"""Running one command: parse, dispatch, print the report, one line per expected failure."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from types import FrameType
from typing import NoReturn, Protocol

from airgapped_registry.errors import AirgapError

# EX_SOFTWARE from sysexits.h: the program's own fault, not the operator's.
EXIT_INTERNAL_ERROR = 70


class StopRequest(Protocol):
    signal: str | None

    def request(self, reason: str, signal: str | None = None) -> None: ...


def run(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> int:
    """Run the command ``argv`` names; its report goes to stdout as JSON.

    Expected failures (:class:`~airgapped_registry.errors.AirgapError`, ``ValueError``) print
    one line, prefixed with the program's name, and give their ``exit_status`` (1); an
    interrupt gives 130; any other exception is a bug: one line too, status 70. With
    ``--debug``, the traceback comes before that line, and the engine logs what it does.
    """
    args = parser.parse_args(argv)
    prog = parser.prog
    debug = getattr(args, "debug", False)
    if debug:
        logging.basicConfig(level=logging.DEBUG, format=f"{prog}: %(name)s: %(message)s")
    try:
        report = args.run(args)
    except (AirgapError, ValueError) as exc:
        if debug:
            traceback.print_exc()
        print(f"{prog}: {exc}", file=sys.stderr)
        return getattr(exc, "exit_status", 1)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if debug:
            traceback.print_exc()
        hint = "" if debug else f" (a bug; {prog} --debug shows the traceback)"
        print(f"{prog}: internal error: {type(exc).__name__}: {exc}{hint}", file=sys.stderr)
        return EXIT_INTERNAL_ERROR
    try:
        json.dump(report, sys.stdout, indent=2)
        sys.stdout.write("\n")
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader (head, grep -q) left; keep Python from failing again at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    return 0


@contextmanager
def stop_on_signals(stop: StopRequest) -> Iterator[None]:
    """SIGINT and SIGTERM ask ``stop`` to stop, instead of killing the command mid-write: it
    stops at once, reports what it did, and exits 128 + the signal's number. A second signal
    interrupts outright. The previous handlers come back after."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signals are delivered to the main thread only
        return

    def handler(number: int, frame: FrameType | None) -> None:
        name = signal.Signals(number).name
        if stop.signal:
            raise KeyboardInterrupt
        stop.request(f"interrupted ({name})", name)

    handlers: dict[int, Callable[[int, FrameType | None], object] | int | None] = {}
    for stopping in (signal.SIGINT, signal.SIGTERM):
        handlers[stopping] = signal.signal(stopping, handler)
    try:
        yield
    finally:
        for number, previous in handlers.items():
            signal.signal(number, previous)


def finish(text: str, status: int) -> NoReturn:
    """Print a report that is not JSON (a table, a summary line) and exit with ``status``."""
    try:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
        sys.stdout.flush()
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    raise SystemExit(status)
