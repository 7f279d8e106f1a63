"""Scale-out of the fan-out: runner selection from params.yaml, a clear error without Ray, and the shard
stage on a two-worker Dask LocalCluster writing the same bytes as the thread and process runners.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest

from flows.fanout import make_task_runner
from omni_r1.config import load_params

# The tests' own params file: every key not in it takes its default from omni_r1.config.
PARAMS_YAML = "data:\n  format: video\n"


@pytest.fixture(scope="module")
def params_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("params") / "params.yaml"
    path.write_text(PARAMS_YAML)
    return path


def test_dask_runner_starts_a_local_cluster_of_the_configured_workers(params_file: Path) -> None:
    from prefect_dask import DaskTaskRunner

    params = load_params(params_file, ["shard.fanout.task_runner=dask", "shard.fanout.workers=3"])
    fan = params.shard.fanout
    runner = make_task_runner(fan.task_runner, fan.workers, fan.address)
    assert isinstance(runner, DaskTaskRunner)
    assert runner.address is None
    assert runner.cluster_kwargs["n_workers"] == 3 and runner.cluster_kwargs["threads_per_worker"] == 1


def test_dask_runner_joins_the_configured_scheduler(params_file: Path) -> None:
    params = load_params(params_file, ["features.fanout.task_runner=dask",
                                                "features.fanout.address=tcp://10.0.0.5:8786"])
    fan = params.features.fanout
    runner = make_task_runner(fan.task_runner, fan.workers, fan.address)
    assert runner.address == "tcp://10.0.0.5:8786"  # nothing is contacted until the flow starts


def test_missing_ray_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "prefect_ray", None)  # an import of it now fails, installed or not
    with pytest.raises(RuntimeError, match=r"prefect-ray.*pip install -e \.\[ray\]"):
        make_task_runner("ray", 2)


def test_ray_runner_gets_the_address_or_a_local_cluster(monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[dict] = []

    class FakeRayTaskRunner:
        def __init__(self, **kwargs: object) -> None:
            made.append(kwargs)

    monkeypatch.setitem(sys.modules, "prefect_ray", types.SimpleNamespace(RayTaskRunner=FakeRayTaskRunner))
    make_task_runner("ray", 2, "ray://head:10001")
    make_task_runner("ray", 2)
    assert made[0] == {"address": "ray://head:10001"}
    assert made[1]["init_kwargs"]["num_cpus"] == 2 and "address" not in made[1]


def test_an_address_without_a_cluster_runner_is_refused(params_file: Path) -> None:
    with pytest.raises(ValueError, match=r"fanout\.address"):
        load_params(params_file, ["shard.fanout.task_runner=thread", "shard.fanout.address=tcp://x:8786"])


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from omni_r1.config import IngestParams
    from omni_r1.data.pipeline import ingest
    from omni_r1.data.synthetic import SynthSpec, generate
    from omni_r1.fileio import atomic_write_parquet

    root = tmp_path_factory.mktemp("dask-synth")
    generate(root, "video", SynthSpec(videos=5, seed=5, width=96, height=64, fps=10, seconds=1.5))
    frame, _ = ingest("video", root, IngestParams())
    manifest = root.parent / f"{root.name}-manifest.parquet"
    atomic_write_parquet(manifest, frame)
    return root, manifest


def _shard(dataset: tuple[Path, Path], params_file: Path, run: Path, runner: str) -> dict[str, bytes]:
    from stages import shard

    root, manifest = dataset
    argv = ["--params", str(params_file), "--manifest", str(manifest), "--root", str(root),
            "--out", str(run / "shards"), "--metrics", str(run / "shard.json")]
    for override in ("data.fps=2.0", "data.max_frames=6", "data.low_res=48", "data.high_res=64",
                     "shard.videos_per_shard=2", f"shard.fanout.task_runner={runner}", "shard.fanout.workers=2"):
        argv += ["--set", override]
    assert shard.main(argv) == 0
    return {p.name: p.read_bytes() for p in sorted((run / "shards").iterdir())}


@pytest.mark.slow
def test_shard_stage_on_a_dask_cluster_writes_the_same_bytes(prefect_harness: None, dataset: tuple[Path, Path],
                                                             params_file: Path, tmp_path: Path) -> None:
    on_dask = _shard(dataset, params_file, tmp_path / "dask", "dask")
    import json

    manifest = json.loads(on_dask["manifest.json"])
    assert sum(entry["videos"] for entry in manifest["shards"]) == 5
    assert sorted(on_dask) == sorted(["manifest.json", "quarantine.json", *(e["name"] for e in manifest["shards"])])
    assert on_dask == _shard(dataset, params_file, tmp_path / "thread", "thread")
    assert on_dask == _shard(dataset, params_file, tmp_path / "process", "process")
