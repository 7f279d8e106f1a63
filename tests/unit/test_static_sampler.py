"""The static-cache batched sampler (omni_r1.rl.static_sampler) against the plain sampler (omni_r1.rl.policy).

Prompts are encoded by hand (text embeddings, 3-D rope positions whose sections differ, a nonzero rope
delta), which is what ``encode_prompt`` hands both samplers for a multimodal prompt, so the tiny thinker
needs no processor. Greedy ids must equal the plain path's token for token, group by group, when P
prompts of different lengths are decoded as one batch.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from omni_r1.models.shapes import random_thinker
from omni_r1.rl.policy import PromptEncoding, sample_completions
from omni_r1.rl.static_sampler import resolve_graph, sample_static

PAD = 2


def _encoding(model, length: int, seed: int, *, delta: int) -> PromptEncoding:
    generator = torch.Generator().manual_seed(seed)
    device = model.lm_head.weight.device
    ids = torch.randint(3, 400, (1, length), generator=generator).to(device)
    hidden = model.config.text_config.hidden_size
    features = torch.zeros(1, length, hidden, device=device, dtype=model.lm_head.weight.dtype)
    multimodal = torch.zeros(1, length, 1, dtype=torch.bool, device=device)
    multimodal[0, 1:4] = True  # three "video" positions whose embeddings come from the towers
    features[0, 1:4] = torch.randn(3, hidden, generator=generator).to(device, features.dtype)
    base = torch.arange(length, device=device)
    positions = torch.stack([base, base.clamp(max=length // 2), base.clamp(max=length // 3)])[:, None]
    return PromptEncoding(ids, features, multimodal, positions, delta)


def _greedy_equal(model, eos: int, lengths: tuple[int, ...], *, num: int, tokens: int, graph: str) -> None:
    encodings = [_encoding(model, n, i, delta=-(i + 1)) for i, n in enumerate(lengths)]
    common = dict(num=num, max_new_tokens=tokens, eos_id=eos, pad_id=PAD, do_sample=False)
    plain = [sample_completions(model, e, **common) for e in encodings]
    fast = sample_static(model, encodings, **common, graph=graph, check_every=5)
    assert [f.shape for f in fast] == [p.shape for p in plain]
    for f, p in zip(fast, plain):
        assert torch.equal(f.cpu(), p.cpu())


@pytest.fixture(scope="module")
def tiny():
    return random_thinker("tiny", seed=3)


def test_greedy_equals_the_plain_path_token_for_token(tiny) -> None:
    _greedy_equal(tiny, eos=1, lengths=(7, 12, 9), num=3, tokens=24, graph="off")


def test_groups_that_end_early_are_trimmed_like_the_plain_path(tiny) -> None:
    # EOS = the token the second prompt's greedy answer starts its 4th step with: that group ends early.
    second = _encoding(tiny, 12, 1, delta=-2)
    ids = sample_completions(tiny, second, num=1, max_new_tokens=6, eos_id=-1, pad_id=PAD, do_sample=False)
    eos = int(ids[0, 3])
    _greedy_equal(tiny, eos=eos, lengths=(7, 12, 9), num=2, tokens=20, graph="off")


def test_sampling_is_reproducible_per_group_and_pads_after_eos(tiny) -> None:
    encodings = [_encoding(tiny, n, i, delta=0) for i, n in enumerate((6, 10))]

    def draw(seed: int) -> list[torch.Tensor]:
        generators = [torch.Generator().manual_seed(seed + i) for i in range(2)]
        return sample_static(tiny, encodings, num=4, max_new_tokens=15, eos_id=5, pad_id=PAD, temperature=1.0,
                             top_p=0.95, generators=generators, graph="off")

    first, again, other = draw(0), draw(0), draw(100)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not all(torch.equal(a, b) for a, b in zip(first, other))
    for group in first:
        assert group.shape[0] == 4
        for row in group.tolist():
            if 5 in row:
                assert all(t == PAD for t in row[row.index(5) + 1:])


def test_non_finite_logits_stop_with_the_plain_paths_error(tiny) -> None:
    encoding = _encoding(tiny, 6, 0, delta=0)
    head = tiny.lm_head
    saved = head.weight.data.clone()
    head.weight.data[7] = float("nan")
    try:
        with pytest.raises(FloatingPointError, match="not finite"):
            sample_static(tiny, [encoding], num=2, max_new_tokens=4, eos_id=1, pad_id=PAD, graph="off")
    finally:
        head.weight.data.copy_(saved)


def test_graph_modes_resolve_per_device(tiny) -> None:
    assert resolve_graph("auto", torch.device("cpu"), tiny) == "off"
    with pytest.raises(ValueError, match="decode_graph"):
        resolve_graph("cuda_graph", torch.device("cpu"), tiny)
    with pytest.raises(ValueError, match="decode_graph"):
        resolve_graph("sometimes", torch.device("cpu"), tiny)


@pytest.mark.gpu
@pytest.mark.parametrize("graph", ["off", "cuda_graph"])
def test_greedy_equals_the_plain_path_on_the_gpu(graph: str) -> None:
    model = random_thinker("tiny", device="cuda", dtype=torch.float32, seed=3)
    _greedy_equal(model, eos=1, lengths=(7, 12, 9), num=8, tokens=40, graph=graph)


# ----------------------------------------------------------------------------------------------- behind System 1

from tests.unit.test_trainer import _one_thread, _trainer, items, params  # noqa: E402,F401  (shared fixtures)


def _static(params):
    import dataclasses

    return dataclasses.replace(params, global_reasoning=dataclasses.replace(params.global_reasoning, sampler="static"))


def test_held_out_and_predict_answers_are_the_same_by_either_sampler(params, items) -> None:
    from omni_r1.rl.policy import PromptCache
    from omni_r1.rl.run import build_reasoner
    from omni_r1.rl.trainer import generate

    plain = build_reasoner(params, 0)
    static = build_reasoner(_static(params), 0)  # the same seed: the same weights
    tok = plain.processor.tokenizer
    prompts = PromptCache(eos_id=int(tok.eos_token_id), pad_id=int(tok.pad_token_id))
    for item in items:  # generate -> GlobalReasoner.sample_ids, the held-out evaluation's and predict's sampler
        want = generate(plain, prompts, item, num=1, do_sample=False, seed=0, max_new_tokens=20)
        assert torch.equal(generate(static, prompts, item, num=1, do_sample=False, seed=0, max_new_tokens=20), want)


def test_a_training_step_samples_every_group_in_one_static_batch(params, items, tmp_path, monkeypatch) -> None:
    import omni_r1.rl.static_sampler as static_sampler

    calls: list[int] = []
    original = static_sampler.sample_static

    def counted(model, encodings, **kwargs):
        calls.append(len(encodings))
        return original(model, encodings, **kwargs)

    monkeypatch.setattr(static_sampler, "sample_static", counted)
    trainer = _trainer(_static(params), items, tmp_path)
    values = trainer.train_step()
    size = params.train.group_size
    assert calls == [params.train.prompts_per_step]  # P prompts, one batched decode
    assert np.isfinite(values["reward"]) and values["seconds_rollout"] > 0
    assert 0 < values["response_length"] <= params.train.max_new_tokens and size == 4
