"""System 2 failures reach the step log: a grounder that fails every call, and masks empty inside their box.

Well-formed System 1 answers (the warm start's target format) go through ``rollouts_from_completions``
and the real rewards; System 2 is the real ``Sam2Segmenter`` or ``VlmGrounder`` around named doubles
(a scripted VLM that never answers a box, a predictor that never masks anything).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from omni_r1.config import RewardParams
from omni_r1.rl.rewards import NO_VALID_BOX, score_rollouts
from omni_r1.rl.trainer import SYSTEM2_FAILURE_COLUMNS, log_columns, system2_failure_counts
from omni_r1.rl.warm_start import format_target
from omni_r1.systems.collaboration import rollouts_from_completions
from omni_r1.systems.detail import Box, Sam2Segmenter, SegmentResult, VlmGrounder
from tests.unit.test_detail import ScriptedVlmForTests, synthetic_samples

FPS = 2.0


@pytest.fixture(scope="module")
def sample():
    for candidate in synthetic_samples(3, frames=4):
        if candidate.meta["exp_type"] == "referring" and candidate.target_masks().any(axis=(1, 2)).all():
            return candidate
    raise AssertionError("no referring sample with a visible target; change the seed")


def _score(sample, segmenter, group: int = 3):
    frames = len(sample.frame_indices)
    duration = frames / FPS
    completions = [format_target(sample.expression, [(i / FPS, i / FPS)]) for i in range(group)]
    rollouts, _ = rollouts_from_completions(sample, completions, segmenter, task="revos", duration=duration, fps=FPS,
                                            max_keyframes=4, boxes_per_keyframe=len(sample.masks.objects))
    assert all(r.parsed and r.prompts for r in rollouts)
    rewards = score_rollouts(rollouts, sample, RewardParams(), task="revos", num_frames=frames, fps=FPS,
                             duration=duration, completion_lengths=[40] * group)
    return rollouts, rewards


class NoPredictorForTests:
    device = torch.device("cpu")

    def init_state(self, folder):
        raise AssertionError("no valid box, so SAM2 never runs")


def test_a_vlm_that_never_answers_a_box_counts_every_rollout(sample) -> None:
    vlm = ScriptedVlmForTests("I cannot see it.")  # a garbage answer: no entry at all, every call
    segmenter = Sam2Segmenter(NoPredictorForTests(), VlmGrounder(vlm, vlm, max_objects=3), max_objects=3)
    rollouts, rewards = _score(sample, segmenter)
    assert {r.failure for r in rewards} == {NO_VALID_BOX}
    assert system2_failure_counts(rollouts, rewards) == {"system2_failures": 3.0, "grounder_failures": 3.0,
                                                         "sam2_failures": 0.0}


def test_invalid_grounder_entries_are_counted(sample) -> None:
    vlm = ScriptedVlmForTests('[{"bbox_2d": [20, 0, 10, 10]}]')  # x2 < x1: an entry that is not a box
    grounder = VlmGrounder(vlm, vlm, max_objects=3)
    rollouts, rewards = _score(sample, Sam2Segmenter(NoPredictorForTests(), grounder, max_objects=3))
    assert all(r.segment is not None and r.segment.invalid_entries == 1 for r in rollouts)
    assert system2_failure_counts(rollouts, rewards)["grounder_failures"] == 3.0
    assert grounder.parse_failures == 3  # one grounder call per distinct keyframe


class EmptyMaskSegmenterForTests:
    """A System 2 double whose grounder finds a box but whose segmenter masks nothing."""

    def segment_batch(self, frames, prompt_sets, boxes_per_keyframe=None):
        t, h, w = frames.shape[:3]
        out = []
        for prompts in prompt_sets:
            boxes = {p.frame: [Box(0.0, 0.0, w / 2, h / 2)] for p in prompts}
            objects = np.zeros((len(boxes), t, h, w), bool)
            out.append(SegmentResult(objects.any(axis=0), objects, boxes,
                                     entries={f: tuple(b) for f, b in boxes.items()}))
        return out


def test_masks_empty_inside_their_box_count_as_sam2_failures(sample) -> None:
    rollouts, rewards = _score(sample, EmptyMaskSegmenterForTests())
    assert all(r.segment.empty_objects == 1 for r in rollouts)
    counts = system2_failure_counts(rollouts, rewards)
    assert counts == {"system2_failures": 3.0, "grounder_failures": 0.0, "sam2_failures": 3.0}


def test_the_step_log_has_the_failure_columns() -> None:
    columns = log_columns("revos")
    assert all(c in columns for c in SYSTEM2_FAILURE_COLUMNS)
    result = SegmentResult(np.zeros((2, 4, 4), bool), np.zeros((0, 2, 4, 4), bool), {}, entries={0: (None,)})
    assert result.invalid_entries == 1 and result.empty_objects == 0
