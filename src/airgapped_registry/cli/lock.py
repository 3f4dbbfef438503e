"""``airgap spec check``, ``airgap lock [publish|fetch]``: the mirror list and its lock.

The relay side: validate the list, resolve it into ``mirror.lock``, publish the lock into
the relay's registry, signed with its transfer key; and the registry host's ``lock fetch``
of that published lock, which verifies the signature with its trusted keys first.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from airgapped_registry import defaults
from airgapped_registry.cli.options import registry_client, registry_options
from airgapped_registry.errors import AirgapError
from airgapped_registry.mirror import lockstore
from airgapped_registry.mirror.relock import lock
from airgapped_registry.mirror.spec import load
from airgapped_registry.transfer import TrustedKeys, load_key


def add_lock_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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
        "--repository", default=defaults.LOCK_REPOSITORY, help="where the lock artifact is stored"
    )
    artifact.add_argument("--tag", default=defaults.LOCK_TAG, help="the lock artifact's tag")
    artifact.add_argument(
        "--check", action="store_true", help="write nothing; report what would change"
    )

    publish_parser = actions.add_parser(
        "publish",
        parents=[registry_options(), artifact],
        help="push the lock as an OCI artifact into a registry (the relay's own)",
    )
    publish_parser.add_argument("--lock", required=True, metavar="FILE", help="the lock file")
    publish_parser.add_argument(
        "--transfer-key",
        type=Path,
        metavar="PATH",
        help="sign the lock with this transfer key (the relay's, "
        f"{defaults.TRANSFER_KEY}); without it the lock is published unsigned, and a fetch "
        "that requires a signature refuses it",
    )
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
    trust = fetch_parser.add_mutually_exclusive_group()
    trust.add_argument(
        "--trusted-keys",
        type=Path,
        action="append",
        metavar="PATH",
        help="transfer public keys the lock must be signed by: a directory of *.pub or one "
        f".pub file; repeatable (default {defaults.TRANSFER_TRUSTED_DIR})",
    )
    trust.add_argument(
        "--allow-unsigned",
        action="store_true",
        help="do not check the lock's transfer signature: only for a site that has not "
        "deployed transfer keys yet (docs/transfer.md)",
    )
    fetch_parser.set_defaults(run=run_lock_fetch)


def run_lock_publish(args: argparse.Namespace) -> dict[str, Any]:
    key = load_key(args.transfer_key) if args.transfer_key else None
    with registry_client(args) as client:
        return lockstore.publish(
            args.lock, client, key=key, repository=args.repository, tag=args.tag, check=args.check
        )


def run_lock_fetch(args: argparse.Namespace) -> dict[str, Any]:
    if args.allow_unsigned:
        trusted = None
        print(
            "airgap: lock fetch: --allow-unsigned: the lock's transfer signature is not "
            "checked (deploy transfer keys and drop this flag; docs/transfer.md)",
            file=sys.stderr,
        )
    else:
        # Loaded before the registry is asked: a host without trusted keys fails at once.
        trusted = TrustedKeys.load(args.trusted_keys or [defaults.TRANSFER_TRUSTED_DIR])
    with registry_client(args) as client:
        return lockstore.fetch(
            client,
            args.output,
            source=args.source,
            source_registry=args.source_registry,
            repository=args.repository,
            tag=args.tag,
            trusted=trusted,
            check=args.check,
        )
