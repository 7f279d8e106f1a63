"""Stage ``synth``: write the synthetic omni dataset (params ``synth``) that the demo runs on."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

from omni_r1.data.synthetic import SynthSpec, generate
from stages.common import exit_process, parse, parser

log = logging.getLogger("stages.synth")


def main(argv: Sequence[str] | None = None) -> int:
    p = parser("synth", __doc__ or "")
    p.add_argument("--out", type=Path, required=True, help="output root (dvc.yaml passes ${synth.out})")
    args, params = parse(p, argv)
    s = params.synth
    spec = SynthSpec(videos=s.videos, seed=s.seed, width=s.width, height=s.height, fps=s.fps, seconds=s.seconds)
    summary = generate(args.out, s.format, spec)
    log.info("wrote %d videos, %d expressions (%s layout) to %s", summary.videos, summary.expressions, s.format,
             summary.out_dir)
    return 0


if __name__ == "__main__":
    exit_process(main())
