"""A fault-injecting HTTP proxy between the engine (or skopeo) and a real Distribution.

The integration tests put it in front of a loopback registry to see what an operator sees
when the network or the registry misbehaves, without mocking the registry: every request
that no rule claims is forwarded, byte for byte, to the real Distribution behind it.

A :class:`Rule` matches a method and a path (regular expressions, ``re.fullmatch`` on the
method and ``re.search`` on the path with its query) and does one of:

- ``status``: answer ``status`` (503 by default) with a distribution-spec error body, and a
  ``Retry-After`` header when ``retry_after`` is set;
- ``drop``: close the connection without any answer;
- ``drop_mid_body``: forward the request, send the status line, the headers and half of the
  body, then close the connection;
- ``hang``: read the request, then answer nothing for ``seconds`` (the proxy's stop ends the
  wait), then close the connection;
- ``tamper``: forward the request and append a space to the answer's body (a manifest stays
  valid JSON, its digest changes; headers, ``Docker-Content-Digest`` included, are kept).

``times`` bounds how often a rule fires (``None``: always); a rule that has fired ``times``
times lets requests through. ``after`` lets the first ``after`` matching requests through
before the rule fires (the fourth chunk of an upload, say). The proxy records every request
(:attr:`FaultProxy.records`: method, path, and what happened: the upstream's status or the
fault) so a test can count what passed and what was refused.

The proxy speaks plain HTTP on 127.0.0.1 (a random port) to its clients and to the
registry, keeps connections alive like Distribution does, and forwards the ``Host``
header unchanged, so the ``Location`` URLs Distribution builds point back at the proxy.
Request bodies sent with ``Transfer-Encoding: chunked`` (skopeo's blob uploads) are read
whole and forwarded with a ``Content-Length``.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import re
import socket
import threading
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

STATUS = "status"
DROP = "drop"
DROP_MID_BODY = "drop_mid_body"
HANG = "hang"
TAMPER = "tamper"
ACTIONS = (STATUS, DROP, DROP_MID_BODY, HANG, TAMPER)

# Headers that describe one hop, not the message: never forwarded as they are.
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",
    }
)


@dataclass
class Rule:
    """One fault: which requests it matches, what it does, how often."""

    method: str
    path: str
    action: str = STATUS
    status: int = 503
    times: int | None = None
    retry_after: str | None = None
    seconds: float = 60.0
    after: int = 0
    fired: int = 0
    seen: int = 0

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise ValueError(f"rule action {self.action!r}: expected one of {ACTIONS}")
        self._method = re.compile(self.method)
        self._path = re.compile(self.path)

    def claims(self, method: str, path: str) -> bool:
        """Whether this rule fires for the request (and count it if so)."""
        if self.times is not None and self.fired >= self.times:
            return False
        if not (self._method.fullmatch(method) and self._path.search(path)):
            return False
        self.seen += 1
        if self.seen <= self.after:
            return False
        self.fired += 1
        return True


@dataclass(frozen=True)
class Record:
    """One request the proxy saw: ``outcome`` is the upstream's status as text, or the
    fault's name (``injected 503``, ``drop``, ``drop_mid_body``, ``hang``, ``tamper``)."""

    method: str
    path: str
    outcome: str


@dataclass
class FaultProxy:
    """A running proxy in front of ``upstream`` (``http://host:port``); use as a context
    manager or call :meth:`start` and :meth:`stop`."""

    upstream: str
    rules: list[Rule] = field(default_factory=list)
    records: list[Record] = field(default_factory=list)

    def __post_init__(self) -> None:
        parts = urlsplit(self.upstream)
        if parts.scheme != "http" or not parts.hostname or not parts.port:
            raise ValueError(f"upstream {self.upstream!r}: expected http://host:port")
        self._target = (parts.hostname, parts.port)
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- what tests use ---------------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the fault proxy is not running")
        return self._server.server_address[1]

    @property
    def address(self) -> str:
        """``127.0.0.1:port``, as a mirror list, skopeo and cosign name a registry."""
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    def add(self, rule: Rule) -> Rule:
        with self._lock:
            self.rules.append(rule)
        return rule

    def clear(self) -> None:
        """Remove every rule (the recorded requests stay)."""
        with self._lock:
            self.rules.clear()

    def count(self, method: str = ".*", path: str = "", outcome: str = ".*") -> int:
        """How many recorded requests match (the same matching as :class:`Rule`)."""
        methods, paths, outcomes = re.compile(method), re.compile(path), re.compile(outcome)
        with self._lock:
            records = list(self.records)
        return sum(
            1
            for record in records
            if methods.fullmatch(record.method)
            and paths.search(record.path)
            and outcomes.fullmatch(record.outcome)
        )

    def outcomes(self) -> Counter[str]:
        with self._lock:
            return Counter(record.outcome for record in self.records)

    # -- life -------------------------------------------------------------------------------

    def start(self) -> FaultProxy:
        proxy = self

        class Handler(_Handler):
            owner = proxy

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="fault-proxy", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- used by the handler ------------------------------------------------------------------

    def _rule_for(self, method: str, path: str) -> Rule | None:
        with self._lock:
            for rule in self.rules:
                if rule.claims(method, path):
                    return rule
        return None

    def _record(self, method: str, path: str, outcome: str) -> None:
        with self._lock:
            self.records.append(Record(method, path, outcome))


class _Handler(BaseHTTPRequestHandler):
    owner: FaultProxy
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: the records are the log."""

    def do_GET(self) -> None:
        self._handle()

    do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_GET

    def _handle(self) -> None:
        method, path = self.command, self.path
        body = self._read_body()
        rule = self.owner._rule_for(method, path)
        if rule is None:
            self._forward(method, path, body)
            return
        if rule.action == STATUS:
            self.owner._record(method, path, f"injected {rule.status}")
            self._answer_fault(rule)
        elif rule.action == DROP:
            self.owner._record(method, path, DROP)
            self._drop()
        elif rule.action == HANG:
            self.owner._record(method, path, HANG)
            self.owner._stopping.wait(rule.seconds)
            self._drop()
        elif rule.action == DROP_MID_BODY:
            self.owner._record(method, path, DROP_MID_BODY)
            self._forward(method, path, body, cut=True)
        else:
            self.owner._record(method, path, TAMPER)
            self._forward(method, path, body, tamper=True)

    def _read_body(self) -> bytes | None:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        length = self.headers.get("Content-Length")
        if length is not None:
            return self.rfile.read(int(length))
        return None

    def _forward(
        self, method: str, path: str, body: bytes | None, *, cut: bool = False, tamper: bool = False
    ) -> None:
        connection = http.client.HTTPConnection(*self.owner._target, timeout=120)
        try:
            # Host is passed on as the client sent it (Distribution builds Location from it),
            # and repeated headers stay repeated (skopeo sends one Accept per media type).
            connection.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
            for name, value in self.headers.items():
                if name.lower() not in _HOP_BY_HOP:
                    connection.putheader(name, value)
            if body is not None:
                connection.putheader("Content-Length", str(len(body)))
            connection.endheaders(body)
            response = connection.getresponse()
            data = response.read()
        except (OSError, http.client.HTTPException) as exc:
            self.owner._record(method, path, f"upstream error: {exc}")
            self._drop()
            return
        finally:
            connection.close()
        if not cut and not tamper:
            self.owner._record(method, path, str(response.status))
        if tamper and data:
            data += b" "
        self.send_response_only(response.status, response.reason)
        for name, value in response.getheaders():
            if name.lower() not in _HOP_BY_HOP:
                self.send_header(name, value)
        if method == "HEAD":
            self.send_header("Content-Length", response.getheader("Content-Length") or "0")
            self.end_headers()
            return
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if cut:
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            self._drop()
            return
        self.wfile.write(data)

    def _answer_fault(self, rule: Rule) -> None:
        message = f"injected by the fault proxy ({rule.method} {rule.path})"
        error = {"code": "UNAVAILABLE", "message": message, "detail": None}
        data = json.dumps({"errors": [error]}).encode()
        self.send_response_only(rule.status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        if rule.retry_after is not None:
            self.send_header("Retry-After", rule.retry_after)
        if self.command == "HEAD":
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _drop(self) -> None:
        """Close the client's connection at once, without a word."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.wfile.flush()
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)


def upload_sessions(storage: Path) -> list[str]:
    """The upload sessions still open in a Distribution's filesystem storage, as
    ``repository/uuid``: directories under ``<repository>/_uploads`` that hold the session's
    ``startedat`` or ``data``.

    A session closed with ``DELETE`` loses both; Distribution 2.8 still leaves its directory
    with one ``hashstates`` file behind (a few hundred bytes, no data, unknown to the API:
    a ``GET`` of the session answers 404), which is not an open session.
    """
    repositories = storage / "docker" / "registry" / "v2" / "repositories"
    if not repositories.is_dir():
        return []
    return sorted(
        f"{uploads.parent.relative_to(repositories)}/{session.name}"
        for uploads in repositories.rglob("_uploads")
        if uploads.is_dir()
        for session in uploads.iterdir()
        if (session / "startedat").exists() or (session / "data").exists()
    )


def upload_bytes(storage: Path) -> int:
    """Bytes the upload sessions in a Distribution's filesystem storage hold."""
    repositories = storage / "docker" / "registry" / "v2" / "repositories"
    return sum(data.stat().st_size for data in repositories.glob("**/_uploads/*/data"))
