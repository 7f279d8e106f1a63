"""Score prediction PNGs against the shards' truth: J, F, J&F per sample, per type and overall.

Uses the one metric implementation (``omni_r1.eval.metrics``) that the GRPO rewards use too. Per
sample: means over every native frame; reported x100. Per type: mean over samples; overall: the
mean of the referring and reasoning means (the ReVOS convention); null expressions are reported
on their own (an empty prediction of an absent target scores 100). Every figure ``X`` has its
bootstrap 95% interval over samples under ``X_ci`` (``omni_r1.eval.bootstrap``).

RefAVS data also gets the Ref-AVS metrics per benchmark split under ``refavs``: mIoU and F-score
(beta^2 = 0.3) on Seen ``test_s`` and Unseen ``test_u``, with JF their mean (the paper's J&F), and S
on Null ``test_n``, computed by ``omni_r1.eval.scoring`` (the ``omni-r1 score refavs`` code) against
the benchmark's own ``metadata.csv`` and ``gt_mask/`` under the data root; x100, intervals over clips.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
from PIL import Image

from omni_r1.data.paths import safe_join
from omni_r1.data.shards import read_samples
from omni_r1.eval.bootstrap import bootstrap_interval
from omni_r1.eval.metrics import j_and_f
from omni_r1.eval.predict import prediction_paths
from omni_r1.eval.scoring import REFAVS_SPLITS, score_refavs_clips, summarize_refavs
from omni_r1.types import Sample

TYPES = ("referring", "reasoning", "null")
METRICS = ("J", "F", "JF")


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
             predict_rows: Iterable[dict[str, Any]], *, refavs_root: Path | None = None, resamples: int = 1000,
             seed: int = 0) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Per-sample rows and a summary per policy (per type J/F/JF with intervals, overall, parse failures).

    With ``refavs_root`` (the RefAVS benchmark root) and RefAVS samples, each summary also holds the
    Ref-AVS metrics of the benchmark splits present (see the module docstring).
    """
    info = {(r["sample_id"], r["policy"]): r for r in predict_rows}
    rows = []
    refavs_splits: set[str] = set()
    for sample in read_samples(shard_dir, split):
        if sample.meta["dataset"] == "refavs" and sample.meta.get("benchmark_split") in REFAVS_SPLITS:
            refavs_splits.add(str(sample.meta["benchmark_split"]))
        for policy in policies:
            scores = score_sample(read_prediction(pred_dir / policy, sample), sample)
            extra = info.get((sample.meta["sample_id"], policy), {})
            rows.append({"sample_id": sample.meta["sample_id"], "policy": policy, "exp_type": sample.meta["exp_type"],
                         "cue": sample.meta.get("cue", ""), "parsed": bool(extra.get("parsed", True)),
                         "benchmark_split": sample.meta.get("benchmark_split", ""),
                         "error": extra.get("error", ""), **scores})
    summary = {policy: summarise([r for r in rows if r["policy"] == policy], resamples=resamples, seed=seed)
               for policy in policies}
    if refavs_root is not None and refavs_splits:
        for policy in policies:
            summary[policy]["refavs"] = refavs_metrics(refavs_root, pred_dir / policy, sorted(refavs_splits),
                                                       resamples=resamples, seed=seed)
    return summary, rows


def summarise(rows: Sequence[dict[str, Any]], *, resamples: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Per type: mean J, F, JF over samples, each with its bootstrap 95% interval; overall from referring+reasoning."""
    by_type: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        by_type[row["exp_type"]].append(row)
    summary: dict[str, Any] = {}
    for exp_type in TYPES:
        if by_type[exp_type]:
            summary[exp_type] = _with_intervals([[r[m] for r in by_type[exp_type]] for m in METRICS], resamples, seed)
            summary[exp_type]["n"] = len(by_type[exp_type])
    scored = [by_type[t] for t in ("referring", "reasoning") if by_type[t]]
    if scored:
        # overall: the mean of the type means, resampled within each type
        summary["overall"] = {}
        for m in METRICS:
            groups = [[r[m] for r in members] for members in scored]
            summary["overall"][m] = round(float(np.mean([np.mean(g) for g in groups])), 2)
            summary["overall"][f"{m}_ci"] = _interval(groups, resamples, seed)
        summary["overall"]["n"] = sum(len(members) for members in scored)
    failures = sum(not r["parsed"] for r in rows)
    summary["samples"] = len(rows)
    summary["parse_failures"] = failures
    summary["parse_failure_rate"] = round(failures / len(rows), 4) if rows else 0.0
    return summary


def _with_intervals(values_per_metric: list[list[float]], resamples: int, seed: int,
                    names: Sequence[str] = METRICS) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, values in zip(names, values_per_metric):
        out[name] = round(float(np.mean(values)), 2)
        out[f"{name}_ci"] = _interval([values], resamples, seed)
    return out


def _interval(groups: list[list[float]], resamples: int, seed: int) -> list[float]:
    low, high = bootstrap_interval(groups, resamples=resamples, seed=seed)
    return [round(low, 2), round(high, 2)]


def refavs_metrics(root: Path, pred_dir: Path, splits: Sequence[str], *, resamples: int = 1000,
                   seed: int = 0) -> dict[str, Any]:
    """Ref-AVS metrics of ``pred_dir`` per split, x100 with intervals over clips, via ``omni_r1.eval.scoring``.

    ``test_s``/``test_u``: mIoU, F (beta^2 = 0.3) and JF = (mIoU + F) / 2, the paper's J&F; ``test_n``: S
    (lower is better). Every metadata row of a split is scored, as the official code does.
    """
    out: dict[str, Any] = {}
    for split in splits:
        clips = score_refavs_clips(root, split, pred_dir)
        official = summarize_refavs(clips, split)[split]  # fractions, as `omni-r1 score refavs` writes them
        if split == "test_n":
            names, values = ("S",), [[100 * c["S"] for c in clips]]
        else:
            names = ("mIoU", "F", "JF")
            values = [[100 * c["mIoU"] for c in clips], [100 * c["F"] for c in clips],
                      [50 * (c["mIoU"] + c["F"]) for c in clips]]
        out[split] = _with_intervals(values, resamples, seed, names)
        for name, value in official.items():  # the means themselves straight from the official summary
            out[split][name] = round(100 * value, 2)
        out[split]["n"] = len(clips)
    return out
