"""Stage ``paper``: this run beside one of the paper's tables, ``reports/paper_<paper.table>.md``.

The paper's Omni-R1 numbers (``reports/paper_numbers.yaml``), this run's (the evaluate stage's
``metrics.json``) and the difference, with the run described from params: the data version and DVC
experiment (``paper.*``, which ``omni-r1 reproduce`` sets through ``dvc exp run -S``), the data, System 1's
checkpoint and System 2's backend. A DVC stage, so that a reproduction is one experiment whose report
DVC tracks beside its params and metrics.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Sequence

from omni_r1.config import Params
from omni_r1.eval.paper import RunInfo, is_synthetic, paper_table_markdown, refavs_numbers, revos_numbers
from omni_r1.eval.tables import load_paper_numbers
from omni_r1.fileio import atomic_write_text
from stages.common import exit_process, guarded, parse, parser

log = logging.getLogger("stages.paper")


def detail_description(params: Params) -> str:
    """System 2 as the report names it: the backend and the checkpoint it loads."""
    backend = params.detail.backend
    where = params.detail.light_checkpoint if backend == "light" else params.detail.sam2_checkpoint or "(empty)"
    return f"backend `{backend}`, checkpoint `{where}`"


def run_info(params: Params) -> RunInfo:
    """What the report says about the run, from params alone."""
    return RunInfo(data_version=params.paper.data_version, data_root=params.data.root,
                   data_format=params.data.format, checkpoint=params.global_reasoning.checkpoint,
                   detail=detail_description(params), experiment=params.paper.experiment,
                   synthetic=is_synthetic(params.data.root, params.synth.out, raw_tracked_by=""))


def main(argv: Sequence[str] | None = None) -> int:
    p = parser("paper", __doc__ or "")
    p.add_argument("--eval", type=Path, required=True, help="the evaluate stage's metrics.json")
    p.add_argument("--paper", type=Path, required=True, help="the paper's numbers (reports/paper_numbers.yaml)")
    p.add_argument("--out", type=Path, required=True, help="the report to write (reports/paper_<table>.md)")
    args, params = parse(p, argv)
    return guarded("paper", lambda: _run(args.eval, args.paper, args.out, params))


def _run(metrics: Path, paper: Path, out: Path, params: Params) -> int:
    if not metrics.is_file():
        log.error("paper: %s does not exist; run the evaluate stage first (`dvc repro evaluate`)", metrics)
        return 2
    summary = json.loads(metrics.read_text())
    table = params.paper.table
    run = revos_numbers(summary) if table == "revos" else refavs_numbers(summary)
    text = paper_table_markdown(table, load_paper_numbers(paper), run, run_info(params), params.predict.policies)
    atomic_write_text(out, text)
    log.info("wrote %s (%s table)", out, table)
    return 0


if __name__ == "__main__":
    exit_process(main())
