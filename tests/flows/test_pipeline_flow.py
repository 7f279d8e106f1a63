"""The Prefect side: stage order from dvc.yaml, the pipeline flow under a test harness, and the fan-out.

The flow tests replace ``flows.pipeline.run_dvc`` (the one place that starts ``dvc``) with a scripted
stand-in, so they check ordering, retries, the artifact and failure reporting in seconds; the real
DVC graph runs through the same flow in ``tests/integration/test_dvc_pipeline.py``.
"""

from __future__ import annotations

import json
import shutil
import sys
import types
from pathlib import Path
from typing import Any, Callable, Sequence

import pytest

from flows import pipeline as pipeline_module
from flows.pipeline import (
    IO_BOUND_STAGES,
    DvcResult,
    StageFailed,
    pipeline,
    read_graph,
    results_markdown,
    select_stages,
    stage_command,
    stage_order,
    stage_task,
)

REPO = Path(__file__).resolve().parents[2]


# --------------------------------------------------------------------------- graph order


def test_stage_order_is_a_topological_order_of_dvc_yaml() -> None:
    graph = read_graph(REPO / "dvc.yaml")
    order = stage_order(REPO / "dvc.yaml")
    assert sorted(order) == sorted(graph)  # every stage, once
    for name, spec in graph.items():
        assert all(order.index(up) < order.index(name) for up in spec.upstream), (name, spec.upstream)
    assert order[:5] == ["synth", "ingest", "validate", "shard", "features"]
    assert order[-4:] == ["predict", "evaluate", "report", "paper"]


def test_graph_edges_match_dvcs_own_graph(tmp_path: Path) -> None:
    """Our reading of deps/outs (with ${...} from params.yaml) gives exactly the edges of `dvc dag`."""
    from dvc.repo import Repo

    shutil.copy(REPO / "dvc.yaml", tmp_path / "dvc.yaml")
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    repo = Repo.init(str(tmp_path), no_scm=True)  # in-process: two `dvc` subprocesses cost seconds each
    try:
        dvc_edges = {(upstream.name, stage.name) for stage, upstream in repo.index.graph.edges}
    finally:
        repo.close()
    ours = {(up, name) for name, spec in read_graph(tmp_path / "dvc.yaml").items() for up in spec.upstream}
    assert dvc_edges and ours == dvc_edges


def _write_graph(root: Path, stages: dict[str, Any], params: dict[str, Any] | None = None) -> Path:
    import yaml

    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}, sort_keys=False))
    (root / "params.yaml").write_text(yaml.safe_dump(params or {}))
    return root / "dvc.yaml"


def test_order_follows_deps_not_declaration(tmp_path: Path) -> None:
    dvc_yaml = _write_graph(tmp_path, {
        "report": {"cmd": "r", "deps": ["data/eval/metrics.json"]},
        "evaluate": {"cmd": "e", "deps": ["${paths.pred}/x"],
                     "metrics": [{"data/eval/metrics.json": {"cache": False}}]},
        "predict": {"cmd": "p", "outs": ["${paths.pred}"]},
        "lint": {"cmd": "l"},
    }, {"paths": {"pred": "data/predictions"}})
    assert stage_order(dvc_yaml) == ["predict", "evaluate", "report", "lint"]
    assert read_graph(dvc_yaml)["evaluate"].metrics == ("data/eval/metrics.json",)


def test_graph_errors_name_the_fix(tmp_path: Path) -> None:
    dvc_yaml = _write_graph(tmp_path, {"a": {"cmd": "a", "deps": ["${nope.key}"]}})
    with pytest.raises(ValueError, match=r"stage 'a' uses \$\{nope.key\}.*add the key to params.yaml"):
        read_graph(dvc_yaml)
    dvc_yaml = _write_graph(tmp_path, {"a": {"cmd": "a", "deps": ["y"], "outs": ["x"]},
                                       "b": {"cmd": "b", "deps": ["x"], "outs": ["y"]}})
    with pytest.raises(ValueError, match="dependency cycle"):
        stage_order(dvc_yaml)
    with pytest.raises(ValueError, match=r"unknown stage\(s\) \['trian'\]"):
        select_stages(["synth", "train"], ["trian"])
    assert select_stages(["a", "b", "c"], ["c", "a"]) == ["a", "c"]  # graph order, not argument order


# --------------------------------------------------------------------------- per-stage policy


def test_io_stages_retry_and_compute_stages_do_not() -> None:
    assert IO_BOUND_STAGES == {"synth", "ingest", "shard", "features"}
    for name in ("synth", "ingest", "shard", "features"):
        assert stage_task(name).retries == 2 and stage_task(name).name == name
    for name in ("validate", "train_detail", "train", "predict", "evaluate", "report"):
        assert stage_task(name).retries == 0
    assert stage_task("shard").task_run_name == "shard"


def test_overrides_switch_to_dvc_exp_run() -> None:
    assert stage_command("shard") == ["repro", "--single-item", "shard"]
    assert stage_command("shard", ["shard.videos_per_shard=1", "data.fps=1.0"]) == [
        "exp", "run", "--single-item", "-S", "shard.videos_per_shard=1", "-S", "data.fps=1.0", "shard"]


def test_results_markdown_lists_unrun_stages_and_the_log_tail() -> None:
    failure = StageFailed("predict", "dvc repro --single-item predict", 3, "line a\nline b")
    md = results_markdown([{"stage": "synth", "status": "ran", "tries": 1, "seconds": 0.5, "metrics": "n=3"}],
                          ["evaluate"], failure)
    assert "failed at `predict`" in md and "| synth | ran | 1 | 0.5 | n=3 |" in md
    assert "| evaluate | not run |" in md and "```text\nline a\nline b\n```" in md
    assert "exited with code 3" in str(failure) and "line b" in str(failure)


# --------------------------------------------------------------------------- the flow, with a scripted dvc


class ScriptedDvc:
    """Stands in for ``run_dvc``: records (task run name, dvc args) and answers from a script."""

    def __init__(self, answer: Callable[[str, int], DvcResult], on_call: Callable[[str], None] | None = None) -> None:
        self.answer, self.on_call = answer, on_call
        self.calls: list[tuple[str, list[str]]] = []

    def __call__(self, args: Sequence[str], repo: Path, dvc: str) -> DvcResult:
        from prefect.runtime import task_run

        stage = args[-1]
        self.calls.append((task_run.name, list(args)))
        if self.on_call:
            self.on_call(stage)
        return self.answer(stage, sum(1 for _, a in self.calls if a[-1] == stage))

    def stages(self) -> list[str]:
        return [name for name, _ in self.calls]


def _ok(stage: str, attempt: int) -> DvcResult:
    return DvcResult(0, f"Running stage '{stage}':\n> python -m stages.{stage}\nUpdating lock file 'dvc.lock'\n")


@pytest.fixture()
def project(tmp_path: Path) -> Path:
    """The project's dvc.yaml and params.yaml in a throwaway folder (nothing runs dvc in it)."""
    shutil.copy(REPO / "dvc.yaml", tmp_path / "dvc.yaml")
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    return tmp_path


@pytest.fixture()
def no_retry_delay(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pipeline_module, "RETRY_DELAY_SECONDS", 0)


def _artifact(flow_run_id: Any) -> str:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=[pipeline_module.ARTIFACT_KEY]),
            flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))
    assert len(found) == 1 and found[0].type == "markdown"
    return str(found[0].data)


def test_flow_runs_every_stage_in_graph_order_and_retries_a_flaky_io_stage(
        prefect_harness: None, project: Path, monkeypatch: pytest.MonkeyPatch, no_retry_delay: None) -> None:
    def answer(stage: str, attempt: int) -> DvcResult:
        if stage == "shard" and attempt == 1:
            return DvcResult(1, "ERROR: failed to write data/shards/train-000000.tar: No space left on device")
        if stage == "ingest":
            (project / "data/metrics").mkdir(parents=True)
            (project / "data/metrics/ingest.json").write_text(json.dumps({"samples": 12, "audio": {"seconds": 7.25}}))
        if stage == "features":
            return DvcResult(0, "Stage 'features' didn't change, skipping\n")
        return _ok(stage, attempt)

    dvc = ScriptedDvc(answer)
    monkeypatch.setattr(pipeline_module, "run_dvc", dvc)
    state = pipeline(repo=str(project), dvc="dvc", return_state=True)
    rows = state.result()

    order = stage_order(project / "dvc.yaml")
    assert [r["stage"] for r in rows] == order
    shard_first = order.index("shard")
    assert dvc.stages() == order[:shard_first + 1] + ["shard"] + order[shard_first + 1:]  # task run name == stage
    assert all(args[:2] == ["repro", "--single-item"] for _, args in dvc.calls)
    by_stage = {r["stage"]: r for r in rows}
    assert by_stage["shard"]["tries"] == 2 and by_stage["synth"]["tries"] == 1
    assert by_stage["features"]["status"] == "cached" and by_stage["predict"]["status"] == "ran"
    assert by_stage["ingest"]["metrics"] == "samples=12, audio.seconds=7.25"

    md = _artifact(state.state_details.flow_run_id)
    assert "## omni-r1 pipeline: completed" in md
    assert "| shard | ran | 2 |" in md and "| features | cached | 1 |" in md
    assert "samples=12, audio.seconds=7.25" in md
    assert [line.split("|")[1].strip() for line in md.splitlines() if line.startswith("| ")][1:] == order


def test_failing_compute_stage_raises_its_log_tail_once_and_stops(
        prefect_harness: None, project: Path, monkeypatch: pytest.MonkeyPatch, no_retry_delay: None) -> None:
    log = "\n".join(f"predict log line {i}" for i in range(100))

    def answer(stage: str, attempt: int) -> DvcResult:
        return DvcResult(2, log) if stage == "predict" else _ok(stage, attempt)

    dvc = ScriptedDvc(answer)
    monkeypatch.setattr(pipeline_module, "run_dvc", dvc)
    state = pipeline(repo=str(project), stages=["features", "predict", "evaluate", "report"], dvc="dvc",
                     return_state=True)
    assert state.is_failed()
    with pytest.raises(StageFailed) as caught:
        state.result()

    message = str(caught.value)
    assert "stage 'predict' failed: `dvc repro --single-item predict` exited with code 2" in message
    assert "predict log line 99" in message and "predict log line 60" in message
    assert "predict log line 59\n" not in message  # only the last 40 lines
    assert dvc.stages() == ["features", "predict"]  # predict once (compute stages are not retried), then stop

    md = _artifact(state.state_details.flow_run_id)
    assert "failed at `predict`" in md and "| predict | failed | 1 |" in md
    assert "| evaluate | not run |" in md and "| report | not run |" in md
    assert "predict log line 99" in md and "predict log line 59\n" not in md


def test_overrides_are_checked_first_then_run_as_dvc_experiments(
        prefect_harness: None, project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from omni_r1.config import ConfigError

    dvc = ScriptedDvc(_ok)
    monkeypatch.setattr(pipeline_module, "run_dvc", dvc)
    with pytest.raises(ConfigError, match="shard"):
        pipeline(repo=str(project), stages=["shard"], overrides=["shard.no_such_knob=1"], dvc="dvc")
    assert dvc.calls == []  # nothing ran with a bad override

    pipeline(repo=str(project), stages=["shard", "features"], overrides=["shard.videos_per_shard=1"], dvc="dvc")
    assert dvc.calls == [("shard", ["exp", "run", "--single-item", "-S", "shard.videos_per_shard=1", "shard"]),
                         ("features", ["exp", "run", "--single-item", "-S", "shard.videos_per_shard=1", "features"])]


def test_data_version_is_verified_before_any_stage(
        prefect_harness: None, project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    events: list[str] = []

    class DataVersionMismatch(RuntimeError):
        pass

    def verify_version(repo_root: Path, name: str) -> None:
        events.append(f"verify {name} in {repo_root.name}")
        if name != "v1":
            raise DataVersionMismatch(f"data version '{name}' differs: data/raw/synthetic/annotations.jsonl")

    # A stand-in for omni_r1.versioning, which the flow imports only when a version is named.
    fake = types.ModuleType("omni_r1.versioning")
    fake.verify_version = verify_version  # type: ignore[attr-defined]
    fake.DataVersionMismatch = DataVersionMismatch  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "omni_r1.versioning", fake)
    dvc = ScriptedDvc(_ok, on_call=lambda stage: events.append(f"run {stage}"))
    monkeypatch.setattr(pipeline_module, "run_dvc", dvc)

    with pytest.raises(DataVersionMismatch, match="annotations.jsonl"):
        pipeline(repo=str(project), stages=["ingest"], data_version="v0", dvc="dvc")
    assert events == [f"verify v0 in {project.name}"]

    events.clear()
    pipeline(repo=str(project), stages=["ingest", "validate"], data_version="v1", dvc="dvc")
    assert events == [f"verify v1 in {project.name}", "run ingest", "run validate"]
