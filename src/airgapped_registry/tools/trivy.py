"""Trivy: the argument lists and environment of an offline ``trivy image`` of an OCI layout.

Nothing is ever downloaded: the vulnerability DB is installed by the engine
(:mod:`airgapped_registry.scanning.db`) into the cache directory's ``db/``, and every run
says ``--skip-db-update --offline-scan`` and friends. Settings that would change what a scan
reports without the engine knowing are shut out: ``TRIVY_*`` variables are removed from the
environment, and neither a ``trivy.yaml`` nor a ``.trivyignore`` of the working directory is
read (the policy's allow-list is the engine's, not trivy's).

Two ways to run a scan, both built here: a process per image with its own ``--cache-dir``
(trivy holds an exclusive lock on its analysis cache, ``fanal/fanal.db``, for the whole run;
a second process on the same cache waits 5 s and fails), or ``trivy server`` holding the DB
and the cache while clients (``--server URL``) analyse layers and ask it for the findings.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from airgapped_registry.tools.process import ToolError, Tools

TOOL = "trivy"
# What keeps trivy offline: no DB or Java DB download, no API lookups of dependencies, no
# version notices, no telemetry.
OFFLINE_FLAGS = (
    "--skip-db-update",
    "--skip-java-db-update",
    "--offline-scan",
    "--skip-version-check",
    "--disable-telemetry",
)
# Vulnerabilities only: secret scanning reads every file and is not what a verdict is about.
# No config file, no ignore file: only the engine's policy decides what is allowed.
SCAN_FLAGS = (
    *("--scanners", "vuln", "--format", "json", "--quiet"),
    *("--config", "", "--ignorefile", ""),
)
# The header trivy's client sends its token in (trivy's default).
TOKEN_HEADER = "Trivy-Token"
TOKEN_ENV = "TRIVY_TOKEN"
_FATAL = re.compile(r"\bFATAL\b\s+(?:Fatal error\s+)?(.*)")
_MISSING_LAYER = re.compile(r"failed to get the layer content \((sha256:[0-9a-f]{64})\)")


def environment(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment without any ``TRIVY_*`` setting, plus ``extra``."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("TRIVY_")}
    env.update(extra or {})
    return env


def image_argv(
    trivy: str | os.PathLike[str],
    layout: Path,
    *,
    cache_dir: Path | None = None,
    server: str | None = None,
    timeout: float | None = None,
) -> list[str]:
    """``trivy image --input LAYOUT`` offline, JSON on stdout.

    Standalone with ``cache_dir`` (its ``db/`` holds the DB, its ``fanal/`` the layer
    analyses); a client of ``trivy server`` at ``server`` (``http://127.0.0.1:PORT``)
    otherwise, its token then in ``$TRIVY_TOKEN`` (see :func:`client_environment`), never on
    the command line.
    """
    if (cache_dir is None) == (server is None):
        raise ValueError("trivy image: give exactly one of cache_dir and server")
    argv = [os.fspath(trivy), "image", "--input", str(layout), *OFFLINE_FLAGS, *SCAN_FLAGS]
    if cache_dir is not None:
        argv += ["--cache-dir", str(cache_dir)]
    else:
        argv += ["--server", str(server), "--token-header", TOKEN_HEADER]
    if timeout is not None:
        argv += ["--timeout", f"{max(int(timeout), 1)}s"]
    return argv


def client_environment(token: str | None) -> dict[str, str]:
    """The environment of a client run: the server's token, if any, in ``$TRIVY_TOKEN``."""
    return environment({TOKEN_ENV: token} if token else None)


def server_argv(trivy: str | os.PathLike[str], cache_dir: Path, listen: str) -> list[str]:
    """``trivy server`` on ``listen`` (``127.0.0.1:PORT``) with the DB and cache of
    ``cache_dir``; its token comes from ``$TRIVY_TOKEN`` (:func:`client_environment`).

    ``trivy server`` (0.76) refuses ``--skip-java-db-update``, ``--skip-version-check`` and
    ``--disable-telemetry``; with ``--skip-db-update`` it makes no request (the DB is the
    only thing it downloads; the clients say the rest).
    """
    return [
        os.fspath(trivy),
        "server",
        "--skip-db-update",
        "--cache-dir",
        str(cache_dir),
        "--listen",
        listen,
        "--token-header",
        TOKEN_HEADER,
        "--config",
        "",
        "--quiet",
    ]


def version_argv(trivy: str | os.PathLike[str], cache_dir: Path) -> list[str]:
    """``trivy --version --format json``: trivy's version and, with a DB in ``cache_dir``,
    the DB's metadata."""
    return [os.fspath(trivy), "--version", "--format", "json", "--cache-dir", str(cache_dir)]


@dataclass(frozen=True)
class TrivyVersion:
    """What ``trivy --version`` says: its own version, the DB's ``UpdatedAt`` if it has one."""

    version: str
    db_updated_at: str | None = None


def version(tools: Tools, trivy: str | os.PathLike[str], cache_dir: Path) -> TrivyVersion:
    """Run ``trivy --version`` (see :func:`version_argv`)."""
    completed = tools.run(TOOL, version_argv(trivy, cache_dir), environment())
    if completed.returncode != 0:
        raise ToolError(f"{os.fspath(trivy)} --version: {failure(completed.stderr)}", True)
    document = _json_object(completed.stdout, f"{os.fspath(trivy)} --version")
    number = document.get("Version")
    if not isinstance(number, str) or not number:
        raise ToolError(f"{os.fspath(trivy)} --version: no Version in its answer", True)
    db = document.get("VulnerabilityDB")
    updated = db.get("UpdatedAt") if isinstance(db, dict) else None
    return TrivyVersion(number, updated if isinstance(updated, str) else None)


def report(stdout: str, what: str) -> dict[str, Any]:
    """The JSON report of a ``trivy image`` run (``what`` names the scan in errors)."""
    document = _json_object(stdout, what)
    if not isinstance(document.get("SchemaVersion"), int):
        raise ToolError(f"{what}: trivy's output is not a JSON report (no SchemaVersion)")
    return document


def failure(stderr: str) -> str:
    """The cause of a failed trivy run: its ``FATAL`` line's message, else its last line."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    for line in reversed(lines):
        match = _FATAL.search(line)
        if match:
            return match.group(1).strip()
    return lines[-1] if lines else "no output"


def missing_layer(stderr: str) -> str | None:
    """The layer (diff ID) a failed run could neither find in its cache nor read from the
    layout, if that is why it failed."""
    match = _MISSING_LAYER.search(stderr)
    return match.group(1) if match else None


def _json_object(text: str, what: str) -> dict[str, Any]:
    try:
        document = json.loads(text)
    except ValueError as exc:
        raise ToolError(f"{what}: output is not JSON ({exc})") from exc
    if not isinstance(document, dict):
        raise ToolError(f"{what}: output is not a JSON object")
    return document
