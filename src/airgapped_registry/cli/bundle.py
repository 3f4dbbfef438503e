"""``airgap bundle export|inventory|check``: offline bundles for portable drives.

The relay exports (a full bundle of its lock, or a delta against the registry host's signed
inventory); the registry host takes its inventory; either side checks a bundle or any of its
volumes. docs/bundles.md describes the format and every refusal.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from airgapped_registry import defaults
from airgapped_registry.bundle.export import export
from airgapped_registry.bundle.format import check_volumes, parse_size
from airgapped_registry.bundle.inventory import read_inventory, write_inventory
from airgapped_registry.cli.options import registry_client, registry_options
from airgapped_registry.mirror.spec import load
from airgapped_registry.transfer import TrustedKeys, load_key


def trusted_keys_option(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument(
        "--trusted-keys",
        action="append",
        type=Path,
        metavar="PATH",
        help=f"public transfer keys trusted for {what}: a directory of *.pub or one file; "
        f"repeatable (default {defaults.TRANSFER_TRUSTED_DIR})",
    )


def trusted(args: argparse.Namespace) -> TrustedKeys:
    return TrustedKeys.load(args.trusted_keys or [defaults.TRANSFER_TRUSTED_DIR])


def transfer_key_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--transfer-key",
        type=Path,
        default=defaults.TRANSFER_KEY,
        metavar="PATH",
        help=f"this host's transfer key, which signs (default {defaults.TRANSFER_KEY})",
    )


def workers_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--workers",
        type=int,
        default=defaults.SYNC_WORKERS,
        metavar="N",
        help="downloads (or repositories walked) side by side",
    )


def add_bundle_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    bundle = commands.add_parser("bundle", help="offline bundles for portable drives")
    actions = bundle.add_subparsers(dest="action", required=True, metavar="ACTION")

    export_parser = actions.add_parser(
        "export",
        parents=[registry_options()],
        help="write a signed bundle of a lock's content from a registry (the relay's own); "
        "a delta with --inventory",
    )
    export_parser.add_argument("--lock", required=True, metavar="FILE", help="the lock file")
    export_parser.add_argument(
        "--output", required=True, type=Path, metavar="DIR", help="the bundle directory to make"
    )
    transfer_key_option(export_parser)
    export_parser.add_argument(
        "--spec",
        metavar="FILE",
        help="the mirror list: the upstream signature keys it names go into the bundle",
    )
    export_parser.add_argument(
        "--inventory",
        metavar="FILE",
        help="the registry host's signed inventory: leave out what it holds (a delta)",
    )
    trusted_keys_option(export_parser, "the inventory")
    export_parser.add_argument(
        "--volume-size",
        metavar="SIZE",
        help="split into vol-001.. directories of at most SIZE bytes each (e.g. 4G, 700M)",
    )
    workers_option(export_parser)
    export_parser.set_defaults(run=run_export)

    inventory_parser = actions.add_parser(
        "inventory",
        parents=[registry_options()],
        help="write a signed list of every manifest and blob digest a registry holds",
    )
    inventory_parser.add_argument("--output", required=True, metavar="FILE")
    transfer_key_option(inventory_parser)
    inventory_parser.add_argument(
        "--lock", metavar="FILE", help="the lock the registry was last synced to (recorded)"
    )
    workers_option(inventory_parser)
    inventory_parser.set_defaults(run=run_inventory)

    check_parser = actions.add_parser(
        "check",
        help="check a bundle or any of its volumes: signature, paths, every file's checksum",
    )
    check_parser.add_argument(
        "paths", nargs="+", metavar="PATH", help="a bundle directory or volume directories"
    )
    trusted_keys_option(check_parser, "the bundle")
    check_parser.set_defaults(run=run_check)


def run_export(args: argparse.Namespace) -> dict[str, Any]:
    key = load_key(args.transfer_key)
    spec = load(args.spec) if args.spec else None
    inventory = read_inventory(args.inventory, trusted(args)) if args.inventory else None
    volume_size = parse_size(args.volume_size) if args.volume_size else None
    with registry_client(args) as client:
        return export(
            args.lock,
            client,
            args.output,
            key,
            spec=spec,
            inventory=inventory,
            volume_size=volume_size,
            workers=args.workers,
        )


def run_inventory(args: argparse.Namespace) -> dict[str, Any]:
    key = load_key(args.transfer_key)
    with registry_client(args) as client:
        return write_inventory(client, args.output, key, lock=args.lock, workers=args.workers)


def run_check(args: argparse.Namespace) -> dict[str, Any]:
    started = time.monotonic()
    checked = check_volumes(args.paths, trusted(args))
    count = checked.count
    return {
        "bundle": checked.id,
        "kind": checked.document["kind"],
        "key_id": checked.key_id,
        "lock_digest": checked.document["lock_digest"],
        "volumes": count,
        "checked_volumes": sorted(checked.volumes),
        "missing_volumes": [n for n in range(1, count + 1) if n not in checked.volumes],
        "files": checked.files_checked,
        "bytes": checked.bytes_read,
        "seconds": round(time.monotonic() - started, 3),
    }
