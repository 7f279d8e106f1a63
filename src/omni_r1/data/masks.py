"""COCO run-length encoding helpers (pycocotools), shared by every layout, validation and shards."""

from __future__ import annotations

from typing import Any

import numpy as np
from pycocotools import mask as coco_mask


class RleError(ValueError):
    """An RLE that cannot be decoded."""


def encode_rle(mask: np.ndarray) -> dict[str, Any]:
    """Encode a 2-D bool/0-1 mask as compressed COCO RLE with ``counts`` as str (JSON-safe)."""
    if mask.ndim != 2:
        raise ValueError(f"encode_rle expects a 2-D mask, got shape {mask.shape}")
    rle = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": rle["counts"].decode("ascii")}


def _to_coco(rle: dict[str, Any]) -> dict[str, Any]:
    if not isinstance(rle, dict) or "size" not in rle or "counts" not in rle:
        raise RleError(f"not a COCO RLE (needs 'size' and 'counts'): {str(rle)[:80]}")
    size = rle["size"]
    if not (isinstance(size, (list, tuple)) and len(size) == 2 and all(isinstance(s, int) and s > 0 for s in size)):
        raise RleError(f"RLE size must be [height, width] of positive ints, got {size!r}")
    counts = rle["counts"]
    if isinstance(counts, list):  # uncompressed RLE
        if sum(counts) != size[0] * size[1] or any((not isinstance(c, int)) or c < 0 for c in counts):
            raise RleError(f"uncompressed RLE counts do not sum to {size[0]}x{size[1]}")
        return coco_mask.frPyObjects(rle, size[0], size[1])
    if isinstance(counts, str):
        return {"size": list(size), "counts": counts.encode("ascii")}
    if isinstance(counts, bytes):
        return {"size": list(size), "counts": counts}
    raise RleError(f"RLE counts must be str or list, got {type(counts).__name__}")


def rle_size(rle: dict[str, Any]) -> tuple[int, int]:
    """(height, width) declared by an RLE."""
    return int(rle["size"][0]), int(rle["size"][1])


def decode_rle(rle: dict[str, Any]) -> np.ndarray:
    """Decode a COCO RLE (compressed or not) into a bool mask of its declared size.

    Raises ``RleError`` when the counts are corrupt: pycocotools silently decodes some corrupt
    strings, so the decoded pixel count is checked against the declared size.
    """
    coco = _to_coco(rle)
    try:
        decoded = coco_mask.decode(coco)
    except (ValueError, TypeError, UnicodeDecodeError) as err:
        raise RleError(f"RLE does not decode: {err}") from err
    h, w = rle_size(rle)
    if decoded.shape[:2] != (h, w):
        raise RleError(f"RLE decodes to {decoded.shape[:2]}, but declares {h}x{w}")
    if not _counts_consistent(coco, h * w):
        raise RleError(f"RLE counts do not cover exactly {h}x{w} pixels")
    return decoded.astype(bool)


def _counts_consistent(coco: dict[str, Any], n_pixels: int) -> bool:
    """True when the compressed counts add up to the image size (catches truncated strings)."""
    counts = _uncompress_counts(coco["counts"])
    return counts is not None and sum(counts) == n_pixels


def _uncompress_counts(s: bytes) -> list[int] | None:
    """Decode COCO's LEB128-like compressed counts (the inverse of rleToString in maskApi.c)."""
    counts: list[int] = []
    p = 0
    while p < len(s):
        x, k, more = 0, 0, True
        while more:
            if p >= len(s):
                return None
            c = s[p] - 48
            if c < 0 or c > 63:
                return None
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and (c & 0x10):
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        if x < 0:
            return None
        counts.append(x)
    return counts
