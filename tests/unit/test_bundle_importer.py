"""contents.json(.gz) as the importer reads it: every repository and digest checked, each
refusal naming the entry (the bundle is signed, but a bug on the exporting side must not
push something unchecked)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from airgapped_registry.bundle.importer import BundleImportError, read_contents

TOP = "sha256:" + "a" * 64
CHILD = "sha256:" + "b" * 64
LAYER = "sha256:" + "c" * 64
CONTENTS: dict[str, Any] = {
    "format": "airgapped-registry.bundle-contents.v1",
    "entries": [
        {
            "destination": "sample/app",
            "tag": "1.0",
            "digest": TOP,
            "manifests": [
                {"digest": CHILD, "media_type": "m", "size": 1, "role": "child", "tag": None},
                {"digest": TOP, "media_type": "i", "size": 2, "role": "index", "tag": None},
            ],
            "blobs": [{"digest": LAYER, "size": 3}],
        }
    ],
    "keys": {},
}


def test_contents_are_read_in_push_order() -> None:
    (entry,) = read_contents(CONTENTS)
    assert (entry.reference, entry.digest) == ("sample/app:1.0", TOP)
    assert [(m.digest, m.role) for m in entry.manifests] == [(CHILD, "child"), (TOP, "index")]
    assert entry.blobs == ((LAYER, 3),)


def _edit(path: str, value: Any) -> dict[str, Any]:
    document = copy.deepcopy(CONTENTS)
    target: Any = document["entries"][0]
    *parents, last = path.split(".")
    for part in parents:
        target = target[int(part)] if part.isdigit() else target[part]
    if value is KeyError:
        del target[last]
    else:
        target[int(last) if last.isdigit() else last] = value
    return document


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({**CONTENTS, "format": "other"}, "airgap/contents.json.gz: format 'other' is not known"),
        (_edit("destination", "../etc"), "entries[0]: malformed (ValueError: invalid repository"),
        (_edit("digest", "sha256:12"), "entries[0]: malformed (ValueError: invalid digest"),
        (_edit("blobs.0.digest", "md5:x"), "entries[0]: malformed (ValueError: invalid digest"),
        (_edit("manifests.0.size", "big"), "entries[0]: malformed (ValueError: invalid literal"),
        (_edit("tag", KeyError), "entries[0]: malformed (KeyError: 'tag')"),
        (
            _edit("manifests", [{"digest": CHILD, "media_type": "m", "size": 1, "role": "child"}]),
            "entries[0] sample/app:1.0: its own manifest is not listed",
        ),
    ],
)
def test_malformed_contents_are_refused_naming_the_entry(document, message) -> None:
    with pytest.raises(BundleImportError) as raised:
        read_contents(document)
    assert message in str(raised.value)
