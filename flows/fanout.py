"""Fan-out of per-video work through a Prefect task runner chosen in ``params.yaml``.

Stages call ``map_chunks(fn, items, ...)``: items are cut into chunks, each chunk is one Prefect
task named after the stage, and results come back in item order while a progress bar advances.
Chunks rather than one task per video because each task run costs a round trip to the Prefect
API (about 0.3-2 s per task in a process pool on 2 cores, measured), which would dominate short
clips. ``fn`` must be a module-level function so that a process pool can pickle it by reference.
Prefect starts only when a stage fans out (its ephemeral API costs seconds to start).

Runner choice, measured on 2 cores (2026-11-26): Prefect's ephemeral API starts in 8-14 s; a
``ProcessPoolTaskRunner`` adds 13-20 s per stage for its spawned workers (each imports Prefect and
the task's modules and opens its own API client), against about 1 s for a thread pool. Decoding runs
in ffmpeg subprocesses and the processor releases the GIL in its numpy/torch kernels, so threads use
both cores; ``thread`` is the default in params.yaml and ``process`` is there for Python-bound work.
Spawned workers would each start a private ephemeral API unless told where the parent's is, so the
process runner gets one shared server whose URL the children inherit.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from typing import Any, Callable, Sequence, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")
R = TypeVar("R")
log = logging.getLogger(__name__)


def chunked(items: Sequence[T], size: int) -> list[list[T]]:
    return [list(items[i : i + size]) for i in range(0, len(items), size)]


def chunk_size(n_items: int, workers: int, chunks_per_worker: int = 2) -> int:
    """Small enough to balance load and move the progress bar, large enough to amortise task overhead."""
    return max(1, math.ceil(n_items / max(1, workers * chunks_per_worker)))


def make_task_runner(kind: str, workers: int) -> Any:
    """The Prefect task runner named by ``<stage>.fanout.task_runner`` in params.yaml."""
    from prefect.task_runners import ProcessPoolTaskRunner, ThreadPoolTaskRunner

    if kind == "process":
        return ProcessPoolTaskRunner(max_workers=workers)
    if kind == "thread":
        return ThreadPoolTaskRunner(max_workers=workers)
    if kind == "dask":
        try:
            from prefect_dask import DaskTaskRunner
        except ImportError as err:
            raise RuntimeError(
                "fanout.task_runner is 'dask' but prefect-dask is not installed; "
                "run `.venv/bin/pip install prefect-dask==0.3.7` or choose 'process'"
            ) from err
        return DaskTaskRunner(cluster_kwargs={"n_workers": workers, "threads_per_worker": 1})
    raise ValueError(f"unknown fanout.task_runner {kind!r}; use process, thread or dask")


@contextlib.contextmanager
def _shared_api_for_subprocesses(kind: str):  # type: ignore[no-untyped-def]
    """For a process pool without a configured API, start one ephemeral server the workers can reach."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    if kind != "process" or PREFECT_API_URL.value():
        yield
        return
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer()
    server.start()
    previous = os.environ.get("PREFECT_API_URL")
    os.environ["PREFECT_API_URL"] = server.api_url  # inherited by the spawned workers
    try:
        with temporary_settings({PREFECT_API_URL: server.api_url}):
            yield
    finally:
        if previous is None:
            os.environ.pop("PREFECT_API_URL", None)
        else:
            os.environ["PREFECT_API_URL"] = previous
        server.stop()


def _run_chunk(fn: Callable[..., R], chunk: list[Any], common: tuple[Any, ...]) -> list[R]:
    return [fn(item, *common) for item in chunk]


def map_chunks(
    fn: Callable[..., R],
    items: Sequence[Any],
    *,
    common: tuple[Any, ...] = (),
    stage: str,
    task_runner: str,
    workers: int,
    unit: str = "video",
    on_result: Callable[[R], Any] | None = None,
) -> list[Any]:
    """Run ``fn(item, *common)`` for every item as Prefect tasks; return results in item order.

    ``on_result`` is called in the parent, in item order, as soon as each result is available;
    what it returns is kept in place of the result, so a caller can stream big results to disk
    and keep only a small summary of each.
    """
    from prefect import flow, task
    from prefect.cache_policies import NO_CACHE

    if not items:
        return []
    chunks = chunked(items, chunk_size(len(items), workers))
    stage_task = task(_run_chunk, name=stage, cache_policy=NO_CACHE, persist_result=False, retries=0)

    @flow(name=f"{stage}-fanout", task_runner=make_task_runner(task_runner, workers), persist_result=False,
          log_prints=False)
    def fanout() -> list[Any]:
        futures = [stage_task.submit(fn, chunk, common) for chunk in chunks]
        kept: list[Any] = []
        with tqdm(total=len(items), desc=stage, unit=unit, dynamic_ncols=True) as bar:
            for future in futures:
                for result in future.result():
                    kept.append(on_result(result) if on_result is not None else result)
                    bar.update(1)
        return kept

    log.info("%s: %d items in %d chunks on a %s task runner with %d workers", stage, len(items), len(chunks),
             task_runner, workers)
    # Heartbeats matter only to monitored deployments; for this local run the heartbeat thread's
    # 1 s sleeps are joined at the end of the flow (about 1 s per stage, measured by the bench).
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    with _shared_api_for_subprocesses(task_runner), temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        return fanout()

