"""The gate's HTTP server: nginx's ``auth_request`` sub-requests over a unix socket.

HTTP/1.1 with keep-alive (nginx keeps a pool of connections to the gate), one thread per
connection. The socket is a unix socket only, never TCP: its mode and group decide who may
ask (nginx's ``www-data``). It is taken from systemd (``LISTEN_FDS``/``LISTEN_PID``, fd 3:
socket activation, so a restart loses no request) or bound at the path given. ``SIGHUP``
reads the policy again (a broken file is refused with its ``file:line`` problems and the
old policy kept); ``SIGTERM`` stops accepting and lets the requests in progress finish.
Anything but a clean answer from :class:`~airgapped_registry.gate.decide.Gate` is a denial.
"""

from __future__ import annotations

import contextlib
import grp
import logging
import os
import signal
import socket
import socketserver
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
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


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: GateServer
    timeout = IDLE_TIMEOUT

    def do_GET(self) -> None:
        self._answer()

    def _answer(self) -> None:
        try:
            if self.path.split("?")[0] != "/auth":
                decision = Decision(False, "bad_request", "the gate answers /auth only")
            else:
                # Only the headers of the protocol, found whatever their case.
                headers = {name: self.headers.get(name, "") for name in GATE_HEADERS}
                decision = self.server.gate.decide(headers)
        except Exception:  # the gate's own handler failed: still a denial
            log.exception("gate handler error")
            decision = Decision(False, GATE_ERROR, "the gate failed")
        self.send_response(decision.status)
        for name, value in decision.headers().items():
            self.send_header(name, value)
        self.send_header("Content-Length", "0")
        self.end_headers()
        self.server.count(decision)

    do_HEAD = do_GET
    do_POST = do_GET

    def log_message(self, format: str, *args: Any) -> None:
        log.debug(format, *args)

    def address_string(self) -> str:
        return "nginx"


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
