"""Stage ``evaluate``: score the prediction PNGs -> ``data/eval/metrics.json`` (DVC metrics) + per-sample JSONL.

J, F and J&F per type with bootstrap 95% intervals; on RefAVS data (``data.format: refavs``) also the
Ref-AVS metrics per benchmark split, scored against the benchmark's files under ``data.root``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Sequence

from omni_r1.eval.evaluate import evaluate
from omni_r1.fileio import atomic_write_json, atomic_write_text
from stages.common import exit_process, parse, parser

log = logging.getLogger("stages.evaluate")


def main(argv: Sequence[str] | None = None) -> int:
    p = parser("evaluate", __doc__ or "")
    p.add_argument("--shards", type=Path, required=True)
    p.add_argument("--predictions", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--root", type=Path, required=True, help="the raw data root (dvc.yaml passes ${data.root})")
    args, params = parse(p, argv)
    rows_file = args.predictions / "rows.jsonl"
    predict_rows = [json.loads(line) for line in rows_file.read_text().splitlines() if line.strip()]
    refavs_root = args.root  # read only when the shards hold RefAVS samples
    summary, rows = evaluate(args.shards, args.predictions, params.predict.split, params.predict.policies,
                             predict_rows, refavs_root=refavs_root, resamples=params.predict.bootstrap_resamples,
                             seed=params.predict.bootstrap_seed)
    atomic_write_text(args.out / "samples.jsonl", "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
    atomic_write_json(args.out / "metrics.json", summary)
    for policy, s in summary.items():
        log.info("%s: overall J&F %s over %d samples, %d System 1 parse failures", policy,
                 s.get("overall", {}).get("JF"), s["samples"], s["parse_failures"])
    return 0


if __name__ == "__main__":
    exit_process(main())
