"""Stage ``shard``: decode each video once into WebDataset shards (low-res, high-res, audio, masks).

Videos are fanned out on the executor of ``shard.fanout`` (threads, processes, or a Dask or Ray
cluster; ``omni_r1.fanout``, no Prefect server). Each worker decodes a video into its own entry of
the work folder (``--work``, by default ``data/shards.work``: beside the DVC output, which DVC deletes before a
rerun); this process writes the shards from those entries in video order and the manifest last,
then deletes the work folder. A run that died half-way (killed, disk full) is resumed by the next
one, which decodes only the videos without an entry and writes the same bytes.
An undecodable video is quarantined with its reason (``<out>/quarantine.json``) and the others go
on; ``data/metrics/shard.json`` counts both, and the videos decoded and reused by this run.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Sequence

from omni_r1.config import Params
from omni_r1.data.pipeline import ResumableShardRun, decode_to_work, read_manifest_rows, sampling_plan
from omni_r1.data.shards import group_by_video
from omni_r1.fanout import fan_out
from omni_r1.fileio import atomic_write_json, check_output_location
from stages.common import exit_process, guarded, parse, parser, progress

log = logging.getLogger("stages.shard")


def main(argv: Sequence[str] | None = None) -> int:
    p = parser("shard", __doc__ or "")
    p.add_argument("--manifest", type=Path, required=True)
    p.add_argument("--root", type=Path, required=True, help="dataset root (dvc.yaml passes ${data.root})")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--metrics", type=Path, required=True)
    p.add_argument("--work", type=Path, default=None,
                   help="decoded videos of an unfinished run, kept to resume it (default <out>.work, beside the "
                        "DVC output so that DVC leaves it alone); on a Dask or Ray cluster, a folder the workers share")
    args, params = parse(p, argv)
    return guarded("shard", lambda: _run(args, params))


def _run(args: argparse.Namespace, params: Params) -> int:
    work = args.work or args.out.with_name(args.out.name + ".work")
    root = args.root
    check_output_location(args.out, [root, args.manifest], what="--out")
    check_output_location(args.metrics, [root, args.out], what="--metrics")
    groups = group_by_video(read_manifest_rows(args.manifest, "validate"))
    plan = sampling_plan(params.data)
    start = time.perf_counter()
    run = ResumableShardRun(groups, root, plan, args.out, work, params.shard.videos_per_shard,
                            protected=(args.manifest,))
    if any(run.reused):
        log.info("resuming: %d of %d videos are already decoded in %s", sum(run.reused), len(groups), work)
    fan = params.shard.fanout
    try:
        # Absolute paths: the workers of a cluster do not share this process's working directory.
        with progress("shard", len(run.jobs), "video") as advance:
            fan_out(decode_to_work, run.jobs, common=(root.resolve(), plan, work.resolve()),
                    task_runner=fan.task_runner, workers=fan.workers, address=fan.address,
                    on_result=advance(run.keep))
        manifest = run.close()
    except BaseException:
        run.abort()
        raise
    tally = run.tally
    metrics = tally.metrics(time.perf_counter() - start)
    atomic_write_json(args.metrics, {**metrics, "shards": len(manifest["shards"])})
    for entry in tally.quarantine:
        log.warning("quarantined %s: %s: %s (fix: %s)", entry.sample_id, entry.file, entry.reason, entry.hint)
    log.info("%d videos (%d samples) sharded into %d shards (%d decoded, %d reused), %d videos quarantined, "
             "%.0f frames/s -> %s", metrics["videos_ok"], metrics["samples_ok"], len(manifest["shards"]),
             metrics["decoded_videos"], metrics["reused_videos"], metrics["videos_quarantined"],
             metrics["frames_per_second"], args.out)
    return 0


if __name__ == "__main__":
    exit_process(main())
