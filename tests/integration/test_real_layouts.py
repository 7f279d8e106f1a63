"""The real path through the stage CLIs with tiny random models in the published on-disk layouts.

A full Qwen2.5-Omni folder (talker, token2wav, ``spk_dict.pt``, processor) is the starting policy,
the tokenizer and the grounder at once, as the paper uses the starting model; SAM2 loads an official
``{"model": state_dict}`` ``.pt``. ``train`` runs one GRPO step with ``detail.backend=sam2`` and exports
the policy; ``predict`` runs both systems with that export. Nothing downloads.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from flows.cli import main as cli
from omni_r1.config import GlobalReasoningParams
from omni_r1.models.checkpoints import model_type
from omni_r1.models.processor import build_processor
from omni_r1.rl.trainer import SYSTEM2_FAILURE_COLUMNS
from omni_r1.systems.global_reasoning import load_thinker
from stages import predict, train
from tests.layouts import save_full_omni, save_sam2_checkpoint

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run(synth_video: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("real-layouts")
    data = ["--params", str(REPO / "params.yaml"), "--set", "data.low_res=64", "--set", "data.high_res=96"]
    assert cli(["prepare", "--format", "video", "--root", str(synth_video), "--out", str(out), *data]) == 0
    processor = build_processor("builtin:tiny", min_pixels=16 * 28 * 28, max_pixels=128 * 28 * 28)
    omni, sam2 = out / "models/Qwen2.5-Omni", out / "models/sam2.1_hiera_tiny.pt"
    save_full_omni(omni, processor, seed=0)
    save_sam2_checkpoint(sam2, seed=0)
    settings = [*data, "--set", f"data.root={synth_video}", "--set", f"features.tokenizer={omni}",
                "--set", f"train.init_checkpoint={omni}", "--set", "detail.backend=sam2",
                "--set", f"detail.grounder_checkpoint={omni}", "--set", f"detail.sam2_checkpoint={sam2}",
                "--set", "detail.sam2_image_size=256", "--set", "train.steps=1", "--set", "train.warm_start.steps=0",
                "--set", "train.seeds=[0]", "--set", "train.seed_workers=1", "--set", "train.group_size=2",
                "--set", "train.prompts_per_step=1", "--set", "train.max_new_tokens=8", "--set", "train.save_every=1",
                "--set", "global_reasoning.max_new_tokens=8", "--set", "predict.policies=[global_reasoning]"]
    paths = {"out": out, "omni": omni, "policy": out / "policy", "log": out / "train.tsv", "pred": out / "pred"}
    assert train.main([*settings, "--shards", str(out / "shards"), "--features", str(out / "features"),
                       "--out", str(paths["policy"]), "--log", str(paths["log"]),
                       "--metrics", str(out / "train.json")]) == 0
    export = paths["policy"] / "final"
    assert predict.main([*settings, "--set", f"global_reasoning.checkpoint={export}", "--shards", str(out / "shards"),
                         "--features", str(out / "features"), "--manifest", str(out / "interim/validated.parquet"),
                         "--root", str(synth_video), "--out", str(paths["pred"]),
                         "--metrics", str(out / "predict.json")]) == 0
    return paths


def test_train_logs_the_system2_failures_of_its_step(run) -> None:
    with open(run["log"]) as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    assert len(rows) == 1 and all(column in rows[0] for column in SYSTEM2_FAILURE_COLUMNS)
    assert list((run["policy"] / "checkpoints" / "seed-0").glob("step-*"))


def test_the_export_is_a_thinker_folder_that_loads_strictly(run) -> None:
    export = run["policy"] / "final"
    assert model_type(export, "global_reasoning.checkpoint") == "qwen2_5_omni_thinker"
    processor = build_processor(export, min_pixels=16 * 28 * 28, max_pixels=128 * 28 * 28)
    model = load_thinker(GlobalReasoningParams(checkpoint=str(export)), processor)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_predict_runs_both_systems_with_the_export(run) -> None:
    rows = [json.loads(line) for line in (run["pred"] / "rows.jsonl").read_text().splitlines()]
    assert rows and {r["policy"] for r in rows} == {"global_reasoning"}
    assert list((run["pred"] / "global_reasoning").rglob("*.png"))
