"""The policy's log-prob and sampling paths as the 7B recipe runs them: chunked vocabulary projection,
gradient checkpointing (no KV cache in training), prompts on the CPU until used, a bounded prompt cache,
and a sampler that keeps decoding until every rank is done (ZeRO-3)."""

from __future__ import annotations

import pytest
import torch

from omni_r1.rl.grpo import token_logprobs
from omni_r1.rl.policy import (
    PromptCache,
    encode_prompt,
    encoded_logprobs,
    head_logprobs,
    sample_completions,
    uses_kv_cache,
)
from omni_r1.rl.run import build_reasoner
from tests.unit.test_trainer import _one_thread, items, params  # noqa: F401  (shared fixtures)


def test_chunked_head_logprobs_equal_the_full_logits_with_gradients() -> None:
    torch.manual_seed(0)
    head = torch.nn.Linear(8, 50, bias=False)
    hidden = torch.randn(3, 7, 8, requires_grad=True)
    tokens = torch.randint(0, 50, (3, 7))
    full = token_logprobs(head(hidden), tokens)
    full.sum().backward()
    want_hidden, want_head = hidden.grad.clone(), head.weight.grad.clone()
    hidden.grad, head.weight.grad = None, None
    chunked = head_logprobs(head, hidden, tokens, chunk=4)  # 21 positions in chunks of 4
    chunked.sum().backward()
    assert torch.allclose(chunked, full, atol=1e-6)
    assert torch.allclose(hidden.grad, want_hidden, atol=1e-6) and torch.allclose(head.weight.grad, want_head, atol=1e-6)


def _ids(reasoner) -> tuple[torch.Tensor, int, int]:
    tok = reasoner.processor.tokenizer
    eos, pad = int(tok.eos_token_id), int(tok.pad_token_id)
    return torch.tensor([[40, 41, 42, eos, pad], [43, 44, 45, 46, eos]]), eos, pad


def test_gradient_checkpointing_runs_the_log_probs_without_a_cache_and_equal(params, items) -> None:
    reasoner = build_reasoner(params, 0)
    model, item = reasoner.model, items[0]
    ids, eos, pad = _ids(reasoner)
    assert item.inputs["input_ids"].device.type == "cpu"  # prompt inputs stay on the CPU until used
    encoding = encode_prompt(model, item.inputs)
    model.train()
    cached = encoded_logprobs(model, encoding, ids, eos_id=eos, pad_id=pad)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    assert not uses_kv_cache(model.model.language_model)
    logp = encoded_logprobs(model, encoding, ids, eos_id=eos, pad_id=pad)  # HF would hand back no cache here
    mask = ids != pad
    assert torch.allclose(logp[mask], cached[mask].detach(), atol=1e-5)
    logp[mask].sum().backward()
    grads = [p.grad for p in model.model.language_model.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
    model.gradient_checkpointing_disable()
    model.eval()


def test_the_prompt_cache_keeps_the_most_recent_prompts(params, items) -> None:
    reasoner = build_reasoner(params, 0)
    cache = PromptCache(eos_id=0, pad_id=0, max_prompts=2)
    for item in items[:3]:
        cache.encoding(reasoner.model, item.key, item.inputs)
    assert len(cache) == 2
    first = cache.encoding(reasoner.model, items[1].key, items[1].inputs)
    assert cache.encoding(reasoner.model, items[1].key, items[1].inputs) is first
    with pytest.raises(ValueError, match="max_prompts"):
        PromptCache(eos_id=0, pad_id=0, max_prompts=0)


def test_sampling_keeps_decoding_until_every_rank_is_done(params, items) -> None:
    reasoner = build_reasoner(params, 0)
    tok = reasoner.processor.tokenizer
    encoding = encode_prompt(reasoner.model, items[0].inputs)
    common = dict(num=2, max_new_tokens=12, eos_id=int(tok.eos_token_id), pad_id=int(tok.pad_token_id),
                  do_sample=False)
    # The greedy rows end with EOS at once when EOS is made the likeliest token: done after one token here.
    head = reasoner.model.lm_head
    with torch.no_grad():
        bias = torch.zeros(head.out_features)
        bias[int(tok.eos_token_id)] = 1e3
        head.bias = torch.nn.Parameter(bias, requires_grad=False)
    alone = sample_completions(reasoner.model, encoding, **common)
    calls: list[bool] = []

    def another_rank_is_slower(done: bool) -> bool:
        calls.append(done)
        return done and len(calls) >= 5

    synced = sample_completions(reasoner.model, encoding, **common, all_done=another_rank_is_slower)
    head.bias = None
    assert alone.shape[1] == 1 and synced.shape[1] == 5
    assert torch.equal(synced[:, :1], alone) and (synced[:, 1:] == int(tok.pad_token_id)).all()


def test_the_kl_reference_is_the_language_model_alone_and_scores_like_the_start(params, items) -> None:
    from omni_r1.rl.engine import ReferenceModel, build_engine

    reasoner = build_reasoner(params, 0)
    engine = build_engine(reasoner.model, params.train, total_steps=1, device=reasoner.device)
    reference = engine.reference
    assert isinstance(reference, ReferenceModel) and not any(p.requires_grad for p in reference.parameters())
    names = [name for name, _ in reference.named_parameters()]
    assert names and not any("visual" in n or "audio_tower" in n for n in names)  # no second set of towers
    ids, eos, pad = _ids(reasoner)
    encoding = encode_prompt(reasoner.model, items[0].inputs)
    with torch.no_grad():
        ours = encoded_logprobs(reference, encoding, ids, eos_id=eos, pad_id=pad)
        start = encoded_logprobs(reasoner.model, encoding, ids, eos_id=eos, pad_id=pad)
    assert torch.equal(ours, start)
