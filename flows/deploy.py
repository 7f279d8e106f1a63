"""The scheduled pipeline: a cron deployment of ``flows.pipeline.pipeline`` and the process that serves it.

``build_deployment`` only builds the deployment (name, cron schedule, flow parameters), so CI can
check it without a server. ``serve`` hands it to ``prefect.serve``, which registers it with the
Prefect API and then runs each scheduled flow run in this process until interrupted. Schedules
need a real server: on Prefect's ephemeral API ``serve`` would only warn that it cannot schedule,
so ``serve`` refuses to start without ``PREFECT_API_URL``. Start one with ``make server`` and run
``omni-r1 serve`` in a second shell. Cron expressions are read in UTC.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import prefect
from prefect.deployments.runner import RunnerDeployment
from prefect.settings import PREFECT_API_URL

from flows.pipeline import pipeline

DEFAULT_NAME = "omni-r1-nightly"
DEFAULT_CRON = "0 3 * * *"
LOCAL_API_URL = "http://127.0.0.1:4200/api"  # where `make server` listens


class NoPrefectServer(RuntimeError):
    """``serve`` was called without ``PREFECT_API_URL``: nothing would run the schedule."""


def build_deployment(*, name: str = DEFAULT_NAME, cron: str = DEFAULT_CRON, repo: str | Path = ".",
                     stages: Sequence[str] | None = None, overrides: Sequence[str] | None = None,
                     data_version: str | None = None) -> RunnerDeployment:
    """The pipeline flow on a cron schedule, with the parameters every scheduled run gets.

    ``repo`` is stored as an absolute path so a scheduled run does not depend on the runner's
    working directory. ``stages=None`` runs the whole graph; the other parameters are those of
    ``flows.pipeline.pipeline``.
    """
    parameters = {
        "repo": str(Path(repo).resolve()),
        "stages": list(stages) if stages else None,
        "overrides": list(overrides) if overrides else None,
        "data_version": data_version,
    }
    return pipeline.to_deployment(name=name, cron=cron, parameters=parameters, tags=["omni-r1"],
                                  description="dvc.yaml stage by stage on a cron schedule (flows/pipeline.py)")


def serve(deployment: RunnerDeployment) -> None:
    """Register ``deployment`` with the Prefect server at ``PREFECT_API_URL`` and run its schedule (blocks)."""
    if not PREFECT_API_URL.value():
        raise NoPrefectServer(
            "PREFECT_API_URL is not set, so no Prefect server would schedule the pipeline. Start one with "
            f"`make server` and, in this shell, `export PREFECT_API_URL={LOCAL_API_URL}`, then rerun `omni-r1 serve`."
        )
    prefect.serve(deployment)

