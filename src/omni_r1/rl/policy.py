"""The policy's side of GRPO: one prompt's cached inputs, G completions, and their token log-probs.

Every rollout of a group shares one prompt (the video, the audio and the text), so a group is a
batch of G rows that repeat the prompt and differ only in the completion. ``group_inputs`` builds
that batch from the single-prompt inputs of ``GlobalReasoner.build_inputs`` and the completion ids
of ``GlobalReasoner.generate_ids``; ``completion_logprobs`` runs the thinker on it and returns the
log-probability of each completion token (the logits at position ``L - 1 + j`` predict completion
token ``j``). Shapes: prompt length L, completion length C, group size G.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from omni_r1.rl.grpo import completion_mask, token_logprobs
from omni_r1.systems.system1 import (  # noqa: F401  (the engine's names, re-exported for the trainer)
    PromptEncoding, _encoded_prompt_forward, _on_model, encode_prompt, sample_completions, top_p_filter,
    towers_frozen,
)  # fmt: skip

# Per-sample tensors of build_inputs that are concatenated along dim 0 for a batch of G rows.
_REPEATED_ROWS = ("video_grid_thw", "video_second_per_grid", "input_features", "feature_attention_mask")


def group_inputs(prompt_inputs: dict[str, Tensor], completion_ids: Tensor, *, eos_id: int,
                 pad_id: int | None) -> dict[str, Tensor]:
    """Model inputs for G rows of (prompt, completion): ``input_ids`` / ``attention_mask`` (G, L + C).

    ``prompt_inputs`` holds one prompt (``input_ids`` (1, L)); ``completion_ids`` (G, C). Tokens after
    a completion's first EOS are masked out of the attention, as are pads.
    """
    prompt_ids = prompt_inputs["input_ids"]
    if prompt_ids.shape[0] != 1:
        raise ValueError(f"group_inputs takes one prompt, got input_ids of shape {tuple(prompt_ids.shape)}")
    groups = completion_ids.shape[0]
    mask = completion_mask(completion_ids, eos_id=eos_id, pad_id=pad_id).to(prompt_inputs["attention_mask"].dtype)
    batch: dict[str, Tensor] = {
        "input_ids": torch.cat([prompt_ids.expand(groups, -1), completion_ids.to(prompt_ids.device)], dim=1),
        "attention_mask": torch.cat([prompt_inputs["attention_mask"].expand(groups, -1), mask.to(prompt_ids.device)],
                                    dim=1),
        # The video patches of G identical videos, row after row, as the processor would batch them.
        "pixel_values_videos": prompt_inputs["pixel_values_videos"].repeat(groups, 1),
    }
    for name in _REPEATED_ROWS:
        if name in prompt_inputs:
            value = prompt_inputs[name]
            batch[name] = value.repeat(groups, *([1] * (value.dim() - 1)))
    return batch


def encoded_logprobs(model: Any, encoding: PromptEncoding, completion_ids: Tensor, *, eos_id: int,
                     pad_id: int | None) -> Tensor:
    """``completion_logprobs`` from a ``PromptEncoding``: only the language model and its head run.

    The prompt runs once and its cache is shared by the G completions; under gradient checkpointing in
    training (no cache) the G full rows run instead, with the same numbers."""
    completion_ids = completion_ids.to(encoding.input_ids.device)
    if not uses_kv_cache(model.model.language_model):
        return _encoded_full_rows(model, encoding, completion_ids, eos_id=eos_id, pad_id=pad_id)
    prompt_out = _encoded_prompt_forward(model, encoding)
    return _completion_part(model, prompt_out, completion_ids.to(encoding.input_ids.device),
                            encoding.input_ids.shape[1] + encoding.rope_delta, eos_id=eos_id, pad_id=pad_id,
                            language_model=model.model.language_model)


def _completion_part(model: Any, prompt_out: Any, completion_ids: Tensor, start: Any, *, eos_id: int,
                     pad_id: int | None, language_model: Any) -> Tensor:
    """Run the G completions on the prompt's repeated cache; log-probs (G, C) of their tokens."""
    groups, steps = completion_ids.shape
    cache = prompt_out.cache
    length = cache.get_seq_length()
    cache.batch_repeat_interleave(groups)
    device = completion_ids.device
    mask = completion_mask(completion_ids, eos_id=eos_id, pad_id=pad_id).long()
    attention = torch.cat([torch.ones((groups, length), dtype=torch.long, device=device), mask], dim=1)
    positions = (start + torch.arange(steps, device=device)).view(1, 1, -1).expand(3, groups, -1)
    completion_out = language_model(input_ids=completion_ids, attention_mask=attention, position_ids=positions,
                                    cache=cache, use_cache=True)
    hidden = torch.cat([prompt_out.last_hidden_state[:, -1:].expand(groups, -1, -1),
                        completion_out.last_hidden_state[:, :-1]], dim=1)
    return head_logprobs(model.lm_head, hidden, completion_ids)


LOGPROB_CHUNK_TOKENS = 1024  # positions per lm_head chunk: fp32 logits of 1024 x 152k = 0.6 GB at a time


def head_logprobs(lm_head: Any, hidden: Tensor, tokens: Tensor, *, chunk: int = LOGPROB_CHUNK_TOKENS) -> Tensor:
    """Log-probs (N, L) float32 of ``tokens`` (N, L) from the hidden states (N, L, H) that predict them.

    The vocabulary projection runs ``chunk`` positions at a time, and with gradients each chunk is
    recomputed in backward (activation checkpointing), so neither the forward nor the saved tensors
    ever hold the full (N, L, V) logits: 8 x 800 positions x 152k vocabulary would be 3.9 GB in
    float32 per tensor. The numbers equal ``token_logprobs(lm_head(hidden), tokens)``.
    """
    if chunk < 1:
        raise ValueError(f"chunk={chunk} must be at least 1 position")
    rows, length = tokens.shape
    flat_hidden = hidden.reshape(rows * length, -1)
    flat_tokens = tokens.reshape(rows * length, 1)
    parts = []
    for start in range(0, rows * length, chunk):
        piece = (flat_hidden[start:start + chunk], flat_tokens[start:start + chunk])
        if torch.is_grad_enabled() and flat_hidden.requires_grad:
            parts.append(checkpoint(_chunk_logprobs, lm_head, *piece, use_reentrant=False))
        else:
            parts.append(_chunk_logprobs(lm_head, *piece))
    return torch.cat(parts).reshape(rows, length)


def _chunk_logprobs(lm_head: Any, hidden: Tensor, tokens: Tensor) -> Tensor:
    return token_logprobs(lm_head(hidden)[None], tokens.T)[0]


def uses_kv_cache(language_model: Any) -> bool:
    """Whether a forward keeps its key/value cache: HF turns the cache off in training under gradient
    checkpointing, so the shared-prompt path (which repeats the prompt's cache) cannot run then."""
    return not (getattr(language_model, "gradient_checkpointing", False) and language_model.training)


def _encoded_full_rows(model: Any, encoding: PromptEncoding, completion_ids: Tensor, *, eos_id: int,
                       pad_id: int | None) -> Tensor:
    """``encoded_logprobs`` without a cache: G full (prompt + completion) rows through the language model,
    the prompt's tower outputs taken from the encoding. For gradient checkpointing (no cache in training)."""
    inner = model.model
    groups, steps = completion_ids.shape
    length = encoding.input_ids.shape[1]
    device = encoding.input_ids.device
    prompt = torch.where(encoding.multimodal, encoding.features, inner.get_input_embeddings()(encoding.input_ids))
    embeds = torch.cat([prompt.expand(groups, -1, -1), inner.get_input_embeddings()(completion_ids)], dim=1)
    mask = completion_mask(completion_ids, eos_id=eos_id, pad_id=pad_id).long()
    attention = torch.cat([torch.ones((groups, length), dtype=torch.long, device=device), mask], dim=1)
    after = (length + encoding.rope_delta + torch.arange(steps, device=device)).view(1, 1, -1).expand(3, groups, -1)
    positions = torch.cat([encoding.position_ids.expand(-1, groups, -1), after], dim=2)
    out = inner.language_model(inputs_embeds=embeds, attention_mask=attention, position_ids=positions, use_cache=False)
    return head_logprobs(model.lm_head, out.last_hidden_state[:, length - 1 : -1], completion_ids)


def completion_logprobs(model: Any, prompt_inputs: dict[str, Tensor], completion_ids: Tensor, *, eos_id: int,
                        pad_id: int | None) -> Tensor:
    """Log-probabilities (G, C) float32 of each completion token under ``model`` (gradients flow).

    The shared prompt runs once (batch 1) and its key/value cache is repeated for the G completions,
    which then attend to it: the same numbers as a batch of G full rows (``full_completion_logprobs``,
    tested equal), for about 1/G of the prompt's cost. Gradients flow through the cached keys and
    values into the prompt's computation, so nothing is detached.
    """
    inner = model.model
    prompt_inputs = _on_model(model, prompt_inputs)
    if not uses_kv_cache(inner.language_model):
        return full_completion_logprobs(model, prompt_inputs, completion_ids, eos_id=eos_id, pad_id=pad_id)
    length = prompt_inputs["input_ids"].shape[1]
    prompt_out = inner(**prompt_inputs, use_cache=True)
    # Text after the prompt continues the multimodal rope positions: the prompt's largest position + 1 + j,
    # which get_rope_index records as rope_deltas (= max position + 1 - L).
    start = length + inner.rope_deltas.reshape(-1)[0]
    return _completion_part(model, prompt_out, completion_ids.to(prompt_inputs["input_ids"].device), start,
                            eos_id=eos_id, pad_id=pad_id, language_model=inner.language_model)


def full_completion_logprobs(model: Any, prompt_inputs: dict[str, Tensor], completion_ids: Tensor, *, eos_id: int,
                             pad_id: int | None) -> Tensor:
    """``completion_logprobs`` the plain way: G full (prompt + completion) rows through the thinker."""
    batch = group_inputs(_on_model(model, prompt_inputs), completion_ids, eos_id=eos_id, pad_id=pad_id)
    prompt_length = prompt_inputs["input_ids"].shape[1]
    logits = model(**batch, use_cache=False).logits
    completion_logits = logits[:, prompt_length - 1 : -1]
    return token_logprobs(completion_logits, completion_ids.to(completion_logits.device))


def pad_completions(rows: list[list[int]], *, pad_id: int) -> Tensor:
    """Token id lists -> (G, C) long tensor, right-padded with ``pad_id``."""
    width = max((len(r) for r in rows), default=0)
    if width == 0:
        raise ValueError("every completion is empty; a completion needs at least its EOS token")
    out = torch.full((len(rows), width), pad_id, dtype=torch.long)
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.tensor(row, dtype=torch.long)
    return out


MAX_CACHED_PROMPTS = 16  # a step's prompts (per rank) and the held-out set's, with room to spare


class PromptCache:
    """Log-probs of completions for many prompts, keeping each prompt's ``PromptEncoding`` (frozen towers).

    With trainable towers it falls back to ``completion_logprobs`` (the towers run every time).
    The encoding depends only on the frozen towers, so the policy and its frozen reference share it.
    """

    def __init__(self, *, eos_id: int, pad_id: int | None, max_prompts: int = MAX_CACHED_PROMPTS) -> None:
        if max_prompts < 1:
            raise ValueError(f"max_prompts={max_prompts} must be at least 1")
        self.eos_id, self.pad_id, self.max_prompts = eos_id, pad_id, max_prompts
        self._encodings: OrderedDict[str, PromptEncoding] = OrderedDict()

    def logprobs(self, model: Any, key: str, prompt_inputs: dict[str, Tensor], completion_ids: Tensor) -> Tensor:
        """(G, C) log-probs of ``completion_ids`` after the prompt ``key`` under ``model``."""
        if not towers_frozen(model):
            return completion_logprobs(model, prompt_inputs, completion_ids, eos_id=self.eos_id, pad_id=self.pad_id)
        return encoded_logprobs(model, self.encoding(model, key, prompt_inputs), completion_ids, eos_id=self.eos_id,
                                pad_id=self.pad_id)

    def encoding(self, model: Any, key: str, prompt_inputs: dict[str, Tensor]) -> PromptEncoding:
        """The prompt's cached encoding (computed on first use); the least recently used beyond
        ``max_prompts`` is dropped, so a run's device memory does not grow with its prompts."""
        if key in self._encodings:
            self._encodings.move_to_end(key)
            return self._encodings[key]
        encoding = self._encodings[key] = encode_prompt(model, prompt_inputs)
        while len(self._encodings) > self.max_prompts:
            self._encodings.popitem(last=False)
        return encoding

    def __len__(self) -> int:
        return len(self._encodings)
