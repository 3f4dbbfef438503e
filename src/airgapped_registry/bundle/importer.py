"""Import: a checked bundle into a registry, resumable, idempotent, verified against its lock.

:func:`~airgapped_registry.bundle.format.open_bundle` has checked the signature and every
file before this module sees the bundle. Then, in order:

1. **Completeness** (:func:`completeness`): every manifest and blob each entry of
   ``airgap/contents.json.gz`` needs is in the bundle, or the registry holds it already (a
   ``HEAD`` in the entry's repository, else in another repository of the lock or the
   catalog: a mount source for a blob, a copy source for a manifest). Anything missing
   refuses the import, naming entry and digest, before the first push.
2. **Blobs** (parallel, one worker per digest): uploaded from the bundle once (a blob
   larger than ``chunk_size`` in ``PATCH`` chunks, each acknowledged chunk recorded in the
   ledger with the session's ``Location``, so a killed import goes on at the registry's
   offset), mounted into every other repository that needs it, or mounted from where the
   registry holds it.
3. **Manifests**, per entry: children, images and indexes by digest, signatures and
   attestations by their tags (a tag that already holds the bundle's layers plus the
   appliance's keeps them, as the sync does), then ``before_tag`` (signing), then the tag.
4. **Verify** against the bundle's lock (:func:`airgapped_registry.mirror.verify.verify`).

Every completed step is recorded in the ledger (``state/imports.py``) under the bundle id:
a rerun of the same bundle skips it without a request, so a second import sends nothing.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Protocol

from airgapped_registry import defaults
from airgapped_registry.errors import AirgapError
from airgapped_registry.mirror.lock import Lock, Signature
from airgapped_registry.mirror.signatures import carries, holds, merged
from airgapped_registry.mirror.verify import verify
from airgapped_registry.oci.reference import check_digest, check_repository, digest_of
from airgapped_registry.state.imports import ImportLedger
from airgapped_registry.transport.counters import RequestCount
from airgapped_registry.transport.registry import RegistryClient

DEFAULT_CHUNK_SIZE = 16 * 1024 * 1024
SIGNATURE = "signature"


class BundleImportError(AirgapError):
    """The import could not complete; ``report`` holds what it did until then."""

    def __init__(self, message: str, report: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.report = report or {}


class BundleIncompleteError(BundleImportError):
    """An entry needs a manifest or blob that neither the bundle nor the registry holds."""


class OpenBundle(Protocol):
    """What the importer reads of a bundle :func:`open_bundle` has checked."""

    @property
    def id(self) -> str: ...
    @property
    def manifest(self) -> dict[str, Any]: ...
    @property
    def contents(self) -> dict[str, Any]: ...
    @property
    def lock_text(self) -> str: ...
    def has(self, digest: str) -> bool: ...
    def open_blob(self, digest: str) -> BinaryIO: ...


@dataclass(frozen=True)
class ImportOptions:
    """How an import runs. ``chunk_size``: a blob bigger than this is sent in ``PATCH``
    chunks of this size, each recorded (a resumed import goes on after the last one the
    registry acknowledged). ``before_tag``: called with the repository and the entry's
    digest once its content is in place and before its tag moves (signing); what it raises
    fails the import and the tag stays where it was. ``check``: only the completeness check
    and what would be sent."""

    workers: int = defaults.SYNC_WORKERS
    chunk_size: int = DEFAULT_CHUNK_SIZE
    verify: bool = True
    check: bool = False
    before_tag: Callable[[str, str], None] | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.workers < 1 or self.chunk_size < 1:
            raise ValueError("import options: workers and chunk_size must be >= 1")


@dataclass(frozen=True)
class Needed:
    """One manifest of an entry, as ``contents.json`` lists it."""

    digest: str
    media_type: str
    size: int
    role: str
    tag: str | None


@dataclass(frozen=True)
class Entry:
    """One entry of ``contents.json``: a destination tag and everything it needs."""

    repository: str
    tag: str
    digest: str
    manifests: tuple[Needed, ...]
    blobs: tuple[tuple[str, int], ...]

    @property
    def reference(self) -> str:
        return f"{self.repository}:{self.tag}"


def read_contents(contents: dict[str, Any], where: str = "airgap/contents.json.gz") -> list[Entry]:
    """The entries of ``contents.json``, every repository and digest checked."""
    if contents.get("format") != "airgapped-registry.bundle-contents.v1":
        raise BundleImportError(f"{where}: format {contents.get('format')!r} is not known")
    entries = []
    for index, document in enumerate(contents.get("entries") or []):
        what = f"{where}: entries[{index}]"
        try:
            entry = Entry(
                _repository(document["destination"]),
                str(document["tag"]),
                _digest(document["digest"]),
                tuple(
                    Needed(
                        _digest(m["digest"]),
                        str(m["media_type"]),
                        int(m["size"]),
                        str(m["role"]),
                        m.get("tag"),
                    )
                    for m in document["manifests"]
                ),
                tuple((_digest(b["digest"]), int(b["size"])) for b in document["blobs"]),
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise BundleImportError(f"{what}: malformed ({type(exc).__name__}: {exc})") from exc
        if not any(m.digest == entry.digest for m in entry.manifests):
            raise BundleImportError(f"{what} {entry.reference}: its own manifest is not listed")
        entries.append(entry)
    return entries


def _repository(name: str) -> str:
    check_repository(name)
    return name


def _digest(digest: str) -> str:
    check_digest(digest)
    return digest


class Importer:
    """One import of one bundle into one registry (the report is built on the way)."""

    def __init__(
        self,
        bundle: OpenBundle,
        client: RegistryClient,
        ledger: ImportLedger,
        registry: str,
        options: ImportOptions | None = None,
    ) -> None:
        self.bundle = bundle
        self.client = client
        self.ledger = ledger
        self.registry = registry
        self.options = options or ImportOptions()
        self.entries = read_contents(bundle.contents)
        self.lock = Lock.from_json(bundle.lock_text, "airgap/lock.json.gz")
        self.done = ledger.done(bundle.id, registry)
        # (repository, digest) the registry holds (found or made so), and where else a
        # digest can be had: a repository holding it (mount a blob, copy a manifest).
        self._held: set[tuple[str, str]] = set()
        self._source: dict[str, str] = {}
        self._catalog: list[str] | None = None
        # (repository, digest, blob) -> held, from the completeness check's parallel HEADs.
        self._headed: dict[tuple[str, str, bool], bool] = {}
        self._lock = threading.Lock()
        self.counts = {
            "blobs_uploaded": 0,
            "blobs_mounted": 0,
            "blobs_present": 0,
            "manifests": 0,
            "tags": 0,
            "resumed_bytes": 0,
        }
        self._stop = threading.Event()
        self.resumed: list[dict[str, Any]] = []
        self.restarted: list[dict[str, Any]] = []

    # -- 1. completeness --------------------------------------------------------------------

    def completeness(self) -> dict[str, Any]:
        """Find every digest the bundle does not hold in the registry; raise naming each
        entry and digest found nowhere. Returns what would be sent."""
        missing: list[str] = []
        self._head_all()
        for entry in self.entries:
            for digest, size in entry.blobs:
                if self.bundle.has(digest) or self._recorded(entry.repository, "blob", digest):
                    continue
                if not self._find(entry.repository, digest, blob=True):
                    missing.append(f"{entry.reference}: blob {digest} ({size} bytes)")
            for needed in entry.manifests:
                if self.bundle.has(needed.digest) or self._recorded(
                    entry.repository, "manifest", needed.digest
                ):
                    continue
                if not self._find(entry.repository, needed.digest, blob=False) and not (
                    needed.tag and self._tag_carries(entry.repository, needed)
                ):
                    missing.append(f"{entry.reference}: {needed.role} manifest {needed.digest}")
        if missing:
            more = f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""
            raise BundleIncompleteError(
                f"bundle {self.bundle.id} is incomplete for {self.registry}: neither the "
                f"bundle nor the registry holds {'; '.join(missing[:5])}{more}; nothing was "
                "pushed",
                {"missing": missing},
            )
        uploads = {
            digest: size
            for entry in self.entries
            for digest, size in entry.blobs
            if self.bundle.has(digest) and not self._recorded(entry.repository, "blob", digest)
        }
        return {"blobs_to_send": len(uploads), "bytes_to_send": sum(uploads.values())}

    def _head_all(self) -> None:
        """One HEAD per digest the bundle does not hold, in its own repository, ``workers``
        at a time (one after another they were ~3.5 s of a delta's 15 s import at 200
        entries); :meth:`_find` then looks elsewhere only for what these did not find."""
        wanted: dict[tuple[str, str, bool], None] = {}
        for entry in self.entries:
            for digest, _ in entry.blobs:
                if not self.bundle.has(digest) and not self._recorded(
                    entry.repository, "blob", digest
                ):
                    wanted[(entry.repository, digest, True)] = None
            for needed in entry.manifests:
                if not self.bundle.has(needed.digest) and not self._recorded(
                    entry.repository, "manifest", needed.digest
                ):
                    wanted[(entry.repository, needed.digest, False)] = None
        if not wanted:
            return
        with ThreadPoolExecutor(self.options.workers) as pool:
            found = list(pool.map(lambda key: self._holds(*key), wanted))
        self._headed = dict(zip(wanted, found, strict=True))

    def _recorded(self, repository: str, kind: str, digest: str) -> bool:
        return (repository, kind, digest, "") in self.done

    def _find(self, repository: str, digest: str, *, blob: bool) -> bool:
        """Whether the registry holds ``digest`` in ``repository`` or, for a mount or copy,
        in another repository (remembered as its source)."""
        if self._holds(repository, digest, blob):
            self._held.add((repository, digest))
            return True
        if digest in self._source:
            return True
        held = next((r for r, d in self._held if d == digest), None)
        if held is not None:
            self._source[digest] = held
            return True
        for other in self._candidates(repository):
            if self._holds(other, digest, blob):
                self._source[digest] = other
                return True
        return False

    def _holds(self, repository: str, digest: str, blob: bool) -> bool:
        known = self._headed.get((repository, digest, blob))
        if known is not None:
            return known
        if blob:
            return self.client.blob_exists(repository, digest)
        return self.client.head_manifest(repository, digest) is not None

    def _candidates(self, repository: str) -> list[str]:
        """Other repositories that may hold a digest: the lock's, then the catalog's."""
        if self._catalog is None:
            try:
                self._catalog = self.client.catalog()
            except AirgapError:
                self._catalog = []  # a registry that does not list: the lock's only
        ordered = [entry.destination for entry in self.lock.entries] + self._catalog
        return [name for name in dict.fromkeys(ordered) if name != repository]

    def _tag_carries(self, repository: str, needed: Needed) -> bool:
        """A signature tag holding the needed manifest's layers, the appliance's added."""
        if needed.tag is None:
            return False
        head = self.client.head_manifest(repository, needed.tag)
        if head is None:
            return False
        body, _, _ = self.client.get_manifest(repository, needed.tag)
        signature = self._signature(needed)
        if signature is None:
            return False
        return holds(body, signature, f"{repository}:{needed.tag}")

    def _signature(self, needed: Needed) -> Signature | None:
        for entry in self.lock.entries:
            for signature in entry.signatures:
                if signature.digest == needed.digest:
                    return signature
        return None

    # -- 2. blobs ---------------------------------------------------------------------------

    def push_blobs(self) -> None:
        """Every blob each repository needs, one worker per digest."""
        wanted: dict[str, list[str]] = {}
        sizes: dict[str, int] = {}
        for entry in self.entries:
            for digest, size in entry.blobs:
                repositories = wanted.setdefault(digest, [])
                if entry.repository not in repositories:
                    repositories.append(entry.repository)
                sizes[digest] = size
        self._run_all(lambda item: self._place(item[0], sizes[item[0]], item[1]), wanted.items())

    def _place(self, digest: str, size: int, repositories: list[str]) -> None:
        todo = [r for r in repositories if not self._recorded(r, "blob", digest)]
        if not todo:
            return
        recorded = [r for r in repositories if r not in todo]
        held = [r for r in todo if (r, digest) in self._held]
        for repository in held:
            self._mark(repository, "blob", digest, "present")
            self._count("blobs_present")
        todo = [r for r in todo if r not in held]
        source = next(iter(recorded + held), None) or self._source.get(digest)
        for repository in todo:
            if source is None:
                how, sent = self._upload(repository, digest, size)
                source = repository
            else:
                how, sent = self._mount(repository, digest, size, source)
            self._mark(repository, "blob", digest, how, sent)

    def _mount(self, repository: str, digest: str, size: int, source: str) -> tuple[str, int]:
        session = self.client.open_upload(repository, digest, mount_from=source)
        if session is None:
            self._count("blobs_mounted")
            return "mounted", 0
        # A registry that would not mount opened an upload: send the bytes after all.
        if not self.bundle.has(digest):
            self.client.cancel_upload(session)
            raise BundleImportError(
                f"blob {digest}: {self.registry} would not mount it from {source} into "
                f"{repository}, and the bundle does not hold it"
            )
        return self._send(repository, digest, size, session)

    def _upload(self, repository: str, digest: str, size: int) -> tuple[str, int]:
        saved = self.ledger.session(self.registry, repository, digest)
        if saved is not None:
            where = self.client.upload_offset(saved.location)
            if where is not None and 0 < where[1] <= size:
                location, offset = where
                with self._lock:
                    self.resumed.append(
                        {"repository": repository, "digest": digest, "offset": offset}
                    )
                self._count("resumed_bytes", offset)
                return self._send(repository, digest, size, location, offset)
            self.ledger.drop_session(self.registry, repository, digest)
        # Mount from the repository itself: one request that finds the blob there (201) or
        # opens the upload (202).
        session = self.client.open_upload(repository, digest, mount_from=repository)
        if session is None:
            self._count("blobs_present")
            return "present", 0
        if saved is not None:
            # The registry dropped the session (Distribution 2.8 does when its last chunk
            # was cut midway): those bytes are sent again.
            with self._lock:
                self.restarted.append(
                    {"repository": repository, "digest": digest, "offset": saved.offset}
                )
        return self._send(repository, digest, size, session)

    def _send(
        self, repository: str, digest: str, size: int, session: str, offset: int = 0
    ) -> tuple[str, int]:
        """The bundle's bytes of ``digest`` from ``offset`` into an open session."""
        chunk = self.options.chunk_size
        sent = 0
        try:
            with self.bundle.open_blob(digest) as source:
                source.seek(offset)
                if size - offset <= chunk and offset == 0:
                    data = source.read()
                    self.client.finish_upload(session, digest, data)
                    sent = len(data)
                else:
                    while offset < size:
                        if self._stop.is_set():
                            raise BundleImportError(
                                f"blob {digest}: stopped at {offset} of {size} bytes (recorded)"
                            )
                        data = source.read(min(chunk, size - offset))
                        if not data:
                            raise BundleImportError(
                                f"blob {digest}: the bundle's copy ends at {offset} of {size} bytes"
                            )
                        session, offset = self.client.send_chunk(session, offset, data)
                        sent += len(data)
                        self.ledger.save_session(
                            self.registry, repository, digest, self.bundle.id, session, offset
                        )
                    self.client.finish_upload(session, digest)
        except AirgapError:
            # The session stays open when chunks were recorded: a rerun goes on from there.
            if self.ledger.session(self.registry, repository, digest) is None:
                self.client.cancel_upload(session)
            raise
        self.ledger.drop_session(self.registry, repository, digest)
        self._count("blobs_uploaded")
        return "uploaded", sent

    # -- 3. manifests and tags --------------------------------------------------------------

    def push_manifests(self) -> None:
        self._run_all(self._push_entry, self.entries)

    def _push_entry(self, entry: Entry) -> None:
        repository = entry.repository
        content = [m for m in entry.manifests if m.role != SIGNATURE]
        signatures = [m for m in entry.manifests if m.role == SIGNATURE]
        for needed in content:
            self._put_by_digest(repository, needed)
        for needed in signatures:
            self._put_signature(repository, needed)
        if (repository, "tag", entry.digest, entry.tag) in self.done:
            return
        current = self.client.head_manifest(repository, entry.tag)
        if current is None or current.digest != entry.digest:
            if self.options.before_tag is not None:
                self.options.before_tag(repository, entry.digest)
            top = next(m for m in entry.manifests if m.digest == entry.digest)
            self.client.put_manifest(
                repository, entry.tag, self._body(repository, top), top.media_type
            )
            self._count("tags")
        self._mark(repository, "tag", entry.digest, "tagged", tag=entry.tag)

    def _body(self, repository: str, needed: Needed) -> bytes:
        if self.bundle.has(needed.digest):
            with self.bundle.open_blob(needed.digest) as source:
                return source.read()
        source_repository = self._source.get(needed.digest, repository)
        body, _, _ = self.client.get_manifest(source_repository, needed.digest)
        return body

    def _put_by_digest(self, repository: str, needed: Needed) -> None:
        if self._recorded(repository, "manifest", needed.digest):
            return
        if (repository, needed.digest) in self._held or (
            self.client.head_manifest(repository, needed.digest) is not None
        ):
            self._mark(repository, "manifest", needed.digest, "present")
            return
        body = self._body(repository, needed)
        self.client.put_manifest(repository, needed.digest, body, needed.media_type)
        self._count("manifests")
        self._mark(repository, "manifest", needed.digest, "pushed", len(body))

    def _put_signature(self, repository: str, needed: Needed) -> None:
        """A signature or attestation by its tag; one that already holds its layers (the
        appliance's signature added) is left as it is, one holding others gets the bundle's
        manifest followed by the layers it lacks (:func:`merged`)."""
        if needed.tag is None:
            self._put_by_digest(repository, needed)
            return
        if self._recorded(repository, "manifest", needed.digest):
            return
        where = f"{repository}:{needed.tag}"
        current = self.client.head_manifest(repository, needed.tag)
        if current is not None and current.digest == needed.digest:
            self._mark(repository, "manifest", needed.digest, "present")
            return
        if (
            current is not None
            and not self.bundle.has(needed.digest)
            and self._tag_carries(repository, needed)
        ):
            self._mark(repository, "manifest", needed.digest, "present")
            return
        body = self._body(repository, needed)
        if current is not None:
            held, _, _ = self.client.get_manifest(repository, needed.tag)
            if carries(body, held, where):
                self._mark(repository, "manifest", needed.digest, "present")
                return
            config_digest = json.loads(body).get("config", {}).get("digest")
            if config_digest and self.bundle.has(config_digest):
                with self.bundle.open_blob(config_digest) as source:
                    config = source.read()
                body, config = merged(body, held, config, where)
                self.client.push_blob(repository, digest_of(config), config)
        self.client.put_manifest(repository, needed.tag, body, needed.media_type)
        self._count("manifests")
        self._mark(repository, "manifest", needed.digest, "pushed", len(body))

    # -- bookkeeping ------------------------------------------------------------------------

    def _run_all(self, work: Callable[[Any], None], items: Iterable[Any]) -> None:
        """``work`` on every item, ``workers`` at a time. The first failure (or an interrupt
        of the main thread) stops the rest: nothing queued starts, a blob midway stops after
        its current chunk (recorded), so a rerun goes on from there."""
        pool = ThreadPoolExecutor(self.options.workers)
        try:
            futures = [pool.submit(work, item) for item in items]
            for future in futures:
                future.result()
        except BaseException:
            self._stop.set()
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        pool.shutdown(wait=True)

    def _mark(
        self, repository: str, kind: str, digest: str, how: str, sent: int = 0, tag: str = ""
    ) -> None:
        self.ledger.mark(self.bundle.id, self.registry, repository, kind, digest, how, sent, tag)

    def _count(self, name: str, amount: int = 1) -> None:
        with self._lock:
            self.counts[name] += amount


def import_bundle(
    bundle: OpenBundle,
    client: RegistryClient,
    ledger: ImportLedger,
    registry: str,
    options: ImportOptions | None = None,
) -> dict[str, Any]:
    """Import ``bundle`` (checked by ``open_bundle``) into ``client``'s registry, recorded in
    ``ledger``; returns the report. Raises :class:`BundleIncompleteError` before any push
    when something is missing, :class:`BundleImportError` when a push or the verify fails."""
    options = options or ImportOptions()
    started = time.monotonic()
    before = RequestCount.of(client)
    bytes_before = client.bytes_uploaded
    importer = Importer(bundle, client, ledger, registry, options)
    manifest = bundle.manifest
    report: dict[str, Any] = {
        "bundle": bundle.id,
        "kind": manifest.get("kind"),
        "lock_digest": manifest.get("lock_digest"),
        "created": manifest.get("created"),
        "registry": registry,
        "entries": len(importer.entries),
        "check_mode": options.check,
    }
    if options.check:
        report.update(importer.completeness())
        report["requests"] = before.since(client)
        return report
    record = ledger.start(
        bundle.id,
        str(manifest.get("kind")),
        str(manifest.get("lock_digest")),
        manifest.get("created"),
        registry,
    )
    status = "failed"
    error: str | None = None
    failure: AirgapError | None = None
    try:
        try:
            report.update(importer.completeness())
        except BundleIncompleteError:
            status = "refused"
            raise
        importer.push_blobs()
        importer.push_manifests()
        if options.verify:
            checked = verify(importer.lock, client, workers=options.workers)
            report["verify"] = {
                key: checked[key] for key in ("entries", "ok", "failed", "problems")
            }
            if checked["failed"]:
                raise BundleImportError(
                    f"bundle {bundle.id}: {checked['failed']} of {checked['entries']} entries "
                    f"differ from its lock after the import: {'; '.join(checked['problems'])}"
                )
        status = "ok"
    except AirgapError as exc:
        error = str(exc)
        failure = exc
        raise
    except BaseException as exc:
        status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
        error = f"{type(exc).__name__}: {exc}"
        raise
    finally:
        report.update(importer.counts)
        report["bytes_sent"] = client.bytes_uploaded - bytes_before
        report["resumed"] = importer.resumed
        report["restarted"] = importer.restarted
        report["requests"] = before.since(client)
        report["seconds"] = round(time.monotonic() - started, 3)
        report["status"] = status
        ledger.finish(
            record,
            status,
            {
                **importer.counts,
                "entries": len(importer.entries),
                "bytes_sent": report["bytes_sent"],
                "duration": report["seconds"],
                "error": error,
            },
        )
        if failure is not None:
            # The caller shows what was done before the failure (BundleImportError has the
            # attribute; any other engine error gets it).
            setattr(failure, "report", {**getattr(failure, "report", {}), **report})  # noqa: B010
    return report
