"""A stage CLI run from a plain shell, with no Prefect variables set, works on a busy machine.

Before, every fan-out stage started Prefect's ephemeral API (8-14 s on free cores, 50-100 s on a busy
machine), and without the Makefile's start-up limit a shell run failed with Prefect's raw time-out. Now a
stage fans out on a plain executor: here ``python -m stages.shard`` runs on 2 tiny videos while a busy
subprocess per core spins, with every ``PREFECT_*`` variable removed from its environment, and must
finish, write its shards, and never import Prefect.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.stage_runs import run_stage

LIMIT_SECONDS = 240  # the old path needed 50-100 s for Prefect's start-up alone on a busy machine


@pytest.fixture()
def busy_cpus():  # type: ignore[no-untyped-def]
    """One spinning Python process per core for the time of the test."""
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(os.cpu_count() or 2)]
    time.sleep(0.5)
    try:
        yield
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()


@pytest.mark.slow  # the stage itself takes about 10 s with every core spinning
def test_shard_stage_from_a_plain_shell_on_a_busy_machine(tmp_path: Path, busy_cpus: None) -> None:
    from omni_r1.config import IngestParams
    from omni_r1.data.pipeline import ingest
    from omni_r1.data.synthetic import SynthSpec, generate
    from omni_r1.fileio import atomic_write_parquet

    root = tmp_path / "raw"
    generate(root, "video", SynthSpec(videos=2, seed=3, width=96, height=64, fps=10, seconds=1.0))
    frame, _ = ingest("video", root, IngestParams())
    atomic_write_parquet(tmp_path / "manifest.parquet", frame)
    (tmp_path / "params.yaml").write_text("data:\n  format: video\n  fps: 2.0\n  max_frames: 4\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    argv = ["--params", str(tmp_path / "params.yaml"), "--root", str(root), "--manifest",
            str(tmp_path / "manifest.parquet"), "--out", str(tmp_path / "shards"), "--metrics",
            str(tmp_path / "shard.json")]
    start = time.perf_counter()
    proc, loaded = run_stage("shard", argv, tmp_path, env=env, timeout=LIMIT_SECONDS)
    seconds = time.perf_counter() - start
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "stages" in loaded, "the stage's exit report is missing: " + proc.stdout[-2000:]
    assert "prefect" not in loaded, "the stage imported Prefect"
    metrics = json.loads((tmp_path / "shard.json").read_text())
    assert metrics["videos_ok"] == 2 and metrics["videos_quarantined"] == 0, metrics
    assert (tmp_path / "shards" / "manifest.json").is_file()
    print(f"shard stage on a busy machine: {seconds:.1f} s")
