"""``airgap transfer-key init|show``: the host's transfer key (docs/transfer.md).

``init`` makes the pair when there is none and never replaces a key; ``show`` prints its id
and where its public half is, for the operator who installs it in another host's trusted
directory.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from airgapped_registry import defaults
from airgapped_registry.transfer import init_key, load_key, public_path


def add_transfer_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    key = argparse.ArgumentParser(add_help=False)
    key.add_argument(
        "--key",
        type=Path,
        default=defaults.TRANSFER_KEY,
        metavar="PATH",
        help="the private key; its public half is beside it, .pub "
        f"(default {defaults.TRANSFER_KEY})",
    )
    transfer_key = commands.add_parser(
        "transfer-key", help="the key that signs locks, inventories and bundles for other hosts"
    )
    actions = transfer_key.add_subparsers(dest="action", required=True, metavar="ACTION")
    init = actions.add_parser(
        "init", parents=[key], help="make the key pair unless there is one (never replaces it)"
    )
    init.add_argument(
        "--check", action="store_true", help="write nothing; report whether a key would be made"
    )
    init.set_defaults(run=run_init)
    actions.add_parser(
        "show", parents=[key], help="the key's id and the path of its public half"
    ).set_defaults(run=run_show)


def run_init(args: argparse.Namespace) -> dict[str, Any]:
    return init_key(args.key, check=args.check)


def run_show(args: argparse.Namespace) -> dict[str, Any]:
    key = load_key(args.key)
    public = public_path(args.key)
    return {
        "key": str(args.key),
        "key_id": key.key_id,
        "public": str(public),
        "public_present": public.is_file(),
    }
