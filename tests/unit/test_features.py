"""Cached model inputs: the real Omni processor on frames + audio, and the safetensors feature shards."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from omni_r1.data.features import (
    FeatureRecord,
    FeatureShardError,
    compute_features,
    load_feature_shard,
    save_feature_shard,
)
from omni_r1.data.paths import PathEscapeError
from omni_r1.data.shards import sha256_file
from omni_r1.models.processor import TINY_TOKENIZER, build_processor

MIN_PIXELS = 16 * 28 * 28
MAX_PIXELS = 128 * 28 * 28
PATCH_DIM = 3 * 2 * 14 * 14  # channels x temporal patch x patch x patch


@pytest.fixture(scope="module")
def processor(tmp_path_factory: pytest.TempPathFactory):
    cache = tmp_path_factory.mktemp("processor-cache")
    return build_processor(TINY_TOKENIZER, min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS, cache_dir=cache)


@pytest.fixture(scope="module")
def frames() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, size=(5, 48, 64, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def audio() -> np.ndarray:
    t = np.arange(2 * 16_000, dtype=np.float32) / 16_000
    return (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)


@pytest.fixture(scope="module")
def with_audio(processor, frames: np.ndarray, audio: np.ndarray):
    return compute_features(processor, frames, audio, sample_fps=2.0)


@pytest.fixture(scope="module")
def without_audio(processor, frames: np.ndarray):
    return compute_features(processor, frames, np.zeros(0, dtype=np.float32), sample_fps=2.0)


def _record(key: str, inputs) -> FeatureRecord:
    return FeatureRecord(key=key, video_id=f"vid-{key}", split="train", **inputs)


def test_video_features_have_the_omni_shapes(with_audio) -> None:
    grid = with_audio["video_grid_thw"]
    pixels = with_audio["pixel_values_videos"]
    assert grid.dtype == np.int64 and grid.shape == (3,)
    assert grid[0] == 3  # 5 frames padded to 6, two frames a temporal patch
    assert pixels.dtype == np.float32 and pixels.shape == (int(np.prod(grid)), PATCH_DIM)
    # 64x48 is below min_pixels, so it is upscaled into the budget, in whole 28-pixel cells.
    height, width = grid[1] * 14, grid[2] * 14
    assert grid[1] % 2 == 0 and grid[2] % 2 == 0
    assert MIN_PIXELS <= height * width <= MAX_PIXELS
    assert with_audio["video_second_per_grid"] == pytest.approx(1.0)  # 2 frames at 2 fps


def test_audio_features_keep_only_the_valid_log_mel_frames(with_audio) -> None:
    mel = with_audio["input_features"]
    assert mel.dtype == np.float32 and mel.shape == (128, 200)  # 2 s at 100 frames a second
    assert with_audio["audio_feature_length"] == 200
    assert np.isfinite(mel).all() and mel.std() > 0
    # A 440 Hz tone: the loudest mel bin is the same in every frame and is a low one.
    peaks = mel.argmax(axis=0)
    assert len(set(peaks[5:-5].tolist())) == 1 and peaks[100] < 40


def test_features_without_audio(with_audio, without_audio) -> None:
    assert without_audio["input_features"].shape == (128, 0)
    assert without_audio["input_features"].dtype == np.float32
    assert without_audio["audio_feature_length"] == 0
    np.testing.assert_array_equal(without_audio["pixel_values_videos"], with_audio["pixel_values_videos"])
    np.testing.assert_array_equal(without_audio["video_grid_thw"], with_audio["video_grid_thw"])


def test_odd_frame_count_is_padded_by_repeating_the_last_frame(processor, frames, without_audio) -> None:
    padded = np.concatenate([frames, frames[-1:]], axis=0)
    explicit = compute_features(processor, padded, np.zeros(0, dtype=np.float32), sample_fps=2.0)
    np.testing.assert_array_equal(explicit["pixel_values_videos"], without_audio["pixel_values_videos"])


def test_frames_inside_the_budget_keep_their_size_and_fps_sets_seconds_per_grid(processor) -> None:
    frames = np.zeros((4, 168, 224, 3), dtype=np.uint8)
    inputs = compute_features(processor, frames, np.zeros(0, dtype=np.float32), sample_fps=4.0)
    assert inputs["video_grid_thw"].tolist() == [2, 12, 16]
    assert inputs["video_second_per_grid"] == pytest.approx(0.5)


def test_bad_inputs_are_refused(processor, frames, audio) -> None:
    with pytest.raises(ValueError, match="uint8"):
        compute_features(processor, frames.astype(np.float32), audio, sample_fps=2.0)
    with pytest.raises(ValueError, match="mono"):
        compute_features(processor, frames, np.stack([audio, audio], axis=1), sample_fps=2.0)
    with pytest.raises(ValueError, match="at most 30 s"):
        compute_features(processor, frames, np.zeros(31 * 16_000, dtype=np.float32), sample_fps=2.0)
    with pytest.raises(ValueError, match="data.fps"):
        compute_features(processor, frames, audio, sample_fps=0.0)


def test_shard_round_trip_is_exact(tmp_path: Path, with_audio, without_audio) -> None:
    records = [_record("a-1", with_audio), _record("b_2", without_audio)]
    path = tmp_path / "train-000000.safetensors"
    summary = save_feature_shard(path, records)
    assert summary == {
        "path": str(path),
        "records": 2,
        "bytes": path.stat().st_size,
        "sha256": sha256_file(path),
    }
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temp file left behind
    loaded = load_feature_shard(path, sha256=summary["sha256"])
    assert [r.key for r in loaded] == ["a-1", "b_2"]
    for want, got in zip(records, loaded):
        for name in ("key", "video_id", "split", "video_second_per_grid", "audio_feature_length"):
            assert getattr(got, name) == getattr(want, name)
        for name in ("pixel_values_videos", "video_grid_thw", "input_features"):
            a, b = getattr(want, name), getattr(got, name)
            assert a.dtype == b.dtype and a.shape == b.shape
            np.testing.assert_array_equal(a, b)
    assert loaded[0].has_audio and not loaded[1].has_audio
    assert b"pickle" not in path.read_bytes()[:200] and path.read_bytes()[8:9] == b"{"  # JSON header


def test_empty_shard_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "empty.safetensors"
    assert save_feature_shard(path, [])["records"] == 0
    assert load_feature_shard(path) == []


def test_modified_or_missing_shards_are_refused(tmp_path: Path, without_audio) -> None:
    path = tmp_path / "val-000000.safetensors"
    summary = save_feature_shard(path, [_record("k", without_audio)])
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF  # one flipped byte in the pixel data: only the sha256 can tell
    path.write_bytes(bytes(data))
    with pytest.raises(FeatureShardError, match="sha256"):
        load_feature_shard(path, sha256=summary["sha256"])
    path.write_bytes(b"\xff" * 8 + bytes(data[8:]))  # a broken header length
    with pytest.raises(FeatureShardError, match="cannot be read"):
        load_feature_shard(path)
    path.write_bytes(bytes(data[: len(data) // 2]))  # cut short
    with pytest.raises(FeatureShardError):
        load_feature_shard(path)
    with pytest.raises(FileNotFoundError, match="rerun the features stage"):
        load_feature_shard(tmp_path / "missing.safetensors")


def test_a_foreign_safetensors_file_is_not_a_feature_shard(tmp_path: Path) -> None:
    from safetensors.numpy import save_file

    path = tmp_path / "weights.safetensors"
    save_file({"w": np.zeros(3, dtype=np.float32)}, str(path))
    with pytest.raises(FeatureShardError, match="not a feature shard"):
        load_feature_shard(path)


def test_records_are_checked_before_writing(tmp_path: Path, without_audio) -> None:
    with pytest.raises(ValueError, match="twice"):
        save_feature_shard(tmp_path / "x.safetensors", [_record("k", without_audio), _record("k", without_audio)])
    with pytest.raises(PathEscapeError):
        _record("../k", without_audio)
    bad = dict(without_audio, video_grid_thw=np.array([1, 2, 2], dtype=np.int64))
    with pytest.raises(ValueError, match="does not match"):
        _record("k", bad)
    with pytest.raises(ValueError, match="audio_feature_length"):
        _record("k", dict(without_audio, audio_feature_length=3))
    assert not list(tmp_path.iterdir())
