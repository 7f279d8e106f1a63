"""Locate the ffmpeg binary: one on PATH first, else the static build shipped by the imageio-ffmpeg wheel.

The wheel's binary means a fresh machine needs no system package. It ships no ffprobe, so probing
goes through PyAV (see ``omni_r1.data.video``).
"""

from __future__ import annotations

import functools
import shutil


class FfmpegNotFound(RuntimeError):
    """No ffmpeg binary could be found."""


@functools.cache
def ffmpeg_exe() -> str:
    """Return the path of an ffmpeg binary, preferring the one on PATH."""
    on_path = shutil.which("ffmpeg")
    if on_path:
        return on_path
    try:
        import imageio_ffmpeg
    except ImportError as err:  # the package is a pinned dependency, so this means a broken install
        raise FfmpegNotFound(
            "no ffmpeg on PATH and imageio-ffmpeg is not installed; run `make venv` or install ffmpeg"
        ) from err
    return imageio_ffmpeg.get_ffmpeg_exe()
