"""Each stage process starts with what its own work needs, and DVC parses YAML in C (issue 13: the cost of
``dvc repro`` over direct calls).

Under ``dvc repro`` every stage is a fresh interpreter, so what a stage module imports at the top is paid
once per stage, where a direct script pays it once in all. pandas (0.3-0.4 s on the CI machines), PyAV,
torch and great-expectations are imported by the functions that use them, not by the stage modules:
importing ``stages.<name>`` in a fresh interpreter must not load the heavy packages that stage never
uses. The figures are in the README's orchestration section (``bench/orchestration.py``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
HEAVY = ("pandas", "av", "torch", "transformers", "great_expectations", "webdataset", "prefect", "dvc")
# What each stage may load when its module is imported: validate's expectations suite needs pandas.
ALLOWED = {"ingest": set(), "validate": {"pandas"}, "shard": set(), "features": set()}


def _loaded_after_import(module: str) -> set[str]:
    code = (f"import json, sys; import {module}; "
            f"print(json.dumps(sorted(n for n in {list(HEAVY)!r} if n in sys.modules)))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "src")])}
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return set(json.loads(proc.stdout.strip().splitlines()[-1]))


@pytest.mark.parametrize("stage", sorted(ALLOWED))
def test_a_data_stage_module_loads_no_heavy_package_it_does_not_need(stage: str) -> None:
    loaded = _loaded_after_import(f"stages.{stage}")
    unexpected = loaded - ALLOWED[stage]
    assert not unexpected, (f"importing stages.{stage} loads {sorted(unexpected)}; import them inside the "
                            "function that uses them, so each stage process under dvc repro starts light")


def test_the_check_sees_a_heavy_import() -> None:
    """The probe itself works: a module that imports pandas at the top is caught."""
    assert "pandas" in _loaded_after_import("omni_r1.data.expectations")


def test_dvc_parses_yaml_with_the_c_parser() -> None:
    """DVC parses params.yaml, dvc.yaml and dvc.lock 20-30 times a run; ruamel's C parser (ruamel.yaml.clib,
    a pinned dependency) takes 6 ms a parse of params.yaml where the pure-Python one takes 17 ms."""
    from ruamel.yaml import YAML

    assert "clib" in YAML(typ="safe").Parser.__module__, "install ruamel.yaml.clib (pyproject.toml pins it)"
