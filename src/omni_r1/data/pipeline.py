"""The data stages as library calls: ingest, validate, shard one video, and summarise what was skipped.

Stages (``stages/*.py``) parse arguments, load params and call one function here; the fan-out of
``shard_video`` over videos is done by the stage through a Prefect task runner.
"""

from __future__ import annotations

import shutil
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from omni_r1.config import DataParams, FeaturesParams, IngestParams
from omni_r1.data.formats import read_layout
from omni_r1.data.shards import SamplingPlan, ShardSetWriter, VideoRecord, build_record, iter_shard
from omni_r1.fileio import atomic_write_json
from omni_r1.data.video import MediaError
from omni_r1.types import ManifestRow, QuarantineEntry


def ingest(fmt: str, root: Path, params: IngestParams) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Parse a dataset layout into the manifest dataframe (one row per (video, expression)) and metrics."""
    rows = read_layout(fmt, root, refavs_fps=params.refavs_fps, revos_fps=params.revos_fps)
    frame = pd.DataFrame([r.to_dict() for r in rows], columns=list(ManifestRow.__dataclass_fields__))
    metrics = {
        "rows": len(rows),
        "videos": int(frame["video_id"].nunique()) if rows else 0,
        "parse_errors": int((frame["ingest_error"] != "").sum()) if rows else 0,
        **{f"split_{k}": v for k, v in sorted(Counter(r.split for r in rows).items())},
        **{f"type_{k}": v for k, v in sorted(Counter(r.exp_type for r in rows).items())},
    }
    return frame, metrics


def rows_from_frame(frame: pd.DataFrame) -> list[ManifestRow]:
    return [ManifestRow.from_dict(record) for record in frame.to_dict("records")]


def sampling_plan(data: DataParams) -> SamplingPlan:
    return SamplingPlan(fps=data.fps, max_frames=data.max_frames, low_res=data.low_res, high_res=data.high_res)


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
    except MediaError as err:
        entries = tuple(
            QuarantineEntry(row.sample_id, _relative(err.path, root), "shard", "decodable", err.reason, err.hint)
            for row in rows
        )
        return ShardOutcome(first.video_id, first.split, len(rows), None, entries, time.perf_counter() - start)
    return ShardOutcome(first.video_id, first.split, len(rows), record, (), time.perf_counter() - start,
                        record.frames_decoded)


def _relative(path: str, root: Path) -> str:
    candidate = Path(path)
    try:
        return candidate.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return path


@dataclass
class ShardTally:
    """Counts for the shard stage's metrics: what flowed, what was quarantined, how fast."""

    videos_ok: int = 0
    videos_quarantined: int = 0
    samples_ok: int = 0
    samples_quarantined: int = 0
    frames_decoded: int = 0
    decode_seconds: float = 0.0
    quarantine: list[QuarantineEntry] = field(default_factory=list)

    def add(self, outcome: ShardOutcome) -> None:
        if outcome.quarantine:
            self.videos_quarantined += 1
            self.samples_quarantined += outcome.samples
            self.quarantine.extend(outcome.quarantine)
        else:
            self.videos_ok += 1
            self.samples_ok += outcome.samples
        self.frames_decoded += outcome.frames_decoded
        self.decode_seconds += outcome.seconds

    def metrics(self, wall_seconds: float) -> dict[str, Any]:
        return {
            "videos_ok": self.videos_ok,
            "videos_quarantined": self.videos_quarantined,
            "samples_ok": self.samples_ok,
            "samples_quarantined": self.samples_quarantined,
            "frames_decoded": self.frames_decoded,
            "wall_seconds": round(wall_seconds, 3),
            "frames_per_second": round(self.frames_decoded / wall_seconds, 1) if wall_seconds > 0 else 0.0,
        }


class ShardSink:
    """Streams shard outcomes to disk in arrival order: records into the shard writer, counts into a tally.

    Stale shards of an earlier run are removed first so that they never mix with this one; the
    quarantine report and then the shard manifest (the completion marker) are written by ``close``.
    """

    def __init__(self, out_dir: Path, videos_per_shard: int) -> None:
        if out_dir.exists():
            shutil.rmtree(out_dir)
        self.out_dir = out_dir
        self.writer = ShardSetWriter(out_dir, videos_per_shard)
        self.tally = ShardTally()

    def keep(self, outcome: ShardOutcome) -> ShardOutcome:
        if outcome.record is not None:
            self.writer.write(outcome.record)
        self.tally.add(outcome)
        return outcome.summary()

    def close(self, plan: SamplingPlan) -> dict[str, Any]:
        atomic_write_json(self.out_dir / "quarantine.json", quarantine_json(self.tally.quarantine))
        return self.writer.close({"sampling": vars(plan)})


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
