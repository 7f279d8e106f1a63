"""params.yaml, the config dataclasses, dvc.yaml and stages/ agree, mechanically."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import yaml

from omni_r1.config import load_params, params_to_dict

REPO = Path(__file__).resolve().parents[2]
DVC = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
PARAMS = params_to_dict(load_params(REPO / "params.yaml"))


def _lookup(dotted: str) -> object:
    node: object = PARAMS
    for part in dotted.split("."):
        assert isinstance(node, dict) and part in node, f"dvc.yaml names param {dotted!r}, which params.yaml lacks"
        node = node[part]
    return node


def _render(text: str) -> str:
    return re.sub(r"\$\{([^}]+)\}", lambda m: str(_lookup(m.group(1))), text)


def test_every_stage_is_a_thin_cli_with_the_same_name() -> None:
    for name, stage in DVC.items():
        assert stage["cmd"].startswith(f"python -m stages.{name} "), name
        module = importlib.import_module(f"stages.{name}")
        assert callable(module.main), f"stages/{name}.py needs main(argv) -> int"
        assert f"stages/{name}.py" in stage["deps"]


def _paths(entries: list) -> list[str]:
    return [e if isinstance(e, str) else next(iter(e)) for e in entries or []]


def _cmd_paths(stage: dict) -> list[str]:
    """The values of the cmd's ``--flag value`` pairs, interpolated."""
    tokens = _render(stage["cmd"]).split()
    return [value for flag, value in zip(tokens, tokens[1:]) if flag.startswith("--")]


def _named(path: str, named: list[str]) -> bool:
    return any(path == n or path.startswith(n.rstrip("/") + "/") for n in named)


def _param_strings(declared: list[str]) -> set[str]:
    """Every string value under the stage's declared params (sections or single keys)."""
    found: set[str] = set()

    def walk(node: object) -> None:
        if isinstance(node, str):
            found.add(node)
        elif isinstance(node, dict):
            for value in node.values():
                walk(value)

    for key in declared:
        walk(_lookup(key))
    return found


def test_every_cmd_names_its_outputs_and_data_inputs() -> None:
    """One place for the paths: dvc.yaml's cmd passes each out and each data dep to the stage CLI.

    A dep whose path is the value of one of the stage's declared params (predict loads
    ``global_reasoning.checkpoint``, train's export, and ``detail.light_checkpoint``) is a checkpoint
    the stage loads through params.yaml, and need not be in the cmd.
    """
    for name, stage in DVC.items():
        named = _cmd_paths(stage)
        for out in _paths(stage.get("outs")) + _paths(stage.get("metrics")) + _paths(stage.get("plots")):
            assert _named(_render(out), named), f"stage {name}: cmd does not name its output {out}"
        through_params = _param_strings(stage.get("params", []))
        for dep in _paths(stage.get("deps")):
            if dep.startswith(("src/", "stages/", "flows/")) or _render(dep) in through_params:
                continue
            assert _named(_render(dep), named), f"stage {name}: cmd does not name its input {dep}"


def test_stage_clis_require_their_paths(capsys) -> None:  # type: ignore[no-untyped-def]
    """Without arguments a stage CLI refuses to run (argparse, exit 2) and names the missing paths."""
    import pytest

    for name, stage in DVC.items():
        module = importlib.import_module(f"stages.{name}")
        with pytest.raises(SystemExit) as exit_info:
            module.main([])
        assert exit_info.value.code == 2, name
        err = capsys.readouterr().err
        flags = [t for t in _render(stage["cmd"]).split() if t.startswith("--") and t != "--format"]
        assert "the following arguments are required" in err and all(f in err for f in flags), (name, err)


def test_declared_params_exist() -> None:
    for name, stage in DVC.items():
        for param in stage.get("params", []):
            _lookup(param)
        for dep in stage.get("deps", []):
            for dotted in re.findall(r"\$\{([^}]+)\}", dep):
                _lookup(dotted)


def test_declared_code_deps_exist() -> None:
    for name, stage in DVC.items():
        for dep in stage.get("deps", []):
            path = REPO / _render(dep)
            if dep.startswith(("src/", "stages/", "flows/")):
                assert path.exists(), f"stage {name}: dep {dep} does not exist"


def test_stage_imports_are_declared_as_deps() -> None:
    """Every omni_r1 module a stage's CLI imports directly must be a dep of that stage."""
    for name, stage in DVC.items():
        source = (REPO / f"stages/{name}.py").read_text()
        deps = set(stage["deps"])
        for module in re.findall(r"^from (omni_r1\.[\w.]+|flows\.\w+) import", source, flags=re.M):
            path = module.replace(".", "/")
            candidates = {f"src/{path}.py", f"src/{path}", f"{path}.py"}
            inside_dep = any(f"src/{path}".startswith(d.rstrip("/") + "/") for d in deps)  # a package folder dep
            assert candidates & deps or inside_dep or any(d.startswith(f"src/{path}") for d in deps), (
                f"stages/{name}.py imports {module}, which dvc.yaml does not list as a dep of {name}"
            )


def test_stage_outputs_chain() -> None:
    """Each stage after the first reads an output of an earlier one (metrics and plots are outputs too)."""
    outs: set[str] = set()
    for name, stage in DVC.items():
        stage_outs = {_render(o if isinstance(o, str) else next(iter(o)))
                      for key in ("outs", "metrics", "plots") for o in stage.get(key, [])}
        if outs:
            deps = {_render(d) for d in stage["deps"]}
            assert deps & outs, f"stage {name} reads no output of an earlier stage"
        outs |= stage_outs


def test_dvc_ignores_python_bytecode_in_the_code_folders_stages_depend_on() -> None:
    """A stage's first import writes ``__pycache__/`` beside the sources (unless PYTHONDONTWRITEBYTECODE is
    set); were it hashed, every code folder dep (``src/omni_r1/data/formats``, ...) would change and
    ``dvc repro`` would rerun its stages for nothing. The real ``dvc check-ignore`` reads ``.dvcignore``."""
    import subprocess
    import sys

    folders = sorted({dep for stage in DVC.values() for dep in stage.get("deps", [])
                      if dep.startswith(("src/", "stages/")) and (REPO / dep).is_dir()})
    assert folders, "dvc.yaml has no code folder deps; this test no longer checks anything"
    probes = [f"{folder}/__pycache__/module.cpython-311.pyc" for folder in folders]
    dvc = str(Path(sys.executable).with_name("dvc"))
    proc = subprocess.run([dvc, "check-ignore", *probes, f"{folders[0]}/module.py"], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.stdout.split() == probes, f"not ignored by .dvcignore: {sorted(set(probes) - set(proc.stdout.split()))}"
