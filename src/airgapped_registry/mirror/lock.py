"""The lock (``mirror.lock``): every entry of a mirror list resolved to digests.

:func:`lock` runs on the relay side. For each entry of a :class:`~airgapped_registry.mirror.spec.
MirrorSpec` it lists the repository's tags once, selects the tags the entry asks for, fetches
each selected manifest once (index, the children that will be copied) and records what a later
``plan``/``sync``/``verify`` needs: the digest the destination tag must resolve to, the
upstream index with all its children (which platforms were asked for, which will be copied),
config and layer descriptors, and the cosign signatures, attestations and SBOMs found by
cosign's tag scheme (read from the same tag list, so looking costs no request). Classic Helm
repository charts are fetched from ``index.yaml`` and locked as the OCI artifact the mirror
will store (:func:`chart_manifest`).

The lock file is deterministic JSON (sorted keys, indent 2, entries sorted by destination then
tag, no timestamps): locking twice against an unchanged upstream writes identical bytes.
``docs/mirror.md`` documents the format field by field.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import ssl
import tarfile
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, MutableMapping
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import yaml

from airgapped_registry.errors import AirgapError, RegistryError
from airgapped_registry.mirror.spec import (
    SIGNATURE_KINDS,
    Entry,
    MirrorSpec,
    Source,
    TagPin,
    parse_platform,
    tag_order_key,
)
from airgapped_registry.oci.mediatypes import (
    HELM_CHART_CONTENT,
    HELM_CONFIG,
    INDEX_MEDIA_TYPES,
    OCI_MANIFEST,
)
from airgapped_registry.oci.reference import DIGEST_PATTERN, canonical_json, digest_of
from airgapped_registry.transport.auth import AuthenticatingClient, credentials_for, read_auths
from airgapped_registry.transport.registry import RegistryClient, tls_context

LOCK_VERSION = 1
# Entries (tags) resolved at once; each thread keeps its own connection to a source.
WORKERS = 8
PRESERVE_INDEX = "preserve-index"
FILTER = "filter"
# docker buildx stores provenance/SBOM manifests in the index with this annotation.
_REFERENCE_DIGEST = "vnd.docker.reference.digest"


class LockError(AirgapError):
    """An entry could not be resolved, or a lock file could not be read."""


# -- the data model ------------------------------------------------------------------------


@dataclass(frozen=True)
class Blob:
    """A config or layer: what the destination must hold, byte for byte."""

    digest: str
    media_type: str
    size: int

    def to_json(self) -> dict[str, Any]:
        return {"digest": self.digest, "media_type": self.media_type, "size": self.size}

    @classmethod
    def from_json(cls, document: Mapping[str, Any]) -> Blob:
        return cls(document["digest"], document["media_type"], document["size"])


@dataclass(frozen=True)
class Manifest:
    """An image manifest (config + layers) or an index (children listed elsewhere)."""

    digest: str
    media_type: str
    size: int
    config: Blob | None = None
    layers: tuple[Blob, ...] = ()

    def blobs(self) -> list[Blob]:
        """Its config (if any) then its layers: what it references, in order."""
        return [blob for blob in (self.config, *self.layers) if blob is not None]

    def to_json(self) -> dict[str, Any]:
        return {
            "digest": self.digest,
            "media_type": self.media_type,
            "size": self.size,
            "config": self.config.to_json() if self.config else None,
            "layers": [layer.to_json() for layer in self.layers],
        }

    @classmethod
    def from_json(cls, document: Mapping[str, Any]) -> Manifest:
        config = document.get("config")
        return cls(
            document["digest"],
            document["media_type"],
            document["size"],
            Blob.from_json(config) if config else None,
            tuple(Blob.from_json(layer) for layer in document.get("layers", ())),
        )


@dataclass(frozen=True)
class Child(Manifest):
    """One manifest listed by an upstream index.

    ``selected``: its platform is one the entry asks for. ``copy``: the sync copies it (every
    child with ``preserve-index``; the selected ones and their attestations with ``filter``).
    Config and layers are recorded for the children that are copied only.
    """

    platform: str | None = None
    selected: bool = False
    copy: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            **super().to_json(),
            "platform": self.platform,
            "selected": self.selected,
            "copy": self.copy,
        }

    @classmethod
    def from_json(cls, document: Mapping[str, Any]) -> Child:
        base = Manifest.from_json(document)
        return cls(
            **{name: getattr(base, name) for name in base.__dataclass_fields__},
            platform=document.get("platform"),
            selected=document["selected"],
            copy=document["copy"],
        )


@dataclass(frozen=True)
class Signature(Manifest):
    """A cosign signature (``sig``), attestation (``att``) or SBOM (``sbom``) by tag scheme.

    ``subject`` is the digest it belongs to; ``copy`` is false for the signature of an upstream
    index that the mirror does not store (``filter`` mode with platforms left out).
    """

    tag: str = ""
    kind: str = "sig"
    subject: str = ""
    copy: bool = True

    def to_json(self) -> dict[str, Any]:
        return {
            **super().to_json(),
            "tag": self.tag,
            "kind": self.kind,
            "subject": self.subject,
            "copy": self.copy,
        }

    @classmethod
    def from_json(cls, document: Mapping[str, Any]) -> Signature:
        base = Manifest.from_json(document)
        return cls(
            **{name: getattr(base, name) for name in base.__dataclass_fields__},
            tag=document["tag"],
            kind=document["kind"],
            subject=document["subject"],
            copy=document["copy"],
        )


@dataclass(frozen=True)
class Archive:
    """The chart archive a classic Helm repository serves, as its ``index.yaml`` names it."""

    url: str
    digest: str
    size: int

    def to_json(self) -> dict[str, Any]:
        return {"url": self.url, "digest": self.digest, "size": self.size}

    @classmethod
    def from_json(cls, document: Mapping[str, Any]) -> Archive:
        return cls(document["url"], document["digest"], document["size"])


@dataclass(frozen=True)
class LockEntry:
    """One destination tag and everything it will resolve to.

    ``manifest`` is what ``destination:tag`` must resolve to in the mirror; for an image index
    in ``filter`` mode with platforms left out this is the filtered index, and
    ``upstream_digest`` keeps the upstream one. ``pinned`` is the digest the mirror list
    pinned the tag to, if any.
    """

    kind: str
    destination: str
    tag: str
    manifest: Manifest
    upstream_digest: str
    source: str | None = None
    registry: str | None = None
    repository: str | None = None
    pinned: str | None = None
    platform_mode: str | None = None
    platforms: tuple[str, ...] = ()
    children: tuple[Child, ...] = ()
    signatures: tuple[Signature, ...] = ()
    archive: Archive | None = None

    @property
    def digest(self) -> str:
        return self.manifest.digest

    @property
    def key(self) -> tuple[str, str]:
        return (self.destination, self.tag)

    @property
    def reference(self) -> str:
        return f"{self.destination}:{self.tag}"

    def blobs(self) -> list[Blob]:
        """Every config and layer the sync copies for this entry, in order, once each."""
        manifests: list[Manifest] = [self.manifest]
        manifests += [child for child in self.children if child.copy]
        manifests += [signature for signature in self.signatures if signature.copy]
        seen: dict[str, Blob] = {}
        for manifest in manifests:
            for blob in manifest.blobs():
                seen.setdefault(blob.digest, blob)
        return list(seen.values())

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "destination": self.destination,
            "tag": self.tag,
            **self.manifest.to_json(),
            "upstream_digest": self.upstream_digest,
            "source": self.source,
            "registry": self.registry,
            "repository": self.repository,
            "pinned": self.pinned,
            "platform_mode": self.platform_mode,
            "platforms": list(self.platforms),
            "children": [child.to_json() for child in self.children],
            "signatures": [signature.to_json() for signature in self.signatures],
            "archive": self.archive.to_json() if self.archive else None,
        }

    @classmethod
    def from_json(cls, document: Mapping[str, Any]) -> LockEntry:
        archive = document.get("archive")
        return cls(
            kind=document["kind"],
            destination=document["destination"],
            tag=document["tag"],
            manifest=Manifest.from_json(document),
            upstream_digest=document["upstream_digest"],
            source=document.get("source"),
            registry=document.get("registry"),
            repository=document.get("repository"),
            pinned=document.get("pinned"),
            platform_mode=document.get("platform_mode"),
            platforms=tuple(document.get("platforms", ())),
            children=tuple(Child.from_json(child) for child in document.get("children", ())),
            signatures=tuple(Signature.from_json(sig) for sig in document.get("signatures", ())),
            archive=Archive.from_json(archive) if archive else None,
        )


@dataclass(frozen=True)
class Lock:
    """All entries, kept sorted by destination then tag (the file's order)."""

    entries: tuple[LockEntry, ...] = ()

    def __post_init__(self) -> None:
        ordered = tuple(sorted(self.entries, key=lambda entry: entry.key))
        object.__setattr__(self, "entries", ordered)

    def get(self, destination: str, tag: str) -> LockEntry | None:
        for entry in self.entries:
            if entry.key == (destination, tag):
                return entry
        return None

    def to_json(self) -> str:
        """The file's text: sorted keys, indent 2, trailing newline, nothing time-dependent."""
        document = {"version": LOCK_VERSION, "entries": [e.to_json() for e in self.entries]}
        return json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n"

    @classmethod
    def from_json(cls, text: str, name: str = "mirror.lock") -> Lock:
        try:
            document = json.loads(text)
        except ValueError as exc:
            raise LockError(f"{name}: not a lock file: {exc}") from exc
        if not isinstance(document, dict) or document.get("version") != LOCK_VERSION:
            version = document.get("version") if isinstance(document, dict) else None
            raise LockError(f"{name}: lock format version {version!r}, expected {LOCK_VERSION}")
        try:
            return cls(tuple(LockEntry.from_json(entry) for entry in document["entries"]))
        except (KeyError, TypeError, AttributeError) as exc:
            raise LockError(f"{name}: malformed lock entry ({type(exc).__name__}: {exc})") from exc


def read_lock(path: str | os.PathLike[str]) -> Lock | None:
    """The lock stored at ``path``, or None when there is none yet."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise LockError(f"{os.fspath(path)}: {exc.strerror or exc}") from exc
    return Lock.from_json(text, os.fspath(path))


# -- the diff ------------------------------------------------------------------------------


@dataclass(frozen=True)
class LockDiff:
    """What changed between two locks, by destination tag.

    ``moved``: the tag resolves to another digest. ``changed``: same digest, but something the
    sync acts on differs (a signature appeared, another platform selected, ...); ``fields``
    names what.
    """

    added: tuple[dict[str, Any], ...] = ()
    removed: tuple[dict[str, Any], ...] = ()
    moved: tuple[dict[str, Any], ...] = ()
    changed: tuple[dict[str, Any], ...] = ()

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.moved or self.changed)

    def to_json(self) -> dict[str, list[dict[str, Any]]]:
        return {
            "added": list(self.added),
            "removed": list(self.removed),
            "moved": list(self.moved),
            "changed": list(self.changed),
        }

    def summary(self) -> str:
        counts = {name: len(items) for name, items in self.to_json().items() if items}
        return ", ".join(f"{count} {name}" for name, count in counts.items()) or "no change"


def diff(old: Lock | None, new: Lock) -> LockDiff:
    before = {entry.key: entry for entry in (old.entries if old else ())}
    after = {entry.key: entry for entry in new.entries}
    added, removed, moved, changed = [], [], [], []
    for key, entry in after.items():
        previous = before.get(key)
        where = {"destination": key[0], "tag": key[1]}
        if previous is None:
            added.append({**where, "digest": entry.digest})
        elif previous.digest != entry.digest:
            moved.append({**where, "old": previous.digest, "new": entry.digest})
        else:
            old_json, new_json = previous.to_json(), entry.to_json()
            fields = sorted(name for name in new_json if old_json.get(name) != new_json[name])
            if fields:
                changed.append({**where, "digest": entry.digest, "fields": fields})
    for key, entry in before.items():
        if key not in after:
            removed.append({"destination": key[0], "tag": key[1], "digest": entry.digest})
    return LockDiff(tuple(added), tuple(removed), tuple(moved), tuple(changed))


# -- platforms and indexes -----------------------------------------------------------------


def platform_matches(platform: str | None, wanted: str) -> bool:
    """Whether an index child's platform is the one asked for.

    A wanted platform without variant matches every variant of its os/arch; arm64 without a
    variant is arm64/v8, as containerd normalises it.
    """
    have = parse_platform(platform or "")
    want = parse_platform(wanted)
    if have is None or want is None or have[:2] != want[:2]:
        return False
    if want[2] is None:
        return True
    default = "v8" if have[1] == "arm64" else None
    return (have[2] or default) == want[2]


def filtered_index(body: bytes, keep: set[str]) -> bytes:
    """The index a ``filter`` entry stores: the upstream one listing only the kept children.

    This is the one definition of that index: the lock records its digest, the sync writes
    these bytes. Everything but ``manifests`` is kept as upstream wrote it.
    """
    document = json.loads(body)
    document["manifests"] = [item for item in document["manifests"] if item["digest"] in keep]
    return canonical_json(document)


def chart_manifest(archive: bytes) -> tuple[bytes, bytes]:
    """``(config, manifest)`` of the OCI artifact storing a classic Helm chart archive.

    Config: ``Chart.yaml`` as compact JSON with sorted keys; one layer: the archive itself.
    Nothing depends on the time, so the same archive always gives the same digest.
    """
    try:
        with tarfile.open(fileobj=io.BytesIO(gzip.decompress(archive)), mode="r:") as tar:
            member = next(
                (
                    m
                    for m in tar.getmembers()
                    if m.name.count("/") == 1 and m.name.endswith("/Chart.yaml")
                ),
                None,
            )
            if member is None:
                raise LockError("chart archive without <chart>/Chart.yaml")
            extracted = tar.extractfile(member)
            assert extracted is not None
            metadata = yaml.safe_load(extracted.read())
    except (OSError, EOFError, tarfile.TarError, yaml.YAMLError) as exc:
        raise LockError(f"chart archive unreadable: {exc}") from exc
    if not isinstance(metadata, dict) or "name" not in metadata or "version" not in metadata:
        raise LockError("chart archive: Chart.yaml has no name and version")
    config = json.dumps(
        metadata, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str
    ).encode()
    annotations = {
        "org.opencontainers.image.title": str(metadata["name"]),
        "org.opencontainers.image.version": str(metadata["version"]),
    }
    if metadata.get("description"):
        annotations["org.opencontainers.image.description"] = str(metadata["description"])
    manifest = canonical_json(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": HELM_CONFIG, "digest": digest_of(config), "size": len(config)},
            "layers": [
                {
                    "mediaType": HELM_CHART_CONTENT,
                    "digest": digest_of(archive),
                    "size": len(archive),
                }
            ],
            "annotations": annotations,
        }
    )
    return config, manifest


# -- clients for sources -------------------------------------------------------------------


def source_client(spec: MirrorSpec, source: Source, timeout: float = 30) -> RegistryClient:
    """A client for ``source`` with its TLS files and credentials (anonymous tokens too).

    ``cert_dir`` follows skopeo's rules: every ``*.crt`` is a CA, a ``*.cert`` and the
    ``*.key`` of the same base name are the client pair, a key without its certificate is an
    error. The CAs named (``ca_file`` and the directory's) are the only ones trusted.
    """
    ca_files: list[Path] = []
    cert_file = key_file = None
    if source.ca_file:
        ca_files.append(spec.resolve_path(source.ca_file))
    if source.cert_dir:
        directory = spec.resolve_path(source.cert_dir)
        if not directory.is_dir():
            raise AirgapError(f"source {source.name}: cert_dir {directory}: not a directory")
        ca_files += sorted(directory.glob("*.crt"))
        certs = {path.stem: path for path in directory.glob("*.cert")}
        keys = {path.stem: path for path in directory.glob("*.key")}
        where = f"source {source.name}: cert_dir {directory}"
        if unmatched := sorted(keys.keys() - certs.keys()):
            raise AirgapError(f"{where}: {unmatched[0]}.key has no {unmatched[0]}.cert")
        if unmatched := sorted(certs.keys() - keys.keys()):
            raise AirgapError(f"{where}: {unmatched[0]}.cert has no {unmatched[0]}.key")
        if len(certs) > 1:
            raise AirgapError(f"{where}: more than one client pair ({', '.join(sorted(certs))})")
        if certs:
            (stem,) = certs
            cert_file, key_file = certs[stem], keys[stem]
    username = password = None
    if source.credentials:
        auths = read_auths(
            source.credentials.file and spec.resolve_path(source.credentials.file),
            source.credentials.env,
        )
        found = credentials_for(auths, source.registry)
        if found is None:
            where = source.credentials.file or f"${source.credentials.env}"
            raise AirgapError(f"source {source.name}: {where} holds no entry for {source.registry}")
        username, password = found
    with ExitStack() as stack:
        ca_file: Path | str | None = ca_files[0] if ca_files else None
        if len(ca_files) > 1:
            # The client trusts one CA file: join them (the file is read before it goes).
            bundle = stack.enter_context(tempfile.NamedTemporaryFile("w", suffix=".pem"))
            for path in ca_files:
                tls_context(path, None, None)  # refuses a bad file under its own name
                bundle.write(path.read_text() + "\n")
            bundle.flush()
            ca_file = bundle.name
        options: dict[str, Any] = {"timeout": timeout}
        if not source.insecure:
            options.update(ca_file=ca_file, cert_file=cert_file, key_file=key_file)
        # Also without credentials: public images on Docker Hub or ghcr.io need an
        # anonymous token.
        return AuthenticatingClient(source.url, username=username, password=password, **options)


class Throttle:
    """Spaces calls to one source so they stay under ``rate`` per second."""

    def __init__(self, rate: float | None) -> None:
        self.interval = 1 / rate if rate else 0.0
        self._next = 0.0
        self._lock = threading.Lock()

    def wait(self) -> None:
        if not self.interval:
            return
        with self._lock:
            now = time.monotonic()
            start = max(now, self._next)
            self._next = start + self.interval
        if start > now:
            time.sleep(start - now)


# -- resolution ----------------------------------------------------------------------------


@dataclass
class _SourceState:
    client: RegistryClient
    throttle: Throttle
    requests_before: int
    by_method_before: dict[str, int]
    tags: dict[str, list[str]] = field(default_factory=dict)
    # The first request to a source goes alone: it answers the source's authentication
    # challenge (the client switches to Basic once, on the first 401 it sees), and requests
    # racing it would be refused.
    first_request: threading.Lock = field(default_factory=threading.Lock)
    answered: bool = False


UrlFetcher = Callable[[str], bytes]


class Resolver:
    """Resolves the entries of one mirror list against their sources.

    ``clients`` maps source names to ready clients (tests, callers sharing connections); the
    others are made from the mirror list and closed by :meth:`close`. ``fetch_url`` reads a
    classic Helm repository's files (default: urllib with the system trust).

    ``previous`` is the lock being replaced: a tag whose manifest digest at the source (one
    ``GET`` of the manifest) is still the one recorded there, for the same source,
    repository, pin and platform selection, keeps the recorded children, config and layers
    instead of fetching them again (``reused`` counts those). Signature tags come from the
    tag list as always; a recorded one costs a ``HEAD``, a new or moved one a ``GET``. Tags
    are resolved on ``workers`` threads; the result does not depend on their order.
    ``manifests``, when given, receives every manifest fetched, by digest (for a sync that
    follows to reuse).
    """

    def __init__(
        self,
        spec: MirrorSpec,
        clients: Mapping[str, RegistryClient] | None = None,
        fetch_url: UrlFetcher | None = None,
        *,
        previous: Lock | None = None,
        workers: int = WORKERS,
        manifests: MutableMapping[str, bytes] | None = None,
    ) -> None:
        self.spec = spec
        self.manifests = manifests
        self._given = dict(clients or {})
        self._made: list[RegistryClient] = []
        self._sources: dict[str, _SourceState] = {}
        self._fetch = fetch_url or read_url
        self.url_requests = 0
        self._urls: dict[str, bytes] = {}
        self._previous = {entry.key: entry for entry in (previous.entries if previous else ())}
        self.workers = max(1, workers)
        self.reused = 0
        self._guard = threading.Lock()
        self._tag_locks: dict[tuple[str, str], threading.Lock] = {}
        self._url_lock = threading.Lock()

    def __enter__(self) -> Resolver:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        for client in self._made:
            client.close()
        self._made = []

    def resolve(self) -> Lock:
        """Resolve every entry; the first failure stops with its file, line and entry.

        First every entry's tag list is read and its tags chosen, then every tag is resolved,
        each step on the thread pool. Results and failures are taken in the list's order, so
        the failure reported is the one a one-by-one run would stop at.
        """
        entries: list[LockEntry] = []
        owners: dict[tuple[str, str], Entry] = {}
        with ThreadPoolExecutor(self.workers, thread_name_prefix="airgap-lock") as pool:
            try:
                results = self._resolve_all(pool)
            except BaseException:
                pool.shutdown(wait=True, cancel_futures=True)
                raise
        for entry, resolved in zip(self.spec.entries, results, strict=True):
            for locked in resolved:
                first = owners.setdefault(locked.key, entry)
                if first is not entry:
                    raise LockError(
                        entry.location.problem(
                            f"duplicate destination '{locked.reference}', also written by "
                            f"{first.location.entry} (line {first.location.line})"
                        )
                    )
                entries.append(locked)
        return Lock(tuple(entries))

    def requests(self) -> dict[str, dict[str, Any]]:
        """Requests made so far, per source (and ``helm-repositories`` for index.yaml files)."""
        report: dict[str, dict[str, Any]] = {}
        for name, state in sorted(self._sources.items()):
            by_method = {
                method: count - state.by_method_before.get(method, 0)
                for method, count in sorted(state.client.requests_by_method.items())
            }
            report[name] = {
                "total": state.client.requests - state.requests_before,
                "by_method": {method: count for method, count in by_method.items() if count},
            }
        if self.url_requests:
            report["helm-repositories"] = {
                "total": self.url_requests,
                "by_method": {"GET": self.url_requests},
            }
        return report

    def resolve_entry(self, entry: Entry) -> list[LockEntry]:
        try:
            if entry.url:
                return self._resolve_classic_chart(entry)
            return self._resolve_registry_entry(entry)
        except (RegistryError, LockError) as exc:
            raise LockError(entry.location.problem(str(exc))) from exc

    def _resolve_all(self, pool: ThreadPoolExecutor) -> list[list[LockEntry]]:
        """Every entry's locked tags, in the list's order; raises the first entry's failure."""

        def located(entry: Entry, work: Callable[..., Any], *args: Any) -> Any:
            try:
                return work(*args)
            except (RegistryError, LockError) as exc:
                raise LockError(entry.location.problem(str(exc))) from exc

        chosen: list[Future[Any]] = [
            pool.submit(
                located, entry, self._resolve_classic_chart if entry.url else self._pins, entry
            )
            for entry in self.spec.entries
        ]
        tagged: list[list[Future[LockEntry]] | Future[list[LockEntry]]] = []
        for entry, future in zip(self.spec.entries, chosen, strict=True):
            if future.exception() is not None:
                break  # later entries are not reported: the list stops here
            if entry.url:
                tagged.append(future)
                continue
            state, pins, available = future.result()
            tagged.append(
                [
                    pool.submit(located, entry, self._resolve_tag, entry, state, pin, available)
                    for pin in pins
                ]
            )
        results: list[list[LockEntry]] = []
        for done in tagged:
            if isinstance(done, list):
                results.append([future.result() for future in done])
            else:
                results.append(done.result())
        if len(results) < len(chosen):
            chosen[len(results)].result()  # the failure the loop above stopped at
        return results

    # registry entries ---------------------------------------------------------------------

    def _state(self, name: str) -> _SourceState:
        with self._guard:
            if name not in self._sources:
                client = self._given.get(name)
                if client is None:
                    client = source_client(self.spec, self.spec.sources[name])
                    self._made.append(client)
                self._sources[name] = _SourceState(
                    client=client,
                    throttle=Throttle(self.spec.sources[name].rate_limit),
                    requests_before=client.requests,
                    by_method_before=dict(client.requests_by_method),
                )
            return self._sources[name]

    def _tags(self, state: _SourceState, repository: str) -> list[str]:
        # One tag list per repository, also when entries sharing it are resolved at once.
        with self._guard:
            key = (state.client.base_url, repository)
            listing = self._tag_locks.setdefault(key, threading.Lock())
        with listing:
            if repository not in state.tags:
                with nullcontext() if state.answered else state.first_request:
                    state.throttle.wait()
                    state.tags[repository] = state.client.tags(repository)
                    state.answered = True
            return state.tags[repository]

    def _head(self, state: _SourceState, repository: str, reference: str) -> Any:
        state.throttle.wait()
        return state.client.head_manifest(repository, reference)

    def _get(self, state: _SourceState, repository: str, reference: str) -> tuple[bytes, str, str]:
        state.throttle.wait()
        return self._kept(state.client.get_manifest(repository, reference))

    def _get_unless(
        self, state: _SourceState, repository: str, reference: str, digest: str
    ) -> tuple[bytes, str, str] | None:
        """:meth:`_get`, or None when ``reference`` still names ``digest`` (conditional)."""
        state.throttle.wait()
        fetched = state.client.get_manifest_unless(repository, reference, digest)
        return self._kept(fetched) if fetched is not None else None

    def _kept(self, fetched: tuple[bytes, str, str]) -> tuple[bytes, str, str]:
        """A fetched manifest, also kept by digest in ``manifests`` for a sync to reuse."""
        if self.manifests is not None:
            self.manifests[fetched[2]] = fetched[0]
        return fetched

    def _resolve_registry_entry(self, entry: Entry) -> list[LockEntry]:
        state, pins, available = self._pins(entry)
        return [self._resolve_tag(entry, state, pin, available) for pin in pins]

    def _pins(self, entry: Entry) -> tuple[_SourceState, list[TagPin], set[str]]:
        """The entry's source, the tags it selects and every tag the repository lists."""
        assert entry.source is not None and entry.repository is not None
        state = self._state(entry.source)
        listed = self._tags(state, entry.repository)
        available = set(listed)
        if entry.selection.exact:
            pins = list(entry.selection.tags)
            for pin in pins:
                if pin.digest is None and pin.tag not in available:
                    raise LockError(
                        f"tag {pin.tag} not found at {self.spec.sources[entry.source].registry} "
                        f"({len(listed)} tags listed)"
                    )
        else:
            chosen = entry.selection.choose(listed)
            if not chosen:
                raise LockError(
                    f"no tag matches {entry.selection.describe()} ({len(listed)} tags listed)"
                )
            pins = [TagPin(tag) for tag in chosen]
        return state, pins, available

    def _unchanged(
        self, entry: Entry, state: _SourceState, pin: TagPin
    ) -> tuple[LockEntry | None, tuple[bytes, str, str] | None]:
        """The previous lock's entry for this tag when the source still serves its digest.

        Asked with one conditional ``GET`` (``If-None-Match`` the recorded digest): 304 when
        unchanged, which costs the registry less than a ``HEAD``; when the tag moved, its
        manifest comes with the answer and is returned second, for the new entry.
        """
        assert entry.source is not None and entry.repository is not None
        previous = self._previous.get((entry.destination, pin.tag))
        if (
            previous is None
            or previous.archive is not None
            or previous.kind != entry.kind
            or previous.source != entry.source
            or previous.registry != self.spec.sources[entry.source].registry
            or previous.repository != entry.repository
            or previous.pinned != pin.digest
            or previous.platforms != entry.platforms
            or (
                previous.children
                and previous.platform_mode != (entry.platform_mode or PRESERVE_INDEX)
            )
            or (not previous.children and previous.platform_mode is not None)
        ):
            return None, None
        fetched = self._get_unless(
            state, entry.repository, pin.digest or pin.tag, previous.upstream_digest
        )
        if fetched is None:  # 304: the tag still names the recorded digest
            return previous, None
        body, media_type, digest = fetched
        if (
            digest != previous.upstream_digest
            or media_type != previous.manifest.media_type
            or (previous.digest == previous.upstream_digest and len(body) != previous.manifest.size)
        ):
            return None, fetched
        return previous, None

    def _resolve_tag(
        self, entry: Entry, state: _SourceState, pin: TagPin, available: set[str]
    ) -> LockEntry:
        assert entry.source is not None and entry.repository is not None
        repository = entry.repository
        previous, fetched = self._unchanged(entry, state, pin)
        if previous is not None:
            where = f"{repository}:{pin.tag} ({previous.upstream_digest})"
            if previous.children and entry.kind == "image":
                self._check_platforms(entry, [child.platform for child in previous.children], where)
            with self._guard:
                self.reused += 1
            return self._with_signatures(
                entry,
                state,
                pin,
                available,
                where,
                upstream_digest=previous.upstream_digest,
                top=previous.manifest,
                platform_mode=previous.platform_mode,
                children=previous.children,
                recorded=previous.signatures,
            )
        body, media_type, digest = fetched or self._get(state, repository, pin.digest or pin.tag)
        where = f"{repository}:{pin.tag} ({digest})"
        document = _parse_manifest(body, where)
        upstream = Manifest(digest, media_type, len(body))
        children: tuple[Child, ...] = ()
        platform_mode = None
        top = upstream
        if media_type in INDEX_MEDIA_TYPES or "manifests" in document:
            platform_mode = entry.platform_mode or PRESERVE_INDEX
            children = self._children(entry, state, document, where, platform_mode)
            kept = {child.digest for child in children if child.copy}
            if platform_mode == FILTER and len(kept) < len(children):
                filtered = filtered_index(body, kept)
                top = Manifest(digest_of(filtered), media_type, len(filtered))
        else:
            config, layers = _image_parts(document, where)
            upstream = top = replace(upstream, config=config, layers=layers)
        return self._with_signatures(
            entry,
            state,
            pin,
            available,
            where,
            upstream_digest=upstream.digest,
            top=top,
            platform_mode=platform_mode,
            children=children,
            recorded=(),
        )

    def _with_signatures(
        self,
        entry: Entry,
        state: _SourceState,
        pin: TagPin,
        available: set[str],
        where: str,
        *,
        upstream_digest: str,
        top: Manifest,
        platform_mode: str | None,
        children: tuple[Child, ...],
        recorded: tuple[Signature, ...],
    ) -> LockEntry:
        """The locked tag with the signatures the tag list names for it and its children.

        A signature tag ``recorded`` in the previous lock still pointing at the same manifest
        (one ``HEAD``) is taken from there; any other is fetched.
        """
        assert entry.source is not None and entry.repository is not None
        repository = entry.repository
        known = {signature.tag: signature for signature in recorded}
        subjects = [(upstream_digest, top.digest == upstream_digest)]
        subjects += [(child.digest, True) for child in children if child.copy]
        signatures = []
        for subject, copy in subjects:
            for kind in SIGNATURE_KINDS:
                tag = f"{subject.replace(':', '-')}.{kind}"
                if tag not in available:
                    continue
                before = known.get(tag)
                if before is not None and before.subject == subject and before.kind == kind:
                    found = self._head(state, repository, tag)
                    if (
                        found is not None
                        and found.digest == before.digest
                        and found.media_type == before.media_type
                    ):
                        signatures.append(replace(before, copy=copy))
                        continue
                sig_body, sig_type, sig_digest = self._get(state, repository, tag)
                sig_document = _parse_manifest(sig_body, f"{repository}:{tag}")
                config, layers = _image_parts(sig_document, f"{repository}:{tag}")
                signatures.append(
                    Signature(
                        sig_digest,
                        sig_type,
                        len(sig_body),
                        config,
                        layers,
                        tag=tag,
                        kind=kind,
                        subject=subject,
                        copy=copy,
                    )
                )
        if entry.signatures.required and not any(
            s.kind == "sig" and s.subject == upstream_digest for s in signatures
        ):
            raise LockError(
                f"{where}: the signature policy asks for a signature, but upstream has none "
                f"({upstream_digest.replace(':', '-')}.sig)"
            )
        return LockEntry(
            kind=entry.kind,
            destination=entry.destination,
            tag=pin.tag,
            manifest=top,
            upstream_digest=upstream_digest,
            source=entry.source,
            registry=self.spec.sources[entry.source].registry,
            repository=repository,
            pinned=pin.digest,
            platform_mode=platform_mode,
            platforms=entry.platforms,
            children=children,
            signatures=tuple(sorted(signatures, key=lambda s: s.tag)),
        )

    def _children(
        self,
        entry: Entry,
        state: _SourceState,
        document: dict[str, Any],
        where: str,
        mode: str,
    ) -> tuple[Child, ...]:
        assert entry.repository is not None
        items = document.get("manifests")
        if not isinstance(items, list) or not items:
            raise LockError(f"{where}: index without manifests")
        listed = []
        for position, item in enumerate(items):
            descriptor = _descriptor(item, f"{where} manifests[{position}]")
            platform = _platform_text(item.get("platform"))
            if entry.kind == "image":
                selected = any(platform_matches(platform, wanted) for wanted in entry.platforms)
            else:
                selected = True
            annotations = item.get("annotations") or {}
            listed.append((descriptor, platform, selected, annotations.get(_REFERENCE_DIGEST)))
        if entry.kind == "image":
            self._check_platforms(entry, [platform for _, platform, _, _ in listed], where)
        chosen = {descriptor.digest for descriptor, _, selected, _ in listed if selected}
        children = []
        for descriptor, platform, selected, refers_to in listed:
            copy = mode == PRESERVE_INDEX or selected or refers_to in chosen
            config: Blob | None = None
            layers: tuple[Blob, ...] = ()
            if copy:
                child_where = f"{where} child {descriptor.digest}"
                body, media_type, _ = self._get(state, entry.repository, descriptor.digest)
                if media_type in INDEX_MEDIA_TYPES:
                    raise LockError(f"{child_where}: nested index, not supported")
                if len(body) != descriptor.size:
                    raise LockError(
                        f"{child_where}: index says {descriptor.size} bytes, got {len(body)}"
                    )
                config, layers = _image_parts(_parse_manifest(body, child_where), child_where)
            children.append(
                Child(
                    descriptor.digest,
                    descriptor.media_type,
                    descriptor.size,
                    config,
                    layers,
                    platform=platform,
                    selected=selected,
                    copy=copy,
                )
            )
        return tuple(children)

    @staticmethod
    def _check_platforms(entry: Entry, platforms: list[str | None], where: str) -> None:
        present = sorted({platform for platform in platforms if platform})
        missing = [
            wanted
            for wanted in entry.platforms
            if not any(platform_matches(platform, wanted) for platform in platforms)
        ]
        if entry.platforms_explicit and missing:
            raise LockError(
                f"{where}: platform {', '.join(missing)} not in the index "
                f"(it has {', '.join(present)})"
            )
        if len(missing) == len(entry.platforms):
            raise LockError(
                f"{where}: none of {', '.join(entry.platforms)} in the index "
                f"(it has {', '.join(present)}); set platforms"
            )

    # classic Helm repositories ------------------------------------------------------------

    def _url(self, url: str) -> bytes:
        with self._url_lock:
            if url not in self._urls:
                self.url_requests += 1
                self._urls[url] = self._fetch(url)
            return self._urls[url]

    def _resolve_classic_chart(self, entry: Entry) -> list[LockEntry]:
        assert entry.url is not None and entry.chart is not None
        index_url = urljoin(entry.url.rstrip("/") + "/", "index.yaml")
        try:
            index = yaml.safe_load(self._url(index_url))
        except yaml.YAMLError as exc:
            raise LockError(f"{index_url}: not a Helm repository index: {exc}") from exc
        releases = (
            (index or {}).get("entries", {}).get(entry.chart) if isinstance(index, dict) else None
        )
        if not releases:
            raise LockError(f"{index_url}: no chart named {entry.chart}")
        by_version = {str(release.get("version")): release for release in releases}
        if entry.selection.exact:
            versions = [pin.tag for pin in entry.selection.tags]
            for version in versions:
                if version not in by_version:
                    raise LockError(f"{index_url}: {entry.chart} has no version {version}")
        else:
            versions = entry.selection.choose(by_version)
            if not versions:
                raise LockError(
                    f"{index_url}: no version of {entry.chart} matches {entry.selection.describe()}"
                )
        pins = {pin.tag: pin.digest for pin in entry.selection.tags}
        return [
            self._lock_archive(entry, index_url, by_version[version], pins.get(version))
            for version in sorted(versions, key=tag_order_key)
        ]

    def _lock_archive(
        self, entry: Entry, index_url: str, release: dict[str, Any], pinned: str | None
    ) -> LockEntry:
        version = str(release["version"])
        urls = release.get("urls") or []
        if not urls:
            raise LockError(f"{index_url}: {entry.chart} {version} lists no archive URL")
        url = urljoin(index_url, str(urls[0]))
        archive = self._url(url)
        actual = digest_of(archive)
        announced = release.get("digest")
        if announced and f"sha256:{announced}" != actual:
            raise LockError(
                f"{url}: digest mismatch: index.yaml says sha256:{announced}, got {actual}"
            )
        config, body = chart_manifest(archive)
        manifest = Manifest(
            digest_of(body),
            OCI_MANIFEST,
            len(body),
            Blob(digest_of(config), HELM_CONFIG, len(config)),
            (Blob(actual, HELM_CHART_CONTENT, len(archive)),),
        )
        if pinned and pinned != manifest.digest:
            raise LockError(
                f"{url}: pinned {pinned}, the chart's OCI artifact is {manifest.digest}"
            )
        return LockEntry(
            kind=entry.kind,
            destination=entry.destination,
            tag=version,
            manifest=manifest,
            upstream_digest=manifest.digest,
            pinned=pinned,
            archive=Archive(url, actual, len(archive)),
        )


def read_url(url: str) -> bytes:
    context = tls_context(None, None, None) if url.startswith("https:") else None
    request = urllib.request.Request(url, headers={"User-Agent": "airgapped-registry"})
    try:
        with urllib.request.urlopen(request, timeout=30, context=context) as response:
            body: bytes = response.read()
            return body
    except urllib.error.HTTPError as exc:
        raise LockError(f"GET {url}: {exc.code} {exc.reason}") from exc
    except (urllib.error.URLError, OSError, ssl.SSLError) as exc:
        reason = getattr(exc, "reason", exc)
        raise LockError(f"GET {url}: {reason}") from exc


def _parse_manifest(body: bytes, where: str) -> dict[str, Any]:
    try:
        document = json.loads(body)
    except ValueError as exc:
        raise LockError(f"{where}: manifest is not JSON: {exc}") from exc
    if not isinstance(document, dict):
        raise LockError(f"{where}: manifest is not a JSON object")
    return document


def _descriptor(item: Any, where: str) -> Blob:
    if not isinstance(item, dict):
        raise LockError(f"{where}: descriptor is not an object")
    digest, media_type, size = item.get("digest"), item.get("mediaType"), item.get("size")
    if not isinstance(digest, str) or not DIGEST_PATTERN.fullmatch(digest):
        raise LockError(f"{where}: bad digest {digest!r}")
    if not isinstance(media_type, str) or not media_type:
        raise LockError(f"{where}: no mediaType")
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise LockError(f"{where}: bad size {size!r}")
    return Blob(digest, media_type, size)


def _image_parts(document: dict[str, Any], where: str) -> tuple[Blob, tuple[Blob, ...]]:
    if "config" not in document or not isinstance(document.get("layers", []), list):
        raise LockError(f"{where}: not an image manifest (no config)")
    config = _descriptor(document["config"], f"{where} config")
    layers = tuple(
        _descriptor(layer, f"{where} layers[{position}]")
        for position, layer in enumerate(document.get("layers") or [])
    )
    return config, layers


def _platform_text(platform: Any) -> str | None:
    if not isinstance(platform, dict) or not platform.get("os"):
        return None
    parts = [platform.get("os"), platform.get("architecture"), platform.get("variant")]
    return "/".join(str(part) for part in parts if part)


# -- the command ---------------------------------------------------------------------------


def lock(
    spec: MirrorSpec,
    lock_path: str | os.PathLike[str],
    *,
    check: bool = False,
    clients: Mapping[str, RegistryClient] | None = None,
    fetch_url: UrlFetcher | None = None,
) -> dict[str, Any]:
    """Resolve ``spec``, write ``lock_path`` if it changes (not with ``check``), report.

    The report: ``changed`` (the file's bytes would change), ``written``, ``entries``,
    ``reused`` (tags whose digest had not moved, taken from the previous lock after one
    ``GET``), ``diff`` (added / removed / moved / changed destination tags) and ``requests``
    per source. The file is replaced atomically, so a reader never sees half a lock.
    """
    return relock(spec, lock_path, check=check, clients=clients, fetch_url=fetch_url)[2]


def relock(
    spec: MirrorSpec,
    lock_path: str | os.PathLike[str],
    *,
    check: bool = False,
    clients: Mapping[str, RegistryClient] | None = None,
    fetch_url: UrlFetcher | None = None,
    manifests: MutableMapping[str, bytes] | None = None,
    previous: Lock | None = None,
) -> tuple[Lock | None, Lock, dict[str, Any]]:
    """:func:`lock`, returning ``(previous lock, new lock, report)`` for a caller that goes
    on (``airgap sync --relock``); ``manifests`` receives the manifests fetched. A caller that
    already read ``lock_path`` passes it as ``previous``."""
    path = Path(lock_path)
    if previous is None:
        previous = read_lock(path)
    with Resolver(spec, clients, fetch_url, previous=previous, manifests=manifests) as resolver:
        new = resolver.resolve()
        requests = resolver.requests()
        reused = resolver.reused
    # Equal content is no change (serialising a large lock only to compare costs more).
    changed = new != previous
    if changed and not check:
        write_atomically(path, new.to_json())
    changes = diff(previous, new)
    return (
        previous,
        new,
        {
            "lock": os.fspath(path),
            "changed": changed,
            "written": changed and not check,
            "check_mode": check,
            "entries": len(new.entries),
            "reused": reused,
            "summary": changes.summary() if previous is not None else "new lock",
            "diff": changes.to_json(),
            "requests": requests,
        },
    )


def write_atomically(path: Path, text: str) -> None:
    directory = path.resolve().parent
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=directory)
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
