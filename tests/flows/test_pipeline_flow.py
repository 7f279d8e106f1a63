"""The Prefect side: stage order from dvc.yaml, the cron deployment (built, not served), and the fan-out."""

from __future__ import annotations

from pathlib import Path

import pytest

from flows.fanout import chunk_size, chunked, make_task_runner, map_chunks
from flows.pipeline import DEFAULT_CRON, deployment, stage_names

REPO = Path(__file__).resolve().parents[2]


def test_stage_names_follow_dvc_yaml() -> None:
    assert stage_names(REPO / "dvc.yaml") == ["synth", "ingest", "validate", "shard", "features", "train_detail",
                                              "predict", "evaluate", "report"]


def test_deployment_has_the_cron_schedule() -> None:
    dep = deployment(cron="15 2 * * *", repo="/srv/omni-r1")
    assert dep.name == "omni-r1-nightly"
    assert [s.schedule.cron for s in dep.schedules] == ["15 2 * * *"]
    assert dep.parameters == {"repo": "/srv/omni-r1"}
    assert deployment().schedules[0].schedule.cron == DEFAULT_CRON


def test_chunking_balances_and_keeps_order() -> None:
    assert chunk_size(100, 2) == 25 and chunk_size(3, 2) == 1 and chunk_size(0, 2) == 1
    assert [x for c in chunked(list(range(10)), 3) for x in c] == list(range(10))


def test_unknown_runner_is_explained() -> None:
    with pytest.raises(ValueError, match="use process, thread or dask"):
        make_task_runner("ray", 2)


def _square(x: int, offset: int) -> int:
    return x * x + offset


def test_map_chunks_returns_results_in_order(prefect_harness: None) -> None:
    seen: list[int] = []

    def keep(result: int) -> str:
        seen.append(result)
        return f"r{result}"

    kept = map_chunks(_square, list(range(7)), common=(1,), stage="square", task_runner="thread", workers=2,
                      on_result=keep)
    assert seen == [x * x + 1 for x in range(7)] and kept == [f"r{x * x + 1}" for x in range(7)]


@pytest.mark.slow
def test_map_chunks_on_a_process_pool(prefect_harness: None) -> None:
    assert map_chunks(_square, [1, 2, 3], common=(0,), stage="square", task_runner="process", workers=2) == [1, 4, 9]
