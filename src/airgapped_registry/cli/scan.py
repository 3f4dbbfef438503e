"""``airgap scan ...``: the registry host's scanner, configured by ``provenance.yaml``.

``scan db update`` installs the vulnerability DB from the local registry (the backend) as
the lock names it (:func:`airgapped_registry.scanning.db.install`).
"""

from __future__ import annotations

import argparse
from typing import Any

from airgapped_registry.scanning import config as scanning_config
from airgapped_registry.scanning import db
from airgapped_registry.transport.access import RegistryAccess


def add_scan_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    scan = commands.add_parser("scan", help="scan served digests with Trivy; its DB")
    actions = scan.add_subparsers(dest="action", required=True, metavar="ACTION")
    add_scan_db_commands(actions)


def config_option() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument(
        "--config",
        required=True,
        metavar="PROVENANCE",
        help="the registry host's provenance.yaml",
    )
    return parser


def add_scan_db_commands(actions: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``airgap scan db update``."""
    db_parser = actions.add_parser("db", help="the vulnerability DB")
    db_actions = db_parser.add_subparsers(dest="db_action", required=True, metavar="ACTION")
    update = db_actions.add_parser(
        "update",
        parents=[config_option()],
        help="install the DB from the local registry if the lock names its digest",
    )
    update.set_defaults(run=run_db_update)


def run_db_update(args: argparse.Namespace) -> dict[str, Any]:
    config = scanning_config.load(args.config)
    source = config.db
    with RegistryAccess(config.backend, name="backend").client() as client:
        report = db.install(client, config.cache_dir, source.repository, source.tag, source.lock)
    installed = db.current(config.cache_dir)
    if installed is not None:
        report["stale"] = installed.stale(source.max_age)
        report["max_age_seconds"] = int(source.max_age.total_seconds())
    return report
