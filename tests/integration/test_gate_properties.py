"""Property tests of the data gate, one per layout: random good and hostile annotation rows, mixed.

Every run of ingest then validate (through their ``main``) must exit 0 without a traceback, keep
every good row in the validated manifest, and put every hostile row in the quarantine, named by its
line (or JSON path). ``make test`` runs a few fixed examples (the ``bounded`` profile in conftest);
``make test-all`` many random ones (``thorough``).
"""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from omni_r1.data.masks import encode_rle
from omni_r1.data.synthetic import SynthSpec, generate
from stages import ingest, validate

REPO = Path(__file__).resolve().parents[2]
SPEC = SynthSpec(videos=2, width=96, height=64, fps=10, seconds=2.0, seed=11)
WORDS = st.text(alphabet="abcdefghijklmnopqrstuvwxyz ", min_size=1, max_size=30).filter(lambda t: t.strip())
JUNK = st.binary(min_size=1, max_size=200).filter(lambda b: b"\n" not in b and b"\r" not in b and b.strip())
WRONG_TYPES = st.one_of(st.none(), st.booleans(), st.floats(allow_nan=False, allow_infinity=False),
                        st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=3), st.integers(),
                                                                             max_size=2))


def _gate(root: Path, fmt: str, work: Path) -> tuple[list[dict[str, str]], set[str]]:
    """Run ingest and validate through their CLIs; (quarantine entries, sample ids that passed)."""
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    common = ["--params", str(REPO / "params.yaml"), "--set", "validate.max_bad_fraction=1.0",
              "--set", "validate.require_audio=never"]
    assert ingest.main([*common, "--root", str(root), "--format", fmt, "--out", str(work / "manifest.parquet"),
                        "--metrics", str(work / "ingest.json")]) == 0
    assert validate.main([*common, "--root", str(root), "--manifest", str(work / "manifest.parquet"),
                          "--out", str(work / "validated.parquet"), "--quarantine", str(work / "quarantine.json"),
                          "--metrics", str(work / "validate.json")]) == 0
    return (json.loads((work / "quarantine.json").read_text()),
            set(pd.read_parquet(work / "validated.parquet")["sample_id"]))


def _check(quarantine: list[dict[str, str]], passed: set[str], good: dict[str, str], bad: set[str]) -> None:
    """``good``: sample id -> its line; ``bad``: the lines of the hostile rows."""
    assert set(good) <= passed, f"good rows lost: {sorted(set(good) - passed)}"
    lines = {e["line"] for e in quarantine}
    assert bad <= lines, f"hostile rows not quarantined: {sorted(bad - lines)}"
    assert not lines & set(good.values()), "a good row's line is in the quarantine"
    assert all(e["file"] and e["check"] and e["reason"] and e["hint"] for e in quarantine)


# ------------------------------------------------------------------------------------------- plain video layout


@pytest.fixture(scope="module")
def video_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("prop-video")
    generate(root, "video", SPEC)
    return root


def _mask(frames: list[int]) -> list[dict[str, Any]]:
    mask = np.zeros((SPEC.height, SPEC.width), dtype=bool)
    mask[10:40, 20:60] = True
    return [{"frame": f, "rle": encode_rle(mask)} for f in frames]


def _good_video_row(i: int, video: str, text: str, kind: str, split: str, frames: list[int]) -> dict[str, Any]:
    objects = [] if kind == "null" else [{"obj_id": "1", "masks": _mask(frames)}]
    return {"video_id": video, "exp_id": f"g{i}", "expression": f"{text} {i}", "type": kind, "split": split,
            "cue": "appearance", "objects": objects}


GOOD_VIDEO_ROW = st.tuples(st.sampled_from(["synth_0000", "synth_0001"]), WORDS,
                           st.sampled_from(["referring", "reasoning", "null"]), st.sampled_from(["train", "val", "test"]),
                           st.lists(st.integers(0, SPEC.num_frames - 1), min_size=1, max_size=3, unique=True))

VIDEO_FIELD_MUTATIONS = {
    "expression": st.one_of(WRONG_TYPES, st.sampled_from(["", "   ", "\u200b\u2060", "x" * 4001])),
    "video_id": st.one_of(WRONG_TYPES, st.sampled_from(["nope", "../synth_0000", "a\x00b", " synth_0000"])),
    "type": st.one_of(WRONG_TYPES, st.sampled_from(["REFERRING", "other", ""])),
    "split": st.one_of(WRONG_TYPES, st.sampled_from(["training", "", "\u200b"])),
    "objects": st.one_of(st.sampled_from(["x", {"a": 1}, [1], [{"masks": "x"}]]), st.none()),
    "frame": st.one_of(st.sampled_from([True, -1, 10**7, 1.5, "3", None, SPEC.num_frames])),
    "rle": st.sampled_from([{"size": [64, 96], "counts": "\u00e9"}, {"size": [64, 96], "counts": ["a"]},
                            {"size": [20000, 20000], "counts": "0"}, {"size": [64], "counts": "0"},
                            {"size": [64, 96], "counts": "0"}, "rle", 7]),
}


@st.composite
def hostile_video_line(draw: st.DrawFn, i: int) -> bytes:
    video, text, _, split, frames = draw(GOOD_VIDEO_ROW)
    row = _good_video_row(i, video, text, "referring", split, frames)
    row["exp_id"] = f"h{i}"
    how = draw(st.sampled_from([*VIDEO_FIELD_MUTATIONS, "missing_key", "no_target", "raw"]))
    if how == "missing_key":
        del row[draw(st.sampled_from(["video_id", "exp_id", "expression", "type", "split", "objects"]))]
    elif how == "no_target":
        row["objects"] = []  # a referring expression with nothing referred to
    elif how == "frame":
        row["objects"][0]["masks"][0]["frame"] = draw(VIDEO_FIELD_MUTATIONS["frame"])
    elif how == "rle":
        row["objects"][0]["masks"][0]["rle"] = draw(VIDEO_FIELD_MUTATIONS["rle"])
    elif how != "raw":
        row[how] = draw(VIDEO_FIELD_MUTATIONS[how])
    text_line = json.dumps(row, ensure_ascii=False)
    if how != "raw":
        return text_line.encode("utf-8", "surrogatepass")
    raw = text_line.encode()
    corrupt = draw(st.sampled_from(["cut", "latin1", "nested", "duplicate", "junk", "nan"]))
    if corrupt == "cut":
        return raw[: draw(st.integers(1, len(raw) - 1))]
    if corrupt == "latin1":
        return raw.replace(b'"expression": "', b'"expression": "\xe9', 1)
    if corrupt == "nested":
        return b"[" * 50_000 + b"]" * 50_000
    if corrupt == "duplicate":
        return raw.replace(b'"split":', b'"split": "train", "split":', 1)
    if corrupt == "nan":
        return raw.replace(b'"expression": "', b'"expression": NaN, "x": "', 1)
    return draw(JUNK)


@given(data=st.data())
def test_video_gate_property(video_root: Path, tmp_path_factory: pytest.TempPathFactory, data: st.DataObject) -> None:
    kinds = data.draw(st.lists(st.booleans(), min_size=1, max_size=12), label="good?")
    lines, good, bad = [], {}, set()
    for i, is_good in enumerate(kinds):
        if is_good:
            video, text, kind, split, frames = data.draw(GOOD_VIDEO_ROW, label=f"good {i}")
            lines.append(json.dumps(_good_video_row(i, video, text, kind, split, frames)).encode())
            good[f"{video}/g{i}"] = f"annotations.jsonl:{i + 1}"
        else:
            lines.append(data.draw(hostile_video_line(i), label=f"hostile {i}"))
            bad.add(f"annotations.jsonl:{i + 1}")
    (video_root / "annotations.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    quarantine, passed = _gate(video_root, "video", tmp_path_factory.getbasetemp() / "prop-video-work")
    _check(quarantine, passed, good, bad)


# ------------------------------------------------------------------------------------------- RefAVS


@pytest.fixture(scope="module")
def refavs_root(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[tuple[str, str]]]:
    root = tmp_path_factory.mktemp("prop-refavs")
    generate(root, "refavs", SynthSpec(videos=2, seed=11, width=96, height=64))
    with (root / "metadata.csv").open() as handle:
        pairs = sorted({(r["vid"], r["fid"]) for r in csv.DictReader(handle)})
    return root, pairs


def _csv_line(fields: list[str]) -> bytes:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="").writerow(fields)
    return buffer.getvalue().encode()


@st.composite
def hostile_refavs_line(draw: st.DrawFn, i: int, pairs: list[tuple[str, str]]) -> bytes:
    vid, fid = draw(st.sampled_from(pairs))
    fields = [vid, f"{vid}_{fid}_h{i}", "train", fid, f"the thing number {i}"]
    how = draw(st.sampled_from(["exp", "vid", "fid", "split", "fields", "quote", "latin1", "junk"]))
    if how == "exp":
        fields[4] = draw(st.sampled_from(["", "   ", "\u200b\u200c", "x" * 4001]))
    elif how == "vid":
        fields[0] = draw(st.sampled_from(["nope", "../x", "a\x00b"]))
    elif how == "fid":
        fields[3] = draw(st.sampled_from(["x", "-1", "1.5", "", "99"]))
    elif how == "split":
        fields[2] = draw(st.sampled_from(["training", "test_x", ""]))
    elif how == "fields":
        fields = fields[: draw(st.integers(1, 4))] if draw(st.booleans()) else [*fields, "extra"]
    line = _csv_line(fields)
    if how == "quote":
        return line + b',"unclosed'
    if how == "latin1":
        return line.replace(b"thing", b"th\xefng", 1)
    if how == "junk":
        return draw(JUNK)
    return line


@given(data=st.data())
def test_refavs_gate_property(refavs_root: tuple[Path, list[tuple[str, str]]],
                              tmp_path_factory: pytest.TempPathFactory, data: st.DataObject) -> None:
    root, pairs = refavs_root
    kinds = data.draw(st.lists(st.booleans(), min_size=1, max_size=12), label="good?")
    lines, good, bad = [_csv_line(["vid", "uid", "split", "fid", "exp"])], {}, set()
    for i, is_good in enumerate(kinds):
        if is_good:
            vid, fid = data.draw(st.sampled_from(pairs), label=f"good {i}")
            split = data.draw(st.sampled_from(["train", "val", "test_s", "test_u", "test_n"]))
            uid = f"{vid}_{fid}_g{i}"
            lines.append(_csv_line([vid, uid, split, fid, f"{data.draw(WORDS)} {i}"]))
            good[uid] = f"metadata.csv:{len(lines)}"
        else:
            lines.append(data.draw(hostile_refavs_line(i, pairs), label=f"hostile {i}"))
            bad.add(f"metadata.csv:{len(lines)}")
    (root / "metadata.csv").write_bytes(b"\n".join(lines) + b"\n")
    quarantine, passed = _gate(root, "refavs", tmp_path_factory.getbasetemp() / "prop-refavs-work")
    _check(quarantine, passed, good, bad)


# ------------------------------------------------------------------------------------------- ReVOS


@pytest.fixture(scope="module")
def revos_root(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    root = tmp_path_factory.mktemp("prop-revos")
    generate(root, "revos", SynthSpec(videos=3, width=96, height=64, fps=10, seconds=2.0, seed=11))
    return root, json.loads((root / "meta_expressions_train_.json").read_text())


REVOS_MUTATIONS = {
    "plain_string": lambda exp, value: "the dog on the left",
    "exp": lambda exp, value: {**exp, "exp": value},
    "type_id": lambda exp, value: {**exp, "type_id": value},
    "anno_id": lambda exp, value: {**exp, "anno_id": value},
}
REVOS_VALUES = {
    "plain_string": st.none(),
    "exp": st.one_of(WRONG_TYPES, st.sampled_from(["", "\u200b", "x" * 4001])),
    "type_id": st.sampled_from(["0", 3, -1, True, None, 0.5]),
    "anno_id": st.sampled_from(["1", [None], ["no-such-anno"], [True], {"a": 1}]),
}


@given(data=st.data())
def test_revos_gate_property(revos_root: tuple[Path, dict[str, Any]], tmp_path_factory: pytest.TempPathFactory,
                             data: st.DataObject) -> None:
    root, original = revos_root
    meta = json.loads(json.dumps(original))
    good, bad = {}, set()
    for video, entry in sorted(meta["videos"].items()):
        targets = [e["anno_id"] for e in entry["expressions"].values() if e["type_id"] != 2 and e["anno_id"]]
        exps: dict[str, Any] = {}
        for i, is_good in enumerate(data.draw(st.lists(st.booleans(), max_size=5), label=f"{video} good?")):
            where = f"meta_expressions_train_.json:videos.{video}.expressions.e{i}"
            kind = data.draw(st.sampled_from([0, 1, 2]))
            exp = {"exp": f"{data.draw(WORDS)} {i}", "anno_id": [] if kind == 2 else targets[0], "obj_id": [],
                   "type_id": kind}
            if is_good:
                good[f"{video}/e{i}"] = where
            else:
                how = data.draw(st.sampled_from(sorted(REVOS_MUTATIONS)))
                exp = REVOS_MUTATIONS[how](exp, data.draw(REVOS_VALUES[how]))
                bad.add(where)
            exps[f"e{i}"] = exp
        entry["expressions"] = exps or {"e0": {"exp": "a kept one", "anno_id": [], "obj_id": [], "type_id": 2}}
        if not exps:
            good[f"{video}/e0"] = f"meta_expressions_train_.json:videos.{video}.expressions.e0"
    (root / "meta_expressions_train_.json").write_text(json.dumps(meta, ensure_ascii=False))
    quarantine, passed = _gate(root, "revos", tmp_path_factory.getbasetemp() / "prop-revos-work")
    _check(quarantine, passed, good, bad)
