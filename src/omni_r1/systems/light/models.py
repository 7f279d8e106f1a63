"""The trained light System 2 at inference: ``LightModels`` (ground, locate, segment) and its checkpoint I/O.

A checkpoint folder holds the two nets as safetensors and ``config.json`` written last (its presence
marks a whole checkpoint): format version, sizes, vocabulary, the ``detail.light`` values it was
trained with (``LightParams``; inference reads its margins and thresholds from there) and the
training run's metrics. ``load_light_models`` reads it back strictly. Inference takes frames, text
and boxes; nothing here reads ground truth.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from scipy import ndimage

from omni_r1.config import ConfigError, LightParams, params_from_dict
from omni_r1.fileio import atomic_write_bytes, atomic_write_json
from omni_r1.systems.light.geometry import (BoxXYXY, box_channel, box_in_window, crop, crop_window, mask_box, paste,
                                            reference_vector, scale_box)
from omni_r1.systems.light.nets import BoxUNet, TextGrounder, word_batch

CONFIG_NAME = "config.json"
GROUNDER_WEIGHTS = "grounder.safetensors"
SEGMENTER_WEIGHTS = "segmenter.safetensors"
# 2: the segmenter reads crops of the full-resolution frame and a reference colour;
# 3: the checkpoint carries its detail.light values (margins, thresholds) for inference.
FORMAT_VERSION = 3


@dataclass
class LightModels:
    """The two trained nets with their vocabulary, the grounder's input side and their ``detail.light`` values."""

    grounder: TextGrounder
    segmenter: BoxUNet
    vocabulary: tuple[str, ...]
    size: int  # the grounder's input side
    device: torch.device
    tuning: LightParams = LightParams()

    @classmethod
    def untrained(cls, vocabulary: Sequence[str], size: int, tuning: LightParams,
                  device: str | torch.device = "cpu") -> LightModels:
        """Fresh nets of the sizes in ``tuning`` (training starts here; tests use them as stand-ins)."""
        device = torch.device(device)
        grounder = TextGrounder(len(vocabulary), tuning.widths, tuning.text_dim).to(device)
        return cls(grounder, BoxUNet(tuning.widths).to(device), tuple(vocabulary), size, device, tuning)

    @property
    def crop_size(self) -> int:
        return self.tuning.crop_size

    @torch.no_grad()
    def heatmap(self, images: torch.Tensor, descriptions: Sequence[str]) -> torch.Tensor:
        """(B, 3, S, S) resized frames + B descriptions -> (B, S, S) probabilities."""
        words, offsets = word_batch(descriptions, self.vocabulary)
        self.grounder.eval()
        logits = self.grounder(images.to(self.device), words.to(self.device), offsets.to(self.device))
        return torch.sigmoid(logits).cpu()

    def ground(self, image: torch.Tensor, description: str, max_objects: int) -> list[BoxXYXY]:
        """Boxes (light-size pixels) of the confident blobs of the heatmap, most confident first."""
        prob = self.heatmap(image[None], [description])[0].numpy()
        return self.blobs(prob, max_objects)

    def blobs(self, prob: np.ndarray, max_objects: int) -> list[BoxXYXY]:
        """``blob_boxes`` of a heatmap with this checkpoint's threshold and minimum blob size."""
        return blob_boxes(prob, max_objects, self.tuning.box_threshold, self.tuning.min_blob_pixels)

    def locate(self, image: torch.Tensor, full_image: torch.Tensor, description: str,
               max_objects: int) -> list[BoxXYXY]:
        """Boxes (frame pixels) of the described objects: heatmap blobs, each refined by the segmenter.

        ``image`` is the frame at the grounder's size, ``full_image`` (3, H, W) at its own. A blob
        box is coarse (the grounder sees a small frame); the box of the segmenter's mask inside it
        is tight, and a blob where the segmenter finds no object is dropped.
        """
        h, w = full_image.shape[-2:]
        coarse = [scale_box(b, self.size, w, h) for b in self.ground(image, description, max_objects)]
        return refine_boxes(self, full_image, coarse)

    @torch.no_grad()
    def segment(self, images: torch.Tensor, boxes: Sequence[BoxXYXY], references: Sequence[torch.Tensor | None],
                margin: float) -> torch.Tensor:
        """(B, 3, H, W) full-size frames + B boxes (frame pixels) and reference colours -> (B, H, W) mask logits.

        Each box is segmented in its crop (the box grown by ``margin`` of its side); frame pixels
        outside the crop get ``LOGIT_OUTSIDE``.
        """
        size = self.crop_size
        windows = [crop_window(b, margin, self.tuning.min_side) for b in boxes]
        crops = crop(images.to(self.device), windows, size)
        channels = torch.stack([box_channel(box_in_window(b, w, size), size) for b, w in zip(boxes, windows)])
        refs = torch.stack([reference_vector(r) for r in references])
        self.segmenter.eval()
        logits = self.segmenter(crops, channels.to(self.device), refs.to(self.device)).cpu()
        h, w = images.shape[-2:]
        return torch.stack([paste(l, win, h, w) for l, win in zip(logits, windows)])


def refine_boxes(models: LightModels, full_image: torch.Tensor, boxes: Sequence[BoxXYXY]) -> list[BoxXYXY]:
    """The boxes of the segmenter's masks for coarse ``boxes`` (frame pixels) on one frame; empty masks dropped."""
    if not boxes:
        return []
    logits = models.segment(full_image[None].expand(len(boxes), -1, -1, -1), boxes, [None] * len(boxes),
                            models.tuning.key_margin)
    found = [mask_box((l > 0).numpy()) for l in logits]
    return [b for b in found if b is not None]


def blob_boxes(prob: np.ndarray, max_objects: int, threshold: float, min_pixels: int) -> list[BoxXYXY]:
    """Bounding boxes of the connected blobs above ``threshold`` (of at least ``min_pixels``), by peak
    probability, at most ``max_objects``."""
    labels, count = ndimage.label(prob > threshold)
    found = []
    for index in range(1, count + 1):
        blob = labels == index
        if blob.sum() >= min_pixels:
            found.append((float(prob[blob].max()), mask_box(blob)))
    found.sort(key=lambda item: -item[0])
    return [box for _, box in found[:max_objects]]


# ----------------------------------------------------------------------------------------------- checkpoint


def save_light_models(models: LightModels, out_dir: Path, metrics: dict[str, Any] | None = None) -> None:
    """Weights as safetensors, then the config (sizes, vocabulary, ``detail.light``, metrics) last."""
    from safetensors.torch import save

    out_dir.mkdir(parents=True, exist_ok=True)
    for name, net in ((GROUNDER_WEIGHTS, models.grounder), (SEGMENTER_WEIGHTS, models.segmenter)):
        tensors = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
        atomic_write_bytes(out_dir / name, save(tensors))
    tuning = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(models.tuning).items()}
    config = {
        "format_version": FORMAT_VERSION,
        "size": models.size,
        "vocabulary": list(models.vocabulary),
        "light": tuning,
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
            "detail.light_checkpoint in params.yaml to one, or train it (the train_detail stage)"
        )
    config = json.loads(config_path.read_text())
    if config.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{config_path}: format_version {config.get('format_version')!r}, this code reads "
                         f"{FORMAT_VERSION}; retrain the light detail models (the train_detail stage)")
    try:
        tuning = params_from_dict({"detail": {"light": config["light"]}}).detail.light
    except (ConfigError, KeyError) as err:
        raise ValueError(f"{config_path}: its `light` values do not load ({err}); retrain the light detail "
                         "models (the train_detail stage)") from err
    models = LightModels.untrained(tuple(config["vocabulary"]), int(config["size"]), tuning)
    for name, net in ((GROUNDER_WEIGHTS, models.grounder), (SEGMENTER_WEIGHTS, models.segmenter)):
        weights = path / name
        if not weights.is_file():
            raise FileNotFoundError(f"{weights} is missing from the light detail checkpoint; retrain it")
        net.load_state_dict(load_file(str(weights)), strict=True)
    device = torch.device(device)
    models.grounder.to(device).eval()
    models.segmenter.to(device).eval()
    models.device = device
    return models
