"""``omni-r1 prepare``: the data stages of ``dvc.yaml`` run by DVC on any dataset folder, with no second graph.

``write_project(repo, out, root, fmt, params, overrides)`` makes ``out`` a small DVC project (``dvc init
--no-scm``) whose ``dvc.yaml`` is the repository's own, cut to the data stages (``PREPARE_STAGES``) and
moved: every ``data/...`` path of a cmd, dep or out loses its ``data/`` prefix (so ``out`` mirrors
``data/``: ``interim/``, ``shards/``, ``features/``, ``metrics/``), code deps point at the repository's
files (a code folder as its source files, without Python's bytecode), and outputs are not cached (DVC
tracks their hashes in ``out/dvc.lock``; nothing is stored twice).
Its ``params.yaml`` is the given params file with the overrides, ``data.root`` and ``data.format`` applied.
``run_project`` then runs ``dvc repro`` there (or the pipeline flow, one Prefect task per stage), so a
rerun skips what is up to date and a changed param or input reruns what depends on it.

Only the stage names, and the rule above, are here; commands, deps and outs come from ``dvc.yaml``.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Literal, Sequence

import yaml

PREPARE_STAGES = ("ingest", "validate", "shard", "features")
DATA_PREFIX = "data/"
CODE_PREFIXES = ("src/", "stages/", "flows/", "configs/", "reports/")


class PrepareFailed(RuntimeError):
    """A ``dvc`` command in the prepared project exited non-zero; the message carries its output's tail."""


def write_project(repo: Path, out: Path, root: Path, fmt: str, params_file: Path,
                  overrides: Sequence[str] = (), stages: Sequence[str] = PREPARE_STAGES, dvc: str | None = None) -> Path:
    """Make ``out`` a DVC project running ``stages`` of ``repo``'s dvc.yaml on the dataset at ``root``."""
    from omni_r1.config import load_params, params_to_dict

    repo, out, root = repo.resolve(), out.resolve(), root.resolve()
    if out == repo:
        raise ValueError(f"--out {out} is the repository itself; give a separate folder for the prepared data")
    if out == root or root in out.parents:
        raise ValueError(f"--out {out} lies inside the dataset root {root}; write the prepared data elsewhere, "
                         "so that the dataset stays untouched")
    params = load_params(params_file, [*overrides, f"data.root={root}", f"data.format={fmt}"])
    graph = yaml.safe_load((repo / "dvc.yaml").read_text())["stages"]
    unknown = [s for s in stages if s not in graph]
    if unknown:
        raise ValueError(f"{repo / 'dvc.yaml'} has no stage(s) {unknown}; prepare runs {list(PREPARE_STAGES)}")
    moved = {name: _moved_stage(graph[name], repo) for name in stages}
    out.mkdir(parents=True, exist_ok=True)
    if not (out / ".dvc").is_dir():
        _dvc([dvc or default_dvc(), "init", "--no-scm", "-q"], out)
    (out / "params.yaml").write_text(yaml.safe_dump(params_to_dict(params), sort_keys=False))
    header = (f"# Written by `omni-r1 prepare` from {repo / 'dvc.yaml'} (stages {', '.join(stages)}); "
              "regenerated on every prepare.\n")
    (out / "dvc.yaml").write_text(header + yaml.safe_dump({"stages": moved}, sort_keys=False, width=120))
    return out


def _moved_stage(stage: dict[str, Any], repo: Path) -> dict[str, Any]:
    stage = copy.deepcopy(stage)
    stage["cmd"] = " ".join(_moved_path(token, repo) for token in str(stage["cmd"]).split())
    stage["deps"] = [moved for dep in stage.get("deps", []) for moved in _code_files(_moved_path(dep, repo), repo)]
    for key in ("outs", "metrics", "plots"):
        if key in stage:
            stage[key] = [_uncached(entry, repo) for entry in stage[key]]
    return stage


def _moved_path(path: str, repo: Path) -> str:
    if path.startswith(DATA_PREFIX):
        return path[len(DATA_PREFIX):]
    if path.startswith(CODE_PREFIXES):
        return str(repo / path)
    return path


def _code_files(dep: str, repo: Path) -> list[str]:
    """A code folder of the repository as its source files; any other dep as it is.

    The repository's ``.dvcignore`` keeps Python's bytecode (``__pycache__/``) out of the hash of a code
    folder, but a prepared project sees the repository's folders from outside its own root, where no
    ``.dvcignore`` applies: a folder dep there would change whenever a stage first imports its modules and
    writes their bytecode, and every prepare would rerun the stage. Its files are listed instead (the
    project's dvc.yaml is rewritten on every prepare, so a file added later is picked up then).
    """
    path = Path(dep)
    if not (path.is_absolute() and path.is_dir() and repo in path.parents):
        return [dep]
    files = sorted(str(f) for f in path.rglob("*") if f.is_file() and not _is_bytecode(f))
    return files or [dep]


def _is_bytecode(path: Path) -> bool:
    return "__pycache__" in path.parts or path.suffix == ".pyc"


def _uncached(entry: Any, repo: Path) -> dict[str, Any]:
    path, options = (entry, {}) if isinstance(entry, str) else next(iter(entry.items()))
    return {_moved_path(path, repo): {**(options or {}), "cache": False}}


def run_project(out: Path, via: Literal["dvc", "flow"] = "dvc", dvc: str | None = None) -> None:
    """``dvc repro`` in the prepared project, or the pipeline flow over its dvc.yaml (one server for the run)."""
    binary = dvc or default_dvc()
    if via == "flow":
        from flows.pipeline import pipeline

        pipeline(repo=str(out), dvc=binary)
        return
    _dvc([binary, "repro"], out, stream=True)


def default_dvc() -> str:
    """The ``dvc`` beside this Python (the venv's), else the one on PATH."""
    beside = Path(sys.executable).with_name("dvc")
    return str(beside) if beside.exists() else "dvc"


def _dvc(command: list[str], cwd: Path, stream: bool = False) -> None:
    env = dict(os.environ)
    env.setdefault("DVC_NO_ANALYTICS", "1")
    if os.sep in command[0]:  # dvc.yaml's `python -m stages.*` must find the python beside this dvc
        env["PATH"] = f"{Path(command[0]).parent}{os.pathsep}{env.get('PATH', '')}"
    if stream:
        proc = subprocess.run(command, cwd=cwd, env=env)
        if proc.returncode != 0:
            raise PrepareFailed(f"`{' '.join(command)}` in {cwd} exited with code {proc.returncode}; the stage's "
                                "log is above. Fix the cause and rerun prepare: DVC skips the stages that are "
                                "up to date")
        return
    proc = subprocess.run(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0:
        tail = "\n".join(proc.stdout.splitlines()[-20:])
        raise PrepareFailed(f"`{' '.join(command)}` in {cwd} exited with code {proc.returncode}:\n{tail}")
