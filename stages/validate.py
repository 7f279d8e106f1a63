"""Stage ``validate``: the great-expectations gate. Good rows flow on; bad rows go to the quarantine report.

Fails (exit 1) when the bad fraction passes ``validate.max_bad_fraction``.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Sequence

from omni_r1.config import Params
from omni_r1.data.expectations import ValidationPolicy, ValidationPolicyError, enforce_policy, validate_manifest
from omni_r1.data.pipeline import quarantine_json, read_manifest
from omni_r1.fileio import atomic_write_json, atomic_write_parquet, check_output_location
from stages.common import exit_process, guarded, parse, parser

log = logging.getLogger("stages.validate")


def main(argv: Sequence[str] | None = None) -> int:
    p = parser("validate", __doc__ or "")
    p.add_argument("--manifest", type=Path, required=True)
    p.add_argument("--root", type=Path, required=True, help="dataset root (dvc.yaml passes ${data.root})")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--quarantine", type=Path, required=True)
    p.add_argument("--metrics", type=Path, required=True)
    args, params = parse(p, argv)
    return guarded("validate", lambda: _run(args, params))


def _run(args: argparse.Namespace, params: Params) -> int:
    root = args.root
    for out, what in ((args.out, "--out"), (args.quarantine, "--quarantine"), (args.metrics, "--metrics")):
        check_output_location(out, [root, args.manifest], what=what)
    policy = ValidationPolicy(params.validate.max_bad_fraction, params.validate.require_audio)
    report = validate_manifest(read_manifest(args.manifest, "ingest"), root, policy)
    atomic_write_json(args.quarantine, quarantine_json(report.quarantine))
    atomic_write_json(args.metrics, report.metrics())
    for entry in report.quarantine:
        log.warning("quarantined %s [%s] %s%s: %s (fix: %s)", entry.sample_id, entry.check, entry.file,
                    f" ({entry.line})" if entry.line else "", entry.reason, entry.hint)
    try:
        enforce_policy(report, policy)
    except ValidationPolicyError as err:
        log.error("%s; the quarantine report is %s", err, args.quarantine)
        return 1
    atomic_write_parquet(args.out, report.good)
    log.info("%d of %d rows passed; %d quarantined (%.1f%%) -> %s", len(report.good), report.n_rows, report.n_bad,
             100 * report.bad_fraction, args.out)
    return 0


if __name__ == "__main__":
    exit_process(main())
