"""Qwen2.5-Omni thinker shapes built from config dicts in code (random weights, nothing downloaded).

``thinker_config(name)`` gives a ``Qwen2_5OmniThinkerConfig`` for ``tiny`` (the tests' size, a
vocabulary of ``TINY_VOCAB``), ``3b`` or ``7b`` (the text, vision and audio sizes of the published
Qwen2.5-Omni-3B / -7B thinkers' config.json). ``random_thinker`` makes one with random weights directly
directly on a device in a dtype (a 7B model never exists in float32 on the CPU). Used by
``bench/gpu_step.py`` and the static-sampler tests; training loads real checkpoints elsewhere
(``omni_r1.systems.global_reasoning.load_thinker``).
"""

from __future__ import annotations

from typing import Any

import torch

SHAPES = ("tiny", "3b", "7b")
TINY_VOCAB = 512
# Special token ids of the published checkpoints (the tiny shape takes the last ids of its vocabulary).
_SPECIAL = {"audio_token_index": 151646, "image_token_index": 151655, "video_token_index": 151656,
            "audio_start_token_id": 151647, "audio_end_token_id": 151648, "vision_start_token_id": 151652,
            "vision_end_token_id": 151653}
_TEXT = {
    "7b": {"vocab_size": 152064, "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
           "num_attention_heads": 28, "num_key_value_heads": 4, "tie_word_embeddings": False},
    "3b": {"vocab_size": 151936, "hidden_size": 2048, "intermediate_size": 11008, "num_hidden_layers": 36,
           "num_attention_heads": 16, "num_key_value_heads": 2, "tie_word_embeddings": False},
    "tiny": {"vocab_size": TINY_VOCAB, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
             "num_attention_heads": 4, "num_key_value_heads": 2, "tie_word_embeddings": False},
}
_MROPE = {"7b": [16, 24, 24], "3b": [16, 24, 24], "tiny": [2, 3, 3]}  # sum == head_dim / 2
_VISION = {"depth": 32, "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16,
           "fullatt_block_indexes": [7, 15, 23, 31]}
_AUDIO = {"encoder_layers": 32, "encoder_attention_heads": 20, "encoder_ffn_dim": 5120, "d_model": 1280}
_TINY_VISION = {"depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2, "fullatt_block_indexes": [1]}
_TINY_AUDIO = {"encoder_layers": 2, "encoder_attention_heads": 2, "encoder_ffn_dim": 64, "d_model": 32}


def thinker_config(name: str) -> Any:
    """The ``Qwen2_5OmniThinkerConfig`` of shape ``name`` (one of ``SHAPES``)."""
    from transformers import Qwen2_5OmniThinkerConfig

    if name not in SHAPES:
        raise ValueError(f"thinker shape {name!r} is unknown; use one of {SHAPES}")
    text = dict(_TEXT[name])
    hidden = text["hidden_size"]
    special = _SPECIAL if name != "tiny" else {key: TINY_VOCAB - 1 - i for i, key in enumerate(_SPECIAL)}
    text |= {"rope_parameters": {"rope_type": "default", "rope_theta": 1_000_000.0, "mrope_section": _MROPE[name]},
             "rms_norm_eps": 1e-6, "bos_token_id": 151643 if name != "tiny" else 0,
             "eos_token_id": 151645 if name != "tiny" else 1, "pad_token_id": 151643 if name != "tiny" else 2}
    vision = dict(_TINY_VISION if name == "tiny" else _VISION) | {"out_hidden_size": hidden, "patch_size": 14,
                                                                   "temporal_patch_size": 2, "spatial_merge_size": 2}
    audio = dict(_TINY_AUDIO if name == "tiny" else _AUDIO) | {"num_mel_bins": 128, "output_dim": hidden}
    return Qwen2_5OmniThinkerConfig(text_config=text, vision_config=vision, audio_config=audio, **special)


def random_thinker(name: str, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                   seed: int = 0) -> Any:
    """A thinker of shape ``name`` with random weights made on ``device`` in ``dtype``, eval mode.

    The same seed gives the same weights on the same device; the global random state is left untouched."""
    from transformers import Qwen2_5OmniThinkerForConditionalGeneration

    config = thinker_config(name)
    device = torch.device(device)
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), torch.device(device):
        torch.manual_seed(seed)
        default = torch.get_default_dtype()
        torch.set_default_dtype(dtype)
        try:
            model = Qwen2_5OmniThinkerForConditionalGeneration(config)
        finally:
            torch.set_default_dtype(default)
    return model.to(dtype).eval()


def parameter_count(model: torch.nn.Module, *, language_only: bool = False) -> int:
    """Parameters of ``model`` (of its language model and head only with ``language_only``)."""
    if not language_only:
        return sum(p.numel() for p in model.parameters())
    parts = [model.model.language_model, model.lm_head]
    return sum(p.numel() for part in parts for p in part.parameters())
