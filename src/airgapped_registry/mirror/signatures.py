"""Cosign signatures, attestations and SBOMs of mirrored content, by cosign's tag scheme.

Resolution finds them (:func:`find_signatures`: the tags ``sha256-<hex>.sig|att|sbom`` of a
subject digest, named in the repository's tag list, so looking costs no request); the sync
verifies the upstream signature against the entry's keys (:class:`SignatureCheck`) and copies
them (:func:`copy_signatures`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

from airgapped_registry.mirror.lock import Signature
from airgapped_registry.mirror.sources import SourceReader
from airgapped_registry.mirror.spec import SIGNATURE_KINDS
from airgapped_registry.oci.manifest import image_parts, parse_manifest


def signature_tag(subject: str, kind: str) -> str:
    """``sha256:<hex>`` → ``sha256-<hex>.<kind>``: where cosign stores what refers to it."""
    return f"{subject.replace(':', '-')}.{kind}"


def find_signatures(
    reader: SourceReader,
    repository: str,
    subjects: Iterable[tuple[str, bool]],
    available: set[str],
    recorded: Iterable[Signature] = (),
) -> list[Signature]:
    """The signatures the tag list names for each ``(subject digest, copied)``, by tag.

    A signature tag ``recorded`` in the previous lock still pointing at the same manifest
    (one ``HEAD``) is taken from there; any other is fetched.
    """
    known = {signature.tag: signature for signature in recorded}
    signatures = []
    for subject, copy in subjects:
        for kind in SIGNATURE_KINDS:
            tag = signature_tag(subject, kind)
            if tag not in available:
                continue
            before = known.get(tag)
            if before is not None and before.subject == subject and before.kind == kind:
                found = reader.head(repository, tag)
                if (
                    found is not None
                    and found.digest == before.digest
                    and found.media_type == before.media_type
                ):
                    signatures.append(replace(before, copy=copy))
                    continue
            body, media_type, digest = reader.get(repository, tag)
            where = f"{repository}:{tag}"
            config, layers = image_parts(parse_manifest(body, where), where)
            signatures.append(
                Signature(
                    digest,
                    media_type,
                    len(body),
                    config,
                    layers,
                    tag=tag,
                    kind=kind,
                    subject=subject,
                    copy=copy,
                )
            )
    return sorted(signatures, key=lambda signature: signature.tag)
