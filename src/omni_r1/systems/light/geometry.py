"""Boxes, crops and frames of the light System 2: pure tensor geometry, no learned weights.

Boxes are ``(x1, y1, x2, y2)`` pixel edges. The segmenter works on a crop around a box (``crop_window``,
``crop``) and its logits go back into the frame with ``paste`` (``LOGIT_OUTSIDE`` outside the crop).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

BoxXYXY = tuple[float, float, float, float]  # (x1, y1, x2, y2) in pixels
LOGIT_OUTSIDE = -20.0  # mask logit given to frame pixels outside the segmenter's crop (a certain "no")


def frames_tensor(frames: np.ndarray) -> torch.Tensor:
    """(T, H, W, 3) uint8 -> (T, 3, H, W) float in [0, 1] at the frames' own size."""
    return torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float() / 255.0


def resize_frames(frames: np.ndarray, size: int) -> torch.Tensor:
    """(T, H, W, 3) uint8 -> (T, 3, size, size) float in [0, 1], antialiased (aspect is not kept)."""
    return F.interpolate(frames_tensor(frames), size=(size, size), mode="bilinear", antialias=True,
                         align_corners=False)


def box_channel(box: BoxXYXY, size: int) -> torch.Tensor:
    """(size, size) float: 1 on the pixels whose centres fall inside ``box`` (pixel coords of that square)."""
    centres = torch.arange(size, dtype=torch.float32) + 0.5
    x1, y1, x2, y2 = box
    inside_x = (centres >= x1) & (centres <= x2)
    inside_y = (centres >= y1) & (centres <= y2)
    return (inside_y[:, None] & inside_x[None, :]).float()


def mask_box(mask: np.ndarray) -> BoxXYXY | None:
    """Pixel-edge bounding box (x1, y1, x2, y2) of a 2-D bool mask; None when empty."""
    ys, xs = np.nonzero(mask)
    if ys.size == 0:
        return None
    return float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)


def crop_window(box: BoxXYXY, margin: float, min_side: float) -> BoxXYXY:
    """The segmenter's crop around ``box``: grown by ``margin`` of its side (sides of at least ``min_side``).

    Not clipped to the frame: the part outside reads as black, and the crop keeps the box centred.
    """
    x1, y1, x2, y2 = box
    w, h = max(x2 - x1, min_side), max(y2 - y1, min_side)
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    half_w, half_h = w * (0.5 + margin), h * (0.5 + margin)
    return cx - half_w, cy - half_h, cx + half_w, cy + half_h


def box_in_window(box: BoxXYXY, window: BoxXYXY, size: int) -> BoxXYXY:
    """``box`` (frame pixels) in the pixel coordinates of a ``size`` squared crop of ``window``."""
    sx, sy = size / (window[2] - window[0]), size / (window[3] - window[1])
    return (box[0] - window[0]) * sx, (box[1] - window[1]) * sy, (box[2] - window[0]) * sx, (box[3] - window[1]) * sy


def _crop_grid(windows: Sequence[BoxXYXY], size: int, height: int, width: int) -> torch.Tensor:
    """(B, size, size, 2) ``grid_sample`` coordinates of the crop pixels' centres (align_corners=False)."""
    w = torch.tensor(windows, dtype=torch.float32)
    steps = (torch.arange(size, dtype=torch.float32) + 0.5) / size
    xs = w[:, 0:1] + steps[None] * (w[:, 2:3] - w[:, 0:1])  # (B, size) frame x of each crop column
    ys = w[:, 1:2] + steps[None] * (w[:, 3:4] - w[:, 1:2])
    gx = (2 * xs / width - 1)[:, None, :].expand(-1, size, -1)
    gy = (2 * ys / height - 1)[:, :, None].expand(-1, -1, size)
    return torch.stack([gx, gy], dim=-1)


def crop(images: torch.Tensor, windows: Sequence[BoxXYXY], size: int) -> torch.Tensor:
    """(B, C, H, W) frames (or masks) and B windows -> (B, C, size, size) bilinear crops; outside reads 0."""
    grid = _crop_grid(windows, size, images.shape[-2], images.shape[-1]).to(images.device)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def paste(logits: torch.Tensor, window: BoxXYXY, height: int, width: int) -> torch.Tensor:
    """(C, C) crop logits of ``window`` -> (height, width) frame logits, ``LOGIT_OUTSIDE`` outside the window."""
    out = torch.full((height, width), LOGIT_OUTSIDE)
    x1, y1, x2, y2 = window
    c0, c1 = max(0, int(np.floor(x1))), min(width, int(np.ceil(x2)))
    r0, r1 = max(0, int(np.floor(y1))), min(height, int(np.ceil(y2)))
    if c1 <= c0 or r1 <= r0:
        return out
    size = logits.shape[-1]
    xs = (torch.arange(c0, c1, dtype=torch.float32) + 0.5 - x1) / (x2 - x1) * 2 - 1
    ys = (torch.arange(r0, r1, dtype=torch.float32) + 0.5 - y1) / (y2 - y1) * 2 - 1
    grid = torch.stack([xs[None, :].expand(len(ys), -1), ys[:, None].expand(-1, len(xs))], dim=-1)
    sampled = F.grid_sample(logits.reshape(1, 1, size, size).cpu(), grid[None], mode="bilinear",
                            padding_mode="border", align_corners=False)[0, 0]
    inside_x = (torch.arange(c0, c1) + 0.5 >= x1) & (torch.arange(c0, c1) + 0.5 <= x2)
    inside_y = (torch.arange(r0, r1) + 0.5 >= y1) & (torch.arange(r0, r1) + 0.5 <= y2)
    out[r0:r1, c0:c1] = torch.where(inside_y[:, None] & inside_x[None, :], sampled, torch.tensor(LOGIT_OUTSIDE))
    return out


def mean_colour(image: torch.Tensor, mask: np.ndarray) -> torch.Tensor | None:
    """Mean RGB (3,) of the (3, H, W) ``image`` under a (H, W) bool mask; None when the mask is empty."""
    if not mask.any():
        return None
    return image[:, torch.from_numpy(mask)].mean(dim=1)


def reference_vector(colour: torch.Tensor | None) -> torch.Tensor:
    """The segmenter's reference input: (r, g, b, 1) for a colour, zeros for none."""
    if colour is None:
        return torch.zeros(4)
    return torch.cat([colour.float(), torch.ones(1)])


def box_iou(a: BoxXYXY, b: BoxXYXY) -> float:
    """Intersection over union of two (x1, y1, x2, y2) boxes; 0 when both are empty."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def scale_box(box: BoxXYXY, size: int, width: int, height: int) -> BoxXYXY:
    """A box in the pixels of a ``size`` squared resize -> the same box in (width, height) frame pixels."""
    sx, sy = width / size, height / size
    return box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy


def padded(box: BoxXYXY, pad: float, width: int, height: int) -> BoxXYXY:
    """``box`` grown by ``pad`` pixels on each side, clipped to the frame."""
    x1, y1, x2, y2 = box
    return max(0.0, x1 - pad), max(0.0, y1 - pad), min(float(width), x2 + pad), min(float(height), y2 + pad)
