"""The shard stage on every local executor (threads, spawned processes, a two-worker Dask LocalCluster)
writes the same bytes, with no Prefect server anywhere (``omni_r1.fanout``; its unit tests are
tests/unit/test_fanout.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

# The tests' own params file: every key not in it takes its default from omni_r1.config.
PARAMS_YAML = "data:\n  format: video\n"


@pytest.fixture(scope="module")
def params_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("params") / "params.yaml"
    path.write_text(PARAMS_YAML)
    return path


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
def test_shard_stage_on_a_dask_cluster_writes_the_same_bytes(dataset: tuple[Path, Path],
                                                             params_file: Path, tmp_path: Path) -> None:
    on_dask = _shard(dataset, params_file, tmp_path / "dask", "dask")
    manifest = json.loads(on_dask["manifest.json"])
    assert sum(entry["videos"] for entry in manifest["shards"]) == 5
    written = sorted(name for name in on_dask if not name.startswith("."))  # beside the stage's ownership marker
    assert written == sorted(["manifest.json", "quarantine.json", *(e["name"] for e in manifest["shards"])])
    assert on_dask == _shard(dataset, params_file, tmp_path / "thread", "thread")
    assert on_dask == _shard(dataset, params_file, tmp_path / "process", "process")
