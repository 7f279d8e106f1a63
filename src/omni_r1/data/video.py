"""Media probing (PyAV) and decoding (one ffmpeg process per video) for the shard stage.

Facts measured on these machines shape this module (design.md section 4):

- Sampling and resizing inside ffmpeg's filter graph costs about raw decode; materialising full-size
  RGB frames in Python costs 3x or more. So ``decode_video`` selects the sampled frames and scales
  them to both sizes inside one ffmpeg filter graph, and Python only reshapes the bytes.
- An mp4 cut in half decodes part of its frames while ffmpeg exits 0. So ``probe`` compares the
  demuxed packets with the header's frame count, and ``decode_video`` runs with ``-xerror`` and
  compares the frames it received with the frames it asked for.
- ffmpeg rotates a video with a display matrix on decode; library decoders do not. Everything here
  uses the displayed orientation: ``MediaProbe.width/height`` and the decoded frames alike.
- AAC priming makes sample counts differ between ffmpeg builds, so audio is trimmed (or padded) to
  exactly ``round(duration * 16000)`` samples.
- The static ffmpeg from imageio-ffmpeg ships no ffprobe, so probing goes through PyAV.

Sizes passed around here are ``(width, height)``, as ``fit_size`` returns them; arrays are
``(T, height, width, 3)`` uint8 RGB.
"""

from __future__ import annotations

import math
import os
import re
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import numpy as np
from PIL import Image

from omni_r1.data.ffmpeg import ffmpeg_exe
from omni_r1.types import AUDIO_RATE

if TYPE_CHECKING:  # PyAV is imported by the functions that demux: stages that never open a video skip its import
    import av

# Audio placed by its timestamps from the start of the file's timeline: silence before a late start and
# in gaps (a raw f32le output otherwise concatenates the samples, moving late audio to the start).
_ALIGN_AUDIO = "aresample=async=1:first_pts=0"
_REENCODE_HINT = "re-download it, or re-encode it with `ffmpeg -i {path} -c:v libx264 -c:a aac fixed.mp4`"
# Frame durations may jitter by one tick of the stream's time base (e.g. 33/34 ms for 30 fps in a
# 1 ms time base) without the rate being variable; beyond that and this fraction, it is variable.
_VFR_RELATIVE_TOLERANCE = 0.01


class MediaError(RuntimeError):
    """A media file that cannot be used: names the file, says what is wrong and how to fix it."""

    def __init__(self, path: str | Path, reason: str, hint: str) -> None:
        self.path = str(path)
        self.reason = reason
        self.hint = hint
        super().__init__(f"{self.path}: {reason}; fix: {hint}")

    def __reduce__(self) -> tuple[type[MediaError], tuple[str, str, str]]:
        # Process pools pickle exceptions; the default reduce would call __init__ with one argument.
        return (MediaError, (self.path, self.reason, self.hint))


@dataclass(frozen=True)
class MediaProbe:
    """What a video file holds. ``width``/``height`` are the DISPLAYED size (after SAR and rotation).

    ``rotation`` is the clockwise turn in degrees (0/90/180/270) that a player applies to the coded
    picture, the convention of the legacy ``rotate`` tag (a phone's portrait video has 90).
    """

    path: str
    width: int
    height: int
    coded_width: int
    coded_height: int
    sar: tuple[int, int]
    rotation: int
    fps: float
    num_frames: int
    duration: float
    variable_frame_rate: bool
    has_audio: bool
    audio_channels: int
    audio_rate: int


@dataclass(frozen=True)
class DecodedVideo:
    """Sampled frames at two sizes plus the audio track, all in displayed orientation."""

    low_res: np.ndarray  # (T, h, w, 3) uint8
    high_res: np.ndarray  # (T, H, W, 3) uint8
    audio: np.ndarray  # (N,) float32 mono 16 kHz, N == round(duration * 16000); (0,) without audio
    frames_decoded: int


@dataclass(frozen=True)
class _Scan:
    """One demux pass over a file: stream facts plus every video frame's presentation time."""

    times: np.ndarray  # seconds, sorted, relative to the first frame
    time_tick: float  # seconds per unit of the stream's time base
    last_frame_duration: float
    coded_width: int
    coded_height: int
    sar: tuple[int, int]
    rotation: int
    has_audio: bool
    audio_channels: int
    audio_rate: int
    # Seconds from the start of the file's timeline (its earliest stream) to the first video frame: how
    # much of the audio, aligned by timestamps, comes before frame 0.
    video_lead: float = 0.0


# ---------------------------------------------------------------------------------------------
# probing


def probe(path: Path) -> MediaProbe:
    """Probe a video with PyAV; raise ``MediaError`` for files that cannot be used."""
    return probe_with_times(path)[0]


def frame_times(path: Path) -> np.ndarray:
    """Presentation time in seconds of every video frame, in presentation order, first at 0."""
    return _scan(Path(path)).times


def frame_times_and_lead(path: Path) -> tuple[np.ndarray, float]:
    """``frame_times`` and the seconds between the file's first timestamp (of any stream) and frame 0.

    ``decode_video(..., video_lead=...)`` uses the lead to align the audio with the frames.
    """
    scan = _scan(Path(path))
    return scan.times, scan.video_lead


def probe_with_times(path: Path) -> tuple[MediaProbe, np.ndarray]:
    """``probe`` and ``frame_times`` from one demux pass: what a decoder about to sample needs."""
    scan = _scan(Path(path))
    times = scan.times
    num_frames = len(times)
    duration = float(times[-1]) + scan.last_frame_duration
    width, height = _displayed_size(scan.coded_width, scan.coded_height, scan.sar, scan.rotation)
    probed = MediaProbe(
        path=str(path),
        width=width,
        height=height,
        coded_width=scan.coded_width,
        coded_height=scan.coded_height,
        sar=scan.sar,
        rotation=scan.rotation,
        fps=num_frames / duration,
        num_frames=num_frames,
        duration=duration,
        variable_frame_rate=_is_variable(times, scan.time_tick),
        has_audio=scan.has_audio,
        audio_channels=scan.audio_channels,
        audio_rate=scan.audio_rate,
    )
    return probed, times


def _scan(path: Path) -> _Scan:
    import av

    _check_file(path)
    try:
        container = av.open(str(path))
    except av.FFmpegError as err:
        reason = f"not a readable media file ({err.strerror or err})"
        raise MediaError(path, reason, _REENCODE_HINT.format(path=path)) from err
    with container:
        video = _video_stream(container, path)
        audio = container.streams.audio[0] if container.streams.audio else None
        try:
            return _demux(container, video, audio, path)
        except av.FFmpegError as err:
            reason = f"demuxing failed ({err.strerror or err})"
            raise MediaError(path, reason, _REENCODE_HINT.format(path=path)) from err


def _check_file(path: Path) -> None:
    if not path.is_file():
        raise MediaError(path, "file does not exist", "check the dataset root and the path in the annotations")
    if not os.access(path, os.R_OK):
        raise MediaError(path, "permission denied: this user cannot read the file",
                         f"make it readable (`chmod a+r {path}`) or run as a user who can read it")
    if path.stat().st_size == 0:
        hint = "re-download or re-export it; an interrupted copy leaves empty files"
        raise MediaError(path, "file is empty (0 bytes)", hint)


def _video_stream(container: av.container.InputContainer, path: Path) -> av.VideoStream:
    import av

    # Cover art in mp4/mkv is a one-frame video stream; it is never the video we want.
    for stream in container.streams.video:
        if not stream.disposition & av.stream.Disposition.attached_pic:
            return stream
    raise MediaError(path, "has no video stream", "use a video file, or the frame-folder layout for images")


def _demux(
    container: av.container.InputContainer, video: av.VideoStream, audio: av.AudioStream | None, path: Path
) -> _Scan:
    """Walk every video packet once, decoding only until the first frame (for rotation and SAR)."""
    stamps: list[int] = []
    packets = 0
    last_duration = 0
    first_frame: av.VideoFrame | None = None
    for packet in container.demux(video):
        if packet.size == 0:
            # The flush packet at the end (no timestamps), or AVI's "repeat the last frame", which
            # the header counts but which decodes to nothing.
            if packet.pts is not None or packet.dts is not None:
                packets += 1
            continue
        packets += 1
        if first_frame is None:
            # Rotation lives in stream side data that PyAV exposes only on decoded frames.
            frames = packet.decode()
            first_frame = frames[0] if frames else None
        if packet.is_discard:  # outside an mp4 edit list: decoded as a reference, never shown
            continue
        stamp = packet.pts if packet.pts is not None else packet.dts
        if stamp is None:
            raise MediaError(path, "video packets carry no timestamps", _REENCODE_HINT.format(path=path))
        stamps.append(stamp)
        last_duration = packet.duration or 0
    if not stamps:
        raise MediaError(path, "video stream has no frames", _REENCODE_HINT.format(path=path))
    declared = video.frames
    if declared and packets < declared:
        raise MediaError(
            path,
            f"truncated: the header lists {declared} video frames but only {packets} are in the file",
            _REENCODE_HINT.format(path=path),
        )
    time_base = float(video.time_base) if video.time_base else 1.0
    raw = np.sort(np.asarray(stamps, dtype=np.int64))
    times = (raw - raw[0]).astype(np.float64) * time_base
    file_start = container.start_time / 1e6 if container.start_time is not None else 0.0  # AV_TIME_BASE units
    video_lead = max(0.0, float(raw[0]) * time_base - file_start)
    frame_duration = last_duration * time_base if last_duration else _typical_step(times, video)
    return _Scan(
        times=times,
        time_tick=time_base,
        last_frame_duration=frame_duration,
        coded_width=video.codec_context.width,
        coded_height=video.codec_context.height,
        sar=_sar(video, first_frame),
        rotation=_rotation(first_frame),
        has_audio=audio is not None,
        audio_channels=audio.codec_context.layout.nb_channels if audio is not None else 0,
        audio_rate=audio.codec_context.sample_rate if audio is not None else 0,
        video_lead=video_lead,
    )


def _typical_step(times: np.ndarray, video: av.VideoStream) -> float:
    if len(times) > 1:
        return float(np.median(np.diff(times)))
    rate = video.average_rate or video.guessed_rate
    return 1.0 / float(rate) if rate else 1.0


def _sar(video: av.VideoStream, first_frame: av.VideoFrame | None) -> tuple[int, int]:
    # The container's aspect (mp4 pasp) wins over the bitstream's, as in ffmpeg's own decode path.
    ratio: Fraction | None = video.sample_aspect_ratio
    if not ratio and first_frame is not None:
        # PyAV 18's VideoFrame has no sample_aspect_ratio; the decoder context carries the bitstream's.
        ratio = getattr(first_frame, "sample_aspect_ratio", None)
    if not ratio or ratio <= 0:
        return (1, 1)
    return (ratio.numerator, ratio.denominator)


def _rotation(first_frame: av.VideoFrame | None) -> int:
    if first_frame is None:
        return 0
    # PyAV reports the display matrix's counter-clockwise angle; we report the clockwise turn.
    return int(round(-first_frame.rotation / 90.0)) * 90 % 360


def _displayed_size(coded_w: int, coded_h: int, sar: tuple[int, int], rotation: int) -> tuple[int, int]:
    width = max(1, round(coded_w * sar[0] / sar[1]))
    height = coded_h
    return (height, width) if rotation in (90, 270) else (width, height)


def _is_variable(times: np.ndarray, tick: float) -> bool:
    """True when frame durations differ by more than rounding to the time base can explain.

    Timestamps rounded to ``tick`` make a constant step come out as floor or ceil of itself, so a
    spread of one tick is still constant (33/34 ms for 30 fps in a 1 ms base).
    """
    if len(times) < 3:
        return False
    steps = np.diff(times)
    spread = float(steps.max() - steps.min())
    return spread > 1.5 * tick and spread > _VFR_RELATIVE_TOLERANCE * float(np.median(steps))


# ---------------------------------------------------------------------------------------------
# sampling and sizes


def sample_indices(times: np.ndarray, fps: float, max_frames: int) -> np.ndarray:
    """Native frame indices that sample a video at ``fps``, at most ``max_frames`` of them.

    Targets are k/fps for k = 0, 1, ... while before the end of the last frame; each picks the frame
    whose time is nearest (the earlier one on a tie). Duplicates are dropped keeping order; when more
    than ``max_frames`` remain, ``max_frames`` are spread evenly over them. Never empty.
    """
    times = np.asarray(times, dtype=np.float64)
    if times.ndim != 1 or times.size == 0:
        raise ValueError("sample_indices needs a non-empty 1-D array of frame times")
    if fps <= 0 or max_frames < 1:
        raise ValueError(f"sample_indices needs fps > 0 and max_frames >= 1, got fps={fps}, max_frames={max_frames}")
    step = float(np.median(np.diff(times))) if times.size > 1 else 0.0
    end = float(times[-1]) + step
    count = max(1, math.ceil(end * fps - 1e-9))
    targets = np.arange(count, dtype=np.float64) / fps
    right = np.clip(np.searchsorted(times, targets), 0, times.size - 1)
    left = np.clip(right - 1, 0, times.size - 1)
    nearest = np.where(np.abs(times[left] - targets) <= np.abs(times[right] - targets), left, right)
    candidates = np.unique(nearest)  # nearest is non-decreasing, so sorted order is the sampling order
    if candidates.size > max_frames:
        spread = np.linspace(0, candidates.size - 1, max_frames).round().astype(np.int64)
        candidates = candidates[spread]
    return candidates.astype(np.int64)


def fit_size(width: int, height: int, longest: int, max_pixels: int = 0) -> tuple[int, int]:
    """(width, height) keeping aspect with the longest side <= ``longest`` and, when ``max_pixels`` > 0, at most
    that many pixels (the paper's budgets: 128x28x28 for System 1, about 900x28x28 for System 2); never
    upscales; even, >= 2."""
    if width < 1 or height < 1 or longest < 2 or max_pixels < 0:
        raise ValueError(f"fit_size needs positive sizes, longest >= 2 and max_pixels >= 0, got {width}x{height}, "
                         f"{longest}, {max_pixels}")
    scale = min(1.0, longest / max(width, height))
    if max_pixels:
        scale = min(scale, math.sqrt(max_pixels / (width * height)))
    return _even(width * scale, min(width, longest)), _even(height * scale, min(height, longest))


def _even(value: float, cap: int) -> int:
    """Nearest even integer to ``value``, but not above ``cap`` (rounded down to even), at least 2."""
    nearest = 2 * math.floor(value / 2 + 0.5)
    return max(2, min(nearest, cap - cap % 2))


# ---------------------------------------------------------------------------------------------
# decoding


def decode_video(
    path: Path,
    indices: Sequence[int],
    low_size: tuple[int, int],
    high_size: tuple[int, int],
    *,
    with_audio: bool,
    duration: float,
    threads: int = 1,
    video_lead: float = 0.0,
) -> DecodedVideo:
    """Decode the native frames ``indices`` (strictly increasing) at two sizes, plus 16 kHz mono audio.

    One ffmpeg process decodes the video once. Its filter graph keeps the wanted frames by decoded
    frame number, splits them, and scales each branch to an explicit (width, height) with square
    pixels. The high-res frames come back on stdout; the low-res frames, the audio and ffmpeg's
    messages go to files in a temporary folder (two pipes read by one thread could deadlock).

    ``threads`` is ffmpeg's decoder thread count. It is 1 because the shard stage already decodes
    several videos at once, one ffmpeg each: frame-threaded decoding then only adds synchronisation,
    and two such decodes on two cores gave about 15% fewer frames/s (bench/shard_throughput.py).
    0 lets ffmpeg choose, which is faster for a single video on an otherwise idle machine.

    Audio is aligned with the frames by timestamps: an audio stream that starts after the video is
    padded with silence at its start (and gaps inside it are filled), and ``video_lead`` seconds of
    audio from before the first frame (``frame_times_and_lead``) are dropped, so audio sample
    ``round(t * 16000)`` is heard at frame time ``t``.
    """
    path = Path(path)
    wanted = _checked_indices(indices)
    if threads < 0:
        raise ValueError(f"decode_video needs threads >= 0 (0 lets ffmpeg choose), got {threads}")
    _check_file(path)
    with tempfile.TemporaryDirectory(prefix="omni-r1-decode-") as tmp:
        low_file = Path(tmp) / "low.rgb"
        audio_file = Path(tmp) / "audio.f32"
        command = _decode_command(path, wanted, low_size, high_size, low_file, audio_file if with_audio else None,
                                  threads)
        with open(Path(tmp) / "stderr.txt", "w+b") as stderr:
            high_bytes, returncode = _run_reading_stdout(command, stderr, len(wanted) * high_size[0] * high_size[1] * 3)
            if returncode != 0:
                stderr.seek(0)
                raise _ffmpeg_error(path, returncode, stderr.read())
        high = _frames(np.frombuffer(high_bytes, dtype=np.uint8), high_size, path)
        low_bytes = np.fromfile(low_file, dtype=np.uint8) if low_file.exists() else np.zeros(0, np.uint8)
        low = _frames(low_bytes, low_size, path)
        audio = (_fit_audio(np.fromfile(audio_file, dtype="<f4")[round(video_lead * AUDIO_RATE):], duration)
                 if with_audio else np.zeros(0, np.float32))
    received = min(len(low), len(high))
    if received < len(wanted) or len(low) != len(high):
        raise MediaError(
            path,
            f"decoded {received} of {len(wanted)} sampled frames: the file is truncated or corrupt",
            _REENCODE_HINT.format(path=path),
        )
    return DecodedVideo(low_res=low[: len(wanted)], high_res=high[: len(wanted)], audio=audio, frames_decoded=received)


def decode_frames(path: Path, indices: Sequence[int], size: tuple[int, int], *, threads: int = 1) -> np.ndarray:
    """Decode the native frames ``indices`` (strictly increasing) at one size: (T, height, width, 3) uint8 RGB.

    Evaluation's full-rate decode (System 2 propagates over every native frame). The same filter graph
    as ``decode_video``'s high-res branch, so a frame comes out with the pixels the shard stage stored
    for it; selection and scaling stay inside ffmpeg.
    """
    path = Path(path)
    wanted = _checked_indices(indices)
    if threads < 0:
        raise ValueError(f"decode_frames needs threads >= 0 (0 lets ffmpeg choose), got {threads}")
    _check_file(path)
    graph = f"[0:V:0]select='{_select_expression(wanted)}',scale={size[0]}:{size[1]},setsar=1[out]"
    command = [
        ffmpeg_exe(), "-nostdin", "-hide_banner", "-loglevel", "error", "-xerror",
        "-threads", str(threads), "-i", str(path), "-filter_complex", graph,
        "-map", "[out]", "-fps_mode", "passthrough", "-f", "rawvideo", "-pix_fmt", "rgb24", "pipe:1",
    ]  # fmt: skip
    with tempfile.TemporaryFile() as stderr:
        data, returncode = _run_reading_stdout(command, stderr, len(wanted) * size[0] * size[1] * 3)
        if returncode != 0:
            stderr.seek(0)
            raise _ffmpeg_error(path, returncode, stderr.read())
    frames = _frames(np.frombuffer(data, dtype=np.uint8), size, path)
    if len(frames) < len(wanted):
        raise MediaError(path, f"decoded {len(frames)} of {len(wanted)} frames: the file is truncated or corrupt",
                         _REENCODE_HINT.format(path=path))
    return frames[: len(wanted)]


def decode_audio(path: Path, duration: float) -> np.ndarray:
    """Any audio file or a video's first audio stream -> (N,) float32 16 kHz mono, N == round(duration * 16000)."""
    path = Path(path)
    _check_file(path)
    command = [
        ffmpeg_exe(), "-nostdin", "-hide_banner", "-loglevel", "error", "-xerror",
        "-i", str(path), "-map", "0:a:0", "-af", _ALIGN_AUDIO, "-ac", "1", "-ar", str(AUDIO_RATE), "-f", "f32le",
        "pipe:1",
    ]  # fmt: skip
    result = subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True, check=False)
    if result.returncode != 0:
        raise _ffmpeg_error(path, result.returncode, result.stderr)
    return _fit_audio(np.frombuffer(result.stdout, dtype="<f4"), duration)


def load_frames(
    paths: Sequence[Path], low_size: tuple[int, int], high_size: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Frame-folder datasets (one image per frame): (T, h, w, 3) and (T, H, W, 3) uint8 RGB."""
    lows = np.empty((len(paths), low_size[1], low_size[0], 3), dtype=np.uint8)
    highs = np.empty((len(paths), high_size[1], high_size[0], 3), dtype=np.uint8)
    for i, frame_path in enumerate(paths):
        try:
            with Image.open(frame_path) as image:
                rgb = image.convert("RGB")
        except OSError as err:  # missing, truncated or not an image (UnidentifiedImageError is an OSError)
            hint = "re-extract the frame, or drop this video"
            raise MediaError(frame_path, f"frame does not open ({err})", hint) from err
        # reducing_gap first shrinks by an integer factor (cheap box filter), then resizes bilinearly.
        highs[i] = np.asarray(rgb.resize(high_size, Image.Resampling.BILINEAR, reducing_gap=3.0))
        lows[i] = np.asarray(rgb.resize(low_size, Image.Resampling.BILINEAR, reducing_gap=3.0))
    return lows, highs


def _checked_indices(indices: Sequence[int]) -> list[int]:
    wanted = [int(i) for i in indices]
    if not wanted:
        raise ValueError("decode_video needs at least one frame index")
    if wanted[0] < 0 or any(b <= a for a, b in zip(wanted, wanted[1:])):
        raise ValueError("decode_video needs non-negative, strictly increasing frame indices (see sample_indices)")
    return wanted


def _select_expression(indices: list[int]) -> str:
    """A select expression true exactly on ``indices``: runs of consecutive frames become one between()."""
    terms: list[str] = []
    start = prev = indices[0]
    for index in [*indices[1:], None]:
        if index is not None and index == prev + 1:
            prev = index
            continue
        terms.append(f"eq(n,{start})" if start == prev else f"between(n,{start},{prev})")
        if index is not None:
            start = prev = index
    return "+".join(terms)


def _decode_command(
    path: Path,
    indices: list[int],
    low_size: tuple[int, int],
    high_size: tuple[int, int],
    low_file: Path,
    audio_file: Path | None,
    threads: int = 1,
) -> list[str]:
    # [0:V:0] is the first video stream that is not cover art. ffmpeg applies any display rotation
    # before this graph, so frames come out in displayed orientation; setsar=1 after an explicit
    # scale makes non-square pixels come out with the displayed aspect.
    graph = (
        f"[0:V:0]select='{_select_expression(indices)}',split=2[lo][hi];"
        f"[lo]scale={low_size[0]}:{low_size[1]},setsar=1[low];"
        f"[hi]scale={high_size[0]}:{high_size[1]},setsar=1[high]"
    )
    # passthrough: keep exactly the selected frames, with no duplication or dropping to a rate.
    raw_video = ["-fps_mode", "passthrough", "-f", "rawvideo", "-pix_fmt", "rgb24"]
    command = [
        ffmpeg_exe(), "-nostdin", "-hide_banner", "-loglevel", "error", "-xerror",
        "-threads", str(threads), "-i", str(path), "-filter_complex", graph,
        "-map", "[high]", *raw_video, "pipe:1",
        "-map", "[low]", *raw_video, str(low_file),
    ]  # fmt: skip
    if audio_file is not None:
        command += ["-map", "0:a:0", "-af", _ALIGN_AUDIO, "-ac", "1", "-ar", str(AUDIO_RATE), "-f", "f32le",
                    str(audio_file)]
    return command


def _run_reading_stdout(command: list[str], stderr: BinaryIO, expected: int) -> tuple[bytearray, int]:
    """Run ffmpeg, reading stdout straight into one buffer of the expected size (grown if it is exceeded).

    stderr goes to a file so that a chatty ffmpeg can never block on a full pipe while we read stdout.
    """
    # One spare byte, so that a complete read ends in an EOF read rather than in growing the buffer.
    buffer = bytearray(expected + 1)
    filled = 0
    with subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=stderr) as process:
        assert process.stdout is not None  # stdout=PIPE guarantees it
        while True:
            if filled == len(buffer):
                buffer.extend(bytes(len(buffer)))
            got = process.stdout.readinto(memoryview(buffer)[filled:])
            if not got:
                break
            filled += got
        returncode = process.wait()
    del buffer[filled:]
    return buffer, returncode


def _frames(data: np.ndarray, size: tuple[int, int], path: Path) -> np.ndarray:
    """Raw rgb24 bytes (1-D uint8) -> (T, height, width, 3)."""
    width, height = size
    frame_bytes = width * height * 3
    if data.size % frame_bytes:
        raise MediaError(path, f"ffmpeg returned a partial {width}x{height} frame", _REENCODE_HINT.format(path=path))
    return data.reshape(-1, height, width, 3)


def _fit_audio(samples: np.ndarray, duration: float) -> np.ndarray:
    """Trim or zero-pad to exactly round(duration * 16 kHz): encoder priming varies between builds."""
    target = round(duration * AUDIO_RATE)
    out = np.zeros(target, dtype=np.float32)
    keep = min(target, samples.size)
    out[:keep] = samples[:keep]
    return out


def _ffmpeg_error(path: Path, returncode: int, stderr: bytes) -> MediaError:
    # ffmpeg prefixes messages with "[h264 @ 0x55d0c...]"; the addresses change per run and help nobody.
    text = re.sub(r" @ 0x[0-9a-f]+\]", "]", stderr.decode("utf-8", "replace"))
    lines = [line for line in text.splitlines() if line.strip()]
    detail = " | ".join(lines[-3:]) if lines else "no message"
    hint = _REENCODE_HINT.format(path=path)
    if "'0:a:0'" in detail or "matches no streams" in detail:
        hint = "the file has no audio stream: decode it with with_audio=False (probe().has_audio says which)"
    return MediaError(path, f"ffmpeg failed with exit code {returncode}: {detail}", hint)
