"""HTTP to one registry origin: persistent connections per thread, TLS, redirects, counters.

:class:`RegistrySession` is the part of the registry client that knows HTTP and nothing of
the OCI API: it keeps one keep-alive connection per thread to the registry's origin, builds
TLS from the files the caller names (never from ``SSL_CERT_FILE`` and friends), follows a
storage redirect for reads, retries reads by its :class:`RetryPolicy`, counts requests, and
turns every failure into a :class:`RegistryError` naming the request. The origin may be a
unix socket (``unix:///run/docker-registry/registry.sock``: plain HTTP over it), as the
registry host's Distribution listens; its URLs then read ``unix://<socket><path>``. Every
request goes through :meth:`RegistrySession._send`, which ``transport.auth`` overrides to answer
authentication challenges. :class:`~airgapped_registry.transport.registry.RegistryClient`
adds the API on top.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import socket
import ssl
import threading
from collections import Counter
from dataclasses import dataclass
from email.message import Message
from typing import BinaryIO, Self
from urllib.parse import urlencode, urljoin, urlsplit, urlunsplit

from airgapped_registry import __version__, defaults
from airgapped_registry.errors import RegistryError
from airgapped_registry.transport.retry import RetryPolicy, parse_retry_after
from airgapped_registry.transport.tls import tls_context

_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_MAX_REDIRECTS = 5
_STREAM_CHUNK = 1024 * 1024
_LINK_NEXT = re.compile(r'<([^>]+)>\s*;\s*rel="?next"?')
# Errors that mean the server closed an idle keep-alive connection under us.
_DROPPED_CONNECTION = (
    http.client.RemoteDisconnected,
    ConnectionResetError,
    ConnectionAbortedError,
    BrokenPipeError,
)
# The Host header of requests over a unix socket. Distribution builds upload Location URLs
# from it (``http://localhost/v2/...``); the session reads those back as the socket's.
_UNIX_HOST = "localhost"


class _UnixConnection(http.client.HTTPConnection):
    """HTTP/1.1 over a unix stream socket; keep-alive as over TCP."""

    def __init__(self, path: str, timeout: float) -> None:
        super().__init__(_UNIX_HOST, timeout=timeout)
        self.socket_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(self.socket_path)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


@dataclass(frozen=True)
class Response:
    """An answer as the client hands it to its subclasses (see ``transport.auth``)."""

    method: str
    url: str
    status: int
    headers: Message
    body: bytes

    def header(self, name: str) -> str | None:
        return self.headers.get(name)


class RegistrySession:
    """Requests to one registry origin, with one persistent connection per thread.

    Counters (``requests``, ``requests_by_method``, ``blobs_uploaded``, ``blobs_mounted``,
    ``bytes_uploaded``) accumulate over the session's life; benchmarks and reports take
    differences around the work they measure.

    ``retry`` says how ``GET`` and ``HEAD`` requests are tried again after a transient
    failure (default: not at all; callers that retry whole operations keep it so, callers
    that do not, such as the lock's resolution and the plan, set one). Other methods are
    never retried here: an upload or a tag is retried by the operation that owns it.
    """

    def __init__(
        self,
        base_url: str,
        ca_file: str | os.PathLike[str] | None = None,
        cert_file: str | os.PathLike[str] | None = None,
        key_file: str | os.PathLike[str] | None = None,
        timeout: float = defaults.REQUEST_TIMEOUT,
    ) -> None:
        parts = urlsplit(base_url)
        # The socket's path when the registry listens on a unix socket, else None.
        self.socket_path: str | None = None
        if parts.scheme == "unix":
            if parts.netloc or not parts.path.startswith("/") or parts.query or parts.fragment:
                raise ValueError(
                    f"registry URL {base_url!r}: expected unix:///absolute/path/to/socket"
                )
            if ca_file or cert_file or key_file:
                raise ValueError(f"registry URL {base_url!r}: TLS files given for a unix socket")
            self.socket_path = parts.path.rstrip("/")
            self.base_url = f"unix://{self.socket_path}"
            self._origin = ("http", _UNIX_HOST)
        else:
            _check_http_url(base_url, ca_file, cert_file, key_file)
            self.base_url = f"{parts.scheme}://{parts.netloc}"
            self._origin = (parts.scheme, parts.netloc)
        self.timeout = timeout
        self._tls = tls_context(ca_file, cert_file, key_file) if parts.scheme == "https" else None
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections: list[http.client.HTTPConnection] = []
        self.requests = 0
        self.requests_by_method: Counter[str] = Counter()
        self.blobs_uploaded = 0
        self.blobs_mounted = 0
        self.bytes_uploaded = 0
        self.retry = RetryPolicy()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.base_url!r})"

    def close(self) -> None:
        """Close the persistent connections of every thread."""
        with self._lock:
            connections, self._connections = self._connections, []
        for connection in connections:
            connection.close()
        self._local = threading.local()

    def _paginate(self, path: str, key: str, page_size: int | None) -> list[str]:
        target = f"{path}?{urlencode({'n': page_size})}" if page_size else path
        items: list[str] = []
        seen: set[str] = set()
        while target and target not in seen:
            seen.add(target)
            response = self._call("GET", target, expect=(200,))
            try:
                document = json.loads(response.body)
            except ValueError as exc:
                raise RegistryError(
                    "GET", response.url, response.status, cause=f"invalid JSON: {exc}"
                ) from exc
            items.extend(document.get(key) or [])
            match = _LINK_NEXT.search(response.header("Link") or "")
            target = self._resolve(response.url, match.group(1)) if match else ""
        return items

    def _resolve(self, url: str, reference: str) -> str:
        """``reference`` (a ``Location``, a ``Link``) read against ``url``, both as this
        session names URLs: over a unix socket, ``unix://<socket><path>``."""
        if self.socket_path is None:
            return urljoin(url, reference)
        wire = urljoin(self._wire_url(url), reference)
        parts = urlsplit(wire)
        if (parts.scheme, parts.netloc) != self._origin:
            return wire
        return self.base_url + urlunsplit(("", "", parts.path or "/", parts.query, ""))

    def _wire_url(self, url: str) -> str:
        """``url`` as HTTP names it: the socket's URLs on the origin its server sees."""
        if self.socket_path is not None and url.startswith(self.base_url + "/"):
            return f"http://{_UNIX_HOST}{url[len(self.base_url) :]}"
        return url

    def _own_target(self, url: str) -> str | None:
        """The request target (path and query) of ``url`` when it is on this session's
        origin, else None."""
        parts = urlsplit(self._wire_url(url))
        if (parts.scheme, parts.netloc) != self._origin:
            return None
        return urlunsplit(("", "", parts.path or "/", parts.query, ""))

    def _call(
        self,
        method: str,
        target: str,
        *,
        expect: tuple[int, ...],
        headers: dict[str, str] | None = None,
        body: bytes | None = None,
        sink: BinaryIO | None = None,
    ) -> Response:
        """``sink``: a GET's 200 body is written there (from its start, on each try) instead
        of being held in memory; the response's ``body`` is then empty."""
        if method in ("GET", "HEAD") and self.retry.attempts > 1:
            return self.retry.call(
                lambda: self._call_once(method, target, expect, headers, body, sink)
            )
        return self._call_once(method, target, expect, headers, body, sink)

    def _call_once(
        self,
        method: str,
        target: str,
        expect: tuple[int, ...],
        headers: dict[str, str] | None,
        body: bytes | None,
        sink: BinaryIO | None = None,
    ) -> Response:
        url = self._resolve(self.base_url + "/", target)
        response = self._send(method, url, headers or {}, body, sink)
        redirects = 0
        while (
            response.status in _REDIRECTS
            and response.status not in expect
            and method in ("GET", "HEAD")
            and redirects < _MAX_REDIRECTS
            and response.header("Location")
        ):
            # Registries on object storage answer blob GETs with a redirect to the storage.
            redirects += 1
            url = self._resolve(response.url, response.header("Location") or "")
            response = self._send(method, url, headers or {}, None, sink)
        if response.status not in expect:
            wait = parse_retry_after(response.header("Retry-After"))
            raise RegistryError(
                method, response.url, response.status, response.body, retry_after=wait
            )
        return response

    def _send(
        self,
        method: str,
        url: str,
        headers: dict[str, str],
        body: bytes | None,
        sink: BinaryIO | None = None,
    ) -> Response:
        parts = urlsplit(url)
        own_target = self._own_target(url)
        own_origin = own_target is not None
        path = own_target or urlunsplit(("", "", parts.path or "/", parts.query, ""))
        headers = {"User-Agent": f"airgapped-registry/{__version__}", **headers}
        for attempt in (1, 2):
            if own_origin:
                connection = self._thread_connection()
                reused = connection.sock is not None
            else:
                connection = self._new_connection(parts.scheme, parts.netloc)
                reused = False
            with self._lock:
                self.requests += 1
                self.requests_by_method[method] += 1
            try:
                connection.request(method, path, body=body, headers=headers)
                response = connection.getresponse()
                if sink is not None and method == "GET" and response.status == 200:
                    sink.seek(0)
                    sink.truncate()
                    shutil.copyfileobj(response, sink, _STREAM_CHUNK)
                    data = b""
                else:
                    data = response.read()
            except _DROPPED_CONNECTION as exc:
                connection.close()
                if reused and attempt == 1:
                    continue
                raise RegistryError(method, url, None, cause=_describe(exc, self.timeout)) from exc
            except (OSError, http.client.HTTPException) as exc:
                connection.close()
                raise RegistryError(method, url, None, cause=_describe(exc, self.timeout)) from exc
            if not own_origin:
                connection.close()
            return Response(method, url, response.status, response.headers, data)
        raise AssertionError("unreachable: the second attempt returns or raises")

    def _thread_connection(self) -> http.client.HTTPConnection:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            if self.socket_path is not None:
                connection = _UnixConnection(self.socket_path, self.timeout)
            else:
                connection = self._new_connection(*self._origin)
            self._local.connection = connection
            with self._lock:
                self._connections.append(connection)
        return connection

    def _new_connection(self, scheme: str, netloc: str) -> http.client.HTTPConnection:
        if scheme == "https":
            # A foreign origin (storage redirect) gets the same trust as the registry.
            context = self._tls or tls_context(None, None, None)
            return http.client.HTTPSConnection(netloc, timeout=self.timeout, context=context)
        return http.client.HTTPConnection(netloc, timeout=self.timeout)


def _check_http_url(
    base_url: str,
    ca_file: str | os.PathLike[str] | None,
    cert_file: str | os.PathLike[str] | None,
    key_file: str | os.PathLike[str] | None,
) -> None:
    parts = urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(
            f"registry URL {base_url!r}: expected http(s)://host[:port] or unix:///path/to/socket"
        )
    if parts.path.strip("/") or parts.query or parts.fragment:
        raise ValueError(f"registry URL {base_url!r}: must not carry a path or query")
    if parts.scheme == "http" and (ca_file or cert_file or key_file):
        raise ValueError(f"registry URL {base_url!r}: TLS files given for a plain http URL")
    if key_file and not cert_file:
        raise ValueError("a client key was given without its client certificate")


def _describe(exc: BaseException, timeout: float) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS certificate verification failed: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS error: {exc.reason or exc}"
    if isinstance(exc, TimeoutError | socket.timeout):
        return f"no answer within {timeout} s"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve host: {exc.strerror}"
    if isinstance(exc, http.client.RemoteDisconnected):
        return "connection closed without a response"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc) or type(exc).__name__
