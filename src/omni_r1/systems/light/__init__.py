"""The CPU demo's System 2 (``detail.backend: light``): a small text-conditioned grounder and a crop U-Net.

Random-init SAM2 cannot be trained into a useful segmenter inside a CPU budget (design.md section 8),
so the demo's detail system is two small convolutional nets trained on the synthetic data by the
``train_detail`` stage (``omni_r1.detail_training``), served behind the same ``Segmenter`` interface as
the SAM2 backend (``omni_r1.systems.detail.LightSegmenter``).

- ``nets``: ``TextGrounder`` (frame + bag of words -> heatmap) and ``BoxUNet`` (crop + box + reference
  colour -> mask logits).
- ``geometry``: boxes, crops around them and pasting crop logits back into the frame.
- ``models``: ``LightModels`` (ground, locate, segment) and the checkpoint's save and strict load.

Every tuned constant is in params.yaml (``detail.light``, ``LightParams``); the checkpoint records the
values it was trained with, and inference uses those.
"""

from omni_r1.systems.light.geometry import (LOGIT_OUTSIDE, BoxXYXY, box_channel, box_in_window, box_iou, crop,
                                            crop_window, frames_tensor, mask_box, mean_colour, padded, paste,
                                            reference_vector, resize_frames, scale_box)
from omni_r1.systems.light.models import (CONFIG_NAME, FORMAT_VERSION, GROUNDER_WEIGHTS, SEGMENTER_WEIGHTS,
                                          LightModels, blob_boxes, load_light_models, refine_boxes,
                                          save_light_models)
from omni_r1.systems.light.nets import UNKNOWN, BoxUNet, TextGrounder, tokenize, word_batch, words_of

__all__ = [
    "BoxUNet", "BoxXYXY", "CONFIG_NAME", "FORMAT_VERSION", "GROUNDER_WEIGHTS", "LOGIT_OUTSIDE", "LightModels",
    "SEGMENTER_WEIGHTS", "TextGrounder", "UNKNOWN", "blob_boxes", "box_channel", "box_in_window", "box_iou", "crop",
    "crop_window", "frames_tensor", "load_light_models", "mask_box", "mean_colour", "padded", "paste",
    "reference_vector", "refine_boxes", "resize_frames", "save_light_models", "scale_box", "tokenize",
    "word_batch", "words_of",
]  # fmt: skip
