"""``airgap scan ...``: the registry host's scanner, configured by ``provenance.yaml``.

``scan db update`` installs the vulnerability DB from the local registry (the backend) as
the lock names it (:func:`airgapped_registry.scanning.db.install`). ``scan now``, ``status``,
``reconcile`` and ``serve`` are the scan service's (:mod:`airgapped_registry.service`).
"""

from __future__ import annotations

import argparse
import logging
import threading
from typing import Any

from airgapped_registry.cli.run import stop_on_signals
from airgapped_registry.errors import AirgapError
from airgapped_registry.scanning import config as scanning_config
from airgapped_registry.scanning import db
from airgapped_registry.service import operations
from airgapped_registry.service.reconcile import reconcile
from airgapped_registry.service.server import ScanService
from airgapped_registry.service.setup import service_parts
from airgapped_registry.state.store import StateStore
from airgapped_registry.state.verdicts import VerdictStore
from airgapped_registry.transport.access import RegistryAccess


def add_scan_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    scan = commands.add_parser("scan", help="scan served digests with Trivy; its DB")
    actions = scan.add_subparsers(dest="action", required=True, metavar="ACTION")
    add_scan_db_commands(actions)
    add_scan_service_commands(actions)


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
    return operations.db_update(args.config)


# -- the scan service's commands (now, status, reconcile, serve) ---------------------------


def add_scan_service_commands(actions: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``airgap scan now|status|reconcile|serve``."""
    now = actions.add_parser(
        "now",
        parents=[config_option()],
        help="scan digests now (even with a current verdict), record and attest their verdicts",
    )
    now.add_argument("references", nargs="*", metavar="REPO@DIGEST|REPO:TAG")
    now.add_argument("--all", action="store_true", help="every tag the backend serves")
    now.add_argument("--cosign", default="cosign", metavar="PATH", help="the cosign program")
    now.set_defaults(run=run_now)
    status = actions.add_parser(
        "status", parents=[config_option()], help="verdicts as they stand now (stale included)"
    )
    status.add_argument("--repository", metavar="R", help="only this repository")
    status.add_argument(
        "digest", nargs="?", metavar="DIGEST", help="only this digest, with its findings"
    )
    status.set_defaults(run=run_status)
    reconcile_parser = actions.add_parser(
        "reconcile",
        parents=[config_option()],
        help="one reconciliation pass: queue every served digest without a current verdict",
    )
    reconcile_parser.set_defaults(run=run_reconcile)
    serve = actions.add_parser(
        "serve",
        parents=[config_option()],
        help="the scan service: notifications, queue, workers, reconciliation (until SIGTERM)",
    )
    serve.add_argument("--cosign", default="cosign", metavar="PATH", help="the cosign program")
    serve.set_defaults(run=run_serve)


def run_now(args: argparse.Namespace) -> dict[str, Any]:
    report = operations.now(args.config, args.references, args.all, force=True, cosign=args.cosign)
    if report["errors"]:
        raise ScanNowError(report)
    return report


class ScanNowError(AirgapError):
    """Some digests could not be scanned; the report says which."""

    def __init__(self, report: dict[str, Any]) -> None:
        super().__init__("; ".join(report["errors"]))
        self.report = report


def run_status(args: argparse.Namespace) -> dict[str, Any]:
    return operations.status(args.config, args.repository, args.digest)


def run_reconcile(args: argparse.Namespace) -> dict[str, Any]:
    config = scanning_config.load(args.config)
    current = operations.current_db(db.current(config.cache_dir))
    with (
        RegistryAccess(config.backend, name="backend").client() as client,
        StateStore(config.state) as store,
    ):
        verdicts = VerdictStore(store)
        report = reconcile(client, verdicts, current).to_json()
        report["queue"] = verdicts.queue_depth()
    return report


class _Stop:
    """The stop request SIGTERM and SIGINT make (``cli.run.stop_on_signals``)."""

    def __init__(self) -> None:
        self.signal: str | None = None
        self.event = threading.Event()

    def request(self, reason: str, signal: str | None = None) -> None:
        self.signal = signal
        self.event.set()


def run_serve(args: argparse.Namespace) -> dict[str, Any]:
    stop = _Stop()
    with service_parts(args.config, cosign=args.cosign) as parts:
        service = ScanService(parts.settings, parts.scanner, parts.provenance, lambda: parts.client)
        logging.getLogger("airgapped_registry").setLevel(logging.INFO)
        if not logging.getLogger().handlers:
            logging.basicConfig(level=logging.INFO, format="airgap scan serve: %(message)s")
        with stop_on_signals(stop):
            service.serve(stop.event)
        health = service.health()
    return {"stopped": stop.signal, "queue": health["queue"]}
