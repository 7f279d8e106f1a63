"""What every stage CLI shares: the ``--params``/``--set`` arguments, readable logging, a progress bar.

Stages import the library and nothing above it: no ``flows``, no Prefect (``tests/contracts``).
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import logging
import os
import sys
import threading
from pathlib import Path
from typing import Any, Callable, Iterator, NoReturn, Sequence

from tqdm import tqdm  # not tqdm.auto: a stage is a CLI, and tqdm.auto imports asyncio (13 ms a process)

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
    for noisy in ("httpx", "httpcore", "great_expectations", "asyncio", "distributed"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return load_params(args.params, args.overrides)


def parse(p: argparse.ArgumentParser, argv: Sequence[str] | None) -> tuple[argparse.Namespace, Params]:
    args = p.parse_args(argv)
    return args, setup(args)


def user_errors() -> tuple[type[BaseException], ...]:
    """Errors that are a user's to fix (bad paths, data, outputs, a busy machine): one line, no traceback."""
    from omni_r1.config import ConfigError
    from omni_r1.data.features import FeatureShardError
    from omni_r1.data.formats import LayoutError
    from omni_r1.data.paths import PathEscapeError
    from omni_r1.data.pipeline import ManifestError
    from omni_r1.data.shards import ShardIntegrityError
    from omni_r1.eval.native import NativeSourceError
    from omni_r1.fanout import FanoutError
    from omni_r1.fileio import OutputOwnershipError
    from omni_r1.models.checkpoints import CheckpointFolderError
    from omni_r1.systems.detail import DetailSetupError

    return (ConfigError, LayoutError, ManifestError, OutputOwnershipError, PathEscapeError, ShardIntegrityError,
            FeatureShardError, NativeSourceError, CheckpointFolderError, DetailSetupError, FanoutError, OSError)


@contextlib.contextmanager
def progress(stage: str, total: int, unit: str) -> Iterator[Callable[..., Callable[[Any], Any]]]:
    """A progress bar over a fan-out: ``advance(keep)`` wraps an ``on_result`` so that each result moves it."""
    with tqdm(total=total, desc=stage, unit=unit, dynamic_ncols=True) as bar:
        def advance(keep: Callable[[Any], Any] | None = None) -> Callable[[Any], Any]:
            def on_result(result: Any) -> Any:
                kept = keep(result) if keep is not None else result
                bar.update(1)
                return kept

            return on_result

        yield advance


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


def exit_process(code: int) -> NoReturn:
    """End a stage process with ``code``, skipping CPython's module teardown once the stage is done.

    Under ``dvc repro`` each stage is its own interpreter, and tearing down what it imported costs
    more than the work on a small dataset: 0.9 s after great-expectations, 0.6-1.5 s after torch and
    transformers (2 cores), paid by every stage of every run. Everything a stage writes is published by
    an atomic rename inside ``main``, so nothing is left to flush but the standard streams. The atexit
    handlers still run (logging, multiprocessing children, ``weakref.finalize`` temp folders); a
    non-daemon thread still alive means something is unfinished, and then the normal exit joins it.
    """
    if any(t is not threading.main_thread() and t.is_alive() and not t.daemon for t in threading.enumerate()):
        sys.exit(code)
    atexit._run_exitfuncs()  # the handlers the normal exit would run, in the same (reverse) order
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(code)
