"""Tiny random models saved in the on-disk layouts users download, for tests of the real loading paths.

Nothing here is loaded by the library: each builder writes a folder (or file) the way the published
checkpoint is laid out, with random weights small enough for CPU tests, and the code under test
reads it through the same path a real checkpoint takes.

- ``save_full_omni``: a ``qwen2_5_omni`` folder (thinker + talker + token2wav, ``spk_dict.pt``, processor);
- ``save_thinker``: a ``qwen2_5_omni_thinker`` folder (``thinker.save_pretrained`` + processor);
- ``save_qwen2_5_vl``: a ``qwen2_5_vl`` grounder folder with its processor;
- ``save_sam2_checkpoint``: an official SAM2.1 ``.pt`` (``{"model": state_dict}``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

TALKER_VOCAB = 64


def _tiny_talker(thinker_config: Any) -> dict[str, Any]:
    return dict(
        vocab_size=TALKER_VOCAB, embedding_size=thinker_config.text_config.hidden_size, hidden_size=32,
        intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1, head_dim=16,
        rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 3, 3]},
        audio_token_index=thinker_config.audio_token_index, image_token_index=thinker_config.image_token_index,
        video_token_index=thinker_config.video_token_index,
        vision_start_token_id=thinker_config.vision_start_token_id,
        vision_end_token_id=thinker_config.vision_end_token_id,
        audio_start_token_id=thinker_config.audio_start_token_id,
        audio_end_token_id=thinker_config.audio_end_token_id,
        tts_text_start_token_id=56, tts_text_end_token_id=57, tts_text_pad_token_id=58,
        tts_codec_start_token_id=60, tts_codec_end_token_id=61, tts_codec_pad_token_id=62,
        tts_codec_mask_token_id=63,
    )


_TINY_TOKEN2WAV = {
    "dit_config": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, ff_mult=1, emb_dim=16, head_dim=16,
                       num_embeds=TALKER_VOCAB + 1, mel_dim=16, enc_emb_dim=16, enc_dim=16,
                       enc_channels=[16, 16, 16, 16, 48], enc_attention_channels=8, enc_se_channels=8,
                       look_ahead_layers=[1], look_backward_layers=[0]),
    "bigvgan_config": dict(mel_dim=16, upsample_initial_channel=32, resblock_kernel_sizes=[3],
                           resblock_dilation_sizes=[[1, 3, 5]], upsample_rates=[2, 2], upsample_kernel_sizes=[4, 4]),
}


def save_full_omni(folder: Path, processor: Any, *, seed: int = 0) -> Any:
    """A full Qwen2.5-Omni folder around the tiny thinker of ``seed``; returns that thinker (for comparisons)."""
    from transformers import Qwen2_5OmniConfig, Qwen2_5OmniForConditionalGeneration

    from omni_r1.systems.global_reasoning import build_tiny_thinker

    thinker = build_tiny_thinker(processor, seed=seed)
    config = Qwen2_5OmniConfig(thinker_config=thinker.config.to_dict(), talker_config=_tiny_talker(thinker.config),
                               token2wav_config=_TINY_TOKEN2WAV)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 1)
        full = Qwen2_5OmniForConditionalGeneration(config)
    full.thinker.load_state_dict(thinker.state_dict())
    full.save_pretrained(folder, safe_serialization=True)
    processor.save_pretrained(folder)
    speakers = {name: {"cond": torch.zeros(16), "ref_mel": torch.zeros(4, 16), "bos_token": 1}
                for name in ("Chelsie", "Ethan")}
    torch.save(speakers, Path(folder) / "spk_dict.pt")
    return thinker


def save_thinker(folder: Path, processor: Any, *, seed: int = 0) -> Any:
    """A thinker-only folder (what ``thinker.save_pretrained`` writes) with the processor; returns the thinker."""
    from omni_r1.systems.global_reasoning import build_tiny_thinker

    thinker = build_tiny_thinker(processor, seed=seed)
    thinker.save_pretrained(folder, safe_serialization=True)
    processor.save_pretrained(folder)
    return thinker


def save_qwen2_5_vl(folder: Path, processor: Any, *, seed: int = 0) -> Any:
    """A tiny Qwen2.5-VL grounder folder whose tokenizer is ``processor``'s (its image placeholders included)."""
    from transformers import (
        Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor, Qwen2VLImageProcessor,
        Qwen2VLVideoProcessor,
    )  # fmt: skip

    tokenizer = processor.tokenizer
    ids = tokenizer.convert_tokens_to_ids
    config = Qwen2_5_VLConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2,
                         rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 3, 3]},
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id),
        vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                           patch_size=14, spatial_merge_size=2, temporal_patch_size=2, fullatt_block_indexes=[1],
                           window_size=112),
        image_token_id=ids("<|IMAGE|>"), video_token_id=ids("<|VIDEO|>"),
        vision_start_token_id=ids("<|vision_bos|>"), vision_end_token_id=ids("<|vision_eos|>"),
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2_5_VLForConditionalGeneration(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(folder, safe_serialization=True)
    image = Qwen2VLImageProcessor(min_pixels=16 * 28 * 28, max_pixels=64 * 28 * 28)
    Qwen2_5_VLProcessor(image_processor=image, tokenizer=tokenizer, video_processor=Qwen2VLVideoProcessor(),
                        chat_template=tokenizer.chat_template).save_pretrained(folder)
    return model


def save_sam2_checkpoint(path: Path, *, config: str = "configs/sam2.1/sam2.1_hiera_t.yaml", image_size: int = 256,
                         seed: int = 0) -> dict[str, torch.Tensor]:
    """An official-layout SAM2.1 ``.pt`` (``{"model": state_dict}``) of random weights; returns the state_dict."""
    from sam2.build_sam import build_sam2_video_predictor

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_sam2_video_predictor(config, ckpt_path=None, device="cpu",
                                           hydra_overrides_extra=[f"++model.image_size={image_size}"])
    state = {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": state}, path)
    return state
