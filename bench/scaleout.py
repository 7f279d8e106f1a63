"""Benchmark: shard-stage throughput on a Dask cluster of 1 and of 2 workers, and their ratio, in one run.

Run it from the repository root::

    .venv/bin/python bench/scaleout.py            # 16 clips of 10 s, 640x360, 25 fps, 3 repeats
    .venv/bin/python bench/scaleout.py --small    # 4 clips of 2 s at 160x120, 1 repeat: a smoke run

What is measured
----------------
- The videos: the clips of ``bench/shard_throughput.py`` (same cache, same annotations), so the
  real shard code path runs on them.
- Two Dask ``LocalCluster`` s are started once, before any timing: 1 and 2 worker processes of one
  thread each (``fanout.workers`` means the same). Their start-up is printed, not counted: a user who
  scales out runs a cluster and names it in ``shard.fanout.address``, which is what each timed run
  does. Each cluster first runs the stage once untimed (its workers import the decoding
  modules on first use).
- One timed run: the shard stage's own path (``stages/shard.py``): ``ResumableShardRun`` over a
  fresh work folder -> ``omni_r1.fanout.fan_out(decode_to_work, ..., task_runner="dask",
  address=<cluster>)`` -> ``close()`` (shards from the work entries, manifest last). Frames =
  ``decoded frames`` of the tally (native frames the decoder went through); frames/s = frames /
  wall seconds. The client's connection to the cluster per run is inside the figure, as in the stage.
- ``--repeats`` runs of each, alternating 1 and 2 workers; medians and their ratio are printed, the
  ratio line last:
  ``ratio 2/1 workers = 1.62 (2 workers 930 frames/s, 1 worker 574 frames/s, 16 videos x 250 frames, dask)``.
  The ideal on 2 cores is 2.0; the parent's shard writing is shared by both.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))
import shard_throughput as base  # noqa: E402  (turns progress bars off before tqdm is imported)

from omni_r1.config import IngestParams  # noqa: E402
from omni_r1.data.pipeline import ResumableShardRun, decode_to_work, ingest, rows_from_frame  # noqa: E402
from omni_r1.data.shards import SamplingPlan, group_by_video  # noqa: E402
from omni_r1.types import ManifestRow  # noqa: E402
from omni_r1.fanout import fan_out  # noqa: E402

WORKER_COUNTS = (1, 2)


@contextlib.contextmanager
def local_clusters(counts: Sequence[int]) -> Iterator[dict[int, Any]]:
    """One Dask LocalCluster per worker count, single-threaded worker processes, closed at the end."""
    from distributed import LocalCluster

    clusters: dict[int, Any] = {}
    try:
        for count in counts:
            start = time.perf_counter()
            clusters[count] = LocalCluster(n_workers=count, threads_per_worker=1, processes=True,
                                           dashboard_address=":0")
            print(f"dask LocalCluster of {count} worker(s) at {clusters[count].scheduler_address} started in "
                  f"{time.perf_counter() - start:.1f} s (not in the figures)")
        yield clusters
    finally:
        for cluster in clusters.values():
            cluster.close()


def time_stage(groups: list[list[ManifestRow]], root: Path, plan: SamplingPlan, scratch: Path, address: str,
               workers: int) -> base.Timing:
    """The shard stage's resumable path on the cluster at ``address``; frames from its tally."""
    out_dir, work_dir = scratch / "shards", scratch / "shards.work"
    cpu, start = base.cpu_seconds(), time.perf_counter()
    run = ResumableShardRun(groups, root, plan, out_dir, work_dir, base.VIDEOS_PER_SHARD)
    fan_out(decode_to_work, run.jobs, common=(root, plan, work_dir), task_runner="dask", workers=workers,
            address=address, on_result=run.keep)
    run.close()
    seconds, cpu = time.perf_counter() - start, base.cpu_seconds() - cpu
    tally = run.tally
    if tally.quarantine or tally.reused_videos:
        raise RuntimeError(f"{tally.videos_quarantined} benchmark videos were quarantined and {tally.reused_videos} "
                           f"reused; delete the cache folder {root} and {scratch}, and rerun")
    shutil.rmtree(out_dir)
    return base.Timing(tally.frames_decoded, seconds, cpu)


def _parser() -> argparse.ArgumentParser:
    defaults = base._parser().parse_args([])
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--small", action="store_true",
                   help="a quick run: 4 clips of 2 s at 160x120, 10 fps, 1 repeat, low 64 / high 96 pixels")
    p.add_argument("--videos", type=int, default=defaults.videos, help=f"number of clips (default {defaults.videos})")
    p.add_argument("--seconds", type=float, default=defaults.seconds, help="length of each clip (default 10)")
    p.add_argument("--size", type=base._size, default=defaults.size, help="clip size WxH (default 640x360)")
    p.add_argument("--fps", type=int, default=defaults.fps, help="native frame rate of the clips (default 25)")
    p.add_argument("--repeats", type=int, default=defaults.repeats, help="timed runs of each (default 3)")
    p.add_argument("--cache-dir", type=Path, default=defaults.cache_dir,
                   help=f"where clips are kept (default {defaults.cache_dir})")
    for name in ("sample_fps", "max_frames", "low_res", "high_res"):
        flag = "--" + name.replace("_", "-")
        p.add_argument(flag, type=type(getattr(defaults, name)), default=getattr(defaults, name),
                       help=f"as in bench/shard_throughput.py (default {getattr(defaults, name)})")
    return p


def _small(args: argparse.Namespace) -> None:
    args.videos, args.seconds, args.size, args.fps, args.repeats = 4, 2.0, (160, 120), 10, 1
    args.low_res, args.high_res = 64, 96


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.small:
        _small(args)
    if args.videos < 1 or args.repeats < 1 or args.seconds <= 0 or args.fps < 1:
        raise SystemExit("--videos, --repeats and --fps must be at least 1, --seconds positive")
    plan = SamplingPlan(fps=args.sample_fps, max_frames=args.max_frames, low_res=args.low_res, high_res=args.high_res)
    bench = base.prepare_videos(args.cache_dir, args.videos, args.seconds, args.size, args.fps)
    print(f"videos: {len(bench.videos)} x {args.seconds:g} s at {args.size[0]}x{args.size[1]}, {args.fps} fps "
          f"({bench.total_frames} frames) in {bench.root}")
    print(f"sampling: {args.sample_fps:g} fps, at most {args.max_frames} frames, low {args.low_res}, "
          f"high {args.high_res}; {base._load()}")
    frame, _ = ingest("video", bench.root, IngestParams())
    groups = group_by_video(rows_from_frame(frame))

    scratch = Path(tempfile.mkdtemp(prefix=".scaleout-", dir=bench.root.parent))
    timings: dict[int, list[base.Timing]] = {count: [] for count in WORKER_COUNTS}
    try:
        with local_clusters(WORKER_COUNTS) as clusters:
            for count, cluster in clusters.items():
                warm = time_stage(groups, bench.root, plan, scratch, cluster.scheduler_address, count)
                print(f"warm-up on {count} worker(s): {warm.fps:.0f} frames/s ({warm.seconds:.2f} s)")
            for repeat in range(1, args.repeats + 1):
                for count, cluster in clusters.items():
                    timings[count].append(time_stage(groups, bench.root, plan, scratch, cluster.scheduler_address,
                                                     count))
                one, two = timings[1][-1], timings[2][-1]
                # No CPU figure: the ffmpeg children of the workers' processes are not ours to count.
                print(f"repeat {repeat}: 1 worker {one.fps:.0f} frames/s ({one.seconds:.2f} s), "
                      f"2 workers {two.fps:.0f} frames/s ({two.seconds:.2f} s)")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    if timings[2][-1].frames != bench.total_frames:
        print(f"warning: the shard stage decoded {timings[2][-1].frames} frames, the probe counts "
              f"{bench.total_frames}")
    fps = {count: statistics.median(t.fps for t in runs) for count, runs in timings.items()}
    per_video = f"{bench.frames[0]}" if len(set(bench.frames)) == 1 else f"{bench.total_frames / len(bench.frames):.0f}"
    print(base._load())
    print(f"ratio 2/1 workers = {fps[2] / fps[1]:.2f} (2 workers {fps[2]:.0f} frames/s, 1 worker {fps[1]:.0f} "
          f"frames/s, {len(bench.videos)} videos x {per_video} frames, dask)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
