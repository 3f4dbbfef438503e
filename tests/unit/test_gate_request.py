"""The gate reads nginx's raw request URI strictly: a table of what each request is, and of
what is refused; identity comes only from a verified certificate's headers."""

from __future__ import annotations

import pytest

from airgapped_registry.gate.request import (
    BadRequest,
    classify,
    distinguished_name,
    identity,
)

D = "sha256:" + "a" * 64


@pytest.mark.parametrize(
    ("method", "uri", "expected"),
    [
        ("GET", "/v2/", ("base", "", "", "")),
        ("HEAD", "/v2/", ("base", "", "", "")),
        ("GET", "/v2/_catalog?n=100", ("catalog", "", "", "")),
        ("GET", "/v2/prod/app/tags/list", ("tags", "prod/app", "", "")),
        ("GET", "/v2/prod/app/tags/list?n=10&last=a", ("tags", "prod/app", "", "")),
        ("GET", "/v2/prod/app/manifests/1.0", ("pull", "prod/app", "1.0", "")),
        ("HEAD", f"/v2/prod/app/manifests/{D}", ("head", "prod/app", D, "")),
        ("PUT", "/v2/ci/app/manifests/1.0", ("tag", "ci/app", "1.0", "")),
        ("PUT", f"/v2/ci/app/manifests/{D}", ("push", "ci/app", D, "")),
        ("DELETE", f"/v2/ci/app/manifests/{D}", ("delete", "ci/app", D, "")),
        ("GET", f"/v2/a/b/c/blobs/{D}", ("blob_pull", "a/b/c", D, "")),
        ("HEAD", f"/v2/app/blobs/{D}", ("blob_head", "app", D, "")),
        ("DELETE", f"/v2/app/blobs/{D}", ("blob_delete", "app", D, "")),
        ("POST", "/v2/ci/app/blobs/uploads/", ("blob_push", "ci/app", "", "")),
        (
            "POST",
            f"/v2/ci/app/blobs/uploads/?mount={D}&from=prod%2Fapp",
            ("blob_push", "ci/app", D, "prod/app"),
        ),
        ("PATCH", "/v2/ci/app/blobs/uploads/0f2c-ab_9", ("blob_push", "ci/app", "0f2c-ab_9", "")),
        (
            "PUT",
            f"/v2/ci/app/blobs/uploads/0f2c?_state=ab%3D%3D&digest=sha256%3A{'a' * 64}",
            ("blob_push", "ci/app", "0f2c", ""),
        ),
        ("GET", "/v2/prod/manifests/manifests/1.0", ("pull", "prod/manifests", "1.0", "")),
        (
            "PUT",
            f"/v2/p/manifests/sha256-{'a' * 64}.sig",
            ("tag", "p", f"sha256-{'a' * 64}.sig", ""),
        ),
    ],
)
def test_what_a_request_is(method: str, uri: str, expected: tuple[str, str, str, str]) -> None:
    request = classify(method, uri)
    assert (request.action, request.repository, request.reference, request.mount_from) == expected


@pytest.mark.parametrize(
    ("method", "uri", "cause"),
    [
        ("GET", "/v2/prod%2Fapp/manifests/1.0", "percent-encoding"),
        ("GET", "/v2/prod/app/manifests/%31.0", "percent-encoding"),
        ("GET", "/v2/prod//app/manifests/1.0", "empty, '.' or '..'"),
        ("GET", "/v2/prod/./app/manifests/1.0", "empty, '.' or '..'"),
        ("GET", "/v2/ci/../prod/app/manifests/1.0", "empty, '.' or '..'"),
        ("GET", "/v2/Prod/app/manifests/1.0", "not a repository name"),
        ("GET", "/v2/prod/app_/manifests/1.0", "not a repository name"),
        ("GET", "/v2/prod/app/manifests/.hidden", "neither a tag nor a digest"),
        ("GET", "/v2/prod/app/manifests/sha256:abc", "neither a tag nor a digest"),
        ("GET", "/v2/prod/app/blobs/latest", "not a digest"),
        ("GET", "/v2/prod/app/referrers/" + D, "unknown endpoint"),
        ("GET", "/v2/prod/app", "unknown endpoint"),
        ("GET", "/v2", "not an API path"),
        ("GET", "/v3/", "not an API path"),
        ("GET", "/v2/_catalog/x", "unknown endpoint"),
        ("POST", "/v2/_catalog", "not allowed"),
        ("DELETE", "/v2/prod/app/tags/list", "not allowed"),
        ("POST", "/v2/prod/app/manifests/1.0", "not a manifest method"),
        ("DELETE", "/v2/prod/app/manifests/1.0", "deleted by digest"),
        ("PUT", f"/v2/prod/app/blobs/{D}", "not a blob method"),
        ("PUT", "/v2/ci/app/blobs/uploads/", "not allowed"),
        ("PATCH", "/v2/ci/app/blobs/uploads/a.b", "not an upload id"),
        ("GET", "/v2/prod/app/manifests/1.0?x=<script>", "unexpected characters"),
        ("POST", f"/v2/ci/app/blobs/uploads/?mount={D}&from=..%2Fprod", "not a repository"),
        ("GET", "", "not an API path"),
    ],
)
def test_what_is_refused(method: str, uri: str, cause: str) -> None:
    with pytest.raises(BadRequest, match=cause):
        classify(method, uri)


def test_identity_only_from_a_verified_certificate() -> None:
    verified = {
        "X-SSL-Client-Verify": "SUCCESS",
        "X-SSL-Client-S-DN": "CN=node,OU=puller,OU=ops,O=Airgap",
        "X-SSL-Client-Serial": "1A",
    }
    who = identity(verified)
    assert who is not None
    assert (who.cn, who.ou, who.serial) == (("node",), ("puller", "ops"), "1A")
    for failed in ("NONE", "FAILED:certificate revoked", ""):
        assert identity({**verified, "X-SSL-Client-Verify": failed}) is None
    assert identity({**verified, "X-SSL-Client-S-DN": ""}) is None


def test_an_escaped_comma_stays_in_its_value() -> None:
    assert distinguished_name(r"CN=a\,OU=admin,OU=puller") == [
        ("CN", "a,OU=admin"),
        ("OU", "puller"),
    ]
