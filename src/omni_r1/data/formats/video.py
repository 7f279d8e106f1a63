"""The plain video layout: ``videos/<video_id>.<ext>`` plus ``annotations.jsonl``, one line per expression.

Each line: ``{"video_id", "exp_id", "expression", "type", "split", "objects": [{"obj_id", "masks":
[{"frame": i, "rle": RLE}]}]}`` and an optional ``cue`` (appearance/sound/time). Frames count decoded
frames at the native rate from 0; an unlisted frame has an empty mask. Videos are probed (header and
packet count, no pixel decoding) for frame count, displayed size, fps and audio.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from omni_r1.data.formats.common import error_row, masks_json, normalise_split
from omni_r1.data.paths import PathEscapeError, safe_join
from omni_r1.data.video import MediaError, MediaProbe, probe
from omni_r1.types import ManifestRow

VIDEO_EXTENSIONS = (".mp4", ".mkv", ".webm", ".mov")
REQUIRED_KEYS = ("video_id", "exp_id", "expression", "type", "split", "objects")


def read_video_layout(root: Path) -> list[ManifestRow]:
    """One manifest row per annotation line; bad lines become rows with ``ingest_error`` set."""
    annotations = root / "annotations.jsonl"
    if not annotations.is_file():
        raise FileNotFoundError(f"{annotations} not found; the plain video layout needs videos/ and annotations.jsonl")
    probes: dict[str, MediaProbe | str] = {}
    rows = []
    for lineno, line in enumerate(annotations.read_text().splitlines(), start=1):
        if line.strip():
            rows.append(_row_from_line(root, line, lineno, probes))
    return rows


def _row_from_line(root: Path, line: str, lineno: int, probes: dict[str, MediaProbe | str]) -> ManifestRow:
    where = f"annotations.jsonl:{lineno}"
    try:
        record = json.loads(line)
    except json.JSONDecodeError as err:
        return error_row("video", where, "annotations.jsonl", f"{where} is not JSON ({err.msg}); fix or remove the line")
    if not isinstance(record, dict):
        return error_row("video", where, "annotations.jsonl", f"{where} must be a JSON object; fix or remove the line")
    missing = [k for k in REQUIRED_KEYS if k not in record]
    known = dict(video_id=record.get("video_id", ""), exp_id=record.get("exp_id", ""), split=record.get("split", ""),
                 expression=record.get("expression", ""), exp_type=record.get("type", ""))
    sample_id = f"{record.get('video_id', '?')}/{record.get('exp_id', lineno)}"
    if missing:
        return error_row("video", sample_id, "annotations.jsonl",
                         f"{where} lacks key(s) {', '.join(missing)}; add them (see README, plain video layout)", **known)
    video_id = str(record["video_id"])
    try:
        video_rel = _find_video(root, video_id)
    except (PathEscapeError, FileNotFoundError) as err:
        return error_row("video", sample_id, f"videos/{video_id}", f"{where}: {err}", **known)
    media = probes.get(video_rel)
    if media is None:
        try:
            media = probe(root / video_rel)
        except MediaError as err:
            media = str(err)
        probes[video_rel] = media
    if isinstance(media, str):
        return error_row("video", sample_id, video_rel, media, **known)
    objects, problem = _objects(record["objects"], media.num_frames)
    if problem:
        return error_row("video", sample_id, video_rel, f"{where}: {problem}", **known)
    cue = str(record.get("cue", ""))
    split = str(record["split"])
    return ManifestRow(
        sample_id=sample_id,
        dataset="video",
        video_id=video_id,
        exp_id=str(record["exp_id"]),
        split=normalise_split(split),
        benchmark_split=split,
        expression=str(record["expression"]),
        exp_type=str(record["type"]),
        cue=cue,
        media_kind="video",
        video_path=video_rel,
        frame_paths=[],
        audio_path=video_rel if media.has_audio else "",
        has_audio=media.has_audio,
        audio_channels=media.audio_channels,
        audio_rate=media.audio_rate,
        fps=media.fps,
        num_frames=media.num_frames,
        width=media.width,
        height=media.height,
        mask_kind="rle" if objects else "none",
        masks_json=masks_json(objects),
        needs_audio=cue == "sound",
    )


def _find_video(root: Path, video_id: str) -> str:
    videos = root / "videos"
    for ext in VIDEO_EXTENSIONS:
        candidate = safe_join(videos, f"{video_id}{ext}")
        if candidate.is_file():
            return candidate.relative_to(root.resolve()).as_posix()
    raise FileNotFoundError(
        f"no video file for video_id {video_id!r} under {videos} (looked for {', '.join(VIDEO_EXTENSIONS)}); "
        "add the file or fix the video_id"
    )


def _objects(raw: Any, num_frames: int) -> tuple[list[dict[str, Any]], str]:
    """Expand sparse per-object masks into one RLE-or-null per frame.

    A mask on a frame past the end lengthens the list, so validation reports the count mismatch
    instead of the mask being dropped here.
    """
    if not isinstance(raw, list):
        return [], "'objects' must be a list"
    objects = []
    for obj in raw:
        if not isinstance(obj, dict) or not isinstance(obj.get("masks", []), list):
            return [], "each object must be {'obj_id': ..., 'masks': [{'frame': i, 'rle': RLE}]}"
        frames = {}
        for entry in obj.get("masks", []):
            if not isinstance(entry, dict) or not isinstance(entry.get("frame"), int) or entry["frame"] < 0:
                return [], f"object {obj.get('obj_id')!r} has a mask entry without a non-negative int 'frame'"
            frames[entry["frame"]] = entry.get("rle")
        length = max([num_frames, *(f + 1 for f in frames)])
        objects.append({"obj_id": str(obj.get("obj_id", len(objects))), "rles": [frames.get(i) for i in range(length)]})
    return objects, ""
