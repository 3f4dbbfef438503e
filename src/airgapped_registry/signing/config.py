"""The ``signing:`` section of the registry host's provenance file, checked.

The file (``/etc/airgapped-registry/provenance.yaml``) holds one section per domain; this
module reads only ``version`` and ``signing``, so the scanner's section can change without
touching signing. Every refusal names the file, the key and the cause. Relative paths are
taken from the file's directory.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import yaml

from airgapped_registry.errors import AirgapError
from airgapped_registry.transport.access import RegistryAccess

SECTION = "signing"
_PATHS = ("ca_file", "cert_file", "key_file", "keys_dir", "password_file")
_KEYS = frozenset({"registry", *_PATHS, "repositories"})
_ADDRESS = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?(:[0-9]{1,5})?")
_DURATION = re.compile(r"([0-9]+)([smhd])")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


class SigningConfigError(AirgapError):
    """The provenance file's signing section cannot be used as written."""


def parse_duration(text: str, where: str) -> timedelta:
    """``<int>[s|m|h|d]`` (``30d``, ``12h``) as a duration; ``where`` names it in refusals."""
    match = _DURATION.fullmatch(text.strip()) if isinstance(text, str) else None
    if match is None:
        raise SigningConfigError(f"{where}: {text!r} is not a duration (<int>[s|m|h|d], e.g. 30d)")
    return timedelta(**{_UNITS[match[2]]: int(match[1])})


@dataclass(frozen=True)
class SigningConfig:
    """Where and with what the appliance signs.

    ``registry``: host:port exactly as nodes write it in image references (the gateway): a
    signature's payload names the repository under it, and a node's ``matchRepository``
    policy compares the two. ``ca_file``/``cert_file``/``key_file``: the appliance's own
    client identity at that gateway. ``keys_dir`` holds ``keys.json`` and the key pairs
    (:mod:`airgapped_registry.signing.keys`); ``password_file`` the private keys' password.
    ``repositories``: the prefixes whose pushes are signed as they arrive (CI repositories).
    """

    path: Path
    registry: str
    ca_file: Path
    cert_file: Path
    key_file: Path
    keys_dir: Path
    password_file: Path
    repositories: tuple[str, ...] = ()

    def access(self) -> RegistryAccess:
        """How the signer reaches the gateway: TLS with the appliance's client pair."""
        return RegistryAccess.endpoint(
            f"https://{self.registry}",
            ca_file=self.ca_file,
            cert_file=self.cert_file,
            key_file=self.key_file,
            name=f"signing registry {self.registry}",
        )

    def password(self) -> str:
        """The private keys' password: the file's text without its final newline. Messages
        name the file, never what it holds."""
        where = f"{self.path}: {SECTION}.password_file {self.password_file}"
        try:
            text = self.password_file.read_text(encoding="utf-8")
        except OSError as exc:
            raise SigningConfigError(f"{where}: cannot read ({exc.strerror})") from None
        except UnicodeDecodeError:
            raise SigningConfigError(f"{where}: not UTF-8 text") from None
        password = text[:-1] if text.endswith("\n") else text
        if not password:
            raise SigningConfigError(f"{where}: empty; the private keys need a password")
        return password

    def signs(self, repository: str) -> bool:
        """Whether pushes into ``repository`` are signed as they arrive."""
        return any(repository.startswith(prefix) for prefix in self.repositories)


def load_signing(path: str | Path) -> SigningConfig:
    """The ``signing:`` section of the provenance file at ``path``."""
    path = Path(path)
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise SigningConfigError(f"{path}: cannot read ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise SigningConfigError(f"{path}: not YAML: {exc}".replace("\n", " ")) from None
    if not isinstance(document, Mapping):
        raise SigningConfigError(f"{path}: not a mapping of sections")
    if document.get("version") != 1:
        raise SigningConfigError(f"{path}: version: {document.get('version')!r}, expected 1")
    section = document.get(SECTION)
    if not isinstance(section, Mapping):
        raise SigningConfigError(f"{path}: {SECTION}: missing, or not a mapping")
    return _section(path, section)


def _section(path: Path, section: Mapping[Any, Any]) -> SigningConfig:
    def where(key: str) -> str:
        return f"{path}: {SECTION}.{key}"

    unknown = sorted(str(key) for key in section if key not in _KEYS)
    if unknown:
        raise SigningConfigError(
            f"{where(unknown[0])}: unknown key (known: {', '.join(sorted(_KEYS))})"
        )
    missing = [key for key in ("registry", *_PATHS) if section.get(key) in (None, "")]
    if missing:
        raise SigningConfigError(f"{where(missing[0])}: missing")
    registry = section["registry"]
    if not isinstance(registry, str) or not _ADDRESS.fullmatch(registry):
        raise SigningConfigError(
            f"{where('registry')}: {registry!r} is not host[:port] (no scheme, no path)"
        )
    paths: dict[str, Path] = {}
    for key in _PATHS:
        value = section[key]
        if not isinstance(value, str):
            raise SigningConfigError(f"{where(key)}: {value!r} is not a path")
        paths[key] = path.parent / value
    repositories = section.get("repositories") or []
    if not isinstance(repositories, list) or not all(
        isinstance(prefix, str) and prefix for prefix in repositories
    ):
        raise SigningConfigError(
            f"{where('repositories')}: {repositories!r} is not a list of repository prefixes"
        )
    return SigningConfig(path=path, registry=registry, repositories=tuple(repositories), **paths)
