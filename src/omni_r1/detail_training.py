"""Training of the light System 2 (grounder + crop U-Net) and its held-out evaluation: the ``train_detail`` stage.

``train_light_models`` trains both nets on ``Sample`` s of the ``train`` split, measures them on the
last ``detail.light_holdout_videos`` train videos (kept out of training; val is GRPO's held-out set
and test the reported one) and saves them with ``omni_r1.systems.light.save_light_models``. Every
tuned constant comes from ``detail.light`` in params.yaml (``LightParams``) and is saved with the
checkpoint. Only this module reads ground-truth masks; it sits outside ``omni_r1.systems`` so that the
systems never import the metrics (``omni_r1.eval`` imports the systems, not the reverse).

- The grounder learns from samples whose cue is ``appearance`` (single-image descriptions, nulls
  included: their target is empty), with hard negatives (the right colour with another shape, a
  colour that is not in the frame) so that it binds colour and shape, and positives repainted in
  other palette colours.
- The crop U-Net learns from crops as inference makes them: a loose keyframe box, or a track box from
  a neighbouring frame with the target's mean colour as reference (the object may have moved or left).

Measured on the demo's shards (7 train / 3 val videos of 12 frames at 256x192; 2 idle CPU cores,
2026-11-26; each ``train_detail`` run writes its own numbers to its metrics JSON):

- The crop U-Net from a true box: mask IoU 0.91-0.92 after 400-600 steps (55-80 s), against 0.60 for
  the box itself.
- The grounder is the weak part and the cost (about 0.65 s a step at 128 px). With many made-up
  negatives (25-40 % of items) it learned to answer "nothing": null rejection 0.86-0.88 but box IoU
  0.2-0.46; with few (10-15 %) it finds objects (box IoU 0.57-0.80) but rejects absent ones badly.
  ``detail.light.grounder_negatives`` 0.25 gave the best end-to-end masks.
- End to end (System 2 from the description, 4 keyframes, mean J over all 12 frames): keyframes where
  the target is visible 0.45-0.51, evenly spread 0.38-0.50, where it is absent 0.16-0.27.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from omni_r1.config import DetailParams, LightParams
from omni_r1.data.synthetic import COLOURS, SHAPES
from omni_r1.eval.metrics import region_j
from omni_r1.systems.detail import KeyframePrompt, LightSegmenter, ModelBoxGrounder
from omni_r1.systems.light import (UNKNOWN, BoxXYXY, LightModels, box_channel, box_in_window, box_iou, crop,
                                   crop_window, frames_tensor, mask_box, mean_colour, padded, reference_vector,
                                   refine_boxes, resize_frames, save_light_models, scale_box, word_batch, words_of)
from omni_r1.types import Sample

Progress = Callable[[str, int, int, float], None]  # (model name, step, total steps, loss)


# Generic words of single-image descriptions; the synthetic templates use a few, System 1 may use more.
GENERIC_WORDS: tuple[str, ...] = (
    "the", "a", "an", "that", "is", "which", "object", "shape", "moving", "around", "of", "in", "on", "at",
    "with", "and", "left", "right", "top", "bottom", "middle", "center", "centre", "small", "large", "big",
    "one", "thing", "coloured", "colored", "bright", "dark",
)  # fmt: skip


def default_vocabulary() -> tuple[str, ...]:
    """``<unk>`` first, then the synthetic generator's colours and shapes and generic words (sorted, unique)."""
    words = sorted(set(COLOURS) | set(SHAPES) | set(GENERIC_WORDS))
    return (UNKNOWN, *words)


# ----------------------------------------------------------------------------------------------- training data


@dataclass
class _Clip:
    """One sample's frames and target masks, at the grounder's size and at the frames' own size."""

    images: torch.Tensor  # (T, 3, S, S) float in [0, 1], the grounder's input
    masks: np.ndarray  # (T, S, S) bool
    full_images: torch.Tensor  # (T, 3, H, W) float in [0, 1], the segmenter's input
    full_masks: np.ndarray  # (T, H, W) bool at the frames' own size
    frames: np.ndarray  # (T, H, W, 3) uint8 high-res frames
    description: str
    cue: str
    exp_type: str

    @property
    def shown(self) -> np.ndarray:
        """(T,) bool: frames where the target is visible."""
        return self.full_masks.reshape(len(self.full_masks), -1).any(axis=1)


def prepare_clips(samples: Iterable[Sample], size: int) -> list[_Clip]:
    """Samples as clips for training or ``evaluate_light_models`` (grounder input side ``size``)."""
    cache: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    return [_clip(sample, size, cache) for sample in samples]


def _clip(sample: Sample, size: int, cache: dict[int, tuple[torch.Tensor, torch.Tensor]]) -> _Clip:
    frames = sample.high_res
    key = id(frames)  # expressions of one video share its frame array: convert it once
    if key not in cache:
        cache[key] = (resize_frames(frames, size), frames_tensor(frames))
    full = _masks_at(sample.target_masks(), frames.shape[1], frames.shape[2])
    small = F.interpolate(torch.from_numpy(full[:, None].astype(np.float32)), size=(size, size), mode="area")
    return _Clip(cache[key][0], small[:, 0].numpy() >= 0.5, cache[key][1], full, frames, sample.expression,
                 str(sample.meta.get("cue", "")), str(sample.meta.get("exp_type", "")))


def _masks_at(masks: np.ndarray, height: int, width: int) -> np.ndarray:
    """Masks at the displayed size resized (nearest) to the frames' size when they differ."""
    if masks.shape[1:] == (height, width):
        return masks
    t = torch.from_numpy(masks[:, None].astype(np.float32))
    return F.interpolate(t, size=(height, width), mode="nearest")[:, 0].numpy() > 0.5


def _words_in(text: str, words: Iterable[str]) -> list[str]:
    known = set(words)
    return [w for w in words_of(text) if w in known]


def _replace_word(text: str, old: str, new: str) -> str:
    return re.sub(rf"\b{old}\b", new, text, flags=re.IGNORECASE)


def _colours_in(image: torch.Tensor, exclude: np.ndarray | None = None, tolerance: float = 40.0,
                min_pixels: int = 3) -> set[str]:
    """Palette colours that some pixels of the (3, S, S) image show (outside ``exclude``)."""
    pixels = image.permute(1, 2, 0).numpy() * 255.0
    pixels = pixels[~exclude] if exclude is not None else pixels.reshape(-1, 3)
    return {name for name, rgb in COLOURS.items()
            if int((np.abs(pixels - np.asarray(rgb)).max(axis=1) < tolerance).sum()) >= min_pixels}


def _recolour(image: torch.Tensor, mask: np.ndarray, text: str, taken: set[str],
              rng: np.random.Generator) -> tuple[torch.Tensor, str, set[str]]:
    """Paint the target in another palette colour and say so in the text, when that keeps it unique.

    The synthetic scenes give each object its own colour, so a handful of training videos would
    otherwise show the grounder only a few colour words; a colour is used only when no pixel
    outside the target is near it (``taken``: the palette colours shown outside it). Returns the
    image, the text and the palette colours the new image shows.
    """
    words = _words_in(text, COLOURS)
    if len(words) != 1 or not mask.any():
        return image, text, taken | set(words)
    options = [name for name in COLOURS if name != words[0] and name not in taken]
    if not options:
        return image, text, taken | set(words)
    new = options[int(rng.integers(0, len(options)))]
    painted = image.clone()
    painted[:, torch.from_numpy(mask)] = torch.tensor(COLOURS[new], dtype=torch.float32)[:, None] / 255.0
    return painted, _replace_word(text, words[0], new), taken | {new}


def hard_negative(text: str, shown: set[str], rng: np.random.Generator, shape_swap_share: float) -> str | None:
    """A description of something absent from a frame, made from the description of an object in it.

    Either the object's colour with another shape (the synthetic scenes give each object its own
    colour, so no other object has it), or its shape with a palette colour not in ``shown`` (the
    colours some pixels of the frame show). None when the description does not name exactly one
    colour and one shape, or every colour shows.
    """
    colours, shapes = _words_in(text, COLOURS), _words_in(text, SHAPES)
    if len(colours) != 1 or len(shapes) != 1:
        return None
    if rng.random() < shape_swap_share:
        others = [s for s in SHAPES if s != shapes[0]]
        return _replace_word(text, shapes[0], others[int(rng.integers(0, len(others)))])
    absent = [c for c in COLOURS if c not in shown and c != colours[0]]
    if not absent:
        return None
    return _replace_word(text, colours[0], absent[int(rng.integers(0, len(absent)))])


def jitter_box(box: BoxXYXY, rng: np.random.Generator, spread: float) -> BoxXYXY:
    """``box`` with each side moved by a normal error of ``spread`` of the box's side (at least a pixel wide)."""
    x1, y1, x2, y2 = box
    w, h = x2 - x1, y2 - y1
    d = rng.normal(0.0, spread, 4) * np.array([w, h, w, h])
    out = (x1 + d[0], y1 + d[1], x2 + d[2], y2 + d[3])
    return out[0], out[1], max(out[2], out[0] + 1.0), max(out[3], out[1] + 1.0)


def _grounder_batch(clips: list[_Clip], items: tuple[list[tuple[int, int]], list[tuple[int, int]]], batch: int,
                    rng: np.random.Generator, palette: dict[tuple[int, int], set[str]], light: LightParams
                    ) -> tuple[torch.Tensor, list[str], torch.Tensor]:
    """Positives (some recoloured), and negatives: frames without the described object, or hard negatives.

    ``palette`` caches, per (clip, frame), the palette colours shown outside the target.
    """
    shown, absent = items
    images, texts, targets = [], [], []
    while len(images) < batch:
        ci, t = shown[int(rng.integers(0, len(shown)))]
        clip = clips[ci]
        image, text, target = clip.images[t], clip.description, torch.from_numpy(clip.masks[t]).float()
        if (ci, t) not in palette:
            palette[ci, t] = _colours_in(image, exclude=clip.masks[t])
        colours = palette[ci, t] | set(_words_in(text, COLOURS))
        if rng.random() < light.recolour_share:
            image, text, colours = _recolour(image, clip.masks[t], text, palette[ci, t], rng)
        if rng.random() < light.grounder_negatives:
            if absent and rng.random() < light.absent_frame_share:
                ci, t = absent[int(rng.integers(0, len(absent)))]
                image, text = clips[ci].images[t], clips[ci].description
            else:
                negative = hard_negative(text, colours, rng, light.shape_swap_share)
                if negative is None:
                    continue
                text = negative
            target = torch.zeros_like(target)
        images.append(image)
        texts.append(text)
        targets.append(target)
    images_t, targets_t = torch.stack(images), torch.stack(targets)
    flip = torch.from_numpy(rng.random(batch) < 0.5)
    images_t[flip] = images_t[flip].flip(-1)
    targets_t[flip] = targets_t[flip].flip(-1)
    return images_t, texts, targets_t


def _segmenter_batch(clips: list[_Clip], items: list[tuple[int, int]], batch: int, light: LightParams,
                     rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Crops as inference makes them: a loose keyframe box, or a track box from a neighbour with its colour.

    Keyframe items: the target's box at t with grounder-like errors, no reference. Tracking items:
    the target's box at a neighbouring frame (the previous mask), searched ``track_margin`` around
    (twice that when a lost object is searched for), with the target's mean colour there; the
    target at t may have moved, be partly hidden, or be gone (then the answer is an empty mask).
    ``segmenter_recolour_share`` of the items paint the target (and its reference) in a random colour, so that the few
    training videos do not teach a few colours.
    """
    crop_size = light.crop_size
    images, windows, boxes, refs, targets, frames = [], [], [], [], [], []
    while len(images) < batch:
        ci, t = items[int(rng.integers(0, len(items)))]
        clip = clips[ci]
        near = [n for n in (t - 2, t - 1, t + 1, t + 2) if 0 <= n < len(clip.shown) and clip.shown[n]]
        if near and rng.random() < light.track_fraction:
            n = near[int(rng.integers(0, len(near)))]
            box = jitter_box(mask_box(clip.full_masks[n]), rng, light.track_box_jitter)
            lost = rng.random() < light.lost_search_share
            margin = light.track_margin * (light.max_search_growth if lost else 1.0)
            ref = mean_colour(clip.full_images[n], clip.full_masks[n])
        elif clip.shown[t]:
            box = jitter_box(mask_box(clip.full_masks[t]), rng, light.key_box_jitter)
            margin, ref = light.key_margin, None
        else:
            continue
        window = crop_window(box, margin, light.min_side)
        images.append(clip.full_images[t])
        targets.append(torch.from_numpy(clip.full_masks[t]).float())
        windows.append(window)
        boxes.append(box_channel(box_in_window(box, window, crop_size), crop_size))
        refs.append(ref)
        frames.append(t)
    crops = crop(torch.stack(images), windows, crop_size)
    masks = crop(torch.stack(targets)[:, None], windows, crop_size)[:, 0]
    for i in np.nonzero(rng.random(batch) < light.segmenter_recolour_share)[0]:
        colour = torch.from_numpy(rng.uniform(0.0, 1.0, 3).astype(np.float32))
        crops[i] = crops[i] * (1 - masks[i]) + colour[:, None, None] * masks[i]
        if refs[i] is not None:
            refs[i] = colour
    ref_t = torch.stack([reference_vector(r) for r in refs])
    boxes_t = torch.stack(boxes)
    flip = torch.from_numpy(rng.random(batch) < 0.5)
    crops[flip], masks[flip], boxes_t[flip] = crops[flip].flip(-1), masks[flip].flip(-1), boxes_t[flip].flip(-1)
    return crops, boxes_t, ref_t, masks


def _loss(logits: torch.Tensor, targets: torch.Tensor, pos_weight: float = 1.0) -> torch.Tensor:
    """BCE + soft dice per image (smoothed, so an empty target asks for an empty mask).

    ``pos_weight`` > 1 counts object pixels more: the grounder sees the whole frame, where the
    object is a few percent of the pixels, and without it learned to answer "nothing".
    """
    weight = torch.tensor(pos_weight, device=logits.device)
    bce = F.binary_cross_entropy_with_logits(logits, targets, pos_weight=weight)
    prob = torch.sigmoid(logits).flatten(1)
    flat = targets.flatten(1)
    dice = 1 - (2 * (prob * flat).sum(1) + 1) / (prob.sum(1) + flat.sum(1) + 1)
    return bce + dice.mean()


# ----------------------------------------------------------------------------------------------- training


def train_light_models(
    samples: Iterable[Sample], params: DetailParams, out_dir: Path, progress: Progress | None = None
) -> dict[str, Any]:
    """Train the grounder and the crop U-Net on ``train`` samples, measure on System 2's own held-out videos (the
    last ``params.light_holdout_videos`` train videos by id, never trained on), save to ``out_dir``.

    The val split is GRPO's held-out set and test is the reported one, so neither tunes System 2: three
    separate sets of videos (issue: a split that both tunes System 2 and reports GRPO's gain flatters both).

    The grounder learns from samples whose cue is ``appearance`` (single-image descriptions, nulls
    included: their target is empty); the U-Net from every sample's target masks. Both train in
    batches of ``params.light_batch`` at ``params.light_lr`` (AdamW, one-cycle), for ``step_counts``
    steps, seeded by ``params.seed``. Returns the metrics, which are also stored in the checkpoint's config.
    """
    started = time.perf_counter()
    torch.manual_seed(params.seed)
    rng = np.random.default_rng(params.seed)
    size = params.light_size
    cache: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    train, held_out = [], []
    train_samples = [s for s in samples if s.split == "train"]
    videos = sorted({str(s.meta.get("video_id", s.key.split("/")[0])) for s in train_samples})
    kept_out = min(params.light_holdout_videos, max(len(videos) - 1, 0))  # always leave a video to train on
    holdout = set(videos[len(videos) - kept_out:]) if kept_out else set()
    for sample in train_samples:
        target = held_out if str(sample.meta.get("video_id", sample.key.split("/")[0])) in holdout else train
        target.append(_clip(sample, size, cache))
    described = [(i, t) for i, c in enumerate(train) if c.cue == "appearance" for t in range(len(c.masks))]
    grounder_items = ([(i, t) for i, t in described if train[i].masks[t].any()],
                      [(i, t) for i, t in described if not train[i].masks[t].any()])
    segmenter_items = [(i, t) for i, c in enumerate(train) for t in range(len(c.masks)) if c.shown.any()]
    if not grounder_items[0] or not segmenter_items:
        raise ValueError("train_light_models: no train samples with appearance descriptions and target masks; "
                         "build the shards from the synthetic dataset (data.format video, synth stage) first")
    vocabulary = default_vocabulary()
    device = torch.device(params.device)
    light = params.light
    models = LightModels.untrained(vocabulary, size, light, device)

    palette: dict[tuple[int, int], set[str]] = {}

    def grounder_step(batch_rng: np.random.Generator) -> torch.Tensor:
        images, texts, targets = _grounder_batch(train, grounder_items, params.light_batch, batch_rng, palette, light)
        words, offsets = word_batch(texts, vocabulary)
        logits = models.grounder(images.to(device), words.to(device), offsets.to(device))
        return _loss(logits, targets.to(device), light.grounder_pos_weight)

    def segmenter_step(batch_rng: np.random.Generator) -> torch.Tensor:
        crops, boxes, refs, targets = _segmenter_batch(train, segmenter_items, params.light_batch, light, batch_rng)
        return _loss(models.segmenter(crops.to(device), boxes.to(device), refs.to(device)), targets.to(device))

    metrics: dict[str, Any] = {"train_samples": len(train), "heldout_samples": len(held_out),
                               "grounder_frames": len(described), "segmenter_frames": len(segmenter_items)}
    phases = (("grounder", models.grounder, grounder_step), ("segmenter", models.segmenter, segmenter_step))
    counts = step_counts(params)
    for name, net, step in phases:
        t0 = time.perf_counter()
        metrics[f"{name}_final_loss"] = _fit(name, net, step, counts[name], params, rng, progress)
        metrics[f"{name}_train_seconds"] = round(time.perf_counter() - t0, 2)
    metrics["train_seconds"] = round(time.perf_counter() - started, 2)
    t0 = time.perf_counter()
    metrics.update(evaluate_light_models(models, held_out, params.max_objects))
    metrics["eval_seconds"] = round(time.perf_counter() - t0, 2)
    save_light_models(models, out_dir, metrics)
    return metrics


def step_counts(params: DetailParams) -> dict[str, int]:
    """Steps per model: ``light_steps`` for the grounder, ``light.segmenter_step_factor`` times that for the U-Net."""
    return {"grounder": params.light_steps, "segmenter": params.light_steps * params.light.segmenter_step_factor}


def _fit(name: str, net: nn.Module, step: Callable[[np.random.Generator], torch.Tensor], steps: int,
         params: DetailParams, rng: np.random.Generator, progress: Progress | None) -> float:
    net.train()
    optimiser = torch.optim.AdamW(net.parameters(), lr=params.light_lr, weight_decay=params.light.weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=params.light_lr, total_steps=max(steps, 1),
                                                   pct_start=params.light.warmup_fraction)
    recent: list[float] = []
    for i in range(steps):
        loss = step(rng)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        schedule.step()
        recent = (recent + [loss.item()])[-20:]
        if progress is not None:
            progress(name, i + 1, steps, recent[-1])
    net.eval()
    return round(float(np.mean(recent)), 4) if recent else float("nan")


# ----------------------------------------------------------------------------------------------- evaluation

KEYFRAME_POLICIES = ("oracle_visible", "uniform", "absent")
POLICY_KEYFRAMES = 4  # keyframes per policy, as collaboration.uniform_keyframes gives by default


def spread(frames: Sequence[int], count: int) -> list[int]:
    """Up to ``count`` of ``frames`` (ascending), evenly spread over them: first and last, or the middle one alone."""
    if not frames:
        return []
    if count == 1:
        return [int(frames[len(frames) // 2])]
    picks = np.linspace(0, len(frames) - 1, min(count, len(frames))).round().astype(int)
    return sorted({int(frames[i]) for i in picks})


def policy_keyframes(policy: str, shown: np.ndarray, count: int = POLICY_KEYFRAMES) -> list[int]:
    """Keyframes of a measuring policy for a clip whose target shows on the ``shown`` (T,) bool frames.

    ``oracle_visible``: frames where the target is visible; ``uniform``: evenly over the clip,
    like ``collaboration.uniform_keyframes``; ``absent``: frames where it is not visible. The
    oracle policies read the truth to measure what better keyframes give; inference never does.
    """
    frames = list(range(len(shown)))
    if policy == "oracle_visible":
        return spread([f for f in frames if shown[f]], count)
    if policy == "uniform":
        return spread(frames, count)
    if policy == "absent":
        return spread([f for f in frames if not shown[f]], count)
    raise ValueError(f"unknown keyframe policy {policy!r}; use one of {KEYFRAME_POLICIES}")


def truth_description(clip: _Clip) -> str:
    """An appearance description of the clip's target read from its pixels and masks (measuring only).

    Sound and time expressions name no colour or shape, which System 1 is to supply; this stands in
    for a correct System 1 so that those samples measure System 2 too. Colour: the palette colour
    nearest the target's median pixel; shape: from how much of its bounding box the mask fills.
    """
    shown = np.nonzero(clip.shown)[0]
    pixels = np.concatenate([clip.frames[t][clip.full_masks[t]] for t in shown]).astype(np.float64)
    median = np.median(pixels, axis=0)
    colour = min(COLOURS, key=lambda name: float(np.sum((np.asarray(COLOURS[name]) - median) ** 2)))
    fill = 0.0
    for t in shown:
        x1, y1, x2, y2 = mask_box(clip.full_masks[t])
        fill = max(fill, float(clip.full_masks[t].sum()) / ((x2 - x1) * (y2 - y1)))
    shape = "square" if fill > 0.9 else "circle" if fill > 0.65 else "triangle"
    return f"the {colour} {shape}"


def evaluate_light_models(models: LightModels, clips: list[_Clip], max_objects: int) -> dict[str, Any]:
    """Held-out measures of the grounder, the segmenter, and the two together under keyframe policies.

    - ``grounder_box_iou`` (frames showing the described object; ``LightModels.locate``'s refined
      boxes, ``grounder_blob_box_iou`` the heatmap's own) and ``grounder_null_reject_rate`` (frames
      not showing it: the share that gives no box), on appearance samples.
    - ``segmenter_mask_iou`` from the true box with a 2 px margin, against ``box_as_mask_iou``.
    - ``e2e_j_<policy>``: mean J (``omni_r1.eval.metrics.region_j``) over every sampled frame of the
      referring samples whose target is visible on some frames and not on others, System 2 run from
      ``POLICY_KEYFRAMES`` keyframes of each policy (``policy_keyframes``); ``e2e_j_oracle_visible_1kf``
      from the middle visible frame alone. Sound and time samples get ``truth_description``.
    Ground truth is read here only to score and to place the oracle keyframes.
    """
    if not clips:
        return {"heldout_note": "no held-out train videos (detail.light_holdout_videos): held-out metrics not measured"}
    grounder_ious, blob_ious, null_rejects, seg_ious, box_ious = [], [], [], [], []
    size = models.size
    for clip in clips:
        h, w = clip.full_masks.shape[1:]
        if clip.cue == "appearance":
            probs = models.heatmap(clip.images, [clip.description] * len(clip.images)).numpy()
            for t, prob in enumerate(probs):
                coarse = [scale_box(b, size, w, h) for b in models.blobs(prob, max_objects)]
                found = refine_boxes(models, clip.full_images[t], coarse)
                true_box = mask_box(clip.full_masks[t])
                if true_box is None:
                    null_rejects.append(float(not found))
                else:
                    blob_ious.append(box_iou(coarse[0], true_box) if coarse else 0.0)
                    grounder_ious.append(box_iou(found[0], true_box) if found else 0.0)
        if clip.exp_type == "null":
            continue  # the other samples of the video have the same frames and real targets
        frames = np.nonzero(clip.shown)[0]
        boxes = [padded(mask_box(clip.full_masks[t]), 2.0, w, h) for t in frames]
        logits = models.segment(clip.full_images[frames], boxes, [None] * len(boxes), models.tuning.key_margin)
        seg_ious.extend(region_j((logits > 0).numpy(), clip.full_masks[frames]).tolist())
        as_masks = np.zeros((len(frames), h, w), bool)
        for mask, (x1, y1, x2, y2) in zip(as_masks, boxes):
            mask[round(y1):round(y2), round(x1):round(x2)] = True
        box_ious.extend(region_j(as_masks, clip.full_masks[frames]).tolist())
    segmenter = LightSegmenter(models, ModelBoxGrounder(models, max_objects), max_objects)
    measured = [c for c in clips if c.exp_type != "null" and c.shown.any() and not c.shown.all()]
    e2e: dict[str, Any] = {"e2e_samples": len(measured), "e2e_keyframes": POLICY_KEYFRAMES}
    runs = [(policy, POLICY_KEYFRAMES, f"e2e_j_{policy}") for policy in KEYFRAME_POLICIES]
    runs.append(("oracle_visible", 1, "e2e_j_oracle_visible_1kf"))
    for policy, count, key in runs:
        scores = []
        for clip in measured:
            text = clip.description if clip.cue == "appearance" else truth_description(clip)
            frames = policy_keyframes(policy, clip.shown, count)
            result = segmenter.segment(clip.frames, [KeyframePrompt(f, text) for f in frames])
            scores.append(float(region_j(result.masks, clip.full_masks).mean()))
        e2e[key] = _mean(scores)
    return {
        "grounder_box_iou": _mean(grounder_ious),
        "grounder_blob_box_iou": _mean(blob_ious),
        "grounder_null_reject_rate": _mean(null_rejects),
        "segmenter_mask_iou": _mean(seg_ious),
        "box_as_mask_iou": _mean(box_ious),
        **e2e,
        "heldout_frames": len(seg_ious),
    }


def _mean(values: list[float]) -> float | None:
    return round(float(np.mean(values)), 4) if values else None
