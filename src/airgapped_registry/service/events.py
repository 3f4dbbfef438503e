"""Distribution's notifications: which events of an envelope concern the scan service.

Distribution POSTs one envelope (``application/vnd.docker.distribution.events.v1+json``,
``{"events": [...]}``) per event to each endpoint, serially, and retries a failed POST until
it succeeds: a 4xx or 5xx answer blocks every later event behind it. So an envelope that is
not one (not JSON, no ``events`` list) is refused with :class:`EnvelopeError` (the server's
400: it did not come from Distribution), but an odd event inside a valid envelope is only
skipped, never refused.

Kept (:class:`ManifestPush`): ``push`` of an image manifest or an index, OCI or Docker media
types, whether by tag or by digest (an index's children are pushed by digest, before it).
Dropped: blobs (``push``/``mount`` of ``application/octet-stream``), ``pull`` (Distribution
2.8.2 sends them despite ``ignore.actions: [pull]``), other manifest media types, and
cosign's ``sha256-<hex>.sig``/``.att``/``.sbom`` tags (signatures and attestations are
about a digest, they are not images to scan).

Deletes (:class:`ManifestDelete`): a ``delete`` naming a digest makes the service forget the
digest's verdict in that repository: a verdict says something about content the registry
serves, and a digest pushed again is a new push, scanned again. Distribution also sends a
``delete`` with only the tag it untagged; that one is dropped.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from airgapped_registry.oci.mediatypes import MANIFEST_MEDIA_TYPES
from airgapped_registry.oci.reference import DIGEST_PATTERN, REPOSITORY_PATTERN

ENVELOPE_MEDIA_TYPE = "application/vnd.docker.distribution.events.v1+json"
# What an envelope may be POSTed as: Distribution's type, or plain JSON by hand.
ACCEPTED_CONTENT_TYPES = (ENVELOPE_MEDIA_TYPE, "application/json")
# cosign 2.x's tag scheme: a signature, attestation or SBOM of digest sha256:<hex>.
COSIGN_TAG = re.compile(r"sha(?:256|512)-[a-f0-9]+\.(?:sig|att|sbom)")


class EnvelopeError(ValueError):
    """The body is not a notification envelope; the message says why."""


@dataclass(frozen=True)
class ManifestPush:
    repository: str
    digest: str
    media_type: str
    tag: str | None = None


@dataclass(frozen=True)
class ManifestDelete:
    repository: str
    digest: str


Event = ManifestPush | ManifestDelete


@dataclass(frozen=True)
class Parsed:
    """The events an envelope holds that matter, and how many it held in all."""

    events: tuple[Event, ...]
    total: int

    @property
    def pushes(self) -> list[ManifestPush]:
        return [event for event in self.events if isinstance(event, ManifestPush)]

    @property
    def deletes(self) -> list[ManifestDelete]:
        return [event for event in self.events if isinstance(event, ManifestDelete)]


def check_content_type(content_type: str | None) -> None:
    """Refuse a body that is not declared as an envelope (the server's 415)."""
    declared = (content_type or "").split(";", 1)[0].strip().lower()
    if declared not in ACCEPTED_CONTENT_TYPES:
        raise EnvelopeError(
            f"content type {content_type!r}: expected {ENVELOPE_MEDIA_TYPE} (or application/json)"
        )


def parse_envelope(body: bytes) -> Parsed:
    """The manifest pushes and deletes of one envelope (see the module docstring)."""
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise EnvelopeError(f"the body is not JSON: {exc}") from exc
    if not isinstance(document, dict) or not isinstance(document.get("events"), list):
        raise EnvelopeError('the body is not an envelope: expected {"events": [...]}')
    events = [event for item in document["events"] if (event := _event(item)) is not None]
    return Parsed(tuple(events), len(document["events"]))


def _event(item: object) -> Event | None:
    if not isinstance(item, dict):
        return None
    target = item.get("target")
    if not isinstance(target, dict):
        return None
    repository, digest = target.get("repository"), target.get("digest")
    if not (isinstance(repository, str) and REPOSITORY_PATTERN.fullmatch(repository)):
        return None
    if not (isinstance(digest, str) and DIGEST_PATTERN.fullmatch(digest)):
        return None
    action = item.get("action")
    if action == "delete":
        return ManifestDelete(repository, digest)
    if action != "push":
        return None
    media_type = target.get("mediaType")
    if media_type not in MANIFEST_MEDIA_TYPES:
        return None
    tag = target.get("tag")
    if tag is not None and not isinstance(tag, str):
        return None
    if tag and COSIGN_TAG.fullmatch(tag):
        return None
    return ManifestPush(repository, digest, str(media_type), tag or None)
