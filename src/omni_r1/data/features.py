"""Cached model inputs for the Global Reasoning System, so that training never decodes video.

``compute_features`` runs the real ``Qwen2_5OmniProcessor`` once per video on its low-res frames
and 16 kHz audio, and keeps what the thinker's encoders take:

    pixel_values_videos   (patches, 3 * temporal_patch * 14 * 14) float32, patches == prod(video_grid_thw)
    video_grid_thw        (3,) int64: temporal, height and width patch counts
    video_second_per_grid seconds one temporal patch spans (temporal_patch_size / sample_fps)
    input_features        (mel_bins, frames) float32 Whisper log-mel, only the valid frames
                          (about 100 per second); (mel_bins, 0) without audio
    audio_feature_length  frames, == input_features.shape[1]

The processor pads the log-mel to 30 s and returns a mask; the thinker keeps only the masked
frames, so storing the valid frames alone loses nothing. A feature shard is one ``.safetensors``
file: tensors under ``<key>/<field>``, ids and scalars as JSON in the header metadata. No pickle.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save

from omni_r1.data.paths import check_key
from omni_r1.data.shards import sha256_file
from omni_r1.fileio import atomic_write_bytes
from omni_r1.types import AUDIO_RATE

if TYPE_CHECKING:
    from transformers import Qwen2_5OmniProcessor

FEATURES_FORMAT = "omni-r1/features-v1"
_TENSOR_FIELDS = ("pixel_values_videos", "video_grid_thw", "input_features")
_SCALAR_FIELDS = ("key", "video_id", "split", "video_second_per_grid", "audio_feature_length")


class FeatureShardError(RuntimeError):
    """A feature shard that cannot be trusted: unreadable, modified, or not in this format."""


class ModelInputs(TypedDict):
    """What ``compute_features`` returns: the tensor fields of a ``FeatureRecord``."""

    pixel_values_videos: np.ndarray
    video_grid_thw: np.ndarray
    video_second_per_grid: float
    input_features: np.ndarray
    audio_feature_length: int


@dataclass(frozen=True, eq=False)
class FeatureRecord:
    """One video's cached processor outputs (shapes in the module docstring); checked on construction."""

    key: str
    video_id: str
    split: str
    pixel_values_videos: np.ndarray
    video_grid_thw: np.ndarray
    video_second_per_grid: float
    input_features: np.ndarray
    audio_feature_length: int

    def __post_init__(self) -> None:
        check_key(self.key)
        key, pixels, grid, mel = self.key, self.pixel_values_videos, self.video_grid_thw, self.input_features
        _expect(
            pixels.dtype == np.float32 and pixels.ndim == 2,
            key,
            f"pixel_values_videos is {pixels.dtype} {pixels.shape}, want float32 (patches, dim)",
        )
        _expect(
            grid.dtype == np.int64 and grid.shape == (3,),
            key,
            f"video_grid_thw is {grid.dtype} {grid.shape}, want int64 (3,)",
        )
        _expect(
            int(np.prod(grid)) == pixels.shape[0],
            key,
            f"video_grid_thw {grid.tolist()} does not match {pixels.shape[0]} patches",
        )
        _expect(
            mel.dtype == np.float32 and mel.ndim == 2,
            key,
            f"input_features is {mel.dtype} {mel.shape}, want float32 (mel_bins, frames)",
        )
        _expect(
            self.audio_feature_length == mel.shape[1],
            key,
            f"audio_feature_length {self.audio_feature_length} != {mel.shape[1]} mel frames",
        )
        _expect(self.video_second_per_grid > 0, key, "video_second_per_grid must be positive")

    @property
    def has_audio(self) -> bool:
        return self.audio_feature_length > 0


def _expect(condition: bool, key: str, problem: str) -> None:
    if not condition:
        raise ValueError(f"feature record {key!r}: {problem}; recompute it with compute_features()")


# ----------------------------------------------------------------------------------------------- computing


def compute_features(
    processor: Qwen2_5OmniProcessor, low_res: np.ndarray, audio: np.ndarray, *, sample_fps: float
) -> ModelInputs:
    """Run the real processor on one video's frames (T, h, w, 3) uint8 and audio (N,) 16 kHz mono.

    Frames are padded to a multiple of the temporal patch (2: an even count) by repeating the last
    frame. ``sample_fps`` is the rate the frames are treated as (2 in Omni-R1). An empty ``audio``
    means no audio. Use as ``FeatureRecord(key=..., video_id=..., split=..., **compute_features(...))``.
    """
    if not sample_fps > 0:
        raise ValueError(f"sample_fps={sample_fps} must be positive; fix data.fps in params.yaml")
    frames = _pad_frames(_checked_frames(low_res), int(processor.video_processor.temporal_patch_size))
    samples = _checked_audio(audio, processor)
    has_audio = samples.size > 0
    prompt = processor.vision_bos_token + processor.video_token + processor.vision_eos_token
    if has_audio:
        prompt += processor.audio_bos_token + processor.audio_token + processor.audio_eos_token
    # The full processor call, text included, so the placeholder expansion is exercised as in training.
    out = processor(
        text=[prompt],
        videos=[frames],
        audio=[samples] if has_audio else None,
        videos_kwargs={"fps": float(sample_fps), "do_resize": True, "do_sample_frames": False},
        return_tensors="np",
    )
    grid = np.asarray(out["video_grid_thw"][0], dtype=np.int64)
    mel_bins = int(processor.feature_extractor.feature_size)
    if has_audio:
        # The mask is ones over the valid frames, then zeros over the padding to 30 s.
        valid = int(np.asarray(out["feature_attention_mask"][0]).sum())
        mel = np.ascontiguousarray(out["input_features"][0][:, :valid], dtype=np.float32)
    else:
        mel = np.zeros((mel_bins, 0), dtype=np.float32)
    _check_placeholders(processor, np.asarray(out["input_ids"][0]), grid, mel.shape[1])
    return ModelInputs(
        pixel_values_videos=np.ascontiguousarray(out["pixel_values_videos"], dtype=np.float32),
        video_grid_thw=grid,
        video_second_per_grid=float(out["video_second_per_grid"][0]),
        input_features=mel,
        audio_feature_length=int(mel.shape[1]),
    )


def _checked_frames(low_res: np.ndarray) -> np.ndarray:
    if low_res.dtype != np.uint8 or low_res.ndim != 4 or low_res.shape[-1] != 3 or low_res.shape[0] < 1:
        raise ValueError(
            f"low_res frames are {low_res.dtype} {low_res.shape}; want uint8 (T >= 1, h, w, 3) as the shard "
            "stage writes them"
        )
    return low_res


def _pad_frames(frames: np.ndarray, multiple: int) -> np.ndarray:
    missing = -frames.shape[0] % multiple
    if missing == 0:
        return frames
    return np.concatenate([frames, np.repeat(frames[-1:], missing, axis=0)], axis=0)


def _checked_audio(audio: np.ndarray, processor: Qwen2_5OmniProcessor) -> np.ndarray:
    if audio.ndim != 1 or not np.issubdtype(audio.dtype, np.floating):
        raise ValueError(f"audio is {audio.dtype} {audio.shape}; want float (N,) mono at {AUDIO_RATE} Hz")
    extractor = processor.feature_extractor
    if int(extractor.sampling_rate) != AUDIO_RATE:
        raise ValueError(f"the processor's feature extractor expects {extractor.sampling_rate} Hz, not {AUDIO_RATE} Hz")
    limit = int(extractor.n_samples)
    if audio.size > limit:
        # The Whisper extractor would silently cut everything after 30 s.
        raise ValueError(
            f"audio is {audio.size / AUDIO_RATE:.1f} s; the audio encoder takes at most {limit / AUDIO_RATE:.0f} s; "
            "cut the audio to the sampled clip before computing features"
        )
    return np.ascontiguousarray(audio, dtype=np.float32)


def _check_placeholders(
    processor: Qwen2_5OmniProcessor, input_ids: np.ndarray, grid: np.ndarray, mel_frames: int
) -> None:
    """The tokenizer must have expanded each placeholder into exactly as many tokens as the encoders emit."""
    merge = int(processor.video_processor.merge_size)
    want_video = int(np.prod(grid)) // (merge * merge)
    got_video = int((input_ids == processor.video_token_id).sum())
    # Two stride-2 stages in the audio encoder: frames -> (frames - 1) // 2 + 1 -> (n - 2) // 2 + 1.
    want_audio = ((mel_frames - 1) // 2 + 1 - 2) // 2 + 1 if mel_frames else 0
    got_audio = int((input_ids == processor.audio_token_id).sum())
    if (got_video, got_audio) != (want_video, want_audio):
        raise RuntimeError(
            f"the prompt expanded to {got_video} video and {got_audio} audio tokens, but the encoders emit "
            f"{want_video} and {want_audio}; the tokenizer splits a placeholder token: rebuild it "
            "(features.tokenizer in params.yaml)"
        )


# ----------------------------------------------------------------------------------------------- shards


def save_feature_shard(path: Path, records: list[FeatureRecord]) -> dict[str, Any]:
    """Write ``records`` as one ``.safetensors`` file, atomically; return {path, records, bytes, sha256}."""
    path = Path(path)
    keys = [r.key for r in records]
    if len(set(keys)) != len(keys):
        duplicates = sorted({k for k in keys if keys.count(k) > 1})
        raise ValueError(f"feature shard {path}: keys {duplicates} appear twice; give each video one record")
    tensors = {f"{r.key}/{name}": np.ascontiguousarray(getattr(r, name)) for r in records for name in _TENSOR_FIELDS}
    scalars = [{name: getattr(r, name) for name in _SCALAR_FIELDS} for r in records]
    metadata = {"format": FEATURES_FORMAT, "records": json.dumps(scalars, sort_keys=True)}
    data = save(tensors, metadata=metadata)
    atomic_write_bytes(path, data)
    return {"path": str(path), "records": len(records), "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def load_feature_shard(path: Path, *, sha256: str | None = None) -> list[FeatureRecord]:
    """Read a shard written by ``save_feature_shard``; with ``sha256``, refuse a file whose bytes differ."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"feature shard {path} is missing; rerun the features stage")
    if sha256 is not None and (found := sha256_file(path)) != sha256:
        raise FeatureShardError(
            f"feature shard {path} has sha256 {found}, not {sha256} as recorded; it was modified or cut short: "
            "delete it and rerun the features stage"
        )
    try:
        with safe_open(str(path), framework="np") as handle:
            metadata = handle.metadata() or {}
            _check_format(path, metadata)
            rows = json.loads(metadata["records"])
            return [_record(path, row, handle) for row in rows]
    except (SafetensorError, json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
        raise FeatureShardError(
            f"feature shard {path} cannot be read ({error}); delete it and rerun the features stage"
        ) from error


def _check_format(path: Path, metadata: dict[str, str]) -> None:
    if metadata.get("format") != FEATURES_FORMAT:
        raise FeatureShardError(
            f"{path} is not a feature shard of format {FEATURES_FORMAT} (found {metadata.get('format')!r}); "
            "rerun the features stage to rewrite it"
        )


def _record(path: Path, row: dict[str, Any], handle: Any) -> FeatureRecord:
    if set(row) != set(_SCALAR_FIELDS):
        raise FeatureShardError(f"feature shard {path}: a record has fields {sorted(row)}; rerun the features stage")
    tensors = {name: handle.get_tensor(f"{row['key']}/{name}") for name in _TENSOR_FIELDS}
    return FeatureRecord(
        key=str(row["key"]),
        video_id=str(row["video_id"]),
        split=str(row["split"]),
        video_second_per_grid=float(row["video_second_per_grid"]),
        audio_feature_length=int(row["audio_feature_length"]),
        **tensors,
    )
