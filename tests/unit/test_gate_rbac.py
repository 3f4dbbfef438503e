"""Roles: who may do what where (the table of docs/gate.md), and which reads skip admission."""

from __future__ import annotations

import pytest

from airgapped_registry.gate.policy import loads_policy
from airgapped_registry.gate.rbac import authorize
from airgapped_registry.gate.request import Identity, Request, classify

POLICY = loads_policy(
    """\
version: 1
landing_zones: [ci/]
grants:
  - {identity: {ou: puller}, role: puller}
  - {identity: {ou: pusher}, role: pusher, repositories: [ci/]}
  - {identity: {ou: pusher}, role: puller}
  - {identity: {ou: admin}, role: admin}
  - {identity: {ou: teamadmin}, role: admin, repositories: [team/]}
  - {identity: {cn: sync}, role: sync}
  - {identity: {cn: appliance}, role: scanner}
  - {identity: {cn: monitor}, role: monitor}
  - {identity: {cn: dev}, role: puller, repositories: [dev/]}
"""
)
D = "sha256:" + "b" * 64
SIG = f"sha256-{'b' * 64}.sig"


def who(subject: str) -> Identity:
    cn = tuple(p[3:] for p in subject.split(",") if p.startswith("CN="))
    ou = tuple(p[3:] for p in subject.split(",") if p.startswith("OU="))
    return Identity(subject, cn=cn, ou=ou)


PULLER, PUSHER, ADMIN = who("CN=n,OU=puller"), who("CN=ci,OU=pusher"), who("CN=a,OU=admin")
TEAMADMIN, SYNC, SCANNER = who("CN=t,OU=teamadmin"), who("CN=sync"), who("CN=appliance")
MONITOR, DEV, NOBODY = who("CN=monitor"), who("CN=dev"), who("CN=x,OU=guest")

# (identity, method, uri, allowed, exempt from admission)
TABLE = [
    (PULLER, "GET", "/v2/", True, True),
    (NOBODY, "GET", "/v2/", False, True),
    (PULLER, "GET", "/v2/prod/app/manifests/1", True, False),
    (PULLER, "HEAD", "/v2/prod/app/manifests/1", True, False),
    (PULLER, "GET", f"/v2/prod/app/blobs/{D}", True, False),
    (PULLER, "GET", "/v2/prod/app/tags/list", True, False),
    (PULLER, "PUT", "/v2/prod/app/manifests/1", False, False),
    (PULLER, "DELETE", f"/v2/prod/app/manifests/{D}", False, False),
    (PULLER, "POST", "/v2/prod/app/blobs/uploads/", False, False),
    (PULLER, "GET", "/v2/_catalog", False, True),
    (PUSHER, "PUT", "/v2/ci/app/manifests/1", True, False),
    (PUSHER, "PUT", f"/v2/ci/app/manifests/{D}", True, False),
    (PUSHER, "PATCH", "/v2/ci/app/blobs/uploads/u1", True, False),
    (PUSHER, "HEAD", "/v2/ci/app/manifests/1", True, True),  # a re-push's HEAD
    (PUSHER, "HEAD", "/v2/prod/app/manifests/1", True, False),  # only a puller there
    (PUSHER, "PUT", "/v2/prod/app/manifests/1", False, False),
    (PUSHER, "DELETE", f"/v2/ci/app/manifests/{D}", False, False),
    (PUSHER, "POST", f"/v2/ci/app/blobs/uploads/?mount={D}&from=prod/app", True, False),
    (PUSHER, "GET", "/v2/_catalog", False, True),
    (ADMIN, "GET", "/v2/_catalog", True, True),
    (ADMIN, "DELETE", f"/v2/prod/app/manifests/{D}", True, False),
    (ADMIN, "DELETE", f"/v2/prod/app/blobs/{D}", True, False),
    (ADMIN, "HEAD", "/v2/prod/app/manifests/1", True, True),
    (ADMIN, "GET", "/v2/prod/app/manifests/1", True, False),
    (TEAMADMIN, "GET", "/v2/_catalog", False, True),  # not an admin of every repository
    (TEAMADMIN, "DELETE", f"/v2/team/app/manifests/{D}", True, False),
    (TEAMADMIN, "DELETE", f"/v2/prod/app/manifests/{D}", False, False),
    (SYNC, "GET", "/v2/prod/app/manifests/1", True, True),
    (SYNC, "PUT", "/v2/prod/app/manifests/1", True, False),
    (SYNC, "DELETE", f"/v2/prod/app/manifests/{D}", True, False),
    (SYNC, "GET", "/v2/_catalog", False, True),
    (SCANNER, "GET", "/v2/prod/app/manifests/1", True, True),
    (SCANNER, "GET", f"/v2/prod/app/blobs/{D}", True, True),
    (SCANNER, "PUT", f"/v2/prod/app/manifests/{SIG}", True, False),
    (SCANNER, "PUT", f"/v2/prod/app/manifests/sha256-{'b' * 64}.att", True, False),
    (SCANNER, "PUT", "/v2/prod/app/manifests/1", False, False),
    (SCANNER, "PUT", f"/v2/prod/app/manifests/{D}", False, False),
    (SCANNER, "DELETE", f"/v2/prod/app/manifests/{D}", False, False),
    (SCANNER, "POST", "/v2/prod/app/blobs/uploads/", True, False),
    (MONITOR, "HEAD", "/v2/prod/app/manifests/1", True, True),
    (MONITOR, "GET", "/v2/prod/app/tags/list", True, True),
    (MONITOR, "GET", "/v2/prod/app/manifests/1", False, False),
    (MONITOR, "GET", f"/v2/prod/app/blobs/{D}", False, False),
    (DEV, "GET", "/v2/dev/app/manifests/1", True, False),
    (DEV, "GET", "/v2/prod/app/manifests/1", False, False),
    (DEV, "GET", "/v2/development/app/manifests/1", False, False),
    (NOBODY, "GET", "/v2/prod/app/manifests/1", False, False),
]


@pytest.mark.parametrize(("identity", "method", "uri", "allowed", "exempt"), TABLE)
def test_who_may_do_what(
    identity: Identity, method: str, uri: str, allowed: bool, exempt: bool
) -> None:
    granted = authorize(POLICY, identity, classify(method, uri))
    assert granted.allowed is allowed
    if allowed:
        assert granted.exempt is exempt


def test_a_mount_needs_a_read_where_the_blob_comes_from() -> None:
    mount = classify("POST", f"/v2/ci/app/blobs/uploads/?mount={D}&from=dev/app")
    ci_only = loads_policy(
        "version: 1\ngrants: [{identity: {ou: pusher}, role: pusher, repositories: [ci/]}]\n"
    )
    assert not authorize(ci_only, PUSHER, mount).allowed
    assert authorize(POLICY, PUSHER, mount).allowed  # the pusher's puller grant reads dev/


def test_roles_are_a_union_over_matching_grants() -> None:
    request = Request("PUT", "tag", "ci/app", "1")
    assert authorize(POLICY, who("CN=x,OU=puller,OU=pusher"), request).roles == ("pusher",)
