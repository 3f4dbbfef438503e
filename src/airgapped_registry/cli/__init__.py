"""The ``airgap`` command: the engine's entry point for operators, cron and the modules' peers.

Each command group lives in its own module and registers its subcommands through one
``add_*_commands`` function that sets ``run`` on each parser; :func:`main` only builds the
parser and hands it to :func:`~airgapped_registry.cli.run.run`, which dispatches and turns
expected failures into one line on stderr and exit status 1. Reports go to stdout as JSON.
Nothing below the CLI imports it.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from airgapped_registry import __version__
from airgapped_registry.cli.audit import add_audit_commands
from airgapped_registry.cli.bundle import add_bundle_commands
from airgapped_registry.cli.gate import add_gate_commands
from airgapped_registry.cli.lock import add_lock_commands
from airgapped_registry.cli.policy import add_policy_commands
from airgapped_registry.cli.run import run
from airgapped_registry.cli.scan import add_scan_commands
from airgapped_registry.cli.sign import add_sign_commands
from airgapped_registry.cli.sync import add_sync_commands
from airgapped_registry.cli.transfer import add_transfer_commands


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(
        prog="airgap", description="Airgapped Registry engine: mirror, verify, gate."
    )
    root.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    root.add_argument(
        "--debug",
        action="store_true",
        help="on failure, show the traceback before the one-line message; log what the engine does",
    )
    commands = root.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_lock_commands(commands)
    add_sync_commands(commands)
    add_scan_commands(commands)
    add_sign_commands(commands)
    add_gate_commands(commands)
    add_audit_commands(commands)
    add_policy_commands(commands)
    add_transfer_commands(commands)
    add_bundle_commands(commands)
    return root


def main(argv: Sequence[str] | None = None) -> int:
    return run(parser(), argv)
