"""The validation gate: a great-expectations suite, built in code, over the ingest manifest.

Two steps:

1. ``derive_checks`` turns the manifest into a *check frame*: one row per manifest row, with
   plain derived columns (counts of bad masks, normalised keys, sanitised copies of text columns)
   so that every rule is a simple column expectation, plus, for each check, a ``why_<check>``
   string that explains a failure on that row and a ``file_<check>`` naming the file to look at.
   Derived computations never raise on bad data: a row whose ``masks_json`` is not JSON fails
   ``masks_json_valid`` and the other mask checks skip it.
2. ``validate_manifest`` runs the suite with great-expectations (ephemeral context, pandas
   dataframe asset, ``result_format="COMPLETE"``). The failing row indices that GX returns decide
   which rows are quarantined; the ``why_`` columns only supply the words.

Duplicates: ``unique_sample_id`` and ``unique_video_expression`` quarantine *every* copy of a
duplicated key (GX's own semantics for uniqueness), because no copy is more trustworthy than the
others and keeping the first would depend on row order.

great_expectations is imported lazily (it costs about 3-5 s), so ``derive_checks`` and the
records here stay cheap to import.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from omni_r1.data.formats.common import MAX_EXPRESSION_CHARS, visible
from omni_r1.data.masks import RleError, decode_rle
from omni_r1.types import EXPRESSION_TYPES, SPLITS, ManifestRow, QuarantineEntry

STAGE = "validate"

# Every check, in the order reports list them. ``audio_present`` joins the suite only when the
# policy requires audio.
CHECKS: tuple[str, ...] = (
    "ingest_ok",
    "unique_sample_id",
    "unique_video_expression",
    "expression_not_empty",
    "known_split",
    "known_type",
    "media_present",
    "audio_present",
    "masks_json_valid",
    "mask_files_exist",
    "mask_count_matches_frames",
    "mask_size_matches_frame",
    "rle_decodes",
    "target_present",
)
MANIFEST_COLUMNS: tuple[str, ...] = tuple(ManifestRow.__dataclass_fields__)
MASK_KINDS: tuple[str, ...] = ("rle", "png", "none")
MEDIA_KINDS: tuple[str, ...] = ("video", "frames")
ROW = "_row"  # positional row id carried through GX so failing indices map back to manifest rows
_MAX_LISTED = 3  # problems spelled out per row before "and N more"


class ValidationPolicyError(RuntimeError):
    """The share of quarantined rows is above policy (or there is nothing to validate)."""


AUDIO_POLICIES = ("auto", "always", "never")


class ValidationSuiteError(RuntimeError):
    """An expectation itself failed to run: a bug in the suite, not in the data."""


@dataclass(frozen=True)
class ValidationPolicy:
    """How strict the gate is; mirrors ``validate`` in params.yaml."""

    max_bad_fraction: float  # stage fails when quarantined rows / all rows > this
    # "auto": rows whose expression needs sound (needs_audio) must have audio; "always": every row; "never": none.
    require_audio: str


    def __post_init__(self) -> None:
        if self.require_audio not in AUDIO_POLICIES:
            raise ValueError(f"validate.require_audio is {self.require_audio!r}; use one of {', '.join(AUDIO_POLICIES)}")
        if not 0.0 <= self.max_bad_fraction <= 1.0:
            raise ValueError(
                f"validate.max_bad_fraction must be within [0, 1], got {self.max_bad_fraction}; fix params.yaml"
            )


@dataclass(frozen=True)
class ValidationReport:
    """What the gate decided: good rows, one quarantine entry per (row, failed check), and counts."""

    good: pd.DataFrame
    quarantine: tuple[QuarantineEntry, ...]
    n_rows: int
    n_bad: int
    bad_fraction: float
    passed_policy: bool
    expectation_results: dict[str, bool]
    ingest_rows: int = 0  # rows ingest could not parse (each also counted under the ingest rule it broke)

    def failure_counts(self) -> dict[str, int]:
        """Rows failing each check of the suite (0 for a check that passed).

        A row ingest could not parse counts under ``ingest_ok`` and under the ingest rule it broke.
        """
        counts = {name: 0 for name in self.expectation_results}
        for entry in self.quarantine:
            counts[entry.check] = counts.get(entry.check, 0) + 1
        if self.ingest_rows:
            counts["ingest_ok"] = self.ingest_rows
        return counts

    def metrics(self) -> dict[str, float | int]:
        """Flat numbers for data/metrics/validate.json."""
        out: dict[str, float | int] = {
            "rows": self.n_rows,
            "good": len(self.good),
            "bad": self.n_bad,
            "bad_fraction": self.bad_fraction,
        }
        out.update({f"fail_{name}": n for name, n in self.failure_counts().items()})
        return out


# --------------------------------------------------------------------------- derived columns


def _text(value: Any) -> str:
    """A text cell as str; missing values (None, NaN) become ""."""
    return value if isinstance(value, str) else ""


def _int(value: Any) -> int | None:
    """An integer cell, or None when it is missing or not a whole number."""
    if isinstance(value, (bool, np.bool_)) or value is None:
        return None
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)) and math.isfinite(value) and float(value).is_integer():
        return int(value)
    return None


def _flag(value: Any) -> bool:
    """A bool cell; anything but a real True (None, NaN, "yes") counts as False."""
    return isinstance(value, (bool, np.bool_)) and bool(value)


def _paths(value: Any) -> list[str]:
    """A list cell (list, tuple or numpy array after a parquet round trip) as a list of str."""
    if isinstance(value, (list, tuple, np.ndarray)):
        return [str(v) for v in value]
    return []


def _listing(problems: list[str]) -> str:
    shown = "; ".join(problems[:_MAX_LISTED])
    extra = len(problems) - _MAX_LISTED
    return shown + (f"; and {extra} more" if extra > 0 else "")


def _source_file(row: dict[str, Any]) -> str:
    """ManifestRow.source_file, tolerant of missing cells."""
    if _text(row.get("error_file")):
        return _text(row.get("error_file"))
    if _text(row.get("video_path")):
        return _text(row.get("video_path"))
    frames = _paths(row.get("frame_paths"))
    if frames:
        return frames[0].rsplit("/", 1)[0] + "/"
    return _text(row.get("video_id"))


@dataclass
class _MaskFacts:
    """What the mask checks learned about one row (mutable while it is being filled)."""

    readable: bool = True
    why_readable: str = ""
    count_bad: list[str] = field(default_factory=list)
    size_bad: list[str] = field(default_factory=list)
    decode_bad: list[str] = field(default_factory=list)
    files_bad: list[str] = field(default_factory=list)
    n_targets: int = 0  # objects with a target: a non-empty RLE, or an existing PNG
    culprit: dict[str, str] = field(default_factory=dict)  # check -> first offending mask file


def _parse_objects(row: dict[str, Any]) -> tuple[list[dict[str, Any]], str]:
    """The mask objects of a row, or ([], why) when masks_json does not fit mask_kind."""
    kind = _text(row.get("mask_kind"))
    text = _text(row.get("masks_json"))
    if kind not in MASK_KINDS:
        return [], f"mask_kind {kind!r} is not one of {', '.join(MASK_KINDS)}"
    if not text.strip():
        return [], ("" if kind == "none" else f"mask_kind is {kind!r} but masks_json is empty")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        return [], f"masks_json is not valid JSON ({err.msg} at char {err.pos})"
    except (RecursionError, ValueError) as err:
        return [], f"masks_json is not plain JSON ({type(err).__name__})"
    objects = data.get("objects") if isinstance(data, dict) else None
    if not isinstance(objects, list):
        return [], 'masks_json must be an object with an "objects" list'
    if kind == "none":
        return [], (f"mask_kind is 'none' but masks_json holds {len(objects)} objects" if objects else "")
    key = "rles" if kind == "rle" else "pngs"
    for i, obj in enumerate(objects):
        if not isinstance(obj, dict) or not isinstance(obj.get(key), list):
            return [], f"object {i} in masks_json has no {key!r} list (mask_kind {kind!r})"
    return objects, ""


def _obj_name(obj: dict[str, Any], i: int) -> str:
    return str(obj.get("obj_id", i))


def _rle_facts(facts: _MaskFacts, objects: list[dict[str, Any]], frames: int | None, hw: list[int]) -> None:
    for i, obj in enumerate(objects):
        name, rles = _obj_name(obj, i), obj["rles"]
        if frames is not None and len(rles) != frames:
            facts.count_bad.append(f"object {name} has {len(rles)} masks for {frames} frames")
        non_empty = False
        wrong: list[tuple[int, list[Any]]] = []  # (frame, size): one message per object, not per frame
        for t, rle in enumerate(rles):
            if rle is None:
                continue
            size = rle.get("size") if isinstance(rle, dict) else None
            if isinstance(size, (list, tuple)) and list(size) != hw:
                wrong.append((t, list(size)[:2]))
                continue  # never decode (allocate) a mask of the wrong size: mask_size_matches_frame owns it
            try:
                non_empty = bool(decode_rle(rle).any()) or non_empty
            except RleError as err:
                facts.decode_bad.append(f"object {name} frame {t}: {err}")
        if wrong:
            facts.size_bad.append(
                f"object {name} has {len(wrong)} masks of size {wrong[0][1]} (first at frame {wrong[0][0]}), "
                f"frame is {hw} (h, w)"
            )
        facts.n_targets += int(non_empty)


def _inside(root: Path, rel: str) -> Path | None:
    """The resolved path of ``rel`` under ``root``, or None when it escapes the root."""
    try:
        path = (root / rel).resolve()
    except (OSError, ValueError):  # e.g. an embedded NUL byte: not a usable path at all
        return None
    return path if path.is_relative_to(root) else None


def _png_size(path: Path, cache: dict[Path, tuple[int, int] | str]) -> tuple[int, int] | str:
    """(width, height) of a whole PNG, or the error text.

    The header alone is not enough: a PNG cut after its header opens and reports its size, then fails
    in the shard stage. ``verify`` reads every chunk and its checksum, without decoding the pixels.
    """
    if path not in cache:
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(path) as image:
                size = (int(image.size[0]), int(image.size[1]))
                image.verify()
            cache[path] = size
        except (OSError, UnidentifiedImageError, SyntaxError, EOFError, ValueError, Image.DecompressionBombError) as err:
            cache[path] = f"{type(err).__name__}: {err or 'the file ends early'}"
    return cache[path]


def _png_facts(
    facts: _MaskFacts,
    objects: list[dict[str, Any]],
    frames: int | None,
    wh: tuple[int, int],
    root: Path,
    cache: dict[Path, tuple[int, int] | str],
) -> None:
    for i, obj in enumerate(objects):
        name, pngs = _obj_name(obj, i), obj["pngs"]
        if frames is not None and len(pngs) != frames:
            facts.count_bad.append(f"object {name} has {len(pngs)} masks for {frames} frames")
        present = False
        for rel in pngs:
            if rel is None:  # an empty frame needs no file
                continue
            rel = str(rel)
            path = _inside(root, rel)
            if path is None:
                facts.files_bad.append(f"{rel!r} is not a path inside the dataset root")
                facts.culprit.setdefault("mask_files_exist", rel)
                continue
            if not path.is_file():
                facts.files_bad.append(f"{rel} does not exist")
                facts.culprit.setdefault("mask_files_exist", rel)
                continue
            present = True
            size = _png_size(path, cache)
            if isinstance(size, str):
                facts.size_bad.append(f"{rel} is not a readable image ({size})")
                facts.culprit.setdefault("mask_size_matches_frame", rel)
            elif size != wh:
                facts.size_bad.append(f"{rel} is {size[0]}x{size[1]}, frame is {wh[0]}x{wh[1]} (w x h)")
                facts.culprit.setdefault("mask_size_matches_frame", rel)
        facts.n_targets += int(present)


def _mask_facts(row: dict[str, Any], root: Path, cache: dict[Path, tuple[int, int] | str]) -> _MaskFacts:
    facts = _MaskFacts()
    if _text(row.get("ingest_error")):
        # A row ingest could not parse carries placeholder masks and frame counts; ingest_ok owns it,
        # and mask findings on the placeholders would send a person to re-export masks that are fine.
        return facts
    objects, why = _parse_objects(row)
    if why:
        facts.readable, facts.why_readable = False, why
        return facts
    frames = _int(row.get("num_frames"))
    if frames is None or frames <= 0:
        facts.count_bad.append(f"num_frames {row.get('num_frames')!r} is not a positive whole number")
        frames = None
    height, width = _int(row.get("height")) or 0, _int(row.get("width")) or 0
    if _text(row.get("mask_kind")) == "rle":
        _rle_facts(facts, objects, frames, [height, width])
    elif _text(row.get("mask_kind")) == "png":
        _png_facts(facts, objects, frames, (width, height), root, cache)
    return facts


def _guarded_mask_facts(row: dict[str, Any], root: Path, cache: dict[Path, tuple[int, int] | str]) -> _MaskFacts:
    """``_mask_facts`` of one row; a cell of a shape no check foresaw fails masks_json_valid, never the stage."""
    try:
        return _mask_facts(row, root, cache)
    except (RleError, TypeError, ValueError, KeyError, AttributeError, RecursionError, OverflowError) as err:
        return _MaskFacts(readable=False, why_readable=f"masks_json holds values of the wrong type ({err})"[:500])


def _target_rule(row: dict[str, Any], facts: _MaskFacts) -> str:
    """"need" a target, "none" allowed, or "skip" when another check already owns the problem.

    PNG masks of null expressions are skipped: RefAVS ships all-black PNGs for them, and telling
    black from not-black needs a pixel read this gate does not pay for.
    """
    exp_type, kind = _text(row.get("exp_type")), _text(row.get("mask_kind"))
    if not facts.readable or exp_type not in EXPRESSION_TYPES or _text(row.get("ingest_error")):
        return "skip"
    if (facts.decode_bad or facts.size_bad) and facts.n_targets == 0:
        # The target may be in the masks that do not decode, or that were not decoded because their size
        # is wrong: rle_decodes or mask_size_matches_frame owns the problem.
        return "skip"
    if exp_type != "null":
        return "need"
    return "skip" if kind == "png" else "none"


def _target_why(rule: str, facts: _MaskFacts, row: dict[str, Any]) -> str:
    kind = _text(row.get("mask_kind"))
    if rule == "need" and facts.n_targets == 0:
        what = "no mask file of any object exists" if kind == "png" else "no object has a non-empty mask"
        return f"{_text(row.get('exp_type'))} expression has no target: {what} (mask_kind {kind!r})"
    if rule == "none" and facts.n_targets > 0:
        return f"null expression has {facts.n_targets} objects with non-empty masks"
    return ""


def _media_why(row: dict[str, Any]) -> str:
    kind = _text(row.get("media_kind"))
    if kind == "video":
        return "" if _text(row.get("video_path")) else "media_kind is 'video' but video_path is empty"
    if kind == "frames":
        frames, expected = _paths(row.get("frame_paths")), _int(row.get("num_frames"))
        if not frames:
            return "media_kind is 'frames' but frame_paths is empty"
        if expected != len(frames):
            return f"{len(frames)} frame files listed for num_frames {row.get('num_frames')}"
        return ""
    return f"media_kind {kind!r} is not one of {', '.join(MEDIA_KINDS)}"


def _duplicate_why(keys: pd.Series, names: pd.Series, label: Callable[[Any], str], what: str) -> pd.Series:
    """For every row whose key repeats: how often, and the ``names`` of the rows sharing it; "" elsewhere."""
    dup = keys.duplicated(keep=False)
    out = pd.Series([""] * len(keys), index=keys.index, dtype=object)
    if dup.any():
        for key, group in names[dup].groupby(keys[dup], sort=False):
            shared = ", ".join(str(s) for s in group.tolist()[: _MAX_LISTED + 1])
            out[group.index] = f"{label(key)} appears on {len(group)} rows ({what} {shared})"
    return out


def _expression_why(text: str) -> str:
    shown = len(visible(text))
    if not shown:
        return "expression is empty or only whitespace or invisible characters"
    if shown > MAX_EXPRESSION_CHARS:
        return f"expression has {shown} characters, more than {MAX_EXPRESSION_CHARS}"
    return ""


def _expression_key(text: str) -> str:
    """Whitespace- and case-insensitive form, so 'The  dog' and 'the dog' count as one expression."""
    return " ".join(text.split()).casefold()


def derive_checks(manifest: pd.DataFrame, root: Path) -> pd.DataFrame:
    """The check frame for ``manifest``: derived columns, ``why_<check>`` and ``file_<check>``.

    Row i of the result describes row i of the manifest (positional; column ``_row`` == i).
    Raises ValueError only when manifest columns are missing (a caller bug, not bad data).
    """
    missing = [c for c in MANIFEST_COLUMNS if c not in manifest.columns]
    if missing:
        raise ValueError(
            f"manifest lacks columns {missing}; rebuild it with the ingest stage (fields of omni_r1.types.ManifestRow)"
        )
    root = Path(root).resolve()
    rows = manifest.reset_index(drop=True).to_dict("records")
    n = len(rows)
    cache: dict[Path, tuple[int, int] | str] = {}  # PNG headers, shared by rows of one video
    facts = [_guarded_mask_facts(r, root, cache) for r in rows]
    rules = [_target_rule(r, f) for r, f in zip(rows, facts, strict=True)]

    out = pd.DataFrame({ROW: np.arange(n, dtype=np.int64)})
    text_columns = ("sample_id", "video_id", "expression", "split", "exp_type", "ingest_error")
    text = {c: [_text(r.get(c)) for r in rows] for c in text_columns}
    source = [_source_file(r) for r in rows]

    out["v_ingest_error"] = text["ingest_error"]
    out["v_sample_id"] = text["sample_id"]
    out["v_video_id"] = text["video_id"]
    out["v_expression_key"] = [_expression_key(t) for t in text["expression"]]
    out["n_expression_chars"] = np.array([len(visible(t)) for t in text["expression"]], dtype=np.int64)
    out["v_split"] = text["split"]
    out["v_exp_type"] = text["exp_type"]
    out["v_has_audio"] = [_flag(r.get("has_audio")) for r in rows]
    out["v_needs_audio"] = [_flag(r.get("needs_audio")) for r in rows]
    out["n_media_bad"] = np.array([int(bool(_media_why(r))) for r in rows], dtype=np.int64)
    out["masks_readable"] = [f.readable for f in facts]
    out["n_mask_files_bad"] = np.array([len(f.files_bad) for f in facts], dtype=np.int64)
    out["n_mask_count_bad"] = np.array([len(f.count_bad) for f in facts], dtype=np.int64)
    out["n_mask_size_bad"] = np.array([len(f.size_bad) for f in facts], dtype=np.int64)
    out["n_rle_bad"] = np.array([len(f.decode_bad) for f in facts], dtype=np.int64)
    out["target_rule"] = rules
    out["n_targets"] = np.array([f.n_targets for f in facts], dtype=np.int64)
    out["source_file"] = source

    ids = pd.Series(text["sample_id"], dtype=object)
    pairs = zip(text["video_id"], out["v_expression_key"], strict=True)
    video_exp = pd.Series([f"{v}\x00{k}" for v, k in pairs], dtype=object)
    why: dict[str, list[str] | pd.Series] = {
        "ingest_ok": text["ingest_error"],
        "unique_sample_id": _duplicate_why(
            ids, pd.Series(source, dtype=object), lambda k: f"sample_id {k!r}", "files"
        ),
        "unique_video_expression": _duplicate_why(
            video_exp, ids, lambda k: "expression {1!r} of video {0!r}".format(*str(k).split("\x00", 1)), "sample ids"
        ),
        "expression_not_empty": [_expression_why(t) for t in text["expression"]],
        "known_split": ["" if s in SPLITS else f"split {s!r} is not one of {', '.join(SPLITS)}" for s in text["split"]],
        "known_type": [
            "" if s in EXPRESSION_TYPES else f"exp_type {s!r} is not one of {', '.join(EXPRESSION_TYPES)}"
            for s in text["exp_type"]
        ],
        "media_present": [_media_why(r) for r in rows],
        "audio_present": [
            "" if a else "the video has no audio stream (has_audio is false)" for a in out["v_has_audio"]
        ],
        "masks_json_valid": [f.why_readable for f in facts],
        "mask_files_exist": [_listing(f.files_bad) for f in facts],
        "mask_count_matches_frames": [_listing(f.count_bad) for f in facts],
        "mask_size_matches_frame": [_listing(f.size_bad) for f in facts],
        "rle_decodes": [_listing(f.decode_bad) for f in facts],
        "target_present": [_target_why(rule, f, r) for rule, f, r in zip(rules, facts, rows, strict=True)],
    }
    for name in CHECKS:
        out[f"why_{name}"] = list(why[name])
        out[f"file_{name}"] = [f.culprit.get(name, s) for f, s in zip(facts, source, strict=True)]
    _only_ingest_ok(out, [bool(e) for e in text["ingest_error"]])
    return out


# What a row that failed ingest shows every other check: values that pass. Its fields are placeholders
# (or the unparsed text), and findings on them would send a person after the wrong fix, or, through the
# uniqueness checks, quarantine a good row that happens to share a placeholder with it.
_PASSING = {"v_split": "train", "v_exp_type": "referring", "v_has_audio": True, "n_expression_chars": 1,
            "n_media_bad": 0, "masks_readable": True, "n_mask_files_bad": 0, "n_mask_count_bad": 0,
            "n_mask_size_bad": 0, "n_rle_bad": 0, "target_rule": "skip"}


def _only_ingest_ok(out: pd.DataFrame, erred: list[bool]) -> None:
    """Rows ingest could not parse fail ``ingest_ok`` and nothing else (one fault, one finding)."""
    rows = np.flatnonzero(np.asarray(erred, dtype=bool))
    if rows.size == 0:
        return
    for column, value in _PASSING.items():
        out.loc[rows, column] = value
    out.loc[rows, "v_sample_id"] = [f"\x00ingest-error-{i}" for i in rows]  # never equal to a real id
    out.loc[rows, "v_expression_key"] = [f"\x00ingest-error-{i}" for i in rows]
    for name in CHECKS:
        if name != "ingest_ok":
            out.loc[rows, f"why_{name}"] = ""


# --------------------------------------------------------------------------- hints


def _media_hint(row: dict[str, Any]) -> str:
    kind = _text(row.get("media_kind"))
    if kind == "video":
        return "put the clip's video file under the dataset root and re-run ingest so the row names it"
    if kind == "frames":
        return f"list one frame image per frame ({row.get('num_frames')}) in the frames folder, then re-run ingest"
    return "set media_kind to video or frames (re-run ingest with a supported layout)"


def _hint(check: str, row: dict[str, Any]) -> str:
    """What a person should do about ``check`` failing on ``row``."""
    frames, h, w = row.get("num_frames"), row.get("height"), row.get("width")
    video = _text(row.get("video_id"))
    if check == "media_present":
        return _media_hint(row)
    if check == "target_present":
        if _text(row.get("exp_type")) == "null":
            return "remove the masks of this null expression, or set its type to referring/reasoning"
        return "add masks for the referred object(s), or set the expression type to null if nothing is referred to"
    hints = {
        "ingest_ok": "fix the source as the reason says, then re-run the ingest stage",
        "unique_sample_id": "give each (video, expression) its own exp_id so sample ids are unique, then re-run ingest",
        "unique_video_expression": (
            f"drop the repeated expression of video {video!r} from the annotations, or reword one copy"
        ),
        "expression_not_empty": (
            f"write the expression text for video {video!r} in the annotations (null expressions need text too), "
            f"at most {MAX_EXPRESSION_CHARS} characters"
        ),
        "known_split": (
            "set the split to train, val or test in the annotations "
            "(or map the benchmark's name in omni_r1.types.BENCHMARK_SPLITS)"
        ),
        "known_type": "set the expression type to referring, reasoning or null in the annotations",
        "audio_present": "add an audio track, or set validate.require_audio: never in params.yaml if sound is not needed",
        "masks_json_valid": (
            'fix the annotations and re-run ingest: masks_json must be {"objects": [...]} with "rles" per object '
            'for mask_kind rle, "pngs" for png, and nothing for none'
        ),
        "mask_files_exist": (
            "put the mask PNGs at the listed paths inside the dataset root, or fix the paths in the annotations"
        ),
        "mask_count_matches_frames": (
            f"re-export the masks so that each object has one mask per frame ({frames} frames)"
        ),
        "mask_size_matches_frame": (
            f"re-export the masks at the displayed frame size {w}x{h} (width x height, after rotation)"
        ),
        "rle_decodes": "re-encode the corrupt masks as COCO RLE (pycocotools / omni_r1.data.masks.encode_rle)",
    }
    return hints[check]


# --------------------------------------------------------------------------- the GX suite


@contextlib.contextmanager
def _quiet_gx() -> Iterator[None]:
    """Keep GX's logging and deprecation chatter out of stage output, restoring both afterwards."""
    logger = logging.getLogger("great_expectations")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", FutureWarning)
            yield
    finally:
        logger.setLevel(level)


def _build_suite(gx: Any, require_audio: str) -> Any:
    """The expectation suite; each expectation carries its check name in ``meta``."""
    from great_expectations.expectations.row_conditions import Column

    E = gx.expectations

    def zero(column: str, check: str) -> Any:
        return E.ExpectColumnValuesToBeBetween(column=column, min_value=0, max_value=0, meta={"check": check})

    def in_set(column: str, values: list[Any], check: str) -> Any:
        return E.ExpectColumnValuesToBeInSet(column=column, value_set=values, meta={"check": check})

    def between(column: str, check: str, **bounds: Any) -> Any:
        return E.ExpectColumnValuesToBeBetween(column=column, meta={"check": check}, **bounds)

    expectations = [
        in_set("v_ingest_error", [""], "ingest_ok"),
        E.ExpectColumnValuesToBeUnique(column="v_sample_id", meta={"check": "unique_sample_id"}),
        E.ExpectCompoundColumnsToBeUnique(
            column_list=["v_video_id", "v_expression_key"], meta={"check": "unique_video_expression"}
        ),
        between("n_expression_chars", "expression_not_empty", min_value=1, max_value=MAX_EXPRESSION_CHARS),
        in_set("v_split", list(SPLITS), "known_split"),
        in_set("v_exp_type", list(EXPRESSION_TYPES), "known_type"),
        zero("n_media_bad", "media_present"),
        in_set("masks_readable", [True], "masks_json_valid"),
        zero("n_mask_files_bad", "mask_files_exist"),
        zero("n_mask_count_bad", "mask_count_matches_frames"),
        zero("n_mask_size_bad", "mask_size_matches_frame"),
        zero("n_rle_bad", "rle_decodes"),
        # One check, two conditional expectations: a target where one is needed, none where none is allowed.
        between("n_targets", "target_present", min_value=1, row_condition=Column("target_rule") == "need"),
        between("n_targets", "target_present", max_value=0, row_condition=Column("target_rule") == "none"),
    ]
    if require_audio == "always":
        expectations.append(in_set("v_has_audio", [True], "audio_present"))
    elif require_audio == "auto":
        expectations.append(E.ExpectColumnValuesToBeInSet(
            column="v_has_audio", value_set=[True], meta={"check": "audio_present"},
            row_condition=Column("v_needs_audio") == True,  # noqa: E712 - GX row-condition syntax
        ))
    suite = gx.ExpectationSuite(name="manifest")
    for expectation in expectations:
        suite.add_expectation(expectation)
    return suite


def _gx_columns(checks: pd.DataFrame) -> list[str]:
    """The columns the suite reads; the text columns stay out of GX, which copies its domain per metric."""
    return [c for c in checks.columns if not c.startswith(("why_", "file_")) and c != "source_file"]


def run_suite(checks: pd.DataFrame, require_audio: str) -> tuple[dict[str, bool], dict[str, set[int]]]:
    """Validate the check frame with GX: (check -> success, check -> failing ``_row`` ids)."""
    with _quiet_gx():
        import great_expectations as gx
        from great_expectations.data_context.types.base import (
            DataContextConfig,
            InMemoryStoreBackendDefaults,
            ProgressBarsConfig,
        )

        config = DataContextConfig(
            store_backend_defaults=InMemoryStoreBackendDefaults(),
            analytics_enabled=False,
            progress_bars=ProgressBarsConfig(globally=False),
        )
        context = gx.get_context(mode="ephemeral", project_config=config)
        batch = (
            context.data_sources.add_pandas("manifest")
            .add_dataframe_asset("checks")
            .add_batch_definition_whole_dataframe("all_rows")
            .get_batch(batch_parameters={"dataframe": checks[_gx_columns(checks)]})
        )
        suite = context.suites.add(_build_suite(gx, require_audio))
        # COMPLETE lists every failing row; naming _row makes GX report our positional id, not its index.
        result = batch.validate(
            suite, result_format={"result_format": "COMPLETE", "unexpected_index_column_names": [ROW]}
        )
    return _collect(result.results)


def _collect(results: list[Any]) -> tuple[dict[str, bool], dict[str, set[int]]]:
    """Fold GX results (any order, numpy numbers) into per-check success and failing row ids."""
    success: dict[str, bool] = {}
    failing: dict[str, set[int]] = {}
    for res in results:
        config = res.expectation_config
        check = str(config.meta["check"])
        info = res.exception_info or {}
        if info.get("raised_exception"):
            raise ValidationSuiteError(
                f"expectation {config.type} ({check}) raised: {info.get('exception_message')}; "
                "this is a bug in omni_r1.data.expectations, not in the data"
            )
        success[check] = success.get(check, True) and bool(res.success)
        rows = failing.setdefault(check, set())
        for item in res.result.get("unexpected_index_list") or []:
            rows.add(int(item[ROW]) if isinstance(item, dict) else int(item))
        if not res.success and not rows:
            raise ValidationSuiteError(f"expectation {config.type} ({check}) failed without naming rows")
    return success, failing


# --------------------------------------------------------------------------- the gate


def validate_manifest(manifest: pd.DataFrame, root: Path, policy: ValidationPolicy) -> ValidationReport:
    """Run the suite over ``manifest`` (paths relative to ``root``) and split good rows from quarantine."""
    original = manifest.reset_index(drop=True)
    checks = derive_checks(original, root)
    success, failing = run_suite(checks, policy.require_audio)
    records = original.to_dict("records")
    entries = []
    for check, rows in failing.items():
        for i in rows:
            why = str(checks.at[i, f"why_{check}"]) or f"failed the {check} expectation"
            ingest_check = _text(records[i].get("ingest_check")) if check == "ingest_ok" else ""
            entries.append(
                QuarantineEntry(
                    sample_id=_text(records[i].get("sample_id")),
                    file=str(checks.at[i, f"file_{check}"]),
                    stage=STAGE,
                    check=ingest_check or check,
                    reason=why,
                    hint=_hint(check, records[i]),
                    line=_text(records[i].get("source_line")),
                )
            )
    entries.sort(key=lambda e: (e.sample_id, e.check, e.file, e.reason))
    bad = set().union(*failing.values()) if failing else set()
    good = original.iloc[[i for i in range(len(original)) if i not in bad]].reset_index(drop=True)
    n_rows = len(original)
    fraction = len(bad) / n_rows if n_rows else 0.0  # an empty manifest fails on n_rows, not on its fraction
    return ValidationReport(
        good=good,
        quarantine=tuple(entries),
        n_rows=n_rows,
        n_bad=len(bad),
        bad_fraction=fraction,
        passed_policy=n_rows > 0 and fraction <= policy.max_bad_fraction,
        expectation_results={name: success[name] for name in CHECKS if name in success},
        ingest_rows=len(failing.get("ingest_ok", ())),
    )


def enforce_policy(report: ValidationReport, policy: ValidationPolicy) -> None:
    """Raise ValidationPolicyError when the report breaches the policy; the message says what to do."""
    if report.passed_policy:
        return
    if report.n_rows == 0:
        raise ValidationPolicyError(
            "the manifest has no rows: point ingest at a dataset root that holds videos and annotations"
        )
    worst = sorted(((n, c) for c, n in report.failure_counts().items() if n), reverse=True)[:3]
    listed = ", ".join(f"{c} ({n})" for n, c in worst)
    raise ValidationPolicyError(
        f"validation quarantined {report.n_bad} of {report.n_rows} rows ({report.bad_fraction:.1%}), above "
        f"validate.max_bad_fraction {policy.max_bad_fraction:.1%}; most failed: {listed}. Fix the rows named in the "
        "quarantine report, or raise validate.max_bad_fraction in params.yaml"
    )
