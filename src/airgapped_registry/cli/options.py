"""Options shared by command groups: a registry endpoint, the files to reach it, a client."""

from __future__ import annotations

import argparse
from typing import Any

from airgapped_registry import defaults
from airgapped_registry.transport.access import RegistryAccess
from airgapped_registry.transport.registry import RegistryClient


def registry_options() -> argparse.ArgumentParser:
    """Options naming a registry endpoint and the TLS files to reach it."""
    parser = argparse.ArgumentParser(add_help=False)
    group = parser.add_argument_group("registry")
    group.add_argument("--registry", required=True, metavar="URL", help="http(s)://host[:port]")
    group.add_argument("--ca-file", metavar="PEM", help="CA bundle trusted for the registry")
    group.add_argument("--cert-file", metavar="PEM", help="client certificate for mutual TLS")
    group.add_argument("--key-file", metavar="PEM", help="key of the client certificate")
    group.add_argument(
        "--auth-file", metavar="FILE", help="auth.json with credentials for the registry"
    )
    group.add_argument("--timeout", type=float, default=defaults.REQUEST_TIMEOUT, metavar="SECONDS")
    return parser


def registry_files(args: argparse.Namespace) -> dict[str, Any]:
    """The options naming how to reach ``--registry``, as keyword arguments (the names of
    :meth:`RegistryAccess.endpoint` and of a sync's ``Destination``)."""
    names = ("ca_file", "cert_file", "key_file", "auth_file", "timeout")
    return {name: getattr(args, name) for name in names}


def registry_access(args: argparse.Namespace) -> RegistryAccess:
    """How to reach ``--registry``: TLS files and credentials, as a sync destination is."""
    return RegistryAccess.endpoint(args.registry, **registry_files(args))


def registry_client(args: argparse.Namespace) -> RegistryClient:
    return registry_access(args).client()
