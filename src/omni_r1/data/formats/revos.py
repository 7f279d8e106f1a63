"""The official ReVOS layout, parsed into manifest rows without decoding.

``JPEGImages/<video>/<frame>.jpg``; ``meta_expressions_{train,valid}_.json`` = ``{"videos": {video:
{"frames": [...], "expressions": {exp_id: {"exp", "anno_id", "obj_id", "type_id"}}}}}`` with type 0
referring, 1 reasoning, 2 null; ``mask_dict.json`` = ``{anno_id: [RLE or null per frame]}``. A
multi-object expression is the union of its anno_ids. ReVOS has no audio.

A meta file that is not JSON at all stops ingest with one message naming it (there is no row to keep).
Inside it, every video and every expression is typed in its own guard: a bad value becomes an error
row naming its JSON path (``meta_expressions_train_.json:videos.<video>.expressions.<id>``), and the
other expressions flow on. Masks are checked against the frame count and the first frame's size here,
before anything is decoded.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from omni_r1.data.formats.common import (
    LayoutError,
    LayoutMissing,
    RowProblem,
    check_expression,
    check_id,
    duplicate_keys,
    error_row,
    image_size,
    masks_json,
    normalise_split,
    pairs_hook,
    shown,
)
from omni_r1.data.masks import RleError, check_rle
from omni_r1.data.paths import PathEscapeError, safe_join
from omni_r1.types import ManifestRow

META_FILES = {"train": "meta_expressions_train_.json", "valid": "meta_expressions_valid_.json"}
MASK_DICT = "mask_dict.json"
TYPE_NAMES = {0: "referring", 1: "reasoning", 2: "null"}


def read_revos_layout(root: Path, fps: float) -> list[ManifestRow]:
    """One row per (video, expression) over both meta files that exist."""
    present = {split: root / name for split, name in META_FILES.items() if (root / name).is_file()}
    if not present:
        raise LayoutMissing(f"no {' or '.join(META_FILES.values())} under {root}; is this a ReVOS root?")
    mask_dict = _load_json(root / MASK_DICT)
    rows: list[ManifestRow] = []
    for split, meta_path in present.items():
        meta = _load_json(meta_path)
        videos = meta.get("videos", {})
        if not isinstance(videos, dict):
            raise LayoutError(f"{meta_path}: 'videos' must be an object of video name -> entry, got "
                             f"{type(videos).__name__}; use the official meta file")
        repeated = set(getattr(videos, "duplicates", ()))
        for video, entry in sorted(videos.items()):
            where = f"{meta_path.name}:videos.{video}"
            if video in repeated:
                rows.append(error_row("revos", f"{video}", meta_path.name, f"{where} is given more than once; keep "
                                      "one entry per video", check="duplicate_key", line=where, video_id=video,
                                      split=split))
                continue
            rows.extend(_video_rows(root, split, video, entry, mask_dict, fps, where))
    return rows


def _load_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise LayoutMissing(f"{path} not found; ReVOS needs it next to JPEGImages/")
    try:
        data = json.loads(path.read_bytes().decode("utf-8-sig"), object_pairs_hook=pairs_hook)
    except UnicodeDecodeError as err:
        raise LayoutError(f"{path} is not UTF-8 (byte {err.start}); save it as UTF-8 or re-download it") from err
    except json.JSONDecodeError as err:
        raise LayoutError(f"{path} is not valid JSON ({err.msg} at line {err.lineno}); re-download it") from err
    except RecursionError as err:
        raise LayoutError(f"{path} is nested too deeply to be a ReVOS file; re-download it") from err
    if not isinstance(data, dict):
        raise LayoutError(f"{path} must hold a JSON object")
    return data


def _video_rows(root: Path, split: str, video: Any, entry: Any, mask_dict: dict[str, Any], fps: float,
                where: str) -> list[ManifestRow]:
    """The rows of one video; a problem with the video itself quarantines each of its expressions."""
    expressions = entry.get("expressions") if isinstance(entry, dict) else None
    if not isinstance(expressions, dict) or not expressions:
        return [error_row("revos", str(video), where.split(":")[0],
                          f"{where} must be {{'frames': [...], 'expressions': {{id: {{...}}}}}}, got {shown(entry)}",
                          check="json_shape", line=where, video_id=str(video), split=split)]
    try:
        check_id(video, "video name")
        frames, size = _frames(root, video, entry, where)
    except RowProblem as problem:
        return [error_row("revos", f"{video}/{exp_id}", getattr(problem, "file", where.split(":")[0]), str(problem),
                          check=problem.check, line=f"{where}.expressions.{exp_id}", video_id=str(video),
                          exp_id=str(exp_id), split=split) for exp_id in sorted(expressions)]
    repeated = set(getattr(expressions, "duplicates", ()))
    rows = []
    for exp_id, exp in sorted(expressions.items()):
        at = f"{where}.expressions.{exp_id}"
        known = {"video_id": video, "exp_id": exp_id, "split": split}
        try:
            if exp_id in repeated:
                raise RowProblem("duplicate_key", f"{at} is given more than once; keep one entry per expression id")
            rows.append(_expression_row(video, exp_id, exp, split, frames, size, mask_dict, fps, at, root))
        except RowProblem as problem:
            if isinstance(exp, dict):
                known.update(expression=exp.get("exp", ""), exp_type=TYPE_NAMES.get(exp.get("type_id"), ""))
            rows.append(error_row("revos", f"{video}/{exp_id}", getattr(problem, "file", at.split(":")[0]),
                                  str(problem) if str(problem).startswith(at) else f"{at}: {problem}",
                                  check=problem.check, line=at, **known))
    return rows


class _FileProblem(RowProblem):
    """A problem whose file to look at is media (frames), not the meta file."""

    def __init__(self, check: str, file: str, message: str) -> None:
        super().__init__(check, message)
        self.file = file


def _frames(root: Path, video: str, entry: dict[str, Any], where: str) -> tuple[list[Path], tuple[int, int]]:
    names = entry.get("frames")
    if not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names):
        raise RowProblem("json_shape", f"{where}.frames must be a non-empty list of frame names, got {shown(names)}")
    try:
        frames = [safe_join(root, f"JPEGImages/{video}/{name}.jpg") for name in names]
    except PathEscapeError as err:
        raise _FileProblem("path", f"JPEGImages/{video}", f"{where}.frames: {err}") from err
    size = image_size(frames[0])
    if size is None:
        raise _FileProblem("frames_present", f"JPEGImages/{video}/",
                           f"JPEGImages/{video}/ has no readable first frame; extract the video's frames")
    return frames, size


def _expression_row(video: str, exp_id: str, exp: Any, split: str, frames: list[Path], size: tuple[int, int],
                    mask_dict: dict[str, Any], fps: float, at: str, root: Path) -> ManifestRow:
    if not isinstance(exp, dict):
        raise RowProblem("json_shape", f"{at} must be an object {{'exp', 'anno_id', 'obj_id', 'type_id'}}, got "
                                       f"{shown(exp)}")
    repeated = duplicate_keys(exp)
    if repeated:
        raise RowProblem("duplicate_key", f"{at} gives key(s) {', '.join(repeated[:3])} more than once")
    check_id(exp_id, "expression id")
    expression = check_expression(exp.get("exp"))
    type_id = exp.get("type_id")
    if isinstance(type_id, bool) or type_id not in TYPE_NAMES:
        raise RowProblem("known_type", f"{at}.type_id must be 0 (referring), 1 (reasoning) or 2 (null), got "
                                       f"{shown(type_id)}")
    objects = _objects(exp.get("anno_id", []), mask_dict, len(frames), (size[1], size[0]), at)
    sample_id = f"{video}/{exp_id}"
    return ManifestRow(
        sample_id=sample_id, dataset="revos", video_id=video, exp_id=str(exp_id),
        split=normalise_split(split), benchmark_split=split, expression=expression,
        exp_type=TYPE_NAMES[type_id], cue="", media_kind="frames", video_path="",
        frame_paths=[f.relative_to(root.resolve()).as_posix() for f in frames], audio_path="",
        has_audio=False, audio_channels=0, audio_rate=0, fps=fps, num_frames=len(frames),
        width=size[0], height=size[1], mask_kind="rle" if objects else "none", masks_json=masks_json(objects),
        needs_audio=False, source_line=at,
    )


def _objects(anno_ids: Any, mask_dict: dict[str, Any], num_frames: int, hw: tuple[int, int],
             at: str) -> list[dict[str, Any]]:
    """One object per anno_id, its masks checked: one entry per frame, each null or an RLE of the frame size."""
    if not isinstance(anno_ids, list) or not all(isinstance(a, (str, int)) and not isinstance(a, bool)
                                                 for a in anno_ids):
        raise RowProblem("json_shape", f"{at}.anno_id must be a list of ids, got {shown(anno_ids)}")
    missing = [a for a in anno_ids if str(a) not in mask_dict]
    if missing:
        raise _FileProblem("mask_present", MASK_DICT, f"anno_id(s) {missing[:5]} of {at} are not in {MASK_DICT}; "
                           f"use the {MASK_DICT} that matches this meta file")
    objects = []
    for anno in anno_ids:
        rles = mask_dict[str(anno)]
        if not isinstance(rles, list):
            raise _FileProblem("json_shape", MASK_DICT, f"{MASK_DICT}:{anno} must be a list of RLE or null per frame")
        if len(rles) != num_frames:
            raise _FileProblem("mask_count", MASK_DICT, f"{MASK_DICT}:{anno} has {len(rles)} masks for "
                               f"{num_frames} frames; re-export one mask per frame")
        for t, rle in enumerate(rles):
            if rle is not None:
                try:
                    check_rle(rle, hw)
                except RleError as err:
                    raise _FileProblem("rle_size" if "size" in str(err) else "rle_decodes", MASK_DICT,
                                       f"{MASK_DICT}:{anno}[{t}]: {err}; re-encode it at the frame size "
                                       f"{hw[1]}x{hw[0]} (w x h)") from err
        objects.append({"obj_id": str(anno), "rles": list(rles)})
    return objects
