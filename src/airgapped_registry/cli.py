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
from typing import Any

from airgapped_registry import __version__
from airgapped_registry.errors import AirgapError
from airgapped_registry.lock import lock
from airgapped_registry.registry import RegistryClient
from airgapped_registry.sample import SampleSpec, build, push, spec_fields
from airgapped_registry.spec import load


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
    lock_parser.add_argument("--spec", required=True, metavar="FILE", help="the mirror list")
    lock_parser.add_argument("--lock", required=True, metavar="FILE", help="the lock file")
    lock_parser.add_argument(
        "--check",
        action="store_true",
        help="write nothing; exit 1 when the lock would change (for CI)",
    )
    lock_parser.set_defaults(run=run_lock)


def run_spec_check(args: argparse.Namespace) -> dict[str, Any]:
    return load(args.file).summary()


def run_lock(args: argparse.Namespace) -> dict[str, Any]:
    report = lock(load(args.spec), args.lock, check=args.check)
    if args.check and report["changed"]:
        # The diff goes to stdout for the reader; the failure line and status to main().
        json.dump(report, sys.stdout, indent=2)
        sys.stdout.write("\n")
        raise AirgapError(f"{args.lock} is out of date: {report['summary']}")
    return report


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(
        prog="airgap", description="Airgapped Registry engine: mirror, verify, gate."
    )
    root.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = root.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_sample_commands(commands)
    add_mirror_commands(commands)
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
