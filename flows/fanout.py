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
process runner and a local Dask or Ray cluster get one shared server whose URL the children inherit.

Scale-out: ``task_runner: dask`` runs the chunks on a Dask cluster through ``prefect-dask`` and
``ray`` on a Ray cluster through ``prefect-ray`` (``pip install -e .[ray]``: the ray wheel is large,
so it is an extra). ``fanout.address`` names a running scheduler (``tcp://host:8786`` or
``ray://host:10001``); empty starts a local cluster of ``workers`` single-threaded worker processes.
Workers of a remote cluster must see the same paths as this process (dataset root, output and work
folders on a shared filesystem) and reach the Prefect API: set ``PREFECT_API_URL`` to a real server.
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


RUNNERS = ("thread", "process", "dask", "ray")
DASK_INSTALL = "pip install -e .  (it pins prefect-dask==0.3.7 and dask[distributed]==2026.8.0)"
RAY_INSTALL = "pip install -e .[ray]  (it pins prefect-ray==0.6.0 and ray==2.60.0)"


def make_task_runner(kind: str, workers: int, address: str = "") -> Any:
    """The Prefect task runner named by ``<stage>.fanout.task_runner`` (and ``address``) in params.yaml."""
    if kind == "process":
        from prefect.task_runners import ProcessPoolTaskRunner

        return ProcessPoolTaskRunner(max_workers=workers)
    if kind == "thread":
        from prefect.task_runners import ThreadPoolTaskRunner

        return ThreadPoolTaskRunner(max_workers=workers)
    if kind == "dask":
        return _dask_runner(workers, address)
    if kind == "ray":
        return _ray_runner(workers, address)
    raise ValueError(f"unknown fanout.task_runner {kind!r} in params.yaml; use one of {', '.join(RUNNERS)}")


def _dask_runner(workers: int, address: str) -> Any:
    try:
        from prefect_dask import DaskTaskRunner
    except ImportError as err:
        raise RuntimeError(f"fanout.task_runner is 'dask' but prefect-dask is not installed; run `{DASK_INSTALL}` "
                           "or choose thread or process") from err
    if address:
        return DaskTaskRunner(address=address)
    # One thread per worker process: decoding runs in ffmpeg subprocesses, and a worker per core
    # is what "workers" means for the other runners too. The HTTP server on a free port: 8787 may
    # be taken by another cluster on the machine.
    return DaskTaskRunner(cluster_kwargs={"n_workers": workers, "threads_per_worker": 1, "processes": True,
                                          "dashboard_address": ":0"})


def _ray_runner(workers: int, address: str) -> Any:
    try:
        from prefect_ray import RayTaskRunner
    except ImportError as err:
        raise RuntimeError(f"fanout.task_runner is 'ray' but prefect-ray (and ray) is not installed; run "
                           f"`{RAY_INSTALL}` or choose thread, process or dask") from err
    if address:
        return RayTaskRunner(address=address)
    return RayTaskRunner(init_kwargs={"num_cpus": workers, "include_dashboard": False})


def _spawns_local_workers(kind: str, address: str) -> bool:
    """Runners whose workers are child processes of this one, started here."""
    return kind == "process" or (kind in ("dask", "ray") and not address)


@contextlib.contextmanager
def shared_api_for_subprocesses(kind: str, address: str = ""):  # type: ignore[no-untyped-def]
    """For local worker processes without a configured API, start one ephemeral server they can reach.

    An API already configured in this process's settings (a test harness, a profile) but not in its
    environment is exported for the time of the run, so that the children find it as well.
    """
    from prefect.settings import PREFECT_API_URL, temporary_settings

    if not _spawns_local_workers(kind, address):
        yield
        return
    configured = PREFECT_API_URL.value()
    if configured:
        with _environment("PREFECT_API_URL", configured):
            yield
        return
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer()
    server.start()
    try:
        # The URL in the environment is inherited by the spawned workers.
        with _environment("PREFECT_API_URL", server.api_url), temporary_settings({PREFECT_API_URL: server.api_url}):
            yield
    finally:
        server.stop()


@contextlib.contextmanager
def _environment(name: str, value: str):  # type: ignore[no-untyped-def]
    """Set one environment variable for the time of the block, then restore what was there."""
    previous = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = previous


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
    address: str = "",
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

    @flow(name=f"{stage}-fanout", task_runner=make_task_runner(task_runner, workers, address), persist_result=False,
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

    log.info("%s: %d items in %d chunks on a %s task runner with %s", stage, len(items), len(chunks),
             task_runner, f"the cluster at {address}" if address else f"{workers} workers")
    # Heartbeats matter only to monitored deployments; for this local run the heartbeat thread's
    # 1 s sleeps are joined at the end of the flow (about 1 s per stage, measured by the bench).
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    no_heartbeat = temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None})
    try:
        with _startup_limit(), shared_api_for_subprocesses(task_runner, address), no_heartbeat:
            return fanout()
    except RuntimeError as err:
        if "ephemeral Prefect API" in str(err):
            raise FanoutStartError(
                f"{stage}: Prefect's temporary API server did not start within {_startup_seconds()} s "
                "(a busy machine); set PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS higher, or start a server "
                "(`make server`) and set PREFECT_API_URL"
            ) from err
        raise
    finally:
        _stop_event_workers()


class FanoutStartError(RuntimeError):
    """Prefect could not be started for a fan-out; the message says what to do."""


# Prefect's default start-up limit for its temporary API is 20 s; on a loaded machine it takes 50-100 s
# (design.md section 4). The Makefile sets 90 s, a user's shell does not, so the limit is set here.
STARTUP_SECONDS = 180
_STARTUP_ENV = "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"


def _startup_seconds() -> int:
    """The start-up limit in force: the user's own setting when there is one, else ``STARTUP_SECONDS``."""
    from prefect.settings import PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS

    if _STARTUP_ENV not in os.environ:
        return STARTUP_SECONDS
    try:
        return int(os.environ[_STARTUP_ENV])
    except ValueError:
        return int(PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value())


@contextlib.contextmanager
def _startup_limit():  # type: ignore[no-untyped-def]
    """Prefect's ephemeral API start-up limit for this fan-out, unless the user set one."""
    from prefect.settings import PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS, temporary_settings

    if _STARTUP_ENV in os.environ:
        yield
        return
    with temporary_settings({PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS: STARTUP_SECONDS}):
        yield


def _stop_event_workers() -> None:
    """Stop Prefect's events worker, which a flow run leaves behind with a websocket open.

    Its keepalive pings draw from Python's global ``random`` (websockets' ping payload) every few
    seconds from a background thread, so a process that fans out and then trains or tests with
    seeded global RNGs would see its draws shifted at random times. A later flow starts a new worker.
    """
    from prefect.events.worker import EventsWorker

    chatter = logging.getLogger(EventsWorker.__name__)  # "Still processing items": it flushes them, as it should
    level = chatter.level
    chatter.setLevel(logging.ERROR)
    try:
        EventsWorker.drain_all(timeout=30, at_exit=False)
    finally:
        chatter.setLevel(level)

