"""Builders of small, odd media files for tests, made with ffmpeg's lavfi sources.

Plain functions with no pytest dependency: each takes an output path, writes the file and returns
the path. Every file is tiny (about 160x120, 1-2 s) so each builds in well under a second.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from omni_r1.data.ffmpeg import ffmpeg_exe


def _ffmpeg(*args: str) -> None:
    command = [ffmpeg_exe(), "-nostdin", "-hide_banner", "-loglevel", "error", "-y", *args]
    result = subprocess.run(command, capture_output=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"ffmpeg failed building a test file: {' '.join(command)}\n{result.stderr.decode()}")


def _audio_source(seconds: float, rate: int, channels: int) -> list[str]:
    """A sine tone, copied into every channel with pan so any layout carries signal."""
    layout = {1: "mono", 2: "stereo", 6: "5.1"}[channels]
    pan = "|".join(f"c{i}=c0" for i in range(channels))
    return [
        "-f", "lavfi", "-i", f"sine=frequency=440:sample_rate={rate}:duration={seconds}",
        "-af", f"pan={layout}|{pan}",
    ]  # fmt: skip


def make_clip(
    path: Path,
    *,
    size: tuple[int, int] = (160, 120),
    fps: int = 10,
    seconds: float = 2,
    audio: bool = True,
    audio_channels: int = 1,
    audio_rate: int = 44100,
) -> Path:
    """An H.264 (+ AAC) mp4 of testsrc2 with a sine tone."""
    args = ["-f", "lavfi", "-i", f"testsrc2=size={size[0]}x{size[1]}:rate={fps}:duration={seconds}"]
    if audio:
        args += _audio_source(seconds, audio_rate, audio_channels) + ["-c:a", "aac", "-b:a", "64k"]
    _ffmpeg(*args, "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-shortest", str(path))
    return Path(path)


def make_counter_clip(path: Path, *, frames: int = 40, fps: int = 10, step: int = 5) -> Path:
    """Lossless H.264 (with B-frames) whose frame i is solid grey at luma 16 + i*step: frames name themselves."""
    if 16 + (frames - 1) * step > 235:
        raise ValueError("frames * step overflows the video luma range (16..235)")
    source = (
        f"color=c=black:size=64x48:rate={fps}:duration={frames / fps},"
        f"format=yuv420p,geq=lum='16+N*{step}':cb=128:cr=128"
    )
    _ffmpeg("-f", "lavfi", "-i", source, "-c:v", "libx264", "-preset", "medium", "-qp", "0", "-bf", "3", str(path))
    return Path(path)


def make_truncated(src: Path, dst: Path) -> Path:
    """``src`` remuxed with its index (moov) first, then cut in half: the header survives, the tail is lost."""
    faststart = Path(dst).with_name(Path(dst).stem + ".faststart.mp4")
    _ffmpeg("-i", str(src), "-c", "copy", "-movflags", "+faststart", str(faststart))
    data = faststart.read_bytes()
    faststart.unlink()
    Path(dst).write_bytes(data[: len(data) // 2])
    return Path(dst)


def make_zero_byte(path: Path) -> Path:
    """An empty file with a video name."""
    Path(path).write_bytes(b"")
    return Path(path)


def make_not_a_video(path: Path) -> Path:
    """Text bytes under a .mp4 name."""
    Path(path).write_bytes(b"this is not a video, just some text that happens to be named .mp4\n" * 20)
    return Path(path)


def make_no_audio(path: Path) -> Path:
    """An H.264 mp4 with no audio stream."""
    return make_clip(path, audio=False)


def make_surround(path: Path) -> Path:
    """An mp4 with 5.1 channels of 48 kHz AAC."""
    return make_clip(path, audio_channels=6, audio_rate=48000)


def make_odd_size(path: Path) -> Path:
    """161x97 H.264 in 4:4:4 (4:2:0 needs even sizes)."""
    _ffmpeg(
        # testsrc2 rounds its size to even (it draws in 4:2:0), so scale up to the odd size after.
        "-f", "lavfi", "-i", "testsrc2=size=160x96:rate=10:duration=1,format=yuv444p,scale=161:97,setsar=1",
        "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv444p", str(path),
    )  # fmt: skip
    return Path(path)


def make_non_square_pixels(path: Path) -> Path:
    """Coded 160x120 with a 2:1 sample aspect ratio: displayed 320x120.

    The left half of the coded picture is red and the right half blue, so the displayed aspect of a
    decoded frame can be checked.
    """
    source = "color=c=red:size=160x120:rate=10:duration=1,drawbox=x=80:y=0:w=80:h=120:color=blue:t=fill,setsar=2"
    _ffmpeg("-f", "lavfi", "-i", source, "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", str(path))
    return Path(path)


def make_vfr(path: Path) -> Path:
    """Variable frame rate: 10 frames 0.1 s apart, then 10 frames 0.05 s apart (1.5 s in all)."""
    source = "testsrc2=size=160x120:rate=10:duration=2"
    # A 1 ms time base in the graph and the encoder: in the source's 1/10 s base (which the encoder
    # would inherit from the frame rate) the 0.05 s steps would round onto each other and be dropped.
    retime = "settb=1/1000,setpts='if(lt(N,10),N*0.1,1+(N-10)*0.05)/TB'"
    _ffmpeg(
        "-f", "lavfi", "-i", source, "-vf", retime, "-frames:v", "20", "-fps_mode", "vfr", "-enc_time_base", "1/1000",
        "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", str(path),
    )  # fmt: skip
    return Path(path)


def make_rotated(path: Path) -> Path:
    """Coded 160x120 with a display matrix of 90 degrees counter-clockwise: displayed 120x160.

    The coded picture's left half is red and its right half blue. Turned 90 degrees
    counter-clockwise for display, red lies in the bottom half and blue in the top half.
    """
    upright = Path(path).with_name(Path(path).stem + ".upright.mp4")
    source = "color=c=red:size=160x120:rate=10:duration=1,drawbox=x=80:y=0:w=80:h=120:color=blue:t=fill"
    _ffmpeg("-f", "lavfi", "-i", source, "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", str(upright))
    # -display_rotation is an input option (ffmpeg >= 7); on a stream copy it only writes the matrix.
    _ffmpeg("-display_rotation", "90", "-i", str(upright), "-c", "copy", str(path))
    upright.unlink()
    return Path(path)


def make_audio_only(path: Path, *, seconds: float = 1, rate: int = 22050) -> Path:
    """An audio file with no video stream (a WAV, RefAVS-style, at an unusual rate)."""
    _ffmpeg(*_audio_source(seconds, rate, 2), "-c:a", "pcm_s16le", str(path))
    return Path(path)


def make_late_audio(path: Path, *, seconds: float = 6, delay: float = 2, tone: float = 2) -> Path:
    """A video of ``seconds`` whose audio stream starts ``delay`` s after it: a ``tone`` s sine, then nothing.

    Played, the tone sounds at ``delay`` .. ``delay + tone`` s of the video; real recordings often have
    such offsets between their streams.
    """
    _ffmpeg(
        "-f", "lavfi", "-i", f"testsrc2=size=96x64:rate=10:duration={seconds}",
        "-itsoffset", str(delay), "-f", "lavfi", "-i", f"sine=frequency=440:sample_rate=16000:duration={tone}",
        "-map", "0:v", "-map", "1:a", "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p",
        "-c:a", "aac", str(path),
    )  # fmt: skip
    return Path(path)
