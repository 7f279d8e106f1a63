"""The data stages as library calls: ingest, validate, shard one video, and summarise what was skipped.

Stages (``stages/*.py``) parse arguments, load params and call one function here; the fan-out of
``shard_video`` over videos is done by the stage through ``omni_r1.fanout``.

The shard stage resumes (``ResumableShardRun``): each video is decoded by a worker into its own
entry of a work folder (``data/shards.work``), published by one rename, under a key of its
rows, its media files' size and mtime, the sampling plan and the decoding code. The parent writes
the shards from those entries in video order and the manifest last, then deletes the work folder.
A run that died (killed, disk full) leaves the finished entries; the next run decodes only the
videos without one, and writes the same bytes an uninterrupted run writes.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
import uuid
from collections import Counter
import dataclasses
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from omni_r1.config import DataParams, FeaturesParams, IngestParams
from omni_r1.data.formats import read_layout
from omni_r1.data.paths import PathEscapeError, safe_join
from omni_r1.data.shards import SamplingPlan, ShardSetWriter, VideoRecord, build_record, group_by_video, iter_shard
from omni_r1.fileio import OutputOwnershipError, atomic_write_json, check_output_location, claim_output_dir
from omni_r1.data.video import MediaError
from omni_r1.types import ManifestRow, QuarantineEntry

if TYPE_CHECKING:  # pandas is imported where a stage needs it: it costs 0.3-0.4 s of each stage process's start
    import pandas as pd


def ingest_rows(fmt: str, root: Path, params: IngestParams) -> tuple[list[ManifestRow], dict[str, Any]]:
    """Parse a dataset layout into manifest rows (one per (video, expression)) and the stage's metrics."""
    rows = read_layout(fmt, root, refavs_fps=params.refavs_fps, revos_fps=params.revos_fps)
    metrics = {
        "rows": len(rows),
        "videos": len({r.video_id for r in rows}),
        "parse_errors": sum(1 for r in rows if r.ingest_error != ""),
        **{f"split_{k}": v for k, v in sorted(Counter(r.split for r in rows).items())},
        **{f"type_{k}": v for k, v in sorted(Counter(r.exp_type for r in rows).items())},
    }
    return rows, metrics


def ingest(fmt: str, root: Path, params: IngestParams) -> tuple[pd.DataFrame, dict[str, Any]]:
    """``ingest_rows`` as the manifest dataframe, for scripts and tests that work in pandas."""
    import pandas as pd

    rows, metrics = ingest_rows(fmt, root, params)
    return pd.DataFrame([r.to_dict() for r in rows], columns=list(ManifestRow.__dataclass_fields__)), metrics


# pyarrow's JSON reader parses in blocks of this many bytes; a row must fit in one block (see manifest_table)
JSON_BLOCK_BYTES = 16 << 20
_ARROW_INT32_MAX = (1 << 31) - 1


def manifest_table(rows: Sequence[ManifestRow]) -> Any:
    """The rows as a pyarrow table with one typed column per ``ManifestRow`` field (what the ingest stage writes).

    Without pandas, so the ingest stage's process does not import it (0.3 s of its start). Building a
    pyarrow array from Python objects asks pyarrow's pandas shim whether the input is a pandas object,
    and that imports pandas; pyarrow's C++ JSON reader builds the same typed table without asking. The
    schema is explicit, so an empty manifest, or one whose ``frame_paths`` are all empty, keeps its types.
    The reader keeps the rows' order across its blocks; a block holds at least two of the longest row
    (a ReVOS row carries the RLE masks of every frame). ``Table.from_pylist`` builds the table instead
    where JSON cannot carry a row: a non-finite float, or a row too long for one block.
    """
    import io
    import math

    import pyarrow as pa
    import pyarrow.json as pa_json

    kinds = {"str": pa.string(), "bool": pa.bool_(), "int": pa.int64(), "float": pa.float64(),
             "list[str]": pa.list_(pa.string())}
    schema = pa.schema([(f.name, kinds[str(f.type)]) for f in dataclasses.fields(ManifestRow)])
    records = [r.to_dict() for r in rows]
    if not records:
        return schema.empty_table()
    if any(isinstance(v, float) and not math.isfinite(v) for record in records for v in record.values()):
        return pa.Table.from_pylist(records, schema=schema)
    lines = [(json.dumps(record, allow_nan=False) + "\n").encode() for record in records]
    block = max(JSON_BLOCK_BYTES, 2 * max(len(line) for line in lines))
    if block > _ARROW_INT32_MAX:
        return pa.Table.from_pylist(records, schema=schema)
    options = pa_json.ParseOptions(explicit_schema=schema, unexpected_field_behavior="error")
    read = pa_json.ReadOptions(use_threads=False, block_size=block)
    return pa_json.read_json(io.BytesIO(b"".join(lines)), read_options=read, parse_options=options).select(schema.names)


class ManifestError(ValueError):
    """A manifest file that is missing, not parquet, or not a manifest; names the file and the stage that writes it."""


def read_manifest(path: Path, written_by: str) -> pd.DataFrame:
    """A manifest parquet with every ``ManifestRow`` column, or ``ManifestError`` saying which stage to (re)run."""
    return _manifest_table(path, written_by).to_pandas()


def read_manifest_rows(path: Path, written_by: str) -> list[ManifestRow]:
    """``read_manifest`` as rows, through pyarrow alone (the shard stage's process does not import pandas)."""
    return [ManifestRow.from_dict(record) for record in _manifest_table(path, written_by).to_pylist()]


def _manifest_table(path: Path, written_by: str) -> Any:
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not path.is_file():
        raise ManifestError(f"{path} does not exist; run the {written_by} stage first (or pass --manifest)")
    try:
        # ParquetFile, not read_table: read_table goes through pyarrow.dataset, which imports pandas.
        table = pq.ParquetFile(path).read()
    except (pa.ArrowException, OSError, ValueError) as err:
        raise ManifestError(f"{path} is not a readable parquet manifest ({err}); rerun the {written_by} stage") from err
    missing = [c for c in ManifestRow.__dataclass_fields__ if c not in table.column_names]
    if missing:
        raise ManifestError(f"{path} lacks column(s) {', '.join(missing)}; rerun the {written_by} stage "
                            "(it was written by an older version)")
    return table


def rows_from_frame(frame: pd.DataFrame) -> list[ManifestRow]:
    return [ManifestRow.from_dict(record) for record in frame.to_dict("records")]


def sampling_plan(data: DataParams) -> SamplingPlan:
    return SamplingPlan(fps=data.fps, max_frames=data.max_frames, low_res=data.low_res, high_res=data.high_res,
                        low_pixels=data.low_res_pixels, high_pixels=data.high_res_pixels)


@dataclass(frozen=True)
class ShardOutcome:
    """One video after decoding: a record to write, or the quarantine entries of all its expressions."""

    video_id: str
    split: str
    samples: int
    record: VideoRecord | None
    quarantine: tuple[QuarantineEntry, ...] = ()
    seconds: float = 0.0
    frames_decoded: int = 0

    def summary(self) -> ShardOutcome:
        """The outcome without its pixels, to keep after the record is written."""
        return ShardOutcome(self.video_id, self.split, self.samples, None, self.quarantine, self.seconds,
                            self.frames_decoded)


def shard_video(rows: Sequence[ManifestRow], root: Path, plan: SamplingPlan) -> ShardOutcome:
    """Decode one video (all its expressions) into a record; bad media quarantines its expressions.

    Only ``MediaError`` (a file we cannot use) is caught: anything else is a bug and must fail loudly.
    """
    first = rows[0]
    start = time.perf_counter()
    try:
        record = build_record(root, rows, plan)
    except PathEscapeError as err:  # a link changed since ingest: the row's file now points out of the root
        err = MediaError(first.source_file, str(err), "copy the file into the dataset root and rerun ingest")
        entries = tuple(
            QuarantineEntry(row.sample_id, first.source_file, "shard", "path", err.reason, err.hint, row.source_line)
            for row in rows
        )
        return ShardOutcome(first.video_id, first.split, len(rows), None, entries, time.perf_counter() - start)
    except MediaError as err:
        entries = tuple(
            QuarantineEntry(row.sample_id, _relative(err.path, root), "shard", "decodable", err.reason, err.hint,
                            row.source_line)
            for row in rows
        )
        return ShardOutcome(first.video_id, first.split, len(rows), None, entries, time.perf_counter() - start)
    return ShardOutcome(first.video_id, first.split, len(rows), record, (), time.perf_counter() - start,
                        record.frames_decoded)


def shard_in_process(fmt: str, root: Path, out_dir: Path, plan: SamplingPlan, *,
                     videos_per_shard: int = 64) -> list[QuarantineEntry]:
    """Ingest ``root`` and shard every video in order in this process (no Prefect, no validation gate).

    For tests and benchmarks that need a small shard set; the stages run the same two calls fanned out.
    Returns the quarantine entries of videos that could not be decoded (the rest are written).
    """
    frame, _ = ingest(fmt, root, IngestParams())
    writer = ShardSetWriter(out_dir, videos_per_shard)
    quarantined: list[QuarantineEntry] = []
    for rows in group_by_video(rows_from_frame(frame)):
        outcome = shard_video(rows, root, plan)
        if outcome.record is None:
            quarantined.extend(outcome.quarantine)
        else:
            writer.write(outcome.record)
    writer.close()  # the manifest comes last
    return quarantined


def _relative(path: str, root: Path) -> str:
    candidate = Path(path)
    try:
        return candidate.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return path


@dataclass
class ShardTally:
    """Counts for the shard stage's metrics: what flowed, what was quarantined, what was decoded or reused, how fast.

    ``frames_decoded`` and the frames/s figure count only videos decoded by this run; videos taken
    from the work folder of an interrupted run are counted apart (``reused_videos``, ``frames_reused``).
    """

    videos_ok: int = 0
    videos_quarantined: int = 0
    samples_ok: int = 0
    samples_quarantined: int = 0
    decoded_videos: int = 0
    reused_videos: int = 0
    frames_decoded: int = 0
    frames_reused: int = 0
    decode_seconds: float = 0.0
    quarantine: list[QuarantineEntry] = field(default_factory=list)

    def add(self, outcome: ShardOutcome, reused: bool = False) -> None:
        if outcome.quarantine:
            self.videos_quarantined += 1
            self.samples_quarantined += outcome.samples
            self.quarantine.extend(outcome.quarantine)
        else:
            self.videos_ok += 1
            self.samples_ok += outcome.samples
        if reused:
            self.reused_videos += 1
            self.frames_reused += outcome.frames_decoded
        else:
            self.decoded_videos += 1
            self.frames_decoded += outcome.frames_decoded
            self.decode_seconds += outcome.seconds

    def metrics(self, wall_seconds: float) -> dict[str, Any]:
        return {
            "videos_ok": self.videos_ok,
            "videos_quarantined": self.videos_quarantined,
            "samples_ok": self.samples_ok,
            "samples_quarantined": self.samples_quarantined,
            "decoded_videos": self.decoded_videos,
            "reused_videos": self.reused_videos,
            "frames_decoded": self.frames_decoded,
            "frames_reused": self.frames_reused,
            "wall_seconds": round(wall_seconds, 3),
            "frames_per_second": round(self.frames_decoded / wall_seconds, 1) if wall_seconds > 0 else 0.0,
        }


SHARD_PATTERNS = ("*.tar", ".*.tmp", "manifest.json", "quarantine.json")  # what the shard stage writes in --out


class ShardSink:
    """Streams shard outcomes to disk in arrival order: records into the shard writer, counts into a tally.

    The output folder is claimed first (``claim_output_dir``: never the dataset root, nor inside it,
    nor a folder of someone else's files); the shards of an earlier run are removed so that they never
    mix with this one, and nothing else is. The quarantine report and then the shard manifest (the
    completion marker) are written by ``close``.
    """

    def __init__(self, out_dir: Path, videos_per_shard: int, protected: Sequence[Path] = ()) -> None:
        self.owned = claim_output_dir(out_dir, "shard", protected=protected, patterns=SHARD_PATTERNS)
        self.owned.clear()
        self.out_dir = out_dir
        self.writer = ShardSetWriter(out_dir, videos_per_shard)
        self.tally = ShardTally()

    def keep(self, outcome: ShardOutcome, reused: bool = False) -> ShardOutcome:
        if outcome.record is not None:
            self.writer.write(outcome.record)
        self.tally.add(outcome, reused)
        return outcome.summary()

    def close(self, plan: SamplingPlan) -> dict[str, Any]:
        atomic_write_json(self.out_dir / "quarantine.json", quarantine_json(self.tally.quarantine))
        manifest = self.writer.close({"sampling": vars(plan)})
        self.owned.commit()
        return manifest

    def abort(self) -> None:
        """Delete the shards still being written; finished ones stay, unlisted, for the next run to replace."""
        self.writer.abort()


# ----------------------------------------------------------------------------------------------- resumable shard

WORK_FORMAT = 1  # bump when the layout of a work entry changes
_OUTCOME_NAME = "outcome.json"
_ARRAYS = {"low.npy": "low_res", "high.npy": "high_res", "audio.npy": "audio"}
_TMP_PREFIX = ".tmp-"
# The modules whose code decides what a decoded video holds: a change in any of them makes the
# entries of an interrupted run stale (DVC reruns the stage for the same change).
_DECODING_MODULES = ("omni_r1.data.video", "omni_r1.data.shards", "omni_r1.data.masks", "omni_r1.data.paths",
                     "omni_r1.data.ffmpeg", "omni_r1.data.pipeline", "omni_r1.types")


def decoding_fingerprint() -> str:
    """sha256 of the source of the modules that decode a video into a record."""
    import importlib

    digest = hashlib.sha256()
    for name in _DECODING_MODULES:
        source = Path(importlib.import_module(name).__file__ or "")
        digest.update(name.encode() + b"\0" + source.read_bytes() + b"\0")
    return digest.hexdigest()


def _media_paths(rows: Sequence[ManifestRow]) -> list[str]:
    """Every file a video's record is made from: the video or its frames and audio, and PNG masks."""
    paths: set[str] = set()
    for row in rows:
        paths.update(p for p in (row.video_path, row.audio_path) if p)
        paths.update(row.frame_paths)
        for obj in row.mask_objects():
            paths.update(obj.get("pngs", ()))
    return sorted(paths)


def work_key(rows: Sequence[ManifestRow], root: Path, plan: SamplingPlan, fingerprint: str) -> str:
    """The key of a video's work entry: its rows, its files' size and mtime, the plan and the decoding code.

    A file that cannot be stat'ed gets no identity: the video is decoded again (and quarantined if
    it is still missing), never taken from an old entry.
    """
    files = []
    for relative in _media_paths(rows):
        try:
            stat = safe_join(root, relative).stat()
            files.append([relative, stat.st_size, stat.st_mtime_ns])
        except OSError:
            files.append([relative, None, uuid.uuid4().hex])
    identity = {"format": WORK_FORMAT, "code": fingerprint, "plan": asdict(plan), "files": files,
                "rows": [row.to_dict() for row in rows]}
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()


class ShardWork:
    """The work folder of the shard stage: one entry per decoded video, ``<key>/`` with its outcome and arrays.

    An entry is written in a temp folder and renamed into place, so a present entry is whole; temp
    folders left by a killed run are removed by ``discard_partial``.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    def check_owned(self) -> None:
        """Refuse a work folder that holds anything but work entries: ``clear`` would delete it."""
        if not self.path.is_dir():
            if self.path.exists():
                raise OutputOwnershipError(f"--work {self.path} is a file; give the shard stage a folder of its own")
            return
        foreign = sorted(p.name for p in self.path.iterdir() if not _is_work_entry(p))
        if foreign:
            raise OutputOwnershipError(
                f"--work {self.path} holds files that are not shard work entries ({', '.join(foreign[:3])}); "
                "choose an empty or new folder (default: <out>.work)"
            )

    def has(self, key: str) -> bool:
        return (self.path / key / _OUTCOME_NAME).is_file()

    def entries(self) -> list[str]:
        """Keys of the whole entries present now."""
        if not self.path.is_dir():
            return []
        return sorted(p.name for p in self.path.iterdir() if not p.name.startswith(".") and self.has(p.name))

    def save(self, key: str, outcome: ShardOutcome) -> None:
        """Write one video's outcome as the entry ``key``; on any failure (a full disk) leave no trace of it."""
        self.path.mkdir(parents=True, exist_ok=True)
        tmp = self.path / f"{_TMP_PREFIX}{key}-{uuid.uuid4().hex}"
        tmp.mkdir()
        try:
            if outcome.record is not None:
                for name, attribute in _ARRAYS.items():
                    with (tmp / name).open("wb") as handle:
                        np.save(handle, np.ascontiguousarray(getattr(outcome.record, attribute)), allow_pickle=False)
            (tmp / _OUTCOME_NAME).write_text(json.dumps(_outcome_json(outcome), sort_keys=True))
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        try:
            os.rename(tmp, self.path / key)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
            if not self.has(key):  # else another worker published the same video first: its entry is as good
                raise

    def load(self, key: str) -> ShardOutcome:
        """The outcome of entry ``key``, its arrays mapped from disk rather than read into memory."""
        folder = self.path / key
        data = json.loads((folder / _OUTCOME_NAME).read_text())
        record = None
        if data["record"] is not None:
            arrays = {attribute: _load_array(folder / name) for name, attribute in _ARRAYS.items()}
            record = VideoRecord(data["record"]["key"], data["record"]["split"], data["record"]["meta"],
                                 data["record"]["expressions"], **arrays)
        quarantine = tuple(QuarantineEntry(**entry) for entry in data["quarantine"])
        return ShardOutcome(data["video_id"], data["split"], data["samples"], record, quarantine, data["seconds"],
                            data["frames_decoded"])

    def discard_partial(self) -> None:
        """Remove temp folders of entries whose writer died before publishing them."""
        if self.path.is_dir():
            for tmp in self.path.glob(f"{_TMP_PREFIX}*"):
                shutil.rmtree(tmp, ignore_errors=True)

    def clear(self) -> None:
        """Remove the work entries (and nothing else), then the folder if that left it empty."""
        if not self.path.is_dir():
            return
        for entry in self.path.iterdir():
            if _is_work_entry(entry):
                shutil.rmtree(entry, ignore_errors=True)
        if not any(self.path.iterdir()):
            self.path.rmdir()


_WORK_ENTRY = re.compile(r"^(\.tmp-)?[0-9a-f]{64}(-[0-9a-f]{32})?$")


def _is_work_entry(path: Path) -> bool:
    """A folder the shard stage made in its work folder: ``<sha256 key>`` or ``.tmp-<key>-<uuid>``."""
    return path.is_dir() and not path.is_symlink() and _WORK_ENTRY.match(path.name) is not None


def _outcome_json(outcome: ShardOutcome) -> dict[str, Any]:
    record = outcome.record
    return {
        "video_id": outcome.video_id,
        "split": outcome.split,
        "samples": outcome.samples,
        "seconds": outcome.seconds,
        "frames_decoded": outcome.frames_decoded,
        "quarantine": [entry.to_dict() for entry in outcome.quarantine],
        "record": None if record is None else {"key": record.key, "split": record.split, "meta": record.meta,
                                               "expressions": record.expressions},
    }


def _load_array(path: Path) -> np.ndarray:
    # allow_pickle=False: the work folder is data, never code. Small arrays (and empty ones, which
    # cannot be mapped) are read; frames are mapped, so the parent never holds a whole shard's pixels.
    if path.stat().st_size < (1 << 20):
        return np.load(path, allow_pickle=False)
    return np.load(path, mmap_mode="r", allow_pickle=False)


@dataclass(frozen=True)
class ShardJob:
    """One video still to decode: its rows and the key of its work entry."""

    rows: tuple[ManifestRow, ...]
    key: str


def decode_to_work(job: ShardJob, root: Path, plan: SamplingPlan, work_dir: Path) -> ShardOutcome:
    """Decode one video into its work entry (runs in a fan-out worker); return the outcome without pixels."""
    outcome = shard_video(job.rows, root, plan)
    ShardWork(work_dir).save(job.key, outcome)
    return outcome.summary()


class ResumableShardRun:
    """The shard stage over a work folder: decode what is missing, then write shards from the entries in order.

    ``jobs`` are the videos to fan out to ``decode_to_work``; pass ``keep`` as the fan-out's result
    callback (results arrive in job order) and call ``close`` at the end. Entries of earlier runs
    are written in their place between fresh ones, so the shards are those of an uninterrupted run.
    """

    def __init__(self, groups: Sequence[Sequence[ManifestRow]], root: Path, plan: SamplingPlan, out_dir: Path,
                 work_dir: Path, videos_per_shard: int, protected: Sequence[Path] = ()) -> None:
        self.plan = plan
        guarded = (root, *protected)
        check_output_location(work_dir, guarded, what="--work")
        check_output_location(work_dir, (out_dir,), what="--work")
        self.work = ShardWork(work_dir)
        self.work.check_owned()
        self.sink = ShardSink(out_dir, videos_per_shard, guarded)
        self.work.discard_partial()
        fingerprint = decoding_fingerprint()
        self.keys = [work_key(rows, root, plan, fingerprint) for rows in groups]
        self.reused = [self.work.has(key) for key in self.keys]
        self._fresh = [i for i, reused in enumerate(self.reused) if not reused]
        self.jobs = [ShardJob(tuple(groups[i]), self.keys[i]) for i in self._fresh]
        self._written = 0  # videos written into the shards so far, in video order
        self._arrived = 0  # fresh outcomes received so far

    @property
    def tally(self) -> ShardTally:
        return self.sink.tally

    def keep(self, outcome: ShardOutcome) -> ShardOutcome:
        """Result callback of the fan-out: write every video up to this fresh one from the work folder."""
        self._write_through(self._fresh[self._arrived] + 1)
        self._arrived += 1
        return outcome

    def close(self) -> dict[str, Any]:
        """Write the remaining videos, the quarantine report and the manifest; then drop the work folder."""
        if self._arrived != len(self._fresh):
            raise RuntimeError(f"the shard fan-out returned {self._arrived} of {len(self._fresh)} videos; "
                               "rerun the shard stage (finished videos are kept in the work folder)")
        self._write_through(len(self.keys))
        manifest = self.sink.close(self.plan)
        self.work.clear()
        return manifest

    def abort(self) -> None:
        """After a failure: no half-written shard stays behind; decoded videos stay in the work folder."""
        self.sink.abort()

    def _write_through(self, stop: int) -> None:
        while self._written < stop:
            index = self._written
            self.sink.keep(self.work.load(self.keys[index]), reused=self.reused[index])
            self._written += 1


def quarantine_json(entries: Sequence[QuarantineEntry]) -> list[dict[str, str]]:
    return [e.to_dict() for e in sorted(entries, key=lambda e: (e.sample_id, e.check))]


def featurize_shard(entry: dict[str, Any], shard_dir: Path, out_dir: Path, params: FeaturesParams) -> dict[str, Any]:
    """Run the real Qwen2.5-Omni processor over one verified shard; write ``<shard>.safetensors`` beside it.

    Runs inside a fan-out worker, so it builds its own processor (the tiny tokenizer is cached on disk).
    """
    from omni_r1.data.features import FeatureRecord, compute_features, save_feature_shard
    from omni_r1.models.processor import build_processor

    processor = build_processor(params.tokenizer, min_pixels=params.min_pixels, max_pixels=params.max_pixels,
                                mel_bins=params.mel_bins)
    limit = int(processor.feature_extractor.n_samples)  # the audio encoder's window: 30 s
    records, truncated = [], []
    for record in iter_shard(shard_dir, entry["name"]):
        meta = record["meta"]
        audio = record["audio"]
        if audio.size > limit:  # as the official Qwen2.5-Omni processing does; counted, never silent
            truncated.append(meta["video_id"])
            audio = audio[:limit]
        inputs = compute_features(processor, record["low"], audio, sample_fps=float(meta["sample_fps"]))
        records.append(FeatureRecord(key=record["key"], video_id=meta["video_id"], split=meta["split"], **inputs))
    name = entry["name"].removesuffix(".tar") + ".safetensors"
    summary = save_feature_shard(out_dir / name, records)
    return {"name": name, "split": entry["split"], "shard": entry["name"], "records": summary["records"],
            "bytes": summary["bytes"], "sha256": summary["sha256"], "audio_truncated_to_30s": truncated}
