"""auth.json reading and challenge parsing (the token flow runs against Distribution in
tests/integration/test_lock.py)."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from airgapped_registry.errors import AirgapError
from airgapped_registry.transport.auth import Challenge, credentials_for, read_auths


def encoded(user: str, password: str) -> str:
    return base64.b64encode(f"{user}:{password}".encode()).decode()


AUTHS = {
    "upstream:5000": {"auth": encoded("alice", "s3:cret")},
    "https://index.docker.io/v1/": {"auth": encoded("hub", "pw")},
    "https://ghcr.io": {"username": "bob", "password": "pat"},
    "quay.io": {"identitytoken": "xyz"},
}


@pytest.mark.parametrize(
    ("registry", "expected"),
    [
        ("upstream:5000", ("alice", "s3:cret")),
        ("docker.io", ("hub", "pw")),
        ("registry-1.docker.io", ("hub", "pw")),
        ("ghcr.io", ("bob", "pat")),
        ("upstream", None),
        ("example.org", None),
    ],
)
def test_credentials_for_a_registry(registry: str, expected: tuple[str, str] | None) -> None:
    assert credentials_for(AUTHS, registry) == expected


def test_identity_tokens_are_refused_by_name() -> None:
    with pytest.raises(AirgapError, match=r"quay\.io: identity tokens are not supported"):
        credentials_for(AUTHS, "quay.io")


def test_auth_json_from_a_file_or_a_variable(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "auth.json"
    path.write_text(json.dumps({"auths": AUTHS}))
    assert read_auths(path, None) == AUTHS
    monkeypatch.setenv("MIRROR_AUTH", json.dumps({"auths": AUTHS}))
    assert read_auths(None, "MIRROR_AUTH") == AUTHS


def test_bad_auth_json_is_named_but_never_shown(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("MIRROR_AUTH", '{"auths": {"h": {"auth": "c2VjcmV0"}}')
    with pytest.raises(AirgapError) as caught:
        read_auths(None, "MIRROR_AUTH")
    assert str(caught.value) == "credentials variable MIRROR_AUTH: not JSON (line 1)"
    monkeypatch.delenv("MIRROR_AUTH")
    with pytest.raises(AirgapError, match="credentials variable MIRROR_AUTH: not set"):
        read_auths(None, "MIRROR_AUTH")
    path = tmp_path / "auth.json"
    path.write_text('{"c2VjcmV0": 1}')
    with pytest.raises(AirgapError) as caught:
        read_auths(path, None)
    assert "c2VjcmV0" not in str(caught.value)
    assert "an 'auths' mapping" in str(caught.value)
    with pytest.raises(AirgapError, match="No such file"):
        read_auths(tmp_path / "missing.json", None)


def test_challenge_parsing() -> None:
    challenge = Challenge.parse(
        'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
        'scope="repository:library/nginx:pull"'
    )
    assert challenge == Challenge(
        "bearer",
        {
            "realm": "https://auth.docker.io/token",
            "service": "registry.docker.io",
            "scope": "repository:library/nginx:pull",
        },
    )
    assert Challenge.parse('Basic realm="Registry Realm"') == Challenge(
        "basic", {"realm": "Registry Realm"}
    )
    assert Challenge.parse(None) is None
