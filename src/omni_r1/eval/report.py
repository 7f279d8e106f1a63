"""Figures for the report: J&F per expression type and policy, and qualitative overlays.

Researchers look before they read: each overlay shows sampled frames with the predicted mask in
red and the true mask's outline in green.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from omni_r1.data.paths import sample_key
from omni_r1.data.shards import read_samples
from omni_r1.eval.evaluate import read_prediction
from omni_r1.fileio import atomic_write_bytes


def _figure_bytes(fig: Any) -> bytes:
    import io

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return buffer.getvalue()


def plot_jf(summary: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    types = [t for t in ("referring", "reasoning", "null", "overall") if any(t in s for s in summary.values())]
    policies = list(summary)
    fig, ax = plt.subplots(figsize=(1.6 + 1.6 * len(types), 3.2))
    width = 0.8 / max(1, len(policies))
    for i, policy in enumerate(policies):
        values = [summary[policy].get(t, {}).get("JF", 0.0) for t in types]
        bars = ax.bar(np.arange(len(types)) + i * width, values, width, label=policy)
        ax.bar_label(bars, fmt="%.1f", fontsize=7)
    ax.set_xticks(np.arange(len(types)) + width * (len(policies) - 1) / 2, types)
    ax.set_ylabel("J&F (x100)")
    ax.set_ylim(0, 105)
    ax.legend(fontsize=7)
    ax.set_title("J&F per expression type")
    atomic_write_bytes(path, _figure_bytes(fig))
    plt.close(fig)


def overlay(frame: np.ndarray, pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """frame (H, W, 3) uint8; pred/truth (H, W) bool at the frame's size -> RGB with red fill, green outline."""
    out = frame.astype(np.float32)
    out[pred] = 0.55 * out[pred] + 0.45 * np.array([255, 0, 0])
    edge = truth & ~(np.roll(truth, 1, 0) & np.roll(truth, -1, 0) & np.roll(truth, 1, 1) & np.roll(truth, -1, 1))
    out[edge] = (0, 255, 0)
    return out.astype(np.uint8)


def _resize(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    return np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize(size, Image.NEAREST)) > 127


def write_overlays(shard_dir: Path, pred_dir: Path, split: str, policy: str, out_dir: Path,
                   sample_ids: Sequence[str]) -> list[Path]:
    """One strip per chosen sample: its sampled high-res frames with prediction and truth."""
    written = []
    wanted = set(sample_ids)
    for sample in read_samples(shard_dir, split):
        if sample.meta["sample_id"] not in wanted:
            continue
        pred = read_prediction(pred_dir / policy, sample)
        truth = sample.masks.union(sample.frame_indices)
        h, w = sample.high_res.shape[1:3]
        tiles = [overlay(sample.high_res[t], _resize(pred[i], (w, h)), _resize(truth[t], (w, h)))
                 for t, i in enumerate(sample.frame_indices)]
        strip = np.concatenate(tiles[:6], axis=1)
        import io

        buffer = io.BytesIO()
        Image.fromarray(strip).save(buffer, format="PNG")
        name = f"overlay_{policy}_{sample_key(sample.meta['sample_id'])}.png"
        atomic_write_bytes(out_dir / name, buffer.getvalue())
        written.append(out_dir / name)
    return written


def plot_training(tsv: Path, path: Path) -> None:
    """Reward (mean over the step's rollouts, smoothed) and parse-failure rate per GRPO step, one line per seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    log = pd.read_csv(tsv, sep="\t")
    fig, axes = plt.subplots(1, 2, figsize=(8, 3))
    for seed, rows in log.groupby("seed"):
        smooth = rows["reward"].rolling(10, min_periods=1).mean()
        axes[0].plot(rows["step"], smooth, label=f"seed {seed}")
        axes[1].plot(rows["step"], rows["parse_failure_rate"].rolling(10, min_periods=1).mean(), label=f"seed {seed}")
    axes[0].set(title="GRPO reward (10-step mean)", xlabel="step", ylabel="reward")
    axes[1].set(title="parse-failure rate", xlabel="step", ylim=(0, 1))
    axes[0].legend(fontsize=7)
    atomic_write_bytes(path, _figure_bytes(fig))
    plt.close(fig)
