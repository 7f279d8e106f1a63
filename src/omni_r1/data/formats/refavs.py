"""The official RefAVS (Ref-AVS Bench) layout, parsed into manifest rows without decoding.

``metadata.csv`` (columns ``vid,uid,split,fid,exp``), ``media/<vid>/frames/{0..9}.jpg``,
``media/<vid>/audio.wav`` and ``gt_mask/<vid>/fid_<fid>/0000{i}.png`` (one mask per frame).
Splits ``train``, ``val``, ``test_s`` (seen), ``test_u`` (unseen), ``test_n`` (null: no target).
"""

from __future__ import annotations

import csv
import wave
from pathlib import Path

from omni_r1.data.formats.common import error_row, image_size, masks_json, normalise_split
from omni_r1.data.paths import PathEscapeError, safe_join
from omni_r1.types import ManifestRow

COLUMNS = ("vid", "uid", "split", "fid", "exp")


def video_id_from_uid(uid: str) -> str:
    """The official rule: the video id is the uid with its last two ``_``-separated parts removed."""
    return uid.rsplit("_", 2)[0]


def read_refavs_layout(root: Path, fps: float) -> list[ManifestRow]:
    """One row per metadata.csv line; frames are listed, masks referenced as PNG paths."""
    metadata = root / "metadata.csv"
    if not metadata.is_file():
        raise FileNotFoundError(f"{metadata} not found; the RefAVS layout needs metadata.csv, media/ and gt_mask/")
    with metadata.open(newline="") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{metadata}: missing column(s) {', '.join(missing)}; the header must be {','.join(COLUMNS)}")
        return [_row(root, record, lineno, fps) for lineno, record in enumerate(reader, start=2)]


def _row(root: Path, record: dict[str, str], lineno: int, fps: float) -> ManifestRow:
    uid = (record.get("uid") or "").strip()
    vid = (record.get("vid") or "").strip() or video_id_from_uid(uid)
    split = (record.get("split") or "").strip()
    fid = (record.get("fid") or "").strip()
    known = dict(video_id=vid, exp_id=uid, split=split, expression=record.get("exp") or "",
                 exp_type="null" if split == "test_n" else "referring")
    sample_id = uid or f"metadata.csv:{lineno}"
    try:
        frames_dir = safe_join(root, f"media/{vid}/frames")
        mask_dir = safe_join(root, f"gt_mask/{vid}/fid_{fid}")
        audio = safe_join(root, f"media/{vid}/audio.wav")
    except PathEscapeError as err:
        return error_row("refavs", sample_id, f"media/{vid}", f"metadata.csv:{lineno}: {err}", **known)
    frames = _numbered(frames_dir, ".jpg")
    if not frames:
        return error_row("refavs", sample_id, f"media/{vid}/frames/", f"no frames in media/{vid}/frames/; "
                         "extract the clip's frames as 0.jpg, 1.jpg, ...", **known)
    size = image_size(frames[0])
    if size is None:
        return error_row("refavs", sample_id, _rel(root, frames[0]), f"{_rel(root, frames[0])} is not an image; "
                         "re-extract the frame", **known)
    channels, rate = _wav_info(audio)
    masks = sorted(mask_dir.glob("0000*.png")) if mask_dir.is_dir() else []
    objects = [{"obj_id": fid, "pngs": [_rel(root, p) for p in masks]}]
    return ManifestRow(
        sample_id=sample_id,
        dataset="refavs",
        video_id=vid,
        exp_id=uid,
        split=normalise_split(split),
        benchmark_split=split,
        expression=record.get("exp") or "",
        exp_type=str(known["exp_type"]),
        cue="sound",
        media_kind="frames",
        video_path="",
        frame_paths=[_rel(root, p) for p in frames],
        audio_path=_rel(root, audio) if channels else "",
        has_audio=channels > 0,
        audio_channels=channels,
        audio_rate=rate,
        fps=fps,
        num_frames=len(frames),
        width=size[0],
        height=size[1],
        mask_kind="png",
        masks_json=masks_json(objects),
        needs_audio=True,
    )


def _numbered(folder: Path, suffix: str) -> list[Path]:
    """Files named ``<int><suffix>`` in numeric order (0, 1, ..., 10 rather than 0, 1, 10, 2)."""
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.suffix == suffix and p.stem.isdigit()]
    return sorted(found, key=lambda p: int(p.stem))


def _wav_info(path: Path) -> tuple[int, int]:
    """(channels, sample rate) of a WAV header, (0, 0) when missing or unreadable."""
    if not path.is_file():
        return 0, 0
    try:
        with wave.open(str(path), "rb") as handle:
            return handle.getnchannels(), handle.getframerate()
    except (wave.Error, EOFError):
        return 0, 0


def _rel(root: Path, path: Path) -> str:
    return path.resolve().relative_to(root.resolve()).as_posix()
