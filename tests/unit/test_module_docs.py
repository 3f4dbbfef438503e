"""The modules' documentation renders, shared TLS options included (ansible-doc)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[2]
ANSIBLE_DOC = Path(sys.executable).parent / "ansible-doc"
MODULES = sorted(path.stem for path in (PROJECT / "plugins" / "modules").glob("*.py"))
TLS_OPTIONS = {"ca_file", "cert_file", "key_file"}


def test_every_module_documents_the_registry_tls_options_from_the_fragment() -> None:
    result = subprocess.run(
        [str(ANSIBLE_DOC), "--json", *MODULES],
        env={**os.environ, "ANSIBLE_CONFIG": str(PROJECT / "ansible.cfg")},
        capture_output=True,
        text=True,
        cwd=PROJECT,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    docs = json.loads(result.stdout)
    assert sorted(docs) == MODULES
    for name, doc in docs.items():
        options = doc["doc"]["options"]
        assert set(options) >= TLS_OPTIONS, name
