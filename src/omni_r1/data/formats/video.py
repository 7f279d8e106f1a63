"""The plain video layout: ``videos/<video_id>.<ext>`` plus ``annotations.jsonl``, one line per expression.

Each line: ``{"video_id", "exp_id", "expression", "type", "split", "objects": [{"obj_id", "masks":
[{"frame": i, "rle": RLE}]}]}`` and an optional ``cue`` (appearance/sound/time). Frames count decoded
frames at the native rate from 0; an unlisted frame has an empty mask. Videos are probed (header and
packet count, no pixel decoding) for frame count, displayed size, fps and audio.

Every line is read, decoded and typed in its own guard: a line that is not UTF-8, not JSON, nested
too deeply, too long, holds duplicate keys, or a value of the wrong type or size becomes an error row
naming ``annotations.jsonl:<line>`` and the check it broke; the other lines flow on. Lines are split at
``\\n`` only, so a raw U+2028 inside a JSON string does not shift every later line number.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from omni_r1.data.formats.common import (
    LayoutMissing,
    MAX_CUE_CHARS,
    RowProblem,
    check_expression,
    check_frame,
    check_id,
    check_text,
    check_type,
    duplicate_keys,
    error_row,
    masks_json,
    normalise_split,
    pairs_hook,
    read_lines,
    shown,
    utf8_line,
)
from omni_r1.data.masks import RleError, check_rle
from omni_r1.data.paths import PathEscapeError, safe_join
from omni_r1.data.video import MediaError, MediaProbe, probe
from omni_r1.types import ManifestRow

VIDEO_EXTENSIONS = (".mp4", ".mkv", ".webm", ".mov")
REQUIRED_KEYS = ("video_id", "exp_id", "expression", "type", "split", "objects")
ANNOTATIONS = "annotations.jsonl"
MAX_LINE_BYTES = 1 << 24  # 16 MiB: the masks of a long video fit; a longer line is refused unread


def read_video_layout(root: Path) -> list[ManifestRow]:
    """One manifest row per annotation line; bad lines become rows with ``ingest_error`` set."""
    annotations = root / ANNOTATIONS
    if not annotations.is_file():
        raise LayoutMissing(f"{annotations} not found; the plain video layout needs videos/ and {ANNOTATIONS}")
    probes: dict[str, MediaProbe | str] = {}
    rows = []
    for lineno, raw in read_lines(annotations, MAX_LINE_BYTES):
        where = f"{ANNOTATIONS}:{lineno}"
        if raw is None:
            rows.append(error_row("video", where, ANNOTATIONS, f"{where} is longer than {MAX_LINE_BYTES} bytes; "
                                  "split it or drop it (one expression per line)", check="line_length", line=where))
        elif raw.strip():
            rows.append(_row_from_line(root, raw, where, probes))
    return rows


def _parse_line(raw: bytes, where: str) -> dict[str, Any]:
    """The line as a JSON object, or ``RowProblem`` saying why not (encoding, syntax, nesting, keys)."""
    text = utf8_line(raw, where, ANNOTATIONS)
    try:
        record = json.loads(text, object_pairs_hook=pairs_hook, parse_constant=_no_constant)
    except json.JSONDecodeError as err:
        raise RowProblem("json", f"{where} is not JSON ({err.msg} at column {err.colno}); fix or remove the line") \
            from err
    except RecursionError as err:
        raise RowProblem("json", f"{where} is nested too deeply to be an annotation; fix or remove the line") from err
    except ValueError as err:  # NaN/Infinity, or an integer of more than 4300 digits
        raise RowProblem("json", f"{where} is not plain JSON ({err}); fix or remove the line") from err
    if not isinstance(record, dict):
        raise RowProblem("json", f"{where} must be a JSON object, got {type(record).__name__}; fix or remove the line")
    repeated = duplicate_keys(record)
    if repeated:
        raise RowProblem("duplicate_key", f"{where} gives key(s) {', '.join(repeated[:3])} more than once; "
                                          "keep one value per key")
    return record


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _row_from_line(root: Path, raw: bytes, where: str, probes: dict[str, MediaProbe | str]) -> ManifestRow:
    try:
        record = _parse_line(raw, where)
    except RowProblem as problem:
        return error_row("video", where, ANNOTATIONS, str(problem), check=problem.check, line=where)
    known = {k: record.get(k, "") for k in ("video_id", "exp_id", "split", "expression")}
    known["exp_type"] = record.get("type", "")
    sample_id = where
    try:
        missing = [k for k in REQUIRED_KEYS if k not in record]
        if missing:
            raise RowProblem("required_keys", f"{where} lacks key(s) {', '.join(missing)}; add them "
                                              "(see README, plain video layout)")
        video_id = check_id(record["video_id"], "video_id")
        exp_id = check_id(record["exp_id"], "exp_id")
        sample_id = f"{video_id}/{exp_id}"
        return _typed_row(root, record, video_id, exp_id, where, probes)
    except RowProblem as problem:
        return error_row("video", sample_id, ANNOTATIONS, f"{where}: {problem}" if where not in str(problem)
                         else str(problem), check=problem.check, line=where, **known)
    except _MediaProblem as problem:
        return error_row("video", sample_id, problem.file, problem.message, check=problem.check, line=where, **known)


class _MediaProblem(Exception):
    """The row's video cannot be used: the message names the video file, not the annotation."""

    def __init__(self, check: str, file: str, message: str) -> None:
        super().__init__(message)
        self.check, self.file, self.message = check, file, message


def _typed_row(root: Path, record: dict[str, Any], video_id: str, exp_id: str, where: str,
               probes: dict[str, MediaProbe | str]) -> ManifestRow:
    expression = check_expression(record["expression"])
    exp_type = check_type(record["type"])
    split = check_text(record["split"], "split", limit=64, check="known_split",
                       fix="set split to train, val or test")
    cue = record.get("cue", "")
    if not isinstance(cue, str) or len(cue) > MAX_CUE_CHARS:
        raise RowProblem("cue", f"cue must be a short string (appearance, sound or time), got {shown(cue)}")
    media = _probe(root, video_id, where, probes)
    objects = _objects(record["objects"], media)
    return ManifestRow(
        sample_id=f"{video_id}/{exp_id}",
        dataset="video",
        video_id=video_id,
        exp_id=exp_id,
        split=normalise_split(split),
        benchmark_split=split,
        expression=expression,
        exp_type=exp_type,
        cue=cue,
        media_kind="video",
        video_path=media_path(root, media),
        frame_paths=[],
        audio_path=media_path(root, media) if media.has_audio else "",
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
        source_line=where,
    )


def media_path(root: Path, media: MediaProbe) -> str:
    return Path(media.path).relative_to(root.resolve()).as_posix()


def _probe(root: Path, video_id: str, where: str, probes: dict[str, MediaProbe | str]) -> MediaProbe:
    """The probed video of ``video_id`` (cached per file), or ``_MediaProblem`` naming the file."""
    try:
        video_rel = _find_video(root, video_id)
    except PathEscapeError as err:
        raise _MediaProblem("path", f"videos/{video_id}", f"{where}: {err}") from err
    except FileNotFoundError as err:
        raise _MediaProblem("video_file", f"videos/{video_id}", f"{where}: {err}") from err
    media = probes.get(video_rel)
    if media is None:
        try:
            media = probe(root.resolve() / video_rel)
        except MediaError as err:
            media = str(err)
        probes[video_rel] = media
    if isinstance(media, str):
        raise _MediaProblem("media_readable", video_rel, media)
    return media


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


def _objects(raw: Any, media: MediaProbe) -> list[dict[str, Any]]:
    """Expand sparse per-object masks into one RLE-or-null per frame, each checked before it is kept.

    Frame indices must lie within the video and every RLE must have the displayed frame size, so no
    line can make a later stage allocate more than the video itself.
    """
    if not isinstance(raw, list):
        raise RowProblem("objects", f"'objects' must be a list, got {shown(raw)}")
    objects = []
    for index, obj in enumerate(raw):
        if not isinstance(obj, dict) or not isinstance(obj.get("masks", []), list):
            raise RowProblem("objects", f"objects[{index}] must be {{'obj_id': ..., 'masks': [{{'frame': i, "
                                        f"'rle': RLE}}]}}, got {shown(obj)}")
        obj_id = check_id(obj.get("obj_id", str(index)), f"objects[{index}].obj_id")
        frames: dict[int, Any] = {}
        for k, entry in enumerate(obj.get("masks", [])):
            at = f"objects[{index}].masks[{k}]"
            if not isinstance(entry, dict):
                raise RowProblem("objects", f"{at} must be {{'frame': i, 'rle': RLE}}, got {shown(entry)}")
            frame = check_frame(entry.get("frame"), media.num_frames, at)
            if frame in frames:
                raise RowProblem("frame_index", f"{at}: frame {frame} is listed twice for object {obj_id!r}")
            frames[frame] = _checked_rle(entry.get("rle"), (media.height, media.width), at)
        objects.append({"obj_id": obj_id, "rles": [frames.get(i) for i in range(media.num_frames)]})
    return objects


def _checked_rle(rle: Any, hw: tuple[int, int], at: str) -> Any:
    if rle is None:
        return None
    try:
        check_rle(rle, hw)
    except RleError as err:
        check = "rle_size" if "size" in str(err) else "rle_decodes"
        raise RowProblem(check, f"{at}: {err}; re-encode the mask as COCO RLE at the displayed frame size "
                                f"{hw[1]}x{hw[0]} (w x h)") from err
    return rle
