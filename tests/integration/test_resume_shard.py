"""The shard stage resumes: after a kill or a full disk, a rerun decodes only the unfinished videos.

Six small synthetic videos go through ``stages.shard.main`` on tmp paths (thread executor, no
Prefect server). A reference run is uninterrupted; each interrupted run must end, after
one rerun, with byte-identical tars, manifest and quarantine report, while the rerun's metrics
(and a count of real decodes) show that the videos finished before the interruption were not
decoded again.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from omni_r1.data import pipeline
from omni_r1.data.pipeline import ShardWork, ingest, rows_from_frame, sampling_plan, shard_video
from omni_r1.data.shards import ShardSetWriter, group_by_video
from omni_r1.data.synthetic import SynthSpec, generate
from omni_r1.config import DataParams, IngestParams
from omni_r1.fileio import atomic_write_parquet
from stages import shard

REPO = Path(__file__).resolve().parents[2]
VIDEOS = 6
# The tests' own params file, so that they do not depend on the repository's: every key not in it
# takes its default from omni_r1.config.
PARAMS_YAML = "data:\n  format: video\n"
OVERRIDES = ("data.fps=2.0", "data.max_frames=6", "data.low_res=48", "data.high_res=64",
             "shard.videos_per_shard=2", "shard.fanout.task_runner=thread", "shard.fanout.workers=2")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(dataset root, manifest parquet) of six videos in the plain video layout; a params file beside them."""
    root = tmp_path_factory.mktemp("resume-synth")
    (root.parent / f"{root.name}-params.yaml").write_text(PARAMS_YAML)
    generate(root, "video", SynthSpec(videos=VIDEOS, seed=11, width=96, height=64, fps=10, seconds=1.5))
    frame, _ = ingest("video", root, IngestParams())
    manifest = root.parent / f"{root.name}-manifest.parquet"
    atomic_write_parquet(manifest, frame)
    return root, manifest


def _argv(dataset: tuple[Path, Path], run: Path) -> list[str]:
    root, manifest = dataset
    argv = ["--params", str(root.parent / f"{root.name}-params.yaml"), "--manifest", str(manifest), "--root", str(root),
            "--out", str(run / "shards"), "--work", str(run / "work"), "--metrics", str(run / "shard.json")]
    for override in OVERRIDES:
        argv += ["--set", override]
    return argv


@pytest.fixture(scope="module")
def reference(dataset: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shards of one uninterrupted run."""
    run = tmp_path_factory.mktemp("reference")
    assert shard.main(_argv(dataset, run)) == 0
    return run


def _files(run: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((run / "shards").iterdir())}


def _metrics(run: Path) -> dict:
    return json.loads((run / "shard.json").read_text())


def _video_ids_in(work: Path) -> set[str]:
    return {json.loads((work / key / "outcome.json").read_text())["video_id"] for key in ShardWork(work).entries()}


def _count_decodes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record the video id of every real decode from now on (the stage's own counter is checked apart)."""
    decoded: list[str] = []
    lock = threading.Lock()
    real = pipeline.build_record

    def counting(root, rows, plan):  # type: ignore[no-untyped-def]
        with lock:
            decoded.append(rows[0].video_id)
        return real(root, rows, plan)

    monkeypatch.setattr(pipeline, "build_record", counting)
    return decoded


def _assert_resumed(run: Path, reference: Path, done: set[str], decoded: list[str]) -> None:
    assert _files(run) == _files(reference)  # every tar, manifest.json and quarantine.json, byte for byte
    all_ids = set(_video_ids(reference))
    assert sorted(decoded) == sorted(all_ids - done), "only the unfinished videos may be decoded again"
    metrics = _metrics(run)
    assert (metrics["decoded_videos"], metrics["reused_videos"]) == (VIDEOS - len(done), len(done))
    assert metrics["videos_ok"] == VIDEOS and metrics["videos_quarantined"] == 0
    assert not (run / "work").exists(), "a finished run removes its work folder"


def _video_ids(reference: Path) -> list[str]:
    manifest = json.loads((reference / "shards" / "manifest.json").read_text())
    assert sum(entry["videos"] for entry in manifest["shards"]) == VIDEOS
    from omni_r1.data.shards import iter_records

    return [record["meta"]["video_id"] for record in iter_records(reference / "shards")]


def test_work_entries_write_the_same_bytes_as_direct_records(dataset: tuple[Path, Path], tmp_path: Path) -> None:
    """A record that went through the work folder (arrays mapped back from disk) makes the same tar."""
    root, manifest = dataset
    import pandas as pd

    groups = group_by_video(rows_from_frame(pd.read_parquet(manifest)))[:2]
    plan = sampling_plan(DataParams(fps=2.0, max_frames=6, low_res=48, high_res=64))
    outcomes = [shard_video(rows, root, plan) for rows in groups]
    work = ShardWork(tmp_path / "work")
    for index, outcome in enumerate(outcomes):
        work.save(f"k{index}", outcome)
    direct, via_work = ShardSetWriter(tmp_path / "direct", 8), ShardSetWriter(tmp_path / "via", 8)
    for index, outcome in enumerate(outcomes):
        assert outcome.record is not None
        direct.write(outcome.record)
        loaded = work.load(f"k{index}")
        assert loaded.summary() == outcome.summary()
        assert loaded.record is not None
        via_work.write(loaded.record)
    assert direct.close() == via_work.close()
    names = sorted(p.name for p in (tmp_path / "direct").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "via").iterdir()) and len(names) == 3  # 2 tars + manifest
    for name in names:
        assert (tmp_path / "direct" / name).read_bytes() == (tmp_path / "via" / name).read_bytes()


def test_a_failed_save_leaves_no_partial_entry(dataset: tuple[Path, Path], tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    root, manifest = dataset
    import numpy as np
    import pandas as pd

    rows = group_by_video(rows_from_frame(pd.read_parquet(manifest)))[0]
    outcome = shard_video(rows, root, sampling_plan(DataParams(fps=2.0, max_frames=6, low_res=48, high_res=64)))

    def full_disk(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np, "save", full_disk)
    work = ShardWork(tmp_path / "work")
    with pytest.raises(OSError, match="No space left"):
        work.save("key", outcome)
    assert not work.has("key") and list((tmp_path / "work").iterdir()) == []


@pytest.mark.parametrize("where", ["decoding", "assembling"])
def test_full_disk_then_rerun(dataset: tuple[Path, Path], reference: Path, tmp_path: Path,
                              monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, where: str) -> None:
    """ENOSPC after k videos, while decoding into the work folder or while writing the shards; then a rerun."""
    k = 2
    calls = {"n": 0}
    lock = threading.Lock()
    if where == "decoding":
        real_save = ShardWork.save

        def save(self: ShardWork, key: str, outcome: pipeline.ShardOutcome) -> None:
            with lock:
                calls["n"] += 1
                full = calls["n"] > k
            if full:  # the disk stays full for every later video too
                raise OSError(errno.ENOSPC, "No space left on device", str(self.path / key))
            real_save(self, key, outcome)

        monkeypatch.setattr(ShardWork, "save", save)
    else:
        real_write = ShardSetWriter.write

        def write(self: ShardSetWriter, record):  # type: ignore[no-untyped-def]
            calls["n"] += 1
            if calls["n"] > k:
                raise OSError(errno.ENOSPC, "No space left on device", str(self.out_dir))
            real_write(self, record)

        monkeypatch.setattr(ShardSetWriter, "write", write)
    caplog.clear()
    assert shard.main(_argv(dataset, tmp_path)) == 2  # a user's problem: one line, no traceback
    assert "No space left on device" in caplog.text
    assert not (tmp_path / "shards" / "manifest.json").exists(), "an unfinished run must not look finished"
    assert not list((tmp_path / "shards").glob(".*.tmp")), "no half-written shard may be left behind"
    assert not list((tmp_path / "work").glob(".tmp-*")), "no half-written entry may be left behind"
    done = _video_ids_in(tmp_path / "work")
    if where == "decoding":
        assert len(done) == k
    else:  # every video up to the one whose write failed was decoded; later ones may have been too
        assert k + 1 <= len(done) <= VIDEOS
    monkeypatch.undo()

    decoded = _count_decodes(monkeypatch)
    assert shard.main(_argv(dataset, tmp_path)) == 0
    _assert_resumed(tmp_path, reference, done, decoded)


_SLOW_STAGE = textwrap.dedent("""
    import sys, time
    from omni_r1.data import pipeline
    real = pipeline.build_record

    def slow(root, rows, plan):  # long enough for the test to kill the stage between two videos
        time.sleep(1.5)
        return real(root, rows, plan)

    pipeline.build_record = slow
    from stages import shard
    sys.exit(shard.main(sys.argv[1:]))
""")


@pytest.mark.slow
def test_killed_stage_resumes(dataset: tuple[Path, Path], reference: Path, tmp_path: Path,
                              monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGKILL the stage (in its own process) once a few videos are in the work folder, then rerun it."""
    env = {**os.environ, "TQDM_DISABLE": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_STAGE, *_argv(dataset, tmp_path)], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    work = ShardWork(tmp_path / "work")
    try:
        deadline = time.monotonic() + 240
        while len(work.entries()) < 2:
            assert proc.poll() is None, f"the stage ended before it was killed: {proc.stderr.read().decode()[-2000:]}"
            assert time.monotonic() < deadline, "no video was decoded within 240 s"
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the stage and its ffmpeg children: the group this test started
        proc.wait()
        assert proc.stderr is not None
        proc.stderr.close()
    done = _video_ids_in(tmp_path / "work")
    assert 2 <= len(done) < VIDEOS, f"the kill came too late to test a resume: {len(done)} videos were done"
    assert not (tmp_path / "shards" / "manifest.json").exists()

    decoded = _count_decodes(monkeypatch)
    assert shard.main(_argv(dataset, tmp_path)) == 0
    _assert_resumed(tmp_path, reference, done, decoded)
