"""Full-rate evaluation frames: every native frame of a sample's video, at System 2's high-res size.

The shard stage stores System 2's frames at the sampled frames only (at most ``data.max_frames`` at
``data.fps``), which is what System 1 and GRPO need. The benchmarks score every native frame, and the
paper propagates SAM2 over the whole video at evaluation, so predict decodes each test video again at
its native rate, from the same source the shard stage read (``data.root`` and the validated manifest):

- a video file through ffmpeg (``video.decode_frames``: frame selection and scaling stay inside ffmpeg's
  filter graph, the same graph as the shard stage's high-res branch, so a sampled frame comes back with
  the pixels System 1's keyframe choice was made against);
- a frame folder (RefAVS, ReVOS) through ``video.load_frames``, frame by frame in the manifest's order;
- nothing at all where the sampled frames already are every native frame (RefAVS: 10 frames at 1 fps):
  the shard's frames are those frames.

Frames come at the size of the shard's high-res frames (``data.high_res`` / ``data.high_res_pixels``), so
System 2 sees at every native frame what it saw at the sampled ones. Memory: N frames take N x H x W x 3
bytes; at the paper's budget of about 900x28x28 pixels a frame is 2.1 MB, so a minute at 30 fps is 3.8 GB
(the demo's 256x192 clips: 0.15 MB a frame). Masks are resized to the native size one frame at a time
when they are written, never held all at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np
import pandas as pd

from omni_r1.data.paths import safe_join
from omni_r1.data.video import decode_frames, load_frames
from omni_r1.types import Sample

_COLUMNS = ("sample_id", "media_kind", "video_path", "frame_paths")


class NativeSourceError(ValueError):
    """The full-rate source of a sample is missing or does not match its shard; the message says the fix."""


@dataclass(frozen=True)
class NativeMedia:
    """Where one sample's native frames are: a video file, or frame images in order (paths under the data root)."""

    media_kind: str
    video_path: str
    frame_paths: tuple[str, ...]


@dataclass(frozen=True)
class NativeSource:
    """The data root and, per sample id, its media: the validated manifest's view of the raw data."""

    root: Path
    media: Mapping[str, NativeMedia]

    @classmethod
    def from_manifest(cls, root: Path, manifest: Path) -> NativeSource:
        return cls(Path(root), read_native_media(Path(manifest)))

    def frames(self, sample: Sample) -> np.ndarray:
        """(num_frames, H, W, 3) uint8: every native frame of the sample's video at its high-res size."""
        num_frames = int(sample.meta["num_frames"])
        if tuple(sample.frame_indices) == tuple(range(num_frames)):
            return sample.high_res
        sample_id = str(sample.meta["sample_id"])
        if sample_id not in self.media:
            raise NativeSourceError(f"sample {sample_id!r} is not in the validated manifest; the shards and the "
                                    "manifest come from different runs: rerun validate and shard (dvc repro shard)")
        frames = native_frames(self.root, self.media[sample_id], sample.high_res.shape[1:3], num_frames)
        if frames.shape[1:3] != sample.high_res.shape[1:3]:
            raise NativeSourceError(f"sample {sample_id!r}: full-rate frames are {frames.shape[1:3]}, the shard's "
                                    f"{sample.high_res.shape[1:3]}; rerun the shard stage with this data.high_res")
        return frames


def read_native_media(manifest: Path) -> dict[str, NativeMedia]:
    """Media per sample id from the validated manifest (``data/interim/validated.parquet``)."""
    if not manifest.is_file():
        raise NativeSourceError(f"{manifest} does not exist; predict reads every native frame from the data the "
                                "validated manifest lists: run the validate stage first (dvc repro validate)")
    frame = pd.read_parquet(manifest, columns=list(_COLUMNS))
    return {
        str(row.sample_id): NativeMedia(str(row.media_kind), str(row.video_path or ""),
                                        tuple(str(p) for p in (row.frame_paths if row.frame_paths is not None else ())))
        for row in frame.itertuples(index=False)
    }


def native_frames(root: Path, media: NativeMedia, size_hw: tuple[int, int], num_frames: int) -> np.ndarray:
    """(num_frames, H, W, 3) uint8 of one video or frame folder at ``size_hw`` = (H, W)."""
    size = (int(size_hw[1]), int(size_hw[0]))  # (width, height), as the decoders take it
    if media.media_kind == "video":
        return decode_frames(safe_join(root, media.video_path), range(num_frames), size)
    if media.media_kind == "frames":
        if len(media.frame_paths) != num_frames:
            raise NativeSourceError(f"{root}: {len(media.frame_paths)} frame images listed for a video of {num_frames} "
                                    "frames; re-ingest the data (dvc repro ingest)")
        # load_frames makes two sizes; the second is the smallest it accepts and is dropped.
        _, high = load_frames([safe_join(root, p) for p in media.frame_paths], (2, 2), size)
        return high
    raise NativeSourceError(f"media kind {media.media_kind!r} is neither 'video' nor 'frames'; re-ingest the data")
