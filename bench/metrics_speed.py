"""Benchmark: the vectorised J and F of ``omni_r1.eval.metrics`` against a plain per-frame reference loop.

Run it from the repository root::

    .venv/bin/python bench/metrics_speed.py                      # 100 frames of 480x854, blob masks
    .venv/bin/python bench/metrics_speed.py --frames 20 --repeats 3

What is measured
----------------
- The masks: ``--frames`` random truth frames of ``--height`` x ``--width``, each the union of a few discs and
  rectangles (some touching the border), and a prediction made from the truth by shifting it a few pixels,
  dropping or adding a blob and sprinkling isolated pixels, so that J and F take all kinds of values.
- vectorised: ``region_j(pred, gt)`` and ``boundary_f(pred, gt)`` on the whole ``(T, H, W)`` stack.
- reference: this file's ``reference_j_f``, the DAVIS definitions written frame by frame: ``db_eval_iou`` on
  one frame, ``_seg2bmap`` with the three shifted copies, a disk built from x^2 + y^2 <= r^2, and
  ``scipy.ndimage.binary_dilation`` of each boundary map (the official tool uses ``cv2.dilate``; cv2 is not
  installed here and scipy's dilation with a 17x17 disk is slower than cv2's, so this baseline is slower
  than the official tool).
- Both must agree exactly (the script fails otherwise). Each is run ``--repeats`` times, the medians and their
  ratio are printed, the ratio line last: ``ratio reference/vectorised = N.NN (...)``. The library functions
  called one frame at a time are timed too, for information: most of the gain is the k-d tree matching
  instead of dilating whole frames, the rest is working on many frames per numpy call.

The reference functions here are also the independent reference of ``tests/unit/test_scoring.py``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from typing import Sequence

import numpy as np
from scipy import ndimage

from omni_r1.eval.metrics import boundary_f, region_j

# ------------------------------------------------------------------ the reference, one frame at a time


def reference_seg2bmap(seg: np.ndarray) -> np.ndarray:
    """``_seg2bmap`` of one ``(H, W)`` frame, literally: E, S, SE shifted copies, then the edge rules."""
    seg = seg.astype(bool)
    e = np.zeros_like(seg)
    s = np.zeros_like(seg)
    se = np.zeros_like(seg)
    e[:, :-1] = seg[:, 1:]
    s[:-1, :] = seg[1:, :]
    se[:-1, :-1] = seg[1:, 1:]
    b = (seg ^ e) | (seg ^ s) | (seg ^ se)
    b[-1, :] = seg[-1, :] ^ e[-1, :]
    b[:, -1] = seg[:, -1] ^ s[:, -1]
    b[-1, -1] = 0
    return b


def reference_disk(radius: int) -> np.ndarray:
    """The disk structuring element, pixel by pixel."""
    size = 2 * radius + 1
    out = np.zeros((size, size), dtype=bool)
    for y in range(size):
        for x in range(size):
            out[y, x] = (y - radius) ** 2 + (x - radius) ** 2 <= radius**2
    return out


def reference_frame_j(pred: np.ndarray, gt: np.ndarray) -> float:
    """J of one frame: |P & G| / |P | G|, 1 when the union is empty."""
    p, g = pred.astype(bool), gt.astype(bool)
    union = np.sum(p | g)
    return 1.0 if union == 0 else float(np.sum(p & g) / union)


def reference_frame_f(pred: np.ndarray, gt: np.ndarray) -> float:
    """Boundary F of one frame, as ``f_measure`` computes it (scipy dilation instead of cv2.dilate)."""
    radius = int(np.ceil(0.008 * np.linalg.norm(pred.shape)))
    bp, bg = reference_seg2bmap(pred), reference_seg2bmap(gt)
    structure = reference_disk(radius)
    bp_dil = ndimage.binary_dilation(bp, structure=structure)
    bg_dil = ndimage.binary_dilation(bg, structure=structure)
    n_p, n_g = np.sum(bp), np.sum(bg)
    if n_p == 0 and n_g == 0:
        return 1.0
    if n_p == 0 or n_g == 0:
        return 0.0
    precision = np.sum(bp & bg_dil) / float(n_p)
    recall = np.sum(bg & bp_dil) / float(n_g)
    if precision + recall == 0:
        return 0.0
    return float(2 * precision * recall / (precision + recall))


def reference_frame_a_r(truth: np.ndarray, pred: np.ndarray, foreground: np.ndarray) -> tuple[float, float]:
    """Official A and R of one frame on raw uint8 arrays (numpy's uint8 arithmetic, wrap-around included)."""
    acc = float(np.mean(truth == pred))
    neg = ((1 - truth) * pred).sum()
    pos = foreground.sum()
    return acc, float(max(1 - neg / (pos + 1e-6), 0.0))


def reference_j_f(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame J and F of ``(T, H, W)`` stacks, one frame at a time."""
    js = [reference_frame_j(p, g) for p, g in zip(pred, gt)]
    fs = [reference_frame_f(p, g) for p, g in zip(pred, gt)]
    return np.array(js), np.array(fs)


# ------------------------------------------------------------------------------------------- the masks


def make_masks(frames: int, height: int, width: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random ``(T, H, W)`` bool truth and a perturbed prediction (see the module docstring)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:height, :width]
    gt = np.zeros((frames, height, width), dtype=bool)
    pred = np.zeros_like(gt)
    scale = min(height, width)
    for t in range(frames):
        blobs = []
        for _ in range(int(rng.integers(1, 4))):
            cy, cx = rng.integers(0, height), rng.integers(0, width)
            r = int(rng.integers(max(1, scale // 40), max(2, scale // 4)))
            if rng.random() < 0.5:
                blobs.append((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r)
            else:
                blobs.append((abs(yy - cy) <= r) & (abs(xx - cx) <= r // 2 + 1))
        for b in blobs:
            gt[t] |= b
        dy, dx = rng.integers(-3, 4, size=2)
        pred[t] = np.roll(gt[t], (int(dy), int(dx)), axis=(0, 1))
        if rng.random() < 0.3 and len(blobs) > 1:
            pred[t] &= ~np.roll(blobs[0], (int(dy), int(dx)), axis=(0, 1))
        pred[t] |= rng.random((height, width)) < 2e-4
    if frames > 1:
        gt[-1] = False  # one frame with empty truth exercises the edge cases
    return pred, gt


def _timed(fn, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=100)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=854)
    parser.add_argument("--repeats", type=int, default=1, help="runs of each implementation; medians are reported")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.frames < 1 or args.height < 2 or args.width < 2 or args.repeats < 1:
        parser.error("--frames and --repeats must be >= 1, --height and --width >= 2")

    pred, gt = make_masks(args.frames, args.height, args.width, args.seed)
    t_vec, vec = _timed(lambda: (region_j(pred, gt), boundary_f(pred, gt)), args.repeats)
    t_ref, ref = _timed(lambda: reference_j_f(pred, gt), args.repeats)
    # The same library functions called one frame at a time: separates batching from the matching algorithm.
    t_per, _ = _timed(lambda: [(region_j(p, g), boundary_f(p, g)) for p, g in zip(pred, gt)], args.repeats)
    j_vec, f_vec = vec  # type: ignore[misc]
    j_ref, f_ref = ref  # type: ignore[misc]
    if not (np.array_equal(j_vec, j_ref) and np.array_equal(f_vec, f_ref)):
        worst = max(np.abs(j_vec - j_ref).max(), np.abs(f_vec - f_ref).max())
        print(f"FAIL: vectorised and reference J/F differ (max abs difference {worst:.3g})", file=sys.stderr)
        return 1
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"masks: {args.frames} frames of {args.height}x{args.width}, seed {args.seed}; load average {load:.2f}")
    print(f"J mean {j_vec.mean():.4f}, F mean {f_vec.mean():.4f}; vectorised == reference on every frame: ok")
    print(f"vectorised {t_vec:.3f} s ({args.frames / t_vec:.1f} frames/s), median of {args.repeats}")
    print(f"vectorised called per frame {t_per:.3f} s ({args.frames / t_per:.1f} frames/s), for comparison")
    print(f"reference  {t_ref:.3f} s ({args.frames / t_ref:.1f} frames/s), median of {args.repeats}")
    print(
        f"ratio reference/vectorised = {t_ref / t_vec:.2f} (reference {t_ref:.3f} s, vectorised {t_vec:.3f} s, "
        f"{args.frames} frames of {args.height}x{args.width}, J and F)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
