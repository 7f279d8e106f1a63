"""Shared helpers for the layout parsers: split/type normalisation and the manifest row builder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from omni_r1.types import BENCHMARK_SPLITS, ManifestRow


def normalise_split(raw: str) -> str:
    """Map a benchmark's split name onto train/val/test; an unknown name is kept so validation flags it."""
    return BENCHMARK_SPLITS.get(raw, raw)


def image_size(path: Path) -> tuple[int, int] | None:
    """(width, height) from an image header without decoding pixels; None when it does not open."""
    try:
        with Image.open(path) as img:
            return img.size
    except (OSError, UnidentifiedImageError):
        return None


def masks_json(objects: list[dict[str, Any]]) -> str:
    return json.dumps({"objects": objects}, sort_keys=True)


def error_row(dataset: str, sample_id: str, source: str, error: str, **known: Any) -> ManifestRow:
    """A row for an annotation that could not be parsed; validation quarantines it with ``error``."""
    defaults: dict[str, Any] = dict(
        sample_id=sample_id,
        dataset=dataset,
        video_id=str(known.get("video_id", "")),
        exp_id=str(known.get("exp_id", "")),
        split=str(known.get("split", "")),
        benchmark_split=str(known.get("split", "")),
        expression=str(known.get("expression", "")),
        exp_type=str(known.get("exp_type", "")),
        cue="",
        media_kind="video" if dataset == "video" else "frames",
        video_path=source if dataset == "video" else "",
        frame_paths=[],
        audio_path="",
        has_audio=False,
        audio_channels=0,
        audio_rate=0,
        fps=0.0,
        num_frames=0,
        width=0,
        height=0,
        mask_kind="none",
        masks_json=masks_json([]),
        ingest_error=error,
    )
    return ManifestRow(**defaults)
