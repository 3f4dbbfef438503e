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

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from urllib.parse import urlencode, urljoin, urlsplit, urlunsplit

from airgapped_registry.errors import AirgapError, DigestMismatchError, RegistryError
from airgapped_registry.oci.mediatypes import MANIFEST_MEDIA_TYPES
from airgapped_registry.oci.reference import (
    DIGEST_PATTERN,
    REPOSITORY_PATTERN,
    TAG_PATTERN,
    digest_of,
)
from airgapped_registry.transport.session import RegistrySession, Response


@dataclass(frozen=True)
class ManifestRef:
    """What a registry says a manifest reference resolves to, without its body."""

    digest: str
    media_type: str
    size: int


class RegistryClient(RegistrySession):
    """Talks to one registry's OCI distribution API (manifests, blobs, uploads, tags) over
    a :class:`RegistrySession`; see there for connections, retries and counters."""

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
        _check_digest(digest)
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
        _check_digest(digest)
        self._call("DELETE", _manifest_path(repository, digest), expect=(200, 202))

    def blob_exists(self, repository: str, digest: str) -> bool:
        response = self._call("HEAD", _blob_path(repository, digest), expect=(200, 404))
        return response.status == 200

    def mount_blob(self, repository: str, digest: str, mount_from: str) -> bool:
        """Mount a blob from another repository of this registry (``POST ?mount=&from=``,
        nothing sent); False when the registry did not (it opened an upload session
        instead, which is closed again at once so that none is left behind)."""
        _check_repository(repository)
        _check_repository(mount_from)
        _check_digest(digest)
        query = urlencode({"mount": digest, "from": mount_from})
        uploads = f"/v2/{repository}/blobs/uploads/?{query}"
        response = self._call("POST", uploads, expect=(201, 202))
        if response.status == 201:
            with self._lock:
                self.blobs_mounted += 1
            return True
        location = response.header("Location")
        if location:
            self._call("DELETE", urljoin(response.url, location), expect=(204, 404))
        return False

    def get_blob(self, repository: str, digest: str) -> bytes:
        """Fetch a blob into memory and verify it against its digest."""
        response = self._call("GET", _blob_path(repository, digest), expect=(200,))
        actual = digest_of(response.body, digest.split(":", 1)[0])
        if actual != digest:
            raise DigestMismatchError("GET", response.url, response.status, digest, actual)
        return response.body

    def push_blob(
        self,
        repository: str,
        digest: str,
        data: bytes | Callable[[], bytes],
        mount_from: str | None = None,
    ) -> bool:
        """Make a blob present in a repository; False when it already was.

        ``data`` may be a function producing the bytes: it is called only if an upload is
        really needed, so callers that generate or read blobs lazily pay nothing for blobs
        the registry already has or can mount. With ``mount_from``, a cross-repository mount
        is tried first; a registry that refuses it opens an upload session instead, which is
        then used for the upload.
        """
        _check_repository(repository)
        _check_digest(digest)
        if mount_from:
            _check_repository(mount_from)
        if self.blob_exists(repository, digest):
            return False
        self.place_blob(repository, digest, data, mount_from)
        return True

    def place_blob(
        self,
        repository: str,
        digest: str,
        data: bytes | Callable[[], bytes],
        mount_from: str | None = None,
    ) -> str:
        """Mount or upload a blob without asking first whether it is there.

        Returns ``mounted`` (``POST ?mount=&from=`` answered 201: nothing sent) or
        ``uploaded`` (``POST`` then one monolithic ``PUT`` with the bytes; a registry that
        refuses the mount opens the upload session instead). ``mount_from`` may be
        ``repository`` itself: the blob is then found there or uploaded. For callers that
        know the blob is absent or mountable (the sync's ledger); :meth:`push_blob` asks
        first.
        """
        _check_repository(repository)
        _check_digest(digest)
        if mount_from:
            _check_repository(mount_from)
        uploads = f"/v2/{repository}/blobs/uploads/"
        if mount_from:
            # From the repository itself too: one request that either finds the blob there
            # (201) or opens the upload (202), where a HEAD would cost one more.
            query = urlencode({"mount": digest, "from": mount_from})
            response = self._call("POST", f"{uploads}?{query}", expect=(201, 202))
            if response.status == 201:
                with self._lock:
                    self.blobs_mounted += 1
                return "mounted"
        else:
            response = self._call("POST", uploads, expect=(202,))
        location = response.header("Location")
        if not location:
            raise RegistryError(
                "POST", response.url, response.status, cause="upload session without Location"
            )
        session = urljoin(response.url, location)
        try:
            payload = data() if callable(data) else data
            response = self._call(
                "PUT",
                _with_query(session, digest=digest),
                headers={"Content-Type": "application/octet-stream"},
                body=payload,
                expect=(201,),
            )
        except BaseException:
            # A session left open holds its bytes until the registry purges it (days).
            self.cancel_upload(session)
            raise
        stored = response.header("Docker-Content-Digest")
        if stored and stored != digest:
            raise DigestMismatchError("PUT", response.url, response.status, digest, stored)
        with self._lock:
            self.blobs_uploaded += 1
            self.bytes_uploaded += len(payload)
        return "uploaded"

    def check_upload(self, repository: str, size: int = 64 * 1024) -> None:
        """Open an upload session, write ``size`` bytes into it and close it again: raises
        what the registry answers when it cannot take them (a full disk)."""
        _check_repository(repository)
        response = self._call("POST", f"/v2/{repository}/blobs/uploads/", expect=(202,))
        location = response.header("Location")
        if not location:
            return
        session = urljoin(response.url, location)
        try:
            response = self._call(
                "PATCH",
                session,
                headers={"Content-Type": "application/octet-stream"},
                body=bytes(size),
                expect=(202,),
            )
            session = urljoin(response.url, response.header("Location") or session)
        finally:
            self.cancel_upload(session)

    def cancel_upload(self, session: str) -> bool:
        """Close an upload session (``DELETE`` its URL, as ``Location`` gave it); True when
        the registry closed it. Best effort: a failure here must not hide the failure that
        made the caller give up the upload, so none is raised."""
        parts = urlsplit(session)
        if (parts.scheme, parts.netloc) != self._origin or "/blobs/uploads/" not in parts.path:
            return False
        try:
            self._call("DELETE", session, expect=(204, 404))
        except (AirgapError, OSError):
            return False
        return True

    def tags(self, repository: str, page_size: int | None = None) -> list[str]:
        """All tags of a repository, following ``Link`` pagination."""
        _check_repository(repository)
        return self._paginate(f"/v2/{repository}/tags/list", "tags", page_size)

    def catalog(self, page_size: int | None = None) -> list[str]:
        """All repositories the registry lists, following ``Link`` pagination."""
        return self._paginate("/v2/_catalog", "repositories", page_size)


def _media_type(response: Response) -> str:
    value = response.header("Content-Type") or ""
    return value.split(";", 1)[0].strip()


def _declared_media_type(body: bytes) -> str:
    try:
        document = json.loads(body)
    except ValueError:
        return ""
    return str(document.get("mediaType", "")) if isinstance(document, dict) else ""


def _with_query(url: str, **params: str) -> str:
    parts = urlsplit(url)
    extra = urlencode(params)
    query = f"{parts.query}&{extra}" if parts.query else extra
    return urlunsplit(parts._replace(query=query))


def _check_repository(repository: str) -> None:
    if not REPOSITORY_PATTERN.fullmatch(repository):
        raise ValueError(f"invalid repository name {repository!r}")


def _check_digest(digest: str) -> None:
    if not DIGEST_PATTERN.fullmatch(digest):
        raise ValueError(f"invalid digest {digest!r}: expected sha256:<64 hex> or sha512:<128 hex>")


def _manifest_path(repository: str, reference: str) -> str:
    _check_repository(repository)
    if not (TAG_PATTERN.fullmatch(reference) or DIGEST_PATTERN.fullmatch(reference)):
        raise ValueError(f"invalid reference {reference!r} in repository {repository!r}")
    return f"/v2/{repository}/manifests/{reference}"


def _blob_path(repository: str, digest: str) -> str:
    _check_repository(repository)
    _check_digest(digest)
    return f"/v2/{repository}/blobs/{digest}"
