"""Stage ``predict``: the two systems over the test shards -> official-layout prediction PNGs.

System 2 runs over every native frame of each test video, decoded again from ``data.root`` as the
validated manifest lists it. Fanned out per shard on the executor of ``predict.fanout``
(``omni_r1.fanout``, no Prefect server). Writes ``<out>/<policy>/...png`` and ``<out>/rows.jsonl`` (one row per sample and policy: parse errors,
keyframes, timings).
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Sequence

from omni_r1.config import Params
from omni_r1.data.shards import verified_shards
from omni_r1.eval.native import NativeSource
from omni_r1.eval.predict import predict_shard
from omni_r1.fanout import fan_out
from omni_r1.fileio import atomic_write_json, atomic_write_text, claim_output_dir
from stages.common import exit_process, guarded, parse, parser, progress

log = logging.getLogger("stages.predict")
PREDICTION_PATTERNS = ("rows.jsonl", "**/*.png", "**/.*.tmp")  # what predict writes under --out


def main(argv: Sequence[str] | None = None) -> int:
    p = parser("predict", __doc__ or "")
    p.add_argument("--shards", type=Path, required=True)
    p.add_argument("--features", type=Path, required=True)
    p.add_argument("--manifest", type=Path, required=True,
                   help="the validated manifest: where each sample's native frames are under --root")
    p.add_argument("--root", type=Path, required=True, help="the raw data root (dvc.yaml passes ${data.root})")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--metrics", type=Path, required=True)
    args, params = parse(p, argv)
    return guarded("predict", lambda: _run(args, params))


def _run(args: argparse.Namespace, params: Params) -> int:
    entries = verified_shards(args.shards, params.predict.split)
    owned = claim_output_dir(args.out, "predict", patterns=PREDICTION_PATTERNS,
                             protected=[args.shards, args.features, args.root])
    owned.clear()  # only what an earlier predict run wrote; the folder is refused if it holds anything else
    source = NativeSource.from_manifest(args.root, args.manifest)
    fan = params.predict.fanout
    with progress("predict", len(entries), "shard") as advance:
        per_shard = fan_out(predict_shard, entries, common=(args.shards, args.features, args.out, source, params),
                            task_runner=fan.task_runner, workers=fan.workers, address=fan.address,
                            on_result=advance())
    rows = [row for chunk in per_shard for row in chunk]
    atomic_write_text(args.out / "rows.jsonl", "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
    owned.commit()
    metrics = {"samples": len({r["sample_id"] for r in rows})}
    for policy in params.predict.policies:
        mine = [r for r in rows if r["policy"] == policy]
        metrics[f"{policy}_parse_failures"] = sum(not r["parsed"] for r in mine)
        metrics[f"{policy}_seconds"] = round(sum(r["seconds"] for r in mine), 2)
    atomic_write_json(args.metrics, metrics)
    log.info("predicted %d samples with %s -> %s (%s)", metrics["samples"], ", ".join(params.predict.policies),
             args.out, metrics)
    return 0


if __name__ == "__main__":
    exit_process(main())
