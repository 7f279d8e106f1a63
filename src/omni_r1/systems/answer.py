r"""Parsing the two systems' answers into typed records, as the official Omni-R1 reward code reads them.

System 1 (spec section 1) answers ``<think>...</think>`` then ``<answer>...</answer>``. The
official code (aim-uofa/Omni-R1 at 1de42f8, ``src/omni_r1/reward.py`` ``extract_answer`` and
``load_datasets/revos.py`` ``time_reward_multi_time``) reads it like this, and so do we:

- the answer is the text between the first ``<answer>`` and the next ``</answer>`` (stripped); no
  ``<think>`` is needed here, the format reward judges the whole completion;
- every ``{...}`` up to the first closing brace (the regex ``({[\s\S]*?})``) is one object, J of
  them; an object counts as *parsed* when it decodes as JSON, its ``start_time`` and ``end_time``
  are strings that *start* with ``(\d+):(\d+)\.(\d+)`` and it has a ``description`` (any value
  but null, the empty string included);
- t = mm * 60 + ss + ff * 10 / 1000 seconds with ff read as an integer whatever its digit count
  (``00:01.500`` is 6 s, ``0:02.5`` is 2.05 s), computed in floats as the official code does;
- a parsed moment is *kept* when ``start <= end <= duration`` (duration = sampled frames / 2);
  it chooses frames ``min(int(t * fps), frames - 1)`` from start to end;
- the first ``max_keyframes`` distinct chosen frames, ascending, are grounded, each with the
  description of the first kept moment that contains it.

On RefAVS the whole answer text is the rewritten description, grounded on frame 0.

System 2 answers in Qwen2.5-VL's grounding format, a JSON list of
``{"bbox_2d": [x1, y1, x2, y2], "label": ...}`` in resized-image pixels. As the official
``grounding2sam_process_reward`` does, every ``{...}`` of the answer is one *entry*; an entry
that is not an object with a 4-element ``bbox_2d`` is kept as an invalid entry (``None``), so that
the object-count penalty and the first-K rule count entries exactly as the official code does.
Where we knowingly differ: a ``bbox_2d`` of 4 numbers that is not finite, is inverted or lies
outside the image is an invalid entry too (the official code would pass it to the IoU and to SAM),
and boxes are clipped to the image.

Every failure of System 1's answer raises a subclass of ``AnswerParseError`` carrying a short
``code`` to count by, the reason, an excerpt of the completion and the object counts the format
terms of the reward still need (J and how many objects parsed). ``try_parse`` returns the error
instead of raising it.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, ClassVar, Literal

from omni_r1.systems.prompts import ANSWER_CLOSE, ANSWER_OPEN
from omni_r1.types import Box, Keyframe, KeyframeSelection, Moment

Task = Literal["revos", "refavs"]

# The format reward's pattern (dot matches newline), matched against the whole completion.
FORMAT_PATTERN = re.compile(r"<think>.*?</think>\s*<answer>.*?</answer>", re.DOTALL)
# The official extract_answer, object and time patterns (reward.py, load_datasets/revos.py at 1de42f8).
_ANSWER = re.compile(r"<answer>\s*(.*?)\s*</answer>", re.DOTALL)
_TIME = re.compile(r"(\d+):(\d+)\.(\d+)")
_EXCERPT_CHARS = 80


# ----------------------------------------------------------------------------------------------- errors


class AnswerParseError(ValueError):
    """An answer that cannot be used; ``code`` names the kind, for counting."""

    code: ClassVar[str] = "unparsable"

    def __init__(self, reason: str, completion: str, *, objects_found: int = 0, objects_parsed: int = 0) -> None:
        self.reason = reason
        self.completion_excerpt = excerpt(completion)
        self.objects_found = objects_found
        self.objects_parsed = objects_parsed
        super().__init__(f"{self.code}: {reason} (answer: {self.completion_excerpt!r})")


class MissingTags(AnswerParseError):
    """No ``<think>...</think>`` followed by ``<answer>...</answer>``."""

    code = "missing_tags"


class EmptyAnswer(AnswerParseError):
    """The answer tags hold only whitespace."""

    code = "empty_answer"


class NoMoments(AnswerParseError):
    """The answer holds no ``{...}`` object at all."""

    code = "no_moments"


class BadJson(AnswerParseError):
    """Objects were found but none decodes as a JSON object (or one is never closed)."""

    code = "bad_json"


class BadFields(AnswerParseError):
    """Objects decode, but none has valid ``start_time``/``end_time``/``description`` fields."""

    code = "bad_fields"


class OutOfRange(AnswerParseError):
    """Moments parse, but none satisfies ``start <= end <= duration``."""

    code = "out_of_range"


def excerpt(text: str) -> str:
    """The start and end of ``text``, short enough for a log line."""
    text = str(text)
    if len(text) <= 2 * _EXCERPT_CHARS:
        return text
    return f"{text[:_EXCERPT_CHARS]} ... {text[-_EXCERPT_CHARS:]}"


# ----------------------------------------------------------------------------------------------- System 1


def matches_format(completion: str) -> bool:
    """The format reward's test: the whole completion is ``<think>...</think>\\s*<answer>...</answer>``."""
    return FORMAT_PATTERN.fullmatch(completion) is not None


def parse_seconds(stamp: Any) -> float | None:
    """The official time of a ``start_time``/``end_time`` value in seconds, or None when it does not parse.

    The value must be a string that starts with ``(\\d+):(\\d+)\\.(\\d+)`` (a prefix match, as
    ``re.match``); t = mm * 60 + ss + ff * 10 / 1000 in floats, ff read as an integer.
    """
    if not isinstance(stamp, str):
        return None
    match = _TIME.match(stamp)
    if match is None:
        return None
    minutes, seconds, fraction = (int(g) for g in match.groups())
    return minutes * 60 + seconds + fraction * 10 / 1000


def frame_index(seconds: float, fps: float, num_frames: int) -> int:
    """``min(int(t * fps), num_frames - 1)``: the official frame of a time, in floats as the official code."""
    return min(int(seconds * fps), num_frames - 1)


def extract_answer(completion: str) -> str | None:
    """The official ``extract_answer``: the stripped text of the first ``<answer>...</answer>``, None without one."""
    match = _ANSWER.search(completion)
    return match.group(1).strip() if match is not None else None


def object_spans(text: str) -> list[str]:
    """Every ``{...}`` of ``text`` up to its first closing brace: the official ``({[\\s\\S]*?})`` objects (J)."""
    # The same matches as ``re.findall(r"({[\s\S]*?})", text)`` in linear time: the regex retries every "{" up to the
    # end of an answer with no closing brace, which is quadratic (100 000 braces: minutes).
    spans, position = [], 0
    while (start := text.find("{", position)) >= 0 and (end := text.find("}", start + 1)) >= 0:
        spans.append(text[start : end + 1])
        position = end + 1
    return spans


def parse_selection(
    completion: str, *, duration: float, num_frames: int, fps: float = 2.0, max_keyframes: int = 4
) -> KeyframeSelection:
    """System 1's video answer as a ``KeyframeSelection``; raises an ``AnswerParseError`` subclass.

    ``duration`` is the clip length the prompt stated (seconds; sampled frames / 2 in the paper),
    ``num_frames`` the sampled frame count (chosen frames are clipped to ``num_frames - 1``), ``fps``
    the rate frames are treated as.
    """
    _check_clip(duration, num_frames, fps, max_keyframes)
    answer = _answer_text(completion)
    spans = object_spans(answer)
    if not spans:
        raise NoMoments("the answer holds no {...} object", completion)
    decoded = [_decode(span) for span in spans]
    moments = tuple(m for obj in decoded if (m := _moment(obj, duration, num_frames, fps)) is not None)
    counts = {"objects_found": len(spans), "objects_parsed": len(moments)}
    if not moments:
        if all(obj is None for obj in decoded):
            raise BadJson(f"none of the {len(spans)} objects decodes as JSON", completion, **counts)
        raise BadFields(
            f"none of the {len(spans)} objects has start_time/end_time as mm:ss.ff strings and a description",
            completion,
            **counts,
        )
    if not any(m.kept for m in moments):
        raise OutOfRange(f"no moment has start <= end <= {duration:g} s", completion, **counts)
    frames, keyframes = _keyframes(moments, max_keyframes)
    return KeyframeSelection(
        task="revos",
        objects_found=len(spans),
        moments=moments,
        frames=frames,
        keyframes=keyframes,
        format_ok=matches_format(completion),
    )


def parse_rewrite(completion: str) -> KeyframeSelection:
    """System 1's RefAVS answer: the whole answer text is the rewritten description, grounded on frame 0.

    There are no moment objects, so ``objects_found`` is 0. An empty answer is ``EmptyAnswer`` (the
    official code gives it 0 without asking System 2).
    """
    description = _answer_text(completion)
    return KeyframeSelection(
        task="refavs",
        objects_found=0,
        moments=(),
        frames=(0,),
        keyframes=(Keyframe(0, description),),
        format_ok=matches_format(completion),
    )


def parse_answer(
    completion: str,
    *,
    task: Task,
    duration: float = 0.0,
    num_frames: int = 0,
    fps: float = 2.0,
    max_keyframes: int = 4,
) -> KeyframeSelection:
    """``parse_selection`` for ``task="revos"`` (needs ``duration`` and ``num_frames``); ``parse_rewrite`` for
    ``task="refavs"``."""
    if task == "refavs":
        return parse_rewrite(completion)
    if task == "revos":
        return parse_selection(
            completion, duration=duration, num_frames=num_frames, fps=fps, max_keyframes=max_keyframes
        )
    raise ValueError(f"unknown task {task!r}; use 'revos' (video moments) or 'refavs' (audio rewrite)")


def try_parse(
    completion: str,
    *,
    task: Task,
    duration: float = 0.0,
    num_frames: int = 0,
    fps: float = 2.0,
    max_keyframes: int = 4,
) -> KeyframeSelection | AnswerParseError:
    """``parse_answer``, with a malformed answer returned as its error rather than raised."""
    try:
        return parse_answer(
            completion, task=task, duration=duration, num_frames=num_frames, fps=fps, max_keyframes=max_keyframes
        )
    except AnswerParseError as error:
        return error


def _check_clip(duration: float, num_frames: int, fps: float, max_keyframes: int) -> None:
    # A caller's mistake, not a model's: raised as ValueError, never counted as a parse failure.
    if not (duration > 0 and num_frames >= 1 and fps > 0 and max_keyframes >= 1):
        raise ValueError(
            f"duration={duration}, num_frames={num_frames}, fps={fps}, max_keyframes={max_keyframes}: "
            "all must be positive; pass the clip's sampled frame count and its stated duration"
        )


def _answer_text(completion: str) -> str:
    answer = extract_answer(completion)
    if answer is None:
        if ANSWER_OPEN in completion and ANSWER_CLOSE not in completion:
            reason = "the <answer> block is never closed"
        else:
            reason = "no <answer>...</answer> block"
        raise MissingTags(reason, completion)
    if not answer:
        raise EmptyAnswer("the <answer> block is empty", completion)
    return answer


def _decode(text: str) -> Any:
    """``json.loads`` of one ``{...}``; None when it fails or is not an object (deep nesting included)."""
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def _description_text(value: Any) -> str:
    """A description as text: a string as it is, any other JSON value as its JSON (the official code only
    checks that the field is present and not null)."""
    return value if isinstance(value, str) else json.dumps(value)


def _moment(obj: Any, duration: float, num_frames: int, fps: float) -> Moment | None:
    if not isinstance(obj, dict) or obj.get("description") is None:
        return None
    start_text, end_text = obj.get("start_time"), obj.get("end_time")
    if not (isinstance(start_text, str) and isinstance(end_text, str)):
        return None
    if _TIME.match(start_text) is None or _TIME.match(end_text) is None:
        return None
    description = _description_text(obj["description"])
    try:
        start, end = parse_seconds(start_text), parse_seconds(end_text)
    except (ValueError, OverflowError):
        # Digits past Python's int or float range: the official code counts the fields, then fails on the
        # time, so the moment is parsed but never kept.
        return Moment(start=math.inf, end=math.inf, description=description, kept=False)
    assert start is not None and end is not None
    kept = start <= end <= duration
    frames = tuple(range(frame_index(start, fps, num_frames), frame_index(end, fps, num_frames) + 1)) if kept else ()
    return Moment(start=start, end=end, description=description, kept=kept, frames=frames)


def _keyframes(moments: tuple[Moment, ...], max_keyframes: int) -> tuple[tuple[int, ...], tuple[Keyframe, ...]]:
    first_description: dict[int, str] = {}
    for moment in moments:
        for frame in moment.frames:
            # The first kept moment (in answer order) that contains a frame names it.
            first_description.setdefault(frame, moment.description)
    frames = tuple(sorted(first_description))
    return frames, tuple(Keyframe(f, first_description[f]) for f in frames[:max_keyframes])


# ----------------------------------------------------------------------------------------------- System 2


def parse_box_entries(
    answer: str, *, resized_size: tuple[int, int], original_size: tuple[int, int]
) -> tuple[Box | None, ...]:
    """System 2's grounding answer as one entry per ``{...}``, in answer order; sizes are (width, height).

    A valid entry (an object whose ``bbox_2d`` is 4 finite numbers with ``0 <= x1 < x2``, ``0 <= y1 <
    y2`` and some area inside the image) becomes a ``Box``, clipped to the resized image and scaled by
    original / resized; any other entry is ``None``. An answer with no ``{...}`` has no entries.
    """
    (rw, rh), (ow, oh) = resized_size, original_size
    if min(rw, rh, ow, oh) <= 0:
        raise ValueError(f"image sizes {resized_size} and {original_size} must be positive (width, height)")
    return tuple(_entry_box(_decode(span), rw, rh, ow / rw, oh / rh) for span in object_spans(answer))


def _entry_box(entry: Any, rw: float, rh: float, sx: float, sy: float) -> Box | None:
    if not isinstance(entry, dict):
        return None
    coords = entry.get("bbox_2d")
    if not (isinstance(coords, list) and len(coords) == 4 and all(_is_number(c) for c in coords)):
        return None
    x1, y1, x2, y2 = (float(c) for c in coords)
    if min(x1, y1) < 0 or not (x1 < x2 and y1 < y2):
        return None
    cx1, cy1, cx2, cy2 = min(x1, rw), min(y1, rh), min(x2, rw), min(y2, rh)
    if not (cx1 < cx2 and cy1 < cy2):
        return None
    label = entry.get("label", "")
    return Box(cx1 * sx, cy1 * sy, cx2 * sx, cy2 * sy, label if isinstance(label, str) else json.dumps(label))


def _is_number(value: Any) -> bool:
    # bool is an int subclass in Python; JSON true/false are not coordinates.
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(float(value))
    except OverflowError:  # an integer too large for a float
        return False
