"""What every stage CLI shares: the ``--params``/``--set`` arguments and readable logging."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Callable, Sequence

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


def user_errors() -> tuple[type[BaseException], ...]:
    """Errors that are a user's to fix (bad paths, data, outputs, a busy machine): one line, no traceback."""
    from flows.fanout import FanoutStartError
    from omni_r1.config import ConfigError
    from omni_r1.data.formats import LayoutError
    from omni_r1.data.paths import PathEscapeError
    from omni_r1.data.pipeline import ManifestError
    from omni_r1.data.shards import ShardIntegrityError
    from omni_r1.fileio import OutputOwnershipError

    return (ConfigError, LayoutError, ManifestError, OutputOwnershipError, PathEscapeError, ShardIntegrityError,
            FanoutStartError, OSError)


def guarded(stage: str, body: Callable[[], int]) -> int:
    """Run a stage's body; a user's mistake becomes one logged line and exit status 2, a bug still raises."""
    try:
        return body()
    except user_errors() as err:
        logging.getLogger(f"stages.{stage}").error("%s: %s", stage, _one_line(err))
        return 2


def _one_line(err: BaseException) -> str:
    text = str(err) or type(err).__name__
    if isinstance(err, OSError) and err.filename and str(err.filename) not in text:
        text = f"{err.filename}: {text}"
    return " ".join(text.split())
