"""Run a stage CLI as `python -m stages.<name> ARGS` would, and learn which top-level packages the whole run loaded.

The stage ends its own process (``stages.common.exit_process`` runs the atexit handlers, then ``os._exit``),
so the report is printed from an atexit handler registered before the stage starts.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
_MARK = "LOADED_PACKAGES "
_RUN_STAGE = ("import atexit, json, runpy, sys\n"
              "name = sys.argv[1]\n"
              "sys.argv = [f'stages.{name}', *sys.argv[2:]]\n"
              f"atexit.register(lambda: print({_MARK!r} + json.dumps(sorted({{m.split('.')[0] for m in sys.modules}})),"
              " flush=True))\n"
              "runpy.run_module(f'stages.{name}', run_name='__main__', alter_sys=True)\n")


def run_stage(stage: str, argv: list[str], cwd: Path, env: dict[str, str] | None = None,
              timeout: float = 300) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    """The finished process and the top-level packages its run imported (empty if it never reached exit)."""
    env = {**(os.environ if env is None else env), "TQDM_DISABLE": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "src")])}
    proc = subprocess.run([sys.executable, "-c", _RUN_STAGE, stage, *argv], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)
    reports = [line for line in proc.stdout.splitlines() if line.startswith(_MARK)]
    return proc, set(json.loads(reports[-1][len(_MARK):])) if reports else set()
