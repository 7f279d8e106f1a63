"""A Prefect flow run leaves nothing drawing from the global RNGs behind it (the flaky resume test's cause).

The first test runs a flow under the session's harness; the second, which uses no Prefect, checks that
the events worker the flow started is gone (``conftest.stop_prefect_events_worker``) and that nothing
in the background draws from Python's global ``random`` any more.
"""

from __future__ import annotations

import random
import threading

from prefect import flow


@flow(name="leak-probe", persist_result=False)
def _probe(x: int) -> int:
    return 2 * x


def test_a_flow_runs(prefect_harness: None) -> None:
    assert _probe(3) == 6


def test_no_events_worker_survives_the_flow() -> None:
    from prefect.events.worker import EventsWorker

    assert not EventsWorker._instances, "an events worker outlived the test that ran a flow"
    for thread in threading.enumerate():
        if thread.name == "EventsWorkerThread":
            thread.join(timeout=10)  # on its way out: its last flush may still be running
            assert not thread.is_alive(), "the events worker thread outlived the test that ran a flow"
    random.seed(0)
    expected = random.Random(0).random()
    threading.Event().wait(0.5)
    assert random.random() == expected
