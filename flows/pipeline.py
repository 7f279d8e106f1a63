"""The pipeline as a Prefect flow: every ``dvc.yaml`` stage in graph order, one named task each.

DVC decides what is stale and caches outputs; this flow only runs the graph, stage by stage, with
``dvc repro --single-item <stage>``, and adds what DVC lacks: retries, a run history, logs, and a
Prefect markdown artifact with the result table (stage, status, tries, seconds, metrics summary).

* **Order.** ``dvc.yaml`` is the only graph. ``stage_order`` reads each stage's deps and outs
  (``${...}`` filled in from ``params.yaml``) and sorts them topologically, keeping declaration
  order among stages that do not depend on each other; a test checks its edges against ``dvc dag``.
* **Retries.** Only the I/O-bound stages (``IO_BOUND_STAGES``: synth, ingest, shard, features) are
  retried: they decode and write many files (ffmpeg subprocesses, tar shards, a possibly networked
  ``data.root``), where a transient fault is plausible and a rerun is safe because DVC replaces a
  stage's outputs. ``validate`` fails on a data-policy breach and the model stages (train_detail,
  train, predict, evaluate, report) on deterministic compute, so a retry would only repeat the
  failure at full cost; they, and any stage not named here, run once.
* **Overrides.** DVC has no ``repro --set-param``; its way to run with changed params is
  ``dvc exp run -S key=value``. With overrides, each stage runs as ``dvc exp run --single-item -S ...
  <stage>``: the overrides are checked against the params schema before anything runs, each stage
  is recorded as a DVC experiment (``dvc exp show``), and, as with any workspace experiment,
  ``params.yaml`` keeps the overridden values afterwards (``git checkout params.yaml`` reverts).
  ``dvc exp run`` needs a git identity and a commit.
* **Data version.** With ``data_version``, ``omni_r1.versioning.verify_version`` runs before any
  stage and stops the flow when the data differs from that named version.
* **Failure.** A failing stage raises ``StageFailed`` with the last ``LOG_TAIL_LINES`` lines of its
  ``dvc`` output; the artifact is still published, with that tail and the stages left unrun.

The cron deployment lives in ``flows/deploy.py`` (``omni-r1 serve``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import posixpath
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import yaml
from prefect import Task, flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

ARTIFACT_KEY = "omni-r1-pipeline"
LOG_TAIL_LINES = 40
IO_BOUND_STAGES = frozenset({"synth", "ingest", "shard", "features"})
IO_RETRIES = 2
RETRY_DELAY_SECONDS = 10.0
METRIC_SUMMARY_ITEMS = 4
_CACHED_MARKERS = ("didn't change, skipping", "is cached")
_INTERPOLATION = re.compile(r"\$\{\s*([^}\s]+)\s*\}")


class StageFailed(RuntimeError):
    """A ``dvc`` stage exited non-zero; the message carries the tail of its output."""

    def __init__(self, stage: str, command: str, returncode: int, log_tail: str) -> None:
        # All fields go to Exception.args so the error pickles across Prefect's task runners.
        super().__init__(stage, command, returncode, log_tail)
        self.stage, self.command, self.returncode, self.log_tail = stage, command, returncode, log_tail

    def __str__(self) -> str:
        return (f"stage '{self.stage}' failed: `{self.command}` exited with code {self.returncode}. "
                f"Last {LOG_TAIL_LINES} lines of its output:\n{self.log_tail}\n"
                f"Fix the cause above, then rerun `omni-r1 pipeline --stage {self.stage}` "
                "(DVC skips the stages that are up to date).")


@dataclass(frozen=True)
class DvcResult:
    """Exit code and the interleaved stdout+stderr of one ``dvc`` call."""

    returncode: int
    output: str


@dataclass(frozen=True)
class StageSpec:
    """What the flow needs of one ``dvc.yaml`` stage: upstream stages and declared metrics files."""

    name: str
    upstream: tuple[str, ...]
    metrics: tuple[str, ...]


# --------------------------------------------------------------------------- the graph of dvc.yaml


def read_graph(dvc_yaml: Path, params_yaml: Path | None = None) -> dict[str, StageSpec]:
    """Every stage of ``dvc_yaml`` with its upstream stages (an out of one is, or holds, a dep of the other)."""
    raw = yaml.safe_load(dvc_yaml.read_text()) or {}
    stages = raw.get("stages") or {}
    if not stages:
        raise ValueError(f"{dvc_yaml} declares no stages; add them under `stages:`")
    if "vars" in raw:
        raise ValueError(f"{dvc_yaml}: top-level `vars` is not supported by flows/pipeline.py; "
                         "keep interpolated values in params.yaml")
    params_path = params_yaml or dvc_yaml.with_name("params.yaml")
    params = (yaml.safe_load(params_path.read_text()) or {}) if params_path.is_file() else {}
    outs: dict[str, list[str]] = {}
    deps: dict[str, list[str]] = {}
    metrics: dict[str, list[str]] = {}
    for name, body in stages.items():
        if not isinstance(body, dict) or "cmd" not in body:
            raise ValueError(f"{dvc_yaml}: stage '{name}' has no `cmd` (foreach/matrix stages are not supported)")
        deps[name] = _resolved(body.get("deps"), params, dvc_yaml, name)
        metrics[name] = _resolved(body.get("metrics"), params, dvc_yaml, name)
        # Metrics and plots are outputs too: report's deps include evaluate's metrics file.
        outs[name] = [*_resolved(body.get("outs"), params, dvc_yaml, name), *metrics[name],
                      *_resolved(body.get("plots"), params, dvc_yaml, name)]
    graph = {}
    for name in stages:
        upstream = tuple(other for other in stages if other != name
                         and any(_overlaps(d, o) for d in deps[name] for o in outs[other]))
        graph[name] = StageSpec(name=name, upstream=upstream, metrics=tuple(metrics[name]))
    return graph


def topological_order(graph: dict[str, StageSpec]) -> list[str]:
    """Stages so that each comes after its upstream ones; ties keep declaration order (Kahn's algorithm)."""
    done: list[str] = []
    pending = list(graph)
    while pending:
        ready = next((s for s in pending if all(u in done for u in graph[s].upstream)), None)
        if ready is None:
            raise ValueError(f"dvc.yaml has a dependency cycle among stages {pending}; "
                             "an out of one stage must not be a dep of a stage upstream of it")
        done.append(ready)
        pending.remove(ready)
    return done


def stage_order(dvc_yaml: Path = Path("dvc.yaml"), params_yaml: Path | None = None) -> list[str]:
    """Stage names of ``dvc_yaml`` in an order that runs every stage after the stages it depends on."""
    return topological_order(read_graph(dvc_yaml, params_yaml))


def stage_names(dvc_yaml: Path = Path("dvc.yaml")) -> list[str]:
    """Alias of ``stage_order`` kept for callers that predate the dependency sort."""
    return stage_order(dvc_yaml)


def select_stages(order: Sequence[str], wanted: Sequence[str] | None) -> list[str]:
    """The wanted stages (all when none are given) in graph order; unknown names are an error."""
    if not wanted:
        return list(order)
    unknown = sorted(set(wanted) - set(order))
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown}: dvc.yaml has {list(order)}")
    return [s for s in order if s in set(wanted)]


def _resolved(entries: Any, params: dict[str, Any], dvc_yaml: Path, stage: str) -> list[str]:
    """Paths of a deps/outs/metrics/plots list (items are strings or ``{path: options}``), interpolated."""
    paths: list[str] = []
    for entry in entries or []:
        paths.extend([entry] if isinstance(entry, str) else list(entry))
    return [_interpolate(path, params, dvc_yaml, stage) for path in paths]


def _interpolate(path: str, params: dict[str, Any], dvc_yaml: Path, stage: str) -> str:
    def lookup(match: re.Match[str]) -> str:
        value: Any = params
        for part in match.group(1).split("."):
            if not isinstance(value, dict) or part not in value:
                raise ValueError(f"{dvc_yaml}: stage '{stage}' uses ${{{match.group(1)}}}, which params.yaml "
                                 "does not define; add the key to params.yaml or fix the reference")
            value = value[part]
        return str(value)

    return posixpath.normpath(_INTERPOLATION.sub(lookup, path))


def _overlaps(dep: str, out: str) -> bool:
    """DVC links two stages when a dep is an out, lies inside an out folder, or contains an out."""
    return dep == out or dep.startswith(out + "/") or out.startswith(dep + "/")


# --------------------------------------------------------------------------- running one stage


def stage_command(stage: str, overrides: Sequence[str] = ()) -> list[str]:
    """The ``dvc`` arguments for one stage: ``repro``, or ``exp run -S`` when params are overridden."""
    if not overrides:
        return ["repro", "--single-item", stage]
    return ["exp", "run", "--single-item", *[a for o in overrides for a in ("-S", o)], stage]


def run_dvc(args: Sequence[str], repo: Path, dvc: str) -> DvcResult:
    """Run ``dvc`` in ``repo`` with the venv's ``bin`` first on PATH (dvc.yaml's ``python -m stages.*``)."""
    env = dict(os.environ)
    if os.sep in dvc:
        env["PATH"] = f"{Path(dvc).parent}{os.pathsep}{env.get('PATH', '')}"
    proc = subprocess.run([dvc, *args], cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True)
    return DvcResult(proc.returncode, proc.stdout)


def tail(text: str, lines: int = LOG_TAIL_LINES) -> str:
    return "\n".join(text.splitlines()[-lines:])


def _run_stage(stage: str, repo: str, dvc: str, overrides: list[str]) -> dict[str, Any]:
    """One attempt at one stage; a non-zero exit raises ``StageFailed`` (Prefect retries it if allowed)."""
    from prefect.runtime import task_run

    logger = get_run_logger()
    args = stage_command(stage, overrides)
    start = time.perf_counter()
    result = run_dvc(args, Path(repo), dvc)
    seconds = round(time.perf_counter() - start, 2)
    log_tail = tail(result.output)
    for line in log_tail.splitlines():
        logger.info("%s | %s", stage, line)
    if result.returncode != 0:
        raise StageFailed(stage, " ".join(["dvc", *args]), result.returncode, log_tail)
    cached = any(marker in result.output for marker in _CACHED_MARKERS)
    return {"stage": stage, "status": "cached" if cached else "ran", "tries": task_run.run_count,
            "seconds": seconds}


def stage_task(stage: str) -> Task[..., dict[str, Any]]:
    """The Prefect task of one stage: named after it, retried only when it is I/O-bound."""
    retries = IO_RETRIES if stage in IO_BOUND_STAGES else 0
    return task(_run_stage, name=stage, task_run_name=stage, retries=retries,
                retry_delay_seconds=RETRY_DELAY_SECONDS if retries else 0, cache_policy=NO_CACHE,
                persist_result=False)


# --------------------------------------------------------------------------- checks before running


def check_overrides(params_yaml: Path, overrides: Sequence[str]) -> None:
    """Fail before any stage runs when an override names an unknown key or a wrong type."""
    from omni_r1.config import load_params

    load_params(params_yaml, overrides)


def verify_data_version(repo: Path, name: str) -> None:
    """``omni_r1.versioning.verify_version``: raises ``DataVersionMismatch`` naming the differing files."""
    from omni_r1.versioning import verify_version  # imported here: only runs that pin a version need it

    verify_version(repo, name)


# --------------------------------------------------------------------------- the result table


def metrics_summary(repo: Path, metrics_files: Sequence[str], items: int = METRIC_SUMMARY_ITEMS) -> str:
    """The first numeric values of a stage's metrics files as ``key=value``; empty when none exist yet."""
    parts: list[str] = []
    for rel in metrics_files:
        path = repo / rel
        if not path.is_file():
            continue
        try:
            text = path.read_text()
            data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
        except (json.JSONDecodeError, yaml.YAMLError) as err:
            parts.append(f"{rel}: unreadable ({type(err).__name__})")
            continue
        parts.extend(f"{key}={_fmt(value)}" for key, value in _numbers(data))
    if len(parts) > items:
        return ", ".join(parts[:items]) + f", … (+{len(parts) - items})"
    return ", ".join(parts)


def _numbers(data: Any, prefix: str = "") -> list[tuple[str, float]]:
    if isinstance(data, bool):
        return []
    if isinstance(data, (int, float)):
        return [(prefix, data)]
    if isinstance(data, dict):
        return [kv for key, value in data.items() for kv in _numbers(value, f"{prefix}.{key}" if prefix else str(key))]
    return []


def _fmt(value: float) -> str:
    return str(value) if isinstance(value, int) or not math.isfinite(value) else f"{value:.4g}"


def results_markdown(rows: Sequence[dict[str, Any]], not_run: Sequence[str] = (),
                     failure: StageFailed | None = None) -> str:
    """The artifact: one row per stage, then, on failure, the failing stage's log tail."""
    headline = f"failed at `{failure.stage}`" if failure else "completed"
    lines = [f"## omni-r1 pipeline: {headline}", "", "| stage | status | tries | seconds | metrics |",
             "|---|---|---|---|---|"]
    lines += [f"| {r['stage']} | {r['status']} | {r.get('tries', '')} | {r.get('seconds', '')} | "
              f"{r.get('metrics', '')} |" for r in rows]
    lines += [f"| {s} | not run |  |  |  |" for s in not_run]
    if failure:
        lines += ["", f"### `{failure.stage}`: `{failure.command}` exited with code {failure.returncode}", "",
                  "```text", failure.log_tail, "```"]
    return "\n".join(lines) + "\n"


def _publish(rows: Sequence[dict[str, Any]], not_run: Sequence[str] = (), failure: StageFailed | None = None) -> None:
    create_markdown_artifact(key=ARTIFACT_KEY, markdown=results_markdown(rows, not_run, failure),
                             description="dvc.yaml stage by stage: status, tries, seconds, metrics")


# --------------------------------------------------------------------------- the flow


@flow(name="omni-r1-pipeline", persist_result=False)
def pipeline(repo: str = ".", stages: list[str] | None = None, overrides: list[str] | None = None,
             data_version: str | None = None, dvc: str | None = None) -> list[dict[str, Any]]:
    """Run the ``dvc.yaml`` stages (all, or ``stages``) in graph order and publish the result table.

    ``overrides`` are ``key=value`` params (run via ``dvc exp run -S``); ``data_version`` names a data
    version that must match before anything runs; ``dvc`` is the binary (default: beside this Python).
    """
    root = Path(repo).resolve()
    graph = read_graph(root / "dvc.yaml", root / "params.yaml")
    selected = select_stages(topological_order(graph), stages)
    if overrides:
        check_overrides(root / "params.yaml", overrides)
    if data_version:
        verify_data_version(root, data_version)
    binary = dvc or default_dvc()
    rows: list[dict[str, Any]] = []
    for i, name in enumerate(selected):
        try:
            row = stage_task(name)(name, str(root), binary, list(overrides or []))
        except StageFailed as failure:
            tries = (IO_RETRIES if name in IO_BOUND_STAGES else 0) + 1
            rows.append({"stage": name, "status": "failed", "tries": tries, "metrics": ""})
            _publish(rows, selected[i + 1 :], failure)
            raise
        rows.append({**row, "metrics": metrics_summary(root, graph[name].metrics)})
    _publish(rows)
    return rows


def default_dvc() -> str:
    """The ``dvc`` beside this Python (the venv's), else the one on PATH."""
    beside = Path(sys.executable).with_name("dvc")
    return str(beside) if beside.exists() else "dvc"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m flows.pipeline", description=__doc__.split("\n")[0])
    p.add_argument("--repo", default=".")
    p.add_argument("--stage", action="append", dest="stages", help="run only these stages (repeatable)")
    p.add_argument("--set", dest="overrides", action="append", metavar="KEY=VALUE",
                   help="override a params.yaml value for this run, via `dvc exp run -S` (repeatable)")
    p.add_argument("--data-version", help="refuse to run unless the data matches this named version")
    args = p.parse_args(argv)
    rows = pipeline(repo=args.repo, stages=args.stages, overrides=args.overrides, data_version=args.data_version)
    for row in rows:
        print(f"{row['stage']:<12} {row['status']:<7} {row['seconds']:>8.2f} s  {row['metrics']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
