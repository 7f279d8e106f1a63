"""SAM2 with frames as tensors and one set of image features per group (omni_r1.systems.detail).

The tiny random SAM2.1 hiera-t at image_size 256 on CPU (design.md section 4), the synthetic square
clips of test_detail. What must hold: the tensor frames are exactly what SAM2's JPEG loader makes of
the same pixels, so masks equal the JPEG path's on frames that survived a JPEG round trip; the state
built from tensors has init_state's keys; each answer of a group gets exactly the masks it gets alone,
while the group runs the image encoder once per frame.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from omni_r1.systems.detail import KeyframePrompt, Sam2FrameFeatures, Sam2Segmenter, sam2_images
from tests.unit.test_detail import (  # noqa: F401  (shared fixtures and doubles)
    OracleBoxGrounderForTests,
    PredictorSpy,
    _appearance,
    square_samples,
    tiny_sam2,
)


def _jpeg_round_trip(frames: np.ndarray, folder: Path) -> np.ndarray:
    for index, frame in enumerate(frames):
        Image.fromarray(frame, mode="RGB").save(folder / f"{index:05d}.jpg", quality=95)
    return np.stack([np.asarray(Image.open(folder / f"{i:05d}.jpg").convert("RGB")) for i in range(len(frames))])


def test_tensor_frames_are_what_the_jpeg_loader_reads_and_the_state_has_its_keys(tiny_sam2, square_samples,
                                                                              tmp_path) -> None:
    from sam2.utils.misc import load_video_frames

    frames = _appearance(square_samples).high_res
    decoded = _jpeg_round_trip(frames, tmp_path)
    loaded, height, width = load_video_frames(str(tmp_path), 256, False, compute_device=torch.device("cpu"))
    ours = sam2_images(decoded, 256, torch.device("cpu"))
    assert torch.equal(ours, loaded) and (height, width) == frames.shape[1:3]
    state = Sam2FrameFeatures(tiny_sam2, ours, frames.shape[1:3]).state()
    assert set(state) == set(tiny_sam2.init_state(str(tmp_path)))  # sam2 1.1.0's state, key for key


@pytest.mark.slow
def test_masks_equal_the_jpeg_paths_on_the_same_pixels(tiny_sam2, square_samples, tmp_path) -> None:
    sample = _appearance(square_samples)
    decoded = _jpeg_round_trip(sample.high_res, tmp_path)
    [found] = OracleBoxGrounderForTests(sample).ground(sample.high_res[1], sample.expression)
    box = np.array([found.x1, found.y1, found.x2, found.y2], dtype=np.float32)

    def masks(state) -> list[np.ndarray]:
        tiny_sam2.add_new_points_or_box(state, frame_idx=1, obj_id=0, box=box)
        return [(logits > 0).numpy() for _, _, logits in tiny_sam2.propagate_in_video(state)]

    jpeg = masks(tiny_sam2.init_state(str(tmp_path)))
    tensor = masks(Sam2FrameFeatures(tiny_sam2, sam2_images(decoded, 256, torch.device("cpu")),
                                     decoded.shape[1:3]).state())
    assert len(jpeg) == 2 and all(np.array_equal(a, b) for a, b in zip(jpeg, tensor))


def _group_equals_alone(predictor, sample) -> tuple[int, int]:
    text = sample.expression
    group = [[KeyframePrompt(1, text)], [KeyframePrompt(0, text), KeyframePrompt(2, text)], [KeyframePrompt(2, text)],
             [KeyframePrompt(1, text)]]
    spy = PredictorSpy(predictor)
    together = Sam2Segmenter(spy, OracleBoxGrounderForTests(sample), max_objects=3).segment_batch(sample.high_res, group)
    passes_alone = 0
    for prompts, result in zip(group, together):
        alone = PredictorSpy(predictor)
        single = Sam2Segmenter(alone, OracleBoxGrounderForTests(sample), max_objects=3).segment(sample.high_res, prompts)
        passes_alone += alone.encoder_passes
        assert np.array_equal(result.object_masks, single.object_masks) and result.boxes == single.boxes
    return spy.encoder_passes, passes_alone


@pytest.mark.slow
def test_each_answer_of_a_group_gets_its_masks_alone_for_one_encoder_pass_per_frame(tiny_sam2, square_samples) -> None:
    together, alone = _group_equals_alone(tiny_sam2, _appearance(square_samples))
    assert together == 3  # the clip's three frames, once for the four answers
    assert alone == 2 + 3 + 1 + 2  # each answer alone encodes the frames from its first keyframe on


@pytest.mark.gpu
def test_group_masks_equal_each_answer_alone_on_the_gpu(square_samples) -> None:
    from omni_r1.config import DetailParams
    from omni_r1.systems.detail import build_sam2_predictor

    torch.manual_seed(0)
    predictor = build_sam2_predictor(DetailParams(backend="sam2", sam2_checkpoint="random", sam2_image_size=256,
                                                  device="cuda"))
    together, alone = _group_equals_alone(predictor, _appearance(square_samples))
    assert together == 3 and alone == 8
