"""``airgap gate serve`` as systemd runs it: the listening unix socket passed as fd 3
(LISTEN_FDS/LISTEN_PID), HTTP/1.1 keep-alive, SIGTERM ending it cleanly; ``gate check``."""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from airgapped_registry.cli import main

pytestmark = pytest.mark.integration

POLICY = """\
version: 1
grants:
  - {identity: {ou: puller}, role: puller}
audit:
  directory: {root}/audit
  key: {root}/state/checkpoint.key
  head: {root}/state/head.json
"""


class UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: Path) -> None:
        super().__init__("gate", timeout=10)
        self.path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.connect(str(self.path))


def ask(connection: http.client.HTTPConnection, uri: str) -> tuple[int, str | None]:
    connection.request(
        "GET",
        "/auth",
        headers={
            "X-Original-Method": "GET",
            "X-Original-URI": uri,
            "X-SSL-Client-Verify": "SUCCESS",
            "X-SSL-Client-S-DN": "CN=node,OU=puller",
        },
    )
    response = connection.getresponse()
    response.read()
    return response.status, response.getheader("X-Airgap-Reason")


def test_served_on_the_socket_systemd_passes_then_stopped_by_sigterm(tmp_path: Path) -> None:
    from airgapped_registry.audit import init_key

    init_key(tmp_path / "state" / "checkpoint.key")
    (tmp_path / "gate.yaml").write_text(POLICY.replace("{root}", str(tmp_path)))
    (tmp_path / "provenance.yaml").write_text(
        yaml.safe_dump(
            {
                "version": 1,
                "backend": "http://127.0.0.1:9",
                "state": str(tmp_path / "state.db"),
                "scanning": {"cache_dir": str(tmp_path / "trivy")},
                "signing": {
                    "registry": "registry:443",
                    **{
                        key: str(tmp_path / key)
                        for key in ("ca_file", "cert_file", "key_file", "keys_dir")
                    },
                    "password_file": str(tmp_path / "password"),
                },
            }
        )
    )
    path = tmp_path / "gate.sock"
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(path))
    listener.listen(8)
    # fd 3 in the child, LISTEN_PID its own pid: what systemd's socket activation does.
    fd = listener.fileno()
    command = (
        f"LISTEN_PID=$$ LISTEN_FDS=1 exec {sys.executable} -m airgapped_registry.cli gate serve "
        f"--policy {tmp_path / 'gate.yaml'} --provenance {tmp_path / 'provenance.yaml'} "
        f"--socket {tmp_path / 'unused.sock'} --gate-down-log {tmp_path / 'down.log'} "
        f"3<&{fd} {fd}<&-"
    )
    gate = subprocess.Popen(
        ["bash", "-c", command], pass_fds=(fd,), stderr=subprocess.PIPE, text=True
    )
    listener.close()
    try:
        connection = UnixConnection(path)
        deadline = time.monotonic() + 15
        while True:
            try:
                first = ask(connection, "/v2/")
                break
            except OSError:
                assert time.monotonic() < deadline and gate.poll() is None, gate.communicate()
                time.sleep(0.1)
                connection = UnixConnection(path)
        assert first == (200, "puller")
        # The same connection again (keep-alive), and a refusal.
        assert ask(connection, "/v2/_catalog") == (403, "no_role")
        assert ask(connection, "/v2/a/../b/manifests/1") == (403, "bad_request")
        assert not (tmp_path / "unused.sock").exists()  # the passed socket, not its own
        connections = subprocess.run(
            ["ss", "-ltnp"], capture_output=True, text=True, check=False
        ).stdout
        assert f"pid={gate.pid}," not in connections  # no TCP listener
    finally:
        gate.send_signal(signal.SIGTERM)
        _, errors = gate.communicate(timeout=20)
    assert gate.returncode == 0, errors


def test_gate_check_reports_a_policy_and_refuses_a_broken_one(tmp_path: Path, capsys) -> None:
    good = tmp_path / "gate.yaml"
    good.write_text(
        "version: 1\nlanding_zones: [ci/]\ngrants: [{identity: {cn: a}, role: admin}]\n"
    )
    assert main(["gate", "check", "--policy", str(good)]) == 0
    assert '"grants": 1' in capsys.readouterr().out
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\ngrants:\n  - {identity: {cn: a}, role: god}\n")
    assert main(["gate", "check", "--policy", str(bad)]) == 1
    assert f"{bad}:3: grants[0]: role: 'god' is not one of" in capsys.readouterr().err


def test_the_socket_it_binds_is_nginx_s_group_only() -> None:
    import grp
    import shutil
    import stat
    import tempfile

    from airgapped_registry.errors import AirgapError
    from airgapped_registry.gate.server import bind

    # Not under pytest's tmp_path (0700 for root): the socket's own mode must decide.
    directory = Path(tempfile.mkdtemp(prefix="agg-gate-"))
    directory.chmod(0o755)
    path = directory / "gate.sock"
    probe = (
        "import socket,sys\ns=socket.socket(socket.AF_UNIX)\n"
        f"try:\n  s.connect({str(path)!r})\nexcept PermissionError:\n  sys.exit(3)\n"
    )

    def nobody_connects() -> int:
        # The interpreter itself, not the venv's link to it: nobody may not traverse a
        # clone made under a 0700 directory (mktemp -d).
        python = os.path.realpath(sys.executable)
        argv = ["runuser", "-u", "nobody", "--", python, "-c", probe]
        return subprocess.run(argv, check=False).returncode

    listener = bind(path, group="www-data")
    try:
        info = path.stat()
        assert stat.S_IMODE(info.st_mode) == 0o660
        assert info.st_gid == grp.getgrnam("www-data").gr_gid
        assert nobody_connects() == 3  # another local user is refused
        path.chmod(0o666)
        assert nobody_connects() == 0  # by the socket's mode, nothing else
        with pytest.raises(AirgapError, match="no group 'no-such-group'"):
            bind(directory / "other.sock", group="no-such-group")
        assert not (directory / "other.sock").exists()
    finally:
        listener.close()
        shutil.rmtree(directory)
