"""The sync: copy what the plan says is missing, so that a tag only ever names complete content.

For each entry the plan marks ``copy``, one worker (``workers`` run side by side) does, in
this order:

1. when the entry's signature policy has keys: ``cosign verify`` the upstream digest at the
   source with each key until one verifies; none does → the entry fails, nothing is written;
2. copy the content **by digest**. An entry with at most ``engine_copy_max_bytes`` left to
   upload is copied by the engine: blobs mounted where its ledger knows they are, else
   mounted from the repository itself or uploaded (fetched from the source, digest-checked),
   then the children by digest; the top manifest is kept for step 5. A heavier one is
   copied by skopeo (``--preserve-digests``): an index with ``--all`` (the index is written
   by skopeo after its children), a single manifest as it is; a ``filter`` entry copies each
   kept child by digest, then writes the index the lock recorded
   (:func:`~airgapped_registry.mirror.lock.filtered_index` of the upstream index, checked against
   the lock's digest). A classic Helm chart is fetched, checked against the lock and pushed
   as :func:`~airgapped_registry.mirror.lock.chart_manifest` by digest;
3. copy the cosign signatures, attestations and SBOMs the lock lists (small manifests: read
   from the source into memory, digest-checked, pushed blob by blob, then tagged);
4. after skopeo, check the destination holds the lock's manifest by digest (``GET``, the
   digest is verified on the bytes) and that it lists the children / blobs the lock
   recorded (after the engine, the bytes it checked in step 2 are those);
5. only then write ``destination:tag``: a ``PUT`` of those same bytes (same digest).

Both copiers check every blob they copy against its digest (a corrupt upstream blob fails
the copy) and skip blobs the destination already holds (a rerun after an interrupted one
sends only what is missing); the registry refuses a manifest whose blobs or children it does
not hold. A failure before step 5 leaves the tag where it was.

Each entry is retried with exponential backoff on transient failures (network, 5xx); digest
mismatches, failed signature verifications and stale locks are not retried. Without
``keep_going``, the first failure stops the run from starting further entries.
"""

from __future__ import annotations

import functools
import json
import os
import re
import subprocess
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from airgapped_registry.errors import AirgapError, DigestMismatchError, RegistryError
from airgapped_registry.mirror.lock import Blob, Lock, LockEntry, Manifest
from airgapped_registry.mirror.plan import (
    PLAN_WORKERS,
    Plan,
    PlannedEntry,
    destination_reference,
    fingerprint,
    plan,
)
from airgapped_registry.mirror.sources import source_access
from airgapped_registry.mirror.spec import MirrorSpec, Source
from airgapped_registry.oci.helm import chart_manifest
from airgapped_registry.oci.manifest import filtered_index
from airgapped_registry.oci.reference import digest_of
from airgapped_registry.state.store import EntryState, StateStore, summary_line
from airgapped_registry.transport.auth import AuthenticatingClient, credentials_for, read_auths
from airgapped_registry.transport.counters import RequestCount
from airgapped_registry.transport.registry import RegistryClient
from airgapped_registry.transport.throttle import Throttle
from airgapped_registry.transport.urls import read_url

OK = "ok"
FAILED = "failed"
SKIPPED = "skipped"
ENGINE = "engine"
SKOPEO = "skopeo"
# Above this, per entry, skopeo streams the blobs; below, its start-up, pings and per-blob
# checks cost more than the bytes (see docs/performance.md).
ENGINE_COPY_MAX_BYTES = 16 * 1024 * 1024

Runner = Callable[
    [Sequence[str], Mapping[str, str] | None, float], "subprocess.CompletedProcess[str]"
]
UrlFetcher = Callable[[str], bytes]
Progress = Callable[["EntryResult", int, int], None]

_DIGEST = r"sha256:[0-9a-f]{64}"
_COPYING = re.compile(rf"^Copying (blob|config) ({_DIGEST})", re.MULTILINE)
_UPLOADED = re.compile(rf"Upload of layer ({_DIGEST}) complete")
_FATAL = re.compile(r'level=fatal msg="((?:[^"\\]|\\.)*)"')
_DIGEST_MISMATCH = re.compile(rf"[Dd]igest did not match, expected ({_DIGEST}), got ({_DIGEST})")
_UPLOAD_STATE = re.compile(r"\?_state=[^\s\"]*")


def run_command(
    argv: Sequence[str], env: Mapping[str, str] | None, timeout: float
) -> subprocess.CompletedProcess[str]:
    """The default runner: the program's output captured as text, no shell."""
    return subprocess.run(
        list(argv),
        env=dict(env) if env is not None else None,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@dataclass(frozen=True)
class Destination:
    """The registry a sync writes to, with what skopeo and the engine need to reach it.

    ``auth_file``: a docker-style auth.json holding an entry for this registry (else the
    registry is reached without credentials).
    """

    url: str
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    auth_file: str | None = None
    timeout: float = 30

    @property
    def address(self) -> str:
        return urlsplit(self.url).netloc

    @property
    def insecure(self) -> bool:
        return urlsplit(self.url).scheme == "http"

    def client(self) -> RegistryClient:
        options: dict[str, Any] = {
            "ca_file": self.ca_file,
            "cert_file": self.cert_file,
            "key_file": self.key_file,
            "timeout": self.timeout,
        }
        if self.auth_file:
            found = credentials_for(read_auths(self.auth_file, None), self.address)
            if found is None:
                raise AirgapError(f"credentials file {self.auth_file}: no entry for {self.address}")
            username, password = found
            return AuthenticatingClient(self.url, username=username, password=password, **options)
        return RegistryClient(self.url, **options)


@dataclass(frozen=True)
class SyncOptions:
    """How a sync runs.

    ``attempts``: tries per entry (transient failures only), waiting ``backoff`` seconds
    doubled after each. ``retry_times``: skopeo's own retries of one copy. ``timeout``: the
    longest one skopeo or cosign run may take, in seconds. ``engine_copy_max_bytes``: an entry
    whose blobs still to upload (after those the destination holds or can mount) weigh at
    most this much is copied by the engine itself over its open connections; a heavier one
    by skopeo. 0: skopeo copies every entry.
    """

    workers: int = 4
    attempts: int = 3
    backoff: float = 1.0
    retry_times: int = 2
    keep_going: bool = False
    timeout: float = 3600
    skopeo: str = "skopeo"
    cosign: str = "cosign"
    engine_copy_max_bytes: int = ENGINE_COPY_MAX_BYTES

    def __post_init__(self) -> None:
        if self.workers < 1 or self.attempts < 1 or self.retry_times < 0:
            raise ValueError("sync options: workers and attempts must be >= 1, retry_times >= 0")
        if self.engine_copy_max_bytes < 0:
            raise ValueError("sync options: engine_copy_max_bytes must be >= 0")
        if self.backoff < 0 or self.timeout <= 0:
            raise ValueError("sync options: backoff must be >= 0 and timeout > 0")


@dataclass(frozen=True)
class EntryResult:
    """What happened to one entry: ``ok`` (copied), ``failed``, or ``skipped``.

    ``in_sync``: the destination holds what the lock entry asks for (copied now, or found up
    to date). ``bytes``: blob bytes sent to the destination for it.
    """

    planned: PlannedEntry
    result: str
    detail: str
    reference: str
    in_sync: bool = False
    bytes: int = 0
    duration: float = 0.0
    attempts: int = 0
    error: str | None = None
    copier: str | None = None

    @property
    def entry(self) -> LockEntry:
        return self.planned.entry

    def to_json(self) -> dict[str, Any]:
        return {
            "entry": self.entry.reference,
            "destination": self.reference,
            "result": self.result,
            "detail": self.detail,
            "digest": self.entry.digest,
            "bytes": self.bytes,
            "duration": round(self.duration, 3),
            "attempts": self.attempts,
            "error": self.error,
            "copier": self.copier,
        }

    def state(self, run_id: int | None, fingerprint: str) -> EntryState:
        address, _, _ = self.reference.partition("/")
        return EntryState(
            reference=self.reference,
            registry=address,
            repository=self.entry.destination,
            tag=self.entry.tag,
            digest=self.entry.digest,
            result=self.result,
            in_sync=self.in_sync,
            detail=self.detail,
            bytes=self.bytes,
            duration=round(self.duration, 3),
            error=self.error,
            fingerprint=fingerprint,
            run_id=run_id,
        )


class EntryFailure(AirgapError):
    """An entry could not be copied; ``permanent`` failures are not retried."""

    def __init__(self, message: str, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


# -- skopeo and cosign ---------------------------------------------------------------------


def skopeo_copy_argv(
    skopeo: str,
    source: str,
    destination: str,
    *,
    index: bool,
    retry_times: int,
    source_options: Sequence[str] = (),
    destination_options: Sequence[str] = (),
) -> list[str]:
    """The one skopeo command the sync runs (flags common to skopeo 1.9 and 1.18).

    ``--insecure-policy``: the appliance's trust is digest pinning plus cosign, checked by the
    engine; a host's ``policy.json`` must not change what a sync does. ``--remove-signatures``:
    skopeo's own (GPG/sigstore-attachment) signatures are not used; cosign signatures are
    copied by the engine. ``--debug``: its log says which blobs it uploaded, which is how
    the bytes actually sent are counted.
    """
    argv = [skopeo, "--insecure-policy", "--debug", "copy", "--preserve-digests"]
    argv += ["--remove-signatures", f"--retry-times={retry_times}"]
    if index:
        argv.append("--all")
    return [*argv, *source_options, *destination_options, source, destination]


def uploaded_blobs(stdout: str, stderr: str) -> Counter[str]:
    """Digests of the blobs a ``skopeo --debug copy`` run uploaded, with how many times.

    skopeo logs ``Upload of layer D complete`` (configs too) after each upload it finished;
    blobs found present, whether by its reuse check, by the check right before an upload
    (another copy finished it meanwhile) or by a cross-repository mount, are not uploaded.
    Without a debug log, every blob skopeo printed as handled counts as uploaded.
    """
    uploaded = Counter(_UPLOADED.findall(stderr))
    if uploaded or "level=debug" in stderr:
        return uploaded
    return Counter(digest for _, digest in _COPYING.findall(stdout))


def tool_error(output: str) -> str:
    """The message of a failed skopeo or cosign run, without upload-session tokens."""
    fatal = _FATAL.findall(output)
    if fatal:
        message = fatal[-1].replace('\\"', '"')
    else:
        lines = [
            line.strip()
            for line in output.splitlines()
            if line.strip() and "level=debug" not in line and not line.startswith("WARNING")
        ]
        errors = [line for line in lines if line.startswith("Error")]
        message = (errors or lines or ["no output"])[-1]
    return _UPLOAD_STATE.sub("", message)


def _skopeo_failure(completed: subprocess.CompletedProcess[str]) -> EntryFailure:
    message = tool_error(completed.stderr + "\n" + completed.stdout)
    mismatch = _DIGEST_MISMATCH.search(message)
    if mismatch:
        return EntryFailure(
            f"blob {mismatch[1]}: the source served content with digest {mismatch[2]} "
            "(corrupt upstream blob); refused, nothing tagged",
            permanent=True,
        )
    permanent = "manifest unknown" in message.lower()
    return EntryFailure(f"skopeo copy failed (exit {completed.returncode}): {message}", permanent)


# -- the sources ---------------------------------------------------------------------------


@dataclass
class _SourceAccess:
    """A source as the engine (client), skopeo (flags) and cosign (flags, env) reach it.

    ``get_manifest`` and ``get_blob`` are the engine's reads, spaced by the source's
    ``rate_limit`` (skopeo's and cosign's requests are not).
    """

    source: Source
    client: RegistryClient
    before: RequestCount
    skopeo_options: list[str]
    cosign_options: list[str]
    cosign_env: dict[str, str]
    throttle: Throttle

    def get_manifest(self, repository: str, digest: str) -> bytes:
        self.throttle.wait()
        return self.client.get_manifest(repository, digest)[0]

    def get_blob(self, repository: str, digest: str) -> bytes:
        self.throttle.wait()
        return self.client.get_blob(repository, digest)


def _source_access(
    spec: MirrorSpec, source: Source, workdir: Path, timeout: float
) -> _SourceAccess:
    access = source_access(spec, source, timeout)
    client = access.client()  # validates TLS files, credentials
    directory = workdir / f"source-{source.name}"
    directory.mkdir(mode=0o700)
    skopeo: list[str] = []
    cosign: list[str] = []
    if source.insecure:
        skopeo.append("--src-tls-verify=false")
        cosign.append("--allow-http-registry")
    else:
        skopeo.append("--src-tls-verify=true")
        cert_dir = spec.resolve_path(source.cert_dir) if source.cert_dir else None
        ca_files = [spec.resolve_path(source.ca_file)] if source.ca_file else []
        pair: tuple[Path, Path] | None = None
        if cert_dir is not None:
            ca_files += sorted(cert_dir.glob("*.crt"))
            for cert in sorted(cert_dir.glob("*.cert")):
                pair = (cert, cert.with_suffix(".key"))
        if source.ca_file:
            # skopeo reads CAs from a directory only: give it one with the CA file and the
            # cert_dir's files.
            certs = directory / "certs"
            certs.mkdir()
            (certs / "ca-file.crt").symlink_to(ca_files[0])
            if cert_dir is not None:
                for path in sorted(cert_dir.iterdir()):
                    if path.suffix in (".crt", ".cert", ".key"):
                        (certs / path.name).symlink_to(path)
            skopeo += ["--src-cert-dir", str(certs)]
        elif cert_dir is not None:
            skopeo += ["--src-cert-dir", str(cert_dir)]
        if ca_files:
            bundle = directory / "ca-bundle.pem"
            bundle.write_text("".join(path.read_text() + "\n" for path in ca_files))
            cosign += ["--registry-cacert", str(bundle)]
        if pair:
            cosign += [
                "--registry-client-cert",
                str(pair[0]),
                "--registry-client-key",
                str(pair[1]),
            ]
    docker_config = directory / "docker"
    docker_config.mkdir(mode=0o700)
    if source.credentials:
        if source.credentials.file:
            text = spec.resolve_path(source.credentials.file).read_text(encoding="utf-8")
        else:
            text = os.environ.get(source.credentials.env or "", "")
        for path in (directory / "auth.json", docker_config / "config.json"):
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
                handle.write(text)
        skopeo += ["--src-authfile", str(directory / "auth.json")]
    else:
        skopeo.append("--src-no-creds")
    # cosign reads credentials from $DOCKER_CONFIG only: the source's, or none at all.
    env = {key: value for key, value in os.environ.items() if key != "COSIGN_REPOSITORY"}
    env["DOCKER_CONFIG"] = str(docker_config)
    throttle = access.throttle()
    return _SourceAccess(source, client, RequestCount.of(client), skopeo, cosign, env, throttle)


def _destination_options(destination: Destination, workdir: Path) -> list[str]:
    options: list[str] = []
    if destination.insecure:
        options.append("--dest-tls-verify=false")
    else:
        options.append("--dest-tls-verify=true")
        if destination.ca_file or destination.cert_file:
            certs = workdir / "destination-certs"
            certs.mkdir(mode=0o700)
            files = (
                ("ca.crt", destination.ca_file),
                ("client.cert", destination.cert_file),
                ("client.key", destination.key_file),
            )
            for name, path in files:
                if path:
                    (certs / name).symlink_to(Path(path).resolve())
            options += ["--dest-cert-dir", str(certs)]
    if destination.auth_file:
        options += ["--dest-authfile", str(destination.auth_file)]
    else:
        options.append("--dest-no-creds")
    return options


# -- copying one entry ---------------------------------------------------------------------


class _Copier:
    def __init__(
        self,
        destination: Destination,
        client: RegistryClient,
        spec: MirrorSpec | None,
        options: SyncOptions,
        workdir: Path,
        runner: Runner,
        fetch_url: UrlFetcher,
        manifests: Mapping[str, bytes] | None = None,
    ) -> None:
        self.destination = destination
        self.client = client
        self.spec = spec
        self.options = options
        self.workdir = workdir
        self.runner = runner
        self.fetch_url = fetch_url
        self.destination_options = _destination_options(destination, workdir)
        self.tool_runs: Counter[str] = Counter()
        self.copies: Counter[str] = Counter()
        self.manifests = manifests or {}
        # The ledger: blobs the destination holds, per repository, as this run knows for sure
        # (a tag resolving to a manifest proves its blobs are linked in that repository), and
        # one repository per digest to mount it from.
        self._held: set[tuple[str, str]] = set()
        self._where: dict[str, str] = {}
        self._sources: dict[str, _SourceAccess] = {}
        self._claims: dict[str, threading.Event] = {}
        self._lock = threading.Lock()

    def close(self) -> None:
        for access in self._sources.values():
            access.client.close()

    def holds(self, repository: str, blobs: Iterable[Blob]) -> None:
        """Record in the ledger that ``repository`` holds ``blobs`` (seen, placed, or vouched
        for by a tag naming a manifest that references them)."""
        with self._lock:
            for blob in blobs:
                self._held.add((repository, blob.digest))
                self._where.setdefault(blob.digest, repository)

    def source_requests(self) -> dict[str, dict[str, Any]]:
        return {
            name: access.before.since(access.client)
            for name, access in sorted(self._sources.items())
        }

    def run(self, planned: PlannedEntry, stop: threading.Event) -> EntryResult:
        reference = destination_reference(self.destination.address, planned.entry)
        if stop.is_set():
            detail = "not attempted: an earlier entry failed (use --keep-going to go on)"
            return EntryResult(planned, SKIPPED, detail, reference)
        done = self._claim(planned)
        try:
            return self._attempts(planned, reference, stop)
        finally:
            done.set()

    def _claim(self, planned: PlannedEntry) -> threading.Event:
        """Wait for the entries already moving blobs this one needs; claim the others.

        Two skopeo runs that need the same missing blob at the same time both upload it (into
        their own repositories); one after the other, the second finds it or mounts it from
        the first's repository. Waits only go to entries that claimed earlier, so they cannot
        form a cycle.
        """
        done = threading.Event()
        with self._lock:
            others = {
                id(claim): claim
                for blob in planned.blobs
                if (claim := self._claims.get(blob.digest)) is not None and not claim.is_set()
            }
            for blob in planned.blobs:
                self._claims.setdefault(blob.digest, done)
        for claim in others.values():
            claim.wait()
        return done

    def _attempts(
        self, planned: PlannedEntry, reference: str, stop: threading.Event
    ) -> EntryResult:
        started = time.monotonic()
        attempt = 0
        while True:
            attempt += 1
            try:
                sent, copier = self._copy(planned)
            except (AirgapError, OSError, ValueError) as exc:
                permanent, message = _classify(exc)
                if permanent or attempt >= self.options.attempts:
                    if not self.options.keep_going:
                        stop.set()
                    tries = f" (after {attempt} attempts)" if attempt > 1 else ""
                    return EntryResult(
                        planned,
                        FAILED,
                        "failed",
                        reference,
                        duration=time.monotonic() - started,
                        attempts=attempt,
                        error=f"{planned.reference}: {message}{tries}",
                    )
                time.sleep(self.options.backoff * 2 ** (attempt - 1))
                continue
            detail = "signatures copied" if planned.content_present else "copied"
            return EntryResult(
                planned,
                OK,
                detail,
                reference,
                in_sync=True,
                bytes=sent,
                duration=time.monotonic() - started,
                attempts=attempt,
                copier=copier,
            )

    def _copy(self, planned: PlannedEntry) -> tuple[int, str | None]:
        """Copy one entry; ``(bytes sent, who copied the content)``."""
        entry = planned.entry
        sent = 0
        body: bytes | None = None
        copier = None
        if entry.archive is not None:
            if not planned.content_present:
                sent += self._copy_classic_chart(entry)
                copier = ENGINE
        else:
            access = self._source(entry)
            keys = self._policy_keys(entry)
            if keys:
                self._verify_signature(entry, access, keys)
            if not planned.content_present:
                copied = self._engine_copy(entry, access)
                if copied is None:
                    sent += self._copy_content(entry, access)
                    copier = SKOPEO
                else:
                    sent, body = copied
                    copier = ENGINE
            sent += self._copy_signatures(entry, access, check_all=planned.forced)
        if body is None:
            body = self._check_destination(entry)
        if not planned.content_present:
            self.client.put_manifest(entry.destination, entry.tag, body, entry.manifest.media_type)
        self.holds(entry.destination, _content_blobs(entry))
        if copier:
            with self._lock:
                self.copies[copier] += 1
        return sent, copier

    def _engine_copy(self, entry: LockEntry, access: _SourceAccess) -> tuple[int, bytes] | None:
        """Copy an entry's content with the engine's own requests, or None: skopeo's job.

        Each blob the ledger does not place in the destination repository is mounted from a
        repository the ledger names, or else mounted from the destination repository itself
        (found there: 201) and, where that opens an upload instead, fetched from the source
        (digest-checked in memory) and uploaded (one ``PUT``). When those unknown blobs
        together exceed the limit, each is first looked up (``HEAD``) to see what is really
        missing. Then the children are written by digest; the top manifest is returned,
        digest-checked against the lock, for the caller to write under the tag last. Returns
        None, having sent nothing, when the bytes to upload exceed ``engine_copy_max_bytes``.
        """
        limit = self.options.engine_copy_max_bytes
        if limit <= 0:
            return None
        repository, upstream = entry.destination, entry.repository
        assert upstream is not None
        manifests = _content_manifests(entry)
        todo: list[tuple[Blob, str]] = []
        unknown: list[Blob] = []
        for blob in _content_blobs(entry):
            with self._lock:
                if (repository, blob.digest) in self._held:
                    continue
                mount_from = self._where.get(blob.digest)
            if mount_from is None:
                unknown.append(blob)
            else:
                todo.append((blob, mount_from))
        if sum(blob.size for blob in unknown) <= limit:
            # Even if none is there, the engine may send them all: one mount-or-upload
            # request each, from the repository itself.
            todo += [(blob, repository) for blob in unknown]
        else:
            upload = 0
            for blob in unknown:
                if self.client.blob_exists(repository, blob.digest):
                    self.holds(repository, [blob])
                    continue
                upload += blob.size
                if upload > limit:
                    return None
                todo.append((blob, repository))
        sent = 0
        for blob, mount_from in todo:
            fetch = functools.partial(self._source_blob, access, upstream, blob)
            try:
                how = self.client.place_blob(repository, blob.digest, fetch, mount_from)
            except RegistryError as exc:
                if mount_from != repository or exc.status not in (400, 404, 405):
                    raise
                # A registry that refuses a mount from the repository itself: ask, then upload.
                how = "uploaded" if self.client.push_blob(repository, blob.digest, fetch) else ""
            if how == "uploaded":
                sent += blob.size
            self.holds(repository, [blob])
        if entry.children:
            for child in manifests:
                body = self._source_manifest(access, upstream, child)
                self.client.put_manifest(repository, child.digest, body, child.media_type)
        top = self._source_manifest(access, upstream, entry.manifest, entry.upstream_digest)
        if entry.children and entry.digest != entry.upstream_digest:
            top = filtered_index(top, {child.digest for child in manifests})
        if digest_of(top) != entry.digest:
            raise EntryFailure(
                f"the index to write is {digest_of(top)}, the lock says {entry.digest}",
                permanent=True,
            )
        return sent, top

    def _source_blob(self, access: _SourceAccess, repository: str, blob: Blob) -> bytes:
        try:
            data = access.get_blob(repository, blob.digest)
        except DigestMismatchError as exc:
            raise EntryFailure(
                f"blob {blob.digest}: the source served content with digest {exc.actual} "
                "(corrupt upstream blob); refused, nothing tagged",
                permanent=True,
            ) from exc
        if len(data) != blob.size:
            raise EntryFailure(
                f"blob {blob.digest}: {len(data)} bytes, the lock says {blob.size}", True
            )
        return data

    def _source_manifest(
        self, access: _SourceAccess, repository: str, manifest: Manifest, digest: str | None = None
    ) -> bytes:
        """A manifest's bytes by digest: from the relock's cache, else from the source."""
        digest = digest or manifest.digest
        body = self.manifests.get(digest)
        if body is None or digest_of(body) != digest:
            body = access.get_manifest(repository, digest)
        if digest == manifest.digest and len(body) != manifest.size:
            raise EntryFailure(
                f"manifest {digest}: {len(body)} bytes, the lock says {manifest.size}", True
            )
        return body

    def _source(self, entry: LockEntry) -> _SourceAccess:
        name = entry.source
        if self.spec is None or name is None or name not in self.spec.sources:
            where = self.spec.path if self.spec else "no mirror list given"
            raise EntryFailure(f"source {name!r} is not in the mirror list ({where})", True)
        with self._lock:
            if name not in self._sources:
                try:
                    self._sources[name] = _source_access(
                        self.spec, self.spec.sources[name], self.workdir, self.destination.timeout
                    )
                except (AirgapError, OSError) as exc:
                    # Files named by the list (CA, client pair, credentials): a retry cannot help.
                    cause = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
                    raise EntryFailure(f"source {name!r}: {cause}", permanent=True) from exc
            access = self._sources[name]
        if access.source.registry != entry.registry:
            raise EntryFailure(
                f"the lock reads source {name!r} at {entry.registry}, the mirror list at "
                f"{access.source.registry}: lock again",
                permanent=True,
            )
        return access

    def _policy_keys(self, entry: LockEntry) -> list[Path]:
        assert self.spec is not None
        for candidate in self.spec.entries:
            if (
                candidate.url is None
                and candidate.kind == entry.kind
                and candidate.source == entry.source
                and candidate.repository == entry.repository
                and candidate.destination == entry.destination
                and entry.tag in candidate.selection.choose([entry.tag])
            ):
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

    def _verify_signature(self, entry: LockEntry, access: _SourceAccess, keys: list[Path]) -> None:
        reference = f"{entry.registry}/{entry.repository}@{entry.upstream_digest}"
        problems = []
        for key in keys:
            argv = [self.options.cosign, "verify", "--key", str(key), "--insecure-ignore-tlog"]
            completed = self._run(
                "cosign", [*argv, *access.cosign_options, reference], access.cosign_env
            )
            if completed.returncode == 0:
                return
            problems.append(f"{key.name}: {tool_error(completed.stderr)}")
        raise EntryFailure(
            f"upstream signature of {reference} does not verify: {'; '.join(problems)}",
            permanent=True,
        )

    def _copy_content(self, entry: LockEntry, access: _SourceAccess) -> int:
        if entry.children and entry.digest != entry.upstream_digest:
            kept = [child for child in entry.children if child.copy]
            sent = sum(self._skopeo(entry, access, child.digest, index=False) for child in kept)
            upstream = access.get_manifest(entry.repository, entry.upstream_digest)
            body = filtered_index(upstream, {child.digest for child in kept})
            if digest_of(body) != entry.digest:
                raise EntryFailure(
                    f"the filtered index is {digest_of(body)}, the lock says {entry.digest}",
                    permanent=True,
                )
            self.client.put_manifest(
                entry.destination, entry.digest, body, entry.manifest.media_type
            )
            return sent
        return self._skopeo(entry, access, entry.upstream_digest, index=bool(entry.children))

    def _skopeo(self, entry: LockEntry, access: _SourceAccess, digest: str, *, index: bool) -> int:
        argv = skopeo_copy_argv(
            self.options.skopeo,
            f"docker://{entry.registry}/{entry.repository}@{digest}",
            f"docker://{self.destination.address}/{entry.destination}@{digest}",
            index=index,
            retry_times=self.options.retry_times,
            source_options=access.skopeo_options,
            destination_options=self.destination_options,
        )
        completed = self._run("skopeo", argv, None)
        if completed.returncode != 0:
            raise _skopeo_failure(completed)
        sizes = {blob.digest: blob.size for blob in entry.blobs()}
        uploaded = uploaded_blobs(completed.stdout, completed.stderr)
        return sum(sizes.get(digest, 0) * count for digest, count in uploaded.items())

    def _copy_signatures(
        self, entry: LockEntry, access: _SourceAccess, check_all: bool = False
    ) -> int:
        """Signature manifests are small: the engine copies them, digest-checked, blob by blob.

        A signature tag already naming the locked digest is skipped, unless ``check_all``
        (``--force``): then each of its blobs is looked up and put back if missing.
        """
        sent = 0
        for signature in entry.signatures:
            if not signature.copy:
                continue
            current = self.client.head_manifest(entry.destination, signature.tag)
            if current is not None and current.digest == signature.digest and not check_all:
                continue
            assert entry.repository is not None
            body = access.get_manifest(entry.repository, signature.digest)
            for blob in signature.blobs():
                fetch = functools.partial(access.get_blob, entry.repository, blob.digest)
                if self.client.push_blob(entry.destination, blob.digest, fetch):
                    sent += blob.size
            self.client.put_manifest(entry.destination, signature.tag, body, signature.media_type)
        return sent

    def _copy_classic_chart(self, entry: LockEntry) -> int:
        assert entry.archive is not None and entry.manifest.config is not None
        archive = self.fetch_url(entry.archive.url)
        if digest_of(archive) != entry.archive.digest:
            raise EntryFailure(
                f"chart archive {entry.archive.url}: digest {digest_of(archive)}, the lock "
                f"says {entry.archive.digest}",
                permanent=True,
            )
        config, body = chart_manifest(archive)
        if digest_of(body) != entry.digest:
            raise EntryFailure(
                f"chart archive {entry.archive.url}: its OCI manifest is {digest_of(body)}, the "
                f"lock says {entry.digest}",
                permanent=True,
            )
        sent = 0
        for data, blob in ((config, entry.manifest.config), (archive, entry.manifest.layers[0])):
            if self.client.push_blob(entry.destination, blob.digest, data):
                sent += len(data)
        self.client.put_manifest(entry.destination, entry.digest, body, entry.manifest.media_type)
        return sent

    def _check_destination(self, entry: LockEntry) -> bytes:
        """The entry's manifest as the destination holds it by digest, checked against the lock."""
        try:
            body, _, _ = self.client.get_manifest(entry.destination, entry.digest)
        except DigestMismatchError as exc:
            raise EntryFailure(
                f"destination serves other bytes for {entry.digest}: {exc}", True
            ) from exc
        if len(body) != entry.manifest.size:
            raise EntryFailure(
                f"destination manifest {entry.digest}: {len(body)} bytes, the lock says "
                f"{entry.manifest.size}",
                permanent=True,
            )
        document = json.loads(body)
        if entry.children:
            listed = [item.get("digest") for item in document.get("manifests", [])]
            expected = [
                child.digest
                for child in entry.children
                if child.copy or entry.digest == entry.upstream_digest
            ]
        else:
            layers = document.get("layers") or []
            listed = [
                document.get("config", {}).get("digest"),
                *(item.get("digest") for item in layers),
            ]
            expected = [blob.digest for blob in entry.manifest.blobs()]
        if listed != expected:
            raise EntryFailure(
                f"destination manifest {entry.digest} lists {len(listed)} descriptors that differ "
                "from the lock's",
                permanent=True,
            )
        return body

    def _run(
        self, tool: str, argv: Sequence[str], env: Mapping[str, str] | None
    ) -> subprocess.CompletedProcess[str]:
        with self._lock:
            self.tool_runs[tool] += 1
        try:
            return self.runner(argv, env, self.options.timeout)
        except FileNotFoundError as exc:
            raise EntryFailure(f"{argv[0]}: not found ({tool} is needed to sync)", True) from exc
        except subprocess.TimeoutExpired as exc:
            raise EntryFailure(f"{tool} did not finish within {self.options.timeout:g} s") from exc


def _content_manifests(entry: LockEntry) -> list[Manifest]:
    """The manifests holding an entry's content: the children it copies, or itself."""
    if entry.children:
        return [child for child in entry.children if child.copy]
    return [entry.manifest]


def _content_blobs(entry: LockEntry) -> list[Blob]:
    """The configs and layers of :func:`_content_manifests`, each digest once."""
    return list({b.digest: b for m in _content_manifests(entry) for b in m.blobs()}.values())


def _classify(exc: BaseException) -> tuple[bool, str]:
    """``(permanent, message)`` of a failure: what a retry cannot fix is permanent."""
    if isinstance(exc, EntryFailure):
        return exc.permanent, str(exc)
    if isinstance(exc, DigestMismatchError):
        return True, str(exc)
    if isinstance(exc, RegistryError):
        transient = exc.status is None or exc.status == 429 or exc.status >= 500
        return not transient, str(exc)
    if isinstance(exc, OSError):
        return False, exc.strerror or str(exc)
    return False, str(exc)


# -- the run -------------------------------------------------------------------------------


def sync(
    lock: Lock | Callable[[], Lock],
    destination: Destination,
    spec: MirrorSpec | None = None,
    *,
    options: SyncOptions | None = None,
    state: StateStore | None = None,
    lock_path: str | None = None,
    runner: Runner = run_command,
    fetch_url: UrlFetcher | None = None,
    progress: Progress | None = None,
    manifests: Mapping[str, bytes] | None = None,
    previous: Lock | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """Bring ``destination`` in line with ``lock``; returns the run's report.

    ``spec`` (the mirror list the lock came from) tells how to reach each source and which
    signature policy applies; it is needed only when something must be copied. With
    ``state``, the plan uses the fingerprints of the last sync, each entry's outcome is
    recorded as it finishes, and the run enters the run log. ``progress`` is called from the
    calling thread after each copied or failed entry, with the count done and the total.

    ``manifests`` (digest → bytes, e.g. what the relock just fetched) spares the engine's
    copies fetching those manifests again; ``previous`` (the lock this one replaced) tells
    which blobs a destination tag that still names a previous digest already holds.

    ``lock`` may be a function making the lock (a relock against the sources): it is called
    while the destination tags ``previous`` names are HEADed side by side, so that the
    source and the destination work at the same time.

    ``force`` copies every entry again (see :func:`~airgapped_registry.mirror.plan.plan`) and
    trusts no tag for the ledger: what a deep verify found missing is put back.
    """
    options = options or SyncOptions()
    started = time.monotonic()
    with destination.client() as client:
        before = RequestCount.of(client)
        fingerprints = state.fingerprints(destination.address) if state else None
        currents: dict[tuple[str, str], Any] = {}
        if callable(lock):
            keys = [entry.key for entry in previous.entries] if previous else []
            with ThreadPoolExecutor(PLAN_WORKERS, thread_name_prefix="airgap-plan") as pool:
                heads = {key: pool.submit(client.head_manifest, *key) for key in keys}
                try:
                    lock = lock()
                finally:
                    for future in heads.values():
                        future.cancel()
                currents = {key: f.result() for key, f in heads.items() if not f.cancelled()}
        the_plan = plan(
            lock,
            client,
            fingerprints=fingerprints,
            workers=max(options.workers, PLAN_WORKERS),
            currents=currents,
            force=force,
        )
        run_id = state.start_run(destination.url, lock_path) if state else None
        results: dict[tuple[str, str], EntryResult] = {}
        for planned in the_plan.up_to_date:
            reference = destination_reference(destination.address, planned.entry)
            results[planned.entry.key] = EntryResult(
                planned, SKIPPED, "up to date", reference, in_sync=True
            )
        if state:
            for result in results.values():
                state.record(result.state(run_id, fingerprint(result.entry)))
        with tempfile.TemporaryDirectory(prefix="airgap-sync-") as workdir:
            copier = _Copier(
                destination,
                client,
                spec,
                options,
                Path(workdir),
                runner,
                fetch_url or read_url,
                manifests,
            )
            if not force:
                _seed_ledger(copier, the_plan, previous)
            try:
                _copy_all(the_plan, copier, options, results, state, run_id, progress)
            finally:
                copier.close()
            sources = copier.source_requests()
            tools = dict(sorted(copier.tool_runs.items()))
            copies = dict(sorted(copier.copies.items()))
        requests = {"destination": before.since(client), "sources": sources}
    ordered = [results[entry.key] for entry in lock.entries]
    copied = sum(result.result == OK for result in ordered)
    failed = [result for result in ordered if result.result == FAILED]
    not_attempted = sum(result.result == SKIPPED and not result.in_sync for result in ordered)
    sent = sum(result.bytes for result in ordered)
    duration = time.monotonic() - started
    counts = {"entries": len(ordered), "copied": copied, "failures": len(failed)}
    if state and run_id is not None:
        summary = state.finish_run(
            run_id,
            skipped=len(ordered) - copied - len(failed),
            bytes_sent=sent,
            duration=duration,
            **counts,
        )
    else:
        summary = summary_line(len(ordered), copied, sent, duration, len(failed))
    return {
        "destination": destination.url,
        "lock": lock_path,
        "run_id": run_id,
        "entries": len(ordered),
        "copied": copied,
        "up_to_date": len(the_plan.up_to_date),
        "failed": len(failed),
        "not_attempted": not_attempted,
        "bytes": sent,
        "duration": round(duration, 3),
        "summary": summary,
        "errors": [result.error for result in failed],
        "requests": requests,
        "tools": tools,
        "copies": copies,
        "results": [result.to_json() for result in ordered],
    }


def _seed_ledger(copier: _Copier, the_plan: Plan, previous: Lock | None) -> None:
    """What the plan's HEADs proved present: the blobs of every tag that names a known digest.

    A registry stores a manifest only when the blobs (and children) it references are there,
    so a tag resolving to the lock's digest, or to the digest the previous lock recorded for
    it, vouches for those blobs in its repository. They are not looked up again, and serve
    as mount sources for other repositories.
    """
    before = {entry.key: entry for entry in previous.entries} if previous else {}
    for planned in the_plan.entries:
        entry = planned.entry
        if planned.content_present:
            copier.holds(entry.destination, _content_blobs(entry))
            continue
        old = before.get(entry.key)
        if old is not None and planned.current == old.digest:
            copier.holds(old.destination, _content_blobs(old))


def _copy_all(
    the_plan: Plan,
    copier: _Copier,
    options: SyncOptions,
    results: dict[tuple[str, str], EntryResult],
    state: StateStore | None,
    run_id: int | None,
    progress: Progress | None,
) -> None:
    stop = threading.Event()
    to_copy = the_plan.to_copy
    with ThreadPoolExecutor(options.workers) as pool:
        futures = [pool.submit(copier.run, planned, stop) for planned in to_copy]
        for done, future in enumerate(as_completed(futures), start=1):
            result = future.result()
            results[result.entry.key] = result
            if state:
                state.record(result.state(run_id, fingerprint(result.entry)))
            if progress:
                progress(result, done, len(to_copy))
