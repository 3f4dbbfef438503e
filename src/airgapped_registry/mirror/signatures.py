"""Cosign signatures, attestations and SBOMs of mirrored content, by cosign's tag scheme.

Resolution finds them (:func:`find_signatures`: the tags ``sha256-<hex>.sig|att|sbom`` of a
subject digest, named in the repository's tag list, so looking costs no request); the sync
verifies the upstream signature against the entry's keys (:class:`SignatureCheck`, with
cosign) before it copies anything, and copies them (:func:`copy_signatures`).

On the registry host the appliance signs (and attests) what the mirror published: cosign
appends its layer to the same ``.sig`` (``.att``) manifest, whose digest then differs from
the lock's. A destination manifest holding every layer the lock records for that tag, and
more, is the locked one with the appliance's layers added (:func:`holds`): verify accepts it,
and the sync leaves it alone. When upstream's own signatures changed, the sync writes the
new locked layers followed by the destination's other ones (:func:`merged`), so the
appliance's signature is never lost between a sync and the next signing run.
"""

from __future__ import annotations

import functools
import json
import threading
from collections import Counter
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path

from airgapped_registry.errors import InvariantError
from airgapped_registry.mirror.lock import LockEntry, LockError, Signature
from airgapped_registry.mirror.outcome import EntryFailure
from airgapped_registry.mirror.sources import CopySource, SourceReader
from airgapped_registry.mirror.spec import SIGNATURE_KINDS, Entry, MirrorSpec
from airgapped_registry.oci.manifest import image_parts, parse_manifest
from airgapped_registry.oci.reference import canonical_json, digest_of
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


def holds(body: bytes, signature: Signature, where: str) -> bool:
    """Whether the manifest ``body`` holds every layer the lock records for ``signature``,
    each as many times (the locked manifest itself, or it with the appliance's layers added).

    By digest: the lock records no annotations, and two signatures of one payload share a
    digest, so :func:`copy_signatures`, which has the locked manifest, compares whole layers.
    """
    _, layers = image_parts(parse_manifest(body, where), where)
    return not Counter(layer.digest for layer in signature.layers) - Counter(
        layer.digest for layer in layers
    )


def carries(locked: bytes, held: bytes, where: str) -> bool:
    """Whether the manifest ``held`` holds every layer of the manifest ``locked``,
    annotations and all (``locked`` itself, or it with the appliance's layers added)."""
    return not _layer_keys(locked, where) - _layer_keys(held, where)


def _layer_keys(body: bytes, where: str) -> Counter[str]:
    """A manifest's layers as canonical JSON: equal when digest and annotations are."""
    layers = parse_manifest(body, where).get("layers") or []
    return Counter(canonical_json(layer).decode() for layer in layers)


def merged(locked: bytes, held: bytes, config: bytes, where: str) -> tuple[bytes, bytes]:
    """``(manifest, config)``: the locked signature manifest followed by the layers of the
    ``held`` one it lacks (annotations and all), its config's ``rootfs`` listing them all.

    cosign's signature layers are uncompressed, so a layer's diff ID is its digest.
    """
    document = parse_manifest(locked, where)
    missing = _layer_keys(held, where) - _layer_keys(locked, where)
    extra = []
    for layer in parse_manifest(held, where).get("layers") or []:
        key = canonical_json(layer).decode()
        if missing[key] > 0:
            missing[key] -= 1
            extra.append(layer)
    document["layers"] = [*(document.get("layers") or []), *extra]
    image_config = parse_manifest(config, f"{where} config")
    image_config.setdefault("rootfs", {"type": "layers"})
    image_config["rootfs"]["diff_ids"] = [layer["digest"] for layer in document["layers"]]
    if isinstance(image_config.get("history"), list):
        image_config["history"] += [dict(image_config["history"][-1:][0]) for _ in extra]
    config_bytes = json.dumps(image_config, separators=(",", ":")).encode()
    document["config"] = {
        **document["config"],
        "digest": digest_of(config_bytes),
        "size": len(config_bytes),
    }
    return json.dumps(document, separators=(",", ":")).encode(), config_bytes


def copy_signatures(
    entry: LockEntry, source: CopySource, client: RegistryClient, check_all: bool = False
) -> int:
    """Copy the entry's signatures; small manifests, so the engine copies them, digest-checked,
    blob by blob. Returns the bytes sent.

    A signature tag already naming the locked digest, or a manifest holding its layers and
    more (the same layers, annotations and all, and the appliance's added), is skipped,
    unless ``check_all`` (``--force``): then each of its blobs is looked up and put back if
    missing. A tag naming something else gets the locked manifest, with the layers it lacks
    from what the tag held (:func:`merged`).
    """
    sent = 0
    for signature in entry.signatures:
        if not signature.copy:
            continue
        if entry.repository is None:
            raise InvariantError(f"lock entry {entry.reference}: no source repository")
        where = f"{entry.destination}:{signature.tag}"
        current = client.head_manifest(entry.destination, signature.tag)
        if current is not None and current.digest == signature.digest and not check_all:
            continue
        body = source.get_manifest(entry.repository, signature.digest)
        held = None
        if current is not None and current.digest != signature.digest:
            held = client.get_manifest(entry.destination, signature.tag)[0]
            # Every locked layer there, annotations and all: only the appliance's added.
            if carries(body, held, where):
                if check_all:
                    sent += _put_blobs(entry, signature, source, client)
                continue
        sent += _put_blobs(entry, signature, source, client)
        if held is not None and signature.config is not None:
            config = source.get_blob(entry.repository, signature.config.digest)
            body, config = merged(body, held, config, where)
            if client.push_blob(entry.destination, digest_of(config), config):
                sent += len(config)
        client.put_manifest(entry.destination, signature.tag, body, signature.media_type)
    return sent


def _put_blobs(
    entry: LockEntry, signature: Signature, source: CopySource, client: RegistryClient
) -> int:
    """Make the signature's blobs present at the destination; the bytes sent."""
    sent = 0
    for blob in signature.blobs():
        fetch = functools.partial(source.get_blob, entry.repository or "", blob.digest)
        if client.push_blob(entry.destination, blob.digest, fetch):
            sent += blob.size
    return sent
