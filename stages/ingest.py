"""Stage ``ingest``: parse a dataset layout into ``manifest.parquet``, one row per (video, expression).

No decoding: videos are probed (header and packet count) and frame folders listed.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Sequence

from omni_r1.config import Params
from omni_r1.data.pipeline import ingest_rows, manifest_table
from omni_r1.fileio import atomic_write_json, atomic_write_parquet, check_output_location
from stages.common import exit_process, guarded, parse, parser

log = logging.getLogger("stages.ingest")


def main(argv: Sequence[str] | None = None) -> int:
    p = parser("ingest", __doc__ or "")
    p.add_argument("--root", type=Path, required=True, help="dataset root (dvc.yaml passes ${data.root})")
    p.add_argument("--format", choices=["video", "refavs", "revos"], default=None, help="layout (default data.format)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--metrics", type=Path, required=True)
    args, params = parse(p, argv)
    return guarded("ingest", lambda: _run(args, params))


def _run(args: argparse.Namespace, params: Params) -> int:
    root = args.root
    fmt = args.format or params.data.format
    for out, what in ((args.out, "--out"), (args.metrics, "--metrics")):
        check_output_location(out, [root], what=what)  # a manifest written into the dataset would change it
    rows, metrics = ingest_rows(fmt, root, params.ingest)
    atomic_write_parquet(args.out, manifest_table(rows))
    atomic_write_json(args.metrics, metrics)
    log.info("%s layout at %s: %d rows, %d videos, %d parse errors -> %s", fmt, root, metrics["rows"],
             metrics["videos"], metrics["parse_errors"], args.out)
    return 0


if __name__ == "__main__":
    exit_process(main())
