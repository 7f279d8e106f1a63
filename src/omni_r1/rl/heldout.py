"""Held-out evaluation of a System 1 policy: mean reward and J&F with System 2, greedy decoding, beside baselines.

Used before and after GRPO on the same prompts, so the two numbers differ only by the policy. The
reward is the training reward (``omni_r1.rl.rewards``); J&F is the evaluation metric
(``omni_r1.eval.metrics.j_and_f``) on the sampled frames at the displayed size, the frames the
policy and System 2 saw. Nothing here trains, and nothing System 2 is given reads the truth.

Every prompt is also scored under the paper's ablation (the policies of ``omni_r1.eval.tables.ABLATION``):
``predict_nothing`` (empty masks), ``uniform_keyframes`` (System 2 alone: evenly spread keyframes with the
original query), ``keyframes_original_query`` (the policy's keyframes with the original query) and
``global_reasoning`` (the policy's keyframes and rewritten descriptions). ``policies`` summarises each
by expression type with bootstrap 95% intervals (``omni_r1.eval.evaluate.summarise``, the evaluate
stage's own summary): referring and reasoning are the headline, null apart (an empty prediction is right
there and says nothing about grounding).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from omni_r1.config import RewardParams
from omni_r1.eval.evaluate import summarise as summarise_by_type
from omni_r1.eval.metrics import j_and_f
from omni_r1.rl.grpo import completion_mask
from omni_r1.rl.policy import PromptCache
from omni_r1.rl.prompts_data import PromptItem
from omni_r1.rl.rewards import score_rollouts
from omni_r1.rl.trainer import generate
from omni_r1.systems.collaboration import (
    Rollout,
    SegmentCache,
    masks_to_native,
    rollouts_from_completions,
    segment_cached,
    uniform_keyframes,
)
from omni_r1.systems.detail import KeyframePrompt, Segmenter
from omni_r1.types import Sample

BASELINES = ("predict_nothing", "uniform_keyframes", "keyframes_original_query")
POLICIES = (*BASELINES, "global_reasoning")
from omni_r1.systems.global_reasoning import GlobalReasoner


def evaluate_policy(reasoner: GlobalReasoner, segmenter: Segmenter, items: Sequence[PromptItem],
                    rewards: RewardParams, *, max_new_tokens: int, cache: SegmentCache | None = None,
                    resamples: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Greedy answers on ``items``: mean reward, J&F and parse rate overall and per expression cue, and every
    prompt's J&F under the ablation's policies (``policies``, with bootstrap intervals)."""
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
        scores = policy_scores(item.sample, rollouts[0], segmenter, reasoner.params.max_keyframes, cache)
        rows.append({
            "key": item.key,
            "exp_type": str(meta.get("exp_type", "referring")),
            "cue": "null" if meta.get("exp_type") == "null" else str(meta.get("cue", "unknown")),
            "reward": reward.total,
            "JF": scores["global_reasoning"]["JF"] / 100,
            "parsed": rollouts[0].parsed,
            "keyframes": [p.frame for p in rollouts[0].prompts],
            "descriptions": sorted({p.description for p in rollouts[0].prompts}),
            "system2_empty": bool(rollouts[0].prompts) and not rollouts[0].masks.any(),
            "policies": scores,
        })
    return summarise(rows, resamples=resamples, seed=seed)


def policy_scores(sample: Sample, rollout: Rollout, segmenter: Segmenter, max_keyframes: int,
                  cache: SegmentCache | None = None) -> dict[str, dict[str, float]]:
    """J, F and J&F (x100, on the sampled frames at the displayed size) of ``sample`` under each policy of
    ``POLICIES``; the baselines' System 2 results go through ``cache`` like the policy's own."""
    truth = sample.target_masks()
    query = tuple(KeyframePrompt(p.frame, sample.expression, p.task) for p in rollout.prompts)
    masks = {"predict_nothing": np.zeros(sample.high_res.shape[:3], dtype=bool), "global_reasoning": rollout.masks}
    for name, prompt_set in (("uniform_keyframes", uniform_keyframes(sample, max_keyframes)),
                             ("keyframes_original_query", query)):
        masks[name] = (segment_cached(sample, [prompt_set], segmenter, cache)[prompt_set].masks if prompt_set
                       else masks["predict_nothing"])
    return {name: {k: round(100 * v, 2) for k, v in
                   j_and_f(masks_to_native(masks[name], truth.shape[1], truth.shape[2]), truth).items()}
            for name in POLICIES}


def summarise(rows: list[dict[str, Any]], *, resamples: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Means over all rows and per cue (appearance, sound, time, null ...), each policy's J&F by expression type
    with bootstrap intervals, and the answers' diversity (a collapsed policy gives every prompt one answer)."""
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
    policies = {
        name: summarise_by_type([{"exp_type": r["exp_type"], "parsed": r["parsed"], **r["policies"][name]}
                                 for r in rows], resamples=resamples, seed=seed)
        for name in POLICIES
    }
    diversity = {
        "distinct_keyframe_sets": len({tuple(r["keyframes"]) for r in rows}) / len(rows),
        "distinct_descriptions": len({d for r in rows for d in r["descriptions"]}),
        "system2_empty_rate": float(np.mean([r["system2_empty"] for r in rows])),
    }
    return {**means(rows), "by_cue": {c: means([r for r in rows if r["cue"] == c]) for c in cues},
            "policies": policies, "diversity": diversity, "rows": rows}
