"""Forwarding to syslog servers on loopback (real sockets): the RFC 5424 messages, and a
server that goes away and comes back without a record lost or an append held up."""

from __future__ import annotations

import contextlib
import json
import re
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from airgapped_registry.audit import AuditLog, SyslogConfig, verify
from airgapped_registry.audit.forward import head_of
from tests.unit.audit_support import log_lines, make_config, make_event

HEADER = re.compile(
    rb"<(?P<pri>\d+)>1 (?P<time>\S+) (?P<host>\S+) airgapped-registry (?P<pid>\d+) "
    rb"(?P<type>\S+) - (?P<line>.*)",
    re.S,
)


def parse(message: bytes) -> tuple[int, bytes]:
    match = HEADER.fullmatch(message)
    assert match is not None, message
    return int(match["pri"]), match["line"]


def wait_for(condition: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail("timed out waiting")
        time.sleep(0.02)


class TcpSyslogServer:
    """A syslog receiver with octet-counting framing (RFC 6587) on 127.0.0.1:``port``."""

    def __init__(self, port: int = 0) -> None:
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", port))
        self.listener.listen()
        self.port = self.listener.getsockname()[1]
        self.messages: list[bytes] = []
        self.clients: list[socket.socket] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            self.clients.append(client)
            threading.Thread(target=self._read, args=(client,), daemon=True).start()

    def _read(self, client: socket.socket) -> None:
        buffer = b""
        while True:
            try:
                data = client.recv(65536)
            except OSError:
                return
            if not data:
                return
            buffer += data
            while b" " in buffer:
                length, rest = buffer.split(b" ", 1)
                if len(rest) < int(length):
                    break
                self.messages.append(rest[: int(length)])
                buffer = rest[int(length) :]

    def seqs(self) -> list[int]:
        return [json.loads(parse(message)[1])["seq"] for message in self.messages]

    def stop(self) -> None:
        # shutdown() first: close() alone leaves the port listening while accept() blocks.
        for sock in (self.listener, *self.clients):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        self.thread.join(5)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_records_reach_a_udp_server_as_rfc5424_messages(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as server:
        server.bind(("127.0.0.1", 0))
        server.settimeout(10)
        port = server.getsockname()[1]
        config = make_config(tmp_path, syslog=SyslogConfig(f"udp://127.0.0.1:{port}", "local0"))
        with AuditLog.open(config) as log:
            log.append(make_event(1))
            log.append(make_event(2, decision="deny", reason="unsigned"))
            messages = [server.recv(65536) for _ in range(2)]
    lines = log_lines(tmp_path / "log" / "audit.log")
    # local0 (16): informational (6) for an allow, warning (4) for a denial.
    assert [parse(message) for message in messages] == [(134, lines[0]), (132, lines[1])]


def test_records_reach_a_unix_datagram_socket(tmp_path: Path) -> None:
    path = tmp_path / "dev-log"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(str(path))
        server.settimeout(10)
        config = make_config(tmp_path, syslog=SyslogConfig(f"unix://{path}", "auth"))
        with AuditLog.open(config) as log:
            log.append(make_event(1))
            message = server.recv(65536)
    assert parse(message) == (4 * 8 + 6, log_lines(tmp_path / "log" / "audit.log")[0])


def test_a_tcp_server_down_then_up_gets_every_record_and_appends_never_wait(
    tmp_path: Path,
) -> None:
    port = free_port()
    config = make_config(tmp_path, syslog=SyslogConfig(f"tcp://127.0.0.1:{port}", "local0"))
    with AuditLog.open(config) as log:
        forwarder = log.forwarder
        assert forwarder is not None
        # Down from the start: records are written at full speed and stay in the log.
        started = time.monotonic()
        for n in range(5):
            log.append(make_event(n))
        assert time.monotonic() - started < 0.5
        wait_for(lambda: forwarder.error is not None)
        assert "Connection refused" in str(forwarder.error)
        assert forwarder.cursor == 0

        first = TcpSyslogServer(port)
        try:
            wait_for(lambda: first.seqs()[-1:] == [5])
            assert first.seqs() == [1, 2, 3, 4, 5]
        finally:
            first.stop()

        # Down again: the forwarder notices the closed connection and keeps what follows.
        for n in range(5, 8):
            log.append(make_event(n))
        wait_for(lambda: forwarder.error is not None)
        second = TcpSyslogServer(port)
        try:
            wait_for(lambda: 8 in second.seqs())
        finally:
            second.stop()
        lines = log_lines(tmp_path / "log" / "audit.log")
        messages = {
            json.loads(parse(m)[1])["seq"]: parse(m)[1] for m in first.messages + second.messages
        }
        # Every record, exactly as in the log; a record may come twice, never zero times.
        assert sorted(messages) == list(range(1, 9))
        assert [messages[seq] for seq in range(1, 9)] == lines[:8]
        assert 1 not in second.seqs()
    assert verify(
        tmp_path / "log", tmp_path / "state" / "checkpoint.pub", tmp_path / "state" / "head.json"
    ).ok


def test_the_cursor_survives_a_restart(tmp_path: Path) -> None:
    server = TcpSyslogServer()
    try:
        config = make_config(tmp_path, syslog=SyslogConfig(f"tcp://127.0.0.1:{server.port}"))
        with AuditLog.open(config) as log:
            for n in range(3):
                log.append(make_event(n))
            wait_for(lambda: server.seqs()[-1:] == [3])
        cursor = json.loads((tmp_path / "state" / "syslog.cursor").read_text())["seq"]
        assert cursor >= 3
        with AuditLog.open(config) as log:
            log.append(make_event(9))
            wait_for(lambda: server.seqs()[-1:] == [log.seq])
        seqs = server.seqs()
        assert sorted(set(seqs)) == list(range(1, log.seq + 1))
        assert len(seqs) == len(set(seqs))  # nothing resent after a clean restart
    finally:
        server.stop()


def test_the_forwarder_reads_seq_time_and_type_as_json_would(tmp_path: Path) -> None:
    with AuditLog.open(make_config(tmp_path)) as log:
        line = log.append(make_event(1, decision="deny")).line
    assert head_of(line) == (1, json.loads(line)["time"], "request")
    reordered = json.dumps({"type": "request", "seq": 7, "time": "t", "prev": "p"}).encode()
    assert head_of(reordered) == (7, "t", "request")
    with pytest.raises(ValueError, match="not JSON"):
        head_of(b"an editor's stray line")


def test_a_new_chain_is_forwarded_from_its_start(tmp_path: Path) -> None:
    # The operator moved the log and head.json aside: seq starts at 1 again, and a cursor
    # left at 40 must not hold back the new chain's first 40 records.
    server = TcpSyslogServer()
    try:
        config = make_config(tmp_path, syslog=SyslogConfig(f"tcp://127.0.0.1:{server.port}"))
        config.head.parent.mkdir(parents=True, exist_ok=True)
        (config.head.parent / "syslog.cursor").write_text('{"seq": 40}')
        with AuditLog.open(config) as log:
            log.append(make_event(1))
            wait_for(lambda: server.seqs()[:1] == [1])
    finally:
        server.stop()


def test_a_unix_stream_socket_gets_octet_counted_frames(tmp_path: Path) -> None:
    path = tmp_path / "syslog.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(str(path))
        server.listen()
        server.settimeout(10)
        config = make_config(tmp_path, syslog=SyslogConfig(f"unix://{path}"))
        with AuditLog.open(config) as log:
            line = log.append(make_event(1)).line
            client, _ = server.accept()
            with client:
                client.settimeout(10)
                data = b""
                while b" " not in data or len(data.split(b" ", 1)[1]) < int(data.split(b" ")[0]):
                    data += client.recv(65536)
    length, rest = data.split(b" ", 1)
    assert parse(rest[: int(length)]) == (16 * 8 + 6, line)


def test_a_server_that_stops_reading_never_holds_up_an_append(tmp_path: Path) -> None:
    # It accepts and then reads nothing: the forwarder's socket buffers fill and its sends
    # block (up to their timeout), while the writers go on at full speed.
    with socket.socket() as server:
        # A small fixed receive buffer (no autotuning): full after a few records anywhere.
        server.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        config = make_config(tmp_path, syslog=SyslogConfig(f"tcp://127.0.0.1:{port}"))
        slowest = 0.0
        with AuditLog.open(config) as log:
            client, _ = server.accept()
            with client:
                for n in range(6000):
                    began = time.monotonic()
                    log.append(make_event(n, request_id="x" * 2000))
                    slowest = max(slowest, time.monotonic() - began)
                forwarder = log.forwarder
                assert forwarder is not None
                assert forwarder.sent < 6000  # stuck behind the full buffers
    assert slowest < 1.0, slowest
    result = verify(tmp_path / "log", tmp_path / "state" / "checkpoint.pub", config.head)
    assert result.ok and result.records >= 6000


def test_every_record_is_forwarded_across_rotations_while_writing(tmp_path: Path) -> None:
    server = TcpSyslogServer()
    try:
        config = make_config(
            tmp_path,
            rotate_bytes=8192,
            checkpoint_every=50,
            syslog=SyslogConfig(f"tcp://127.0.0.1:{server.port}"),
        )
        with AuditLog.open(config) as log:
            for n in range(3000):
                log.append(make_event(n))
            last = log.seq
            wait_for(lambda: last in server.seqs(), timeout=30)
            assert len(list((tmp_path / "log").glob("audit-*.log"))) > 50
        assert sorted(set(server.seqs()))[:last] == list(range(1, last + 1))
    finally:
        server.stop()
