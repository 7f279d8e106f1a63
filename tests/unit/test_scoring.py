"""score_revos / score_refavs on small official-layout fixtures, against a plain per-frame reference.

The reference here reads the files itself (pycocotools, PIL), scores each frame with the literal per-frame
functions of bench/metrics_speed.py and summarises by the spec's rules, in deliberately plain loops.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as cocomask

from bench.metrics_speed import reference_frame_a_r, reference_frame_f, reference_frame_j
from omni_r1.data.masks import encode_rle
from omni_r1.data.paths import PathEscapeError
from omni_r1.data.synthetic import SynthSpec, generate
from omni_r1.eval.scoring import (
    REFAVS_NOTE,
    MissingPredictionError,
    ScoringError,
    score_refavs,
    score_refavs_clips,
    score_revos,
    score_revos_expressions,
    summarize_revos,
    summarize_revos_binary,
)

# ----------------------------------------------------------------------------------------- ReVOS fixture


def _box(h: int, w: int, top: int, left: int, bh: int, bw: int) -> np.ndarray:
    m = np.zeros((h, w), dtype=bool)
    m[max(top, 0) : top + bh, max(left, 0) : left + bw] = True
    return m


def _write_png(path: Path, grey: np.ndarray, mode: str = "L") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(grey.astype(np.uint8), mode="L")
    (img.convert("1") if mode == "1" else img).save(path)


def build_revos(root: Path) -> tuple[Path, Path, Path, Path]:
    """Three videos; referring, reasoning and null expressions; overlap (truth 2), absent, tiny, border objects."""
    rng = np.random.default_rng(11)
    videos: dict[str, Any] = {}
    mask_dict: dict[str, list[Any]] = {}
    foreground: dict[str, Any] = {}
    pred_dir = root / "pred"

    def add_video(name: str, h: int, w: int, n: int, objects: dict[str, list[np.ndarray | None]], exps: list[tuple]):
        frames = [f"{i:05d}" for i in range(n)]
        for anno, masks in objects.items():
            mask_dict[anno] = [None if m is None or not m.any() else encode_rle(m) for m in masks]
        union = np.zeros((n, h, w), dtype=bool)
        for masks in objects.values():
            for i, m in enumerate(masks):
                if m is not None:
                    union[i] |= m
        if name == "vidC":  # foreground as a list of RLEs per frame, as some official files hold it
            foreground[name] = {"masks_rle": [[encode_rle(u), encode_rle(u[::-1].copy())] for u in union]}
        else:
            foreground[name] = {"masks_rle": [encode_rle(u) for u in union]}
        expressions = {}
        for exp_id, type_id, annos, how in exps:
            expressions[exp_id] = {"exp": f"expression {exp_id}", "anno_id": annos, "obj_id": annos, "type_id": type_id}
            for i, frame in enumerate(frames):
                truth = np.zeros((h, w), dtype=bool)
                for a in annos:
                    if objects[a][i] is not None:
                        truth |= objects[a][i]
                if how == "perfect":
                    pred = truth
                elif how == "empty":
                    pred = np.zeros_like(truth)
                elif how == "shift":
                    pred = np.roll(truth, (i % 3) - 1, axis=1)
                else:  # noisy: shifted, with false positives
                    pred = np.roll(truth, 1, axis=0) | (rng.random((h, w)) < 0.01)
                mode = "1" if (name == "vidB" and i == 0) else "L"
                _write_png(pred_dir / name / exp_id / f"{frame}.png", np.where(pred, 255, 0), mode)
        videos[name] = {"frames": frames, "expressions": expressions}

    h, w = 24, 32
    a = [_box(h, w, 3 + i, 4 + i, 8, 10) for i in range(4)]
    b = [_box(h, w, 6 + i, 9, 8, 8) for i in range(4)]  # overlaps a: the truth sum is 2 there
    absent = [None, None, _box(h, w, 1, 1, 3, 3), None]  # absent in most frames
    tiny = [_box(h, w, 20, 5 + i, 1, 1) for i in range(4)]
    border = [_box(h, w, 16, 26 - i, 8, 6 + i) for i in range(4)]  # touches the last row and column
    add_video(
        "vidA", h, w, 4, {"10": a, "11": b, "12": absent, "13": tiny, "14": border},
        [("0", 0, ["10"], "noisy"), ("1", 0, ["10", "11"], "shift"), ("2", 1, ["12"], "empty"),
         ("3", 1, ["13", "14"], "noisy"), ("4", 2, [], "empty"), ("5", 1, ["10", "11", "13"], "perfect")],
    )
    h2, w2 = 20, 20
    add_video(
        "vidB", h2, w2, 3,
        {"20": [_box(h2, w2, 12, 12, 8, 8)] * 3, "21": [_box(h2, w2, 0, 0, 1, 2)] * 3},
        [("0", 0, ["20"], "perfect"), ("1", 1, ["21"], "shift"), ("2", 2, [], "noisy")],
    )
    h3, w3 = 16, 40
    add_video(
        "vidC", h3, w3, 2,
        {"30": [_box(h3, w3, 0, 0, 16, 40), _box(h3, w3, 4, 4, 4, 30)]},  # a full frame has no boundary
        [("0", 0, ["30"], "noisy"), ("1", 1, ["30"], "shift")],
    )
    meta = root / "meta_expressions_valid_.json"
    meta.write_text(json.dumps({"videos": videos}))
    (root / "mask_dict.json").write_text(json.dumps(mask_dict))
    (root / "mask_dict_foreground.json").write_text(json.dumps(foreground))
    return meta, root / "mask_dict.json", root / "mask_dict_foreground.json", pred_dir


def reference_revos(meta: Path, mask_dict_path: Path, fg_path: Path, pred_dir: Path) -> tuple[list, dict]:
    """Rows and summary by the spec, frame by frame."""
    videos = json.loads(meta.read_text())["videos"]
    mask_dict = json.loads(mask_dict_path.read_text())
    fg_dict = json.loads(fg_path.read_text())
    rows = []
    for video, info in videos.items():
        for exp_id, exp in info["expressions"].items():
            js, fs, accs, robs = [], [], [], []
            for i, frame in enumerate(info["frames"]):
                pred = np.asarray(Image.open(pred_dir / video / exp_id / f"{frame}.png").convert("L"), dtype=np.uint8)
                truth = np.zeros(pred.shape, dtype=np.uint8)
                for anno in exp["anno_id"]:
                    rle = mask_dict[str(anno)][i]
                    if rle:
                        truth += cocomask.decode(rle)
                fg_rle = fg_dict[video]["masks_rle"][i]
                fg = cocomask.decode(fg_rle)
                fg = fg.sum(axis=2).astype(np.uint8) if fg.ndim == 3 else fg.astype(np.uint8)
                js.append(reference_frame_j(pred, truth))
                fs.append(reference_frame_f(pred, truth))
                acc, rob = reference_frame_a_r(truth, pred, fg)
                accs.append(acc)
                robs.append(rob)
            j, f = np.mean(js), np.mean(fs)
            rows.append({
                "video_name": video, "exp_id": exp_id, "type_id": exp["type_id"],
                "J": round(100 * j, 2), "F": round(100 * f, 2), "JF": round(100 * (j + f) / 2, 2),
                "A": round(100 * np.mean(accs), 2), "R": round(100 * np.mean(robs), 2),
            })
    summary: dict[str, dict[str, float]] = {}
    for name, type_id in (("referring", 0), ("reason", 1)):
        chosen = [r for r in rows if r["type_id"] == type_id]
        summary[name] = {k: sum(r[k] for r in chosen) / len(chosen) for k in ("J", "F", "A", "R")}
        summary[name]["JF"] = (summary[name]["J"] + summary[name]["F"]) / 2
    summary["overall"] = {k: (summary["referring"][k] + summary["reason"][k]) / 2 for k in summary["referring"]}
    return rows, summary


@pytest.fixture()
def revos(tmp_path: Path) -> tuple[Path, Path, Path, Path]:
    return build_revos(tmp_path)


def test_score_revos_matches_reference(revos: tuple[Path, Path, Path, Path]) -> None:
    got = score_revos(*revos)
    ref_rows, ref = reference_revos(*revos)
    assert set(got) == {"referring", "reason", "overall"}
    for part in got:
        assert set(got[part]) == {"J", "F", "A", "R", "JF"}
        for key, value in got[part].items():
            assert value == pytest.approx(ref[part][key], abs=1e-6), (part, key)
    rows = score_revos_expressions(*revos)
    assert len(rows) == len(ref_rows) == 11
    for row, want in zip(rows, ref_rows):
        for key in ("video_name", "exp_id", "type_id"):
            assert row[key] == want[key]
        for key in ("J", "F", "JF", "A", "R"):
            assert row[key] == pytest.approx(want[key], abs=1e-6), (row["videxp"], key)


def test_score_revos_hand_checked_rows(revos: tuple[Path, Path, Path, Path]) -> None:
    rows = {r["videxp"]: r for r in score_revos_expressions(*revos)}
    perfect = rows["vidA_5"]  # a perfect prediction of overlapping objects
    assert (perfect["J"], perfect["F"]) == (100.0, 100.0)
    assert perfect["A"] < 100.0  # raw truth 1/2 never equals 255: only background pixels agree
    assert perfect["R"] < 100.0  # where truth is 2, (1 - 2) * 255 wraps to 1 in uint8: a "false positive"
    assert perfect["A_binary"] == 100.0 and perfect["R_binary"] == 100.0
    alone = rows["vidB_0"]  # a perfect prediction of one object: R is 100 when nothing overlaps
    assert (alone["J"], alone["F"], alone["R"], alone["R_binary"]) == (100.0, 100.0, 100.0, 100.0)
    absent = rows["vidA_2"]  # truth empty in 3 of 4 frames, prediction empty: J = F = 1 there, 0 on the other
    assert absent["J"] == 75.0 and absent["F"] == 75.0
    null = rows["vidA_4"]
    assert null["type"] == "null" and null["J"] == 100.0


def test_null_expressions_do_not_enter_the_summary(revos: tuple[Path, Path, Path, Path]) -> None:
    rows = score_revos_expressions(*revos)
    changed = [dict(r, J=0.0, F=0.0, A=0.0, R=0.0) if r["type_id"] == 2 else r for r in rows]
    assert summarize_revos(changed) == summarize_revos(rows)
    binary = summarize_revos_binary(rows)
    assert set(binary["overall"]) == {"A_binary", "R_binary"}
    assert summarize_revos([r for r in rows if r["type_id"] == 0])["reason"]["J"] is None


def test_missing_prediction_names_the_file(revos: tuple[Path, Path, Path, Path]) -> None:
    meta, masks, fg, pred_dir = revos
    gone = pred_dir / "vidB" / "1" / "00002.png"
    gone.unlink()
    with pytest.raises(MissingPredictionError, match=str(gone)):
        score_revos(meta, masks, fg, pred_dir)


def test_prediction_of_wrong_size_or_mode_is_refused(revos: tuple[Path, Path, Path, Path]) -> None:
    meta, masks, fg, pred_dir = revos
    target = pred_dir / "vidC" / "0" / "00001.png"
    _write_png(target, np.zeros((10, 10)))
    with pytest.raises(ScoringError, match="00001.png"):
        score_revos(meta, masks, fg, pred_dir)
    Image.new("RGB", (40, 16)).save(target)
    with pytest.raises(ScoringError, match="mode L"):
        score_revos(meta, masks, fg, pred_dir)


def test_video_names_cannot_escape_the_prediction_dir(revos: tuple[Path, Path, Path, Path]) -> None:
    meta, masks, fg, pred_dir = revos
    data = json.loads(meta.read_text())
    data["videos"]["../vidA"] = data["videos"].pop("vidA")
    foreground = json.loads(fg.read_text())
    foreground["../vidA"] = foreground["vidA"]
    meta.write_text(json.dumps(data))
    fg.write_text(json.dumps(foreground))
    with pytest.raises(PathEscapeError):
        score_revos(meta, masks, fg, pred_dir)


# ---------------------------------------------------------------------------------------- RefAVS fixture


def _reference_resize_binary(grey: np.ndarray) -> np.ndarray:
    """96x64 -> 256x256 bilinear weights are multiples of 1/128, so cv2's rounding keeps every pixel with a
    positive-weight non-zero neighbour: compute that directly, pixel taps by hand."""
    h, w = grey.shape
    out = np.zeros((256, 256), dtype=bool)
    ys = np.clip((np.arange(256) + 0.5) * h / 256 - 0.5, 0, h - 1)
    xs = np.clip((np.arange(256) + 0.5) * w / 256 - 0.5, 0, w - 1)
    for oy, y in enumerate(ys):
        y0, fy = int(math.floor(y)), y - math.floor(y)
        row = grey[y0].astype(float) * (1 - fy) + grey[min(y0 + 1, h - 1)].astype(float) * fy
        x0 = np.floor(xs).astype(int)
        fx = xs - x0
        out[oy] = row[x0] * (1 - fx) + row[np.minimum(x0 + 1, w - 1)] * fx > 0
    return out


def _reference_clip(truth: np.ndarray, pred: np.ndarray) -> tuple[float, float]:
    """mIoU and F of one clip, as utility.py computes them, frame by frame and threshold by threshold."""
    ious = []
    for p, t in zip(pred, truth):
        pb = p > 0.4
        if t.sum() == 0:
            ious.append(np.sum(~pb & ~t) / (t.size + 1e-7))
        else:
            ious.append(np.sum(pb & t) / (np.sum(pb | t) + 1e-7))
    thresholds = np.linspace(0, 1 - 1e-10, 255).astype(np.float32)
    curves = []
    for p, t in zip(pred, truth):
        if t.sum() == 0:
            continue
        curve = []
        for th in thresholds:
            yt = p >= th
            tp = np.sum(yt & t)
            prec, rec = tp / (yt.sum() + 1e-20), tp / (t.sum() + 1e-20)
            f = 1.3 * prec * rec / (0.3 * prec + rec) if (0.3 * prec + rec) > 0 else 0.0
            curve.append(f)
        curves.append(curve)
    fscore = float(np.max(np.mean(curves, axis=0))) if curves else 0.0
    return float(np.mean(ious)), fscore


@pytest.fixture(scope="module")
def refavs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list[dict[str, str]]]:
    root = tmp_path_factory.mktemp("refavs")
    generate(root, "refavs", SynthSpec(videos=5, width=96, height=64, fps=10, seconds=2.0))
    with (root / "metadata.csv").open() as fh:
        rows = [r for r in csv.DictReader(fh) if r["split"].startswith("test_")]
    pred_dir = root / "pred"
    rng = np.random.default_rng(3)
    for n, row in enumerate(rows):
        vid = row["uid"].rsplit("_", 2)[0]
        for i in range(10):
            truth = np.asarray(Image.open(root / "gt_mask" / vid / f"fid_{row['fid']}" / f"0000{i}.png")) > 0
            if n % 2 == 0:
                pred = np.roll(truth, (i % 3) - 1, axis=1)
            else:
                pred = truth & (rng.random(truth.shape) < 0.8)
            if row["split"] == "test_n":
                pred = rng.random(truth.shape) < 0.01 * i
            _write_png(pred_dir / vid / f"fid_{row['fid']}" / f"0000{i}.png", np.where(pred, 255, 0))
    return root, pred_dir, rows


def _read_clip(folder: Path, vid: str, fid: str) -> np.ndarray:
    return np.stack([_reference_resize_binary(np.asarray(Image.open(folder / vid / f"fid_{fid}" / f"0000{i}.png")))
                     for i in range(10)])


@pytest.mark.parametrize("split", ["test_s", "test_u"])
def test_score_refavs_matches_reference(refavs: tuple[Path, Path, list[dict[str, str]]], split: str) -> None:
    root, pred_dir, rows = refavs
    chosen = [r for r in rows if r["split"] == split]
    assert chosen, f"the synthetic fixture has no {split} rows"
    mious, fs = [], []
    for row in chosen:
        vid = row["uid"].rsplit("_", 2)[0]
        truth = _read_clip(root / "gt_mask", vid, row["fid"])
        pred = _read_clip(pred_dir, vid, row["fid"]).astype(float)
        m, f = _reference_clip(truth, pred)
        mious.append(m)
        fs.append(f)
    got = score_refavs(root, split, pred_dir)
    assert set(got) == {split, "note"} and got["note"] == REFAVS_NOTE
    assert got[split]["mIoU"] == pytest.approx(np.mean(mious), abs=1e-6)
    assert got[split]["F"] == pytest.approx(np.mean(fs), abs=1e-6)
    assert 0.0 < got[split]["mIoU"] < 1.0


def test_score_refavs_null_split(refavs: tuple[Path, Path, list[dict[str, str]]]) -> None:
    root, pred_dir, rows = refavs
    expected = []
    for row in (r for r in rows if r["split"] == "test_n"):
        pred = _read_clip(pred_dir, row["uid"].rsplit("_", 2)[0], row["fid"])
        expected.append(math.sqrt(pred.sum() / pred.size))
    got = score_refavs(root, "test_n", pred_dir)
    assert set(got["test_n"]) == {"S"}
    assert got["test_n"]["S"] == pytest.approx(np.mean(expected), abs=1e-9)
    assert got["test_n"]["S"] > 0


def test_score_refavs_perfect_predictions(refavs: tuple[Path, Path, list[dict[str, str]]]) -> None:
    root, _, _ = refavs
    clips = score_refavs_clips(root, "test_s", root / "gt_mask")  # the truth scored as a prediction
    assert clips and all(c["F"] == pytest.approx(1.0) for c in clips)
    assert all(c["mIoU"] == pytest.approx(1.0, abs=1e-6) for c in clips)


def test_score_refavs_errors(refavs: tuple[Path, Path, list[dict[str, str]]], tmp_path: Path) -> None:
    root, _, rows = refavs
    with pytest.raises(MissingPredictionError, match="fid_"):
        score_refavs(root, "test_s", tmp_path / "nothing")
    with pytest.raises(ScoringError, match="split"):
        score_refavs(root, "train", tmp_path)


def test_score_revos_cli_writes_the_official_summary(revos: tuple[Path, Path, Path, Path], tmp_path: Path) -> None:
    """`omni-r1 score revos` gives the spec's numbers (the per-frame reference) to 1e-6."""
    from flows.cli import main

    meta, masks, fg, pred_dir = revos
    out = tmp_path / "summary.json"
    assert main(["score", "revos", "--meta", str(meta), "--mask-dict", str(masks), "--foreground", str(fg),
                 "--pred", str(pred_dir), "--out", str(out)]) == 0
    written = json.loads(out.read_text())
    _, ref = reference_revos(meta, masks, fg, pred_dir)
    assert set(written) == {"referring", "reason", "overall"}
    for kind in written:
        assert set(written[kind]) == {"J", "F", "A", "R", "JF"}
        for metric, value in written[kind].items():
            assert abs(value - ref[kind][metric]) <= 1e-6, (kind, metric)
