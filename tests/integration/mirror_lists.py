"""What the integration tests mirror: the small sample upstream, and the lab's mirror list
pointed at a loopback copy of it (imported by the test modules beside it)."""

from __future__ import annotations

from pathlib import Path

from airgap_lab.sample import SampleSpec

ROOT = Path(__file__).resolve().parents[2]
LAB_LIST = ROOT / "inventories" / "lab" / "mirror.yaml"
COSIGN = ROOT / ".venv" / "bin" / "cosign"
TRIVY = ROOT / ".venv" / "bin" / "trivy"
# The lab list names sample/app-001..003: three repositories of three tags each.
SMALL = SampleSpec(
    repositories=3, tags_per_repository=3, base_layer_bytes=2048, unique_layer_bytes=2048
)
# The lab list's entries: sample/base (3 releases), sample/app-001..003 (2 tags each),
# sample/vulnerable, charts/demo (2 versions) and the Trivy DB artifact aquasecurity/trivy-db:2.
LAB_ENTRIES = 13
# The same upstream after its base layers were rebuilt: most tags move.
MOVED = SampleSpec(**{**vars(SMALL), "base_generation": 1})


def lab_list(directory: Path, address: str, **replacements: str) -> Path:
    """The lab's mirror list with its upstream at ``address``, written to ``directory``."""
    text = LAB_LIST.read_text().replace("registry: upstream:5000", f"registry: {address}")
    for old, new in replacements.items():
        assert old in text
        text = text.replace(old, new)
    path = directory / "mirror.yaml"
    path.write_text(text)
    return path
