"""cosign: verifying an upstream signature with a public key, reaching the registry as told.

cosign reads credentials from ``$DOCKER_CONFIG`` only and trusts CAs from one bundle file:
:func:`registry_flags` writes both from a
:class:`~airgapped_registry.transport.access.RegistryAccess`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from airgapped_registry.tools.process import write_secret
from airgapped_registry.transport.access import RegistryAccess


def verify_argv(cosign: str, key: Path, reference: str, options: Sequence[str] = ()) -> list[str]:
    """``cosign verify`` of ``reference`` with one public key, without the transparency log
    (an isolated site has none; the key is the trust)."""
    return [cosign, "verify", "--key", str(key), "--insecure-ignore-tlog", *options, reference]


def registry_flags(access: RegistryAccess, directory: Path) -> tuple[list[str], dict[str, str]]:
    """``(flags, environment)`` for cosign to reach ``access``; files go in ``directory``.

    The environment is this process's without ``COSIGN_REPOSITORY``, with ``DOCKER_CONFIG``
    naming a directory holding the registry's credentials, or none at all.
    """
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
