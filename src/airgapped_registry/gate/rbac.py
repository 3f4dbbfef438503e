"""Roles and what they may do: a request is allowed by the union of every grant whose
identity and repository prefix match (docs/gate.md has the table).

:func:`authorize` answers which matching roles allow a request, and whether one of them is
exempt from admission (the appliance's own ``sync`` and ``scanner``, a ``monitor``'s HEAD, a
pusher's or admin's manifest HEAD where it may push: a re-push asks whether the manifest is
there before it is admitted).
"""

from __future__ import annotations

from dataclasses import dataclass

from airgapped_registry.gate.policy import GatePolicy, Grant
from airgapped_registry.gate.request import (
    ATTACHMENT_TAG,
    BASE,
    BLOB_DELETE,
    BLOB_HEAD,
    BLOB_PULL,
    BLOB_PUSH,
    CATALOG,
    DELETE,
    HEAD,
    PULL,
    PUSH,
    TAG,
    TAGS,
    Identity,
    Request,
)

_READ = frozenset({BASE, TAGS, PULL, HEAD, BLOB_PULL, BLOB_HEAD})
_WRITE = frozenset({BLOB_PUSH, PUSH, TAG})
_DELETE = frozenset({DELETE, BLOB_DELETE})
PERMISSIONS: dict[str, frozenset[str]] = {
    "puller": _READ,
    "pusher": _READ | _WRITE,
    "admin": _READ | _WRITE | _DELETE | {CATALOG},
    "sync": _READ | _WRITE | _DELETE,
    "scanner": _READ | _WRITE,  # manifest writes: attachment tags only (allows())
    "monitor": frozenset({BASE, TAGS, HEAD}),
}
# Roles whose reads never wait for admission: the appliance's own jobs (the scanner reads
# what it is about to scan and sign; sync compares what it mirrors), and HEADs for health.
_EXEMPT = {"sync": _READ, "scanner": _READ, "monitor": frozenset({HEAD, TAGS, BASE})}


@dataclass(frozen=True)
class Authorization:
    roles: tuple[str, ...]
    exempt: bool  # no admission check for this request

    @property
    def allowed(self) -> bool:
        return bool(self.roles)


def matching(policy: GatePolicy, who: Identity) -> list[Grant]:
    """The grants naming this identity (its CN, or any of its OUs)."""
    found = []
    for grant in policy.grants:
        values = who.cn if grant.attribute == "cn" else who.ou
        if grant.value in values:
            found.append(grant)
    return found


def allows(role: str, request: Request) -> bool:
    if request.action not in PERMISSIONS[role]:
        return False
    if role == "scanner" and request.action in (PUSH, TAG):
        return request.action == TAG and bool(ATTACHMENT_TAG.fullmatch(request.reference))
    return True


def authorize(policy: GatePolicy, who: Identity, request: Request) -> Authorization:
    grants = matching(policy, who)
    if request.action == BASE:
        roles = tuple(dict.fromkeys(grant.role for grant in grants))
        return Authorization(roles, exempt=True)
    if request.action == CATALOG:
        # The catalog lists every repository: only an admin of every repository reads it.
        roles = tuple(
            dict.fromkeys(g.role for g in grants if g.role == "admin" and "" in g.repositories)
        )
        return Authorization(roles, exempt=True)
    covering = [grant for grant in grants if grant.covers(request.repository)]
    roles = tuple(dict.fromkeys(g.role for g in covering if allows(g.role, request)))
    if request.mount_from and roles:
        # A mount copies a blob out of another repository: it needs a read there.
        source = Request("GET", BLOB_PULL, request.mount_from, request.reference)
        if not authorize(policy, who, source).allowed:
            return Authorization((), exempt=False)
    exempt = any(request.action in _EXEMPT.get(role, ()) for role in roles)
    if request.action == HEAD and not exempt:
        # A re-push HEADs the manifest first: whoever may push here is not gated on it.
        push = Request("PUT", TAG, request.repository, "latest")
        exempt = any(allows(g.role, push) and g.role != "scanner" for g in covering)
    return Authorization(roles, exempt=exempt)
