"""Scanning one digest: each platform manifest laid out on disk and read by trivy, offline.

:meth:`Scanner.scan` takes a ``(repository, digest or tag)`` on the backend. An index's
children are scanned one by one (side by side, up to ``workers`` at a time); children
without a real platform (attestation manifests, ``unknown/unknown``) are skipped, and so is
anything that is not a container image: cosign signatures and attestations, Helm charts,
the DB artifact. Each scanned manifest gives its findings, trivy's JSON report (for the
attestation's predicate), trivy's version, the DB used and the times.

Trivy holds an exclusive lock on its analysis cache for a whole run, so parallel runs each
get a *slot*: a trivy cache directory of their own (``slots/<n>/``, its ``db`` a symlink to
the DB the scan reports, which trivy opens read-only and shares), taken with a file lock, so that
scans in other processes (``airgap scan now`` beside the service) share the slots too. In
server mode (:class:`~airgapped_registry.scanning.server.TrivyServer`) every run is a client
of one ``trivy server`` holding the DB and one cache, and no slot is needed.

Trivy reads a layer's bytes only when its cache lacks that layer's analysis. A slot records
the layers it analysed (per trivy version); a layout leaves those out, so a rescan after a
DB change reads no layer from the registry. If trivy's cache lost one after all, the run
fails naming the layer, and the scan is tried once more with every layer.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from airgapped_registry import defaults
from airgapped_registry.errors import AirgapError, ContentError, RegistryError
from airgapped_registry.oci.manifest import descriptor, image_parts, parse_manifest
from airgapped_registry.oci.mediatypes import INDEX_MEDIA_TYPES
from airgapped_registry.oci.platform import platform_text
from airgapped_registry.scanning import db as vulndb
from airgapped_registry.scanning.layout import BlobCache, remove_layout, write_layout
from airgapped_registry.tools import trivy
from airgapped_registry.tools.process import ToolError, Tools
from airgapped_registry.transport.registry import RegistryClient

IMAGE_CONFIGS = frozenset(
    {
        "application/vnd.oci.image.config.v1+json",
        "application/vnd.docker.container.image.v1+json",
    }
)
# Layer media types of container images (filesystem changesets); anything else (cosign's
# simplesigning payload, a DSSE envelope, a chart) is not an image trivy should read.
_IMAGE_LAYER_PREFIXES = (
    "application/vnd.oci.image.layer.",
    "application/vnd.docker.image.rootfs.",
)
_ATTESTATION_ANNOTATION = "vnd.docker.reference.type"


class ScanError(AirgapError):
    """A digest could not be scanned at all (not found, no DB installed)."""


class _MissingLayer(ToolError):
    """Trivy needed a layer the layout left out: its cache lacks that layer's analysis."""


@dataclass(frozen=True)
class Finding:
    """One vulnerability trivy found in one package."""

    id: str
    package: str
    installed: str
    fixed: str | None
    severity: str
    title: str | None

    def to_json(self) -> dict[str, Any]:
        return dict(vars(self))


@dataclass(frozen=True)
class ManifestScan:
    """The scan of one platform manifest."""

    digest: str
    platform: str | None
    findings: tuple[Finding, ...]
    report: Mapping[str, Any]  # trivy's JSON, ArtifactName set to repository@digest
    trivy_version: str
    db: vulndb.InstalledDb
    started: datetime
    finished: datetime
    blobs_fetched: int
    layers_skipped: int

    def to_json(self) -> dict[str, Any]:
        return {
            "digest": self.digest,
            "platform": self.platform,
            "findings": [finding.to_json() for finding in self.findings],
            "trivy_version": self.trivy_version,
            "db": {"digest": self.db.digest, "updated_at": _iso(self.db.updated_at)},
            "started": _iso(self.started),
            "finished": _iso(self.finished),
            "blobs_fetched": self.blobs_fetched,
            "layers_skipped": self.layers_skipped,
        }


@dataclass(frozen=True)
class NotScanned:
    """A manifest left out (``error`` None: not an image, or no real platform) or one
    whose scan failed (``error``: why)."""

    digest: str
    platform: str | None
    reason: str
    error: bool = False

    def to_json(self) -> dict[str, Any]:
        return dict(vars(self))


@dataclass(frozen=True)
class ScanResult:
    repository: str
    digest: str
    media_type: str
    manifests: tuple[ManifestScan, ...] = ()
    not_scanned: tuple[NotScanned, ...] = ()

    @property
    def failed(self) -> tuple[NotScanned, ...]:
        return tuple(item for item in self.not_scanned if item.error)

    def to_json(self) -> dict[str, Any]:
        return {
            "repository": self.repository,
            "digest": self.digest,
            "media_type": self.media_type,
            "manifests": [scan.to_json() for scan in self.manifests],
            "not_scanned": [item.to_json() for item in self.not_scanned],
        }


class Endpoint(Protocol):
    """A running ``trivy server`` (see :class:`~airgapped_registry.scanning.server.TrivyServer`)."""

    url: str
    token: str
    cache_dir: Path

    def ensure(self, database: vulndb.InstalledDb) -> None: ...


@dataclass
class _Slot:
    """Where one trivy run keeps its cache, and the layers that cache holds."""

    cache_dir: Path
    handle: Any = field(default=None, repr=False)

    def analyzed_dir(self, version: str) -> Path:
        return self.cache_dir / "analyzed" / version

    def analyzed(self, version: str, digests: list[str]) -> set[str]:
        where = self.analyzed_dir(version)
        return {d for d in digests if (where / d.replace(":", "-")).exists()}

    def record(self, version: str, digests: list[str]) -> None:
        where = self.analyzed_dir(version)
        where.mkdir(parents=True, exist_ok=True)
        for digest in digests:
            (where / digest.replace(":", "-")).touch()

    def use_db(self, database: vulndb.InstalledDb) -> None:
        """Point the slot's ``db`` at ``database``'s directory (the slot is held: no run
        reads it meanwhile), so the DB a scan reports is the one trivy read, even when
        another was installed since the scan began."""
        link = self.cache_dir / "db"
        target = os.path.relpath(database.path, self.cache_dir)
        if link.is_symlink() and os.readlink(link) == target:
            return
        temporary = self.cache_dir / f".db-{os.getpid()}-{threading.get_ident()}"
        temporary.unlink(missing_ok=True)
        os.symlink(target, temporary)
        os.replace(temporary, link)

    def forget(self, version: str) -> None:
        for path in self.analyzed_dir(version).glob("*"):
            path.unlink(missing_ok=True)


class Scanner:
    """Scans digests of one registry (the backend) with trivy; see the module docstring.

    ``workers``: trivy runs at a time (and slots, in standalone mode). ``server``: run as
    clients of that trivy server instead.
    """

    def __init__(
        self,
        client: RegistryClient,
        cache_dir: Path,
        trivy_path: str | os.PathLike[str],
        *,
        workers: int = defaults.SCAN_WORKERS,
        tools: Tools | None = None,
        server: Endpoint | None = None,
        blob_cache_bytes: int = defaults.SCAN_BLOB_CACHE_BYTES,
        timeout: float = defaults.SCAN_TIMEOUT,
    ) -> None:
        if workers < 1:
            raise ValueError(f"workers: {workers}, expected at least 1")
        self.client = client
        self.cache_dir = cache_dir
        self.trivy = trivy_path
        self.workers = workers
        self.tools = tools or Tools(timeout=timeout)
        self.server = server
        self.timeout = timeout
        self.blobs = BlobCache(cache_dir / "blobs", blob_cache_bytes)
        self._version: str | None = None
        self._version_lock = threading.Lock()
        self._free_slots = threading.Semaphore(workers)
        self._remove_abandoned_layouts()

    def _remove_abandoned_layouts(self) -> None:
        """Layouts a killed scan left behind: older than any run may take, nobody reads them."""
        cutoff = time.time() - 2 * self.timeout
        for path in (self.cache_dir / "layouts").glob("layout-*"):
            with contextlib.suppress(FileNotFoundError):
                if path.stat().st_mtime < cutoff:
                    remove_layout(path)

    def version(self) -> str:
        """Trivy's version (asked once)."""
        with self._version_lock:
            if self._version is None:
                directory = self.server.cache_dir if self.server else self._slot_dir(0)
                directory.mkdir(parents=True, exist_ok=True)
                self._version = trivy.version(self.tools, self.trivy, directory).version
            return self._version

    def scan(self, repository: str, reference: str) -> ScanResult:
        """Scan ``repository@digest`` (or ``:tag``): every platform manifest it holds."""
        database = vulndb.current(self.cache_dir)
        if database is None:
            raise ScanError(
                f"no vulnerability DB installed under {vulndb.databases(self.cache_dir)} "
                "(airgap scan db update installs it)"
            )
        if self.server is not None:
            self.server.ensure(database)
        try:
            body, media_type, digest = self.client.get_manifest(repository, reference)
        except RegistryError as exc:
            raise ScanError(f"{repository}@{reference}: cannot read the manifest: {exc}") from exc
        where = f"{repository}@{digest}"
        if media_type not in INDEX_MEDIA_TYPES:
            outcome = self._scan_manifest(repository, (body, media_type, digest), None, database)
            return _result(repository, digest, media_type, [outcome])
        document = parse_manifest(body, where)
        children = document.get("manifests")
        if not isinstance(children, list):
            raise ScanError(f"{where}: an index without a manifests list")
        todo: list[tuple[str, str | None]] = []
        outcomes: list[ManifestScan | NotScanned] = []
        for position, item in enumerate(children):
            child = descriptor(item, f"{where} manifests[{position}]")
            platform = platform_text(item.get("platform"))
            annotations = item.get("annotations") or {}
            if annotations.get(_ATTESTATION_ANNOTATION) == "attestation-manifest":
                outcomes.append(NotScanned(child.digest, platform, "attestation manifest"))
            elif platform is None or platform.startswith("unknown/"):
                outcomes.append(NotScanned(child.digest, platform, "no platform"))
            else:
                todo.append((child.digest, platform))
        with ThreadPoolExecutor(max_workers=min(self.workers, max(len(todo), 1))) as pool:
            futures = [
                pool.submit(self._scan_child, repository, child_digest, platform, database)
                for child_digest, platform in todo
            ]
            outcomes += [future.result() for future in futures]
        return _result(repository, digest, media_type, outcomes)

    def _scan_child(
        self, repository: str, digest: str, platform: str | None, database: vulndb.InstalledDb
    ) -> ManifestScan | NotScanned:
        try:
            manifest = self.client.get_manifest(repository, digest)
        except (RegistryError, ContentError) as exc:
            return NotScanned(digest, platform, f"cannot read the manifest: {exc}", error=True)
        return self._scan_manifest(repository, manifest, platform, database)

    def _scan_manifest(
        self,
        repository: str,
        manifest: tuple[bytes, str, str],
        platform: str | None,
        database: vulndb.InstalledDb,
    ) -> ManifestScan | NotScanned:
        body, media_type, digest = manifest
        where = f"{repository}@{digest}"
        try:
            reason = not_an_image(body, media_type, where)
            if reason:
                return NotScanned(digest, platform, reason)
            _, layers = image_parts(parse_manifest(body, where), where)
            layer_digests = [layer.digest for layer in layers]
            version = self.version()
            with self._slot(version, layer_digests) as slot:
                if self.server is None:
                    slot.use_db(database)
                started = datetime.now(UTC)
                skip = slot.analyzed(version, layer_digests)
                try:
                    report, fetched = self._run(repository, manifest, slot, skip)
                except _MissingLayer:
                    # trivy's cache lost what the slot recorded: read every layer this time
                    slot.forget(version)
                    skip = set()
                    report, fetched = self._run(repository, manifest, slot, skip)
                slot.record(version, layer_digests)
                finished = datetime.now(UTC)
        except (ToolError, RegistryError, ContentError) as exc:
            return NotScanned(digest, platform, str(exc), error=True)
        finally:
            self.blobs.prune()
        return ManifestScan(
            digest=digest,
            platform=platform or _report_platform(report),
            findings=findings(report),
            report=report,
            trivy_version=version,
            db=database,
            started=started,
            finished=finished,
            blobs_fetched=fetched,
            layers_skipped=len(skip),
        )

    def _run(
        self, repository: str, manifest: tuple[bytes, str, str], slot: _Slot, skip: set[str]
    ) -> tuple[dict[str, Any], int]:
        digest = manifest[2]
        what = f"trivy scan of {repository}@{digest}"
        layouts = self.cache_dir / "layouts"
        layouts.mkdir(parents=True, exist_ok=True)
        directory = Path(tempfile.mkdtemp(dir=layouts, prefix="layout-"))
        try:
            layout = write_layout(
                self.client, self.blobs, repository, manifest, directory / "image", skip
            )
            if self.server is None:
                argv = trivy.image_argv(
                    self.trivy, layout.path, cache_dir=slot.cache_dir, timeout=self.timeout
                )
                env = trivy.environment()
            else:
                argv = trivy.image_argv(
                    self.trivy, layout.path, server=self.server.url, timeout=self.timeout
                )
                env = trivy.client_environment(self.server.token)
            completed = self.tools.run(trivy.TOOL, argv, env)
            if completed.returncode != 0:
                message = f"{what}: {trivy.failure(completed.stderr)}"
                if skip and trivy.missing_layer(completed.stderr):
                    raise _MissingLayer(message)
                raise ToolError(message)
            report = trivy.report(completed.stdout, what)
            _name_artifact(report, str(layout.path), f"{repository}@{digest}")
            return report, layout.fetched
        finally:
            remove_layout(directory)

    @contextlib.contextmanager
    def _slot(self, version: str, layers: list[str]) -> Iterator[_Slot]:
        if self.server is not None:
            with self._free_slots:
                yield _Slot(self.server.cache_dir)
            return
        with self._free_slots:
            slot = self._take_slot(version, layers)
            try:
                yield slot
            finally:
                fcntl.flock(slot.handle, fcntl.LOCK_UN)
                slot.handle.close()

    def _take_slot(self, version: str, layers: list[str]) -> _Slot:
        """A slot among ``workers``, held by a file lock (other processes take them too).

        A slot whose cache analysed every layer of the image is taken, waiting for one to
        be free if need be: the scan then reads no layer. Without such a slot (a new image),
        any free one.
        """
        while True:
            slots = [_Slot(self._slot_dir(number)) for number in range(self.workers)]
            ready = [slot for slot in slots if len(slot.analyzed(version, layers)) == len(layers)]
            for slot in ready or slots:
                handle = (slot.cache_dir / "lock").open("a")
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    handle.close()
                    continue
                slot.handle = handle
                return slot
            time.sleep(0.05)

    def _slot_dir(self, number: int) -> Path:
        """``slots/<n>``, a trivy cache directory whose ``db`` is the installed DB."""
        directory = self.cache_dir / "slots" / str(number)
        link = directory / "db"
        if not link.is_symlink():
            directory.mkdir(parents=True, exist_ok=True)
            target = os.path.relpath(vulndb.current_link(self.cache_dir), directory)
            with contextlib.suppress(FileExistsError):
                os.symlink(target, link)
        return directory


def not_an_image(body: bytes, media_type: str, where: str) -> str | None:
    """Why a manifest is not a container image trivy should scan, or None if it is one."""
    if media_type in INDEX_MEDIA_TYPES:
        return "a nested index"
    document = parse_manifest(body, where)
    try:
        config, layers = image_parts(document, where)
    except ContentError:
        return f"not an image manifest ({media_type})"
    if config.media_type not in IMAGE_CONFIGS:
        return f"not a container image (config {config.media_type})"
    for layer in layers:
        if not layer.media_type.startswith(_IMAGE_LAYER_PREFIXES):
            return f"not a container image (layer {layer.media_type})"
    return None


def findings(report: Mapping[str, Any]) -> tuple[Finding, ...]:
    """Every vulnerability of every result of a trivy JSON report, once each."""
    found: dict[tuple[str, str, str], Finding] = {}
    for result in report.get("Results") or []:
        for item in result.get("Vulnerabilities") or []:
            finding = Finding(
                id=str(item.get("VulnerabilityID", "")),
                package=str(item.get("PkgName", "")),
                installed=str(item.get("InstalledVersion", "")),
                fixed=item.get("FixedVersion") or None,
                severity=str(item.get("Severity", "UNKNOWN")),
                title=item.get("Title"),
            )
            found.setdefault((finding.id, finding.package, finding.installed), finding)
    return tuple(found.values())


def _name_artifact(report: dict[str, Any], layout: str, reference: str) -> None:
    """Trivy names the artifact after the layout's (temporary) path: name it by its
    reference instead, in ``ArtifactName`` and in each result's ``Target``."""
    if report.get("ArtifactName") == layout:
        report["ArtifactName"] = reference
    for result in report.get("Results") or []:
        target = result.get("Target")
        if isinstance(target, str) and target.startswith(layout):
            result["Target"] = reference + target[len(layout) :]


def _report_platform(report: Mapping[str, Any]) -> str | None:
    config = (report.get("Metadata") or {}).get("ImageConfig") or {}
    if not config.get("os") or not config.get("architecture"):
        return None
    parts = [config["os"], config["architecture"], config.get("variant")]
    return "/".join(str(part) for part in parts if part)


def _result(
    repository: str, digest: str, media_type: str, outcomes: list[ManifestScan | NotScanned]
) -> ScanResult:
    return ScanResult(
        repository,
        digest,
        media_type,
        tuple(item for item in outcomes if isinstance(item, ManifestScan)),
        tuple(item for item in outcomes if isinstance(item, NotScanned)),
    )


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")
