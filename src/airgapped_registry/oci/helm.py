"""A Helm chart stored as an OCI artifact: its media types and the artifact of an archive.

A classic Helm repository serves ``.tgz`` archives; the mirror stores each as the OCI
artifact Helm itself pushes (``helm push``): a config holding ``Chart.yaml`` as JSON and one
layer, the archive.
"""

from __future__ import annotations

import gzip
import io
import json
import tarfile

import yaml

from airgapped_registry.errors import ContentError
from airgapped_registry.oci.mediatypes import HELM_CHART_CONTENT, HELM_CONFIG, OCI_MANIFEST
from airgapped_registry.oci.reference import canonical_json, digest_of


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
                raise ContentError("chart archive without <chart>/Chart.yaml")
            extracted = tar.extractfile(member)
            if extracted is None:
                raise ContentError(f"chart archive: {member.name} is not a regular file")
            metadata = yaml.safe_load(extracted.read())
    except (OSError, EOFError, tarfile.TarError, yaml.YAMLError) as exc:
        raise ContentError(f"chart archive unreadable: {exc}") from exc
    if not isinstance(metadata, dict) or "name" not in metadata or "version" not in metadata:
        raise ContentError("chart archive: Chart.yaml has no name and version")
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
