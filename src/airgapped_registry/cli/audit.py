"""``airgap audit init|verify|query``: the gate's audit log (docs/audit.md).

``init`` makes the checkpoint key pair (idempotent: an existing key is kept). ``verify``
checks the chain, the checkpoints' signatures with the public key, and that the log reaches
the checkpoint head.json records; it exits 1 with one line naming the first bad record.
``query`` prints the matching records, one line each (``--json``: the records as JSON lines).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn

from airgapped_registry import defaults
from airgapped_registry.audit import init_key, public_path, query, verify
from airgapped_registry.audit.records import parse_time
from airgapped_registry.cli.run import finish
from airgapped_registry.errors import AirgapError


class AuditVerifyFailed(AirgapError):
    """``airgap audit verify`` found a record that does not hold."""


def add_audit_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    audit = commands.add_parser("audit", help="the gate's audit log: init, verify, query")
    actions = audit.add_subparsers(dest="action", required=True, metavar="ACTION")
    directory = argparse.ArgumentParser(add_help=False)
    directory.add_argument(
        "--directory",
        type=Path,
        default=defaults.AUDIT_DIRECTORY,
        metavar="DIR",
        help=f"the log directory (default {defaults.AUDIT_DIRECTORY})",
    )
    as_json = argparse.ArgumentParser(add_help=False)
    as_json.add_argument("--json", action="store_true", help="JSON output")

    init = actions.add_parser(
        "init", parents=[as_json], help="make the checkpoint key pair unless it exists"
    )
    init.add_argument(
        "--key",
        type=Path,
        default=defaults.AUDIT_KEY,
        metavar="PATH",
        help=f"private key (0600; the public half beside it, .pub; default {defaults.AUDIT_KEY})",
    )
    init.set_defaults(run=run_init)

    check = actions.add_parser(
        "verify",
        parents=[directory, as_json],
        help="check the chain, the checkpoint signatures and head.json; exit 1 naming the "
        "first bad record",
    )
    check.add_argument(
        "--key",
        type=Path,
        default=public_path(defaults.AUDIT_KEY),
        metavar="PUB",
        help=f"the checkpoint public key (default {public_path(defaults.AUDIT_KEY)})",
    )
    heads = check.add_mutually_exclusive_group()
    heads.add_argument(
        "--head",
        type=Path,
        default=defaults.AUDIT_HEAD,
        metavar="FILE",
        help=f"the last checkpoint, kept outside the log directory (default {defaults.AUDIT_HEAD})",
    )
    heads.add_argument(
        "--no-head",
        dest="head",
        action="store_const",
        const=None,
        help="do not compare with head.json (a copy of the log elsewhere): a cut tail passes",
    )
    check.set_defaults(run=run_verify)

    ask = actions.add_parser(
        "query", parents=[directory, as_json], help="records by digest, identity, time, action"
    )
    ask.add_argument("--digest", metavar="sha256:...", help="records naming this digest")
    ask.add_argument(
        "--identity",
        metavar="WHO",
        help="a subject (CN=node,OU=puller), one of its parts (CN=node), a serial or fingerprint",
    )
    ask.add_argument("--since", type=time_option, metavar="TIME", help="ISO 8601, inclusive")
    ask.add_argument("--until", type=time_option, metavar="TIME", help="ISO 8601, exclusive")
    ask.add_argument("--action", metavar="A", help="pull, push, tag, delete, blob_delete, head...")
    ask.add_argument("--decision", choices=("allow", "deny"))
    ask.set_defaults(run=run_query)


def time_option(text: str) -> datetime:
    try:
        return parse_time(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def run_init(args: argparse.Namespace) -> dict[str, Any]:
    report = init_key(args.key)
    if not args.json:
        state = "made" if report["changed"] else "kept"
        finish(
            f"{state}: {report['key']} (key id {report['key_id']}), public key "
            f"{report['public_key']}",
            0,
        )
    return report


def run_verify(args: argparse.Namespace) -> dict[str, Any]:
    result = verify(args.directory, args.key, args.head)
    report = result.to_json()
    report["directory"] = str(args.directory)
    report["head"] = None if args.head is None else str(args.head)
    if result.first_bad is not None:
        if args.json:
            json.dump(report, sys.stdout, indent=2)
            sys.stdout.write("\n")
        raise AuditVerifyFailed(f"audit verify: {args.directory}/{result.first_bad}")
    if not args.json:
        head = "without head.json" if args.head is None else f"up to {args.head}"
        finish(
            f"ok: {result.records} records (last seq {result.last_seq}), {result.checkpoints} "
            f"checkpoints, {len(result.files)} files, {result.unsigned} after the last "
            f"checkpoint; checked {head}",
            0,
        )
    return report


def run_query(args: argparse.Namespace) -> NoReturn:
    records = query(
        args.directory,
        digest=args.digest,
        identity=args.identity,
        since=args.since,
        until=args.until,
        action=args.action,
        decision=args.decision,
    )
    lines = (
        (json.dumps(record, separators=(",", ":")) for record in records)
        if args.json
        else (summary(record) for record in records)
    )
    stream(lines)
    raise SystemExit(0)


def summary(record: dict[str, Any]) -> str:
    """One record as a line for people: time, seq, who, from where, what, the decision."""
    who = record.get("identity") or {}
    subject = who.get("subject") if isinstance(who, dict) else None
    what = record.get("repository") or "-"
    if record.get("digest"):
        what += f"@{record['digest']}"
    elif record.get("reference"):
        what += f":{record['reference']}"
    when = record.get("event_time") or record.get("time")
    return (
        f"{when} seq={record.get('seq')} {record.get('type')} {subject or '-'} "
        f"{record.get('client') or '-'} {record.get('action')} {what} "
        f"{record.get('decision')} {record.get('reason') or ''}"
    ).rstrip()


def stream(lines: Iterable[str]) -> None:
    try:
        for line in lines:
            sys.stdout.write(line + "\n")
        sys.stdout.flush()
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
