"""Stage ``report``: ``reports/tables.md`` (this run beside the paper), J&F plots and qualitative overlays.

The paper table is RefAVS's (Ref-AVS metrics per split) on RefAVS data and ReVOS's (J&F per type)
otherwise; the ablation (predict nothing, System 2 alone, System 1's keyframes with the original
query, the full pipeline) follows, every figure with its bootstrap 95% interval.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any, Sequence

from omni_r1.config import Params
from omni_r1.eval.report import plot_jf, plot_training, write_overlays
from omni_r1.eval.tables import (ablation_table, collaboration_verdict, has_refavs, heldout_ablation_tables,
                                 load_paper_numbers, refavs_table, revos_table, run_table, training_table)
from omni_r1.fileio import atomic_write_text
from stages.common import exit_process, parse, parser

log = logging.getLogger("stages.report")


def main(argv: Sequence[str] | None = None) -> int:
    p = parser("report", __doc__ or "")
    p.add_argument("--eval", type=Path, required=True)
    p.add_argument("--shards", type=Path, required=True)
    p.add_argument("--predictions", type=Path, required=True)
    p.add_argument("--paper", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--train", type=Path, required=True,
                   help="the train stage's before/after summary (skipped when absent)")
    p.add_argument("--train-log", type=Path, required=True)
    args, params = parse(p, argv)
    summary = json.loads((args.eval / "metrics.json").read_text())
    rows = [json.loads(line) for line in (args.eval / "samples.jsonl").read_text().splitlines() if line.strip()]
    figures = args.out / "figures"
    plot_jf(summary, figures / "jf_per_type.png")
    policies = params.predict.policies
    policy = "global_reasoning" if "global_reasoning" in policies else policies[-1]
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
        *_paper_section(load_paper_numbers(args.paper), summary, label),
        "## Ablation: what each system adds (J&F x100, bootstrap 95% intervals over samples)",
        "Referring and reasoning J&F are the headline. Null expressions are reported apart: an empty "
        "prediction is right there, so their J&F says nothing about grounding.",
        ablation_table(summary),
        collaboration_verdict(summary),
        "## This run in detail (x100, bootstrap 95% intervals)", run_table(summary),
        *_training_section(args, params, figures),
        "## Figures", f"![J&F per type](figures/{(figures / 'jf_per_type.png').name})",
        *[f"![{o.stem}](figures/{o.name})" for o in overlays],
    ]) + "\n"
    atomic_write_text(args.out / "tables.md", text)
    log.info("wrote %s with %d overlays", args.out / "tables.md", len(overlays))
    return 0


def _paper_section(paper: list[dict[str, Any]], summary: dict[str, Any], label: str) -> list[str]:
    """RefAVS data: the Ref-AVS metrics per split; any other data: ReVOS-style J&F per type."""
    if has_refavs(summary):
        return ["## RefAVS with the Ref-AVS metrics (x100, bootstrap 95% intervals over clips)",
                "J is the mIoU and F the F-score (beta^2 = 0.3) on Seen (`test_s`) and Unseen (`test_u`), J&F their "
                "mean; S on Null (`test_n`). Computed as `omni-r1 score refavs` does, against the benchmark's "
                "`metadata.csv` and `gt_mask/`.", refavs_table(paper, summary, label)]
    return ["## ReVOS-style J&F (x100, bootstrap 95% intervals)", revos_table(paper, summary, label)]


def _training_section(args: argparse.Namespace, params: Params, figures: Path) -> list[str]:
    """The GRPO before/after table and the reward curve, when the train stage has run."""
    if not args.train.is_file():
        return []
    train = json.loads(args.train.read_text())
    section = ["## GRPO: held-out reward and J&F before and after training",
               training_table(train, params.train.warm_start.steps, params.train.steps)]
    ablation = heldout_ablation_tables(train)
    if ablation:
        section += ["### The held-out ablation: does the trained System 1 beat System 2 alone and predicting nothing?",
                    ablation]
    if args.train_log.is_file():
        plot_training(args.train_log, figures / "grpo_reward.png")
        section.append("![GRPO reward](figures/grpo_reward.png)")
    return section


if __name__ == "__main__":
    exit_process(main())
