"""Ingest of the three layouts: one manifest row per (video, expression), no decoding, bad lines kept as errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from omni_r1.config import IngestParams
from omni_r1.data.formats import read_layout
from omni_r1.data.formats.refavs import video_id_from_uid
from omni_r1.data.pipeline import ingest

FPS = dict(refavs_fps=1.0, revos_fps=10.0)


def test_video_layout_rows(synth_video: Path) -> None:
    rows = read_layout("video", synth_video, **FPS)
    assert len(rows) == 12 and all(r.ingest_error == "" for r in rows)
    assert {r.split for r in rows} == {"train", "val", "test"}
    assert {r.exp_type for r in rows} == {"referring", "reasoning", "null"}
    first = rows[0]
    assert first.media_kind == "video" and first.video_path.startswith("videos/") and first.frame_paths == []
    assert (first.num_frames, first.width, first.height, first.fps) == (20, 96, 64, 10.0)
    assert first.has_audio and first.audio_channels == 1
    sound = [r for r in rows if r.cue == "sound"]
    assert sound and all(r.needs_audio for r in sound)
    for row in rows:
        objects = row.mask_objects()
        if row.exp_type == "null":
            assert objects == [] and row.mask_kind == "none"
        else:
            assert objects and all(len(o["rles"]) == row.num_frames for o in objects)


def test_refavs_layout_rows(synth_refavs: Path) -> None:
    rows = read_layout("refavs", synth_refavs, **FPS)
    assert rows and all(r.ingest_error == "" for r in rows)
    assert {r.benchmark_split for r in rows} == {"train", "val", "test_s", "test_u", "test_n"}
    assert {r.split for r in rows if r.benchmark_split.startswith("test_")} == {"test"}
    row = rows[0]
    assert row.media_kind == "frames" and len(row.frame_paths) == 10 == row.num_frames
    assert row.frame_paths[:3] == [f"media/{row.video_id}/frames/{i}.jpg" for i in range(3)]
    assert row.audio_path == f"media/{row.video_id}/audio.wav" and row.has_audio and row.audio_rate == 16000
    assert row.mask_kind == "png" and len(row.mask_objects()[0]["pngs"]) == 10
    assert all(r.exp_type == "null" for r in rows if r.benchmark_split == "test_n")
    assert all(r.needs_audio for r in rows)


def test_refavs_uid_rule() -> None:
    assert video_id_from_uid("synth_0003_2_1") == "synth_0003"
    assert video_id_from_uid("abc_12_0") == "abc"


def test_revos_layout_rows(synth_revos: Path) -> None:
    rows = read_layout("revos", synth_revos, **FPS)
    assert len(rows) == 12 and all(r.ingest_error == "" for r in rows)
    assert {r.benchmark_split for r in rows} == {"train", "valid"}
    assert {r.split for r in rows if r.benchmark_split == "valid"} == {"test"}
    assert not any(r.has_audio or r.needs_audio for r in rows)
    row = next(r for r in rows if r.exp_type == "referring")
    assert row.frame_paths[0] == f"JPEGImages/{row.video_id}/00000.jpg"
    assert all(len(o["rles"]) == row.num_frames for o in row.mask_objects())


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _lines(root: Path) -> list[dict]:
    return [json.loads(line) for line in (root / "annotations.jsonl").read_text().splitlines()]


def _write_lines(root: Path, lines: list[dict | str]) -> None:
    text = "\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines)
    (root / "annotations.jsonl").write_text(text + "\n")


def test_bad_lines_become_rows_with_errors(synth_video: Path, tmp_path: Path) -> None:
    root = _copy(synth_video, tmp_path / "ds")
    lines = _lines(root)
    traversal = dict(lines[0], video_id="../x", exp_id="9")
    missing_video = dict(lines[0], video_id="nope", exp_id="9")
    missing_key = {k: v for k, v in lines[1].items() if k != "split"}
    _write_lines(root, [*lines, "{not json", traversal, missing_video, missing_key])
    rows = read_layout("video", root, **FPS)
    assert len(rows) == len(lines) + 4
    good, bad = rows[: len(lines)], rows[len(lines):]
    assert all(r.ingest_error == "" for r in good)
    assert "annotations.jsonl:13 is not JSON" in bad[0].ingest_error
    assert "escapes the dataset root" in bad[1].ingest_error and bad[1].sample_id == "../x/9"
    assert "no video file for video_id 'nope'" in bad[2].ingest_error
    assert "lacks key(s) split" in bad[3].ingest_error


def test_mask_past_the_last_frame_is_refused_at_ingest(synth_video: Path, tmp_path: Path) -> None:
    """A frame index outside the video is refused before anything is allocated for it (10^7 would be 640 MB)."""
    root = _copy(synth_video, tmp_path / "ds")
    lines = _lines(root)
    target = next(i for i, line in enumerate(lines) if line["objects"])
    obj = lines[target]["objects"][0]
    obj["masks"].append({"frame": 10**7, "rle": obj["masks"][0]["rle"]})
    _write_lines(root, lines)
    row = read_layout("video", root, **FPS)[target]
    assert row.ingest_check == "frame_index" and row.source_line == f"annotations.jsonl:{target + 1}"
    assert "frame 10000000 is outside the video's 20 frames" in row.ingest_error


def test_ingest_metrics(synth_video: Path) -> None:
    frame, metrics = ingest("video", synth_video, IngestParams())
    assert len(frame) == metrics["rows"] == 12 and metrics["videos"] == 3 and metrics["parse_errors"] == 0
    assert metrics["split_train"] == metrics["split_val"] == metrics["split_test"] == 4


def test_missing_root_and_unknown_format(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="set data.root"):
        read_layout("video", tmp_path / "absent", **FPS)
    with pytest.raises(ValueError, match="unknown dataset format"):
        read_layout("coco", tmp_path, **FPS)
    with pytest.raises(FileNotFoundError, match="annotations.jsonl"):
        read_layout("video", tmp_path, **FPS)
