"""How the engine reaches one registry: the single place TLS files and credentials are read.

:class:`RegistryAccess` holds what a mirror list's source (or a sync's destination, or a
command's ``--registry``) says about reaching a registry: its URL, the CAs to trust (files
and a skopeo-style cert dir), a client pair, where its credentials are, its request rate and
timeout. Resolution, sync and the CLI all build their clients from it, and the skopeo and
cosign wrappers (:mod:`airgapped_registry.tools`) turn the same object into their flags, so
a source is reached the same way by every program. It takes plain values: the mirror list
maps its ``Source`` onto it.
"""

from __future__ import annotations

import os
import tempfile
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from airgapped_registry import defaults
from airgapped_registry.errors import AirgapError
from airgapped_registry.transport.auth import AuthenticatingClient, credentials_for, read_auths
from airgapped_registry.transport.registry import RegistryClient
from airgapped_registry.transport.throttle import Throttle
from airgapped_registry.transport.tls import read_cert_dir, tls_context


@dataclass(frozen=True)
class RegistryAccess:
    """Everything needed to reach one registry (see the module docstring).

    ``name`` labels messages (``source docker-hub``). ``registry`` is the host[:port] the
    credentials are looked up under (Docker Hub's API host differs from its name); default:
    the URL's. ``credentials_file`` / ``credentials_env``: a docker ``auth.json``, as a file
    or an environment variable holding one; ``credentials_label`` names them in messages
    (default: the file, or ``$VARIABLE``). ``anonymous_tokens``: answer a Bearer challenge
    without credentials too (public images on Docker Hub or ghcr.io need an anonymous token).
    """

    url: str
    name: str = "registry"
    registry: str | None = None
    ca_files: tuple[Path, ...] = ()
    cert_dir: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    credentials_file: Path | None = None
    credentials_env: str | None = None
    credentials_label: str | None = None
    rate_limit: float | None = None
    timeout: float = defaults.REQUEST_TIMEOUT
    anonymous_tokens: bool = False

    @classmethod
    def endpoint(
        cls,
        url: str,
        *,
        ca_file: str | os.PathLike[str] | None = None,
        cert_file: str | os.PathLike[str] | None = None,
        key_file: str | os.PathLike[str] | None = None,
        auth_file: str | os.PathLike[str] | None = None,
        timeout: float = defaults.REQUEST_TIMEOUT,
        name: str = "registry",
    ) -> RegistryAccess:
        """A registry named by a command line or a module: one CA file, one client pair,
        credentials in an auth.json file."""
        return cls(
            url,
            name=name,
            ca_files=(Path(ca_file),) if ca_file else (),
            cert_file=Path(cert_file) if cert_file else None,
            key_file=Path(key_file) if key_file else None,
            credentials_file=Path(auth_file) if auth_file else None,
            credentials_label=f"credentials file {os.fspath(auth_file)}" if auth_file else None,
            timeout=timeout,
        )

    @property
    def address(self) -> str:
        """``host[:port]`` of the URL, as skopeo, cosign and the state name the registry; a
        unix socket's URL as it is (only the engine's own client reaches one)."""
        parts = urlsplit(self.url)
        return self.url if parts.scheme == "unix" else parts.netloc

    @property
    def insecure(self) -> bool:
        return urlsplit(self.url).scheme in ("http", "unix")

    def require_tcp(self, tool: str) -> None:
        """Refuse a registry on a unix socket for ``tool`` (skopeo and cosign speak TCP only)."""
        if urlsplit(self.url).scheme == "unix":
            raise AirgapError(
                f"{self.name} {self.url}: {tool} cannot reach a registry on a unix socket; "
                "give its gateway's https:// URL instead"
            )

    @property
    def has_credentials(self) -> bool:
        return self.credentials_file is not None or self.credentials_env is not None

    def trust(self) -> tuple[list[Path], tuple[Path, Path | None] | None]:
        """``(CA files, client pair)``: ``ca_files`` then the cert dir's, and the pair from
        ``cert_file``/``key_file`` or else the cert dir (checked by skopeo's rules)."""
        ca_files = list(self.ca_files)
        pair = (self.cert_file, self.key_file) if self.cert_file else None
        if self.cert_dir is not None:
            found, dir_pair = read_cert_dir(self.cert_dir, self.name)
            ca_files += found
            pair = pair or dir_pair
        return ca_files, pair

    def credentials(self) -> tuple[str, str] | None:
        """``(username, password)`` for this registry, or None without a credentials source."""
        if not self.has_credentials:
            return None
        auths = read_auths(self.credentials_file, self.credentials_env)
        registry = self.registry or self.address
        found = credentials_for(auths, registry)
        if found is None:
            where = self.credentials_label or self.credentials_file or f"${self.credentials_env}"
            raise AirgapError(f"{self.name}: {where} holds no entry for {registry}")
        return found

    def credentials_text(self) -> str | None:
        """The auth.json document itself, for tools that read it from a file of their own."""
        if self.credentials_file is not None:
            return Path(self.credentials_file).read_text(encoding="utf-8")
        if self.credentials_env is not None:
            return os.environ.get(self.credentials_env, "")
        return None

    def throttle(self) -> Throttle:
        return Throttle(self.rate_limit)

    def client(self) -> RegistryClient:
        """A client with these TLS files and credentials (validated here, named in errors).

        The client trusts one CA file: several are joined into a bundle that lives only until
        the client has read it. TLS files with an ``http`` URL are refused by the client.
        """
        username_password = self.credentials()
        ca_files, pair = self.trust()
        with ExitStack() as stack:
            ca_file: Path | str | None = ca_files[0] if ca_files else None
            if len(ca_files) > 1:
                bundle = stack.enter_context(tempfile.NamedTemporaryFile("w", suffix=".pem"))
                for path in ca_files:
                    tls_context(path, None, None)  # refuses a bad file under its own name
                    bundle.write(path.read_text() + "\n")
                bundle.flush()
                ca_file = bundle.name
            cert_file, key_file = pair if pair else (None, self.key_file)
            options: dict[str, Any] = {
                "ca_file": ca_file,
                "cert_file": cert_file,
                "key_file": key_file,
                "timeout": self.timeout,
            }
            if username_password is None and not self.anonymous_tokens:
                return RegistryClient(self.url, **options)
            username, password = username_password or (None, None)
            return AuthenticatingClient(self.url, username=username, password=password, **options)
