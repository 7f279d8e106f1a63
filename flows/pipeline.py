"""The pipeline as a Prefect flow: each DVC stage, in ``dvc.yaml`` order, via ``dvc repro --single-item``.

DVC decides what is stale and caches outputs; this flow only runs the graph, with retries, logs and a
Prefect artifact of the result table. ``deployment()`` gives the cron-scheduled deployment (served by
``python -m flows.pipeline --serve`` against a running Prefect server).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import yaml
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

DEFAULT_CRON = "0 3 * * *"


def stage_names(dvc_yaml: Path = Path("dvc.yaml")) -> list[str]:
    """Stage names in the order ``dvc.yaml`` declares them (which is a valid topological order)."""
    stages = (yaml.safe_load(dvc_yaml.read_text()) or {}).get("stages", {})
    if not stages:
        raise ValueError(f"{dvc_yaml} declares no stages")
    return list(stages)


@task(name="dvc-stage", retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE, persist_result=False)
def run_stage(stage: str, repo: str, dvc: str) -> dict[str, Any]:
    """``dvc repro --single-item <stage>``; a failure raises so Prefect retries, then fails the flow."""
    logger = get_run_logger()
    start = time.perf_counter()
    # dvc.yaml runs `python -m stages.<name>`: the python beside the dvc binary must come first on PATH.
    env = {**os.environ, "PATH": f"{Path(dvc).parent}{os.pathsep}{os.environ.get('PATH', '')}"} if os.sep in dvc \
        else None
    proc = subprocess.run([dvc, "repro", "--single-item", stage], cwd=repo, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - start
    for line in (proc.stdout + proc.stderr).splitlines()[-20:]:
        logger.info("%s | %s", stage, line)
    if proc.returncode != 0:
        raise RuntimeError(f"dvc repro --single-item {stage} failed with exit code {proc.returncode}: "
                           f"{proc.stderr.strip()[-800:]}")
    skipped = "didn't change, skipping" in proc.stdout or "is cached" in proc.stdout
    return {"stage": stage, "status": "cached" if skipped else "ran", "seconds": round(seconds, 2)}


@flow(name="omni-r1-pipeline", persist_result=False, log_prints=True)
def pipeline(repo: str = ".", stages: list[str] | None = None, dvc: str = "dvc") -> list[dict[str, Any]]:
    """Run every stage of ``dvc.yaml`` in order (or the given ones), then publish a result table."""
    names = stages or stage_names(Path(repo) / "dvc.yaml")
    results = [run_stage(name, repo, dvc) for name in names]
    table = "\n".join(f"| {r['stage']} | {r['status']} | {r['seconds']} |" for r in results)
    create_markdown_artifact(key="omni-r1-pipeline", markdown=f"| stage | status | seconds |\n|---|---|---|\n{table}\n",
                             description="dvc repro, stage by stage")
    return results


def deployment(cron: str = DEFAULT_CRON, repo: str = ".") -> Any:
    """The scheduled deployment of the pipeline; serve it against a real Prefect server."""
    return pipeline.to_deployment(name="omni-r1-nightly", cron=cron, parameters={"repo": repo},
                                  description="Nightly dvc repro of the omni-r1 pipeline")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m flows.pipeline", description=__doc__)
    p.add_argument("--repo", default=".")
    p.add_argument("--stage", action="append", dest="stages", help="run only these stages (repeatable)")
    p.add_argument("--serve", action="store_true", help="serve the cron deployment (needs PREFECT_API_URL)")
    p.add_argument("--cron", default=DEFAULT_CRON)
    args = p.parse_args(argv)
    if args.serve:
        from prefect import serve

        serve(deployment(args.cron, args.repo))
        return 0
    for result in pipeline(repo=args.repo, stages=args.stages, dvc=_dvc_binary()):
        print(f"{result['stage']:<10} {result['status']:<7} {result['seconds']:>7.2f} s")
    return 0


def _dvc_binary() -> str:
    beside = Path(sys.executable).with_name("dvc")
    return str(beside) if beside.exists() else "dvc"


if __name__ == "__main__":
    sys.exit(main())
