"""Registry credentials: docker-style ``auth.json``, and the Basic / Bearer token flow.

A mirror list never holds a secret: a source names an ``auth.json`` file or an environment
variable holding such a document (``{"auths": {"host": {"auth": base64("user:pass")}}}``).

:class:`AuthenticatingClient` answers a registry's 401 challenge the way the distribution
token specification describes: ``Basic`` gets the credentials; ``Bearer`` gets a token
fetched from the challenge's realm for the challenge's scope (with the credentials, or
anonymously when there are none, as Docker Hub wants for public images), then the request is
sent once more. Tokens are kept per repository and sent up front on later requests, so a run
pays the challenge once per repository. Credentials never go to another origin (a blob
redirect to object storage carries its own signature).

This subclasses :class:`~airgapped_registry.transport.registry.RegistryClient` and overrides its
private ``_send``; the client's module docstring names ``_send`` as the place for token
authentication, and a public hook there would replace this override.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import urlencode, urlsplit

from airgapped_registry.errors import AirgapError, RegistryError
from airgapped_registry.transport.registry import RegistryClient
from airgapped_registry.transport.session import Response

_CHALLENGE = re.compile(r"\s*(\w+)\s*(.*)", re.DOTALL)
_PARAMETER = re.compile(r'(\w+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]+))')
_REPOSITORY_PATH = re.compile(r"/v2/(.+?)/(?:manifests|blobs|tags)/")
_DOCKER_HUB = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})


@dataclass(frozen=True)
class Challenge:
    """A parsed ``WWW-Authenticate`` header: ``Bearer realm="...",service="..."``."""

    scheme: str
    parameters: dict[str, str]

    @classmethod
    def parse(cls, header: str | None) -> Challenge | None:
        match = _CHALLENGE.match(header or "")
        if not match:
            return None
        parameters = {
            key.lower(): quoted if quoted is not None and not bare else bare
            for key, quoted, bare in _PARAMETER.findall(match[2])
        }
        return cls(match[1].lower(), parameters)


def read_auths(file: str | os.PathLike[str] | None, env: str | None) -> dict[str, Any]:
    """The ``auths`` mapping of an auth.json read from ``file`` or the variable ``env``.

    Messages name the file or variable, never its content.
    """
    if file is not None:
        where = os.fspath(file)
        try:
            text = Path(file).read_text(encoding="utf-8")
        except OSError as exc:
            raise AirgapError(f"credentials file {where}: {exc.strerror or exc}") from exc
    else:
        where = f"credentials variable {env}"
        value = os.environ.get(env or "")
        if value is None:
            raise AirgapError(f"{where}: not set")
        text = value
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        # The position only: the content is a secret.
        raise AirgapError(f"{where}: not JSON (line {exc.lineno})") from None
    if not isinstance(document, dict) or not isinstance(auths := document.get("auths"), dict):
        raise AirgapError(f"{where}: expected an auth.json document with an 'auths' mapping")
    return auths


def credentials_for(auths: dict[str, Any], registry: str) -> tuple[str, str] | None:
    """``(username, password)`` for ``registry`` (host[:port]) from an ``auths`` mapping.

    Keys may be written ``host``, ``https://host`` or ``https://host/v1/``, as docker and
    podman write them; Docker Hub's several names count as one.
    """
    wanted = {registry} | (_DOCKER_HUB if registry in _DOCKER_HUB else set())
    for key, value in auths.items():
        host = urlsplit(key if "://" in key else f"//{key}").netloc
        if host not in wanted or not isinstance(value, dict):
            continue
        if value.get("auth"):
            try:
                decoded = base64.b64decode(value["auth"], validate=True).decode()
            except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
                raise AirgapError(f"auth.json entry {key}: 'auth' is not base64") from exc
            username, separator, password = decoded.partition(":")
            if not separator:
                raise AirgapError(f"auth.json entry {key}: 'auth' is not base64(user:password)")
            return username, password
        if value.get("username") is not None and value.get("password") is not None:
            return str(value["username"]), str(value["password"])
        if value.get("identitytoken"):
            raise AirgapError(f"auth.json entry {key}: identity tokens are not supported")
    return None


class AuthenticatingClient(RegistryClient):
    """A registry client that answers Basic and Bearer challenges (see the module doc)."""

    def __init__(
        self,
        base_url: str,
        *,
        username: str | None = None,
        password: str | None = None,
        **options: Any,
    ) -> None:
        super().__init__(base_url, **options)
        self._basic = (
            "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()
            if username is not None
            else None
        )
        self._use_basic = False
        self._tokens: dict[str, str] = {}
        self.tokens_fetched = 0

    def __repr__(self) -> str:
        return f"AuthenticatingClient({self.base_url!r})"

    def _send(
        self,
        method: str,
        url: str,
        headers: dict[str, str],
        body: bytes | None,
        sink: BinaryIO | None = None,
    ) -> Response:
        target = self._own_target(url)
        if target is None:
            return super()._send(method, url, headers, body, sink)
        scope_key = _scope_key(urlsplit(target).path)
        authorization = self._authorization(scope_key)
        first = super()._send(method, url, _with(headers, authorization), body, sink)
        if first.status != 401:
            return first
        challenge = Challenge.parse(first.header("WWW-Authenticate"))
        if challenge is None:
            return first
        if challenge.scheme == "basic":
            # Sent with the credentials already: they are refused. Sent without them while
            # another thread switched to Basic: retried with them like the first one.
            if self._basic is None or authorization == self._basic:
                return first
            self._use_basic = True
        elif challenge.scheme == "bearer":
            self._tokens[scope_key] = self._fetch_token(challenge)
        else:
            return first
        authorized = _with(headers, self._authorization(scope_key))
        return super()._send(method, url, authorized, body, sink)

    def _authorization(self, scope_key: str) -> str | None:
        token = self._tokens.get(scope_key)
        if token:
            return f"Bearer {token}"
        return self._basic if self._use_basic else None

    def _fetch_token(self, challenge: Challenge) -> str:
        realm = challenge.parameters.get("realm")
        if not realm or not realm.startswith(("https://", "http://")):
            raise RegistryError("GET", self.base_url, 401, cause=f"bad token realm {realm!r}")
        query = {
            key: challenge.parameters[key]
            for key in ("service", "scope")
            if challenge.parameters.get(key)
        }
        url = f"{realm}{'&' if '?' in realm else '?'}{urlencode(query)}" if query else realm
        headers = {"Authorization": self._basic} if self._basic else {}
        response = super()._send("GET", url, headers, None)
        self.tokens_fetched += 1
        if response.status != 200:
            raise RegistryError("GET", url, response.status, response.body)
        try:
            document = json.loads(response.body)
            token = document.get("token") or document.get("access_token")
        except (ValueError, AttributeError):
            token = None
        if not isinstance(token, str) or not token:
            raise RegistryError("GET", url, response.status, cause="token response without token")
        return token


def _scope_key(path: str) -> str:
    match = _REPOSITORY_PATH.match(path)
    return match[1] if match else path


def _with(headers: dict[str, str], authorization: str | None) -> dict[str, str]:
    return {**headers, "Authorization": authorization} if authorization else headers
