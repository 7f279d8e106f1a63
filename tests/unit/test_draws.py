"""The official per-draw data selection (omni_r1.rl.draws): frames, objects, expressions, RefAVS on frame 0."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from omni_r1.config import Params, load_params
from omni_r1.data.pipeline import shard_in_process
from omni_r1.data.shards import SamplingPlan, read_samples
from omni_r1.rl.draws import draw_item, draw_objects, draw_positions, subset_sample, video_groups
from omni_r1.rl.prompts_data import PromptItem, item_in_memory
from omni_r1.rl.run import build_reasoner

REPO = Path(__file__).resolve().parents[2]


def test_positions_follow_the_official_linspace() -> None:
    rng = np.random.default_rng(0)
    assert draw_positions(12, rng, 16, 24) == list(range(12))  # not more than min_frames: every frame
    counts = set()
    for seed in range(200):
        positions = draw_positions(40, np.random.default_rng(seed), 16, 24)
        counts.add(len(positions))
        assert positions == np.linspace(0, 39, len(positions), dtype=int).tolist()
    assert counts == set(range(16, 25))  # randint(16, 24), both ends included
    assert len(draw_positions(20, np.random.default_rng(1), 16, 24)) <= 20  # never repeats a stored frame


def test_objects_are_capped_at_a_random_subset_of_three() -> None:
    assert draw_objects(2, np.random.default_rng(0), 3) == [0, 1]
    subsets = {tuple(draw_objects(5, np.random.default_rng(s), 3)) for s in range(50)}
    assert all(len(s) == 3 and list(s) == sorted(set(s)) for s in subsets) and len(subsets) > 3


@pytest.fixture(scope="module")
def params() -> Params:
    return load_params(REPO / "params.yaml", ["train.min_frames=3", "train.max_frames=5", "train.max_objects=1"])


@pytest.fixture(scope="module")
def items(params: Params, synth_video: Path, tmp_path_factory: pytest.TempPathFactory) -> list[PromptItem]:
    reasoner = build_reasoner(params, 0)
    shards = tmp_path_factory.mktemp("draw-shards")
    assert shard_in_process("video", synth_video, shards, SamplingPlan(2.0, 6, 56, 64), videos_per_shard=4) == []
    samples = read_samples(shards, "train")
    return [item_in_memory(s, reasoner, seed=i) for i, s in enumerate(samples)]


def test_a_draw_is_a_subset_with_its_own_key_and_features(params: Params, items: list[PromptItem]) -> None:
    reasoner = build_reasoner(params, 0)
    item = next(i for i in items if i.sample.masks.objects)
    stored = len(item.sample.frame_indices)
    draws = [draw_item(item, reasoner, np.random.default_rng(seed), params.train, seed=1) for seed in range(12)]
    changed = [d for d in draws if d is not item]
    assert changed and all(d.key != item.key for d in changed)
    assert {len(d.sample.frame_indices) for d in draws} == set(range(3, min(5, stored) + 1))
    for drawn in changed:
        assert set(drawn.sample.frame_indices) <= set(item.sample.frame_indices)
        assert drawn.sample.high_res.shape[0] == len(drawn.sample.frame_indices) == drawn.sample.low_res.shape[0]
        assert len(drawn.sample.masks.objects) == 1
        assert drawn.duration == len(drawn.sample.frame_indices) / 2  # the official len(frames) / 2
        assert int(drawn.record.video_grid_thw[0]) * 2 >= len(drawn.sample.frame_indices)  # the draw's features


def test_a_draw_that_keeps_everything_is_the_item_itself(params: Params, items: list[PromptItem]) -> None:
    reasoner = build_reasoner(params, 0)
    keep_all = dataclasses.replace(params.train, min_frames=100, max_frames=100, max_objects=3)
    item = items[0]
    assert draw_item(item, reasoner, np.random.default_rng(0), keep_all, seed=0) is item


def test_refavs_trains_on_frame_zero(params: Params, items: list[PromptItem]) -> None:
    reasoner = build_reasoner(params, 0)
    refavs = dataclasses.replace(items[0], task="refavs")
    drawn = draw_item(refavs, reasoner, np.random.default_rng(0), params.train, seed=0)
    assert drawn.sample.frame_indices == (items[0].sample.frame_indices[0],)


def test_expressions_group_by_video(items: list[PromptItem]) -> None:
    groups = video_groups(items)
    assert sorted(i for g in groups for i in g) == list(range(len(items)))
    assert all(len({items[i].sample.meta["video_id"] for i in g}) == 1 for g in groups)
    assert len(groups) < len(items)  # the synthetic clips carry several expressions each


def test_subset_keeps_the_truth_aligned(items: list[PromptItem]) -> None:
    sample = items[0].sample
    sub = subset_sample(sample, [0, 2], list(range(len(sample.masks.objects))))
    assert np.array_equal(sub.target_masks(), sample.target_masks()[[0, 2]])
