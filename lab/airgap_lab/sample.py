"""Deterministic sample upstream content: the images, indexes and charts the lab mirrors.

The lab's "upstream" registry, the tests and the benchmarks all need realistic content that
is the same everywhere: the same :class:`SampleSpec` yields the same bytes, hence the same
digests, in any process on any machine. Content is therefore derived from the spec through
SHAKE-256 (specified bit for bit, unlike ``random``'s byte helpers) and layers are gzip
streams written with stored deflate blocks, whose bytes do not depend on the zlib build the
way compressed blocks do.

Besides ``repositories`` generated multi-arch application repositories (``sample/app-NNN``)
the sample always holds fixed showcase content: ``sample/base`` (a three-platform index with a
pre-release tag), ``sample/vulnerable`` (an Alpine image with one package below its fixed
version, see :data:`VULNERABLE_PACKAGE`), ``charts/demo`` (an OCI Helm chart) and
``aquasecurity/trivy-db:2``, the Trivy vulnerability DB artifact (:mod:`airgap_lab.trivydb`)
that reports that package. Like upstream's, the DB is republished daily: its ``UpdatedAt``
(the start of the current UTC day unless given) is the one input besides the spec, so a
scanner's age limit never finds the lab's DB stale and a fixed time gives fixed digests.

Large layers are not kept in memory: :func:`build` records how to regenerate each one and
:meth:`Sample.blob` regenerates it on demand, so a sample of hundreds of megabytes costs
little more memory than its manifests.
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import hashlib
import io
import re
import struct
import tarfile
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from typing import Any

from airgapped_registry.errors import AirgapError
from airgapped_registry.oci.mediatypes import (
    HELM_CHART_CONTENT,
    HELM_CONFIG,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER_GZIP,
    OCI_MANIFEST,
)
from airgapped_registry.oci.reference import canonical_json, digest_of
from airgapped_registry.transport.registry import RegistryClient

APP_REPOSITORY_PREFIX = "sample/app-"
BASE_REPOSITORY = "sample/base"
BASE_TAGS = ("1.0.0", "1.1.0", "2.0.0-rc.1", "2.0.0")
BASE_PLATFORMS = ("linux/amd64", "linux/arm64", "linux/arm/v7")
VULNERABLE_REPOSITORY = "sample/vulnerable"
VULNERABLE_TAG = "1.0.0"
VULNERABLE_PLATFORM = "linux/amd64"
CHART_REPOSITORY = "charts/demo"
CHART_NAME = "demo"
CHART_TAGS = ("0.1.0", "0.2.0")
TRIVY_DB_REPOSITORY = "aquasecurity/trivy-db"
TRIVY_DB_TAG = "2"

# Fixed so that rebuilding a sample never changes a digest.
CREATED = "2024-01-01T00:00:00Z"
_MTIME = 1704067200
# The layer shared by all platforms of one image stands for architecture-independent assets.
ASSET_BYTES = 8192
_KEEP_IN_MEMORY = 64 * 1024
_STORED_BLOCK = 0xFFFF
_PLATFORM = re.compile(r"[a-z0-9]+/[a-z0-9_]+(?:/[a-z0-9]+)?")


@dataclass(frozen=True)
class VulnerablePackage:
    name: str
    version: str
    fixed_version: str


# Alpine 3.22 is supported until 2027, so trivy reports the finding without an EOL warning.
VULNERABLE_OS = ("alpine", "3.22")
VULNERABLE_OS_RELEASE = "3.22.1"
VULNERABLE_PACKAGE = VulnerablePackage(
    name="busybox", version="1.37.0-r18", fixed_version="1.37.0-r19"
)


@dataclass(frozen=True)
class SampleSpec:
    """What to generate. Equal specs generate byte-identical samples."""

    seed: int = field(default=1, metadata={"help": "varies all generated content"})
    repositories: int = field(
        default=3, metadata={"help": "number of generated sample/app-NNN repositories"}
    )
    tags_per_repository: int = field(
        default=3, metadata={"help": "semver tags per generated repository"}
    )
    base_layers: int = field(
        default=2, metadata={"help": "base layers per platform, shared by all its images"}
    )
    base_layer_bytes: int = field(
        default=64 * 1024, metadata={"help": "content bytes of each base layer"}
    )
    unique_layer_bytes: int = field(
        default=32 * 1024, metadata={"help": "content bytes of each image's own layer"}
    )
    base_generation: int = field(
        default=0, metadata={"help": "changing it rebuilds the top base layer of each platform"}
    )
    platforms: tuple[str, ...] = field(
        default=("linux/amd64", "linux/arm64"),
        metadata={"help": "platforms of the generated application images"},
    )

    def __post_init__(self) -> None:
        minimums = {
            "seed": 0,
            "repositories": 0,
            "tags_per_repository": 1,
            "base_layers": 1,
            "base_layer_bytes": 1,
            "unique_layer_bytes": 1,
            "base_generation": 0,
        }
        for name, minimum in minimums.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"sample {name}: expected an integer >= {minimum}, got {value!r}")
        if isinstance(self.platforms, str) or not isinstance(self.platforms, tuple | list):
            raise ValueError(
                f"sample platforms: expected a list of os/arch[/variant], got {self.platforms!r}"
            )
        object.__setattr__(self, "platforms", tuple(self.platforms))
        if not self.platforms:
            raise ValueError("sample platforms: at least one platform is needed")
        for platform in self.platforms:
            if not isinstance(platform, str) or not _PLATFORM.fullmatch(platform):
                raise ValueError(f"sample platforms: {platform!r} is not os/arch[/variant]")
        if len(set(self.platforms)) != len(self.platforms):
            raise ValueError(f"sample platforms: duplicates in {list(self.platforms)}")


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int

    def as_json(self) -> dict[str, Any]:
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size}


@dataclass(frozen=True)
class Artifact:
    """A manifest of the sample: a tagged image, index or chart, or an index's child.

    ``blobs`` lists the config then the layers of an image or chart manifest; an index has
    none of its own and lists its per-platform manifests in ``children``.
    """

    repository: str
    tag: str | None
    media_type: str
    digest: str
    manifest: bytes
    platform: str | None = None
    children: tuple[Artifact, ...] = ()
    blobs: tuple[Descriptor, ...] = ()

    @property
    def reference(self) -> str:
        return f"{self.repository}:{self.tag}" if self.tag else f"{self.repository}@{self.digest}"

    @property
    def platforms(self) -> dict[str, str]:
        if self.children:
            return {child.platform or "": child.digest for child in self.children}
        return {self.platform: self.digest} if self.platform else {}

    def manifests(self) -> tuple[Artifact, ...]:
        """The manifests that carry blobs: the children of an index, else itself."""
        return self.children or (self,)


@dataclass
class Sample:
    spec: SampleSpec
    artifacts: tuple[Artifact, ...]
    _blobs: _BlobStore = field(repr=False)

    def expected(self) -> dict[str, dict[str, Any]]:
        """``"repo:tag"`` → digest, media type and per-platform manifest digests."""
        return {
            artifact.reference: {
                "digest": artifact.digest,
                "media_type": artifact.media_type,
                "platforms": artifact.platforms,
            }
            for artifact in self.artifacts
        }

    def artifact(self, reference: str) -> Artifact:
        for artifact in self.artifacts:
            if artifact.reference == reference:
                return artifact
        raise KeyError(f"{reference} is not part of the sample")

    @property
    def repositories(self) -> list[str]:
        return list(dict.fromkeys(artifact.repository for artifact in self.artifacts))

    @property
    def blob_digests(self) -> frozenset[str]:
        return frozenset(self._blobs.sizes)

    @property
    def unique_bytes(self) -> int:
        """Bytes a registry stores for the sample: distinct blobs plus distinct manifests."""
        manifests = {
            manifest.digest: len(manifest.manifest)
            for artifact in self.artifacts
            for manifest in (artifact, *artifact.children)
        }
        return sum(self._blobs.sizes.values()) + sum(manifests.values())

    def blob(self, digest: str) -> bytes:
        """The bytes of a config or layer, regenerated if they were not kept."""
        return self._blobs.get(digest)


class _BlobStore:
    """Digest → bytes for small blobs, digest → recipe for the large ones."""

    def __init__(self) -> None:
        self.sizes: dict[str, int] = {}
        self._kept: dict[str, bytes] = {}
        self._recipes: dict[str, Callable[[], bytes]] = {}

    def add(
        self, media_type: str, data: bytes, recipe: Callable[[], bytes] | None = None
    ) -> Descriptor:
        """Record a blob; without a recipe to regenerate it, it is kept in memory."""
        digest = digest_of(data)
        if digest not in self.sizes:
            self.sizes[digest] = len(data)
            if recipe is None or len(data) <= _KEEP_IN_MEMORY:
                self._kept[digest] = data
            else:
                self._recipes[digest] = recipe
        return Descriptor(media_type, digest, len(data))

    def add_layer(self, tar_recipe: Callable[[], bytes]) -> tuple[Descriptor, str]:
        """Store a tar layer gzipped; returns its descriptor and its diff_id."""
        tar = tar_recipe()
        diff_id = digest_of(tar)
        descriptor = self.add(OCI_LAYER_GZIP, gzip_stored(tar), _gzipped(tar_recipe))
        return descriptor, diff_id

    def add_json(self, media_type: str, document: object) -> Descriptor:
        return self.add(media_type, canonical_json(document))

    def get(self, digest: str) -> bytes:
        if digest in self._kept:
            return self._kept[digest]
        if digest not in self._recipes:
            raise KeyError(f"blob {digest} is not part of the sample")
        data = self._recipes[digest]()
        if digest_of(data) != digest:
            raise AirgapError(f"sample blob {digest}: regenerated as {digest_of(data)}")
        return data


def _gzipped(tar_recipe: Callable[[], bytes]) -> Callable[[], bytes]:
    return lambda: gzip_stored(tar_recipe())


def build(spec: SampleSpec | None = None, *, db_updated_at: datetime | None = None) -> Sample:
    """Generate the sample described by ``spec`` (defaults when None).

    ``db_updated_at`` is the Trivy DB's ``UpdatedAt``; None is the start of the current UTC
    day (:func:`db_day`).
    """
    spec = spec or SampleSpec()
    db_updated_at = db_day() if db_updated_at is None else db_updated_at
    blobs = _BlobStore()
    base_layers = {
        platform: [
            blobs.add_layer(_base_layer_recipe(spec, platform, index))
            for index in range(spec.base_layers)
        ]
        for platform in dict.fromkeys((*BASE_PLATFORMS, *spec.platforms))
    }
    artifacts: list[Artifact] = []
    for tag in BASE_TAGS:
        release = blobs.add_layer(
            functools.partial(
                tar_layer,
                [("etc/sample-base-release", f"{BASE_REPOSITORY} {tag}\n".encode(), 0o644)],
            )
        )
        children = [
            _image(
                blobs,
                BASE_REPOSITORY,
                tag,
                platform,
                [*base_layers[platform], release],
                {"Env": ["PATH=/usr/local/bin:/usr/bin:/bin"], "Cmd": ["/bin/sh"]},
            )
            for platform in BASE_PLATFORMS
        ]
        artifacts.append(_index(BASE_REPOSITORY, tag, children))
    artifacts.append(_vulnerable_image(blobs))
    artifacts.extend(_chart(blobs, version) for version in CHART_TAGS)
    artifacts.append(_trivy_db(blobs, db_updated_at))
    tags = semver_series(spec.tags_per_repository)
    for number in range(1, spec.repositories + 1):
        repository = f"{APP_REPOSITORY_PREFIX}{number:03d}"
        for tag in tags:
            assets = blobs.add_layer(
                functools.partial(
                    _random_file_layer,
                    "app/share/assets.bin",
                    ASSET_BYTES,
                    ("assets", spec.seed, repository, tag),
                )
            )
            children = []
            for platform in spec.platforms:
                unique = blobs.add_layer(
                    functools.partial(
                        _random_file_layer,
                        "app/bin/app",
                        spec.unique_layer_bytes,
                        ("app", spec.seed, repository, tag, platform),
                        0o755,
                    )
                )
                children.append(
                    _image(
                        blobs,
                        repository,
                        tag,
                        platform,
                        [*base_layers[platform], assets, unique],
                        {"Env": ["PATH=/app/bin:/usr/bin:/bin"], "Entrypoint": ["/app/bin/app"]},
                    )
                )
            artifacts.append(_index(repository, tag, children))
    return Sample(spec=spec, artifacts=tuple(artifacts), _blobs=blobs)


def semver_series(count: int) -> list[str]:
    """``count`` ascending versions that bump minor, major, then patch in turn.

    Any series of three or more spans two majors and two minors (1.0.0, 1.1.0, 2.0.0, 2.0.1,
    2.1.0, 3.0.0, ...), so semver range selection has something to choose between.
    """
    major, minor, patch = 1, 0, 0
    versions = []
    for position in range(count):
        bump = position % 3
        if position and bump == 1:
            minor, patch = minor + 1, 0
        elif position and bump == 2:
            major, minor, patch = major + 1, 0, 0
        elif position:
            patch += 1
        versions.append(f"{major}.{minor}.{patch}")
    return versions


def push(sample: Sample, client: RegistryClient, check_mode: bool = False) -> dict[str, Any]:
    """Make the registry serve the sample; report what changed.

    Each tag is HEADed first and left alone when it already resolves to the expected
    digest. Otherwise its blobs go first (mounted from a repository this run already filled
    when possible), then the per-platform manifests by digest, then the tag, so that a tag
    never points at partial content. A tag holding another digest is overwritten: this is an
    upstream, whose tags move. In check mode only the HEADs are made.
    """
    before = _counters(client)
    pushed: list[str] = []
    unchanged = 0
    holder: dict[str, str] = {}
    for artifact in sample.artifacts:
        assert artifact.tag is not None
        current = client.head_manifest(artifact.repository, artifact.tag)
        if current is not None and current.digest == artifact.digest:
            unchanged += 1
            continue
        pushed.append(artifact.reference)
        if check_mode:
            continue
        repository = artifact.repository
        for manifest in artifact.manifests():
            for blob in manifest.blobs:
                client.push_blob(
                    repository,
                    blob.digest,
                    functools.partial(sample.blob, blob.digest),
                    mount_from=holder.get(blob.digest),
                )
                holder.setdefault(blob.digest, repository)
        for child in artifact.children:
            client.put_manifest(repository, child.digest, child.manifest, child.media_type)
        client.put_manifest(repository, artifact.tag, artifact.manifest, artifact.media_type)
    after = _counters(client)
    by_method = after["by_method"] - before["by_method"]
    return {
        "changed": bool(pushed),
        "check_mode": check_mode,
        "pushed": pushed,
        "unchanged": unchanged,
        "blobs_pushed": after["uploaded"] - before["uploaded"],
        "blobs_mounted": after["mounted"] - before["mounted"],
        "bytes_pushed": after["bytes"] - before["bytes"],
        "requests": after["requests"] - before["requests"],
        "requests_by_method": dict(sorted(by_method.items())),
    }


def _counters(client: RegistryClient) -> dict[str, Any]:
    return {
        "requests": client.requests,
        "by_method": client.requests_by_method.copy(),
        "uploaded": client.blobs_uploaded,
        "mounted": client.blobs_mounted,
        "bytes": client.bytes_uploaded,
    }


# -- manifests -----------------------------------------------------------------------------


def _image(
    blobs: _BlobStore,
    repository: str,
    tag: str,
    platform: str,
    layers: list[tuple[Descriptor, str]],
    runtime: dict[str, Any],
    media_type: str = OCI_MANIFEST,
) -> Artifact:
    config = {
        "created": CREATED,
        **platform_json(platform),
        "config": {
            **runtime,
            "Labels": {
                "org.opencontainers.image.source": f"https://sample.invalid/{repository}",
                "org.opencontainers.image.version": tag,
            },
        },
        "rootfs": {"type": "layers", "diff_ids": [diff_id for _, diff_id in layers]},
    }
    config_descriptor = blobs.add_json(OCI_CONFIG, config)
    manifest = canonical_json(
        {
            "schemaVersion": 2,
            "mediaType": media_type,
            "config": config_descriptor.as_json(),
            "layers": [descriptor.as_json() for descriptor, _ in layers],
        }
    )
    return Artifact(
        repository=repository,
        tag=None,
        media_type=media_type,
        digest=digest_of(manifest),
        manifest=manifest,
        platform=platform,
        blobs=(config_descriptor, *(descriptor for descriptor, _ in layers)),
    )


def _index(repository: str, tag: str, children: list[Artifact]) -> Artifact:
    manifest = canonical_json(
        {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [
                {
                    "mediaType": child.media_type,
                    "digest": child.digest,
                    "size": len(child.manifest),
                    "platform": platform_json(child.platform or ""),
                }
                for child in children
            ],
        }
    )
    return Artifact(
        repository=repository,
        tag=tag,
        media_type=OCI_INDEX,
        digest=digest_of(manifest),
        manifest=manifest,
        children=tuple(children),
    )


def _vulnerable_image(blobs: _BlobStore) -> Artifact:
    layer = blobs.add_layer(functools.partial(tar_layer, _alpine_files()))
    image = _image(
        blobs,
        VULNERABLE_REPOSITORY,
        VULNERABLE_TAG,
        VULNERABLE_PLATFORM,
        [layer],
        {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Cmd": ["/bin/sh"],
        },
    )
    return dataclasses.replace(image, tag=VULNERABLE_TAG)


def _alpine_files() -> list[tuple[str, bytes, int]]:
    package = VULNERABLE_PACKAGE
    checksum = hashlib.sha1(f"{package.name}-{package.version}".encode()).digest()
    installed = "\n".join(
        [
            f"C:Q1{base64.b64encode(checksum).decode()}",
            f"P:{package.name}",
            f"V:{package.version}",
            "A:x86_64",
            "S:507657",
            "I:798720",
            "T:Size optimized toolbox of many common UNIX utilities",
            "U:https://busybox.net/",
            "L:GPL-2.0-only",
            f"o:{package.name}",
            "m:Alpine Developers <alpine-devel@lists.alpinelinux.org>",
            f"t:{_MTIME}",
            "c:0000000000000000000000000000000000000000",
            "D:so:libc.musl-x86_64.so.1",
            f"p:/bin/sh cmd:busybox={package.version} cmd:sh={package.version}",
            "F:bin",
            "R:busybox",
            "a:0:0:755",
            "",
            "",
        ]
    )
    os_release = (
        'NAME="Alpine Linux"\n'
        "ID=alpine\n"
        f"VERSION_ID={VULNERABLE_OS_RELEASE}\n"
        f'PRETTY_NAME="Alpine Linux v{VULNERABLE_OS[1]}"\n'
        'HOME_URL="https://alpinelinux.org/"\n'
        'BUG_REPORT_URL="https://gitlab.alpinelinux.org/alpine/aports/-/issues"\n'
    )
    return [
        ("bin/busybox", b"#!/bin/sh\n# placeholder for the busybox binary\n", 0o755),
        ("etc/alpine-release", f"{VULNERABLE_OS_RELEASE}\n".encode(), 0o644),
        ("etc/os-release", os_release.encode(), 0o644),
        ("lib/apk/db/installed", installed.encode(), 0o644),
    ]


def _chart(blobs: _BlobStore, version: str) -> Artifact:
    app_version = {"0.1.0": "1.0.0", "0.2.0": "1.1.0"}.get(version, "1.1.0")
    description = "Demo chart of the Airgapped Registry sample upstream"
    chart_yaml = (
        "apiVersion: v2\n"
        f"name: {CHART_NAME}\n"
        f"description: {description}\n"
        "type: application\n"
        f"version: {version}\n"
        f'appVersion: "{app_version}"\n'
    )
    values_yaml = (
        f'replicaCount: 1\nimage:\n  repository: {BASE_REPOSITORY}\n  tag: "{app_version}"\n'
    )
    deployment_yaml = (
        "apiVersion: apps/v1\n"
        "kind: Deployment\n"
        "metadata:\n"
        "  name: {{ .Release.Name }}-demo\n"
        "spec:\n"
        "  replicas: {{ .Values.replicaCount }}\n"
        "  selector:\n"
        "    matchLabels:\n"
        "      app: {{ .Release.Name }}-demo\n"
        "  template:\n"
        "    metadata:\n"
        "      labels:\n"
        "        app: {{ .Release.Name }}-demo\n"
        "    spec:\n"
        "      containers:\n"
        "        - name: demo\n"
        '          image: "{{ .Values.image.repository }}:{{ .Values.image.tag }}"\n'
        '          command: ["sleep", "infinity"]\n'
    )
    files = [
        (f"{CHART_NAME}/Chart.yaml", chart_yaml.encode(), 0o644),
        (f"{CHART_NAME}/values.yaml", values_yaml.encode(), 0o644),
        (f"{CHART_NAME}/templates/deployment.yaml", deployment_yaml.encode(), 0o644),
    ]
    chart = gzip_stored(tar_layer(files, directories=False))
    content = blobs.add(HELM_CHART_CONTENT, chart)
    config = blobs.add_json(
        HELM_CONFIG,
        {
            "name": CHART_NAME,
            "version": version,
            "description": description,
            "apiVersion": "v2",
            "appVersion": app_version,
            "type": "application",
        },
    )
    manifest = canonical_json(
        {
            "schemaVersion": 2,
            "config": config.as_json(),
            "layers": [content.as_json()],
            "annotations": {
                "org.opencontainers.image.created": CREATED,
                "org.opencontainers.image.description": description,
                "org.opencontainers.image.title": CHART_NAME,
                "org.opencontainers.image.version": version,
            },
        }
    )
    return Artifact(
        repository=CHART_REPOSITORY,
        tag=version,
        media_type=OCI_MANIFEST,
        digest=digest_of(manifest),
        manifest=manifest,
        blobs=(config, content),
    )


def _trivy_db(blobs: _BlobStore, updated_at: datetime) -> Artifact:
    """``aquasecurity/trivy-db:2`` as trivy-db's release job pushes it (oras, one layer)."""
    # Imported here: trivydb builds its fixture advisory from this module's constants.
    from airgap_lab import trivydb

    config = blobs.add(trivydb.CONFIG_MEDIA_TYPE, b"{}")
    layer = blobs.add(trivydb.LAYER_MEDIA_TYPE, trivydb.db_archive(updated_at=updated_at))
    manifest = canonical_json(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": config.as_json(),
            "layers": [
                {**layer.as_json(), "annotations": {"org.opencontainers.image.title": "db.tar.gz"}}
            ],
            "annotations": {
                "org.opencontainers.image.created": trivydb.metadata(updated_at)["UpdatedAt"]
            },
        }
    )
    return Artifact(
        repository=TRIVY_DB_REPOSITORY,
        tag=TRIVY_DB_TAG,
        media_type=OCI_MANIFEST,
        digest=digest_of(manifest),
        manifest=manifest,
        blobs=(config, layer),
    )


def db_day(now: datetime | None = None) -> datetime:
    """The start of the UTC day of ``now`` (default: the current time)."""
    moment = (now or datetime.now(UTC)).astimezone(UTC)
    return moment.replace(hour=0, minute=0, second=0, microsecond=0)


# -- content -------------------------------------------------------------------------------


def platform_json(platform: str) -> dict[str, str]:
    """``linux/arm/v7`` → ``{"architecture": "arm", "os": "linux", "variant": "v7"}``."""
    os_name, architecture, *variant = platform.split("/")
    document = {"architecture": architecture, "os": os_name}
    if variant:
        document["variant"] = variant[0]
    return document


def pseudo_random_bytes(size: int, key: Iterable[object]) -> bytes:
    """Incompressible bytes fixed by ``key``: SHAKE-256 is specified, so stable everywhere."""
    return hashlib.shake_256("\x1f".join(map(str, key)).encode()).digest(size)


def _base_layer_recipe(spec: SampleSpec, platform: str, index: int) -> Callable[[], bytes]:
    # Only the top base layer follows base_generation: a rebuilt base changes one layer.
    generation = spec.base_generation if index == spec.base_layers - 1 else 0
    return functools.partial(
        _random_file_layer,
        f"usr/lib/sample-base/layer-{index}.bin",
        spec.base_layer_bytes,
        ("base", spec.seed, platform, index, generation),
    )


def _random_file_layer(path: str, size: int, key: tuple[object, ...], mode: int = 0o644) -> bytes:
    return tar_layer([(path, pseudo_random_bytes(size, key), mode)])


def tar_layer(files: Iterable[tuple[str, bytes, int]], directories: bool = True) -> bytes:
    """An uncompressed tar of ``(path, content, mode)`` with fixed owners and times.

    With ``directories``, parent directories precede their files as image builders write
    them; ``helm package`` writes files only, so charts leave them out.
    """
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as archive:
        seen: set[str] = set()
        for path, content, mode in files:
            parents = path.split("/")[:-1] if directories else []
            for depth in range(1, len(parents) + 1):
                directory = "/".join(parents[:depth])
                if directory not in seen:
                    seen.add(directory)
                    archive.addfile(_tar_entry(directory, tarfile.DIRTYPE, 0o755, 0))
            entry = _tar_entry(path, tarfile.REGTYPE, mode, len(content))
            archive.addfile(entry, io.BytesIO(content))
    return buffer.getvalue()


def _tar_entry(name: str, kind: bytes, mode: int, size: int) -> tarfile.TarInfo:
    entry = tarfile.TarInfo(name)
    entry.type = kind
    entry.mode = mode
    entry.size = size
    entry.mtime = _MTIME
    entry.uid = entry.gid = 0
    entry.uname = entry.gname = "root"
    return entry


def gzip_stored(data: bytes) -> bytes:
    """A gzip member holding ``data`` in stored (uncompressed) deflate blocks.

    Layer content is random, so compression would only cost time; stored blocks also make
    the bytes independent of the zlib version, which keeps digests equal across hosts.
    """
    view = memoryview(data)
    # ID1 ID2 CM=deflate FLG=0 MTIME=0 XFL=0 OS=unknown
    parts: list[bytes | memoryview] = [b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"]
    offsets = range(0, len(data), _STORED_BLOCK) if data else range(1)
    for offset in offsets:
        chunk = view[offset : offset + _STORED_BLOCK]
        final = offset + _STORED_BLOCK >= len(data)
        parts.append(struct.pack("<BHH", int(final), len(chunk), len(chunk) ^ 0xFFFF))
        parts.append(chunk)
    parts.append(struct.pack("<II", zlib.crc32(data), len(data) & 0xFFFFFFFF))
    return b"".join(parts)


@dataclass(frozen=True)
class SpecField:
    """One :class:`SampleSpec` field as CLIs and module argument specs present it."""

    name: str
    default: object
    help: str


def spec_fields() -> list[SpecField]:
    defaults = SampleSpec()
    return [
        SpecField(item.name, getattr(defaults, item.name), item.metadata.get("help", ""))
        for item in fields(SampleSpec)
    ]
