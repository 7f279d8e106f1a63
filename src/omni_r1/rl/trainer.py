"""GRPO for the Global Reasoning System, as a loop of named, timed phases.

One step, for ``train.prompts_per_step`` prompts with ``train.group_size`` (G) answers each:

1. ``rollout``   System 1 samples G completions per prompt from its cached inputs.
2. ``system2``   every parsed answer's keyframes go to System 2 (once per group, results cached
                 for the run because System 2 is deterministic), which segments the clip.
3. ``reward``    the hierarchical rewards of ``omni_r1.rl.rewards`` score each rollout.
4. ``advantage`` group-normalised advantages; groups whose rewards are all equal are dropped.
5. ``update``    the clipped-ratio loss with a k3 KL to the frozen reference (``omni_r1.rl.grpo``),
                 backward, clip, optimizer and scheduler step, through a ``PolicyEngine`` (plain
                 torch on CPU, DeepSpeed on GPUs).

Every step appends a row to the training log (reward per component, KL, clip fraction, response
length, parse-failure rate, seconds per phase). A non-finite reward or loss stops the run with
``TrainingDiverged`` naming the step and the sample; checkpoints are written only after a good step,
so the last one on disk is always good. Sampling seeds derive from (run seed, step, prompt), and the
data order and its position are part of the checkpoint, so a resumed run continues bit for bit.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from omni_r1.config import Params, TrainParams
from omni_r1.rl.alarms import COLUMNS as DIVERSITY_COLUMNS
from omni_r1.rl.alarms import step_diversity
from omni_r1.rl.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from omni_r1.rl.draws import draw_item, video_groups
from omni_r1.rl.engine import PolicyEngine, build_reference
from omni_r1.rl.grpo import completion_mask, group_advantages, informative_groups, policy_loss
from omni_r1.rl.policy import PromptCache, encoded_logprobs, towers_frozen
from omni_r1.rl.prompts_data import PromptItem
from omni_r1.rl.ranks import all_ranks_sum, broadcast_object, distributed_rank
from omni_r1.rl.rewards import (
    NO_BOX, NO_VALID_BOX, SYSTEM2_ERROR, RewardBreakdown, RewardError, reward_columns, score_rollouts,
)  # fmt: skip
from omni_r1.rl.static_sampler import sample_for_reasoner
from omni_r1.systems.collaboration import Rollout, SegmentCache, rollouts_from_completions
from omni_r1.systems.detail import Segmenter
from omni_r1.systems.global_reasoning import GlobalReasoner

PHASES = ("rollout", "system2", "reward", "advantage", "update")


class TrainingDiverged(FloatingPointError):
    """A reward or the loss is not finite; the message names the step, the sample and the fix."""


@dataclass
class PhaseTimer:
    """Seconds per named phase of one step."""

    seconds: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start


@dataclass(frozen=True)
class Group:
    """One prompt's G rollouts: completion ids (G, C), their token mask, rollouts and rewards."""

    item: PromptItem
    completion_ids: torch.Tensor
    mask: torch.Tensor
    rollouts: tuple[Rollout, ...]
    rewards: tuple[RewardBreakdown, ...] = ()


class DataOrder:
    """An endless, seeded walk over the training prompts: a fresh permutation per epoch.

    Its position (epoch, cursor, the epoch's order) is plain JSON for the checkpoint.
    """

    def __init__(self, size: int, seed: int) -> None:
        if size < 1:
            raise ValueError("no training prompts: the train split of the shards is empty; check train.split")
        self.size, self.seed = size, seed
        self.epoch, self.cursor = 0, 0
        self.order = self._permutation(0)

    def _permutation(self, epoch: int) -> list[int]:
        return [int(i) for i in np.random.default_rng([self.seed, epoch]).permutation(self.size)]

    def take(self, count: int) -> list[int]:
        out: list[int] = []
        while len(out) < count:
            if self.cursor == self.size:
                self.epoch, self.cursor = self.epoch + 1, 0
                self.order = self._permutation(self.epoch)
            out.append(self.order[self.cursor])
            self.cursor += 1
        return out

    def state(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "cursor": self.cursor, "size": self.size, "seed": self.seed}

    def restore(self, state: dict[str, Any]) -> None:
        if state.get("size") != self.size or state.get("seed") != self.seed:
            raise ValueError(
                f"the checkpoint's data position is for {state.get('size')} prompts with seed {state.get('seed')}, "
                f"this run has {self.size} with seed {self.seed}; resume with the same data and train.seed, "
                "or set train.resume=false"
            )
        self.epoch, self.cursor = int(state["epoch"]), int(state["cursor"])
        self.order = self._permutation(self.epoch)


StepLogger = Callable[[int, dict[str, float]], None]
RewardFn = Callable[..., list[RewardBreakdown]]  # the signature of omni_r1.rl.rewards.score_rollouts


class GRPOTrainer:
    """The GRPO loop over ``items`` for ``reasoner.model`` (the policy, trained in place via ``engine``)."""

    def __init__(
        self,
        *,
        reasoner: GlobalReasoner,
        engine: PolicyEngine,
        segmenter: Segmenter,
        items: Sequence[PromptItem],
        params: Params,
        checkpoint_dir: Path,
        seed: int,
        reward_fn: RewardFn = score_rollouts,
    ) -> None:
        self.reasoner, self.engine, self.segmenter = reasoner, engine, segmenter
        self.items, self.params, self.train = list(items), params, params.train
        self.checkpoint_dir, self.seed, self.reward_fn = checkpoint_dir, seed, reward_fn
        tokenizer = reasoner.processor.tokenizer
        self.eos_id, self.pad_id = int(tokenizer.eos_token_id), int(tokenizer.pad_token_id)
        # The engine copies the reference before it shards the policy (a copy of a ZeRO-3 model holds no weights).
        self.reference = (getattr(engine, "reference", None) or build_reference(reasoner.model)
                          if self.train.beta > 0 else None)
        # Under the DeepSpeed launcher every rank walks the same order and takes its slice of each batch.
        self.rank, self.world = distributed_rank()
        # Official draws (omni_r1.rl.draws): the order walks videos, each draw picks one of its expressions.
        self.groups = video_groups(self.items) if self.train.one_expression_per_video else [[i] for i in
                                                                                            range(len(self.items))]
        self.data = DataOrder(len(self.groups), seed)
        self.segment_cache = SegmentCache(self.train.system2_cache_entries)
        self.prompts = PromptCache(eos_id=self.eos_id, pad_id=self.pad_id)
        self.step = 0
        self.extra: dict[str, Any] = {}  # plain-JSON notes saved with every checkpoint (e.g. the starting numbers)
        self.resume_extra: dict[str, Any] = {}
        tasks = {item.task for item in self.items}
        if len(tasks) != 1:
            raise ValueError(f"the training prompts mix tasks {sorted(tasks)}; train one task per run")
        self.task = tasks.pop()
        self.columns = reward_columns(self.task)

    # ------------------------------------------------------------------------------------------ resume

    def resume(self) -> int:
        """Load the latest checkpoint of ``checkpoint_dir`` when there is one; return the step reached.

        Every rank calls it: rank 0 picks the checkpoint (so all ranks load the same one even if a shared file
        system shows them different listings for a moment) and every rank loads its part through the engine."""
        path = broadcast_object(latest_checkpoint(self.checkpoint_dir) if self.rank == 0 else None)
        if path is None:
            return 0
        state = load_checkpoint(path, state=self.engine)
        self.data.restore(state.data_position)
        self.step = state.step
        self.resume_extra = dict(state.extra)
        self.extra |= {k: v for k, v in state.extra.items() if k != "seed"}
        return self.step

    def save(self) -> Path:
        """The checkpoint of this step, through the engine on every rank (rank 0 writes the shared files)."""
        return save_checkpoint(
            self.checkpoint_dir, self.step, state=self.engine, data_position=self.data.state(),
            keep_last=self.train.keep_last, extra={"seed": self.seed, **self.extra},
        )

    # ------------------------------------------------------------------------------------------ the loop

    def fit(self, steps: int, *, log: StepLogger | None = None) -> None:
        """Run until ``steps`` steps are done in all (a resumed run continues from its step)."""
        while self.step < steps:
            values = self.train_step()
            if self.step % self.train.save_every == 0 or self.step == steps:
                self.save()  # a collective: every rank writes its shard
            if log is not None and self.rank == 0:
                log(self.step, values)

    def train_step(self) -> dict[str, float]:
        """One GRPO step; returns the logged values of the step."""
        step = self.step + 1
        timer = PhaseTimer()
        taken = self.data.take(self.train.prompts_per_step * self.world)
        batch = [self._draw(group, step, index) for index, group in enumerate(taken[self.rank :: self.world])]
        with timer.phase("rollout"):
            groups = (self._rollouts_static(batch, step) if self.reasoner.params.sampler == "static"
                      else [self._rollout(item, step, index) for index, item in enumerate(batch)])
        with timer.phase("system2"):
            groups = [self._collaborate(group) for group in groups]
        with timer.phase("reward"):
            groups = [self._reward(group, step) for group in groups]
        with timer.phase("advantage"):
            rewards = torch.tensor([[r.total for r in g.rewards] for g in groups], dtype=torch.float32)
            advantages = group_advantages(rewards, scale_std=self.train.scale_std)
            keep = informative_groups(rewards) if self.train.drop_equal_groups else torch.ones(len(groups), dtype=bool)
        with timer.phase("update"):
            update = self._update(groups, advantages, keep, step)
        self.step = step
        return self._log_values(groups, keep, update, timer)

    # ------------------------------------------------------------------------------------------ phases

    def _draw(self, group: int, step: int, index: int) -> PromptItem:
        """The official draw for one prompt of the step: an expression of the video, its frames and objects."""
        rng = np.random.default_rng([self.seed, step, self.rank, index, 7])
        members = self.groups[group]
        item = self.items[members[int(rng.integers(len(members)))]]
        return draw_item(item, self.reasoner, rng, self.train, seed=int(rng.integers(0, 2**31 - 1)))

    def _rollout(self, item: PromptItem, step: int, index: int) -> Group:
        seed = int(np.random.default_rng([self.seed, step, self.rank, index]).integers(0, 2**31 - 1))
        try:
            ids = generate(self.reasoner, self.prompts, item, num=self.train.group_size, do_sample=True, seed=seed,
                           max_new_tokens=self.train.max_new_tokens)
        except FloatingPointError as error:
            raise TrainingDiverged(
                f"step {step}: sampling on sample {item.key!r} failed ({error}); the last good checkpoint in "
                f"{self.checkpoint_dir} is intact. Train this seed again with a lower train.lr (a resumed run keeps the "
                "saved optimizer's rate)"
            ) from error
        mask = completion_mask(ids, eos_id=self.eos_id, pad_id=self.pad_id)
        return Group(item=item, completion_ids=ids, mask=mask, rollouts=())

    def _rollouts_static(self, batch: list[PromptItem], step: int) -> list[Group]:
        """``global_reasoning.sampler: static``: the step's prompts and their G completions decoded as one batch
        on a static KV cache (``omni_r1.rl.static_sampler``), each prompt under the seed ``_rollout`` gives it."""
        model = self.reasoner.model
        if not towers_frozen(model):
            raise ValueError("global_reasoning.sampler=static decodes from cached prompt encodings, which needs frozen "
                             "towers; set global_reasoning.freeze_vision/freeze_audio to true or the sampler to plain")
        seeds = [int(np.random.default_rng([self.seed, step, self.rank, index]).integers(0, 2**31 - 1))
                 for index in range(len(batch))]
        encodings = [self.prompts.encoding(model, item.key, item.inputs) for item in batch]
        try:
            ids = sample_for_reasoner(self.reasoner, encodings, num=self.train.group_size, do_sample=True,
                                      seeds=seeds, max_new_tokens=self.train.max_new_tokens,
                                      all_done=all_ranks_done if self.world > 1 else None)
        except FloatingPointError as error:
            raise TrainingDiverged(
                f"step {step}: sampling on samples {', '.join(repr(item.key) for item in batch)} failed ({error}); "
                f"the last good checkpoint in {self.checkpoint_dir} is intact. Train this seed again with a lower "
                "train.lr (a resumed run keeps the saved optimizer's rate)"
            ) from error
        return [Group(item=item, completion_ids=group, mask=completion_mask(group, eos_id=self.eos_id,
                                                                            pad_id=self.pad_id), rollouts=())
                for item, group in zip(batch, ids, strict=True)]

    def _collaborate(self, group: Group) -> Group:
        item = group.item
        completions = self.reasoner.decode(group.completion_ids)
        rollouts, _ = rollouts_from_completions(
            item.sample, completions, self.segmenter, task=item.task, duration=item.duration, fps=item.fps,
            max_keyframes=self.reasoner.params.max_keyframes, cache=self.segment_cache,
            # The official first-K rule: System 2 prompts with at most K boxes per keyframe, K the target count.
            boxes_per_keyframe=len(item.sample.masks.objects),
        )
        return Group(item, group.completion_ids, group.mask, rollouts)

    def _reward(self, group: Group, step: int) -> Group:
        item = group.item
        lengths = [int(n) for n in group.mask.sum(dim=1).tolist()]
        try:
            rewards = self.reward_fn(group.rollouts, item.sample, self.params.rewards, task=item.task,
                                     num_frames=len(item.sample.frame_indices), fps=item.fps,
                                     duration=item.duration, completion_lengths=lengths)
        except RewardError as error:  # a non-finite component: stop, naming the step as well
            raise TrainingDiverged(f"step {step}: {error}; the last good checkpoint in {self.checkpoint_dir} "
                                   "is intact") from error
        for rollout_index, reward in enumerate(rewards):
            if not math.isfinite(reward.total):
                raise TrainingDiverged(
                    f"step {step}: the reward of rollout {rollout_index} of sample {item.key!r} is {reward.total}; "
                    f"the last good checkpoint in {self.checkpoint_dir} is intact. Inspect that sample's masks"
                )
        return Group(item, group.completion_ids, group.mask, group.rollouts, tuple(rewards))

    def _update(self, groups: list[Group], advantages: torch.Tensor, keep: torch.Tensor, step: int) -> dict[str, float]:
        """The loss over the kept groups, one backward and one optimizer step per update.

        Under several ranks every rank runs the same collectives: if any rank kept a group, each runs the
        forward of all its groups (a dropped group weighs 0, so a rank with none kept still backpropagates a
        zero loss) and exactly one backward and step; if no rank kept one, none updates."""
        kept = [i for i in range(len(groups)) if bool(keep[i])]
        stats: dict[str, float] = {"loss": 0.0, "kl": 0.0, "clip_fraction": 0.0, "grad_norm": 0.0,
                                   "lr": float(self.engine.optimizer.param_groups[0]["lr"])}
        if all_ranks_sum(len(kept)) == 0:
            return stats  # every group of every rank was uninformative: no gradient this step (dropped_groups)
        weights = {i: (1.0 / len(kept) if i in kept else 0.0) for i in range(len(groups))}
        order = kept if self.world == 1 else list(range(len(groups)))  # alone, dropped groups need no forward
        model = self.engine.model
        sampling = self._sampling_logp(groups, order)
        for _ in range(self.train.updates_per_batch):
            model.train()
            sums = {"loss": 0.0, "kl": 0.0, "clip_fraction": 0.0}
            total: torch.Tensor | None = None
            for i in order:
                group = groups[i]
                logp = self._logp(model, group)
                old_logp = sampling[i] if sampling else logp.detach()
                ref_logp = self._reference_logp(group)
                loss, values = policy_loss(
                    logp, old_logp, advantages[i].to(logp.device), group.mask.to(logp.device),
                    clip_low=self.train.clip_low, clip_high=self.train.clip_high, beta=self.train.beta,
                    ref_logp=ref_logp, norm=self.train.loss_norm,
                )
                if not torch.isfinite(loss):
                    raise TrainingDiverged(
                        f"step {step}: the loss is {float(loss.detach())} on sample {group.item.key!r}; the last good "
                        f"checkpoint in {self.checkpoint_dir} is intact. Train this seed again with a lower train.lr, or resume "
                        "with a smaller train.max_grad_norm"
                    )
                total = loss * weights[i] if total is None else total + loss * weights[i]
                for name in sums:
                    sums[name] += values[name] * weights[i]
            assert total is not None
            self.engine.backward(total)
            result = self.engine.step()
            stats |= sums | {"grad_norm": float(result["grad_norm"]), "lr": float(result["lr"])}
        model.eval()
        return stats

    def _sampling_logp(self, groups: list[Group], kept: list[int]) -> dict[int, torch.Tensor]:
        """The sampling policy's log-probs, fixed before the first update (needed only with several updates;
        with one update per batch they equal the current ones, so the ratio is 1 in value)."""
        if self.train.updates_per_batch == 1:
            return {}
        with torch.no_grad():
            return {i: self._logp(self.engine.model, groups[i]) for i in kept}

    def _logp(self, model: torch.nn.Module, group: Group) -> torch.Tensor:
        """(G, C) log-probs of the group's completions under ``model`` (the engine's, or the reference). With
        frozen towers the prompt's encoding comes from the whole thinker (``reasoner.model``): under DeepSpeed
        the engine wraps only its language model and head (``engine.TrainablePart``)."""
        if towers_frozen(self.reasoner.model):
            encoding = self.prompts.encoding(self.reasoner.model, group.item.key, group.item.inputs)
            return encoded_logprobs(model, encoding, group.completion_ids, eos_id=self.eos_id, pad_id=self.pad_id)
        return self.prompts.logprobs(model, group.item.key, group.item.inputs, group.completion_ids)

    def _reference_logp(self, group: Group) -> torch.Tensor | None:
        if self.reference is None:
            return None
        with torch.no_grad():
            return self._logp(self.reference, group)

    # ------------------------------------------------------------------------------------------ logging

    def _log_values(self, groups: list[Group], keep: torch.Tensor, update: dict[str, float],
                    timer: PhaseTimer) -> dict[str, float]:
        rewards = [r for g in groups for r in g.rewards]
        rollouts = [r for g in groups for r in g.rollouts]
        values: dict[str, float] = {"reward": float(np.mean([r.total for r in rewards]))}
        for column in self.columns:
            values[f"reward_{column}"] = float(np.mean([r.components[column] for r in rewards]))
        values |= {
            "kl": update["kl"],
            "clip_fraction": update["clip_fraction"],
            "loss": update["loss"],
            "grad_norm": update["grad_norm"],
            "lr": update["lr"],
            "response_length": float(torch.cat([g.mask.sum(dim=1) for g in groups]).mean()),
            "parse_failure_rate": float(np.mean([not r.parsed for r in rollouts])),
            **system2_failure_counts(rollouts, rewards),
            "dropped_groups": float(len(groups) - int(keep.sum())),
            **step_diversity([g.rollouts for g in groups], [[r.total for r in g.rewards] for g in groups]),
        }
        for phase in PHASES:
            values[f"seconds_{phase}"] = timer.seconds.get(phase, 0.0)
        values["seconds_step"] = sum(timer.seconds.values())
        return values


def all_ranks_done(done: bool) -> bool:
    """Whether every rank is done sampling (a collective): the sampler's ``all_done`` under several ranks."""
    return all_ranks_sum(int(not done)) == 0


def generate(reasoner: GlobalReasoner, prompts: PromptCache, item: PromptItem, *, num: int, do_sample: bool,
             seed: int, max_new_tokens: int) -> torch.Tensor:
    """``num`` completions (num, C) on the CPU by System 1's engine (``GlobalReasoner.sample_ids``), from the
    prompt's cached encoding when the towers are frozen; in step with the other ranks when there are several."""
    encoding = prompts.encoding(reasoner.model, item.key, item.inputs) if towers_frozen(reasoner.model) else None
    return reasoner.sample_ids(item.inputs, num_return_sequences=num, do_sample=do_sample, seed=seed,
                               max_new_tokens=max_new_tokens, encoding=encoding,
                               all_done=all_ranks_done if distributed_rank()[1] > 1 else None)


SYSTEM2_FAILURE_COLUMNS = ("system2_failures", "grounder_failures", "sam2_failures")
_GROUNDER_CODES = (NO_VALID_BOX, NO_BOX)


def system2_failure_counts(rollouts: Sequence[Rollout], rewards: Sequence[RewardBreakdown]) -> dict[str, float]:
    """Rollouts of a step whose System 2 failed, by part (the step log's ``SYSTEM2_FAILURE_COLUMNS``).

    ``grounder_failures``: the grounder answered an entry that is not a valid box, or no valid box where
    one was needed (the rewards' ``no_valid_box`` / ``no_box``); ``sam2_failures``: a box prompted a mask
    that is empty on the box's own keyframe; ``system2_failures``: rollouts with either, or with keyframes
    that System 2 returned nothing for. A grounder that fails every call shows here, not as a quiet 0 reward.
    """
    grounder = sam2 = failed = 0
    for rollout, reward in zip(rollouts, rewards, strict=True):
        segment = rollout.segment
        bad_grounding = reward.failure in _GROUNDER_CODES or (segment is not None and segment.invalid_entries > 0)
        bad_masks = segment is not None and segment.empty_objects > 0
        grounder += bad_grounding
        sam2 += bad_masks
        failed += bad_grounding or bad_masks or reward.failure == SYSTEM2_ERROR
    return {"system2_failures": float(failed), "grounder_failures": float(grounder), "sam2_failures": float(sam2)}


def log_columns(task: str) -> tuple[str, ...]:
    """The training log's columns after ``step``, in order."""
    return (
        "reward", *(f"reward_{c}" for c in reward_columns(task)), "kl", "clip_fraction", "loss", "grad_norm", "lr",
        "response_length", "parse_failure_rate", *SYSTEM2_FAILURE_COLUMNS, "dropped_groups", *DIVERSITY_COLUMNS,
        *(f"seconds_{p}" for p in PHASES), "seconds_step",
    )


def trainable_parameters(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Copies of the parameters that train (the towers are frozen), for before/after checks."""
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def check_train_params(train: TrainParams, items: Sequence[PromptItem]) -> None:
    """Refuse settings the data cannot serve, naming the key."""
    if train.prompts_per_step > len(items):
        raise ValueError(
            f"train.prompts_per_step={train.prompts_per_step} exceeds the {len(items)} training prompts; lower it"
        )
