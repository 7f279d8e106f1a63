"""The GRPO trainer with the tiny thinker on CPU: updates, logging, exact resume, loud divergence.

System 2 is a test double here (``FixedBoxSegmenter``: a centre box on every frame, no model), and
where a test needs rewards that vary inside a group before any answer parses, a named reward double
scores completions by their length. The real reward and detail code is exercised elsewhere
(test_rewards.py, test_detail.py, and the slow probes).
"""

from __future__ import annotations

from dataclasses import replace

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch

from omni_r1.config import Params, load_params
from omni_r1.data.pipeline import shard_in_process
from omni_r1.data.shards import SamplingPlan, read_samples
from omni_r1.rl.checkpoint import latest_checkpoint
from omni_r1.rl.engine import build_engine
from omni_r1.rl.policy import (
    PromptCache,
    completion_logprobs,
    encode_prompt,
    full_completion_logprobs,
    sample_completions,
    top_p_filter,
)
from omni_r1.rl.prompts_data import PromptItem, item_in_memory
from omni_r1.rl.rewards import RewardBreakdown, reward_columns, score_rollouts
from omni_r1.rl.run import build_reasoner
from omni_r1.rl.trainer import DataOrder, GRPOTrainer, TrainingDiverged, log_columns, trainable_parameters
from omni_r1.rl.warm_start import format_target, random_moments
from omni_r1.systems.answer import try_parse
from omni_r1.systems.collaboration import Rollout, SegmentCache, rollouts_from_completions
from omni_r1.systems.detail import KeyframePrompt, SegmentResult
from omni_r1.types import Box, KeyframeSelection, Sample

REPO = Path(__file__).resolve().parents[2]


class FixedBoxSegmenter:
    """Test double for System 2: a centre box mask on every frame, the same for every prompt set."""

    def __init__(self) -> None:
        self.calls = 0

    def segment(self, frames: np.ndarray, prompts: Sequence[KeyframePrompt]) -> SegmentResult:
        return self.segment_batch(frames, [prompts])[0]

    def segment_batch(self, frames: np.ndarray, prompt_sets: Sequence[Sequence[KeyframePrompt]],
                      boxes_per_keyframe: int | None = None) -> list[SegmentResult]:
        self.calls += len(prompt_sets)
        t, h, w = frames.shape[:3]
        masks = np.zeros((t, h, w), bool)
        masks[:, h // 4 : 3 * h // 4, w // 4 : 3 * w // 4] = True
        box = Box(w / 4, h / 4, 3 * w / 4 - 1, 3 * h / 4 - 1)
        # One object mask per box, as SegmentResult documents (the failure counts index them per box).
        return [SegmentResult(masks, np.repeat(masks[None], len({p.frame for p in prompts}), axis=0),
                              {p.frame: [box] for p in prompts}, entries={p.frame: (box,) for p in prompts})
                for prompts in prompt_sets]


def length_reward_double(rollouts: Sequence[Rollout], sample: Sample, params, *, task, num_frames, fps, duration,
                         completion_lengths: Sequence[int]) -> list[RewardBreakdown]:
    """Reward double: distinct characters of the completion / 50 in every column, so a random policy's
    rewards differ inside a group from the first step (every completion has the same token count)."""
    columns = reward_columns(task)
    values = [len(set(r.completion)) / 50 for r in rollouts]
    return [RewardBreakdown({c: v for c in columns}, v) for v in values]


def nan_reward_double(rollouts, sample, params, **kwargs) -> list[RewardBreakdown]:
    out = length_reward_double(rollouts, sample, params, **kwargs)
    return [RewardBreakdown(out[0].components, float("nan")), *out[1:]]


@pytest.fixture(autouse=True)
def _one_thread():
    """The tiny thinker runs fastest single-threaded (train.cpu_threads)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def params() -> Params:
    return load_params(REPO / "params.yaml", [
        "train.group_size=4", "train.prompts_per_step=2", "train.max_new_tokens=12", "train.save_every=1",
        "train.keep_last=5", "train.lr=0.01", "train.warm_start.steps=0", "train.seeds=[0]",
        "global_reasoning.max_new_tokens=12",
    ])


@pytest.fixture(scope="module")
def items(params: Params, synth_video: Path, tmp_path_factory: pytest.TempPathFactory) -> list[PromptItem]:
    """Prompts from three synthetic clips (6 frames at 56/64 px), features computed in memory."""
    reasoner = build_reasoner(params, 0)
    shards = tmp_path_factory.mktemp("trainer-shards")
    plan = SamplingPlan(fps=2.0, max_frames=6, low_res=56, high_res=64)
    assert shard_in_process("video", synth_video, shards, plan, videos_per_shard=4) == []
    samples = [s for split in ("train", "val", "test") for s in read_samples(shards, split)]
    return [item_in_memory(sample, reasoner, seed=index) for index, sample in enumerate(samples[:3])]


def _trainer(params: Params, items: list[PromptItem], tmp: Path, *, reward_fn=length_reward_double,
             seed: int = 0) -> GRPOTrainer:
    torch.manual_seed(seed)
    reasoner = build_reasoner(params, seed)
    engine = build_engine(reasoner.model, params.train, total_steps=10, device=reasoner.device)
    return GRPOTrainer(reasoner=reasoner, engine=engine, segmenter=FixedBoxSegmenter(), items=items, params=params,
                       checkpoint_dir=tmp, seed=seed, reward_fn=reward_fn)


def test_two_steps_change_every_trainable_parameter_and_log_every_column(params, items, tmp_path) -> None:
    trainer = _trainer(params, items, tmp_path)
    before = trainable_parameters(trainer.reasoner.model)
    logged: list[dict[str, float]] = []
    trainer.fit(2, log=lambda step, values: logged.append(values))
    after = trainable_parameters(trainer.reasoner.model)
    unchanged = [name for name in before if torch.equal(before[name], after[name])]
    assert not unchanged, f"parameters that did not train: {unchanged}"
    assert len(logged) == 2 and list(logged[0]) == list(log_columns("revos"))
    assert all(np.isfinite(v) for row in logged for v in row.values())
    assert logged[0]["reward"] > 0 and logged[0]["dropped_groups"] == 0
    assert logged[1]["kl"] > 0  # the policy moved away from the frozen reference after the first update
    assert all(row["seconds_rollout"] > 0 and row["seconds_update"] > 0 for row in logged)


def test_resume_after_a_stop_gives_the_same_weights_bit_for_bit(params, items, tmp_path) -> None:
    straight = _trainer(params, items, tmp_path / "straight")
    straight.fit(4)
    stopped = _trainer(params, items, tmp_path / "resumed")
    stopped.fit(2)
    del stopped  # the "killed" run: only its checkpoints survive
    resumed = _trainer(params, items, tmp_path / "resumed")
    assert resumed.resume() == 2
    resumed.fit(4)
    a, b = straight.reasoner.model.state_dict(), resumed.reasoner.model.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ from the uninterrupted run"


def test_a_nan_reward_stops_with_the_step_and_sample_and_keeps_the_last_checkpoint(params, items, tmp_path) -> None:
    trainer = _trainer(params, items, tmp_path)
    trainer.fit(1)
    good = latest_checkpoint(tmp_path)
    weights = (good / "model.safetensors").read_bytes()
    trainer.reward_fn = nan_reward_double
    with pytest.raises(TrainingDiverged, match=r"step 2: the reward of rollout 0 of sample '[^']+' is nan"):
        trainer.fit(2)
    assert latest_checkpoint(tmp_path) == good and (good / "model.safetensors").read_bytes() == weights


def test_a_nan_loss_stops_with_the_step_and_sample(params, items, tmp_path, monkeypatch) -> None:
    from omni_r1.rl import trainer as trainer_module

    real_loss = trainer_module.policy_loss

    def nan_loss_double(*args, **kwargs):
        loss, values = real_loss(*args, **kwargs)
        return loss * float("nan"), values

    trainer = _trainer(params, items, tmp_path)
    trainer.fit(1)
    good = latest_checkpoint(tmp_path)
    monkeypatch.setattr(trainer_module, "policy_loss", nan_loss_double)
    with pytest.raises(TrainingDiverged, match=r"step 2: the loss is nan on sample '[^']+'"):
        trainer.fit(2)
    assert latest_checkpoint(tmp_path) == good


def test_nan_weights_stop_sampling_with_the_step_and_sample(params, items, tmp_path) -> None:
    trainer = _trainer(params, items, tmp_path)
    with torch.no_grad():
        next(p for p in trainer.reasoner.model.parameters() if p.requires_grad).fill_(float("nan"))
    with pytest.raises(TrainingDiverged, match=r"step 1: sampling on sample '[^']+' failed .*not finite"):
        trainer.fit(1)
    assert latest_checkpoint(tmp_path) is None


def test_all_equal_groups_are_dropped_and_nothing_updates(params, items, tmp_path) -> None:
    def constant(rollouts, sample, p, **kwargs):
        return [RewardBreakdown({c: 0.5 for c in reward_columns("revos")}, 0.5) for _ in rollouts]

    params = replace(params, train=replace(params.train, drop_equal_groups=True))  # ours; official keeps them
    trainer = _trainer(params, items, tmp_path, reward_fn=constant)
    before = trainable_parameters(trainer.reasoner.model)
    values = trainer.train_step()
    assert values["dropped_groups"] == params.train.prompts_per_step
    after = trainable_parameters(trainer.reasoner.model)
    assert all(torch.equal(before[k], after[k]) for k in before)


# ------------------------------------------------------------------------------------------- policy plumbing


def test_shared_prompt_logprobs_equal_full_rows_with_gradients(params, items) -> None:
    reasoner = build_reasoner(params, 0)
    item = items[0]
    tok = reasoner.processor.tokenizer
    eos, pad = int(tok.eos_token_id), int(tok.pad_token_id)
    ids = torch.tensor([[40, 41, 42, eos, pad], [43, 44, 45, 46, eos]])
    mask = (torch.arange(5)[None] <= torch.tensor([[3], [4]])).float()
    grads = []
    for fn in (full_completion_logprobs, completion_logprobs):
        reasoner.model.zero_grad()
        logp = fn(reasoner.model, item.inputs, ids, eos_id=eos, pad_id=pad)
        (logp * mask).sum().backward()
        grads.append({n: p.grad.clone() for n, p in reasoner.model.named_parameters() if p.grad is not None})
        grads[-1]["_logp"] = logp.detach()
    reasoner.model.zero_grad()
    cached = PromptCache(eos_id=eos, pad_id=pad).logprobs(reasoner.model, item.key, item.inputs, ids)
    (cached * mask).sum().backward()
    grads.append({n: p.grad.clone() for n, p in reasoner.model.named_parameters() if p.grad is not None})
    grads[-1]["_logp"] = cached.detach()
    full, shared, encoded = grads
    for other in (shared, encoded):
        assert other.keys() == full.keys()
        assert torch.allclose(other["_logp"][mask.bool()], full["_logp"][mask.bool()], atol=1e-5)
        for name in full:
            if name != "_logp":
                assert torch.allclose(other[name], full[name], rtol=1e-4, atol=1e-6), name


def test_our_sampler_matches_transformers_generate_when_greedy(params, items) -> None:
    reasoner = build_reasoner(params, 0)
    item = items[1]
    tok = reasoner.processor.tokenizer
    ours = sample_completions(reasoner.model, encode_prompt(reasoner.model, item.inputs), num=3, max_new_tokens=10,
                              eos_id=int(tok.eos_token_id), pad_id=int(tok.pad_token_id), do_sample=False)
    theirs = reasoner.generate_ids(item.inputs, num_return_sequences=3, do_sample=False, max_new_tokens=10)
    assert torch.equal(ours, theirs[:, : ours.shape[1]])


def test_sampling_is_reproducible_under_a_generator(params, items) -> None:
    reasoner = build_reasoner(params, 0)
    encoding = encode_prompt(reasoner.model, items[0].inputs)
    draw = [sample_completions(reasoner.model, encoding, num=4, max_new_tokens=8, eos_id=2, pad_id=0, top_p=0.95,
                               generator=torch.Generator().manual_seed(3)) for _ in range(2)]
    assert torch.equal(draw[0], draw[1])


def test_top_p_keeps_the_smallest_set_reaching_p() -> None:
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    kept = torch.isfinite(top_p_filter(logits, 0.8))
    assert kept.tolist() == [[True, True, False, False]]
    assert torch.isfinite(top_p_filter(logits, 0.1)).tolist() == [[True, False, False, False]]
    assert torch.isfinite(top_p_filter(logits, 1.0)).all()


# ------------------------------------------------------------------------------------------- data and format


def test_data_order_walks_epochs_and_restores_its_position() -> None:
    order = DataOrder(5, seed=1)
    first = order.take(7)
    state = json.loads(json.dumps(order.state()))
    rest = order.take(6)
    again = DataOrder(5, seed=1)
    again.restore(state)
    assert again.take(6) == rest
    assert sorted(first[:5]) == list(range(5))
    with pytest.raises(ValueError, match="train.resume=false"):
        DataOrder(6, seed=1).restore(state)


def test_warm_start_targets_parse_and_carry_no_task_knowledge() -> None:
    rng = np.random.default_rng(0)
    chosen = set()
    for _ in range(40):
        moments = random_moments(6.0, 2.0, rng)
        text = format_target('the "red" circle', moments)
        parsed = try_parse(text, task="revos", duration=6.0, num_frames=12, fps=2.0, max_keyframes=4)
        assert isinstance(parsed, KeyframeSelection), text
        assert all(k.description == "the 'red' circle" for k in parsed.keyframes)
        chosen.update(k.frame for k in parsed.keyframes)
    assert len(chosen) >= 10  # random over the whole clip


def test_the_warm_start_trains_through_the_engine_and_a_resumed_run_gets_its_weights_back(params, items,
                                                                                        tmp_path) -> None:
    from omni_r1.rl.engine import TorchEngine
    from omni_r1.rl.run import WARM_START_DIR, keep_warm_start, load_warm_start
    from omni_r1.rl.warm_start import warm_start

    reasoner = build_reasoner(params, 0)
    before = trainable_parameters(reasoner.model)
    frozen = {n: p.detach().clone() for n, p in reasoner.model.named_parameters() if not p.requires_grad}
    losses: list[float] = []
    warm = dataclasses.replace(params.train.warm_start, steps=6, batch=8)
    result = warm_start(reasoner, items, warm, seed=0, progress=lambda step, total, loss: losses.append(loss))
    # the plain engine (train.deepspeed off) trained the thinker in place, one optimizer step per warm-start step
    assert isinstance(result.engine, TorchEngine) and result.engine.model is reasoner.model
    assert {float(s["step"]) for s in result.engine.optimizer.state_dict()["state"].values()} == {6.0}
    after = trainable_parameters(reasoner.model)
    assert [n for n in before if torch.equal(before[n], after[n])] == []
    assert all(torch.equal(p, dict(reasoner.model.named_parameters())[n]) for n, p in frozen.items())
    assert len(losses) == 6 and losses[-1] < losses[0]  # the answer format is being learnt

    folder = tmp_path / WARM_START_DIR
    weights = keep_warm_start(reasoner, result, folder, seed=0)
    assert weights.keys() == before.keys() and not hasattr(result.engine, "optimizer")  # closed: Adam state gone
    # a resumed run builds the thinker afresh and takes the warm-started weights back (its KL reference)
    fresh = build_reasoner(params, 0)
    load_warm_start(fresh, folder)
    kept, got = reasoner.model.state_dict(), fresh.model.state_dict()
    assert kept.keys() == got.keys() and all(torch.equal(kept[k], got[k]) for k in kept)
    with pytest.raises(FileNotFoundError, match=r"warm start .* is missing.*train\.resume=false"):
        load_warm_start(fresh, tmp_path / "elsewhere" / WARM_START_DIR)


def test_rollouts_reuse_system2_results_across_a_run(items) -> None:
    segmenter = FixedBoxSegmenter()
    item = items[0]
    text = format_target(item.sample.expression, [(0.5, 0.5)])
    cache = SegmentCache()
    for _ in range(2):
        rollouts, _ = rollouts_from_completions(item.sample, [text, text, "no answer"], segmenter, task="revos",
                                                duration=item.duration, fps=item.fps, max_keyframes=4, cache=cache)
    assert segmenter.calls == 1
    assert [r.parsed for r in rollouts] == [True, True, False]
    assert rollouts[2].masks.shape == item.sample.high_res.shape[:3] and not rollouts[2].masks.any()
    rewards = score_rollouts(rollouts, item.sample, dataclasses.replace(load_params(REPO / "params.yaml").rewards),
                             task="revos", num_frames=len(item.sample.frame_indices), fps=item.fps,
                             duration=item.duration, completion_lengths=[30, 30, 3])
    assert rewards[0].total == rewards[1].total and rewards[2].failure is not None


def test_the_system2_cache_is_bounded_and_never_loses_a_result_mid_group(items) -> None:
    segmenter = FixedBoxSegmenter()
    item = items[0]
    texts = [format_target(item.sample.expression, [(t, t)]) for t in (0.0, 0.5, 1.0)]
    cache = SegmentCache(max_entries=1)  # smaller than the group's 3 distinct answers
    rollouts, _ = rollouts_from_completions(item.sample, texts, segmenter, task="revos", duration=item.duration,
                                            fps=item.fps, max_keyframes=4, cache=cache)
    assert all(r.segment is not None for r in rollouts) and len(cache) == 1
    rollouts_from_completions(item.sample, texts[-1:], segmenter, task="revos", duration=item.duration,
                              fps=item.fps, max_keyframes=4, cache=cache)
    assert segmenter.calls == 3  # the most recent answer was looked up, not segmented again
    with pytest.raises(ValueError, match="max_entries"):
        SegmentCache(0)


def test_several_updates_per_batch_clip_against_the_sampling_policy(params, items, tmp_path) -> None:
    several = dataclasses.replace(params, train=dataclasses.replace(params.train, updates_per_batch=3, lr=0.05))
    trainer = _trainer(several, items, tmp_path)
    values = trainer.train_step()
    # the log holds the last of the 3 updates: by then the policy has moved away from the one that sampled,
    # so some ratios left the clip range (with one update per batch the ratio is 1 and nothing clips)
    assert values["clip_fraction"] > 0.0
    single = _trainer(params, items, tmp_path / "single").train_step()
    assert single["clip_fraction"] == 0.0


def test_a_reward_error_from_the_rewards_names_the_step_too(params, items, tmp_path) -> None:
    from omni_r1.rl.rewards import RewardError

    def raising(rollouts, sample, p, **kwargs):
        raise RewardError(f"sample {sample.key!r}: reward component 'grounding' is nan")

    trainer = _trainer(params, items, tmp_path, reward_fn=raising)
    with pytest.raises(TrainingDiverged, match=r"step 1: sample '[^']+': reward component 'grounding' is nan"):
        trainer.fit(1)
