"""The validation gate: a clean manifest passes; each broken row is quarantined by its own check.

great_expectations costs about 3-5 s to import, paid once per process; the per-check tests share
one module-scoped report over a manifest that holds one broken row per check.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from omni_r1.data.expectations import (
    CHECKS,
    ValidationPolicy,
    ValidationPolicyError,
    ValidationReport,
    derive_checks,
    enforce_policy,
    run_suite,
    validate_manifest,
)
from omni_r1.data.masks import encode_rle
from omni_r1.types import ManifestRow

H, W, T = 8, 12, 4
STRICT = ValidationPolicy(max_bad_fraction=1.0, require_audio="always")


def _mask(t: int, size: tuple[int, int] = (H, W)) -> np.ndarray:
    m = np.zeros(size, dtype=bool)
    m[2:5, 1 + t : 5 + t] = True
    return m


def _rles(n: int = T, size: tuple[int, int] = (H, W)) -> list[dict[str, Any] | None]:
    return [encode_rle(_mask(t, size)) for t in range(n)]


def _masks_json(*objects: list[Any], key: str = "rles") -> str:
    return json.dumps({"objects": [{"obj_id": str(i + 1), key: o} for i, o in enumerate(objects)]})


def row(sample_id: str, **changes: Any) -> dict[str, Any]:
    """A clean RLE-masked referring row; ``changes`` override fields."""
    video = changes.pop("video_id", f"vid_{sample_id}")
    base = ManifestRow(
        sample_id=sample_id,
        dataset="synthetic",
        video_id=video,
        exp_id="0",
        split="train",
        benchmark_split="train",
        expression=f"the square of {sample_id}",
        exp_type="referring",
        cue="visual",
        media_kind="video",
        video_path=f"videos/{video}.mp4",
        frame_paths=[],
        audio_path="",
        has_audio=True,
        audio_channels=2,
        audio_rate=44_100,
        fps=2.0,
        num_frames=T,
        width=W,
        height=H,
        mask_kind="rle",
        masks_json=_masks_json(_rles()),
    ).to_dict()
    base.update(changes)
    return base


def _png(path: Path, size: tuple[int, int] = (W, H)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size[1], size[0]), 255, dtype=np.uint8)).save(path)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A dataset root with RefAVS-style PNG masks, one wrong-size PNG, and a file just outside it."""
    base = tmp_path_factory.mktemp("expectations")
    data = base / "refavs"
    for t in range(T):
        _png(data / f"gt_mask/clip/fid_1/0000{t}.png")
    _png(data / "gt_mask/clip/fid_2/00000.png", size=(W + 4, H))
    _png(base / "secret.png")
    return data


def _pngs(*names: str | None) -> list[str | None]:
    return [None if n is None else f"gt_mask/clip/fid_1/{n}" for n in names]


GOOD_PNGS = _pngs(*(f"0000{t}.png" for t in range(T)))


def clean_rows() -> list[dict[str, Any]]:
    """One clean row of every shape: rle referring/reasoning/null, frames media, png referring/null."""
    return [
        row("g_ref"),
        row("g_reason", exp_type="reasoning", cue="audio", masks_json=_masks_json(_rles(), [None] * T)),
        row("g_null", exp_type="null", masks_json=_masks_json()),
        row("g_null_empty_rles", exp_type="null", masks_json=_masks_json([None] * T)),
        row(
            "g_frames",
            media_kind="frames",
            video_path="",
            frame_paths=[f"JPEGImages/vf/{t:05d}.jpg" for t in range(T)],
            split="val",
        ),
        row("g_png", dataset="refavs", mask_kind="png", masks_json=_masks_json(GOOD_PNGS, key="pngs"), split="test"),
        row(
            "g_png_null",
            dataset="refavs",
            exp_type="null",
            mask_kind="png",
            masks_json=_masks_json(GOOD_PNGS, key="pngs"),  # RefAVS null clips ship black PNGs
            split="test",
        ),
        row("g_unmasked_null", exp_type="null", mask_kind="none", masks_json=""),
    ]


GOOD_IDS = [r["sample_id"] for r in clean_rows()]
CORRUPT = dict(encode_rle(_mask(0)), counts=encode_rle(_mask(0))["counts"][:-1])

# sample_id -> (row, expected check, words the reason must contain)
BROKEN: dict[str, tuple[dict[str, Any], str, str]] = {
    "b_ingest": (
        row("b_ingest", ingest_error="videos/b.mp4: moov atom missing; re-encode the file with ffmpeg"),
        "ingest_ok",
        "moov atom missing",
    ),
    "b_blank": (
        row("b_blank", expression="   ", exp_type="null", masks_json=_masks_json()),
        "expression_not_empty",
        "empty",
    ),
    "b_split": (row("b_split", split="valid"), "known_split", "'valid'"),
    "b_type": (row("b_type", exp_type="referral"), "known_type", "'referral'"),
    "b_frames": (
        row("b_frames", media_kind="frames", video_path="", frame_paths=["JPEGImages/b/0.jpg"] * (T - 1)),
        "media_present",
        f"{T - 1} frame files listed for num_frames {T}",
    ),
    "b_novideo": (row("b_novideo", video_path=""), "media_present", "video_path is empty"),
    "b_audio": (row("b_audio", has_audio=False), "audio_present", "no audio"),
    "b_json": (row("b_json", masks_json="{not json"), "masks_json_valid", "not valid JSON"),
    "b_kind": (row("b_kind", mask_kind="polygon"), "masks_json_valid", "'polygon'"),
    "b_count": (
        row("b_count", masks_json=_masks_json(_rles(), _rles(T - 1))),
        "mask_count_matches_frames",
        f"object 2 has {T - 1} masks for {T} frames",
    ),
    "b_size": (
        row("b_size", masks_json=_masks_json(_rles(size=(H, W - 2)))),
        "mask_size_matches_frame",
        f"object 1 has {T} masks of size [{H}, {W - 2}] (first at frame 0), frame is [{H}, {W}]",
    ),
    "b_png_size": (
        row(
            "b_png_size",
            mask_kind="png",
            masks_json=_masks_json(["gt_mask/clip/fid_2/00000.png"] + [None] * (T - 1), key="pngs"),
        ),
        "mask_size_matches_frame",
        f"{W + 4}x{H}",
    ),
    "b_decode": (
        row("b_decode", masks_json=_masks_json(_rles()[:2] + [CORRUPT] + _rles()[3:])),
        "rle_decodes",
        "object 1 frame 2",
    ),
    "b_missing_png": (
        row(
            "b_missing_png",
            mask_kind="png",
            masks_json=_masks_json(_pngs("00000.png", "00001.png", "gone.png", None), key="pngs"),
        ),
        "mask_files_exist",
        "gone.png does not exist",
    ),
    "b_escape_png": (
        row("b_escape_png", mask_kind="png", masks_json=_masks_json(GOOD_PNGS[:3] + ["../secret.png"], key="pngs")),
        "mask_files_exist",
        "not a path inside the dataset root",
    ),
    "b_no_target": (row("b_no_target", masks_json=_masks_json([None] * T)), "target_present", "no target"),
    "b_null_target": (row("b_null_target", exp_type="null"), "target_present", "null expression has 1 objects"),
}
DUPLICATES = [
    row("b_dup_id", video_id="dup_a"),
    row("b_dup_id", video_id="dup_b"),
    row("b_dup_exp1", video_id="dup_c", expression="the red ball"),
    row("b_dup_exp2", video_id="dup_c", expression="  The red  BALL "),
]


@pytest.fixture(scope="module")
def clean_report(root: Path) -> ValidationReport:
    return validate_manifest(pd.DataFrame(clean_rows()), root, STRICT)


@pytest.fixture(scope="module")
def mixed_report(root: Path) -> ValidationReport:
    rows = clean_rows() + [r for r, _, _ in BROKEN.values()] + DUPLICATES
    return validate_manifest(pd.DataFrame(rows), root, STRICT)


def _entries(report: ValidationReport, sample_id: str) -> dict[str, Any]:
    return {e.check: e for e in report.quarantine if e.sample_id == sample_id}


def test_clean_manifest_passes(clean_report: ValidationReport) -> None:
    assert clean_report.quarantine == ()
    assert clean_report.n_rows == clean_report.n_bad + len(clean_report.good) == len(GOOD_IDS)
    assert clean_report.n_bad == 0 and clean_report.bad_fraction == 0.0 and clean_report.passed_policy
    assert list(clean_report.good["sample_id"]) == GOOD_IDS
    assert list(clean_report.good.columns) == list(ManifestRow.__dataclass_fields__)
    assert set(clean_report.expectation_results) == set(CHECKS)
    assert all(clean_report.expectation_results.values())


@pytest.mark.parametrize("sample_id", sorted(BROKEN))
def test_broken_row_is_quarantined_by_its_check(mixed_report: ValidationReport, sample_id: str) -> None:
    bad_row, check, words = BROKEN[sample_id]
    entries = _entries(mixed_report, sample_id)
    assert set(entries) == {check}, f"{sample_id} should fail only {check}, got {sorted(entries)}"
    entry = entries[check]
    assert words in entry.reason
    assert entry.stage == "validate" and entry.hint.strip()
    assert entry.file
    assert sample_id not in set(mixed_report.good["sample_id"])
    assert mixed_report.expectation_results[check] is False


def test_good_rows_survive_beside_bad_ones(mixed_report: ValidationReport) -> None:
    assert list(mixed_report.good["sample_id"]) == GOOD_IDS  # original order, index reset
    assert list(mixed_report.good.index) == list(range(len(GOOD_IDS)))
    assert mixed_report.n_bad == len(BROKEN) + len(DUPLICATES)
    assert mixed_report.n_rows == len(GOOD_IDS) + mixed_report.n_bad


def test_ingest_error_text_is_the_reason(mixed_report: ValidationReport) -> None:
    entry = _entries(mixed_report, "b_ingest")["ingest_ok"]
    assert entry.reason == BROKEN["b_ingest"][0]["ingest_error"]
    assert entry.file == "videos/vid_b_ingest.mp4"


def test_every_copy_of_a_duplicate_sample_id_is_quarantined(mixed_report: ValidationReport) -> None:
    dup = [e for e in mixed_report.quarantine if e.sample_id == "b_dup_id"]
    assert [e.check for e in dup] == ["unique_sample_id", "unique_sample_id"]
    assert {e.file for e in dup} == {"videos/dup_a.mp4", "videos/dup_b.mp4"}
    assert all("appears on 2 rows (files videos/dup_a.mp4, videos/dup_b.mp4)" in e.reason and e.hint for e in dup)


def test_repeated_expression_of_a_video_is_quarantined(mixed_report: ValidationReport) -> None:
    for sample_id in ("b_dup_exp1", "b_dup_exp2"):
        entries = _entries(mixed_report, sample_id)
        assert set(entries) == {"unique_video_expression"}
        assert "'dup_c'" in entries["unique_video_expression"].reason
        assert "b_dup_exp1, b_dup_exp2" in entries["unique_video_expression"].reason


def test_mask_hints_name_the_fix(mixed_report: ValidationReport) -> None:
    count = _entries(mixed_report, "b_count")["mask_count_matches_frames"]
    assert f"one mask per frame ({T} frames)" in count.hint
    size = _entries(mixed_report, "b_size")["mask_size_matches_frame"]
    assert f"{W}x{H}" in size.hint
    audio = _entries(mixed_report, "b_audio")["audio_present"]
    assert audio.hint == "add an audio track, or set validate.require_audio: never in params.yaml if sound is not needed"


def test_png_culprit_file_is_the_mask(mixed_report: ValidationReport) -> None:
    assert _entries(mixed_report, "b_missing_png")["mask_files_exist"].file == "gt_mask/clip/fid_1/gone.png"
    assert _entries(mixed_report, "b_png_size")["mask_size_matches_frame"].file == "gt_mask/clip/fid_2/00000.png"


def test_quarantine_is_sorted(mixed_report: ValidationReport) -> None:
    keys = [(e.sample_id, e.check) for e in mixed_report.quarantine]
    assert keys == sorted(keys)


def test_metrics(mixed_report: ValidationReport) -> None:
    m = mixed_report.metrics()
    assert {"rows", "good", "bad", "bad_fraction"} <= set(m)
    assert {f"fail_{c}" for c in CHECKS} <= set(m)
    assert m["rows"] == mixed_report.n_rows and m["good"] == len(GOOD_IDS)
    assert m["bad_fraction"] == pytest.approx(mixed_report.n_bad / mixed_report.n_rows)
    assert m["fail_unique_sample_id"] == 2 and m["fail_media_present"] == 2 and m["fail_target_present"] == 2
    assert json.loads(json.dumps(m)) == m  # plain numbers, ready for validate.json


def test_policy_breach(root: Path) -> None:
    rows = clean_rows()[:3] + [BROKEN["b_json"][0]]
    report = validate_manifest(pd.DataFrame(rows), root, ValidationPolicy(max_bad_fraction=0.2, require_audio="always"))
    assert report.bad_fraction == pytest.approx(0.25)
    assert not report.passed_policy
    with pytest.raises(ValidationPolicyError, match=r"masks_json_valid \(1\).*validate.max_bad_fraction"):
        enforce_policy(report, ValidationPolicy(max_bad_fraction=0.2, require_audio="always"))
    lenient = ValidationPolicy(max_bad_fraction=0.25, require_audio="always")
    assert validate_manifest(pd.DataFrame(rows), root, lenient).passed_policy


def test_audio_not_required_and_empty_manifest(root: Path) -> None:
    policy = ValidationPolicy(max_bad_fraction=0.0, require_audio="never")
    report = validate_manifest(pd.DataFrame(clean_rows() + [BROKEN["b_audio"][0]]), root, policy)
    assert report.quarantine == () and report.passed_policy
    assert "audio_present" not in report.expectation_results
    empty = validate_manifest(pd.DataFrame(columns=list(ManifestRow.__dataclass_fields__)), root, policy)
    assert empty.n_rows == 0 and empty.bad_fraction == 0.0 and not empty.passed_policy
    with pytest.raises(ValidationPolicyError, match="no rows"):
        enforce_policy(empty, policy)
    with pytest.raises(ValueError, match="max_bad_fraction"):
        ValidationPolicy(max_bad_fraction=1.5, require_audio="never")


def test_garbage_cells_fail_checks_instead_of_crashing(root: Path) -> None:
    garbage = row(
        "junk",
        masks_json="[1, 2]",
        num_frames=None,
        frame_paths=None,
        split=None,
        exp_type=float("nan"),
        has_audio=None,
        expression=None,
    )
    report = validate_manifest(pd.DataFrame([*clean_rows(), garbage]), root, STRICT)
    assert set(_entries(report, "junk")) == {
        "masks_json_valid",
        "known_split",
        "known_type",
        "audio_present",
        "expression_not_empty",
    }
    assert list(report.good["sample_id"]) == GOOD_IDS


def test_parquet_round_trip_passes(root: Path, tmp_path: Path) -> None:
    """After parquet, frame_paths come back as numpy arrays; the gate must read them the same."""
    path = tmp_path / "manifest.parquet"
    pd.DataFrame(clean_rows()).to_parquet(path)
    report = validate_manifest(pd.read_parquet(path), root, STRICT)
    assert report.quarantine == () and report.n_rows == len(GOOD_IDS)


def test_gx_results_decide_the_rows(root: Path) -> None:
    """The pass/fail per row comes from GX: tamper with a derived column and GX flags that row."""
    checks = derive_checks(pd.DataFrame(clean_rows()), root)
    assert (checks["why_rle_decodes"] == "").all()
    checks.loc[2, "n_rle_bad"] = 3
    checks.loc[5, "v_split"] = "holdout"
    success, failing = run_suite(checks, require_audio="always")
    assert failing["rle_decodes"] == {2} and failing["known_split"] == {5}
    assert success["rle_decodes"] is False and success["ingest_ok"] is True
    assert all(not rows for name, rows in failing.items() if name not in ("rle_decodes", "known_split"))
