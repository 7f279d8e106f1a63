"""Videos -> WebDataset records -> atomic shards with a sha256 manifest, and the typed reader.

One record per (video, split) holds everything the two systems need, decoded once:

    <key>.meta.json         video-level metadata: ids, native fps/frames/size, sampled frame indices and times
    <key>.expressions.json  every expression of the video in this split, each with its MaskTrack (RLE per native frame)
    <key>.low.npy           (T, h, w, 3) uint8 low-res frames for the Global Reasoning System
    <key>.high.npy          (T, H, W, 3) uint8 high-res keyframe candidates for the Detail Understanding System
    <key>.audio.npy         (N,) float32 16 kHz mono audio (N == 0 without audio)

Frames are stored once per video, not once per expression; the reader expands a record into one
``Sample`` per expression. Shards are written under a temp name and renamed when whole; the
manifest (sha256 and counts per shard) is written last and is what marks the shard set complete.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
from PIL import Image

from omni_r1.data.masks import encode_rle
from omni_r1.fileio import atomic_write_text, publish
from omni_r1.data.paths import check_key, safe_join, sample_key
from omni_r1.data.video import (
    MediaError,
    decode_audio,
    decode_video,
    fit_size,
    frame_times_and_lead,
    load_frames,
    sample_indices,
)
from omni_r1.types import AUDIO_RATE, SPLITS, ManifestRow, MaskTrack, ObjectMasks, Sample

MANIFEST_NAME = "manifest.json"
MEMBER_MTIME = 946_684_800  # 2000-01-01 UTC: every tar member's mtime, so that shards are reproducible
_EXPRESSION_FIELDS = ("sample_id", "exp_id", "expression", "exp_type", "cue", "benchmark_split", "needs_audio")


class ShardIntegrityError(RuntimeError):
    """A shard does not match its manifest (truncated, modified, or missing)."""


@dataclass(frozen=True)
class SamplingPlan:
    """How frames are sampled and sized for the two systems (from ``params.data``)."""

    fps: float
    max_frames: int
    low_res: int
    high_res: int
    low_pixels: int = 0  # pixel budgets on top of the longest sides (0: none); data.low_res_pixels / high_res_pixels
    high_pixels: int = 0


@dataclass(frozen=True)
class VideoRecord:
    """One decoded video with its expressions, ready to be written as a WebDataset record."""

    key: str
    split: str
    meta: dict[str, Any]
    expressions: list[dict[str, Any]]
    low_res: np.ndarray
    high_res: np.ndarray
    audio: np.ndarray

    @property
    def frames_decoded(self) -> int:
        """Native frames the decoder went through (the benchmark's unit)."""
        return int(self.meta["frames_decoded"])

    def tar_members(self) -> list[tuple[str, tuple[bytes | memoryview, ...]]]:
        """(name suffix, parts) of each tar member, in name order; the parts joined are the member's bytes.

        An array is an npy header plus a view of its pixels, not a copy: serialising ~9 MB of frames
        per 360p video into fresh bytes cost the shard stage's writing thread a large share of its
        time (bench/shard_throughput.py).
        """
        check_key(self.key)
        return [
            ("audio.npy", _npy_parts(self.audio)),
            ("expressions.json", (_json_bytes(self.expressions),)),
            ("high.npy", _npy_parts(self.high_res)),
            ("low.npy", _npy_parts(self.low_res)),
            ("meta.json", (_json_bytes(self.meta),)),
        ]

    def to_wds(self) -> dict[str, Any]:
        """The record as a WebDataset sample dict (``__key__`` plus one bytes value per member)."""
        return {"__key__": check_key(self.key), **{name: b"".join(parts) for name, parts in self.tar_members()}}


def group_by_video(rows: Iterable[ManifestRow]) -> list[list[ManifestRow]]:
    """Rows grouped by (video, split), in a stable order: one decode per group."""
    groups: dict[tuple[str, str], list[ManifestRow]] = {}
    for row in rows:
        groups.setdefault((row.split, row.video_id), []).append(row)
    return [groups[k] for k in sorted(groups)]


def build_record(root: Path, rows: Sequence[ManifestRow], plan: SamplingPlan) -> VideoRecord:
    """Decode one video once and attach all its expressions. Raises ``MediaError`` for bad media."""
    first = rows[0]
    low_size = fit_size(first.width, first.height, plan.low_res, plan.low_pixels)
    high_size = fit_size(first.width, first.height, plan.high_res, plan.high_pixels)
    if first.media_kind == "video":
        path = safe_join(root, first.video_path)
        times, lead = frame_times_and_lead(path)
        indices = sample_indices(times, plan.fps, plan.max_frames)
        duration = float(times[-1] + 1.0 / first.fps) if len(times) else 0.0
        decoded = decode_video(path, indices.tolist(), low_size, high_size, with_audio=first.has_audio,
                               duration=duration, video_lead=lead)
        low, high, audio = decoded.low_res, decoded.high_res, decoded.audio
        frames_decoded = len(times)
    else:
        times = np.arange(first.num_frames, dtype=np.float64) / first.fps
        indices = sample_indices(times, plan.fps, plan.max_frames)
        duration = first.num_frames / first.fps
        paths = [safe_join(root, first.frame_paths[i]) for i in indices]
        low, high = load_frames(paths, low_size, high_size)
        audio = (decode_audio(safe_join(root, first.audio_path), duration) if first.has_audio
                 else np.zeros((0,), np.float32))
        frames_decoded = len(indices)
    meta = {
        "dataset": first.dataset,
        "video_id": first.video_id,
        "split": first.split,
        "source": first.source_file,
        "fps": first.fps,
        "num_frames": first.num_frames,
        "width": first.width,
        "height": first.height,
        "duration": duration,
        "has_audio": bool(first.has_audio and audio.size > 0),
        "audio_rate": AUDIO_RATE,
        "frame_indices": [int(i) for i in indices],
        "frame_times": [round(float(times[i]), 6) for i in indices],
        "sample_fps": plan.fps,
        "frames_decoded": frames_decoded,
    }
    expressions = [_expression_entry(root, row) for row in rows]
    return VideoRecord(sample_key(f"{first.video_id}"), first.split, meta, expressions, low, high, audio)


def _expression_entry(root: Path, row: ManifestRow) -> dict[str, Any]:
    entry = {name: getattr(row, name) for name in _EXPRESSION_FIELDS}
    entry["masks"] = json.loads(_mask_track(root, row).to_json())
    return entry


def _mask_track(root: Path, row: ManifestRow) -> MaskTrack:
    """The expression's masks as RLE per native frame; PNG masks (RefAVS) are encoded here, once."""
    objects = []
    for obj in row.mask_objects():
        if "pngs" in obj:
            rles = tuple(_png_rle(safe_join(root, p)) for p in obj["pngs"])
        else:
            rles = tuple(obj["rles"])
        objects.append(ObjectMasks(str(obj["obj_id"]), rles))
    return MaskTrack(row.height, row.width, row.num_frames, tuple(objects))


def _png_rle(path: Path) -> dict[str, Any] | None:
    try:
        with Image.open(path) as img:
            mask = np.asarray(img.convert("L")) > 0
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:  # truncated, corrupt, not a PNG
        raise MediaError(path, f"mask PNG does not decode ({err})", "re-export the mask PNG") from err
    return encode_rle(mask) if mask.any() else None


# ----------------------------------------------------------------------------------------------- writing


class _TarShard:
    """One uncompressed ustar file written straight from the records' buffers, hashed on its way to disk.

    webdataset's TarWriter goes through tarfile's stream mode, which copies every member in 10 KiB
    pieces, and the finished shard then had to be read back for its sha256: together about 70-100 ms
    per 360p video in the one thread that writes (bench/shard_throughput.py, 2 cores). The format
    is the pax tar that webdataset and ``tarfile`` read: a 512-byte header per member (plus a pax
    header only for a name over 100 characters), its data padded to 512 bytes, two zero blocks, then
    zeros up to tar's 10 KiB record size.
    """

    def __init__(self, path: Path) -> None:
        self._path = path
        self._file = path.open("wb")
        self._digest = hashlib.sha256()
        self._written = 0

    def add(self, name: str, parts: Sequence[bytes | memoryview]) -> None:
        info = tarfile.TarInfo(name)
        info.size = sum(memoryview(part).nbytes for part in parts)
        # The member attributes webdataset's TarWriter wrote, but a fixed whole-second mtime: a float
        # one costs each member an extra pax header block, and the clock would make the bytes of
        # two runs over the same videos differ (DVC would see new shards; a resumed run must match).
        info.mtime = MEMBER_MTIME
        info.mode = 0o444
        info.uname = info.gname = "bigdata"
        self._write(info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape"))
        for part in parts:
            self._write(part)
        self._write(tarfile.NUL * (-info.size % tarfile.BLOCKSIZE))

    def discard(self) -> None:
        """Close the file and delete it: the shard is not finished and never will be."""
        self._file.close()
        self._path.unlink(missing_ok=True)

    def close(self) -> str:
        """End the archive, close the file and return its sha256."""
        self._write(tarfile.NUL * (2 * tarfile.BLOCKSIZE))
        self._write(tarfile.NUL * (-self._written % tarfile.RECORDSIZE))
        self._file.close()
        return self._digest.hexdigest()

    def _write(self, data: bytes | memoryview) -> None:
        self._digest.update(data)  # hashlib releases the GIL on large buffers
        self._file.write(data)
        self._written += memoryview(data).nbytes


class ShardSetWriter:
    """Writes records into ``<split>-%06d.tar`` shards of at most ``videos_per_shard`` records each.

    Each shard is written to a temp file in the same directory and renamed when closed, so a
    reader never sees half a shard. ``close()`` writes the manifest last.
    """

    def __init__(self, out_dir: Path, videos_per_shard: int) -> None:
        self.out_dir = out_dir
        self.videos_per_shard = videos_per_shard
        self.entries: list[dict[str, Any]] = []
        self._open: dict[str, tuple[Any, Any, Path, int, int]] = {}
        self._keys: dict[str, list[str]] = {}
        self._counts: dict[str, int] = {}
        out_dir.mkdir(parents=True, exist_ok=True)

    def write(self, record: VideoRecord) -> None:
        members = record.tar_members()  # checks the key before any file is made
        state = self._open.get(record.split)
        if state is not None and state[3] >= self.videos_per_shard:
            self._finish(record.split)
            state = None
        if state is None:
            index = self._counts.get(record.split, 0)
            self._counts[record.split] = index + 1
            fd, tmp_name = tempfile.mkstemp(dir=self.out_dir, prefix=f".{record.split}-", suffix=".tar.tmp")
            os.close(fd)
            writer = _TarShard(Path(tmp_name))
            state = (Path(tmp_name), writer, self.out_dir / f"{record.split}-{index:06d}.tar", 0, 0)
        tmp, writer, final, videos, samples = state
        for name, parts in members:
            writer.add(f"{record.key}.{name}", parts)
        self._keys.setdefault(record.split, []).append(record.key)
        self._open[record.split] = (tmp, writer, final, videos + 1, samples + len(record.expressions))

    def _finish(self, split: str) -> None:
        tmp, writer, final, videos, samples = self._open.pop(split)
        digest = writer.close()
        publish(tmp, final)
        self.entries.append({"name": final.name, "split": split, "videos": videos, "samples": samples,
                             "sha256": digest, "bytes": final.stat().st_size, "keys": self._keys.pop(split, [])})

    def abort(self) -> None:
        """Close and delete the shards still being written (a failed run leaves no ``.tmp`` tars)."""
        for split in list(self._open):
            tmp, writer, *_ = self._open.pop(split)
            writer.discard()

    def close(self, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        for split in sorted(self._open):
            self._finish(split)
        manifest = {"shards": sorted(self.entries, key=lambda e: e["name"]), **(extra or {})}
        atomic_write_text(self.out_dir / MANIFEST_NAME, json.dumps(manifest, indent=2, sort_keys=True))
        return manifest


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ----------------------------------------------------------------------------------------------- reading


_SHARD_NAME = re.compile(r"^(?P<split>[a-z]+)-\d{6}\.tar$")
_RERUN = "rerun the shard stage (dvc repro shard) instead of editing the manifest"


def load_manifest(shard_dir: Path) -> dict[str, Any]:
    """The shard manifest, cross-checked: every entry well formed, names and keys unique, split as named."""
    path = shard_dir / MANIFEST_NAME
    if not path.is_file():
        raise ShardIntegrityError(f"{path} is missing: the shard set is incomplete; rerun the shard stage")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise ShardIntegrityError(f"{path} is not readable JSON ({err}); {_RERUN}") from err
    if not isinstance(manifest, dict) or not isinstance(manifest.get("shards"), list):
        raise ShardIntegrityError(f"{path} must be an object with a 'shards' list; {_RERUN}")
    names: set[str] = set()
    keys: dict[str, str] = {}
    for entry in manifest["shards"]:
        _check_entry(path, entry, names, keys)
    return manifest


def _check_entry(path: Path, entry: Any, names: set[str], keys: dict[str, str]) -> None:
    """One manifest entry: its fields, a name of its split, and names and keys seen nowhere else."""
    fields = {"name": str, "split": str, "videos": int, "samples": int, "sha256": str, "keys": list}
    if not isinstance(entry, dict) or any(not isinstance(entry.get(k), t) for k, t in fields.items()):
        raise ShardIntegrityError(f"{path}: entry {str(entry)[:120]} lacks one of {', '.join(fields)}; {_RERUN}")
    name, split = entry["name"], entry["split"]
    match = _SHARD_NAME.match(name)
    if match is None or split not in SPLITS or match["split"] != split:
        raise ShardIntegrityError(f"{path}: shard {name!r} is listed under split {split!r}; a {split}-NNNNNN.tar "
                                  f"shard holds that split only; {_RERUN}")
    if name in names:
        raise ShardIntegrityError(f"{path}: shard {name!r} is listed twice; {_RERUN}")
    names.add(name)
    if len(entry["keys"]) != entry["videos"]:
        raise ShardIntegrityError(f"{path}: shard {name!r} lists {len(entry['keys'])} keys for {entry['videos']} "
                                  f"videos; {_RERUN}")
    for key in entry["keys"]:
        if not isinstance(key, str) or key in keys:
            raise ShardIntegrityError(f"{path}: key {str(key)[:100]!r} of shard {name!r} is also in shard "
                                      f"{keys.get(str(key), name)!r}; {_RERUN}")
        keys[key] = name


def verified_shards(shard_dir: Path, split: str | None = None) -> list[dict[str, Any]]:
    """Manifest entries of ``split`` (all when None) whose files match their sha256; raise on any mismatch.

    A tar cut inside its end padding reads back without error, so the checksum is the only guard.
    """
    entries = [e for e in load_manifest(shard_dir)["shards"] if split is None or e["split"] == split]
    for entry in entries:
        _verify(shard_dir, entry)
    return entries


def _verify(shard_dir: Path, entry: dict[str, Any]) -> None:
    path = safe_join(shard_dir, entry["name"])
    if not path.is_file():
        raise ShardIntegrityError(f"{path} is listed in the manifest but missing; rerun the shard stage")
    if sha256_file(path) != entry["sha256"]:
        raise ShardIntegrityError(f"{path} does not match its sha256 in {MANIFEST_NAME} (truncated or modified); "
                                  "rerun the shard stage (dvc repro shard)")


def iter_records(shard_dir: Path, split: str | None = None) -> Iterator[dict[str, Any]]:
    """Raw decoded records (meta, expressions, arrays) from verified shards, via webdataset."""
    for entry in verified_shards(shard_dir, split):
        yield from _entry_records(shard_dir, entry)


def iter_shard(shard_dir: Path, name: str) -> Iterator[dict[str, Any]]:
    """Records of the one shard ``name`` of the manifest, verified first."""
    entries = [e for e in load_manifest(shard_dir)["shards"] if e["name"] == name]
    if not entries:
        raise ShardIntegrityError(f"{name} is not in {shard_dir / MANIFEST_NAME}; rerun the shard stage")
    _verify(shard_dir, entries[0])
    yield from _entry_records(shard_dir, entries[0])


def _every_node(urls):
    """webdataset's node splitter that keeps every url on every rank."""
    return urls


def _entry_records(shard_dir: Path, entry: dict[str, Any]) -> Iterator[dict[str, Any]]:
    import webdataset as wds

    url = str(safe_join(shard_dir, entry["name"]))
    count = 0
    # Every rank reads whole shards itself (the trainer slices batches by rank), so no node splitting: without
    # this, webdataset refuses to read under WORLD_SIZE > 1 ("you need to add an explicit nodesplitter").
    for raw in wds.WebDataset(url, shardshuffle=False, empty_check=False, nodesplitter=_every_node):
        count += 1
        record = _decode_record(raw)
        _check_record(record, entry, url, count)
        yield record
    if count != entry["videos"]:
        raise ShardIntegrityError(f"{url} holds {count} records, the manifest says {entry['videos']}; "
                                  "rerun the shard stage")


def _check_record(record: dict[str, Any], entry: dict[str, Any], url: str, position: int) -> None:
    """A record belongs where the manifest puts it: the entry's split, the entry's key at its position."""
    split = record["meta"].get("split") if isinstance(record["meta"], dict) else None
    if split != entry["split"]:
        raise ShardIntegrityError(f"shard {entry['name']} ({url}) holds a {split!r} record ({record['key']!r}) but "
                                  f"is listed under split {entry['split']!r}; {_RERUN}")
    keys = entry["keys"]
    if position > len(keys) or keys[position - 1] != record["key"]:
        raise ShardIntegrityError(f"shard {entry['name']} ({url}) holds record {record['key']!r} where the manifest "
                                  f"lists {keys[position - 1] if position <= len(keys) else 'nothing'!r}; {_RERUN}")


def read_samples(shard_dir: Path, split: str | None = None) -> Iterator[Sample]:
    """Typed samples, one per (video, expression), from the verified shards of ``split``."""
    for record in iter_records(shard_dir, split):
        yield from samples_of(record)


def samples_of(record: dict[str, Any]) -> Iterator[Sample]:
    """Expand one decoded video record into its samples (the arrays are shared, not copied)."""
    meta = record["meta"]
    for expression in record["expressions"]:
        masks = MaskTrack.from_json(json.dumps(expression["masks"]))
        sample_meta = {**meta, **{k: v for k, v in expression.items() if k != "masks"}}
        yield Sample(
            key=f"{record['key']}/{expression['exp_id']}",
            meta=sample_meta,
            frame_indices=tuple(meta["frame_indices"]),
            frame_times=tuple(meta["frame_times"]),
            low_res=record["low"],
            high_res=record["high"],
            audio=record["audio"],
            masks=masks,
        )


def _decode_record(raw: dict[str, Any]) -> dict[str, Any]:
    missing = [k for k in ("meta.json", "expressions.json", "low.npy", "high.npy", "audio.npy") if k not in raw]
    if missing:
        raise ShardIntegrityError(f"record {raw.get('__key__')!r} in {raw.get('__url__')} lacks {missing}")
    return {
        "key": raw["__key__"],
        "meta": json.loads(raw["meta.json"]),
        "expressions": json.loads(raw["expressions.json"]),
        "low": _npy_load(raw["low.npy"]),
        "high": _npy_load(raw["high.npy"]),
        "audio": _npy_load(raw["audio.npy"]),
    }


def _json_bytes(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True).encode()


def _npy_parts(array: np.ndarray) -> tuple[bytes, memoryview]:
    """The bytes ``np.save`` writes, as its header plus a view of the array's memory (no copy)."""
    array = np.ascontiguousarray(array)
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, np.lib.format.header_data_from_array_1_0(array))
    # Flattened first: memoryview cannot cast an N-d view with a zero in its shape (no frames).
    return header.getvalue(), memoryview(array.reshape(-1)).cast("B")


def _npy_load(data: bytes) -> np.ndarray:
    # allow_pickle=False: a shard is untrusted data and must never run code when read.
    return np.load(io.BytesIO(data), allow_pickle=False)
