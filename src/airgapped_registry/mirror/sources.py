"""The mirror list's sources as the engine reads them while resolving a lock.

:func:`source_access` maps a mirror list's :class:`~airgapped_registry.mirror.spec.Source`
onto the transport's :class:`~airgapped_registry.transport.access.RegistryAccess`, the one
description of how a source is reached (resolution, the engine copier, skopeo and cosign all
start from it). :class:`SourceReader` is one source during a resolution: its client, its
throttle, the tag lists read so far and the requests made; :class:`CopySource` is one source
during a sync: the engine's reads, skopeo's flags, cosign's flags and environment.
"""

from __future__ import annotations

import threading
from collections.abc import MutableMapping
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from airgapped_registry import defaults
from airgapped_registry.mirror.spec import MirrorSpec, Source
from airgapped_registry.tools import cosign, skopeo
from airgapped_registry.transport.access import RegistryAccess
from airgapped_registry.transport.counters import RequestCount
from airgapped_registry.transport.registry import ManifestRef, RegistryClient
from airgapped_registry.transport.throttle import Throttle

Fetched = tuple[bytes, str, str]  # (body, media type, digest)


def source_access(
    spec: MirrorSpec, source: Source, timeout: float = defaults.REQUEST_TIMEOUT
) -> RegistryAccess:
    """How ``source`` is reached: its files resolved against the mirror list's directory.

    A plain-http (``insecure``) source is reached without TLS files.
    """
    credentials = source.credentials
    secure = not source.insecure
    return RegistryAccess(
        source.url,
        name=f"source {source.name}",
        registry=source.registry,
        ca_files=(spec.resolve_path(source.ca_file),) if secure and source.ca_file else (),
        cert_dir=spec.resolve_path(source.cert_dir) if secure and source.cert_dir else None,
        credentials_file=(
            spec.resolve_path(credentials.file) if credentials and credentials.file else None
        ),
        credentials_env=credentials.env if credentials else None,
        credentials_label=(credentials.file or f"${credentials.env}") if credentials else None,
        rate_limit=source.rate_limit,
        timeout=timeout,
        # Also without credentials: public images on Docker Hub or ghcr.io need an
        # anonymous token.
        anonymous_tokens=True,
    )


class SourceReader:
    """One source as a resolution reads it: every request spaced by the source's throttle.

    Tag lists are read once per repository, also when entries sharing it are resolved at
    once. The first request to a source goes alone: it answers the source's authentication
    challenge (the client switches to Basic once, on the first 401 it sees), and requests
    racing it would be refused. ``manifests``, when given, receives every manifest fetched,
    by digest (for a sync that follows to reuse).
    """

    def __init__(
        self,
        client: RegistryClient,
        throttle: Throttle,
        manifests: MutableMapping[str, bytes] | None = None,
    ) -> None:
        self.client = client
        self.throttle = throttle
        self.manifests = manifests
        self.before = RequestCount.of(client)
        self._tags: dict[str, list[str]] = {}
        self._guard = threading.Lock()
        self._listing: dict[str, threading.Lock] = {}
        self._first_request = threading.Lock()
        self._answered = False

    def requests(self) -> dict[str, Any]:
        """Requests made since the reader was made: ``total`` and ``by_method``."""
        return self.before.since(self.client)

    def tags(self, repository: str) -> list[str]:
        with self._guard:
            listing = self._listing.setdefault(repository, threading.Lock())
        with listing:
            if repository not in self._tags:
                with nullcontext() if self._answered else self._first_request:
                    self.throttle.wait()
                    self._tags[repository] = self.client.tags(repository)
                    self._answered = True
            return self._tags[repository]

    def head(self, repository: str, reference: str) -> ManifestRef | None:
        self.throttle.wait()
        return self.client.head_manifest(repository, reference)

    def get(self, repository: str, reference: str) -> Fetched:
        self.throttle.wait()
        return self._kept(self.client.get_manifest(repository, reference))

    def get_unless(self, repository: str, reference: str, digest: str) -> Fetched | None:
        """:meth:`get`, or None when ``reference`` still names ``digest`` (conditional)."""
        self.throttle.wait()
        fetched = self.client.get_manifest_unless(repository, reference, digest)
        return self._kept(fetched) if fetched is not None else None

    def _kept(self, fetched: Fetched) -> Fetched:
        if self.manifests is not None:
            self.manifests[fetched[2]] = fetched[0]
        return fetched


@dataclass
class CopySource:
    """A source as a sync reaches it: the engine (client), skopeo (flags), cosign (flags, env).

    ``get_manifest`` and ``get_blob`` are the engine's reads, spaced by the source's
    ``rate_limit`` (skopeo's and cosign's requests are not).
    """

    access: RegistryAccess
    client: RegistryClient
    before: RequestCount
    throttle: Throttle
    skopeo_options: list[str]
    cosign_options: list[str]
    cosign_env: dict[str, str]

    @classmethod
    def open(cls, access: RegistryAccess, directory: Path) -> CopySource:
        """Make the client (which checks the TLS files and credentials), then write the files
        skopeo and cosign need into ``directory`` (created, 0700)."""
        client = access.client()
        directory.mkdir(mode=0o700)
        cosign_options, cosign_env = cosign.registry_flags(access, directory)
        return cls(
            access,
            client,
            RequestCount.of(client),
            access.throttle(),
            skopeo.source_flags(access, directory),
            cosign_options,
            cosign_env,
        )

    def get_manifest(self, repository: str, digest: str) -> bytes:
        self.throttle.wait()
        return self.client.get_manifest(repository, digest)[0]

    def get_blob(self, repository: str, digest: str) -> bytes:
        self.throttle.wait()
        return self.client.get_blob(repository, digest)
