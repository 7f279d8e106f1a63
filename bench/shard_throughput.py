"""Benchmark: decoded frames per second of the shard stage against raw ffmpeg decode, on the same videos.

Run it from the repository root (``make bench`` does the same)::

    .venv/bin/python bench/shard_throughput.py                 # 16 clips of 10 s, 640x360, 25 fps
    .venv/bin/python bench/shard_throughput.py --repeats 5 --task-runner process

What is measured
----------------
- The videos: ``--videos`` clips made once by ffmpeg from lavfi sources (``testsrc2`` picture, a ``sine``
  tone per clip), H.264 + AAC stereo 44.1 kHz in mp4, cached under ``<tmp>/omni-r1-bench`` with an
  ``annotations.jsonl`` in the plain video layout (one expression per video, one object with a small
  box mask on a few frames), so that the real shard code path runs on them.
- raw: ``ffmpeg -nostdin -hide_banner -loglevel error -i X -f null -`` over all videos, ``--workers``
  ffmpeg processes at a time. Frames = native video frames of all videos (from the PyAV probe);
  frames/s = frames / wall seconds.
- shard: the stage's own path (``stages/shard.py``): ``ingest`` -> ``rows_from_frame`` ->
  ``group_by_video`` -> ``omni_r1.fanout.fan_out(shard_video, ...)`` with records written by a
  ``ShardSink`` (the stage's writer) as they arrive, then ``sink.close()``. Frames =
  ``ShardTally.frames_decoded`` (native frames the decoder went through); frames/s = frames / wall
  seconds of fan_out + close. Ingest (probing) is timed once and reported apart.
- The stage starts no orchestrator (no Prefect server): the first run of the process is reported as
  the "cold" figure (first imports, page cache); the timed repeats come after it. With
  ``--task-runner process`` each timed run pays for spawning its worker processes, as the stage does.
- Each measurement runs ``--repeats`` times, alternating raw and shard; the medians and their ratio
  are printed, the ratio line last:
  ``ratio shard/raw = 0.83 (shard 912 frames/s, raw 1098 frames/s, 16 videos x 250 frames, ...)``.
- CPU seconds per frame of each (this process and its ffmpeg children and worker processes) are
  printed before it: on a machine shared with other work, wall-clock figures swing by +-30% from
  run to run while CPU time barely moves, and with as many workers as cores the CPU ratio is close
  to the throughput ratio. The machine's load average is printed too.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

# tqdm reads its setting when first imported: keep progress bars from burying the figures.
os.environ.setdefault("TQDM_DISABLE", "1")

from omni_r1.config import DataParams, IngestParams  # noqa: E402
from omni_r1.data.ffmpeg import ffmpeg_exe  # noqa: E402
from omni_r1.data.masks import encode_rle  # noqa: E402
from omni_r1.data.pipeline import ShardSink, ingest, rows_from_frame, shard_video  # noqa: E402
from omni_r1.data.shards import SamplingPlan, group_by_video  # noqa: E402
from omni_r1.data.video import probe  # noqa: E402
from omni_r1.types import ManifestRow  # noqa: E402
from omni_r1.fanout import fan_out  # noqa: E402

DEFAULT_CACHE = Path(tempfile.gettempdir()) / "omni-r1-bench"
VIDEOS_PER_SHARD = 64  # params.yaml's shard.videos_per_shard


@dataclass(frozen=True)
class BenchSet:
    """The benchmark's videos: the dataset root, the video files and their native frame counts."""

    root: Path
    videos: list[Path]
    frames: list[int]

    @property
    def total_frames(self) -> int:
        return sum(self.frames)


@dataclass(frozen=True)
class Timing:
    """One measured run: frames decoded, wall seconds, and CPU seconds of every process involved."""

    frames: int
    seconds: float
    cpu: float

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0


def cpu_seconds() -> float:
    """CPU seconds so far of this process, its finished children (ffmpeg) and its live ones (worker processes).

    Other work on a shared machine changes wall-clock figures a lot and CPU time little, so the
    CPU cost per frame is a steadier comparison; with as many workers as cores it predicts the ratio.
    """
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    try:
        import psutil  # installed with dvc; without it the live API server's CPU is left out
    except ImportError:
        return total
    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):  # a child that ended meanwhile is in RUSAGE_CHILDREN
            times = child.cpu_times()
            total += times.user + times.system
    return total


# ----------------------------------------------------------------------------------------------- videos


def _size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(part) for part in text.lower().split("x"))
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"--size must be WIDTHxHEIGHT like 640x360, got {text!r}") from err
    if width < 16 or height < 16 or width % 2 or height % 2:
        raise argparse.ArgumentTypeError(f"--size needs even sides of at least 16 pixels, got {text!r}")
    return width, height


def make_video(path: Path, index: int, seconds: float, size: tuple[int, int], fps: int) -> None:
    """One lavfi clip: testsrc2 picture and a sine tone (a different pitch per clip), H.264 + AAC stereo."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.mp4")  # two benchmarks may fill one cache
    command = [
        ffmpeg_exe(), "-nostdin", "-hide_banner", "-loglevel", "error", "-y",
        "-f", "lavfi", "-i", f"testsrc2=size={size[0]}x{size[1]}:rate={fps}:duration={seconds}",
        "-f", "lavfi", "-i", f"sine=frequency={220 + 20 * index}:sample_rate=44100:duration={seconds}",
        "-map", "0:v:0", "-map", "1:a:0",
        "-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p",
        "-c:a", "aac", "-b:a", "96k", "-ac", "2", "-ar", "44100",
        "-movflags", "+faststart", str(tmp),
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, check=False)
    if result.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise RuntimeError(f"ffmpeg could not write {path}: {result.stderr.decode(errors='replace')[-600:]}")
    os.replace(tmp, path)


def _annotation(video_id: str, size: tuple[int, int], num_frames: int) -> dict[str, Any]:
    """One referring expression whose one object is a small box on a few frames."""
    width, height = size
    box = np.zeros((height, width), dtype=bool)
    box[height // 4 : height // 2, width // 4 : width // 2] = True
    rle = encode_rle(box)
    frames = sorted({0, num_frames // 2, num_frames - 1})
    return {
        "video_id": video_id,
        "exp_id": "0",
        "expression": "the test pattern",
        "type": "referring",
        "split": "train",
        "objects": [{"obj_id": "1", "masks": [{"frame": f, "rle": rle} for f in frames]}],
    }


def prepare_videos(cache_dir: Path, count: int, seconds: float, size: tuple[int, int], fps: int) -> BenchSet:
    """Make (or reuse) the clips and the annotations; annotations.jsonl is written last, when all exist."""
    root = cache_dir / f"{size[0]}x{size[1]}-{fps}fps-{seconds:g}s"
    (root / "videos").mkdir(parents=True, exist_ok=True)
    paths = [root / "videos" / f"bench{index:04d}.mp4" for index in range(count)]
    for index, path in enumerate(paths):
        if not path.is_file():
            make_video(path, index, seconds, size, fps)
    frames = [probe(path).num_frames for path in paths]
    lines = [json.dumps(_annotation(path.stem, size, n)) for path, n in zip(paths, frames)]
    tmp = root / f".annotations.jsonl.{os.getpid()}.tmp"
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, root / "annotations.jsonl")
    return BenchSet(root, paths, frames)


# ----------------------------------------------------------------------------------------------- raw decode


def _null_decode(path: Path) -> None:
    command = [ffmpeg_exe(), "-nostdin", "-hide_banner", "-loglevel", "error", "-i", str(path), "-f", "null", "-"]
    result = subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"raw decode of {path} failed: {result.stderr.decode(errors='replace')[-600:]}")


def time_raw(bench: BenchSet, workers: int) -> Timing:
    """``ffmpeg -i X -f null -`` over all videos, ``workers`` processes at a time."""
    cpu, start = cpu_seconds(), time.perf_counter()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(_null_decode, bench.videos))
    return Timing(bench.total_frames, time.perf_counter() - start, cpu_seconds() - cpu)


# ----------------------------------------------------------------------------------------------- shard stage


def time_stage(groups: list[list[ManifestRow]], root: Path, plan: SamplingPlan, out_dir: Path,
               task_runner: str, workers: int) -> Timing:
    """The shard stage's fan-out and writing, as stages/shard.py runs them; frames from its tally."""
    sink = ShardSink(out_dir, VIDEOS_PER_SHARD)
    cpu, start = cpu_seconds(), time.perf_counter()
    fan_out(shard_video, groups, common=(root, plan), task_runner=task_runner, workers=workers, on_result=sink.keep)
    sink.close(plan)
    tally = sink.tally
    seconds, cpu = time.perf_counter() - start, cpu_seconds() - cpu
    if tally.quarantine:
        first = tally.quarantine[0]
        raise RuntimeError(f"{tally.videos_quarantined} benchmark videos were quarantined, e.g. {first.file}: "
                           f"{first.reason}; delete the cache folder {root} and rerun")
    shutil.rmtree(out_dir)
    return Timing(tally.frames_decoded, seconds, cpu)


# ----------------------------------------------------------------------------------------------- main


def _parser() -> argparse.ArgumentParser:
    data = DataParams()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--videos", type=int, default=16, help="number of clips (default 16)")
    p.add_argument("--seconds", type=float, default=10.0, help="length of each clip (default 10)")
    p.add_argument("--size", type=_size, default=(640, 360), help="clip size WxH (default 640x360)")
    p.add_argument("--fps", type=int, default=25, help="native frame rate of the clips (default 25)")
    p.add_argument("--workers", type=int, default=2, help="parallel videos, both measurements (default 2)")
    p.add_argument("--task-runner", choices=("thread", "process"), default="thread",
                   help="executor of the shard stage's fan-out (default thread, as in params.yaml)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs of each measurement (default 3)")
    p.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE,
                   help=f"where clips are kept (default {DEFAULT_CACHE})")
    p.add_argument("--sample-fps", type=float, default=data.fps, help=f"data.fps (default {data.fps})")
    p.add_argument("--max-frames", type=int, default=data.max_frames,
                   help=f"data.max_frames (default {data.max_frames})")
    p.add_argument("--low-res", type=int, default=data.low_res, help=f"data.low_res (default {data.low_res})")
    p.add_argument("--high-res", type=int, default=data.high_res, help=f"data.high_res (default {data.high_res})")
    return p


def _load() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.2f} (1 min), {five:.2f} (5 min) on {os.cpu_count()} CPUs"


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.videos < 1 or args.repeats < 1 or args.workers < 1 or args.seconds <= 0 or args.fps < 1:
        raise SystemExit("--videos, --repeats, --workers and --fps must be at least 1, --seconds positive")
    plan = SamplingPlan(fps=args.sample_fps, max_frames=args.max_frames, low_res=args.low_res, high_res=args.high_res)
    bench = prepare_videos(args.cache_dir, args.videos, args.seconds, args.size, args.fps)
    print(f"videos: {len(bench.videos)} x {args.seconds:g} s at {args.size[0]}x{args.size[1]}, {args.fps} fps "
          f"({bench.total_frames} frames) in {bench.root}")
    print(f"sampling: {args.sample_fps:g} fps, at most {args.max_frames} frames, low {args.low_res}, "
          f"high {args.high_res}; {args.workers} workers, {args.task_runner} runner; {_load()}")

    start = time.perf_counter()
    frame, _ = ingest("video", bench.root, IngestParams())
    groups = group_by_video(rows_from_frame(frame))
    print(f"ingest (probing, not in the figures): {time.perf_counter() - start:.2f} s for {len(groups)} videos")

    out_dir = bench.root.parent / f".shards-{os.getpid()}"
    cold = time_stage(groups, bench.root, plan, out_dir, args.task_runner, args.workers)
    print(f"shard cold (first run in the process): {cold.fps:.0f} frames/s "
          f"({cold.frames} frames in {cold.seconds:.2f} s)")
    raws: list[Timing] = []
    stages: list[Timing] = []
    for repeat in range(1, args.repeats + 1):
        raws.append(time_raw(bench, args.workers))
        stages.append(time_stage(groups, bench.root, plan, out_dir, args.task_runner, args.workers))
        raw, shard = raws[-1], stages[-1]
        print(f"repeat {repeat}: raw {raw.fps:.0f} frames/s ({raw.seconds:.2f} s, {raw.cpu:.2f} CPU s), "
              f"shard {shard.fps:.0f} frames/s ({shard.seconds:.2f} s, {shard.cpu:.2f} CPU s)")

    if stages[-1].frames != bench.total_frames:
        print(f"warning: the shard stage decoded {stages[-1].frames} frames, the probe counts {bench.total_frames}")
    raw_fps = statistics.median(t.fps for t in raws)
    shard_fps = statistics.median(t.fps for t in stages)
    per_video = f"{bench.frames[0]}" if len(set(bench.frames)) == 1 else f"{bench.total_frames / len(bench.frames):.0f}"
    raw_cpu = statistics.median(t.cpu / t.frames for t in raws)
    shard_cpu = statistics.median(t.cpu / t.frames for t in stages)
    print(f"CPU per 1000 frames: raw {1000 * raw_cpu:.2f} s, shard {1000 * shard_cpu:.2f} s; "
          f"raw/shard = {raw_cpu / shard_cpu:.2f} (steadier than wall time on a busy machine)")
    print(_load())
    print(f"ratio shard/raw = {shard_fps / raw_fps:.2f} (shard {shard_fps:.0f} frames/s, raw {raw_fps:.0f} frames/s, "
          f"{len(bench.videos)} videos x {per_video} frames, {args.workers} workers, {args.task_runner} runner)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
