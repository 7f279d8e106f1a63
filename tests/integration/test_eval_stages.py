"""predict -> evaluate -> report through the stages' main([...]) on small prepared synthetic sets.

The plain video layout runs all four policies of the ablation; a RefAVS-layout set checks that the
report's paper table carries the Ref-AVS metrics per split, computed by ``omni_r1.eval.scoring``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flows.cli import main as cli
from omni_r1.data.shards import read_samples
from omni_r1.eval.predict import POLICIES, prediction_paths
from omni_r1.eval.scoring import score_refavs
from stages import evaluate, predict, report, train_detail

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def run(synth_video: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("eval-run")
    small = ["--params", str(REPO / "params.yaml"), "--set", "data.low_res=64", "--set", "data.high_res=96",
             "--set", "detail.light_steps=2", "--set", "detail.light_batch=4", "--set", "detail.light_size=32",
             "--set", "global_reasoning.max_new_tokens=16", "--set", f"detail.light_checkpoint={out / 'detail'}",
             "--set", "global_reasoning.checkpoint=builtin:tiny",
             "--set", f"data.root={synth_video}"]
    assert cli(["prepare", "--format", "video", "--root", str(synth_video), "--out", str(out), *small[:6]]) == 0
    paths = {"shards": out / "shards", "features": out / "features", "pred": out / "predictions",
             "eval": out / "eval", "reports": out / "reports", "detail": out / "detail"}
    assert train_detail.main([*small, "--shards", str(paths["shards"]), "--out", str(paths["detail"]),
                              "--metrics", str(out / "td.json")]) == 0
    assert predict.main([*small, "--root", str(synth_video), "--shards", str(paths["shards"]),
                         "--features", str(paths["features"]), "--manifest", str(out / "interim/validated.parquet"),
                         "--out", str(paths["pred"]), "--metrics", str(out / "predict.json")]) == 0
    assert evaluate.main([*small, "--root", str(synth_video), "--shards", str(paths["shards"]),
                          "--predictions", str(paths["pred"]), "--out", str(paths["eval"])]) == 0
    assert report.main([*small, "--eval", str(paths["eval"]), "--shards", str(paths["shards"]),
                        "--predictions", str(paths["pred"]), "--paper", str(REPO / "reports/paper_numbers.yaml"),
                        "--train", str(out / "no-train.json"), "--train-log", str(out / "no-train.tsv"),
                        "--out", str(paths["reports"])]) == 0
    return paths


def test_predictions_are_in_the_official_layout(run: dict[str, Path]) -> None:
    samples = list(read_samples(run["shards"], "test"))
    assert samples
    for policy in POLICIES:
        for sample in samples:
            paths = prediction_paths(sample)
            assert len(paths) == sample.meta["num_frames"] > len(sample.frame_indices)  # every native frame
            assert all((run["pred"] / policy / p).is_file() for p in paths)
    rows = [json.loads(line) for line in (run["pred"] / "rows.jsonl").read_text().splitlines()]
    assert len(rows) == len(POLICIES) * len(samples)
    assert all(("error" in r and "keyframes" in r) for r in rows)
    assert all(r["native_frames"] == r_sample.meta["num_frames"] for r in rows for r_sample in samples
               if r_sample.meta["sample_id"] == r["sample_id"])
    # the two System 1 policies share one answer: same keyframes, the query instead of the descriptions
    by_key = {(r["sample_id"], r["policy"]): r for r in rows}
    for sample in samples:
        full = by_key[(sample.meta["sample_id"], "global_reasoning")]
        query = by_key[(sample.meta["sample_id"], "keyframes_original_query")]
        assert [k for k, _ in full["keyframes"]] == [k for k, _ in query["keyframes"]]
        assert all(d == sample.expression for _, d in query["keyframes"])
        assert by_key[(sample.meta["sample_id"], "predict_nothing")]["keyframes"] == []


def test_metrics_and_per_sample_rows(run: dict[str, Path]) -> None:
    summary = json.loads((run["eval"] / "metrics.json").read_text())
    assert set(summary) == set(POLICIES)
    for s in summary.values():
        assert 0 <= s["parse_failure_rate"] <= 1 and s["samples"] == 4
        for exp_type in ("referring", "reasoning", "null", "overall"):
            low, high = s[exp_type]["JF_ci"]
            assert 0 <= low <= s[exp_type]["JF"] <= high <= 100
        assert "refavs" not in s  # plain video data has no Ref-AVS splits
    assert summary["predict_nothing"]["null"]["JF"] == 100.0  # an empty prediction is right on null expressions
    rows = (run["eval"] / "samples.jsonl").read_text().splitlines()
    assert len(rows) == 4 * len(POLICIES)


def test_report_puts_this_run_beside_the_paper(run: dict[str, Path]) -> None:
    text = (run["reports"] / "tables.md").read_text()
    assert "Omni-R1 †" in text and "44.7" in text  # the paper's ReVOS overall
    assert "**global_reasoning**" in text and "**uniform_keyframes**" in text
    assert "## Ablation" in text
    for policy in POLICIES:
        line = next(line for line in text.splitlines() if line.startswith(f"| `{policy}` |"))
        assert line.count("[") == 4  # referring, reasoning, overall, null: each with its interval
    assert (run["reports"] / "figures/jf_per_type.png").stat().st_size > 0
    assert list((run["reports"] / "figures").glob("overlay_global_reasoning_*.png"))


@pytest.fixture(scope="module")
def refavs_run(run: dict[str, Path], synth_refavs: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A RefAVS-layout set through prepare, predict (System 2 policies only: fast), evaluate and report."""
    out = tmp_path_factory.mktemp("eval-refavs")
    small = ["--params", str(REPO / "params.yaml"), "--set", "data.low_res=64", "--set", "data.high_res=96",
             "--set", "data.format=refavs", "--set", f"data.root={synth_refavs}",
             "--set", f"detail.light_checkpoint={run['detail']}", "--set", "detail.light_size=32",
             "--set", "predict.policies=[predict_nothing, uniform_keyframes]"]
    assert cli(["prepare", "--format", "refavs", "--root", str(synth_refavs), "--out", str(out), *small[:6]]) == 0
    paths = {"root": synth_refavs, "pred": out / "predictions", "eval": out / "eval", "reports": out / "reports"}
    assert predict.main([*small, "--root", str(synth_refavs), "--shards", str(out / "shards"),
                         "--features", str(out / "features"), "--manifest", str(out / "interim/validated.parquet"),
                         "--out", str(paths["pred"]), "--metrics", str(out / "predict.json")]) == 0
    assert evaluate.main([*small, "--root", str(synth_refavs), "--shards", str(out / "shards"),
                          "--predictions", str(paths["pred"]), "--out", str(paths["eval"])]) == 0
    assert report.main([*small, "--eval", str(paths["eval"]), "--shards", str(out / "shards"),
                        "--predictions", str(paths["pred"]), "--paper", str(REPO / "reports/paper_numbers.yaml"),
                        "--train", str(out / "no-train.json"), "--train-log", str(out / "no-train.tsv"),
                        "--out", str(paths["reports"])]) == 0
    return paths


def test_refavs_metrics_per_split_come_from_the_official_scorer(refavs_run: dict[str, Path]) -> None:
    summary = json.loads((refavs_run["eval"] / "metrics.json").read_text())
    for policy in ("predict_nothing", "uniform_keyframes"):
        refavs = summary[policy]["refavs"]
        assert set(refavs) == {"test_s", "test_u", "test_n"}
        for split in ("test_s", "test_u"):
            official = score_refavs(refavs_run["root"], split, refavs_run["pred"] / policy)[split]
            assert refavs[split]["mIoU"] == round(100 * official["mIoU"], 2)
            assert refavs[split]["F"] == round(100 * official["F"], 2)
            assert refavs[split]["JF"] == pytest.approx((refavs[split]["mIoU"] + refavs[split]["F"]) / 2, abs=0.01)
            low, high = refavs[split]["JF_ci"]
            assert low <= refavs[split]["JF"] <= high
        official_null = score_refavs(refavs_run["root"], "test_n", refavs_run["pred"] / policy)["test_n"]
        assert refavs["test_n"]["S"] == round(100 * official_null["S"], 2)
    assert summary["predict_nothing"]["refavs"]["test_n"]["S"] == 0.0  # nothing predicted on the null split


def test_refavs_report_shows_the_refavs_metrics_per_split(refavs_run: dict[str, Path]) -> None:
    text = (refavs_run["reports"] / "tables.md").read_text()
    assert "## RefAVS with the Ref-AVS metrics" in text and "ReVOS-style" not in text
    header = next(line for line in text.splitlines() if line.startswith("| method |"))
    for column in ("Seen J&F", "Seen J (mIoU)", "Seen F", "Unseen J&F", "Unseen J (mIoU)", "Unseen F", "Null S"):
        assert column in header
    assert "| Omni-R1 † | 47.2 | 43.0 | 51.4 | 74.2 | 71.3 | 77.0 |" in text  # the paper's Ref-AVS numbers
    summary = json.loads((refavs_run["eval"] / "metrics.json").read_text())
    mine = next(line for line in text.splitlines() if line.startswith("| **uniform_keyframes** |"))
    seen = summary["uniform_keyframes"]["refavs"]["test_s"]
    assert f"{seen['mIoU']:.1f} [" in mine and f"{seen['F']:.1f} [" in mine
