"""A summary of a prepared data folder (``data/`` or ``omni-r1 prepare --out``), per split.

Reads only metadata: the shard manifest and each record's ``meta.json``/``expressions.json`` (the
arrays are skipped), and both quarantine reports (validation and shard).
"""

from __future__ import annotations

import io
import json
import tarfile
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from omni_r1.data.paths import safe_join
from omni_r1.data.shards import load_manifest, verified_shards

QUARANTINE_FILES = ("interim/quarantine.json", "shards/quarantine.json")


def summarise(out_dir: Path) -> dict[str, Any]:
    """``{"splits": {split: {...}}, "quarantine": [...], "quarantined": n}`` for a prepared folder."""
    shard_dir = out_dir / "shards"
    load_manifest(shard_dir)  # a clear error when the folder was never prepared
    splits: dict[str, dict[str, Any]] = {}
    for split, metas in _metas_by_split(shard_dir).items():
        splits[split] = _split_summary(metas)
    quarantine = _quarantine(out_dir)
    return {"root": str(out_dir), "splits": splits, "quarantined": len(quarantine), "quarantine": quarantine}


def _metas_by_split(shard_dir: Path) -> dict[str, list[dict[str, Any]]]:
    found: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for entry in verified_shards(shard_dir):
        # tarfile reads members as bytes and never extracts, so member names cannot escape anything.
        with tarfile.open(safe_join(shard_dir, entry["name"])) as tar:
            members = {m.name: m for m in tar.getmembers() if m.isfile()}
            for name, member in sorted(members.items()):
                if name.endswith(".meta.json"):
                    key = name.removesuffix(".meta.json")
                    meta = json.loads(_read(tar, member))
                    meta["expressions"] = json.loads(_read(tar, members[f"{key}.expressions.json"]))
                    meta["low_shape"] = _npy_shape(_read(tar, members[f"{key}.low.npy"]))
                    meta["high_shape"] = _npy_shape(_read(tar, members[f"{key}.high.npy"]))
                    found[entry["split"]].append(meta)
    return dict(sorted(found.items()))


def _read(tar: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    handle = tar.extractfile(member)
    if handle is None:
        raise ValueError(f"{member.name} is not a regular file")
    return handle.read()


def _npy_shape(data: bytes) -> list[int]:
    version = np.lib.format.read_magic(io.BytesIO(data[:8]))
    stream = io.BytesIO(data)
    stream.seek(8)
    header = (np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0)(stream)
    return list(header[0])


def _split_summary(metas: list[dict[str, Any]]) -> dict[str, Any]:
    sampled = [len(m["frame_indices"]) for m in metas]
    native = [int(m["num_frames"]) for m in metas]
    with_audio = [m for m in metas if m["has_audio"]]
    types: dict[str, int] = defaultdict(int)
    for m in metas:
        for e in m["expressions"]:
            types[e["exp_type"]] += 1
    return {
        "videos": len(metas),
        "samples": sum(len(m["expressions"]) for m in metas),
        "expression_types": dict(sorted(types.items())),
        "sampled_frames": _stats(sampled),
        "native_frames": _stats(native),
        "native_sizes": sorted({f"{m['width']}x{m['height']}" for m in metas}),
        "low_res_sizes": sorted({f"{s[2]}x{s[1]}" for m in metas if len(s := m["low_shape"]) == 4}),
        "high_res_sizes": sorted({f"{s[2]}x{s[1]}" for m in metas if len(s := m["high_shape"]) == 4}),
        "videos_with_audio": len(with_audio),
        "audio_seconds": _stats([float(m["duration"]) for m in with_audio]),
    }


def _stats(values: list[float] | list[int]) -> dict[str, float]:
    if not values:
        return {"min": 0, "mean": 0, "max": 0, "total": 0}
    return {"min": min(values), "mean": round(sum(values) / len(values), 3), "max": max(values),
            "total": round(sum(values), 3)}


def _quarantine(out_dir: Path) -> list[dict[str, str]]:
    entries = []
    for relative in QUARANTINE_FILES:
        path = out_dir / relative
        if path.is_file():
            entries.extend(json.loads(path.read_text()))
    return entries
