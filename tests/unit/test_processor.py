"""The offline Qwen2.5-Omni processor: the built-in tiny tokenizer and the real processor around it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from omni_r1.models.processor import (
    OMNI_TOKEN_NAMES,
    REASONING_TOKENS,
    SPECIAL_TOKENS,
    TINY_TOKENIZER,
    build_processor,
    build_tiny_tokenizer,
    tiny_tokenizer_digest,
)

MIN_PIXELS = 16 * 28 * 28
MAX_PIXELS = 128 * 28 * 28


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("processor-cache")


@pytest.fixture(scope="module")
def processor(cache_dir: Path):
    return build_processor(TINY_TOKENIZER, min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS, cache_dir=cache_dir)


@pytest.fixture(scope="module")
def tokenizer(processor):
    return processor.tokenizer


def test_build_processor_returns_the_real_omni_processor(processor) -> None:
    from transformers import (
        Qwen2_5OmniProcessor,
        Qwen2VLImageProcessor,
        Qwen2VLVideoProcessor,
        WhisperFeatureExtractor,
    )

    assert type(processor) is Qwen2_5OmniProcessor
    assert isinstance(processor.image_processor, Qwen2VLImageProcessor)
    assert isinstance(processor.video_processor, Qwen2VLVideoProcessor)
    assert isinstance(processor.feature_extractor, WhisperFeatureExtractor)
    assert processor.feature_extractor.feature_size == 128
    assert processor.video_processor.size.shortest_edge == MIN_PIXELS
    assert processor.video_processor.size.longest_edge == MAX_PIXELS
    assert processor.video_token == "<|VIDEO|>" and processor.audio_token == "<|AUDIO|>"


def test_tiny_tokenizer_round_trips_text(tokenizer) -> None:
    texts = [
        "the red circle on the left makes a high beep",
        '<think>The blue square moves.</think> <answer>[{"start_time": "00:01.50", '
        '"end_time": "00:03.00", "description": "blue square"}]</answer>',
        "Unseen words, digits 0123456789, tabs\tand\nnew lines; café ☃ 音",
    ]
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert tokenizer.decode(ids) == text
    # Trained on these words, the tokenizer gives them whole tokens, not bytes.
    assert tokenizer.tokenize(" red circle") == ["Ġred", "Ġcircle"]


def test_omni_special_tokens_are_single_ids(tokenizer) -> None:
    for name, token in OMNI_TOKEN_NAMES.items():
        assert getattr(tokenizer, name) == token
        assert tokenizer(token, add_special_tokens=False)["input_ids"] == [getattr(tokenizer, f"{name}_id")]
    every = [*SPECIAL_TOKENS, *REASONING_TOKENS]
    ids = [tokenizer.convert_tokens_to_ids(t) for t in every]
    assert len(set(ids)) == len(every)
    for token, token_id in zip(every, ids):
        assert tokenizer(f"x{token}y", add_special_tokens=False)["input_ids"].count(token_id) == 1
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|endoftext|>"


def test_decoding_drops_special_tokens_but_keeps_reasoning_tags(tokenizer) -> None:
    text = "<|im_start|>assistant\n<think>hm</think><answer>red</answer><|im_end|>"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids, skip_special_tokens=True) == "assistant\n<think>hm</think><answer>red</answer>"


def test_tiny_tokenizer_is_deterministic_and_small(tmp_path: Path) -> None:
    first = build_tiny_tokenizer(tmp_path / "a")
    second = build_tiny_tokenizer(tmp_path / "b")
    names = sorted(p.name for p in first.iterdir())
    assert "tokenizer.json" in names and names == sorted(p.name for p in second.iterdir())
    for name in names:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]  # no staging folders left behind

    from transformers import AutoTokenizer

    assert 300 <= len(AutoTokenizer.from_pretrained(str(first), local_files_only=True)) <= 1024


def test_build_tiny_tokenizer_replaces_an_old_folder(tmp_path: Path) -> None:
    out = tmp_path / "tok"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    build_tiny_tokenizer(out)
    assert not (out / "stale.txt").exists() and (out / "tokenizer.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tok"]
    # Rebuilding the same recipe keeps the folder in place (a concurrent reader may be using it).
    inode = (out / "tokenizer.json").stat().st_ino
    build_tiny_tokenizer(out)
    assert (out / "tokenizer.json").stat().st_ino == inode
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tok"]


def test_build_processor_reuses_the_cached_tokenizer(processor, cache_dir: Path) -> None:
    built = cache_dir / f"tiny-tokenizer-{tiny_tokenizer_digest()[:16]}"
    stamp = (built / "tokenizer.json").stat().st_mtime_ns
    again = build_processor(TINY_TOKENIZER, min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS, cache_dir=cache_dir)
    assert (built / "tokenizer.json").stat().st_mtime_ns == stamp
    assert [p.name for p in cache_dir.iterdir()] == [built.name]
    assert len(again.tokenizer) == len(processor.tokenizer)


def test_chat_template_places_the_omni_placeholders(tokenizer) -> None:
    messages = [
        {"role": "user", "content": [{"type": "video"}, {"type": "audio"}, {"type": "text", "text": "Which shape beeps?"}]}
    ]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == (
        "<|im_start|>user\n<|vision_bos|><|VIDEO|><|vision_eos|><|audio_bos|><|AUDIO|><|audio_eos|>"
        "Which shape beeps?<|im_end|>\n<|im_start|>assistant\n"
    )


def test_processor_honours_the_pixel_budget_for_videos_and_images(processor) -> None:
    # 224x168 lies inside the budget: kept as is, 16x12 patches. The Omni processor's class default
    # (at least 128x28x28 pixels a frame) would have upscaled it.
    frames = np.zeros((2, 168, 224, 3), dtype=np.uint8)
    out = processor(text=["<|VIDEO|>"], videos=[frames], return_tensors="np")
    assert out["video_grid_thw"].tolist() == [[1, 12, 16]]
    image = np.zeros((1000, 1000, 3), dtype=np.uint8)
    out = processor(text=["<|IMAGE|>"], images=[image], return_tensors="np")
    # Capped at 308x308 (22x22 patches) by max_pixels; the image processor's own default keeps 1008x1008.
    assert out["image_grid_thw"].tolist() == [[1, 22, 22]]


def test_missing_checkpoint_path_names_the_param(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"features\.tokenizer.*builtin:tiny"):
        build_processor(str(tmp_path / "no-such-model"), min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS)


def test_unknown_builtin_and_bad_budget_are_errors() -> None:
    with pytest.raises(ValueError, match="unknown built-in"):
        build_processor("builtin:huge", min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS)
    with pytest.raises(ValueError, match="min_pixels"):
        build_processor(TINY_TOKENIZER, min_pixels=MAX_PIXELS, max_pixels=MIN_PIXELS)


def test_checkpoint_folder_loads_offline_with_the_budget_overridden(processor, tmp_path: Path) -> None:
    processor.save_pretrained(str(tmp_path))
    small = 8 * 28 * 28
    loaded = build_processor(str(tmp_path), min_pixels=4 * 28 * 28, max_pixels=small)
    assert type(loaded) is type(processor)
    assert loaded.tokenizer.video_token_id == processor.tokenizer.video_token_id
    frames = np.zeros((2, 168, 224, 3), dtype=np.uint8)
    grid = loaded(text=["<|VIDEO|>"], videos=[frames], return_tensors="np")["video_grid_thw"][0]
    assert grid[0] == 1 and grid[1] * grid[2] * 14 * 14 <= small
    with pytest.raises(ValueError, match=r"features\.mel_bins"):
        build_processor(str(tmp_path), min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS, mel_bins=80)
