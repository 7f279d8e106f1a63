"""Omni-R1's hierarchical rewards (spec section 2) as small pure functions with named components.

They follow the official code term by term (aim-uofa/Omni-R1 at 1de42f8: ``src/omni_r1/reward.py``
``vos_reward``/``handle_rewards``/``refavs_reward``, ``load_datasets/revos.py``
``time_reward_multi_time``/``grounding2sam_process_reward``, ``load_datasets/refavs.py``);
``tests/unit/test_official_oracle.py`` holds an oracle written from those files and checks that
both agree to 1e-9. Where we knowingly differ, a parameter switches (listed in the README's
Fidelity section).

R = format_weight * R_format + R_acc (+ a length bonus across the batch). On a video (``revos``):

- parse terms: 0.2 per ``{...}`` object (J), +0.2 per object whose start, end and description parse,
  +0.2 per kept moment (start <= end <= duration). With no kept moment the reward is that sum / J
  (0 when J = 0) and nothing is grounded.
- per kept moment: ``mask_ratio`` (fraction of its (object, frame) pairs with a non-empty true mask)
  and a length term min(0, (1 - frames) * 0.2).
- ``cumulated`` = (parse terms + sum of mask ratios) / J.
- ``overlap`` = sum of length terms - 0.5 x repeated frames. A frame chosen n times counts n - 1
  repeats, as the official code counts (occurrences - distinct); for the usual n = 2 that is "one
  frame chosen more than once", the spec's wording.
- ``num`` (R_num): with u distinct chosen frames and target K0, 0.4 u for u <= K0, else
  0.4 (2 K0 - 1 - u). The official code writes this as N + (N - u) - 1 with N = K0 = 4, i.e.
  0.4 (7 - u). We keep the code's form 2 K0 - 1 rather than K0 + 3: both give 7 at K0 = 4, but
  K0 + 3 would pay more for K0 + 1 frames than for K0 when K0 < 3; 2 K0 - 1 always drops by 0.8
  one frame past the target.
- The grounding terms below count only when System 2's grounder gave at least one valid box among
  the first K entries of some keyframe (K = number of target objects): the official code then
  asks SAM2 and adds them; otherwise (no valid box, or System 2 failed) R_acc is cumulated +
  alpha_k (num + overlap) and they are all 0 -- grounding nothing earns no R_G.
- ``saliency`` (R_saliency): mean over keyframes of the true area (objects' areas summed, as the
  official code sums its object masks) over (the largest such area on the sampled frames + 1e-6).
- ``grounding`` (R_A): per keyframe the first K grounder entries (an invalid entry is a box that
  overlaps nothing) are matched to the K objects by the Hungarian algorithm on box IoU
  (+1-pixel convention, ``eval.metrics.box_iou_pixels``); the mean matched IoU over the (object,
  keyframe) pairs with a true box, 0 when there is no such pair. With
  ``rewards.zero_iou_at_left_edge`` a true box starting at x = 0 scores 0 (the official check).
- ``object_penalty``: -0.5 x (entries beyond K, summed over keyframes) / ((K + 1e-6) x keyframes),
  the official ``object_num_mismatch`` with its 1e-6; K = 0 (a null expression, which the official
  loader never trains on) is normalised by 1, where the official 1e-6 would make one stray box cost
  500 000.
- ``segmentation`` (R_G): mean over the sampled frames of J (``eval.metrics.region_j``) between
  System 2's union mask and the union of the true masks, empty-empty = 1. System 2's masks are
  at the high-res frame size; they are resized to the truth's displayed size with nearest
  neighbours (``masks_to_native``, the same step the predictions take at evaluation), so the
  truth is never resampled. For a null expression (K = 0, our extension: the official loader skips
  them) there is no first-K entry, so R_G counts whenever System 2 ran: 1 per frame it leaves empty.
- ``accuracy`` (R_acc) = cumulated + alpha_k (num + overlap) + alpha_k_ratio saliency
  + alpha_a grounding + object_penalty + alpha_g segmentation; with ``cumulated_fallback``,
  R_acc = cumulated whenever everything after cumulated sums to <= 0.

True boxes come from the true masks at the displayed size (inclusive pixel corners) and are scaled
to System 2's high-res frame pixels by edges: pixel x covers [x, x + 1) displayed, so the box
[x1, x2] becomes [x1 sx, (x2 + 1) sx - 1], which scales its +1-convention width by exactly sx.

On RefAVS the reward is the IoU of System 2's first entry on frame 0 with the true box there. An
empty answer scores ``params.refavs_empty_reward`` (official: 0) and is flagged; no valid first
entry counts as the official dummy box: 1.0 when the truth on frame 0 is empty too, else 0 (flagged
``no_box``); a box on a frame whose truth is empty is wrong (0.0).

A breakdown never hides a failure: an answer that did not parse keeps the spec's defined reward and
carries the parse error's ``code``; a System 2 that produced nothing for chosen keyframes is flagged
``system2_error`` and its terms are 0. A non-finite component raises ``RewardError``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Literal, Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment

from omni_r1.config import RewardParams
from omni_r1.data.masks import decode_rle
from omni_r1.eval.metrics import box_iou_pixels, region_j
from omni_r1.systems.answer import matches_format
from omni_r1.systems.collaboration import Rollout, masks_to_native
from omni_r1.types import Box, KeyframeSelection, Moment, Sample

Task = Literal["revos", "refavs"]

# Spec section 2 constants (the official reward's fixed numbers; the weights live in params.yaml).
OBJECT_TERM = 0.2  # per {...} object in the answer
FIELDS_TERM = 0.2  # per object whose start, end and description parse
KEPT_TERM = 0.2  # per moment with start <= end <= duration
LENGTH_STEP = 0.2  # length term min(0, (1 - frames) * 0.2)
REPEAT_PENALTY = 0.5  # per repeated frame
NUM_STEP = 0.4  # R_num per frame
MISMATCH_WEIGHT = 0.5  # object_num_mismatch scale
OFFICIAL_EPS = 1e-6  # the official code's epsilon in the saliency ratio and the object-count penalty

REVOS_COLUMNS: tuple[str, ...] = (
    "format", "objects", "parse", "mask_ratio", "cumulated", "overlap", "num", "saliency",
    "grounding", "object_penalty", "segmentation", "accuracy", "length",
)  # fmt: skip
REFAVS_COLUMNS: tuple[str, ...] = ("format", "iou", "accuracy", "length")

SYSTEM2_ERROR = "system2_error"  # keyframes were chosen but System 2 returned nothing
NO_KEYFRAMES = "no_keyframes"  # a parsed video answer that grounds no frame
NO_BOX = "no_box"  # RefAVS: System 2 found no box where the target shows
NO_VALID_BOX = "no_valid_box"  # video: no valid box among the first K grounder entries of any keyframe


class RewardError(ValueError):
    """A reward that cannot be trusted (a non-finite component); the trainer stops on it."""


@dataclass(frozen=True)
class RewardBreakdown:
    """One rollout's reward: named components (the same keys for every rollout of a task), the total
    ``format_weight * format + accuracy + length``, and a failure code (None when all went through)."""

    components: dict[str, float]
    total: float
    failure: str | None = None


@dataclass(frozen=True)
class SampleTruth:
    """What the rewards need from a sample's ground truth, decoded once per sample.

    ``objects`` (K, T, H, W) bool: each target object's mask at the T sampled frames, displayed size.
    ``high_res`` (height, width): the frame size System 2 saw, which its boxes and masks use.
    """

    key: str
    objects: np.ndarray
    high_res: tuple[int, int]

    @classmethod
    def from_sample(cls, sample: Sample) -> SampleTruth:
        track, frames = sample.masks, sample.frame_indices
        objects = np.zeros((len(track.objects), len(frames), track.height, track.width), dtype=bool)
        for k, obj in enumerate(track.objects):
            for t, index in enumerate(frames):
                rle = obj.rles[int(index)]
                if rle is not None:
                    objects[k, t] = decode_rle(rle)
        return cls(sample.key, objects, (int(sample.high_res.shape[1]), int(sample.high_res.shape[2])))

    @property
    def num_objects(self) -> int:
        return int(self.objects.shape[0])

    @property
    def num_frames(self) -> int:
        return int(self.objects.shape[1])

    @property
    def union(self) -> np.ndarray:
        """(T, H, W) bool: the union of the objects (all False for a null expression)."""
        shape = self.objects.shape[1:]
        return self.objects.any(axis=0) if self.num_objects else np.zeros(shape, dtype=bool)

    def present(self) -> np.ndarray:
        """(K, T) bool: the object's true mask is non-empty on the frame."""
        return self.objects.any(axis=(2, 3))

    def true_box(self, obj: int, frame: int) -> tuple[float, float, float, float] | None:
        """The object's true box on a sampled frame in high-res pixels (inclusive corners), None when absent."""
        return mask_box(self.objects[obj, frame], self.high_res)


# ----------------------------------------------------------------------------------------------- small terms


def format_reward(completion: str) -> float:
    """1.0 when the whole completion is ``<think>...</think>\\s*<answer>...</answer>`` (dot matches newline)."""
    return 1.0 if matches_format(completion) else 0.0


def parse_terms(found: int, parsed: int, kept: int) -> float:
    """0.2 per object, +0.2 per object whose fields parse, +0.2 per kept moment."""
    return OBJECT_TERM * found + FIELDS_TERM * parsed + KEPT_TERM * kept


def mask_ratio(frames: Sequence[int], present: np.ndarray) -> float:
    """Fraction of (object, frame) pairs over ``frames`` whose true mask is non-empty; present: (K, T) bool.

    0 when there are no pairs (no target object, or no frame).
    """
    pairs = present.shape[0] * len(frames)
    return float(present[:, list(frames)].sum() / pairs) if pairs else 0.0


def length_term(frame_count: int) -> float:
    """min(0, (1 - frames) * 0.2): a moment longer than one sampled frame costs 0.2 per extra frame."""
    return min(0.0, (1 - frame_count) * LENGTH_STEP)


def overlap_term(moments: Sequence[Moment]) -> float:
    """Sum of the kept moments' length terms - 0.5 per repeated frame (occurrences - distinct frames)."""
    chosen = [f for m in moments for f in m.frames]
    repeats = len(chosen) - len(set(chosen))
    return sum(length_term(len(m.frames)) for m in moments) - REPEAT_PENALTY * repeats


def num_reward(distinct_frames: int, target: int) -> float:
    """R_num: 0.4 u for u <= K0, else 0.4 (2 K0 - 1 - u) (the official 0.4 (7 - u) at K0 = 4)."""
    if distinct_frames <= target:
        return NUM_STEP * distinct_frames
    return NUM_STEP * (2 * target - 1 - distinct_frames)


def saliency_reward(keyframes: Sequence[int], objects: np.ndarray) -> float:
    """Mean over keyframes of the true area (objects summed) over (the largest such area on the sampled
    frames + 1e-6), the official ratio. objects: (K, T, H, W) bool. 0 when there is no keyframe."""
    areas = objects.sum(axis=(0, 2, 3)).astype(np.float64) if objects.shape[0] else np.zeros(objects.shape[1])
    if not keyframes or not areas.size:
        return 0.0
    return float(np.mean(areas[list(keyframes)] / (areas.max() + OFFICIAL_EPS)))


def mask_box(mask: np.ndarray, size: tuple[int, int]) -> tuple[float, float, float, float] | None:
    """The box of a (H, W) mask as inclusive pixel corners, scaled by edges to ``size`` (height, width).

    Pixel x covers [x, x + 1); scaling the edges maps [x1, x2] to [x1 sx, (x2 + 1) sx - 1], so the
    +1-convention width (x2 - x1 + 1) scales by exactly sx. None for an empty mask.
    """
    ys, xs = np.nonzero(mask)
    if ys.size == 0:
        return None
    sy, sx = size[0] / mask.shape[0], size[1] / mask.shape[1]
    return (xs.min() * sx, ys.min() * sy, (xs.max() + 1) * sx - 1, (ys.max() + 1) * sy - 1)


def _box_array(boxes: Sequence[Box]) -> np.ndarray:
    return np.array([[b.x1, b.y1, b.x2, b.y2] for b in boxes], dtype=np.float64).reshape(-1, 4)


Entries = dict[int, Sequence[Box | None]]  # per keyframe, the grounder's entries in answer order


def first_entries(entries: Entries, frame: int, k: int) -> list[Box | None]:
    """The first ``k`` entries of ``frame``, padded with ``None`` (the official dummy box) to ``k``."""
    found = list(entries.get(frame, ()))[:k]
    return found + [None] * (k - len(found))


def has_valid_box(entries: Entries, keyframes: Sequence[int], k: int) -> bool:
    """The official ``has_valid_bbox``: some keyframe has a valid box among its first K entries."""
    return any(box is not None for frame in keyframes for box in first_entries(entries, frame, k))


def grounding_reward(
    entries: Entries, keyframes: Sequence[int], truth: SampleTruth, *, zero_at_left_edge: bool = False
) -> float:
    """R_A: mean matched box IoU over (object, keyframe) pairs with a true box; NaN when a box is not finite.

    On each keyframe the first K entries (K = number of target objects; an invalid entry overlaps
    nothing) are matched to the K objects by the Hungarian algorithm (maximum total IoU). With
    ``zero_at_left_edge`` a true box whose x1 is 0 scores 0, as the official ``gt_box[0] > 0`` check does.
    """
    total, pairs = 0.0, 0
    for frame in keyframes:
        true_boxes = [truth.true_box(k, frame) for k in range(truth.num_objects)]
        shown = [k for k, box in enumerate(true_boxes) if box is not None]
        if not shown:
            continue
        pairs += len(shown)
        ious = np.zeros((truth.num_objects, truth.num_objects))
        for col, box in enumerate(first_entries(entries, frame, truth.num_objects)):
            if box is None:
                continue
            predicted = _box_array([box])
            if not np.isfinite(predicted).all():
                return math.nan  # a non-finite box: RewardError names the component, never a silent IoU of 0
            for row in shown:
                true_box = true_boxes[row]
                assert true_box is not None
                if not (zero_at_left_edge and true_box[0] <= 0):
                    ious[row, col] = float(box_iou_pixels(np.array(true_box), predicted)[0, 0])
        rows, cols = linear_sum_assignment(ious, maximize=True)
        total += float(sum(ious[r, c] for r, c in zip(rows, cols) if r in shown))
    return total / pairs if pairs else 0.0


def object_penalty(entries: Entries, keyframes: Sequence[int], num_objects: int) -> float:
    """-0.5 x entries beyond K summed over keyframes / ((K + 1e-6) x keyframes), the official
    ``object_num_mismatch``; K = 0 is normalised by 1. 0 when no keyframe has extra entries."""
    if not keyframes:
        return 0.0
    extra = sum(max(0, len(entries.get(frame, ())) - num_objects) for frame in keyframes)
    scale = num_objects + OFFICIAL_EPS if num_objects else 1.0
    return -MISMATCH_WEIGHT * extra / scale / len(keyframes)


def segmentation_reward(pred_masks: np.ndarray, true_union: np.ndarray) -> float:
    """R_G: mean J over the sampled frames between System 2's (T, h, w) masks, resized (nearest) to the
    truth's (T, H, W) displayed size, and the true union; a frame where both are empty scores 1."""
    if pred_masks.shape[0] != true_union.shape[0]:
        raise ValueError(f"System 2 masks cover {pred_masks.shape[0]} frames, the truth {true_union.shape[0]}; "
                         "both must be the sample's sampled frames")
    resized = masks_to_native(pred_masks, true_union.shape[1], true_union.shape[2])
    return float(region_j(resized, true_union).mean())


def accuracy_reward(c: dict[str, float], params: RewardParams) -> float:
    """R_acc from the components, with the weights of ``params`` and its ``cumulated_fallback`` option."""
    rest = (
        params.alpha_k * (c["num"] + c["overlap"])
        + params.alpha_k_ratio * c["saliency"]
        + params.alpha_a * c["grounding"]
        + c["object_penalty"]
        + params.alpha_g * c["segmentation"]
    )
    if params.cumulated_fallback and rest <= 0:
        return c["cumulated"]
    return c["cumulated"] + rest


# ----------------------------------------------------------------------------------------------- per rollout


def _breakdown(components: dict[str, float], params: RewardParams, failure: str | None) -> RewardBreakdown:
    total = params.format_weight * components["format"] + components["accuracy"] + components["length"]
    return RewardBreakdown(components, total, failure)


def _counts(rollout: Rollout) -> tuple[int, int, int]:
    """(objects found J, objects parsed, moments kept) of the answer, whether it parsed or not."""
    if rollout.selection is not None:
        s = rollout.selection
        return s.objects_found, s.objects_parsed, s.objects_kept
    assert rollout.error is not None  # checked by _check_rollout
    # Every parse error means no kept moment (OutOfRange included), so kept is 0.
    return rollout.error.objects_found, rollout.error.objects_parsed, 0


def revos_reward(rollout: Rollout, truth: SampleTruth, params: RewardParams) -> RewardBreakdown:
    """The video-segmentation reward of one rollout (components: ``REVOS_COLUMNS``)."""
    found, parsed, kept = _counts(rollout)
    c = dict.fromkeys(REVOS_COLUMNS, 0.0)
    c["format"] = format_reward(rollout.completion)
    c["objects"] = float(found)
    c["parse"] = parse_terms(found, parsed, kept)
    selection = rollout.selection
    if selection is None or kept == 0:
        # No moment kept: the spec's sum / J (0 without any object), nothing grounded.
        c["cumulated"] = c["parse"] / found if found else 0.0
        c["accuracy"] = c["cumulated"]
        return _breakdown(c, params, rollout.error.code if rollout.error is not None else None)

    present = truth.present()
    moments = selection.kept_moments
    c["mask_ratio"] = sum(mask_ratio(m.frames, present) for m in moments)
    c["cumulated"] = (c["parse"] + c["mask_ratio"]) / found
    c["overlap"] = overlap_term(moments)
    c["num"] = num_reward(len({f for m in moments for f in m.frames}), params.target_keyframes)
    keyframes = [k.frame for k in selection.keyframes]

    failure = _system2_failure(rollout, selection)
    if failure is None:
        assert rollout.segment is not None
        entries = rollout.segment.entries
        if truth.num_objects == 0 or has_valid_box(entries, keyframes, truth.num_objects):
            c["saliency"] = saliency_reward(keyframes, truth.objects)
            c["grounding"] = grounding_reward(entries, keyframes, truth,
                                              zero_at_left_edge=params.zero_iou_at_left_edge)
            c["object_penalty"] = object_penalty(entries, keyframes, truth.num_objects)
            c["segmentation"] = segmentation_reward(rollout.masks, truth.union)
        else:
            failure = NO_VALID_BOX
    c["accuracy"] = accuracy_reward(c, params)
    return _breakdown(c, params, failure)


def _system2_failure(rollout: Rollout, selection: KeyframeSelection) -> str | None:
    if not selection.keyframes:
        return NO_KEYFRAMES
    if rollout.segment is None:
        return SYSTEM2_ERROR
    return None


def refavs_reward(rollout: Rollout, truth: SampleTruth, params: RewardParams) -> RewardBreakdown:
    """The RefAVS reward of one rollout: IoU of System 2's first box on frame 0 with the true box there."""
    c = dict.fromkeys(REFAVS_COLUMNS, 0.0)
    c["format"] = format_reward(rollout.completion)
    if rollout.error is not None or rollout.selection is None or not rollout.selection.keyframes:
        c["accuracy"] = params.refavs_empty_reward
        return _breakdown(c, params, rollout.error.code if rollout.error is not None else NO_KEYFRAMES)
    if rollout.segment is None:
        c["accuracy"] = params.refavs_empty_reward
        return _breakdown(c, params, SYSTEM2_ERROR)
    [box] = first_entries(rollout.segment.entries, 0, 1)
    union = truth.union[0] if truth.num_frames else None
    true_box = mask_box(union, truth.high_res) if union is not None else None
    if box is None:  # the official dummy box: IoU 1 against an empty truth (a dummy too), else 0
        c["iou"] = 1.0 if true_box is None else 0.0
        c["accuracy"] = c["iou"]
        return _breakdown(c, params, None if true_box is None else NO_BOX)
    first = _box_array([box])
    if not np.isfinite(first).all():
        c["iou"] = math.nan  # reaches the finiteness check by name; box_iou_pixels would score it 0
    elif true_box is not None:
        c["iou"] = float(box_iou_pixels(first, np.array(true_box))[0, 0])
    c["accuracy"] = c["iou"]
    return _breakdown(c, params, None)


# ----------------------------------------------------------------------------------------------- batch


def apply_length_control(
    breakdowns: Sequence[RewardBreakdown], completion_lengths: Sequence[int], params: RewardParams
) -> list[RewardBreakdown]:
    """The official ``len_control`` bonus: when more than one rollout has R_acc > ``length_threshold``, each
    such rollout whose completion is ``length_min``..``length_max`` tokens long gets ``length_bonus``."""
    if len(breakdowns) != len(completion_lengths):
        raise ValueError(f"{len(breakdowns)} rewards but {len(completion_lengths)} completion lengths; "
                         "pass one token count per rollout")
    if not params.length_control:
        return list(breakdowns)
    above = [b.components["accuracy"] > params.length_threshold for b in breakdowns]
    if sum(above) <= 1:
        return list(breakdowns)
    out = []
    for b, is_above, length in zip(breakdowns, above, completion_lengths):
        if is_above and params.length_min <= length <= params.length_max:
            components = {**b.components, "length": params.length_bonus}
            b = replace(b, components=components, total=b.total - b.components["length"] + params.length_bonus)
        out.append(b)
    return out


def reward_columns(task: Task) -> tuple[str, ...]:
    """The component names of ``task``'s breakdowns, in a stable order (for the trainer's log columns)."""
    if task == "revos":
        return REVOS_COLUMNS
    if task == "refavs":
        return REFAVS_COLUMNS
    raise ValueError(f"unknown task {task!r}; use 'revos' (video moments) or 'refavs' (audio rewrite)")


def check_finite(breakdown: RewardBreakdown, sample_key: str) -> None:
    """Raise ``RewardError`` naming the sample and component when a component or the total is not finite."""
    for name, value in [*breakdown.components.items(), ("total", breakdown.total)]:
        if not math.isfinite(value):
            raise RewardError(
                f"sample {sample_key!r}: reward component {name!r} is {value} (failure={breakdown.failure}); "
                "check System 2's boxes and masks for this sample"
            )


def score_rollouts(
    rollouts: Sequence[Rollout],
    sample: Sample,
    params: RewardParams,
    *,
    task: Literal["revos", "refavs"],
    num_frames: int,
    fps: float,
    duration: float,
    completion_lengths: Sequence[int],
) -> list[RewardBreakdown]:
    """One breakdown per rollout of ``sample``, length control applied within ``rollouts``.

    ``num_frames``, ``fps`` and ``duration`` describe the clip the answers were parsed against (sampled
    frames, the rate they are treated as, the stated seconds); they are checked against the sample and
    the answers, so scoring against the wrong clip fails loudly. Raises ``RewardError`` on a non-finite
    component.
    """
    columns = reward_columns(task)
    if len(rollouts) != len(completion_lengths):
        raise ValueError(f"{len(rollouts)} rollouts but {len(completion_lengths)} completion lengths; "
                         "pass one token count per rollout")
    _check_clip(sample, num_frames, fps, duration)
    truth = SampleTruth.from_sample(sample)
    score = revos_reward if task == "revos" else refavs_reward
    breakdowns = []
    for index, rollout in enumerate(rollouts):
        _check_rollout(rollout, index, task, num_frames, duration, sample.key)
        breakdown = score(rollout, truth, params)
        assert tuple(breakdown.components) == columns
        breakdowns.append(breakdown)
    breakdowns = apply_length_control(breakdowns, completion_lengths, params)
    for breakdown in breakdowns:
        check_finite(breakdown, sample.key)
    return breakdowns


def _check_clip(sample: Sample, num_frames: int, fps: float, duration: float) -> None:
    if num_frames != len(sample.frame_indices):
        raise ValueError(f"sample {sample.key!r} has {len(sample.frame_indices)} sampled frames, but num_frames="
                         f"{num_frames}; pass the frame count the answers were parsed with")
    if not (fps > 0 and duration > 0):
        raise ValueError(f"fps={fps} and duration={duration} must be positive (the clip's rate and stated seconds)")


def _check_rollout(rollout: Rollout, index: int, task: str, num_frames: int, duration: float, key: str) -> None:
    where = f"sample {key!r}, rollout {index}"
    if (rollout.selection is None) == (rollout.error is None):
        raise ValueError(f"{where}: a rollout holds either a parsed selection or a parse error, not both or neither")
    if rollout.masks.ndim != 3 or rollout.masks.shape[0] != num_frames:
        raise ValueError(f"{where}: masks {rollout.masks.shape} must be (T={num_frames}, H, W)")
    s = rollout.selection
    if s is None:
        return
    if s.task != task:
        raise ValueError(f"{where}: the answer was parsed as {s.task!r}, but task={task!r}")
    if any(m.end > duration + 1e-9 for m in s.kept_moments):
        raise ValueError(f"{where}: a kept moment ends after duration={duration:g} s; "
                         "the answers were parsed against a different clip")
    if any(not 0 <= f < num_frames for f in s.frames):
        raise ValueError(f"{where}: chosen frames {s.frames} fall outside the {num_frames} sampled frames")
