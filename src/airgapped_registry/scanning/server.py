"""``trivy server`` on loopback: one process holding the DB and one analysis cache, for
scans run as its clients (:class:`~airgapped_registry.scanning.scanner.Scanner` with
``server=``).

Parallel standalone runs each need a cache of their own (trivy locks its cache for a whole
run); clients of one server share its cache, so a layer is analysed once whichever worker
meets it. The server loads the DB when it starts: :meth:`TrivyServer.ensure` restarts it
when another DB has been installed since. It listens on 127.0.0.1 only and asks for a token
(random, passed in the environment, never on a command line).
"""

from __future__ import annotations

import contextlib
import http.client
import os
import secrets
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import IO, Self

from airgapped_registry.scanning import db as vulndb
from airgapped_registry.tools import trivy
from airgapped_registry.tools.process import ToolError

_READY_TIMEOUT = 30.0


class TrivyServer:
    """See the module docstring. ``cache_dir``: the scanner's; the server's own cache is
    ``<cache_dir>/server``."""

    def __init__(self, trivy_path: str | os.PathLike[str], cache_dir: Path) -> None:
        self.trivy = trivy_path
        self.root = cache_dir
        self.cache_dir = cache_dir / "server"
        self.token = secrets.token_hex(16)
        self.url = ""
        self.database: vulndb.InstalledDb | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._lock = threading.Lock()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def ensure(self, database: vulndb.InstalledDb) -> None:
        """Running, with ``database`` loaded (restarted if it had another)."""
        with self._lock:
            running = self._process is not None and self._process.poll() is None
            if running and self.database is not None and self.database.digest == database.digest:
                return
            self._stop()
            self._start(database)

    def stop(self) -> None:
        with self._lock:
            self._stop()

    def _start(self, database: vulndb.InstalledDb) -> None:
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        link = self.cache_dir / "db"
        link.unlink(missing_ok=True)
        # The very DB directory, not ``current``: what the server loaded stays what it says.
        os.symlink(os.path.relpath(database.path, self.cache_dir), link)
        port = _free_port()
        listen = f"127.0.0.1:{port}"
        self._log = (self.cache_dir / "server.log").open("ab")
        try:
            self._process = subprocess.Popen(
                trivy.server_argv(self.trivy, self.cache_dir, listen),
                stdout=self._log,
                stderr=subprocess.STDOUT,
                env=trivy.client_environment(self.token),
            )
        except OSError as exc:
            raise ToolError(f"{os.fspath(self.trivy)} server: {exc.strerror or exc}", True) from exc
        self.url = f"http://{listen}"
        self.database = database
        self._wait_ready(port)

    def _wait_ready(self, port: int) -> None:
        deadline = time.monotonic() + _READY_TIMEOUT
        while time.monotonic() < deadline:
            if self._process is None or self._process.poll() is not None:
                tail = (self.cache_dir / "server.log").read_text(errors="replace")[-500:]
                self._stop()
                raise ToolError(f"trivy server exited at start: {trivy.failure(tail)}")
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            try:
                connection.request("GET", "/healthz")
                if connection.getresponse().status == 200:
                    return
            except OSError:
                pass
            finally:
                connection.close()
            time.sleep(0.05)
        self._stop()
        raise ToolError(f"trivy server did not answer on 127.0.0.1:{port} in {_READY_TIMEOUT} s")

    def _stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            self._process = None
        if self._log is not None:
            self._log.close()
            self._log = None
        self.database = None


def _free_port() -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port
