"""A short supervised warm start that teaches System 1 the answer format, and nothing about the task.

A random thinker cannot write ``<think>...</think><answer>{...}</answer>`` by chance, so GRPO would
see only parse failures. Following design.md section 7, the warm start trains on targets whose
content carries no task knowledge: the moments are drawn at random inside the clip (the frames where
the target is visible are never looked at) and the description copies the query. What the policy
learns afterwards about *which* moments to pick comes from the GRPO rewards alone.

Each step takes ``batch // ROWS_PER_PROMPT`` prompts and ``ROWS_PER_PROMPT`` random targets for each,
so a prompt's video is encoded once per row group (the same batching as a GRPO group).

The update goes through a ``PolicyEngine`` (``engine.build_warm_start_engine``) of the kind
``train.deepspeed`` asks for, so a 7B warm start is sharded by DeepSpeed exactly like its GRPO. Under
several ranks every rank takes the same prompts (the batch is a handful of prompts, fewer than the
ranks of a node), so every rank runs the same forwards: the collectives of ZeRO-3 line up.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from omni_r1.config import DeepSpeedParams, WarmStartParams
from omni_r1.rl.engine import PolicyEngine, build_warm_start_engine
from omni_r1.rl.grpo import completion_mask
from omni_r1.rl.policy import PromptCache, encoded_logprobs, pad_completions, towers_frozen
from omni_r1.rl.prompts_data import PromptItem
from omni_r1.systems.prompts import ANSWER_CLOSE, ANSWER_OPEN, THINK_CLOSE, THINK_OPEN, format_timestamp
from omni_r1.systems.global_reasoning import GlobalReasoner

ROWS_PER_PROMPT = 8
MAX_MOMENTS = 1  # one moment keeps answers short (~45 tokens); GRPO may learn to write more

Progress = Callable[[int, int, float], None]  # (step, total, loss)
# (prompt, rng) -> the target answer text; the warm start's is format_target over random_moments.
TargetFn = Callable[[PromptItem, np.random.Generator], str]


@dataclass(frozen=True)
class WarmStartResult:
    """The steps run, the last step's loss, the wall time, and the engine that trained (its weights are the
    warm-started policy; ``close`` it before another engine is built on the same model under DeepSpeed)."""

    steps: int
    final_loss: float
    seconds: float
    engine: PolicyEngine


def random_moments(duration: float, fps: float, rng: np.random.Generator) -> list[tuple[float, float]]:
    """1..MAX_MOMENTS non-overlapping moments on the sampled-frame grid, ascending, each 1-3 frames long."""
    frames = max(int(round(duration * fps)), 1)
    count = int(rng.integers(1, MAX_MOMENTS + 1))
    starts = np.sort(rng.choice(frames, size=min(count, frames), replace=False))
    moments: list[tuple[float, float]] = []
    for i, first in enumerate(starts):
        limit = (starts[i + 1] - 1) if i + 1 < len(starts) else frames - 1
        last = int(min(first + int(rng.integers(0, 3)), limit))
        moments.append((float(first) / fps, float(max(last, first)) / fps))
    return moments


def format_target(description: str, moments: Sequence[tuple[float, float]]) -> str:
    """A well-formed answer: empty reasoning, one JSON object per moment with the given description."""
    text = " ".join(description.replace('"', "'").split())
    objects = "\n".join(
        f'{{"start_time": "{format_timestamp(a)}", "end_time": "{format_timestamp(b)}", "description": "{text}"}}'
        for a, b in moments
    )
    return f"{THINK_OPEN}{THINK_CLOSE}{ANSWER_OPEN}{objects}{ANSWER_CLOSE}"


def random_target(item: PromptItem, rng: np.random.Generator) -> str:
    """The warm start's target: random moments, the query as the description (no task knowledge)."""
    return format_target(item.sample.expression, random_moments(item.duration, item.fps, rng))


def warm_start(
    reasoner: GlobalReasoner,
    items: Sequence[PromptItem],
    params: WarmStartParams,
    *,
    seed: int,
    progress: Progress | None = None,
    target: TargetFn = random_target,
    deepspeed: DeepSpeedParams = DeepSpeedParams(),
) -> WarmStartResult:
    """Train ``reasoner.model`` in place on ``target`` answers for ``params.steps`` steps through the engine
    ``deepspeed`` asks for (plain AdamW by default; ``build_warm_start_engine``).

    The default target teaches the format only; the supervised probe passes one built from the truth.
    """
    if not items:
        raise ValueError("the warm start has no training prompts; check train.split and the shards")
    tokenizer = reasoner.processor.tokenizer
    eos_id, pad_id = int(tokenizer.eos_token_id), int(tokenizer.pad_token_id)
    rng = np.random.default_rng([seed, 7])
    engine = build_warm_start_engine(reasoner.model, params, deepspeed, device=reasoner.device)
    # With frozen towers the prompt's encoding comes from the whole thinker and only the language model runs
    # through the engine (under DeepSpeed the engine wraps just that part: engine.TrainablePart).
    cached = towers_frozen(reasoner.model)
    prompts_per_step = max(params.batch // ROWS_PER_PROMPT, 1)
    prompts = PromptCache(eos_id=eos_id, pad_id=pad_id)
    start, loss_value = time.perf_counter(), float("nan")
    engine.train()
    for step in range(1, params.steps + 1):
        chosen = rng.choice(len(items), size=min(prompts_per_step, len(items)), replace=False)
        total: torch.Tensor | None = None
        for index in chosen:
            item = items[int(index)]
            rows = [tokenizer(target(item, rng), add_special_tokens=False)["input_ids"] + [eos_id]
                    for _ in range(ROWS_PER_PROMPT)]
            ids = pad_completions(rows, pad_id=pad_id)
            if cached:
                encoding = prompts.encoding(reasoner.model, item.key, item.inputs)
                logp = encoded_logprobs(engine.model, encoding, ids, eos_id=eos_id, pad_id=pad_id)
            else:
                logp = prompts.logprobs(engine.model, item.key, item.inputs, ids)
            mask = completion_mask(ids, eos_id=eos_id, pad_id=pad_id).to(logp.device)
            loss = -(logp * mask).sum() / mask.sum() / len(chosen)
            total = loss if total is None else total + loss
        assert total is not None
        loss_value = float(total.detach())
        if not np.isfinite(loss_value):
            raise FloatingPointError(f"warm start loss is {loss_value} at step {step}; lower train.warm_start.lr")
        # One backward per step (DeepSpeed reduces gradients at each backward of a step of one micro-batch).
        engine.backward(total)
        engine.step()
        if progress is not None:
            progress(step, params.steps, loss_value)
    engine.eval()
    return WarmStartResult(params.steps, loss_value, time.perf_counter() - start, engine)
