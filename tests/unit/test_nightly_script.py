"""The nightly job's script (roles/mirror/templates/nightly-*.sh.j2), rendered by Ansible and
run as cron runs it, against a stand-in for the engine's command that records its calls.

The lab runs the real thing (molecule: in cron's environment, and fired by cron itself);
these check the script's own logic: the engine by its full path in cron's PATH, the flags
from the role's variables, one log line per run even when the engine stops early, and the
reports handed to Ansible with --json.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from airgapped_registry import defaults
from plugins.filter.nightly import airgap_nightly_changed

PROJECT = Path(__file__).resolve().parents[2]
ROLE = PROJECT / "roles" / "mirror"
ANSIBLE_PLAYBOOK = Path(sys.executable).with_name("ansible-playbook")
CRON_ENV = ["env", "-i", "PATH=/usr/bin:/bin", "SHELL=/bin/sh", "HOME=/root", "LOGNAME=root"]

# Stands in for /usr/local/bin/airgap: records its arguments and PATH, answers like the
# engine (sync: the summary on stdout, the report to --report; lock, verify, scan, sign:
# JSON), or fails the way $DIR/fail says.
FAKE = """#!/bin/sh
dir=$(dirname "$0")
echo "$PATH|$*" >>"$dir/calls"
if [ -e "$dir/fail" ] && [ "$1" = "$(cat "$dir/fail")" ]; then
  echo "airgap: $1: the source went away" >&2
  exit 1
fi
case "$1" in
  sync)
    while [ $# -gt 0 ]; do [ "$1" = --report ] && report=$2; shift; done
    echo '{"copied": 1, "failed": 0, "relock": {"written": false},
           "summary": "entries=2 copied=1 bytes=10 duration=0s failures=0"}' >"$report"
    echo "entries=2 copied=1 bytes=10 duration=0s failures=0" ;;
  lock) echo '{"changed": false}' ;;
  verify) echo '{"failed": 0}' ;;
  scan) echo '{"changed": false}' ;;
  sign) echo '{"signed": 3, "skipped": 0, "failed": 0}' ;;
esac
"""


def render(tmp_path: Path, tier: str, **variables) -> Path:
    """The role's script for ``tier``, as roles/mirror installs it, with its paths in tmp."""
    fake = tmp_path / "engine" / "airgap"
    fake.parent.mkdir()
    fake.write_text(FAKE)
    fake.chmod(0o755)
    for name in ("etc", "state", "log"):
        (tmp_path / name).mkdir()
    script = tmp_path / f"nightly-{tier}"
    play = [
        {
            "hosts": "localhost",
            "gather_facts": False,
            "vars_files": [
                str(PROJECT / "roles" / "site_defaults" / "defaults" / "main.yml"),
                str(ROLE / "defaults" / "main.yml"),
                str(ROLE / "vars" / "main.yml"),
            ],
            "tasks": [
                {
                    "name": "Render the script",
                    "ansible.builtin.template": {
                        "src": str(ROLE / "templates" / f"nightly-{tier}.sh.j2"),
                        "dest": str(script),
                        "mode": "0755",
                    },
                }
            ],
        }
    ]
    # Extra vars: above the role's vars (the engine's path among them).
    overrides = {
        "mirror_tier": tier,
        "mirror_airgap_command": str(fake),
        "mirror_config_dir": str(tmp_path / "etc"),
        "mirror_state_dir": str(tmp_path / "state"),
        "mirror_log_dir": str(tmp_path / "log"),
        "mirror_relay_host": "relay",
        "mirror_registry_destination": "https://registry:443",
        **variables,
    }
    playbook = tmp_path / "render.yml"
    playbook.write_text(yaml.safe_dump(play))
    (tmp_path / "vars.json").write_text(json.dumps(overrides))
    extra = [
        "-e",
        f"@{tmp_path / 'vars.json'}",
        "-e",
        f"ansible_python_interpreter={sys.executable}",
    ]
    rendered = subprocess.run(
        [str(ANSIBLE_PLAYBOOK), "-i", "localhost,", "-c", "local", str(playbook), *extra],
        env={**os.environ, "ANSIBLE_CONFIG": str(PROJECT / "ansible.cfg")},
        capture_output=True,
        text=True,
        check=False,
    )
    assert rendered.returncode == 0, rendered.stdout + rendered.stderr
    return script


def run(script: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The script in cron's environment, the way its job line starts it."""
    command = shlex.join([str(script), *args])
    return subprocess.run(
        [*CRON_ENV, "/bin/sh", "-c", command], capture_output=True, text=True, check=False
    )


def calls(tmp_path: Path) -> list[tuple[str, list[str]]]:
    lines = (tmp_path / "engine" / "calls").read_text().splitlines()
    return [(path, args.split()) for path, args in (line.split("|", 1) for line in lines)]


def log_lines(tmp_path: Path) -> list[list[str]]:
    return [line.split() for line in (tmp_path / "log" / "sync.log").read_text().splitlines()]


@pytest.mark.parametrize("tier", ["relay", "registry"])
def test_runs_in_crons_environment_and_logs_one_line(tmp_path: Path, tier: str) -> None:
    script = render(tmp_path, tier)
    assert subprocess.run(["sh", "-n", str(script)], check=False).returncode == 0
    ran = run(script)
    assert (ran.returncode, ran.stdout, ran.stderr) == (0, "", "")
    (line,) = log_lines(tmp_path)
    assert line[1:] == [tier, "entries=2", "copied=1", "bytes=10", "duration=0s", "failures=0"]
    made = calls(tmp_path)
    expected = ["sync", "lock"] if tier == "relay" else ["lock", "sync", "verify", "scan", "sign"]
    assert [args[0] for _, args in made] == expected
    # skopeo and cosign live in /usr/bin, the engine's command in /usr/local/bin.
    assert all("/usr/local/bin" in path.split(":") for path, _ in made)
    (sync,) = [args for _, args in made if args[0] == "sync"]
    assert "--keep-going" in sync and ("--relock" in sync) == (tier == "relay")
    # Unset, the engine's defaults apply: no flag is passed.
    assert not {"--workers", "--engine-copy-max-bytes", "--attempts"} & set(sync)
    (lock,) = [args for _, args in made if args[0] == "lock"]
    assert "--repository" not in lock
    # The relay signs what it publishes, the registry host fetches only what its trusted
    # keys verify: the engine's default paths, which site_defaults writes once.
    flag, path = (
        ("--transfer-key", defaults.TRANSFER_KEY)
        if tier == "relay"
        else ("--trusted-keys", defaults.TRANSFER_TRUSTED_DIR)
    )
    assert lock[lock.index(flag) + 1] == str(path)


def test_a_refused_lock_stops_the_registry_hosts_run(tmp_path: Path) -> None:
    """A lock fetch that fails (unsigned, wrongly signed) ends the run before any copy."""
    script = render(tmp_path, "registry")
    (tmp_path / "engine" / "fail").write_text("lock")
    ran = run(script, "--json")
    assert ran.returncode == 1
    assert json.loads(ran.stdout)["sync"] is None
    assert [args[0] for _, args in calls(tmp_path)] == ["lock"]


def test_the_role_variables_become_flags(tmp_path: Path) -> None:
    script = render(
        tmp_path,
        "relay",
        mirror_workers=8,
        mirror_engine_copy_max_bytes=0,
        mirror_attempts=5,
        mirror_backoff=2.5,
        mirror_timeout=60,
        mirror_tool_timeout=600,
        mirror_deadline=900,
        mirror_keep_going=False,
        mirror_lock_repository="site/mirror-lock",
    )
    assert run(script).returncode == 0
    (lock,) = [args for _, args in calls(tmp_path) if args[0] == "lock"]
    assert " ".join(lock).endswith("--repository site/mirror-lock")
    (sync,) = [args for _, args in calls(tmp_path) if args[0] == "sync"]
    flags = " ".join(sync)
    for flag in (
        "--workers 8",
        "--engine-copy-max-bytes 0",
        "--attempts 5",
        "--backoff 2.5",
        "--timeout 60",
        "--tool-timeout 600",
        "--deadline 900",
    ):
        assert flag in flags
    assert "--keep-going" not in sync


def test_json_hands_the_reports_to_ansible(tmp_path: Path) -> None:
    script = render(tmp_path, "registry")
    ran = run(script, "--json")
    assert ran.returncode == 0, ran.stderr
    reports = json.loads(ran.stdout)
    assert reports["rc"] == 0
    assert reports["sync"]["summary"] == "entries=2 copied=1 bytes=10 duration=0s failures=0"
    assert reports["lock"] == {"changed": False} and reports["verify"] == {"failed": 0}
    assert reports["scan_db"] == {"changed": False}
    assert reports["sign"] == {"signed": 3, "skipped": 0, "failed": 0}
    assert airgap_nightly_changed(reports) is True


def test_the_registry_host_installs_the_db_then_signs_the_lock_after_verify(
    tmp_path: Path,
) -> None:
    script = render(tmp_path, "registry", scanner_config="/etc/airgapped-registry/provenance.yaml")
    assert run(script).returncode == 0
    made = [args for _, args in calls(tmp_path)]
    config = ["--config", "/etc/airgapped-registry/provenance.yaml"]
    # The sync signs before it moves a tag; `sign --lock` after verify is the safety net.
    assert made[1][0] == "sync" and made[1].count("--sign-config") == 1
    assert made[1][made[1].index("--sign-config") + 1] == config[1]
    assert made[3] == ["scan", "db", "update", *config]
    assert made[4] == ["sign", *config, "--lock", str(tmp_path / "state" / "relay.lock")]


def test_a_failed_verify_signs_nothing(tmp_path: Path) -> None:
    script = render(tmp_path, "registry")
    (tmp_path / "engine" / "fail").write_text("verify")
    ran = run(script, "--json")
    assert ran.returncode == 1
    reports = json.loads(ran.stdout)
    assert (reports["verify"], reports["scan_db"], reports["sign"]) == (None, None, None)
    assert [args[0] for _, args in calls(tmp_path)] == ["lock", "sync", "verify"]


@pytest.mark.parametrize(
    ("scan_db", "sign", "changed"),
    [
        ({"changed": False}, {"signed": 0, "skipped": 12}, False),
        ({"changed": True}, {"signed": 0, "skipped": 12}, True),
        ({"changed": False}, {"signed": 2, "skipped": 10}, True),
        (None, None, False),
    ],
)
def test_a_new_db_or_a_signature_is_a_change(scan_db, sign, changed) -> None:
    run = {"sync": {"copied": 0}, "lock": {"changed": False}, "scan_db": scan_db, "sign": sign}
    assert airgap_nightly_changed(run) is changed


def test_an_engine_stopping_early_still_logs_a_line_and_fails(tmp_path: Path) -> None:
    script = render(tmp_path, "relay")
    (tmp_path / "engine" / "fail").write_text("sync")
    ran = run(script, "--json")
    assert ran.returncode == 1
    reports = json.loads(ran.stdout)
    assert (reports["rc"], reports["sync"], reports["lock"]) == (1, None, None)
    assert "airgap: sync: the source went away" in ran.stderr
    (line,) = log_lines(tmp_path)
    assert " ".join(line[1:]).startswith("relay failed before its summary: exit 1")
    assert "the source went away" in (tmp_path / "log" / "sync.err").read_text()
    # Nothing published after a failed sync.
    assert [args[0] for _, args in calls(tmp_path)] == ["sync"]
