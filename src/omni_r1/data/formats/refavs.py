"""The official RefAVS (Ref-AVS Bench) layout, parsed into manifest rows without decoding.

``metadata.csv`` (columns ``vid,uid,split,fid,exp``), ``media/<vid>/frames/{0..9}.jpg``,
``media/<vid>/audio.wav`` and ``gt_mask/<vid>/fid_<fid>/0000{i}.png`` (one mask per frame).
Splits ``train``, ``val``, ``test_s`` (seen), ``test_u`` (unseen), ``test_n`` (null: no target).

Each CSV line is read and typed in its own guard: a line that is not UTF-8, not CSV, has the wrong
number of fields or a bad value becomes an error row naming ``metadata.csv:<line>``; the other rows
flow on. A UTF-8 byte-order mark (Excel's "CSV UTF-8") is accepted.
"""

from __future__ import annotations

import csv
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from omni_r1.data.formats.common import (
    LayoutError,
    LayoutMissing,
    RowProblem,
    check_expression,
    check_id,
    check_text,
    error_row,
    image_size,
    masks_json,
    normalise_split,
    read_lines,
    shown,
    utf8_line,
)
from omni_r1.data.paths import PathEscapeError, safe_join
from omni_r1.types import ManifestRow

COLUMNS = ("vid", "uid", "split", "fid", "exp")
METADATA = "metadata.csv"
MAX_LINE_BYTES = 1 << 20  # a metadata line is five short fields


def video_id_from_uid(uid: str) -> str:
    """The official rule: the video id is the uid with its last two ``_``-separated parts removed."""
    return uid.rsplit("_", 2)[0]


def read_refavs_layout(root: Path, fps: float) -> list[ManifestRow]:
    """One row per metadata.csv line; frames are listed, masks referenced as PNG paths.

    Each physical line is its own CSV record (RefAVS expressions hold no line breaks), so a stray
    quote or a bad byte spoils only its own line and every line number is exact.
    """
    metadata = root / METADATA
    if not metadata.is_file():
        raise LayoutMissing(f"{metadata} not found; the RefAVS layout needs metadata.csv, media/ and gt_mask/")
    lines = read_lines(metadata, MAX_LINE_BYTES)
    header = _header(lines, metadata)
    rows = []
    for lineno, raw in lines:
        where = f"{METADATA}:{lineno}"
        if raw is None:
            rows.append(error_row("refavs", where, METADATA, f"{where} is longer than {MAX_LINE_BYTES} bytes; "
                                  "fix or remove the line", check="line_length", line=where))
        elif raw.strip():
            rows.append(_guarded_row(root, header, raw, where, fps))
    return rows


def _fields(raw: bytes, where: str) -> list[str]:
    text = utf8_line(raw, where, METADATA)
    try:
        return next(csv.reader([text], strict=True))
    except (csv.Error, StopIteration) as err:
        raise RowProblem("csv", f"{where} is not a CSV row ({err}); quote an expression that holds a comma or a "
                                "quote, or remove the line") from err


def _header(lines: Iterator[tuple[int, bytes | None]], metadata: Path) -> list[str]:
    for lineno, raw in lines:
        if raw is None or raw.strip():
            try:
                header = [name.strip() for name in _fields(raw or b"", f"{METADATA}:{lineno}")]
            except RowProblem as err:
                raise LayoutError(f"{metadata}: the header is not readable ({err}); "
                                 f"the first line must be {','.join(COLUMNS)}") from err
            missing = [c for c in COLUMNS if c not in header]
            if missing:
                raise LayoutError(f"{metadata}: missing column(s) {', '.join(missing)} in the header "
                                 f"{shown(','.join(header))}; the header must be {','.join(COLUMNS)}")
            return header
    raise LayoutError(f"{metadata} is empty; the first line must be {','.join(COLUMNS)}")


def _guarded_row(root: Path, header: list[str], raw: bytes, where: str, fps: float) -> ManifestRow:
    known: dict[str, Any] = {}
    try:
        fields = _fields(raw, where)
        record = dict(zip(header, fields))
        known = {"video_id": record.get("vid", ""), "exp_id": record.get("uid", ""),
                 "split": record.get("split", ""), "expression": record.get("exp", "")}
        if len(fields) != len(header):
            raise RowProblem("csv", f"{where} has {len(fields)} fields, the header {len(header)}; quote an "
                                    "expression that holds a comma")
        return _row(root, record, where, fps)
    except RowProblem as problem:
        message = str(problem) if str(problem).startswith(where) else f"{where}: {problem}"
        uid = known.get("exp_id", "")
        sample_id = uid.strip() if isinstance(uid, str) and uid.strip() else where
        return error_row("refavs", sample_id, getattr(problem, "file", METADATA), message, check=problem.check,
                         line=where, **known)


def _row(root: Path, record: dict[str, str], where: str, fps: float) -> ManifestRow:
    uid = check_id(record["uid"].strip(), "uid")
    vid = check_id(record["vid"].strip() or video_id_from_uid(uid), "vid")
    split = check_text(record["split"].strip(), "split", limit=64, check="known_split",
                       fix="set split to train, val, test_s, test_u or test_n")
    fid = record["fid"].strip()
    if not fid.isdigit() or len(fid) > 9:
        raise RowProblem("fid", f"fid {shown(fid)} must be a whole number (the gt_mask/<vid>/fid_<fid> folder)")
    expression = check_expression(record["exp"])
    exp_type = "null" if split == "test_n" else "referring"
    try:
        frames_dir = safe_join(root, f"media/{vid}/frames")
        mask_dir = safe_join(root, f"gt_mask/{vid}/fid_{fid}")
        audio = safe_join(root, f"media/{vid}/audio.wav")
    except PathEscapeError as err:
        raise _FileProblem("path", f"media/{vid}", f"{where}: {err}") from err
    frames = _numbered(frames_dir, ".jpg")
    if not frames:
        raise _FileProblem("frames_present", f"media/{vid}/frames/", f"no frames in media/{vid}/frames/; "
                           "extract the clip's frames as 0.jpg, 1.jpg, ...")
    size = image_size(frames[0])
    if size is None:
        raise _FileProblem("frames_present", _rel(root, frames[0]), f"{_rel(root, frames[0])} is not an image; "
                           "re-extract the frame")
    channels, rate = _wav_info(audio)
    masks = sorted(mask_dir.glob("0000*.png")) if mask_dir.is_dir() else []
    objects = [{"obj_id": fid, "pngs": [_rel(root, p) for p in masks]}]
    return ManifestRow(
        sample_id=uid,
        dataset="refavs",
        video_id=vid,
        exp_id=uid,
        split=normalise_split(split),
        benchmark_split=split,
        expression=expression,
        exp_type=exp_type,
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
        source_line=where,
    )


class _FileProblem(RowProblem):
    """A row whose media (frames, masks) cannot be used: the file to look at is the media, not metadata.csv."""

    def __init__(self, check: str, file: str, message: str) -> None:
        super().__init__(check, message)
        self.file = file


def _numbered(folder: Path, suffix: str) -> list[Path]:
    """Files named ``<int><suffix>`` in numeric order (0, 1, ..., 10 rather than 0, 1, 10, 2)."""
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.suffix == suffix and p.stem.isdigit() and p.is_file()]
    return sorted(found, key=lambda p: int(p.stem))


def _wav_info(path: Path) -> tuple[int, int]:
    """(channels, sample rate) of a WAV header, (0, 0) when missing or unreadable."""
    if not path.is_file():
        return 0, 0
    try:
        with wave.open(str(path), "rb") as handle:
            return handle.getnchannels(), handle.getframerate()
    except (wave.Error, EOFError, OSError):
        return 0, 0


def _rel(root: Path, path: Path) -> str:
    """``path`` relative to the dataset root; a link out of the root or a link loop is refused by name."""
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except (ValueError, OSError, RuntimeError) as err:  # RuntimeError: Python 3.11's "Symlink loop"
        shown_path = path.relative_to(root.resolve()).as_posix() if path.is_relative_to(root.resolve()) else str(path)
        raise _FileProblem("path", shown_path, f"{shown_path} is a symbolic link out of the dataset root or a link "
                           "loop; copy the file into the dataset root") from err
