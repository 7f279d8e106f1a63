"""Layers point one way: flows -> stages -> library (design.md section 3), read from the source, imports inside
functions included.

- Nothing in ``stages/`` or ``src/`` imports ``flows``; nothing in ``src/`` imports ``stages``.
- Neither imports Prefect: a stage fans out on a plain executor (``omni_r1.fanout``) and needs no server.
- ``omni_r1.systems`` and ``omni_r1.eval`` do not import each other: the evaluation runs the systems, so
  the systems never import the evaluation (the light detail system's training and its evaluation live
  in ``omni_r1.detail_training``).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SRC = REPO / "src" / "omni_r1"


def imports_of(source: str, module: str, is_package: bool = False) -> set[str]:
    """Every module name the source of ``module`` imports, at any depth, relative imports resolved."""
    package = module if is_package else module.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[: len(parts) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def _module_name(path: Path) -> str:
    rel = path.relative_to(SRC.parent) if path.is_relative_to(SRC.parent) else path.relative_to(REPO)
    parts = list(rel.with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _files(folder: Path) -> list[Path]:
    files = sorted(folder.rglob("*.py"))
    assert files, f"no Python files under {folder}"
    return files


def _offenders(files: list[Path], forbidden: tuple[str, ...]) -> list[str]:
    found = []
    for path in files:
        for name in sorted(imports_of(path.read_text(), _module_name(path), path.name == "__init__.py")):
            if any(name == f or name.startswith(f + ".") for f in forbidden):
                found.append(f"{path.relative_to(REPO)} imports {name}")
    return found


@pytest.mark.parametrize("layer", ["stages", "src"])
def test_stages_and_library_do_not_import_flows_or_prefect(layer: str) -> None:
    offenders = _offenders(_files(REPO / layer), ("flows", "prefect", "prefect_dask", "prefect_ray"))
    assert not offenders, ("layers point one way (flows -> stages -> library); move the code these need into "
                           "src/omni_r1:\n" + "\n".join(offenders))


def test_library_does_not_import_stages() -> None:
    offenders = _offenders(_files(SRC), ("stages",))
    assert not offenders, "the library must not import the stage CLIs:\n" + "\n".join(offenders)


def test_systems_and_eval_do_not_import_each_other() -> None:
    systems_to_eval = _offenders(_files(SRC / "systems"), ("omni_r1.eval",))
    eval_to_systems = _offenders(_files(SRC / "eval"), ("omni_r1.systems",))
    assert not (systems_to_eval and eval_to_systems), (
        "omni_r1.systems and omni_r1.eval import each other:\n" + "\n".join(systems_to_eval + eval_to_systems))
    assert not systems_to_eval, ("the evaluation runs the systems, so the systems must not import omni_r1.eval; "
                                 "move training-time measuring to a module outside systems (as "
                                 "omni_r1.detail_training):\n" + "\n".join(systems_to_eval))


def test_the_checker_sees_lazy_and_relative_imports() -> None:
    source = "def f():\n    from flows import pipeline\n    from ..eval import metrics\n    from . import light\n"
    names = imports_of(source, "omni_r1.systems.detail")
    assert {"flows", "omni_r1.eval", "omni_r1.eval.metrics", "omni_r1.systems.light"} <= names
    assert "omni_r1.eval" in imports_of("from ..eval import metrics\n", "omni_r1.systems", is_package=True)
    assert _module_name(SRC / "systems" / "light" / "__init__.py") == "omni_r1.systems.light"
    assert _module_name(REPO / "stages" / "shard.py") == "stages.shard"
