"""Admission: whether a digest of a protected repository may be served.

A manifest is admitted when the digest carries a valid appliance signature (checked here,
on the ``.sig`` payloads, against every published key: active or verifying) and a verdict
that stands (``pass`` made with the current DB, not older than ``max_age``, an index's
children too; ``skipped`` only for the policy's ``unscanned_config_types``). cosign's
attachment manifests (signatures, attestations: every layer of their types) are served as
metadata. Admitting a manifest records its blobs (:mod:`airgapped_registry.state.admitted`),
and a blob GET is served only for those.

What is cached is what stays true. Manifest and payload bodies by digest, and a signature
check by (signature manifest digest, keys.json as it stands), never change. A tag's digest
(the signature tag's too) is read from Distribution's own link files when the policy names
its filesystem storage (``backend_storage``, :func:`linked`): as fresh as asking it, for
the cost of four small reads, nothing kept. Otherwise (or when a link cannot be read for
sure) the backend is asked, and the answer kept until a push or delete of a manifest in its
repository, which the gate sees as it allows it (:meth:`Admission.changed`; every write
reaches the backend through the gate: the backend listens only to nginx and the
appliance's services, whose writes go through the gateway too). The verdict (one indexed
SQLite read), the current DB (a readlink) and keys.json's stat are read for every decision.
So a moved tag, a deleted signature, a new verdict, a new DB or a key rotation count from
the next request.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from airgapped_registry.errors import AirgapError, RegistryError
from airgapped_registry.gate.policy import GatePolicy
from airgapped_registry.oci.mediatypes import INDEX_MEDIA_TYPES
from airgapped_registry.oci.reference import DIGEST_PATTERN, REPOSITORY_PATTERN, TAG_PATTERN
from airgapped_registry.scanning import db as scan_db
from airgapped_registry.scanning.records import from_record, stands
from airgapped_registry.scanning.verdict import DbInfo, stale_reason
from airgapped_registry.signing import keys
from airgapped_registry.signing.signer import (
    DSSE_ENVELOPE,
    SIGNATURE_ANNOTATION,
    SIMPLE_SIGNING,
    PublicKey,
    payload_names,
    signature_tag,
)
from airgapped_registry.state.admitted import AdmittedBlobs
from airgapped_registry.state.store import StateStore
from airgapped_registry.state.verdicts import VerdictStore
from airgapped_registry.transport.registry import RegistryClient

ATTACHMENT_LAYER_TYPES = frozenset({SIMPLE_SIGNING, DSSE_ENVELOPE})
_CACHE_SIZE = 4096
# After a manifest change the gate allowed in a repository, its tags are not kept for this
# long: a pull answered from the backend while the change was still on its way could
# otherwise keep the old answer.
SETTLE_SECONDS = 30.0

# Reasons (docs/gate.md): the X-Airgap-Reason of a denial.
UNSIGNED, SIGNATURE_INVALID = "unsigned", "signature_invalid"
NOT_SCANNED, STALE, FAILED = "not_scanned", "stale", "failed"
BLOB_NOT_ADMITTED = "blob_not_admitted"


@dataclass(frozen=True)
class Settings:
    """What admission reads, from provenance.yaml: the backend, the state database, the
    keys, the name signatures carry (``signing.registry``), the DB and its ``max_age``."""

    backend: str
    state: Path
    keys_dir: Path
    registry: str
    cache_dir: Path
    max_age: timedelta


@dataclass(frozen=True)
class Admitted:
    """The answer for one manifest: ``reason`` says why (allowed or not), ``message``
    explains it to a user; ``digest`` is what the reference resolved to (None: absent)."""

    allowed: bool
    reason: str
    message: str
    digest: str | None


_LINK = re.compile(rb"sha256:[a-f0-9]{64}")
# A link is a small regular file Distribution wrote: never follow a symlink there, never
# wait on a FIFO (a read that cannot be sure is a question for the backend instead).
_LINK_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC


def read_link(path: str) -> str | None:
    """The digest a link file of Distribution's storage holds: exactly one sha256 digest,
    as Distribution writes it (``blobStore.link``); None for anything else, a missing,
    empty (being rewritten: the driver truncates, then writes) or partial file included."""
    try:
        descriptor = os.open(path, _LINK_FLAGS)
    except OSError:
        return None
    try:
        content = os.read(descriptor, 128)
    except OSError:
        return None
    finally:
        os.close(descriptor)
    return content.decode("ascii") if _LINK.fullmatch(content) else None


def linked(storage: Path, repository: str, tag: str) -> str | None:
    """The digest ``repository:tag`` names in Distribution's filesystem storage under
    ``storage``, read as Distribution 2.8 reads it for a manifest GET or HEAD by tag
    (``tagStore.Get``: the tag's ``current/link``; then the manifest's revision link,
    which a manifest delete removes before it untags). None when either cannot be read
    for sure: the caller asks the backend."""
    if not (REPOSITORY_PATTERN.fullmatch(repository) and TAG_PATTERN.fullmatch(tag)):
        return None
    manifests = f"{storage}/docker/registry/v2/repositories/{repository}/_manifests"
    digest = read_link(f"{manifests}/tags/{tag}/current/link")
    if digest is None:
        return None
    if read_link(f"{manifests}/revisions/sha256/{digest[7:]}/link") != digest:
        return None
    return digest


class _Bounded(OrderedDict[Any, Any]):
    def put(self, key: Any, value: Any) -> None:
        self[key] = value
        if len(self) > _CACHE_SIZE:
            self.popitem(last=False)


class Admission:
    """Decisions for one gate process; thread-safe: a backend client and a state database
    connection per thread (:meth:`release` closes them), caches shared under a lock."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._local = threading.local()
        self._lock = threading.Lock()
        self._bodies = _Bounded()  # digest -> manifest document
        self._payloads = _Bounded()  # blob digest -> bytes
        self._checked = _Bounded()  # (sig manifest digest, digest, identity, keys) -> bool
        self._recorded = _Bounded()  # (repository, manifest digest) -> True: blobs recorded
        self._keys_stamp: tuple[int, int, int] | bool | None = False
        self._keys: tuple[PublicKey, ...] = ()
        self._dbs: dict[str, DbInfo] = {}
        self._tags = _Bounded()  # repository -> {tag -> digest or None}
        self._unsettled: dict[str, float] = {}  # repository -> monotonic time
        self._generation = 0
        self.settle = SETTLE_SECONDS
        # Read on every decision: the paths made once.
        self._keys_record = str(settings.keys_dir / keys.RECORD)
        self._db_link = scan_db.current_link(settings.cache_dir)
        self._db_link_text = str(self._db_link)

    # -- per thread --------------------------------------------------------------------

    @property
    def client(self) -> RegistryClient:
        """This thread's client of the backend (one kept-alive connection)."""
        client = getattr(self._local, "client", None)
        if client is None:
            client = RegistryClient(self.settings.backend)
            self._local.client = client
        return client

    def _stores(self) -> tuple[VerdictStore, AdmittedBlobs]:
        stores = getattr(self._local, "stores", None)
        if stores is None:
            store = StateStore(self.settings.state)
            stores = (VerdictStore(store), AdmittedBlobs(store))
            self._local.stores = stores
        return stores

    def release(self) -> None:
        """Close this thread's backend connection and state database: a server thread ends
        with its nginx connection, and a long-running gate must not keep what it opened."""
        client = getattr(self._local, "client", None)
        if client is not None:
            client.close()
            del self._local.client
        stores = getattr(self._local, "stores", None)
        if stores is not None:
            stores[0].store.close()
            del self._local.stores

    def close(self) -> None:
        self.release()

    # -- keys and DB, as they stand now --------------------------------------------------

    def public_keys(self) -> tuple[PublicKey, ...]:
        """The published keys; keys.json read again when its stat changed (a rotation or a
        retirement replaces it by a rename)."""
        try:
            info = os.stat(self._keys_record)
            stamp: tuple[int, int, int] | None = (info.st_ino, info.st_mtime_ns, info.st_size)
        except FileNotFoundError:
            stamp = None
        with self._lock:
            if stamp != self._keys_stamp:
                ring = keys.load(self.settings.keys_dir)
                self._keys = tuple(PublicKey(path) for path in ring.public_keys())
                self._keys_stamp = stamp
                self._checked.clear()
            return self._keys

    def current_db(self) -> DbInfo | None:
        link = self._db_link
        try:
            target = os.readlink(self._db_link_text)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise AirgapError(f"{link}: not a DB link: {exc.strerror or exc}") from exc
        found = self._dbs.get(target)
        if found is None:
            installed = scan_db.read_record(link.parent / target)
            found = DbInfo(installed.digest, installed.updated_at)
            self._dbs[target] = found
        return found

    # -- manifests ---------------------------------------------------------------------

    def resolve(self, repository: str, reference: str, storage: Path | None = None) -> str | None:
        """The digest ``reference`` names (a digest names itself); None when the tag is not
        there. With ``storage`` (``backend_storage``), read from Distribution's own link
        files: as fresh as the backend's answer, without asking it. Otherwise, or when the
        links cannot be read, the backend is asked, and a tag's answer kept until a change
        in its repository (:meth:`changed`)."""
        if DIGEST_PATTERN.fullmatch(reference):
            return reference
        if storage is not None:
            digest = linked(storage, repository, reference)
            if digest is not None:
                return digest
        with self._lock:
            tags = self._tags.get(repository)
            if tags is not None and reference in tags:
                known: str | None = tags[reference]
                return known
            keep = time.monotonic() >= self._unsettled.get(repository, 0.0)
            generation = self._generation
        head = self.client.head_manifest(repository, reference)
        digest = None if head is None else head.digest
        with self._lock:
            # Not kept when a change came meanwhile: the answer may predate it.
            if keep and generation == self._generation:
                tags = self._tags.get(repository)
                if tags is None:
                    tags = _Bounded()
                    self._tags.put(repository, tags)
                tags.put(reference, digest)
        return digest

    def changed(self, repository: str) -> None:
        """A manifest of ``repository`` is being pushed or deleted (the gate allowed it): its
        tags, signature tags included, are read from the backend again, and not kept until
        the change has surely landed (:data:`SETTLE_SECONDS`)."""
        with self._lock:
            self._tags.pop(repository, None)
            self._generation += 1
            self._unsettled[repository] = time.monotonic() + self.settle

    def manifest(self, repository: str, digest: str) -> dict[str, Any] | None:
        """The manifest ``digest`` (None: not in the repository); bodies are kept by digest."""
        document = self._bodies.get(digest)
        if document is None:
            try:
                body, _, _ = self.client.get_manifest(repository, digest)
            except RegistryError as exc:
                if exc.status == 404:
                    return None
                raise
            document = json.loads(body)
            if not isinstance(document, dict):
                raise AirgapError(f"{repository}@{digest}: the manifest is not a JSON object")
            with self._lock:
                self._bodies.put(digest, document)
        return document

    @staticmethod
    def is_attachment(document: dict[str, Any]) -> bool:
        layers = document.get("layers")
        return (
            isinstance(layers, list)
            and bool(layers)
            and all(
                isinstance(layer, dict) and layer.get("mediaType") in ATTACHMENT_LAYER_TYPES
                for layer in layers
            )
        )

    # -- the decision ------------------------------------------------------------------

    def admit(self, policy: GatePolicy, repository: str, reference: str) -> Admitted:
        """Whether ``repository:reference`` may be served (see the module docstring)."""
        storage = policy.backend_storage
        digest = self.resolve(repository, reference, storage)
        where = f"{repository}@{digest}"
        document = None if digest is None else self.manifest(repository, digest)
        if digest is None or document is None:
            # Nothing to serve: the backend answers 404 itself.
            return Admitted(True, "absent", f"{repository}:{reference}: no such manifest", digest)
        if self.is_attachment(document):
            self._record_blobs(repository, digest, document)
            return Admitted(True, "attachment", f"{where}: signature or attestation", digest)
        signed = self.signature(repository, digest, storage)
        if signed is not None:
            reason, message = signed
            return Admitted(False, reason, f"{where}: {message}", digest)
        verdict = self.verdict(policy, repository, digest, document)
        if verdict is not None:
            reason, message = verdict
            return Admitted(False, reason, f"{where}: {message}", digest)
        self._record_blobs(repository, digest, document)
        return Admitted(True, "signed+pass", f"{where}: signed and passed", digest)

    def signature(
        self, repository: str, digest: str, storage: Path | None = None
    ) -> tuple[str, str] | None:
        """None when a published key signed ``digest`` for ``repository``; else why not."""
        public = self.public_keys()
        signatures = self.resolve(repository, signature_tag(digest), storage)
        if signatures is None:
            return UNSIGNED, "not signed by the appliance"
        if not public:
            return SIGNATURE_INVALID, "no published appliance key to check the signature with"
        identity = f"{self.settings.registry}/{repository}"
        key = (signatures, digest, identity, self._keys_stamp)
        valid = self._checked.get(key)
        if valid is None:
            valid = self._check_signatures(repository, signatures, digest, identity, public)
            with self._lock:
                self._checked.put(key, valid)
        if valid:
            return None
        return SIGNATURE_INVALID, "no valid appliance signature (by a published key, for it)"

    def _check_signatures(
        self,
        repository: str,
        signatures: str,
        digest: str,
        identity: str,
        public: tuple[PublicKey, ...],
    ) -> bool:
        document = self.manifest(repository, signatures) or {}
        for layer in document.get("layers") or []:
            if not isinstance(layer, dict) or layer.get("mediaType") != SIMPLE_SIGNING:
                continue
            signature = (layer.get("annotations") or {}).get(SIGNATURE_ANNOTATION)
            blob = layer.get("digest")
            if not isinstance(signature, str) or not isinstance(blob, str):
                continue
            payload = self._payloads.get(blob)
            if payload is None:
                try:
                    payload = self.client.get_blob(repository, blob)
                except RegistryError:
                    continue
                with self._lock:
                    self._payloads.put(blob, payload)
            if payload_names(payload, digest, identity) and any(
                key.verifies(signature, payload) for key in public
            ):
                return True
        return False

    def verdict(
        self, policy: GatePolicy, repository: str, digest: str, document: dict[str, Any]
    ) -> tuple[str, str] | None:
        """None when the verdict of ``digest`` stands as a pass; else why not."""
        verdicts, _ = self._stores()
        record = verdicts.verdict(repository, digest)
        if record is None:
            return NOT_SCANNED, "not scanned"
        if record.status == "error":
            return NOT_SCANNED, f"the scan failed ({record.error or 'no detail'})"
        if record.status == "skipped":
            config = document.get("config") or {}
            kind = config.get("mediaType") if isinstance(config, dict) else None
            if kind in policy.unscanned_config_types:
                return None
            return NOT_SCANNED, f"not scanned (config type {kind or 'none'} is not exempt)"
        current = self.current_db()
        verdict = from_record(record)
        why = stale_reason(verdict, current, self.settings.max_age, datetime.now(UTC))
        if why is None and not stands(record, verdicts, current):
            why = "a platform manifest has no verdict made with the DB in use"
        if why is not None:
            return STALE, f"stale verdict: {why}"
        if record.status == "fail":
            failing = verdict.failing
            by_severity: dict[str, int] = {}
            for finding in failing:
                severity = finding.severity.lower()
                by_severity[severity] = by_severity.get(severity, 0) + 1
            counts = ", ".join(f"{n} {severity}" for severity, n in by_severity.items())
            ids = ", ".join(sorted({finding.id for finding in failing})[:5])
            return FAILED, f"failed the scan with {counts or 'findings'}: {ids}"
        return None

    # -- blobs -------------------------------------------------------------------------

    def _record_blobs(self, repository: str, digest: str, document: dict[str, Any]) -> None:
        if (repository, digest) in self._recorded:
            return
        blobs = []
        if document.get("mediaType") not in INDEX_MEDIA_TYPES:
            config = document.get("config")
            for item in [config, *(document.get("layers") or [])]:
                if isinstance(item, dict) and isinstance(item.get("digest"), str):
                    blobs.append(item["digest"])
        _, admitted = self._stores()
        admitted.admit(repository, digest, blobs)
        with self._lock:
            self._recorded.put((repository, digest), True)

    def blob_admitted(self, policy: GatePolicy, repository: str, blob: str) -> bool:
        """Whether a manifest admitted in ``repository`` lists ``blob`` and still would be
        admitted: its signature and verdict are asked again (cached as for a manifest GET),
        so blobs go with the signature or the verdict that let them out."""
        _, admitted = self._stores()
        storage = policy.backend_storage
        for digest in admitted.manifests(repository, blob):
            document = self.manifest(repository, digest)
            if document is None:
                continue
            if self.is_attachment(document):
                return True
            if self.signature(repository, digest, storage) is None and (
                self.verdict(policy, repository, digest, document) is None
            ):
                return True
        return False
