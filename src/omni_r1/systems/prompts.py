"""The two systems' prompts: our paraphrases of Omni-R1's official texts (spec section 1).

The official texts are ``VIDEO_TIMESTAMP_FORCE_TEMPLATE`` and ``make_prompt`` in
``src/omni_r1/load_datasets/revos.py`` and ``REFAVS_TEMPLATE`` and ``refavs_grounding_prompt`` in
``load_datasets/refavs.py`` (aim-uofa/Omni-R1 at 1de42f8). Each of ours keeps their required parts
(``tests/unit/test_prompts.py`` checks them):

- ``revos_prompt``: System 1 on a video ("forced" variant). It states the clip's length in
  seconds (sampled frames / 2, not padded), asks for about 4 relevant moments with the best view,
  temporally well spread and not adjacent or overlapping, each with a short single-image
  description of the referred object(s) (clothing, pose, position, grouping; no temporal or
  comparison words such as 'walking', 'moving', 'approaching', 'bigger' or 'smaller'), and shows
  an answer of 4 single-frame moments (start = end) whose times are drawn per sample, as the
  official code draws them: ``randint(0, frames - 2) * 0.5`` seconds each.
- ``refavs_prompt``: System 1 on a 10-second audio and the clip's first frame (the official
  "RefAID" input): analyse the sounding objects (voices, instruments), identify the object that
  matches the audio, simplify it into a visual description that can be found in a single image
  without the audio (clothing, pose, position, grouping; no 'playing' or 'moving').
- ``grounding_prompt``: System 2's request on one keyframe, the description lower-cased and stripped
  as the official code does: ReVOS asks to ground *all* the referred objects, RefAVS for the
  bounding box of one.

Text that comes from a dataset or from a model is cleaned first: whitespace is collapsed and
special-token look-alikes (``<|...|>``) are broken up, because a tokenizer would otherwise read
them as control tokens (an extra ``<|VIDEO|>`` would desynchronise the video placeholders). This is
the one place where our prompt text may differ from the official one on the same input.
"""

from __future__ import annotations

import random

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
ANSWER_OPEN, ANSWER_CLOSE = "<answer>", "</answer>"

_REVOS = """\
This is a {duration}-second video. Reference instruction: "{expression}". The instruction may involve \
temporal behaviour; identify the exact object(s) in the video that it refers to. Select about 4 of the most \
relevant moments that contain the referred object(s) with the best view. Then simplify the identified \
object(s) into a short and clear visual grounding description that can be used for single-image reference \
at each moment. Avoid temporal phrases and comparison phrases such as 'walking', 'moving', 'approaching', \
'bigger' or 'smaller'; instead describe visible visual cues such as clothing, pose, position or grouping. \
Choose moments that are temporally well distributed across the whole video rather than clustered in one \
part of it, and avoid adjacent or overlapping timestamps: each moment should offer distinct visual \
information.
Explain your reasoning in {think_open}...{think_close} and give the final result in \
{answer_open}...{answer_close}: one JSON object per moment, times written as mm:ss.ff, an answer with 4 \
moments, for example:
{think_open} your analysis of the video and the reference instruction {think_close}
{answer_open}
{example}
{answer_close}"""

_REFAVS = """\
This is a {seconds}-second audio clip with an image of the scene. Reference instruction: "{expression}". \
The instruction involves temporal and audio-related behaviour. First analyse the objects in the image that \
are producing sound, including both human voices and instrument sounds. Then, based on the audio, identify \
the exact object in the image that matches the instruction. Next, simplify the identified object into a \
short and clear visual grounding description, so that it can be recognised unambiguously in a single \
image without the audio. Avoid temporal expressions such as 'playing' or 'moving'; instead describe \
directly visible cues such as clothing, pose, position or grouping.
Write your reasoning in {think_open}...{think_close} and the final description in \
{answer_open}...{answer_close}."""

_GROUNDING = {
    "revos": "Given the expression: '{description}', ground all the referred objects with json bboxs",
    "refavs": "Please find the bounding box of '{description}' with json format",
}

EXAMPLE_MOMENTS = 4  # the official forced template's example answer holds 4 moments
FORBIDDEN_WORDS = ("walking", "moving", "approaching", "bigger", "smaller")  # named in the official template
EXAMPLE_DESCRIPTION = "direct description of referred object(s) at this moment"


def format_timestamp(seconds: float) -> str:
    """``mm:ss.ff`` (minutes, seconds, hundredths), the answer format's time stamp."""
    if not 0 <= seconds < 100 * 60:
        raise ValueError(f"{seconds} s cannot be written as mm:ss.ff; it must lie in [0, 6000)")
    hundredths = round(seconds * 100)
    minutes, rest = divmod(hundredths, 60 * 100)
    whole, fraction = divmod(rest, 100)
    return f"{minutes:02d}:{whole:02d}.{fraction:02d}"


def format_duration(seconds: float) -> str:
    """A duration as the prompt states it: ``8`` for 8.0 s, ``8.5`` for 8.5 s."""
    if not seconds > 0:
        raise ValueError(f"a clip of {seconds} s has no frames; sample at least one frame")
    return f"{seconds:g}"


def clean_text(text: str) -> str:
    """Collapse whitespace and break up ``<|`` / ``|>`` so no tokenizer reads them as special tokens."""
    collapsed = " ".join(str(text).split())
    return collapsed.replace("<|", "< |").replace("|>", "| >")


def example_times(num_frames: int, rng: random.Random) -> list[float]:
    """The example moments' times in seconds, drawn as the official code draws them: ``randint(0, frames - 2)
    * 0.5`` each (a single frame: start = end); with one frame, 0."""
    return [rng.randint(0, max(num_frames - 2, 0)) * 0.5 for _ in range(EXAMPLE_MOMENTS)]


def example_answer(num_frames: int, rng: random.Random) -> str:
    """Four example single-frame moments at random times inside the clip, one JSON object each."""
    lines = []
    for seconds in example_times(num_frames, rng):
        stamp = format_timestamp(seconds)
        lines.append(f'{{"start_time": "{stamp}", "end_time": "{stamp}", "description": "{EXAMPLE_DESCRIPTION}"}}')
    return "\n".join(lines)


def revos_prompt(expression: str, num_frames: int, rng: random.Random, fps: float = 2.0) -> str:
    """System 1's video prompt for ``expression`` on a clip of ``num_frames`` sampled frames (stated as
    ``num_frames / fps`` seconds, the official ``len(frames) / 2``)."""
    if num_frames < 1:
        raise ValueError(f"a clip of {num_frames} frames has nothing to show; sample at least one frame")
    return _REVOS.format(
        duration=format_duration(num_frames / fps),
        expression=_expression(expression),
        example=example_answer(num_frames, rng),
        think_open=THINK_OPEN,
        think_close=THINK_CLOSE,
        answer_open=ANSWER_OPEN,
        answer_close=ANSWER_CLOSE,
    )


def refavs_prompt(expression: str, seconds: float) -> str:
    """System 1's audio-visual prompt for ``expression`` with ``seconds`` of audio."""
    return _REFAVS.format(
        seconds=format_duration(seconds),
        expression=_expression(expression),
        think_open=THINK_OPEN,
        think_close=THINK_CLOSE,
        answer_open=ANSWER_OPEN,
        answer_close=ANSWER_CLOSE,
    )


def grounding_prompt(description: str, task: str = "revos") -> str:
    """System 2's request on one keyframe for ``description`` (lower-cased and stripped, as the official code)."""
    if task not in _GROUNDING:
        raise ValueError(f"unknown task {task!r}; use 'revos' or 'refavs'")
    return _GROUNDING[task].format(description=clean_text(description).lower())


def _expression(expression: str) -> str:
    cleaned = clean_text(expression)
    if not cleaned:
        raise ValueError("the reference expression is empty; fix the dataset row (validation should quarantine it)")
    return cleaned
