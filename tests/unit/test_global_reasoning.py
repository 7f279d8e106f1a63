"""System 1 with the tiny random thinker: config facts, cached-feature inputs, generation, freezing, loading.

The thinker here is a real ``Qwen2_5OmniThinkerForConditionalGeneration`` with random weights: it
says nothing sensible, so tests check plumbing (shapes, token counts, determinism, identical
logits), never answer quality.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from omni_r1.config import GlobalReasoningParams
from omni_r1.data.features import FeatureRecord, compute_features
from omni_r1.models.processor import TINY_TOKENIZER, build_processor
from omni_r1.systems.answer import AnswerParseError, MissingTags, OutOfRange
from omni_r1.systems.global_reasoning import (
    TINY_CHECKPOINT,
    GlobalReasoner,
    build_tiny_thinker,
    freeze_towers,
    load_thinker,
    towers,
)
from omni_r1.types import KeyframeSelection

FPS = 2.0
VIDEO_KWARGS = {"fps": FPS, "do_resize": True, "do_sample_frames": False}


@pytest.fixture(scope="module")
def processor(tmp_path_factory: pytest.TempPathFactory):
    cache = tmp_path_factory.mktemp("processor-cache")
    return build_processor(TINY_TOKENIZER, min_pixels=16 * 28 * 28, max_pixels=128 * 28 * 28, cache_dir=cache)


@pytest.fixture(scope="module")
def params() -> GlobalReasoningParams:
    return GlobalReasoningParams(checkpoint=TINY_CHECKPOINT, max_new_tokens=8, seed=0)


@pytest.fixture(scope="module")
def reasoner(processor, params) -> GlobalReasoner:
    return GlobalReasoner.from_params(params, processor)


@pytest.fixture(scope="module")
def media() -> tuple[np.ndarray, np.ndarray]:
    """5 random 56x84 frames (padded to 6 by the features step) and 2 s of 16 kHz audio."""
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (5, 56, 84, 3), dtype=np.uint8)
    audio = (0.1 * rng.standard_normal(32_000)).astype(np.float32)
    return frames, audio


@pytest.fixture(scope="module")
def record(processor, media) -> FeatureRecord:
    frames, audio = media
    features = compute_features(processor, frames, audio, sample_fps=FPS)
    return FeatureRecord(key="v0", video_id="v0", split="train", **features)


@pytest.fixture(scope="module")
def silent_record(processor, media) -> FeatureRecord:
    frames, _ = media
    empty = np.zeros(0, dtype=np.float32)
    features = compute_features(processor, frames, empty, sample_fps=FPS)
    return FeatureRecord(key="v1", video_id="v1", split="train", **features)


def direct_inputs(processor, reasoner: GlobalReasoner, prompt: str, media, *, audio: bool) -> dict[str, torch.Tensor]:
    """The same inputs from one plain processor call on the raw frames and audio."""
    frames, samples = media
    frames = np.concatenate([frames, frames[-1:]])  # the features step pads to an even count the same way
    text = reasoner.chat_text(prompt, video=True, audio=audio)
    out = processor(
        text=[text],
        videos=[frames],
        audio=[samples] if audio else None,
        videos_kwargs=VIDEO_KWARGS,
        return_tensors="pt",
    )
    names = ("input_ids", "attention_mask", "pixel_values_videos", "video_grid_thw", "video_second_per_grid",
             "input_features", "feature_attention_mask")
    return {name: out[name] for name in names if name in out}


# ----------------------------------------------------------------------------------------------- the tiny thinker


def test_tiny_thinker_follows_the_design_facts(processor, reasoner) -> None:
    model = reasoner.model
    config = model.config
    text = config.text_config
    tokenizer = processor.tokenizer
    assert sum(p.numel() for p in model.parameters()) < 5_000_000
    assert (text.hidden_size, text.num_hidden_layers, text.num_attention_heads) == (64, 2, 4)
    head_dim = text.hidden_size // text.num_attention_heads
    assert sum(text.rope_parameters["mrope_section"]) == head_dim // 2
    assert config.vision_config.depth == 2 and config.audio_config.encoder_layers == 2
    assert config.vision_config.out_hidden_size == config.audio_config.output_dim == text.hidden_size
    assert text.vocab_size == len(tokenizer) == model.get_input_embeddings().weight.shape[0]
    assert config.audio_config.num_mel_bins == processor.feature_extractor.feature_size
    ids = tokenizer.convert_tokens_to_ids
    assert config.video_token_id == ids("<|VIDEO|>") == processor.video_token_id
    assert config.audio_token_id == ids("<|AUDIO|>") and config.image_token_id == ids("<|IMAGE|>")
    assert config.vision_start_token_id == ids("<|vision_bos|>")
    assert (config.audio_start_token_id, config.audio_end_token_id) == (ids("<|audio_bos|>"), ids("<|audio_eos|>"))
    assert text.eos_token_id == tokenizer.eos_token_id and text.pad_token_id == tokenizer.pad_token_id
    assert not model.training


def test_tiny_thinker_weights_follow_the_seed_alone(processor) -> None:
    state = torch.random.get_rng_state()
    a, b, c = (build_tiny_thinker(processor, seed=s) for s in (1, 1, 2))
    assert torch.equal(torch.random.get_rng_state(), state)  # the global generator is left alone
    wa, wb, wc = (m.lm_head.weight for m in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)


# ----------------------------------------------------------------------------------------------- inputs


def test_cached_features_give_the_same_inputs_and_logits_as_the_processor(processor, reasoner, record, media) -> None:
    prompt = reasoner.prompt_for(record, "the red circle", task="revos", seed=0)
    cached = reasoner.build_inputs(record, prompt)
    direct = direct_inputs(processor, reasoner, prompt, media, audio=True)
    assert torch.equal(cached["input_ids"], direct["input_ids"])
    assert torch.equal(cached["pixel_values_videos"], direct["pixel_values_videos"])
    assert torch.equal(cached["video_grid_thw"], direct["video_grid_thw"])
    assert torch.allclose(cached["video_second_per_grid"], direct["video_second_per_grid"].float())
    # The cache keeps only the valid log-mel frames; the processor pads to 30 s and masks.
    assert cached["input_features"].shape[-1] == record.audio_feature_length < direct["input_features"].shape[-1]
    counts = {t: int((cached["input_ids"] == getattr(processor, f"{t}_token_id")).sum()) for t in ("video", "audio")}
    assert counts == {"video": int(np.prod(record.video_grid_thw)) // 4, "audio": 50}  # 200 mel frames -> 50 tokens
    with torch.no_grad():
        cached_logits = reasoner.model(**cached).logits
        direct_logits = reasoner.model(**direct).logits
    assert torch.allclose(cached_logits, direct_logits, atol=1e-5)


def test_video_only_inputs_match_the_processor(processor, reasoner, silent_record, record, media) -> None:
    cached = reasoner.build_inputs(silent_record, "find the blue square")
    assert "input_features" not in cached
    direct = direct_inputs(processor, reasoner, "find the blue square", media, audio=False)
    assert torch.equal(cached["input_ids"], direct["input_ids"])
    # A record with audio can still be fed without it.
    assert "input_features" not in reasoner.build_inputs(record, "find the blue square", use_audio=False)
    with pytest.raises(ValueError, match="no audio"):
        reasoner.build_inputs(silent_record, "x", use_audio=True)


def test_placeholder_tokens_in_the_prompt_are_refused_or_cleaned(reasoner, record) -> None:
    with pytest.raises(ValueError, match="clean_text"):
        reasoner.build_inputs(record, "find the <|VIDEO|> circle")
    prompt = reasoner.prompt_for(record, "find the <|VIDEO|> circle", task="revos")
    assert "< |VIDEO| >" in prompt
    reasoner.build_inputs(record, prompt)


def test_prompt_facts_come_from_the_record(reasoner, record) -> None:
    # 5 frames padded to 6, treated as 2 fps: a 3-second clip; 2 s of audio.
    assert (reasoner.clip_frames(record), reasoner.clip_seconds(record), reasoner.sample_fps(record)) == (6, 3.0, 2.0)
    assert reasoner.audio_seconds(record) == 2.0
    assert "3-second video" in reasoner.prompt_for(record, "x", task="revos")
    assert "2-second audio" in reasoner.prompt_for(record, "x", task="refavs")
    seeded = [reasoner.prompt_for(record, "x", task="revos", seed=s) for s in (1, 2)]
    assert seeded[0] != seeded[1]


# ----------------------------------------------------------------------------------------------- generation


def test_sampling_a_group_is_deterministic_under_a_seed(reasoner, record) -> None:
    inputs = reasoner.build_inputs(record, reasoner.prompt_for(record, "the red circle", task="revos"))
    state = torch.random.get_rng_state()
    first = reasoner.generate(inputs, num_return_sequences=4, do_sample=True, seed=3)
    again = reasoner.generate(inputs, num_return_sequences=4, do_sample=True, seed=3)
    other = reasoner.generate(inputs, num_return_sequences=4, do_sample=True, seed=4)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert len(first) == 4 and all(isinstance(t, str) for t in first)
    assert first == again and first != other
    assert len(set(first)) > 1  # the members of a group differ
    ids = reasoner.generate_ids(inputs, num_return_sequences=4, do_sample=True, seed=3)
    assert ids.shape[0] == 4 and ids.shape[1] <= reasoner.params.max_new_tokens
    assert reasoner.decode(ids) == first


def test_generation_from_cached_and_direct_inputs_agree(processor, reasoner, record, media) -> None:
    prompt = reasoner.prompt_for(record, "the red circle", task="revos")
    cached = reasoner.generate(reasoner.build_inputs(record, prompt), do_sample=False, num_return_sequences=2)
    direct = reasoner.generate(direct_inputs(processor, reasoner, prompt, media, audio=True), do_sample=False)
    assert cached == direct * 2


def test_decoding_keeps_the_reasoning_tags_and_drops_special_tokens(processor, reasoner) -> None:
    text = "<think>the beep</think><answer>red</answer><|im_end|><|endoftext|><|endoftext|>"
    ids = torch.tensor([processor.tokenizer(text, add_special_tokens=False)["input_ids"]])
    assert reasoner.decode(ids) == ["<think>the beep</think><answer>red</answer>"]


def test_select_returns_one_parsed_answer_per_completion(reasoner, record) -> None:
    results = reasoner.select(record, "the red circle", num_return_sequences=3, do_sample=True, seed=0)
    assert len(results) == 3
    # A random model does not write the format; each failure is a typed error, never an exception.
    assert all(isinstance(r, (KeyframeSelection, AnswerParseError)) for r in results)
    assert any(isinstance(r, MissingTags) for r in results)


def test_select_parses_with_the_clip_facts(reasoner, record, monkeypatch) -> None:
    answer = (
        '<think>It moves right.</think><answer>{"start_time": "00:00.50", "end_time": "00:03.00", '
        '"description": "the red circle"}</answer>'
    )
    # An honest stand-in for a trained model: the plumbing around generate is what is under test.
    monkeypatch.setattr(reasoner, "generate", lambda inputs, **kwargs: [answer] * kwargs["num_return_sequences"])
    [selection] = reasoner.select(record, "the red circle")
    assert isinstance(selection, KeyframeSelection)
    assert selection.frames == (1, 2, 3, 4, 5)  # 00:03.00 is frame 6, clipped to the last of 6
    assert [k.frame for k in selection.keyframes] == [1, 2, 3, 4]  # max_keyframes
    # With the 5 real frames the stated duration is 5 / 2 = 2.5 s (official: unpadded frames / 2), so a
    # moment ending at 3.0 s is not kept, and one ending at 2.5 s (frame 5) is clipped to the last frame.
    [late] = reasoner.select(record, "the red circle", num_frames=5)
    assert isinstance(late, OutOfRange)
    answer = answer.replace("00:03.00", "00:02.50")
    [clipped] = reasoner.select(record, "the red circle", num_frames=5)
    assert clipped.frames == (1, 2, 3, 4)


# ----------------------------------------------------------------------------------------------- freezing


def test_freeze_towers_freezes_exactly_the_towers(processor) -> None:
    model = build_tiny_thinker(processor, seed=0)
    encoders = towers(model)
    tower_params = {id(p) for m in encoders.values() for p in m.parameters()}
    total = sum(p.numel() for p in model.parameters())
    counts = freeze_towers(model, vision=True, audio=True)
    for p in model.parameters():
        assert p.requires_grad == (id(p) not in tower_params)
    assert counts.frozen == sum(p.numel() for m in encoders.values() for p in m.parameters())
    assert counts.frozen + counts.trainable == total and counts.trainable > 0


def test_freeze_towers_can_freeze_one_tower(processor) -> None:
    model = build_tiny_thinker(processor, seed=0)
    counts = freeze_towers(model, vision=True, audio=False)
    assert not any(p.requires_grad for p in model.model.visual.parameters())
    assert all(p.requires_grad for p in model.model.audio_tower.parameters())
    assert counts.frozen == sum(p.numel() for p in model.model.visual.parameters())


# ----------------------------------------------------------------------------------------------- loading


def test_missing_checkpoint_names_the_param_and_the_fix(processor, tmp_path: Path) -> None:
    missing = tmp_path / "no-such-thinker"
    with pytest.raises(FileNotFoundError, match="global_reasoning.checkpoint") as caught:
        load_thinker(GlobalReasoningParams(checkpoint=str(missing)), processor)
    assert str(missing) in str(caught.value) and "builtin:tiny" in str(caught.value)
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(NotADirectoryError, match="folder"):
        load_thinker(GlobalReasoningParams(checkpoint=str(tmp_path / "weights.bin")), processor)
    with pytest.raises(ValueError, match="unknown built-in"):
        load_thinker(GlobalReasoningParams(checkpoint="builtin:huge"), processor)


def test_a_saved_thinker_loads_back_strictly_with_identical_logits(processor, reasoner, record, tmp_path: Path) -> None:
    reasoner.model.save_pretrained(tmp_path / "thinker")
    loaded = load_thinker(dataclasses.replace(reasoner.params, checkpoint=str(tmp_path / "thinker")), processor)
    inputs = reasoner.build_inputs(record, "find the red circle")
    with torch.no_grad():
        assert torch.equal(reasoner.model(**inputs).logits, loaded(**inputs).logits)


def test_a_checkpoint_with_missing_or_extra_weights_is_refused(processor, reasoner, tmp_path: Path) -> None:
    folder = tmp_path / "thinker"
    reasoner.model.save_pretrained(folder)
    [weights] = folder.glob("*.safetensors")
    tensors = load_file(weights)
    params = dataclasses.replace(reasoner.params, checkpoint=str(folder))

    dropped = {k: v for k, v in tensors.items() if not k.endswith("layers.0.mlp.up_proj.weight")}
    assert len(dropped) == len(tensors) - 1
    save_file(dropped, weights, metadata={"format": "pt"})
    with pytest.raises(ValueError, match="missing_keys"):
        load_thinker(params, processor)

    save_file({**tensors, "model.extra.weight": torch.zeros(2)}, weights, metadata={"format": "pt"})
    with pytest.raises(ValueError, match="unexpected_keys"):
        load_thinker(params, processor)


def test_load_thinker_sets_dtype_and_device(processor) -> None:
    model = load_thinker(GlobalReasoningParams(checkpoint=TINY_CHECKPOINT, dtype="bfloat16", device="cpu", seed=5), processor)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert {p.device.type for p in model.parameters()} == {"cpu"}
    assert torch.equal(model.lm_head.weight, build_tiny_thinker(processor, seed=5).lm_head.weight.to(torch.bfloat16))
