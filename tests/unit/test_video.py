"""Probing and decoding of odd media files (omni_r1.data.video), built small with ffmpeg."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from omni_r1.data import video
from omni_r1.data.video import MediaError
from tests import media_fixtures as fx

LOW, HIGH = 64, 160
Levels = tuple[np.ndarray, np.ndarray]  # mean intensity per frame: (low-res, high-res)


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("media")


@pytest.fixture(scope="module")
def clip(media: Path) -> Path:
    return fx.make_clip(media / "clip.mp4")


@pytest.fixture(scope="module")
def counter(media: Path) -> Path:
    return fx.make_counter_clip(media / "counter.mp4", frames=40, step=5)


@pytest.fixture(scope="module")
def counter_levels(counter: Path) -> Levels:
    """Mean intensity of every frame of the counter clip, low-res and high-res, decoded all at once.

    The two differ by a level or two (swscale rounds differently when it also scales), so each
    size is compared with its own reference.
    """
    decoded = video.decode_video(counter, range(40), (32, 24), (64, 48), with_audio=False, duration=4.0)
    return decoded.low_res.reshape(40, -1).mean(axis=1), decoded.high_res.reshape(40, -1).mean(axis=1)


def _decode(path: Path, *, with_audio: bool | None = None) -> tuple[video.MediaProbe, np.ndarray, video.DecodedVideo]:
    probed, times = video.probe_with_times(path)
    indices = video.sample_indices(times, 2.0, 24)
    decoded = video.decode_video(
        path,
        indices,
        video.fit_size(probed.width, probed.height, LOW),
        video.fit_size(probed.width, probed.height, HIGH),
        with_audio=probed.has_audio if with_audio is None else with_audio,
        duration=probed.duration,
    )
    return probed, indices, decoded


def _colour_means(frame: np.ndarray) -> dict[str, np.ndarray]:
    h, w = frame.shape[:2]
    f = frame.astype(np.float64)
    return {
        "top": f[: h // 2].mean(axis=(0, 1)),
        "bottom": f[h // 2 :].mean(axis=(0, 1)),
        "left": f[:, : w // 2].mean(axis=(0, 1)),
        "right": f[:, w // 2 :].mean(axis=(0, 1)),
    }


def _is_red(rgb: np.ndarray) -> bool:
    return rgb[0] > 200 and rgb[1] < 40 and rgb[2] < 40


def _is_blue(rgb: np.ndarray) -> bool:
    return rgb[2] > 200 and rgb[0] < 40 and rgb[1] < 40


# --- probing ------------------------------------------------------------------------------------


def test_probe_normal_clip(clip: Path) -> None:
    p = video.probe(clip)
    assert (p.width, p.height, p.coded_width, p.coded_height) == (160, 120, 160, 120)
    assert p.sar == (1, 1) and p.rotation == 0
    assert p.num_frames == 20 and p.fps == pytest.approx(10.0)
    assert p.duration == pytest.approx(2.0)
    assert not p.variable_frame_rate
    assert (p.has_audio, p.audio_channels, p.audio_rate) == (True, 1, 44100)
    times = video.frame_times(clip)
    assert len(times) == p.num_frames
    np.testing.assert_allclose(times, np.arange(20) / 10.0, atol=1e-6)


@pytest.mark.parametrize("maker", [fx.make_zero_byte, fx.make_not_a_video], ids=["zero-byte", "not-a-video"])
def test_unusable_files_raise_media_error_naming_the_file(media: Path, maker) -> None:
    path = maker(media / f"bad-{maker.__name__}.mp4")
    with pytest.raises(MediaError) as info:
        video.probe(path)
    err = info.value
    assert err.path == str(path) and str(path) in str(err)
    assert err.reason and err.hint and err.hint in str(err)
    with pytest.raises(MediaError):
        video.decode_video(path, [0], (32, 24), (64, 48), with_audio=False, duration=1.0)


def test_audio_only_file_has_no_video_stream_but_decodes_as_audio(media: Path) -> None:
    path = fx.make_audio_only(media / "audio.wav")
    with pytest.raises(MediaError, match="no video stream") as info:
        video.probe(path)
    assert info.value.path == str(path)
    audio = video.decode_audio(path, 1.0)
    assert audio.shape == (16000,) and audio.dtype == np.float32
    assert np.sqrt(np.mean(audio**2)) > 0.01


def test_missing_file_raises_media_error(media: Path) -> None:
    with pytest.raises(MediaError, match="does not exist"):
        video.probe(media / "nowhere.mp4")


def test_media_error_survives_pickling() -> None:
    # Process pools send exceptions back pickled; a custom __init__ must still round-trip.
    err = pickle.loads(pickle.dumps(MediaError("/x.mp4", "broken", "re-encode it")))
    assert (err.path, err.reason, err.hint) == ("/x.mp4", "broken", "re-encode it")
    assert str(err) == "/x.mp4: broken; fix: re-encode it"


def test_truncated_file_is_caught_by_probe_and_by_decode(clip: Path, media: Path) -> None:
    cut = fx.make_truncated(clip, media / "truncated.mp4")
    with pytest.raises(MediaError, match="truncated") as info:
        video.probe(cut)
    assert str(cut) in str(info.value)
    # Even without a probe, asking for frames past the cut fails loudly instead of returning fewer.
    with pytest.raises(MediaError, match=r"decoded \d+ of 10 sampled frames") as info:
        video.decode_video(cut, range(0, 20, 2), (32, 24), (64, 48), with_audio=True, duration=2.0)
    assert info.value.path == str(cut) and "re-encode" in info.value.hint


# --- decoding -----------------------------------------------------------------------------------


def test_decode_returns_exactly_the_requested_frames(counter: Path, counter_levels: Levels) -> None:
    # Each frame of the counter clip is a solid grey at luma 16 + 5 * index (lossless, with
    # B-frames so that decode order differs from presentation order).
    low_levels, high_levels = counter_levels
    for levels in counter_levels:
        steps = np.diff(levels)
        assert steps.min() > 3 and steps.max() < 8  # one level per frame, in presentation order
    # Unscaled, the grey is exactly the studio-range luma expanded to full range.
    np.testing.assert_allclose(high_levels, (5 * np.arange(40)) * 255 / 219, atol=1.0)
    assert video.probe(counter).num_frames == 40
    wanted = [0, 1, 2, 3, 17, 38, 39]
    decoded = video.decode_video(counter, wanted, (32, 24), (64, 48), with_audio=False, duration=4.0)
    assert decoded.frames_decoded == len(wanted)
    assert decoded.low_res.shape == (7, 24, 32, 3) and decoded.high_res.shape == (7, 48, 64, 3)
    assert decoded.low_res.dtype == np.uint8 and decoded.audio.shape == (0,)
    np.testing.assert_allclose(decoded.low_res.reshape(7, -1).mean(axis=1), low_levels[wanted], atol=1.0)
    np.testing.assert_allclose(decoded.high_res.reshape(7, -1).mean(axis=1), high_levels[wanted], atol=1.0)


def test_decode_sampled_at_2fps(counter: Path, counter_levels: Levels) -> None:
    times = video.frame_times(counter)
    indices = video.sample_indices(times, 2.0, 24)
    assert list(indices) == [0, 5, 10, 15, 20, 25, 30, 35]
    decoded = video.decode_video(counter, indices, (32, 24), (64, 48), with_audio=False, duration=4.0)
    np.testing.assert_allclose(decoded.low_res.reshape(8, -1).mean(axis=1), counter_levels[0][indices], atol=1.0)


def test_decode_past_the_end_raises(counter: Path) -> None:
    with pytest.raises(MediaError, match="decoded 1 of 2 sampled frames"):
        video.decode_video(counter, [0, 40], (32, 24), (64, 48), with_audio=False, duration=4.0)


@pytest.mark.parametrize("indices", [[], [3, 3], [5, 2], [-1, 2]])
def test_decode_rejects_bad_indices(counter: Path, indices: list[int]) -> None:
    with pytest.raises(ValueError):
        video.decode_video(counter, indices, (32, 24), (64, 48), with_audio=False, duration=4.0)


def test_normal_clip_decodes_with_exact_audio_length(clip: Path) -> None:
    probed, indices, decoded = _decode(clip)
    assert list(indices) == [0, 5, 10, 15]
    assert decoded.low_res.shape == (4, 48, 64, 3) and decoded.high_res.shape == (4, 120, 160, 3)
    assert decoded.audio.dtype == np.float32 and decoded.audio.shape == (32000,)
    assert np.sqrt(np.mean(decoded.audio**2)) > 0.01


def test_no_audio(media: Path) -> None:
    path = fx.make_no_audio(media / "silent.mp4")
    probed, _, decoded = _decode(path)
    assert not probed.has_audio and probed.audio_channels == 0 and probed.audio_rate == 0
    assert decoded.audio.shape == (0,) and decoded.frames_decoded == 4
    with pytest.raises(MediaError, match="no audio stream") as info:
        video.decode_video(path, [0], (32, 24), (64, 48), with_audio=True, duration=probed.duration)
    assert "with_audio=False" in info.value.hint


def test_surround_48k_downmixes_to_16k_mono(media: Path) -> None:
    path = fx.make_surround(media / "surround.mp4")
    probed, _, decoded = _decode(path)
    assert (probed.audio_channels, probed.audio_rate) == (6, 48000)
    assert decoded.audio.shape == (round(probed.duration * 16000),)
    assert np.sqrt(np.mean(decoded.audio**2)) > 0.01
    alone = video.decode_audio(path, probed.duration)
    assert alone.shape == decoded.audio.shape and alone.dtype == np.float32
    np.testing.assert_allclose(alone, decoded.audio, atol=1e-6)


def test_decode_audio_trims_and_pads_to_the_duration(clip: Path) -> None:
    assert video.decode_audio(clip, 1.25).shape == (20000,)
    padded = video.decode_audio(clip, 3.0)
    assert padded.shape == (48000,) and not padded[-8000:].any()


def test_odd_size(media: Path) -> None:
    path = fx.make_odd_size(media / "odd.mp4")
    probed, _, decoded = _decode(path)
    assert (probed.width, probed.height) == (161, 97)
    low, high = video.fit_size(161, 97, LOW), video.fit_size(161, 97, HIGH)
    assert low == (64, 38) and high == (160, 96)
    assert decoded.low_res.shape[1:] == (38, 64, 3) and decoded.high_res.shape[1:] == (96, 160, 3)


def test_non_square_pixels_come_out_with_displayed_aspect(media: Path) -> None:
    path = fx.make_non_square_pixels(media / "sar.mp4")
    probed, _, decoded = _decode(path)
    assert (probed.coded_width, probed.coded_height, probed.sar) == (160, 120, (2, 1))
    assert (probed.width, probed.height) == (320, 120)
    assert decoded.high_res.shape[1:3] == (60, 160)  # displayed 8:3, not the coded 4:3
    assert decoded.low_res.shape[1:3] == (24, 64)
    sides = _colour_means(decoded.high_res[0])
    assert _is_red(sides["left"]) and _is_blue(sides["right"])


def test_vfr(media: Path) -> None:
    path = fx.make_vfr(media / "vfr.mp4")
    probed, times = video.probe_with_times(path)
    assert probed.variable_frame_rate and probed.num_frames == 20
    steps = np.diff(times)
    assert steps[:9] == pytest.approx(0.1, abs=2e-3) and steps[10:] == pytest.approx(0.05, abs=2e-3)
    # Targets every 1/3 s while before 1.55 s (last frame 1.45 s + one 0.1 s frame): 0, 1/3, 2/3, 1, 4/3.
    indices = video.sample_indices(times, 3.0, 24)
    expected = [int(np.argmin(np.abs(times - k / 3.0))) for k in range(5)]
    assert list(indices) == expected == [0, 3, 7, 10, 17]
    decoded = video.decode_video(path, indices, (32, 24), (64, 48), with_audio=False, duration=probed.duration)
    assert decoded.frames_decoded == 5


def test_vfr_decode_returns_the_chosen_frames(media: Path) -> None:
    # testsrc2 draws a moving pattern, so equal frames mean the same source frame.
    path = fx.make_vfr(media / "vfr-frames.mp4")
    every = video.decode_video(path, range(20), (32, 24), (64, 48), with_audio=False, duration=1.55)
    some = video.decode_video(path, [2, 11, 19], (32, 24), (64, 48), with_audio=False, duration=1.55)
    for row, index in enumerate([2, 11, 19]):
        assert np.abs(some.low_res[row].astype(int) - every.low_res[index].astype(int)).mean() < 1.0
        others = [i for i in range(20) if i != index]
        assert min(np.abs(every.low_res[i].astype(int) - some.low_res[row].astype(int)).mean() for i in others) > 1.0


def test_rotation_uses_the_displayed_orientation(media: Path) -> None:
    path = fx.make_rotated(media / "rotated.mp4")
    probed, _, decoded = _decode(path)
    assert (probed.coded_width, probed.coded_height) == (160, 120)
    assert (probed.width, probed.height) == (120, 160)
    assert probed.rotation == 270  # 90 degrees counter-clockwise == 270 clockwise
    assert decoded.high_res.shape[1:3] == (160, 120) and decoded.low_res.shape[1:3] == (64, 48)
    # The coded left half is red: turned counter-clockwise for display, it lies at the bottom.
    for frames in (decoded.high_res, decoded.low_res):
        sides = _colour_means(frames[0])
        assert _is_red(sides["bottom"]) and _is_blue(sides["top"])


# --- sampling and sizes ------------------------------------------------------------------------


def test_sample_indices_nearest_frame_at_target_rate() -> None:
    times = np.arange(250) / 25.0  # 10 s at 25 fps
    indices = video.sample_indices(times, 2.0, 100)
    assert len(indices) == 20
    assert indices[0] == 0 and indices[-1] in (237, 238)
    np.testing.assert_array_less(np.abs(times[indices] - np.arange(20) / 2.0), 0.0201)
    assert indices.dtype == np.int64


def test_sample_indices_caps_and_spreads_evenly() -> None:
    times = np.arange(100) / 10.0  # 10 s at 10 fps; at 10 fps every frame is a candidate
    indices = video.sample_indices(times, 10.0, 5)
    assert list(indices) == [0, 25, 50, 74, 99]
    assert list(video.sample_indices(times, 10.0, 1)) == [0]


def test_sample_indices_dedupes_when_sampling_faster_than_native() -> None:
    times = np.arange(5) / 2.0  # 2 fps, 2.5 s
    assert list(video.sample_indices(times, 10.0, 100)) == [0, 1, 2, 3, 4]


def test_sample_indices_short_inputs() -> None:
    assert list(video.sample_indices(np.array([0.0]), 2.0, 24)) == [0]
    assert list(video.sample_indices(np.array([0.0, 0.04, 0.08]), 2.0, 24)) == [0]
    with pytest.raises(ValueError):
        video.sample_indices(np.array([]), 2.0, 24)
    with pytest.raises(ValueError):
        video.sample_indices(np.array([0.0, 1.0]), 0.0, 24)
    with pytest.raises(ValueError):
        video.sample_indices(np.array([0.0, 1.0]), 2.0, 0)


@pytest.mark.parametrize(
    ("size", "longest", "expected"),
    [
        ((640, 360), 224, (224, 126)),
        ((640, 360), 448, (448, 252)),
        ((360, 640), 224, (126, 224)),
        ((160, 120), 448, (160, 120)),  # never upscale
        ((161, 97), 448, (160, 96)),  # odd sizes round down to even, not up past the source
        ((161, 97), 64, (64, 38)),
        ((1000, 3), 100, (100, 2)),  # at least 2
        ((225, 225), 225, (224, 224)),  # an odd limit is never exceeded
    ],
)
def test_fit_size(size: tuple[int, int], longest: int, expected: tuple[int, int]) -> None:
    got = video.fit_size(*size, longest)
    assert got == expected
    assert max(got) <= longest and all(v % 2 == 0 and v >= 2 for v in got)


# --- frame folders -----------------------------------------------------------------------------


def test_load_frames(media: Path) -> None:
    folder = media / "frames"
    folder.mkdir()
    paths = []
    for i, colour in enumerate([(255, 0, 0), (0, 255, 0), (0, 0, 255)]):
        path = folder / f"{i:05d}.jpg"
        Image.new("RGB", (96, 54), colour).save(path, quality=95)
        paths.append(path)
    low, high = video.load_frames(paths, (32, 18), (64, 36))
    assert low.shape == (3, 18, 32, 3) and high.shape == (3, 36, 64, 3) and low.dtype == np.uint8
    assert np.argmax(low[:, 9, 16], axis=1).tolist() == [0, 1, 2]
    assert np.argmax(high[:, 18, 32], axis=1).tolist() == [0, 1, 2]


def test_load_frames_names_the_broken_frame(media: Path) -> None:
    good = media / "good.jpg"
    Image.new("RGB", (16, 16), (9, 9, 9)).save(good)
    broken = media / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    with pytest.raises(MediaError) as info:
        video.load_frames([good, broken], (8, 8), (16, 16))
    assert info.value.path == str(broken)
