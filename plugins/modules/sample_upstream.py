#!/usr/bin/python
"""Ansible module: seed a registry with the project's deterministic sample content."""

from __future__ import annotations

DOCUMENTATION = r"""
module: sample_upstream
short_description: Seed a registry with the deterministic sample content
description:
  - Pushes the sample content of C(airgap_lab.sample) (multi-arch
    images sharing base layers, an arm/v7 child, an image with a known
    vulnerable package, an OCI Helm chart, and the Trivy vulnerability DB
    artifact C(aquasecurity/trivy-db:2) that reports that package) into a
    registry.
  - Idempotent - a tag that already points at the expected digest costs one
    manifest HEAD and nothing else. A tag that points elsewhere is moved, and
    every child and blob is in place before the tag is written.
  - Used by the lab's sample upstream, by tests and by benchmarks.
version_added: "0.1.0"
author: Airgapped Registry
requirements:
  - the airgapped_registry engine and the lab's airgap_lab package on the host that runs
    the module
options:
  registry:
    description: Base URL of the registry, e.g. C(http://127.0.0.1:5000).
    type: str
    required: true
  seed:
    description:
      - Seed of the content; the same seed gives the same digests.
      - This and the size options below default to the lab's
        C(SampleSpec) defaults when omitted.
    type: int
  repositories:
    description: Number of generated multi-arch repositories.
    type: int
  tags_per_repository:
    description: Semver-like tags per generated repository.
    type: int
  base_layers:
    description: Base layers shared by every image of a platform.
    type: int
  base_layer_bytes:
    description: Size of each shared base layer.
    type: int
  unique_layer_bytes:
    description: Size of the layer unique to each image and platform.
    type: int
  base_generation:
    description: Bump to change one shared base layer per platform.
    type: int
  db_updated_at:
    description:
      - C(UpdatedAt) of the Trivy DB artifact, ISO 8601 with a time zone
        (C(2026-11-30T00:00:00Z)).
      - Default the start of the current UTC day, so the DB never looks stale to
        the scanner and, like upstream's, gets a new digest every day.
    type: str
extends_documentation_fragment:
  - airgap_registry_access
attributes:
  check_mode:
    support: full
    details: Makes only manifest HEAD requests and reports what would be pushed.
  diff_mode:
    support: full
    details: Digests of the tags before and after.
"""

EXAMPLES = r"""
- name: Seed the lab's upstream
  sample_upstream:
    registry: http://127.0.0.1:5000
    repositories: 200
    tags_per_repository: 1
    unique_layer_bytes: 1000000
"""

RETURN = r"""
tags:
  description: Every sample tag (C(repo:tag)) and the digest it points at.
  returned: always
  type: dict
db_updated_at:
  description: C(UpdatedAt) of the Trivy DB artifact pushed, in UTC.
  returned: always
  type: str
  sample: "2026-11-30T00:00:00Z"
pushed:
  description: Tags written (or, in check mode, that would be).
  returned: always
  type: list
  elements: str
blobs_pushed:
  description: Blobs uploaded.
  returned: always
  type: int
bytes_pushed:
  description: Bytes of the blobs uploaded.
  returned: always
  type: int
requests:
  description: HTTP requests made to the registry.
  returned: always
  type: int
"""

import traceback
from datetime import datetime

from ansible.module_utils.airgap_engine import (
    engine_module,
    registry_client,
    registry_failure,
    set_options,
)

try:
    from airgap_lab.sample import SampleSpec, build, db_day, push
    from airgap_lab.trivydb import metadata
    from airgapped_registry.errors import AirgapError
except ImportError:
    ENGINE_IMPORT_ERROR = traceback.format_exc()
else:
    ENGINE_IMPORT_ERROR = None

SPEC_OPTIONS = (
    "seed",
    "repositories",
    "tags_per_repository",
    "base_layers",
    "base_layer_bytes",
    "unique_layer_bytes",
    "base_generation",
)


def main():
    module = engine_module(
        {
            "registry": {"type": "str", "required": True},
            # Omitted spec options take SampleSpec's defaults: one source of truth.
            **{name: {"type": "int"} for name in SPEC_OPTIONS},
            "db_updated_at": {"type": "str"},
        },
        ENGINE_IMPORT_ERROR,
    )
    p = module.params
    try:
        spec = SampleSpec(**set_options(p, SPEC_OPTIONS))
    except ValueError as exc:
        module.fail_json(msg=f"sample spec: {exc}")
    updated_at = db_day()
    if p["db_updated_at"]:
        try:
            updated_at = datetime.fromisoformat(p["db_updated_at"])
            metadata(updated_at)
        except ValueError:
            module.fail_json(
                msg=f"db_updated_at: {p['db_updated_at']!r} is not an ISO 8601 time with a "
                "time zone (e.g. 2026-11-30T00:00:00Z)"
            )

    sample = build(spec, db_updated_at=updated_at)
    client = None
    try:
        client = registry_client(p)
        report = push(sample, client, check_mode=module.check_mode)
    except (AirgapError, ValueError, OSError) as exc:
        module.fail_json(
            msg=f"{p['registry']}: {registry_failure(exc, p)}",
            requests=client.requests if client else 0,
        )

    tags = {ref: entry["digest"] for ref, entry in sample.expected().items()}
    result = {
        "changed": report["changed"],
        "tags": tags,
        "db_updated_at": metadata(updated_at)["UpdatedAt"],
        "pushed": report["pushed"],
        "blobs_pushed": report["blobs_pushed"],
        "bytes_pushed": report["bytes_pushed"],
        "requests": report["requests"],
    }
    if module._diff and report["changed"]:
        result["diff"] = {
            "before": "".join(f"{ref} (moved or missing)\n" for ref in report["pushed"]),
            "after": "".join(f"{ref} {tags[ref]}\n" for ref in report["pushed"]),
        }
    module.exit_json(**result)


if __name__ == "__main__":
    main()
