"""The fan-out leaves nothing running behind it, and a busy machine gets a clear start-up error.

The cause of a flaky ``test_resume_is_bit_exact``: after a flow ran in the process, Prefect's events
worker kept a websocket open whose keepalive pings draw ``random.getrandbits(32)`` from Python's
global ``random`` in a background thread (websockets' ping payload), every few seconds. A seeded test
that ran later in the same session got its draws shifted whenever a ping landed between its seed and
its draws. ``map_chunks`` now stops the worker when the fan-out ends.
"""

from __future__ import annotations

import random
import threading

import pytest

from flows import fanout


def _double(item: int) -> int:
    return 2 * item


def test_no_events_worker_survives_a_fanout(prefect_harness: None) -> None:
    from prefect.events.worker import EventsWorker

    assert fanout.map_chunks(_double, [1, 2, 3], stage="leak", task_runner="thread", workers=2) == [2, 4, 6]
    assert not EventsWorker._instances, "an events worker outlived the fan-out"
    for thread in threading.enumerate():
        if thread.name == "EventsWorkerThread":
            thread.join(timeout=10)  # it is on its way out: its last flush may still be running
            assert not thread.is_alive(), "the events worker thread outlived the fan-out"


def test_global_random_is_not_drawn_by_the_fanout_after_it_returns(prefect_harness: None) -> None:
    fanout.map_chunks(_double, [1, 2], stage="leak", task_runner="thread", workers=2)
    random.seed(0)
    expected = random.Random(0).random()
    threading.Event().wait(0.5)  # time for any leftover background work to run
    assert random.random() == expected


def test_startup_limit_is_set_in_code_unless_the_user_set_one(monkeypatch: pytest.MonkeyPatch) -> None:
    from prefect.settings import PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS

    monkeypatch.delenv("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", raising=False)
    with fanout._startup_limit():
        assert PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value() == fanout.STARTUP_SECONDS
    monkeypatch.setenv("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "33")
    assert fanout._startup_seconds() == 33


def test_a_server_that_does_not_start_is_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_server(*args: object, **kwargs: object) -> None:
        raise RuntimeError("Timed out while attempting to connect to ephemeral Prefect API server.")

    monkeypatch.setattr(fanout, "shared_api_for_subprocesses", no_server)
    with pytest.raises(fanout.FanoutStartError, match=r"shard: Prefect's temporary API server did not start"):
        fanout.map_chunks(_double, [1], stage="shard", task_runner="thread", workers=1)
