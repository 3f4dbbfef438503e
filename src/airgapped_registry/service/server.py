"""The scan service (``airgap scan serve``): HTTP listener, workers, reconciliation thread.

- ``POST /events``: a Distribution notification envelope. Manifest pushes are queued in the
  state store (persistent) and the answer, 200 with what was queued, comes at once; the
  scan happens later, in a worker. A digest pushed without a tag (an index's child, pushed
  just before its index) is due a few seconds later, so the index's job, which scans its
  children, usually takes it first and the child's own item finds its verdict made. A
  delete forgets the digest's verdict (see :mod:`~airgapped_registry.service.events`). A
  body that is no envelope gets 400, a wrong content type 415, and neither stops the service.
- ``GET /healthz``: queue depth, the current DB, the last reconciliation, 200.
- ``settings.workers`` threads take queued digests (:class:`~.worker.Worker`).
- A reconciliation thread runs a pass at start, every ``reconcile_interval``, and at once
  when the installed DB changes (every digest then has a verdict of another DB, so all
  are queued again).

:meth:`ScanService.stop` (SIGTERM, through the CLI) ends the loops: the listener closes,
each worker finishes the digest it holds, and what is queued stays queued for the next
start, which first releases claims a killed process left.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from airgapped_registry.errors import AirgapError
from airgapped_registry.scanning.records import iso
from airgapped_registry.service.events import EnvelopeError, check_content_type, parse_envelope
from airgapped_registry.service.ports import Provenance, Scanner, ServiceSettings
from airgapped_registry.service.reconcile import reconcile
from airgapped_registry.service.worker import DigestLocks, Worker
from airgapped_registry.state.store import StateStore
from airgapped_registry.state.verdicts import VerdictStore
from airgapped_registry.transport.registry import RegistryClient

log = logging.getLogger(__name__)

# An envelope holds one event in Distribution 2.8 (about 1 KiB); far more is not one.
MAX_BODY = 1024 * 1024
# Seconds a digest pushed without a tag waits, so that its index's job takes it first.
UNTAGGED_DELAY = 2.0
# How often the reconciliation thread looks whether a new DB was installed.
DB_CHECK_INTERVAL = 5.0


class ScanService:
    def __init__(
        self,
        settings: ServiceSettings,
        scanner: Scanner,
        provenance: Provenance | None,
        client: Callable[[], RegistryClient],
    ) -> None:
        self.settings = settings
        self.scanner = scanner
        self.provenance = provenance
        self.client = client()
        self.stopping = threading.Event()
        self.wake = threading.Condition()
        self.locks = DigestLocks()
        self.reconcile_now = threading.Event()
        self.started = time.monotonic()
        self.reconcile_errors = 0
        try:
            self.server = ThreadingHTTPServer(settings.listen, _handler(self))
        except OSError as exc:
            host, port = settings.listen
            raise AirgapError(
                f"scan service: cannot listen on {host}:{port}: {exc.strerror or exc}"
            ) from exc
        self.server.daemon_threads = True
        self._threads: list[threading.Thread] = []

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.server.server_address[:2]
        return str(host), int(port)

    def start(self) -> None:
        with StateStore(self.settings.state) as store:
            released = VerdictStore(store).release_claims()
        if released:
            log.info("released %d digests claimed by a previous run", released)
        self._spawn("listener", self.server.serve_forever)
        for number in range(max(1, self.settings.workers)):
            worker = Worker(
                self.settings,
                self.scanner,
                self.provenance,
                self.client,
                self.locks,
                self.stopping,
                self.wake,
            )
            self._spawn(f"worker-{number}", worker.loop)
        self._spawn("reconciliation", self._reconcile_loop)

    def stop(self) -> None:
        self.stopping.set()
        self.reconcile_now.set()
        self.server.shutdown()
        with self.wake:
            self.wake.notify_all()
        for thread in self._threads:
            thread.join()
        self.server.server_close()

    def serve(self, stop: threading.Event) -> None:
        """Run until ``stop`` is set (the CLI sets it on SIGTERM and SIGINT)."""
        self.start()
        try:
            while not stop.wait(1.0):
                if any(not thread.is_alive() for thread in self._threads):
                    dead = [thread.name for thread in self._threads if not thread.is_alive()]
                    raise AirgapError(f"scan service: thread {', '.join(dead)} died; see the log")
        finally:
            self.stop()

    def notify_workers(self) -> None:
        with self.wake:
            self.wake.notify_all()

    def _spawn(self, name: str, target: Callable[[], None]) -> None:
        thread = threading.Thread(target=target, name=f"airgap-scan-{name}", daemon=True)
        self._threads.append(thread)
        thread.start()

    def _reconcile_loop(self) -> None:
        with StateStore(self.settings.state) as store:
            verdicts = VerdictStore(store)
            last_db = self.scanner.current_db()
            next_pass = time.monotonic()
            while not self.stopping.is_set():
                if time.monotonic() >= next_pass or self.reconcile_now.is_set():
                    self.reconcile_now.clear()
                    try:
                        result = reconcile(self.client, verdicts, last_db)
                        log.info("reconciliation: %s", result.to_json())
                        if result.queued or result.requeued:
                            self.notify_workers()
                    except (AirgapError, ValueError) as exc:
                        self.reconcile_errors += 1
                        log.error("reconciliation: %s", exc)
                    next_pass = time.monotonic() + self.settings.reconcile_interval
                wait = min(DB_CHECK_INTERVAL, max(0.0, next_pass - time.monotonic()))
                if self.reconcile_now.wait(wait):
                    continue
                current = self.scanner.current_db()
                if current != last_db:
                    log.info("vulnerability DB changed to %s: rescanning", current)
                    last_db = current
                    self.reconcile_now.set()
                    self.notify_workers()

    # -- requests -------------------------------------------------------------------------

    def events(self, content_type: str | None, body: bytes) -> dict[str, Any]:
        check_content_type(content_type)
        parsed = parse_envelope(body)
        now = datetime.now(UTC)
        later = iso(now + timedelta(seconds=UNTAGGED_DELAY))
        with StateStore(self.settings.state) as store:
            verdicts = VerdictStore(store)
            tagged = [(p.repository, p.digest) for p in parsed.pushes if p.tag]
            untagged = [(p.repository, p.digest) for p in parsed.pushes if not p.tag]
            queued = verdicts.enqueue(tagged, "push") + verdicts.enqueue(
                untagged, "push", not_before=later
            )
            forgotten = sum(verdicts.forget(d.repository, d.digest) for d in parsed.deletes)
        if queued:
            self.notify_workers()
        return {
            "events": parsed.total,
            "queued": queued,
            "forgotten": forgotten,
            "ignored": parsed.total - len(parsed.events),
        }

    def health(self) -> dict[str, Any]:
        with StateStore(self.settings.state) as store:
            verdicts = VerdictStore(store)
            depth = verdicts.queue_depth()
            last = verdicts.last_reconciliation()
        db = self.scanner.current_db()
        return {
            "status": "ok",
            "queue": depth,
            "workers": self.settings.workers,
            "db": None if db is None else {"digest": db.digest, "updated_at": iso(db.updated_at)},
            "last_reconciliation": None if last is None else last.to_json(),
            "reconcile_errors": self.reconcile_errors,
            "uptime": round(time.monotonic() - self.started, 1),
        }


def _handler(service: ScanService) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "airgap-scan"

        def do_POST(self) -> None:
            if self.path.split("?", 1)[0] != "/events":
                self._answer(404, {"error": f"no {self.path}: POST /events"})
                return
            try:
                length = int(self.headers.get("Content-Length") or "")
            except ValueError:
                self._answer(411, {"error": "a Content-Length is required"})
                return
            if length < 0 or length > MAX_BODY:
                self._answer(413, {"error": f"body of {length} bytes: at most {MAX_BODY}"})
                return
            body = self.rfile.read(length)
            try:
                check_content_type(self.headers.get("Content-Type"))
            except EnvelopeError as exc:
                self._answer(415, {"error": str(exc)})
                return
            try:
                report = service.events(self.headers.get("Content-Type"), body)
            except EnvelopeError as exc:
                self._answer(400, {"error": str(exc)})
                return
            except AirgapError as exc:
                # The state store failed: Distribution retries the envelope later.
                log.error("POST /events: %s", exc)
                self._answer(503, {"error": str(exc)})
                return
            self._answer(200, report)

        def do_GET(self) -> None:
            if self.path.split("?", 1)[0] != "/healthz":
                self._answer(404, {"error": f"no {self.path}: GET /healthz"})
                return
            try:
                self._answer(200, service.health())
            except AirgapError as exc:
                self._answer(503, {"status": "failing", "error": str(exc)})

        def _answer(self, status: int, document: dict[str, Any]) -> None:
            body = json.dumps(document).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("%s %s", self.address_string(), format % args)

    return Handler
