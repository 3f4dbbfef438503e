"""What a request asks, read strictly from nginx's raw ``$request_uri`` and method, and who
asks, read only from the ``X-SSL-Client-*`` headers nginx sets from the verified certificate.

nginx hands the URI as the client sent it. Distribution would decode ``%2F`` or resolve
``..`` in its own way, so anything two parsers could read differently is refused here
(:class:`BadRequest`, reason ``bad_request``): percent-encoding in the path, empty, ``.`` or
``..`` segments, a repository name outside the OCI grammar, an unknown endpoint or a method
the endpoint does not have. The query is only read for an upload's ``mount``/``from``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import parse_qsl

from airgapped_registry.oci.reference import DIGEST_PATTERN, REPOSITORY_PATTERN, TAG_PATTERN

# Actions, as the audit log names them.
BASE, CATALOG, TAGS = "base", "catalog", "tags"
PULL, HEAD, PUSH, TAG, DELETE = "pull", "head", "push", "tag", "delete"
BLOB_PULL, BLOB_HEAD, BLOB_PUSH, BLOB_DELETE = "blob_pull", "blob_head", "blob_push", "blob_delete"
MANIFEST_ACTIONS = (PULL, HEAD, PUSH, TAG, DELETE)

_UPLOAD_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")
_QUERY = re.compile(r"[A-Za-z0-9._~%=&+:/-]*")
# cosign keeps what refers to a digest under these tags (signatures, attestations, SBOMs).
ATTACHMENT_TAG = re.compile(r"sha256-[a-f0-9]{64}\.(?:sig|att|sbom)")
VERIFIED = "SUCCESS"
# What nginx sends the gate (roles/gateway's template), and all the gate reads.
GATE_HEADERS = (
    "X-Original-Method",
    "X-Original-URI",
    "X-Real-IP",
    "X-Request-ID",
    "X-SSL-Client-Verify",
    "X-SSL-Client-S-DN",
    "X-SSL-Client-I-DN",
    "X-SSL-Client-Serial",
    "X-SSL-Client-Fingerprint",
)


class BadRequest(ValueError):
    """The request cannot be read unambiguously; the message says why."""


@dataclass(frozen=True)
class Request:
    """One request as the gate judges it.

    ``reference``: a manifest's tag or digest, a blob's digest; ``mount_from``: the
    repository a cross-repository blob mount reads from.
    """

    method: str
    action: str
    repository: str = ""
    reference: str = ""
    mount_from: str = ""

    @property
    def by_digest(self) -> bool:
        return bool(DIGEST_PATTERN.fullmatch(self.reference))


@dataclass(frozen=True)
class Identity:
    """The verified client certificate, as nginx wrote it."""

    subject: str
    issuer: str = ""
    serial: str = ""
    fingerprint: str = ""
    cn: tuple[str, ...] = ()
    ou: tuple[str, ...] = ()

    def to_json(self) -> dict[str, str]:
        return {
            "subject": self.subject,
            "serial": self.serial,
            "issuer": self.issuer,
            "fingerprint": self.fingerprint,
        }


# (endpoint, method) -> action
_MANIFEST_METHODS = {"GET": PULL, "HEAD": HEAD, "PUT": None, "DELETE": DELETE}
_BLOB_METHODS = {"GET": BLOB_PULL, "HEAD": BLOB_HEAD, "DELETE": BLOB_DELETE}
_UPLOAD_METHODS = ("POST", "PATCH", "PUT", "GET", "DELETE")


def classify(method: str, uri: str) -> Request:
    """The request ``method uri`` (raw, as nginx's ``$request_uri``) names, or BadRequest."""
    path, _, query = uri.partition("?")
    if not path.startswith("/v2/"):
        raise BadRequest(f"{_show(path)}: not an API path")
    if "%" in path:
        raise BadRequest(f"{_show(path)}: percent-encoding in the path")
    if not _QUERY.fullmatch(query):
        raise BadRequest(f"{_show(uri)}: unexpected characters in the query")
    if path == "/v2/":
        return _only(method, ("GET", "HEAD"), Request(method, BASE))
    parts = path[len("/v2/") :].split("/")
    if parts[-1] == "" and parts[-2:] == ["uploads", ""]:
        parts = parts[:-1]  # "blobs/uploads/" has its trailing slash
        trailing = True
    else:
        trailing = False
    for segment in parts:
        if segment in ("", ".", ".."):
            raise BadRequest(f"{_show(path)}: empty, '.' or '..' path segment")
    if parts == ["_catalog"]:
        return _only(method, ("GET",), Request(method, CATALOG))
    if len(parts) >= 3 and parts[-2:] == ["tags", "list"]:
        repository = _repository(parts[:-2])
        return _only(method, ("GET",), Request(method, TAGS, repository))
    if len(parts) >= 3 and parts[-2] == "manifests":
        repository, reference = _repository(parts[:-2]), parts[-1]
        if not (DIGEST_PATTERN.fullmatch(reference) or TAG_PATTERN.fullmatch(reference)):
            raise BadRequest(f"{_show(reference)}: neither a tag nor a digest")
        if method not in _MANIFEST_METHODS:
            raise BadRequest(f"{method} is not a manifest method")
        if method == "DELETE" and not DIGEST_PATTERN.fullmatch(reference):
            # Distribution deletes manifests by digest only; a tag here is refused there too.
            raise BadRequest(f"DELETE {_show(reference)}: manifests are deleted by digest")
        action = _MANIFEST_METHODS[method]
        if action is None:
            action = PUSH if DIGEST_PATTERN.fullmatch(reference) else TAG
        return Request(method, action, repository, reference)
    if len(parts) >= 3 and parts[-2:] == ["blobs", "uploads"] and trailing:
        repository = _repository(parts[:-2])
        request = _only(method, ("POST",), Request(method, BLOB_PUSH, repository))
        return _mount(request, query)
    if len(parts) >= 4 and parts[-3:-1] == ["blobs", "uploads"]:
        if not _UPLOAD_ID.fullmatch(parts[-1]):
            raise BadRequest(f"{_show(parts[-1])}: not an upload id")
        repository = _repository(parts[:-3])
        return _only(method, _UPLOAD_METHODS, Request(method, BLOB_PUSH, repository, parts[-1]))
    if len(parts) >= 3 and parts[-2] == "blobs":
        repository, digest = _repository(parts[:-2]), parts[-1]
        if not DIGEST_PATTERN.fullmatch(digest):
            raise BadRequest(f"{_show(digest)}: not a digest")
        if method not in _BLOB_METHODS:
            raise BadRequest(f"{method} is not a blob method")
        return Request(method, _BLOB_METHODS[method], repository, digest)
    raise BadRequest(f"{_show(path)}: unknown endpoint")


def _repository(parts: list[str]) -> str:
    name = "/".join(parts)
    if len(name) > 255 or not REPOSITORY_PATTERN.fullmatch(name):
        raise BadRequest(f"{_show(name)}: not a repository name (OCI grammar)")
    return name


def _only(method: str, methods: tuple[str, ...], request: Request) -> Request:
    if method not in methods:
        raise BadRequest(f"{method} is not allowed on this endpoint")
    return request


def _mount(request: Request, query: str) -> Request:
    values = dict(parse_qsl(query, keep_blank_values=True))
    source = values.get("from")
    if "mount" not in values or source is None:
        return request
    if not REPOSITORY_PATTERN.fullmatch(source):
        raise BadRequest(f"from={_show(source)}: not a repository name")
    return Request(request.method, request.action, request.repository, values["mount"], source)


def _show(text: str) -> str:
    """A client's text in a message: bounded, printable ASCII only."""
    clean = "".join(char if 32 <= ord(char) < 127 else "?" for char in text[:200])
    return f"'{clean}'"


def identity(headers: Mapping[str, str]) -> Identity | None:
    """The verified client, or None when nginx did not verify one. nginx overwrites these
    headers from its own variables, so nothing a client sends can stand in for them."""
    if headers.get("X-SSL-Client-Verify", "") != VERIFIED:
        return None
    subject = headers.get("X-SSL-Client-S-DN", "")
    if not subject:
        return None
    return _identity(
        subject,
        headers.get("X-SSL-Client-I-DN", ""),
        headers.get("X-SSL-Client-Serial", ""),
        headers.get("X-SSL-Client-Fingerprint", ""),
    )


# The same few certificates ask again and again: their subject is read once (an Identity is
# immutable, so sharing it is safe).
@lru_cache(maxsize=1024)
def _identity(subject: str, issuer: str, serial: str, fingerprint: str) -> Identity:
    attributes = distinguished_name(subject)
    return Identity(
        subject=subject,
        issuer=issuer,
        serial=serial,
        fingerprint=fingerprint,
        cn=tuple(value for name, value in attributes if name == "CN"),
        ou=tuple(value for name, value in attributes if name == "OU"),
    )


def distinguished_name(text: str) -> list[tuple[str, str]]:
    """``CN=node,OU=puller,O=x`` (RFC 2253, as nginx writes ``$ssl_client_s_dn``) as
    ``(attribute, value)`` pairs; escaped characters (``\\,``) kept in the value."""
    pairs: list[tuple[str, str]] = []
    current: list[str] = []
    escaped = False
    for char in text + ",":
        if escaped:
            current.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char in ",+":
            name, _, value = "".join(current).partition("=")
            pairs.append((name.strip().upper(), value.strip()))
            current = []
        else:
            current.append(char)
    return pairs
