"""skopeo: the copy command the sync runs, its flags for a registry, and what a failed run says.

The sync runs one ``skopeo copy`` per heavy entry (flags common to skopeo 1.9 and 1.18). Only
its exit status and, on failure, its ``level=fatal`` message are read: what it moved is
established by the sync itself (see :class:`~airgapped_registry.mirror.copiers.SkopeoCopier`),
since skopeo's log lines change between versions.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Sequence
from pathlib import Path

from airgapped_registry.tools.process import ToolError, tool_error, write_secret
from airgapped_registry.transport.access import RegistryAccess

_DIGEST = r"sha256:[0-9a-f]{64}"
_DIGEST_MISMATCH = re.compile(rf"[Dd]igest did not match, expected ({_DIGEST}), got ({_DIGEST})")
_MANIFEST_MISMATCH = re.compile(
    rf"[Mm]anifest does not match provided manifest digest ({_DIGEST})|"
    rf"[Mm]anifest digest ({_DIGEST}) does not match"
)
# An upload session, as skopeo's debug log and failure message name it (with its token).
_UPLOAD_SESSION = re.compile(r"(https?://[^\s\"'?]+/blobs/uploads/[^\s\"'?]+)\?_state=[\w.~%=-]+")


def skopeo_copy_argv(
    skopeo: str,
    source: str,
    destination: str,
    *,
    index: bool,
    retry_times: int,
    source_options: Sequence[str] = (),
    destination_options: Sequence[str] = (),
) -> list[str]:
    """The one skopeo command the sync runs (flags common to skopeo 1.9 and 1.18).

    ``--insecure-policy``: the appliance's trust is digest pinning plus cosign, checked by the
    engine; a host's ``policy.json`` must not change what a sync does. ``--remove-signatures``:
    skopeo's own (GPG/sigstore-attachment) signatures are not used; cosign signatures are
    copied by the engine. ``--debug``: its log names each upload session skopeo uses (the
    request URLs), so that those a failed run abandoned can be closed
    (:func:`upload_sessions`); nothing else is read from it, and a skopeo whose log said
    less would only leave more of them to the registry's upload purging.
    """
    argv = [skopeo, "--insecure-policy", "--debug", "copy", "--preserve-digests"]
    argv += ["--remove-signatures", f"--retry-times={retry_times}"]
    if index:
        argv.append("--all")
    return [*argv, *source_options, *destination_options, source, destination]


class SkopeoCopyError(ToolError):
    """A ``skopeo copy`` failed; ``mismatch`` is ``(expected, got)`` for a corrupt blob."""

    def __init__(self, message: str, permanent: bool, mismatch: tuple[str, str] | None) -> None:
        super().__init__(message, permanent)
        self.mismatch = mismatch


def copy_failure(completed: subprocess.CompletedProcess[str]) -> SkopeoCopyError:
    """What a failed ``skopeo copy`` run says: a corrupt source blob, a missing manifest
    (permanent), or anything else."""
    message = tool_error(completed.stderr + "\n" + completed.stdout)
    mismatch = _DIGEST_MISMATCH.search(message)
    if mismatch:
        return SkopeoCopyError(
            f"blob {mismatch[1]}: the source served content with digest {mismatch[2]} "
            "(corrupt upstream blob); refused, nothing tagged",
            True,
            (mismatch[1], mismatch[2]),
        )
    manifest = _MANIFEST_MISMATCH.search(message)
    if manifest:
        return SkopeoCopyError(
            f"manifest {manifest[1] or manifest[2]}: the source served bytes with another "
            "digest; refused, nothing tagged",
            True,
            None,
        )
    permanent = "manifest unknown" in message.lower()
    return SkopeoCopyError(
        f"skopeo copy failed (exit {completed.returncode}): {message}", permanent, None
    )


def upload_sessions(output: str) -> list[str]:
    """The upload sessions a ``skopeo --debug copy`` run used (its ``PATCH``/``PUT`` lines,
    and the upload a failure names: ``uploading layer to http://…/blobs/uploads/<uuid>?
    _state=…``), each with the last URL given for it and so its current ``_state`` token:
    what to close after a failed run (a finished one answers 404)."""
    last = {match[1]: match[0] for match in _UPLOAD_SESSION.finditer(output)}
    return list(last.values())


def source_flags(access: RegistryAccess, directory: Path) -> list[str]:
    """``--src-*`` flags for reaching ``access``; files they need are written in ``directory``.

    skopeo reads CAs from a directory only: with CA files beside a cert dir, it gets a
    directory of links to both. Credentials go to ``directory/auth.json`` (0600).
    """
    access.require_tcp("skopeo")
    options: list[str] = []
    if access.insecure:
        options.append("--src-tls-verify=false")
    else:
        options.append("--src-tls-verify=true")
        if access.ca_files:
            certs = directory / "certs"
            certs.mkdir()
            (certs / "ca-file.crt").symlink_to(access.ca_files[0])
            if access.cert_dir is not None:
                for path in sorted(access.cert_dir.iterdir()):
                    if path.suffix in (".crt", ".cert", ".key"):
                        (certs / path.name).symlink_to(path)
            options += ["--src-cert-dir", str(certs)]
        elif access.cert_dir is not None:
            options += ["--src-cert-dir", str(access.cert_dir)]
    text = access.credentials_text()
    if text is not None:
        write_secret(directory / "auth.json", text)
        options += ["--src-authfile", str(directory / "auth.json")]
    else:
        options.append("--src-no-creds")
    return options


def destination_flags(access: RegistryAccess, directory: Path) -> list[str]:
    """``--dest-*`` flags for reaching ``access`` (a CA file and a client pair, credentials
    file); the cert dir skopeo wants is made of links in ``directory/destination-certs``."""
    access.require_tcp("skopeo")
    options: list[str] = []
    if access.insecure:
        options.append("--dest-tls-verify=false")
    else:
        options.append("--dest-tls-verify=true")
        ca_file = access.ca_files[0] if access.ca_files else None
        if ca_file or access.cert_file:
            certs = directory / "destination-certs"
            certs.mkdir(mode=0o700)
            files = (
                ("ca.crt", ca_file),
                ("client.cert", access.cert_file),
                ("client.key", access.key_file),
            )
            for name, path in files:
                if path:
                    (certs / name).symlink_to(Path(path).resolve())
            options += ["--dest-cert-dir", str(certs)]
    if access.credentials_file is not None:
        options += ["--dest-authfile", str(access.credentials_file)]
    else:
        options.append("--dest-no-creds")
    return options
