"""Rewards (omni_r1.rl.rewards) on hand-made answers and masks, every total checked by hand.

The clip: 8 sampled frames treated as 2 fps (4.0 s), masks 16x16 at the displayed size, System 2's
frames 32x32 (so every box and mask crosses a 2x scale). Object A is the square rows/cols 2..5 on
frames 0-5 and absent on frames 6-7. Answers are parsed by the real parser; System 2's output is
written by hand (a SegmentResult), standing in for a segmenter.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import pytest

from omni_r1.config import RewardParams
from omni_r1.data.masks import encode_rle
from omni_r1.eval.metrics import box_iou_pixels
from omni_r1.rl.rewards import (
    REFAVS_COLUMNS,
    REVOS_COLUMNS,
    RewardBreakdown,
    RewardError,
    apply_length_control,
    format_reward,
    mask_box,
    num_reward,
    reward_columns,
    score_rollouts,
    segmentation_reward,
)
from omni_r1.systems.answer import try_parse
from omni_r1.systems.collaboration import Rollout, keyframe_prompts
from omni_r1.systems.detail import SegmentResult
from omni_r1.types import Box, KeyframeSelection, MaskTrack, ObjectMasks, Sample

T, SIZE, HIGH, FPS = 8, 16, 32, 2.0
DURATION = T / FPS
BOX_A = Box(4, 4, 11, 11)  # object A's true box in high-res pixels: displayed [2, 5] scaled by edges x2


def square(rows: slice, cols: slice, frames: range) -> np.ndarray:
    """(T, 16, 16) bool: a rectangle on the given frames."""
    m = np.zeros((T, SIZE, SIZE), bool)
    for t in frames:
        m[t, rows, cols] = True
    return m


A = square(slice(2, 6), slice(2, 6), range(6))
B = square(slice(9, 13), slice(8, 14), range(T))


def make_sample(*objects: np.ndarray, key: str = "vid/0") -> Sample:
    """A sample whose native frames are its sampled frames, with the given per-object masks."""
    track = MaskTrack(SIZE, SIZE, T, tuple(
        ObjectMasks(str(i), tuple(encode_rle(f) if f.any() else None for f in obj)) for i, obj in enumerate(objects)
    ))
    frames = np.zeros((T, HIGH, HIGH, 3), np.uint8)
    meta = {"split": "train", "expression": "the square", "height": SIZE, "width": SIZE}
    return Sample(key, meta, tuple(range(T)), tuple(i / FPS for i in range(T)), frames[:, ::4, ::4], frames,
                  np.zeros(0, np.float32), track)


def upsample(masks: np.ndarray) -> np.ndarray:
    """Displayed-size masks to System 2's high-res size (exact 2x)."""
    return masks.repeat(2, axis=-2).repeat(2, axis=-1)


def stamp(seconds: float) -> str:
    return f"{int(seconds // 60):02d}:{seconds % 60:05.2f}"


def completion(*moments: tuple[float, float], think: str = "reasoning") -> str:
    objects = [json.dumps({"start_time": stamp(s), "end_time": stamp(e), "description": "the square"})
               for s, e in moments]
    return f"<think>{think}</think>\n<answer>\n" + "\n".join(objects) + "\n</answer>"


def rollout(text: str, boxes: dict[int, list[Box]] | None = None, masks: np.ndarray | None = None,
            *, task: str = "revos", system2_ran: bool = True) -> Rollout:
    """Parse ``text`` with the real parser and attach a hand-written System 2 result."""
    parsed = try_parse(text, task=task, duration=DURATION, num_frames=T, fps=FPS, max_keyframes=4)
    selection = parsed if isinstance(parsed, KeyframeSelection) else None
    prompts = keyframe_prompts(selection, T) if selection is not None else ()
    high = np.zeros((T, HIGH, HIGH), bool) if masks is None else masks
    segment = None
    if prompts and system2_ran:
        boxes = boxes or {}
        count = sum(len(b) for b in boxes.values())
        segment = SegmentResult(high, np.repeat(high[None], count, axis=0), {k: v for k, v in boxes.items() if v},
                                entries={k: tuple(v) for k, v in boxes.items()})
    return Rollout(text, selection, None if selection is not None else parsed, prompts, segment, high)


def score(rollouts, sample, params=None, *, task="revos", lengths=None) -> list[RewardBreakdown]:
    params = params or RewardParams(length_control=False)
    return score_rollouts(rollouts, sample, params, task=task, num_frames=T, fps=FPS, duration=DURATION,
                          completion_lengths=lengths or [500] * len(rollouts))


def one(r: Rollout, sample: Sample, params: RewardParams | None = None) -> RewardBreakdown:
    return score([r], sample, params)[0]


PERFECT_TEXT = completion((0.0, 0.0), (0.5, 0.5), (1.0, 1.0), (2.0, 2.0))  # frames 0, 1, 2, 4
PERFECT_BOXES = {f: [BOX_A] for f in (0, 1, 2, 4)}


def close(actual: dict[str, float], expected: dict[str, float]) -> None:
    for name, value in expected.items():
        assert actual[name] == pytest.approx(value, abs=1e-9), name


# ----------------------------------------------------------------------------------------------- video


def test_perfect_answer_scores_every_component_at_its_maximum() -> None:
    b = one(rollout(PERFECT_TEXT, PERFECT_BOXES, upsample(A)), make_sample(A))
    assert b.failure is None
    assert tuple(b.components) == REVOS_COLUMNS == reward_columns("revos")
    # parse: 4 objects x 0.6 = 2.4; mask ratios 4 x 1; cumulated (2.4 + 4) / 4 = 1.6; num 4 x 0.4 = 1.6
    close(b.components, {"format": 1, "objects": 4, "parse": 2.4, "mask_ratio": 4, "cumulated": 1.6, "overlap": 0,
                         "num": 1.6, "saliency": 16 / (16 + 1e-6), "grounding": 1, "object_penalty": 0,
                         "segmentation": 1, "length": 0})  # the official saliency ratio has + 1e-6 below
    # R_acc = 1.6 + 1 (1.6 + 0) + 0 x saliency + 1 x 1 + 0 + 2 x 1 = 6.2; total = 1 x 1 + 6.2
    assert b.components["accuracy"] == pytest.approx(6.2)
    assert b.total == pytest.approx(7.2)


def test_partially_overlapping_moments_pay_length_and_repeat_penalties() -> None:
    text = completion((0.0, 1.0), (0.5, 1.5))  # frames 0-2 and 1-3: frames 1 and 2 chosen twice
    b = one(rollout(text, {f: [BOX_A] for f in range(4)}, upsample(A)), make_sample(A))
    # length terms 2 x (1 - 3) x 0.2 = -0.8; repeats 6 - 4 = 2 -> -1.0
    close(b.components, {"parse": 1.2, "mask_ratio": 2, "cumulated": 1.6, "overlap": -1.8, "num": 1.6,
                         "grounding": 1, "segmentation": 1})
    assert b.components["accuracy"] == pytest.approx(1.6 + (1.6 - 1.8) + 1 + 2 * 1)


def test_target_absent_in_the_chosen_frames() -> None:
    text = completion((3.0, 3.0), (3.5, 3.5))  # frames 6 and 7, where A is absent
    b = one(rollout(text, {}, None), make_sample(A))
    # System 2 found no box: as the official code, SAM2 is not asked and R_G is 0, not the 2 / 8 of frames
    # where target and prediction are both empty -- grounding nothing earns no segmentation reward.
    close(b.components, {"parse": 1.2, "mask_ratio": 0, "cumulated": 0.6, "overlap": 0, "num": 0.8, "saliency": 0,
                         "grounding": 0, "object_penalty": 0, "segmentation": 0})
    assert b.components["accuracy"] == pytest.approx(0.6 + 0.8)
    assert b.failure == "no_valid_box"  # counted, so a run can see how often its grounder finds nothing


def test_mask_ratio_and_saliency_are_per_object_and_frame() -> None:
    half = square(slice(2, 4), slice(2, 6), range(6))  # A at half its area on frames 0-5
    grown = A.copy()
    grown[3] = False
    grown[3, 2:4, 2:6] = True  # frame 3: area 8 of the largest 16
    text = completion((1.0, 2.0))  # frames 2, 3, 4
    b = one(rollout(text, {f: [BOX_A] for f in (2, 3, 4)}, upsample(grown)), make_sample(grown, key="v/1"))
    assert b.components["saliency"] == pytest.approx((1 + 0.5 + 1) / 3)
    both = one(rollout(completion((2.5, 3.5))), make_sample(A, half, key="v/2"))  # frames 5-7
    assert both.components["mask_ratio"] == pytest.approx(2 / 6)  # (A, 5) and (half, 5) of 6 pairs


def test_null_expression_rewards_an_empty_prediction_per_spec() -> None:
    sample = make_sample()  # no target object at all
    quiet = one(rollout(PERFECT_TEXT, {}, None), sample)
    # no (object, frame) pairs: mask ratio 0; no true box: R_A 0; empty vs empty on every frame: R_G 1
    close(quiet.components, {"mask_ratio": 0, "cumulated": 0.6, "saliency": 0, "grounding": 0,
                             "object_penalty": 0, "segmentation": 1})
    assert quiet.components["accuracy"] == pytest.approx(0.6 + 1.6 + 2 * 1)
    noisy = one(rollout(PERFECT_TEXT, PERFECT_BOXES, upsample(A)), sample)
    # one box on each of 4 keyframes, K = 0 (normalised by 1): -0.5 x 4 / 4; J 0 on frames 0-5
    close(noisy.components, {"object_penalty": -0.5, "segmentation": 0.25})


def test_missing_tags_score_zero_and_are_flagged() -> None:
    b = one(rollout('{"start_time": "00:01.00", "end_time": "00:01.00", "description": "x"}'), make_sample(A))
    assert b.failure == "missing_tags"
    assert b.components["format"] == 0 and b.components["accuracy"] == 0 and b.total == 0
    assert set(b.components) == set(REVOS_COLUMNS)


def test_bad_json_keeps_the_parse_terms() -> None:
    b = one(rollout('<think>x</think><answer>{"start_time": 00:01.00, "end_time": "x"}</answer>'), make_sample(A))
    assert b.failure == "bad_json"
    close(b.components, {"format": 1, "objects": 1, "parse": 0.2, "cumulated": 0.2, "accuracy": 0.2, "segmentation": 0})
    assert b.total == pytest.approx(1.2)


def test_out_of_range_times_score_parse_terms_only() -> None:
    text = completion((5.0, 5.0), (2.0, 1.0))  # after the 4 s clip; start after end
    b = one(rollout(text), make_sample(A))
    assert b.failure == "out_of_range"
    close(b.components, {"objects": 2, "parse": 0.8, "cumulated": 0.4, "num": 0, "overlap": 0, "accuracy": 0.4})


def test_one_bad_object_among_good_ones_counts_in_j() -> None:
    good = completion((1.0, 1.0))
    text = good.replace("</answer>", '{"start_time": "1.0", "end_time": "x", "description": "y"}\n</answer>')
    b = one(rollout(text, {2: [BOX_A]}, upsample(A)), make_sample(A))
    assert b.failure is None
    # J = 2: parse 0.4 + 0.2 + 0.2 = 0.8; one mask ratio 1; cumulated 1.8 / 2
    close(b.components, {"objects": 2, "parse": 0.8, "cumulated": 0.9, "num": 0.4})


def test_duplicate_frames_pay_the_overlap_penalty() -> None:
    b = one(rollout(completion((1.0, 1.0), (1.2, 1.2)), {2: [BOX_A]}, upsample(A)), make_sample(A))
    close(b.components, {"overlap": -0.5, "num": 0.4, "mask_ratio": 2, "cumulated": (1.2 + 2) / 2})


def test_more_boxes_than_objects_are_penalised_and_ignored_for_r_a() -> None:
    far = Box(20, 20, 30, 30)
    boxes = {**PERFECT_BOXES, 0: [BOX_A, far, far]}
    b = one(rollout(PERFECT_TEXT, boxes, upsample(A)), make_sample(A))
    # 2 extra boxes on 1 of 4 keyframes, K = 1: -0.5 x 2 / ((1 + 1e-6) x 4), the official epsilon; only the
    # first K boxes are matched
    close(b.components, {"object_penalty": -0.25 / (1 + 1e-6), "grounding": 1})
    assert b.components["accuracy"] == pytest.approx(6.2 - 0.25 / (1 + 1e-6))


def test_hungarian_matching_pairs_boxes_with_their_objects() -> None:
    box_b = Box(16, 18, 27, 25)  # B: displayed cols 8..13, rows 9..12
    b = one(rollout(completion((1.0, 1.0)), {2: [box_b, BOX_A]}, upsample(A | B)), make_sample(A, B))
    assert b.components["grounding"] == pytest.approx(1.0)
    half = Box(4, 4, 7, 11)  # half of A's box: IoU 32 / 64
    missing = one(rollout(completion((1.0, 1.0)), {2: [half]}, upsample(A | B)), make_sample(A, B))
    assert missing.components["grounding"] == pytest.approx((0.5 + 0) / 2)  # B unmatched scores 0


def test_system2_error_is_flagged_not_hidden() -> None:
    b = one(rollout(PERFECT_TEXT, system2_ran=False), make_sample(A))
    assert b.failure == "system2_error"
    close(b.components, {"cumulated": 1.6, "num": 1.6, "grounding": 0, "object_penalty": 0, "segmentation": 0})
    assert b.components["accuracy"] == pytest.approx(1.6 + 1.6)
    parsed = rollout(PERFECT_TEXT)
    nothing = replace(parsed, selection=replace(parsed.selection, keyframes=()), prompts=(), segment=None)
    assert one(nothing, make_sample(A)).failure == "no_keyframes"


def test_boxes_and_masks_are_scaled_between_displayed_and_high_res() -> None:
    square_mask = np.zeros((16, 16), bool)
    square_mask[2:6, 2:6] = True
    assert mask_box(square_mask, (32, 32)) == (4, 4, 11, 11)  # 4 px -> 8 px wide, +1 convention
    assert mask_box(square_mask, (24, 24)) == (3, 3, 8, 8)  # x1.5: 4 px -> 6 px
    assert mask_box(square_mask, (16, 32)) == (4, 2, 11, 5)  # anisotropic
    assert mask_box(np.zeros((16, 16), bool), (32, 32)) is None
    # prediction at 32x32 is resized to the truth's 16x16 with nearest neighbours, never the reverse
    assert segmentation_reward(upsample(A), A) == pytest.approx(1.0)
    shifted = np.roll(upsample(A), 2, axis=2)  # 1 displayed pixel down: J 12 / 20 on frames 0-5
    assert segmentation_reward(shifted, A) == pytest.approx((6 * 12 / 20 + 2) / 8)


def test_box_iou_uses_the_plus_one_pixel_convention() -> None:
    one_pixel = [3, 3, 3, 3]
    assert box_iou_pixels(one_pixel, one_pixel)[0, 0] == 1.0  # a one-pixel box has area 1, not 0
    ious = box_iou_pixels([[0, 0, 3, 3], [10, 10, 12, 12]], [[0, 0, 1, 3], [4, 0, 5, 3], [0, 0, 3, 3]])
    assert ious.shape == (2, 3)
    np.testing.assert_allclose(ious[0], [8 / 16, 0.0, 1.0])  # touching edges [0, 3] and [4, 5] do not overlap
    np.testing.assert_allclose(ious[1], [0.0, 0.0, 0.0])


def test_weights_scale_their_components() -> None:
    r, sample = rollout(PERFECT_TEXT, PERFECT_BOXES, upsample(A)), make_sample(A)

    def accuracy(**weights: float) -> float:
        return one(r, sample, RewardParams(length_control=False, **weights)).components["accuracy"]

    base = accuracy()
    assert accuracy(alpha_g=0.0) == pytest.approx(base - 2)  # segmentation 1 x 2
    assert accuracy(alpha_a=3.0) == pytest.approx(base + 2)  # grounding 1 x (3 - 1)
    assert accuracy(alpha_k=0.0) == pytest.approx(base - 1.6)  # num 1.6 + overlap 0
    assert accuracy(alpha_k_ratio=1.0) == pytest.approx(base + 1)  # saliency 1
    weighted = one(r, sample, RewardParams(format_weight=0.5, length_control=False))
    assert weighted.total == pytest.approx(0.5 + base)
    assert num_reward(4, 4) == pytest.approx(1.6) and num_reward(5, 4) == pytest.approx(0.8)
    assert num_reward(6, 4) == pytest.approx(0.4) and num_reward(3, 2) == pytest.approx(0.0)


def test_cumulated_fallback_replaces_a_negative_remainder() -> None:
    # frames 6 and 6 (A absent): num 0.4, overlap -0.5; with alpha_g 0 the remainder is -0.1
    r, sample = rollout(completion((3.0, 3.0), (3.2, 3.2)), {}, None), make_sample(A)
    off = one(r, sample, RewardParams(alpha_g=0.0, length_control=False))
    on = one(r, sample, RewardParams(alpha_g=0.0, cumulated_fallback=True, length_control=False))
    assert off.components["cumulated"] == pytest.approx(0.6)
    assert off.components["accuracy"] == pytest.approx(0.5)
    assert on.components["accuracy"] == pytest.approx(0.6)


def test_format_reward_needs_the_whole_completion() -> None:
    assert format_reward("<think>a\nb</think>\n<answer>c\nd</answer>") == 1.0
    assert format_reward("preamble <think>a</think><answer>c</answer>") == 0.0
    assert format_reward("<think>a</think><answer>c</answer> trailing") == 0.0


# ----------------------------------------------------------------------------------------------- length control


def test_length_control_rewards_mid_length_answers_when_several_succeed() -> None:
    sample, good = make_sample(A), rollout(PERFECT_TEXT, PERFECT_BOXES, upsample(A))
    bad = rollout("no tags at all")
    params = RewardParams()  # length_control on, 320..750 tokens, threshold 0.1, bonus 1
    out = score([good, good, good, bad], sample, params, lengths=[400, 100, 900, 500])
    assert [b.components["length"] for b in out] == [1.0, 0.0, 0.0, 0.0]
    assert out[0].total == pytest.approx(out[1].total + 1.0)
    alone = score([good, bad], sample, params, lengths=[400, 400])  # only one rollout above the threshold
    assert [b.components["length"] for b in alone] == [0.0, 0.0]
    off = score([good, good], sample, RewardParams(length_control=False), lengths=[400, 400])
    assert [b.components["length"] for b in off] == [0.0, 0.0]
    with pytest.raises(ValueError, match="completion lengths"):
        apply_length_control(out, [1], params)


# ----------------------------------------------------------------------------------------------- RefAVS


def refavs(boxes: list[Box] | None, *, text: str = "<think>hear it</think><answer>the red square</answer>",
           system2_ran: bool = True) -> Rollout:
    return rollout(text, {0: boxes} if boxes else {}, None, task="refavs", system2_ran=system2_ran)


def test_refavs_iou_of_the_first_box_on_frame_zero() -> None:
    sample, params = make_sample(A), RewardParams(length_control=False, refavs_empty_reward=0.25)
    perfect, partial, empty, unparsed, crashed = score(
        [refavs([BOX_A, Box(0, 0, 3, 3)]), refavs([Box(4, 4, 7, 11)]), refavs(None),
         refavs(None, text="no tags"), refavs([BOX_A], system2_ran=False)],
        sample, params, task="refavs")
    assert tuple(perfect.components) == REFAVS_COLUMNS == reward_columns("refavs")
    assert perfect.components["iou"] == pytest.approx(1) and perfect.failure is None
    assert perfect.total == pytest.approx(2.0)
    assert partial.components["accuracy"] == pytest.approx(0.5)  # 4x8 inside 8x8, +1 convention
    # No box: the official dummy box, IoU 0 against a true box (refavs_empty_reward is for an empty answer)
    assert (empty.components["accuracy"], empty.failure) == (0.0, "no_box")
    assert (unparsed.components["accuracy"], unparsed.failure) == (0.25, "missing_tags")
    assert (crashed.components["accuracy"], crashed.failure) == (0.25, "system2_error")


def test_refavs_on_an_empty_truth_rewards_abstaining() -> None:
    none_there = make_sample(square(slice(2, 6), slice(2, 6), range(1, T)))  # absent on frame 0
    abstain, guess = score([refavs(None), refavs([BOX_A])], none_there, task="refavs")
    assert (abstain.components["accuracy"], abstain.failure) == (1.0, None)
    assert (guess.components["accuracy"], guess.failure) == (0.0, None)


# ----------------------------------------------------------------------------------------------- loud failures


def test_non_finite_component_raises_naming_sample_and_component() -> None:
    nan_box = Box(math.nan, 4, 11, 11)
    with pytest.raises(RewardError, match=r"'vid/0'.*'grounding'"):
        score([rollout(PERFECT_TEXT, {**PERFECT_BOXES, 0: [nan_box]}, upsample(A))], make_sample(A))
    with pytest.raises(RewardError, match=r"'vid/0'.*'iou'"):
        score([refavs([nan_box])], make_sample(A), task="refavs")


def test_wrong_clip_or_inputs_fail_loudly() -> None:
    r, sample = rollout(PERFECT_TEXT, PERFECT_BOXES, upsample(A)), make_sample(A)
    with pytest.raises(ValueError, match="num_frames"):
        score_rollouts([r], sample, RewardParams(), task="revos", num_frames=6, fps=FPS, duration=DURATION,
                       completion_lengths=[1])
    with pytest.raises(ValueError, match="different clip"):
        score_rollouts([r], sample, RewardParams(), task="revos", num_frames=T, fps=FPS, duration=1.0,
                       completion_lengths=[1])
    with pytest.raises(ValueError, match="completion lengths"):
        score([r], sample, lengths=[1, 2])
    with pytest.raises(ValueError, match="parsed as 'revos'"):
        score([r], sample, task="refavs")
    with pytest.raises(ValueError, match="unknown task"):
        reward_columns("coco")  # type: ignore[arg-type]
