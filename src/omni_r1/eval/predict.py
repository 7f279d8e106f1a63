"""Two-system inference over one shard, written as prediction PNGs in the official layouts.

Layouts: RefAVS ``<vid>/fid_<fid>/0000{i}.png``; everything else the ReVOS layout
``<video>/<exp_id>/<frame>.png`` with five-digit native frame numbers. Masks are 0/255 greyscale,
one PNG per native frame (frames between sampled ones hold the nearest sampled mask; see
``hold_to_native_frames``). Each sample also gets one row of what happened (parse errors included).
"""

from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from omni_r1.config import Params
from omni_r1.data.features import load_feature_shard
from omni_r1.data.paths import safe_join, sample_key
from omni_r1.data.shards import iter_shard, samples_of
from omni_r1.fileio import atomic_write_bytes
from omni_r1.types import Sample

POLICIES = ("global_reasoning", "uniform_keyframes")


def prediction_paths(sample: Sample) -> list[str]:
    """Relative PNG paths, one per native frame, in the sample's official layout."""
    meta = sample.meta
    n = int(meta["num_frames"])
    if meta["dataset"] == "refavs":
        fid = sample.masks.objects[0].obj_id if sample.masks.objects else "0"
        return [f"{meta['video_id']}/fid_{fid}/0000{i}.png" for i in range(n)]
    return [f"{meta['video_id']}/{meta['exp_id']}/{i:05d}.png" for i in range(n)]


def write_prediction(out_dir: Path, sample: Sample, masks: np.ndarray) -> None:
    """``masks``: (num_frames, height, width) bool at the native size, one per native frame."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for relative, mask in zip(prediction_paths(sample), masks):
        buffer = io.BytesIO()
        Image.fromarray(mask.astype(np.uint8) * 255, mode="L").save(buffer, format="PNG")
        # ids come from the dataset: safe_join keeps a hostile video id from writing outside out_dir
        atomic_write_bytes(safe_join(out_dir, relative), buffer.getvalue())


def predict_shard(entry: dict[str, Any], shard_dir: Path, features_dir: Path, out_dir: Path,
                  params: Params) -> list[dict[str, Any]]:
    """Run every policy of ``params.predict`` on every sample of one shard; return one row per (sample, policy)."""
    from omni_r1.models.processor import build_processor
    from omni_r1.systems.collaboration import collaborate, hold_to_native_frames, masks_to_native, uniform_keyframes
    from omni_r1.systems.detail import build_segmenter
    from omni_r1.systems.global_reasoning import GlobalReasoner

    f = params.features
    processor = build_processor(f.tokenizer, min_pixels=f.min_pixels, max_pixels=f.max_pixels, mel_bins=f.mel_bins)
    reasoner = GlobalReasoner.from_params(params.global_reasoning, processor)
    segmenter = build_segmenter(params.detail)
    features = {r.key: r for r in load_feature_shard(features_dir / (entry["name"].removesuffix(".tar") + ".safetensors"))}
    rows: list[dict[str, Any]] = []
    for record in iter_shard(shard_dir, entry["name"]):
        for sample in samples_of(record):
            task = "refavs" if sample.meta["dataset"] == "refavs" else "revos"
            height, width, n = int(sample.meta["height"]), int(sample.meta["width"]), int(sample.meta["num_frames"])
            for policy in params.predict.policies:
                start = time.perf_counter()
                row: dict[str, Any] = {"sample_id": sample.meta["sample_id"], "video_id": sample.meta["video_id"],
                                       "exp_id": sample.meta["exp_id"], "exp_type": sample.meta["exp_type"],
                                       "dataset": sample.meta["dataset"], "policy": policy,
                                       "benchmark_split": sample.meta["benchmark_split"]}
                if policy == "global_reasoning":
                    collab = collaborate(sample, features[record["key"]], reasoner, segmenter, task=task,
                                         seed=params.global_reasoning.seed)
                    rollout = collab.rollouts[0]
                    masks = rollout.masks
                    row.update(parsed=rollout.parsed, error=rollout.error.code if rollout.error else "",
                               completion=rollout.completion[:400],
                               keyframes=[[p.frame, p.description] for p in rollout.prompts], timings=collab.timings)
                else:
                    prompts = uniform_keyframes(sample, params.global_reasoning.max_keyframes)
                    result = segmenter.segment(sample.high_res, prompts)
                    masks = result.masks
                    row.update(parsed=True, error="", completion="", keyframes=[[p.frame, p.description] for p in prompts],
                               timings=result.timings)
                native = hold_to_native_frames(masks_to_native(masks, height, width), sample.frame_indices, n)
                write_prediction(out_dir / policy, sample, native)
                row["seconds"] = round(time.perf_counter() - start, 3)
                row["key"] = sample_key(sample.meta["sample_id"])
                rows.append(row)
    return rows
