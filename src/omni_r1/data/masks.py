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


MAX_MASK_PIXELS = 1 << 26  # 8192 x 8192: a declared size beyond this is refused before anything is allocated
MAX_RLE_COUNTS = 1 << 22  # runs in one RLE (a mask of that many alternations is not a mask)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_rle(rle: Any, expected: tuple[int, int] | None = None) -> list[int]:
    """The run lengths of a COCO RLE, checked without decoding pixels; ``RleError`` says what is wrong.

    Checks the shape of the record, the size (positive ints, at most ``MAX_MASK_PIXELS``, equal to
    ``expected`` (height, width) when given), the type of ``counts``, and that the runs cover exactly
    height x width pixels. Nothing of the declared size is allocated.
    """
    if not isinstance(rle, dict) or "size" not in rle or "counts" not in rle:
        raise RleError(f"not a COCO RLE (needs 'size' and 'counts'): {str(rle)[:80]}")
    size = rle["size"]
    if not (isinstance(size, (list, tuple)) and len(size) == 2 and all(_is_int(s) and s > 0 for s in size)):
        raise RleError(f"RLE size must be [height, width] of positive ints, got {str(size)[:80]}")
    h, w = int(size[0]), int(size[1])
    if expected is not None and (h, w) != tuple(expected):
        raise RleError(f"RLE size {h}x{w} is not the displayed frame size {expected[0]}x{expected[1]} (h x w)")
    if h * w > MAX_MASK_PIXELS:
        raise RleError(f"RLE size {h}x{w} is over {MAX_MASK_PIXELS} pixels")
    counts = rle["counts"]
    if isinstance(counts, list):  # uncompressed RLE
        if len(counts) > MAX_RLE_COUNTS or not all(_is_int(c) and c >= 0 for c in counts):
            raise RleError("uncompressed RLE counts must be a list of non-negative ints")
        runs = [int(c) for c in counts]
    elif isinstance(counts, (str, bytes)):
        raw = counts.encode("ascii", "replace") if isinstance(counts, str) else counts
        if len(raw) > 6 * MAX_RLE_COUNTS or (isinstance(counts, str) and not counts.isascii()):
            raise RleError("compressed RLE counts must be an ASCII string of COCO's run-length code")
        decoded = _uncompress_counts(raw)
        if decoded is None:
            raise RleError("RLE does not decode: its compressed counts are not COCO's run-length code")
        runs = decoded
    else:
        raise RleError(f"RLE counts must be str or list, got {type(counts).__name__}")
    if sum(runs) != h * w:
        raise RleError(f"RLE counts do not cover exactly {h}x{w} pixels")
    return runs


def _to_coco(rle: dict[str, Any]) -> dict[str, Any]:
    check_rle(rle)
    size, counts = rle["size"], rle["counts"]
    if isinstance(counts, list):
        return coco_mask.frPyObjects(rle, size[0], size[1])
    if isinstance(counts, str):
        return {"size": list(size), "counts": counts.encode("ascii")}
    return {"size": list(size), "counts": counts}


def rle_size(rle: dict[str, Any]) -> tuple[int, int]:
    """(height, width) declared by an RLE."""
    return int(rle["size"][0]), int(rle["size"][1])


def decode_rle(rle: dict[str, Any]) -> np.ndarray:
    """Decode a COCO RLE (compressed or not) into a bool mask of its declared size.

    Raises ``RleError`` when the record or its counts are corrupt: pycocotools silently decodes some
    corrupt strings, so the runs are checked against the declared size first (``check_rle``).
    """
    coco = _to_coco(rle)  # checks the counts cover the declared size before anything is allocated
    try:
        decoded = coco_mask.decode(coco)
    except (ValueError, TypeError, UnicodeDecodeError) as err:
        raise RleError(f"RLE does not decode: {err}") from err
    h, w = rle_size(rle)
    if decoded.shape[:2] != (h, w):
        raise RleError(f"RLE decodes to {decoded.shape[:2]}, but declares {h}x{w}")
    return decoded.astype(bool)


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
