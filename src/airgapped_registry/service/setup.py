"""The service's parts from the provenance file: settings, backend client, scanner, signer.

``scanning`` (with ``backend`` and ``state``) is read by
:func:`airgapped_registry.scanning.config.load`, its ``policy`` by
:meth:`~airgapped_registry.scanning.policy.Policy.from_config`, ``signing`` by
:func:`airgapped_registry.signing.config.load_signing`. A file without a ``signing``
section gives a service that neither attests nor signs; with ``attest: true`` that is
refused, since verdicts nodes cannot check would be a silent gap.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import yaml

from airgapped_registry.errors import AirgapError
from airgapped_registry.scanning import config as scanning_config
from airgapped_registry.scanning.policy import Policy
from airgapped_registry.scanning.scanner import Scanner as TrivyRunner
from airgapped_registry.service.adapters import SignerProvenance, TrivyScanner
from airgapped_registry.service.ports import ServiceSettings
from airgapped_registry.signing.config import SECTION as SIGNING_SECTION
from airgapped_registry.signing.config import load_signing
from airgapped_registry.signing.signer import Signer
from airgapped_registry.transport.access import RegistryAccess
from airgapped_registry.transport.registry import RegistryClient


@dataclass
class ServiceParts:
    settings: ServiceSettings
    config: scanning_config.ScanningConfig
    client: RegistryClient
    scanner: TrivyScanner
    provenance: SignerProvenance | None


def settings_from(config: scanning_config.ScanningConfig) -> ServiceSettings:
    host, port = config.listen.rsplit(":", 1)
    return ServiceSettings(
        backend=config.backend,
        state=config.state,
        policy=Policy.from_config(config.policy, source=os.fspath(config.path)),
        max_age=config.db.max_age,
        listen=(host.strip("[]"), int(port)),
        workers=config.workers,
        reconcile_interval=config.reconcile_interval.total_seconds(),
        attest=config.attest,
    )


def has_signing(path: Path) -> bool:
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return True  # load_signing names the problem
    return isinstance(document, dict) and document.get(SIGNING_SECTION) is not None


@contextmanager
def service_parts(
    path: str | os.PathLike[str], *, cosign: str = "cosign"
) -> Iterator[ServiceParts]:
    config = scanning_config.load(path)
    settings = settings_from(config)
    with ExitStack() as stack:
        client = stack.enter_context(RegistryAccess(config.backend, name="backend").client())
        runner = TrivyRunner(client, config.cache_dir, config.trivy, workers=config.workers)
        provenance = None
        if has_signing(config.path):
            signer = stack.enter_context(
                Signer(load_signing(config.path), cosign_path=cosign, workers=config.workers)
            )
            provenance = SignerProvenance(signer)
        elif config.attest:
            raise AirgapError(
                f"{config.path}: scanning.attest is true but there is no signing section "
                "(the attestation is made with the appliance key); add it or set attest: false"
            )
        yield ServiceParts(
            settings, config, client, TrivyScanner(runner, config.cache_dir), provenance
        )
