"""Learnability probes of the demo task (design.md section 7), kept as slow tests.

- ``oracle_target`` answers with a moment where the target is visible: trained on it by supervision
  (the warm start's machinery with another target), the tiny thinker shows whether it CAN read from
  the video and the query which frames hold the target.
- ``keyframe_hit_rate`` measures that skill on held-out prompts: the fraction of the greedy answer's
  keyframes where the target is visible (a parse failure counts as a miss), beside ``chance_rate``,
  the same for frames picked uniformly at random.

The GRPO probe is the trainer itself on a small set (tests/unit/test_probes.py).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from omni_r1.rl.policy import PromptCache
from omni_r1.rl.prompts_data import PromptItem
from omni_r1.rl.trainer import generate
from omni_r1.rl.warm_start import format_target, random_moments
from omni_r1.systems.answer import try_parse
from omni_r1.systems.global_reasoning import GlobalReasoner
from omni_r1.types import KeyframeSelection


def visible_frames(item: PromptItem) -> np.ndarray:
    """Bool (T,): the sampled frames where any target object shows."""
    return item.sample.target_masks().reshape(len(item.sample.frame_indices), -1).any(axis=1)


def oracle_target(item: PromptItem, rng: np.random.Generator) -> str:
    """One moment of 1-3 frames inside a visible run of the target (random moment for a null expression)."""
    visible = visible_frames(item)
    frames = np.flatnonzero(visible)
    if len(frames) == 0:
        return format_target(item.sample.expression, random_moments(item.duration, item.fps, rng))
    first = int(rng.choice(frames))
    last = first
    while last + 1 < len(visible) and visible[last + 1] and last - first < 2 and rng.random() < 0.6:
        last += 1
    return format_target(item.sample.expression, [(first / item.fps, last / item.fps)])


def chance_rate(items: Sequence[PromptItem]) -> float:
    """Expected hit rate of a uniformly random frame, over the prompts that have a target."""
    rates = [float(visible_frames(i).mean()) for i in items if visible_frames(i).any()]
    return float(np.mean(rates)) if rates else 0.0


def keyframe_hit_rate(reasoner: GlobalReasoner, items: Sequence[PromptItem], *, max_new_tokens: int) -> float:
    """Fraction of greedy keyframes on visible-target frames, over prompts with a target; misses for failures."""
    tokenizer = reasoner.processor.tokenizer
    prompts = PromptCache(eos_id=int(tokenizer.eos_token_id), pad_id=int(tokenizer.pad_token_id))
    rates = []
    for item in items:
        visible = visible_frames(item)
        if not visible.any():
            continue
        ids = generate(reasoner, prompts, item, num=1, do_sample=False, seed=0, max_new_tokens=max_new_tokens)
        parsed = try_parse(reasoner.decode(ids)[0], task=item.task, duration=item.duration,
                           num_frames=len(visible), fps=item.fps, max_keyframes=reasoner.params.max_keyframes)
        if not isinstance(parsed, KeyframeSelection) or not parsed.keyframes:
            rates.append(0.0)
            continue
        rates.append(float(np.mean([visible[min(k.frame, len(visible) - 1)] for k in parsed.keyframes])))
    return float(np.mean(rates)) if rates else 0.0
