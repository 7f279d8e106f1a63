"""Held-out evaluation (omni_r1.rl.heldout), the run summary and the collapse alarms, with a System 2 stand-in
whose J is known: it paints every frame whole when it gets keyframes, so each policy's J is the target's share
of the frame where the target shows (0 where it does not), and predicting nothing scores the empty frames."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pytest
import torch

from omni_r1.config import AlarmParams, Params, load_params
from omni_r1.data.pipeline import shard_in_process
from omni_r1.data.shards import SamplingPlan, read_samples
from omni_r1.eval.metrics import j_and_f
from omni_r1.rl import heldout
from omni_r1.rl.alarms import CollapseAlarm, heldout_alarms, step_diversity
from omni_r1.rl.prompts_data import PromptItem, item_in_memory
from omni_r1.rl.run import build_reasoner, summary
from omni_r1.systems.collaboration import Rollout
from omni_r1.systems.detail import KeyframePrompt, SegmentResult

REPO = Path(__file__).resolve().parents[2]
ANSWER = ('<think>t</think><answer>{"start_time": "00:00.00", "end_time": "00:00.00", "description": "the shape"}'
          '</answer>')


class WholeFrameSegmenterForTests:
    """Test double for System 2: every frame whole whenever it is given keyframes; records what it was asked."""

    def __init__(self) -> None:
        self.asked: list[tuple[KeyframePrompt, ...]] = []

    def segment(self, frames: np.ndarray, prompts: Sequence[KeyframePrompt]) -> SegmentResult:
        return self.segment_batch(frames, [prompts])[0]

    def segment_batch(self, frames, prompt_sets, boxes_per_keyframe=None) -> list[SegmentResult]:
        out = []
        for prompts in prompt_sets:
            self.asked.append(tuple(prompts))
            masks = np.ones(frames.shape[:3], bool) if prompts else np.zeros(frames.shape[:3], bool)
            out.append(SegmentResult(masks, masks[None], {}, entries={p.frame: () for p in prompts}))
        return out


@pytest.fixture(scope="module")
def params() -> Params:
    return load_params(REPO / "params.yaml", ["global_reasoning.max_new_tokens=8"])


@pytest.fixture(scope="module")
def items(params: Params, synth_video: Path, tmp_path_factory: pytest.TempPathFactory) -> list[PromptItem]:
    reasoner = build_reasoner(params, 0)
    shards = tmp_path_factory.mktemp("heldout-shards")
    assert shard_in_process("video", synth_video, shards, SamplingPlan(2.0, 6, 56, 64), videos_per_shard=4) == []
    samples = [s for split in ("train", "val", "test") for s in read_samples(shards, split)]
    return [item_in_memory(s, reasoner, seed=i) for i, s in enumerate(samples)]


def expected_jf(item: PromptItem, whole: bool) -> float:
    truth = item.sample.target_masks()
    pred = np.ones_like(truth) if whole else np.zeros_like(truth)
    return round(100 * j_and_f(pred, truth)["JF"], 2)


def test_every_policy_is_scored_against_the_known_j(params, items, monkeypatch) -> None:
    reasoner = build_reasoner(params, 0)
    ids = torch.tensor([reasoner.processor.tokenizer.encode(ANSWER, add_special_tokens=False)])
    monkeypatch.setattr(heldout, "generate", lambda *args, **kwargs: ids)
    segmenter = WholeFrameSegmenterForTests()
    result = heldout.evaluate_policy(reasoner, segmenter, items, params.rewards, max_new_tokens=8, resamples=200)
    for row, item in zip(result["rows"], items):
        scores = row["policies"]
        assert scores["predict_nothing"]["JF"] == expected_jf(item, whole=False)
        for name in ("uniform_keyframes", "keyframes_original_query", "global_reasoning"):
            assert scores[name]["JF"] == expected_jf(item, whole=True), name
        assert row["keyframes"] == [0] and row["descriptions"] == ["the shape"]
    # System 2 alone got evenly spread keyframes with the query; the policy's keyframe got the query and its text
    assert any(len(a) > 1 and all(p.description == items[0].sample.expression for p in a) for a in segmenter.asked)
    assert any(a and a[0].description == "the shape" for a in segmenter.asked)
    policies = result["policies"]
    types = {r["exp_type"] for r in result["rows"]}
    for name, s in policies.items():
        for exp_type in types:  # null apart, referring / reasoning headline, each with its interval
            low, high = s[exp_type]["JF_ci"]
            assert low <= s[exp_type]["JF"] <= high, (name, exp_type)
    assert result["diversity"]["distinct_keyframe_sets"] == pytest.approx(1 / len(items))
    assert result["diversity"]["system2_empty_rate"] == 0.0


def test_the_run_summary_carries_the_ablation_and_alarms() -> None:
    side = {"reward": 1.0, "JF": 0.5, "parse_rate": 1.0, "by_cue": {"time": {"reward": 1.0}},
            "policies": {"predict_nothing": {"referring": {"JF": 10.0}}}, "diversity": {"system2_empty_rate": 0.5}}
    result = {"seed": 0, "before": side, "after": side, "warm_start_seconds": 1.0, "grpo_seconds": 2.0,
              "train_prompts": 4, "heldout_prompts": 2, "alarms": ["System 2 finds nothing"]}
    out = summary([result])
    seed = out["seeds"]["0"]
    assert seed["policies_after"]["predict_nothing"]["referring"]["JF"] == 10.0
    assert seed["alarms"] == ["System 2 finds nothing"] and out["mean"]["jf_after"] == 0.5


def _rollout(text: str, frames: tuple[int, ...], found: bool) -> Rollout:
    prompts = tuple(KeyframePrompt(f, "x") for f in frames)
    masks = np.zeros((4, 2, 2), bool)
    masks[0, 0, 0] = found
    return Rollout(text, None, None, prompts, None, masks)


def test_step_diversity_sees_a_collapsed_step() -> None:
    collapsed = [[_rollout("a", (1,), False)] * 4, [_rollout("a", (1,), False)] * 4]
    values = step_diversity(collapsed, [[1.0] * 4, [1.0] * 4])
    assert values == {"distinct_answers": 0.25, "distinct_keyframe_sets": 1 / 8, "distinct_descriptions": 1.0,
                      "system2_empty_rate": 1.0, "equal_groups_rate": 1.0}
    healthy = [[_rollout(str(i), (i,), True) for i in range(4)]]
    assert step_diversity(healthy, [[0.0, 1.0, 2.0, 3.0]])["distinct_answers"] == 1.0


def test_the_alarm_warns_once_per_crossing_and_recovers() -> None:
    alarm = CollapseAlarm(AlarmParams(window=2))
    bad = {"distinct_answers": 0.1, "distinct_keyframe_sets": 0.5, "distinct_descriptions": 3,
           "system2_empty_rate": 0.0, "equal_groups_rate": 0.0}
    good = {**bad, "distinct_answers": 1.0}
    assert alarm.update(1, bad) == []  # the window is not full yet
    [warning] = alarm.update(2, bad)
    assert "same answers in a group" in warning and "train.alarms" in warning and "step 2" in warning
    assert alarm.update(3, bad) == [] and alarm.active == ["same answers in a group"]
    alarm.update(4, good)
    alarm.update(5, good)
    assert alarm.active == []


def test_heldout_alarms_see_collapsed_greedy_answers() -> None:
    params = AlarmParams()
    assert heldout_alarms({"distinct_keyframe_sets": 1 / 16, "system2_empty_rate": 0.0}, params) == [
        "held-out: same keyframes for every prompt"]
    assert heldout_alarms({"distinct_keyframe_sets": 0.5, "system2_empty_rate": 0.9}, params) == [
        "held-out: System 2 finds nothing"]
    assert heldout_alarms({"distinct_keyframe_sets": 0.5, "system2_empty_rate": 0.1}, params) == []
