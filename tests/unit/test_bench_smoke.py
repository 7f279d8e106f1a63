"""Smoke test of bench/shard_throughput.py: it runs end to end on tiny clips and prints its figures last.

No timing is asserted (CI machines are shared); only that the real shard path ran and the
summary line parses into positive numbers.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[2]
RATIO_LINE = re.compile(
    r"ratio shard/raw = (?P<ratio>[\d.]+) \(shard (?P<shard>[\d.]+) frames/s, raw (?P<raw>[\d.]+) frames/s, "
    r"(?P<videos>\d+) videos x (?P<frames>\d+) frames, (?P<workers>\d+) workers, thread runner\)"
)


def _load_bench(monkeypatch: pytest.MonkeyPatch, name: str = "shard_throughput") -> ModuleType:
    """``bench/<name>.py`` as a module, registered in ``sys.modules`` for the test only."""
    # The scripts set environment defaults on import; preset the one conftest does not, so that
    # monkeypatch restores it after the test and nothing leaks into the session.
    monkeypatch.setenv("TQDM_DISABLE", "1")
    spec = importlib.util.spec_from_file_location(name, REPO / "bench" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # dataclasses look their module up while it runs
    spec.loader.exec_module(module)
    return module


def test_bench_prints_ratio_last(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    bench = _load_bench(monkeypatch)
    argv = ["--videos", "2", "--seconds", "1", "--size", "160x120", "--fps", "10", "--repeats", "1",
            "--cache-dir", str(tmp_path / "cache"), "--low-res", "64", "--high-res", "96"]
    assert bench.main(argv) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    match = RATIO_LINE.fullmatch(lines[-1])
    assert match is not None, lines[-1]
    assert float(match["ratio"]) > 0 and float(match["shard"]) > 0 and float(match["raw"]) > 0
    # 2 clips of 1 s at 10 fps: the probe's frame count is what both measurements counted.
    assert (int(match["videos"]), int(match["frames"]), int(match["workers"])) == (2, 10, 2)
    assert not any(line.startswith("warning:") for line in lines), lines
    assert sorted(p.name for p in (tmp_path / "cache").glob("*/videos/*.mp4")) == ["bench0000.mp4", "bench0001.mp4"]
    assert not list((tmp_path / "cache").glob("*/.shards-*")), "the benchmark's shard output must be removed"


def test_size_argument_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    bench = _load_bench(monkeypatch)
    assert bench._size("640x360") == (640, 360)
    with pytest.raises(Exception, match="WIDTHxHEIGHT"):
        bench._size("640")
    with pytest.raises(Exception, match="even sides"):
        bench._size("641x360")


SCALEOUT_LINE = re.compile(
    r"ratio 2/1 workers = (?P<ratio>[\d.]+) \(2 workers (?P<two>[\d.]+) frames/s, 1 worker (?P<one>[\d.]+) frames/s, "
    r"(?P<videos>\d+) videos x (?P<frames>\d+) frames, dask\)"
)


@pytest.mark.slow  # two Dask LocalClusters (3 worker processes) and four stage runs: about a minute
def test_scaleout_bench_prints_ratio_last(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.syspath_prepend(str(REPO / "bench"))
    bench = _load_bench(monkeypatch, "scaleout")
    assert bench.main(["--small", "--cache-dir", str(tmp_path / "cache")]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    match = SCALEOUT_LINE.fullmatch(lines[-1])
    assert match is not None, lines[-1]
    assert float(match["ratio"]) > 0 and float(match["one"]) > 0 and float(match["two"]) > 0
    assert (int(match["videos"]), int(match["frames"])) == (4, 20)  # --small: 4 clips of 2 s at 10 fps
    assert not any(line.startswith("warning:") for line in lines), lines
    assert not list((tmp_path / "cache").glob("*/.scaleout-*")), "the benchmark's scratch folder must be removed"


GRPO_UPDATE_LINE = re.compile(
    r"ratio update/bare = (?P<ratio>[\d.]+) \(shared-prompt path: update (?P<update>[\d.]+) s per kept group, "
    r"bare (?P<bare>[\d.]+) s per group of (?P<rows>\d+) rows\)"
)
GRPO_STEP_LINE = re.compile(
    r"ratio step/bare = (?P<ratio>[\d.]+) \(step (?P<step>[\d.]+) s, bare (?P<bare>[\d.]+) s for the same "
    r"(?P<prompts>\d+) x (?P<group>\d+) rows; by CPU time (?P<cpu>[\d.]+)\)"
)
GRPO_PHASE_LINE = re.compile(r"  (?P<phase>\w+) +(?P<seconds>[\d.]+) s  .*")


@pytest.mark.slow  # builds the tiny thinker, shards 3 tiny clips, trains System 2 for 2 steps: about 15-20 s
def test_grpo_step_bench_prints_the_split_and_ratios_last(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    import torch

    bench = _load_bench(monkeypatch, "grpo_step")
    # Synthetic clips and a quick-trained System 2, whatever data/ holds on this machine.
    argv = ["--small", "--shards", str(tmp_path / "no-shards"), "--features", str(tmp_path / "no-features"),
            "--cache-dir", str(tmp_path / "cache"), "--set", f"detail.light_checkpoint={tmp_path / 'no-detail'}"]
    threads = torch.get_num_threads()
    try:
        assert bench.main(argv) == 0
    finally:
        torch.set_num_threads(threads)  # main sets train.cpu_threads for the process
    lines = capsys.readouterr().out.strip().splitlines()
    update, step = GRPO_UPDATE_LINE.fullmatch(lines[-2]), GRPO_STEP_LINE.fullmatch(lines[-1])
    assert update is not None, lines[-2]
    assert step is not None, lines[-1]
    # --small: G=4, 2 prompts per step, equal-reward groups kept, so the update phase ran on both groups.
    assert (int(update["rows"]), int(step["prompts"]), int(step["group"])) == (4, 2, 4)
    assert all(float(update[k]) > 0 for k in ("ratio", "update", "bare"))
    assert all(float(step[k]) > 0 for k in ("ratio", "step", "bare", "cpu"))
    assert float(step["bare"]) == pytest.approx(2 * float(update["bare"]), abs=2e-3)  # two groups' worth of rows
    phases = {m["phase"]: float(m["seconds"]) for m in map(GRPO_PHASE_LINE.fullmatch, lines) if m is not None}
    assert list(phases) == ["rollout", "system2", "reward", "advantage", "update", "step"]
    assert phases["rollout"] > 0 and phases["update"] > 0 and phases["step"] == float(step["step"])
    assert any(line.startswith("data: synthetic videos in ") for line in lines), lines
    assert any(line.startswith("System 2: light backend QUICK-TRAINED for 2 steps") for line in lines), lines
    assert sum(line.startswith("step ") for line in lines) == 2  # the two timed steps, after one warm-up step
    assert (tmp_path / "cache").is_dir() and not list(tmp_path.glob("no-*")), "nothing may be written to the fake paths"


ORCHESTRATION_LINE = re.compile(
    r"ratio dvc/direct = (?P<ratio>[\d.]+) \(dvc (?P<dvc>[\d.]+) s, direct (?P<direct>[\d.]+) s, "
    r"(?P<videos>\d+) videos x (?P<frames>\d+) frames\)"
)


@pytest.mark.slow  # two runs of the data half on 2 tiny videos (imports of torch and great_expectations): ~30 s
def test_orchestration_bench_prints_the_dvc_ratio_last(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    bench = _load_bench(monkeypatch, "orchestration")
    assert bench.main(["--tiny", "--scratch", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    match = ORCHESTRATION_LINE.fullmatch(lines[-1])
    assert match is not None, lines[-1]
    assert float(match["ratio"]) > 0 and float(match["dvc"]) > 0 and float(match["direct"]) > 0
    assert (int(match["videos"]), int(match["frames"])) == (2, 10)  # --tiny: 2 clips of 1 s at 10 fps
    # the direct script's interpreter exit is measured apart and left out of the compared figure
    teardown = [line for line in lines if line.startswith("repeat 1: direct") and "the interpreter's exit" in line]
    assert teardown, lines
    assert any(line.startswith("dvc/plain script = ") for line in lines), lines
    assert not any(line.startswith("warning:") for line in lines), lines  # both paths wrote the same shards
    assert list(tmp_path.iterdir()) == [], "the benchmark's scratch folder must be removed"


# ----------------------------------------------------------------------------------------------- bench/gpu_step.py


@pytest.mark.slow
def test_gpu_step_runs_tiny_on_the_cpu_and_writes_every_part(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    import json

    bench = _load_bench(monkeypatch, "gpu_step")
    out = tmp_path / "gpu_step.json"
    assert bench.main(["--tiny", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert set(report) >= {"versions", "peak", "rollout", "update", "system2", "step"}
    rollout, update, system2 = report["rollout"], report["update"], report["system2"]
    assert rollout["tokens"] == 2 * 4 * 32 and rollout["tokens_per_s"] > 0 and rollout["ratio_to_hf_generate"] > 0
    assert 0 < rollout["ratio_to_bandwidth_bound"] and update["mfu"] > 0 and update["engine"] == "TorchEngine"
    assert system2["ratio_group_to_per_rollout"] > 0 and set(report["step"]["seconds"]) == {
        "rollout", "system2", "reward", "update"}
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("ratios: rollout ")


def test_gpu_step_refuses_to_run_without_a_gpu_unless_tiny(monkeypatch: pytest.MonkeyPatch) -> None:
    bench = _load_bench(monkeypatch, "gpu_step")
    monkeypatch.setattr(bench.torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit, match="--tiny"):
        bench.pick_device(tiny=False)
    with pytest.raises(SystemExit, match=r"'no_such_package'.*--skip update"):
        bench.require("no_such_package", "update")
