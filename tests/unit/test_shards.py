"""WebDataset shards: atomic writer, sha256 manifest, typed reader, and refusal of bad keys and bad shards."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import numpy as np
import pytest

from omni_r1.data.masks import encode_rle
from omni_r1.data.paths import PathEscapeError, check_key, safe_join, sample_key
from omni_r1.data.shards import (
    ShardIntegrityError,
    ShardSetWriter,
    VideoRecord,
    load_manifest,
    read_samples,
    verified_shards,
)
from omni_r1.types import MaskTrack, ObjectMasks

H, W, T = 12, 16, 3


def _record(key: str, split: str, n_expressions: int = 2) -> VideoRecord:
    rng = np.random.default_rng(len(key))
    mask = np.zeros((H, W), bool)
    mask[2:6, 3:9] = True
    track = MaskTrack(H, W, 5, (ObjectMasks("1", (encode_rle(mask), None, None, encode_rle(mask), None)),))
    expressions = [
        {"sample_id": f"{key}/{i}", "exp_id": str(i), "expression": f"thing {i}", "exp_type": "referring", "cue": "",
         "benchmark_split": split, "needs_audio": False, "masks": json.loads(track.to_json())}
        for i in range(n_expressions)
    ]
    meta = {"video_id": key, "split": split, "frame_indices": [0, 2, 3], "frame_times": [0.0, 0.2, 0.3],
            "has_audio": True, "frames_decoded": 5, "sample_fps": 2.0}
    return VideoRecord(key, split, meta, expressions, rng.integers(0, 255, (T, 6, 8, 3), dtype=np.uint8),
                       rng.integers(0, 255, (T, H, W, 3), dtype=np.uint8), rng.standard_normal(1600).astype(np.float32))


def _write(out: Path, records: list[VideoRecord], per_shard: int = 2) -> dict:
    writer = ShardSetWriter(out, per_shard)
    for record in records:
        writer.write(record)
    return writer.close()


def test_round_trip_and_manifest(tmp_path: Path) -> None:
    records = [_record(f"v{i}", "train") for i in range(3)] + [_record("t0", "test", 1)]
    manifest = _write(tmp_path, records)
    names = [e["name"] for e in manifest["shards"]]
    assert names == ["test-000000.tar", "train-000000.tar", "train-000001.tar"]
    assert [e["samples"] for e in manifest["shards"]] == [1, 4, 2]
    assert not list(tmp_path.glob("*.tmp")) and load_manifest(tmp_path) == manifest
    samples = list(read_samples(tmp_path, "train"))
    assert [s.key for s in samples] == ["v0/0", "v0/1", "v1/0", "v1/1", "v2/0", "v2/1"]
    first = samples[0]
    np.testing.assert_array_equal(first.low_res, records[0].low_res)
    np.testing.assert_array_equal(first.audio, records[0].audio)
    assert first.frame_indices == (0, 2, 3) and first.expression == "thing 0" and first.split == "train"
    target = first.target_masks()
    assert target.shape == (T, H, W) and target[0].sum() == 24 and target[1].sum() == 0 and target[2].sum() == 24


def test_modified_shard_is_refused(tmp_path: Path) -> None:
    _write(tmp_path, [_record("v0", "train")])
    shard = tmp_path / "train-000000.tar"
    data = bytearray(shard.read_bytes())
    data[700] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(ShardIntegrityError, match="does not match its sha256"):
        verified_shards(tmp_path)


def test_shard_cut_in_its_end_padding_is_refused(tmp_path: Path) -> None:
    """A tar cut inside its end padding reads back with no error; only the checksum catches it."""
    _write(tmp_path, [_record("v0", "train")])
    shard = tmp_path / "train-000000.tar"
    shard.write_bytes(shard.read_bytes()[:-512])
    with tarfile.open(shard) as tar:
        assert tar.getnames()  # tarfile itself is happy
    with pytest.raises(ShardIntegrityError, match="sha256"):
        list(read_samples(tmp_path))


def test_missing_manifest_means_incomplete(tmp_path: Path) -> None:
    with pytest.raises(ShardIntegrityError, match="incomplete"):
        list(read_samples(tmp_path))


def test_keys_never_escape(tmp_path: Path) -> None:
    with pytest.raises(PathEscapeError):
        check_key("../x")
    with pytest.raises(PathEscapeError):
        check_key("a/b")
    with pytest.raises(PathEscapeError):
        check_key("a.b")
    with pytest.raises(PathEscapeError):
        ShardSetWriter(tmp_path, 2).write(_record("../x", "train"))
    for hostile in ("../x", "MeViS/abc", "a.b.c", "/etc/passwd", ".."):
        key = sample_key(hostile)
        assert check_key(key) == key and "/" not in key and ".." not in key
    assert sample_key("synth_0001") == "synth_0001"
    assert sample_key("a/b") != sample_key("a_b")


def test_safe_join(tmp_path: Path) -> None:
    assert safe_join(tmp_path, "videos/a.mp4") == (tmp_path / "videos/a.mp4").resolve()
    for hostile in ("../x", "videos/../../x", "/etc/passwd", ""):
        with pytest.raises(PathEscapeError):
            safe_join(tmp_path, hostile)
    outside = tmp_path.parent / "outside-target"
    outside.mkdir(exist_ok=True)
    (tmp_path / "link").symlink_to(outside)
    with pytest.raises(PathEscapeError):
        safe_join(tmp_path, "link/file")


def test_published_files_are_readable(tmp_path: Path) -> None:
    """Temp files are created 0600; what a stage publishes must be readable by the team (0644)."""
    _write(tmp_path, [_record("v0", "train")])
    for path in (tmp_path / "train-000000.tar", tmp_path / "manifest.json"):
        assert path.stat().st_mode & 0o777 == 0o644, path


def test_every_rank_reads_whole_shards_under_a_launcher(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Under DeepSpeed's launcher WORLD_SIZE > 1; the trainer slices batches by rank, so each rank reads every
    # shard (webdataset otherwise refuses without an explicit node splitter).
    _write(tmp_path, [_record(f"v{i}", "train") for i in range(2)])
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert [s.key for s in read_samples(tmp_path, "train")] == ["v0/0", "v0/1", "v1/0", "v1/1"]
