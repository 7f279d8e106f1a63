"""Benchmark metrics: J, F, J&F, ReVOS A and R, RefAVS mIoU, F-score and null S (spec.md section 5).

One implementation serves the GRPO rewards and the evaluation. Every function works on whole videos at
once: masks are arrays of shape ``(T, H, W)`` (a single ``(H, W)`` frame is taken as ``T = 1``), and
per-frame results come back as ``(T,)`` float64 arrays. No Python loop runs over pixels or single frames;
large stacks go through numpy in blocks of frames that fit the CPU cache.

- J (``region_j``) is ``db_eval_iou`` of the DAVIS / ReVOS tools: |P & G| / |P | G| per frame, 1 when the
  union is empty. Any non-zero value is foreground.
- F (``boundary_f``) is ``db_eval_boundary``: ``seg2bmap`` boundaries, tolerance
  r = ceil(0.008 * ||(H, W)||), matches within a disk of radius r. The official tool dilates each boundary
  map with ``disk(r)`` (x^2 + y^2 <= r^2) and intersects; a boundary pixel survives that intersection exactly
  when some boundary pixel of the other map lies within Euclidean distance r in the same frame. We count
  those pixels with one k-d tree over all frames (the frame index is an extra coordinate spaced further
  apart than any in-frame distance), which gives the same integers without materialising dilated maps;
  ``dilate_disk`` is the literal dilation, kept for tests and references.
- A and R (``revos_a_r_official``) reproduce ``get_r2vos_accuracy`` / ``get_r2vos_robustness`` on raw
  uint8 values, numpy's wrapping uint8 arithmetic included; ``revos_a_r_binary`` is the corrected variant.
- RefAVS (``refavs_miou``, ``refavs_fscore``, ``refavs_null_s``) follow GeWu-Lab/Ref-AVS
  ``utils/metric/utility.py`` on probabilities (apply the sigmoid to logits first); ``refavs_binarize``
  reproduces the ``cv2.resize`` to 256x256 then ``> 0`` that the official loader applies to masks.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

BOUND_TH = 0.008  # boundary tolerance as a fraction of the image diagonal (DAVIS)
R2VOS_EPS = 1e-6  # robustness denominator guard, as in get_r2vos_robustness
REFAVS_SIZE = 256  # RefAVS masks are scored at 256x256
REFAVS_IOU_THRESHOLD = 0.4
REFAVS_IOU_EPS = 1e-7
REFAVS_NULL_THRESHOLD = 0.5
REFAVS_F_BETA2 = 0.3
REFAVS_F_THRESHOLDS = 255
REFAVS_PR_EPS = 1e-20

_BLOCK_PIXELS = 1 << 20  # pixels per block of frames in whole-stack passes (about 1 MB of bool temporaries)

# cv2's fixed-point bilinear resize: 11 fractional bits per axis, so 22 after both passes.
_CV2_COEF_BITS = 11
_CV2_COEF_SCALE = 1 << _CV2_COEF_BITS


# ------------------------------------------------------------------------------------------ input shapes


def _as_masks(masks: Any, name: str) -> np.ndarray:
    """``(T, H, W)`` bool view of a mask stack or a single ``(H, W)`` mask; non-zero is foreground."""
    arr = np.asarray(masks)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3 or arr.shape[1] == 0 or arr.shape[2] == 0:
        raise ValueError(f"{name} must have shape (T, H, W) or (H, W) with H, W >= 1, got {arr.shape}")
    return arr if arr.dtype == bool else arr != 0


def _pair(pred: Any, gt: Any) -> tuple[np.ndarray, np.ndarray]:
    p, g = _as_masks(pred, "pred"), _as_masks(gt, "gt")
    if p.shape != g.shape:
        raise ValueError(f"pred {p.shape} and gt {g.shape} must have the same (T, H, W) shape")
    return p, g


def _frame_counts(masks: np.ndarray) -> np.ndarray:
    """``(T,)`` int64 count of foreground pixels per frame of a ``(T, H, W)`` bool stack."""
    return np.count_nonzero(masks.reshape(masks.shape[0], -1), axis=1).astype(np.int64)


# ------------------------------------------------------------------------------------------------ J


def _frame_blocks(masks: np.ndarray) -> list[slice]:
    """Slices of about ``_BLOCK_PIXELS`` pixels along the frame axis: whole-stack boolean temporaries do not fit
    in the CPU cache, and working block by block was measured 3-4x faster on 480x854 frames."""
    step = max(1, _BLOCK_PIXELS // max(1, masks.shape[1] * masks.shape[2]))
    return [slice(start, start + step) for start in range(0, masks.shape[0], step)]


def region_j(pred: Any, gt: Any) -> np.ndarray:
    """Region similarity J per frame: |pred & gt| / |pred | gt|, and 1 where the union is empty.

    pred, gt: ``(T, H, W)`` or ``(H, W)``, any dtype (non-zero = foreground). Returns ``(T,)`` float64.
    Bit-identical to ``db_eval_iou`` (int64 counts, one float64 division).
    """
    p, g = _pair(pred, gt)
    inter = np.concatenate([_frame_counts(p[b] & g[b]) for b in _frame_blocks(p)])
    union = np.concatenate([_frame_counts(p[b] | g[b]) for b in _frame_blocks(p)])
    j = np.ones(p.shape[0], dtype=np.float64)
    nonempty = union > 0
    j[nonempty] = inter[nonempty] / union[nonempty]
    return j


# ------------------------------------------------------------------------------------------------ F


def seg2bmap(masks: Any) -> np.ndarray:
    """One-pixel boundaries of each frame, as DAVIS ``_seg2bmap`` draws them.

    With E, S and SE the mask shifted by one pixel from the right, from below and from the lower right (zero
    fill), b = (m ^ E) | (m ^ S) | (m ^ SE); the last row is m ^ E only, the last column m ^ S only, and the
    bottom-right pixel is 0. masks: ``(T, H, W)`` or ``(H, W)``. Returns ``(T, H, W)`` bool.
    """
    m = _as_masks(masks, "masks")
    b = np.zeros_like(m)
    core = m[:, :-1, :-1]
    b[:, :-1, :-1] = (core ^ m[:, :-1, 1:]) | (core ^ m[:, 1:, :-1]) | (core ^ m[:, 1:, 1:])
    # Shifted-in pixels are 0 past the edge, so the last row only sees E and the last column only S.
    b[:, -1, :-1] = m[:, -1, :-1] ^ m[:, -1, 1:]
    b[:, :-1, -1] = m[:, :-1, -1] ^ m[:, 1:, -1]
    return b


def boundary_tolerance(height: int, width: int, bound_th: float = BOUND_TH) -> int:
    """Dilation radius r in pixels: ceil(bound_th * sqrt(H^2 + W^2)), computed as the DAVIS code does."""
    return int(np.ceil(bound_th * np.linalg.norm((height, width))))


def disk(radius: int) -> np.ndarray:
    """``(2r+1, 2r+1)`` bool disk {x^2 + y^2 <= r^2}, the structuring element of ``skimage.morphology.disk``."""
    offsets = np.arange(-radius, radius + 1)
    return offsets[:, None] ** 2 + offsets[None, :] ** 2 <= radius**2


def dilate_disk(bmaps: Any, radius: int) -> np.ndarray:
    """Each frame of ``bmaps`` (``(T, H, W)``) dilated by ``disk(radius)``, zero outside the image.

    The literal morphological dilation (scipy); ``boundary_f`` gets the same counts faster without it.
    """
    b = _as_masks(bmaps, "bmaps")
    return ndimage.binary_dilation(b, structure=disk(radius)[None])


def _boundary_coords(masks: np.ndarray) -> np.ndarray:
    """``(N, 3)`` int64 (frame, row, column) of every ``seg2bmap`` boundary pixel of a ``(T, H, W)`` stack."""
    t_count, height, width = masks.shape
    flat = [np.flatnonzero(seg2bmap(masks[b])) + b.start * height * width for b in _frame_blocks(masks)]
    return np.stack(np.unravel_index(np.concatenate(flat), masks.shape), axis=1).astype(np.int64)


def _count_within_coords(src: np.ndarray, tgt: np.ndarray, shape: tuple[int, int, int], radius: int) -> np.ndarray:
    """Per frame, how many ``src`` points (``(N, 3)`` frame, row, column) have a ``tgt`` point of the same frame
    within Euclidean distance ``radius``. Returns ``(T,)`` int64.

    Distances between integer pixel coordinates are square roots of integers, so comparing them with an integer
    radius is exact in float64.
    """
    t_count, height, width = shape
    if len(src) == 0 or len(tgt) == 0:
        return np.zeros(t_count, dtype=np.int64)
    # Frames are spaced further apart than any in-frame distance plus the radius, so no match crosses frames.
    spacing = np.array([height + width + 2 * radius + 1, 1, 1], dtype=np.float64)
    tree = cKDTree(tgt * spacing, balanced_tree=False, compact_nodes=False)
    dist, _ = tree.query(src * spacing, k=1, distance_upper_bound=radius + 0.5)
    return np.bincount(src[dist <= radius, 0], minlength=t_count).astype(np.int64)


def count_within(points: Any, targets: Any, radius: int) -> np.ndarray:
    """Per frame, how many foreground pixels of ``points`` lie within distance ``radius`` of a ``targets`` pixel.

    points, targets: ``(T, H, W)`` bool. Returns ``(T,)`` int64, equal to
    ``count_nonzero(points & dilate_disk(targets, radius))`` per frame, computed without the dilation.
    """
    pts, tgt = _pair(points, targets)
    return _count_within_coords(np.argwhere(pts), np.argwhere(tgt), pts.shape, radius)


def boundary_f(pred: Any, gt: Any, bound_th: float = BOUND_TH) -> np.ndarray:
    """Boundary F-measure per frame, as ``db_eval_boundary`` / ``f_measure`` compute it.

    pred, gt: ``(T, H, W)`` or ``(H, W)`` (non-zero = foreground). Returns ``(T,)`` float64.
    P = |B_pred & dilate(B_gt)| / |B_pred|, R = |B_gt & dilate(B_pred)| / |B_gt|, F = 2PR / (P + R).
    Neither mask has a boundary: F = 1; only one has: F = 0; P + R = 0: F = 0.
    """
    p, g = _pair(pred, gt)
    radius = boundary_tolerance(p.shape[1], p.shape[2], bound_th)
    cp, cg = _boundary_coords(p), _boundary_coords(g)
    n_p = np.bincount(cp[:, 0], minlength=p.shape[0])
    n_g = np.bincount(cg[:, 0], minlength=p.shape[0])
    f = np.zeros(p.shape[0], dtype=np.float64)
    f[(n_p == 0) & (n_g == 0)] = 1.0
    both = (n_p > 0) & (n_g > 0)
    if both.any():
        # Frames where only one mask has a boundary are decided above; their matches are simply unused.
        precision = _count_within_coords(cp, cg, p.shape, radius)[both] / n_p[both].astype(np.float64)
        recall = _count_within_coords(cg, cp, p.shape, radius)[both] / n_g[both].astype(np.float64)
        denom = precision + recall
        safe = np.where(denom > 0, denom, 1.0)
        # Same operation order as f_measure: 2 * P * R / (P + R).
        f[both] = np.where(denom > 0, 2 * precision * recall / safe, 0.0)
    return f


def j_and_f(pred: Any, gt: Any) -> dict[str, float]:
    """Video-level J, F and J&F as fractions: means over frames, JF = (J + F) / 2.

    pred, gt: ``(T, H, W)`` or ``(H, W)``. Returns ``{"J": float, "F": float, "JF": float}``.
    """
    j = float(region_j(pred, gt).mean())
    f = float(boundary_f(pred, gt).mean())
    return {"J": j, "F": f, "JF": (j + f) / 2}


def box_iou_pixels(a: Any, b: Any) -> np.ndarray:
    """IoU of boxes ``[x1, y1, x2, y2]`` with the +1-pixel convention of the Omni-R1 reward.

    Corners are inclusive pixel coordinates, so a box covers (x2 - x1 + 1) x (y2 - y1 + 1) pixels and
    a one-pixel box has area 1. a: ``(N, 4)``, b: ``(M, 4)`` (a single ``(4,)`` box is taken as N = 1).
    Returns the ``(N, M)`` float64 IoU matrix; a pair whose union has no area scores 0.
    """
    p, q = np.atleast_2d(np.asarray(a, np.float64)), np.atleast_2d(np.asarray(b, np.float64))
    if p.shape[-1] != 4 or q.shape[-1] != 4 or p.ndim != 2 or q.ndim != 2:
        raise ValueError(f"boxes must have shape (N, 4) or (4,), got {np.shape(a)} and {np.shape(b)}")
    inter_w = np.maximum(0.0, np.minimum(p[:, None, 2], q[None, :, 2]) - np.maximum(p[:, None, 0], q[None, :, 0]) + 1)
    inter_h = np.maximum(0.0, np.minimum(p[:, None, 3], q[None, :, 3]) - np.maximum(p[:, None, 1], q[None, :, 1]) + 1)
    inter = inter_w * inter_h
    area_p = np.maximum(0.0, p[:, 2] - p[:, 0] + 1) * np.maximum(0.0, p[:, 3] - p[:, 1] + 1)
    area_q = np.maximum(0.0, q[:, 2] - q[:, 0] + 1) * np.maximum(0.0, q[:, 3] - q[:, 1] + 1)
    union = area_p[:, None] + area_q[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


# ------------------------------------------------------------------------------------------ ReVOS A, R


def _check_uint8(name: str, arr: Any) -> np.ndarray:
    a = np.asarray(arr)
    if a.dtype != np.uint8:
        raise TypeError(
            f"{name} must be uint8 (the official A/R use raw uint8 values and wrap around), got {a.dtype}"
        )
    return a[None] if a.ndim == 2 else a


def revos_a_r_frames(truth_uint8: Any, pred_uint8: Any, foreground: Any) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame ReVOS accuracy A and robustness R exactly as ``tools/metrics.py`` of cilinyan/VISA.

    truth_uint8: ``(T, H, W)`` uint8, the sum of the decoded RLEs (0/1, 2 where objects overlap, ...).
    pred_uint8: ``(T, H, W)`` uint8 raw PNG grey levels (0/255 as predictions are written).
    foreground: ``(T, H, W)`` uint8 foreground mask of the video. Returns two ``(T,)`` float64 arrays.

    A = mean(truth == pred) on raw values, so with 0/255 predictions only pixels where both are 0 count.
    R = max(1 - sum((1 - truth) * pred) / (sum(foreground) + 1e-6), 0) on raw values in uint8 arithmetic
    as numpy does it: 1 - truth wraps (1 - 2 = 255) and the product wraps modulo 256, so a false-positive
    pixel (truth 0, pred 255) weighs 255, a pixel with truth 2 and pred 255 weighs 255 * 255 mod 256 = 1,
    and the sums are taken in uint64 (numpy's accumulator for uint8).
    """
    truth = _check_uint8("truth_uint8", truth_uint8)
    pred = _check_uint8("pred_uint8", pred_uint8)
    fg = _check_uint8("foreground", foreground)
    if not truth.shape == pred.shape == fg.shape:
        raise ValueError(f"truth {truth.shape}, pred {pred.shape} and foreground {fg.shape} must have one shape")
    t_count = truth.shape[0]
    acc = np.count_nonzero((truth == pred).reshape(t_count, -1), axis=1) / float(truth[0].size)
    neg = ((np.uint8(1) - truth) * pred).reshape(t_count, -1).sum(axis=1, dtype=np.uint64)
    pos = fg.reshape(t_count, -1).sum(axis=1, dtype=np.uint64)
    robust = np.maximum(1 - neg / (pos + R2VOS_EPS), 0.0)
    return acc.astype(np.float64), robust.astype(np.float64)


def revos_a_r_official(truth_uint8: Any, pred_uint8: Any, foreground: Any) -> tuple[float, float]:
    """Expression-level official (A, R): the means over frames of ``revos_a_r_frames``; fractions, not x100."""
    acc, robust = revos_a_r_frames(truth_uint8, pred_uint8, foreground)
    return float(acc.mean()), float(robust.mean())


def revos_a_r_binary(truth: Any, pred: Any, foreground: Any) -> tuple[float, float]:
    """Corrected (A, R): the official formulas with truth, prediction and foreground made binary first.

    truth, pred, foreground: ``(T, H, W)`` any dtype (non-zero = foreground). A = mean(truth == pred) over
    pixels, R = max(1 - |~truth & pred| / (|foreground| + 1e-6), 0) per frame; both means over frames.
    """
    t, p, fg = _as_masks(truth, "truth"), _as_masks(pred, "pred"), _as_masks(foreground, "foreground")
    if not t.shape == p.shape == fg.shape:
        raise ValueError(f"truth {t.shape}, pred {p.shape} and foreground {fg.shape} must have one shape")
    acc = _frame_counts(t == p) / float(t[0].size)
    robust = np.maximum(1 - _frame_counts(~t & p) / (_frame_counts(fg) + R2VOS_EPS), 0.0)
    return float(acc.mean()), float(robust.mean())


def revos_expression_metrics(truth_uint8: Any, pred_uint8: Any, foreground: Any) -> dict[str, float]:
    """Everything ReVOS reports for one expression, as fractions (means over frames).

    Shapes as in ``revos_a_r_frames``. Keys: J, F (on non-zero = foreground), A, R (official, raw values),
    A_binary, R_binary (corrected).
    """
    j = region_j(pred_uint8, truth_uint8)
    f = boundary_f(pred_uint8, truth_uint8)
    acc, robust = revos_a_r_official(truth_uint8, pred_uint8, foreground)
    acc_bin, robust_bin = revos_a_r_binary(truth_uint8, pred_uint8, foreground)
    return {
        "J": float(j.mean()),
        "F": float(f.mean()),
        "A": acc,
        "R": robust,
        "A_binary": acc_bin,
        "R_binary": robust_bin,
    }


# ------------------------------------------------------------------------------------------- RefAVS


def _cv2_linear_taps(src: int, dst: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Source indices and 11-bit weights of cv2's INTER_LINEAR along one axis: (i0, i1, w0, w1), each ``(dst,)``.

    As in OpenCV's resize: half-pixel centres, the position rounded to float32, taps clamped to the edge
    (weight 0 on the missing neighbour), weights rounded half-to-even to multiples of 1/2048.
    """
    scale = 1.0 / (dst / src)
    pos = ((np.arange(dst, dtype=np.float64) + 0.5) * scale - 0.5).astype(np.float32)
    idx = np.floor(pos).astype(np.int64)
    frac = pos - idx.astype(np.float32)
    clamp = (idx < 0) | (idx >= src - 1)
    frac[clamp] = 0.0
    idx = np.clip(idx, 0, src - 1)
    w0 = np.rint((np.float32(1.0) - frac) * np.float32(_CV2_COEF_SCALE)).astype(np.int64)
    w1 = np.rint(frac * np.float32(_CV2_COEF_SCALE)).astype(np.int64)
    return idx, np.minimum(idx + 1, src - 1), w0, w1


def cv2_resize_linear_u8(images: Any, height: int, width: int) -> np.ndarray:
    """``cv2.resize(img, (width, height))`` (INTER_LINEAR) of uint8 images, emulated with integers.

    images: ``(..., H, W)`` uint8 (leading axes are independent images or channels). Returns
    ``(..., height, width)`` uint8. This is OpenCV's scalar fixed-point path: each pass weights two taps by
    11-bit coefficients and the result is (sum + 2^21) >> 22. OpenCV's SIMD path truncates intermediate
    bits differently and can differ by one grey level; for ``> 0`` on 0/255 masks that matters only where a
    pixel's foreground weight is within a rounding step of 1/510, which cannot happen when both scale factors
    are powers of two or (as 96 -> 256) give weights in multiples of 1/16. Same size is a plain copy, as in cv2.
    """
    img = np.asarray(images)
    if img.dtype != np.uint8 or img.ndim < 2:
        raise TypeError(f"cv2_resize_linear_u8 expects uint8 images of shape (..., H, W), got {img.dtype} {img.shape}")
    src_h, src_w = img.shape[-2:]
    if (src_h, src_w) == (height, width):
        return img.copy()
    x0, x1, a0, a1 = _cv2_linear_taps(src_w, width)
    y0, y1, b0, b1 = _cv2_linear_taps(src_h, height)
    wide = img.astype(np.int64)
    rows = wide[..., x0] * a0 + wide[..., x1] * a1  # horizontal pass, 11 fractional bits
    total = rows[..., y0, :] * b0[:, None] + rows[..., y1, :] * b1[:, None]
    out = (total + (1 << (2 * _CV2_COEF_BITS - 1))) >> (2 * _CV2_COEF_BITS)
    return np.clip(out, 0, 255).astype(np.uint8)


def cv2_bgr2gray_u8(rgb: Any) -> np.ndarray:
    """``cv2.cvtColor(BGR2GRAY)`` of an ``(..., 3)`` uint8 image given in RGB order, in cv2's 14-bit fixed point."""
    arr = np.asarray(rgb).astype(np.int64)
    gray = (arr[..., 0] * 4899 + arr[..., 1] * 9617 + arr[..., 2] * 1868 + (1 << 13)) >> 14
    return gray.astype(np.uint8)


def refavs_binarize(grey: Any, size: int = REFAVS_SIZE) -> np.ndarray:
    """A RefAVS mask as the official loader sees it: ``cv2.resize`` to size x size, then ``> 0``.

    grey: ``(T, H, W)`` or ``(H, W)`` uint8 grey levels (for RGB files, resize each channel with
    ``cv2_resize_linear_u8`` and convert with ``cv2_bgr2gray_u8`` instead, as the official order is resize
    then convert). Returns ``(T, size, size)`` bool.
    """
    arr = np.asarray(grey)
    if arr.ndim == 2:
        arr = arr[None]
    return cv2_resize_linear_u8(arr, size, size) > 0


def _probs_and_truth(pred_prob: Any, gt: Any) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(pred_prob, dtype=np.float64)
    p = p[None] if p.ndim == 2 else p
    g = _as_masks(gt, "gt")
    if p.shape != g.shape:
        raise ValueError(f"pred_prob {p.shape} and gt {g.shape} must have the same (T, H, W) shape")
    return p, g


def refavs_miou_frames(pred_prob: Any, gt: Any) -> np.ndarray:
    """Per-frame RefAVS IoU (``mask_iou``): prediction = prob > 0.4; an empty-truth frame scores the count
    of pixels empty in both over the pixel count; otherwise inter / (union + 1e-7) (the eps applies to both).

    pred_prob: ``(T, H, W)`` probabilities (sigmoid of logits; a binary mask is 0/1). gt: ``(T, H, W)``.
    Returns ``(T,)`` float64.
    """
    p, g = _probs_and_truth(pred_prob, gt)
    pred = p > REFAVS_IOU_THRESHOLD
    inter = _frame_counts(pred & g)
    union = _frame_counts(pred | g)
    empty_truth = _frame_counts(g) == 0
    inter = np.where(empty_truth, _frame_counts(~pred & ~g), inter)
    union = np.where(empty_truth, g[0].size, union)
    return inter / (union + REFAVS_IOU_EPS)


def refavs_miou(pred_prob: Any, gt: Any) -> float:
    """RefAVS mIoU of one clip: the mean of ``refavs_miou_frames`` over its frames. Shapes as there."""
    return float(refavs_miou_frames(pred_prob, gt).mean())


def refavs_thresholds() -> np.ndarray:
    """The 255 F-score thresholds: ``torch.linspace(0, 1 - 1e-10, 255)`` in float32 (the last one is 1.0)."""
    return np.linspace(0.0, 1.0 - 1e-10, REFAVS_F_THRESHOLDS).astype(np.float32)


def refavs_fscore_curve(pred_prob: Any, gt: Any) -> np.ndarray:
    """Mean F_beta curve (beta^2 = 0.3) over the frames with non-empty truth; ``(255,)``, zeros if none.

    At each threshold t the prediction is prob >= t; precision = tp / (predicted + 1e-20), recall =
    tp / (true + 1e-20), F = 1.3 P R / (0.3 P + R) with NaN (0/0) as 0. Counts for all thresholds come from one
    histogram per frame of how many thresholds each pixel passes.
    """
    p, g = _probs_and_truth(pred_prob, gt)
    keep = _frame_counts(g) > 0
    if not keep.any():
        return np.zeros(REFAVS_F_THRESHOLDS, dtype=np.float64)
    p, g = p[keep].astype(np.float32), g[keep]
    n_frames, n_th = p.shape[0], REFAVS_F_THRESHOLDS
    # passes[i] = number of thresholds <= prob, so the pixel is predicted at threshold k iff k < passes.
    passes = np.searchsorted(refavs_thresholds(), p.reshape(n_frames, -1), side="right")
    flat = passes + (np.arange(n_frames) * (n_th + 1))[:, None]
    hist = np.bincount(flat.ravel(), minlength=n_frames * (n_th + 1)).reshape(n_frames, n_th + 1)
    hist_tp = np.bincount(flat[g.reshape(n_frames, -1)], minlength=n_frames * (n_th + 1)).reshape(n_frames, -1)
    # predicted(k) = pixels with passes > k: a reversed cumulative sum, dropping the passes == 0 bin.
    predicted = np.cumsum(hist[:, ::-1], axis=1)[:, ::-1][:, 1:].astype(np.float64)
    tp = np.cumsum(hist_tp[:, ::-1], axis=1)[:, ::-1][:, 1:].astype(np.float64)
    true = _frame_counts(g).astype(np.float64)[:, None]
    precision = tp / (predicted + REFAVS_PR_EPS)
    recall = tp / (true + REFAVS_PR_EPS)
    with np.errstate(invalid="ignore", divide="ignore"):
        f = (1 + REFAVS_F_BETA2) * precision * recall / (REFAVS_F_BETA2 * precision + recall)
    f = np.nan_to_num(f, nan=0.0)
    return f.mean(axis=0)


def refavs_fscore(pred_prob: Any, gt: Any) -> float:
    """RefAVS F-score of one clip (``Eval_Fmeasure``): the maximum of ``refavs_fscore_curve`` over thresholds.

    pred_prob: ``(T, H, W)`` probabilities; gt: ``(T, H, W)``. A clip whose truth is empty in every frame
    scores 0, as in the official code.
    """
    return float(refavs_fscore_curve(pred_prob, gt).max())


def refavs_null_s(pred_prob: Any) -> float:
    """RefAVS null-split S of one clip (``metric_s_for_null``): sqrt(pixels with prob > 0.5 / all pixels),
    over all the clip's frames together. pred_prob: ``(T, H, W)`` or ``(H, W)``. Lower is better."""
    p = np.asarray(pred_prob, dtype=np.float64)
    if p.size == 0:
        raise ValueError("refavs_null_s needs at least one pixel")
    return math.sqrt(np.count_nonzero(p > REFAVS_NULL_THRESHOLD) / p.size)
