"""Shared helpers for the layout parsers: typed field checks, split/type normalisation, the row builders.

Every annotation row is parsed in its own guard: a value of the wrong type or size raises
``RowProblem`` (a check name, what is wrong, how to fix it), which the parser turns into an error row
(``error_row``) naming the file and line; validation quarantines it and the other rows flow on.
Sizes are bounded here, before anything is allocated from them.
"""

from __future__ import annotations

import json
import math
import unicodedata
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from omni_r1.types import BENCHMARK_SPLITS, EXPRESSION_TYPES, ManifestRow

MAX_ID_CHARS = 250  # video, expression and object ids: a file name is at most 255 bytes, with ".webm"
MAX_EXPRESSION_CHARS = 4000  # a referring or reasoning expression is a sentence or a paragraph, not a book
MAX_CUE_CHARS = 64
MAX_SPLIT_CHARS = 64
MAX_SHOWN_CHARS = 120  # of a bad value, quoted in a message or kept on an error row
# Characters that show nothing although unicodedata does not call them format (Cf) or space characters.
_INVISIBLE = {"\u115f", "\u1160", "\u3164", "\uffa0", "\u2800", "\u180e"}


class LayoutError(ValueError):
    """A dataset that cannot be read at all (no annotation file, an unreadable header): names the file and the fix."""


class LayoutMissing(LayoutError, FileNotFoundError):
    """The dataset root or its annotation file is not there."""


class RowProblem(ValueError):
    """One annotation row that cannot be used: ``check`` names the rule, the message says what and how to fix."""

    def __init__(self, check: str, message: str) -> None:
        super().__init__(message)
        self.check = check


def utf8_line(raw: bytes, where: str, file_name: str) -> str:
    """One annotation line as text, or ``RowProblem("utf8")`` naming the byte, its column and how to re-save."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise RowProblem("utf8", f"{where}: byte 0x{raw[err.start]:02x} at column {err.start + 1} is not UTF-8; "
                                 f"save {file_name} as UTF-8 (e.g. `iconv -f latin1 -t utf-8`)") from err


def shown(value: Any) -> str:
    """A bad value as a message may quote it: its repr, cut to ``MAX_SHOWN_CHARS``, always encodable."""
    text = repr(value) if not isinstance(value, str) or len(value) <= MAX_SHOWN_CHARS else repr(value[:MAX_SHOWN_CHARS])
    text = text if len(text) <= MAX_SHOWN_CHARS + 2 else text[:MAX_SHOWN_CHARS] + "..."
    return safe_text(text)


def json_type(value: Any) -> str:
    """The JSON name of a value's type, as a person who wrote the annotation would say it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, dict):
        return "object"
    if isinstance(value, (list, tuple)):
        return "array"
    return "string" if isinstance(value, str) else type(value).__name__


def safe_text(value: Any, limit: int = MAX_SHOWN_CHARS) -> str:
    """Any value as storable text: str, at most ``limit`` chars, lone surrogates and NULs replaced."""
    text = value if isinstance(value, str) else ("" if value is None else repr(value))
    text = text[:limit]
    return text.encode("utf-8", "replace").decode("utf-8").replace("\x00", "\ufffd")


def _has_surrogates(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def visible(text: str) -> str:
    """``text`` without invisible characters: whitespace, controls, format characters (zero-width etc.)."""
    return "".join(
        ch for ch in text
        if not (ch.isspace() or ch in _INVISIBLE or unicodedata.category(ch) in ("Cc", "Cf", "Zs", "Zl", "Zp"))
    )


def check_text(value: Any, field: str, *, limit: int, check: str, fix: str) -> str:
    """A string field: a str, valid Unicode, at most ``limit`` chars, with something visible in it."""
    if not isinstance(value, str):
        raise RowProblem(check, f"{field} must be a string, got {json_type(value)} {shown(value)}; {fix}")
    if len(value) > limit:
        raise RowProblem(check, f"{field} has {len(value)} characters, more than {limit}; {fix}")
    if _has_surrogates(value):
        raise RowProblem(check, f"{field} holds a lone surrogate (an escape such as \\ud800 that is not a "
                                f"character): {shown(value)}; {fix}")
    if "\x00" in value:
        raise RowProblem(check, f"{field} holds a NUL character; {fix}")
    if not visible(value):
        raise RowProblem(check, f"{field} is empty or only invisible characters {shown(value)}; {fix}")
    return value


def check_expression(value: Any) -> str:
    return check_text(value, "expression", limit=MAX_EXPRESSION_CHARS, check="expression_text",
                      fix="write the expression as a plain non-empty sentence")


def check_id(value: Any, field: str, *, numbers: bool = True) -> str:
    """An id: a string (or a whole number, when ``numbers``) of at most ``MAX_ID_CHARS`` visible characters."""
    if numbers and isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    text = check_text(value, field, limit=MAX_ID_CHARS, check="id_type",
                      fix=f"make {field} a string of at most {MAX_ID_CHARS} characters")
    if any(unicodedata.category(ch) == "Cc" for ch in text) or text != text.strip():
        raise RowProblem("id_type", f"{field} {shown(text)} has control characters or surrounding spaces; "
                                    "use a plain name")
    return text


def check_choice(value: Any, field: str, choices: tuple[str, ...], *, check: str, limit: int = MAX_SPLIT_CHARS) -> str:
    """A string from a known set, or any short string when ``choices`` is empty (validation checks the set)."""
    text = check_text(value, field, limit=limit, check=check,
                      fix=f"set {field} to one of {', '.join(choices)}" if choices else f"set {field}")
    if choices and text not in choices:
        raise RowProblem(check, f"{field} {shown(text)} is not one of {', '.join(choices)}")
    return text


def check_type(value: Any) -> str:
    return check_choice(value, "type", EXPRESSION_TYPES, check="known_type")


def check_frame(value: Any, num_frames: int, where: str) -> int:
    """A frame index: a whole number (not a bool, not a float) within the video's ``num_frames``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise RowProblem("frame_index", f"{where}: 'frame' must be a whole number, got {shown(value)}; "
                                        "use the decoded frame's index from 0")
    if not 0 <= value < num_frames:
        raise RowProblem("frame_index", f"{where}: frame {shown(value)} is outside the video's {num_frames} frames "
                                        f"(0..{num_frames - 1}); fix the frame index or the video")
    return value


def check_number(value: Any, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise RowProblem("number", f"{field} must be a finite number, got {shown(value)}")
    return float(value)


def normalise_split(raw: str) -> str:
    """Map a benchmark's split name onto train/val/test; an unknown name is kept so validation flags it."""
    return BENCHMARK_SPLITS.get(raw, raw)


def image_size(path: Path) -> tuple[int, int] | None:
    """(width, height) from an image header without decoding pixels; None when it does not open."""
    try:
        with Image.open(path) as img:
            return img.size
    except (OSError, UnidentifiedImageError, Image.DecompressionBombError, ValueError):
        return None


def masks_json(objects: list[dict[str, Any]]) -> str:
    return json.dumps({"objects": objects}, sort_keys=True)


_BOM = b"\xef\xbb\xbf"


def read_lines(path: Path, max_bytes: int) -> Iterator[tuple[int, bytes | None]]:
    """(line number, bytes) per ``\\n``-terminated line, without its line ending or a leading UTF-8 BOM.

    Only ``\\n`` ends a line (``str.splitlines`` also splits at U+2028 and friends, which may sit raw
    inside a JSON string). A line over ``max_bytes`` comes back as None and is skipped, never held.
    """
    with path.open("rb") as handle:
        lineno = 0
        while True:
            chunk = handle.readline(max_bytes + 1)
            if not chunk:
                return
            lineno += 1
            if lineno == 1 and chunk.startswith(_BOM):
                chunk = chunk[len(_BOM):]
            if len(chunk) > max_bytes and not chunk.endswith(b"\n"):
                while (rest := handle.readline(1 << 20)) and not rest.endswith(b"\n"):
                    pass
                yield lineno, None
                continue
            yield lineno, chunk.rstrip(b"\r\n")


class DuplicateKeys(dict):  # type: ignore[type-arg]
    """A JSON object that remembers keys given more than once (the last value wins, as in ``json``)."""

    duplicates: tuple[str, ...] = ()


def pairs_hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``json.loads(object_pairs_hook=...)``: a dict that records duplicated keys instead of hiding them."""
    result = DuplicateKeys(pairs)
    if len(result) != len(pairs):
        seen: set[str] = set()
        result.duplicates = tuple(sorted({k for k, _ in pairs if k in seen or seen.add(k)}))  # type: ignore[func-returns-value]
    return result


def duplicate_keys(value: Any, path: str = "") -> list[str]:
    """JSON paths of every object with duplicated keys in ``value`` (parsed with ``pairs_hook``)."""
    found: list[str] = []
    stack: list[tuple[Any, str]] = [(value, path)]
    while stack:
        item, where = stack.pop()
        if isinstance(item, dict):
            found.extend(f"{where}.{key}" if where else key for key in getattr(item, "duplicates", ()))
            stack.extend((v, f"{where}.{k}" if where else str(k)) for k, v in item.items())
        elif isinstance(item, list):
            stack.extend((v, f"{where}[{i}]") for i, v in enumerate(item))
    return sorted(found)


def error_row(dataset: str, sample_id: str, source: str, error: str, *, check: str = "ingest_ok", line: str = "",
              **known: Any) -> ManifestRow:
    """A row for an annotation that could not be parsed; validation quarantines it with ``error`` under ``check``.

    Every value taken from the bad annotation is cut and made storable first: a 200 MB expression or a
    lone surrogate must not break the manifest the good rows travel in.
    """
    text = {k: safe_text(known.get(k, "")) if isinstance(known.get(k, ""), str) else "" for k in
            ("video_id", "exp_id", "split", "expression", "exp_type")}
    return ManifestRow(
        sample_id=safe_text(sample_id, MAX_ID_CHARS * 2 + 1),
        dataset=dataset,
        video_id=text["video_id"],
        exp_id=text["exp_id"],
        split=text["split"],
        benchmark_split=text["split"],
        expression=text["expression"],
        exp_type=text["exp_type"],
        cue="",
        media_kind="video" if dataset == "video" else "frames",
        video_path=safe_text(source, 4 * MAX_SHOWN_CHARS) if dataset == "video" else "",
        frame_paths=[],
        audio_path="",
        has_audio=False,
        audio_channels=0,
        audio_rate=0,
        fps=0.0,
        num_frames=0,
        width=0,
        height=0,
        mask_kind="none",
        masks_json=masks_json([]),
        ingest_error=safe_text(error, 2000) or "the annotation could not be parsed",
        ingest_check=check,
        source_line=safe_text(line, 4 * MAX_SHOWN_CHARS),
        error_file=safe_text(source, 4 * MAX_SHOWN_CHARS),
    )
