"""The gate's HTTP server: nginx's ``auth_request`` sub-requests over a unix socket.

HTTP/1.1 with keep-alive (nginx keeps a pool of connections to the gate), one thread per
connection, read by a small strict reader of nginx's sub-requests (:func:`parse_head`): no
bodies, each header once, a bounded head; anything else closes the connection (http.server's
parser, the email package, cost more than the decision). The socket is a unix socket only,
never TCP: its mode and group decide who may ask (nginx's ``www-data``). It is taken from
systemd (``LISTEN_FDS``/``LISTEN_PID``, fd 3: socket activation, so a restart loses no
request) or bound at the path given. ``SIGHUP`` reads the policy again (a broken file is
refused with its ``file:line`` problems and the old policy kept); ``SIGTERM`` stops
accepting and lets the requests in progress finish. Anything but a clean answer from
:class:`~airgapped_registry.gate.decide.Gate` is a denial.
"""

from __future__ import annotations

import contextlib
import grp
import logging
import os
import re
import signal
import socket
import socketserver
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from airgapped_registry.errors import AirgapError
from airgapped_registry.gate.decide import GATE_ERROR, Decision, Gate
from airgapped_registry.gate.policy import GatePolicy
from airgapped_registry.gate.request import GATE_HEADERS

log = logging.getLogger(__name__)

SD_LISTEN_FDS_START = 3
# An idle keep-alive connection from nginx is closed after this; nginx opens another.
IDLE_TIMEOUT = 300.0
# nginx's sub-request head: nine headers, a DN or two and a URI; anything longer is not it.
MAX_HEAD = 32768
RECV_BYTES = 65536


def systemd_socket() -> socket.socket | None:
    """The listening socket systemd passed (fd 3), or None when started without one."""
    if os.environ.get("LISTEN_PID") != str(os.getpid()):
        return None
    if int(os.environ.get("LISTEN_FDS", "0")) < 1:
        return None
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(name, None)
    listener = socket.socket(fileno=SD_LISTEN_FDS_START)
    if listener.family != socket.AF_UNIX:
        listener.detach()
        raise AirgapError("systemd passed no unix socket (the gate never listens on TCP)")
    return listener


def bind(path: Path, mode: int = 0o660, group: str | None = None) -> socket.socket:
    """A unix socket listening at ``path`` (a stale socket file replaced), ``mode`` and, when
    named, ``group`` (nginx's) set before it listens: nobody else connects meanwhile."""
    if path.is_socket():
        path.unlink()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    os.chmod(path, mode)
    if group:
        try:
            gid = grp.getgrnam(group).gr_gid
        except KeyError:
            listener.close()
            path.unlink()
            raise AirgapError(f"gate socket {path}: no group {group!r} on this host") from None
        os.chown(path, -1, gid)
    listener.listen(128)
    return listener


class Malformed(ValueError):
    """nginx's sub-request cannot be read one way only: the connection is closed."""


def parse_head(head: bytes) -> tuple[str, dict[str, str], bool]:
    """The target, the protocol's headers (by their names in :data:`GATE_HEADERS`) and
    whether the connection ends after the answer, from a request head (request line and
    header lines, without the blank line that ends it).

    Strict on purpose: nginx's sub-requests are plain (``proxy_method GET``, HTTP/1.1, no
    body, each header once), so anything else is not nginx and is refused
    (:class:`Malformed`) rather than read the way some other parser might read it."""
    request_line, *lines = head.split(b"\r\n")
    parts = request_line.split(b" ")
    if len(parts) != 3:
        raise Malformed("request line is not METHOD TARGET VERSION")
    method, target, version = parts
    if method not in _METHODS:
        raise Malformed("method is not GET, HEAD or POST")
    if version not in _VERSIONS:
        raise Malformed("version is not HTTP/1.1 or HTTP/1.0")
    if not _TARGET.fullmatch(target):
        raise Malformed("target is not an origin-form path")
    close = version == b"HTTP/1.0"
    headers: dict[str, str] = {}
    seen: set[bytes] = set()
    for line in lines:
        name, colon, value = line.partition(b":")
        if not colon or not _TOKEN.fullmatch(name):
            raise Malformed("a header line is not NAME: VALUE")
        value = value.strip(b" \t")
        if not _VALUE.fullmatch(value):
            raise Malformed("a header value has control characters")
        name = name.lower()
        if name in seen:
            raise Malformed(f"header {name.decode()} sent twice")
        seen.add(name)
        if name == b"connection":
            close = value.lower() == b"close" or (close and value.lower() != b"keep-alive")
        elif name == b"transfer-encoding" or (name == b"content-length" and value != b"0"):
            raise Malformed("a request body (the gate reads none)")
        else:
            canonical = _CANONICAL.get(name)
            if canonical is not None:
                # latin-1, as http.server read them: every byte stays one character.
                headers[canonical] = value.decode("latin-1")
    return target.decode("ascii"), headers, close


_METHODS = frozenset({b"GET", b"HEAD", b"POST"})
_VERSIONS = frozenset({b"HTTP/1.1", b"HTTP/1.0"})
_TARGET = re.compile(rb"/[\x21-\x7e]*")
_TOKEN = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_VALUE = re.compile(rb"[\t\x20-\x7e\x80-\xff]*")
_CANONICAL = {name.lower().encode(): name for name in GATE_HEADERS}
_ANSWER_VALUE = re.compile(r"[\x20-\x7e]*")
_STATUS = {200: b"HTTP/1.1 200 OK\r\n", 403: b"HTTP/1.1 403 Forbidden\r\n"}
_MALFORMED = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


def answer(decision: Decision) -> bytes:
    """The HTTP answer to nginx. A header value that is not printable ASCII (it cannot be,
    but it would split the answer) makes the answer a ``gate_error`` denial instead."""
    headers = decision.headers()
    if not all(_ANSWER_VALUE.fullmatch(value) for value in headers.values()):
        log.error("gate answer with a non-printable header value refused: %r", headers)
        decision = Decision(False, GATE_ERROR, "the gate failed")
        headers = decision.headers()
    lines = [_STATUS[decision.status]]
    for name, value in headers.items():
        lines.append(f"{name}: {value}\r\n".encode("ascii"))
    lines.append(b"Content-Length: 0\r\n\r\n")
    return b"".join(lines)


class _Handler(socketserver.BaseRequestHandler):
    """One nginx connection: requests read and answered in turn until nginx closes it, it
    stays idle :data:`IDLE_TIMEOUT`, the gate drains, or something malformed comes (a 400,
    then the connection is closed: nginx makes any status but 2xx/403 a 503, fail closed)."""

    server: GateServer

    def handle(self) -> None:
        connection: socket.socket = self.request
        connection.settimeout(IDLE_TIMEOUT)
        buffer = b""
        while True:
            end = buffer.find(b"\r\n\r\n")
            while end < 0:
                if len(buffer) > MAX_HEAD:
                    log.warning("gate connection closed: request head over %d bytes", MAX_HEAD)
                    return
                try:
                    chunk = connection.recv(RECV_BYTES)
                except OSError:  # the idle timeout, a reset
                    return
                if not chunk:
                    return
                searched = max(0, len(buffer) - 3)
                buffer += chunk
                end = buffer.find(b"\r\n\r\n", searched)
            if end > MAX_HEAD:
                log.warning("gate connection closed: request head over %d bytes", MAX_HEAD)
                return
            head, buffer = buffer[:end], buffer[end + 4 :]
            try:
                target, headers, close = parse_head(head)
            except Malformed as exc:
                log.warning("gate connection closed: malformed request: %s", exc)
                with contextlib.suppress(OSError):
                    connection.sendall(_MALFORMED)
                return
            decision = self._decide(target, headers)
            try:
                connection.sendall(answer(decision))
            except OSError:
                return
            self.server.count(decision)
            if close:
                return

    def _decide(self, target: str, headers: dict[str, str]) -> Decision:
        try:
            if target.partition("?")[0] != "/auth":
                return Decision(False, "bad_request", "the gate answers /auth only")
            for name in GATE_HEADERS:
                headers.setdefault(name, "")
            return self.server.gate.decide(headers)
        except Exception:  # the gate's own handler failed: still a denial
            log.exception("gate handler error")
            return Decision(False, GATE_ERROR, "the gate failed")


class GateServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    """Serves ``gate`` on ``listener`` until :meth:`drain`."""

    daemon_threads = False
    block_on_close = True

    def __init__(self, listener: socket.socket, gate: Gate) -> None:
        self.gate = gate
        self.decisions = 0
        self.denials = 0
        self._connections: set[socket.socket] = set()
        self._guard = threading.Lock()
        super().__init__(listener.getsockname(), _Handler, bind_and_activate=False)
        self.socket.close()
        self.socket = listener

    def count(self, decision: Decision) -> None:
        with self._guard:
            self.decisions += 1
            self.denials += 0 if decision.allowed else 1

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        with self._guard:
            self._connections.add(request)
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._guard:
                self._connections.discard(request)
            self.gate.admission.release()

    def finish(self) -> None:
        """After :meth:`shutdown`: idle keep-alive connections are told the stream ends, a
        request in progress finishes its answer first (server_close joins the threads)."""
        with self._guard:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RD)
        self.server_close()


def serve(
    listener: socket.socket,
    gate: Gate,
    reload: Callable[[], GatePolicy],
    ready: Callable[[GateServer], None] | None = None,
) -> int:
    """Run until SIGTERM/SIGINT; SIGHUP swaps in ``reload()``'s policy when it loads."""
    server = GateServer(listener, gate)

    def on_hup(signum: int, frame: Any) -> None:
        try:
            gate.policy = reload()
        except AirgapError as exc:
            log.error("gate policy not reloaded, the previous one stays:\n%s", exc)
            return
        log.info("gate policy reloaded")

    def on_term(signum: int, frame: Any) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGHUP, on_hup)
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    if ready is not None:
        ready(server)
    try:
        server.serve_forever(poll_interval=0.5)
    finally:
        server.finish()
    return 0
