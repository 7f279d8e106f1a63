"""Pin, restore and reproduce on data versions: the git and DVC commands around ``omni_r1.versioning``.

- ``pin``: record the raw data, shards and features of the workspace (as ``dvc.lock`` tracks them)
  in ``data/versions/NAME.json``, commit it with ``dvc.lock``, tag the commit ``data/NAME`` and
  ``dvc push`` the pinned outputs when a default remote is configured.
- ``checkout``: ``git checkout data/NAME -- dvc.lock data/versions/NAME.json`` (and the raw data's
  ``.dvc`` file), then ``dvc checkout`` of the pinned outputs (``dvc pull`` when the cache lacks
  them), then verify.
- ``reproduce``: verify, then ``dvc exp run --single-item -S global_reasoning.checkpoint=PATH
  -S paper.table=TABLE -S paper.data_version=NAME -S paper.experiment=EXP [train_detail] predict evaluate
  paper`` so that only the evaluation stages run on the pinned data, the ``paper`` stage writes
  ``reports/paper_<table>.md``, and the run is kept as a DVC experiment.

Why ``dvc exp run`` rather than ``dvc repro``: ``repro`` has no way to set a parameter for one run,
so it would need ``params.yaml`` edited by hand; ``exp run -S`` sets it, runs, and records the
parameters and metrics as an experiment (``dvc exp show``). ``--single-item`` keeps DVC from
re-running upstream data stages whose code changed since the pin, which would silently replace the
pinned shards. The workspace keeps the experiment's ``params.yaml`` and ``dvc.lock`` afterwards, as
``dvc exp run`` always does.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

from omni_r1.config import load_params
from omni_r1.eval.paper import Table
from omni_r1.versioning import (UnknownDataVersion, build_record, read_record, record_path, tag_name,
                                verify_version, write_record)

log = logging.getLogger("omni-r1.data")


class CommandFailed(RuntimeError):
    """A git or DVC command exited non-zero; the message holds the command and its output."""


def _env(dvc: str) -> dict[str, str]:
    # Stages run `python -m stages.<name>`: the python beside the dvc binary must come first on PATH.
    bin_dir = str(Path(dvc).parent) if os.sep in dvc else str(Path(sys.executable).parent)
    return {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}", "DVC_NO_ANALYTICS": "1"}


def _run(cmd: Sequence[str], repo: Path, dvc: str = "dvc", check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(cmd), cwd=repo, capture_output=True, text=True, env=_env(dvc))
    if check and proc.returncode != 0:
        raise CommandFailed(f"`{' '.join(cmd)}` failed in {repo} (exit {proc.returncode}):\n"
                            f"{(proc.stdout + proc.stderr).strip()[-2000:]}")
    return proc


def default_remote(repo: Path, dvc: str = "dvc") -> str | None:
    """The default DVC remote's name, or None when none is configured."""
    proc = _run([dvc, "remote", "default"], repo, dvc, check=False)
    name = proc.stdout.strip()
    return name if proc.returncode == 0 and name else None


def _tag_exists(repo: Path, name: str) -> bool:
    proc = _run(["git", "rev-parse", "-q", "--verify", f"refs/tags/{tag_name(name)}"], repo, check=False)
    return proc.returncode == 0


def _dvc_targets(record: dict[str, Any]) -> list[str]:
    """What DVC commands take for the pinned outputs: their stage names or ``.dvc`` files."""
    targets = []
    for entry in record["outs"].values():
        source = entry["tracked_by"]
        target = source.split(":", 1)[1] if source.startswith("dvc.lock:") else source
        if target not in targets:
            targets.append(target)
    return targets


def _git_files(record: dict[str, Any]) -> list[str]:
    """The files a version commits and restores: dvc.lock, the record, and ``.dvc`` files of raw data."""
    files = ["dvc.lock", record_path(record["name"])]
    files += [e["tracked_by"] for e in record["outs"].values() if not e["tracked_by"].startswith("dvc.lock:")]
    return list(dict.fromkeys(files))


def pin(repo: Path, name: str, dvc: str = "dvc", push: bool = True) -> dict[str, Any]:
    """Record, commit and tag data version ``name``; push its outputs to the default remote if one is set."""
    repo = Path(repo).resolve()
    if _tag_exists(repo, name):
        raise ValueError(f"data version {name!r} exists (git tag {tag_name(name)}); choose another name, or delete "
                         f"it with `git tag -d {tag_name(name)}` if it was never shared")
    params = load_params(repo / "params.yaml")
    cache_dir = Path(_run([dvc, "cache", "dir"], repo, dvc).stdout.strip())
    head = _run(["git", "rev-parse", "HEAD"], repo, check=False).stdout.strip()
    record = build_record(repo, name, params.data.root, params.data.format, head, cache_dir)
    write_record(repo, record)
    files = _git_files(record)
    # -f: data/ is git-ignored, but the version records under data/versions/ belong in git.
    _run(["git", "add", "-f", "--", *files], repo)
    _run(["git", "commit", "-q", "-m", f"Data version {name}", "--", *files], repo)
    _run(["git", "tag", "-a", tag_name(name), "-m", f"omni-r1 data version {name}"], repo)
    remote = default_remote(repo, dvc) if push else None
    if remote is not None:
        _run([dvc, "push", "-r", remote, *_dvc_targets(record)], repo, dvc)
    log.info("pinned data version %s (tag %s)%s", name, tag_name(name),
             f", pushed to remote {remote!r}" if remote else ", not pushed (no default DVC remote)")
    return {**record, "tag": tag_name(name), "pushed_to": remote}


def checkout(repo: Path, name: str, dvc: str = "dvc", force: bool = False) -> None:
    """Restore data version ``name`` into the workspace (pulling from the remote if needed), then verify it.

    DVC will not overwrite workspace files whose content is in no cache (edits never committed);
    ``force`` discards them, as ``dvc checkout --force`` does.
    """
    repo = Path(repo).resolve()
    if not _tag_exists(repo, name):
        raise UnknownDataVersion(f"no git tag {tag_name(name)}; list versions with `git tag -l 'data/*'` "
                                 "(after `git fetch --tags` if it was pinned elsewhere)")
    record = read_record(repo, name)
    _run(["git", "checkout", tag_name(name), "--", *_git_files(record)], repo)
    targets = _dvc_targets(record)
    force_flag = ["--force"] if force else []
    restored = _run([dvc, "checkout", *force_flag, *targets], repo, dvc, check=False)
    if restored.returncode != 0:
        _refuse_unsaved(restored, name)
        remote = default_remote(repo, dvc)
        if remote is None:
            raise CommandFailed(f"`dvc checkout` could not restore data version {name!r} from the local cache and "
                                "no default DVC remote is set; add the remote it was pushed to "
                                "(`dvc remote add -d NAME URL`) and rerun `omni-r1 data checkout "
                                f"{name}`:\n{_tail(restored)}")
        pulled = _run([dvc, "pull", *force_flag, "-r", remote, *targets], repo, dvc, check=False)
        if pulled.returncode != 0:
            _refuse_unsaved(pulled, name)
            raise CommandFailed(f"`dvc pull -r {remote}` could not restore data version {name!r}:\n{_tail(pulled)}")
    verify_version(repo, name)
    log.info("data version %s restored and verified", name)


def _tail(proc: subprocess.CompletedProcess[str]) -> str:
    return (proc.stdout + proc.stderr).strip()[-1500:]


def _refuse_unsaved(proc: subprocess.CompletedProcess[str], name: str) -> None:
    """DVC refused to overwrite edited files that no cache holds: say which, and the two ways on."""
    if "without confirmation" in proc.stdout + proc.stderr:
        raise CommandFailed(f"restoring data version {name!r} would discard edits that are in no DVC cache "
                            f"(listed below). Keep them as a version first (`omni-r1 data pin NEW_NAME` after "
                            f"`dvc commit`), or discard them with `omni-r1 data checkout {name} --force`:\n"
                            f"{_tail(proc)}")


def _detail_setting(repo: Path, detail_checkpoint: str | None) -> list[str]:
    """The ``-S`` override for a given System 2 checkpoint (none: params.yaml's checkpoint is used)."""
    if detail_checkpoint is None:
        return []
    backend = load_params(repo / "params.yaml").detail.backend
    key = "detail.light_checkpoint" if backend == "light" else "detail.sam2_checkpoint"
    return [f"{key}={detail_checkpoint}"]


def reproduce(repo: Path, table: Table, data_version: str, checkpoint: str, detail_checkpoint: str | None = None,
              dvc: str = "dvc") -> Path:
    """Verify the data version, run predict, evaluate and paper as one DVC experiment; the report's path."""
    repo = Path(repo).resolve()
    verify_version(repo, data_version)
    record = read_record(repo, data_version)
    params = load_params(repo / "params.yaml")
    if params.data.root != record["data_root"]:
        raise ValueError(f"params.yaml: data.root is {params.data.root!r} but data version {data_version!r} pins "
                         f"{record['data_root']!r}; set data.root to {record['data_root']!r} (or pin the other data)")
    # A given light checkpoint replaces train_detail's output; without one, train_detail runs only if stale.
    stages = ["predict", "evaluate", "paper"] if detail_checkpoint and params.detail.backend == "light" \
        else ["train_detail", "predict", "evaluate", "paper"]
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
    experiment = f"paper-{table}-{data_version}-{stamp}"
    settings = [f"global_reasoning.checkpoint={checkpoint}", *_detail_setting(repo, detail_checkpoint),
                f"paper.table={table}", f"paper.data_version={data_version}", f"paper.experiment={experiment}"]
    sets = [a for s in settings for a in ("-S", s)]
    _run([dvc, "exp", "run", "--single-item", "-n", experiment, *sets, *stages], repo, dvc)
    verify_version(repo, data_version)  # the evaluation stages must not have touched the pinned data
    out = repo / "reports" / f"paper_{table}.md"
    log.info("wrote %s (experiment %s)", out, experiment)
    return out
