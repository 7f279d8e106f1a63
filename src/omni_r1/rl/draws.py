"""What one GRPO draw trains on, as the official loaders choose it (aim-uofa/Omni-R1 at 1de42f8).

``VideoReVOSDataset`` (``src/omni_r1/load_datasets/revos.py``) is indexed by video: each draw picks one
of the video's expressions at random (expressions without target objects are never drawn; see
``prompts_data.trains_on``), keeps at most ``select_number`` of its objects (a random subset), and,
when the video has more than ``min_frames`` frames, takes ``randint(min_frames, max_frames)`` frames
spread evenly over them (``np.linspace(..., dtype=int)``), which the prompt treats as 2 fps.
``REFAVS`` (``load_datasets/refavs.py``) trains on the audio and the first frame only ("RefAID").

Here the frames a draw chooses from are the ones the shard stage stored (``data.max_frames`` of
them, sampled at ``data.fps``), so a draw is a subset of a sample: its frames, their times and the
chosen objects' masks. A draw that changes nothing returns the prompt item as it is (its cached
features and encoded prompt stay valid); otherwise the item is rebuilt in memory with the features
stage's own function, under a key that names the draw so that no cache mixes two draws.
All randomness comes from the ``numpy`` generator passed in, so a run and its resume draw alike.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from omni_r1.config import TrainParams
from omni_r1.rl.prompts_data import PromptItem, item_in_memory
from omni_r1.systems.global_reasoning import GlobalReasoner
from omni_r1.types import Sample


def video_groups(items: Sequence[PromptItem]) -> list[list[int]]:
    """Indices of ``items`` grouped by video, videos in first-seen order (one official draw per video)."""
    groups: dict[str, list[int]] = {}
    for index, item in enumerate(items):
        groups.setdefault(str(item.sample.meta.get("video_id", item.key.split("/")[0])), []).append(index)
    return list(groups.values())


def draw_positions(stored: int, rng: np.random.Generator, min_frames: int, max_frames: int) -> list[int]:
    """Positions among ``stored`` frames for one draw: all of them unless more than ``min_frames``, else
    ``randint(min_frames, max_frames)`` (inclusive) spread by ``np.linspace(0, stored - 1, n, dtype=int)``.

    The official loader draws from every native frame; we draw from the stored ones, so the count is capped
    at ``stored`` where the official code would repeat frames (a draw of 24 from 20 frames).
    """
    if stored <= min_frames:
        return list(range(stored))
    count = min(int(rng.integers(min_frames, max_frames + 1)), stored)
    return np.linspace(0, stored - 1, count, dtype=int).tolist()


def draw_objects(count: int, rng: np.random.Generator, max_objects: int) -> list[int]:
    """Which target objects a draw keeps: all when at most ``max_objects``, else a random subset, sorted."""
    if count <= max_objects:
        return list(range(count))
    return sorted(rng.choice(count, size=max_objects, replace=False).tolist())


def subset_sample(sample: Sample, positions: Sequence[int], objects: Sequence[int]) -> Sample:
    """``sample`` restricted to the stored frames at ``positions`` and the target ``objects``, under a key that
    names the draw (``<key>@<positions>#<objects>``)."""
    index = list(positions)
    track = dataclasses.replace(sample.masks, objects=tuple(sample.masks.objects[k] for k in objects))
    key = f"{sample.key}@{'-'.join(map(str, index))}#{'-'.join(map(str, objects))}"
    return dataclasses.replace(
        sample,
        key=key,
        frame_indices=tuple(sample.frame_indices[i] for i in index),
        frame_times=tuple(sample.frame_times[i] for i in index),
        low_res=sample.low_res[index],
        high_res=sample.high_res[index],
        masks=track,
    )


def draw_item(item: PromptItem, reasoner: GlobalReasoner, rng: np.random.Generator, train: TrainParams,
              *, seed: int) -> PromptItem:
    """One official draw of ``item``: RefAVS keeps frame 0 (with the audio), a video keeps ``draw_positions``'
    frames and ``draw_objects``' objects. Returns ``item`` itself when the draw keeps everything."""
    stored = len(item.sample.frame_indices)
    if item.task == "refavs" and train.refavs_first_frame:
        positions = [0]
    else:
        positions = draw_positions(stored, rng, train.min_frames, train.max_frames)
    objects = draw_objects(len(item.sample.masks.objects), rng, train.max_objects)
    if positions == list(range(stored)) and objects == list(range(len(item.sample.masks.objects))):
        return item
    return item_in_memory(subset_sample(item.sample, positions, objects), reasoner, seed=seed)
