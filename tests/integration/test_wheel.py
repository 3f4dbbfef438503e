"""The wheel roles/mirror ships to hosts: the engine, its command, and no lab content."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

PROJECT = Path(__file__).resolve().parents[2]


def test_the_engine_wheel_holds_the_engine_and_no_lab_content(tmp_path: Path) -> None:
    # The same command roles/mirror runs on the controller.
    build = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps"]
    subprocess.run(
        [*build, "--wheel-dir", str(tmp_path), str(PROJECT)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("airgapped_registry-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    packages = {
        name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")
    }
    assert packages == {"airgapped_registry"}
    assert "airgapped_registry/cli/__main__.py" in names
    assert not [name for name in names if "sample" in name or "airgap_lab" in name]
