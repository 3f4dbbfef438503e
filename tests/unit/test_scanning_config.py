"""The scanning section of provenance.yaml, trivy's offline command lines, DB checks that need
no registry (times, bbolt magic, the lock's entry)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from airgapped_registry import defaults
from airgapped_registry.scanning import db as vulndb
from airgapped_registry.scanning.config import ConfigError, load, parse_duration
from airgapped_registry.tools import trivy

CONTRACT_EXAMPLE = """\
version: 1
backend: http://127.0.0.1:5000
state: /var/lib/airgapped-registry/state.db
signing:
  registry: registry:443
scanning:
  trivy: /usr/local/libexec/airgapped-registry/trivy
  cache_dir: /var/lib/airgapped-registry/trivy
  db:
    repository: aquasecurity/trivy-db
    tag: "2"
    lock: /var/lib/airgapped-registry/relay.lock
    max_age: 7d
  listen: 127.0.0.1:5060
  workers: 2
  reconcile_interval: 5m
  attest: true
  policy:
    default: {fail_on: CRITICAL}
    repositories:
      - {prefix: "prod/", fail_on: HIGH}
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "provenance.yaml"
    path.write_text(text)
    return path


def test_contract_example(tmp_path: Path) -> None:
    config = load(write(tmp_path, CONTRACT_EXAMPLE))
    assert config.backend == "http://127.0.0.1:5000"
    assert config.trivy == Path("/usr/local/libexec/airgapped-registry/trivy")
    assert config.db.reference == "aquasecurity/trivy-db:2"
    assert config.db.max_age == timedelta(days=7)
    assert config.reconcile_interval == timedelta(minutes=5)
    assert (config.listen, config.workers, config.attest) == ("127.0.0.1:5060", 2, True)
    # the policy is the verdicts' to read: kept as written
    assert config.policy["repositories"] == [{"prefix": "prod/", "fail_on": "HIGH"}]


def test_the_backend_on_a_unix_socket(tmp_path: Path) -> None:
    text = CONTRACT_EXAMPLE.replace(
        "http://127.0.0.1:5000", "unix:///run/docker-registry/registry.sock"
    )
    assert load(write(tmp_path, text)).backend == "unix:///run/docker-registry/registry.sock"
    assert defaults.BACKEND_URL == "unix:///run/docker-registry/registry.sock"


def test_defaults_for_what_is_left_out(tmp_path: Path) -> None:
    config = load(write(tmp_path, "version: 1\nscanning:\n  db: {tag: 2}\n"))
    assert config.db.tag == "2"  # an unquoted number is the tag "2"
    assert config.cache_dir == defaults.SCAN_CACHE_DIR
    assert config.db.lock == defaults.SCAN_DB_LOCK
    assert config.db.max_age == defaults.SCAN_DB_MAX_AGE


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("version: 2\n", "version: 2, expected 1"),
        ("version: 1\nscanning: [1]\n", "scanning: expected a mapping"),
        ("version: 1\nscanning: {cachedir: /x}\n", "scanning: unknown key 'cachedir'"),
        ("version: 1\nscanning: {db: {maxage: 7d}}\n", "scanning.db: unknown key 'maxage'"),
        ("version: 1\nscanning: {db: {max_age: 7 days}}\n", "scanning.db.max_age: '7 days'"),
        ("version: 1\nscanning: {workers: 0}\n", "scanning.workers: 0 is not a positive"),
        ("version: 1\nscanning: {listen: localhost}\n", "scanning.listen: 'localhost'"),
        ("version: 1\nscanning: {db: {repository: Trivy/DB}}\n", "not a repository name"),
        ("version: 1\nscanning: {attest: yes please}\n", "scanning.attest"),
        ("version: 1\nbackend: 127.0.0.1:5000\n", "backend: '127.0.0.1:5000' is not http(s)"),
        ("version: 1\nbackend: unix://run/r.sock\n", "or unix:///path/to/socket"),
    ],
)
def test_errors_name_file_key_and_cause(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as error:
        load(path)
    assert str(error.value).startswith(str(path))
    assert message in str(error.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load(tmp_path / "absent.yaml")


@pytest.mark.parametrize(
    ("text", "expected"),
    [("30s", 30), ("5m", 300), ("12h", 43200), ("7d", 604800), (90, 90)],
)
def test_durations(text: object, expected: int) -> None:
    assert parse_duration(text, "x") == timedelta(seconds=expected)


def test_trivy_image_argv_is_offline_and_reads_no_local_settings(tmp_path: Path) -> None:
    argv = trivy.image_argv("/bin/trivy", tmp_path / "layout", cache_dir=tmp_path / "c")
    for flag in (
        "--skip-db-update",
        "--skip-java-db-update",
        "--offline-scan",
        "--skip-version-check",
        "--disable-telemetry",
    ):
        assert flag in argv
    assert argv[argv.index("--input") + 1] == str(tmp_path / "layout")
    assert argv[argv.index("--cache-dir") + 1] == str(tmp_path / "c")
    # no trivy.yaml, no .trivyignore from the working directory
    assert argv[argv.index("--config") + 1] == ""
    assert argv[argv.index("--ignorefile") + 1] == ""
    assert argv[argv.index("--scanners") + 1] == "vuln"
    client = trivy.image_argv("/bin/trivy", tmp_path, server="http://127.0.0.1:4954")
    assert "--cache-dir" not in client and "--server" in client
    with pytest.raises(ValueError):
        trivy.image_argv("/bin/trivy", tmp_path)


def test_trivy_environment_drops_trivy_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRIVY_SEVERITY", "LOW")
    monkeypatch.setenv("TRIVY_SERVER", "http://elsewhere")
    env = trivy.client_environment("secret")
    assert "TRIVY_SEVERITY" not in env and "TRIVY_SERVER" not in env
    assert env["TRIVY_TOKEN"] == "secret"


def test_trivy_failure_message() -> None:
    stderr = (
        "2026-11-30T10:44:11Z\tWARN\tsomething\n"
        "2026-11-30T10:44:11Z\tFATAL\tFatal error\trun error: image scan error: "
        "failed to get the layer content (sha256:" + "3" * 64 + "): lstat x: no such file\n"
    )
    assert trivy.failure(stderr).startswith("run error: image scan error")
    assert trivy.missing_layer(stderr) == "sha256:" + "3" * 64
    assert trivy.failure("") == "no output"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-30T10:44:00Z", datetime(2026, 11, 30, 10, 44, tzinfo=UTC)),
        ("2026-11-30T10:44:00.123456789Z", datetime(2026, 11, 30, 10, 44, 0, 123456, tzinfo=UTC)),
        ("2026-11-30T12:44:00+02:00", datetime(2026, 11, 30, 10, 44, tzinfo=UTC)),
    ],
)
def test_go_times(text: str, expected: datetime) -> None:
    assert vulndb.parse_time(text, "x") == expected


@pytest.mark.parametrize("text", ["2026-11-30", "0001-13-01T00:00:00Z", None, 5])
def test_bad_times(text: object) -> None:
    with pytest.raises(vulndb.DbError):
        vulndb.parse_time(text, "metadata.json UpdatedAt")


def test_bolt_check(tmp_path: Path) -> None:
    from airgap_lab.trivydb import write_db

    good = tmp_path / "trivy.db"
    write_db(good, updated_at=datetime(2026, 11, 30, tzinfo=UTC))
    vulndb.check_bolt(good, "db")
    for name, data in {
        "short": b"\0" * 10,
        "zeros": b"\0" * 16384,
        "truncated": good.read_bytes()[:-100],
    }.items():
        bad = tmp_path / name
        bad.write_bytes(data)
        with pytest.raises(vulndb.DbError, match=r"not a bbolt|too short"):
            vulndb.check_bolt(bad, "db")


def test_lock_entry(tmp_path: Path) -> None:
    lock = tmp_path / "relay.lock"
    digest = "sha256:" + "a" * 64
    entries = [
        {"destination": "sample/base", "tag": "2", "digest": "sha256:" + "b" * 64},
        {"destination": "aquasecurity/trivy-db", "tag": "2", "digest": digest},
    ]
    lock.write_text(json.dumps({"version": 1, "entries": entries}))
    assert vulndb.lock_digest(lock, "aquasecurity/trivy-db", "2") == digest
    with pytest.raises(vulndb.DbError, match="no entry for aquasecurity/trivy-db:3"):
        vulndb.lock_digest(lock, "aquasecurity/trivy-db", "3")
    lock.write_text("{}")
    with pytest.raises(vulndb.DbError, match="not a lock file"):
        vulndb.lock_digest(lock, "aquasecurity/trivy-db", "2")
    with pytest.raises(vulndb.DbError, match="cannot read the lock"):
        vulndb.lock_digest(tmp_path / "absent", "aquasecurity/trivy-db", "2")
