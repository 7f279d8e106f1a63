"""Held-out evaluation of a System 1 policy: mean reward and J&F with System 2, greedy decoding.

Used before and after GRPO on the same prompts, so the two numbers differ only by the policy. The
reward is the training reward (``omni_r1.rl.rewards``); J&F is the evaluation metric
(``omni_r1.eval.metrics.j_and_f``) on the sampled frames at the displayed size, the frames the
policy and System 2 saw. Nothing here trains.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from omni_r1.config import RewardParams
from omni_r1.eval.metrics import j_and_f
from omni_r1.rl.grpo import completion_mask
from omni_r1.rl.policy import PromptCache
from omni_r1.rl.prompts_data import PromptItem
from omni_r1.rl.rewards import score_rollouts
from omni_r1.rl.trainer import generate
from omni_r1.systems.collaboration import SegmentCache, masks_to_native, rollouts_from_completions
from omni_r1.systems.detail import Segmenter
from omni_r1.systems.global_reasoning import GlobalReasoner


def evaluate_policy(reasoner: GlobalReasoner, segmenter: Segmenter, items: Sequence[PromptItem],
                    rewards: RewardParams, *, max_new_tokens: int,
                    cache: SegmentCache | None = None) -> dict[str, Any]:
    """Greedy answers on ``items``: mean reward, J&F and parse rate overall and per expression cue."""
    tokenizer = reasoner.processor.tokenizer
    prompts = PromptCache(eos_id=int(tokenizer.eos_token_id), pad_id=int(tokenizer.pad_token_id))
    rows: list[dict[str, Any]] = []
    for item in items:
        ids = generate(reasoner, prompts, item, num=1, do_sample=False, seed=0, max_new_tokens=max_new_tokens)
        length = int(completion_mask(ids, eos_id=int(tokenizer.eos_token_id),
                                     pad_id=int(tokenizer.pad_token_id)).sum())
        rollouts, _ = rollouts_from_completions(
            item.sample, reasoner.decode(ids), segmenter, task=item.task, duration=item.duration, fps=item.fps,
            max_keyframes=reasoner.params.max_keyframes, cache=cache,
        )
        [reward] = score_rollouts(rollouts, item.sample, rewards, task=item.task,
                                  num_frames=len(item.sample.frame_indices), fps=item.fps, duration=item.duration,
                                  completion_lengths=[length])
        meta = item.sample.meta
        truth = item.sample.target_masks()
        predicted = masks_to_native(rollouts[0].masks, truth.shape[1], truth.shape[2])
        rows.append({
            "key": item.key,
            "cue": "null" if meta.get("exp_type") == "null" else str(meta.get("cue", "unknown")),
            "reward": reward.total,
            "JF": j_and_f(predicted, truth)["JF"],
            "parsed": rollouts[0].parsed,
            "keyframes": [p.frame for p in rollouts[0].prompts],
        })
    return summarise(rows)


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Means over all rows and per cue (appearance, sound, time, null ...)."""
    if not rows:
        raise ValueError("no held-out prompts to evaluate; check train.eval_split and the shards")

    def means(subset: list[dict[str, Any]]) -> dict[str, float]:
        return {
            "reward": float(np.mean([r["reward"] for r in subset])),
            "JF": float(np.mean([r["JF"] for r in subset])),
            "parse_rate": float(np.mean([r["parsed"] for r in subset])),
            "count": float(len(subset)),
        }

    cues = sorted({r["cue"] for r in rows})
    return {**means(rows), "by_cue": {c: means([r for r in rows if r["cue"] == c]) for c in cues}, "rows": rows}
