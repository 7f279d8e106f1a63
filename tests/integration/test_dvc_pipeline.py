"""The real DVC graph in a throwaway git repo, run stage by stage by the Prefect flow.

A second ``dvc repro`` is a no-op, and changing a shard parameter reruns only the stages after it.
The data half (synth .. features) is reproduced here; the model stages after it run in
``test_eval_stages.py`` through their CLIs, which keeps this test within the CI budget.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from flows.pipeline import pipeline, stage_names

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
SMALL = {
    "synth": {"videos": 3, "width": 96, "height": 64, "fps": 10, "seconds": 2.0},
    "data": {"low_res": 64, "high_res": 96, "max_frames": 6},
    "detail": {"light_steps": 2, "light_batch": 4, "light_size": 32},
    "global_reasoning": {"max_new_tokens": 8},
}
DATA_STAGES = ["synth", "ingest", "validate", "shard", "features"]
MODEL_STAGES = ["train_detail", "train", "predict", "evaluate", "report", "paper"]


def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.name=omni-r1 test", "-c", "user.email=test@omni-r1.invalid", *args],
                   cwd=repo, check=True, capture_output=True)


def _dvc(repo: Path, *args: str) -> str:
    proc = subprocess.run([str(BIN / "dvc"), *args], cwd=repo, capture_output=True, text=True, env=_env())
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout + proc.stderr


def _env() -> dict[str, str]:
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1"}


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, prefect_harness: None) -> Path:
    """A copy of the project's graph, code and params (made small) in a fresh git + DVC repo."""
    from prefect.settings import PREFECT_API_URL

    repo = tmp_path_factory.mktemp("dvc-project")
    for folder in ("src", "stages", "flows", "reports"):
        shutil.copytree(REPO / folder, repo / folder, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    shutil.copy(REPO / "dvc.yaml", repo / "dvc.yaml")
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    for section, values in SMALL.items():
        params[section].update(values)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    _git(repo, "init", "-q")
    _dvc(repo, "init", "-q")
    _dvc(repo, "config", "core.analytics", "false")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "project")
    # Stage subprocesses reach the session's Prefect API instead of each starting an ephemeral one.
    os.environ["PREFECT_API_URL"] = str(PREFECT_API_URL.value())
    return repo


def test_flow_runs_the_data_stages_in_graph_order(project: Path) -> None:
    order = stage_names(project / "dvc.yaml")
    assert sorted(order) == sorted(DATA_STAGES + MODEL_STAGES)
    assert order[: len(DATA_STAGES)] == DATA_STAGES  # the data half first, in graph order
    assert order.index("train_detail") < order.index("train") < order.index("predict") < order.index("evaluate")
    results = pipeline(repo=str(project), stages=DATA_STAGES, dvc=str(BIN / "dvc"))
    assert [r["stage"] for r in results] == DATA_STAGES
    assert all(r["status"] == "ran" for r in results)
    assert (project / "dvc.lock").is_file()
    assert list((project / "data/shards").glob("*.tar")) and list((project / "data/features").glob("*.safetensors"))


def test_second_repro_is_a_no_op(project: Path) -> None:
    out = _dvc(project, "repro", "features")
    assert "Data and pipelines are up to date." in out
    assert "Running stage" not in out
    results = pipeline(repo=str(project), stages=DATA_STAGES, dvc=str(BIN / "dvc"))
    assert all(r["status"] == "cached" for r in results)


def test_shard_param_reruns_only_the_stages_after_it(project: Path) -> None:
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["data"]["high_res"] = 80  # a shard-stage parameter that changes the shards' bytes
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = _dvc(project, "repro", "features")
    ran = {line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage")}
    assert ran == {"shard", "features"}, out  # not synth, ingest or validate
    status = _dvc(project, "status")
    assert "train_detail" in status and "ingest" not in status  # downstream model stages are now stale
    params["shard"]["videos_per_shard"] = 1  # one video per shard already: the same bytes, so features is kept
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = _dvc(project, "repro", "features")
    ran = {line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage")}
    assert ran == {"shard"}, out
