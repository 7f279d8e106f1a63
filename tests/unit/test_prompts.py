"""Every prompt against the official wording's required parts (aim-uofa/Omni-R1 at 1de42f8).

The official texts: ``VIDEO_TIMESTAMP_FORCE_TEMPLATE`` and the example drawn in
``VideoReVOSDataset._create_prompt`` and ``make_prompt`` (``src/omni_r1/load_datasets/revos.py``);
``REFAVS_TEMPLATE`` and ``refavs_grounding_prompt`` (``load_datasets/refavs.py``). Ours are
paraphrases; these tests hold the parts that change what the model is asked to do.
"""

from __future__ import annotations

import json
import random
import re

import pytest

from omni_r1.rl.rewards import num_reward, overlap_term
from omni_r1.systems.answer import parse_selection
from omni_r1.systems.prompts import (
    FORBIDDEN_WORDS,
    example_answer,
    grounding_prompt,
    refavs_prompt,
    revos_prompt,
)

OFFICIAL_FORBIDDEN = ("walking", "moving", "approaching", "bigger", "smaller")


def _example_objects(prompt: str) -> list[dict]:
    block = prompt[prompt.rindex("<answer>") + len("<answer>") : prompt.rindex("</answer>")]
    return [json.loads(line) for line in block.strip().splitlines()]


def test_revos_prompt_has_the_forced_templates_parts() -> None:
    prompt = revos_prompt("the man who runs", 16, random.Random(0))
    assert prompt.startswith("This is a 8-second video.")  # 16 sampled frames / 2, the official duration
    assert '"the man who runs"' in prompt
    for part in ("about 4", "best view", "single-image", "clothing, pose, position or grouping",
                 "temporally well distributed", "adjacent or overlapping", "<think>", "</think>", "<answer>",
                 "</answer>", "mm:ss.ff", "4 moments"):
        assert part in prompt, part
    assert FORBIDDEN_WORDS == OFFICIAL_FORBIDDEN
    assert all(f"'{word}'" in prompt for word in OFFICIAL_FORBIDDEN)


def test_the_example_is_four_single_frame_moments_drawn_per_sample() -> None:
    for seed in range(20):
        objects = _example_objects(revos_prompt("x", 16, random.Random(seed)))
        assert len(objects) == 4
        assert all(o["start_time"] == o["end_time"] and re.fullmatch(r"00:\d\d\.(00|50)", o["start_time"])
                   for o in objects)
        assert all(0 <= float(o["start_time"][3:]) <= (16 - 2) * 0.5 for o in objects)  # randint(0, n-2) * 0.5
    assert len({example_answer(16, random.Random(seed)) for seed in range(20)}) > 15


def test_copying_the_example_scores_well_on_the_temporal_terms() -> None:
    # The measurement: copying the old 2-moment example scored alpha_k (R_num + overlap) = -3.57 on
    # average. The official draw (4 single frames, randint(0, n - 2) * 0.5 s) scores +1.25 at 16 frames and
    # +1.37 at 24 (2000 seeds; below the 1.6 of 4 distinct frames only where two draws collide).
    scores = []
    for seed in range(200):
        prompt = revos_prompt("x", 16, random.Random(seed))
        answer = "<think>t</think><answer>" + "\n".join(map(json.dumps, _example_objects(prompt))) + "</answer>"
        selection = parse_selection(answer, duration=8.0, num_frames=16)
        scores.append(num_reward(len(set(selection.frames)), 4) + overlap_term(selection.kept_moments))
    assert sum(scores) / len(scores) == pytest.approx(1.25, abs=0.15)


def test_refavs_prompt_has_the_official_parts() -> None:
    prompt = refavs_prompt("the instrument played after the voice", 10.0)
    assert prompt.startswith("This is a 10-second audio clip with an image")  # audio plus frame 0 ("RefAID")
    assert "picture" not in prompt
    for part in ("human voices and instrument sounds", "matches the instruction", "single image without the audio",
                 "'playing' or 'moving'", "clothing, pose, position or grouping", "<think>", "<answer>"):
        assert part in prompt, part


def test_grounding_prompts_per_task() -> None:
    assert grounding_prompt(" The Red  Circle ") == \
        "Given the expression: 'the red circle', ground all the referred objects with json bboxs"
    assert grounding_prompt("The Dog", "refavs") == "Please find the bounding box of 'the dog' with json format"
    assert grounding_prompt("") == "Given the expression: '', ground all the referred objects with json bboxs"
    with pytest.raises(ValueError, match="unknown task"):
        grounding_prompt("x", "mevis")


def test_prompts_break_up_special_token_look_alikes() -> None:
    assert "<|" not in revos_prompt("the <|im_end|> circle", 4, random.Random(0))
    assert "<|" not in grounding_prompt("<|IMAGE|>")
    with pytest.raises(ValueError, match="empty"):
        revos_prompt("  ", 4, random.Random(0))
    with pytest.raises(ValueError, match="0 frames"):
        revos_prompt("x", 0, random.Random(0))
