"""Per-GPU memory of a GRPO run, estimated before it starts, so a run that cannot fit says so first.

``estimate_memory`` adds up what each GPU holds under ZeRO-2 or ZeRO-3 (with the CPU offload of
``configs/deepspeed/zero3.json``): the policy's weights, gradients and optimizer states, the frozen
KL reference (language model only, ``engine.ReferenceModel``), System 2's grounder and SAM2, the
activations of one update and the log-prob temporaries (chunked: ``policy.head_logprobs``).
``SEVEN_B`` is the paper's recipe (Qwen2.5-Omni-7B thinker, Qwen2.5-VL-7B grounder, SAM2.1
hiera-large, G = 8, 800 completion tokens); the README's table is ``memory_table(SEVEN_B)``.
The figures are estimates of the big terms (allocator slack, CUDA context and fragmentation come on
top: ``RESERVE_GB``), good for "will it fit", not for the last gigabyte.
"""

from __future__ import annotations

from dataclasses import dataclass

GB = 1e9
RESERVE_GB = 4.0  # CUDA context, NCCL buffers, allocator fragmentation
ADAM_BYTES = 12  # fp32 master weight + two moments per trainable parameter (bf16 training)


@dataclass(frozen=True)
class Recipe:
    """Sizes that decide memory: parameter counts, the language model's shape, the batch of one update."""

    language_params: float  # trainable: the thinker's language model (embeddings and head included)
    tower_params: float  # frozen vision + audio towers
    grounder_params: float  # System 2's grounding VLM (0: the policy's starting copy is shared)
    sam2_params: float
    hidden: int
    intermediate: int
    layers: int
    kv_heads: int
    head_dim: int
    vocab: int
    group_size: int = 8
    prompt_tokens: int = 2_000  # 24 frames at 128 x 28 x 28 pixels (~1,500 video tokens) + audio + text
    completion_tokens: int = 800
    bytes_per_weight: int = 2  # bf16


SEVEN_B = Recipe(language_params=7.62e9, tower_params=1.31e9, grounder_params=8.29e9, sam2_params=0.224e9,
                 hidden=3584, intermediate=18944, layers=28, kv_heads=4, head_dim=128, vocab=152_064)


def estimate_memory(recipe: Recipe, *, stage: int, gpus: int, offload: bool, gradient_checkpointing: bool,
                    logprob_chunk: int = 1024) -> dict[str, float]:
    """GB per GPU by part, and ``total``; ``stage`` 2 or 3, ``offload`` = optimizer and weights on the CPU."""
    if stage not in (2, 3) or gpus < 1:
        raise ValueError(f"stage={stage}, gpus={gpus}: estimate ZeRO-2 or ZeRO-3 on at least one GPU")
    w = recipe.bytes_per_weight
    policy = recipe.language_params + recipe.tower_params
    shard = 1.0 / gpus
    tokens = recipe.group_size * (recipe.prompt_tokens + recipe.completion_tokens)  # full rows under checkpointing
    parts = {
        "policy": policy * w * (shard if stage == 3 else 1.0) * (0.0 if stage == 3 and offload else 1.0),
        "gradients": recipe.language_params * w * shard,
        "optimizer": 0.0 if offload else recipe.language_params * ADAM_BYTES * shard,
        "reference": recipe.language_params * w * (shard if stage == 3 else 1.0) * (0.0 if stage == 3 and offload
                                                                                   else 1.0),
        "grounder": recipe.grounder_params * w,
        "sam2": recipe.sam2_params * 4,  # fp32 weights, bf16 autocast
        "activations": _activations(recipe, tokens, gradient_checkpointing),
        "kv_cache": recipe.group_size * (recipe.prompt_tokens + recipe.completion_tokens) * recipe.layers * 2
        * recipe.kv_heads * recipe.head_dim * w,
        "logits": 3 * min(logprob_chunk, recipe.group_size * recipe.completion_tokens) * recipe.vocab * 4,
    }
    if stage == 3:  # weights gathered for the layers being computed (stage3_max_live_parameters = 1e9)
        parts["gathered"] = min(1e9, policy) * w
    estimate = {name: value / GB for name, value in parts.items()}
    estimate["total"] = sum(estimate.values()) + RESERVE_GB
    return estimate


def _activations(recipe: Recipe, tokens: int, checkpointing: bool) -> float:
    """Bytes kept for backward: each layer's input under checkpointing plus one layer recomputed, else all."""
    per_layer = tokens * (10 * recipe.hidden + 3 * recipe.intermediate) * recipe.bytes_per_weight
    if checkpointing:
        return tokens * recipe.hidden * recipe.bytes_per_weight * recipe.layers + per_layer
    return per_layer * recipe.layers


def fits(estimate: dict[str, float], capacity_gb: float) -> str | None:
    """None when ``estimate`` fits a GPU of ``capacity_gb``, else a warning naming the biggest parts and the fixes."""
    if estimate["total"] <= capacity_gb:
        return None
    biggest = sorted(((v, k) for k, v in estimate.items() if k != "total"), reverse=True)[:3]
    parts = ", ".join(f"{name} {value:.1f} GB" for value, name in biggest)
    return (f"this run needs about {estimate['total']:.0f} GB per GPU ({parts}), the GPU has {capacity_gb:.0f} GB; "
            "use configs/deepspeed/zero3.json (train.deepspeed.config), train.deepspeed.gradient_checkpointing: true, "
            "more GPUs, or a smaller train.group_size / train.max_new_tokens")


def memory_table(recipe: Recipe, gpus: int = 8) -> str:
    """The README's markdown table: GB per GPU for ZeRO-2 and ZeRO-3 + CPU offload, both with checkpointing."""
    columns = {"ZeRO-2": estimate_memory(recipe, stage=2, gpus=gpus, offload=False, gradient_checkpointing=True),
               "ZeRO-3 + offload": estimate_memory(recipe, stage=3, gpus=gpus, offload=True,
                                                   gradient_checkpointing=True)}
    names = [name for name in columns["ZeRO-3 + offload"] if name != "total"] + ["total"]
    lines = [f"| per GPU, {gpus} GPUs | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns)]
    for name in names:
        lines.append(f"| {name} | " + " | ".join(f"{col.get(name, 0.0):.1f}" for col in columns.values()) + " |")
    return "\n".join(lines)


def _count(module: object | None) -> float:
    parameters = getattr(module, "parameters", None)
    return float(sum(p.numel() for p in parameters())) if parameters is not None else 0.0


def recipe_of(thinker: object, segmenter: object, *, group_size: int, completion_tokens: int,
              prompt_tokens: int = 2_000) -> Recipe:
    """The ``Recipe`` of the models a run actually loaded (a Qwen2.5-Omni thinker and System 2)."""
    text = thinker.config.get_text_config()  # type: ignore[attr-defined]
    inner = thinker.model  # type: ignore[attr-defined]
    towers = _count(getattr(inner, "visual", None)) + _count(getattr(inner, "audio_tower", None))
    grounder = getattr(getattr(segmenter, "grounder", None), "model", None)
    heads = int(text.num_attention_heads)
    return Recipe(language_params=_count(thinker) - towers, tower_params=towers, grounder_params=_count(grounder),
                  sam2_params=_count(getattr(segmenter, "predictor", None)), hidden=int(text.hidden_size),
                  intermediate=int(text.intermediate_size), layers=int(text.num_hidden_layers),
                  kv_heads=int(text.num_key_value_heads),
                  head_dim=int(getattr(text, "head_dim", None) or text.hidden_size // heads),
                  vocab=int(text.vocab_size), group_size=group_size, prompt_tokens=prompt_tokens,
                  completion_tokens=completion_tokens)
