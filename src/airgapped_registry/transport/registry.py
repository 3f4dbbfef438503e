"""Client of the OCI distribution-spec v2 API, built on the standard library only.

The engine runs on isolated hosts with nothing but python3 and python3-yaml, so this speaks
HTTP through ``http.client`` and TLS through an ``ssl`` context built from the files the
caller names. Environment variables such as ``SSL_CERT_FILE`` or ``REQUESTS_CA_BUNDLE`` never
change which CA is trusted: an appliance that silently trusted the system bundle instead of its
own internal CA would fail (or, worse, succeed) for reasons nobody can see.

HTTP itself (connections, TLS, redirects, retries of reads, counters) is
:class:`~airgapped_registry.transport.session.RegistrySession`'s; this module is the API.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import BinaryIO, cast

from airgapped_registry.errors import DigestMismatchError
from airgapped_registry.oci.mediatypes import MANIFEST_MEDIA_TYPES
from airgapped_registry.oci.reference import (
    DIGEST_PATTERN,
    TAG_PATTERN,
    check_digest,
    check_repository,
    digest_of,
)
from airgapped_registry.transport.session import Response
from airgapped_registry.transport.uploads import BlobUploads, blob_path


@dataclass(frozen=True)
class ManifestRef:
    """What a registry says a manifest reference resolves to, without its body."""

    digest: str
    media_type: str
    size: int


class RegistryClient(BlobUploads):
    """Talks to one registry's OCI distribution API: manifests, blob reads, tags, the
    catalog; blob writes are :class:`BlobUploads`', and connections, retries and counters
    :class:`~airgapped_registry.transport.session.RegistrySession`'s."""

    def ping(self) -> None:
        """Check that the endpoint speaks the v2 API and lets us in."""
        self._call("GET", "/v2/", expect=(200,))

    def head_manifest(self, repository: str, reference: str) -> ManifestRef | None:
        """Resolve a tag or digest without fetching the manifest; None when it does not exist."""
        path = _manifest_path(repository, reference)
        response = self._call(
            "HEAD", path, headers={"Accept": ", ".join(MANIFEST_MEDIA_TYPES)}, expect=(200, 404)
        )
        if response.status == 404:
            return None
        digest = response.header("Docker-Content-Digest")
        media_type = _media_type(response)
        length = response.header("Content-Length")
        if not digest or not media_type or length is None:
            # The spec only says SHOULD for these headers; the body is authoritative.
            body, media_type, digest = self.get_manifest(repository, reference)
            return ManifestRef(digest=digest, media_type=media_type, size=len(body))
        return ManifestRef(digest=digest, media_type=media_type, size=int(length))

    def get_manifest(
        self,
        repository: str,
        reference: str,
        accept: Iterable[str] = MANIFEST_MEDIA_TYPES,
    ) -> tuple[bytes, str, str]:
        """Fetch a manifest; returns ``(body, media_type, digest)`` with the digest verified."""
        path = _manifest_path(repository, reference)
        response = self._call("GET", path, headers={"Accept": ", ".join(accept)}, expect=(200,))
        return self._checked_manifest(response, reference)

    @staticmethod
    def _checked_manifest(response: Response, reference: str) -> tuple[bytes, str, str]:
        body = response.body
        media_type = _media_type(response) or _declared_media_type(body)
        if DIGEST_PATTERN.fullmatch(reference):
            digest = digest_of(body, reference.split(":", 1)[0])
            if digest != reference:
                raise DigestMismatchError("GET", response.url, response.status, reference, digest)
        else:
            digest = digest_of(body)
        announced = response.header("Docker-Content-Digest")
        if announced and announced.startswith("sha256:") and announced != digest_of(body):
            raise DigestMismatchError(
                "GET", response.url, response.status, announced, digest_of(body)
            )
        return body, media_type, digest

    def get_manifest_unless(
        self, repository: str, reference: str, digest: str
    ) -> tuple[bytes, str, str] | None:
        """:meth:`get_manifest`, or None when ``reference`` still names ``digest``.

        One conditional ``GET`` (``If-None-Match``: the digest, which is the manifest's ETag
        in Distribution): 304 means unchanged, and the registry skips reading the manifest.
        A registry that ignores the condition answers 200, and the bytes decide.
        """
        path = _manifest_path(repository, reference)
        check_digest(digest)
        headers = {"Accept": ", ".join(MANIFEST_MEDIA_TYPES), "If-None-Match": f'"{digest}"'}
        response = self._call("GET", path, headers=headers, expect=(200, 304))
        if response.status == 304:
            return None
        return self._checked_manifest(response, reference)

    def put_manifest(self, repository: str, reference: str, body: bytes, media_type: str) -> str:
        """Store a manifest under a tag or its digest; returns the digest the registry stored."""
        path = _manifest_path(repository, reference)
        response = self._call(
            "PUT", path, headers={"Content-Type": media_type}, body=body, expect=(201,)
        )
        digest = digest_of(body)
        stored = response.header("Docker-Content-Digest")
        if stored and stored != digest:
            raise DigestMismatchError("PUT", response.url, response.status, digest, stored)
        return digest

    def delete_manifest(self, repository: str, digest: str) -> None:
        """Delete a manifest by digest (Distribution 2.8 cannot delete by tag)."""
        check_digest(digest)
        self._call("DELETE", _manifest_path(repository, digest), expect=(200, 202))

    def get_blob(self, repository: str, digest: str) -> bytes:
        """Fetch a blob into memory and verify it against its digest."""
        response = self._call("GET", blob_path(repository, digest), expect=(200,))
        actual = digest_of(response.body, digest.split(":", 1)[0])
        if actual != digest:
            raise DigestMismatchError("GET", response.url, response.status, digest, actual)
        return response.body

    def download_blob(self, repository: str, digest: str, sink: BinaryIO) -> int:
        """Write a blob into ``sink`` (a file open for writing, rewound and truncated on each
        try) without holding it in memory; verify it against its digest, hashed as the bytes
        arrive (never read back). Returns its size."""
        hashing = _HashingSink(sink, digest.split(":", 1)[0])
        response = self._call(
            "GET", blob_path(repository, digest), expect=(200,), sink=cast(BinaryIO, hashing)
        )
        sink.flush()
        actual = f"{hashing.hasher.name}:{hashing.hasher.hexdigest()}"
        if actual != digest:
            raise DigestMismatchError("GET", response.url, response.status, digest, actual)
        return hashing.size

    def tags(self, repository: str, page_size: int | None = None) -> list[str]:
        """All tags of a repository, following ``Link`` pagination."""
        check_repository(repository)
        return self._paginate(f"/v2/{repository}/tags/list", "tags", page_size)

    def catalog(self, page_size: int | None = None) -> list[str]:
        """All repositories the registry lists, following ``Link`` pagination."""
        return self._paginate("/v2/_catalog", "repositories", page_size)


class _HashingSink:
    """The file a blob streams into, hashing what is written; rewinding it starts over
    (the session rewinds and truncates the sink before each try)."""

    def __init__(self, sink: BinaryIO, algorithm: str) -> None:
        self.sink = sink
        self.algorithm = algorithm
        self.hasher = hashlib.new(algorithm)
        self.size = 0

    def write(self, data: bytes) -> int:
        self.hasher.update(data)
        self.size += len(data)
        return self.sink.write(data)

    def seek(self, offset: int, whence: int = 0) -> int:
        if (offset, whence) != (0, 0):
            raise ValueError("a blob download only rewinds to its start")
        self.hasher = hashlib.new(self.algorithm)
        self.size = 0
        return self.sink.seek(0)

    def truncate(self, size: int | None = None) -> int:
        return self.sink.truncate(size)


def _media_type(response: Response) -> str:
    value = response.header("Content-Type") or ""
    return value.split(";", 1)[0].strip()


def _declared_media_type(body: bytes) -> str:
    try:
        document = json.loads(body)
    except ValueError:
        return ""
    return str(document.get("mediaType", "")) if isinstance(document, dict) else ""


def _manifest_path(repository: str, reference: str) -> str:
    check_repository(repository)
    if not (TAG_PATTERN.fullmatch(reference) or DIGEST_PATTERN.fullmatch(reference)):
        raise ValueError(f"invalid reference {reference!r} in repository {repository!r}")
    return f"/v2/{repository}/manifests/{reference}"
