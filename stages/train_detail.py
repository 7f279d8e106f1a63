"""Stage ``train_detail``: train the light Detail Understanding System (grounder + box U-Net) on the shards.

Only for ``detail.backend: light`` (the CPU demo); the sam2 backend uses local checkpoints instead.
Training reads the train shards (truth masks are training targets) and measures on the last `detail.light_holdout_videos`
train videos, kept out of training; val is GRPO's held-out set and test the reported one. Inference never reads truth.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

from tqdm.auto import tqdm

from omni_r1.data.shards import read_samples
from omni_r1.fileio import atomic_write_json
from omni_r1.detail_training import step_counts, train_light_models
from stages.common import exit_process, parse, parser

log = logging.getLogger("stages.train_detail")


def main(argv: Sequence[str] | None = None) -> int:
    p = parser("train_detail", __doc__ or "")
    p.add_argument("--shards", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True,
                   help="checkpoint folder (dvc.yaml passes ${detail.light_checkpoint}, which predict loads)")
    p.add_argument("--metrics", type=Path, required=True)
    args, params = parse(p, argv)
    out = args.out
    samples = read_samples(args.shards, "train")  # System 2 measures on its own held-out train videos
    total = sum(step_counts(params.detail).values())
    with tqdm(total=total, desc="train_detail", unit="step", dynamic_ncols=True) as bar:
        def advance(model: str, step: int, total: int, loss: float) -> None:
            bar.set_postfix_str(f"{model} loss {loss:.3f}")
            bar.update(1)

        metrics = train_light_models(samples, params.detail, out, progress=advance)
    atomic_write_json(args.metrics, metrics)
    log.info("light detail models -> %s: %s", out, {k: v for k, v in metrics.items() if not isinstance(v, (list, dict))})
    return 0


if __name__ == "__main__":
    exit_process(main())
