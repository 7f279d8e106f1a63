"""The fast rollout path: the G completions of P prompts decoded as one batch on a preallocated KV cache.

``sample_static`` is the batched, static-shape twin of ``omni_r1.rl.policy.sample_completions``
(``global_reasoning.sampler: static``). Each prompt runs once through the language model (batch 1,
the same prefill as the plain path) and its keys and values are copied into the rows of its group in
one static cache of ``P * G`` rows and ``L_max + max_new_tokens`` slots per layer. Slot layout:
prompt ``p`` fills slots ``[0, L_p)`` of its rows, generated token ``s`` of every row lands in slot
``L_max + s``, so one scalar write index serves the whole batch and a row's attention mask is
``slot < L_p or L_max <= slot <= L_max + s``. Positions continue each prompt's multimodal rope:
``L_p + rope_delta_p + s``, the same for the three rope sections (text after the prompt), so the
rope is the plain 1-D one. Grouped-query attention reads the cache as it is (the queries of a key/value
head's group are that head's query rows), never a repeated copy of it.

One decode step (``StaticDecoder.step``) is pure tensor work over the model's own modules (norms,
projections, MLP, head; attention by ``scaled_dot_product_attention`` on the static cache): static
shapes, no Python per token beyond sampling, so it can be captured once as a CUDA graph and replayed
(``graph="cuda_graph"``) or compiled (``graph="compile"``). ``graph="auto"`` captures on CUDA and
runs eagerly on CPU (graphs do not pay there) and under ZeRO-3 (whose forwards gather weights).

Sampling is per group, each with its own ``torch.Generator``, temperature then top-p as the plain path.
Host syncs (every row done? all logits finite?) happen every ``check_every`` tokens, not per token; the
extra tokens decoded past the end are pads and are trimmed, so each group's ids have the length the plain
path gives them. Greedy output equals the plain path token for token (tests/unit/test_static_sampler.py).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor
from torch.nn import functional as F

from omni_r1.rl.policy import PromptEncoding, top_p_filter

GraphMode = Literal["auto", "off", "cuda_graph", "compile"]
GRAPH_MODES: tuple[str, ...] = ("auto", "off", "cuda_graph", "compile")
CHECK_EVERY = 16  # tokens between host syncs (done? finite?): a sync per token costs more than 15 pad steps


@dataclass(frozen=True)
class PromptKV:
    """One prompt after its prefill: per layer keys/values (1, kv_heads, L, head_dim), the logits (V,) of
    the first completion token, its length L and the position of the first completion token."""

    keys: tuple[Tensor, ...]
    values: tuple[Tensor, ...]
    first_logits: Tensor
    length: int
    next_position: int


def _output_cache(output: Any) -> Any:
    """The KV cache of a Hugging Face model output (``cache`` in recent transformers, ``past_key_values`` before)."""
    cache = getattr(output, "cache", None)
    return cache if cache is not None else output.past_key_values


def _layer_kv(cache: Any, index: int) -> tuple[Tensor, Tensor]:
    """Keys and values of one layer of a ``DynamicCache`` (``layers[i].keys`` in transformers 5, lists before)."""
    layers = getattr(cache, "layers", None)
    if layers is not None:
        return layers[index].keys, layers[index].values
    return cache.key_cache[index], cache.value_cache[index]


def prefill(model: Any, encoding: PromptEncoding) -> PromptKV:
    """The language model over one encoded prompt (batch 1), as ``policy.sample_completions`` runs it."""
    inner = model.model
    embeds = torch.where(encoding.multimodal, encoding.features, inner.get_input_embeddings()(encoding.input_ids))
    ones = torch.ones(encoding.input_ids.shape, dtype=torch.long, device=encoding.input_ids.device)
    out = inner.language_model(inputs_embeds=embeds, position_ids=encoding.position_ids, attention_mask=ones,
                               use_cache=True)
    cache = _output_cache(out)
    layers = len(inner.language_model.layers)
    pairs = [_layer_kv(cache, i) for i in range(layers)]
    length = int(encoding.input_ids.shape[1])
    return PromptKV(tuple(k for k, _ in pairs), tuple(v for _, v in pairs),
                    model.lm_head(out.last_hidden_state[0, -1]).float(), length, length + int(encoding.rope_delta))


def _rotate_half(x: Tensor) -> Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def zero3_partitioned(model: Any) -> bool:
    """Whether DeepSpeed ZeRO-3 holds the model's weights partitioned (its forwards gather them)."""
    return any(hasattr(p, "ds_id") for p in model.parameters())


def resolve_graph(mode: str, device: torch.device, model: Any) -> str:
    """``auto`` -> ``cuda_graph`` on CUDA, ``off`` on CPU or under ZeRO-3; other modes are checked."""
    if mode not in GRAPH_MODES:
        raise ValueError(f"global_reasoning.decode_graph={mode!r} is unknown; use one of {GRAPH_MODES}")
    partitioned = zero3_partitioned(model)
    if mode == "auto":
        return "cuda_graph" if device.type == "cuda" and not partitioned else "off"
    if mode in ("cuda_graph", "compile") and partitioned:
        raise ValueError(f"global_reasoning.decode_graph={mode!r} cannot wrap a ZeRO-3 model (its forwards gather "
                         "weights from every rank); set it to 'auto' or 'off'")
    if mode == "cuda_graph" and device.type != "cuda":
        raise ValueError(f"global_reasoning.decode_graph='cuda_graph' needs a CUDA device, the policy is on {device}; "
                         "set it to 'auto' or 'off'")
    return mode


class StaticDecoder:
    """A static KV cache of ``batch`` rows and one decode step over it (see the module docstring)."""

    def __init__(self, model: Any, prompts: Sequence[PromptKV], rows_per_prompt: int, max_new_tokens: int) -> None:
        language_model = model.model.language_model
        config = language_model.config
        if getattr(config, "use_sliding_window", False):
            raise ValueError("the policy's text config uses a sliding window, which the static sampler does not "
                             "implement; set global_reasoning.sampler to 'plain'")
        self.layers = list(language_model.layers)
        self.norm, self.head = language_model.norm, model.lm_head
        self.embed = model.model.get_input_embeddings()
        rotary = language_model.rotary_emb
        self.inv_freq = rotary.inv_freq.float()
        self.rope_scaling = float(getattr(rotary, "attention_scaling", 1.0))
        first = prompts[0].keys[0]
        self.dtype, self.device = first.dtype, first.device
        self.batch = rows_per_prompt * len(prompts)
        self.prompt_slots = max(p.length for p in prompts)
        slots = self.prompt_slots + max_new_tokens
        kv_heads, head_dim = first.shape[1], first.shape[3]
        shape = (self.batch, kv_heads, slots, head_dim)
        self.keys = [torch.zeros(shape, dtype=self.dtype, device=self.device) for _ in self.layers]
        self.values = [torch.zeros(shape, dtype=self.dtype, device=self.device) for _ in self.layers]
        lengths = []
        for index, prompt in enumerate(prompts):
            rows = slice(index * rows_per_prompt, (index + 1) * rows_per_prompt)
            for layer in range(len(self.layers)):
                self.keys[layer][rows, :, : prompt.length] = prompt.keys[layer][0]
                self.values[layer][rows, :, : prompt.length] = prompt.values[layer][0]
            lengths += [prompt.length] * rows_per_prompt
        self.prompt_lengths = torch.tensor(lengths, dtype=torch.long, device=self.device)
        self.slot_index = torch.arange(slots, device=self.device)

    @torch.no_grad()
    def step(self, tokens: Tensor, positions: Tensor, slot: Tensor) -> Tensor:
        """Feed ``tokens`` (B,) at rope ``positions`` (B,) into cache slot ``slot`` (0-dim); logits (B, V) float32."""
        hidden = self.embed(tokens)[:, None]
        freqs = positions[:, None].float() * self.inv_freq.to(positions.device)
        angles = torch.cat((freqs, freqs), dim=-1)
        cos = (angles.cos() * self.rope_scaling).to(hidden.dtype)[:, None, None, :]
        sin = (angles.sin() * self.rope_scaling).to(hidden.dtype)[:, None, None, :]
        valid = (self.slot_index < self.prompt_lengths[:, None]) | (
            (self.slot_index >= self.prompt_slots) & (self.slot_index <= slot))
        mask = valid[:, None, None, :]
        index = slot.reshape(1)
        for layer, keys, values in zip(self.layers, self.keys, self.values, strict=True):
            attention = layer.self_attn
            x = layer.input_layernorm(hidden)
            rows = x.shape[0]
            q = attention.q_proj(x).view(rows, 1, -1, attention.head_dim).transpose(1, 2)
            k = attention.k_proj(x).view(rows, 1, -1, attention.head_dim).transpose(1, 2)
            v = attention.v_proj(x).view(rows, 1, -1, attention.head_dim).transpose(1, 2)
            q = q * cos + _rotate_half(q) * sin
            k = k * cos + _rotate_half(k) * sin
            keys.index_copy_(2, index, k)
            values.index_copy_(2, index, v)
            # Grouped-query attention without copying the cache: the one query per head of each key/value head's
            # group becomes that group's query rows (HF's repeat_kv maps head h to key/value head h // group).
            grouped = q.reshape(rows, keys.shape[1], -1, attention.head_dim)
            out = F.scaled_dot_product_attention(grouped, keys, values, attn_mask=mask, scale=attention.scaling)
            hidden = hidden + attention.o_proj(out.reshape(rows, 1, -1))
            hidden = hidden + layer.mlp(layer.post_attention_layernorm(hidden))
        return self.head(self.norm(hidden)[:, 0]).float()


class _GraphedStep:
    """``StaticDecoder.step`` captured once as a CUDA graph (optionally compiled first) and replayed per token.

    The first call runs the step eagerly a few times on a side stream (warm-up, as CUDA graph capture
    requires; the step is idempotent for a fixed input: it rewrites the same slot), then captures it."""

    def __init__(self, step: Callable[[Tensor, Tensor, Tensor], Tensor], *, compile_first: bool) -> None:
        self.step = torch.compile(step, dynamic=False) if compile_first else step
        self.graph: torch.cuda.CUDAGraph | None = None
        self.inputs: tuple[Tensor, Tensor, Tensor] | None = None
        self.output: Tensor | None = None

    def __call__(self, tokens: Tensor, positions: Tensor, slot: Tensor) -> Tensor:
        if self.graph is None:
            self.inputs = (tokens.clone(), positions.clone(), slot.clone())
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                for _ in range(3):
                    self.step(*self.inputs)
            torch.cuda.current_stream().wait_stream(stream)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.output = self.step(*self.inputs)
        assert self.inputs is not None and self.output is not None
        for buffer, value in zip(self.inputs, (tokens, positions, slot), strict=True):
            buffer.copy_(value)
        self.graph.replay()
        return self.output


def _decode_step(decoder: StaticDecoder, mode: str) -> Callable[[Tensor, Tensor, Tensor], Tensor]:
    if mode == "off":
        return decoder.step
    if mode == "compile" and decoder.device.type != "cuda":
        return torch.compile(decoder.step, dynamic=False)
    return _GraphedStep(decoder.step, compile_first=mode == "compile")


def _choose(logits: Tensor, groups: int, generators: Sequence[torch.Generator | None], *, do_sample: bool,
            temperature: float, top_p: float) -> Tensor:
    """One token per row: argmax, or temperature then top-p sampling with each group's generator."""
    if not do_sample:
        return logits.argmax(dim=-1)
    probs = top_p_filter(logits / temperature, top_p).softmax(dim=-1)
    chunks = probs.chunk(groups)
    return torch.cat([torch.multinomial(chunk, 1, generator=generator).squeeze(1)
                      for chunk, generator in zip(chunks, generators, strict=True)])


def _trim(ids: Tensor, *, eos_id: int) -> Tensor:
    """A group's ids cut where its last row finished (the plain path's length): pads after that are dropped."""
    hit = ids == eos_id
    steps = ids.shape[1]
    first = torch.where(hit.any(dim=1), hit.float().argmax(dim=1), torch.full_like(hit[:, 0], steps - 1,
                                                                                    dtype=torch.long))
    return ids[:, : int(first.max()) + 1]


@torch.no_grad()
def sample_static(model: Any, encodings: Sequence[PromptEncoding], *, num: int, max_new_tokens: int, eos_id: int,
                  pad_id: int, do_sample: bool = True, temperature: float = 1.0, top_p: float = 1.0,
                  generators: Sequence[torch.Generator | None] | None = None, graph: str = "auto",
                  check_every: int = CHECK_EVERY, all_done: Callable[[bool], bool] | None = None) -> list[Tensor]:
    """``num`` completions for each of the P encoded prompts, decoded as one batch: a list of P (num, C_p) tensors,
    padded with ``pad_id`` after each EOS, as ``policy.sample_completions`` returns them per prompt.

    ``generators`` (one per prompt) make sampling reproducible per group; ``all_done`` is the multi-rank
    collective of ``sample_completions`` (called every ``check_every`` tokens, the same on every rank)."""
    if not encodings:
        return []
    if check_every < 1 or max_new_tokens < 1:
        raise ValueError(f"check_every={check_every} and max_new_tokens={max_new_tokens} must be at least 1")
    generators = list(generators) if generators is not None else [None] * len(encodings)
    if len(generators) != len(encodings):
        raise ValueError(f"{len(generators)} generators for {len(encodings)} prompts; pass one per prompt")
    prompts = [prefill(model, encoding) for encoding in encodings]
    decoder = StaticDecoder(model, prompts, num, max_new_tokens)
    step_fn = _decode_step(decoder, resolve_graph(graph, decoder.device, model))
    device = decoder.device
    logits = torch.stack([p.first_logits for p in prompts]).repeat_interleave(num, dim=0)
    positions = torch.tensor([p.next_position for p in prompts], dtype=torch.long, device=device)
    positions = positions.repeat_interleave(num)
    finished = torch.zeros(decoder.batch, dtype=torch.bool, device=device)
    bad = torch.zeros((), dtype=torch.bool, device=device)
    pads = torch.full((decoder.batch,), pad_id, dtype=torch.long, device=device)
    tokens: list[Tensor] = []
    for step in range(max_new_tokens):
        finite = torch.isfinite(logits).all(dim=-1)
        bad |= ~finite.all()
        chosen = _choose(torch.where(finite[:, None], logits, 0.0), len(encodings), generators, do_sample=do_sample,
                         temperature=temperature, top_p=top_p)
        chosen = torch.where(finished, pads, chosen)
        tokens.append(chosen)
        finished |= chosen == eos_id
        last = step == max_new_tokens - 1
        if (step + 1) % check_every == 0 or last:
            if bool(bad):
                raise FloatingPointError(f"the policy's logits are not finite within completion tokens "
                                         f"{max(0, step + 1 - check_every)}..{step}; its weights hold NaN or inf "
                                         "(the last update diverged)")
            done = bool(finished.all())
            if (all_done(done) if all_done is not None else done) or last:
                break
        slot = torch.tensor(decoder.prompt_slots + step, dtype=torch.long, device=device)
        logits = step_fn(chosen, positions + step, slot)
    ids = torch.stack(tokens, dim=1)
    return [_trim(group, eos_id=eos_id) for group in ids.chunk(len(encodings))]


def sample_for_reasoner(reasoner: Any, encodings: Sequence[PromptEncoding], *, num: int, do_sample: bool,
                        seeds: Sequence[int], max_new_tokens: int,
                        all_done: Callable[[bool], bool] | None = None) -> list[Tensor]:
    """``sample_static`` with System 1's settings (``global_reasoning.temperature/top_p/decode_graph``) and one
    generator per prompt seeded from ``seeds``: a list of (num, C_p) ids on the CPU."""
    tokenizer = reasoner.processor.tokenizer
    params = reasoner.params
    generators = [torch.Generator(device=reasoner.device).manual_seed(int(seed)) for seed in seeds]
    ids = sample_static(reasoner.model, encodings, num=num, max_new_tokens=max_new_tokens,
                        eos_id=int(tokenizer.eos_token_id), pad_id=int(tokenizer.pad_token_id), do_sample=do_sample,
                        temperature=params.temperature, top_p=params.top_p, generators=generators,
                        graph=params.decode_graph, all_done=all_done)
    return [group.cpu() for group in ids]
