"""cosign 2.x: verifying, signing and attesting with key pairs, reaching the registry as told.

cosign reads credentials from ``$DOCKER_CONFIG`` only and trusts CAs from one bundle file:
:func:`registry_flags` writes both from a
:class:`~airgapped_registry.transport.access.RegistryAccess`. A private key's password only
ever travels in ``COSIGN_PASSWORD`` in the child's environment (:func:`with_password`),
never in an argument list, which any user of the host can read in ``/proc``.

An isolated site has no transparency log: signatures and attestations are made with
``--tlog-upload=false`` and checked with ``--insecure-ignore-tlog``; the key is the trust.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from airgapped_registry.tools.process import ToolError, Tools, tool_error, write_secret
from airgapped_registry.transport.access import RegistryAccess

# cosign's name of a vulnerability scan predicate (``--type vuln``).
VULN_PREDICATE_TYPE = "https://cosign.sigstore.dev/attestation/vuln/v1"
PASSWORD_VARIABLE = "COSIGN_PASSWORD"


def verify_argv(cosign: str, key: Path, reference: str, options: Sequence[str] = ()) -> list[str]:
    """``cosign verify`` of ``reference`` with one public key, without the transparency log
    (an isolated site has none; the key is the trust)."""
    return [cosign, "verify", "--key", str(key), "--insecure-ignore-tlog", *options, reference]


def sign_argv(cosign: str, key: Path, reference: str, options: Sequence[str] = ()) -> list[str]:
    """``cosign sign`` of one manifest (``reference`` by digest) with a key pair, appending a
    layer to its ``sha256-<hex>.sig`` tag; never recursive: an index's children are signed
    one by one, each after its own check, so nothing already signed is signed again."""
    return [cosign, "sign", "--key", str(key), "--tlog-upload=false", "--yes", *options, reference]


def attest_argv(
    cosign: str,
    key: Path,
    reference: str,
    predicate: Path,
    predicate_type: str = "vuln",
    options: Sequence[str] = (),
    replace: bool = False,
) -> list[str]:
    """``cosign attest`` of ``reference`` with ``predicate`` (a file) of ``predicate_type``.

    ``replace``: drop every attestation of that predicate type first, whoever signed it
    (cosign's ``--replace``); otherwise the new one is appended beside them.
    """
    return [
        cosign,
        "attest",
        "--key",
        str(key),
        "--type",
        predicate_type,
        "--predicate",
        str(predicate),
        "--tlog-upload=false",
        "--yes",
        *(["--replace"] if replace else []),
        *options,
        reference,
    ]


def verify_attestation_argv(
    cosign: str,
    key: Path,
    reference: str,
    predicate_type: str = "vuln",
    options: Sequence[str] = (),
) -> list[str]:
    """``cosign verify-attestation`` of ``reference``'s ``predicate_type`` with one public key."""
    return [
        cosign,
        "verify-attestation",
        "--key",
        str(key),
        "--type",
        predicate_type,
        "--insecure-ignore-tlog",
        *options,
        reference,
    ]


def with_password(env: Mapping[str, str] | None, password: str) -> dict[str, str]:
    """``env`` (default: this process's) with the private key's password for cosign."""
    return {**(os.environ if env is None else env), PASSWORD_VARIABLE: password}


def generate_key_pair(
    tools: Tools, cosign: str, directory: Path, prefix: str, password: str
) -> tuple[Path, Path]:
    """A new key pair in ``directory``: ``(prefix.key, prefix.pub)``, the private key
    encrypted with ``password`` and readable by its owner only.

    cosign asks before overwriting, so ``directory`` must not hold either file yet.
    """
    key, public = directory / f"{prefix}.key", directory / f"{prefix}.pub"
    for path in (key, public):
        if path.exists():
            raise ToolError(f"{path}: exists already; a new key pair needs fresh names", True)
    env = {name: value for name, value in os.environ.items() if name != PASSWORD_VARIABLE}
    argv = [cosign, "generate-key-pair", "--output-key-prefix", str(directory / prefix)]
    completed = tools.run("cosign", argv, with_password(env, password))
    if completed.returncode != 0:
        raise ToolError(
            f"cosign generate-key-pair into {directory}: "
            f"{hide(tool_error(completed.stderr or completed.stdout), password)}"
        )
    if not (key.is_file() and public.is_file()):
        raise ToolError(f"cosign generate-key-pair wrote no {key.name} and {public.name}")
    os.chmod(key, 0o600)
    return key, public


def hide(text: str, *secrets: str) -> str:
    """``text`` with every non-empty secret in it masked, for messages a tool's output feeds."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


def registry_flags(access: RegistryAccess, directory: Path) -> tuple[list[str], dict[str, str]]:
    """``(flags, environment)`` for cosign to reach ``access``; files go in ``directory``.

    The environment is this process's without ``COSIGN_REPOSITORY``, with ``DOCKER_CONFIG``
    naming a directory holding the registry's credentials, or none at all.
    """
    access.require_tcp("cosign")
    options: list[str] = []
    if access.insecure:
        options.append("--allow-http-registry")
    else:
        ca_files, pair = access.trust()
        if ca_files:
            bundle = directory / "ca-bundle.pem"
            bundle.write_text("".join(path.read_text() + "\n" for path in ca_files))
            options += ["--registry-cacert", str(bundle)]
        if pair:
            cert, key = pair
            options += ["--registry-client-cert", str(cert), "--registry-client-key", str(key)]
    docker_config = directory / "docker"
    docker_config.mkdir(mode=0o700)
    text = access.credentials_text()
    if text is not None:
        write_secret(docker_config / "config.json", text)
    env = {key: value for key, value in os.environ.items() if key != "COSIGN_REPOSITORY"}
    env["DOCKER_CONFIG"] = str(docker_config)
    return options, env
