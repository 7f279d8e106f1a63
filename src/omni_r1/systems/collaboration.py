"""Two-system collaboration: sample -> System 1 (keyframes + rewritten task) -> System 2 (masks).

One call serves inference and GRPO rollouts alike: System 1 answers ``group_size`` times for one
video, every answer is parsed (a malformed answer becomes a counted ``AnswerParseError``, never a
crash), and System 2 segments all parsed answers of the group in one batched call on the video's
high-res frames, which are decoded once by the shard stage and never again. Evaluation uses System 1's
half alone (``system1_completions``, ``parse_completion``) and runs System 2 over every native frame
instead (``omni_r1.eval.predict``).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Literal, Sequence

import numpy as np
from PIL import Image

from omni_r1.data.features import FeatureRecord
from omni_r1.systems.answer import AnswerParseError, try_parse
from omni_r1.systems.detail import KeyframePrompt, Segmenter, SegmentResult
from omni_r1.systems.global_reasoning import GlobalReasoner
from omni_r1.types import KeyframeSelection, Sample

Task = Literal["revos", "refavs"]


@dataclass(frozen=True)
class Rollout:
    """One System 1 answer and what System 2 made of it.

    ``masks`` is (T, H, W) bool at the high-res frame size over the T sampled frames; all False when
    the answer did not parse or chose no keyframe (``error`` or ``selection.keyframes`` says which).
    """

    completion: str
    selection: KeyframeSelection | None
    error: AnswerParseError | None
    prompts: tuple[KeyframePrompt, ...]
    segment: SegmentResult | None
    masks: np.ndarray

    @property
    def parsed(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class Collaboration:
    """A group of rollouts for one sample, with seconds spent per phase."""

    sample_key: str
    rollouts: tuple[Rollout, ...]
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def parse_failures(self) -> int:
        return sum(not r.parsed for r in self.rollouts)


def keyframe_prompts(selection: KeyframeSelection, num_frames: int) -> tuple[KeyframePrompt, ...]:
    """System 2's prompts: the selection's keyframes, clipped to the sampled frames."""
    return tuple(KeyframePrompt(min(int(k.frame), num_frames - 1), k.description, selection.task)
                 for k in selection.keyframes)


def collaborate(
    sample: Sample,
    record: FeatureRecord,
    reasoner: GlobalReasoner,
    segmenter: Segmenter,
    *,
    task: Task = "revos",
    group_size: int = 1,
    do_sample: bool = False,
    seed: int | None = None,
) -> Collaboration:
    """Run System 1 ``group_size`` times on the sample's cached features, then System 2 on every answer."""
    timings: dict[str, float] = {}
    start = time.perf_counter()
    completions = system1_completions(sample, record, reasoner, task=task, group_size=group_size,
                                      do_sample=do_sample, seed=seed)
    timings["system1"] = time.perf_counter() - start

    rollouts, phase_times = rollouts_from_completions(
        sample, completions, segmenter, task=task, duration=reasoner.clip_seconds(record, len(sample.frame_indices)),
        fps=reasoner.sample_fps(record), max_keyframes=reasoner.params.max_keyframes,
    )
    timings.update(phase_times)
    return Collaboration(sample.key, rollouts, timings)


def system1_completions(
    sample: Sample,
    record: FeatureRecord,
    reasoner: GlobalReasoner,
    *,
    task: Task = "revos",
    group_size: int = 1,
    do_sample: bool = False,
    seed: int | None = None,
) -> list[str]:
    """System 1 alone: ``group_size`` answers for the sample from its cached features (no System 2)."""
    if record.key != sample.key.split("/")[0]:
        raise ValueError(f"feature record {record.key!r} does not belong to sample {sample.key!r}")
    prompt = reasoner.prompt_for(record, sample.expression, task=task, seed=seed, num_frames=len(sample.frame_indices))
    inputs = reasoner.build_inputs(record, prompt)
    return reasoner.generate(inputs, num_return_sequences=group_size, do_sample=do_sample, seed=seed)


def parse_completion(
    text: str, *, task: Task, duration: float, num_frames: int, fps: float, max_keyframes: int
) -> tuple[KeyframeSelection | AnswerParseError, tuple[KeyframePrompt, ...]]:
    """One System 1 answer parsed, and System 2's prompts for it (none when it did not parse)."""
    parsed = try_parse(text, task=task, duration=duration, num_frames=num_frames, fps=fps, max_keyframes=max_keyframes)
    prompts = keyframe_prompts(parsed, num_frames) if isinstance(parsed, KeyframeSelection) else ()
    return parsed, prompts


class SegmentCache(OrderedDict[tuple[str, tuple[KeyframePrompt, ...]], SegmentResult]):
    """System 2's results by (sample key, keyframe prompts), the ``max_entries`` most recently used.

    Bounded because each entry holds a clip's masks at System 2's size (about 17 MB for 24 frames at the
    paper's 900x28x28 pixels), and a run meets new (sample, prompts) pairs at every step: each draw of
    frames and objects is its own sample key.
    """

    def __init__(self, max_entries: int = 256) -> None:
        super().__init__()
        if max_entries < 1:
            raise ValueError(f"a System 2 cache needs max_entries >= 1, got {max_entries}")
        self.max_entries = max_entries

    def __getitem__(self, key: tuple[str, tuple[KeyframePrompt, ...]]) -> SegmentResult:
        value = super().__getitem__(key)
        self.move_to_end(key)
        return value

    def __setitem__(self, key: tuple[str, tuple[KeyframePrompt, ...]], value: SegmentResult) -> None:
        super().__setitem__(key, value)
        self.move_to_end(key)
        while len(self) > self.max_entries:
            self.popitem(last=False)


def rollouts_from_completions(
    sample: Sample,
    completions: list[str],
    segmenter: Segmenter,
    *,
    task: Task,
    duration: float,
    fps: float,
    max_keyframes: int,
    cache: SegmentCache | None = None,
    boxes_per_keyframe: int | None = None,
) -> tuple[tuple[Rollout, ...], dict[str, float]]:
    """Parse System 1's completions for ``sample`` and run System 2 once on every parsed answer of the group.

    ``cache`` (GRPO) keeps System 2's results by (sample, keyframe prompts) for one run: System 2 is
    deterministic, and a policy that has found its answer repeats it, so repeats are looked up.
    ``boxes_per_keyframe`` is K in training (the sample's number of target objects: the official code
    prompts SAM2 with the first K boxes of each keyframe only); None at inference, where no truth is read.
    Returns the rollouts and the seconds spent in ``parse`` and ``system2``.
    """
    num_frames = len(sample.frame_indices)
    timings: dict[str, float] = {}
    start = time.perf_counter()
    answers = [parse_completion(text, task=task, duration=duration, num_frames=num_frames, fps=fps,
                                max_keyframes=max_keyframes) for text in completions]
    parsed = [p for p, _ in answers]
    prompt_sets = [prompts for _, prompts in answers]
    timings["parse"] = time.perf_counter() - start

    start = time.perf_counter()
    results = segment_cached(sample, prompt_sets, segmenter, cache, boxes_per_keyframe)
    timings["system2"] = time.perf_counter() - start

    empty = np.zeros(sample.high_res.shape[:3], dtype=bool)
    rollouts = []
    for text, p, prompts in zip(completions, parsed, prompt_sets):
        segment = results[prompts] if prompts else None
        rollouts.append(Rollout(
            completion=text,
            selection=p if isinstance(p, KeyframeSelection) else None,
            error=p if isinstance(p, AnswerParseError) else None,
            prompts=prompts,
            segment=segment,
            masks=segment.masks if segment is not None else empty,
        ))
    return tuple(rollouts), timings


def segment_cached(
    sample: Sample,
    prompt_sets: Sequence[tuple[KeyframePrompt, ...]],
    segmenter: Segmenter,
    cache: SegmentCache | None = None,
    boxes_per_keyframe: int | None = None,
) -> dict[tuple[KeyframePrompt, ...], SegmentResult]:
    """System 2's result for every non-empty prompt set of ``sample``: looked up in ``cache``, the rest segmented
    in one batched call (per-video work shared) and stored. The results are returned here, not read back from
    the cache, so that a bounded cache evicting them cannot lose one mid-group."""
    cache = SegmentCache() if cache is None else cache
    results = {prompts: cache[(sample.key, prompts)] for prompts in set(prompt_sets)
               if prompts and (sample.key, prompts) in cache}
    missing = sorted({p for p in prompt_sets if p and p not in results}, key=list(prompt_sets).index)
    if missing:
        for prompts, result in zip(missing, segmenter.segment_batch(sample.high_res, missing, boxes_per_keyframe)):
            cache[(sample.key, prompts)] = results[prompts] = result
    return results


def uniform_keyframes(sample: Sample, count: int = 4) -> tuple[KeyframePrompt, ...]:
    """A reference policy with no System 1: ``count`` evenly spread frames, the expression as description."""
    num_frames = len(sample.frame_indices)
    frames = sorted({int(round(x)) for x in np.linspace(0, num_frames - 1, min(count, num_frames))})
    return tuple(KeyframePrompt(f, sample.expression) for f in frames)


def masks_to_native(masks: np.ndarray, height: int, width: int) -> np.ndarray:
    """(T, h, w) bool masks at the high-res size -> (T, height, width) at the displayed native size (nearest)."""
    if masks.shape[1:] == (height, width):
        return masks.astype(bool)
    return np.stack([
        np.asarray(Image.fromarray(m.astype(np.uint8) * 255).resize((width, height), Image.NEAREST)) > 127
        for m in masks
    ]) if len(masks) else np.zeros((0, height, width), bool)
