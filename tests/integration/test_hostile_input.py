"""Hostile input through the stage CLIs (issue 12): no crash on a bad row, no good row lost, nothing touched outside.

One dataset per layout holds the synthetic (good) rows plus one hostile row per family; ingest and
validate run once per layout through their ``main([...])``. Each test then checks one case: exit
status, the quarantine entry (file, line, check), every good sample in the validated manifest, and
that no file outside the stage's output folder was created, changed or removed. The shard stage,
the output-ownership guard, the manifest cross-checks, long ids and late audio are checked through
the shard and features CLIs on the same data.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from omni_r1.data.masks import encode_rle
from omni_r1.data.paths import MAX_KEY_CHARS
from omni_r1.data.shards import ShardIntegrityError, load_manifest, read_samples
from omni_r1.data.synthetic import SynthSpec, generate
from omni_r1.fileio import MARKER_NAME, OutputOwnershipError, claim_output_dir
from omni_r1.types import AUDIO_RATE
from stages import features, ingest, shard, validate
from tests import media_fixtures as fx

REPO = Path(__file__).resolve().parents[2]
SPEC = SynthSpec(videos=2, width=96, height=64, fps=10, seconds=2.0, seed=5)
OVERRIDES = ("data.fps=2.0", "data.max_frames=8", "data.low_res=64", "data.high_res=96",
             "validate.max_bad_fraction=0.95", "validate.require_audio=auto", "shard.videos_per_shard=4",
             "shard.fanout.task_runner=thread", "shard.fanout.workers=2", "features.fanout.task_runner=thread",
             "features.fanout.workers=1")
LONG_ID = "v" * 220  # a legal file name (255 bytes), far past a tar header's 100-byte name field
HUGE_LINE_BYTES = 17 * (1 << 20)  # past ingest's 16 MiB per line


# ------------------------------------------------------------------------------------------- helpers


def snapshot(folder: Path, skip: tuple[Path, ...] = ()) -> dict[str, tuple[int, int, bool]]:
    """Every file and link under ``folder`` (outside ``skip``): size, mtime and whether it is a link."""
    seen = {}
    skipped = [s.resolve() for s in skip]
    for dirpath, dirnames, filenames in os.walk(folder):
        here = Path(dirpath)
        dirnames[:] = [d for d in dirnames if (here / d).resolve() not in skipped]
        for name in filenames:
            path = here / name
            stat = path.lstat()
            seen[path.relative_to(folder).as_posix()] = (stat.st_size, stat.st_mtime_ns, path.is_symlink())
    return seen


def _common(params: Path) -> list[str]:
    return ["--params", str(params), *(arg for item in OVERRIDES for arg in ("--set", item))]


def _box(width: int, height: int, frames: range) -> list[dict[str, Any]]:
    mask = np.zeros((height, width), dtype=bool)
    mask[height // 4: 3 * height // 4, width // 2: width - 2] = True
    return [{"frame": i, "rle": encode_rle(mask)} for i in frames]


def _line(video_id: Any, exp_id: str, expression: Any = "the box on the right", *, exp_type: str = "referring",
          masks: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    objects = [{"obj_id": "1", "masks": _box(96, 64, range(3)) if masks is None else masks}]
    return {"video_id": video_id, "exp_id": exp_id, "expression": expression, "type": exp_type, "split": "train",
            "cue": "appearance", "objects": objects}


def _text(record: dict[str, Any]) -> str:
    return json.dumps(record, ensure_ascii=False)


@dataclass(frozen=True)
class Case:
    """One hostile row: its annotation bytes and the quarantine entry it must get."""

    raw: bytes
    check: str
    reason: str  # a phrase the entry's reason must hold
    file: str = "annotations.jsonl"


def _video_cases() -> dict[str, Case]:
    rle = {"size": [64, 96], "counts": "\u00e9"}
    dup = _text(_line("synth_0000", "dup")).replace('"exp_id": "dup"', '"exp_id": "dup", "exp_id": "dup2"')
    return {
        "latin1_byte": Case(_text(_line("synth_0000", "latin1", "caf_ box")).encode().replace(b"caf_", b"caf\xe9"),
                            "utf8", "is not UTF-8"),
        "lone_surrogate": Case(_text(_line("synth_0000", "surrogate", "SURR box")).replace("SURR", "\\ud800").encode(),
                               "expression_text", "lone surrogate"),
        "rle_counts_e_acute": Case(_text(_line("synth_0000", "rle_e", masks=[{"frame": 0, "rle": rle}])).encode(),
                                   "rle_decodes", "ASCII"),
        "rle_counts_list_of_str": Case(
            _text(_line("synth_0000", "rle_a", masks=[{"frame": 0, "rle": {"size": [64, 96], "counts": ["a"]}}]))
            .encode(), "rle_decodes", "non-negative ints"),
        "nested_brackets": Case(b"[" * 100_000 + b"]" * 100_000, "json", "nested too deeply"),
        "symlink_loop_video": Case(_text(_line("loop", "0")).encode(), "path", "symbolic link loop", "videos/loop"),
        "symlink_out_of_root": Case(_text(_line("outside", "0")).encode(), "path",
                                    "copy the file into the dataset root", "videos/outside"),
        "expression_null": Case(_text(_line("synth_0000", "null", None)).encode(), "expression_text",
                                "must be a string, got null"),
        "expression_list": Case(_text(_line("synth_0000", "list", ["the", "box"])).encode(), "expression_text",
                                "got array"),
        "expression_dict": Case(_text(_line("synth_0000", "dict", {"en": "the box"})).encode(), "expression_text",
                                "got object"),
        "expression_nan": Case(_text(_line("synth_0000", "nan", "NAN_HERE")).replace('"NAN_HERE"', "NaN").encode(),
                               "json", "NaN is not a JSON number"),
        "expression_zero_width": Case(_text(_line("synth_0000", "zw", "\u200b\u200c\u2060\ufeff")).encode(),
                                      "expression_text", "only invisible characters"),
        "expression_too_long": Case(_text(_line("synth_0000", "long", "x" * 5000)).encode(), "expression_text",
                                    "more than 4000"),
        "line_of_17_mib": Case(_text(_line("synth_0000", "huge", "y" * HUGE_LINE_BYTES)).encode(), "line_length",
                               "longer than"),
        "duplicate_json_keys": Case(dup.encode(), "duplicate_key", "exp_id more than once"),
        "frame_true": Case(_text(_line("synth_0000", "ftrue", masks=[{"frame": True, "rle": None}])).encode(),
                           "frame_index", "'frame' must be a whole number"),
        "frame_ten_million": Case(
            _text(_line("synth_0000", "f1e7", masks=[{"frame": 10**7, "rle": None}])).encode(), "frame_index",
            "outside the video's 20 frames"),
        "rle_20000_square": Case(
            _text(_line("synth_0000", "big", masks=[{"frame": 0, "rle": {"size": [20000, 20000], "counts": "0"}}]))
            .encode(), "rle_size", "not the displayed frame size"),
        "video_id_list": Case(_text(_line(["synth_0000"], "vlist")).encode(), "id_type", "video_id must be a string"),
        "unknown_type": Case(_text(_line("synth_0000", "upper", exp_type="REFERRING")).encode(), "known_type",
                             "is not one of referring, reasoning, null"),
    }


VIDEO_CASES = _video_cases()


@dataclass(frozen=True)
class LayoutRun:
    """What ingest and validate produced on one hostile dataset."""

    base: Path  # holds the dataset root and anything else the test made; only ``work`` may change
    root: Path
    work: Path
    params: Path
    codes: dict[str, int]
    before: dict[str, tuple[int, int, bool]]
    quarantine: list[dict[str, str]]
    good: set[str]
    lines: dict[str, str]  # case name -> "annotations.jsonl:<n>" (or the CSV / JSON path)
    expected_good: set[str]


def _run_gate(base: Path, root: Path, fmt: str) -> tuple[Path, Path, dict[str, int], dict, list, set[str]]:
    work = base / "work"
    work.mkdir()
    params = work / "params.yaml"
    shutil.copy(REPO / "params.yaml", params)
    before = snapshot(base, skip=(work,))
    common = _common(params)
    codes = {
        "ingest": ingest.main([*common, "--root", str(root), "--format", fmt, "--out", str(work / "manifest.parquet"),
                               "--metrics", str(work / "ingest.json")]),
        "validate": validate.main([*common, "--root", str(root), "--manifest", str(work / "manifest.parquet"),
                                   "--out", str(work / "validated.parquet"),
                                   "--quarantine", str(work / "quarantine.json"),
                                   "--metrics", str(work / "validate.json")]),
    }
    quarantine = json.loads((work / "quarantine.json").read_text())
    good = set(pd.read_parquet(work / "validated.parquet")["sample_id"])
    return work, params, codes, before, quarantine, good


def _synthetic_ids(root: Path) -> set[str]:
    ids = set()
    for line in (root / "annotations.jsonl").read_text().splitlines():
        record = json.loads(line)
        ids.add(f"{record['video_id']}/{record['exp_id']}")
    return ids


@pytest.fixture(scope="module")
def video_run(tmp_path_factory: pytest.TempPathFactory) -> LayoutRun:
    base = tmp_path_factory.mktemp("hostile-video")
    root = base / "dataset"
    generate(root, "video", SPEC)
    synthetic = _synthetic_ids(root)
    videos = root / "videos"
    fx.make_late_audio(videos / "late_audio.mp4")
    shutil.copy(videos / "synth_0000.mp4", videos / f"{LONG_ID}.mp4")
    os.symlink("loop.mp4", videos / "loop.mp4")
    shutil.copy(videos / "synth_0000.mp4", base / "outside.mp4")
    os.symlink(base / "outside.mp4", videos / "outside.mp4")
    good_extra = [
        _line("synth_0001", "u2028", "the box\u2028on the right"),  # a raw U+2028 inside a JSON string
        _line("late_audio", "0", "the box that beeps", masks=_box(96, 64, range(0, 60, 5))),
        _line(LONG_ID, "0", "the box of a long id", masks=_box(96, 64, range(20))),
    ]
    raw = [line.encode() for line in (root / "annotations.jsonl").read_text().splitlines()]
    raw += [_text(record).encode() for record in good_extra]
    lines = {}
    for name, case in VIDEO_CASES.items():
        raw.append(case.raw)
        lines[name] = f"annotations.jsonl:{len(raw)}"
    (root / "annotations.jsonl").write_bytes(b"\n".join(raw) + b"\n")
    work, params, codes, before, quarantine, good = _run_gate(base, root, "video")
    expected = synthetic | {"synth_0001/u2028", "late_audio/0", f"{LONG_ID}/0"}
    return LayoutRun(base, root, work, params, codes, before, quarantine, good, lines, expected)


def _entries(run: LayoutRun, line: str) -> list[dict[str, str]]:
    return [e for e in run.quarantine if e["line"] == line]


# ------------------------------------------------------------------------------------------- plain video layout


def test_video_gate_exits_zero_and_keeps_every_good_row(video_run: LayoutRun) -> None:
    assert video_run.codes == {"ingest": 0, "validate": 0}
    assert video_run.good == video_run.expected_good


def test_video_gate_touches_nothing_outside_its_outputs(video_run: LayoutRun) -> None:
    assert snapshot(video_run.base, skip=(video_run.work,)) == video_run.before


@pytest.mark.parametrize("name", sorted(VIDEO_CASES))
def test_video_hostile_row_is_quarantined_by_line_and_check(video_run: LayoutRun, name: str) -> None:
    case = VIDEO_CASES[name]
    entries = _entries(video_run, video_run.lines[name])
    assert [e["check"] for e in entries] == [case.check], entries
    (entry,) = entries
    assert entry["file"] == case.file
    assert case.reason in entry["reason"], entry["reason"]
    assert entry["hint"].strip()
    assert len(entry["reason"]) < 3000  # a 17 MiB line is named, not copied


def test_every_video_quarantine_entry_is_a_hostile_row(video_run: LayoutRun) -> None:
    assert {e["line"] for e in video_run.quarantine} == set(video_run.lines.values())


def test_u2028_inside_a_string_keeps_line_numbers_and_the_row(video_run: LayoutRun) -> None:
    manifest = pd.read_parquet(video_run.work / "validated.parquet").set_index("sample_id")
    assert manifest.loc["synth_0001/u2028", "expression"] == "the box\u2028on the right"
    n_synthetic = len(video_run.expected_good) - 3
    assert manifest.loc["synth_0001/u2028", "source_line"] == f"annotations.jsonl:{n_synthetic + 1}"


def test_ingest_refuses_an_output_inside_the_dataset(video_run: LayoutRun, caplog: pytest.LogCaptureFixture) -> None:
    before = snapshot(video_run.base, skip=(video_run.work,))
    code = ingest.main([*_common(video_run.params), "--root", str(video_run.root), "--format", "video",
                        "--out", str(video_run.root / "manifest.parquet"),
                        "--metrics", str(video_run.work / "ingest-again.json")])
    assert code == 2
    assert "is inside" in caplog.text and "Traceback" not in caplog.text
    assert snapshot(video_run.base, skip=(video_run.work,)) == before


def test_a_full_disk_names_the_file(video_run: LayoutRun, monkeypatch: pytest.MonkeyPatch,
                                    caplog: pytest.LogCaptureFixture, tmp_path: Path) -> None:
    def full(*args: Any, **kwargs: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    import pyarrow.parquet as pq

    monkeypatch.setattr(pd.DataFrame, "to_parquet", full)  # validate writes a dataframe
    monkeypatch.setattr(pq, "write_table", full)  # ingest writes a pyarrow table
    out = tmp_path / "manifest.parquet"
    code = ingest.main([*_common(video_run.params), "--root", str(video_run.root), "--format", "video",
                        "--out", str(out), "--metrics", str(tmp_path / "ingest.json")])
    assert code == 2
    assert f"cannot write {out}: No space left on device" in caplog.text
    assert list(tmp_path.iterdir()) == []  # no temp file left behind


# ------------------------------------------------------------------------------------------- shard stage


@pytest.fixture(scope="module")
def sharded(video_run: LayoutRun) -> Path:
    out = video_run.work / "shards"
    code = shard.main([*_common(video_run.params), "--manifest", str(video_run.work / "validated.parquet"),
                       "--root", str(video_run.root), "--out", str(out),
                       "--metrics", str(video_run.work / "shard.json")])
    assert code == 0
    return out


def test_shard_keeps_every_validated_sample(video_run: LayoutRun, sharded: Path) -> None:
    assert {s.meta["sample_id"] for s in read_samples(sharded)} == video_run.expected_good
    assert snapshot(video_run.base, skip=(video_run.work,)) == video_run.before


def test_long_video_id_gets_a_key_that_fits_a_tar_header(sharded: Path) -> None:
    (sample,) = [s for s in read_samples(sharded) if s.meta["video_id"] == LONG_ID]
    key = sample.key.split("/")[0]
    assert len(key) <= MAX_KEY_CHARS and len(f"{key}.expressions.json") <= 100
    assert not list(sharded.glob(".*.tmp"))


def test_audio_that_starts_two_seconds_late_keeps_its_tone_at_two_to_four_seconds(sharded: Path) -> None:
    (sample,) = [s for s in read_samples(sharded) if s.meta["video_id"] == "late_audio"]
    assert sample.audio.size == 6 * AUDIO_RATE
    rms = [float(np.sqrt(np.mean(sample.audio[s * AUDIO_RATE:(s + 1) * AUDIO_RATE] ** 2))) for s in range(6)]
    assert max(rms[0], rms[1], rms[4], rms[5]) < 0.01, rms
    assert min(rms[2], rms[3]) > 0.05, rms


def test_shard_output_carries_the_marker_listing_what_it_wrote(sharded: Path) -> None:
    marker = json.loads((sharded / MARKER_NAME).read_text())
    assert marker["stage"] == "shard" and marker["complete"] is True
    assert set(marker["files"]) == {p.name for p in sharded.iterdir() if p.name != MARKER_NAME}


@pytest.mark.parametrize("where", ["root", "parent", "inside", "foreign"])
def test_shard_refuses_an_out_it_does_not_own(video_run: LayoutRun, sharded: Path, where: str,
                                              caplog: pytest.LogCaptureFixture) -> None:
    """The first of the five worst: --out at, above or inside the dataset, or a folder of someone else's files."""
    foreign = video_run.base / "someone-elses"
    foreign.mkdir(exist_ok=True)
    (foreign / "thesis.tex").write_text("do not delete")
    out = {"root": video_run.root, "parent": video_run.base, "inside": video_run.root / "shards",
           "foreign": foreign}[where]
    before = snapshot(video_run.base, skip=(video_run.work,))
    code = shard.main([*_common(video_run.params), "--manifest", str(video_run.work / "validated.parquet"),
                       "--root", str(video_run.root), "--out", str(out),
                       "--metrics", str(video_run.work / f"shard-{where}.json")])
    assert code == 2
    phrase = {"root": "is inside", "parent": "holds", "inside": "is inside", "foreign": "did not write"}[where]
    assert phrase in caplog.text and "Traceback" not in caplog.text
    assert snapshot(video_run.base, skip=(video_run.work,)) == before


def test_shard_rerun_deletes_only_what_it_wrote(video_run: LayoutRun, sharded: Path, tmp_path: Path) -> None:
    out = tmp_path / "shards"
    argv = [*_common(video_run.params), "--manifest", str(video_run.work / "validated.parquet"),
            "--root", str(video_run.root), "--out", str(out), "--metrics", str(tmp_path / "shard.json")]
    assert shard.main(argv) == 0
    (out / "notes.txt").write_text("mine")
    assert shard.main(argv) == 0
    assert (out / "notes.txt").read_text() == "mine"
    assert {s.meta["sample_id"] for s in read_samples(out)} == video_run.expected_good


def test_features_refuses_foreign_safetensors_and_the_shard_folder(video_run: LayoutRun, sharded: Path, tmp_path: Path,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "weights.safetensors").write_bytes(b"precious")
    for out, phrase in ((foreign, "did not write"), (sharded, "is inside")):
        caplog.clear()
        before = snapshot(video_run.base, skip=(video_run.work,)) | snapshot(tmp_path)
        code = features.main([*_common(video_run.params), "--shards", str(sharded), "--out", str(out),
                              "--metrics", str(tmp_path / "features.json")])
        assert code == 2
        assert phrase in caplog.text
        assert snapshot(video_run.base, skip=(video_run.work,)) | snapshot(tmp_path) == before
    assert (foreign / "weights.safetensors").read_bytes() == b"precious"


def test_predict_output_guard_refuses_its_inputs(sharded: Path, tmp_path: Path) -> None:
    from stages.predict import PREDICTION_PATTERNS

    with pytest.raises(OutputOwnershipError, match="is inside"):
        claim_output_dir(sharded / "predictions", "predict", protected=[sharded], patterns=PREDICTION_PATTERNS)
    with pytest.raises(OutputOwnershipError, match="belongs to the 'shard' stage"):
        claim_output_dir(sharded, "predict", protected=[], patterns=PREDICTION_PATTERNS)
    out = tmp_path / "predictions"
    owned = claim_output_dir(out, "predict", protected=[sharded], patterns=PREDICTION_PATTERNS)
    owned.clear()
    (out / "full").mkdir()
    (out / "full" / "a.png").write_bytes(b"png")
    owned.commit()
    (out / "readme.md").write_text("kept")
    again = claim_output_dir(out, "predict", protected=[sharded], patterns=PREDICTION_PATTERNS)
    again.clear()
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == [MARKER_NAME, "readme.md"]


# ------------------------------------------------------------------------------------------- shard manifests


def _edited_copy(sharded: Path, tmp_path: Path, edit: Any) -> Path:
    copy = tmp_path / "shards"
    shutil.copytree(sharded, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    edit(manifest["shards"])
    (copy / "manifest.json").write_text(json.dumps(manifest))
    return copy


def test_a_relabelled_split_is_refused_naming_the_shard(video_run: LayoutRun, sharded: Path, tmp_path: Path,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    def relabel(entries: list[dict[str, Any]]) -> None:
        entries[0]["split"] = "val" if entries[0]["split"] != "val" else "train"

    copy = _edited_copy(sharded, tmp_path, relabel)
    name = load_manifest(sharded)["shards"][0]["name"]
    with pytest.raises(ShardIntegrityError, match=name):
        list(read_samples(copy, "val"))
    code = features.main([*_common(video_run.params), "--shards", str(copy), "--out", str(tmp_path / "features"),
                          "--metrics", str(tmp_path / "features.json")])
    assert code == 2 and name in caplog.text


def test_a_record_of_another_split_is_refused_naming_the_shard(sharded: Path, tmp_path: Path) -> None:
    """A shard renamed to another split together with its manifest entry: the records still say their split."""
    first = load_manifest(sharded)["shards"][0]
    other = "test" if first["split"] != "test" else "val"
    renamed = f"{other}-000099.tar"

    def move(entries: list[dict[str, Any]]) -> None:
        entries[0].update(split=other, name=renamed)

    copy = _edited_copy(sharded, tmp_path, move)
    (copy / first["name"]).rename(copy / renamed)
    with pytest.raises(ShardIntegrityError, match=f"shard {renamed}.*listed under split '{other}'"):
        list(read_samples(copy, other))


def test_a_shard_listed_twice_is_refused(sharded: Path, tmp_path: Path) -> None:
    copy = _edited_copy(sharded, tmp_path, lambda entries: entries.append(dict(entries[0])))
    with pytest.raises(ShardIntegrityError, match="listed twice"):
        list(read_samples(copy))


def test_a_key_in_two_shards_is_refused(sharded: Path, tmp_path: Path) -> None:
    def clone(entries: list[dict[str, Any]]) -> None:
        twin = dict(entries[0])
        twin["name"] = f"{twin['split']}-000042.tar"
        entries.append(twin)

    copy = _edited_copy(sharded, tmp_path, clone)
    with pytest.raises(ShardIntegrityError, match="is also in shard"):
        list(read_samples(copy))


# ------------------------------------------------------------------------------------------- RefAVS


REFAVS_CASES = {
    "latin1_byte": (b"synth_0000,synth_0000_3_9,train,3,caf\xe9 box", "utf8", "is not UTF-8"),
    "field_count": (b"synth_0000,synth_0000_3_8,train,3,the,box", "csv", "has 6 fields, the header 5"),
    "stray_quote": (b'synth_0000,synth_0000_3_7,train,3,"the box', "csv", "is not a CSV row"),
    "zero_width": ("synth_0000,synth_0000_3_6,train,3,\u200b\u200b".encode(), "expression_text", "only invisible"),
    "fid_not_a_number": (b"synth_0000,synth_0000_x_5,train,x,the box", "fid", "must be a whole number"),
}


@pytest.fixture(scope="module")
def refavs_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[LayoutRun, str]:
    base = tmp_path_factory.mktemp("hostile-refavs")
    root = base / "dataset"
    generate(root, "refavs", SynthSpec(videos=2, seed=5, width=96, height=64))
    lines = (root / "metadata.csv").read_bytes().splitlines()
    records = [line.decode().split(",") for line in lines[1:]]
    # A mask PNG cut after its header: it opens and tells its size, then does not decode.
    pairs = [(r[0], r[3]) for r in records]
    vid, fid = next(p for p in pairs if pairs.count(p) == 1)
    cut = root / "gt_mask" / vid / f"fid_{fid}" / "00003.png"
    cut.write_bytes(cut.read_bytes()[:60])
    victim = next(r[1] for r in records if (r[0], r[3]) == (vid, fid))
    raw = [b"\xef\xbb\xbf" + lines[0], *lines[1:]]  # Excel's "CSV UTF-8" starts with a byte-order mark
    where = {}
    for name, (line, _, _) in REFAVS_CASES.items():
        raw.append(line)
        where[name] = f"metadata.csv:{len(raw)}"
    (root / "metadata.csv").write_bytes(b"\r\n".join(raw) + b"\r\n")
    work, params, codes, before, quarantine, good = _run_gate(base, root, "refavs")
    expected = {r[1] for r in records} - {victim}
    run = LayoutRun(base, root, work, params, codes, before, quarantine, good, where, expected)
    return run, cut.relative_to(root).as_posix()


def test_refavs_gate_keeps_every_good_row_despite_a_bom(refavs_run: tuple[LayoutRun, str]) -> None:
    run, _ = refavs_run
    assert run.codes == {"ingest": 0, "validate": 0}
    assert run.good == run.expected_good
    assert snapshot(run.base, skip=(run.work,)) == run.before


@pytest.mark.parametrize("name", sorted(REFAVS_CASES))
def test_refavs_hostile_row_is_quarantined_by_line_and_check(refavs_run: tuple[LayoutRun, str], name: str) -> None:
    run, _ = refavs_run
    _, check, reason = REFAVS_CASES[name]
    (entry,) = _entries(run, run.lines[name])
    assert (entry["check"], entry["file"]) == (check, "metadata.csv")
    assert reason in entry["reason"], entry["reason"]


def test_a_truncated_mask_png_is_caught_at_validate(refavs_run: tuple[LayoutRun, str]) -> None:
    """Validation passed it before, and the shard stage then crashed on it (and on every rerun)."""
    run, cut = refavs_run
    entries = [e for e in run.quarantine if e["file"] == cut]
    assert entries and all(e["check"] == "mask_size_matches_frame" for e in entries)
    assert "not a readable image" in entries[0]["reason"] and entries[0]["line"].startswith("metadata.csv:")
    out = run.work / "shards"
    code = shard.main([*_common(run.params), "--manifest", str(run.work / "validated.parquet"), "--root",
                       str(run.root), "--out", str(out), "--metrics", str(run.work / "shard.json")])
    assert code == 0
    assert {s.meta["sample_id"] for s in read_samples(out)} == run.expected_good
    assert snapshot(run.base, skip=(run.work,)) == run.before


# ------------------------------------------------------------------------------------------- ReVOS


REVOS_CASES = {
    "expression_as_plain_string": ("90", "json_shape", "must be an object"),
    "type_id_as_string": ("91", "known_type", "type_id must be 0"),
    "zero_width_expression": ("92", "expression_text", "only invisible"),
    "rle_20000_square": ("93", "rle_size", "not the displayed frame size"),
    "duplicate_expression_id": ("94", "duplicate_key", "more than once"),
}


@pytest.fixture(scope="module")
def revos_run(tmp_path_factory: pytest.TempPathFactory) -> LayoutRun:
    base = tmp_path_factory.mktemp("hostile-revos")
    root = base / "dataset"
    generate(root, "revos", SynthSpec(videos=2, seed=5, width=96, height=64, fps=10, seconds=2.0))
    meta_path = root / "meta_expressions_train_.json"
    meta = json.loads(meta_path.read_text())
    video = sorted(meta["videos"])[0]
    n_frames = len(meta["videos"][video]["frames"])
    mask_dict = json.loads((root / "mask_dict.json").read_text())
    mask_dict["big"] = [{"size": [20000, 20000], "counts": "0"}] + [None] * (n_frames - 1)
    (root / "mask_dict.json").write_text(json.dumps(mask_dict))
    exps = meta["videos"][video]["expressions"]
    exps["90"] = "the dog on the left"
    exps["91"] = {"exp": "the box", "anno_id": [], "obj_id": [], "type_id": "2"}
    exps["92"] = {"exp": "\u200b", "anno_id": [], "obj_id": [], "type_id": 2}
    exps["93"] = {"exp": "the huge mask", "anno_id": ["big"], "obj_id": [9], "type_id": 0}
    text = json.dumps(meta)
    twice = '{"exp": "one", "anno_id": [], "obj_id": [], "type_id": 2}'
    text = text.replace('"expressions": {', f'"expressions": {{"94": {twice}, "94": {twice}, ', 1)
    meta_path.write_text(text)
    first = json.loads(text)["videos"]
    assert sorted(first)[0] == video and "94" in first[video]["expressions"]
    ids = {f"{v}/{e}" for name in ("meta_expressions_train_.json", "meta_expressions_valid_.json")
           for v, entry in json.loads((root / name).read_text())["videos"].items() for e in entry["expressions"]}
    where = {name: f"meta_expressions_train_.json:videos.{video}.expressions.{exp_id}"
             for name, (exp_id, _, _) in REVOS_CASES.items()}
    work, params, codes, before, quarantine, good = _run_gate(base, root, "revos")
    expected = ids - {f"{video}/{exp_id}" for exp_id, _, _ in REVOS_CASES.values()}
    return LayoutRun(base, root, work, params, codes, before, quarantine, good, where, expected)


def test_revos_gate_keeps_every_good_row(revos_run: LayoutRun) -> None:
    assert revos_run.codes == {"ingest": 0, "validate": 0}
    assert revos_run.good == revos_run.expected_good
    assert snapshot(revos_run.base, skip=(revos_run.work,)) == revos_run.before


@pytest.mark.parametrize("name", sorted(REVOS_CASES))
def test_revos_hostile_row_is_quarantined_by_json_path_and_check(revos_run: LayoutRun, name: str) -> None:
    _, check, reason = REVOS_CASES[name]
    (entry,) = _entries(revos_run, revos_run.lines[name])
    assert entry["check"] == check
    assert entry["file"] in ("meta_expressions_train_.json", "mask_dict.json")
    assert reason in entry["reason"], entry["reason"]


# ------------------------------------------------------------------------------------------- messages


def test_an_unreadable_video_is_told_about_permissions_not_to_redownload(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from omni_r1.data import video
    from omni_r1.data.video import MediaError

    clip = fx.make_clip(tmp_path / "clip.mp4", size=(96, 64), seconds=1)
    monkeypatch.setattr(video.os, "access", lambda path, mode: False)
    with pytest.raises(MediaError, match="permission denied") as caught:
        video.probe(clip)
    assert "chmod a+r" in caught.value.hint and "re-download" not in str(caught.value)
