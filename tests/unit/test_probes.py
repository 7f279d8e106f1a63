"""Learnability probes of the demo task (design.md section 7), on demo-like synthetic clips. Slow.

- Supervised: trained on answers whose moment holds the target (``oracle_target``), the tiny thinker
  picks frames where the target is visible more often than chance. So the task is learnable.
- GRPO: after a format-only warm start, GRPO with the real rewards raises the held-out reward.
  System 2 is a test double here (a fixed centre box), so what is learnt is System 1's choice of
  moments; the demo itself runs the trained light detail models.
- The demo task, short: GRPO with a System 2 stand-in whose masks depend on the keyframes (a box that
  holds still from each keyframe, right where the target shows there, a wrong guess where it does not),
  and the trained policy's keyframes, given the original query, beat evenly spread ones on held-out clips.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from omni_r1.config import load_params
from omni_r1.data.pipeline import shard_in_process
from omni_r1.data.shards import SamplingPlan, read_samples
from omni_r1.data.synthetic import SynthSpec, generate
from omni_r1.rl.engine import build_engine
from omni_r1.rl.heldout import evaluate_policy
from omni_r1.rl.probes import chance_rate, keyframe_hit_rate, oracle_target
from omni_r1.rl.prompts_data import item_in_memory
from omni_r1.rl.run import build_reasoner
from omni_r1.rl.trainer import GRPOTrainer
from omni_r1.systems.collaboration import masks_to_native
from omni_r1.systems.detail import SegmentResult
from omni_r1.types import Box, Sample
from omni_r1.rl.warm_start import warm_start
from tests.unit.test_trainer import FixedBoxSegmenter

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo_items(tmp_path_factory: pytest.TempPathFactory):
    """Prompts of 15 demo-like clips (256x192, 6 s, 12 frames at 2 fps, low-res 112), split train / held-out."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("probe-data")
    generate(root / "raw", "video", SynthSpec(videos=15, seed=11, width=256, height=192, fps=10, seconds=6.0))
    plan = SamplingPlan(fps=2.0, max_frames=12, low_res=112, high_res=128)
    assert shard_in_process("video", root / "raw", root / "shards", plan, videos_per_shard=8) == []
    params = load_params(REPO / "params.yaml", ["train.seeds=[0]", "global_reasoning.temperature=0.7"])
    reasoner = build_reasoner(params, 0)
    out = {split: [item_in_memory(sample, reasoner, seed=index)
                   for index, sample in enumerate(read_samples(root / "shards", split))]
           for split in ("train", "val", "test")}
    return params, out["train"], out["val"] + out["test"]


def test_supervised_probe_the_thinker_can_learn_which_frames_hold_the_target(demo_items) -> None:
    params, train, heldout = demo_items
    reasoner = build_reasoner(params, 0)
    warm_start(reasoner, train, dataclasses.replace(params.train.warm_start, steps=300, batch=32), seed=0,
               target=oracle_target)
    chance = chance_rate(heldout)
    hit_train, parsed_train = keyframe_hit_rate(reasoner, train, max_new_tokens=56)
    hit_heldout, parsed_heldout = keyframe_hit_rate(reasoner, heldout, max_new_tokens=56)
    # Measured (2026-11-26): on the demo's clips train 0.85 vs chance 0.70 and held-out 0.92 vs 0.76; on this
    # 15-clip set train 0.78-0.80 vs 0.68 but held-out 0.71 vs 0.73. The tiny thinker learns where the target
    # is on the clips it is taught; held-out transfer from 9 training clips is within noise, so it is only
    # reported. The GRPO probe below is the held-out check.
    print(f"supervised probe: train hit {hit_train:.2f} (chance {chance_rate(train):.2f}), held-out {hit_heldout:.2f} "
          f"(chance {chance:.2f}), parsed {parsed_train:.2f} / {parsed_heldout:.2f}")
    assert parsed_train >= 0.5 and parsed_heldout >= 0.5, (parsed_train, parsed_heldout)
    assert hit_train > chance_rate(train) + 0.08, (hit_train, chance_rate(train))


def test_grpo_probe_raises_the_heldout_reward_after_a_format_only_warm_start(demo_items, tmp_path) -> None:
    params, train, heldout = demo_items
    params = dataclasses.replace(params, train=dataclasses.replace(params.train, steps=80, prompts_per_step=2,
                                                                   max_new_tokens=56, save_every=1000))
    reasoner = build_reasoner(params, 0)
    warm_start(reasoner, train, dataclasses.replace(params.train.warm_start, steps=200, batch=16), seed=0)
    segmenter = FixedBoxSegmenter()
    before = evaluate_policy(reasoner, segmenter, heldout, params.rewards, max_new_tokens=56)
    engine = build_engine(reasoner.model, params.train, total_steps=params.train.steps, device=reasoner.device)
    trainer = GRPOTrainer(reasoner=reasoner, engine=engine, segmenter=segmenter, items=train, params=params,
                          checkpoint_dir=tmp_path, seed=0)
    rewards: list[float] = []
    trainer.fit(params.train.steps, log=lambda step, values: rewards.append(values["reward"]))
    after = evaluate_policy(reasoner, segmenter, heldout, params.rewards, max_new_tokens=56)
    assert np.mean(rewards[-20:]) > np.mean(rewards[:20]), "the training reward did not rise"
    assert after["reward"] > before["reward"], (before["reward"], after["reward"])


class KeyframeTrackerForTests:
    """Test double for System 2 whose masks depend on the keyframes, as a real one's do.

    Each keyframe owns the frames nearer to it than to any other keyframe. Where the target shows at the
    keyframe, it is found and tracked perfectly over the owned frames (the truth); where it does not, the
    grounder guesses a centre box, which is tracked, unmoving, over them (as a grounder that always answers
    would). So a keyframe on which the target shows is worth more than one on which it does not, and nothing
    else differs. It reads ground truth, which only a test double may do; it finds the sample by its frames'
    pixels, so each video may carry one expression.
    """

    def __init__(self, samples: list[Sample]) -> None:
        self.truth = {s.high_res.tobytes(): masks_to_native(s.target_masks(), *s.high_res.shape[1:3]) for s in samples}

    def segment(self, frames: np.ndarray, prompts) -> SegmentResult:
        return self.segment_batch(frames, [prompts])[0]

    def segment_batch(self, frames: np.ndarray, prompt_sets, boxes_per_keyframe=None) -> list[SegmentResult]:
        truth = self.truth[frames.tobytes()]
        return [self._one(truth, sorted(p.frame for p in prompts)) for prompts in prompt_sets]

    @staticmethod
    def _one(truth: np.ndarray, keyframes: list[int]) -> SegmentResult:
        t, h, w = truth.shape
        masks = np.zeros(truth.shape, bool)
        entries: dict[int, tuple[Box, ...]] = {}
        for i, k in enumerate(keyframes):
            lo = 0 if i == 0 else (keyframes[i - 1] + k) // 2 + 1
            hi = t - 1 if i == len(keyframes) - 1 else (k + keyframes[i + 1]) // 2
            ys, xs = np.nonzero(truth[k])
            if ys.size:
                masks[lo:hi + 1] |= truth[lo:hi + 1]
                entries[k] = (Box(xs.min(), ys.min(), xs.max(), ys.max()),)
            else:
                guess = Box(w // 3, h // 3, 2 * w // 3, 2 * h // 3)
                masks[lo:hi + 1, h // 3:2 * h // 3 + 1, w // 3:2 * w // 3 + 1] = True
                entries[k] = (guess,)
        # One object mask per box, as SegmentResult documents (the failure counts index them per box).
        return SegmentResult(masks, np.repeat(masks[None], len(entries), axis=0), {k: list(v) for k, v in entries.items()},
                             entries=entries)


def one_per_video(items):
    """The first expression with a target of each video: the stand-in System 2 finds its sample by the frames."""
    chosen: dict[str, object] = {}
    for item in items:
        if item.sample.meta["exp_type"] != "null":
            chosen.setdefault(item.sample.meta["video_id"], item)
    return list(chosen.values())


def test_demo_task_trained_keyframes_beat_uniform_ones_on_heldout(demo_items, tmp_path) -> None:
    params, train, heldout = demo_items
    train, heldout = one_per_video(train), one_per_video(heldout)
    params = dataclasses.replace(params, train=dataclasses.replace(params.train, steps=100, prompts_per_step=2,
                                                                   max_new_tokens=56, save_every=1000))
    reasoner = build_reasoner(params, 0)
    warm_start(reasoner, train, dataclasses.replace(params.train.warm_start, steps=200, batch=16), seed=0)
    segmenter = KeyframeTrackerForTests([i.sample for i in [*train, *heldout]])
    engine = build_engine(reasoner.model, params.train, total_steps=params.train.steps, device=reasoner.device)
    trainer = GRPOTrainer(reasoner=reasoner, engine=engine, segmenter=segmenter, items=train, params=params,
                          checkpoint_dir=tmp_path, seed=0)
    trainer.fit(params.train.steps)
    after = evaluate_policy(reasoner, segmenter, heldout, params.rewards, max_new_tokens=56)["policies"]
    trained, uniform = after["keyframes_original_query"]["overall"], after["uniform_keyframes"]["overall"]
    print(f"held-out overall J&F: trained keyframes {trained['JF']} {trained['JF_ci']}, "
          f"uniform {uniform['JF']} {uniform['JF_ci']}")
    assert trained["JF"] > uniform["JF"], (trained, uniform)
