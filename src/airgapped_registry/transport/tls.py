"""TLS for the engine's clients: a context trusting exactly the files named, and cert dirs.

Environment variables such as ``SSL_CERT_FILE`` never change which CA is trusted: an
appliance that silently trusted the system bundle instead of its own internal CA would fail
(or, worse, succeed) for reasons nobody can see.
"""

from __future__ import annotations

import os
import ssl
from pathlib import Path

from airgapped_registry.errors import AirgapError


def tls_context(
    ca_file: str | os.PathLike[str] | None,
    cert_file: str | os.PathLike[str] | None,
    key_file: str | os.PathLike[str] | None,
) -> ssl.SSLContext:
    """A client TLS context trusting exactly ``ca_file`` (or the system store), TLS >= 1.2."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        if ca_file:
            context.load_verify_locations(cafile=os.fspath(ca_file))
        else:
            # The compiled-in paths, not the *_env ones: SSL_CERT_FILE must not change trust.
            paths = ssl.get_default_verify_paths()
            cafile = paths.openssl_cafile if os.path.isfile(paths.openssl_cafile) else None
            capath = paths.openssl_capath if os.path.isdir(paths.openssl_capath) else None
            if cafile or capath:
                context.load_verify_locations(cafile=cafile, capath=capath)
    except (OSError, ssl.SSLError) as exc:
        raise AirgapError(f"CA file {ca_file}: {_file_error(exc)}") from exc
    if cert_file:
        try:
            context.load_cert_chain(os.fspath(cert_file), os.fspath(key_file) if key_file else None)
        except (OSError, ssl.SSLError) as exc:
            raise AirgapError(
                f"client certificate {cert_file} (key {key_file}): {_file_error(exc)}"
            ) from exc
    return context


def _file_error(exc: OSError | ssl.SSLError) -> str:
    if isinstance(exc, ssl.SSLError):
        return f"not usable ({exc.reason or exc})"
    return exc.strerror or str(exc)


def read_cert_dir(directory: Path, where: str) -> tuple[list[Path], tuple[Path, Path] | None]:
    """``(CA files, client pair)`` of a cert dir, by skopeo's rules.

    Every ``*.crt`` is a CA; a ``*.cert`` and the ``*.key`` of the same base name are the
    client pair; a key without its certificate (or the reverse), or more than one pair, is
    an error naming ``where``.
    """
    if not directory.is_dir():
        raise AirgapError(f"{where}: cert_dir {directory}: not a directory")
    where = f"{where}: cert_dir {directory}"
    ca_files = sorted(directory.glob("*.crt"))
    certs = {path.stem: path for path in directory.glob("*.cert")}
    keys = {path.stem: path for path in directory.glob("*.key")}
    if unmatched := sorted(keys.keys() - certs.keys()):
        raise AirgapError(f"{where}: {unmatched[0]}.key has no {unmatched[0]}.cert")
    if unmatched := sorted(certs.keys() - keys.keys()):
        raise AirgapError(f"{where}: {unmatched[0]}.cert has no {unmatched[0]}.key")
    if len(certs) > 1:
        raise AirgapError(f"{where}: more than one client pair ({', '.join(sorted(certs))})")
    if not certs:
        return ca_files, None
    (stem,) = certs
    return ca_files, (certs[stem], keys[stem])
