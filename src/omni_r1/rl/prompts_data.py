"""Training and held-out prompts for System 1: a sample, its cached features and its model inputs.

GRPO samples G answers per prompt many times over a run, so each prompt's inputs are built once
from the features stage's cache (no video is decoded, no processor runs on pixels) and kept.
The example timestamps in a ReVOS prompt are drawn per sample (seeded by its position), so the
policy cannot copy them, as in the official code.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from omni_r1.data.features import FeatureRecord, compute_features, load_feature_shard
from omni_r1.data.shards import iter_shard, samples_of, verified_shards
from omni_r1.systems.global_reasoning import GlobalReasoner
from omni_r1.types import Sample

Task = Literal["revos", "refavs"]


@dataclass(frozen=True)
class PromptItem:
    """One (video, expression) prompt: ``inputs`` are ``GlobalReasoner.build_inputs``' tensors, batch 1."""

    sample: Sample
    record: FeatureRecord
    inputs: dict[str, torch.Tensor]
    task: Task
    duration: float  # seconds of the clip as the prompt states it (sampled frames / fps)
    fps: float  # the rate the sampled frames are treated as

    @property
    def key(self) -> str:
        return self.sample.key


def task_of(sample: Sample) -> Task:
    return "refavs" if sample.meta.get("dataset") == "refavs" else "revos"


def trains_on(exp_type: str, *, include_null: bool) -> bool:
    """Whether GRPO draws an expression of this type: the official loader skips expressions with no target
    object (ReVOS null expressions); ``train.include_null`` keeps them."""
    return include_null or exp_type != "null"


def training_items(items: Sequence[PromptItem], *, include_null: bool) -> list[PromptItem]:
    """The prompts GRPO trains on (``trains_on`` per item, by its ``exp_type``)."""
    return [i for i in items if trains_on(str(i.sample.meta.get("exp_type", "")), include_null=include_null)]


def load_prompt_items(shard_dir: Path, features_dir: Path, split: str, reasoner: GlobalReasoner,
                      *, seed: int = 0) -> list[PromptItem]:
    """Every sample of ``split`` in the verified shards, with its cached features, in manifest order."""
    items: list[PromptItem] = []
    for entry in verified_shards(shard_dir, split):
        feature_path = features_dir / (entry["name"].removesuffix(".tar") + ".safetensors")
        features = {r.key: r for r in load_feature_shard(feature_path)}
        for record in iter_shard(shard_dir, entry["name"]):
            if record["key"] not in features:
                raise KeyError(f"{feature_path} has no features for video {record['key']!r}; rerun the features stage")
            for sample in samples_of(record):
                items.append(build_item(sample, features[record["key"]], reasoner, seed=seed + len(items)))
    return items


def build_item(sample: Sample, record: FeatureRecord, reasoner: GlobalReasoner, *, seed: int) -> PromptItem:
    """Prompt text and model inputs for one sample (audio when the sample has it)."""
    task = task_of(sample)
    num_frames = len(sample.frame_indices)
    prompt = reasoner.prompt_for(record, sample.expression, task=task, seed=seed, num_frames=num_frames)
    return PromptItem(
        sample=sample,
        record=record,
        inputs=reasoner.build_inputs(record, prompt),
        task=task,
        duration=reasoner.clip_seconds(record, num_frames),
        fps=reasoner.sample_fps(record),
    )


def item_in_memory(sample: Sample, reasoner: GlobalReasoner, *, seed: int) -> PromptItem:
    """``build_item`` with the features computed here (the features stage's function), for tests and benches."""
    features = compute_features(reasoner.processor, sample.low_res, sample.audio,
                                sample_fps=float(sample.meta.get("sample_fps", 2.0)))
    record = FeatureRecord(key=sample.key.split("/")[0], video_id=sample.meta["video_id"], split=sample.split,
                           **features)
    return build_item(sample, record, reasoner, seed=seed)


def split_counts(items: Sequence[PromptItem]) -> dict[str, int]:
    """Prompts per expression type, for the run's log."""
    counts: dict[str, int] = {}
    for item in items:
        kind = str(item.sample.meta.get("exp_type", "unknown"))
        counts[kind] = counts.get(kind, 0) + 1
    return counts
