"""Cosign signatures, attestations and SBOMs of mirrored content, by cosign's tag scheme.

Resolution finds them (:func:`find_signatures`: the tags ``sha256-<hex>.sig|att|sbom`` of a
subject digest, named in the repository's tag list, so looking costs no request); the sync
verifies the upstream signature against the entry's keys (:class:`SignatureCheck`, with
cosign) before it copies anything, and copies them (:func:`copy_signatures`).
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path

from airgapped_registry.errors import InvariantError
from airgapped_registry.mirror.lock import LockEntry, LockError, Signature
from airgapped_registry.mirror.outcome import EntryFailure
from airgapped_registry.mirror.sources import CopySource, SourceReader
from airgapped_registry.mirror.spec import SIGNATURE_KINDS, Entry, MirrorSpec
from airgapped_registry.oci.manifest import image_parts, parse_manifest
from airgapped_registry.tools import cosign
from airgapped_registry.tools.process import Tools, tool_error
from airgapped_registry.transport.registry import RegistryClient


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


def with_signatures(
    resolved: LockEntry,
    reader: SourceReader,
    available: set[str],
    where: str,
    required: bool,
    previous: LockEntry | None = None,
) -> LockEntry:
    """``resolved`` with the signatures the tag list names for it and its copied children;
    those ``previous`` recorded are checked with a ``HEAD``. ``required``: the policy has
    keys, so the upstream digest must carry a ``.sig``."""
    if resolved.repository is None:
        raise InvariantError(f"lock entry {resolved.reference}: no source repository")
    upstream = resolved.upstream_digest
    subjects = [(upstream, resolved.digest == upstream)]
    subjects += [(child.digest, True) for child in resolved.children if child.copy]
    recorded = previous.signatures if previous else ()
    signatures = find_signatures(reader, resolved.repository, subjects, available, recorded)
    if required and not any(s.kind == "sig" and s.subject == upstream for s in signatures):
        raise LockError(
            f"{where}: the signature policy asks for a signature, but upstream has none "
            f"({signature_tag(upstream, 'sig')})"
        )
    return replace(resolved, signatures=tuple(signatures))


class SignatureCheck:
    """The upstream signature policy of each lock entry, checked with ``cosign verify``."""

    def __init__(self, spec: MirrorSpec, tools: Tools, cosign_path: str = "cosign") -> None:
        self.spec = spec
        self.tools = tools
        self.cosign = cosign_path
        self._candidates: dict[tuple[str, str | None, str | None, str], list[Entry]] | None = None
        self._lock = threading.Lock()

    def keys(self, entry: LockEntry) -> list[Path]:
        """The public keys the entry's upstream signature must verify with (none: unchecked).

        Those the lock recorded for the entry, as the mirror list wrote them. A lock entry
        without recorded keys (see :class:`~airgapped_registry.mirror.lock.LockEntry`) takes
        those of the mirror list entry selecting its tag; with a list of sources only (the
        registry host's relay-source.yaml), the source's own policy.
        """
        if entry.signature_keys is not None:
            return [self.spec.resolve_path(key) for key in entry.signature_keys]
        key = (entry.kind, entry.source, entry.repository, entry.destination)
        for candidate in self._by_destination().get(key, ()):
            if entry.tag in candidate.selection.choose([entry.tag]):
                return [self.spec.resolve_path(key) for key in candidate.signatures.keys]
        source = self.spec.sources.get(entry.source or "")
        if source is not None and not any(c.source == source.name for c in self.spec.entries):
            # A list of sources only (the registry host's relay-source.yaml): the lock came
            # from the previous hop, which applied the mirror list; the source's own policy,
            # if any, applies (none: signatures are copied along unverified).
            keys = source.signatures.keys if source.signatures else ()
            return [self.spec.resolve_path(key) for key in keys]
        raise EntryFailure(
            f"no entry of {self.spec.path} selects {entry.repository}:{entry.tag} from source "
            f"{entry.source!r} into {entry.destination}: the lock is older than the list, "
            "lock again",
            permanent=True,
        )

    def _by_destination(self) -> dict[tuple[str, str | None, str | None, str], list[Entry]]:
        """The list's registry entries by (kind, source, repository, destination), once."""
        with self._lock:
            if self._candidates is None:
                candidates: dict[tuple[str, str | None, str | None, str], list[Entry]] = {}
                for candidate in self.spec.entries:
                    if candidate.url is None:
                        key = (
                            candidate.kind,
                            candidate.source,
                            candidate.repository,
                            candidate.destination,
                        )
                        candidates.setdefault(key, []).append(candidate)
                self._candidates = candidates
            return self._candidates

    def verify(self, entry: LockEntry, source: CopySource, keys: list[Path]) -> None:
        """Pass when one of ``keys`` verifies the upstream digest's signature at the source."""
        reference = f"{entry.registry}/{entry.repository}@{entry.upstream_digest}"
        problems = []
        for key in keys:
            argv = cosign.verify_argv(self.cosign, key, reference, source.cosign_options)
            completed = self.tools.run("cosign", argv, source.cosign_env)
            if completed.returncode == 0:
                return
            problems.append(f"{key.name}: {tool_error(completed.stderr)}")
        raise EntryFailure(
            f"upstream signature of {reference} does not verify: {'; '.join(problems)}",
            permanent=True,
        )


def copy_signatures(
    entry: LockEntry, source: CopySource, client: RegistryClient, check_all: bool = False
) -> int:
    """Copy the entry's signatures; small manifests, so the engine copies them, digest-checked,
    blob by blob. Returns the bytes sent.

    A signature tag already naming the locked digest is skipped, unless ``check_all``
    (``--force``): then each of its blobs is looked up and put back if missing.
    """
    sent = 0
    for signature in entry.signatures:
        if not signature.copy:
            continue
        current = client.head_manifest(entry.destination, signature.tag)
        if current is not None and current.digest == signature.digest and not check_all:
            continue
        if entry.repository is None:
            raise InvariantError(f"lock entry {entry.reference}: no source repository")
        body = source.get_manifest(entry.repository, signature.digest)
        for blob in signature.blobs():
            fetch = functools.partial(source.get_blob, entry.repository, blob.digest)
            if client.push_blob(entry.destination, blob.digest, fetch):
                sent += blob.size
        client.put_manifest(entry.destination, signature.tag, body, signature.media_type)
    return sent
