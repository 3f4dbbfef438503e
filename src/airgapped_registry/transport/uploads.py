"""Blobs into a registry: mounts, monolithic uploads, and closing what was opened.

The upload protocol is the part of the API where a failure leaves something behind: an
upload session holds its bytes at the registry until it is closed or purged. Every session
opened here is completed or closed (``DELETE``), whatever happens to the request.
"""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import urlencode, urlsplit

from airgapped_registry.errors import AirgapError, DigestMismatchError, RegistryError
from airgapped_registry.oci.reference import check_digest, check_repository
from airgapped_registry.transport.session import RegistrySession, Response


class BlobUploads(RegistrySession):
    """Whether a repository holds a blob, and making it hold one: mount or upload."""

    def blob_exists(self, repository: str, digest: str) -> bool:
        response = self._call("HEAD", blob_path(repository, digest), expect=(200, 404))
        return response.status == 200

    def mount_blob(self, repository: str, digest: str, mount_from: str) -> bool:
        """Mount a blob from another repository of this registry (``POST ?mount=&from=``,
        nothing sent); False when the registry did not (it opened an upload session
        instead, which is closed again at once so that none is left behind)."""
        check_repository(repository)
        check_repository(mount_from)
        check_digest(digest)
        response = self._post_mount(repository, digest, mount_from)
        if response is None:
            return True
        location = response.header("Location")
        if location:
            self._call("DELETE", self._resolve(response.url, location), expect=(204, 404))
        return False

    def _post_mount(self, repository: str, digest: str, mount_from: str) -> Response | None:
        """``POST ?mount=&from=``: None when the registry mounted the blob (201), else its
        answer opening an upload session (202)."""
        query = urlencode({"mount": digest, "from": mount_from})
        response = self._call("POST", f"/v2/{repository}/blobs/uploads/?{query}", expect=(201, 202))
        if response.status != 201:
            return response
        with self._lock:
            self.blobs_mounted += 1
        return None

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
        check_repository(repository)
        check_digest(digest)
        if mount_from:
            check_repository(mount_from)
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
        check_repository(repository)
        check_digest(digest)
        if mount_from:
            check_repository(mount_from)
        if mount_from:
            # From the repository itself too: one request that either finds the blob there
            # (201) or opens the upload (202), where a HEAD would cost one more.
            opened = self._post_mount(repository, digest, mount_from)
            if opened is None:
                return "mounted"
            response = opened
        else:
            response = self._call("POST", f"/v2/{repository}/blobs/uploads/", expect=(202,))
        location = response.header("Location")
        if not location:
            raise RegistryError(
                "POST", response.url, response.status, cause="upload session without Location"
            )
        session = self._resolve(response.url, location)
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

    # -- uploads in chunks, resumable (the bundle import) ---------------------------------

    def open_upload(
        self, repository: str, digest: str, mount_from: str | None = None
    ) -> str | None:
        """Open an upload session for ``digest``; None when ``mount_from`` (which may be
        ``repository`` itself) held it and the registry mounted it instead (201)."""
        check_repository(repository)
        check_digest(digest)
        if mount_from:
            check_repository(mount_from)
            response = self._post_mount(repository, digest, mount_from)
            if response is None:
                return None
        else:
            response = self._call("POST", f"/v2/{repository}/blobs/uploads/", expect=(202,))
        location = response.header("Location")
        if not location:
            raise RegistryError(
                "POST", response.url, response.status, cause="upload session without Location"
            )
        return self._resolve(response.url, location)

    def upload_offset(self, session: str) -> tuple[str, int] | None:
        """Where an open session stands: ``(its Location now, bytes the registry holds)``;
        None when the registry no longer knows it (closed, purged, or, in Distribution 2.8,
        cut in the middle of a chunk: its bytes no longer match its signed state)."""
        if self._own_target(session) is None:
            return None
        response = self._call("GET", session, expect=(204, 400, 404))
        if response.status != 204:
            return None
        return self._resolve(response.url, response.header("Location") or session), _end(response)

    def send_chunk(self, session: str, offset: int, data: bytes) -> tuple[str, int]:
        """Append ``data`` at ``offset`` (``PATCH`` with its ``Content-Range``); returns the
        session's next Location and the bytes the registry now holds."""
        response = self._call(
            "PATCH",
            session,
            headers={
                "Content-Type": "application/octet-stream",
                "Content-Range": f"{offset}-{offset + len(data) - 1}",
            },
            body=data,
            expect=(202,),
        )
        with self._lock:
            self.bytes_uploaded += len(data)
        held = _end(response)
        if held != offset + len(data):
            raise RegistryError(
                "PATCH",
                response.url,
                response.status,
                cause=f"the registry holds {held} bytes after a chunk ending at "
                f"{offset + len(data)}",
            )
        return self._resolve(response.url, response.header("Location") or session), held

    def finish_upload(self, session: str, digest: str, data: bytes = b"") -> None:
        """Close a session with its last bytes (maybe none): ``PUT ?digest=``, which the
        registry refuses unless what it holds has that digest."""
        response = self._call(
            "PUT",
            _with_query(session, digest=digest),
            headers={"Content-Type": "application/octet-stream"},
            body=data,
            expect=(201,),
        )
        stored = response.header("Docker-Content-Digest")
        if stored and stored != digest:
            raise DigestMismatchError("PUT", response.url, response.status, digest, stored)
        with self._lock:
            self.blobs_uploaded += 1
            self.bytes_uploaded += len(data)

    def check_upload(self, repository: str, size: int = 64 * 1024) -> None:
        """Open an upload session, write ``size`` bytes into it and close it again: raises
        what the registry answers when it cannot take them (a full disk)."""
        check_repository(repository)
        response = self._call("POST", f"/v2/{repository}/blobs/uploads/", expect=(202,))
        location = response.header("Location")
        if not location:
            return
        session = self._resolve(response.url, location)
        try:
            response = self._call(
                "PATCH",
                session,
                headers={"Content-Type": "application/octet-stream"},
                body=bytes(size),
                expect=(202,),
            )
            session = self._resolve(response.url, response.header("Location") or session)
        finally:
            self.cancel_upload(session)

    def cancel_upload(self, session: str) -> bool:
        """Close an upload session (``DELETE`` its URL, as ``Location`` gave it); True when
        the registry closed it. Best effort: a failure here must not hide the failure that
        made the caller give up the upload, so none is raised."""
        target = self._own_target(session)
        if target is None or "/blobs/uploads/" not in urlsplit(target).path:
            return False
        try:
            self._call("DELETE", session, expect=(204, 404))
        except (AirgapError, OSError):
            return False
        return True


def _end(response: Response) -> int:
    """The bytes an upload session holds, from its ``Range: 0-<last>`` header."""
    value = response.header("Range") or ""
    start, _, last = value.partition("-")
    try:
        return int(last) + 1 if start == "0" and last else 0
    except ValueError:
        return 0


def _with_query(url: str, **params: str) -> str:
    # Appended as text: urlunsplit would drop the empty host of a unix:/// URL.
    parts = urlsplit(url)
    separator = "&" if parts.query else ("" if url.endswith("?") else "?")
    return f"{url}{separator}{urlencode(params)}"


def blob_path(repository: str, digest: str) -> str:
    """The path of a blob in the v2 API, its parts checked."""
    check_repository(repository)
    check_digest(digest)
    return f"/v2/{repository}/blobs/{digest}"
