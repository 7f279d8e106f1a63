"""Tests of the synthetic omni dataset: determinism, the three layouts, exact masks and a real audio track."""

from __future__ import annotations

import csv
import json
import wave
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from omni_r1.data.masks import decode_rle
from omni_r1.data.synthetic import (
    PITCHES,
    REFAVS_FRAMES,
    SynthSpec,
    SynthSummary,
    describe_scene,
    generate,
    render,
    write_video,
)

SPEC = SynthSpec(videos=3, seed=7, width=96, height=64, fps=10, seconds=2.0, audio_rate=22050)


def _annotation_files(root: Path, fmt: str) -> dict[str, bytes]:
    """Every annotation file of a layout, by relative path (media files excluded)."""
    if fmt == "video":
        paths = [root / "annotations.jsonl"]
    elif fmt == "refavs":
        paths = [root / "metadata.csv", *sorted((root / "gt_mask").rglob("*.png"))]
    else:
        paths = sorted(root.glob("*.json"))
    return {str(p.relative_to(root)): p.read_bytes() for p in paths}


@pytest.fixture(scope="module")
def video_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("video")
    generate(root, "video", SPEC)
    return root


@pytest.fixture(scope="module")
def records(video_root: Path) -> list[dict]:
    return [json.loads(line) for line in (video_root / "annotations.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("fmt", ["video", "refavs", "revos"])
def test_same_seed_gives_identical_annotations_and_another_seed_differs(
    tmp_path: Path, video_root: Path, fmt: str
) -> None:
    # the video layout reuses the module's dataset as its first run: encoding is the slow part
    first = tmp_path / "a" if fmt != "video" else video_root
    if fmt != "video":
        summary = generate(first, fmt, SPEC)
        assert isinstance(summary, SynthSummary) and (summary.videos, summary.expressions, summary.fmt) == (3, 12, fmt)
    generate(tmp_path / "b", fmt, SPEC)
    generate(tmp_path / "c", fmt, SynthSpec(**{**SPEC.__dict__, "seed": SPEC.seed + 1}))
    a = _annotation_files(first, fmt)
    b, c = (_annotation_files(tmp_path / d, fmt) for d in "bc")
    assert len(a) >= 1 and a == b
    main_file = {"video": "annotations.jsonl", "refavs": "metadata.csv", "revos": "mask_dict.json"}[fmt]
    assert a[main_file] != c[main_file]


def test_video_k_does_not_depend_on_dataset_size() -> None:
    small = describe_scene(SynthSpec(videos=3, seed=1), 2)
    large = describe_scene(SynthSpec(videos=40, seed=1), 2)
    assert small == large


def test_spec_rejects_too_few_frames_and_odd_sizes() -> None:
    with pytest.raises(ValueError, match="frames"):
        SynthSpec(fps=2, seconds=2.0)
    with pytest.raises(ValueError, match="even"):
        SynthSpec(width=95)


def test_video_layout_streams_and_frame_count(video_root: Path) -> None:
    mp4s = sorted((video_root / "videos").glob("*.mp4"))
    assert [p.stem for p in mp4s] == ["synth_0000", "synth_0001", "synth_0002"]
    for path in mp4s:
        with av.open(str(path)) as container:
            video, audio = container.streams.video[0], container.streams.audio[0]
            assert video.codec_context.name == "h264"
            assert audio.codec_context.name == "aac"
            assert audio.sample_rate == SPEC.audio_rate and audio.codec_context.channels == 1
            assert (video.codec_context.width, video.codec_context.height) == (SPEC.width, SPEC.height)
            assert sum(1 for _ in container.decode(video=0)) == SPEC.fps * SPEC.seconds


def test_video_layout_annotations(records: list[dict]) -> None:
    assert len(records) == 12
    assert {r["type"] for r in records} == {"referring", "reasoning", "null"}
    assert {r["cue"] for r in records} == {"appearance", "sound", "time"}
    assert {r["split"] for r in records} == {"train", "val", "test"}
    assert [r["exp_id"] for r in records[:4]] == ["0", "1", "2", "3"]
    for r in records:
        if r["type"] == "null":
            assert r["objects"] == [] and r["cue"] == "appearance"
            continue
        assert len(r["objects"]) == 1
        for obj in r["objects"]:
            frames = [m["frame"] for m in obj["masks"]]
            assert frames and frames == sorted(set(frames)) and 0 <= frames[0] and frames[-1] < SPEC.num_frames
            for m in obj["masks"]:
                assert isinstance(m["rle"]["counts"], str)
                mask = decode_rle(m["rle"])
                assert mask.shape == (SPEC.height, SPEC.width) and mask.any()


def test_masks_match_the_rendered_pixels_and_the_time_target_shows_whenever_present(records: list[dict]) -> None:
    for r in records:
        if r["cue"] != "time":
            continue
        scene = describe_scene(SPEC, int(r["video_id"].split("_")[1]))
        frames, visible = render(scene, SPEC.num_frames)
        obj_id = int(r["objects"][0]["obj_id"])
        listed = {m["frame"] for m in r["objects"][0]["masks"]}
        # drawn on top, the time target is visible exactly on the frames of its presence interval
        assert listed == set(np.flatnonzero(scene.present(obj_id, SPEC.num_frames)).tolist())
        for m in r["objects"][0]["masks"]:
            mask = decode_rle(m["rle"])
            assert np.array_equal(mask, visible[obj_id][m["frame"]])
            # every masked pixel has the object's colour in the raw render: the mask is exact
            pixels = frames[m["frame"]][mask]
            assert (pixels == pixels[0]).all()


@pytest.mark.parametrize("seed", range(12))
def test_time_answer_is_unique_by_construction(seed: int) -> None:
    spec = SynthSpec(videos=1, seed=seed, width=64, height=48, fps=5, seconds=2.0)
    scene = describe_scene(spec, 0)
    exp = scene.expressions[2]
    target = exp.targets[0]
    for n in (REFAVS_FRAMES, spec.num_frames, 60):
        first = {o.obj_id: int(np.argmax(scene.present(o.obj_id, n))) for o in scene.objects}
        last = {o.obj_id: int(np.flatnonzero(scene.present(o.obj_id, n))[-1]) for o in scene.objects}
        others = [o.obj_id for o in scene.objects if o.obj_id != target]
        if "first" in exp.text:
            assert all(first[target] < first[k] for k in others)
        elif "last" in exp.text:
            assert all(first[target] > first[k] for k in others)
        else:
            assert last[target] < n - 1 and all(last[k] == n - 1 for k in others)
    assert scene.objects[-1].obj_id == target  # drawn on top


def _decode_audio(path: Path) -> tuple[np.ndarray, int]:
    with av.open(str(path)) as container:
        rate = container.streams.audio[0].sample_rate
        chunks = [frame.to_ndarray().reshape(-1) for frame in container.decode(audio=0)]
    return np.concatenate(chunks).astype(np.float64), rate


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(x**2))) if x.size else 0.0


def test_audio_is_the_named_tone_during_its_intervals_and_silent_elsewhere(
    video_root: Path, records: list[dict]
) -> None:
    for r in (r for r in records if r["cue"] == "sound"):
        audio, rate = _decode_audio(video_root / "videos" / f"{r['video_id']}.mp4")
        scene = describe_scene(SPEC, int(r["video_id"].split("_")[1]))
        pitch = max((p for p in PITCHES if r["expression"].endswith(p)), key=len)  # "high beep" also ends in "beep"
        sounding = np.zeros(audio.size, dtype=bool)
        for obj in scene.objects:
            for start, end in scene.sound_intervals(obj.obj_id, SPEC.seconds):
                sounding[int((start - 0.05) * rate) : int((end + 0.05) * rate)] = True
        assert r["sound_intervals"]
        for start, end in r["sound_intervals"]:
            core = audio[int((start + 0.03) * rate) : int((end - 0.03) * rate)]
            assert _rms(core) > 0.15  # a 0.3-amplitude sine has rms 0.21
            spectrum = np.abs(np.fft.rfft(core * np.hanning(core.size)))
            peak_hz = np.fft.rfftfreq(core.size, 1 / rate)[int(np.argmax(spectrum))]
            assert abs(peak_hz - PITCHES[pitch]) < 15
        quiet = audio[~sounding]
        assert quiet.size > rate // 2 and _rms(quiet) < 0.005
        # the object sounds only while it is visible
        target = r["objects"][0]
        shown = {m["frame"] for m in target["masks"]}
        for start, end in r["sound_intervals"]:
            assert {int(start * SPEC.fps), int(end * SPEC.fps) - 1} <= shown


def test_refavs_layout(tmp_path: Path) -> None:
    spec = SynthSpec(**{**SPEC.__dict__, "videos": 5})
    summary = generate(tmp_path, "refavs", spec)
    with (tmp_path / "metadata.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["vid", "uid", "split", "fid", "exp"]
    assert len(rows) == summary.expressions == 20
    assert {r["split"] for r in rows} == {"train", "val", "test_s", "test_u", "test_n"}
    for vid in sorted({r["vid"] for r in rows}):
        media = tmp_path / "media" / vid
        assert sorted(p.name for p in (media / "frames").glob("*.jpg")) == sorted(f"{i}.jpg" for i in range(10))
        with Image.open(media / "frames" / "0.jpg") as img:
            assert img.size == (spec.width, spec.height)
        with wave.open(str(media / "audio.wav"), "rb") as wav:
            assert (wav.getframerate(), wav.getnchannels(), wav.getsampwidth()) == (16_000, 1, 2)
            assert wav.getnframes() == 160_000
            pcm = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2")
        assert np.abs(pcm).max() > 5000 and (pcm == 0).mean() > 0.3  # a tone part of the time, silence elsewhere
    for r in rows:
        assert r["uid"].rsplit("_", 2)[0] == r["vid"]
        pngs = [tmp_path / "gt_mask" / r["vid"] / f"fid_{r['fid']}" / f"0000{i}.png" for i in range(10)]
        masks = []
        for png in pngs:
            with Image.open(png) as img:
                assert img.mode == "L" and img.size == (spec.width, spec.height)
                masks.append(np.asarray(img))
        stack = np.stack(masks)
        assert set(np.unique(stack).tolist()) <= {0, 255}
        if r["split"] == "test_n":
            assert r["fid"] == "0"
        if r["fid"] == "0":  # a null expression: no target, empty masks
            assert not stack.any()
        else:
            assert stack.any()


def test_revos_layout(tmp_path: Path) -> None:
    generate(tmp_path, "revos", SPEC)
    train = json.loads((tmp_path / "meta_expressions_train_.json").read_text())["videos"]
    valid = json.loads((tmp_path / "meta_expressions_valid_.json").read_text())["videos"]
    mask_dict = json.loads((tmp_path / "mask_dict.json").read_text())
    foreground = json.loads((tmp_path / "mask_dict_foreground.json").read_text())
    assert sorted(train) == ["synth_0000", "synth_0001"] and sorted(valid) == ["synth_0002"]
    names = [f"{i:05d}" for i in range(SPEC.num_frames)]
    type_ids = set()
    for vid, video in {**train, **valid}.items():
        assert video["frames"] == names
        assert all((tmp_path / "JPEGImages" / vid / f"{n}.jpg").is_file() for n in names)
        assert len(foreground[vid]["masks_rle"]) == len(names)
        union = np.stack([decode_rle(rle) for rle in foreground[vid]["masks_rle"]])
        assert union.shape == (len(names), SPEC.height, SPEC.width)
        scene = describe_scene(SPEC, int(vid.split("_")[1]))
        anyone = np.any([scene.present(o.obj_id, len(names)) for o in scene.objects], axis=0)
        assert np.array_equal(union.any(axis=(1, 2)), anyone)
        for exp in video["expressions"].values():
            type_ids.add(exp["type_id"])
            assert len(exp["anno_id"]) == len(exp["obj_id"])
            if exp["type_id"] == 2:
                assert exp["anno_id"] == [] and exp["obj_id"] == []
            for anno_id, obj_id in zip(exp["anno_id"], exp["obj_id"]):
                assert isinstance(anno_id, str) and isinstance(obj_id, int)
                track = mask_dict[anno_id]
                assert len(track) == len(names)
                shown = [decode_rle(rle) for rle in track if rle is not None]
                assert shown and all(m.shape == (SPEC.height, SPEC.width) and m.any() for m in shown)
                # every object's mask lies inside the foreground union
                for i, rle in enumerate(track):
                    if rle is not None:
                        assert not (decode_rle(rle) & ~union[i]).any()
    assert type_ids == {0, 1, 2}
    assert len(mask_dict) == sum(len(describe_scene(SPEC, k).objects) for k in range(3))


def test_write_video_passes_extra_args_and_stereo_audio(tmp_path: Path) -> None:
    frames = np.zeros((5, 32, 48, 3), dtype=np.uint8)
    frames[:, 8:24, 8:24] = (200, 30, 30)
    audio = np.zeros((8000, 2), dtype=np.float32)
    path = tmp_path / "odd.mp4"
    write_video(path, frames, 5.0, audio, 16_000, audio_channels=2, extra_args=["-vf", "setsar=4/3"])
    with av.open(str(path)) as container:
        video = container.streams.video[0]
        assert video.codec_context.sample_aspect_ratio == Fraction(4, 3)
        assert container.streams.audio[0].codec_context.channels == 2
        assert sum(1 for _ in container.decode(video=0)) == 5
    with pytest.raises(ValueError, match="even"):
        write_video(tmp_path / "bad.mp4", frames[:, :31], 5.0, None, 16_000)
