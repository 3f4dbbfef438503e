"""``airgap sign``, ``airgap signature verify``, ``airgap signing-key ...``: the appliance's
signatures and keys, on the registry host, from its provenance file's ``signing:`` section.

The nightly job runs ``airgap sign --lock`` after the sync's verify: every digest the lock
publishes (indexes and their children) gets the active key's signature, and a digest that has
it already costs a few small reads and no upload.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from airgapped_registry import defaults
from airgapped_registry.cli.sync import read_lock_file
from airgapped_registry.errors import AirgapError
from airgapped_registry.mirror.lock import Lock
from airgapped_registry.signing import keys
from airgapped_registry.signing.config import load_signing, parse_duration
from airgapped_registry.signing.signer import Signer, split_reference
from airgapped_registry.tools.process import Tools


def add_sign_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        required=True,
        metavar="FILE",
        help="the provenance file (/etc/airgapped-registry/provenance.yaml)",
    )
    common.add_argument("--cosign", default="cosign", metavar="PATH", help="the cosign program")
    common.add_argument(
        "--tool-timeout",
        type=float,
        default=defaults.TOOL_TIMEOUT,
        metavar="SECONDS",
        help="longest one cosign run may take",
    )

    sign = commands.add_parser(
        "sign",
        parents=[common],
        help="sign digests with the active key through the gateway (indexes with children)",
    )
    what = sign.add_mutually_exclusive_group(required=True)
    what.add_argument("--lock", metavar="FILE", help="sign every digest this lock publishes")
    what.add_argument(
        "references", nargs="*", default=[], metavar="REPO@DIGEST|REPO:TAG", help="what to sign"
    )
    sign.add_argument("--workers", type=int, default=2, metavar="N", help="cosign runs at once")
    sign.set_defaults(run=run_sign)

    signature = commands.add_parser("signature", help="the appliance's signatures")
    actions = signature.add_subparsers(dest="action", required=True, metavar="ACTION")
    verify = actions.add_parser(
        "verify", parents=[common], help="verify a reference with the published keys"
    )
    verify.add_argument("reference", metavar="REPO@DIGEST|REPO:TAG")
    verify.set_defaults(run=run_verify)

    signing_key = commands.add_parser("signing-key", help="the appliance's signing keys")
    key_actions = signing_key.add_subparsers(dest="action", required=True, metavar="ACTION")
    key_actions.add_parser(
        "init", parents=[common], help="make the first key when there is none"
    ).set_defaults(run=run_key_init)
    rotate = key_actions.add_parser(
        "rotate", parents=[common], help="a new active key; the old one verifies for --overlap"
    )
    rotate.add_argument(
        "--overlap", required=True, metavar="DURATION", help="<int>[s|m|h|d], e.g. 30d"
    )
    rotate.set_defaults(run=run_key_rotate)
    retire = key_actions.add_parser(
        "retire", parents=[common], help="retire the verifying keys past their overlap"
    )
    retire.add_argument(
        "--now", action="store_true", help="retire every verifying key, overlap or not"
    )
    retire.set_defaults(run=run_key_retire)
    key_actions.add_parser(
        "list", parents=[common], help="the keys and the public keys to publish"
    ).set_defaults(run=run_key_list)


def lock_targets(lock: Lock) -> list[tuple[str, str]]:
    """Every ``(repository, digest)`` the lock publishes: each entry's digest and the
    children it copies, once each."""
    targets: list[tuple[str, str]] = []
    for entry in lock.entries:
        targets.append((entry.destination, entry.digest))
        targets += [(entry.destination, child.digest) for child in entry.children if child.copy]
    return list(dict.fromkeys(targets))


def run_sign(args: argparse.Namespace) -> dict[str, Any]:
    config = load_signing(args.config)
    tools = Tools(timeout=args.tool_timeout)
    with Signer(config, cosign_path=args.cosign, tools=tools, workers=args.workers) as signer:
        if args.lock:
            report = signer.sign_all(lock_targets(read_lock_file(args.lock)), expand=False)
        else:
            targets = []
            for text in args.references:
                repository, reference = split_reference(text)
                targets.append((repository, signer.resolve(repository, reference)))
            report = signer.sign_all(targets)
    if report["failed"]:
        # The report goes to stdout for the reader; the first failure and status to main().
        json.dump(report, sys.stdout, indent=2)
        sys.stdout.write("\n")
        more = f" (and {report['failed'] - 1} more)" if report["failed"] > 1 else ""
        raise AirgapError(f"{report['errors'][0]}{more}")
    return report


def run_verify(args: argparse.Namespace) -> dict[str, Any]:
    config = load_signing(args.config)
    repository, reference = split_reference(args.reference)
    tools = Tools(timeout=args.tool_timeout)
    with Signer(config, cosign_path=args.cosign, tools=tools) as signer:
        report = signer.verify(repository, reference)
    if not report["verified"]:
        json.dump(report, sys.stdout, indent=2)
        sys.stdout.write("\n")
        raise AirgapError(
            f"{report['reference']}: no published key verifies it ({'; '.join(report['problems'])})"
        )
    return report


def run_key_init(args: argparse.Namespace) -> dict[str, Any]:
    config = load_signing(args.config)
    tools = Tools(timeout=args.tool_timeout)
    return keys.init(config.keys_dir, config.password(), tools, args.cosign)


def run_key_rotate(args: argparse.Namespace) -> dict[str, Any]:
    config = load_signing(args.config)
    overlap = parse_duration(args.overlap, "--overlap")
    tools = Tools(timeout=args.tool_timeout)
    return keys.rotate(config.keys_dir, config.password(), overlap, tools, args.cosign)


def run_key_retire(args: argparse.Namespace) -> dict[str, Any]:
    config = load_signing(args.config)
    return keys.retire(config.keys_dir, force=args.now)


def run_key_list(args: argparse.Namespace) -> dict[str, Any]:
    config = load_signing(args.config)
    return keys.listing(keys.load(config.keys_dir))
