"""One System 1 engine (``omni_r1.systems.system1`` behind ``GlobalReasoner.sample_ids``) for GRPO rollouts,
held-out evaluation and predict: its greedy answer is transformers' ``generate`` token for token, and the
held-out evaluation and predict give the same answer on the same sample."""

from __future__ import annotations

import dataclasses

import torch

from omni_r1.eval.predict import answer_system1, sample_task
from omni_r1.rl.policy import PromptCache
from omni_r1.rl.prompts_data import build_item
from omni_r1.rl.run import build_reasoner
from omni_r1.rl.trainer import generate
from tests.unit.test_trainer import _one_thread, items, params  # noqa: F401  (shared fixtures)


def test_the_engines_greedy_answer_is_transformers_generate_token_for_token(params, items) -> None:
    reasoner = build_reasoner(params, 0)
    for item in items[:2]:
        ours = reasoner.sample_ids(item.inputs, num_return_sequences=2, do_sample=False, max_new_tokens=12)
        theirs = reasoner.generate_ids(item.inputs, num_return_sequences=2, do_sample=False, max_new_tokens=12)
        assert torch.equal(ours, theirs[:, : ours.shape[1]].cpu())


def test_held_out_and_predict_give_the_same_greedy_answer(params, items) -> None:
    reasoner = build_reasoner(params, 0)
    seed = reasoner.params.seed
    for item in items[:2]:
        # the held-out prompt of this sample as predict builds it (same prompt seed)
        heldout = build_item(item.sample, item.record, reasoner, seed=seed)
        ids = generate(reasoner, PromptCache(eos_id=0, pad_id=0), heldout, num=1, do_sample=False, seed=0,
                       max_new_tokens=reasoner.params.max_new_tokens)
        [heldout_answer] = reasoner.decode(ids)
        predicted = answer_system1(item.sample, item.record, reasoner, task=sample_task(item.sample), seed=seed)
        assert predicted.completion == heldout_answer


def test_sampling_through_the_engine_follows_the_seed(params, items) -> None:
    reasoner = build_reasoner(params, 0)
    reasoner = dataclasses.replace(reasoner, params=dataclasses.replace(reasoner.params, temperature=1.0))
    draws = [reasoner.sample_ids(items[0].inputs, num_return_sequences=4, seed=s, max_new_tokens=8) for s in (1, 1, 2)]
    assert torch.equal(draws[0], draws[1]) and not torch.equal(draws[0], draws[2])


def test_encoding_a_prompt_runs_no_module_of_the_language_model(params, items) -> None:
    # Under ZeRO-3 the language model is partitioned and each of its forwards is a collective, while a prompt is
    # encoded only on the rank whose prompt cache misses: a language-model forward there hung the other rank.
    from omni_r1.systems.system1 import encode_prompt

    reasoner = build_reasoner(params, 0)
    language_model = reasoner.model.model.language_model
    calls: list[str] = []
    handles = [module.register_forward_pre_hook(lambda m, _args: calls.append(type(m).__name__))
               for module in (*language_model.modules(), reasoner.model.lm_head)]
    try:
        encoding = encode_prompt(reasoner.model, items[0].inputs)
    finally:
        for handle in handles:
            handle.remove()
    assert calls == []
    # the tower outputs still land at their placeholders, and the prompt's text embeddings then come from the model
    hidden = language_model.get_input_embeddings().embedding_dim
    assert encoding.features.shape == (1, encoding.input_ids.shape[1], hidden)
    assert bool(encoding.multimodal.any()) and bool((encoding.features[0][encoding.multimodal[0, :, 0]] != 0).any())
