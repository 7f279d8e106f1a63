"""Parsing the two systems' answers into typed records; a malformed answer is a typed error, never a crash.

System 1 (spec section 1) answers ``<think>...</think>`` then ``<answer>...</answer>``. On a video
the answer holds one JSON object per chosen moment::

    {"start_time": "mm:ss.ff", "end_time": "mm:ss.ff", "description": "..."}

Extraction is lenient: the objects may sit in a JSON list or be separated by commas or new lines,
and every balanced ``{...}`` counts as one object (J). Validation is strict: both times must be
strings ``mm:ss.ff`` (two digits each, seconds below 60), the description a non-empty string with
no special-token look-alikes. t = mm * 60 + ss + ff / 100; a moment is kept when
``start <= end <= duration``; it chooses frames ``int(t * fps)`` from start to end, clipped to the
last frame. The first ``max_keyframes`` distinct chosen frames, ascending, are grounded, each with
the description of the first kept moment that contains it. On RefAVS the answer is one rewritten
description, grounded on frame 0.

System 2 answers in Qwen2.5-VL's grounding format, a JSON list of
``{"bbox_2d": [x1, y1, x2, y2], "label": ...}`` in resized-image pixels, often inside a fenced
code block. ``parse_boxes`` checks, clips and scales the boxes back to original pixels.

Every failure raises a subclass of ``AnswerParseError`` carrying a short ``code`` to count by,
the reason, an excerpt of the completion and, for System 1, the object counts the format terms of
the reward still need (J and how many objects parsed). ``try_parse`` and ``try_parse_boxes``
return the error instead of raising it.
"""

from __future__ import annotations

import json
import math
import re
from fractions import Fraction
from typing import Any, ClassVar, Literal

from omni_r1.systems.prompts import ANSWER_CLOSE, ANSWER_OPEN, THINK_CLOSE, THINK_OPEN
from omni_r1.types import Box, Keyframe, KeyframeSelection, Moment

Task = Literal["revos", "refavs"]

# The format reward's pattern (dot matches newline), matched against the whole completion.
FORMAT_PATTERN = re.compile(r"<think>.*?</think>\s*<answer>.*?</answer>", re.DOTALL)
_BLOCKS = re.compile(r"<think>(.*?)</think>\s*<answer>(.*?)</answer>", re.DOTALL)
_TIME = re.compile(r"(\d{2}):(\d{2})\.(\d{2})")
_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.DOTALL | re.IGNORECASE)
_FORBIDDEN_IN_DESCRIPTION = ("<|", "|>", THINK_OPEN, THINK_CLOSE, ANSWER_OPEN, ANSWER_CLOSE)
MAX_DESCRIPTION_CHARS = 300
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


class BadBoxes(AnswerParseError):
    """A grounding answer that is not a JSON list of box objects."""

    code = "bad_boxes"


class InvalidBox(AnswerParseError):
    """A grounding box that is non-numeric, non-finite, negative, inverted or outside the image."""

    code = "invalid_box"


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


def parse_seconds(stamp: str) -> int | None:
    """``mm:ss.ff`` as whole hundredths of a second, or None when it is not that format."""
    match = _TIME.fullmatch(stamp.strip())
    if match is None:
        return None
    minutes, seconds, hundredths = (int(g) for g in match.groups())
    if seconds >= 60:
        return None
    return (minutes * 60 + seconds) * 100 + hundredths


def frame_index(hundredths: int, fps: float, num_frames: int) -> int:
    """``int(t * fps)`` for t in hundredths of a second, clipped to the last frame; exact, no float rounding."""
    frame = math.floor(Fraction(hundredths, 100) * Fraction(str(fps)))
    return min(max(frame, 0), num_frames - 1)


def parse_selection(
    completion: str, *, duration: float, num_frames: int, fps: float = 2.0, max_keyframes: int = 4
) -> KeyframeSelection:
    """System 1's video answer as a ``KeyframeSelection``; raises an ``AnswerParseError`` subclass.

    ``duration`` is the clip length the prompt stated (seconds), ``num_frames`` the sampled frame
    count (chosen frames are clipped to ``num_frames - 1``), ``fps`` the rate frames are treated as.
    """
    _check_clip(duration, num_frames, fps, max_keyframes)
    answer = _answer_block(completion)
    spans = object_spans(answer)
    if not spans:
        kind = BadJson if "{" in answer else NoMoments
        raise kind("the answer holds no complete {...} object", completion)
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
    """System 1's RefAVS answer: one rewritten description, grounded on frame 0.

    The answer may be the bare description, a JSON string, or a JSON object with a
    ``description`` field. There are no moment objects, so ``objects_found`` is 0.
    """
    answer = _answer_block(completion).strip()
    value: Any = answer
    if answer[:1] in "{[\"":
        value = _decode(answer, want_object=False)
        if value is None:
            raise BadJson("the answer looks like JSON but does not decode", completion)
        if isinstance(value, dict):
            value = value.get("description")
    description = _description(value)
    if description is None:
        raise BadFields("the answer holds no usable description", completion)
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


def object_spans(text: str) -> list[str]:
    """Every balanced top-level ``{...}`` in ``text``, braces inside JSON strings ignored.

    One linear pass, so a huge or deeply nested answer costs no more than its length.
    """
    spans: list[str] = []
    depth, start, in_string, escaped = 0, 0, False, False
    for i, ch in enumerate(text):
        if depth == 0:
            if ch == "{":
                depth, start = 1, i
            continue
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                spans.append(text[start : i + 1])
    return spans


def _check_clip(duration: float, num_frames: int, fps: float, max_keyframes: int) -> None:
    # A caller's mistake, not a model's: raised as ValueError, never counted as a parse failure.
    if not (duration > 0 and num_frames >= 1 and fps > 0 and max_keyframes >= 1):
        raise ValueError(
            f"duration={duration}, num_frames={num_frames}, fps={fps}, max_keyframes={max_keyframes}: "
            "all must be positive; pass the clip's sampled frame count and its stated duration"
        )


def _answer_block(completion: str) -> str:
    match = _BLOCKS.search(completion)
    if match is None:
        if THINK_CLOSE in completion and ANSWER_OPEN not in completion:
            reason = "the reasoning ends without an <answer> block"
        elif ANSWER_OPEN in completion and ANSWER_CLOSE not in completion:
            reason = "the <answer> block is never closed"
        else:
            reason = "no <think>...</think> followed by <answer>...</answer>"
        raise MissingTags(reason, completion)
    answer = match.group(2)
    if not answer.strip():
        raise EmptyAnswer("the <answer> block is empty", completion)
    return answer


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not a number JSON allows")


def _decode(text: str, *, want_object: bool = True, allow_constants: bool = False) -> Any:
    """``json.loads``, NaN/Infinity refused unless allowed; None when it fails (deep nesting included)."""
    try:
        value = json.loads(text) if allow_constants else json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        return None
    if want_object and not isinstance(value, dict):
        return None
    return value


def _description(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    text = " ".join(value.split())
    if not text or len(text) > MAX_DESCRIPTION_CHARS or not text.isprintable():
        return None
    if any(marker in text for marker in _FORBIDDEN_IN_DESCRIPTION):
        return None
    return text


def _moment(obj: Any, duration: float, num_frames: int, fps: float) -> Moment | None:
    if not isinstance(obj, dict):
        return None
    start_text, end_text = obj.get("start_time"), obj.get("end_time")
    if not (isinstance(start_text, str) and isinstance(end_text, str)):
        return None
    start, end = parse_seconds(start_text), parse_seconds(end_text)
    description = _description(obj.get("description"))
    if start is None or end is None or description is None:
        return None
    kept = start <= end <= duration * 100
    frames = tuple(range(frame_index(start, fps, num_frames), frame_index(end, fps, num_frames) + 1)) if kept else ()
    return Moment(start=start / 100, end=end / 100, description=description, kept=kept, frames=frames)


def _keyframes(moments: tuple[Moment, ...], max_keyframes: int) -> tuple[tuple[int, ...], tuple[Keyframe, ...]]:
    first_description: dict[int, str] = {}
    for moment in moments:
        for frame in moment.frames:
            # The first kept moment (in answer order) that contains a frame names it.
            first_description.setdefault(frame, moment.description)
    frames = tuple(sorted(first_description))
    return frames, tuple(Keyframe(f, first_description[f]) for f in frames[:max_keyframes])


# ----------------------------------------------------------------------------------------------- System 2


def parse_boxes(
    answer: str, *, resized_size: tuple[int, int], original_size: tuple[int, int]
) -> tuple[Box, ...]:
    """System 2's grounding answer as boxes in original pixels; sizes are (width, height).

    Boxes are clipped to the resized image, then scaled by original / resized. Any entry that is
    not ``{"bbox_2d": [4 finite numbers], "label": str}`` with ``0 <= x1 < x2`` and
    ``0 <= y1 < y2`` (and some area inside the image) fails the whole answer with ``InvalidBox``.
    An empty list is a valid answer: no boxes.
    """
    (rw, rh), (ow, oh) = resized_size, original_size
    if min(rw, rh, ow, oh) <= 0:
        raise ValueError(f"image sizes {resized_size} and {original_size} must be positive (width, height)")
    entries = _box_entries(answer)
    boxes = []
    for index, entry in enumerate(entries):
        x1, y1, x2, y2, label = _box_fields(entry, index, answer)
        cx1, cy1, cx2, cy2 = min(x1, rw), min(y1, rh), min(x2, rw), min(y2, rh)
        if not (cx1 < cx2 and cy1 < cy2):
            raise InvalidBox(f"box {index} {[x1, y1, x2, y2]} lies outside the {rw}x{rh} image", answer)
        sx, sy = ow / rw, oh / rh
        boxes.append(Box(cx1 * sx, cy1 * sy, cx2 * sx, cy2 * sy, label))
    return tuple(boxes)


def try_parse_boxes(
    answer: str, *, resized_size: tuple[int, int], original_size: tuple[int, int]
) -> tuple[Box, ...] | AnswerParseError:
    """``parse_boxes``, with a malformed answer returned as its error rather than raised."""
    try:
        return parse_boxes(answer, resized_size=resized_size, original_size=original_size)
    except AnswerParseError as error:
        return error


def _box_entries(answer: str) -> list[Any]:
    text = answer.strip()
    fenced = _FENCE.search(text)
    if fenced is not None:
        text = fenced.group(1).strip()
    # NaN and Infinity decode here so that the box check can reject them by name.
    value = _decode(text, want_object=False, allow_constants=True)
    if value is None and "[" in text and "]" in text:
        # Prose around the list: decode from the first "[" to the last "]", if that is a list of objects
        # (not, say, the coordinates inside one bare object).
        inner = _decode(text[text.index("[") : text.rindex("]") + 1], want_object=False, allow_constants=True)
        if isinstance(inner, list) and all(isinstance(entry, dict) for entry in inner):
            value = inner
    if value is None:
        objects = [obj for span in object_spans(text) if (obj := _decode(span, allow_constants=True)) is not None]
        value = objects or None
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list):
        raise BadBoxes("the answer is not a JSON list of {\"bbox_2d\": [...], \"label\": ...} objects", answer)
    return value


def _box_fields(entry: Any, index: int, answer: str) -> tuple[float, float, float, float, str]:
    if not isinstance(entry, dict) or "bbox_2d" not in entry:
        raise InvalidBox(f"entry {index} is not an object with a bbox_2d field", answer)
    coords = entry["bbox_2d"]
    numeric = isinstance(coords, list) and len(coords) == 4 and all(_is_number(c) for c in coords)
    if not numeric:
        raise InvalidBox(f"entry {index}: bbox_2d {coords!r} is not 4 finite numbers", answer)
    x1, y1, x2, y2 = (float(c) for c in coords)
    if min(x1, y1) < 0:
        raise InvalidBox(f"entry {index}: bbox_2d {coords} has a negative corner", answer)
    if not (x1 < x2 and y1 < y2):
        raise InvalidBox(f"entry {index}: bbox_2d {coords} is inverted or empty (want x1 < x2, y1 < y2)", answer)
    label = entry.get("label", "")
    if not isinstance(label, str):
        raise InvalidBox(f"entry {index}: label {label!r} is not a string", answer)
    return x1, y1, x2, y2, label


def _is_number(value: Any) -> bool:
    # bool is an int subclass in Python; JSON true/false are not coordinates.
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(float(value))
    except OverflowError:  # an integer too large for a float
        return False
