"""``airgap bundle ...``: offline bundles on the portable drive.

``import`` and ``status`` run on the registry host: the bundle is checked whole
(:func:`~airgapped_registry.bundle.format.open_bundle`), then completed against the registry,
pushed through the gateway with the sync identity, verified against its lock, and, with
``--sign-config``, signed before each tag moves, then the vulnerability DB is installed,
every digest of the lock signed, and the scanner's queue filled and waited on (what the
nightly registry job does after a sync).
"""

from __future__ import annotations

import argparse
import os
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from airgapped_registry import defaults
from airgapped_registry.bundle.format import open_bundle, parse_size
from airgapped_registry.bundle.importer import (
    DEFAULT_CHUNK_SIZE,
    BundleImportError,
    ImportOptions,
    import_bundle,
)
from airgapped_registry.cli.options import registry_files, registry_options
from airgapped_registry.cli.sign import lock_targets
from airgapped_registry.cli.sync import SignBeforeTag
from airgapped_registry.errors import AirgapError
from airgapped_registry.mirror.lock import Lock, write_atomically
from airgapped_registry.mirror.lockstore import relay_lock
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
from airgapped_registry.transfer import TrustedKeys
from airgapped_registry.transport.access import RegistryAccess
from airgapped_registry.transport.retry import RetryPolicy


def add_bundle_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    bundle = commands.add_parser("bundle", help="offline bundles: export, import, check")
    actions = bundle.add_subparsers(dest="action", required=True, metavar="ACTION")
    add_import_commands(actions)


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
    parser.add_argument(
        "--trusted-keys",
        action="append",
        metavar="PATH",
        help="a directory of *.pub transfer keys or one .pub file (repeatable; default "
        f"{defaults.TRANSFER_TRUSTED_DIR})",
    )
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
    trusted = TrustedKeys.load(
        [Path(p) for p in (args.trusted_keys or [str(defaults.TRANSFER_TRUSTED_DIR)])]
    )
    bundle = open_bundle(args.paths, trusted)
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
        with RunLock.beside(args.state), ImportLedger(args.state) as ledger:
            with target.client() as client:
                client.retry = RetryPolicy.standard()
                report = import_bundle(bundle, client, ledger, target.address, options)
            report["key_id"] = bundle.key_id
            if args.check:
                return report
            lock = Lock.from_json(bundle.lock_text, "airgap/lock.json")
            if signer is not None:
                report["after"] = after_import(args.sign_config, signer, lock, args.scan_wait)
            if args.lock_output:
                output = Path(args.lock_output)
                write_atomically(
                    output, relay_lock(lock, args.source, args.source_registry).to_json()
                )
                report["lock_output"] = os.fspath(output)
    except RunLockedError as exc:
        print(f"airgap: {exc}")
        raise SystemExit(EXIT_LOCKED) from exc
    except BundleImportError as exc:
        if exc.report:
            exc.report.setdefault("bundle", bundle.id)
        raise
    finally:
        signing.close()
    return report


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
