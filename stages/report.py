"""Stage ``report``: ``reports/tables.md`` (this run beside the paper), J&F plots and qualitative overlays."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Sequence

from omni_r1.config import Params
from omni_r1.eval.report import plot_jf, plot_training, write_overlays
from omni_r1.eval.tables import load_paper_numbers, revos_table, run_table, training_table
from omni_r1.fileio import atomic_write_text
from stages.common import parse, parser

log = logging.getLogger("stages.report")


def main(argv: Sequence[str] | None = None) -> int:
    p = parser("report", __doc__ or "")
    p.add_argument("--eval", type=Path, default=Path("data/eval"))
    p.add_argument("--shards", type=Path, default=Path("data/shards"))
    p.add_argument("--predictions", type=Path, default=Path("data/predictions"))
    p.add_argument("--paper", type=Path, default=Path("reports/paper_numbers.yaml"))
    p.add_argument("--out", type=Path, default=Path("reports"))
    p.add_argument("--train", type=Path, default=Path("data/metrics/train.json"),
                   help="the train stage's before/after summary (skipped when absent)")
    p.add_argument("--train-log", type=Path, default=Path("data/metrics/train.tsv"))
    args, params = parse(p, argv)
    summary = json.loads((args.eval / "metrics.json").read_text())
    rows = [json.loads(line) for line in (args.eval / "samples.jsonl").read_text().splitlines() if line.strip()]
    figures = args.out / "figures"
    plot_jf(summary, figures / "jf_per_type.png")
    policy = params.predict.policies[0]
    chosen = [r["sample_id"] for r in rows if r["policy"] == policy and r["exp_type"] != "null"][:3]
    overlays = write_overlays(args.shards, args.predictions, params.predict.split, policy, figures, chosen)
    synthetic = params.data.root == params.synth.out
    label = "this run (synthetic data, tiny models)" if synthetic else "this run"
    text = "\n\n".join([
        "# Omni-R1: this run beside the paper",
        f"Data: `{params.data.root}` ({params.data.format} layout), split `{params.predict.split}`; System 1 "
        f"`{params.global_reasoning.checkpoint}`, System 2 backend `{params.detail.backend}`."
        + (" **These numbers come from synthetic videos and tiny models; they are not comparable to the paper's.**"
           if synthetic else ""),
        "## ReVOS-style J&F (x100)", revos_table(load_paper_numbers(args.paper), summary, label),
        "## This run in detail", run_table(summary),
        *_training_section(args, params, figures),
        "## Figures", f"![J&F per type](figures/{(figures / 'jf_per_type.png').name})",
        *[f"![{o.stem}](figures/{o.name})" for o in overlays],
    ]) + "\n"
    atomic_write_text(args.out / "tables.md", text)
    log.info("wrote %s with %d overlays", args.out / "tables.md", len(overlays))
    return 0


def _training_section(args: argparse.Namespace, params: Params, figures: Path) -> list[str]:
    """The GRPO before/after table and the reward curve, when the train stage has run."""
    if not args.train.is_file():
        return []
    train = json.loads(args.train.read_text())
    section = ["## GRPO: held-out reward and J&F before and after training",
               training_table(train, params.train.warm_start.steps, params.train.steps)]
    if args.train_log.is_file():
        plot_training(args.train_log, figures / "grpo_reward.png")
        section.append("![GRPO reward](figures/grpo_reward.png)")
    return section


if __name__ == "__main__":
    sys.exit(main())
