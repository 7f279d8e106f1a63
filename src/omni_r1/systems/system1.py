"""The System 1 engine: prompt encoding with the frozen towers cached, and sampling from it.

Training (GRPO rollouts), held-out evaluation and predict all answer through these functions, so the
policy that predict measures is sampled exactly as GRPO optimised it:

- ``encode_prompt``: the frozen vision and audio towers and the multimodal rope index run once per
  prompt (``PromptEncoding``), on the model's device whatever device the inputs were kept on;
- ``sample_completions``: G completions of one encoded prompt, greedy or temperature then top-p under a
  seeded generator, the prompt's key/value cache shared by the G rows (greedy equals transformers'
  ``generate`` token for token, tested), optionally synchronised across ranks (``all_done``);
- the token log-probs of completions live beside the GRPO math (``omni_r1.rl.policy``), on the same
  ``PromptEncoding``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor


@dataclass(frozen=True)
class PromptEncoding:
    """What the frozen towers make of one prompt, computed once: shapes for prompt length L, hidden H.

    ``features`` (1, L, H) holds the audio and video embeddings at their placeholder positions (zeros
    elsewhere), ``multimodal`` (1, L, 1) bool marks those positions, ``position_ids`` (3, 1, L) are the
    multimodal rope positions and ``rope_delta`` the offset of the text that follows the prompt.
    """

    input_ids: Tensor
    features: Tensor
    multimodal: Tensor
    position_ids: Tensor
    rope_delta: int


def _on_model(model: Any, inputs: dict[str, Tensor]) -> dict[str, Tensor]:
    """Prompt inputs (kept on the CPU until used) on the device of the model's embedding."""
    device = model.model.get_input_embeddings().weight.device
    return {name: tensor.to(device) for name, tensor in inputs.items()}


def towers_frozen(model: Any) -> bool:
    """True when neither the vision nor the audio tower has a trainable parameter."""
    inner = model.model
    towers = [getattr(inner, name) for name in ("visual", "audio_tower") if hasattr(inner, name)]
    return all(not p.requires_grad for tower in towers for p in tower.parameters())


def encode_prompt(model: Any, prompt_inputs: dict[str, Tensor]) -> PromptEncoding:
    """Run the frozen towers and the rope index once for a prompt (batch 1); no gradients."""
    if not towers_frozen(model):
        raise ValueError("encode_prompt caches tower outputs, which is only right when the towers are frozen; "
                         "set global_reasoning.freeze_vision/freeze_audio to true or run without the cache")
    inner = model.model
    prompt_inputs = _on_model(model, prompt_inputs)
    ids = prompt_inputs["input_ids"]
    embedding = inner.get_input_embeddings()
    with torch.no_grad():
        # Only the shape and dtype of the text embeddings are needed here, so the embedding is not run: under
        # DeepSpeed ZeRO-3 it is partitioned and every forward of it is a collective (an all-gather), while
        # encoding runs on one rank only when that rank's prompt cache misses. A forward here would leave the
        # other ranks waiting (tests/unit/test_multirank.py hung exactly so). ``embedding_dim`` and the
        # weight's dtype are whole on every rank even when the weight's data is partitioned.
        embeds = torch.zeros((*ids.shape, embedding.embedding_dim), dtype=embedding.weight.dtype, device=ids.device)
        features = torch.zeros_like(embeds)
        multimodal = torch.zeros_like(embeds, dtype=torch.bool)
        audio_lengths = None
        if "input_features" in prompt_inputs:
            audio = inner.get_audio_features(prompt_inputs["input_features"], prompt_inputs["feature_attention_mask"],
                                             return_dict=True).last_hidden_state.to(embeds.dtype)
            _, _, audio_mask = inner.get_placeholder_mask(ids, inputs_embeds=embeds)
            features = features.masked_scatter(audio_mask, audio)
            multimodal |= audio_mask
            audio_lengths = prompt_inputs["feature_attention_mask"].sum(dim=1)
        video = torch.cat(list(inner.get_video_features(prompt_inputs["pixel_values_videos"],
                                                        prompt_inputs["video_grid_thw"],
                                                        return_dict=True).pooler_output), dim=0).to(embeds.dtype)
        _, video_mask, _ = inner.get_placeholder_mask(ids, inputs_embeds=embeds, video_features=video)
        features = features.masked_scatter(video_mask, video)
        multimodal |= video_mask
        position_ids, deltas = inner.get_rope_index(ids, None, prompt_inputs["video_grid_thw"],
                                                    prompt_inputs["attention_mask"], False, audio_lengths,
                                                    prompt_inputs.get("video_second_per_grid"))
    return PromptEncoding(ids, features, multimodal[..., :1], position_ids, int(deltas.reshape(-1)[0]))


def _encoded_prompt_forward(model: Any, encoding: PromptEncoding) -> Any:
    """The language model over one encoded prompt (batch 1), keeping its cache: text embeddings from the
    model (trainable), tower outputs from the encoding."""
    inner = model.model
    embeds = torch.where(encoding.multimodal, encoding.features, inner.get_input_embeddings()(encoding.input_ids))
    ones = torch.ones(encoding.input_ids.shape, dtype=torch.long, device=encoding.input_ids.device)
    return inner.language_model(inputs_embeds=embeds, position_ids=encoding.position_ids, attention_mask=ones,
                                use_cache=True)


def top_p_filter(logits: Tensor, top_p: float) -> Tensor:
    """Logits (N, V) with every token outside the smallest set of probability >= ``top_p`` set to -inf.

    The most likely token always stays, as in transformers' ``TopPLogitsWarper``.
    """
    if top_p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    # Drop a token when the tokens before it already reach top_p.
    drop_sorted = (cumulative - sorted_logits.softmax(dim=-1)) >= top_p
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


@torch.no_grad()
def sample_completions(model: Any, encoding: PromptEncoding, *, num: int, max_new_tokens: int, eos_id: int,
                       pad_id: int, do_sample: bool = True, temperature: float = 1.0, top_p: float = 1.0,
                       generator: torch.Generator | None = None,
                       all_done: Callable[[bool], bool] | None = None) -> Tensor:
    """``num`` completions (num, C) of one encoded prompt, padded with ``pad_id`` after each EOS.

    The prompt runs once and its cache is repeated for the ``num`` rows (``generate`` with
    ``num_return_sequences`` would run it ``num`` times). Sampling is temperature then top-p, as
    Omni-R1 samples (1.0, 0.95); ``generator`` makes it reproducible and resumable.

    ``all_done`` turns "this process's rows are finished" into "every rank's are" (a collective): under
    ZeRO-3 each forward gathers the partitioned weights from all ranks, so a rank that stopped early
    would leave the others waiting. Finished rows keep decoding pads until all ranks are done.
    """
    language_model = model.model.language_model
    length = encoding.input_ids.shape[1]
    device = encoding.input_ids.device
    out = _encoded_prompt_forward(model, encoding)
    cache = out.cache
    cache.batch_repeat_interleave(num)
    logits = model.lm_head(out.last_hidden_state[:, -1]).float().expand(num, -1)
    attention = torch.ones((num, length), dtype=torch.long, device=device)
    finished = torch.zeros(num, dtype=torch.bool, device=device)
    tokens: list[Tensor] = []
    for step in range(max_new_tokens):
        if not bool(torch.isfinite(logits).all()):
            raise FloatingPointError(f"the policy's logits are not finite at completion token {step}; "
                                     "its weights hold NaN or inf (the last update diverged)")
        if do_sample:
            probs = top_p_filter(logits / temperature, top_p).softmax(dim=-1)
            chosen = torch.multinomial(probs, 1, generator=generator).squeeze(1)
        else:
            chosen = logits.argmax(dim=-1)
        chosen = torch.where(finished, torch.full_like(chosen, pad_id), chosen)
        tokens.append(chosen)
        finished |= chosen == eos_id
        done = bool(finished.all())
        if (all_done(done) if all_done is not None else done) or step == max_new_tokens - 1:
            break
        attention = torch.cat([attention, torch.ones((num, 1), dtype=torch.long, device=device)], dim=1)
        position = torch.full((3, num, 1), length + encoding.rope_delta + step, dtype=torch.long, device=device)
        out = language_model(input_ids=chosen[:, None], attention_mask=attention, position_ids=position, cache=cache,
                             use_cache=True)
        logits = model.lm_head(out.last_hidden_state[:, -1]).float()
    return torch.stack(tokens, dim=1)
