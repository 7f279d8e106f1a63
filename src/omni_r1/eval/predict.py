"""Two-system inference over one shard at full rate, written as prediction PNGs in the official layouts.

Layouts: RefAVS ``<vid>/fid_<fid>/0000{i}.png``; everything else the ReVOS layout
``<video>/<exp_id>/<frame>.png`` with five-digit native frame numbers. Masks are 0/255 greyscale at the
native (displayed) size, one PNG per native frame, each from System 2's propagation over every native
frame of the video (``omni_r1.eval.native`` decodes them; the paper propagates SAM2 over the full
video at evaluation). System 1 still sees its sampled frames: its keyframes, indices into the sampled
frames, are mapped to native frame numbers through ``sample.frame_indices`` before System 2 runs.

Policies (``predict.policies``), the paper's ablation plus a floor:

- ``predict_nothing``: empty masks everywhere (what "ground nothing" scores; right on null expressions);
- ``uniform_keyframes``: System 2 alone, on evenly spread keyframes with the original expression;
- ``keyframes_original_query``: System 1's keyframes, each with the original expression;
- ``global_reasoning``: the full pipeline, System 1's keyframes with its rewritten descriptions.

System 1 answers once per sample (greedy); both policies that use it share that answer. Each sample
also gets one row per policy of what happened (parse errors included).
"""

from __future__ import annotations

import io
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from omni_r1.config import Params
from omni_r1.data.features import FeatureRecord, load_feature_shard
from omni_r1.data.paths import safe_join, sample_key
from omni_r1.data.shards import iter_shard, samples_of
from omni_r1.eval.native import NativeSource
from omni_r1.fileio import atomic_write_bytes
from omni_r1.systems.answer import AnswerParseError
from omni_r1.systems.collaboration import (
    Task, masks_to_native, parse_completion, system1_completions, uniform_keyframes,
)  # fmt: skip
from omni_r1.systems.detail import KeyframePrompt, Segmenter
from omni_r1.systems.global_reasoning import GlobalReasoner
from omni_r1.types import KeyframeSelection, Sample

POLICIES = ("predict_nothing", "uniform_keyframes", "keyframes_original_query", "global_reasoning")
SYSTEM1_POLICIES = ("keyframes_original_query", "global_reasoning")


@dataclass(frozen=True)
class System1Answer:
    """System 1's greedy answer for one sample; ``prompts`` index the sampled frames (none when unparsed)."""

    completion: str
    parsed: KeyframeSelection | AnswerParseError
    prompts: tuple[KeyframePrompt, ...]
    seconds: float

    @property
    def error(self) -> str:
        return self.parsed.code if isinstance(self.parsed, AnswerParseError) else ""


def prediction_paths(sample: Sample) -> list[str]:
    """Relative PNG paths, one per native frame, in the sample's official layout."""
    meta = sample.meta
    n = int(meta["num_frames"])
    if meta["dataset"] == "refavs":
        fid = sample.masks.objects[0].obj_id if sample.masks.objects else "0"
        return [f"{meta['video_id']}/fid_{fid}/0000{i}.png" for i in range(n)]
    return [f"{meta['video_id']}/{meta['exp_id']}/{i:05d}.png" for i in range(n)]


def write_prediction(out_dir: Path, sample: Sample, masks: np.ndarray) -> None:
    """``masks``: (num_frames, h, w) bool, one per native frame, at any size; written at the native size.

    Each mask is resized to the displayed native size with nearest neighbours, one frame at a time, so a
    long video never holds all its native-size masks at once.
    """
    height, width = int(sample.meta["height"]), int(sample.meta["width"])
    paths = prediction_paths(sample)
    if len(masks) != len(paths):
        raise ValueError(f"{sample.meta['sample_id']}: {len(masks)} masks for {len(paths)} native frames")
    out_dir.mkdir(parents=True, exist_ok=True)
    for relative, mask in zip(paths, masks):
        native = masks_to_native(mask[None], height, width)[0]
        buffer = io.BytesIO()
        Image.fromarray(native.astype(np.uint8) * 255, mode="L").save(buffer, format="PNG")
        # ids come from the dataset: safe_join keeps a hostile video id from writing outside out_dir
        atomic_write_bytes(safe_join(out_dir, relative), buffer.getvalue())


def sample_task(sample: Sample) -> Task:
    """The task whose prompts a sample gets: RefAVS for RefAVS data, ReVOS-style for everything else."""
    return "refavs" if sample.meta["dataset"] == "refavs" else "revos"


def answer_system1(sample: Sample, record: FeatureRecord, reasoner: GlobalReasoner, *, task: Task, seed: int) -> System1Answer:
    """System 1's greedy answer on the sample's cached features, parsed against its sampled frames."""
    start = time.perf_counter()
    [completion] = system1_completions(sample, record, reasoner, task=task, seed=seed)
    num_frames = len(sample.frame_indices)
    parsed, prompts = parse_completion(completion, task=task, duration=reasoner.clip_seconds(record, num_frames),
                                       num_frames=num_frames, fps=reasoner.sample_fps(record),
                                       max_keyframes=reasoner.params.max_keyframes)
    return System1Answer(completion, parsed, prompts, time.perf_counter() - start)


def policy_prompts(policy: str, sample: Sample, answer: System1Answer | None,
                   max_keyframes: int) -> tuple[KeyframePrompt, ...]:
    """The keyframes (indices into the sampled frames) and descriptions System 2 gets under ``policy``."""
    if policy == "predict_nothing":
        return ()
    if policy == "uniform_keyframes":
        return tuple(replace(p, task=sample_task(sample)) for p in uniform_keyframes(sample, max_keyframes))
    if answer is None:
        raise ValueError(f"policy {policy!r} needs System 1's answer")
    if policy == "keyframes_original_query":
        return tuple(replace(p, description=sample.expression) for p in answer.prompts)
    if policy == "global_reasoning":
        return answer.prompts
    raise ValueError(f"unknown predict policy {policy!r}; use one of {list(POLICIES)} in predict.policies")


def native_prompts(prompts: Sequence[KeyframePrompt], frame_indices: Sequence[int]) -> tuple[KeyframePrompt, ...]:
    """Sampled-frame keyframes -> the same keyframes as native frame numbers (``frame_indices[k]``)."""
    return tuple(replace(p, frame=int(frame_indices[p.frame])) for p in prompts)


def segment_native(segmenter: Segmenter, frames: np.ndarray,
                   prompts: Sequence[KeyframePrompt]) -> tuple[np.ndarray, dict[str, float]]:
    """System 2 over every native frame: (N, H, W) bool masks and seconds per phase; empty without prompts."""
    if not prompts:
        return np.zeros(frames.shape[:3], dtype=bool), {}
    result = segmenter.segment(frames, prompts)
    return result.masks, dict(result.timings)


def predict_sample(sample: Sample, frames: np.ndarray, policy: str, segmenter: Segmenter,
                   answer: System1Answer | None, max_keyframes: int) -> tuple[np.ndarray, dict[str, Any]]:
    """One policy on one sample over its native ``frames``: masks (N, H, W) and the row's fields."""
    sampled = policy_prompts(policy, sample, answer, max_keyframes)
    prompts = native_prompts(sampled, sample.frame_indices)
    masks, timings = segment_native(segmenter, frames, prompts)
    row: dict[str, Any] = {"parsed": True, "error": "", "completion": "",
                           "keyframes": [[p.frame, p.description] for p in prompts],
                           "sampled_keyframes": [p.frame for p in sampled], "timings": timings}
    if policy in SYSTEM1_POLICIES and answer is not None:
        row.update(parsed=answer.error == "", error=answer.error, completion=answer.completion[:400],
                   timings={"system1": round(answer.seconds, 4), **timings})
    return masks, row


def predict_shard(entry: dict[str, Any], shard_dir: Path, features_dir: Path, out_dir: Path, source: NativeSource,
                  params: Params) -> list[dict[str, Any]]:
    """Run every policy of ``params.predict`` on every sample of one shard; return one row per (sample, policy)."""
    from omni_r1.models.processor import build_processor
    from omni_r1.systems.detail import build_segmenter

    policies = params.predict.policies
    reasoner = None
    if any(p in SYSTEM1_POLICIES for p in policies):
        f = params.features
        processor = build_processor(f.tokenizer, min_pixels=f.min_pixels, max_pixels=f.max_pixels, mel_bins=f.mel_bins)
        reasoner = GlobalReasoner.from_params(params.global_reasoning, processor)
    segmenter = build_segmenter(params.detail)
    features = {r.key: r for r in load_feature_shard(features_dir / (entry["name"].removesuffix(".tar") + ".safetensors"))}
    max_keyframes = params.global_reasoning.max_keyframes
    rows: list[dict[str, Any]] = []
    for record in iter_shard(shard_dir, entry["name"]):
        for sample in samples_of(record):
            frames = source.frames(sample)
            answer = (answer_system1(sample, features[record["key"]], reasoner, task=sample_task(sample),
                                     seed=params.global_reasoning.seed) if reasoner is not None else None)
            for policy in policies:
                start = time.perf_counter()
                masks, row = predict_sample(sample, frames, policy, segmenter, answer, max_keyframes)
                write_prediction(out_dir / policy, sample, masks)
                row.update(sample_id=sample.meta["sample_id"], video_id=sample.meta["video_id"],
                           exp_id=sample.meta["exp_id"], exp_type=sample.meta["exp_type"],
                           dataset=sample.meta["dataset"], policy=policy,
                           benchmark_split=sample.meta["benchmark_split"], native_frames=len(frames),
                           seconds=round(time.perf_counter() - start, 3), key=sample_key(sample.meta["sample_id"]))
                rows.append(row)
    return rows
