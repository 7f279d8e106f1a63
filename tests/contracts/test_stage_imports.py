"""Each stage process starts with what its own work needs, and DVC parses YAML in C (issue 13: the cost of
``dvc repro`` over direct calls).

Under ``dvc repro`` every stage is a fresh interpreter, so what a stage module imports at the top is paid
once per stage, where a direct script pays it once in all. pandas (0.3-0.4 s on the CI machines), PyAV,
torch and great-expectations are imported by the functions that use them, not by the stage modules:
importing ``stages.<name>`` in a fresh interpreter must not load the heavy packages that stage never
uses. The figures are in the README's orchestration section (``bench/orchestration.py``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.stage_runs import run_stage

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


def _loaded_by_run(stage: str, argv: list[str], cwd: Path) -> set[str]:
    proc, loaded = run_stage(stage, argv, cwd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "stages" in loaded, "the stage's exit report is missing: " + proc.stdout[-2000:]
    return loaded


def test_the_ingest_and_shard_runs_never_import_pandas(synth_video: Path, tmp_path: Path) -> None:
    """Not only the modules: the whole run of ingest (writing the manifest) and of shard (reading it) stays
    off pandas. pyarrow imports pandas behind ``pa.array`` of Python objects and behind ``pq.read_table``
    (through pyarrow.dataset); under ``dvc repro`` that was 0.3 s in each of the two processes, where a
    direct script pays it once (validate's suite needs pandas)."""
    (tmp_path / "params.yaml").write_text("data:\n  format: video\n  fps: 2.0\n  max_frames: 4\n")
    common = ["--params", str(tmp_path / "params.yaml"), "--root", str(synth_video)]
    manifest = tmp_path / "manifest.parquet"
    ingest = _loaded_by_run("ingest", [*common, "--format", "video", "--out", str(manifest),
                                       "--metrics", str(tmp_path / "ingest.json")], tmp_path)
    shard = _loaded_by_run("shard", [*common, "--manifest", str(manifest), "--out", str(tmp_path / "shards"),
                                     "--metrics", str(tmp_path / "shard.json")], tmp_path)
    assert "pandas" not in ingest, f"the ingest run loaded {sorted(ingest)}"
    assert "pandas" not in shard, f"the shard run loaded {sorted(shard)}"
    assert json.loads((tmp_path / "shard.json").read_text())["videos_ok"] == 3


def _manifest_rows() -> list:
    from omni_r1.types import ManifestRow

    base = ManifestRow(**{f: _example(t) for f, t in ManifestRow.__annotations__.items()})  # type: ignore[arg-type]
    odd = dataclasses.replace(base, sample_id="vidé\"o\n\u2603", frame_paths=[], num_frames=2**62, fps=0.1,
                              expression="a 'quoted' \\ back\tslash \U0001f600", has_audio=False)
    return [base, odd]


def _example(kind: str) -> object:
    return {"str": "x", "bool": True, "int": 3, "float": 29.97, "list[str]": ["f/0.png", "f/1.png"]}[kind]


def test_the_manifest_table_is_what_from_pylist_builds() -> None:
    """The JSON route to a pyarrow table gives the same schema, values and order as ``Table.from_pylist``,
    for odd strings, an empty list, a huge int, a non-finite float (the fallback) and no rows at all."""
    import pyarrow as pa

    from omni_r1.data.pipeline import manifest_table

    rows = _manifest_rows()
    with_nan = [*rows, dataclasses.replace(rows[0], fps=float("nan"))]
    for case in (rows, with_nan, rows[:1], []):
        built = manifest_table(case)
        expected = pa.Table.from_pylist([r.to_dict() for r in case], schema=built.schema)
        assert built.schema.names == list(rows[0].to_dict())
        assert built.num_rows == len(case)
        # repr, not ==, so that the NaN row compares equal to itself
        assert repr(built.to_pylist()) == repr(expected.to_pylist())
        assert built.schema.equals(expected.schema)


def test_a_manifest_of_many_blocks_keeps_its_rows_in_order(monkeypatch: pytest.MonkeyPatch) -> None:
    """With blocks smaller than the manifest (a real ReVOS manifest runs to hundreds of MB), the JSON reader
    still returns every row in order, and a row longer than a block still parses."""
    import pyarrow as pa

    from omni_r1.data import pipeline

    monkeypatch.setattr(pipeline, "JSON_BLOCK_BYTES", 1024)
    base = _manifest_rows()[0]
    rows = [dataclasses.replace(base, sample_id=f"s{i:04d}", expression="x" * (i % 7) * 50) for i in range(200)]
    rows.append(dataclasses.replace(base, sample_id="long", masks_json="{" + "r" * 5000 + "}"))
    built = pipeline.manifest_table(rows)
    assert built.column("sample_id").num_chunks > 1  # the blocks were small: this checked the multi-block path
    expected = pa.Table.from_pylist([r.to_dict() for r in rows], schema=built.schema)
    assert built.to_pylist() == expected.to_pylist()
