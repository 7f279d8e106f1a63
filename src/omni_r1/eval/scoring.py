"""Score prediction PNGs in the official layouts against the benchmarks' own annotation files (spec.md 4, 5).

ReVOS (as cilinyan/VISA ``tools/eval_revos.py``): predictions are ``<pred_dir>/<video>/<exp_id>/<frame>.png``
holding raw grey levels (0/255). Per expression J, F, A, R are means over the video's frames, reported x100
and rounded to 2 decimals, JF = round(100 (J + F) / 2, 2) from the unrounded means. The summary has the
official keys and nesting, ``{"referring": {J, F, A, R, JF}, "reason": {...}, "overall": {...}}``: a type's
J, F, A, R are means over its expressions, its JF is (J + F) / 2 of those means, and overall is the mean of
the two types. Null expressions (type_id 2) are scored and kept in the per-expression rows, but, as in the
official tool, they enter neither type nor overall. A type without expressions has ``None`` values (the
official tool would write NaN).

RefAVS (as GeWu-Lab/Ref-AVS): predictions mirror the truth, ``<pred_dir>/<vid>/fid_<fid>/0000{i}.png``. Every
metadata row of the split is one clip of 10 frames; both masks are resized to 256x256 as ``cv2.resize`` does,
then ``> 0``, and the binary prediction is scored as probabilities 0/1 (logits of +-infinity). Split values
are means over clips, as fractions.

Differences from the official tools, all loud: a missing prediction, a video or frame count that does not
match, or a prediction whose size differs from the truth raises (the official ReVOS tool prints and scores the
expression 0); predictions must be 8-bit greyscale PNGs.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from omni_r1.data.masks import decode_rle
from omni_r1.data.paths import safe_join
from omni_r1.eval.metrics import (
    REFAVS_SIZE,
    cv2_bgr2gray_u8,
    cv2_resize_linear_u8,
    refavs_fscore,
    refavs_miou,
    refavs_null_s,
    revos_expression_metrics,
)

REVOS_TYPES = {0: "referring", 1: "reason", 2: "null"}
REVOS_SUMMARY_TYPES = ("referring", "reason")
REVOS_KEYS = ("J", "F", "A", "R", "JF")
REVOS_BINARY_KEYS = ("A_binary", "R_binary")
REFAVS_FRAMES = 10
REFAVS_SPLITS = ("test_s", "test_u", "test_n")
REFAVS_NOTE = (
    "binary prediction masks are scored as probabilities 0/1, i.e. as logits of +-infinity "
    "(the official code applies a sigmoid to model logits)"
)


class ScoringError(ValueError):
    """Annotation files or predictions that do not fit the layout being scored."""


class MissingPredictionError(FileNotFoundError):
    """A prediction PNG the layout requires is not there."""


# ----------------------------------------------------------------------------------------------- files


def _load_json(path: Path) -> Any:
    try:
        with Path(path).open() as fh:
            return json.load(fh)
    except FileNotFoundError as err:
        raise ScoringError(f"{path} does not exist; pass the benchmark's own annotation file") from err
    except json.JSONDecodeError as err:
        raise ScoringError(f"{path} is not valid JSON ({err}); re-download or regenerate it") from err


def _read_png(path: Path, colour_ok: bool, truth: bool = False) -> np.ndarray:
    """A mask PNG as ``(H, W)`` uint8 (``(H, W, 3)`` for colour files when ``colour_ok``), as cv2 reads it.

    Mode L is the raw grey level and mode 1 reads as 0/255, as cv2's PNG decoder expands 1-bit grey.
    A missing prediction raises ``MissingPredictionError``; a missing truth file raises ``ScoringError``.
    """
    if not path.is_file():
        if truth:
            raise ScoringError(f"missing truth mask {path}; the benchmark root is incomplete")
        raise MissingPredictionError(
            f"missing prediction {path}; write one PNG per frame in the official layout (no frame is scored as empty)"
        )
    with Image.open(path) as img:
        mode = img.mode
        if mode == "L":
            return np.asarray(img, dtype=np.uint8).copy()
        if mode == "1":
            return np.where(np.asarray(img), 255, 0).astype(np.uint8)
        if colour_ok and mode in ("RGB", "RGBA", "P"):
            return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()
    raise ScoringError(f"{path} is a mode-{mode} PNG; write masks as 8-bit greyscale (mode L, 0/255)")


# ----------------------------------------------------------------------------------------------- ReVOS


def _decode_foreground(entry: Any, video: str, frame: int) -> np.ndarray:
    """The foreground mask of one frame as uint8: one RLE, or a list of RLEs summed (as the official tool)."""
    if isinstance(entry, dict):
        return decode_rle(entry).astype(np.uint8)
    if isinstance(entry, list) and entry and all(isinstance(r, dict) for r in entry):
        return np.sum([decode_rle(r) for r in entry], axis=0, dtype=np.uint64).astype(np.uint8)
    raise ScoringError(
        f"mask_dict_foreground.json: video {video!r} frame {frame} has no foreground RLE ({str(entry)[:40]}); "
        "regenerate the foreground file (VISA tools/generate_foreground_mask.py)"
    )


def _revos_truth(
    mask_dict: dict[str, Any], anno_ids: list[Any], n_frames: int, shape: tuple[int, int], where: str
) -> np.ndarray:
    """``(T, H, W)`` uint8 sum of the expression's decoded RLEs (null entries are empty frames)."""
    truth = np.zeros((n_frames, *shape), dtype=np.uint8)
    for anno in anno_ids:
        track = mask_dict.get(str(anno))
        if not isinstance(track, list) or len(track) != n_frames:
            found = "missing" if track is None else f"{len(track) if isinstance(track, list) else 'not a list'}"
            raise ScoringError(
                f"mask_dict.json: anno_id {anno} of {where} needs a list of {n_frames} RLEs (one per frame), "
                f"found {found}; use the mask_dict.json that belongs to this meta file"
            )
        for i, rle in enumerate(track):
            if rle is None:
                continue
            mask = decode_rle(rle)
            if mask.shape != shape:
                raise ScoringError(f"mask_dict.json: anno_id {anno} frame {i} is {mask.shape}, the video is {shape}")
            truth[i] += mask.astype(np.uint8)  # uint8 sum: 2 where two objects overlap
    return truth


def _revos_video_arrays(
    pred_dir: Path, video: str, exp_id: str, frames: list[str], foreground: np.ndarray
) -> np.ndarray:
    """``(T, H, W)`` uint8 raw prediction grey levels of one expression, checked against the video's size."""
    preds = np.zeros_like(foreground)
    for i, name in enumerate(frames):
        path = safe_join(pred_dir, f"{video}/{exp_id}/{name}.png")
        pred = _read_png(path, colour_ok=False)
        if pred.shape != foreground.shape[1:]:
            raise ScoringError(f"{path} is {pred.shape}, but video {video!r} is {foreground.shape[1:]}")
        preds[i] = pred
    return preds


def _round2(value: float) -> float:
    """x100 values rounded as the official tool does (numpy's round on a float64)."""
    return float(np.round(np.float64(value), 2))


def score_revos_expressions(
    meta_path: Path, mask_dict_path: Path, foreground_path: Path, pred_dir: Path
) -> list[dict[str, Any]]:
    """One row per (video, expression) of the meta file, in file order, for the per-sample JSONL.

    Keys: video_name, exp_id, exp, videxp, type_id, type (referring / reason / null), frames, and J, F, JF, A,
    R, A_binary, R_binary as x100 values rounded to 2 decimals (official definitions; the binary pair is the
    corrected A/R).
    """
    meta = _load_json(meta_path)
    videos = meta.get("videos") if isinstance(meta, dict) else None
    if not isinstance(videos, dict):
        raise ScoringError(f"{meta_path} has no 'videos' object; pass meta_expressions_<split>_.json")
    mask_dict = _load_json(mask_dict_path)
    fg_dict = _load_json(foreground_path)
    if not isinstance(mask_dict, dict) or not isinstance(fg_dict, dict):
        raise ScoringError(f"{mask_dict_path} and {foreground_path} must each hold one JSON object")
    rows: list[dict[str, Any]] = []
    for video, info in videos.items():
        frames = [str(f) for f in info["frames"]]
        fg_entry = fg_dict.get(video)
        if not isinstance(fg_entry, dict) or len(fg_entry.get("masks_rle", [])) != len(frames):
            raise ScoringError(
                f"{foreground_path} needs {len(frames)} foreground RLEs for video {video!r}; use the file that "
                f"belongs to {meta_path}"
            )
        foreground = np.stack(
            [_decode_foreground(e, video, i) for i, e in enumerate(fg_entry["masks_rle"])]
        )
        for exp_id, exp in info["expressions"].items():
            where = f"video {video!r} expression {exp_id!r}"
            truth = _revos_truth(mask_dict, list(exp.get("anno_id", [])), len(frames), foreground.shape[1:], where)
            preds = _revos_video_arrays(pred_dir, video, str(exp_id), frames, foreground)
            m = revos_expression_metrics(truth, preds, foreground)
            type_id = int(exp["type_id"])
            rows.append(
                {
                    "video_name": video,
                    "exp_id": str(exp_id),
                    "exp": exp.get("exp", ""),
                    "videxp": f"{video}_{exp_id}",
                    "type_id": type_id,
                    "type": REVOS_TYPES.get(type_id, "unknown"),
                    "frames": len(frames),
                    "J": _round2(100 * np.float64(m["J"])),
                    "F": _round2(100 * np.float64(m["F"])),
                    "JF": _round2(100 * (np.float64(m["J"]) + np.float64(m["F"])) / 2),
                    "A": _round2(100 * np.float64(m["A"])),
                    "R": _round2(100 * np.float64(m["R"])),
                    "A_binary": _round2(100 * np.float64(m["A_binary"])),
                    "R_binary": _round2(100 * np.float64(m["R_binary"])),
                }
            )
    return rows


def _type_means(rows: list[dict[str, Any]], keys: tuple[str, ...]) -> dict[str, dict[str, float | None]]:
    """Per summary type, the mean over its expressions of each key (None for a type with no expressions)."""
    out: dict[str, dict[str, float | None]] = {}
    for name in REVOS_SUMMARY_TYPES:
        chosen = [r for r in rows if r["type"] == name]
        out[name] = {k: float(np.array([r[k] for r in chosen]).mean()) if chosen else None for k in keys}
    return out


def _mean2(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else (a + b) / 2


def summarize_revos(rows: list[dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    """The official summary of ``score_revos_expressions`` rows: referring, reason and overall {J, F, A, R, JF}."""
    means = _type_means(rows, ("J", "F", "A", "R"))
    summary: dict[str, dict[str, float | None]] = {}
    for name in REVOS_SUMMARY_TYPES:
        t = means[name]
        summary[name] = {**t, "JF": _mean2(t["J"], t["F"])}
    ref, rea = summary["referring"], summary["reason"]
    summary["overall"] = {k: _mean2(ref[k], rea[k]) for k in REVOS_KEYS}
    return summary


def summarize_revos_binary(rows: list[dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    """The corrected A/R in the same nesting: {referring, reason, overall: {A_binary, R_binary}}."""
    summary = _type_means(rows, REVOS_BINARY_KEYS)
    summary["overall"] = {k: _mean2(summary["referring"][k], summary["reason"][k]) for k in REVOS_BINARY_KEYS}
    return summary


def score_revos(meta_path: Path, mask_dict_path: Path, foreground_path: Path, pred_dir: Path) -> dict[str, Any]:
    """The official ReVOS summary for predictions under ``pred_dir`` (see the module docstring)."""
    return summarize_revos(
        score_revos_expressions(Path(meta_path), Path(mask_dict_path), Path(foreground_path), Path(pred_dir))
    )


# ---------------------------------------------------------------------------------------------- RefAVS


def _refavs_rows(root: Path, split: str) -> list[dict[str, str]]:
    if split not in REFAVS_SPLITS:
        raise ScoringError(f"RefAVS split must be one of {', '.join(REFAVS_SPLITS)}, got {split!r}")
    path = safe_join(root, "metadata.csv")
    if not path.is_file():
        raise ScoringError(f"{path} does not exist; pass the Ref-AVS Bench root as root")
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        missing = {"uid", "split", "fid"} - set(reader.fieldnames or [])
        if missing:
            raise ScoringError(f"{path} lacks columns {sorted(missing)}; it needs vid,uid,split,fid,exp")
        rows = [row for row in reader if row["split"] == split]
    if not rows:
        raise ScoringError(f"{path} has no rows of split {split!r}; nothing to score")
    return rows


def _refavs_masks(folder: Path, vid: str, fid: str, frames: int, truth: bool) -> np.ndarray:
    """``(frames, 256, 256)`` bool masks of one clip: cv2-style resize, grey conversion, then ``> 0``."""
    out = np.zeros((frames, REFAVS_SIZE, REFAVS_SIZE), dtype=bool)
    for i in range(frames):
        img = _read_png(safe_join(folder, f"{vid}/fid_{fid}/0000{i}.png"), colour_ok=True, truth=truth)
        if img.ndim == 3:
            # The official loader reads colour, resizes, then converts to grey: keep that order.
            resized = cv2_resize_linear_u8(np.moveaxis(img, -1, 0), REFAVS_SIZE, REFAVS_SIZE)
            out[i] = cv2_bgr2gray_u8(np.moveaxis(resized, 0, -1)) > 0
        else:
            out[i] = cv2_resize_linear_u8(img, REFAVS_SIZE, REFAVS_SIZE) > 0
    return out


def score_refavs_clips(root: Path, split: str, pred_dir: Path, frames: int = REFAVS_FRAMES) -> list[dict[str, Any]]:
    """One row per metadata row of ``split``: uid, vid, fid and mIoU + F (test_s/test_u) or S (test_n), fractions.

    The video id is ``uid`` without its last two ``_`` parts, as the official loader derives it. test_n reads
    no truth: S depends on the prediction alone.
    """
    root, pred_dir = Path(root), Path(pred_dir)
    out: list[dict[str, Any]] = []
    for row in _refavs_rows(root, split):
        uid, fid = row["uid"], row["fid"]
        vid = uid.rsplit("_", 2)[0]
        pred = _refavs_masks(pred_dir, vid, fid, frames, truth=False).astype(np.float64)  # probabilities 0/1
        scores: dict[str, Any] = {"uid": uid, "vid": vid, "fid": fid}
        if split == "test_n":
            scores["S"] = refavs_null_s(pred)
        else:
            truth = _refavs_masks(safe_join(root, "gt_mask"), vid, fid, frames, truth=True)
            scores["mIoU"] = refavs_miou(pred, truth)
            scores["F"] = refavs_fscore(pred, truth)
        out.append(scores)
    return out


def summarize_refavs(rows: list[dict[str, Any]], split: str) -> dict[str, Any]:
    """``{split: {"mIoU", "F"}}`` or ``{"test_n": {"S"}}`` as means over clips, plus a ``note`` on binary masks."""
    keys = ("S",) if split == "test_n" else ("mIoU", "F")
    if not rows:
        raise ScoringError(f"no RefAVS clips to summarise for split {split!r}")
    return {split: {k: float(np.mean([r[k] for r in rows])) for k in keys}, "note": REFAVS_NOTE}


def score_refavs(root: Path, split: str, pred_dir: Path) -> dict[str, Any]:
    """The official RefAVS numbers of one test split for predictions under ``pred_dir`` (module docstring)."""
    return summarize_refavs(score_refavs_clips(Path(root), split, Path(pred_dir)), split)
