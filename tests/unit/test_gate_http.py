"""The gate's HTTP reader: nginx's sub-requests are read strictly, on one kept-alive
connection; anything malformed, oversized or ambiguous gets a 400 or nothing, and the
connection is closed (nginx then answers 503: fail closed). A real server on a unix socket,
a real gate behind it (RBAC only: no backend is asked for ``/v2/``)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from airgapped_registry.gate import server
from airgapped_registry.gate.admission import Admission, Settings
from airgapped_registry.gate.decide import Gate
from airgapped_registry.gate.policy import loads_policy

POLICY = loads_policy("version: 1\ngrants: [{identity: {ou: puller}, role: puller}]\n")
PULLER = (
    b"X-Original-Method: GET\r\nX-SSL-Client-Verify: SUCCESS\r\n"
    b"X-SSL-Client-S-DN: CN=node,OU=puller\r\n"
)


def request(uri: bytes = b"/v2/", extra: bytes = b"", line: bytes = b"GET /auth HTTP/1.1") -> bytes:
    return (
        line
        + b"\r\nHost: gate\r\n"
        + PULLER
        + b"X-Original-URI: "
        + uri
        + b"\r\n"
        + extra
        + b"\r\n"
    )


@pytest.fixture
def gate_socket(tmp_path: Path) -> Iterator[Path]:
    settings = Settings(
        backend="http://127.0.0.1:9",
        state=tmp_path / "state.db",
        keys_dir=tmp_path / "keys",
        registry="registry:443",
        cache_dir=tmp_path / "trivy",
        max_age=timedelta(days=7),
    )
    path = tmp_path / "gate.sock"
    gate_server = server.GateServer(server.bind(path), Gate(POLICY, Admission(settings), None))
    thread = threading.Thread(target=gate_server.serve_forever, args=(0.1,))
    thread.start()
    try:
        yield path
    finally:
        gate_server.shutdown()
        gate_server.finish()
        thread.join()


def exchange(path: Path, data: bytes) -> tuple[list[bytes], bool]:
    """The answers' heads to ``data`` sent at once, and whether the gate closed after."""
    with socket.socket(socket.AF_UNIX) as connection:
        connection.settimeout(5)
        connection.connect(str(path))
        connection.sendall(data)
        received = b""
        closed = False
        while True:
            try:
                chunk = connection.recv(65536)
            except TimeoutError:
                break
            if not chunk:
                closed = True
                break
            received += chunk
            # Every answer has Content-Length: 0: the heads are all there is.
            if received.count(b"\r\n\r\n") == data.count(b"\r\n\r\n"):
                connection.settimeout(0.3)
        return [head for head in received.split(b"\r\n\r\n") if head], closed


def status(head: bytes) -> int:
    return int(head.split(b" ", 2)[1])


def test_requests_on_one_connection_are_answered_in_turn(gate_socket: Path) -> None:
    heads, closed = exchange(gate_socket, request() + request(b"/v2/_catalog") + request())
    assert [status(head) for head in heads] == [200, 403, 200]
    assert b"X-Airgap-Reason: puller" in heads[0]
    assert b"X-Airgap-Reason: no_role" in heads[1] and b"X-Airgap-Error: {" in heads[1]
    assert not closed  # kept alive


def test_connection_close_and_http_1_0_end_the_connection_after_the_answer(
    gate_socket: Path,
) -> None:
    heads, closed = exchange(gate_socket, request(extra=b"Connection: close\r\n") + request())
    assert ([status(head) for head in heads], closed) == ([200], True)
    heads, closed = exchange(gate_socket, request(line=b"GET /auth HTTP/1.0") + request())
    assert ([status(head) for head in heads], closed) == ([200], True)


@pytest.mark.parametrize(
    "data",
    [
        request(line=b"GET /auth"),  # no version
        request(line=b"GET  /auth HTTP/1.1"),  # two spaces
        request(line=b"DELETE /auth HTTP/1.1"),
        request(line=b"GET /auth HTTP/2.0"),
        request(line=b"GET http://gate/auth HTTP/1.1"),  # not origin-form
        request(extra=b"X-SSL-Client-S-DN: CN=admin,OU=admin\r\n"),  # an identity twice
        request(extra=b"x-ssl-client-verify: SUCCESS\r\n"),  # twice, whatever the case
        request(extra=b"X-Bad : 1\r\n"),  # space before the colon
        request(extra=b"No colon\r\n"),
        request(extra=b" folded: continuation\r\n"),  # obsolete line folding
        request(extra=b"X-Note: a\x00b\r\n"),  # a control character
        request(extra=b"X-Note: a\nX-SSL-Client-S-DN: CN=x,OU=admin\r\n"),  # a bare LF
        request(extra=b"Content-Length: 5\r\n") + b"hello",  # a body
        request(extra=b"Transfer-Encoding: chunked\r\n") + b"0\r\n\r\n",
    ],
)
def test_a_malformed_request_gets_400_and_the_connection_is_closed(
    gate_socket: Path, data: bytes
) -> None:
    heads, closed = exchange(gate_socket, data + request())
    assert len(heads) == 1 and status(heads[0]) == 400, heads
    assert closed


def test_an_oversized_head_closes_the_connection_without_an_answer(gate_socket: Path) -> None:
    filler = b"X-Filler: " + b"a" * (server.MAX_HEAD + 10) + b"\r\n"
    heads, closed = exchange(gate_socket, request(extra=filler))
    assert (heads, closed) == ([], True)
    # A head never ended (no blank line) is cut off the same way once over the bound.
    heads, closed = exchange(gate_socket, b"GET /auth HTTP/1.1\r\n" + b"X: y\r\n" * 7000)
    assert (heads, closed) == ([], True)


def test_only_auth_is_answered_and_content_length_zero_is_no_body(gate_socket: Path) -> None:
    heads, closed = exchange(
        gate_socket,
        request(line=b"GET /other HTTP/1.1") + request(extra=b"Content-Length: 0\r\n"),
    )
    assert [status(head) for head in heads] == [403, 200]
    assert b"X-Airgap-Reason: bad_request" in heads[0]
    assert not closed


def test_an_answer_header_that_would_split_the_answer_becomes_a_gate_error() -> None:
    from airgapped_registry.gate.decide import Decision

    head = server.answer(Decision(False, "unsigned\r\nX-Airgap-Reference: sha256:evil"))
    assert head.startswith(b"HTTP/1.1 403 Forbidden\r\n")
    assert b"X-Airgap-Reason: gate_error\r\n" in head
    assert b"evil" not in head
