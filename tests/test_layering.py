"""The package layering of ``docs/architecture.md``, read from the source with ``ast``.

Every import of a ``cmt_deeplab`` module, at the top of a file or inside a function, must
point to the module's own package or to a lower layer; and no module imports a private name
(``_x``) of another module, nor reads one off an imported module.
"""

from __future__ import annotations

import ast
import shutil
import sys
from pathlib import Path

import pytest

SOURCE = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SOURCE / "cmt_deeplab"

#: Lowest first. A package imports only from lower layers (and itself): ``utils`` at the
#: bottom, the user-facing commands at the top. Packages of one layer do not import each other.
LAYERS: list[set[str]] = [
    {"utils"},
    {"models"},
    {"data"},
    {"model_dir"},
    {"losses", "inference", "evaluation", "convert"},
    {"visualization", "cost", "pretrained", "export"},
    {"engine"},
    {"demo"},
    {"cli"},
]
LAYER = {package: level for level, packages in enumerate(LAYERS) for package in packages}
#: The package's own ``__init__``: the public names, gathered from every layer.
TOP_LEVEL = "__init__"


def _modules() -> list[tuple[str, Path]]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(SOURCE).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found.append((".".join(parts), path))
    return found


def _package(module: str) -> str:
    """``cmt_deeplab.engine.trainer`` -> ``engine``; ``cmt_deeplab.model_dir`` -> ``model_dir``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else TOP_LEVEL


def _imports(tree: ast.AST, module: str) -> list[tuple[int, str, list[str]]]:
    """``(line, imported module, imported names)`` of every ``cmt_deeplab`` import."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            # The project imports absolutely; a relative import is reported as its own target.
            target = (node.module or "") if not node.level else f"cmt_deeplab.(relative) {module}"
            if target.split(".")[0] == "cmt_deeplab":
                found.append((node.lineno, target, [alias.name for alias in node.names]))
        elif isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name, []) for alias in node.names
                         if alias.name.split(".")[0] == "cmt_deeplab")
    return found


def _violations() -> tuple[list[str], list[str]]:
    modules = dict(_modules())
    upward, private = [], []
    for module, path in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        package = _package(module)
        imported_modules: set[str] = set()
        for line, target, names in _imports(tree, module):
            where = f"{path.relative_to(SOURCE)}:{line}"
            target_package = _package(target)
            if target_package not in LAYER and target_package != TOP_LEVEL:
                upward.append(f"{where}: {target} is in no layer (a relative import?)")
            elif package != TOP_LEVEL and target_package != package and (
                    target_package == TOP_LEVEL or LAYER[target_package] >= LAYER[package]):
                upward.append(f"{where}: {package} imports {target}")
            for name in names:
                if f"{target}.{name}" in modules:  # ``from package import module``
                    imported_modules.add(name)
                elif name.startswith("_") and target != module:
                    private.append(f"{where}: imports {name} from {target}")
        # ``module._name`` on a module imported above.
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and node.attr.startswith("_")
                    and not node.attr.startswith("__") and isinstance(node.value, ast.Name)
                    and node.value.id in imported_modules):
                private.append(f"{path.relative_to(SOURCE)}:{node.lineno}: reads "
                               f"{node.value.id}.{node.attr}")
    return upward, private


def test_every_package_has_a_layer():
    packages = {_package(module) for module, _ in _modules()} - {TOP_LEVEL}
    assert packages <= set(LAYER), f"add {sorted(packages - set(LAYER))} to LAYERS"


def test_no_package_imports_one_above_it():
    upward, _ = _violations()
    assert not upward, "imports against the layering:\n" + "\n".join(upward)


def test_no_private_name_is_imported_across_modules():
    _, private = _violations()
    assert not private, "private names used across modules:\n" + "\n".join(private)


@pytest.mark.parametrize("source, message", [
    ("from cmt_deeplab.engine.trainer import Trainer\n", "inference imports cmt_deeplab.engine"),
    ("from cmt_deeplab.cli.predict import _png_name\n", "imports _png_name"),
])
def test_the_checks_catch_a_violation(tmp_path, monkeypatch, source, message):
    """A planted upward or private import in a copy of the tree is reported."""
    copy = tmp_path / "src"
    shutil.copytree(PACKAGE, copy / "cmt_deeplab")
    (copy / "cmt_deeplab" / "inference" / "planted.py").write_text(source)
    monkeypatch.setattr(sys.modules[__name__], "SOURCE", copy)
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", copy / "cmt_deeplab")
    upward, private = _violations()
    assert any(message in line for line in upward + private), upward + private
