"""The ``airgap`` command: the engine's entry point for operators, cron and the lab.

Each command group registers its subcommands through one ``add_*_commands`` function and
sets ``run`` on its parser; :func:`main` only parses, dispatches and turns expected failures
into one line on stderr and exit status 1. Reports go to stdout as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from airgapped_registry import __version__, lockstore
from airgapped_registry.errors import AirgapError
from airgapped_registry.lock import Lock, lock, read_lock, relock
from airgapped_registry.lockstore import DEFAULT_REPOSITORY, DEFAULT_TAG
from airgapped_registry.plan import human_bytes, plan
from airgapped_registry.registry import RegistryClient
from airgapped_registry.sample import SampleSpec, build, push, spec_fields
from airgapped_registry.spec import load
from airgapped_registry.state import (
    DEFAULT_STATE_PATH,
    EXIT_LOCKED,
    RunLock,
    RunLockedError,
    StateStore,
)
from airgapped_registry.sync import Destination, EntryResult, SyncOptions, sync
from airgapped_registry.verify import verify


def registry_options() -> argparse.ArgumentParser:
    """Options naming a registry endpoint and the TLS files to reach it."""
    parser = argparse.ArgumentParser(add_help=False)
    group = parser.add_argument_group("registry")
    group.add_argument("--registry", required=True, metavar="URL", help="http(s)://host[:port]")
    group.add_argument("--ca-file", metavar="PEM", help="CA bundle trusted for the registry")
    group.add_argument("--cert-file", metavar="PEM", help="client certificate for mutual TLS")
    group.add_argument("--key-file", metavar="PEM", help="key of the client certificate")
    group.add_argument("--timeout", type=float, default=30, metavar="SECONDS")
    return parser


def registry_client(args: argparse.Namespace) -> RegistryClient:
    return RegistryClient(
        args.registry,
        ca_file=args.ca_file,
        cert_file=args.cert_file,
        key_file=args.key_file,
        timeout=args.timeout,
    )


def sample_spec_options() -> argparse.ArgumentParser:
    """One option per :class:`SampleSpec` field, so the spec stays the only definition."""
    parser = argparse.ArgumentParser(add_help=False)
    group = parser.add_argument_group("sample content")
    for spec_field in spec_fields():
        option = f"--{spec_field.name.replace('_', '-')}"
        if spec_field.name == "platforms":
            default = ",".join(SampleSpec().platforms)
            group.add_argument(
                option, default=default, metavar="OS/ARCH[,...]", help=spec_field.help
            )
        else:
            group.add_argument(
                option, type=int, default=spec_field.default, metavar="N", help=spec_field.help
            )
    return parser


def sample_spec(args: argparse.Namespace) -> SampleSpec:
    values = {spec_field.name: getattr(args, spec_field.name) for spec_field in spec_fields()}
    values["platforms"] = tuple(
        item.strip() for item in values["platforms"].split(",") if item.strip()
    )
    return SampleSpec(**values)


def add_sample_commands(commands: argparse._SubParsersAction) -> None:
    sample = commands.add_parser("sample", help="deterministic sample upstream content")
    actions = sample.add_subparsers(dest="action", required=True, metavar="ACTION")
    spec = sample_spec_options()

    push_parser = actions.add_parser(
        "push", parents=[registry_options(), spec], help="push the sample into a registry"
    )
    push_parser.add_argument(
        "--check", action="store_true", help="only report what would be pushed"
    )
    push_parser.set_defaults(run=run_sample_push)

    catalog_parser = actions.add_parser(
        "catalog", parents=[spec], help="print the expected tags and digests"
    )
    catalog_parser.set_defaults(run=run_sample_catalog)


def run_sample_push(args: argparse.Namespace) -> dict[str, Any]:
    sample = build(sample_spec(args))
    with registry_client(args) as client:
        return push(sample, client, check_mode=args.check)


def run_sample_catalog(args: argparse.Namespace) -> dict[str, Any]:
    return build(sample_spec(args)).expected()


def add_mirror_commands(commands: argparse._SubParsersAction) -> None:
    spec = commands.add_parser("spec", help="the mirror list (mirror.yaml)")
    actions = spec.add_subparsers(dest="action", required=True, metavar="ACTION")
    check_parser = actions.add_parser(
        "check", help="validate a mirror list; print its entries with defaults applied"
    )
    check_parser.add_argument("file", metavar="FILE", help="the mirror list")
    check_parser.set_defaults(run=run_spec_check)

    lock_parser = commands.add_parser(
        "lock", help="resolve the mirror list to digests and write the lock (relay side)"
    )
    # Required unless an action (publish, fetch) follows; run_lock checks.
    lock_parser.add_argument("--spec", metavar="FILE", help="the mirror list")
    lock_parser.add_argument("--lock", metavar="FILE", help="the lock file")
    lock_parser.add_argument(
        "--check",
        action="store_true",
        help="write nothing; exit 1 when the lock would change (for CI)",
    )
    lock_parser.set_defaults(run=run_lock, lock_parser=lock_parser)
    add_lock_transport_commands(lock_parser)


def run_spec_check(args: argparse.Namespace) -> dict[str, Any]:
    return load(args.file).summary()


def run_lock(args: argparse.Namespace) -> dict[str, Any]:
    if not (args.spec and args.lock):
        args.lock_parser.error("the following arguments are required: --spec, --lock")
    report = lock(load(args.spec), args.lock, check=args.check)
    if args.check and report["changed"]:
        # The diff goes to stdout for the reader; the failure line and status to main().
        json.dump(report, sys.stdout, indent=2)
        sys.stdout.write("\n")
        raise AirgapError(f"{args.lock} is out of date: {report['summary']}")
    return report


def add_lock_transport_commands(lock_parser: argparse.ArgumentParser) -> None:
    """``airgap lock publish|fetch``: the lock carried to the next hop through a registry."""
    actions = lock_parser.add_subparsers(dest="action", metavar="ACTION")
    artifact = argparse.ArgumentParser(add_help=False)
    artifact.add_argument(
        "--repository", default=DEFAULT_REPOSITORY, help="where the lock artifact is stored"
    )
    artifact.add_argument("--tag", default=DEFAULT_TAG, help="the lock artifact's tag")
    artifact.add_argument(
        "--check", action="store_true", help="write nothing; report what would change"
    )

    publish_parser = actions.add_parser(
        "publish",
        parents=[registry_options(), artifact],
        help="push the lock as an OCI artifact into a registry (the relay's own)",
    )
    publish_parser.add_argument("--lock", required=True, metavar="FILE", help="the lock file")
    publish_parser.set_defaults(run=run_lock_publish)

    fetch_parser = actions.add_parser(
        "fetch",
        parents=[registry_options(), artifact],
        help="fetch the published lock and rewrite it to read every entry from --source",
    )
    fetch_parser.add_argument(
        "--source",
        required=True,
        metavar="NAME",
        help="the mirror list's name for the registry the lock is fetched from",
    )
    fetch_parser.add_argument(
        "--source-registry",
        metavar="HOST[:PORT]",
        help="that source's registry as the mirror list writes it (default: from --registry)",
    )
    fetch_parser.add_argument("--output", required=True, metavar="FILE", help="the lock to write")
    fetch_parser.set_defaults(run=run_lock_fetch)


def run_lock_publish(args: argparse.Namespace) -> dict[str, Any]:
    with registry_client(args) as client:
        return lockstore.publish(
            args.lock, client, repository=args.repository, tag=args.tag, check=args.check
        )


def run_lock_fetch(args: argparse.Namespace) -> dict[str, Any]:
    with registry_client(args) as client:
        return lockstore.fetch(
            client,
            args.output,
            source=args.source,
            source_registry=args.source_registry,
            repository=args.repository,
            tag=args.tag,
            check=args.check,
        )


def destination_options() -> argparse.ArgumentParser:
    """The lock to read and the destination's credentials (beside :func:`registry_options`)."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--lock", required=True, metavar="FILE", help="the lock file")
    parser.add_argument(
        "--auth-file", metavar="FILE", help="auth.json with credentials for the destination"
    )
    parser.add_argument(
        "--workers", type=int, default=4, metavar="N", help="entries handled side by side"
    )
    return parser


def destination(args: argparse.Namespace) -> Destination:
    return Destination(
        args.registry,
        ca_file=args.ca_file,
        cert_file=args.cert_file,
        key_file=args.key_file,
        auth_file=args.auth_file,
        timeout=args.timeout,
    )


def read_lock_file(path: str) -> Lock:
    found = read_lock(path)
    if found is None:
        raise AirgapError(f"{path}: no lock file (write one with airgap lock)")
    return found


def finish(text: str, status: int) -> NoReturn:
    """Print a report that is not JSON (a table, a summary line) and exit with ``status``."""
    try:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
        sys.stdout.flush()
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    raise SystemExit(status)


def write_report(path: str, report: dict[str, Any]) -> None:
    """Write ``report`` as JSON to ``path``, replacing it whole (a reader never sees half)."""
    target = Path(path)
    temporary = target.with_name(f".{target.name}.tmp")
    temporary.write_text(json.dumps(report, indent=2) + "\n")
    temporary.replace(target)


def add_sync_commands(commands: argparse._SubParsersAction) -> None:
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
        default=str(DEFAULT_STATE_PATH),
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
        default=str(DEFAULT_STATE_PATH),
        metavar="DB",
        help="the state database; the run lock sync.lock lives beside it",
    )
    defaults = SyncOptions()
    sync_parser.add_argument(
        "--attempts", type=int, default=defaults.attempts, metavar="N", help="tries per entry"
    )
    sync_parser.add_argument(
        "--backoff",
        type=float,
        default=defaults.backoff,
        metavar="SECONDS",
        help="first wait between tries, doubled after each",
    )
    sync_parser.add_argument(
        "--retry-times",
        type=int,
        default=defaults.retry_times,
        metavar="N",
        help="skopeo's own retries within one try",
    )
    sync_parser.add_argument(
        "--tool-timeout",
        type=float,
        default=defaults.timeout,
        metavar="SECONDS",
        help="longest one skopeo or cosign run may take",
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
        "--engine-copy-max-bytes",
        type=int,
        default=defaults.engine_copy_max_bytes,
        metavar="BYTES",
        help="entries with at most this much left to upload are copied by the engine, "
        "heavier ones by skopeo; 0: skopeo copies every entry",
    )
    sync_parser.add_argument("--skopeo", default=defaults.skopeo, metavar="PATH")
    sync_parser.add_argument("--cosign", default=defaults.cosign, metavar="PATH")
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
    fingerprints = None
    if Path(args.state).exists():
        with StateStore(args.state) as store:
            fingerprints = store.fingerprints(target.address)
    with target.client() as client:
        result = plan(
            locked, client, fingerprints=fingerprints, check_blobs=args.blobs, workers=args.workers
        )
    if args.json:
        return result.to_json()
    finish(result.table(), 0)


def run_sync(args: argparse.Namespace) -> dict[str, Any]:
    spec = load(args.spec)
    options = SyncOptions(
        workers=args.workers,
        attempts=args.attempts,
        backoff=args.backoff,
        retry_times=args.retry_times,
        keep_going=args.keep_going,
        timeout=args.tool_timeout,
        skopeo=args.skopeo,
        cosign=args.cosign,
        engine_copy_max_bytes=args.engine_copy_max_bytes,
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

    try:
        with RunLock.beside(args.state), StateStore(args.state) as store:
            manifests: dict[str, bytes] = {}
            relocked: dict[str, Any] = {}
            previous = read_lock(args.lock) if args.relock else None

            def relock_now() -> Lock:
                _, new, report = relock(spec, args.lock, manifests=manifests, previous=previous)
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
            )
            if args.relock:
                report["relock"] = relocked
    except RunLockedError as exc:
        print(f"airgap: {exc}", file=sys.stderr)
        raise SystemExit(EXIT_LOCKED) from exc
    if args.report:
        write_report(args.report, report)
    if report["failed"]:
        if args.summary:
            print(f"airgap: {'; '.join(report['errors'])}", file=sys.stderr)
            finish(report["summary"], 1)
        json.dump(report, sys.stdout, indent=2)
        sys.stdout.write("\n")
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
        report = verify(locked, client, deep=args.deep, workers=args.workers)
    if report["failed"]:
        json.dump(report, sys.stdout, indent=2)
        sys.stdout.write("\n")
        raise AirgapError(
            f"{report['failed']} of {report['entries']} entries differ from the lock: "
            + "; ".join(report["problems"])
        )
    return report


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(
        prog="airgap", description="Airgapped Registry engine: mirror, verify, gate."
    )
    root.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = root.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_sample_commands(commands)
    add_mirror_commands(commands)
    add_sync_commands(commands)
    return root


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        report = args.run(args)
    except (AirgapError, ValueError) as exc:
        print(f"airgap: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("airgap: interrupted", file=sys.stderr)
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


if __name__ == "__main__":
    sys.exit(main())
