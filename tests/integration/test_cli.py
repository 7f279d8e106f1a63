"""``omni-r1 synth / prepare / inspect`` on the official layouts, in-process, as a user would run them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flows.cli import main
from omni_r1.data.features import load_feature_shard
from omni_r1.data.shards import load_manifest, read_samples

REPO = Path(__file__).resolve().parents[2]
SMALL = ["--set", "data.low_res=64", "--set", "data.high_res=96"]


def _prepare(fmt: str, root: Path, out: Path) -> int:
    return main(["prepare", "--format", fmt, "--root", str(root), "--out", str(out),
                 "--params", str(REPO / "params.yaml"), *SMALL])


def _inspect(out: Path, capsys: pytest.CaptureFixture[str]) -> dict:
    capsys.readouterr()
    assert main(["inspect", str(out), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_synth_cli_writes_the_requested_layout(tmp_path: Path) -> None:
    assert main(["synth", "--format", "revos", "--out", str(tmp_path), "--videos", "2", "--seed", "1",
                 "--params", str(REPO / "params.yaml")]) == 0
    assert (tmp_path / "meta_expressions_train_.json").is_file() and (tmp_path / "mask_dict.json").is_file()


def test_prepare_refavs_end_to_end(synth_refavs: Path, tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "refavs-out"
    assert _prepare("refavs", synth_refavs, out) == 0
    summary = _inspect(out, capsys)
    assert summary["quarantined"] == 0 and set(summary["splits"]) == {"train", "val", "test"}
    total = sum(s["samples"] for s in summary["splits"].values())
    assert total == len((synth_refavs / "metadata.csv").read_text().splitlines()) - 1
    for split in summary["splits"].values():
        assert split["native_frames"]["min"] == split["native_frames"]["max"] == 10
        assert split["videos_with_audio"] == split["videos"]  # RefAVS always has audio.wav
        assert split["audio_seconds"]["min"] == 10.0
    sample = next(read_samples(out / "shards", "test"))
    assert sample.audio.dtype.name == "float32" and sample.audio.shape == (160_000,)
    assert sample.low_res.shape[1:] == (42, 64, 3) and sample.high_res.shape[1:] == (64, 96, 3)
    masks = sample.target_masks()
    assert masks.shape == (len(sample.frame_indices), 64, 96)
    features = load_manifest(out / "shards")
    assert features["shards"]
    for entry in json.loads((out / "features/manifest.json").read_text())["features"]:
        records = load_feature_shard(out / "features" / entry["name"], sha256=entry["sha256"])
        assert len(records) == entry["records"] and all(r.audio_feature_length > 0 for r in records)


def test_prepare_revos_and_table_output(synth_revos: Path, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "revos-out"
    assert _prepare("revos", synth_revos, out) == 0
    summary = _inspect(out, capsys)
    assert set(summary["splits"]) == {"train", "test"}  # ReVOS valid -> test
    assert all(s["videos_with_audio"] == 0 for s in summary["splits"].values())  # ReVOS has no audio
    assert main(["inspect", str(out)]) == 0
    table = capsys.readouterr().out
    assert "split" in table and "quarantined: 0" in table


def test_inspect_of_an_unprepared_folder_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="rerun the shard stage"):
        main(["inspect", str(tmp_path)])


def test_prepare_runs_dvc_yaml_itself_and_a_rerun_skips_everything(synth_video: Path, tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """No second graph: OUT's dvc.yaml is the repository's data stages with data/ dropped from their paths."""
    import subprocess
    import sys

    import yaml

    out = tmp_path / "video-out"
    assert _prepare("video", synth_video, out) == 0
    ours = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    theirs = yaml.safe_load((out / "dvc.yaml").read_text())["stages"]
    assert list(theirs) == ["ingest", "validate", "shard", "features"]
    for name, stage in theirs.items():
        assert stage["cmd"] == " ".join(ours[name]["cmd"].split()).replace(" data/", " ")
    assert set(yaml.safe_load((out / "dvc.lock").read_text())["stages"]) == set(theirs)
    manifest = out / "shards" / "manifest.json"
    written = manifest.stat().st_mtime_ns
    dvc = str(Path(sys.executable).with_name("dvc"))
    # Python's bytecode appearing in a code folder (a stage's first import writes it) changes nothing
    probe = REPO / "src/omni_r1/data/formats/__pycache__/omni_r1_test_probe.cpython-311.pyc"
    made_folder = not probe.parent.exists()
    probe.parent.mkdir(exist_ok=True)
    probe.write_bytes(b"not bytecode")
    try:
        status = subprocess.run([dvc, "status"], cwd=out, capture_output=True, text=True, check=True)
    finally:
        probe.unlink()
        if made_folder:
            probe.parent.rmdir()
    assert "up to date" in status.stdout, status.stdout
    assert _prepare("video", synth_video, out) == 0  # the same params: DVC skips every stage
    assert manifest.stat().st_mtime_ns == written
    capsys.readouterr()


def test_prepare_refuses_an_output_inside_the_dataset(synth_video: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _prepare("video", synth_video, synth_video / "prepared") == 1
    assert "inside the dataset root" in capsys.readouterr().err
    assert not (synth_video / "prepared").exists()


def test_predict_stage_without_shards_says_which_stage_to_run(tmp_path: Path,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    """A user's mistake in the predict stage is one line naming the fix, exit 2, no traceback, nothing written."""
    from stages.predict import main as predict

    code = predict(["--params", str(REPO / "params.yaml"), "--shards", str(tmp_path / "shards"),
                    "--features", str(tmp_path / "features"), "--manifest", str(tmp_path / "validated.parquet"),
                    "--root", str(tmp_path / "raw"), "--out", str(tmp_path / "predictions"),
                    "--metrics", str(tmp_path / "predict.json")])
    assert code == 2
    assert "manifest.json is missing" in caplog.text and "rerun the shard stage" in caplog.text
    assert not (tmp_path / "predictions").exists() and not (tmp_path / "predict.json").exists()
