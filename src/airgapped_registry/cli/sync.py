"""``airgap plan|sync|verify``: bring a destination registry in line with a lock, and check it.

Run on the relay (``sync --relock``, from the upstream) and on the registry host (from the
relay), by cron and by the ``airgap_sync``/``airgap_verify`` modules' peers.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from airgapped_registry import defaults
from airgapped_registry.cli.options import registry_files, registry_options
from airgapped_registry.cli.run import finish, stop_on_signals
from airgapped_registry.errors import AirgapError, Interrupted
from airgapped_registry.mirror.bounds import Stop
from airgapped_registry.mirror.lock import Lock, read_lock, write_atomically
from airgapped_registry.mirror.outcome import EntryResult
from airgapped_registry.mirror.plan import human_bytes, plan
from airgapped_registry.mirror.relock import relock
from airgapped_registry.mirror.spec import load
from airgapped_registry.mirror.sync import Destination, SyncOptions, sync
from airgapped_registry.mirror.verify import verify
from airgapped_registry.signing.config import load_signing
from airgapped_registry.signing.signer import FAILED, Signer, SigningError
from airgapped_registry.state.runlock import EXIT_LOCKED, RunLock, RunLockedError
from airgapped_registry.state.store import StateStore, recorded_fingerprints
from airgapped_registry.tools.process import Tools
from airgapped_registry.transport.retry import RetryPolicy

# ``airgap sync``'s options that are SyncOptions fields, defaults from there: (flag, field,
# type, metavar, help). --tool-timeout is the field ``timeout``: --timeout is the requests'.
SYNC_TUNING: tuple[tuple[str, str, type, str, str | None], ...] = (
    ("--attempts", "attempts", int, "N", "tries per entry"),
    ("--backoff", "backoff", float, "SECONDS", "first wait between tries, doubled after each"),
    ("--retry-times", "retry_times", int, "N", "skopeo's own retries within one try"),
    ("--tool-timeout", "timeout", float, "SECONDS", "longest one skopeo or cosign run may take"),
    (
        "--engine-copy-max-bytes",
        "engine_copy_max_bytes",
        int,
        "BYTES",
        "entries with at most this much left to upload are copied by the engine, "
        "heavier ones by skopeo; 0: skopeo copies every entry",
    ),
    ("--skopeo", "skopeo", str, "PATH", None),
    ("--cosign", "cosign", str, "PATH", None),
)


def _dest(flag: str) -> str:
    """The attribute argparse stores ``flag`` under."""
    return flag.removeprefix("--").replace("-", "_")


def destination_options() -> argparse.ArgumentParser:
    """The lock to read and how many entries at once (beside :func:`registry_options`)."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--lock", required=True, metavar="FILE", help="the lock file")
    parser.add_argument(
        "--workers",
        type=int,
        default=defaults.SYNC_WORKERS,
        metavar="N",
        help="entries handled side by side",
    )
    return parser


def destination(args: argparse.Namespace) -> Destination:
    return Destination(args.registry, **registry_files(args))


def read_lock_file(path: str) -> Lock:
    found = read_lock(path)
    if found is None:
        raise AirgapError(f"{path}: no lock file (write one with airgap lock)")
    return found


def add_sync_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    common = [registry_options(), destination_options()]
    plan_parser = commands.add_parser(
        "plan",
        parents=common,
        help="what a sync would copy: one manifest HEAD per entry, nothing sent to the sources",
    )
    plan_parser.add_argument("--json", action="store_true", help="JSON instead of a table")
    plan_parser.add_argument(
        "--blobs",
        action="store_true",
        help="also HEAD each blob of the entries to copy, for exact missing bytes",
    )
    plan_parser.add_argument(
        "--state",
        default=str(defaults.STATE_PATH),
        metavar="DB",
        help="sync state read, if it exists, to spot lock entries changed since the last sync",
    )
    plan_parser.set_defaults(run=run_plan)

    sync_parser = commands.add_parser(
        "sync",
        parents=common,
        help="copy what the plan says is missing (skopeo), then tag; record the state",
    )
    sync_parser.add_argument(
        "--spec", required=True, metavar="FILE", help="the mirror list (sources, policies)"
    )
    sync_parser.add_argument(
        "--state",
        default=str(defaults.STATE_PATH),
        metavar="DB",
        help="the state database; the run lock sync.lock lives beside it",
    )
    sync_parser.add_argument(
        "--deadline",
        type=float,
        default=defaults.SYNC_DEADLINE,
        metavar="SECONDS",
        help="longest the whole run may take (relock included): no entry or retry starts "
        "after it, the entries left are reported not attempted; 0: no deadline "
        "(default: %(default)g)",
    )
    sync_parser.add_argument(
        "--keep-going", action="store_true", help="go on with the other entries after a failure"
    )
    sync_parser.add_argument(
        "--force",
        action="store_true",
        help="copy every entry again, checking each blob and child (repairs what "
        "verify --deep found missing)",
    )
    sync_parser.add_argument(
        "--relock",
        action="store_true",
        help="first resolve --spec against its sources and rewrite --lock if it changed "
        "(airgap lock, in the same process and under the same run lock)",
    )
    sync_parser.add_argument(
        "--sign-config",
        metavar="PROVENANCE",
        help="sign each entry's digest (an index and its children) with the appliance's "
        "active key, through the gateway this file's signing section names, before its tag "
        "moves: a tag never names an unsigned digest (the registry host's nightly job)",
    )
    sync_defaults = SyncOptions()
    for flag, field, kind, metavar, text in SYNC_TUNING:
        sync_parser.add_argument(
            flag, type=kind, default=getattr(sync_defaults, field), metavar=metavar, help=text
        )
    sync_parser.add_argument(
        "--summary",
        action="store_true",
        help="print the one-line summary (for cron logs) instead of the JSON report",
    )
    sync_parser.add_argument(
        "--report",
        metavar="FILE",
        help="also write the JSON report to FILE, failed entries included (for the nightly "
        "job's caller: the summary goes to the log, the report to Ansible)",
    )
    sync_parser.add_argument(
        "--quiet", action="store_true", help="no progress line per entry on stderr"
    )
    sync_parser.set_defaults(run=run_sync)

    verify_parser = commands.add_parser(
        "verify", parents=common, help="check the destination serves the lock byte for byte"
    )
    verify_parser.add_argument(
        "--deep", action="store_true", help="also HEAD every blob of every entry"
    )
    verify_parser.set_defaults(run=run_verify)


def run_plan(args: argparse.Namespace) -> dict[str, Any]:
    locked = read_lock_file(args.lock)
    target = destination(args)
    fingerprints = recorded_fingerprints(args.state, target.address)
    with target.client() as client:
        client.retry = RetryPolicy.standard()
        result = plan(
            locked, client, fingerprints=fingerprints, check_blobs=args.blobs, workers=args.workers
        )
    if args.json:
        return result.to_json()
    finish(result.table(), 0)


class SignBeforeTag:
    """``SyncOptions.before_tag`` that signs: an entry whose digest cannot be signed fails,
    and its tag is not moved."""

    def __init__(self, signer: Signer) -> None:
        self.signer = signer

    def __call__(self, repository: str, digest: str) -> None:
        failed = [o for o in self.signer.sign(repository, digest) if o.result == FAILED]
        if failed:
            raise SigningError("; ".join(o.detail or o.digest for o in failed))


def run_sync(args: argparse.Namespace) -> dict[str, Any]:
    spec = load(args.spec)
    tuning = {field: getattr(args, _dest(flag)) for flag, field, *_ in SYNC_TUNING}
    signing = ExitStack()
    before_tag = None
    if args.sign_config:
        signer = signing.enter_context(
            Signer(
                load_signing(Path(args.sign_config)),
                cosign_path=tuning.get("cosign", "cosign"),
                tools=Tools(timeout=tuning["timeout"]),
            )
        )
        before_tag = SignBeforeTag(signer)
    options = SyncOptions(
        workers=args.workers,
        keep_going=args.keep_going,
        deadline=args.deadline or None,
        before_tag=before_tag,
        **tuning,
    )

    def progress(result: EntryResult, done: int, total: int) -> None:
        if args.quiet:
            return
        if result.error:
            outcome = result.error
        elif not result.in_sync:
            outcome = result.detail
        else:
            outcome = f"{result.detail}, {human_bytes(result.bytes)}, {result.duration:.1f} s"
        print(
            f"airgap sync: [{done}/{total}] {result.entry.reference}: {result.result}: {outcome}",
            file=sys.stderr,
            flush=True,
        )

    stop = Stop()
    try:
        with (
            signing,
            RunLock.beside(args.state),
            StateStore(args.state) as store,
            stop_on_signals(stop),
        ):
            manifests: dict[str, bytes] = {}
            relocked: dict[str, Any] = {}
            previous = read_lock(args.lock) if args.relock else None

            def relock_now(retry: RetryPolicy) -> Lock:
                _, new, report = relock(
                    spec, args.lock, manifests=manifests, previous=previous, retry=retry
                )
                relocked.update(report)
                if not args.quiet:
                    print(f"airgap lock: {report['summary']}", file=sys.stderr, flush=True)
                return new

            report = sync(
                relock_now if args.relock else read_lock_file(args.lock),
                destination(args),
                spec,
                options=options,
                state=store,
                lock_path=args.lock,
                progress=progress,
                manifests=manifests,
                previous=previous,
                force=args.force,
                stop=stop,
            )
            if args.relock:
                report["relock"] = relocked
    except RunLockedError as exc:
        print(f"airgap: {exc}", file=sys.stderr)
        raise SystemExit(EXIT_LOCKED) from exc
    if args.report:
        write_atomically(Path(args.report), json.dumps(report, indent=2) + "\n")
    if report["failed"] or stop.signal:
        if args.summary:
            print(f"airgap: {'; '.join(report['errors'])}", file=sys.stderr)
        else:
            json.dump(report, sys.stdout, indent=2)
            sys.stdout.write("\n")
        if stop.signal:
            if args.summary:
                sys.stdout.write(report["summary"] + "\n")
            raise Interrupted(stop.signal, signal.Signals[stop.signal].value)
        if args.summary:
            finish(report["summary"], 1)
        if "error" in report:
            raise AirgapError(report["error"])
        raise AirgapError(
            f"{report['failed']} of {report['entries']} entries failed: "
            + "; ".join(report["errors"])
        )
    if args.summary:
        finish(report["summary"], 0)
    return report


def run_verify(args: argparse.Namespace) -> dict[str, Any]:
    locked = read_lock_file(args.lock)
    with destination(args).client() as client:
        client.retry = RetryPolicy.standard()
        report = verify(locked, client, deep=args.deep, workers=args.workers)
    if report["failed"]:
        json.dump(report, sys.stdout, indent=2)
        sys.stdout.write("\n")
        raise AirgapError(
            f"{report['failed']} of {report['entries']} entries differ from the lock: "
            + "; ".join(report["problems"])
        )
    return report
