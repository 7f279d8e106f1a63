"""Synthetic omni dataset: small videos with a real audio track and exact masks, in all three layouts.

Each video is a seeded scene of 3 or 4 coloured shapes moving over a textured background. One object
(sometimes two, at different pitches) emits a tone while it is visible; the others are silent. Each video
carries four expressions, one per cue: appearance ("the red circle"), sound ("the object making the high
beep"), time ("the object that appears last", a reasoning expression) and a null expression naming a
colour+shape combination that is absent.

A scene is described in clip-relative time: "ticks" of 1/100 of the clip, so that the same scene can be
rendered as an mp4 of ``spec.seconds`` at ``spec.fps`` (plain and ReVOS layouts) or as a 10 s, 1 fps
RefAVS clip. Presence intervals sit on a grid of 10 ticks and differ by at least 20 ticks, so the answer
of a time question is unique at any rendering of at least 10 frames. The object a time question is
about is drawn on top of every other one, so it is fully visible whenever it is present; the other
objects are drawn larger-first. Masks are the pixels each object actually shows after occlusion, so they
are exact.

The sounding intervals of an expression's target are written with the sound expression of the plain
layout under the optional key ``sound_intervals`` (seconds, ``[[start, end], ...]``). ``describe_scene``
gives the whole scene (every object's presence and sounding intervals) for tests that need more.

Video ``k`` is seeded with ``np.random.default_rng([seed, k])``, so it is the same whatever the number of
videos is. Annotation files are byte-identical for the same seed and spec.
"""

from __future__ import annotations

import csv
import io
import json
import math
import subprocess
import tempfile
import wave
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from omni_r1.data.ffmpeg import ffmpeg_exe
from omni_r1.data.masks import encode_rle
from omni_r1.fileio import atomic_write_bytes, publish
from omni_r1.types import DatasetFormat

TICKS = 100  # a scene's timeline is 100 ticks long, whatever the clip's duration
REFAVS_SECONDS = 10
REFAVS_FRAMES = 10  # RefAVS clips are 10 s sampled at 1 fps
REFAVS_AUDIO_RATE = 16_000

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 190, 60),
    "blue": (40, 90, 235),
    "yellow": (240, 220, 40),
    "white": (245, 245, 245),
    "orange": (245, 140, 30),
    "purple": (150, 60, 205),
    "cyan": (40, 215, 225),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
# Pitch name -> frequency in Hz. The names are what sound expressions say.
PITCHES: dict[str, float] = {"low hum": 330.0, "beep": 880.0, "high beep": 1760.0}
TONE_AMPLITUDE = 0.3
FADE_SECONDS = 0.01  # raised-cosine fade at each interval edge, so tones start and stop without clicks

_APPEARANCE_TEMPLATES = ("the {colour} {shape}", "the {shape} that is {colour}", "the {colour} {shape} moving around")
_SOUND_TEMPLATES = ("the object making the {pitch}", "the object that makes the {pitch}", "what is making the {pitch}")
_TIME_TEMPLATES: dict[str, tuple[str, ...]] = {
    "first": ("the object that appears first", "the object that enters the scene first"),
    "last": ("the object that appears last", "the object that enters the scene last"),
    "leaves": ("the object that leaves the scene", "the object that disappears before the end"),
}
_JSON_SEPARATORS = (",", ":")


@dataclass(frozen=True)
class SynthSpec:
    """What to generate: how many videos, their seed, frame size, frame rate, duration and audio rate."""

    videos: int = 12
    seed: int = 0
    width: int = 256
    height: int = 192
    fps: int = 10  # native frame rate of the mp4s (video layout)
    seconds: float = 6.0  # duration of each mp4 (video layout); refavs clips are always 10 s at 1 fps (10 frames)
    audio_rate: int = 44100  # AAC sample rate of the mp4s; the refavs audio.wav is 16 kHz mono PCM16

    def __post_init__(self) -> None:
        if self.videos < 1:
            raise ValueError(f"SynthSpec.videos must be >= 1, got {self.videos}")
        if self.width < 32 or self.height < 32 or self.width % 2 or self.height % 2:
            raise ValueError(
                f"SynthSpec frame size must be even and at least 32x32 (H.264 yuv420p), got {self.width}x{self.height}"
            )
        frames = self.fps * self.seconds
        if abs(frames - round(frames)) > 1e-6 or round(frames) < REFAVS_FRAMES:
            raise ValueError(
                f"SynthSpec.fps * seconds must be a whole number of frames >= {REFAVS_FRAMES} (time questions "
                f"need 10 frames to be unambiguous), got {self.fps} * {self.seconds}"
            )
        if self.audio_rate < 8000:
            raise ValueError(f"SynthSpec.audio_rate must be >= 8000 Hz, got {self.audio_rate}")

    @property
    def num_frames(self) -> int:
        """Frames of each mp4 (and of each ReVOS video)."""
        return int(round(self.fps * self.seconds))


@dataclass(frozen=True)
class SynthSummary:
    """What ``generate`` wrote."""

    out_dir: Path
    fmt: str
    videos: int
    expressions: int
    files: int


@dataclass(frozen=True)
class SceneObject:
    """One moving shape. Times are in ticks (1/100 of the clip); positions in pixels.

    The object is present for ticks in ``[enter, leave)``; ``x0, y0`` is its centre at tick 0 of its
    unbounded path and ``vx, vy`` its velocity in pixels per clip; it bounces off the frame edges.
    """

    obj_id: int
    colour: str
    shape: str
    size: float  # bounding-box side in pixels
    x0: float
    y0: float
    vx: float
    vy: float
    enter: int
    leave: int
    pitch: str
    sound_ticks: tuple[tuple[int, int], ...] = ()  # intervals [start, end) in ticks when it emits its tone

    @property
    def name(self) -> str:
        return f"{self.colour} {self.shape}"


@dataclass(frozen=True)
class Expression:
    """One expression of a scene; ``targets`` are object ids (empty for null)."""

    exp_id: str
    text: str
    exp_type: str  # referring | reasoning | null
    cue: str  # appearance | sound | time
    targets: tuple[int, ...]


@dataclass(frozen=True)
class Scene:
    """A synthetic video, independent of frame rate and duration: objects in z-order (bottom first)."""

    index: int
    video_id: str
    split: str
    width: int
    height: int
    objects: tuple[SceneObject, ...]
    expressions: tuple[Expression, ...]
    background_seed: int

    def obj(self, obj_id: int) -> SceneObject:
        for o in self.objects:
            if o.obj_id == obj_id:
                return o
        raise KeyError(f"scene {self.video_id} has no object {obj_id}")

    def sound_intervals(self, obj_id: int, seconds: float) -> list[list[float]]:
        """The object's sounding intervals in seconds, for a clip of ``seconds``."""
        return [[round(a * seconds / TICKS, 6), round(b * seconds / TICKS, 6)] for a, b in self.obj(obj_id).sound_ticks]

    def present(self, obj_id: int, num_frames: int) -> np.ndarray:
        """Bool (num_frames,): frame i (at clip position i/num_frames) lies in the object's presence interval."""
        o = self.obj(obj_id)
        i = np.arange(num_frames) * TICKS  # compare in integers: i/num_frames >= enter/TICKS
        return (i >= o.enter * num_frames) & (i < o.leave * num_frames)


# ---------------------------------------------------------------------------------------------- scene


def video_id(index: int) -> str:
    """The id of video ``index``: ``synth_0000``, ``synth_0001``, ..."""
    return f"synth_{index:04d}"


def split_of(index: int, videos: int) -> str:
    """Split of video ``index`` among ``videos``: every 5 videos give 3 train, 1 val, 1 test.

    The pattern is by index so a video keeps its split as the dataset grows; with 3 or more videos every
    split is non-empty, with fewer everything is train.
    """
    if videos < 3:
        return "train"
    return ("train", "val", "test", "train", "train")[index % 5]


def describe_scene(spec: SynthSpec, index: int) -> Scene:
    """The scene of video ``index``: objects, their timing and sound, and the four expressions."""
    rng = np.random.default_rng([spec.seed, index])
    n_obj = 4 if rng.random() < 0.3 else 3
    colours = [str(c) for c in rng.choice(list(COLOURS), size=n_obj, replace=False)]
    shapes = [SHAPES[int(s)] for s in rng.integers(0, len(SHAPES), size=n_obj)]
    sizes = [float(f) * spec.height for f in rng.uniform(0.12, 0.25, size=n_obj)]
    pitches = _assign_pitches(rng, n_obj)
    time_kind = ("first", "last", "leaves")[int(rng.integers(0, 3))]
    time_target = int(rng.integers(0, n_obj))
    timing = _timing(rng, n_obj, time_kind, time_target)
    paths = [_path(rng, spec, s) for s in sizes]
    sounder = int(rng.integers(0, n_obj))
    sound = _sound_plan(rng, timing, pitches, sounder)
    objects = [
        SceneObject(
            obj_id=k + 1,
            colour=colours[k],
            shape=shapes[k],
            size=sizes[k],
            x0=paths[k][0],
            y0=paths[k][1],
            vx=paths[k][2],
            vy=paths[k][3],
            enter=timing[k][0],
            leave=timing[k][1],
            pitch=pitches[k],
            sound_ticks=sound.get(k, ()),
        )
        for k in range(n_obj)
    ]
    expressions = _expressions(rng, objects, time_kind, time_target, sounder)
    background_seed = int(rng.integers(0, 2**32))
    # z-order: larger objects below smaller ones, and the time question's target on top of all, so it
    # shows whenever present and the time answer holds on the masks themselves.
    order = sorted(range(n_obj), key=lambda k: (k == time_target, -sizes[k], k))
    return Scene(
        index=index,
        video_id=video_id(index),
        split=split_of(index, spec.videos),
        width=spec.width,
        height=spec.height,
        objects=tuple(objects[k] for k in order),
        expressions=expressions,
        background_seed=background_seed,
    )


def _assign_pitches(rng: np.random.Generator, n_obj: int) -> list[str]:
    names = list(PITCHES)
    perm = [names[int(i)] for i in rng.permutation(len(names))]
    return [perm[k % len(perm)] for k in range(n_obj)]


def _timing(rng: np.random.Generator, n_obj: int, kind: str, target: int) -> list[tuple[int, int]]:
    """Presence intervals [enter, leave) in ticks, multiples of 10, making the time answer unique.

    first: the target enters at 0, all others at 20-40. last: the target enters at 50-60, the others at
    least 20 ticks earlier. leaves: the target leaves at 50-70, all others stay to the end.
    Every object is present for at least 40 ticks, room for its sounding intervals.
    """
    out: list[tuple[int, int]] = []
    if kind == "first":
        for k in range(n_obj):
            enter = 0 if k == target else int(rng.choice([20, 30, 40]))
            leave = 100 if k == target or rng.random() < 0.7 else int(rng.choice([80, 90]))
            out.append((enter, leave))
    elif kind == "last":
        t_enter = int(rng.choice([50, 60]))
        for k in range(n_obj):
            enter = t_enter if k == target else int(rng.choice(np.arange(0, t_enter - 10, 10)))
            out.append((enter, 100))
    elif kind == "leaves":
        t_leave = int(rng.choice([50, 60, 70]))
        for k in range(n_obj):
            if k == target:
                out.append((int(rng.choice([0, 10])), t_leave))
            else:
                out.append((int(rng.choice([0, 10, 20, 30])), 100))
    else:
        raise ValueError(f"unknown time question kind {kind!r}")
    return out


def _path(rng: np.random.Generator, spec: SynthSpec, size: float) -> tuple[float, float, float, float]:
    """Start centre and velocity (pixels per clip) of a straight path that bounces off the frame edges."""
    r = size / 2
    x0 = float(rng.uniform(r, spec.width - r))
    y0 = float(rng.uniform(r, spec.height - r))
    speed = float(rng.uniform(0.3, 1.5)) * spec.width
    angle = float(rng.uniform(0, 2 * math.pi))
    return x0, y0, speed * math.cos(angle), speed * math.sin(angle)


def _sound_plan(
    rng: np.random.Generator, timing: list[tuple[int, int]], pitches: list[str], sounder: int
) -> dict[int, tuple[tuple[int, int], ...]]:
    """Sounding intervals per object: 1-2 for the sounder, and half the time 1 for a second object of
    another pitch, never overlapping the first (so each pitch names one object at any moment)."""
    plan: dict[int, tuple[tuple[int, int], ...]] = {}
    count = 1 + int(rng.random() < 0.5)
    plan[sounder] = _pick_intervals(rng, timing[sounder], count, ())
    others = [k for k in range(len(timing)) if pitches[k] != pitches[sounder]]
    if others and rng.random() < 0.5:
        second = others[int(rng.integers(0, len(others)))]
        picked = _pick_intervals(rng, timing[second], 1, plan[sounder], required=False)
        if picked:
            plan[second] = picked
    return plan


def _pick_intervals(
    rng: np.random.Generator,
    presence: tuple[int, int],
    count: int,
    taken: tuple[tuple[int, int], ...],
    *,
    required: bool = True,
) -> tuple[tuple[int, int], ...]:
    """Up to ``count`` intervals of 15-25 ticks inside the presence (5-tick margins), 10 ticks apart from
    each other and from ``taken``. A required pick that fails by chance falls back to the first 15 ticks."""
    lo, hi = presence[0] + 5, presence[1] - 5
    chosen: list[tuple[int, int]] = []
    for _ in range(40):
        if len(chosen) == count:
            break
        length = int(rng.integers(15, 26))
        if hi - lo < length:
            continue
        start = int(rng.integers(lo, hi - length + 1))
        cand = (start, start + length)
        if all(cand[1] + 10 <= a or b + 10 <= cand[0] for a, b in (*chosen, *taken)):
            chosen.append(cand)
    if not chosen and required:
        # only the first sounder is required, and nothing is taken before it, so this cannot overlap
        chosen.append((lo, lo + 15))
    return tuple(sorted(chosen))


def _expressions(
    rng: np.random.Generator, objects: list[SceneObject], time_kind: str, time_target: int, sounder: int
) -> tuple[Expression, ...]:
    appearance = objects[int(rng.integers(0, len(objects)))]
    tpl = _APPEARANCE_TEMPLATES[int(rng.integers(0, len(_APPEARANCE_TEMPLATES)))]
    sound_tpl = _SOUND_TEMPLATES[int(rng.integers(0, len(_SOUND_TEMPLATES)))]
    time_tpls = _TIME_TEMPLATES[time_kind]
    time_text = time_tpls[int(rng.integers(0, len(time_tpls)))]
    present = {(o.colour, o.shape) for o in objects}
    absent = [(c, s) for c in COLOURS for s in SHAPES if (c, s) not in present]
    null_colour, null_shape = absent[int(rng.integers(0, len(absent)))]
    return (
        Expression("0", tpl.format(colour=appearance.colour, shape=appearance.shape), "referring", "appearance",
                   (appearance.obj_id,)),
        Expression("1", sound_tpl.format(pitch=objects[sounder].pitch), "referring", "sound",
                   (objects[sounder].obj_id,)),
        Expression("2", time_text, "reasoning", "time", (objects[time_target].obj_id,)),
        Expression("3", f"the {null_colour} {null_shape}", "null", "appearance", ()),
    )


# -------------------------------------------------------------------------------------------- render


def _background(scene: Scene) -> np.ndarray:
    """Static uint8 (H, W, 3) background: a smooth two-colour gradient plus faint stripes and blurred noise."""
    rng = np.random.default_rng(scene.background_seed)
    h, w = scene.height, scene.width
    ys = (np.arange(h, dtype=np.float32)[:, None] + 0.5) / h
    xs = (np.arange(w, dtype=np.float32)[None, :] + 0.5) / w
    c0, c1 = rng.uniform(30, 130, 3), rng.uniform(30, 130, 3)
    angle = rng.uniform(0, 2 * math.pi)
    t = xs * math.cos(angle) + ys * math.sin(angle)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    img = c0[None, None, :] + (c1 - c0)[None, None, :] * t[..., None]
    fx, fy, phase = rng.uniform(2, 9), rng.uniform(2, 9), rng.uniform(0, 2 * math.pi)
    img += 6.0 * np.sin(2 * math.pi * (fx * xs + fy * ys) + phase)[..., None]
    img += _smooth_noise(rng, h, w, cell=8, sigma=7.0)
    return np.rint(np.clip(img, 0, 255)).astype(np.uint8)


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cell: int, sigma: float) -> np.ndarray:
    """Coarse Gaussian noise bilinearly upsampled to (H, W, 3): a low-contrast mottled texture."""
    gh, gw = h // cell + 2, w // cell + 2
    coarse = rng.normal(0.0, sigma, (gh, gw, 3))
    fy = np.arange(h) / cell
    fx = np.arange(w) / cell
    y0, x0 = fy.astype(int), fx.astype(int)
    wy, wx = (fy - y0)[:, None, None], (fx - x0)[None, :, None]
    top = coarse[y0][:, x0] * (1 - wx) + coarse[y0][:, x0 + 1] * wx
    bottom = coarse[y0 + 1][:, x0] * (1 - wx) + coarse[y0 + 1][:, x0 + 1] * wx
    return top * (1 - wy) + bottom * wy


def _bounce(p: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Fold an unbounded coordinate into [lo, hi] by reflection (a triangle wave): bouncing motion."""
    span = hi - lo
    if span <= 0:
        return np.full_like(p, (lo + hi) / 2)
    q = np.mod(p - lo, 2 * span)
    return lo + np.where(q <= span, q, 2 * span - q)


def _shape_masks(obj: SceneObject, u: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bool (T, H, W): the object's full shape at clip positions ``u`` (fractions of the clip)."""
    r = obj.size / 2
    cx = _bounce(obj.x0 + obj.vx * u, r, width - r).astype(np.float32)[:, None, None]
    cy = _bounce(obj.y0 + obj.vy * u, r, height - r).astype(np.float32)[:, None, None]
    ys = np.arange(height, dtype=np.float32)[None, :, None] + 0.5
    xs = np.arange(width, dtype=np.float32)[None, None, :] + 0.5
    if obj.shape == "circle":
        return (xs - cx) ** 2 + (ys - cy) ** 2 <= r * r
    if obj.shape == "square":
        return (np.abs(xs - cx) <= r) & (np.abs(ys - cy) <= r)
    if obj.shape == "triangle":  # apex up, base at the bottom of the bounding box
        top = cy - r
        return (ys >= top) & (ys <= cy + r) & (np.abs(xs - cx) <= (ys - top) / 2)
    raise ValueError(f"unknown shape {obj.shape!r}; expected one of {SHAPES}")


def render(scene: Scene, num_frames: int) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    """Render ``num_frames`` frames evenly over the clip (frame i at position i/num_frames).

    Returns uint8 frames (T, H, W, 3) and, per object id, its visible mask (T, H, W) bool: the pixels
    it paints minus those painted by objects above it.
    """
    u = np.arange(num_frames, dtype=np.float64) / num_frames
    frames = np.broadcast_to(_background(scene), (num_frames, scene.height, scene.width, 3)).copy()
    covered = np.zeros((num_frames, scene.height, scene.width), dtype=bool)
    visible: dict[int, np.ndarray] = {}
    # paint top to bottom, so each object's visible pixels are its shape minus what is already covered
    for obj in reversed(scene.objects):
        shape = _shape_masks(obj, u, scene.height, scene.width) & scene.present(obj.obj_id, num_frames)[:, None, None]
        vis = shape & ~covered
        frames[vis] = np.asarray(COLOURS[obj.colour], dtype=np.uint8)
        covered |= shape
        visible[obj.obj_id] = vis
    return frames, {o.obj_id: visible[o.obj_id] for o in scene.objects}


def render_audio(scene: Scene, seconds: float, rate: int) -> np.ndarray:
    """Float32 mono (round(seconds*rate),): each sounding object's tone over its intervals, silence elsewhere."""
    n = int(round(seconds * rate))
    t = np.arange(n, dtype=np.float64) / rate
    out = np.zeros(n, dtype=np.float64)
    fade = FADE_SECONDS
    for obj in scene.objects:
        for a, b in obj.sound_ticks:
            start, end = a * seconds / TICKS, b * seconds / TICKS
            # raised-cosine envelope: 0 outside [start, end], 1 inside away from the edges
            ramp_in = np.clip((t - start) / fade, 0.0, 1.0)
            ramp_out = np.clip((end - t) / fade, 0.0, 1.0)
            env = 0.5 - 0.5 * np.cos(math.pi * np.minimum(ramp_in, ramp_out))
            out += TONE_AMPLITUDE * env * np.sin(2 * math.pi * PITCHES[obj.pitch] * t)
    return out.astype(np.float32)


# -------------------------------------------------------------------------------------------- writing


def _write_atomic(path: Path, data: bytes) -> None:
    """Write bytes through a temp file in the same folder, then rename over ``path``."""
    atomic_write_bytes(path, data)


def _dumps(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=_JSON_SEPARATORS)


def _png_bytes(mask: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.where(mask, 255, 0).astype(np.uint8), mode="L").save(buf, format="PNG")
    return buf.getvalue()


def _jpeg_bytes(frame: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(frame, mode="RGB").save(buf, format="JPEG", quality=92)
    return buf.getvalue()


def _wav_bytes(audio: np.ndarray, rate: int, channels: int) -> bytes:
    """PCM16 wav of float audio in [-1, 1], shape (N,) or (N, channels)."""
    pcm = (np.clip(audio, -1.0, 1.0) * 32767.0).round().astype("<i2")
    buf = io.BytesIO()
    with wave.open(buf, "wb") as wav:
        wav.setnchannels(channels)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(pcm.tobytes())
    return buf.getvalue()


def write_video(
    path: Path,
    frames: np.ndarray,
    fps: float,
    audio: np.ndarray | None,
    audio_rate: int,
    *,
    audio_channels: int = 1,
    extra_args: Sequence[str] = (),
) -> None:
    """Encode (T, H, W, 3) uint8 frames, and optional float audio (N,) or (N, C), into an H.264/AAC mp4.

    x264 runs with one thread so the output is deterministic. ``extra_args`` go just before the output
    path (e.g. ``["-vf", "setsar=4/3"]``). Mono audio is repeated over ``audio_channels``. The file is
    written to a temp name next to ``path`` and renamed when ffmpeg succeeds.
    """
    path = Path(path)
    frames = np.ascontiguousarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or frames.shape[0] == 0:
        raise ValueError(
            f"write_video({path}): frames must be non-empty uint8 (T, H, W, 3), got {frames.dtype} {frames.shape}"
        )
    _, h, w, _ = frames.shape
    if h % 2 or w % 2:
        raise ValueError(f"write_video({path}): yuv420p needs an even frame size, got {w}x{h}; crop or pad a pixel")
    rate = Fraction(fps).limit_denominator(100_000)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{path.name}.") as tmp_dir:
        cmd = [
            ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y",
            "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}",
            "-framerate", f"{rate.numerator}/{rate.denominator}", "-i", "pipe:0",
        ]  # fmt: skip
        if audio is not None:
            wav_path = Path(tmp_dir) / "audio.wav"
            wav_path.write_bytes(_wav_bytes(_audio_channels(audio, audio_channels, path), audio_rate, audio_channels))
            cmd += ["-i", str(wav_path), "-map", "0:v:0", "-map", "1:a:0"]
        cmd += ["-c:v", "libx264", "-threads", "1", "-preset", "veryfast", "-pix_fmt", "yuv420p"]
        if audio is not None:
            cmd += ["-c:a", "aac", "-b:a", "96k", "-ac", str(audio_channels), "-ar", str(audio_rate)]
        out_tmp = Path(tmp_dir) / "out.mp4"
        cmd += ["-fflags", "+bitexact", "-movflags", "+faststart", *extra_args, "-f", "mp4", str(out_tmp)]
        proc = subprocess.run(cmd, input=frames.tobytes(), capture_output=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(
                f"ffmpeg failed to write {path} (exit {proc.returncode}): {proc.stderr.decode(errors='replace')[-800:]}"
                " - check extra_args and that the ffmpeg build has libx264 and aac"
            )
        publish(out_tmp, path)


def _audio_channels(audio: np.ndarray, channels: int, path: Path) -> np.ndarray:
    """Audio as (N, channels) float32; mono input is repeated over the channels."""
    a = np.asarray(audio, dtype=np.float32)
    if a.ndim == 1:
        return np.repeat(a[:, None], channels, axis=1)
    if a.ndim == 2 and a.shape[1] == channels:
        return a
    raise ValueError(f"write_video({path}): audio must be (N,) or (N, {channels}), got shape {a.shape}")


def generate(out_dir: Path, fmt: DatasetFormat, spec: SynthSpec) -> SynthSummary:
    """Write ``spec.videos`` synthetic videos with 4 expressions each into ``out_dir`` in layout ``fmt``.

    Layouts follow spec.md section 4: ``video`` (videos/*.mp4 + annotations.jsonl), ``refavs``
    (metadata.csv, media/, gt_mask/) and ``revos`` (JPEGImages/, meta_expressions_*_.json, mask_dict*.json).
    Existing files of the layout are overwritten.
    """
    writers = {"video": _generate_video, "refavs": _generate_refavs, "revos": _generate_revos}
    if fmt not in writers:
        raise ValueError(f"unknown synthetic format {fmt!r}; use one of {sorted(writers)}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    scenes = [describe_scene(spec, k) for k in range(spec.videos)]
    files = writers[fmt](out_dir, spec, scenes)
    return SynthSummary(out_dir, fmt, len(scenes), sum(len(s.expressions) for s in scenes), files)


def _mask_entries(visible: np.ndarray) -> list[dict[str, Any]]:
    """``[{"frame": i, "rle": RLE}]`` for the frames where the mask is non-empty."""
    return [{"frame": i, "rle": encode_rle(m)} for i, m in enumerate(visible) if m.any()]


def _generate_video(out_dir: Path, spec: SynthSpec, scenes: list[Scene]) -> int:
    lines: list[str] = []
    for scene in scenes:
        frames, visible = render(scene, spec.num_frames)
        audio = render_audio(scene, spec.seconds, spec.audio_rate)
        write_video(out_dir / "videos" / f"{scene.video_id}.mp4", frames, spec.fps, audio, spec.audio_rate)
        entries = {obj_id: _mask_entries(v) for obj_id, v in visible.items()}
        for exp in scene.expressions:
            record: dict[str, Any] = {
                "video_id": scene.video_id,
                "exp_id": exp.exp_id,
                "expression": exp.text,
                "type": exp.exp_type,
                "split": scene.split,
                "cue": exp.cue,
                "objects": [{"obj_id": str(t), "masks": entries[t]} for t in exp.targets],
            }
            if exp.cue == "sound":
                record["sound_intervals"] = [iv for t in exp.targets for iv in scene.sound_intervals(t, spec.seconds)]
            lines.append(_dumps(record))
    _write_atomic(out_dir / "annotations.jsonl", ("\n".join(lines) + "\n").encode())
    return len(scenes) + 1


def refavs_split(scene: Scene, exp: Expression) -> str:
    """RefAVS split of an expression: train/val videos keep their split; a test video's null expression
    goes to test_n and its others alternate test_s, test_u (so a video never straddles train and test)."""
    if scene.split != "test":
        return scene.split
    if exp.exp_type == "null":
        return "test_n"
    non_null = [e.exp_id for e in scene.expressions if e.exp_type != "null"]
    return ("test_s", "test_u")[(non_null.index(exp.exp_id) + scene.index) % 2]


def _generate_refavs(out_dir: Path, spec: SynthSpec, scenes: list[Scene]) -> int:
    rows: list[list[str]] = []
    files = 0
    for scene in scenes:
        media = out_dir / "media" / scene.video_id
        frames, visible = render(scene, REFAVS_FRAMES)
        for i, frame in enumerate(frames):
            _write_atomic(media / "frames" / f"{i}.jpg", _jpeg_bytes(frame))
        audio = render_audio(scene, REFAVS_SECONDS, REFAVS_AUDIO_RATE)
        _write_atomic(media / "audio.wav", _wav_bytes(audio, REFAVS_AUDIO_RATE, 1))
        files += REFAVS_FRAMES + 1
        for idx, exp in enumerate(scene.expressions):
            # fid names the target (its object id; 0 for a null expression), as the official gt_mask folders do
            fid = exp.targets[0] if exp.targets else 0
            rows.append([scene.video_id, f"{scene.video_id}_{fid}_{idx}", refavs_split(scene, exp), str(fid), exp.text])
            union = np.zeros((REFAVS_FRAMES, scene.height, scene.width), dtype=bool)
            for t in exp.targets:
                union |= visible[t]
            mask_dir = out_dir / "gt_mask" / scene.video_id / f"fid_{fid}"
            for i in range(REFAVS_FRAMES):
                _write_atomic(mask_dir / f"0000{i}.png", _png_bytes(union[i]))
            files += REFAVS_FRAMES
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["vid", "uid", "split", "fid", "exp"])
    writer.writerows(rows)
    _write_atomic(out_dir / "metadata.csv", buf.getvalue().encode())
    return files + 1


_REVOS_TYPE_ID = {"referring": 0, "reasoning": 1, "null": 2}


def _generate_revos(out_dir: Path, spec: SynthSpec, scenes: list[Scene]) -> int:
    meta: dict[str, dict[str, Any]] = {"train": {}, "valid": {}}
    mask_dict: dict[str, list[dict[str, Any] | None]] = {}
    foreground: dict[str, dict[str, Any]] = {}
    next_anno = 0
    files = 0
    names = [f"{i:05d}" for i in range(spec.num_frames)]
    for scene in scenes:
        frames, visible = render(scene, spec.num_frames)
        for name, frame in zip(names, frames):
            _write_atomic(out_dir / "JPEGImages" / scene.video_id / f"{name}.jpg", _jpeg_bytes(frame))
        files += len(names)
        anno_of: dict[int, str] = {}
        for obj in scene.objects:  # one anno_id per (video, object), from a counter over the whole dataset
            anno_of[obj.obj_id] = str(next_anno)
            mask_dict[str(next_anno)] = [encode_rle(m) if m.any() else None for m in visible[obj.obj_id]]
            next_anno += 1
        union = np.zeros_like(next(iter(visible.values())))
        for v in visible.values():
            union |= v
        foreground[scene.video_id] = {"masks_rle": [encode_rle(m) for m in union]}
        expressions = {
            exp.exp_id: {
                "exp": exp.text,
                "anno_id": [anno_of[t] for t in exp.targets],
                "obj_id": list(exp.targets),
                "type_id": _REVOS_TYPE_ID[exp.exp_type],
            }
            for exp in scene.expressions
        }
        part = "valid" if scene.split == "test" else "train"
        meta[part][scene.video_id] = {"frames": names, "expressions": expressions}
    for part, videos in meta.items():
        _write_atomic(out_dir / f"meta_expressions_{part}_.json", _dumps({"videos": videos}).encode())
    _write_atomic(out_dir / "mask_dict.json", _dumps(mask_dict).encode())
    _write_atomic(out_dir / "mask_dict_foreground.json", _dumps(foreground).encode())
    return files + 4
