"""Stage ``features``: cache model inputs beside the shards so that training never decodes video.

Per shard, the real ``Qwen2_5OmniProcessor`` turns low-res frames into ``pixel_values_videos`` and
audio into 128-bin Whisper log-mel features, written as ``<shard>.safetensors`` plus a manifest.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Sequence

from omni_r1.config import Params
from omni_r1.data.pipeline import featurize_shard
from omni_r1.data.shards import verified_shards
from omni_r1.fanout import fan_out
from omni_r1.fileio import atomic_write_json, check_output_location, claim_output_dir
from stages.common import exit_process, guarded, parse, parser, progress

log = logging.getLogger("stages.features")


def main(argv: Sequence[str] | None = None) -> int:
    p = parser("features", __doc__ or "")
    p.add_argument("--shards", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--metrics", type=Path, required=True)
    args, params = parse(p, argv)
    return guarded("features", lambda: _run(args, params))


FEATURE_PATTERNS = ("*.safetensors", ".*.tmp", "manifest.json")  # what the features stage writes in --out


def _run(args: argparse.Namespace, params: Params) -> int:
    protected = [args.shards, Path(params.data.root)]
    check_output_location(args.metrics, protected, what="--metrics")
    entries = verified_shards(args.shards)
    owned = claim_output_dir(args.out, "features", protected=protected, patterns=FEATURE_PATTERNS)
    owned.clear()
    start = time.perf_counter()
    fan = params.features.fanout
    with progress("features", len(entries), "shard") as advance:
        written = fan_out(featurize_shard, entries, common=(args.shards, args.out, params.features),
                          task_runner=fan.task_runner, workers=fan.workers, address=fan.address,
                          on_result=advance())
    seconds = time.perf_counter() - start
    atomic_write_json(args.out / "manifest.json", {"features": written, "tokenizer": params.features.tokenizer})
    owned.commit()
    records = sum(w["records"] for w in written)
    truncated = [video for w in written for video in w["audio_truncated_to_30s"]]
    if truncated:
        log.warning("audio of %d videos was cut to the audio encoder's 30 s window: %s", len(truncated),
                    ", ".join(truncated[:10]))
    atomic_write_json(args.metrics, {"shards": len(written), "videos": records, "bytes": sum(w["bytes"] for w in written),
                                     "audio_truncated": len(truncated), "wall_seconds": round(seconds, 3)})
    log.info("features for %d videos in %d shards (%.1f s) -> %s", records, len(written), seconds, args.out)
    return 0


if __name__ == "__main__":
    exit_process(main())
