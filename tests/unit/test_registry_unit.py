"""The registry client's contract that needs no registry: messages, validation, TLS trust."""

from __future__ import annotations

import socket
import ssl

import pytest

from airgapped_registry.errors import AirgapError, RegistryError
from airgapped_registry.oci.reference import digest_of
from airgapped_registry.transport.registry import RegistryClient
from airgapped_registry.transport.tls import tls_context

DIGEST = "sha256:" + "0" * 64


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize(
    ("status", "body", "message"),
    [
        # Bodies as Distribution 2.8 writes them.
        (
            400,
            b'{"errors":[{"code":"MANIFEST_BLOB_UNKNOWN","message":"blob unknown to registry",'
            b'"detail":"' + DIGEST.encode() + b'"}]}\n',
            f"400 MANIFEST_BLOB_UNKNOWN: blob unknown to registry ({DIGEST})",
        ),
        (
            404,
            b'{"errors":[{"code":"NAME_UNKNOWN","message":"repository name not known to registry",'
            b'"detail":{"name":"sample/web"}}]}\n',
            "404 NAME_UNKNOWN: repository name not known to registry (name=sample/web)",
        ),
        (
            401,
            b'{"errors":[{"code":"UNAUTHORIZED","message":"authentication required",'
            b'"detail":null}]}',
            "401 UNAUTHORIZED: authentication required",
        ),
        (502, b"<html><body>Bad Gateway</body></html>", "502 <html><body>Bad Gateway"),
        (405, b"", "405"),
    ],
)
def test_registry_error_names_request_status_and_cause(
    status: int, body: bytes, message: str
) -> None:
    url = "http://127.0.0.1:5000/v2/sample/web/manifests/1.0.0"
    error = RegistryError("PUT", url, status, body)
    assert str(error).startswith(f"PUT {url}: {message}")
    assert "\n" not in str(error)


def test_refused_connection_is_a_registry_error_without_status() -> None:
    port = closed_port()
    client = RegistryClient(f"http://127.0.0.1:{port}", timeout=5)
    with pytest.raises(RegistryError) as caught:
        client.ping()
    assert caught.value.status is None
    assert str(caught.value) == f"GET http://127.0.0.1:{port}/v2/: connection refused"
    assert client.requests == 1


@pytest.mark.parametrize(
    ("url", "options", "message"),
    [
        ("127.0.0.1:5000", {}, "expected http"),
        ("ftp://registry", {}, "expected http"),
        ("http://registry/v2/", {}, "must not carry a path"),
        ("http://registry", {"ca_file": "/ca.pem"}, "TLS files given for a plain http URL"),
        ("https://registry", {"key_file": "/client.key"}, "key was given without"),
        ("unix://run/registry.sock", {}, "expected unix:///absolute/path"),
        ("unix:///run/registry.sock?x=1", {}, "expected unix:///absolute/path"),
        ("unix:///run/registry.sock", {"ca_file": "/ca.pem"}, "TLS files given for a unix"),
    ],
)
def test_client_rejects_unusable_endpoints(url: str, options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RegistryClient(url, **options)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda c: c.head_manifest("Sample/Web", "1.0"), "invalid repository name 'Sample/Web'"),
        (lambda c: c.head_manifest("sample/web", "../x"), "invalid reference '../x'"),
        (lambda c: c.get_manifest("sample//web", "1.0"), "invalid repository name"),
        (lambda c: c.blob_exists("sample/web", "sha256:abc"), "invalid digest 'sha256:abc'"),
        (lambda c: c.delete_manifest("sample/web", "1.0.0"), "invalid digest '1.0.0'"),
        (lambda c: c.push_blob("sample/web", DIGEST, b"", mount_from="A"), "'A'"),
    ],
)
def test_names_are_validated_before_any_request(call, message: str) -> None:
    client = RegistryClient(f"http://127.0.0.1:{closed_port()}")
    with pytest.raises(ValueError, match=message):
        call(client)
    assert client.requests == 0


def test_digest_of_uses_the_named_algorithm() -> None:
    assert digest_of(b"") == (
        "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    )
    assert digest_of(b"", "sha512").startswith("sha512:cf83e1357eefb8bd")


def test_tls_trusts_exactly_the_given_ca_whatever_the_environment(
    pki, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The system bundle in these variables must not be loaded next to (or instead of) ours.
    for variable in ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        monkeypatch.setenv(variable, "/etc/ssl/certs/ca-certificates.crt")
    monkeypatch.setenv("SSL_CERT_DIR", "/etc/ssl/certs")
    context = tls_context(pki.ca_file, pki.client_cert, pki.client_key)
    (trusted,) = context.get_ca_certs()
    assert dict(item[0] for item in trusted["subject"]) == {"commonName": "Airgap Test CA"}
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname


def test_tls_without_ca_file_ignores_ssl_cert_file(pki, monkeypatch) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(pki.ca_file))
    monkeypatch.setenv("SSL_CERT_DIR", str(pki.ca_file.parent))
    subjects = [
        dict(i[0] for i in c["subject"]) for c in tls_context(None, None, None).get_ca_certs()
    ]
    assert {"commonName": "Airgap Test CA"} not in subjects


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"ca_file": "/nonexistent/ca.pem"}, "CA file /nonexistent/ca.pem: No such file"),
        ({"cert_file": "/nonexistent/c.pem"}, "client certificate /nonexistent/c.pem"),
    ],
)
def test_unreadable_tls_files_name_the_file(files: dict, message: str) -> None:
    with pytest.raises(AirgapError, match=message):
        RegistryClient("https://127.0.0.1:1", **files)


def test_a_key_that_is_not_the_certificates_is_refused(pki) -> None:
    with pytest.raises(AirgapError, match=f"client certificate {pki.client_cert}"):
        RegistryClient("https://127.0.0.1:1", cert_file=pki.client_cert, key_file=pki.server_key)
