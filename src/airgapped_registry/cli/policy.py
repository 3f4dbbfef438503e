"""``airgap policy render``: the gate's admission rule as a document for a cluster's admission
controller (Kyverno, sigstore policy-controller), in YAML (docs/cluster-policies.md).

The appliance's public keys are those ``airgap signing-key list`` publishes (roles/signing
fetches them to the controller); during a rotation's overlap pass both.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

from airgapped_registry.cli.run import finish
from airgapped_registry.errors import AirgapError
from airgapped_registry.gate import clusterpolicy
from airgapped_registry.gate.policy import load_policy

RENDERERS: dict[str, Callable[[str, Sequence[str], Sequence[str]], dict[str, Any]]] = {
    "kyverno": clusterpolicy.kyverno,
    "policy-controller": clusterpolicy.policy_controller,
}


class PolicyRenderError(AirgapError):
    """A policy cannot be rendered from what was given (a key file, the output file)."""


def add_policy_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    policy = commands.add_parser("policy", help="the gate's policy for clusters and nodes")
    actions = policy.add_subparsers(dest="action", required=True, metavar="ACTION")
    render = actions.add_parser(
        "render",
        help="a cluster admission policy requiring the appliance's signature (YAML)",
        description="Render the admission rule of the gate (every repository but the landing"
        " zones needs the appliance's signature) for a cluster's admission controller."
        " Verification is offline: the keys are in the document, no transparency log.",
    )
    render.add_argument("--format", required=True, choices=sorted(RENDERERS))
    render.add_argument(
        "--registry",
        required=True,
        metavar="HOST[:PORT]",
        help="the registry as the cluster's image references name it, e.g. registry:443",
    )
    zones = render.add_mutually_exclusive_group()
    zones.add_argument(
        "--policy",
        metavar="GATE_YAML",
        help="take the landing zones from the gate's policy (/etc/airgapped-registry/gate.yaml)",
    )
    zones.add_argument(
        "--landing-zone",
        action="append",
        default=[],
        metavar="PREFIX",
        dest="landing_zones",
        help="a repository prefix CI pushes into, not protected (e.g. ci/); repeat for more;"
        " neither this nor --policy: every repository is protected",
    )
    render.add_argument(
        "--key",
        action="append",
        required=True,
        metavar="PUB",
        dest="keys",
        help="a published public key of the appliance (cosign-<id>.pub); repeat for more",
    )
    render.add_argument("-o", "--output", metavar="FILE", help="write the YAML here, not to stdout")
    render.set_defaults(run=run_render)


def run_render(args: argparse.Namespace) -> dict[str, Any]:
    keys = [read_key(path) for path in args.keys]
    landing_zones = load_policy(args.policy).landing_zones if args.policy else args.landing_zones
    try:
        document = RENDERERS[args.format](args.registry, landing_zones, keys)
    except ValueError as exc:
        # The key numbers the engine counts are the order of --key: name the file instead.
        raise PolicyRenderError(_name_key_files(str(exc), args.keys)) from None
    text = to_yaml(document)
    if args.output is None:
        finish(text, 0)
    write_atomically(Path(args.output), text)
    return {
        "format": args.format,
        "output": args.output,
        "kind": document["kind"],
        "documents": len(document.get("items", [document])),
    }


def read_key(path: str) -> str:
    try:
        return Path(path).read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        raise PolicyRenderError(f"public key {path}: cannot be read ({exc})") from None


def _name_key_files(message: str, paths: Sequence[str]) -> str:
    for number, path in enumerate(paths, 1):
        if message.startswith(f"public key {number}:"):
            return f"public key {path}:" + message[len(f"public key {number}:") :]
    return message


class _Dumper(yaml.SafeDumper):
    """Block style for text of several lines (the PEM keys), as a person would write it."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def to_yaml(document: dict[str, Any]) -> str:
    return yaml.dump(document, Dumper=_Dumper, sort_keys=False, default_flow_style=False)


def write_atomically(path: Path, text: str) -> None:
    directory = path.parent if str(path.parent) else Path(".")
    try:
        handle, temporary = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.")
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(text)
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except OSError as exc:
        raise PolicyRenderError(f"{path}: cannot be written ({exc})") from None
