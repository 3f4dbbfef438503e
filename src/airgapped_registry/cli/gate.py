"""``airgap gate serve|check|decide``: the gate nginx asks before every API request
(docs/gate.md)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from airgapped_registry import defaults
from airgapped_registry.gate import server
from airgapped_registry.gate.admission import Admission
from airgapped_registry.gate.decide import Gate
from airgapped_registry.gate.policy import load_policy
from airgapped_registry.gate.setup import audit_event, open_audit, settings

log = logging.getLogger(__name__)


def add_gate_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    gate = commands.add_parser("gate", help="the gate: RBAC and admission for nginx")
    actions = gate.add_subparsers(dest="action", required=True, metavar="ACTION")
    policy = argparse.ArgumentParser(add_help=False)
    policy.add_argument(
        "--policy", default=str(defaults.GATE_POLICY), metavar="GATE_YAML", help="gate.yaml"
    )
    provenance = argparse.ArgumentParser(add_help=False)
    provenance.add_argument(
        "--provenance",
        default=str(defaults.PROVENANCE),
        metavar="PROVENANCE",
        help="the registry host's provenance.yaml (backend, state, keys, DB)",
    )
    serve = actions.add_parser(
        "serve", parents=[policy, provenance], help="answer nginx on a unix socket"
    )
    serve.add_argument(
        "--socket",
        default=str(defaults.GATE_SOCKET),
        metavar="PATH",
        help="bind here unless systemd passes the socket (LISTEN_FDS)",
    )
    serve.add_argument(
        "--socket-group",
        metavar="GROUP",
        help="group of the socket it binds (nginx's, e.g. www-data); mode 0660",
    )
    serve.add_argument(
        "--gate-down-log",
        default=str(defaults.GATE_UNAVAILABLE_LOG),
        metavar="PATH",
        help="nginx's record of refusals while the gate was down, imported into the audit log",
    )
    serve.set_defaults(run=run_serve)
    check = actions.add_parser("check", parents=[policy], help="check gate.yaml")
    check.set_defaults(run=run_check)
    decide = actions.add_parser(
        "decide",
        parents=[policy, provenance],
        help="explain the decision on one request (nothing is recorded)",
    )
    decide.add_argument("method", help="GET, HEAD, PUT, ...")
    decide.add_argument("uri", help="the raw request URI, e.g. /v2/prod/app/manifests/1.0")
    decide.add_argument(
        "--subject", required=True, help="the client certificate's subject, e.g. CN=node,OU=puller"
    )
    decide.set_defaults(run=run_decide)


def run_check(args: argparse.Namespace) -> dict[str, Any]:
    policy = load_policy(args.policy)
    return {
        "policy": args.policy,
        "grants": len(policy.grants),
        "landing_zones": list(policy.landing_zones),
        "mode": policy.mode,
        "backend_storage": str(policy.backend_storage) if policy.backend_storage else None,
    }


def run_decide(args: argparse.Namespace) -> dict[str, Any]:
    policy = load_policy(args.policy)
    admission = Admission(settings(args.provenance))
    try:
        headers = {
            "X-Original-Method": args.method,
            "X-Original-URI": args.uri,
            "X-SSL-Client-Verify": "SUCCESS",
            "X-SSL-Client-S-DN": args.subject,
        }
        return Gate(policy, admission, None).decide(headers, record=False).to_json()
    finally:
        admission.close()


def run_serve(args: argparse.Namespace) -> dict[str, Any]:
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=logging.INFO, format="airgap gate: %(message)s", stream=sys.stderr
        )
    policy = load_policy(args.policy)
    admission = Admission(settings(args.provenance))
    audit = open_audit(policy, Path(args.gate_down_log))
    try:
        listener = server.systemd_socket() or server.bind(
            Path(args.socket), group=args.socket_group
        )
        gate = Gate(policy, admission, audit, audit_event)
        log.info("gate serving on %s (mode %s)", listener.getsockname(), policy.mode)
        if policy.backend_storage is not None:
            tags = policy.backend_storage / "docker" / "registry" / "v2" / "repositories"
            if not tags.is_dir():
                log.warning("backend_storage: no %s (yet): tags are asked of the backend", tags)
        server.serve(listener, gate, lambda: load_policy(args.policy))
    finally:
        audit.close()
        admission.close()
    return {"stopped": True}
