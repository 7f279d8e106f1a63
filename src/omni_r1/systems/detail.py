"""System 2, the Detail Understanding System: boxes on keyframes, then masks on every sampled frame.

``build_segmenter(params)`` returns a ``Segmenter`` for ``params.backend``:

- ``sam2`` (the paper's): a grounding VLM from a local checkpoint boxes each described object on its
  keyframe (Qwen2.5-VL ``bbox_2d`` JSON, greedy decoding), then the SAM2 video predictor takes every
  box as the prompt of its own object id on its frame and propagates it over all sampled frames.
  Propagation runs forward from the keyframes, one pass, as the official code does; with
  ``detail.reverse_pass`` it also runs in reverse from the latest keyframe, so that frames before
  an object's keyframe get masks too: each object then takes the forward pass's masks from its
  keyframe on and the reverse pass's masks before it.
- ``light`` (the CPU demo): the small grounder and crop U-Net of ``omni_r1.systems.light``. Each box is
  segmented on its keyframe and tracked outward over the frames for which its keyframe is the
  nearest one (ties go to the earlier keyframe): the U-Net searches each next frame around the
  previous frame's mask box, given the mean colour of the keyframe's mask as its reference, and
  answers an empty mask where the object is gone. Frames owned by no keyframe do not exist: every
  frame has a nearest keyframe.

Either way each box is one object, ``masks`` is the union of the objects, and a keyframe where the
grounder finds nothing contributes no object. The grounder answers *entries* in its answer's order
(``None`` for an invalid one, as ``answer.parse_box_entries`` reads them); the boxes that prompt the
masks are the valid ones among the first ``boxes_per_keyframe`` entries of each keyframe. In GRPO
that is K, the number of target objects, as the official code sends only the first K boxes to
SAM2; at inference (no truth) it is ``detail.max_objects``. All entries are kept in the result for
the rewards' object-count penalty. ``segment_batch`` serves one GRPO group (one video,
several answers): the grounder runs once per distinct (keyframe, description), and the per-video
work is done once (the light backend's resized frames; SAM2's frames, given to it as a tensor with no
JPEG round trip, and its image features: each frame's backbone pass runs once for the whole group,
``Sam2FrameFeatures``). Each SAM2 answer then propagates in its own inference state on those shared
features, so an answer's masks are exactly those it gets segmented alone (tested), whatever else is
in its group. Inference takes frames and text only; nothing here reads ground truth.
"""

from __future__ import annotations

import contextlib
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, Sequence

import numpy as np
import torch
from PIL import Image

from omni_r1.config import DetailParams
from omni_r1.systems import light as lm
from omni_r1.types import Box

if TYPE_CHECKING:
    from sam2.sam2_video_predictor import SAM2VideoPredictor

__all__ = [
    "Box", "DetailSetupError", "Grounder", "KeyframePrompt", "LightSegmenter", "ModelBoxGrounder", "SegmentResult",
    "Segmenter", "Sam2Segmenter", "VlmGrounder", "build_sam2_predictor", "build_segmenter",
]  # fmt: skip

PHASES = ("ground", "segment", "propagate")
SAM2_RANDOM = "random"  # detail.sam2_checkpoint: random SAM2 weights, said out loud (tests only)
SAM2_MEAN = (0.485, 0.456, 0.406)  # sam2.utils.misc.load_video_frames' normalisation
SAM2_STD = (0.229, 0.224, 0.225)


class DetailSetupError(ValueError):
    """System 2 cannot be built from params.yaml; the message names the key and the fix."""


@dataclass(frozen=True)
class KeyframePrompt:
    """A keyframe to ground: an index into the T sampled frames, the description to find there, and the task
    whose grounding prompt asks for it (ReVOS: all the referred objects; RefAVS: one bounding box)."""

    frame: int
    description: str
    task: Literal["revos", "refavs"] = "revos"


@dataclass(frozen=True)
class SegmentResult:
    """System 2's output for one answer.

    ``masks`` (T, H, W) bool is the union of ``object_masks`` (K, T, H, W) bool, one per box (object
    id); ``boxes`` maps each keyframe to the boxes that prompted the masks (frame pixels);
    ``entries`` maps each grounded keyframe to all of the grounder's entries in answer order, ``None``
    for an invalid one (what the rewards count); ``timings`` holds
    seconds per phase (``ground``, ``segment``, ``propagate``). In a ``segment_batch`` result the
    ``segment`` and ``propagate`` times are those of the group's shared pass.
    """

    masks: np.ndarray
    object_masks: np.ndarray
    boxes: dict[int, list[Box]]
    timings: dict[str, float] = field(default_factory=dict)
    entries: dict[int, tuple[Box | None, ...]] = field(default_factory=dict)

    @property
    def invalid_entries(self) -> int:
        """Grounder entries that were not a valid box (``None``), over all keyframes: the grounder failed."""
        return sum(entry is None for found in self.entries.values() for entry in found)

    @property
    def empty_objects(self) -> int:
        """Objects whose mask is empty on the keyframe their box prompted: the segmenter found nothing in a box."""
        return sum(not self.object_masks[k, frame].any() for k, (frame, _) in enumerate(_objects(self.boxes)))


class Segmenter(Protocol):
    """Frames of one video + keyframe prompts -> masks on every frame."""

    def segment(self, frames: np.ndarray, prompts: Sequence[KeyframePrompt]) -> SegmentResult:
        """``frames`` (T, H, W, 3) uint8 high-res sampled frames of one video; masks cover all T frames."""
        ...

    def segment_batch(
        self, frames: np.ndarray, prompt_sets: Sequence[Sequence[KeyframePrompt]], boxes_per_keyframe: int | None = None
    ) -> list[SegmentResult]:
        """One video, a group of answers (GRPO rollouts): one result per prompt set, per-video work shared.

        ``boxes_per_keyframe`` limits the grounder entries used per keyframe (None: ``max_objects``)."""
        ...


class Grounder(Protocol):
    """One frame (H, W, 3) uint8 + a description -> the grounder's entries in answer order: boxes in that
    frame's pixels, ``None`` for an entry that is not a valid box (possibly no entries at all)."""

    def ground(self, frame: np.ndarray, description: str, task: str = "revos") -> list[Box | None]: ...


# ----------------------------------------------------------------------------------------------- factory


def build_segmenter(params: DetailParams) -> Segmenter:
    """The ``Segmenter`` of ``params.backend``, with its grounder; checkpoints are checked before loading."""
    if params.backend == "light":
        path = Path(params.light_checkpoint)
        if not (path / lm.CONFIG_NAME).is_file():
            raise DetailSetupError(
                f"detail.light_checkpoint: {path} holds no trained light detail models ({lm.CONFIG_NAME} missing); "
                "train them first (the train_detail stage) or point detail.light_checkpoint "
                "in params.yaml at a trained checkpoint folder"
            )
        models = lm.load_light_models(path, params.device)
        return LightSegmenter(models, ModelBoxGrounder(models, params.max_objects), params.max_objects)
    if params.backend == "sam2":
        _check_sam2_paths(params)
        grounder = VlmGrounder.from_checkpoint(params.grounder_checkpoint, params.device, params.max_objects)
        return Sam2Segmenter(build_sam2_predictor(params), grounder, params.max_objects, params.reverse_pass)
    raise DetailSetupError(f"detail.backend {params.backend!r} is unknown; use 'light' or 'sam2' in params.yaml")


def _check_sam2_paths(params: DetailParams) -> None:
    grounder = Path(params.grounder_checkpoint) if params.grounder_checkpoint else None
    if grounder is None or not grounder.is_dir():
        raise DetailSetupError(
            f"detail.grounder_checkpoint {params.grounder_checkpoint!r} is not a local folder: the sam2 backend "
            "needs a transformers VLM that answers Qwen2.5-VL bbox_2d JSON (e.g. a downloaded "
            "Qwen2.5-VL-7B-Instruct or Qwen2.5-Omni-7B); set detail.grounder_checkpoint to its folder, or use detail.backend: light"
        )
    _sam2_weights(params)


def _sam2_weights(params: DetailParams) -> str | None:
    """The SAM2 checkpoint file to load, or None for ``detail.sam2_checkpoint: random`` (tests only).

    Empty is an error rather than a silent random model: a run with real data would otherwise train
    against noise masks without a word."""
    checkpoint = params.sam2_checkpoint.strip()
    if checkpoint == SAM2_RANDOM:
        return None
    if not checkpoint:
        raise DetailSetupError(
            f"detail.sam2_checkpoint is empty; set it to the local SAM2.1 .pt that matches detail.sam2_config "
            f"({params.sam2_config}, e.g. sam2.1_hiera_large.pt with sam2.1_hiera_l.yaml), or to "
            f"{SAM2_RANDOM!r} for random weights (tests only)"
        )
    if not Path(checkpoint).is_file():
        raise DetailSetupError(
            f"detail.sam2_checkpoint: {checkpoint} does not exist; download the SAM2.1 checkpoint that "
            f"matches detail.sam2_config ({params.sam2_config}, e.g. sam2.1_hiera_large.pt) and set its path "
            f"({SAM2_RANDOM!r} means random weights, for tests only)"
        )
    return checkpoint


# ----------------------------------------------------------------------------------------------- shared steps


def _check_inputs(frames: np.ndarray, prompt_sets: Sequence[Sequence[KeyframePrompt]]) -> None:
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or frames.shape[0] == 0:
        raise ValueError(f"System 2 needs frames as non-empty uint8 (T, H, W, 3), got {frames.dtype} {frames.shape}")
    for prompts in prompt_sets:
        for prompt in prompts:
            if not 0 <= prompt.frame < frames.shape[0]:
                raise ValueError(f"keyframe {prompt.frame} is outside the {frames.shape[0]} sampled frames; "
                                 "System 1's answer must be parsed with the clip's frame count")


@dataclass(frozen=True)
class _Grounded:
    """One prompt set's grounding: the prompting boxes and all entries per keyframe, and the seconds spent."""

    boxes: dict[int, list[Box]]
    entries: dict[int, tuple[Box | None, ...]]
    seconds: float


def _ground_sets(
    grounder: Grounder, frames: np.ndarray, prompt_sets: Sequence[Sequence[KeyframePrompt]], limit: int
) -> list[_Grounded]:
    """Each prompt set grounded; each (frame, description) is asked once. A keyframe's prompting boxes are the
    valid ones among its first ``limit`` entries (the official first-K rule)."""
    cache: dict[tuple[int, str, str], tuple[Box | None, ...]] = {}
    results = []
    for prompts in prompt_sets:
        started = time.perf_counter()
        entries: dict[int, tuple[Box | None, ...]] = {}
        for prompt in prompts:
            key = (prompt.frame, prompt.description, prompt.task)
            if key not in cache:
                cache[key] = tuple(grounder.ground(frames[prompt.frame], prompt.description, prompt.task))
            entries[prompt.frame] = entries.get(prompt.frame, ()) + cache[key]
        boxes = {frame: [b for b in found[:limit] if b is not None] for frame, found in sorted(entries.items())}
        results.append(_Grounded({k: v for k, v in boxes.items() if v}, entries, time.perf_counter() - started))
    return results


def _objects(boxes: dict[int, list[Box]]) -> list[tuple[int, Box]]:
    """(keyframe, box) per object id, keyframes ascending, boxes in grounder order."""
    return [(frame, box) for frame in sorted(boxes) for box in boxes[frame]]


def _result(object_masks: np.ndarray, grounded: _Grounded, timings: dict[str, float]) -> SegmentResult:
    rounded = {phase: round(timings.get(phase, 0.0), 4) for phase in PHASES}
    return SegmentResult(object_masks.any(axis=0), object_masks, grounded.boxes, rounded, grounded.entries)


def _limit(boxes_per_keyframe: int | None, max_objects: int) -> int:
    if boxes_per_keyframe is None:
        return max_objects
    if boxes_per_keyframe < 0:
        raise ValueError(f"boxes_per_keyframe={boxes_per_keyframe} must be >= 0 (the number of target objects)")
    return boxes_per_keyframe


# ----------------------------------------------------------------------------------------------- light backend


class ModelBoxGrounder:
    """The light grounder as a ``Grounder``: heatmap blobs of the described object refined by the segmenter."""

    def __init__(self, models: lm.LightModels, max_objects: int) -> None:
        self.models = models
        self.max_objects = max_objects

    def ground(self, frame: np.ndarray, description: str, task: str = "revos") -> list[Box | None]:
        image = lm.resize_frames(frame[None], self.models.size)[0]
        boxes = self.models.locate(image, lm.frames_tensor(frame[None])[0], description, self.max_objects)
        return [Box(*b) for b in boxes]


class LightSegmenter:
    """The CPU demo's System 2: a grounder plus the box U-Net, tracking each box over its keyframe's frames."""

    def __init__(self, models: lm.LightModels, grounder: Grounder, max_objects: int) -> None:
        self.models = models
        self.grounder = grounder
        self.max_objects = max_objects

    def segment(self, frames: np.ndarray, prompts: Sequence[KeyframePrompt]) -> SegmentResult:
        return self.segment_batch(frames, [prompts])[0]

    def segment_batch(
        self, frames: np.ndarray, prompt_sets: Sequence[Sequence[KeyframePrompt]], boxes_per_keyframe: int | None = None
    ) -> list[SegmentResult]:
        _check_inputs(frames, prompt_sets)
        grounded_sets = _ground_sets(self.grounder, frames, prompt_sets, _limit(boxes_per_keyframe, self.max_objects))
        images = lm.frames_tensor(frames)  # per video, shared by the group
        tracks: dict[tuple[Any, ...], tuple[np.ndarray, float, float]] = {}
        results = []
        for grounded in grounded_sets:
            timings = {"ground": grounded.seconds, "segment": 0.0, "propagate": 0.0}
            owners = _owners(sorted(grounded.boxes), frames.shape[0])
            stack = []
            for frame, box in _objects(grounded.boxes):
                lo, hi = owners[frame]
                key = (frame, box.x1, box.y1, box.x2, box.y2, lo, hi)
                if key not in tracks:  # identical answers in a group share their tracks
                    tracks[key] = self._track(images, frame, box, lo, hi)
                masks, seg_s, prop_s = tracks[key]
                timings["segment"] += seg_s
                timings["propagate"] += prop_s
                stack.append(masks)
            object_masks = np.stack(stack) if stack else np.zeros((0, *frames.shape[:3]), dtype=bool)
            results.append(_result(object_masks, grounded, timings))
        return results

    def _track(self, images: torch.Tensor, frame: int, box: Box, lo: int, hi: int) -> tuple[np.ndarray, float, float]:
        """Masks (T, H, W) of one box: segmented on ``frame``, tracked outward over ``lo..hi``, empty elsewhere.

        The keyframe's mask gives the object's colour, the reference of every tracked frame; each
        frame is searched around the last mask's box (wider for every frame the object stays lost).
        """
        models = self.models
        out = np.zeros((images.shape[0], *images.shape[-2:]), dtype=bool)
        started = time.perf_counter()
        prompt = (box.x1, box.y1, box.x2, box.y2)
        tuning = models.tuning  # detail.light as the checkpoint was trained with it
        out[frame] = (models.segment(images[frame][None], [prompt], [None], tuning.key_margin)[0] > 0).numpy()
        reference = lm.mean_colour(images[frame], out[frame])
        start_box = lm.mask_box(out[frame]) or prompt
        seg_s = time.perf_counter() - started
        started = time.perf_counter()
        for step in (1, -1):
            last, lost = start_box, 0
            t = frame + step
            while lo <= t <= hi:
                margin = tuning.track_margin * min(1 + lost, tuning.max_search_growth)
                out[t] = (models.segment(images[t][None], [last], [reference], margin)[0] > 0).numpy()
                found = lm.mask_box(out[t])
                # A lost object keeps its last box: it may be hidden or out of frame for a while.
                last, lost = (found, 0) if found else (last, lost + 1)
                t += step
        return out, seg_s, time.perf_counter() - started


def _owners(keyframes: list[int], num_frames: int) -> dict[int, tuple[int, int]]:
    """Per keyframe, the frame range (inclusive) nearer to it than to any other keyframe; ties go to the earlier."""
    owners = {}
    for i, k in enumerate(keyframes):
        lo = 0 if i == 0 else (keyframes[i - 1] + k) // 2 + 1
        hi = num_frames - 1 if i == len(keyframes) - 1 else (k + keyframes[i + 1]) // 2
        owners[k] = (lo, hi)
    return owners


# ----------------------------------------------------------------------------------------------- sam2 backend


def build_sam2_predictor(params: DetailParams) -> SAM2VideoPredictor:
    """The SAM2 video predictor of ``params.sam2_config`` at ``params.sam2_image_size``.

    sam2's own loader reads the official ``{"model": state_dict}`` file with
    ``torch.load(weights_only=True)`` and ``load_state_dict`` in strict mode, so a missing or
    unexpected key fails here. ``sam2_checkpoint: random`` gives random weights (tests only); empty
    is an error.
    """
    from hydra.errors import MissingConfigException
    from sam2.build_sam import build_sam2_video_predictor

    checkpoint = _sam2_weights(params)
    try:
        predictor = build_sam2_video_predictor(
            params.sam2_config, ckpt_path=checkpoint, device=params.device,
            hydra_overrides_extra=[f"++model.image_size={params.sam2_image_size}"],
        )  # fmt: skip
    except MissingConfigException as err:
        raise DetailSetupError(f"detail.sam2_config {params.sam2_config!r} is not a config of the sam2 package; use "
                               "e.g. configs/sam2.1/sam2.1_hiera_l.yaml") from err
    except (RuntimeError, KeyError) as err:
        if checkpoint is None:
            raise
        raise DetailSetupError(f"detail.sam2_checkpoint: {checkpoint} does not load strictly into "
                               f"{params.sam2_config} ({type(err).__name__}: {str(err)[:300]}); use the checkpoint "
                               "that matches detail.sam2_config") from err
    if torch.device(params.device).type == "cpu":
        # sam2 stores memory features in bfloat16 and expects CUDA autocast to match them with float32
        # weights; bfloat16 autocast on CPU is about 4x slower than float32, so on CPU the memory
        # attention gets its bfloat16 inputs back in float32 instead.
        predictor.memory_attention.register_forward_pre_hook(_float32_inputs, with_kwargs=True)
    return predictor


def _float32_inputs(module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]):
    def cast(value: Any) -> Any:
        return value.float() if isinstance(value, torch.Tensor) and value.dtype == torch.bfloat16 else value

    return tuple(cast(a) for a in args), {k: cast(v) for k, v in kwargs.items()}


class Sam2Segmenter:
    """Grounding boxes prompt the SAM2 video predictor, one object id per box; a group shares one pass."""

    def __init__(
        self, predictor: SAM2VideoPredictor, grounder: Grounder, max_objects: int, reverse_pass: bool = False
    ) -> None:
        self.predictor = predictor
        self.grounder = grounder
        self.max_objects = max_objects
        self.reverse_pass = reverse_pass
        self.device = torch.device(predictor.device)

    def segment(self, frames: np.ndarray, prompts: Sequence[KeyframePrompt]) -> SegmentResult:
        return self.segment_batch(frames, [prompts])[0]

    def segment_batch(
        self, frames: np.ndarray, prompt_sets: Sequence[Sequence[KeyframePrompt]], boxes_per_keyframe: int | None = None
    ) -> list[SegmentResult]:
        _check_inputs(frames, prompt_sets)
        grounded_sets = _ground_sets(self.grounder, frames, prompt_sets, _limit(boxes_per_keyframe, self.max_objects))
        # One frame tensor and one backbone pass per frame for the whole group; one propagation per distinct
        # answer (identical answers share it), each in its own state, so results never depend on the group.
        passes: dict[tuple[tuple[int, Box], ...], tuple[np.ndarray, dict[str, float]]] = {}
        features: Sam2FrameFeatures | None = None
        results = []
        for grounded in grounded_sets:
            objects = tuple(_objects(grounded.boxes))
            if objects and objects not in passes:
                if features is None:
                    started = time.perf_counter()
                    features = Sam2FrameFeatures(self.predictor, sam2_images(frames, self.predictor.image_size,
                                                                             self.device), frames.shape[1:3])
                    setup_s = time.perf_counter() - started
                    passes[objects] = self._propagate(features, list(objects))
                    passes[objects][1]["segment"] += setup_s
                else:
                    passes[objects] = self._propagate(features, list(objects))
            masks, timings = passes[objects] if objects else (np.zeros((0, *frames.shape[:3]), dtype=bool), {})
            results.append(_result(masks, grounded, {**timings, "ground": grounded.seconds}))
        return results

    def _propagate(self, features: Sam2FrameFeatures, objects: list[tuple[int, Box]]
                   ) -> tuple[np.ndarray, dict[str, float]]:
        """(K, T, H, W) masks of one answer's objects: forward from each keyframe (and reverse before it with
        ``reverse_pass``), in a fresh inference state over the group's shared frames and features."""
        num_frames = features.images.shape[0]
        masks = np.zeros((len(objects), num_frames, *features.video_size), dtype=bool)
        first = np.array([frame for frame, _ in objects])
        with self._precision():
            started = time.perf_counter()
            state = features.state()
            for obj_id, (frame, box) in enumerate(objects):
                self.predictor.add_new_points_or_box(state, frame_idx=frame, obj_id=obj_id,
                                                     box=np.array([box.x1, box.y1, box.x2, box.y2], dtype=np.float32))
            segment_s = time.perf_counter() - started
            started = time.perf_counter()
            for t, ids, logits in self.predictor.propagate_in_video(state):
                self._store(masks, t, ids, logits, first <= t)
            latest = int(first.max())
            if self.reverse_pass and latest > 0:
                reverse = self.predictor.propagate_in_video(state, start_frame_idx=latest,
                                                            max_frame_num_to_track=latest, reverse=True)
                for t, ids, logits in reverse:
                    self._store(masks, t, ids, logits, first > t)
            propagate_s = time.perf_counter() - started
        return masks, {"segment": segment_s, "propagate": propagate_s}

    @staticmethod
    def _store(masks: np.ndarray, t: int, ids: Sequence[int], logits: torch.Tensor, wanted: np.ndarray) -> None:
        frame_masks = (logits[:, 0] > 0).cpu().numpy()
        for row, obj_id in enumerate(ids):
            if wanted[obj_id]:
                masks[obj_id, t] = frame_masks[row]

    def _precision(self) -> contextlib.AbstractContextManager[Any]:
        # SAM2 runs in bfloat16 autocast on CUDA, as its authors and the paper run it; float32 on CPU.
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()


def sam2_images(frames: np.ndarray, image_size: int, device: torch.device) -> torch.Tensor:
    """Frames (T, H, W, 3) uint8 -> (T, 3, S, S) float32 on ``device``, normalised: what SAM2's JPEG loader
    (``sam2.utils.misc.load_video_frames``) makes of the same pixels (PIL's default resize, /255, mean/std),
    without writing and decoding JPEGs (lossy, and slow at 1024 px)."""
    resized = np.stack([np.asarray(Image.fromarray(frame, mode="RGB").resize((image_size, image_size)))
                        for frame in frames])
    images = torch.from_numpy(resized / 255.0).permute(0, 3, 1, 2).float().to(device)
    mean = torch.tensor(SAM2_MEAN, dtype=torch.float32, device=device)[:, None, None]
    std = torch.tensor(SAM2_STD, dtype=torch.float32, device=device)[:, None, None]
    return (images - mean) / std


class _SharedFeatureCache(dict):
    """SAM2's per-state ``cached_features`` replaced by a group-wide one: ``get`` computes a frame's backbone
    output on first use (``SAM2VideoPredictor._get_image_feature``'s own computation) and keeps every frame."""

    def __init__(self, predictor: SAM2VideoPredictor, images: torch.Tensor) -> None:
        super().__init__()
        self.predictor, self.images = predictor, images
        self.passes = 0

    def get(self, frame_idx: int, default: Any = None) -> Any:
        if frame_idx not in self:
            image = self.images[frame_idx].to(self.predictor.device).float().unsqueeze(0)
            with torch.inference_mode():
                self[frame_idx] = (image, self.predictor.forward_image(image))
            self.passes += 1
        return self[frame_idx]


class Sam2FrameFeatures:
    """One video's frames as a tensor and its image features, shared by the inference states of a group.

    ``state()`` is a fresh ``SAM2VideoPredictor`` inference state, the dict ``init_state`` builds (sam2 1.1.0;
    a test checks the keys against it), over these frames and this feature cache. Memory: every frame's
    backbone output is kept for the group (hiera-large at 1024: about 0.2 GB a frame in float32)."""

    def __init__(self, predictor: SAM2VideoPredictor, images: torch.Tensor, video_size: tuple[int, int]) -> None:
        self.predictor, self.images = predictor, images
        self.video_size = (int(video_size[0]), int(video_size[1]))
        self.cache = _SharedFeatureCache(predictor, images)

    def state(self) -> dict[str, Any]:
        device = self.predictor.device
        return {
            "images": self.images, "num_frames": int(self.images.shape[0]), "offload_video_to_cpu": False,
            "offload_state_to_cpu": False, "video_height": self.video_size[0], "video_width": self.video_size[1],
            "device": device, "storage_device": device, "point_inputs_per_obj": {}, "mask_inputs_per_obj": {},
            "cached_features": self.cache, "constants": {}, "obj_id_to_idx": OrderedDict(),
            "obj_idx_to_id": OrderedDict(), "obj_ids": [], "output_dict_per_obj": {}, "temp_output_dict_per_obj": {},
            "frames_tracked_per_obj": {},
        }


# ----------------------------------------------------------------------------------------------- grounding VLM


class VlmGrounder:
    """A transformers VLM that answers Qwen2.5-VL ``bbox_2d`` JSON, asked with the paper's grounding prompt.

    Greedy decoding. The answer's boxes are in the processor's resized-image pixels: for Qwen2-VL
    style processors that size is ``image_grid_thw`` times the patch size; a processor without a
    grid is taken to answer in original pixels. An invalid entry grounds nothing (and is counted
    in ``parse_failures``).
    """

    def __init__(self, model: Any, processor: Any, max_objects: int, max_new_tokens: int = 128) -> None:
        self.model = model
        self.processor = processor
        self.max_objects = max_objects
        self.max_new_tokens = max_new_tokens
        self.parse_failures = 0

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str, max_objects: int) -> VlmGrounder:
        """The grounder of a local folder: Qwen2.5-VL (or another image-text-to-text model), or the thinker
        of a full or thinker-only Qwen2.5-Omni folder; bfloat16 on CUDA, float32 on CPU."""
        from omni_r1.models.checkpoints import CheckpointFolderError, load_grounder

        dtype = torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
        try:
            model, processor = load_grounder(Path(path), dtype)
        except CheckpointFolderError as err:
            raise DetailSetupError(str(err)) from err
        model.requires_grad_(False)
        return cls(model.to(device).eval(), processor, max_objects)

    @torch.no_grad()
    def ground(self, frame: np.ndarray, description: str, task: str = "revos") -> list[Box | None]:
        from omni_r1.systems.answer import parse_box_entries
        from omni_r1.systems.prompts import grounding_prompt

        image = Image.fromarray(frame, mode="RGB")
        content = [{"type": "image"}, {"type": "text", "text": grounding_prompt(description, task)}]
        messages = [{"role": "user", "content": content}]
        text = self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        inputs = self.processor(text=[text], images=[image], return_tensors="pt")
        inputs = {k: v.to(self.model.device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
        output = self.model.generate(**inputs, do_sample=False, max_new_tokens=self.max_new_tokens)
        prompt_length = inputs["input_ids"].shape[1]
        answer = self.processor.batch_decode(output[:, prompt_length:], skip_special_tokens=True)[0]
        entries = parse_box_entries(answer, resized_size=self._resized_size(inputs, frame),
                                    original_size=(frame.shape[1], frame.shape[0]))
        if None in entries:
            self.parse_failures += 1  # an entry that is not a valid box; no entry at all is a valid "nothing here"
        return list(entries)

    def _resized_size(self, inputs: dict[str, Any], frame: np.ndarray) -> tuple[int, int]:
        """(width, height) of the image the model saw."""
        grid = inputs.get("image_grid_thw")
        if grid is None:
            return frame.shape[1], frame.shape[0]
        patch = int(getattr(getattr(self.processor, "image_processor", None), "patch_size", 14))
        _, grid_h, grid_w = (int(v) for v in grid[0])
        return grid_w * patch, grid_h * patch
