"""``airgap bundle export|inventory|check|import|status``: offline bundles for portable drives.

The relay exports (a full bundle of its lock, or a delta against the registry host's signed
inventory); the registry host takes its inventory; either side checks a bundle or any of its
volumes. docs/bundles.md describes the format and every refusal.

``import`` and ``status`` run on the registry host: the bundle is checked whole
(:func:`~airgapped_registry.bundle.format.open_bundle`), then completed against the registry,
pushed through the gateway with the sync identity, verified against its lock, and, with
``--sign-config``, signed before each tag moves, then the vulnerability DB is installed,
every digest of the lock signed, and the scanner's queue filled and waited on (what the
nightly registry job does after a sync).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

from airgapped_registry import defaults
from airgapped_registry.bundle.export import export
from airgapped_registry.bundle.format import check_volumes, open_bundle, parse_size
from airgapped_registry.bundle.importer import (
    DEFAULT_CHUNK_SIZE,
    ImportOptions,
    import_bundle,
)
from airgapped_registry.bundle.inventory import read_inventory, write_inventory
from airgapped_registry.cli.options import registry_client, registry_files, registry_options
from airgapped_registry.cli.sign import lock_targets
from airgapped_registry.cli.sync import SignBeforeTag
from airgapped_registry.errors import AirgapError
from airgapped_registry.mirror.lock import Lock, write_atomically
from airgapped_registry.mirror.lockstore import relay_lock
from airgapped_registry.mirror.spec import load
from airgapped_registry.mirror.sync import Destination
from airgapped_registry.scanning import config as scanning_config
from airgapped_registry.scanning import db
from airgapped_registry.service import operations
from airgapped_registry.service.reconcile import reconcile
from airgapped_registry.signing.config import load_signing
from airgapped_registry.signing.signer import Signer
from airgapped_registry.state.imports import ImportLedger
from airgapped_registry.state.runlock import EXIT_LOCKED, RunLock, RunLockedError
from airgapped_registry.state.store import StateStore
from airgapped_registry.state.verdicts import VerdictStore
from airgapped_registry.tools.process import Tools
from airgapped_registry.transfer import TrustedKeys, load_key
from airgapped_registry.transport.access import RegistryAccess
from airgapped_registry.transport.retry import RetryPolicy


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
    add_import_commands(actions)


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


# -- import and status (the registry host) ---------------------------------------------------


def add_import_commands(actions: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``airgap bundle import`` and ``airgap bundle status``."""
    parser = actions.add_parser(
        "import",
        parents=[registry_options()],
        help="check a bundle whole, then push what the registry lacks, verify against its lock",
    )
    parser.add_argument(
        "paths", nargs="+", metavar="PATH", help="the bundle directory, or every volume of it"
    )
    trusted_keys_option(parser, "the bundle")
    parser.add_argument(
        "--state",
        default=str(defaults.STATE_PATH),
        metavar="DB",
        help="the state database: the resume ledger and the import record (the run lock "
        "sync.lock lives beside it)",
    )
    parser.add_argument(
        "--sign-config",
        metavar="PROVENANCE",
        help="sign each entry's digest before its tag moves, then install the vulnerability "
        "DB, sign every digest of the lock and queue the scans (the nightly job's steps)",
    )
    parser.add_argument(
        "--scan-wait",
        type=float,
        default=600.0,
        metavar="SECONDS",
        help="with --sign-config: wait this long for the scan service to judge every served "
        "digest (0: queue only, do not wait)",
    )
    parser.add_argument(
        "--lock-output",
        metavar="FILE",
        help="after the verify, write the bundle's lock rewritten for the next hop (as "
        "airgap lock fetch writes relay.lock)",
    )
    parser.add_argument(
        "--source", default="relay", help="with --lock-output: the source the lock names"
    )
    parser.add_argument(
        "--source-registry",
        metavar="HOST:PORT",
        help="with --lock-output: where that source is (the relay's registry)",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="check the bundle and its completeness against the registry; push nothing",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=defaults.SYNC_WORKERS,
        metavar="N",
        help="blobs and entries pushed side by side",
    )
    parser.add_argument(
        "--chunk-size",
        type=parse_size,
        default=DEFAULT_CHUNK_SIZE,
        metavar="SIZE",
        help="blobs larger than this are sent in chunks of it, each recorded so an "
        "interrupted import goes on after the last (e.g. 16M)",
    )
    parser.add_argument("--cosign", default="cosign", metavar="PATH", help="the cosign program")
    parser.add_argument(
        "--tool-timeout",
        type=float,
        default=defaults.TOOL_TIMEOUT,
        metavar="SECONDS",
        help="longest one cosign run may take",
    )
    parser.set_defaults(run=run_import)

    status = actions.add_parser("status", help="the last imports and their open uploads")
    status.add_argument("--state", default=str(defaults.STATE_PATH), metavar="DB")
    status.add_argument("--limit", type=int, default=10, metavar="N", help="imports shown")
    status.set_defaults(run=run_status)


def run_import(args: argparse.Namespace) -> dict[str, Any]:
    if args.lock_output and not args.source_registry:
        raise AirgapError("--lock-output needs --source-registry HOST:PORT (the relay's)")
    bundle = open_bundle(args.paths, trusted(args))
    target = Destination(args.registry, **registry_files(args))
    tools = Tools(timeout=args.tool_timeout)
    signing = ExitStack()
    signer = None
    try:
        if args.sign_config and not args.check:
            signer = signing.enter_context(
                Signer(load_signing(Path(args.sign_config)), cosign_path=args.cosign, tools=tools)
            )
        options = ImportOptions(
            workers=args.workers,
            chunk_size=args.chunk_size,
            check=args.check,
            before_tag=SignBeforeTag(signer) if signer else None,
        )
        with (
            RunLock.beside(args.state),
            ImportLedger(args.state) as ledger,
            _terminate_interrupts(),
        ):
            with target.client() as client:
                client.retry = RetryPolicy.standard()
                report = import_bundle(bundle, client, ledger, target.address, options)
            report["key_id"] = bundle.key_id
            if args.check:
                return report
            lock = Lock.from_json(bundle.lock_text, "airgap/lock.json.gz")
            if args.lock_output:
                # Before the DB update: it installs the DB the lock at scanning.db.lock names.
                output = Path(args.lock_output)
                write_atomically(
                    output, relay_lock(lock, args.source, args.source_registry).to_json()
                )
                report["lock_output"] = os.fspath(output)
            if signer is not None:
                report["after"] = after_import(args.sign_config, signer, lock, args.scan_wait)
    except RunLockedError as exc:
        print(f"airgap: {exc}", file=sys.stderr)
        raise SystemExit(EXIT_LOCKED) from exc
    except AirgapError as exc:
        # What the import did until it failed goes to stdout, as a failed sync's report.
        partial = getattr(exc, "report", None)
        if partial:
            json.dump(partial, sys.stdout, indent=2)
            sys.stdout.write("\n")
        raise
    finally:
        signing.close()
    return report


@contextmanager
def _terminate_interrupts() -> Iterator[None]:
    """SIGTERM interrupts the import as SIGINT does: the workers stop after their current
    chunk, the record says ``interrupted``, the open uploads stay recorded for the rerun."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(number: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def after_import(config_path: str, signer: Signer, lock: Lock, wait: float) -> dict[str, Any]:
    """What the nightly registry job runs after a verified sync: ``scan db update``,
    ``sign --lock``, then one reconciliation pass and the wait for the scan service."""
    report: dict[str, Any] = {"scan_db": operations.db_update(config_path)}
    signed = signer.sign_all(lock_targets(lock), expand=False)
    report["sign"] = {key: value for key, value in signed.items() if key != "results"}
    if signed["failed"]:
        raise AirgapError(f"signing after the import: {signed['errors'][0]}")
    config = scanning_config.load(config_path)
    current = operations.current_db(db.current(config.cache_dir))
    with (
        RegistryAccess(config.backend, name="backend").client() as client,
        StateStore(config.state) as store,
    ):
        verdicts = VerdictStore(store)
        reconciled = reconcile(client, verdicts, current).to_json()
        deadline = time.monotonic() + wait
        while (queue := verdicts.queue_depth()) and time.monotonic() < deadline:
            time.sleep(2)
    report["scan"] = {"reconcile": reconciled, "queue": queue, "waited": wait > 0}
    if wait > 0 and queue:
        raise AirgapError(
            f"the scan service left {queue} digests unjudged after {wait:g} s (is airgap scan "
            "serve running?)"
        )
    return report


def run_status(args: argparse.Namespace) -> dict[str, Any]:
    if not Path(args.state).exists():
        raise AirgapError(f"state database {args.state}: none yet (no import was recorded)")
    with ImportLedger(args.state) as ledger:
        return {
            "imports": [record.to_json() for record in ledger.imports(args.limit)],
            "open_uploads": ledger.sessions(),
        }
