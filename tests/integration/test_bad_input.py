"""Bad input end to end: every broken file or annotation is quarantined by name, and no good sample is lost.

One dataset in the plain video layout holds the synthetic videos plus odd media built with
``tests/media_fixtures.py`` and annotation lines with deliberate faults. The stages run once, through
their ``main([...])`` on tmp paths (ingest -> validate -> shard -> features, the fan-out under the
session's Prefect harness); the small tests below each check one thing about that run.

Where each fault is caught:

- probe faults (truncated, zero-byte, not-a-video), path traversal, a frame past the end and RLEs that
  do not decode: ingest turns them into rows with ``ingest_error`` and the ingest rule they broke
  (``ingest_check``), which validation quarantines under that rule, naming the annotation line;
- a duplicate id and a sound cue on a silent video: validation;
- a file that probes cleanly but does not decode (corrupt payload): the shard stage's quarantine.

Odd but valid media (no audio, 5.1 at 48 kHz, odd size, non-square pixels, variable frame rate) must
flow through to the shards.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import pytest

from omni_r1.data.features import load_feature_shard
from omni_r1.data.masks import encode_rle
from omni_r1.data.shards import load_manifest, read_samples
from omni_r1.data.synthetic import SynthSpec, generate
from omni_r1.data.video import frame_times
from omni_r1.types import AUDIO_RATE, Sample
from stages import features, ingest, shard, validate
from tests import media_fixtures as fx

REPO = Path(__file__).resolve().parents[2]
SPEC = SynthSpec(videos=3, width=96, height=64, fps=10, seconds=2.0, seed=3)
SAMPLE_FPS = 2.0
LOW, HIGH = 64, 96
OVERRIDES = (
    f"data.fps={SAMPLE_FPS}",
    "data.max_frames=8",
    f"data.low_res={LOW}",
    f"data.high_res={HIGH}",
    "validate.max_bad_fraction=0.9",  # a third of the rows are broken on purpose
    "validate.require_audio=auto",
    "shard.videos_per_shard=4",
    "shard.fanout.task_runner=thread",
    "shard.fanout.workers=2",
    "features.fanout.task_runner=thread",
    "features.fanout.workers=2",
)


@dataclass(frozen=True)
class Media:
    """An extra video: its builder, displayed size (width, height) and frame count."""

    build: Callable[[Path], Path]
    size: tuple[int, int]
    frames: int


# Extra videos, by video id. Sizes are the DISPLAYED sizes the masks must have.
GOOD_MEDIA = {
    "no_audio": Media(fx.make_no_audio, (160, 120), 20),
    "surround": Media(fx.make_surround, (160, 120), 20),
    "odd_size": Media(fx.make_odd_size, (161, 97), 10),
    "wide_pixels": Media(fx.make_non_square_pixels, (320, 120), 10),  # coded 160x120, SAR 2:1
    "vfr": Media(fx.make_vfr, (160, 120), 20),
}
# Good extra samples: (video_id, exp_id) of the lines that must reach the shards.
GOOD_EXTRA = {"no_audio/look", "surround/0", "odd_size/0", "wide_pixels/0", "vfr/0"}


@dataclass(frozen=True)
class BadCase:
    """A deliberately broken sample and where and how it must be quarantined."""

    sample_id: str
    report: str  # "validate" (data/interim/quarantine.json) or "shard" (<shards>/quarantine.json)
    check: str
    file: str  # the entry's ``file`` must be this (relative to the dataset root)
    reason: str  # a phrase the reason must contain
    fix: str  # a phrase that says what to do, in the hint or (for probe failures, quoted there) the reason
    also: tuple[str, ...] = ()  # further checks the same fault rightly fails


REENCODE = "re-encode it with `ffmpeg"
BAD_CASES = {
    "truncated_mp4": BadCase("truncated/0", "validate", "media_readable", "videos/truncated.mp4", "truncated",
                             REENCODE),
    "zero_byte": BadCase("empty/0", "validate", "media_readable", "videos/empty.mp4", "empty (0 bytes)",
                         "re-download"),
    "not_a_video": BadCase(
        "not_video/0", "validate", "media_readable", "videos/not_video.mp4", "not a readable media file", REENCODE
    ),
    "corrupt_payload": BadCase("corrupt/0", "shard", "decodable", "videos/corrupt.mp4", "ffmpeg failed", REENCODE),
    "sound_cue_without_audio": BadCase(
        "no_audio/hear", "validate", "audio_present", "videos/no_audio.mp4", "no audio stream", "add an audio track"
    ),
    "mask_past_the_last_frame": BadCase(
        "synth_0000/past_end", "validate", "frame_index", "annotations.jsonl",
        "frame 20 is outside the video's 20 frames", "fix the frame index",
    ),
    "undecodable_rle": BadCase(
        "synth_0001/garbled", "validate", "rle_decodes", "annotations.jsonl", "does not decode", "re-encode"
    ),
    "truncated_rle": BadCase(
        "synth_0001/cut", "validate", "rle_decodes", "annotations.jsonl", "do not cover exactly 64x96", "re-encode"
    ),
    "duplicate_id": BadCase(
        "synth_0002/0", "validate", "unique_sample_id", "videos/synth_0002.mp4", "appears on 2 rows", "own exp_id",
        also=("unique_video_expression",),  # an exact copy repeats the expression text too
    ),
    "path_traversal": BadCase(
        "../x/0", "validate", "path", "videos/../x", "escapes the dataset root", "re-run the ingest"
    ),
}


# ------------------------------------------------------------------------------------------- the dataset


def _masks(width: int, height: int, frames: range) -> list[dict[str, Any]]:
    """A box over the right-hand middle of the displayed frame, as sparse ``{"frame", "rle"}`` entries."""
    mask = np.zeros((height, width), dtype=bool)
    mask[height // 4 : 3 * height // 4, width // 2 : width - 2] = True
    return [{"frame": i, "rle": encode_rle(mask)} for i in frames]


def _line(video_id: str, exp_id: str, expression: str, cue: str, objects: list[dict[str, Any]]) -> dict[str, Any]:
    return {"video_id": video_id, "exp_id": exp_id, "expression": expression, "type": "referring", "split": "train",
            "cue": cue, "objects": objects}


def _corrupt_payload(src: Path, dst: Path) -> Path:
    """``src`` with 3 kB of its video data overwritten in the middle: the header and packets stay intact.

    Probing (headers and packet count, first frame decoded) passes; decoding the whole stream does not.
    """
    data = bytearray(src.read_bytes())
    box = data.find(b"mdat") - 4  # an mp4 box: 4-byte big-endian size, then its type
    size = int.from_bytes(data[box : box + 4], "big")
    start, length = box + size // 2, min(3000, size // 4)  # well inside the media data, away from the index
    data[start : start + length] = np.random.default_rng(0).integers(0, 256, length, dtype=np.uint8).tobytes()
    dst.write_bytes(bytes(data))
    return dst


def _build_media(videos: Path, scratch: Path) -> None:
    for video_id, media in GOOD_MEDIA.items():
        media.build(videos / f"{video_id}.mp4")
    clip = fx.make_clip(scratch / "clip.mp4", size=(96, 64), seconds=2)
    fx.make_truncated(clip, videos / "truncated.mp4")
    fx.make_zero_byte(videos / "empty.mp4")
    fx.make_not_a_video(videos / "not_video.mp4")
    _corrupt_payload(fx.make_clip(scratch / "silent.mp4", size=(96, 64), seconds=2, audio=False),
                     videos / "corrupt.mp4")


def _extra_lines(root: Path, synthetic: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Annotation lines for the extra videos and the annotation-level faults on the synthetic ones."""
    lines = []
    for video_id, media in GOOD_MEDIA.items():
        box = [{"obj_id": "1", "masks": _masks(*media.size, range(0, media.frames, 3))}]
        exp_id = "look" if video_id == "no_audio" else "0"
        lines.append(_line(video_id, exp_id, f"the box on the right of {video_id}", "appearance", box))
    no_audio = GOOD_MEDIA["no_audio"]
    lines.append(_line("no_audio", "hear", "the object making the beep", "sound",
                       [{"obj_id": "1", "masks": _masks(*no_audio.size, range(3))}]))
    small = [{"obj_id": "1", "masks": _masks(96, 64, range(3))}]
    for video_id in ("truncated", "empty", "not_video", "corrupt"):
        lines.append(_line(video_id, "0", "the box on the right", "appearance", small))

    past_end = _masks(SPEC.width, SPEC.height, range(SPEC.num_frames - 2, SPEC.num_frames + 1))  # frames 18..20
    lines.append(_line("synth_0000", "past_end", "the box past the end", "appearance",
                       [{"obj_id": "1", "masks": past_end}]))
    garbled = [{"frame": 0, "rle": {"size": [SPEC.height, SPEC.width], "counts": "!!!bad"}}]
    lines.append(_line("synth_0001", "garbled", "the garbled box", "appearance", [{"obj_id": "1", "masks": garbled}]))
    good_rle = _masks(SPEC.width, SPEC.height, range(1))[0]["rle"]
    cut = {"size": good_rle["size"], "counts": good_rle["counts"][: len(good_rle["counts"]) // 2]}
    lines.append(_line("synth_0001", "cut", "the cut box", "appearance",
                       [{"obj_id": "1", "masks": [{"frame": 0, "rle": cut}]}]))
    lines.append(next(r for r in synthetic if r["video_id"] == "synth_0002" and r["exp_id"] == "0"))  # duplicate
    # A real video sits at <root>/x.mp4, so the traversal would find a file if it were not refused.
    shutil.copy(root / "videos" / "synth_0000.mp4", root / "x.mp4")
    lines.append(_line("../x", "0", "the box outside the dataset", "appearance", small))
    return lines


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("bad-input-data")
    generate(root, "video", SPEC)
    _build_media(root / "videos", tmp_path_factory.mktemp("bad-input-scratch"))
    annotations = root / "annotations.jsonl"
    synthetic = [json.loads(line) for line in annotations.read_text().splitlines() if line.strip()]
    extra = _extra_lines(root, synthetic)
    with annotations.open("a") as handle:
        handle.writelines(json.dumps(record, sort_keys=True) + "\n" for record in extra)
    return root


def _synthetic_ids(root: Path) -> set[str]:
    """Sample ids of the lines ``generate`` wrote (the first lines of annotations.jsonl)."""
    ids = set()
    for line in (root / "annotations.jsonl").read_text().splitlines()[: 4 * SPEC.videos]:
        record = json.loads(line)
        ids.add(f"{record['video_id']}/{record['exp_id']}")
    return ids


# ------------------------------------------------------------------------------------------- the run


@dataclass(frozen=True)
class Run:
    """What the stages produced on the dataset."""

    root: Path
    work: Path
    params: Path
    codes: dict[str, int]
    manifest: pd.DataFrame
    validate_quarantine: list[dict[str, str]]
    shard_quarantine: list[dict[str, str]]
    metrics: dict[str, dict[str, Any]]
    samples: dict[str, Sample]  # by sample id

    def entries(self, case: BadCase) -> list[dict[str, str]]:
        report = self.validate_quarantine if case.report == "validate" else self.shard_quarantine
        return [e for e in report if e["sample_id"] == case.sample_id and e["check"] == case.check]


def _common(params: Path) -> list[str]:
    return ["--params", str(params), *(arg for item in OVERRIDES for arg in ("--set", item))]


@pytest.fixture(scope="module")
def run(dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Run:
    work = tmp_path_factory.mktemp("bad-input-run")
    params = work / "params.yaml"
    shutil.copy(REPO / "params.yaml", params)
    common = _common(params)
    metrics = work / "metrics"
    codes = {
        "ingest": ingest.main([*common, "--root", str(dataset), "--format", "video",
                               "--out", str(work / "manifest.parquet"), "--metrics", str(metrics / "ingest.json")]),
        "validate": validate.main([*common, "--manifest", str(work / "manifest.parquet"), "--root", str(dataset),
                                   "--out", str(work / "validated.parquet"),
                                   "--quarantine", str(work / "quarantine.json"),
                                   "--metrics", str(metrics / "validate.json")]),
        "shard": shard.main([*common, "--manifest", str(work / "validated.parquet"), "--root", str(dataset),
                             "--out", str(work / "shards"), "--metrics", str(metrics / "shard.json")]),
        "features": features.main([*common, "--shards", str(work / "shards"), "--out", str(work / "features"),
                                   "--metrics", str(metrics / "features.json")]),
    }
    samples: dict[str, Sample] = {}
    for sample in read_samples(work / "shards"):
        sample_id = str(sample.meta["sample_id"])
        assert sample_id not in samples, f"{sample_id} is in the shards twice"
        samples[sample_id] = sample
    return Run(
        root=dataset,
        work=work,
        params=params,
        codes=codes,
        manifest=pd.read_parquet(work / "manifest.parquet"),
        validate_quarantine=json.loads((work / "quarantine.json").read_text()),
        shard_quarantine=json.loads((work / "shards" / "quarantine.json").read_text()),
        metrics={p.stem: json.loads(p.read_text()) for p in metrics.glob("*.json")},
        samples=samples,
    )


def _expected_good(run: Run) -> set[str]:
    duplicated = BAD_CASES["duplicate_id"].sample_id  # every copy of a duplicated id is quarantined, by design
    return (_synthetic_ids(run.root) - {duplicated}) | GOOD_EXTRA


# ------------------------------------------------------------------------------------------- every stage ran


def test_every_stage_returns_zero(run: Run) -> None:
    assert run.codes == {"ingest": 0, "validate": 0, "shard": 0, "features": 0}


# ------------------------------------------------------------------------------------------- bad cases


@pytest.mark.parametrize("name", sorted(BAD_CASES))
def test_bad_case_is_quarantined_naming_its_file(run: Run, name: str) -> None:
    case = BAD_CASES[name]
    entries = run.entries(case)
    assert entries, f"{case.sample_id} has no {case.check} entry in the {case.report} quarantine"
    for entry in entries:
        assert entry["file"] == case.file
        assert entry["stage"] == case.report
        assert case.reason in entry["reason"], entry["reason"]
        assert case.fix in f"{entry['reason']} {entry['hint']}", entry


@pytest.mark.parametrize("name", sorted(BAD_CASES))
def test_bad_case_is_not_in_the_shards(run: Run, name: str) -> None:
    assert BAD_CASES[name].sample_id not in run.samples


@pytest.mark.parametrize("name", sorted(BAD_CASES))
def test_bad_case_fails_only_its_own_checks(run: Run, name: str) -> None:
    """One fault, one finding: no follow-on entries whose hints would send a person after the wrong fix."""
    case = BAD_CASES[name]
    found = {e["check"] for e in run.validate_quarantine + run.shard_quarantine if e["sample_id"] == case.sample_id}
    assert found == {case.check, *case.also}


def test_every_quarantine_entry_has_a_reason_and_a_fix(run: Run) -> None:
    for entry in run.validate_quarantine + run.shard_quarantine:
        assert entry["file"].strip() and entry["reason"].strip() and entry["hint"].strip(), entry


def test_media_faults_spell_out_the_full_path(run: Run) -> None:
    """A media fault's words carry the file's full path too, so a log line alone finds the file."""
    for name in ("truncated_mp4", "zero_byte", "not_a_video", "corrupt_payload"):
        case = BAD_CASES[name]
        (entry,) = run.entries(case)
        assert str(run.root / case.file) in f"{entry['reason']} {entry['hint']}"


def test_path_traversal_names_the_annotation_line(run: Run) -> None:
    (entry,) = run.entries(BAD_CASES["path_traversal"])
    lineno = 1 + next(i for i, line in enumerate((run.root / "annotations.jsonl").read_text().splitlines())
                      if json.loads(line)["video_id"] == "../x")
    assert f"annotations.jsonl:{lineno}" in entry["reason"]
    assert "'../x.mp4'" in entry["reason"]


def test_every_entry_names_its_annotation_line(run: Run) -> None:
    where: dict[str, set[str]] = {}
    for lineno, line in enumerate((run.root / "annotations.jsonl").read_text().splitlines(), start=1):
        record = json.loads(line)
        where.setdefault(f"{record['video_id']}/{record['exp_id']}", set()).add(f"annotations.jsonl:{lineno}")
    for entry in run.validate_quarantine + run.shard_quarantine:
        assert entry["line"] in where[entry["sample_id"]], entry
    duplicated = {e["line"] for e in run.validate_quarantine if e["sample_id"] == BAD_CASES["duplicate_id"].sample_id}
    assert duplicated == where[BAD_CASES["duplicate_id"].sample_id] and len(duplicated) == 2


def test_both_copies_of_a_duplicate_are_quarantined(run: Run) -> None:
    case = BAD_CASES["duplicate_id"]
    assert len(run.entries(case)) == 2
    assert run.manifest["sample_id"].tolist().count(case.sample_id) == 2


def test_only_the_bad_cases_are_quarantined(run: Run) -> None:
    quarantined = {e["sample_id"] for e in run.validate_quarantine + run.shard_quarantine}
    assert quarantined == {case.sample_id for case in BAD_CASES.values()}


# ------------------------------------------------------------------------------------------- nothing good lost


def test_every_good_sample_is_in_the_shards(run: Run) -> None:
    expected = _expected_good(run)
    assert len(expected) == 4 * SPEC.videos - 1 + len(GOOD_EXTRA) == 16
    assert set(run.samples) == expected


def test_metrics_count_what_was_skipped(run: Run) -> None:
    n_rows = len(run.manifest)
    n_bad_validate = sum(1 for c in BAD_CASES.values() if c.report == "validate") + 1  # both duplicate copies
    assert run.metrics["ingest"]["rows"] == n_rows == 4 * SPEC.videos + 15
    # truncated, empty, not a video, ../x, a frame past the end, two RLEs that do not decode
    assert run.metrics["ingest"]["parse_errors"] == 7
    checked = run.metrics["validate"]
    assert (checked["rows"], checked["bad"], checked["good"]) == (n_rows, n_bad_validate, n_rows - n_bad_validate)
    assert checked["fail_ingest_ok"] == 7
    assert checked["fail_media_readable"] == 3
    assert checked["fail_audio_present"] == 1
    assert checked["fail_frame_index"] == 1
    assert checked["fail_rle_decodes"] == 2
    assert checked["fail_unique_sample_id"] == 2
    assert checked["fail_target_present"] == 0  # no follow-on findings for rows another check owns
    sharded = run.metrics["shard"]
    assert (sharded["videos_quarantined"], sharded["samples_quarantined"]) == (1, 1)
    assert (sharded["videos_ok"], sharded["samples_ok"]) == (SPEC.videos + len(GOOD_MEDIA), len(run.samples))


# ------------------------------------------------------------------------------------------- odd media flows


def test_no_audio_video_flows_without_audio(run: Run) -> None:
    sample = run.samples["no_audio/look"]
    assert sample.meta["has_audio"] is False
    assert sample.audio.shape == (0,)
    assert not sample.has_audio


def test_surround_48k_becomes_mono_16k_of_exact_length(run: Run) -> None:
    row = run.manifest.set_index("sample_id").loc["surround/0"]
    assert (row["audio_channels"], row["audio_rate"]) == (6, 48000)
    sample = run.samples["surround/0"]
    assert sample.meta["audio_rate"] == AUDIO_RATE
    assert sample.audio.dtype == np.float32 and sample.audio.ndim == 1
    assert sample.audio.size == round(sample.meta["duration"] * AUDIO_RATE) == 2 * AUDIO_RATE
    assert float(np.sqrt(np.mean(sample.audio**2))) > 0.05  # the tone survived the downmix


def test_odd_frame_size_flows_with_even_shard_frames(run: Run) -> None:
    sample = run.samples["odd_size/0"]
    assert (sample.meta["width"], sample.meta["height"]) == (161, 97)
    for frames, longest in ((sample.low_res, LOW), (sample.high_res, HIGH)):
        _, height, width, _ = frames.shape
        assert height % 2 == 0 and width % 2 == 0 and max(height, width) <= longest
    assert (sample.masks.height, sample.masks.width) == (97, 161)
    assert sample.target_masks().shape[1:] == (97, 161)


def test_non_square_pixels_use_the_displayed_size(run: Run) -> None:
    sample = run.samples["wide_pixels/0"]
    assert (sample.meta["width"], sample.meta["height"]) == (320, 120)
    assert sample.low_res.shape[1:3] == (24, 64)  # 320x120 fitted into 64: the displayed aspect
    assert sample.high_res.shape[1:3] == (36, 96)
    assert (sample.masks.height, sample.masks.width) == (120, 320)
    # The coded picture is red on its left half and blue on its right: still so when displayed.
    frame = sample.low_res[0].astype(np.float64)
    left, right = frame[:, :28], frame[:, 36:]
    assert left[..., 0].mean() > left[..., 2].mean() + 100
    assert right[..., 2].mean() > right[..., 0].mean() + 100


def test_vfr_frame_indices_follow_real_timestamps(run: Run) -> None:
    # 10 frames 0.1 s apart, then 10 frames 0.05 s apart: at 2 fps the targets 0, 0.5, 1.0 and 1.5 s
    # land on frames 0, 5, 10 and 19 (the last, at 1.45 s). A constant rate (20 frames over 1.5 s)
    # would pick frames 0, 7, 13 and 19 instead.
    sample = run.samples["vfr/0"]
    real = frame_times(run.root / "videos" / "vfr.mp4")
    assert sample.frame_indices == (0, 5, 10, 19)
    assert sample.frame_times == pytest.approx(tuple(real[list(sample.frame_indices)]), abs=1e-6)
    assert sample.frame_times == pytest.approx((0.0, 0.5, 1.0, 1.45), abs=1e-3)
    assert sample.low_res.shape[0] == len(sample.frame_indices)
    assert sample.meta["num_frames"] == 20


def test_good_odd_samples_keep_their_masks(run: Run) -> None:
    for sample_id in GOOD_EXTRA:
        sample = run.samples[sample_id]
        assert sample.target_masks().any(), f"{sample_id} lost its target masks"


# ------------------------------------------------------------------------------------------- features


def test_features_written_and_loadable_per_shard(run: Run) -> None:
    shards = load_manifest(run.work / "shards")["shards"]
    written = {w["shard"]: w for w in json.loads((run.work / "features" / "manifest.json").read_text())["features"]}
    assert sorted(written) == sorted(s["name"] for s in shards)
    assert len(list((run.work / "features").glob("*.safetensors"))) == len(shards)
    records = {}
    for listed in shards:
        entry = written[listed["name"]]
        loaded = load_feature_shard(run.work / "features" / entry["name"], sha256=entry["sha256"])
        assert len(loaded) == listed["videos"]
        records.update({r.video_id: r for r in loaded})
    assert set(records) == {s.meta["video_id"] for s in run.samples.values()}
    assert not records["no_audio"].has_audio
    assert records["surround"].has_audio
    assert run.metrics["features"]["videos"] == len(records)


# ------------------------------------------------------------------------------------------- the policy


def test_validate_fails_above_the_bad_fraction(run: Run, tmp_path: Path) -> None:
    out = tmp_path / "validated.parquet"
    quarantine = tmp_path / "quarantine.json"
    code = validate.main([*_common(run.params), "--set", "validate.max_bad_fraction=0.05",
                          "--manifest", str(run.work / "manifest.parquet"), "--root", str(run.root),
                          "--out", str(out), "--quarantine", str(quarantine),
                          "--metrics", str(tmp_path / "validate.json")])
    assert code == 1
    assert not out.exists()
    assert json.loads(quarantine.read_text()) == run.validate_quarantine
