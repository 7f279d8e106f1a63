"""Benchmark: where a GRPO step's time goes, and the loop's overhead against a bare forward + backward.

Run it from the repository root::

    .venv/bin/python bench/grpo_step.py                          # params.yaml's G and prompts per step
    .venv/bin/python bench/grpo_step.py --steps 5 --warm-steps 60 --set train.group_size=4
    .venv/bin/python bench/grpo_step.py --small                  # smoke run: 2 short steps, seconds

What is measured
----------------
- The model: System 1 as the train stage builds it (``omni_r1.rl.run.build_reasoner``: the tiny thinker
  of ``global_reasoning``, towers frozen) on the CPU with ``torch.set_num_threads(train.cpu_threads)``.
  ``--set KEY=VALUE`` overrides params.yaml as the stages do (``load_params``).
- The data: the demo's verified shards and cached features (``--shards``, ``--features``;
  ``load_prompt_items`` of ``train.split``) when their manifests exist; otherwise a few synthetic videos
  generated, ingested and sharded once under ``--cache-dir`` (features computed in memory, as the
  trainer's tests do). The output names which.
- System 2: the light detail backend of ``detail.light_checkpoint`` (``build_segmenter``) when that
  checkpoint exists; otherwise the same backend quick-trained for ``--detail-steps`` steps on the same
  shards and cached under ``--cache-dir`` (also when the checkpoint does not load, e.g. an older format).
  It runs the same networks and tracking code, so its cost per call differs only through how many boxes
  it finds and tracks; its masks are worse. The output says which one ran and why.
- The rewards: ``omni_r1.rl.rewards.score_rollouts`` with ``params.rewards`` (the trainer's default).
- A random thinker writes no parseable answer, so System 2 and the rewards would do no work. A short
  supervised warm start (``omni_r1.rl.warm_start``, ``--warm-steps`` steps, 0 to skip) runs first and is
  timed apart; the share of rollouts that parsed is printed, so a split with little System 2 work shows.
- The step: ``GRPOTrainer.train_step()`` as the train stage runs it (its ``seconds_*`` values);
  ``--warmup`` steps first (prompt encodings are cached on first use, allocators warm up), then
  ``--steps`` timed steps. Each phase's median is printed with the median of the whole step (the
  phase medians need not add up to it). System 2 keeps its per-run result cache, as in training.
- The baseline: a bare ``model(**group_inputs(...), labels=...)`` forward (towers included) + backward
  (causal LM loss over the completion tokens, no optimizer step) of the same G rows (prompt +
  completion, the policy's own samples) for each of ``prompts_per_step`` prompts, ``--bare-repeats``
  times; the median per group is the unit. Ratios printed last:
  ``ratio update/bare = U (...)``: the update phase per kept group (the shared-prompt log-probs of
  policy and reference, the clipped loss, backward and optimizer step) over one bare group;
  ``ratio step/bare = S (...)``: the whole step over the bare forward + backward of the step's rows.
- CPU seconds of the process per step and per bare batch, and the load average, are printed too: on a
  shared machine wall time swings while CPU time barely moves.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the tiny thinker and tokenizer are built offline
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from omni_r1.config import Params, load_params  # noqa: E402
from omni_r1.data.shards import load_manifest, read_samples  # noqa: E402
from omni_r1.rl.engine import build_engine  # noqa: E402
from omni_r1.rl.policy import group_inputs  # noqa: E402
from omni_r1.rl.prompts_data import PromptItem, item_in_memory, load_prompt_items  # noqa: E402
from omni_r1.rl.run import build_reasoner  # noqa: E402
from omni_r1.rl.trainer import PHASES, GRPOTrainer, check_train_params, generate  # noqa: E402
from omni_r1.rl.warm_start import warm_start  # noqa: E402
from omni_r1.systems.detail import Segmenter, build_segmenter  # noqa: E402
from omni_r1.systems.global_reasoning import GlobalReasoner  # noqa: E402
from omni_r1 import detail_training  # noqa: E402
from omni_r1.detail_training import train_light_models  # noqa: E402
from omni_r1.systems import light  # noqa: E402
from omni_r1.systems.light import CONFIG_NAME  # noqa: E402
from omni_r1.types import Sample  # noqa: E402

DEFAULT_CACHE = Path(tempfile.gettempdir()) / "omni-r1-bench"
# --small: short completions and small groups, so that a smoke run takes seconds. --set still wins.
# Nothing parses in 16 tokens, so every reward is 0; keeping equal-reward groups lets the update phase run.
SMALL_OVERRIDES = ("train.group_size=4", "train.prompts_per_step=2", "train.max_new_tokens=16",
                   "train.warm_start.batch=8", "train.drop_equal_groups=false")
SMALL_SYNTH = {"videos": 3, "width": 96, "height": 64, "fps": 10, "seconds": 2.0}  # as the tests' fixtures
SMALL_PLAN = {"fps": 2.0, "max_frames": 6, "low_res": 56, "high_res": 64}
FALLBACK_VIDEOS = 6  # synthetic videos when no demo shards exist (4 prompts each, about half in train)


@dataclass(frozen=True)
class BenchData:
    """The training prompts, the samples System 2 may be trained on, and a line saying where they came from."""

    items: list[PromptItem]
    samples: list[Sample]
    source: str
    fingerprint: str  # identifies the data for the quick-trained System 2's cache


@dataclass(frozen=True)
class StepTiming:
    """One timed ``train_step``: its logged values and the process CPU seconds it took."""

    values: dict[str, float]
    cpu: float


# ------------------------------------------------------------------------------------------------ data


def load_data(params: Params, reasoner: GlobalReasoner, shards: Path, features: Path, cache_dir: Path,
              small: bool) -> BenchData:
    """The demo's shards and features when both manifests exist, else synthetic videos (see the docstring)."""
    if (shards / "manifest.json").is_file() and (features / "manifest.json").is_file():
        items = load_prompt_items(shards, features, params.train.split, reasoner)
        samples = [s for split in ("train", "val") for s in read_samples(shards, split)]
        digest = _digest([e["sha256"] for e in load_manifest(shards)["shards"]])
        return BenchData(items, samples, f"demo shards {shards} + features {features}", digest)
    root = synthetic_shards(params, cache_dir, small)
    samples = [s for split in ("train", "val") for s in read_samples(root / "shards", split)]
    train = [sample for sample in samples if sample.split == params.train.split]
    items = [item_in_memory(sample, reasoner, seed=index) for index, sample in enumerate(train)]
    reason = f"no shard/feature manifests under {shards} and {features}"
    return BenchData(items, samples, f"synthetic videos in {root} ({reason}; run the pipeline for the demo data)",
                     root.name)


def synthetic_shards(params: Params, cache_dir: Path, small: bool) -> Path:
    """Generate, ingest and shard a few synthetic videos once; later runs reuse the folder."""
    from omni_r1.data.pipeline import sampling_plan, shard_in_process
    from omni_r1.data.shards import SamplingPlan
    from omni_r1.data.synthetic import SynthSpec, generate

    if small:
        spec, plan = SynthSpec(**SMALL_SYNTH), SamplingPlan(**SMALL_PLAN)
    else:
        s = params.synth
        spec = SynthSpec(videos=FALLBACK_VIDEOS, seed=s.seed, width=s.width, height=s.height, fps=s.fps,
                         seconds=s.seconds)
        plan = sampling_plan(params.data)
    root = cache_dir / f"grpo-synthetic-{_digest([dataclasses.asdict(spec), dataclasses.asdict(plan)])}"
    if (root / "shards" / "manifest.json").is_file():
        return root
    generate(root / "raw", "video", spec)
    quarantined = shard_in_process("video", root / "raw", root / "shards", plan)
    if quarantined:
        raise RuntimeError(f"synthetic videos were quarantined: {quarantined}")
    return root


def _digest(value: object) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:12]


# ------------------------------------------------------------------------------------------- System 2


def system2(params: Params, data: BenchData, cache_dir: Path, steps: int) -> tuple[Segmenter, str]:
    """The light backend of ``detail.light_checkpoint``, or one quick-trained on ``data`` and cached."""
    detail = params.detail
    if detail.backend != "light":
        return build_segmenter(detail), f"{detail.backend} backend (detail.backend)"
    checkpoint = Path(detail.light_checkpoint)
    if not (checkpoint / CONFIG_NAME).is_file():
        why = f"{checkpoint} holds no trained checkpoint"
    else:
        try:
            return build_segmenter(detail), f"light backend from {checkpoint} (the trained checkpoint)"
        except (ValueError, FileNotFoundError) as error:  # a stale or partial checkpoint: say so, measure anyway
            why = f"{checkpoint} does not load ({error})"
    batch = min(detail.light_batch, 4)
    # The code's own bytes are part of the key: a checkpoint of an older architecture would not load.
    sources = [*sorted(Path(light.__file__).parent.glob("*.py")), Path(detail_training.__file__)]
    code = _digest([hashlib.sha256(path.read_bytes()).hexdigest() for path in sources])
    key = _digest([data.fingerprint, detail.light_size, detail.seed, steps, batch, code, repr(detail.light)])
    quick = dataclasses.replace(detail, light_checkpoint=str(cache_dir / f"detail-{key}"), light_steps=steps,
                                light_batch=batch)
    note = "cached"
    if not (Path(quick.light_checkpoint) / CONFIG_NAME).is_file():
        start = time.perf_counter()
        train_light_models(data.samples, quick, Path(quick.light_checkpoint))
        note = f"trained now in {time.perf_counter() - start:.1f} s"
    return build_segmenter(quick), (
        f"light backend QUICK-TRAINED for {steps} steps of {batch} ({note}, {quick.light_checkpoint}): "
        f"{why}; run `dvc repro train_detail` for the real one. Same networks and tracking code, worse masks; "
        "its cost per call differs only through how many boxes it finds and tracks"
    )


# ------------------------------------------------------------------------------------------- the baseline


# Token ids that mark audio and video inside a prompt. A sampled completion may hold them (the tiny
# vocabulary is small); the shared-prompt path never looks, but a full row's forward counts them as
# media placeholders and fails, so the baseline swaps them for a plain token (same shape, same cost).
MEDIA_TOKEN_FIELDS = ("audio_token_index", "image_token_index", "video_token_index", "audio_start_token_id",
                      "audio_end_token_id", "vision_start_token_id", "vision_end_token_id")


def plain_completions(reasoner: GlobalReasoner, completion_ids: torch.Tensor) -> tuple[torch.Tensor, int]:
    """``completion_ids`` with media marker tokens replaced by a plain one; also how many were replaced."""
    config = reasoner.model.config
    media = [int(getattr(config, name)) for name in MEDIA_TOKEN_FIELDS if getattr(config, name, None) is not None]
    plain = int(reasoner.processor.tokenizer(".", add_special_tokens=False)["input_ids"][0])
    hits = torch.isin(completion_ids, torch.tensor(media, dtype=completion_ids.dtype))
    return completion_ids.masked_fill(hits, plain), int(hits.sum())


def bare_forward_backward(reasoner: GlobalReasoner, item: PromptItem, completion_ids: torch.Tensor) -> float:
    """Seconds of one plain forward (towers included) + backward of G full rows with a causal LM loss.

    ``completion_ids`` must hold no media marker tokens (``plain_completions``).
    """
    tokenizer = reasoner.processor.tokenizer
    eos_id, pad_id = int(tokenizer.eos_token_id), int(tokenizer.pad_token_id)
    model = reasoner.model
    batch = {k: v.to(reasoner.device) for k, v in
             group_inputs(item.inputs, completion_ids, eos_id=eos_id, pad_id=pad_id).items()}
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    labels[:, : item.inputs["input_ids"].shape[1]] = -100  # the loss covers the completion tokens only
    model.train()
    start = time.perf_counter()
    loss = model(**batch, labels=labels, use_cache=False).loss
    loss.backward()
    seconds = time.perf_counter() - start
    model.zero_grad(set_to_none=True)
    model.eval()
    return seconds


@dataclass(frozen=True)
class BareTiming:
    """The baseline: median wall and CPU seconds per group, median completion width, media tokens swapped."""

    seconds: float
    cpu: float
    width: int
    replaced: int


def time_bare(trainer: GRPOTrainer, items: Sequence[PromptItem], repeats: int) -> BareTiming:
    """The bare forward + backward of one group per prompt of ``items``, ``repeats`` rounds.

    The completions are the current policy's own samples of each prompt (the trainer's sampler), so
    the rows have the widths a training step sees.
    """
    train = trainer.train
    sampled = [generate(trainer.reasoner, trainer.prompts, item, num=train.group_size, do_sample=True,
                        seed=1000 + index, max_new_tokens=train.max_new_tokens)
               for index, item in enumerate(items)]
    plain = [plain_completions(trainer.reasoner, ids) for ids in sampled]
    completions = [ids for ids, _ in plain]
    walls: list[float] = []
    cpus: list[float] = []
    for _ in range(repeats):
        for item, ids in zip(items, completions):
            cpu = time.process_time()
            walls.append(bare_forward_backward(trainer.reasoner, item, ids))
            cpus.append(time.process_time() - cpu)
    width = int(statistics.median(ids.shape[1] for ids in completions))
    return BareTiming(statistics.median(walls), statistics.median(cpus), width, sum(n for _, n in plain))


# ------------------------------------------------------------------------------------------- the steps


def timed_step(trainer: GRPOTrainer) -> StepTiming:
    cpu = time.process_time()
    values = trainer.train_step()
    return StepTiming(values, time.process_time() - cpu)


def _phase_line(values: dict[str, float]) -> str:
    return ", ".join(f"{phase} {values[f'seconds_{phase}']:.2f}" for phase in PHASES) + \
        f"; step {values['seconds_step']:.2f} s"


def _median(timings: Sequence[StepTiming], key: str) -> float:
    return statistics.median(t.values[key] for t in timings)


def _load() -> str:
    if not hasattr(os, "getloadavg"):
        return "load average: unknown on this platform"
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f} on {os.cpu_count()} CPUs (a busy machine slows wall time)"


# ------------------------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a param, as the stages do (repeatable), e.g. --set train.group_size=4")
    parser.add_argument("--steps", type=int, default=None, help="timed GRPO steps (default 3; --small 2)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed GRPO steps before them")
    parser.add_argument("--warm-steps", type=int, default=None,
                        help="supervised warm-start steps before GRPO, timed apart (default 160, after which about "
                             "half the answers parse; --small 3; 0 skips)")
    parser.add_argument("--bare-repeats", type=int, default=2, help="rounds of the bare forward+backward baseline")
    parser.add_argument("--detail-steps", type=int, default=None,
                        help="steps of the quick-trained System 2 when detail.light_checkpoint is missing "
                             "(default 20; --small 2)")
    parser.add_argument("--shards", type=Path, default=Path("data/shards"))
    parser.add_argument("--features", type=Path, default=Path("data/features"))
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE,
                        help="synthetic videos and the quick-trained System 2 are kept here between runs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--small", action="store_true",
                        help="smoke run: 2 steps of G=4 x 2 prompts, 16 new tokens, tiny synthetic clips if needed")
    args = parser.parse_args(argv)
    defaults = {"steps": (2, 3), "warm_steps": (3, 160), "detail_steps": (2, 20)}
    for name, (small, full) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, small if args.small else full)
    if args.steps < 1 or args.warmup < 0 or args.warm_steps < 0 or args.bare_repeats < 1 or args.detail_steps < 1:
        parser.error("--steps, --bare-repeats and --detail-steps must be >= 1; --warmup and --warm-steps >= 0")
    return args


def main(argv: Sequence[str] | None = None, say: Callable[[str], None] = print) -> int:
    args = parse_args(argv)
    small = list(SMALL_OVERRIDES) if args.small else []
    params = load_params(args.params, [*small, *args.overrides])
    train = params.train
    torch.set_num_threads(train.cpu_threads)
    torch.manual_seed(args.seed)

    start = time.perf_counter()
    reasoner = build_reasoner(params, args.seed)
    data = load_data(params, reasoner, args.shards, args.features, args.cache_dir, args.small)
    check_train_params(train, data.items)
    say(f"data: {data.source}; {len(data.items)} {train.split} prompts of "
        f"{data.items[0].inputs['input_ids'].shape[1]} tokens ({time.perf_counter() - start:.1f} s with the model)")
    segmenter, description = system2(params, data, args.cache_dir, args.detail_steps)
    say(f"System 2: {description}")

    if args.warm_steps:
        warm = warm_start(reasoner, data.items, dataclasses.replace(train.warm_start, steps=args.warm_steps),
                          seed=args.seed)
        say(f"warm start: {warm.steps} steps of {train.warm_start.batch} rows in {warm.seconds:.1f} s "
            f"(loss {warm.final_loss:.3f}); not part of the step figures")
        warm.engine.close()  # its Adam moments are no part of a GRPO step's memory
    else:
        say("warm start: skipped (--warm-steps 0): a random policy parses nothing, so System 2 and rewards idle")

    engine = build_engine(reasoner.model, train, total_steps=args.warmup + args.steps, device=reasoner.device)
    with tempfile.TemporaryDirectory(prefix="omni-r1-bench-ckpt-") as checkpoints:  # train_step never saves
        trainer = GRPOTrainer(reasoner=reasoner, engine=engine, segmenter=segmenter, items=data.items,
                              params=params, checkpoint_dir=Path(checkpoints), seed=args.seed)
        for index in range(args.warmup):
            say(f"warm-up step {index + 1}: {_phase_line(timed_step(trainer).values)}")
        timings = []
        for index in range(args.steps):
            timings.append(timed_step(trainer))
            say(f"step {index + 1}: {_phase_line(timings[-1].values)}")
        baseline = time_bare(trainer, data.items[: train.prompts_per_step], args.bare_repeats)
    bare = baseline.seconds

    rollouts = args.steps * train.prompts_per_step * train.group_size
    parsed = 1 - statistics.mean(t.values["parse_failure_rate"] for t in timings)
    kept = [train.prompts_per_step - t.values["dropped_groups"] for t in timings]
    say(f"rollouts: {parsed:.0%} of {rollouts} parsed (System 2 and the rewards work on those), "
        f"mean reward {statistics.mean(t.values['reward'] for t in timings):.3f}, "
        f"mean length {statistics.mean(t.values['response_length'] for t in timings):.1f} tokens, "
        f"kept groups per step {kept}, System 2 failures {sum(t.values['system2_failures'] for t in timings):.0f}")
    step = _median(timings, "seconds_step")
    say(f"time split, median of {args.steps} steps after {args.warmup} warm-up "
        f"(G={train.group_size}, {train.prompts_per_step} prompts/step, max_new_tokens {train.max_new_tokens}):")
    for phase in PHASES:
        seconds = _median(timings, f"seconds_{phase}")
        say(f"  {phase:<10} {seconds:8.3f} s  {seconds / step:6.1%}")
    say(f"  {'step':<10} {step:8.3f} s  (CPU {statistics.median(t.cpu for t in timings):.2f} s)")
    say(f"bare forward+backward: {bare:.3f} s per group of {train.group_size} rows (CPU {baseline.cpu:.3f} s), "
        f"median of {args.bare_repeats} x {train.prompts_per_step} groups, completions {baseline.width} tokens wide"
        + (f", {baseline.replaced} sampled media marker tokens made plain" if baseline.replaced else ""))
    say(_load())
    informative = [t.values["seconds_update"] / n for t, n in zip(timings, kept) if n > 0]
    if informative:
        update = statistics.median(informative)
        say(f"ratio update/bare = {update / bare:.2f} (shared-prompt path: update {update:.3f} s per kept group, "
            f"bare {bare:.3f} s per group of {train.group_size} rows)")
    else:
        say("ratio update/bare = n/a (every group of every timed step had equal rewards and was dropped: no update "
            "ran; raise --warm-steps or --steps)")
    step_bare = bare * train.prompts_per_step
    cpu_ratio = statistics.median(t.cpu for t in timings) / (baseline.cpu * train.prompts_per_step)
    say(f"ratio step/bare = {step / step_bare:.2f} (step {step:.3f} s, bare {step_bare:.3f} s for the same "
        f"{train.prompts_per_step} x {train.group_size} rows; by CPU time {cpu_ratio:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
