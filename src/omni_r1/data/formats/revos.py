"""The official ReVOS layout, parsed into manifest rows without decoding.

``JPEGImages/<video>/<frame>.jpg``; ``meta_expressions_{train,valid}_.json`` = ``{"videos": {video:
{"frames": [...], "expressions": {exp_id: {"exp", "anno_id", "obj_id", "type_id"}}}}}`` with type 0
referring, 1 reasoning, 2 null; ``mask_dict.json`` = ``{anno_id: [RLE or null per frame]}``. A
multi-object expression is the union of its anno_ids. ReVOS has no audio.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from omni_r1.data.formats.common import error_row, image_size, masks_json, normalise_split
from omni_r1.data.paths import PathEscapeError, safe_join
from omni_r1.types import ManifestRow

META_FILES = {"train": "meta_expressions_train_.json", "valid": "meta_expressions_valid_.json"}
TYPE_NAMES = {0: "referring", 1: "reasoning", 2: "null"}


def read_revos_layout(root: Path, fps: float) -> list[ManifestRow]:
    """One row per (video, expression) over both meta files that exist."""
    present = {split: root / name for split, name in META_FILES.items() if (root / name).is_file()}
    if not present:
        raise FileNotFoundError(f"no {' or '.join(META_FILES.values())} under {root}; is this a ReVOS root?")
    mask_dict = _load_json(root / "mask_dict.json")
    rows: list[ManifestRow] = []
    for split, meta_path in present.items():
        meta = _load_json(meta_path)
        for video, entry in sorted(meta.get("videos", {}).items()):
            rows.extend(_video_rows(root, split, video, entry, mask_dict, fps))
    return rows


def _load_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; ReVOS needs it next to JPEGImages/")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err.msg} at line {err.lineno}); re-download it") from err
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object")
    return data


def _video_rows(root: Path, split: str, video: str, entry: dict[str, Any], mask_dict: dict[str, Any],
                fps: float) -> list[ManifestRow]:
    expressions = entry.get("expressions", {}) if isinstance(entry, dict) else {}
    frame_names = [str(f) for f in entry.get("frames", [])] if isinstance(entry, dict) else []
    try:
        frames = [safe_join(root, f"JPEGImages/{video}/{name}.jpg") for name in frame_names]
    except PathEscapeError as err:
        return [error_row("revos", f"{video}/{exp_id}", f"JPEGImages/{video}", str(err), video_id=video,
                          exp_id=exp_id, split=split) for exp_id in expressions]
    size = image_size(frames[0]) if frames else None
    rows = []
    for exp_id, exp in sorted(expressions.items()):
        known = dict(video_id=video, exp_id=exp_id, split=split, expression=exp.get("exp", ""),
                     exp_type=TYPE_NAMES.get(exp.get("type_id"), str(exp.get("type_id"))))
        sample_id = f"{video}/{exp_id}"
        if size is None:
            rows.append(error_row("revos", sample_id, f"JPEGImages/{video}/",
                                  f"JPEGImages/{video}/ has no readable first frame; extract the video's frames",
                                  **known))
            continue
        missing = [a for a in exp.get("anno_id", []) if str(a) not in mask_dict]
        if missing:
            rows.append(error_row("revos", sample_id, "mask_dict.json", f"anno_id(s) {missing} of {sample_id} are "
                                  "not in mask_dict.json; use the mask_dict.json that matches this meta file", **known))
            continue
        objects = [{"obj_id": str(a), "rles": list(mask_dict[str(a)])} for a in exp.get("anno_id", [])]
        rows.append(ManifestRow(
            sample_id=sample_id, dataset="revos", video_id=video, exp_id=str(exp_id),
            split=normalise_split(split), benchmark_split=split, expression=str(exp.get("exp", "")),
            exp_type=str(known["exp_type"]), cue="", media_kind="frames", video_path="",
            frame_paths=[f.relative_to(root.resolve()).as_posix() for f in frames], audio_path="",
            has_audio=False, audio_channels=0, audio_rate=0, fps=fps, num_frames=len(frames),
            width=size[0], height=size[1], mask_kind="rle" if objects else "none", masks_json=masks_json(objects),
            needs_audio=False,
        ))
    return rows
