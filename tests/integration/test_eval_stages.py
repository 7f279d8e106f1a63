"""predict -> evaluate -> report through the stages' main([...]) on a small prepared synthetic set."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flows.cli import main as cli
from omni_r1.data.shards import read_samples
from omni_r1.eval.predict import prediction_paths
from stages import evaluate, predict, report, train_detail

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def run(synth_video: Path, tmp_path_factory: pytest.TempPathFactory, prefect_harness: None) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("eval-run")
    small = ["--params", str(REPO / "params.yaml"), "--set", "data.low_res=64", "--set", "data.high_res=96",
             "--set", "detail.light_steps=2", "--set", "detail.light_batch=4", "--set", "detail.light_size=32",
             "--set", "global_reasoning.max_new_tokens=16", "--set", f"detail.light_checkpoint={out / 'detail'}",
             "--set", "global_reasoning.checkpoint=builtin:tiny",
             "--set", f"data.root={synth_video}"]
    assert cli(["prepare", "--format", "video", "--root", str(synth_video), "--out", str(out), *small[:6]]) == 0
    paths = {"shards": out / "shards", "features": out / "features", "pred": out / "predictions",
             "eval": out / "eval", "reports": out / "reports"}
    assert train_detail.main([*small, "--shards", str(paths["shards"]), "--metrics", str(out / "td.json")]) == 0
    assert predict.main([*small, "--shards", str(paths["shards"]), "--features", str(paths["features"]),
                         "--out", str(paths["pred"]), "--metrics", str(out / "predict.json")]) == 0
    assert evaluate.main([*small, "--shards", str(paths["shards"]), "--predictions", str(paths["pred"]),
                          "--out", str(paths["eval"])]) == 0
    assert report.main([*small, "--eval", str(paths["eval"]), "--shards", str(paths["shards"]),
                        "--predictions", str(paths["pred"]), "--paper", str(REPO / "reports/paper_numbers.yaml"),
                        "--out", str(paths["reports"])]) == 0
    return paths


def test_predictions_are_in_the_official_layout(run: dict[str, Path]) -> None:
    samples = list(read_samples(run["shards"], "test"))
    assert samples
    for policy in ("global_reasoning", "uniform_keyframes"):
        for sample in samples:
            paths = prediction_paths(sample)
            assert len(paths) == sample.meta["num_frames"]
            assert all((run["pred"] / policy / p).is_file() for p in paths)
    rows = [json.loads(line) for line in (run["pred"] / "rows.jsonl").read_text().splitlines()]
    assert len(rows) == 2 * len(samples)
    assert all(("error" in r and "keyframes" in r) for r in rows)


def test_metrics_and_per_sample_rows(run: dict[str, Path]) -> None:
    summary = json.loads((run["eval"] / "metrics.json").read_text())
    assert set(summary) == {"global_reasoning", "uniform_keyframes"}
    for s in summary.values():
        assert 0 <= s["parse_failure_rate"] <= 1 and s["samples"] == 4
        for exp_type in ("referring", "reasoning", "null"):
            assert 0 <= s[exp_type]["JF"] <= 100
    rows = (run["eval"] / "samples.jsonl").read_text().splitlines()
    assert len(rows) == 8


def test_report_puts_this_run_beside_the_paper(run: dict[str, Path]) -> None:
    text = (run["reports"] / "tables.md").read_text()
    assert "Omni-R1 †" in text and "44.7" in text  # the paper's ReVOS overall
    assert "**global_reasoning**" in text and "**uniform_keyframes**" in text
    assert (run["reports"] / "figures/jf_per_type.png").stat().st_size > 0
    assert list((run["reports"] / "figures").glob("overlay_*.png"))
