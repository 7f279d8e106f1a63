"""Predict at full rate: System 2 runs on every native frame, and a PNG is written for each one.

A synthetic clip (``omni_r1.data.synthetic``'s renderer and encoder) holds one red square crossing the
frame fast: 5 px per native frame, 10 fps, sampled at 2 fps, so a sampled frame is up to 2 native frames
(10 px, most of the square's 14 px side) from the frames around it. System 2 is an honest stand-in: a
colour tracker that segments the red pixels of every frame it is given from the prompted keyframe on,
i.e. a propagator that is right wherever it runs. Holding the nearest sampled mask (what predict did
before: ``hold_nearest`` below is that baseline, kept here only) must then score clearly worse than
predict's full-rate path on the same sample.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from omni_r1.config import IngestParams
from omni_r1.data.masks import encode_rle
from omni_r1.data.pipeline import ingest, shard_in_process
from omni_r1.data.shards import SamplingPlan, read_samples
from omni_r1.data.synthetic import Expression, Scene, SceneObject, render, write_video
from omni_r1.eval.evaluate import read_prediction, score_sample
from omni_r1.eval.metrics import j_and_f
from omni_r1.eval.native import NativeSource
from omni_r1.eval.predict import predict_sample, prediction_paths, write_prediction
from omni_r1.systems.collaboration import masks_to_native
from omni_r1.systems.detail import KeyframePrompt, SegmentResult
from omni_r1.types import Sample

FPS, FRAMES, WIDTH, HEIGHT = 10, 40, 128, 96
PLAN = SamplingPlan(fps=2.0, max_frames=24, low_res=64, high_res=96)  # high-res 96x72: masks are resized


class RedTracker:
    """Stand-in System 2 (no model): the red pixels of every frame from the earliest keyframe on.

    It records the frames and keyframes it was given, so the test can check what predict sent it.
    """

    def __init__(self) -> None:
        self.calls: list[tuple[tuple[int, ...], tuple[int, ...]]] = []

    def segment(self, frames: np.ndarray, prompts: Sequence[KeyframePrompt]) -> SegmentResult:
        self.calls.append((frames.shape, tuple(p.frame for p in prompts)))
        rgb = frames.astype(np.int16)
        red = (rgb[..., 0] > 170) & (rgb[..., 1] < 100) & (rgb[..., 2] < 100)
        red[: min(p.frame for p in prompts)] = False
        return SegmentResult(red, red[None], {})

    def segment_batch(self, frames: np.ndarray, prompt_sets: Sequence[Sequence[KeyframePrompt]],
                      boxes_per_keyframe: int | None = None) -> list[SegmentResult]:
        return [self.segment(frames, prompts) for prompts in prompt_sets]


def hold_nearest(masks: np.ndarray, frame_indices: Sequence[int], num_frames: int) -> np.ndarray:
    """The old evaluation: each native frame takes the mask of its nearest sampled frame."""
    sampled = np.asarray(frame_indices)
    return masks[np.abs(np.arange(num_frames)[:, None] - sampled[None, :]).argmin(axis=1)]


def _write_dataset(root: Path) -> None:
    square = SceneObject(obj_id=0, colour="red", shape="square", size=14, x0=10.0, y0=48.0,
                         vx=5.0 * FRAMES, vy=0.0, enter=0, leave=100, pitch="beep")  # 5 px per native frame
    scene = Scene(index=0, video_id="moving_0000", split="test", width=WIDTH, height=HEIGHT, objects=(square,),
                  expressions=(Expression("0", "the red square", "referring", "appearance", (0,)),),
                  background_seed=3)
    frames, visible = render(scene, FRAMES)
    write_video(root / "videos" / f"{scene.video_id}.mp4", frames, FPS, None, 16_000)
    masks = [{"frame": i, "rle": encode_rle(m)} for i, m in enumerate(visible[0]) if m.any()]
    record = {"video_id": scene.video_id, "exp_id": "0", "expression": "the red square", "type": "referring",
              "split": "test", "cue": "appearance", "objects": [{"obj_id": "0", "masks": masks}]}
    (root / "annotations.jsonl").write_text(json.dumps(record) + "\n")


@pytest.fixture(scope="module")
def moving(tmp_path_factory: pytest.TempPathFactory) -> tuple[Sample, NativeSource]:
    root = tmp_path_factory.mktemp("moving")
    _write_dataset(root / "raw")
    assert shard_in_process("video", root / "raw", root / "shards", PLAN) == []
    manifest, _ = ingest("video", root / "raw", IngestParams())
    manifest.to_parquet(root / "validated.parquet")
    [sample] = list(read_samples(root / "shards", "test"))
    return sample, NativeSource.from_manifest(root / "raw", root / "validated.parquet")


def test_native_frames_are_every_frame_at_the_shard_size(moving: tuple[Sample, NativeSource]) -> None:
    sample, source = moving
    frames = source.frames(sample)
    assert frames.shape == (FRAMES, 72, 96, 3) and sample.high_res.shape[1:] == (72, 96, 3)
    assert len(sample.frame_indices) == 8  # 2 fps of a 10 fps clip
    # the same ffmpeg graph as the shard stage: the sampled frames are the shard's pixels
    np.testing.assert_array_equal(frames[list(sample.frame_indices)], sample.high_res)


def test_full_rate_propagation_beats_holding_the_nearest_sampled_mask(
        moving: tuple[Sample, NativeSource], tmp_path: Path) -> None:
    sample, source = moving
    tracker = RedTracker()
    masks, row = predict_sample(sample, source.frames(sample), "uniform_keyframes", tracker, None, max_keyframes=4)
    write_prediction(tmp_path, sample, masks)

    # System 2 got every native frame, with System 1's (here uniform) keyframes as native frame numbers
    [(shape, keyframes)] = tracker.calls
    assert shape[0] == FRAMES
    assert set(keyframes) <= set(sample.frame_indices) and keyframes == tuple(k for k, _ in row["keyframes"])
    assert [sample.frame_indices[k] for k in row["sampled_keyframes"]] == list(keyframes)
    # one PNG per native frame, at the native (displayed) size
    assert all((tmp_path / p).is_file() for p in prediction_paths(sample))
    predicted = read_prediction(tmp_path, sample)
    assert predicted.shape == (FRAMES, HEIGHT, WIDTH)

    full_rate_j = score_sample(predicted, sample)["J"]
    sampled_prompts = [KeyframePrompt(k, sample.expression) for k in row["sampled_keyframes"]]
    on_sampled = tracker.segment(sample.high_res, sampled_prompts).masks
    held = hold_nearest(masks_to_native(on_sampled, HEIGHT, WIDTH), sample.frame_indices, FRAMES)
    held_j = 100 * j_and_f(held, sample.masks.union(range(FRAMES)))["J"]
    print(f"full-rate J {full_rate_j:.1f} vs hold-nearest J {held_j:.1f}")
    assert full_rate_j > 85.0
    assert full_rate_j - held_j > 25.0


def test_predict_nothing_writes_empty_masks_for_every_frame(
        moving: tuple[Sample, NativeSource], tmp_path: Path) -> None:
    sample, source = moving
    masks, row = predict_sample(sample, source.frames(sample), "predict_nothing", RedTracker(), None, max_keyframes=4)
    write_prediction(tmp_path, sample, masks)
    assert row["keyframes"] == [] and not read_prediction(tmp_path, sample).any()
