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
    """The middle frame of the target's longest visible run, as a one-frame moment (random for a null).

    Deterministic per prompt, so the supervision says exactly one thing: where the target is.
    """
    visible = visible_frames(item)
    if not visible.any():
        return format_target(item.sample.expression, random_moments(item.duration, item.fps, rng))
    best, start = (0, 0), None
    for t, shown in enumerate([*visible, False]):
        if shown and start is None:
            start = t
        elif not shown and start is not None:
            best = max(best, (t - start, -start))
            start = None
    length, first = best[0], -best[1]
    middle = first + (length - 1) // 2
    return format_target(item.sample.expression, [(middle / item.fps, middle / item.fps)])


def chance_rate(items: Sequence[PromptItem]) -> float:
    """Expected hit rate of a uniformly random frame, over the prompts that have a target."""
    rates = [float(visible_frames(i).mean()) for i in items if visible_frames(i).any()]
    return float(np.mean(rates)) if rates else 0.0


def keyframe_hit_rate(reasoner: GlobalReasoner, items: Sequence[PromptItem], *,
                      max_new_tokens: int) -> tuple[float, float]:
    """(hit rate, parse rate) of greedy answers over prompts with a target.

    The hit rate is the fraction of a parsed answer's keyframes on frames where the target is visible,
    averaged over parsed answers; the parse rate says how many answers that average covers.
    """
    tokenizer = reasoner.processor.tokenizer
    prompts = PromptCache(eos_id=int(tokenizer.eos_token_id), pad_id=int(tokenizer.pad_token_id))
    rates, asked = [], 0
    for item in items:
        visible = visible_frames(item)
        if not visible.any():
            continue
        asked += 1
        ids = generate(reasoner, prompts, item, num=1, do_sample=False, seed=0, max_new_tokens=max_new_tokens)
        parsed = try_parse(reasoner.decode(ids)[0], task=item.task, duration=item.duration,
                           num_frames=len(visible), fps=item.fps, max_keyframes=reasoner.params.max_keyframes)
        if isinstance(parsed, KeyframeSelection) and parsed.keyframes:
            rates.append(float(np.mean([visible[min(k.frame, len(visible) - 1)] for k in parsed.keyframes])))
    return (float(np.mean(rates)) if rates else 0.0), (len(rates) / asked if asked else 0.0)
