"""The two systems' prompts: our paraphrases of Omni-R1's official texts (spec section 1).

- ``revos_prompt``: System 1 on a video ("forced" variant). It states the clip's length in
  seconds (sampled frames / 2), asks for about four relevant, well-spread, non-overlapping
  moments with a single-image description each, and shows the answer format with example
  timestamps drawn per sample from a seeded ``random.Random``, so that the model cannot learn to
  copy them.
- ``refavs_prompt``: System 1 on audio plus a picture: analyse the sounding objects, pick the one
  the instruction means, rewrite it as a description that needs no audio.
- ``grounding_prompt``: System 2's request for boxes on one keyframe, in the grounding phrasing
  Qwen2.5-VL was trained on.

Text that comes from a dataset or from a model is cleaned first: whitespace is collapsed and
special-token look-alikes (``<|...|>``) are broken up, because a tokenizer would otherwise read
them as control tokens (an extra ``<|VIDEO|>`` would desynchronise the video placeholders).
"""

from __future__ import annotations

import random

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
ANSWER_OPEN, ANSWER_CLOSE = "<answer>", "</answer>"

_REVOS = """\
This is a {duration}-second video. Reference instruction: "{expression}"
First work out which object or objects the instruction refers to. Then choose about 4 moments of the video \
that are relevant to it, spread out in time and not overlapping, each where the object is seen best. For \
each moment write a short visual description of the object that a single frame can answer: its appearance \
or clothing, pose, position and grouping, with no words about time or comparisons (no "first", "then", \
"faster", "larger").
Reason inside {think_open} {think_close} tags, then answer inside {answer_open} {answer_close} tags with one \
JSON object per moment, times written as mm:ss.ff, for example:
{answer_open}{example}{answer_close}"""

_REFAVS = """\
This is a {seconds}-second audio clip with a picture of the same scene. Reference instruction: "{expression}"
First analyse the sounding objects you hear, such as voices and instruments, and find the object that \
matches both the instruction and the audio. Then simplify it into a short visual description of that object \
that can be found in the picture without hearing the audio.
Reason inside {think_open} {think_close} tags, then give only the description inside {answer_open} \
{answer_close} tags."""

_GROUNDING = "Please find the bounding box of '{description}' with json format"

_EXAMPLE_MOMENTS = 2


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


def example_answer(duration: float, rng: random.Random) -> str:
    """Two example moments at random, well-formed times inside the clip, one JSON object per line."""
    times = sorted(rng.uniform(0.0, duration) for _ in range(2 * _EXAMPLE_MOMENTS))
    lines = []
    for start, end in zip(times[::2], times[1::2]):
        lines.append(
            f'{{"start_time": "{format_timestamp(start)}", "end_time": "{format_timestamp(end)}", '
            '"description": "a short visual description of the object"}'
        )
    return "\n".join(lines)


def revos_prompt(expression: str, duration: float, rng: random.Random) -> str:
    """System 1's video prompt for ``expression`` on a clip of ``duration`` seconds (frames / 2)."""
    return _REVOS.format(
        duration=format_duration(duration),
        expression=_expression(expression),
        example=example_answer(duration, rng),
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


def grounding_prompt(description: str) -> str:
    """System 2's request for the boxes of ``description`` on one keyframe."""
    cleaned = clean_text(description)
    if not cleaned:
        raise ValueError("the description to ground is empty; System 1's answer must carry one")
    return _GROUNDING.format(description=cleaned)


def _expression(expression: str) -> str:
    cleaned = clean_text(expression)
    if not cleaned:
        raise ValueError("the reference expression is empty; fix the dataset row (validation should quarantine it)")
    return cleaned
