"""What every stage CLI shares: the ``--params``/``--set`` arguments and readable logging."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Sequence

from omni_r1.config import Params, load_params


def parser(stage: str, description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"python -m stages.{stage}", description=description)
    p.add_argument("--params", type=Path, default=Path("params.yaml"), help="params file (default params.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a param, e.g. --set data.fps=1 (repeatable)")
    return p


def setup(args: argparse.Namespace) -> Params:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    for noisy in ("prefect", "httpx", "httpcore", "great_expectations", "uvicorn", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return load_params(args.params, args.overrides)


def parse(p: argparse.ArgumentParser, argv: Sequence[str] | None) -> tuple[argparse.Namespace, Params]:
    args = p.parse_args(argv)
    return args, setup(args)
