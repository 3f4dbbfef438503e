"""nginx's gate-unavailable log imported into the chain: each refusal once, whatever
happens to the source file or to the gate between two imports."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from airgapped_registry.audit import AuditLog, query, verify
from airgapped_registry.audit.gatedown import classify
from airgapped_registry.audit.records import parse_time
from tests.unit.audit_support import DIGEST, log_lines, make_config


def nginx_line(
    number: int, uri: str = f"/v2/prod/app/manifests/{DIGEST}", method: str = "GET"
) -> str:
    # nginx's log_format airgapped_registry_gate_down writes these fields (escape=json).
    return (
        json.dumps(
            {
                "time": "2026-11-30T14:50:01+01:00",
                "request_id": f"nginx-{number}",
                "remote_addr": "10.89.0.5",
                "method": method,
                "uri": uri,
                "status": 503,
                "ssl_client_s_dn": "CN=node,OU=puller",
                "ssl_client_i_dn": "CN=Lab CA",
                "ssl_client_serial": "1F",
                "ssl_client_verify": "SUCCESS",
            }
        )
        + "\n"
    )


@pytest.fixture
def source(tmp_path: Path) -> Path:
    return tmp_path / "nginx" / "gate-unavailable.log"


def imported(tmp_path: Path) -> list[dict]:
    return list(query(tmp_path / "log", decision="deny"))


def append(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        handle.write(text)


def test_refusals_are_imported_at_open_as_gate_down_records(tmp_path: Path, source: Path) -> None:
    append(source, nginx_line(1) + nginx_line(2, "/v2/prod/app/blobs/uploads/", "POST"))
    with AuditLog.open(make_config(tmp_path, gate_down_log=source)):
        pass
    first, second = imported(tmp_path)
    assert first["type"] == "gate_down"
    assert first["identity"] == {
        "subject": "CN=node,OU=puller",
        "serial": "1F",
        "issuer": "CN=Lab CA",
        "fingerprint": "",
    }
    assert (first["client"], first["request_id"], first["action"]) == (
        "10.89.0.5",
        "nginx-1",
        "pull",
    )
    assert (first["repository"], first["reference"], first["digest"]) == (
        "prod/app",
        DIGEST,
        DIGEST,
    )
    assert (first["decision"], first["reason"], first["status"]) == (
        "deny",
        "gate_unavailable",
        503,
    )
    assert first["event_time"] == "2026-11-30T13:50:01.000Z"
    assert (second["action"], second["repository"], second["digest"]) == (
        "blob_push",
        "prod/app",
        None,
    )
    # A query by time uses when nginx refused, not when the gate imported.
    assert [
        r["request_id"] for r in query(tmp_path / "log", until=parse_time("2026-11-30T13:51:00Z"))
    ] == [
        "nginx-1",
        "nginx-2",
    ]


def test_only_new_complete_lines_are_imported_once(tmp_path: Path, source: Path) -> None:
    append(source, nginx_line(1))
    config = make_config(tmp_path, gate_down_log=source)
    with AuditLog.open(config) as log:
        line = nginx_line(2)
        append(source, line[:30])  # nginx still writing it
        assert log.import_gate_down() == 0
        append(source, line[30:] + nginx_line(3))
        assert log.import_gate_down() == 2
        assert log.import_gate_down() == 0
    with AuditLog.open(config) as log:
        assert log.import_gate_down() == 0
    assert [r["request_id"] for r in imported(tmp_path)] == ["nginx-1", "nginx-2", "nginx-3"]
    assert verify(
        tmp_path / "log", tmp_path / "state" / "checkpoint.pub", tmp_path / "state" / "head.json"
    ).ok


def test_a_crash_before_the_cursor_is_saved_imports_nothing_twice(
    tmp_path: Path, source: Path
) -> None:
    append(source, nginx_line(1) + nginx_line(2))
    config = make_config(tmp_path, gate_down_log=source)
    with AuditLog.open(config):
        pass
    cursor = tmp_path / "state" / "gate-unavailable.cursor"
    assert json.loads(cursor.read_text())["offset"] == source.stat().st_size
    cursor.unlink()  # as if the gate died between its records and the cursor file
    append(source, nginx_line(3))
    with AuditLog.open(config):
        pass
    assert [r["request_id"] for r in imported(tmp_path)] == ["nginx-1", "nginx-2", "nginx-3"]


def test_a_truncated_source_is_read_again_from_its_start(tmp_path: Path, source: Path) -> None:
    append(source, nginx_line(1) + nginx_line(2))
    config = make_config(tmp_path, gate_down_log=source)
    with AuditLog.open(config) as log:
        source.write_text(nginx_line(3))  # copytruncate, then one new refusal
        assert log.import_gate_down() == 1
    assert [r["request_id"] for r in imported(tmp_path)] == ["nginx-1", "nginx-2", "nginx-3"]


def test_a_rotated_source_is_finished_before_the_new_one(tmp_path: Path, source: Path) -> None:
    append(source, nginx_line(1))
    config = make_config(tmp_path, gate_down_log=source)
    with AuditLog.open(config) as log:
        append(source, nginx_line(2))  # written before the rotation, not imported yet
        source.rename(source.with_name(source.name + ".1"))
        append(source, nginx_line(3) + nginx_line(4))
        assert log.import_gate_down() == 3
    assert [r["request_id"] for r in imported(tmp_path)] == [
        "nginx-1",
        "nginx-2",
        "nginx-3",
        "nginx-4",
    ]


def test_a_line_that_is_not_json_is_kept_as_it_is(tmp_path: Path, source: Path) -> None:
    append(source, "not json\n")
    with AuditLog.open(make_config(tmp_path, gate_down_log=source)):
        pass
    (record,) = imported(tmp_path)
    assert (record["type"], record["unparsed"]) == ("gate_down", "not json")


def test_the_import_runs_every_import_interval(tmp_path: Path, source: Path) -> None:
    append(source, "")
    with AuditLog.open(make_config(tmp_path, gate_down_log=source, import_interval=0.1)):
        append(source, nginx_line(1))
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not imported(tmp_path):
            time.sleep(0.05)
        assert len(imported(tmp_path)) == 1
    assert len(log_lines(tmp_path / "log" / "audit.log")) == 2  # and close()'s checkpoint


@pytest.mark.parametrize(
    ("method", "uri", "expected"),
    [
        ("GET", "/v2/", ("base", None, None)),
        ("GET", "/v2/_catalog?n=10", ("catalog", None, None)),
        ("GET", "/v2/prod/app/tags/list", ("tags", "prod/app", None)),
        ("GET", "/v2/prod/app/manifests/1.0", ("pull", "prod/app", "1.0")),
        ("HEAD", "/v2/prod/app/manifests/1.0", ("head", "prod/app", "1.0")),
        ("PUT", "/v2/ci/app/manifests/1.0", ("tag", "ci/app", "1.0")),
        ("PUT", f"/v2/ci/app/manifests/{DIGEST}", ("push", "ci/app", DIGEST)),
        ("DELETE", f"/v2/ci/app/manifests/{DIGEST}", ("delete", "ci/app", DIGEST)),
        ("GET", f"/v2/prod/app/blobs/{DIGEST}", ("blob_pull", "prod/app", DIGEST)),
        ("DELETE", f"/v2/prod/app/blobs/{DIGEST}", ("blob_delete", "prod/app", DIGEST)),
        ("PATCH", "/v2/ci/app/blobs/uploads/abc-123", ("blob_push", "ci/app", None)),
        ("GET", "/v2/../etc/passwd", ("unknown", None, None)),
    ],
)
def test_nginx_requests_are_classified_as_the_gate_records_them(
    method: str, uri: str, expected: tuple
) -> None:
    assert classify(method, uri) == expected
