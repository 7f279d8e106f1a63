"""Small shared records: manifest rows, quarantine entries, mask tracks and decoded samples.

A ``ManifestRow`` is one (video, expression) pair as ingest sees it: paths and metadata, no pixels.
A ``Sample`` is the same pair after the shard stage: low-res and high-res frames, 16 kHz audio and masks.
``KeyframeSelection`` (with ``Moment`` and ``Keyframe``) and ``Box`` are the two systems' parsed answers.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

import numpy as np

Split = Literal["train", "val", "test"]
ExpressionType = Literal["referring", "reasoning", "null"]
DatasetFormat = Literal["video", "refavs", "revos"]
MediaKind = Literal["video", "frames"]
MaskKind = Literal["rle", "png", "none"]

SPLITS: tuple[str, ...] = ("train", "val", "test")
EXPRESSION_TYPES: tuple[str, ...] = ("referring", "reasoning", "null")
# Benchmark split names as the official layouts spell them, mapped onto our three shard splits.
BENCHMARK_SPLITS: dict[str, str] = {
    "train": "train",
    "val": "val",
    "valid": "test",  # ReVOS meta_expressions_valid_.json is its evaluation set
    "test": "test",
    "test_s": "test",  # RefAVS seen
    "test_u": "test",  # RefAVS unseen
    "test_n": "test",  # RefAVS null
}
AUDIO_RATE = 16_000  # Whisper and Qwen2.5-Omni's audio tower expect 16 kHz mono


@dataclass(frozen=True)
class ManifestRow:
    """One (video, expression) pair, as a flat record that round-trips through parquet.

    Paths are relative to the dataset root. ``masks_json`` holds, for ``mask_kind == "rle"``,
    ``{"objects": [{"obj_id": str, "rles": [COCO RLE or null, one per native frame]}]}`` and, for
    ``"png"``, ``{"objects": [{"obj_id": str, "pngs": [path per frame]}]}``. ``needs_audio`` says
    whether the expression cannot be resolved without sound (RefAVS, sound cues). ``ingest_error`` is
    empty for a row that parsed cleanly; otherwise it says what is wrong and how to fix it, and
    validation quarantines the row.
    """

    sample_id: str
    dataset: str
    video_id: str
    exp_id: str
    split: str
    benchmark_split: str
    expression: str
    exp_type: str
    cue: str
    media_kind: str
    video_path: str
    frame_paths: list[str]
    audio_path: str
    has_audio: bool
    audio_channels: int
    audio_rate: int
    fps: float
    num_frames: int
    width: int
    height: int
    mask_kind: str
    masks_json: str
    ingest_error: str = ""
    needs_audio: bool = False
    ingest_check: str = ""  # the ingest rule an unparsable row broke (with ingest_error)
    source_line: str = ""  # where the row's annotation is: "annotations.jsonl:12", "metadata.csv:5", a JSON path
    error_file: str = ""  # for a row ingest could not parse: the file to look at

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> ManifestRow:
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in record.items() if k in names}
        values["frame_paths"] = [str(p) for p in (values.get("frame_paths") if values.get("frame_paths") is not None else [])]
        return cls(**values)

    @property
    def source_file(self) -> str:
        """The file a person should look at when this row is in trouble."""
        if self.error_file:
            return self.error_file
        if self.video_path:
            return self.video_path
        if self.frame_paths:
            return str(self.frame_paths[0]).rsplit("/", 1)[0] + "/"
        return self.video_id

    def mask_objects(self) -> list[dict[str, Any]]:
        return list(json.loads(self.masks_json).get("objects", [])) if self.masks_json else []


@dataclass(frozen=True)
class QuarantineEntry:
    """A row or file kept out of the pipeline, with the reason and the fix."""

    sample_id: str
    file: str
    stage: str
    check: str
    reason: str
    hint: str
    line: str = ""  # where the annotation is: "annotations.jsonl:12", "metadata.csv:5" or a JSON path

    def to_dict(self) -> dict[str, str]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class ObjectMasks:
    """One object's masks over every native frame of a video; ``None`` means empty on that frame."""

    obj_id: str
    rles: tuple[dict[str, Any] | None, ...]


@dataclass(frozen=True)
class MaskTrack:
    """The target objects of one expression, at the displayed frame size ``(height, width)``."""

    height: int
    width: int
    num_frames: int
    objects: tuple[ObjectMasks, ...] = ()

    def union(self, frame_indices: list[int] | tuple[int, ...] | np.ndarray) -> np.ndarray:
        """Union of all objects' masks at the given native frames: bool array (T, height, width)."""
        from omni_r1.data.masks import decode_rle

        out = np.zeros((len(frame_indices), self.height, self.width), dtype=bool)
        for obj in self.objects:
            for t, idx in enumerate(frame_indices):
                rle = obj.rles[int(idx)]
                if rle is not None:
                    out[t] |= decode_rle(rle)
        return out

    def to_json(self) -> str:
        return json.dumps(
            {
                "height": self.height,
                "width": self.width,
                "num_frames": self.num_frames,
                "objects": [{"obj_id": o.obj_id, "rles": list(o.rles)} for o in self.objects],
            },
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str) -> MaskTrack:
        data = json.loads(text)
        objects = tuple(ObjectMasks(str(o["obj_id"]), tuple(o["rles"])) for o in data["objects"])
        return cls(int(data["height"]), int(data["width"]), int(data["num_frames"]), objects)


@dataclass(frozen=True)
class Sample:
    """A sharded (video, expression) pair, ready for the two systems.

    Shapes: ``low_res`` (T, h, w, 3) uint8 for System 1; ``high_res`` (T, H, W, 3) uint8 keyframe
    candidates for System 2, at the same native frames ``frame_indices`` (length T); ``audio`` (N,)
    float32 mono at 16 kHz (N == 0 when the video has no audio).
    """

    key: str
    meta: dict[str, Any]
    frame_indices: tuple[int, ...]
    frame_times: tuple[float, ...]
    low_res: np.ndarray
    high_res: np.ndarray
    audio: np.ndarray
    masks: MaskTrack
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def has_audio(self) -> bool:
        return bool(self.meta.get("has_audio")) and self.audio.size > 0

    @property
    def split(self) -> str:
        return str(self.meta["split"])

    @property
    def expression(self) -> str:
        return str(self.meta["expression"])

    def target_masks(self) -> np.ndarray:
        """Union of the target masks at the sampled frames: bool (T, height, width), displayed size."""
        return self.masks.union(self.frame_indices)


# ----------------------------------------------------------------------------------------------- System 1 answers


class Keyframe(NamedTuple):
    """One frame System 2 grounds: an index into the sampled frames and the description to find there."""

    frame: int
    description: str


@dataclass(frozen=True)
class Moment:
    """One ``{"start_time", "end_time", "description"}`` object of a System 1 answer, with valid fields.

    Times are in seconds. ``kept`` says ``start <= end <= duration``; only kept moments choose
    frames, and ``frames`` lists them (``int(t * fps)`` from start to end, clipped to the last
    frame; empty when not kept).
    """

    start: float
    end: float
    description: str
    kept: bool
    frames: tuple[int, ...] = ()


@dataclass(frozen=True)
class KeyframeSelection:
    """System 1's parsed answer: the moments it chose and the keyframes System 2 will ground.

    ``objects_found`` is J, the number of ``{...}`` objects in the answer; ``moments`` holds those
    whose fields parsed, in answer order. ``frames`` are the distinct frames of all kept moments,
    ascending; ``keyframes`` the first ``max_keyframes`` of them, each with the description of the
    first kept moment that contains it. ``format_ok`` says the whole completion is exactly
    ``<think>...</think>`` then ``<answer>...</answer>``. A RefAVS answer has no moments: one
    keyframe, frame 0, with the rewritten description.
    """

    task: Literal["revos", "refavs"]
    objects_found: int
    moments: tuple[Moment, ...]
    frames: tuple[int, ...]
    keyframes: tuple[Keyframe, ...]
    format_ok: bool

    @property
    def objects_parsed(self) -> int:
        return len(self.moments)

    @property
    def objects_kept(self) -> int:
        return sum(m.kept for m in self.moments)

    @property
    def kept_moments(self) -> tuple[Moment, ...]:
        return tuple(m for m in self.moments if m.kept)


@dataclass(frozen=True)
class Box:
    """A grounding box in original-image pixels, ``x1 < x2`` and ``y1 < y2``, with the grounder's label."""

    x1: float
    y1: float
    x2: float
    y2: float
    label: str = ""
