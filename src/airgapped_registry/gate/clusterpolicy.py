"""The gate's admission rule for Kubernetes clusters: documents for Kyverno and for sigstore's
policy-controller that refuse a Pod whose image from the registry lacks the appliance's
cosign signature, outside the landing zones (docs/cluster-policies.md).

The rule is the gate's, read the same way: every repository of the registry is protected
except those under a landing-zone prefix, so a forgotten prefix fails closed. What a cluster
checks is the signature only (the gate also checks the scan verdict before serving).

Verification is offline: the appliance's public keys are in the documents, and neither
controller is asked to look up a transparency log (Rekor) or a certificate-transparency log;
the appliance signs with plain keys and never uploads to a log.

Plain inputs, plain dicts out (YAML is the CLI's business); nothing here reads the gate's
own state.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

from cryptography.hazmat.primitives.serialization import load_pem_public_key

# metadata.name of every document: one policy per cluster, replaced on each apply.
NAME = "airgapped-registry-appliance-signature"
LANDING_ZONES_NAME = "airgapped-registry-landing-zones"

KYVERNO_API_VERSION = "kyverno.io/v1"
# v1beta1 is what policy-controller's documentation writes; the CRD serves it beside the
# storage version v1alpha1, with the same schema.
POLICY_CONTROLLER_API_VERSION = "policy.sigstore.dev/v1beta1"

# host[:port] as an image reference starts with it (no scheme, no path, no IPv6 brackets:
# policy-controller's globs have no way to write them).
_REGISTRY = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?(?::[0-9]{1,5})?")
# A prefix of a repository name: the distribution grammar's characters, starting a component.
_LANDING_ZONE = re.compile(r"[a-z0-9][a-z0-9._/-]*")
# Every character a repository name may hold after its first (distribution spec grammar).
_NAME_CHARACTERS = "abcdefghijklmnopqrstuvwxyz0123456789._-/"


def check_registry(registry: str) -> str:
    """``registry`` as images name it (``host`` or ``host:port``); ValueError otherwise."""
    if not _REGISTRY.fullmatch(registry):
        raise ValueError(
            f"registry {registry!r}: expected host or host:port as image references start"
            " with it (no scheme, no path)"
        )
    return registry


def check_landing_zones(landing_zones: Iterable[str]) -> list[str]:
    """The landing-zone prefixes, each once, in order; ValueError naming a bad one."""
    zones: list[str] = []
    for zone in landing_zones:
        if zone == "":
            raise ValueError(
                "landing zone '': an empty prefix would leave every repository unprotected"
            )
        if not _LANDING_ZONE.fullmatch(zone) or "//" in zone:
            raise ValueError(
                f"landing zone {zone!r}: not the start of a repository name"
                " (lower-case letters, digits, '.', '_', '-', '/'; e.g. 'ci/')"
            )
        if zone not in zones:
            zones.append(zone)
    return zones


def check_public_keys(public_keys: Sequence[str]) -> list[str]:
    """The PEM public keys, stripped; ValueError naming the one that is not a public key."""
    if not public_keys:
        raise ValueError("no public key: a policy without the appliance's key admits nothing")
    checked = []
    for number, pem in enumerate(public_keys, 1):
        text = pem.strip()
        if text.count("-----BEGIN ") != 1:
            raise ValueError(f"public key {number}: expected exactly one PEM block")
        try:
            load_pem_public_key(text.encode("ascii"))
        except (ValueError, UnicodeEncodeError) as exc:
            raise ValueError(f"public key {number}: not a PEM public key ({exc})") from None
        checked.append(text + "\n")
    return checked


def kyverno(
    registry: str, landing_zones: Iterable[str], public_keys: Sequence[str]
) -> dict[str, Any]:
    """A Kyverno ``ClusterPolicy``: Pods (and, by Kyverno's autogen, their controllers) whose
    images come from ``registry`` outside the landing zones are admitted only with a cosign
    signature by one of ``public_keys``; Kyverno rewrites a tag to the digest it verified."""
    registry = check_registry(registry)
    zones = check_landing_zones(landing_zones)
    keys = check_public_keys(public_keys)
    rule: dict[str, Any] = {
        # Kyverno's wildcard '*' spans '/', so one pattern covers every repository.
        "imageReferences": [f"{registry}/*"],
        "skipImageReferences": [f"{registry}/{zone}*" for zone in zones],
        "type": "Cosign",
        "failureAction": "Enforce",
        "required": True,
        "verifyDigest": True,
        "mutateDigest": True,
        "attestors": [
            {
                # Any one published key: during a rotation's overlap an image signed with
                # the previous key still verifies.
                "count": 1,
                "entries": [
                    {
                        "keys": {
                            "publicKeys": key,
                            "rekor": {"ignoreTlog": True},
                            "ctlog": {"ignoreSCT": True},
                        }
                    }
                    for key in keys
                ],
            }
        ],
    }
    if not zones:
        del rule["skipImageReferences"]
    return {
        "apiVersion": KYVERNO_API_VERSION,
        "kind": "ClusterPolicy",
        "metadata": {
            "name": NAME,
            "annotations": {
                "policies.kyverno.io/title": "Images signed by the Airgapped Registry appliance",
                "policies.kyverno.io/description": _description(registry, zones),
            },
        },
        "spec": {
            # Verification needs the admission request (and mutates it): not a background scan.
            "background": False,
            # Kyverno unreachable or timing out refuses the Pod: fail closed, like the gate.
            "failurePolicy": "Fail",
            "webhookTimeoutSeconds": 30,
            "rules": [
                {
                    "name": "appliance-signature",
                    "match": {"any": [{"resources": {"kinds": ["Pod"]}}]},
                    "verifyImages": [rule],
                }
            ],
        },
    }


def policy_controller(
    registry: str, landing_zones: Iterable[str], public_keys: Sequence[str]
) -> dict[str, Any]:
    """sigstore policy-controller ``ClusterImagePolicy`` documents, as one ``v1`` ``List``
    (``kubectl apply -f`` takes it): the protected repositories need a signature by one of
    ``public_keys``; the landing zones (when there are any) pass without one.

    policy-controller admits an image only if every policy matching it passes, and has no
    exclusions: the protected policy's globs must therefore cover every repository *but*
    the landing zones (:func:`protected_globs`), and the landing zones get a policy of their
    own so that its ``no-match-policy`` (deny unless changed) does not refuse them.
    """
    registry = check_registry(registry)
    zones = check_landing_zones(landing_zones)
    keys = check_public_keys(public_keys)
    protected = {
        "apiVersion": POLICY_CONTROLLER_API_VERSION,
        "kind": "ClusterImagePolicy",
        "metadata": {
            "name": NAME,
            "annotations": {"description": _description(registry, zones)},
        },
        "spec": {
            "mode": "enforce",
            "images": [{"glob": glob} for glob in protected_globs(registry, zones)],
            # One authority per key, any of which admits: an image signed before a rotation
            # still passes during the overlap. No ctlog: policy-controller then skips the
            # transparency log for a key authority.
            "authorities": [
                {"name": f"appliance-key-{number}", "key": {"data": key, "hashAlgorithm": "sha256"}}
                for number, key in enumerate(keys, 1)
            ],
        },
    }
    items = [protected]
    if zones:
        items.append(
            {
                "apiVersion": POLICY_CONTROLLER_API_VERSION,
                "kind": "ClusterImagePolicy",
                "metadata": {
                    "name": LANDING_ZONES_NAME,
                    "annotations": {
                        "description": f"CI landing zones of {registry}: not protected by"
                        " the appliance, admitted unsigned as the gate serves them"
                    },
                },
                "spec": {
                    "mode": "enforce",
                    "images": [{"glob": f"{registry}/{zone}**"} for zone in zones],
                    "authorities": [{"name": "landing-zone", "static": {"action": "pass"}}],
                },
            }
        )
    return {"apiVersion": "v1", "kind": "List", "items": items}


def protected_globs(registry: str, landing_zones: Sequence[str]) -> list[str]:
    """policy-controller globs matching every image of ``registry`` whose repository starts
    with none of ``landing_zones``, and no image whose repository does.

    Its globs know ``*`` (any run without ``/``), ``**`` (any run) and literal characters,
    and are matched against the whole reference (``host/repo@sha256:...``); no negation,
    no character classes. So the complement is spelled out on the trie of the prefixes: at
    each node ``s`` (a proper start of a landing zone), ``s`` followed by any character that
    leads to no landing zone (``s`` + that character + ``**``), and ``s`` followed by a run
    without ``/`` (``s*``: the repository named ``s`` itself, with its tag or digest) when no
    landing zone continues ``s`` without a ``/`` — always so for zones ending in ``/``. For a
    zone like ``dev`` the repositories named exactly ``d`` and ``de`` match neither policy
    and are left to policy-controller's ``no-match-policy``.
    """
    zones = sorted(set(landing_zones))
    if not zones:
        return [f"{registry}/**"]

    def in_zone(text: str) -> bool:
        return any(text.startswith(zone) for zone in zones)

    globs: list[str] = []
    pending = [""]
    while pending:
        node = pending.pop(0)
        continuations = [zone[len(node) :] for zone in zones if zone.startswith(node)]
        if all("/" in rest for rest in continuations):
            globs.append(f"{registry}/{node}*")
        first = "abcdefghijklmnopqrstuvwxyz0123456789" if node == "" else _NAME_CHARACTERS
        for character in first:
            step = node + character
            if in_zone(step):
                continue
            if any(zone.startswith(step) for zone in zones):
                pending.append(step)
            else:
                globs.append(f"{registry}/{step}**")
    return globs


def _description(registry: str, zones: Sequence[str]) -> str:
    outside = f" outside the landing zones {', '.join(zones)}" if zones else ""
    return (
        f"Images of {registry}{outside} need the appliance's cosign signature, verified"
        " offline with its public keys (no transparency log). Generated by"
        " `airgap policy render`; do not edit, render again."
    )
