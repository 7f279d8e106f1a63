"""The CPU demo's detail system: a small text-conditioned grounder and a box-prompted U-Net, and their training.

Random-init SAM2 cannot be trained into a useful segmenter inside a CPU budget (design.md section 8),
so the demo's System 2 is two small convolutional nets trained on the synthetic data:

- ``TextGrounder`` reads a frame (resized to ``light_size`` squared) and a description, and paints
  a heatmap of the described object. The description is a bag of words over a fixed vocabulary
  (the synthetic generator's colours and shapes plus generic words; anything else maps to
  ``<unk>``), and it modulates every encoder stage of a small U-Net (FiLM). A box is the bounding
  box of a confident blob; a frame where nothing is confident gives no box, which is the right
  answer to a description of an absent object.
- ``BoxUNet`` (88 k parameters; the grounder has 97 k) reads RGB plus a box channel and segments the object in
  the box. Trained on boxes taken from neighbouring frames and loosened at random, it also
  serves to track: the previous frame's mask, grown by a margin, is the next frame's box.

``train_light_models`` trains both on ``Sample`` s of the ``train`` split and measures them on the
``val`` split; ``load_light_models`` reads them back strictly. Weights are safetensors, the
architecture and vocabulary a JSON file written last (its presence marks a whole checkpoint).
Only training reads ground-truth masks; inference (``LightModels``' methods) takes frames, text
and boxes.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import nn

from omni_r1.config import DetailParams
from omni_r1.data.synthetic import COLOURS, SHAPES
from omni_r1.fileio import atomic_write_bytes, atomic_write_json
from omni_r1.types import Box, Sample

CONFIG_NAME = "config.json"
GROUNDER_WEIGHTS = "grounder.safetensors"
SEGMENTER_WEIGHTS = "segmenter.safetensors"
FORMAT_VERSION = 1
UNKNOWN = "<unk>"
# Generic words of single-image descriptions; the synthetic templates use a few, System 1 may use more.
GENERIC_WORDS: tuple[str, ...] = (
    "the", "a", "an", "that", "is", "which", "object", "shape", "moving", "around", "of", "in", "on", "at",
    "with", "and", "left", "right", "top", "bottom", "middle", "center", "centre", "small", "large", "big",
    "one", "thing", "coloured", "colored", "bright", "dark",
)  # fmt: skip
WIDTHS = (16, 32, 64)
TEXT_DIM = 32
BOX_THRESHOLD = 0.5  # heatmap probability a blob must reach to count as a found object
MIN_BLOB_PIXELS = 6  # at light_size; smaller confident blobs are noise
NEGATIVE_FRACTION = 0.1  # share of grounder training frames where the described object is absent
GROUNDER_POS_WEIGHT = 5.0
TRACK_MARGIN = 0.5  # a tracked box grows by this fraction of its side on each side, per frame
TRACK_MIN_MARGIN = 0.04  # ... and by at least this fraction of the frame
_WORD = re.compile(r"[a-z]+")

Progress = Callable[[str, int, int, float], None]  # (model name, step, total steps, loss)
BoxXYXY = tuple[float, float, float, float]  # (x1, y1, x2, y2) in pixels


# ----------------------------------------------------------------------------------------------- text


def default_vocabulary() -> tuple[str, ...]:
    """``<unk>`` first, then colours, shapes and generic words (sorted, unique)."""
    words = sorted(set(COLOURS) | set(SHAPES) | set(GENERIC_WORDS))
    return (UNKNOWN, *words)


def tokenize(text: str, vocabulary: Sequence[str]) -> list[int]:
    """Word indices of ``text`` (lower-cased letters only); unknown words map to ``<unk>`` (index 0)."""
    index = {w: i for i, w in enumerate(vocabulary)}
    ids = [index.get(w, 0) for w in _WORD.findall(text.lower())]
    return ids or [0]


# ----------------------------------------------------------------------------------------------- models


def _block(c_in: int, c_out: int, first_kernel: int = 3) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, first_kernel, padding=first_kernel // 2), nn.GroupNorm(4, c_out), nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1), nn.GroupNorm(4, c_out), nn.ReLU(inplace=True),
    )  # fmt: skip


class _UNet(nn.Module):
    """Three-level U-Net with an optional per-stage FiLM conditioning vector; one logit per pixel."""

    def __init__(self, in_channels: int, widths: Sequence[int] = WIDTHS, cond_dim: int = 0) -> None:
        super().__init__()
        w0, w1, w2 = widths
        self.enc = nn.ModuleList([_block(in_channels, w0), _block(w0, w1), _block(w1, w2)])
        # Decoder blocks mix the skip in with a 1x1 conv first: the full-resolution 3x3 on the
        # concatenation was most of the cost of a CPU training step.
        self.dec = nn.ModuleList([_block(w2 + w1, w1, first_kernel=1), _block(w1 + w0, w0, first_kernel=1)])
        self.head = nn.Conv2d(w0, 1, 1)
        self.film = nn.ModuleList([nn.Linear(cond_dim, 2 * w) for w in widths]) if cond_dim else None

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        skips = []
        for level, block in enumerate(self.enc):
            x = block(x if level == 0 else F.max_pool2d(x, 2))
            if self.film is not None and cond is not None:
                gamma, beta = self.film[level](cond).chunk(2, dim=1)
                x = x * (1 + gamma[:, :, None, None]) + beta[:, :, None, None]
            skips.append(x)
        for block, skip in zip(self.dec, reversed(skips[:-1])):
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = block(torch.cat([x, skip], dim=1))
        return self.head(x)[:, 0]


class TextGrounder(nn.Module):
    """Frame (B, 3, S, S) in [0, 1] + word ids -> heatmap logits (B, S, S) of the described object."""

    def __init__(self, vocab_size: int, widths: Sequence[int] = WIDTHS, text_dim: int = TEXT_DIM) -> None:
        super().__init__()
        self.embed = nn.EmbeddingBag(vocab_size, text_dim, mode="mean")
        self.net = _UNet(3, widths, cond_dim=text_dim)

    def forward(self, images: torch.Tensor, words: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        return self.net(images, self.embed(words, offsets))


class BoxUNet(nn.Module):
    """Frame (B, 3, S, S) in [0, 1] + box channel (B, S, S) -> mask logits (B, S, S) of the boxed object."""

    def __init__(self, widths: Sequence[int] = WIDTHS) -> None:
        super().__init__()
        self.net = _UNet(4, widths)

    def forward(self, images: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([images, boxes[:, None]], dim=1))


def _word_batch(texts: Sequence[str], vocabulary: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    ids = [tokenize(t, vocabulary) for t in texts]
    offsets = torch.tensor([0, *np.cumsum([len(i) for i in ids])[:-1]], dtype=torch.long)
    return torch.tensor([w for i in ids for w in i], dtype=torch.long), offsets


# ----------------------------------------------------------------------------------------------- geometry


def resize_frames(frames: np.ndarray, size: int) -> torch.Tensor:
    """(T, H, W, 3) uint8 -> (T, 3, size, size) float in [0, 1], antialiased (aspect is not kept)."""
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float() / 255.0
    return F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)


def box_channel(box: BoxXYXY, size: int) -> torch.Tensor:
    """(size, size) float: 1 on the pixels whose centres fall inside ``box`` (light-size pixel coords)."""
    centres = torch.arange(size, dtype=torch.float32) + 0.5
    x1, y1, x2, y2 = box
    inside_x = (centres >= x1) & (centres <= x2)
    inside_y = (centres >= y1) & (centres <= y2)
    return (inside_y[:, None] & inside_x[None, :]).float()


def mask_box(mask: np.ndarray) -> BoxXYXY | None:
    """Pixel-edge bounding box (x1, y1, x2, y2) of a 2-D bool mask; None when empty."""
    ys, xs = np.nonzero(mask)
    if ys.size == 0:
        return None
    return float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)


def grow_box(box: BoxXYXY, size: int) -> BoxXYXY:
    """The tracking search box: ``box`` grown by ``TRACK_MARGIN`` of its side (at least a few pixels), clipped."""
    x1, y1, x2, y2 = box
    mx = max(TRACK_MARGIN * (x2 - x1), TRACK_MIN_MARGIN * size)
    my = max(TRACK_MARGIN * (y2 - y1), TRACK_MIN_MARGIN * size)
    return max(0.0, x1 - mx), max(0.0, y1 - my), min(float(size), x2 + mx), min(float(size), y2 + my)


def box_iou(a: BoxXYXY, b: BoxXYXY) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def mask_iou(pred: np.ndarray, true: np.ndarray) -> float:
    """IoU of two bool masks; two empty masks agree perfectly (1.0), as in the J measure."""
    union = np.logical_or(pred, true).sum()
    return 1.0 if union == 0 else float(np.logical_and(pred, true).sum() / union)


# ----------------------------------------------------------------------------------------------- inference


@dataclass
class LightModels:
    """The two trained nets with their vocabulary and input size; inference reads no ground truth."""

    grounder: TextGrounder
    segmenter: BoxUNet
    vocabulary: tuple[str, ...]
    size: int
    device: torch.device

    @torch.no_grad()
    def heatmap(self, images: torch.Tensor, descriptions: Sequence[str]) -> torch.Tensor:
        """(B, 3, S, S) resized frames + B descriptions -> (B, S, S) probabilities."""
        words, offsets = _word_batch(descriptions, self.vocabulary)
        self.grounder.eval()
        logits = self.grounder(images.to(self.device), words.to(self.device), offsets.to(self.device))
        return torch.sigmoid(logits).cpu()

    def ground(self, image: torch.Tensor, description: str, max_objects: int) -> list[BoxXYXY]:
        """Boxes (light-size pixels) of the confident blobs of the heatmap, most confident first."""
        prob = self.heatmap(image[None], [description])[0].numpy()
        return blob_boxes(prob, max_objects)

    @torch.no_grad()
    def segment(self, images: torch.Tensor, boxes: Sequence[BoxXYXY]) -> torch.Tensor:
        """(B, 3, S, S) frames + B boxes (light-size pixels) -> (B, S, S) mask logits."""
        channels = torch.stack([box_channel(b, self.size) for b in boxes])
        self.segmenter.eval()
        return self.segmenter(images.to(self.device), channels.to(self.device)).cpu()


def blob_boxes(prob: np.ndarray, max_objects: int) -> list[BoxXYXY]:
    """Bounding boxes of the connected blobs above ``BOX_THRESHOLD``, by peak probability, at most ``max_objects``."""
    labels, count = ndimage.label(prob > BOX_THRESHOLD)
    found = []
    for index in range(1, count + 1):
        blob = labels == index
        if blob.sum() >= MIN_BLOB_PIXELS:
            found.append((float(prob[blob].max()), mask_box(blob)))
    found.sort(key=lambda item: -item[0])
    return [box for _, box in found[:max_objects]]


# ----------------------------------------------------------------------------------------------- saving


def save_light_models(models: LightModels, out_dir: Path, metrics: dict[str, Any] | None = None) -> None:
    """Weights as safetensors, then the config (architecture, vocabulary, metrics) last: it marks a whole checkpoint."""
    from safetensors.torch import save

    out_dir.mkdir(parents=True, exist_ok=True)
    for name, net in ((GROUNDER_WEIGHTS, models.grounder), (SEGMENTER_WEIGHTS, models.segmenter)):
        tensors = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
        atomic_write_bytes(out_dir / name, save(tensors))
    config = {
        "format_version": FORMAT_VERSION,
        "size": models.size,
        "widths": list(WIDTHS),
        "text_dim": TEXT_DIM,
        "vocabulary": list(models.vocabulary),
        "metrics": metrics or {},
    }
    atomic_write_json(out_dir / CONFIG_NAME, config)


def load_light_models(path: str | Path, device: str | torch.device = "cpu") -> LightModels:
    """Read a checkpoint written by ``save_light_models``; every tensor must match (strict)."""
    from safetensors.torch import load_file

    path = Path(path)
    config_path = path / CONFIG_NAME
    if not config_path.is_file():
        raise FileNotFoundError(
            f"{config_path} is missing: {path} is not a trained light detail checkpoint; set "
            "detail.light_checkpoint in params.yaml to one, or train it (train_light_models, the detail training stage)"
        )
    config = json.loads(config_path.read_text())
    if config.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{config_path}: format_version {config.get('format_version')!r}, this code reads "
                         f"{FORMAT_VERSION}; retrain the light detail models")
    vocabulary = tuple(config["vocabulary"])
    widths = tuple(config["widths"])
    grounder = TextGrounder(len(vocabulary), widths, int(config["text_dim"]))
    segmenter = BoxUNet(widths)
    for name, net in ((GROUNDER_WEIGHTS, grounder), (SEGMENTER_WEIGHTS, segmenter)):
        weights = path / name
        if not weights.is_file():
            raise FileNotFoundError(f"{weights} is missing from the light detail checkpoint; retrain it")
        net.load_state_dict(load_file(str(weights)), strict=True)
    device = torch.device(device)
    return LightModels(grounder.to(device).eval(), segmenter.to(device).eval(), vocabulary, int(config["size"]), device)


# ----------------------------------------------------------------------------------------------- training data


@dataclass
class _Clip:
    """One sample's frames and target masks at light size, with its description and cue."""

    images: torch.Tensor  # (T, 3, S, S) float in [0, 1]
    masks: np.ndarray  # (T, S, S) bool
    full_masks: np.ndarray  # (T, H, W) bool at the frames' own size
    frames: np.ndarray  # (T, H, W, 3) uint8 high-res frames
    description: str
    cue: str
    exp_type: str


def _clip(sample: Sample, size: int, cache: dict[int, torch.Tensor]) -> _Clip:
    frames = sample.high_res
    key = id(frames)  # expressions of one video share its frame array: resize it once
    if key not in cache:
        cache[key] = resize_frames(frames, size)
    full = _masks_at(sample.target_masks(), frames.shape[1], frames.shape[2])
    small = F.interpolate(torch.from_numpy(full[:, None].astype(np.float32)), size=(size, size), mode="area")
    return _Clip(cache[key], small[:, 0].numpy() >= 0.5, full, frames, sample.expression,
                 str(sample.meta.get("cue", "")), str(sample.meta.get("exp_type", "")))


def _masks_at(masks: np.ndarray, height: int, width: int) -> np.ndarray:
    """Masks at the displayed size resized (nearest) to the frames' size when they differ."""
    if masks.shape[1:] == (height, width):
        return masks
    t = torch.from_numpy(masks[:, None].astype(np.float32))
    return F.interpolate(t, size=(height, width), mode="nearest")[:, 0].numpy() > 0.5


def _colour_words(text: str) -> list[str]:
    return [w for w in _WORD.findall(text.lower()) if w in COLOURS]


def _recolour(image: torch.Tensor, mask: np.ndarray, text: str, rng: np.random.Generator) -> tuple[torch.Tensor, str]:
    """Paint the target in another palette colour and say so in the text, when that keeps it unique.

    The synthetic scenes give each object its own colour, so a handful of training videos would
    otherwise show the grounder only a few colour words; a colour is used only when no other
    pixel of the frame is near it.
    """
    words = _colour_words(text)
    if len(words) != 1 or not mask.any():
        return image, text
    pixels = (image.permute(1, 2, 0).numpy() * 255.0)[~mask]
    options = []
    for name, rgb in COLOURS.items():
        if name != words[0] and int((np.abs(pixels - np.asarray(rgb)).max(axis=1) < 40).sum()) < 3:
            options.append(name)
    if not options:
        return image, text
    new = options[int(rng.integers(0, len(options)))]
    painted = image.clone()
    colour = torch.tensor(COLOURS[new], dtype=torch.float32)[:, None] / 255.0
    painted[:, torch.from_numpy(mask)] = colour
    return painted, re.sub(rf"\b{words[0]}\b", new, text, flags=re.IGNORECASE)


def _jitter_box(box: BoxXYXY, size: int, rng: np.random.Generator,
                loose: float) -> BoxXYXY:
    """A box grown by up to ``loose`` of its side on each side and shifted a little: what tracking gives."""
    x1, y1, x2, y2 = box
    w, h = x2 - x1, y2 - y1
    grow = rng.uniform(0.0, loose, 4) * np.array([w, h, w, h]) + rng.uniform(0, 2, 4)
    shift = rng.normal(0.0, 0.08, 2) * np.array([w, h])
    out = (x1 - grow[0] + shift[0], y1 - grow[1] + shift[1], x2 + grow[2] + shift[0], y2 + grow[3] + shift[1])
    return max(0.0, out[0]), max(0.0, out[1]), min(float(size), out[2]), min(float(size), out[3])


def _flip(images: torch.Tensor, targets: torch.Tensor, extra: torch.Tensor | None, flip: np.ndarray):
    idx = torch.from_numpy(np.nonzero(flip)[0])
    images, targets = images.clone(), targets.clone()
    images[idx] = images[idx].flip(-1)
    targets[idx] = targets[idx].flip(-1)
    if extra is not None:
        extra = extra.clone()
        extra[idx] = extra[idx].flip(-1)
    return images, targets, extra


def _grounder_batch(clips: list[_Clip], items: tuple[list[tuple[int, int]], list[tuple[int, int]]], batch: int,
                    rng: np.random.Generator) -> tuple[torch.Tensor, list[str], torch.Tensor]:
    """Mostly frames that show the described object; a few where it is absent teach the empty answer."""
    shown, absent = items
    images, texts, targets = [], [], []
    for _ in range(batch):
        pool = absent if absent and (not shown or rng.random() < NEGATIVE_FRACTION) else shown
        ci, t = pool[int(rng.integers(0, len(pool)))]
        clip = clips[ci]
        image, text = clip.images[t], clip.description
        if rng.random() < 0.6:
            image, text = _recolour(image, clip.masks[t], text, rng)
        images.append(image)
        texts.append(text)
        targets.append(torch.from_numpy(clip.masks[t]).float())
    images_t, targets_t, _ = _flip(torch.stack(images), torch.stack(targets), None, rng.random(batch) < 0.5)
    return images_t, texts, targets_t


def _segmenter_batch(clips: list[_Clip], items: list[tuple[int, int]], batch: int, size: int,
                     rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each item: the box of the target at a frame near t (where it shows) -> the target's mask at t."""
    images, boxes, targets = [], [], []
    while len(images) < batch:
        ci, t = items[int(rng.integers(0, len(items)))]
        clip = clips[ci]
        near = int(np.clip(t + rng.integers(-2, 3), 0, len(clip.masks) - 1))
        box = mask_box(clip.masks[near])
        if box is None:
            continue
        loose = 0.15 if near == t else 0.6
        images.append(clip.images[t])
        boxes.append(box_channel(_jitter_box(box, size, rng, loose), size))
        targets.append(torch.from_numpy(clip.masks[t]).float())
    images_t, targets_t, boxes_t = _flip(torch.stack(images), torch.stack(targets), torch.stack(boxes),
                                         rng.random(batch) < 0.5)
    return images_t, boxes_t, targets_t


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
    """Train the grounder and the box U-Net on ``train`` samples, measure on ``val`` samples, save to ``out_dir``.

    The grounder learns from samples whose cue is ``appearance`` (single-image descriptions, nulls
    included: their target is empty); the U-Net from every sample's target masks. Both train for
    ``params.light_steps`` steps of ``params.light_batch`` at ``params.light_lr`` (AdamW), seeded by
    ``params.seed``. Returns the metrics, which are also stored in the checkpoint's config.
    """
    started = time.perf_counter()
    torch.manual_seed(params.seed)
    rng = np.random.default_rng(params.seed)
    size = params.light_size
    cache: dict[int, torch.Tensor] = {}
    train, held_out = [], []
    for sample in samples:
        if sample.split == "train":
            train.append(_clip(sample, size, cache))
        elif sample.split == "val":
            held_out.append(_clip(sample, size, cache))
    described = [(i, t) for i, c in enumerate(train) if c.cue == "appearance" for t in range(len(c.masks))]
    grounder_items = ([(i, t) for i, t in described if train[i].masks[t].any()],
                      [(i, t) for i, t in described if not train[i].masks[t].any()])
    segmenter_items = [(i, t) for i, c in enumerate(train) for t in range(len(c.masks)) if c.masks.any()]
    if not grounder_items[0] or not segmenter_items:
        raise ValueError("train_light_models: no train samples with appearance descriptions and target masks; "
                         "build the shards from the synthetic dataset (data.format video, synth stage) first")
    vocabulary = default_vocabulary()
    device = torch.device(params.device)
    models = LightModels(TextGrounder(len(vocabulary)).to(device), BoxUNet().to(device), vocabulary, size, device)

    def grounder_step(batch_rng: np.random.Generator) -> torch.Tensor:
        images, texts, targets = _grounder_batch(train, grounder_items, params.light_batch, batch_rng)
        words, offsets = _word_batch(texts, vocabulary)
        logits = models.grounder(images.to(device), words.to(device), offsets.to(device))
        return _loss(logits, targets.to(device), GROUNDER_POS_WEIGHT)

    def segmenter_step(batch_rng: np.random.Generator) -> torch.Tensor:
        images, boxes, targets = _segmenter_batch(train, segmenter_items, params.light_batch, size, batch_rng)
        return _loss(models.segmenter(images.to(device), boxes.to(device)), targets.to(device))

    metrics: dict[str, Any] = {"train_samples": len(train), "heldout_samples": len(held_out),
                               "grounder_frames": len(described), "segmenter_frames": len(segmenter_items)}
    phases = (("grounder", models.grounder, grounder_step), ("segmenter", models.segmenter, segmenter_step))
    for name, net, step in phases:
        t0 = time.perf_counter()
        metrics[f"{name}_final_loss"] = _fit(name, net, step, params, rng, progress)
        metrics[f"{name}_train_seconds"] = round(time.perf_counter() - t0, 2)
    metrics["train_seconds"] = round(time.perf_counter() - started, 2)
    metrics.update(evaluate_light_models(models, held_out, params.max_objects))
    save_light_models(models, out_dir, metrics)
    return metrics


def _fit(name: str, net: nn.Module, step: Callable[[np.random.Generator], torch.Tensor], params: DetailParams,
         rng: np.random.Generator, progress: Progress | None) -> float:
    net.train()
    optimiser = torch.optim.AdamW(net.parameters(), lr=params.light_lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=params.light_lr,
                                                   total_steps=max(params.light_steps, 1), pct_start=0.1)
    recent: list[float] = []
    for i in range(params.light_steps):
        loss = step(rng)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        schedule.step()
        recent = (recent + [loss.item()])[-20:]
        if progress is not None:
            progress(name, i + 1, params.light_steps, recent[-1])
    net.eval()
    return round(float(np.mean(recent)), 4) if recent else float("nan")


# ----------------------------------------------------------------------------------------------- evaluation


def evaluate_light_models(models: LightModels, clips: list[_Clip], max_objects: int) -> dict[str, Any]:
    """Held-out measures: grounder box IoU, U-Net mask IoU from true boxes, and end-to-end mask IoU.

    End to end runs the light segmenter from the description alone on 1 and on 4 keyframes spread
    over the frames where the target shows, so the effect of more (better-placed) keyframes is seen.
    Ground truth is read here only to score.
    """
    from omni_r1.systems.detail import KeyframePrompt, LightSegmenter, ModelBoxGrounder

    if not clips:
        return {"heldout_note": "no val samples: held-out metrics not measured"}
    grounder_ious, null_rejects, seg_ious, box_ious = [], [], [], []
    size = models.size
    for clip in clips:
        h, w = clip.full_masks.shape[1:]
        if clip.cue == "appearance":
            for t in range(len(clip.masks)):
                found = models.ground(clip.images[t], clip.description, max_objects)
                true_box = mask_box(clip.full_masks[t])
                if true_box is None:
                    null_rejects.append(float(not found))
                else:
                    pred = _scale(found[0], size, w, h) if found else (0.0, 0.0, 0.0, 0.0)
                    grounder_ious.append(box_iou(pred, true_box))
        for t in range(len(clip.masks)):
            box = mask_box(clip.masks[t])
            if box is None:
                continue
            logits = models.segment(clip.images[t][None], [box])
            pred = upsample_masks(logits, h, w)[0]
            seg_ious.append(mask_iou(pred, clip.full_masks[t]))
            as_mask = np.zeros((h, w), bool)
            x1, y1, x2, y2 = (round(v) for v in _scale(box, size, w, h))
            as_mask[y1:y2, x1:x2] = True
            box_ious.append(mask_iou(as_mask, clip.full_masks[t]))
    segmenter = LightSegmenter(models, ModelBoxGrounder(models, max_objects), max_objects)
    e2e = {}
    for count in (1, 4):
        ious = []
        for clip in clips:
            shown = np.nonzero(clip.full_masks.reshape(len(clip.full_masks), -1).any(1))[0]
            if clip.cue != "appearance" or shown.size == 0:
                continue
            frames = sorted({int(shown[i]) for i in np.linspace(0, shown.size - 1, count).round().astype(int)})
            result = segmenter.segment(clip.frames, [KeyframePrompt(f, clip.description) for f in frames])
            ious.append(float(np.mean([mask_iou(p, g) for p, g in zip(result.masks, clip.full_masks)])))
        e2e[f"e2e_mask_iou_{count}kf"] = _mean(ious)
    return {
        "grounder_box_iou": _mean(grounder_ious),
        "grounder_null_reject_rate": _mean(null_rejects),
        "segmenter_mask_iou": _mean(seg_ious),
        "box_as_mask_iou": _mean(box_ious),
        **e2e,
        "heldout_frames": len(seg_ious),
    }


def _scale(box: BoxXYXY, size: int, width: int, height: int) -> BoxXYXY:
    """Light-size pixel box -> frame pixel box."""
    sx, sy = width / size, height / size
    return box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy


def upsample_masks(logits: torch.Tensor, height: int, width: int) -> np.ndarray:
    """(B, S, S) logits -> (B, H, W) bool masks (logit > 0 after bilinear resize)."""
    up = F.interpolate(logits[:, None], size=(height, width), mode="bilinear", align_corners=False)
    return (up[:, 0] > 0).numpy()


def _mean(values: list[float]) -> float | None:
    return round(float(np.mean(values)), 4) if values else None


def to_box(box: BoxXYXY, size: int, width: int, height: int) -> Box:
    """A light-size pixel box as a ``Box`` in frame pixels."""
    return Box(*_scale(box, size, width, height))


def from_box(box: Box, size: int, width: int, height: int) -> BoxXYXY:
    """A ``Box`` in frame pixels as a light-size pixel box."""
    sx, sy = size / width, size / height
    return box.x1 * sx, box.y1 * sy, box.x2 * sx, box.y2 * sy
