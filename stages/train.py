"""Stage ``train``: GRPO of the Global Reasoning System with rewards from the Detail System, per seed.

Reads the train and held-out shards with their cached features and the detail checkpoint; writes the
checkpoints and the exported policy under ``train.out``, the step log ``data/metrics/train.tsv``
(a DVC plot) and the before/after summary ``data/metrics/train.json`` (DVC metrics).
``--set train.resume=true`` continues each seed from its latest checkpoint. On GPUs, run it under the
DeepSpeed launcher with ``--set train.deepspeed.enabled=true`` (configs/deepspeed/README.md).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Sequence

from tqdm.auto import tqdm

from omni_r1.fileio import atomic_write_json
from omni_r1.rl.run import RunPaths, run_training
from stages.common import parse, parser

log = logging.getLogger("stages.train")


def main(argv: Sequence[str] | None = None) -> int:
    p = parser("train", __doc__ or "")
    p.add_argument("--shards", type=Path, required=True)
    p.add_argument("--features", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True,
                   help="checkpoints and exported policy (dvc.yaml passes ${train.out})")
    p.add_argument("--log", type=Path, required=True)
    p.add_argument("--metrics", type=Path, required=True)
    args, params = parse(p, argv)
    paths = RunPaths(args.shards, args.features, args.out, args.log)
    bars: dict[int, tqdm] = {}

    def on_step(seed: int, step: int, values: dict[str, float]) -> None:
        bar = bars.get(seed)
        if bar is None:
            bar = bars[seed] = tqdm(total=params.train.steps, initial=step - 1, desc=f"GRPO seed {seed}",
                                    unit="step", dynamic_ncols=True)
        bar.set_postfix_str(f"reward {values['reward']:.3f} parse-fail {values['parse_failure_rate']:.2f} "
                            f"S2-fail {values['system2_failures']:.0f} (grounder {values['grounder_failures']:.0f}, "
                            f"SAM2 {values['sam2_failures']:.0f})")
        bar.update(1)
        if step == params.train.steps:
            bar.close()

    summary = run_training(params, paths, say=log.info, on_step=on_step)
    atomic_write_json(args.metrics, summary)
    mean = summary["mean"]
    log.info("held-out reward %.3f -> %.3f, J&F %.3f -> %.3f (mean over seeds %s)", mean["reward_before"],
             mean["reward_after"], mean["jf_before"], mean["jf_after"], list(params.train.seeds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
