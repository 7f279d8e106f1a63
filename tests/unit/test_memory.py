"""The per-GPU memory estimate of the 7B recipe (the README's table) and its warning before a run."""

from __future__ import annotations

import dataclasses

import pytest

from omni_r1.rl.memory import SEVEN_B, estimate_memory, fits, memory_table, recipe_of


def test_the_7b_recipe_fits_an_80_gb_gpu_only_with_sharding_and_checkpointing() -> None:
    zero2 = estimate_memory(SEVEN_B, stage=2, gpus=8, offload=False, gradient_checkpointing=True)
    zero3 = estimate_memory(SEVEN_B, stage=3, gpus=8, offload=True, gradient_checkpointing=True)
    bare = estimate_memory(SEVEN_B, stage=2, gpus=8, offload=False, gradient_checkpointing=False)
    assert zero3["total"] < zero2["total"] <= 80 < bare["total"]
    assert zero2["policy"] == pytest.approx(17.9, abs=0.1) and zero2["grounder"] == pytest.approx(16.6, abs=0.1)
    assert fits(zero2, 80) is None
    warning = fits(bare, 80)
    assert warning is not None and "activations" in warning and "train.deepspeed.gradient_checkpointing" in warning


def test_chunked_logits_stay_under_one_full_fp32_logit_tensor() -> None:
    full = SEVEN_B.group_size * SEVEN_B.completion_tokens * SEVEN_B.vocab * 4 / 1e9  # 3.9 GB, design.md section 9
    chunked = estimate_memory(SEVEN_B, stage=3, gpus=8, offload=True, gradient_checkpointing=True)["logits"]
    assert full == pytest.approx(3.9, abs=0.05) and chunked < full / 2


def test_the_table_lists_every_part_for_both_stages() -> None:
    table = memory_table(SEVEN_B)
    assert "ZeRO-2" in table and "ZeRO-3 + offload" in table
    for part in ("policy", "reference", "grounder", "sam2", "optimizer", "activations", "logits", "total"):
        assert f"| {part} |" in table
    with pytest.raises(ValueError, match="ZeRO-2 or ZeRO-3"):
        estimate_memory(dataclasses.replace(SEVEN_B), stage=1, gpus=8, offload=False, gradient_checkpointing=True)


def test_the_recipe_of_loaded_models_counts_their_parameters() -> None:
    from omni_r1.models.processor import build_processor
    from omni_r1.systems.global_reasoning import build_tiny_thinker

    thinker = build_tiny_thinker(build_processor("builtin:tiny", min_pixels=12544, max_pixels=100352), seed=0)
    recipe = recipe_of(thinker, object(), group_size=8, completion_tokens=56)
    total = sum(p.numel() for p in thinker.parameters())
    towers = sum(p.numel() for p in [*thinker.model.visual.parameters(), *thinker.model.audio_tower.parameters()])
    assert (recipe.language_params, recipe.tower_params) == (total - towers, towers)
    assert (recipe.hidden, recipe.layers, recipe.head_dim) == (64, 2, 16) and recipe.grounder_params == 0
