"""Our rewards against an oracle written from the official Omni-R1 reward code, on constructed answers.

The oracle below is a transcription, for the test only, of aim-uofa/Omni-R1 at commit
1de42f8498c958a188f8c2a3a4e2e9df799d0c63:

- ``src/omni_r1/reward.py``: ``extract_answer``, ``format_reward``, ``vos_reward`` (which terms are
  added when System 2 found no valid box), ``handle_rewards`` (the weighted sum) and
  ``refavs_reward``;
- ``src/omni_r1/load_datasets/revos.py``: ``time_reward_multi_time`` (parse terms, mask ratio,
  length and overlap terms, frame-count reward, keyframes and their descriptions),
  ``grounding2sam_process_reward`` (first-K boxes, object-count offset, saliency ratio, the
  Hungarian-matched box IoU with its ``gt_box[0] > 0`` check), ``iou_framewise_object_matching``,
  ``generate_bbox``, ``sam2_single_reward``/``cal_metric`` (J over the sampled frames), and
  ``VideoReVOSDataset.__getitem__`` (expressions without objects are never drawn);
- ``src/omni_r1/load_datasets/refavs.py``: ``refavs_grounding_process_reward`` and ``iou``.

The official code turns any exception into a skipped object (``except Exception: continue``); the
oracle catches the exceptions those lines can raise. Inputs are built so both sides see the same
pixels: the grounder's image, System 2's frames and the truth share one size (every scale factor
is 1), boxes lie inside the image, and SAM2 is replaced by the same stand-in mask for both. Our
side runs the real parser (``omni_r1.systems.answer``) and the real rewards (``omni_r1.rl.rewards``).
"""

from __future__ import annotations

import json
import re
from typing import Any

import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

from omni_r1.config import RewardParams
from omni_r1.data.masks import encode_rle
from omni_r1.rl.rewards import score_rollouts
from omni_r1.systems.answer import parse_box_entries, try_parse
from omni_r1.systems.collaboration import Rollout, keyframe_prompts
from omni_r1.systems.detail import SegmentResult
from omni_r1.types import KeyframeSelection, MaskTrack, ObjectMasks, Sample

T, H, W = 8, 24, 32  # 8 sampled frames (4.0 s at the official 2 fps), frames and masks 24x32
OFFICIAL = RewardParams(length_control=False, zero_iou_at_left_edge=True)

# ----------------------------------------------------------------------------------------------- the oracle


def oracle_extract_answer(text: str) -> str:
    match = re.search(r"<answer>\s*(.*?)\s*</answer>", text, re.DOTALL)
    return match.group(1).strip() if match else ""


def oracle_format(text: str) -> float:
    return 1.0 if re.fullmatch(r"<think>.*?</think>\s*<answer>.*?</answer>", text, re.DOTALL) else 0.0


def oracle_time_reward(answer: str, masks: np.ndarray) -> tuple[float, dict[str, Any] | None]:
    """``time_reward_multi_time``; masks (K, T, H, W) of the drawn objects at the sampled frames."""
    pattern = r"(\d+):(\d+)\.(\d+)"

    def seconds(stamp: str) -> float:
        minutes, secs, ms = map(int, re.match(pattern, stamp).groups())  # type: ignore[union-attr]
        return minutes * 60 + secs + ms * 10 / 1000

    cumulated, pieces = 0.0, []
    found = re.findall(r"({[\s\S]*?})", answer)
    if not found:
        return cumulated, None
    cumulated += 0.2 * len(found)
    frame_count = masks.shape[1]
    for js in found:
        try:
            result = json.loads(js)
            start, end, description = result.get("start_time"), result.get("end_time"), result.get("description")
            if not (re.match(pattern, start) is not None and re.match(pattern, end) is not None
                    and description is not None):
                continue
            cumulated += 0.2
            s, e = seconds(start), seconds(end)
            if s > e or e > frame_count / 2:
                continue
            cumulated += 0.2
            pieces.append((s, e, description))
        except (ValueError, TypeError, AttributeError):  # the official `except Exception: continue`
            continue
    if not pieces:
        return cumulated / len(found), None
    spans = [np.arange(min(int(s * 2), frame_count - 1), min(int(e * 2), frame_count - 1) + 1) for s, e, _ in pieces]
    masks_sum = masks.sum(axis=(2, 3))
    ratios, lengths = [], []
    for span in spans:
        selected = masks_sum[:, span]
        ratios.append(np.count_nonzero(selected > 0) / (span.shape[0] * selected.shape[0]))
        length = (1 - span.shape[0]) * 0.2
        lengths.append(length if length < 0 else 0)
    every = np.concatenate(spans)
    cumulated = (cumulated + sum(ratios)) / len(found)
    overlap = sum(lengths) - (len(every) - len(np.unique(every))) * 0.5
    distinct = np.unique(every)
    gap = 4 - distinct.shape[0]
    frame_reward = distinct.shape[0] * 0.4 if gap >= 0 else (4 + gap - 1) * 0.4
    indices = distinct[:4].tolist()
    descriptions = [next(pieces[j][2] for j, span in enumerate(spans) if idx in span) for idx in indices]
    return cumulated, {"cumulated": cumulated, "frame": frame_reward, "overlap": overlap,
                       "indices": indices, "descriptions": descriptions}


def oracle_bboxes(masks: np.ndarray) -> np.ndarray:
    """``generate_bbox`` per object: (K, T, 4), [-1, -1, -1, -1] where the mask is empty."""
    out = np.full((*masks.shape[:2], 4), -1.0)
    for k, obj in enumerate(masks):
        for t, mask in enumerate(obj):
            if mask.sum():
                ys, xs = np.where(mask > 0)
                out[k, t] = [xs.min(), ys.min(), xs.max(), ys.max()]
    return out


def oracle_box_iou(gt: np.ndarray, pred: np.ndarray, left_edge_check: bool) -> float:
    inter_w = max(0, min(gt[2], pred[2]) - max(gt[0], pred[0]) + 1)
    inter_h = max(0, min(gt[3], pred[3]) - max(gt[1], pred[1]) + 1)
    inter = inter_w * inter_h
    union = (gt[2] - gt[0] + 1) * (gt[3] - gt[1] + 1) + (pred[2] - pred[0] + 1) * (pred[3] - pred[1] + 1) - inter
    ok = union > 0 and (gt[0] > 0 or not left_edge_check)
    return float(inter / union) if ok else 0.0


def oracle_grounding(answers: list[str], indices: list[int], masks: np.ndarray, left_edge_check: bool) -> dict:
    """``grounding2sam_process_reward`` at scale 1: avg_iou, avg_ratio, the offset and the first-K boxes."""
    k = masks.shape[0]
    boxes = oracle_bboxes(masks)
    pred: list[list[list[float]]] = [[] for _ in range(k)]
    offset = 0.0
    for answer in answers:
        found = re.findall(r"({[\s\S]*?})", answer)
        count = 0
        for js in found:
            if count == k:
                offset -= len(found) - k
                break
            try:
                value = json.loads(js)
                assert isinstance(value["bbox_2d"], list) and len(value["bbox_2d"]) == 4
                pred[count].append([float(c) for c in value["bbox_2d"]])
            except (ValueError, TypeError, KeyError, AssertionError):
                pred[count].append([-1, -1, -1, -1])
            count += 1
        for j in range(count, k):
            pred[j].append([-1, -1, -1, -1])
    predicted = np.array(pred, dtype=np.float64)  # (K, keyframes, 4)
    truth = boxes[:, indices, :]
    matched = np.zeros((k, len(indices)))
    permuted = predicted.copy()
    for f in range(len(indices)):
        ious = np.array([[oracle_box_iou(truth[i, f], predicted[j, f], left_edge_check) for j in range(k)]
                         for i in range(k)])
        rows, cols = linear_sum_assignment(-ious)
        permutation = np.arange(k)
        for r, c in zip(rows, cols):
            permutation[r] = c
            matched[r, f] = ious[r, c]
        permuted[:, f] = predicted[permutation, f]
    valid = np.all(boxes != -1, axis=2)[:, indices]
    avg_iou = float(np.mean(matched[valid])) if matched[valid].size else 0.0
    areas = (masks > 0).astype(np.int32).sum(axis=(0, 2, 3))
    avg_ratio = float(np.mean((areas / (np.max(areas) + 1e-6))[indices]))
    offset = float(offset / (float(k) + 1e-6) * 0.5) / float(len(indices))
    has_valid = bool(np.argwhere(np.all(permuted != -1, axis=2)).size)
    return {"avg_iou": avg_iou, "avg_ratio": avg_ratio, "offset": offset, "has_valid": has_valid}


def oracle_j(pred: np.ndarray, gt: np.ndarray) -> float:
    """``cal_metric``: DAVIS J per frame (1 where both are empty), averaged over the frames."""
    inter = np.logical_and(pred, gt).sum(axis=(1, 2))
    union = np.logical_or(pred, gt).sum(axis=(1, 2))
    return float(np.mean(np.where(union == 0, 1.0, inter / np.maximum(union, 1))))


def oracle_vos(completion: str, grounder: dict[int, str], masks: np.ndarray, sam: np.ndarray,
               params: RewardParams) -> float:
    """format + the ``vos_reward`` / ``handle_rewards`` total of one rollout (length control off)."""
    cumulated, info = oracle_time_reward(oracle_extract_answer(completion), masks)
    total = oracle_format(completion) * params.format_weight
    if info is None:
        return total + cumulated
    time_terms = cumulated + params.alpha_k * (info["frame"] + info["overlap"])
    g = oracle_grounding([grounder.get(f, "") for f in info["indices"]], info["indices"], masks,
                         params.zero_iou_at_left_edge)
    if not (g["has_valid"] and params.alpha_g > 1e-6):
        return total + time_terms
    sam_iou = oracle_j(sam, masks.any(axis=0))
    return total + (time_terms + params.alpha_k_ratio * g["avg_ratio"] + params.alpha_a * g["avg_iou"]
                    + g["offset"] + params.alpha_g * sam_iou)


def oracle_refavs(completion: str, grounder: str, masks: np.ndarray) -> float:
    """format + ``refavs_reward``: IoU of the grounder's first object on frame 0, 0 for an empty answer."""
    total = oracle_format(completion)
    if not oracle_extract_answer(completion):
        return total
    truth = oracle_bboxes(masks)[0, 0]
    match = re.search(r"({[\s\S]*?})", grounder)
    try:
        value = json.loads(match.group(0))  # type: ignore[union-attr]
        assert isinstance(value["bbox_2d"], list) and len(value["bbox_2d"]) == 4
        pred = np.array(value["bbox_2d"], dtype=np.float64)
    except (ValueError, TypeError, KeyError, AssertionError, AttributeError):
        pred = np.array([-1.0, -1, -1, -1])
    return total + oracle_box_iou(truth, pred, left_edge_check=False)


def oracle_training_expressions(expressions: dict[str, dict[str, Any]]) -> list[str]:
    """``__getitem__``: the expressions a video's draw chooses from (those with target objects)."""
    return [exp_id for exp_id, e in sorted(expressions.items()) if len(e["obj_id"]) > 0]


# ----------------------------------------------------------------------------------------------- our side


def rect(rows: tuple[int, int], cols: tuple[int, int], frames: range | list[int]) -> np.ndarray:
    m = np.zeros((T, H, W), bool)
    for t in frames:
        m[t, rows[0]:rows[1] + 1, cols[0]:cols[1] + 1] = True
    return m


def make_sample(objects: list[np.ndarray]) -> Sample:
    track = MaskTrack(H, W, T, tuple(
        ObjectMasks(str(i), tuple(encode_rle(f) if f.any() else None for f in obj)) for i, obj in enumerate(objects)))
    frames = np.zeros((T, H, W, 3), np.uint8)
    meta = {"split": "train", "expression": "the target", "height": H, "width": W}
    return Sample("vid/0", meta, tuple(range(T)), tuple(t / 2 for t in range(T)), frames, frames,
                  np.zeros(0, np.float32), track)


def stand_in_sam(entries: dict[int, tuple], k: int, keyframes: list[int]) -> np.ndarray:
    """The SAM2 stand-in both sides share: each keyframe's first-K valid boxes, filled, held forward."""
    out = np.zeros((T, H, W), bool)
    for frame in keyframes:
        for box in entries.get(frame, ())[: max(k, 0)]:
            if box is not None:
                out[frame:, int(box.y1):int(box.y2) + 1, int(box.x1):int(box.x2) + 1] = True
    return out


def ours(completion: str, grounder: dict[int, str], objects: list[np.ndarray], params: RewardParams,
         task: str = "revos") -> tuple[float, np.ndarray]:
    """Our total for one rollout, and the stand-in SAM masks it was scored with."""
    sample = make_sample(objects)
    parsed = try_parse(completion, task=task, duration=T / 2, num_frames=T, fps=2.0, max_keyframes=4)
    selection = parsed if isinstance(parsed, KeyframeSelection) else None
    prompts = keyframe_prompts(selection, T) if selection is not None else ()
    sam = np.zeros((T, H, W), bool)
    segment = None
    if prompts:
        entries = {p.frame: parse_box_entries(grounder.get(p.frame, ""), resized_size=(W, H), original_size=(W, H))
                   for p in prompts}
        sam = stand_in_sam(entries, len(objects), [p.frame for p in prompts])
        segment = SegmentResult(sam, sam[None], {}, entries=entries)
    rollout = Rollout(completion, selection, None if selection is not None else parsed, prompts, segment, sam)
    [breakdown] = score_rollouts([rollout], sample, params, task=task, num_frames=T, fps=2.0, duration=T / 2,
                                 completion_lengths=[1])
    return breakdown.total, sam


# ----------------------------------------------------------------------------------------------- cases


def moment(start: str, end: str, description: Any = "the target") -> str:
    return json.dumps({"start_time": start, "end_time": end, "description": description})


def answer(*objects: str, think: bool = True) -> str:
    reasoning = "<think>looking</think>\n" if think else ""
    return f"{reasoning}<answer>\n" + "\n".join(objects) + "\n</answer>"


def boxes(*corners: list[float], label: str = "target") -> str:
    return "```json\n" + json.dumps([{"bbox_2d": c, "label": label} for c in corners]) + "\n```"


A = rect((4, 11), (6, 15), range(0, 6))  # object A: frames 0-5
B = rect((14, 20), (18, 28), range(2, 8))  # object B: frames 2-7
EDGE = rect((5, 12), (0, 7), range(T))  # touches the left edge (x = 0)
BOX_A, BOX_B, BOX_EDGE = [6, 4, 15, 11], [18, 14, 28, 20], [0, 5, 7, 12]
NEAR_A = [7, 5, 14, 12]

FOUR = answer(moment("00:00.00", "00:00.00"), moment("00:01.00", "00:01.00"), moment("00:02.00", "00:02.00"),
              moment("00:03.00", "00:03.00"))  # frames 0, 2, 4, 6

ANSWERS = {
    "four single frames": FOUR,
    "no think": answer(moment("00:01.00", "00:01.00"), think=False),
    "one-digit times": answer(moment("0:02.5", "0:02.5"), moment("0:00.0", "0:00.0")),
    "three-digit hundredths": answer(moment("00:01.500", "00:01.500")),  # 1 + 500 / 100 = 6 s
    "prefix time": answer(moment("00:01.00 s", "00:01.50abc")),
    "empty description": answer(moment("00:01.00", "00:01.00", "")),
    "numeric description": answer(moment("00:00.50", "00:00.50", 7)),
    "null description": answer(moment("00:00.50", "00:00.50", None), moment("00:01.00", "00:01.00")),
    "past the end": answer(moment("00:03.00", "00:04.50"), moment("00:01.00", "00:01.00")),
    "all past the end": answer(moment("00:05.00", "00:06.00")),
    "start after end": answer(moment("00:02.00", "00:01.00"), moment("00:00.00", "00:00.00")),
    "end exactly at duration": answer(moment("00:04.00", "00:04.00")),
    "overlapping": answer(moment("00:00.00", "00:01.00"), moment("00:00.50", "00:01.50")),
    "more than four frames": answer(moment("00:00.00", "00:03.50")),
    "six distinct single frames": answer(*[moment(f"00:0{s}.00", f"00:0{s}.00") for s in (0, 1, 2, 3)],
                                         moment("00:00.50", "00:00.50"), moment("00:01.50", "00:01.50")),
    "malformed json": "<think>x</think><answer>{start_time: 00:01.00}</answer>",
    "nested braces": answer('{"start_time": "00:01.00", "end_time": "00:01.00", "description": {"a": 1}}'),
    "no answer tags": "<think>only thinking</think>",
    "empty answer": "<think>x</think><answer>   </answer>",
    "missing end": answer(json.dumps({"start_time": "00:01.00", "description": "x"})),
    "seconds over 59": answer(moment("00:75.00", "00:75.00"), moment("00:01.00", "00:01.00")),
    "text around": "<think>a</think> <answer>I pick {\"start_time\": \"00:02.00\", \"end_time\": \"00:02.50\", "
                   "\"description\": \"the target\"} and that is all</answer> trailing",
}

GROUNDERS = {  # System 2's answer per keyframe
    "exact": lambda frame: boxes(BOX_A),
    "near": lambda frame: boxes(NEAR_A),
    "none": lambda frame: "[]",
    "extra boxes": lambda frame: boxes(BOX_A, NEAR_A, [1, 1, 5, 5]),
    "invalid first": lambda frame: '[{"bbox": [1, 2, 3, 4]}, ' + json.dumps({"bbox_2d": BOX_A}) + "]",
    "garbage": lambda frame: "I cannot see it",
}


def _cases() -> list[tuple[str, str, str]]:
    return [(a, g, "A") for a in ANSWERS for g in ("exact", "near", "none")] + [
        ("four single frames", "extra boxes", "A"),
        ("four single frames", "invalid first", "A"),
        ("four single frames", "garbage", "A"),
        ("overlapping", "extra boxes", "A"),
        ("four single frames", "exact", "AB"),
        ("four single frames", "extra boxes", "AB"),
        ("six distinct single frames", "near", "AB"),
        ("four single frames", "exact", "EDGE"),  # a perfect box at x = 0: the official check zeroes it
    ]


OBJECTS = {"A": [A], "AB": [A, B], "EDGE": [EDGE]}


@pytest.mark.parametrize("answer_name,grounder_name,objects_name", _cases())
def test_video_reward_equals_the_official_code(answer_name: str, grounder_name: str, objects_name: str) -> None:
    completion, objects = ANSWERS[answer_name], OBJECTS[objects_name]
    grounder = {f: GROUNDERS[grounder_name](f) for f in range(T)}
    if objects_name == "EDGE":
        grounder = {f: boxes(BOX_EDGE) for f in range(T)}
    if objects_name == "AB" and grounder_name == "exact":
        grounder = {f: boxes(BOX_B, BOX_A) for f in range(T)}  # in the other order: Hungarian pairs them
    for params in (OFFICIAL, RewardParams(length_control=False, zero_iou_at_left_edge=True, alpha_k_ratio=0.5,
                                          alpha_a=1.5, alpha_g=0.75, alpha_k=0.8, format_weight=0.5)):
        total, sam = ours(completion, grounder, objects, params)
        expected = oracle_vos(completion, grounder, np.stack(objects), sam, params)
        assert total == pytest.approx(expected, abs=1e-9, rel=0), (answer_name, grounder_name, objects_name)


def test_the_left_edge_switch_keeps_a_perfect_box_by_default() -> None:
    grounder = {f: boxes(BOX_EDGE) for f in range(T)}
    official, _ = ours(FOUR, grounder, [EDGE], OFFICIAL)
    default, _ = ours(FOUR, grounder, [EDGE], RewardParams(length_control=False))
    assert default - official == pytest.approx(1.0 * 1.0)  # alpha_a x the perfect IoU the official check drops


REFAVS_CASES = [
    ("<think>a dog barks</think><answer>the brown dog</answer>", boxes(BOX_A), [A]),
    ("<think>a dog barks</think><answer>the brown dog</answer>", boxes(NEAR_A, BOX_A), [A]),
    ("<answer>the brown dog</answer>", "nothing", [A]),
    ("<think>x</think><answer></answer>", boxes(BOX_A), [A]),
    ("<think>x</think>", boxes(BOX_A), [A]),
    ("<think>x</think><answer>the dog</answer>", "[]", [rect((4, 11), (6, 15), range(1, T))]),  # absent on 0
    ("<think>x</think><answer>the dog</answer>", boxes(BOX_A), [rect((4, 11), (6, 15), range(1, T))]),
    ("<think>x</think><answer>the dog</answer>", boxes(BOX_EDGE), [EDGE]),  # no left-edge check on RefAVS
]


@pytest.mark.parametrize("case", range(len(REFAVS_CASES)))
def test_refavs_reward_equals_the_official_code(case: int) -> None:
    completion, grounder, objects = REFAVS_CASES[case]
    total, _ = ours(completion, {0: grounder}, objects, OFFICIAL, task="refavs")
    assert total == pytest.approx(oracle_refavs(completion, grounder, np.stack(objects)), abs=1e-9, rel=0)


def test_null_targets_are_not_drawn_for_training_as_the_official_loader() -> None:
    from omni_r1.rl.prompts_data import trains_on

    expressions = {"0": {"obj_id": [1]}, "1": {"obj_id": []}, "2": {"obj_id": [2, 3]}}
    official = oracle_training_expressions(expressions)
    kinds = {"0": "referring", "1": "null", "2": "reasoning"}
    assert [e for e in sorted(expressions) if trains_on(kinds[e], include_null=False)] == official == ["0", "2"]
    assert trains_on("null", include_null=True)


def test_the_oracle_covers_at_least_forty_answers() -> None:
    assert len(_cases()) + len(REFAVS_CASES) >= 40
