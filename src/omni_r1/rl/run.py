"""One training run of System 1 per seed: warm start, held-out baseline, GRPO, held-out result, export.

``train_seed`` is the recipe for one seed; ``run_training`` runs every seed of ``train.seeds``,
writes the step log (one TSV row per step and seed) and returns the before/after summary that the
train stage writes as DVC metrics. The first seed's policy is exported as a plain transformers
checkpoint (``save_pretrained`` of the thinker and its processor), which ``global_reasoning.checkpoint``
can name.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import multiprocessing
import os
import shutil
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from omni_r1.config import Params, params_from_dict, params_to_dict
from omni_r1.fileio import atomic_write_text
from omni_r1.models.processor import build_processor
from omni_r1.rl.engine import PolicyEngine, build_engine, load_deepspeed_config, local_device, offloads_optimizer
from omni_r1.rl.memory import GB, estimate_memory, fits, recipe_of
from omni_r1.rl.alarms import CollapseAlarm, heldout_alarms
from omni_r1.rl.heldout import evaluate_policy
from omni_r1.rl.prompts_data import PromptItem, load_prompt_items, training_items
from omni_r1.rl.checkpoint import publish_weights, read_weights
from omni_r1.rl.ranks import agree
from omni_r1.rl.trainer import GRPOTrainer, check_train_params, distributed_rank, log_columns
from omni_r1.rl.warm_start import WarmStartResult, warm_start
from omni_r1.systems.collaboration import SegmentCache
from omni_r1.systems.detail import Segmenter, build_segmenter
from omni_r1.systems.global_reasoning import GlobalReasoner, freeze_towers, load_thinker

Say = Callable[[str], None]


@dataclass(frozen=True)
class RunPaths:
    shards: Path
    features: Path
    out: Path  # checkpoints/seed-N/, final/ (the exported policy)
    log: Path  # the step TSV (a DVC plot)


def build_reasoner(params: Params, seed: int) -> GlobalReasoner:
    """System 1 for one seed: the thinker ``train.init_checkpoint`` names (tiny: initialised from the seed),
    with the ``global_reasoning`` settings, towers frozen."""
    f = params.features
    processor = build_processor(f.tokenizer, min_pixels=f.min_pixels, max_pixels=f.max_pixels, mel_bins=f.mel_bins)
    gr = dataclasses.replace(params.global_reasoning, checkpoint=params.train.init_checkpoint,
                             seed=params.global_reasoning.seed + seed)
    model = load_thinker(gr, processor, key="train.init_checkpoint")
    freeze_towers(model, vision=gr.freeze_vision, audio=gr.freeze_audio)
    return GlobalReasoner(model=model, processor=processor, params=gr)


def train_seed(params: Params, seed: int, paths: RunPaths, segmenter: Segmenter, *,
               on_step: Callable[[int, dict[str, float]], None], say: Say) -> dict[str, Any]:
    """Warm start, evaluate, GRPO, evaluate, for one seed. Returns the held-out numbers and timings."""
    train = params.train
    torch.manual_seed(seed)
    reasoner = build_reasoner(params, seed)
    items = training_items(load_prompt_items(paths.shards, paths.features, train.split, reasoner),
                           include_null=train.include_null)
    heldout = load_prompt_items(paths.shards, paths.features, train.eval_split, reasoner, seed=10_000)
    check_train_params(train, items)
    cache = SegmentCache(train.system2_cache_entries)
    checkpoint_dir = paths.out / "checkpoints" / f"seed-{seed}"
    timings: dict[str, float] = {}

    resuming = train.resume and any(checkpoint_dir.glob("step-*"))
    start = time.perf_counter()
    if train.warm_start.steps > 0:
        warm_dir = checkpoint_dir / WARM_START_DIR
        if resuming:  # the warm-started policy is GRPO's KL reference: the same one as before the stop
            load_warm_start(reasoner, warm_dir)
        else:
            result = warm_start(reasoner, items, train.warm_start, seed=seed, deepspeed=train.deepspeed,
                                progress=lambda s, n, loss: say(f"seed {seed} warm start {s}/{n} loss {loss:.3f}")
                                if s % 20 == 0 or s == n else None)
            say(f"seed {seed}: warm start done, loss {result.final_loss:.3f} in {result.seconds:.0f} s")
            weights = keep_warm_start(reasoner, result, warm_dir, seed=seed)
            del result  # the closed engine: nothing of it may outlive the warm start (its optimizer, its model)
            if train.deepspeed.enabled:
                # The warm start's engine hooked (under ZeRO-3: partitioned) that model; GRPO's engine and its KL
                # reference start from a whole one. The old one goes first, so the GPU never holds both.
                del reasoner
                release_memory()
                reasoner = warm_started_reasoner(params, seed, weights)
            del weights
    timings["warm_start_seconds"] = time.perf_counter() - start

    warn_if_too_big(params, reasoner, segmenter, say)
    engine = build_engine(reasoner.model, train, total_steps=max(train.steps, 1), device=reasoner.device)
    trainer = GRPOTrainer(reasoner=reasoner, engine=engine, segmenter=segmenter, items=items, params=params,
                          checkpoint_dir=checkpoint_dir, seed=seed)
    before = _before(trainer, reasoner, segmenter, heldout, params, cache, resuming)
    start = time.perf_counter()
    alarm = CollapseAlarm(train.alarms)

    def log_step(step: int, values: dict[str, float]) -> None:
        on_step(step, values)
        for warning in alarm.update(step, values):
            say(f"seed {seed}: WARNING {warning}")

    trainer.fit(train.steps, log=log_step)
    timings["grpo_seconds"] = time.perf_counter() - start
    after = evaluate_policy(reasoner, segmenter, heldout, params.rewards, max_new_tokens=train.max_new_tokens,
                            cache=cache)
    alarms = [*alarm.active, *heldout_alarms(after["diversity"], train.alarms)]
    for name in alarms:
        say(f"seed {seed}: WARNING alarm '{name}' is raised at the end of the run (see train.tsv and the report)")
    return {"seed": seed, "before": before, "after": after, "reasoner": reasoner, "engine": engine, **timings, "alarms": alarms,
            "train_prompts": len(items), "heldout_prompts": len(heldout)}


WARM_START_DIR = "warm-start"  # beside the step folders: the warm-started policy's trainable weights


def keep_warm_start(reasoner: GlobalReasoner, result: WarmStartResult, folder: Path, *,
                    seed: int) -> dict[str, torch.Tensor]:
    """After the warm start: its trainable weights (gathered: a collective under ZeRO-3) published in ``folder``
    by rank 0 for a resumed run, its engine closed; returns the weights on every rank (CPU tensors; from the
    plain engine on CPU, the model's own tensors, which GRPO then goes on changing)."""
    trainable = {name for name, p in reasoner.model.named_parameters() if p.requires_grad}
    weights = {name: t for name, t in result.engine.full_state_dict().items() if name in trainable}
    failure: Exception | None = None
    if distributed_rank()[0] == 0:
        try:
            publish_weights(folder, weights, info={"steps": result.steps, "final_loss": result.final_loss,
                                                   "seed": seed})
        except Exception as error:  # raised on every rank by agree: the others must not wait for rank 0
            failure = error
    agree(failure, f"writing the warm start to {folder}")
    result.engine.close()
    return weights


def warm_started_reasoner(params: Params, seed: int, weights: dict[str, torch.Tensor]) -> GlobalReasoner:
    """System 1 built afresh (``build_reasoner``) with the warm start's ``weights`` loaded."""
    reasoner = build_reasoner(params, seed)
    reasoner.model.load_state_dict(weights, strict=False)
    return reasoner


def release_memory() -> None:
    """Collect what was just let go (model graphs hold reference cycles) and return CUDA's cached blocks."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def load_warm_start(reasoner: GlobalReasoner, folder: Path) -> None:
    """The warm-started weights ``keep_warm_start`` published, into ``reasoner.model`` (a resumed run: GRPO's
    KL reference is copied from it, and the checkpoint then sets the policy's weights)."""
    if not folder.is_dir():
        raise FileNotFoundError(
            f"the run in {folder.parent} is resumed but its warm start ({folder}) is missing (written by an older "
            "version, or deleted); GRPO's KL reference is the warm-started policy, so delete the checkpoints and "
            "train again, or set train.resume=false"
        )
    weights, _ = read_weights(folder, reasoner.model)
    reasoner.model.load_state_dict(weights, strict=False)


def _before(trainer: GRPOTrainer, reasoner: GlobalReasoner, segmenter: Segmenter, heldout: list[PromptItem],
            params: Params, cache: SegmentCache, resuming: bool) -> dict[str, Any]:
    """The starting policy's held-out numbers, kept in the checkpoints so a resumed run still reports them."""
    if resuming:
        trainer.resume()
        saved = trainer.resume_extra.get("before")
        if saved is None:
            raise ValueError(f"the checkpoint in {trainer.checkpoint_dir} lacks the starting policy's numbers; "
                             "delete it and train again")
        return saved
    before = evaluate_policy(reasoner, segmenter, heldout, params.rewards, max_new_tokens=params.train.max_new_tokens,
                             cache=cache)
    trainer.extra["before"] = before
    return before


StepHook = Callable[[int, int, dict[str, float]], None]  # (seed, step, logged values)


class StepLog:
    """The step TSV of one or more seeds (columns: seed, step, then the trainer's values), rewritten atomically."""

    def __init__(self, path: Path) -> None:
        self.path, self.header, self.rows = path, [], []

    def add(self, seed: int, step: int, values: dict[str, float]) -> None:
        if not self.header:
            self.header = ["seed", "step", *values]
        self.rows.append("\t".join([str(seed), str(step), *(f"{values[c]:.6g}" for c in self.header[2:])]))
        atomic_write_text(self.path, "\n".join(["\t".join(self.header), *self.rows]) + "\n")


def run_training(params: Params, paths: RunPaths, *, say: Say = print, on_step: StepHook | None = None) -> dict[str, Any]:
    """Every seed of ``train.seeds``; the step log goes to ``paths.log``, the first seed's policy to out/final.

    With ``train.seed_workers`` > 1 the seeds train side by side in spawned processes (one CPU thread
    each by default), each writing its own part of the log, merged at the end in seed order.
    """
    seeds = list(params.train.seeds)
    workers = min(params.train.seed_workers, len(seeds))
    if workers > 1:
        return _run_parallel(params, paths, seeds, workers)
    params = on_local_device(params)  # first: under a launcher nothing may land on another rank's GPU
    torch.set_num_threads(params.train.cpu_threads)
    segmenter = build_segmenter(params.detail)
    log = StepLog(paths.log)
    results = []
    for seed in seeds:
        def log_step(step: int, values: dict[str, float], seed: int = seed) -> None:
            if on_step is not None:
                on_step(seed, step, values)
            log.add(seed, step, values)

        result = train_seed(params, seed, paths, segmenter, on_step=log_step, say=say)
        if seed == seeds[0]:
            export_policy(result.pop("reasoner"), paths.out / "final", engine=result["engine"])
        result.pop("reasoner", None)
        result.pop("engine", None)
        results.append(result)
    return summary(results)


def warn_if_too_big(params: Params, reasoner: GlobalReasoner, segmenter: Segmenter, say: Say) -> None:
    """Before a DeepSpeed run on GPUs: say so when the estimated memory per GPU (``omni_r1.rl.memory``) exceeds
    this GPU's, with the settings that would make it fit."""
    train = params.train
    if reasoner.device.type != "cuda" or not train.deepspeed.enabled:
        return
    config = load_deepspeed_config(train.deepspeed.config)
    zero = config.get("zero_optimization", {})
    recipe = recipe_of(reasoner.model, segmenter, group_size=train.group_size, completion_tokens=train.max_new_tokens)
    world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else int(
        os.environ.get("WORLD_SIZE", "1"))
    estimate = estimate_memory(recipe, stage=max(2, int(zero.get("stage", 2))), gpus=world,
                               offload=offloads_optimizer(config),
                               gradient_checkpointing=train.deepspeed.gradient_checkpointing)
    warning = fits(estimate, torch.cuda.get_device_properties(reasoner.device).total_memory / GB)
    if warning is not None:
        say(f"warning: {warning}")


def on_local_device(params: Params) -> Params:
    """``params`` with System 1's and System 2's CUDA devices set to this rank's GPU (``engine.local_device``),
    which becomes the current CUDA device; CPU settings are left as they are."""
    gr, detail = params.global_reasoning, params.detail
    return dataclasses.replace(
        params, global_reasoning=dataclasses.replace(gr, device=str(local_device(gr.device))),
        detail=dataclasses.replace(detail, device=str(local_device(detail.device))),
    )


def _part_log(paths: RunPaths, seed: int) -> Path:
    return paths.log.with_name(f"{paths.log.stem}.seed-{seed}{paths.log.suffix}")


def _run_parallel(params: Params, paths: RunPaths, seeds: list[int], workers: int) -> dict[str, Any]:
    """Seeds in spawned worker processes; the parts of the step log are merged into ``paths.log``."""
    raw = params_to_dict(params)
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(_seed_process, raw, seed, paths, index, seed == seeds[0])
                   for index, seed in enumerate(seeds)]
        results = [future.result() for future in futures]
    parts = [_part_log(paths, seed) for seed in seeds]
    lines = [line for i, part in enumerate(parts) for line in part.read_text().splitlines()[(0 if i == 0 else 1):]]
    atomic_write_text(paths.log, "\n".join(lines) + "\n")
    for part in parts:
        part.unlink()
    return summary(results)


def _seed_process(raw: dict[str, Any], seed: int, paths: RunPaths, position: int, export: bool) -> dict[str, Any]:
    """One seed in a worker process: its own segmenter, log part and progress bar; the export if asked."""
    from tqdm.auto import tqdm

    params = params_from_dict(raw)
    torch.set_num_threads(params.train.cpu_threads)
    log = StepLog(_part_log(paths, seed))
    bar = tqdm(total=params.train.steps, desc=f"GRPO seed {seed}", unit="step", position=position, dynamic_ncols=True)

    def log_step(step: int, values: dict[str, float]) -> None:
        log.add(seed, step, values)
        bar.set_postfix_str(f"reward {values['reward']:.3f} parse-fail {values['parse_failure_rate']:.2f} "
                            f"distinct {values['distinct_answers']:.2f} S2-empty {values['system2_empty_rate']:.2f} "
                            f"S2-fail {values['system2_failures']:.0f} (grounder {values['grounder_failures']:.0f}, "
                            f"SAM2 {values['sam2_failures']:.0f})")
        bar.update(step - bar.n)

    result = train_seed(params, seed, paths, build_segmenter(params.detail), on_step=log_step,
                        say=lambda text: bar.write(text))
    bar.close()
    reasoner, engine = result.pop("reasoner"), result.pop("engine")
    if export:
        export_policy(reasoner, paths.out / "final", engine=engine)
    return result


def export_policy(reasoner: GlobalReasoner, folder: Path, *, engine: PolicyEngine | None = None) -> None:
    """The trained thinker and its processor as a plain transformers checkpoint folder, published whole.

    Under DeepSpeed every rank enters ``engine.gathered()`` (ZeRO-3 gathers the full 16-bit weights) and
    rank 0 alone writes. Written into a sibling temp folder and renamed over ``folder``, so a reader never
    sees half of it.
    """
    with engine.gathered() if engine is not None else contextlib.nullcontext():
        if distributed_rank()[0] == 0:
            _write_export(reasoner, folder)


def _write_export(reasoner: GlobalReasoner, folder: Path) -> None:
    folder.parent.mkdir(parents=True, exist_ok=True)
    temp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        reasoner.model.save_pretrained(temp, safe_serialization=True)
        reasoner.processor.save_pretrained(temp)
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(temp, folder)
    finally:
        if temp.exists():
            shutil.rmtree(temp)


def summary(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Held-out reward and J&F before and after GRPO per seed, their means, and the timings."""
    per_seed = {}
    for r in results:
        per_seed[str(r["seed"])] = {
            "reward_before": r["before"]["reward"], "reward_after": r["after"]["reward"],
            "jf_before": r["before"]["JF"], "jf_after": r["after"]["JF"],
            "parse_rate_before": r["before"]["parse_rate"], "parse_rate_after": r["after"]["parse_rate"],
            "by_cue_before": {c: v["reward"] for c, v in r["before"]["by_cue"].items()},
            "by_cue_after": {c: v["reward"] for c, v in r["after"]["by_cue"].items()},
            "warm_start_seconds": round(r["warm_start_seconds"], 1), "grpo_seconds": round(r["grpo_seconds"], 1),
            "train_prompts": r["train_prompts"], "heldout_prompts": r["heldout_prompts"],
            # The ablation on the held-out prompts (J&F x100 by expression type, bootstrap 95% intervals) and
            # the answers' diversity, before and after: what the headline numbers have to beat.
            "policies_before": r["before"].get("policies", {}), "policies_after": r["after"].get("policies", {}),
            "diversity_before": r["before"].get("diversity", {}), "diversity_after": r["after"].get("diversity", {}),
            "alarms": r.get("alarms", []),
        }
    mean = {key: float(np.mean([s[key] for s in per_seed.values()]))
            for key in ("reward_before", "reward_after", "jf_before", "jf_after")}
    return {"mean": mean, "seeds": per_seed}


__all__ = ["RunPaths", "build_reasoner", "export_policy", "log_columns", "run_training", "summary", "train_seed"]
