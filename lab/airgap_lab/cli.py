"""``airgap-lab sample push|catalog``: the sample upstream content from the command line."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from airgap_lab.sample import SampleSpec, build, push, spec_fields
from airgapped_registry.cli.options import registry_client, registry_options
from airgapped_registry.cli.run import run


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
    group.add_argument(
        "--db-updated-at",
        type=db_updated_at,
        default=None,
        metavar="TIME",
        help="UpdatedAt of the Trivy DB artifact, ISO 8601 with a time zone "
        "(default: the start of the current UTC day, so each day gives a new DB digest)",
    )
    return parser


def db_updated_at(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an ISO 8601 time (e.g. 2026-11-30T00:00:00Z)"
        ) from None
    if moment.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{text!r} has no time zone (add Z for UTC)")
    return moment


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
    sample = build(sample_spec(args), db_updated_at=args.db_updated_at)
    with registry_client(args) as client:
        return push(sample, client, check_mode=args.check)


def run_sample_catalog(args: argparse.Namespace) -> dict[str, Any]:
    return build(sample_spec(args), db_updated_at=args.db_updated_at).expected()


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(
        prog="airgap-lab", description="Airgapped Registry lab: the sample upstream content."
    )
    commands = root.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_sample_commands(commands)
    return root


def main(argv: Sequence[str] | None = None) -> int:
    return run(parser(), argv)
