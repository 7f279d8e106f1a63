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
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from omni_r1.rl.grpo import completion_mask, token_logprobs

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
    with torch.no_grad():
        embeds = inner.get_input_embeddings()(ids)
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


def _encoded_prompt_forward(model: Any, encoding: PromptEncoding) -> Any:
    """The language model over one encoded prompt (batch 1), keeping its cache: text embeddings from the
    model (trainable), tower outputs from the encoding."""
    inner = model.model
    embeds = torch.where(encoding.multimodal, encoding.features, inner.get_input_embeddings()(encoding.input_ids))
    ones = torch.ones(encoding.input_ids.shape, dtype=torch.long, device=encoding.input_ids.device)
    return inner.language_model(inputs_embeds=embeds, position_ids=encoding.position_ids, attention_mask=ones,
                                use_cache=True)


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
