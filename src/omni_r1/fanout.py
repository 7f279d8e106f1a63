"""Fan-out of per-item work (a video, a shard) on a plain executor chosen in ``params.yaml``.

A stage calls ``fan_out(fn, items, common=..., task_runner=..., workers=..., address=...)``: every
``fn(item, *common)`` runs on the executor, and results come back in item order. ``on_result`` is
called in this process, in item order, as soon as each result is there; what it returns is kept in
place of the result, so a caller can stream big results to disk and keep a small summary of each.
``fn`` must be a module-level function so that processes and cluster workers can import it.

No orchestrator runs here: no Prefect server, no flow, no API round trip per item. Prefect runs the
pipeline graph at the flow level (``flows/pipeline.py``), once per run; a stage's fan-out starts in
milliseconds (threads) or the time its worker processes take to import the task's modules.

The executors (``<stage>.fanout.task_runner``; the key keeps its name from when it chose a Prefect
task runner):

- ``thread`` (default): a ``ThreadPoolExecutor`` of ``workers`` threads. Decoding runs in ffmpeg
  subprocesses and the processor releases the GIL in its numpy/torch kernels, so threads use every core.
- ``process``: a ``ProcessPoolExecutor`` of ``workers`` spawned processes, for Python-bound work.
  Spawned rather than forked: a fork of a process with threads (torch, tqdm) can deadlock.
- ``dask``: a ``distributed.Client`` on the scheduler at ``address`` (``tcp://host:8786``), or on a
  ``LocalCluster`` of ``workers`` single-threaded worker processes when ``address`` is empty.
- ``ray``: ``ray`` tasks on the cluster at ``address`` (``ray://host:10001``), or a local Ray of
  ``workers`` CPUs (``pip install -e .[ray]``: the wheel is large, so it is an extra).

Workers of a remote cluster must see the same paths as this process (dataset root, output and work
folders on a shared filesystem); stages pass absolute paths.
"""

from __future__ import annotations

import contextlib
import multiprocessing
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from typing import Any, Callable, Iterator, Sequence, TypeVar

R = TypeVar("R")

RUNNERS = ("thread", "process", "dask", "ray")
DASK_INSTALL = "pip install -e .  (it pins dask[distributed]==2026.8.0)"
RAY_INSTALL = "pip install -e .[ray]  (it pins ray==2.60.0)"
CONNECT_SECONDS = 30  # how long a dask client waits for the scheduler at ``fanout.address``


class FanoutError(RuntimeError):
    """The executor could not be set up (a missing package, a cluster that does not answer); the message says the fix."""


def fan_out(
    fn: Callable[..., R],
    items: Sequence[Any],
    *,
    common: tuple[Any, ...] = (),
    task_runner: str,
    workers: int,
    address: str = "",
    on_result: Callable[[R], Any] | None = None,
) -> list[Any]:
    """Run ``fn(item, *common)`` for every item on the executor ``task_runner``; return results in item order.

    The first failure cancels the items not yet started, waits for the running ones and is raised
    unchanged, so a stage sees the worker's own exception (an ``OSError`` of a full disk, say).
    """
    if task_runner not in RUNNERS:
        raise ValueError(f"unknown fanout.task_runner {task_runner!r} in params.yaml; use one of {', '.join(RUNNERS)}")
    if workers < 1:
        raise ValueError(f"fanout.workers is {workers}; set it to at least 1 in params.yaml")
    if not items:
        return []
    if task_runner == "ray":
        return _on_ray(fn, items, common, workers, address, on_result)
    with _executor(task_runner, workers, address) as executor:
        futures = [executor.submit(fn, item, *common) for item in items]
        try:
            return [_kept(future.result(), on_result) for future in futures]
        except BaseException:
            for future in futures:
                future.cancel()
            raise


def _kept(result: Any, on_result: Callable[[Any], Any] | None) -> Any:
    return on_result(result) if on_result is not None else result


@contextlib.contextmanager
def _executor(kind: str, workers: int, address: str) -> Iterator[Executor]:
    """A ``concurrent.futures`` executor for ``thread``, ``process`` and ``dask``, shut down at the end."""
    if kind == "thread":
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fanout") as pool:
            yield pool
    elif kind == "process":
        with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            yield pool
    else:
        with dask_client(workers, address) as client:
            executor = client.get_executor(pure=False)
            try:
                yield executor
            finally:
                executor.shutdown(wait=True)


@contextlib.contextmanager
def dask_client(workers: int, address: str = "") -> Iterator[Any]:
    """A ``distributed.Client`` on ``address``, or on a local cluster of ``workers`` one-thread processes."""
    try:
        from distributed import Client, LocalCluster
    except ImportError as err:
        raise FanoutError(f"fanout.task_runner is 'dask' but dask.distributed is not installed; run "
                          f"`{DASK_INSTALL}` or choose thread or process") from err
    if address:
        try:
            client = Client(address, timeout=CONNECT_SECONDS)
        except (OSError, TimeoutError) as err:
            raise FanoutError(f"fanout.address {address}: no Dask scheduler answered within {CONNECT_SECONDS} s "
                              f"({err}); start it (`dask scheduler`) or clear fanout.address for a local "
                              "cluster") from err
        with client:
            yield client
        return
    # One thread per worker process: a worker per core is what ``workers`` means for the other
    # executors too. The dashboard on a free port: 8787 may be taken by another cluster here.
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster, \
            Client(cluster) as client:
        yield client


def _on_ray(fn: Callable[..., Any], items: Sequence[Any], common: tuple[Any, ...], workers: int, address: str,
            on_result: Callable[[Any], Any] | None) -> list[Any]:
    try:
        import ray
    except ImportError as err:
        raise FanoutError(f"fanout.task_runner is 'ray' but ray is not installed; run `{RAY_INSTALL}` or "
                          "choose thread, process or dask") from err
    started = not ray.is_initialized()
    if started:
        if address:
            ray.init(address=address)
        else:
            ray.init(num_cpus=workers, include_dashboard=False)
    try:
        remote = ray.remote(num_cpus=1)(_call)
        refs = [remote.remote(fn, item, common) for item in items]
        try:
            return [_kept(ray.get(ref), on_result) for ref in refs]
        except BaseException:
            for ref in refs:
                ray.cancel(ref)
            raise
    finally:
        if started:
            ray.shutdown()


def _call(fn: Callable[..., R], item: Any, common: tuple[Any, ...]) -> R:
    return fn(item, *common)

