"""The one typed config: ``params.yaml`` loaded into a frozen, validated dataclass tree.

Every knob of the pipeline lives in ``params.yaml``; this module is its schema. Unknown keys,
missing keys and wrong types are errors whose message names the dotted key and the fix.
``load_params(path, overrides)`` applies ``"a.b=value"`` overrides (values parsed as YAML).
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

import yaml


class ConfigError(ValueError):
    """params.yaml does not match the schema; the message names the key and the fix."""


def _require(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"params.yaml: '{key}' {message}; fix the value in params.yaml")


@dataclass(frozen=True)
class SynthParams:
    """The synthetic omni dataset of the demo and tests (``omni-r1 synth`` and the ``synth`` stage)."""

    format: Literal["video", "refavs", "revos"] = "video"
    out: str = "data/raw/synthetic"
    videos: int = 20
    seed: int = 0
    width: int = 256
    height: int = 192
    fps: int = 10
    seconds: float = 6.0

    def __post_init__(self) -> None:
        _require(self.videos >= 1, "synth.videos", "must be at least 1")
        _require(self.width >= 32 and self.height >= 32, "synth.width/height", "must be at least 32 pixels")
        _require(self.fps >= 1, "synth.fps", "must be at least 1")
        _require(self.seconds > 0, "synth.seconds", "must be positive")


@dataclass(frozen=True)
class DataParams:
    """Which dataset to read and how to sample it for the two systems."""

    format: Literal["video", "refavs", "revos"] = "video"
    root: str = "data/raw/synthetic"
    fps: float = 2.0
    max_frames: int = 24
    # Frame sizes keep the native aspect and never upscale. Each is capped by its longest side and by its pixel
    # count; the paper's sizes are pixel budgets on the native frame (System 1: 128x28x28, System 2: 900x28x28).
    low_res: int = 4096
    high_res: int = 4096
    low_res_pixels: int = 100352
    high_res_pixels: int = 705600

    def __post_init__(self) -> None:
        _require(self.fps > 0, "data.fps", "must be positive (frames per second sampled for System 1)")
        _require(self.max_frames >= 1, "data.max_frames", "must be at least 1")
        _require(self.low_res >= 28, "data.low_res", "must be at least 28 (longest side in pixels)")
        _require(self.high_res >= self.low_res, "data.high_res", "must be >= data.low_res")
        _require(self.low_res_pixels >= 28 * 28, "data.low_res_pixels", "must be at least 784 (28 x 28)")
        _require(self.high_res_pixels >= self.low_res_pixels, "data.high_res_pixels", "must be >= data.low_res_pixels")


@dataclass(frozen=True)
class IngestParams:
    """Facts about frame-folder layouts that the files do not state."""

    refavs_fps: float = 1.0
    revos_fps: float = 6.0

    def __post_init__(self) -> None:
        _require(self.refavs_fps > 0 and self.revos_fps > 0, "ingest.*_fps", "must be positive")


@dataclass(frozen=True)
class ValidateParams:
    """The validation gate's policy."""

    max_bad_fraction: float = 0.1
    # auto: audio is required where the expression needs it (RefAVS, sound cues); always / never override.
    require_audio: Literal["auto", "always", "never"] = "auto"

    def __post_init__(self) -> None:
        _require(0.0 <= self.max_bad_fraction <= 1.0, "validate.max_bad_fraction", "must be within [0, 1]")


@dataclass(frozen=True)
class FanoutParams:
    """How a stage fans per-item work out: threads by default, processes, or a Dask or Ray cluster (omni_r1.fanout)."""

    task_runner: Literal["thread", "process", "dask", "ray"] = "thread"
    workers: int = 2
    # dask: a scheduler address ("tcp://host:8786"); ray: a cluster address ("ray://host:10001").
    # Empty starts a local cluster of ``workers`` workers.
    address: str = ""

    def __post_init__(self) -> None:
        _require(self.workers >= 1, "*.workers", "must be at least 1")
        _require(not self.address or self.task_runner in ("dask", "ray"), "*.fanout.address",
                 "is only read by the dask and ray runners; clear it or set task_runner to dask or ray")


@dataclass(frozen=True)
class ShardParams:
    """WebDataset shard writing."""

    videos_per_shard: int = 64
    fanout: FanoutParams = FanoutParams()

    def __post_init__(self) -> None:
        _require(self.videos_per_shard >= 1, "shard.videos_per_shard", "must be at least 1")


@dataclass(frozen=True)
class FeaturesParams:
    """Cached model inputs: Whisper log-mel audio and Qwen2.5-Omni processor-ready video."""

    mel_bins: int = 128
    tokenizer: str = "builtin:tiny"
    min_pixels: int = 16 * 28 * 28
    max_pixels: int = 128 * 28 * 28
    fanout: FanoutParams = FanoutParams()

    def __post_init__(self) -> None:
        _require(self.mel_bins in (80, 128), "features.mel_bins", "must be 80 or 128 (Qwen2.5-Omni uses 128)")
        _require(0 < self.min_pixels <= self.max_pixels, "features.min_pixels/max_pixels", "need 0 < min <= max")


@dataclass(frozen=True)
class GlobalReasoningParams:
    """System 1: the Qwen2.5-Omni thinker that picks keyframes and rewrites the task."""

    # The policy predict runs: the train stage's export (demo), builtin:tiny (random weights from config, tests)
    # or a local Qwen2.5-Omni / Omni-R1 thinker checkpoint folder.
    checkpoint: str = "data/models/policy/final"
    freeze_vision: bool = True
    freeze_audio: bool = True
    max_new_tokens: int = 96
    temperature: float = 0.7  # Omni-R1: 1.0; the demo's tiny policy samples at 0.7 (params.yaml says why)
    top_p: float = 0.95
    max_keyframes: int = 4  # at most this many distinct frames are grounded (Omni-R1: 4)
    device: str = "cpu"
    dtype: Literal["float32", "bfloat16"] = "float32"
    seed: int = 0
    # Rollouts: plain (one prompt at a time, transformers' growing cache) or static (the P prompts of a step and
    # their G completions as one batch on a preallocated KV cache, omni_r1.rl.static_sampler; greedy ids equal).
    sampler: Literal["plain", "static"] = "plain"
    # static sampler's decode step: auto (CUDA graph on CUDA, eager on CPU and under ZeRO-3), off, cuda_graph, compile
    decode_graph: Literal["auto", "off", "cuda_graph", "compile"] = "auto"

    def __post_init__(self) -> None:
        _require(self.max_new_tokens >= 1, "global_reasoning.max_new_tokens", "must be at least 1")
        _require(self.temperature > 0 and 0 < self.top_p <= 1, "global_reasoning.temperature/top_p",
                 "need temperature > 0 and 0 < top_p <= 1")
        _require(self.max_keyframes >= 1, "global_reasoning.max_keyframes", "must be at least 1")


@dataclass(frozen=True)
class LightParams:
    """The light System 2's tuned constants (``detail.backend: light``; omni_r1.systems.light, omni_r1.detail_training).

    The architecture and inference values are written into the checkpoint by ``train_detail`` and read
    back from there at inference, so a checkpoint always runs as it was measured.
    """

    # architecture
    widths: tuple[int, ...] = (16, 32, 64)  # U-Net channels per level (three levels)
    text_dim: int = 32  # the grounder's bag-of-words embedding
    crop_size: int = 64  # the segmenter's input side: a crop around the box, whatever the frame size
    # inference
    key_margin: float = 0.5  # a keyframe box is cropped with this fraction of its side around it
    track_margin: float = 1.0  # a tracked box is searched this far around (objects move ~1 side per frame)
    max_search_growth: float = 2.0  # a lost object is searched up to this many times track_margin around
    min_side: float = 8.0  # frame pixels: margins are taken of at least this side
    box_threshold: float = 0.5  # heatmap probability a blob must reach to count as a found object
    min_blob_pixels: int = 6  # at light_size; smaller confident blobs are noise
    # training
    grounder_negatives: float = 0.25  # share of grounder items describing something absent (measured best)
    absent_frame_share: float = 0.5  # of those, frames where the described object is not shown
    shape_swap_share: float = 0.3  # of the made-up negatives, those that keep the colour and change the shape
    recolour_share: float = 0.6  # grounder positives whose target is painted another palette colour
    grounder_pos_weight: float = 5.0  # BCE weight of object pixels (few in a whole frame)
    segmenter_step_factor: int = 2  # the crop U-Net's steps per grounder step (its steps cost a fifth)
    track_fraction: float = 0.5  # segmenter items that look like tracking (reference colour, wide crop)
    lost_search_share: float = 0.15  # tracking items searched max_search_growth times wider
    segmenter_recolour_share: float = 0.5  # segmenter items whose target (and reference) get a random colour
    key_box_jitter: float = 0.08  # normal error of a keyframe box's sides, as a fraction of its side
    track_box_jitter: float = 0.03  # the same for a tracked box
    weight_decay: float = 0.0001
    warmup_fraction: float = 0.1  # one-cycle schedule: share of steps rising to light_lr

    def __post_init__(self) -> None:
        _require(len(self.widths) == 3 and all(w >= 4 and w % 4 == 0 for w in self.widths), "detail.light.widths",
                 "must be three multiples of 4 (GroupNorm of 4 groups), e.g. [16, 32, 64]")
        _require(self.crop_size >= 16 and self.crop_size % 4 == 0, "detail.light.crop_size",
                 "must be a multiple of 4, at least 16")
        for key in ("grounder_negatives", "absent_frame_share", "shape_swap_share", "recolour_share",
                    "track_fraction", "lost_search_share", "segmenter_recolour_share", "box_threshold",
                    "warmup_fraction"):
            _require(0.0 <= getattr(self, key) <= 1.0, f"detail.light.{key}", "must be within [0, 1]")
        _require(self.segmenter_step_factor >= 1, "detail.light.segmenter_step_factor", "must be at least 1")


@dataclass(frozen=True)
class DetailParams:
    """System 2: grounding boxes on keyframes, then masks propagated through the video."""

    backend: Literal["light", "sam2"] = "light"
    device: str = "cpu"
    max_objects: int = 3
    # sam2 backend: a local grounding VLM (answers bbox_2d JSON) and a local SAM2 checkpoint.
    grounder_checkpoint: str = ""
    sam2_config: str = "configs/sam2.1/sam2.1_hiera_t.yaml"
    sam2_checkpoint: str = ""  # sam2 backend: a SAM2.1 .pt, or "random" (tests only); empty is an error
    sam2_image_size: int = 1024
    # sam2: the official code runs one forward pass from the first prompted frame; true adds a reverse pass
    # from the latest keyframe so frames before an object's keyframe get masks too (our extension).
    reverse_pass: bool = False
    # light backend (CPU demo): a small grounder and a box-prompted U-Net trained on the synthetic data.
    light_checkpoint: str = "data/models/detail"
    light_size: int = 96
    light_steps: int = 300
    light_batch: int = 16
    light_lr: float = 0.003
    light_holdout_videos: int = 2  # train videos kept out of the light models' training to measure them on
    light: LightParams = LightParams()  # the light models' tuned constants
    seed: int = 0

    def __post_init__(self) -> None:
        _require(1 <= self.max_objects <= 3, "detail.max_objects", "must be within [1, 3] (Omni-R1 grounds up to 3)")
        _require(self.light_size >= 32 and self.light_size % 16 == 0, "detail.light_size",
                 "must be a multiple of 16, at least 32")


@dataclass(frozen=True)
class PaperParams:
    """The paper table this run is set beside (stage ``paper``: ``reports/paper_<table>.md``).

    ``omni-r1 reproduce`` sets all three with ``dvc exp run -S``; under a plain ``dvc repro`` the report
    says the data is the workspace's, not a pinned version.
    """

    table: Literal["refavs", "revos"] = "revos"
    data_version: str = ""  # the pinned data version evaluated; "" = the workspace's data, not pinned
    experiment: str = ""  # the DVC experiment the run is kept as; "" = a plain `dvc repro`


@dataclass(frozen=True)
class PredictParams:
    """Two-system inference over the test shards, written in the official prediction layouts."""

    split: Literal["train", "val", "test"] = "test"
    # The paper's ablation plus a floor (omni_r1.eval.predict): predict_nothing (empty masks);
    # uniform_keyframes (System 2 alone on evenly spread keyframes, original expression);
    # keyframes_original_query (System 1's keyframes, original expression); global_reasoning (the full pipeline).
    policies: tuple[Literal["predict_nothing", "uniform_keyframes", "keyframes_original_query", "global_reasoning"],
                    ...] = ("predict_nothing", "uniform_keyframes", "keyframes_original_query", "global_reasoning")
    fanout: FanoutParams = FanoutParams()
    bootstrap_resamples: int = 1000  # evaluate: bootstrap resamples of the samples for each 95% interval
    bootstrap_seed: int = 0

    def __post_init__(self) -> None:
        _require(len(self.policies) >= 1, "predict.policies", "must name at least one policy")
        _require(self.bootstrap_resamples >= 100, "predict.bootstrap_resamples", "must be at least 100")


@dataclass(frozen=True)
class RewardParams:
    """Omni-R1's hierarchical rewards (spec section 2): R = format + R_acc (+ length bonus).

    R_acc = cumulated + alpha_k (R_num + overlap) + alpha_k_ratio R_saliency + alpha_a R_A
    + object-count penalty + alpha_g R_G. Defaults are the latest official script's weights.
    """

    format_weight: float = 1.0
    alpha_k: float = 1.0  # keyframe / temporal terms
    alpha_k_ratio: float = 0.0  # saliency of the chosen keyframes
    alpha_a: float = 1.0  # grounding: System 2's boxes against the true boxes
    alpha_g: float = 2.0  # segmentation: J of the propagated masks
    target_keyframes: int = 4  # K0 of R_num
    cumulated_fallback: bool = False  # official option: R_acc = cumulated when all other terms sum to <= 0
    length_bonus: float = 1.0  # len_control: added when the completion length is in [length_min, length_max]
    length_min: int = 320
    length_max: int = 750
    length_threshold: float = 0.1  # ... and more than one rollout of the batch has R_acc above this
    length_control: bool = True
    refavs_empty_reward: float = 0.0  # RefAVS: an answer with no box scores this (spec: 0), counted
    # The official IoU scores 0 whenever the true box starts at x = 0 (its `gt_box[0] > 0` check), so a
    # perfect box on an object touching the left edge earns nothing. false (ours) scores it; true is official.
    zero_iou_at_left_edge: bool = False

    def __post_init__(self) -> None:
        _require(self.target_keyframes >= 1, "rewards.target_keyframes", "must be at least 1")
        _require(0 <= self.length_min <= self.length_max, "rewards.length_min/length_max", "need 0 <= min <= max")


@dataclass(frozen=True)
class DeepSpeedParams:
    """The policy update under DeepSpeed (GPUs); on CPU the same loop runs without the engine."""

    enabled: bool = False
    config: str = "configs/deepspeed/zero2.json"
    gradient_checkpointing: bool = False


@dataclass(frozen=True)
class WarmStartParams:
    """A short supervised warm start that teaches only the answer format (random moments, copied query)."""

    steps: int = 200
    batch: int = 16
    lr: float = 0.003


@dataclass(frozen=True)
class AlarmParams:
    """Collapse and reward-hacking alarms (omni_r1.rl.alarms): the run warns when the mean over the last ``window``
    steps crosses a threshold; the values are logged per step in train.tsv either way."""

    window: int = 10
    min_distinct_answers: float = 0.25  # distinct completions per group / G
    min_distinct_keyframe_sets: float = 0.1  # distinct keyframe sets over the step's rollouts / rollouts
    max_system2_empty: float = 0.5  # share of grounded rollouts where System 2 found nothing
    max_equal_groups: float = 0.5  # share of groups whose rewards are all equal (no learning signal)

    def __post_init__(self) -> None:
        _require(self.window >= 1, "train.alarms.window", "must be at least 1")


@dataclass(frozen=True)
class TrainParams:
    """GRPO training of the Global Reasoning System (spec section 3 gives the paper's values)."""

    # The starting policy: builtin:tiny (random tiny thinker, demo/tests) or a local Qwen2.5-Omni thinker folder.
    # global_reasoning.checkpoint names the policy the predict stage runs (the demo: this stage's export).
    init_checkpoint: str = "builtin:tiny"
    steps: int = 150
    prompts_per_step: int = 2
    group_size: int = 8  # G
    lr: float = 0.001  # paper: 1e-6 on the 7B model
    weight_decay: float = 0.01
    lr_schedule: Literal["cosine", "constant"] = "cosine"
    warmup_steps: int = 0
    max_grad_norm: float = 5.0
    beta: float = 0.04  # KL coefficient; 0 drops the reference model
    clip_low: float = 0.2
    clip_high: float = 0.28
    updates_per_batch: int = 1  # paper: 1 (the ratio is 1 in value and no clipping happens)
    loss_norm: Literal["token", "sequence"] = "sequence"  # paper: mean over completion tokens, then over the batch
    scale_std: bool = True  # divide advantages by the group's std (+1e-4)
    # official: every group stays in the loss (all-equal groups have advantage 0 but keep their KL pull);
    # true drops them and rescales the rest (ours, off by default).
    drop_equal_groups: bool = False
    # official: null expressions (no target object) are never drawn for training; true trains on them too.
    include_null: bool = False
    # One draw per prompt, as the official loaders (omni_r1.rl.draws): one random expression of a video, at most
    # max_objects of its objects, randint(min_frames, max_frames) of its stored frames when it has more than
    # min_frames (the demo's clips store 12, so they keep all), and RefAVS on frame 0 plus the audio.
    system2_cache_entries: int = 256  # System 2 results kept per run (LRU); each holds a clip's masks
    one_expression_per_video: bool = True
    min_frames: int = 16
    max_frames: int = 24
    max_objects: int = 3
    refavs_first_frame: bool = True
    max_new_tokens: int = 56
    split: Literal["train", "val", "test"] = "train"
    eval_split: Literal["train", "val", "test"] = "val"  # held-out prompts for the before/after report
    seeds: tuple[int, ...] = (0, 1)  # one run per seed (warm start + GRPO); the first seed's policy is exported
    save_every: int = 50
    keep_last: int = 2
    resume: bool = False
    cpu_threads: int = 1  # torch threads on CPU: the tiny thinker runs fastest single-threaded (measured 8x)
    seed_workers: int = 2  # seeds trained side by side in worker processes (CPU demo: one per core)
    out: str = "data/models/policy"
    warm_start: WarmStartParams = WarmStartParams()
    alarms: AlarmParams = AlarmParams()
    deepspeed: DeepSpeedParams = DeepSpeedParams()

    def __post_init__(self) -> None:
        _require(self.steps >= 0, "train.steps", "must be >= 0")
        _require(self.prompts_per_step >= 1, "train.prompts_per_step", "must be at least 1")
        _require(self.group_size >= 2, "train.group_size", "must be at least 2 (advantages are relative to the group)")
        _require(self.beta >= 0, "train.beta", "must be >= 0 (0 drops the reference model)")
        _require(0 <= self.clip_low < 1 and self.clip_high >= 0, "train.clip_low/clip_high",
                 "need 0 <= clip_low < 1 and clip_high >= 0")
        _require(self.updates_per_batch >= 1, "train.updates_per_batch", "must be at least 1")
        _require(self.save_every >= 1 and self.keep_last >= 1, "train.save_every/keep_last", "must be at least 1")
        _require(len(self.seeds) >= 1, "train.seeds", "must name at least one seed")
        _require(self.system2_cache_entries >= 1, "train.system2_cache_entries", "must be at least 1")
        _require(1 <= self.min_frames <= self.max_frames, "train.min_frames/max_frames", "need 1 <= min <= max")
        _require(1 <= self.max_objects <= 3, "train.max_objects", "must be within [1, 3] (Omni-R1 grounds up to 3)")
        _require(self.cpu_threads >= 1 and self.seed_workers >= 1, "train.cpu_threads/seed_workers",
                 "must be at least 1")


@dataclass(frozen=True)
class Params:
    """The whole of params.yaml."""

    synth: SynthParams = SynthParams()
    data: DataParams = DataParams()
    ingest: IngestParams = IngestParams()
    validate: ValidateParams = ValidateParams()
    shard: ShardParams = ShardParams()
    features: FeaturesParams = FeaturesParams()
    global_reasoning: GlobalReasoningParams = GlobalReasoningParams()
    detail: DetailParams = DetailParams()
    predict: PredictParams = PredictParams()
    paper: PaperParams = PaperParams()
    rewards: RewardParams = RewardParams()
    train: TrainParams = TrainParams()


def load_params(path: str | Path = "params.yaml", overrides: Sequence[str] = ()) -> Params:
    """Read ``path`` with ``yaml.safe_load``, apply ``key.path=value`` overrides and validate."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text()) if path.exists() else {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({err}); fix the syntax") from err
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections, got {type(raw).__name__}")
    for item in overrides:
        _apply_override(raw, item)
    return params_from_dict(raw)


def params_from_dict(raw: Mapping[str, Any]) -> Params:
    """Build the typed tree from a plain mapping; every problem names its dotted key."""
    return _build(Params, raw, "")


def params_to_dict(params: Params) -> dict[str, Any]:
    """The plain-dict form of a Params tree (what params.yaml would hold)."""
    return dataclasses.asdict(params)


def _apply_override(raw: dict[str, Any], item: str) -> None:
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like 'section.key=value'")
    dotted, text = item.split("=", 1)
    keys = dotted.strip().split(".")
    node = raw
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {item!r}: '{key}' is not a section")
    node[keys[-1]] = yaml.safe_load(text)


def _build(cls: type, raw: Any, prefix: str) -> Any:
    where = prefix.rstrip(".") or "top level"
    if not isinstance(raw, Mapping):
        raise ConfigError(f"params.yaml: '{where}' must be a mapping, got {type(raw).__name__} {raw!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            suggestion = f" (did you mean '{prefix}{close[0]}'?)" if close else ""
            raise ConfigError(
                f"params.yaml: unknown key '{prefix}{key}'{suggestion}; remove it or fix its spelling. "
                f"Known keys under '{where}': {', '.join(sorted(fields))}"
            )
    values = {name: _coerce(hints[name], raw[name], f"{prefix}{name}") for name in fields if name in raw}
    return cls(**values)


def _coerce(hint: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, f"{key}.")
    if origin is Literal:
        choices = typing.get_args(hint)
        if value not in choices:
            raise ConfigError(f"params.yaml: '{key}' is {value!r}; use one of {', '.join(map(repr, choices))}")
        return value
    if origin in (tuple, list):
        item_type = typing.get_args(hint)[0]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"params.yaml: '{key}' must be a list, got {value!r}")
        return tuple(_coerce(item_type, v, f"{key}[{i}]") for i, v in enumerate(value))
    if origin in (typing.Union, types.UnionType):
        raise ConfigError(f"internal: union type for '{key}' is not supported by the schema")
    return _scalar(hint, value, key)


def _scalar(hint: Any, value: Any, key: str) -> Any:
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif hint is str:
        if isinstance(value, str):
            return value
    else:
        raise ConfigError(f"internal: unsupported type {hint!r} for '{key}'")
    raise ConfigError(
        f"params.yaml: '{key}' must be {hint.__name__}, got {type(value).__name__} {value!r}; "
        f"write it as a {hint.__name__} in params.yaml"
    )
