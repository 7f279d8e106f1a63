"""Stage ``shard``: decode each video once into WebDataset shards (low-res, high-res, audio, masks).

Videos are fanned out through the Prefect task runner of ``shard.fanout``; records are written in
video order by this process as they arrive. An undecodable video is quarantined with its reason
(``<out>/quarantine.json``) and the others go on; ``data/metrics/shard.json`` counts both.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Sequence

import pandas as pd

from flows.fanout import map_chunks
from omni_r1.data.pipeline import ShardSink, rows_from_frame, sampling_plan, shard_video
from omni_r1.data.shards import group_by_video
from omni_r1.fileio import atomic_write_json
from stages.common import parse, parser

log = logging.getLogger("stages.shard")


def main(argv: Sequence[str] | None = None) -> int:
    p = parser("shard", __doc__ or "")
    p.add_argument("--manifest", type=Path, default=Path("data/interim/validated.parquet"))
    p.add_argument("--root", type=Path, default=None, help="dataset root (default data.root)")
    p.add_argument("--out", type=Path, default=Path("data/shards"))
    p.add_argument("--metrics", type=Path, default=Path("data/metrics/shard.json"))
    args, params = parse(p, argv)
    root = args.root or Path(params.data.root)
    groups = group_by_video(rows_from_frame(pd.read_parquet(args.manifest)))
    sink = ShardSink(args.out, params.shard.videos_per_shard)
    plan = sampling_plan(params.data)
    start = time.perf_counter()
    fan = params.shard.fanout
    map_chunks(shard_video, groups, common=(root, plan), stage="shard", task_runner=fan.task_runner,
               workers=fan.workers, on_result=sink.keep)
    manifest = sink.close(plan)
    tally = sink.tally
    metrics = tally.metrics(time.perf_counter() - start)
    atomic_write_json(args.metrics, {**metrics, "shards": len(manifest["shards"])})
    for entry in tally.quarantine:
        log.warning("quarantined %s: %s: %s (fix: %s)", entry.sample_id, entry.file, entry.reason, entry.hint)
    log.info("%d videos (%d samples) sharded into %d shards, %d videos quarantined, %.0f frames/s -> %s",
             metrics["videos_ok"], metrics["samples_ok"], len(manifest["shards"]), metrics["videos_quarantined"],
             metrics["frames_per_second"], args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
