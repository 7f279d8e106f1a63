"""The cron deployment of the pipeline flow: built and checked, never served (no Prefect server in CI)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import prefect
import pytest
from prefect.settings import PREFECT_API_URL, temporary_settings
from prefect.utilities.callables import parameter_schema

from flows import deploy
from flows.cli import main as cli
from flows.deploy import DEFAULT_CRON, DEFAULT_NAME, NoPrefectServer, build_deployment
from flows.pipeline import pipeline

REPO = Path(__file__).resolve().parents[2]


def _crons(dep: Any) -> list[str]:
    return [s.schedule.cron for s in dep.schedules]


def test_default_deployment_runs_the_whole_graph_nightly() -> None:
    dep = build_deployment()
    assert dep.name == DEFAULT_NAME == "omni-r1-nightly"
    assert dep.flow_name == "omni-r1-pipeline"
    assert _crons(dep) == [DEFAULT_CRON] == ["0 3 * * *"]
    assert dep.entrypoint is not None and dep.entrypoint.endswith("flows/pipeline.py:pipeline")
    assert dep.parameters == {"repo": str(Path(".").resolve()), "stages": None, "overrides": None,
                              "data_version": None}


def test_deployment_carries_the_flow_parameters(tmp_path: Path) -> None:
    dep = build_deployment(name="weekly-shards", cron="15 2 * * 1", repo=tmp_path, stages=["shard", "features"],
                           overrides=["shard.videos_per_shard=1"], data_version="v1")
    assert dep.name == "weekly-shards" and _crons(dep) == ["15 2 * * 1"]
    assert dep.parameters == {"repo": str(tmp_path.resolve()), "stages": ["shard", "features"],
                              "overrides": ["shard.videos_per_shard=1"], "data_version": "v1"}
    # The parameters must fit the flow's own signature, which Prefect enforces when a scheduled run starts.
    assert set(dep.parameters) <= set(parameter_schema(pipeline).properties)


def test_bad_cron_is_refused_when_building() -> None:
    with pytest.raises(ValueError, match="cron"):
        build_deployment(cron="every night")


def test_serve_refuses_without_a_prefect_server(monkeypatch: pytest.MonkeyPatch) -> None:
    served: list[Any] = []
    monkeypatch.setattr(prefect, "serve", lambda *deployments: served.extend(deployments))
    monkeypatch.delenv("PREFECT_API_URL", raising=False)  # another test may have pointed it at its harness
    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        with pytest.raises(NoPrefectServer, match="make server.*export PREFECT_API_URL=http://127.0.0.1:4200/api"):
            deploy.serve(build_deployment())
        assert cli(["serve"]) == 1
    assert served == []


def test_cli_serve_hands_the_deployment_to_prefect_serve(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    served: list[Any] = []
    monkeypatch.setattr(prefect, "serve", lambda *deployments: served.extend(deployments))
    with temporary_settings({PREFECT_API_URL: "http://127.0.0.1:4200/api"}):
        assert cli(["serve", "--cron", "30 1 * * *", "--name", "omni-r1-test", "--repo", str(tmp_path),
                    "--stage", "synth", "--set", "synth.videos=2"]) == 0
    [dep] = served
    assert dep.name == "omni-r1-test" and _crons(dep) == ["30 1 * * *"]
    assert dep.parameters == {"repo": str(tmp_path.resolve()), "stages": ["synth"], "overrides": ["synth.videos=2"],
                              "data_version": None}
