"""The light detail system's pure parts (crops, references, hard negatives, keyframe policies) and one slow proof.

``omni_r1.systems.light`` (networks, geometry, inference) is ``light``; ``omni_r1.detail_training`` (training
data, training, held-out evaluation) is ``training``.

The slow test runs the demo's own path on a small scale: synthetic mp4s, the shard pipeline, the
light models trained briefly, then System 2 from keyframes placed by the measuring policies. It
checks that keyframes where the target is visible give better masks than keyframes where it is not.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from omni_r1 import detail_training as training
from omni_r1.config import DetailParams, LightParams
from omni_r1.data.synthetic import COLOURS
from omni_r1.systems import light as lm
from omni_r1.systems.collaboration import uniform_keyframes

# ----------------------------------------------------------------------------------------------- geometry


def test_crop_window_grows_around_the_centre() -> None:
    assert lm.crop_window((10.0, 20.0, 30.0, 30.0), 0.5, 8.0) == (0.0, 15.0, 40.0, 35.0)
    # tiny boxes get at least min_side of context
    x1, y1, x2, y2 = lm.crop_window((50.0, 50.0, 51.0, 51.0), 1.0, 8.0)
    assert x2 - x1 == pytest.approx(3 * 8.0) and (x1 + x2) / 2 == pytest.approx(50.5)


def test_box_in_window_maps_to_crop_pixels() -> None:
    window = (10.0, 20.0, 50.0, 40.0)  # 40 x 20 frame pixels -> 64 x 64 crop
    assert lm.box_in_window((10.0, 20.0, 50.0, 40.0), window, 64) == (0.0, 0.0, 64.0, 64.0)
    assert lm.box_in_window((20.0, 25.0, 30.0, 30.0), window, 64) == (16.0, 16.0, 32.0, 32.0)


def test_crop_of_the_whole_frame_at_its_size_is_the_frame() -> None:
    image = torch.rand(1, 3, 16, 16)
    np.testing.assert_allclose(lm.crop(image, [(0.0, 0.0, 16.0, 16.0)], 16).numpy(), image.numpy(), atol=1e-6)


def test_crop_outside_the_frame_reads_black() -> None:
    image = torch.ones(1, 1, 8, 8)
    out = lm.crop(image, [(-8.0, 0.0, 8.0, 8.0)], 16)[0, 0]
    assert out[2:14, :7].max() == 0 and out[2:14, 9:].min() == 1


def test_paste_puts_crop_logits_back_and_leaves_the_rest_outside() -> None:
    mask = np.zeros((40, 60), bool)
    mask[10:20, 30:45] = True
    window = lm.crop_window(lm.mask_box(mask), 0.5, 8.0)
    logits = lm.crop(torch.from_numpy(mask[None, None].astype(np.float32)), [window], 64)[0, 0] * 20 - 10
    pasted = lm.paste(logits, window, 40, 60)
    assert pasted.shape == (40, 60)
    np.testing.assert_array_equal((pasted > 0).numpy(), mask)
    assert float(pasted[0, 0]) == lm.LOGIT_OUTSIDE and float(pasted[39, 59]) == lm.LOGIT_OUTSIDE


def test_paste_of_a_window_off_the_frame_is_all_outside() -> None:
    pasted = lm.paste(torch.zeros(8, 8), (100.0, 100.0, 120.0, 120.0), 10, 10)
    assert torch.all(pasted == lm.LOGIT_OUTSIDE)


def test_jitter_box_keeps_a_proper_box() -> None:
    rng = np.random.default_rng(0)
    for _ in range(100):
        x1, y1, x2, y2 = training.jitter_box((5.0, 5.0, 7.0, 7.0), rng, 2.0)
        assert x2 > x1 and y2 > y1


def test_mean_colour_and_reference() -> None:
    image = torch.zeros(3, 4, 4)
    image[0, :2] = 1.0
    mask = np.zeros((4, 4), bool)
    mask[:2, :2] = True
    colour = lm.mean_colour(image, mask)
    assert colour.tolist() == [1.0, 0.0, 0.0]
    assert lm.reference_vector(colour).tolist() == [1.0, 0.0, 0.0, 1.0]
    assert lm.mean_colour(image, np.zeros((4, 4), bool)) is None
    assert lm.reference_vector(None).tolist() == [0.0, 0.0, 0.0, 0.0]


def test_segment_returns_frame_logits_outside_the_crop() -> None:
    torch.manual_seed(0)
    models = lm.LightModels.untrained(training.default_vocabulary(), 32, LightParams())
    images = torch.rand(2, 3, 48, 80)
    logits = models.segment(images, [(10.0, 10.0, 20.0, 20.0), (60.0, 30.0, 70.0, 40.0)],
                            [None, torch.tensor([1.0, 0.0, 0.0])], models.tuning.key_margin)
    assert logits.shape == (2, 48, 80)
    assert float(logits[0, 47, 79]) == lm.LOGIT_OUTSIDE and float(logits[1, 0, 0]) == lm.LOGIT_OUTSIDE
    assert torch.all(logits[0, 10:20, 10:20] != lm.LOGIT_OUTSIDE)


# ----------------------------------------------------------------------------------------------- text


def test_hard_negative_names_an_absent_colour_or_shape() -> None:
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(50):
        text = training.hard_negative("the red circle moving around", {"red", "blue"}, rng, 0.3)
        assert text is not None and text != "the red circle moving around" and text.endswith("moving around")
        colour, shape = training._words_in(text, COLOURS), training._words_in(text, ("circle", "square", "triangle"))
        assert colour != ["blue"] and (colour != ["red"] or shape != ["circle"])
        seen.add("shape" if colour == ["red"] else "colour")
    assert seen == {"shape", "colour"}
    assert training.hard_negative("the object making the beep", set(), rng, 0.3) is None
    assert training.hard_negative("the red circle", set(COLOURS), np.random.default_rng(1), 0.3) in (
        None, "the red square", "the red triangle")


def test_recolour_paints_the_target_and_says_so() -> None:
    image = torch.zeros(3, 8, 8)
    mask = np.zeros((8, 8), bool)
    mask[2:4, 2:4] = True
    painted, text, shown = training._recolour(image, mask, "the red square", set(), np.random.default_rng(0))
    new = training._words_in(text, COLOURS)[0]
    assert new != "red" and shown == {new}
    assert painted[:, 2, 2].tolist() == pytest.approx([c / 255 for c in COLOURS[new]])
    assert painted[:, 0, 0].tolist() == [0.0, 0.0, 0.0]


# ----------------------------------------------------------------------------------------------- policies


def test_spread_and_policies() -> None:
    assert training.spread([], 4) == []
    assert training.spread([3, 4, 5, 6, 7, 8], 4) == [3, 5, 6, 8]
    assert training.spread([3, 4, 5], 1) == [4]
    shown = np.array([0, 0, 1, 1, 1, 1, 0, 0, 0, 0], bool)
    assert training.policy_keyframes("oracle_visible", shown) == [2, 3, 4, 5]
    assert training.policy_keyframes("absent", shown) == [0, 6, 7, 9]
    assert training.policy_keyframes("oracle_visible", shown, 1) == [4]
    with pytest.raises(ValueError, match="unknown keyframe policy"):
        training.policy_keyframes("random", shown)


def test_uniform_policy_matches_the_collaboration_reference() -> None:
    class _Sample:
        frame_indices = tuple(range(12))
        expression = "x"

    shown = np.ones(12, bool)
    expected = [k.frame for k in uniform_keyframes(_Sample(), 4)]
    assert training.policy_keyframes("uniform", shown) == expected


def test_truth_description_reads_colour_and_shape() -> None:
    frames = np.zeros((2, 32, 32, 3), np.uint8)
    masks = np.zeros((2, 32, 32), bool)
    masks[0, 4:14, 4:14] = True  # a square
    masks[1, 4:14, 4:14] = True
    frames[masks] = COLOURS["cyan"]
    clip = training._Clip(torch.zeros(2, 3, 8, 8), np.zeros((2, 8, 8), bool), lm.frames_tensor(frames), masks, frames,
                    "the object making the beep", "sound", "referring")
    assert training.truth_description(clip) == "the cyan square"
    yy, xx = np.mgrid[:32, :32]
    clip.full_masks[:] = (yy - 15.5) ** 2 + (xx - 15.5) ** 2 <= 100
    clip.frames[:] = 0
    clip.frames[clip.full_masks] = COLOURS["orange"]
    assert training.truth_description(clip) == "the orange circle"


# ----------------------------------------------------------------------------------------------- slow


def _demo_like_shards(root: Path, videos: int) -> Path:
    """Synthetic mp4s of the demo's size through ingest and the shard pipeline (12 frames at 2 fps)."""
    from omni_r1.data.pipeline import shard_in_process
    from omni_r1.data.shards import SamplingPlan
    from omni_r1.data.synthetic import SynthSpec, generate

    data = root / "synthetic"
    generate(data, "video", SynthSpec(videos=videos, seed=3, width=256, height=192, fps=10, seconds=6.0))
    plan = SamplingPlan(fps=2.0, max_frames=12, low_res=64, high_res=256)
    assert shard_in_process("video", data, root / "shards", plan, videos_per_shard=4) == []
    return root / "shards"


@pytest.mark.slow
def test_better_keyframes_give_better_masks(tmp_path: Path) -> None:
    from omni_r1.data.shards import read_samples

    # 14 videos: 8 train, of which the last detail.light_holdout_videos (2) measure the light models (e14e5a5),
    # so they train on 6 videos as this test did with 10 videos before the holdout; val + test hold 6 videos.
    # Measured (150 steps, light_size 128, seed 0): with 10 videos (4 trained on) the grounder finds no box on
    # val + test (box IoU 0.0) and oracle-visible J is 0.381 vs absent 0.278; with 14, box IoU 0.69 and
    # oracle-visible J 0.574 vs uniform 0.532 vs absent 0.252.
    shards = _demo_like_shards(tmp_path, videos=14)
    samples = [s for split in ("train", "val", "test") for s in read_samples(shards, split)]
    params = DetailParams(light_steps=150, light_size=128, light_batch=16, seed=0)
    metrics = training.train_light_models(samples, params, tmp_path / "detail")
    assert metrics["segmenter_mask_iou"] > metrics["box_as_mask_iou"]
    # measure on val and test together: two held-out videos alone are few
    models = lm.load_light_models(tmp_path / "detail")
    held_out = training.prepare_clips([s for s in samples if s.split in ("val", "test")], models.size)
    e2e = training.evaluate_light_models(models, held_out, params.max_objects)
    assert e2e["e2e_samples"] >= 4
    assert e2e["e2e_j_oracle_visible"] > e2e["e2e_j_absent"] + 0.15, e2e
    assert e2e["e2e_j_oracle_visible"] > 0.5, e2e
