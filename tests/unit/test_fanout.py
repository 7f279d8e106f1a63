"""``omni_r1.fanout``: results in item order on every executor, failures raised as they are, clear set-up
errors, and nothing left running: no Prefect, no threads, no draws from the global random after it returns.
"""

from __future__ import annotations

import errno
import random
import sys
import threading
import time
import types

import pytest

from omni_r1 import fanout


def _square(item: int, offset: int = 0) -> int:
    return item * item + offset


def _slow_then_fail(item: int) -> int:
    if item == 1:
        raise OSError(errno.ENOSPC, "No space left on device")
    time.sleep(0.05)
    return item


def test_results_come_back_in_item_order_through_on_result() -> None:
    seen: list[int] = []

    def keep(result: int) -> str:
        seen.append(result)
        return f"kept {result}"

    kept = fanout.fan_out(_square, list(range(7)), common=(1,), task_runner="thread", workers=3, on_result=keep)
    assert seen == [i * i + 1 for i in range(7)]
    assert kept == [f"kept {i * i + 1}" for i in range(7)]
    assert fanout.fan_out(_square, [], task_runner="thread", workers=2) == []


def test_a_process_pool_gives_the_same_results() -> None:
    assert fanout.fan_out(_square, [1, 2, 3], common=(0,), task_runner="process", workers=2) == [1, 4, 9]


def test_the_first_failure_is_raised_unchanged_and_the_rest_is_cancelled() -> None:
    with pytest.raises(OSError, match="No space left") as info:
        fanout.fan_out(_slow_then_fail, list(range(40)), task_runner="thread", workers=2)
    assert info.value.errno == errno.ENOSPC


def test_unknown_runner_and_bad_workers_name_the_key() -> None:
    with pytest.raises(ValueError, match=r"fanout\.task_runner 'slurm'.*thread, process, dask, ray"):
        fanout.fan_out(_square, [1], task_runner="slurm", workers=2)
    with pytest.raises(ValueError, match=r"fanout\.workers is 0"):
        fanout.fan_out(_square, [1], task_runner="thread", workers=0)


def test_missing_ray_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # an import of it now fails, installed or not
    with pytest.raises(fanout.FanoutError, match=r"ray.*pip install -e \.\[ray\]"):
        fanout.fan_out(_square, [1], task_runner="ray", workers=2)


def test_ray_gets_the_address_or_a_local_cluster(monkeypatch: pytest.MonkeyPatch) -> None:
    inits: list[dict] = []

    class Ref:
        def __init__(self, value: int) -> None:
            self.value = value

    def remote(**options: object):  # type: ignore[no-untyped-def]
        def wrap(fn):  # type: ignore[no-untyped-def]
            return types.SimpleNamespace(remote=lambda *args: Ref(fn(*args)))

        return wrap

    fake = types.SimpleNamespace(is_initialized=lambda: False, init=lambda **kw: inits.append(kw), remote=remote,
                                 get=lambda ref: ref.value, cancel=lambda ref: None, shutdown=lambda: None)
    monkeypatch.setitem(sys.modules, "ray", fake)
    assert fanout.fan_out(_square, [2, 3], task_runner="ray", workers=2, address="ray://head:10001") == [4, 9]
    assert fanout.fan_out(_square, [2], task_runner="ray", workers=2) == [4]
    assert inits[0] == {"address": "ray://head:10001"}
    assert inits[1]["num_cpus"] == 2 and "address" not in inits[1]


def test_an_unreachable_dask_scheduler_is_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import distributed

    def refuse(*args: object, **kwargs: object) -> None:
        raise OSError("Timed out trying to connect to tcp://10.0.0.5:8786")

    monkeypatch.setattr(distributed, "Client", refuse)
    with pytest.raises(fanout.FanoutError, match=r"fanout\.address tcp://10\.0\.0\.5:8786: no Dask scheduler"):
        fanout.fan_out(_square, [1], task_runner="dask", workers=1, address="tcp://10.0.0.5:8786")


def test_an_address_without_a_cluster_runner_is_refused(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from omni_r1.config import load_params

    params = tmp_path / "params.yaml"
    params.write_text("data:\n  format: video\n")
    with pytest.raises(ValueError, match=r"fanout\.address"):
        load_params(params, ["shard.fanout.task_runner=thread", "shard.fanout.address=tcp://x:8786"])


def test_nothing_runs_after_it_returns() -> None:
    before = {t.ident for t in threading.enumerate()}
    fanout.fan_out(_square, [1, 2, 3], task_runner="thread", workers=2)
    assert {t.ident for t in threading.enumerate() if t.is_alive()} <= before, "a worker thread outlived the fan-out"
    random.seed(0)
    expected = random.Random(0).random()
    threading.Event().wait(0.2)
    assert random.random() == expected
    assert "prefect" not in sys.modules or not any(t.name == "EventsWorkerThread" for t in threading.enumerate())
