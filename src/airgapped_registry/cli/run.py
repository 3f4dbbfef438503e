"""Running one command: parse, dispatch, print the report, one line per expected failure."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from airgapped_registry.errors import AirgapError


def run(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> int:
    """Run the command ``argv`` names; its report goes to stdout as JSON.

    Expected failures (:class:`~airgapped_registry.errors.AirgapError`, ``ValueError``) print
    one line, prefixed with the program's name, and give status 1; an interrupt gives 130.
    """
    args = parser.parse_args(argv)
    prog = parser.prog
    try:
        report = args.run(args)
    except (AirgapError, ValueError) as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    try:
        json.dump(report, sys.stdout, indent=2)
        sys.stdout.write("\n")
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader (head, grep -q) left; keep Python from failing again at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    return 0


def finish(text: str, status: int) -> NoReturn:
    """Print a report that is not JSON (a table, a summary line) and exit with ``status``."""
    try:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
        sys.stdout.flush()
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    raise SystemExit(status)
