"""Score prediction PNGs against the shards' truth: J, F, J&F per sample, per type and overall.

Uses the one metric implementation (``omni_r1.eval.metrics``) that the GRPO rewards use too. Per
sample: means over every native frame; reported x100. Per type: mean over samples; overall: the
mean of the referring and reasoning means (the ReVOS convention); null expressions are reported
on their own (an empty prediction of an absent target scores 100).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
from PIL import Image

from omni_r1.data.paths import safe_join
from omni_r1.data.shards import read_samples
from omni_r1.eval.metrics import j_and_f
from omni_r1.eval.predict import prediction_paths
from omni_r1.types import Sample

TYPES = ("referring", "reasoning", "null")


class MissingPrediction(FileNotFoundError):
    """A prediction PNG the evaluation needs is absent."""


def read_prediction(pred_dir: Path, sample: Sample) -> np.ndarray:
    """(num_frames, height, width) bool from the sample's prediction PNGs (> 127 is foreground)."""
    frames = []
    for relative in prediction_paths(sample):
        path = safe_join(pred_dir, relative)
        if not path.is_file():
            raise MissingPrediction(f"{path} is missing; rerun the predict stage (dvc repro predict)")
        with Image.open(path) as img:
            frames.append(np.asarray(img.convert("L")) > 127)
    return np.stack(frames)


def score_sample(pred: np.ndarray, sample: Sample) -> dict[str, float]:
    truth = sample.masks.union(range(int(sample.meta["num_frames"])))
    if pred.shape != truth.shape:
        raise ValueError(f"prediction for {sample.meta['sample_id']} is {pred.shape}, truth is {truth.shape}; "
                         "rerun the predict stage")
    return {k: round(100 * v, 2) for k, v in j_and_f(pred, truth).items()}


def evaluate(shard_dir: Path, pred_dir: Path, split: str, policies: Sequence[str],
             predict_rows: Iterable[dict[str, Any]]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Per-sample rows and a summary per policy (per type J/F/JF, overall, parse failures)."""
    info = {(r["sample_id"], r["policy"]): r for r in predict_rows}
    rows = []
    for sample in read_samples(shard_dir, split):
        for policy in policies:
            scores = score_sample(read_prediction(pred_dir / policy, sample), sample)
            extra = info.get((sample.meta["sample_id"], policy), {})
            rows.append({"sample_id": sample.meta["sample_id"], "policy": policy, "exp_type": sample.meta["exp_type"],
                         "cue": sample.meta.get("cue", ""), "parsed": bool(extra.get("parsed", True)),
                         "error": extra.get("error", ""), **scores})
    return {policy: summarise([r for r in rows if r["policy"] == policy]) for policy in policies}, rows


def summarise(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    by_type: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        by_type[row["exp_type"]].append(row)
    summary: dict[str, Any] = {}
    for exp_type in TYPES:
        if by_type[exp_type]:
            summary[exp_type] = {m: round(float(np.mean([r[m] for r in by_type[exp_type]])), 2) for m in ("J", "F", "JF")}
            summary[exp_type]["n"] = len(by_type[exp_type])
    scored = [summary[t] for t in ("referring", "reasoning") if t in summary]
    if scored:
        summary["overall"] = {m: round(float(np.mean([s[m] for s in scored])), 2) for m in ("J", "F", "JF")}
    failures = sum(not r["parsed"] for r in rows)
    summary["samples"] = len(rows)
    summary["parse_failures"] = failures
    summary["parse_failure_rate"] = round(failures / len(rows), 4) if rows else 0.0
    return summary
