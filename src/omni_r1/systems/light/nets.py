"""The light System 2's two networks: a text-conditioned grounder and a box-prompted crop U-Net.

- ``TextGrounder`` reads a frame (resized to ``detail.light_size`` squared) and a description, and paints
  a heatmap of the described object. The description is a bag of words over a fixed vocabulary
  (anything unknown maps to ``<unk>``), and it modulates every encoder stage of a small U-Net (FiLM).
- ``BoxUNet`` segments one object from a crop of the full-resolution frame around a box; its inputs are
  the crop, the box as a channel and an optional reference colour (constant planes).

Sizes (``detail.light.widths``, ``text_dim``) come from params.yaml at training and from the
checkpoint at inference.
"""

from __future__ import annotations

import re
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

UNKNOWN = "<unk>"
_WORD = re.compile(r"[a-z]+")


def words_of(text: str) -> list[str]:
    """The lower-cased words (letters only) of ``text``, as the vocabulary sees them."""
    return _WORD.findall(text.lower())


def tokenize(text: str, vocabulary: Sequence[str]) -> list[int]:
    """Word indices of ``text`` (lower-cased letters only); unknown words map to ``<unk>`` (index 0)."""
    index = {w: i for i, w in enumerate(vocabulary)}
    ids = [index.get(w, 0) for w in words_of(text)]
    return ids or [0]


def _block(c_in: int, c_out: int, first_kernel: int = 3) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, first_kernel, padding=first_kernel // 2), nn.GroupNorm(4, c_out), nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1), nn.GroupNorm(4, c_out), nn.ReLU(inplace=True),
    )  # fmt: skip


class _UNet(nn.Module):
    """Three-level U-Net with an optional per-stage FiLM conditioning vector; one logit per pixel."""

    def __init__(self, in_channels: int, widths: Sequence[int], cond_dim: int = 0) -> None:
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

    def __init__(self, vocab_size: int, widths: Sequence[int], text_dim: int) -> None:
        super().__init__()
        self.embed = nn.EmbeddingBag(vocab_size, text_dim, mode="mean")
        self.net = _UNet(3, widths, cond_dim=text_dim)

    def forward(self, images: torch.Tensor, words: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        return self.net(images, self.embed(words, offsets))


class BoxUNet(nn.Module):
    """Crop (B, 3, C, C) in [0, 1] + box channel (B, C, C) + reference (B, 4) -> mask logits (B, C, C).

    The reference is the object's mean colour (RGB in [0, 1]) and a flag that says it is given
    (all zeros: no reference, as on a keyframe); it enters as constant planes so the first
    convolutions can compare every pixel with it.
    """

    def __init__(self, widths: Sequence[int]) -> None:
        super().__init__()
        self.net = _UNet(8, widths)

    def forward(self, crops: torch.Tensor, boxes: torch.Tensor, references: torch.Tensor) -> torch.Tensor:
        planes = references[:, :, None, None].expand(-1, -1, *crops.shape[-2:])
        return self.net(torch.cat([crops, boxes[:, None], planes], dim=1))


def word_batch(texts: Sequence[str], vocabulary: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Word ids of ``texts`` concatenated, and each text's offset: the ``EmbeddingBag`` input."""
    ids = [tokenize(t, vocabulary) for t in texts]
    offsets = torch.tensor([0, *np.cumsum([len(i) for i in ids])[:-1]], dtype=torch.long)
    return torch.tensor([w for i in ids for w in i], dtype=torch.long), offsets
