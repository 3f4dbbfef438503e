"""The engine's layers import only downward, keep their private names, and ship no lab code.

Read from the sources with ``ast`` (nothing is imported): every ``import`` and ``from ...
import`` of every module under ``src/airgapped_registry``, wherever it stands (functions
too). docs/architecture.md draws the same layers.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ENGINE = "airgapped_registry"
SRC = Path(__file__).resolve().parents[2] / "src"

# Lower numbers sit lower. A module may import from its own package and from packages with
# a lower number; packages on one level (tools, state) stay independent of each other.
LAYERS = {
    ENGINE: 0,  # the package itself: __version__
    f"{ENGINE}.errors": 0,
    f"{ENGINE}.defaults": 0,
    f"{ENGINE}.files": 1,
    f"{ENGINE}.oci": 1,
    f"{ENGINE}.transport": 2,
    f"{ENGINE}.tools": 3,
    f"{ENGINE}.state": 3,
    f"{ENGINE}.transfer": 3,
    f"{ENGINE}.mirror": 4,
    f"{ENGINE}.signing": 4,
    f"{ENGINE}.scanning": 4,
    f"{ENGINE}.audit": 4,
    f"{ENGINE}.service": 5,
    f"{ENGINE}.gate": 5,
    f"{ENGINE}.bundle": 5,
    f"{ENGINE}.cli": 6,
}
# Never imported by the engine: the lab's content, and Ansible (modules wrap the engine).
FORBIDDEN = ("airgap_lab", "ansible")


@dataclass(frozen=True)
class Import:
    module: str  # the importing module
    line: int
    target: str  # the module imported from
    name: str | None = None  # the name taken from it, for ``from target import name``


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(root: Path, package: str) -> Iterator[Import]:
    for path in sorted((root / package).rglob("*.py")):
        module = module_name(path, root)
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    yield Import(module, node.lineno, alias.name)
            elif isinstance(node, ast.ImportFrom):
                target = node.module or ""
                if node.level:
                    base = module.split(".")
                    drop = node.level - 1 if is_package else node.level
                    base = base[: len(base) - drop] if drop else base
                    target = ".".join([*base, *([target] if target else [])])
                for alias in node.names:
                    yield Import(module, node.lineno, target, alias.name)


def layer_of(module: str) -> tuple[str, int] | None:
    """``(package, level)`` of an engine module: the longest entry of LAYERS it falls under."""
    for prefix in sorted(LAYERS, key=len, reverse=True):
        if module == prefix or module.startswith(prefix + "."):
            return prefix, LAYERS[prefix]
    return None


def is_module(root: Path, name: str) -> bool:
    path = root / Path(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def violations(root: Path, package: str = ENGINE) -> list[str]:
    """Every import of ``package`` that breaks a rule of this file, as ``module:line: why``."""
    found = []
    for item in imports(root, package):
        where = f"{item.module}:{item.line}"
        if item.target.split(".")[0] in FORBIDDEN:
            found.append(f"{where}: imports {item.target}, which the engine must not")
            continue
        if item.target != package and not item.target.startswith(package + "."):
            continue
        # ``from package.sub import module`` names a module, not a name inside one.
        target = item.target
        if item.name and is_module(root, f"{target}.{item.name}"):
            target = f"{target}.{item.name}"
        elif (
            item.name
            and item.name.startswith("_")
            and not item.name.startswith("__")
            and target != item.module
        ):
            found.append(f"{where}: imports {item.name}, private to {target}")
        source, target_layer = layer_of(item.module), layer_of(target)
        if source is None or target_layer is None:
            found.append(f"{where}: {item.module} or {target} is in no layer (see LAYERS)")
            continue
        if source[0] != target_layer[0] and target_layer[1] >= source[1]:
            found.append(
                f"{where}: {source[0]} (level {source[1]}) imports {target} "
                f"({target_layer[0]}, level {target_layer[1]}): layers import only downward"
            )
    return found


def test_every_engine_module_is_in_a_layer() -> None:
    modules = [module_name(path, SRC) for path in sorted((SRC / ENGINE).rglob("*.py"))]
    assert modules
    assert [module for module in modules if layer_of(module) is None] == []


def test_the_engine_imports_only_downward_and_no_private_names() -> None:
    assert violations(SRC) == []


def write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        (
            {f"{ENGINE}/oci/model.py": f"from {ENGINE}.mirror.lock import Lock\n"},
            "oci (level 1) imports airgapped_registry.mirror.lock (airgapped_registry.mirror,",
        ),
        (
            {f"{ENGINE}/state/store.py": f"from {ENGINE}.tools import skopeo\n"},
            "imports airgapped_registry.tools.skopeo (airgapped_registry.tools, level 3)",
        ),
        (
            {f"{ENGINE}/mirror/sync.py": f"from {ENGINE}.mirror.lock import _write\n"},
            "imports _write, private to airgapped_registry.mirror.lock",
        ),
        (
            {f"{ENGINE}/transport/registry.py": "def f():\n    import airgap_lab.sample\n"},
            "imports airgap_lab.sample, which the engine must not",
        ),
        (
            {f"{ENGINE}/oci/model.py": "from ..cli import main\n"},
            "imports airgapped_registry.cli",
        ),
    ],
)
def test_a_violation_is_reported(tmp_path: Path, files: dict[str, str], expected: str) -> None:
    write(
        tmp_path,
        {
            f"{ENGINE}/__init__.py": "",
            **{f"{ENGINE}/{package}/__init__.py": "" for package in ("oci", "mirror", "cli")},
            f"{ENGINE}/mirror/lock.py": "",
            f"{ENGINE}/tools/skopeo.py": "",
            **files,
        },
    )
    (found,) = violations(tmp_path)
    assert expected in found


def test_imports_within_a_package_and_downward_pass(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            f"{ENGINE}/__init__.py": "",
            f"{ENGINE}/errors.py": "",
            f"{ENGINE}/oci/__init__.py": "",
            f"{ENGINE}/oci/reference.py": "_PRIVATE = 1\nPUBLIC = 2\n",
            f"{ENGINE}/oci/model.py": (
                f"from {ENGINE}.oci.reference import PUBLIC\nfrom . import reference\n"
            ),
            f"{ENGINE}/mirror/__init__.py": "",
            f"{ENGINE}/mirror/lock.py": (
                f"from {ENGINE} import errors\nfrom {ENGINE}.oci import model\n"
            ),
        },
    )
    assert violations(tmp_path) == []
