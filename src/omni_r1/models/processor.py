"""The Global Reasoning System's processor: the real ``Qwen2_5OmniProcessor``, built offline.

Nothing here downloads. Two sources are supported, chosen by ``features.tokenizer`` in params.yaml:

- ``"builtin:tiny"``: a small byte-level BPE tokenizer trained here, deterministically, on a
  built-in corpus (colours, shapes, sounds, the prompt's words, JSON punctuation, digits). It
  carries Qwen2.5-Omni's special tokens under their real names (``<|VIDEO|>``, ``<|audio_bos|>``,
  ...) and the reasoning tags as single tokens. It is cached on disk under a folder keyed by the
  hash of its recipe, so a changed recipe or library version builds a new one.
- a local checkpoint directory (e.g. a downloaded Qwen2.5-Omni-7B), loaded with
  ``Qwen2_5OmniProcessor.from_pretrained(path, local_files_only=True)``.

Either way the processor is the real one: ``Qwen2VLImageProcessor`` and ``Qwen2VLVideoProcessor``
patchify frames, ``WhisperFeatureExtractor`` computes the log-mel, and the tokenizer expands the
``<|VIDEO|>`` / ``<|AUDIO|>`` placeholders. We write no second patchifier.

The pixel budget (``min_pixels`` .. ``max_pixels`` per frame) is set on the image and video
processors *and* on the processor's own ``videos_kwargs``: the Omni processor class ships a default
video ``size`` (128..768 x 28 x 28) that it passes on every call, which would otherwise override
the video processor's settings. System 2 callers that want a different budget for high-res images
pass ``images_kwargs={"size": ...}`` at call time.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast, Qwen2_5OmniProcessor

TINY_TOKENIZER = "builtin:tiny"

# Qwen2.5-Omni-7B's special tokens, in the order its vocabulary lists them (it has a few more, e.g.
# box and quad markers, that this project never emits).
SPECIAL_TOKENS: tuple[str, ...] = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|AUDIO|>",
    "<|audio_bos|>",
    "<|audio_eos|>",
    "<|vision_bos|>",
    "<|vision_eos|>",
    "<|IMAGE|>",
    "<|VIDEO|>",
)
# The attribute names Qwen2_5OmniProcessor reads from its tokenizer, as the real checkpoint sets them.
OMNI_TOKEN_NAMES: dict[str, str] = {
    "image_token": "<|IMAGE|>",
    "audio_token": "<|AUDIO|>",
    "video_token": "<|VIDEO|>",
    "vision_bos_token": "<|vision_bos|>",
    "vision_eos_token": "<|vision_eos|>",
    "audio_bos_token": "<|audio_bos|>",
    "audio_eos_token": "<|audio_eos|>",
}
# Added as plain (non-special) tokens: decoding with skip_special_tokens=True must keep them,
# because the format reward parses them.
REASONING_TOKENS: tuple[str, ...] = ("<think>", "</think>", "<answer>", "</answer>")

# An upper bound: training stops when no pair occurs twice, at about 730 tokens on this corpus.
_VOCAB_SIZE = 1000
_MODEL_MAX_LENGTH = 32768
# Qwen2's pre-tokenizer split: contractions, letter runs, single digits, punctuation runs, spaces.
_PRETOKENIZE_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

_COLOURS = "red green blue yellow orange purple pink white black grey gray brown cyan magenta dark light bright"
_SHAPES = "circle square triangle star ball box rectangle ring disk dot shape shapes object objects one two three"
_SOUNDS = (
    "sound sounds sounding audio beep beeps tone tones chirp hum buzz whistle click voice music instrument "
    "loud quiet high low pitch silent silence plays playing makes making noise hear heard"
)
_SCENE = (
    "the a an of and or in on at to with is are that which it its this left right top bottom middle center "
    "moving moves still small large big near far above below next behind front first last second seconds "
    "time moment moments frame frames video clip view best background texture gradient"
)
_PROMPT = (
    "Given a video and a reference instruction identify the referred object select about four relevant "
    "temporally spread non overlapping moments give for each a short visual description without temporal or "
    "comparison words reason inside think tags then answer inside answer tags Please find the bounding box "
    "of with json format Analyse analyze the sounding objects simplify into can be found without"
)
_SENTENCES: tuple[str, ...] = (
    "the red circle on the left",
    "a blue square moving to the right",
    "the green triangle that makes a high beep",
    "which object is sounding when the tone plays?",
    "the small yellow star near the top of the frame",
    "Given a 6-second video, find the shape that makes the sound.",
    "<think>The beep starts at 00:02.00 and the red circle moves.</think>",
    "<answer>[{\"start_time\": \"00:01.50\", \"end_time\": \"00:03.00\", \"description\": \"red circle\"}]</answer>",
    '{"start_time": "00:00.00", "end_time": "00:05.50", "description": "the blue square on the right"}',
    '[{"bbox_2d": [12, 34, 56, 78], "label": "green triangle"}]',
    "0 1 2 3 4 5 6 7 8 9 10 12 14 16 20 24 28 30 45 50 60 99 00:00.00 00:10.00 01:30.25",
    "{ } [ ] ( ) : , . ; ! ? \" ' - _ / + = * < > # % & | @ ~",
    "user assistant system You are a helpful assistant.",
)


def tiny_tokenizer_recipe() -> dict[str, object]:
    """Everything that determines the tiny tokenizer's files, library versions included."""
    import tokenizers
    import transformers

    return {
        "corpus": list(_corpus()),
        "special_tokens": list(SPECIAL_TOKENS),
        "omni_token_names": OMNI_TOKEN_NAMES,
        "reasoning_tokens": list(REASONING_TOKENS),
        "vocab_size": _VOCAB_SIZE,
        "pattern": _PRETOKENIZE_PATTERN,
        "chat_template": CHAT_TEMPLATE,
        "tokenizers": tokenizers.__version__,
        "transformers": transformers.__version__,
    }


def tiny_tokenizer_digest() -> str:
    """sha256 of the recipe: the cache key of a built tiny tokenizer."""
    text = json.dumps(tiny_tokenizer_recipe(), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def build_tiny_tokenizer(out_dir: Path) -> Path:
    """Train the tiny tokenizer and save it as a transformers fast tokenizer in ``out_dir``.

    The same recipe gives byte-identical files. The files are written into a temp folder beside
    ``out_dir`` that is then renamed into place, so a reader never sees half a tokenizer; an
    existing ``out_dir`` with other contents is replaced.
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.", suffix=".tmp"))
    try:
        _tiny_tokenizer().save_pretrained(str(staging))
        _move_into_place(staging, out_dir)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return out_dir


def build_processor(
    tokenizer: str | Path,
    *,
    min_pixels: int,
    max_pixels: int,
    mel_bins: int = 128,
    cache_dir: Path | None = None,
) -> Qwen2_5OmniProcessor:
    """The real ``Qwen2_5OmniProcessor`` for ``features.tokenizer``: ``"builtin:tiny"`` or a local checkpoint.

    ``min_pixels`` / ``max_pixels`` bound each frame's pixel count after resizing (multiples of 28);
    ``mel_bins`` is the Whisper log-mel size (Qwen2.5-Omni uses 128). ``cache_dir`` holds built tiny
    tokenizers (default: ``omni-r1`` under the system temp folder).
    """
    if not 0 < min_pixels <= max_pixels:
        raise ValueError(
            f"min_pixels={min_pixels}, max_pixels={max_pixels}: need 0 < min <= max; "
            "fix features.min_pixels/max_pixels in params.yaml"
        )
    tokenizer = str(tokenizer)
    if tokenizer.startswith("builtin:") and tokenizer != TINY_TOKENIZER:
        raise ValueError(
            f"features.tokenizer in params.yaml is {tokenizer!r}, an unknown built-in; "
            f"use {TINY_TOKENIZER!r} or the path of a local Qwen2.5-Omni checkpoint"
        )
    # transformers resolves its classes on first use through a lazy module that is not thread-safe: two
    # threads building a processor at once (the features stage's thread fan-out) made one of them fail
    # with "cannot import name 'Qwen2_5OmniProcessor'". Building takes milliseconds once imported.
    with _BUILD_LOCK:
        if tokenizer == TINY_TOKENIZER:
            processor = _tiny_processor(_tiny_tokenizer_dir(cache_dir), mel_bins)
        else:
            processor = _checkpoint_processor(Path(tokenizer).expanduser(), mel_bins)
        _set_pixel_budget(processor, min_pixels, max_pixels)
    return processor


_BUILD_LOCK = threading.Lock()


# ----------------------------------------------------------------------------------------------- tiny


CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'video' %}<|vision_bos|><|VIDEO|><|vision_eos|>"
    "{% elif part['type'] == 'image' %}<|vision_bos|><|IMAGE|><|vision_eos|>"
    "{% elif part['type'] == 'audio' %}<|audio_bos|><|AUDIO|><|audio_eos|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}"
    "{% endif %}{% endfor %}{% endif %}"
    "<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _corpus() -> tuple[str, ...]:
    words = " ".join((_COLOURS, _SHAPES, _SOUNDS, _SCENE, _PROMPT))
    # Repeating the word list makes its words outrank the one-off fragments of the sentences.
    return (words,) * 4 + tuple(f"{a} {b}" for a in _COLOURS.split() for b in _SHAPES.split()[:9]) + _SENTENCES


def _tiny_tokenizer() -> PreTrainedTokenizerFast:
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers, trainers
    from tokenizers.models import BPE
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    # The same pipeline as Qwen2's tokenizer, so text splits the way the real model's does.
    backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_PRETOKENIZE_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=_VOCAB_SIZE,
        min_frequency=2,
        show_progress=False,
        special_tokens=list(SPECIAL_TOKENS),
        # Every byte is in the vocabulary, so any text encodes and round-trips.
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    backend.train_from_iterator(list(_corpus()), trainer=trainer)
    backend.add_tokens([AddedToken(t, special=False, normalized=False) for t in REASONING_TOKENS])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        extra_special_tokens=dict(OMNI_TOKEN_NAMES),
        chat_template=CHAT_TEMPLATE,
        model_max_length=_MODEL_MAX_LENGTH,
    )


def _move_into_place(staging: Path, out_dir: Path) -> None:
    """Rename ``staging`` to ``out_dir``; an ``out_dir`` with other files is replaced, one with the same kept.

    Keeping an identical folder matters when worker processes build the same cached tokenizer at
    once: the first rename wins and the others leave it alone while it may already be in use.
    """
    if _same_files(staging, out_dir):
        return
    try:
        os.rename(staging, out_dir)
        return
    except OSError:
        if _same_files(staging, out_dir):
            return
        if not out_dir.exists():
            raise
    retired = out_dir.with_name(f".{out_dir.name}.{os.getpid()}.old")
    os.rename(out_dir, retired)
    os.rename(staging, out_dir)
    shutil.rmtree(retired)


def _same_files(a: Path, b: Path) -> bool:
    if not b.is_dir():
        return False
    names = sorted(p.name for p in a.iterdir())
    if names != sorted(p.name for p in b.iterdir()):
        return False
    return all((a / name).read_bytes() == (b / name).read_bytes() for name in names)


def _is_built(directory: Path) -> bool:
    return (directory / "tokenizer.json").is_file() and (directory / "tokenizer_config.json").is_file()


def _tiny_tokenizer_dir(cache_dir: Path | None) -> Path:
    root = Path(cache_dir) if cache_dir is not None else Path(tempfile.gettempdir()) / "omni-r1"
    target = root / f"tiny-tokenizer-{tiny_tokenizer_digest()[:16]}"
    return target if _is_built(target) else build_tiny_tokenizer(target)


def _tiny_processor(tokenizer_dir: Path, mel_bins: int) -> Qwen2_5OmniProcessor:
    from transformers import (
        AutoTokenizer,
        Qwen2_5OmniProcessor,
        Qwen2VLImageProcessor,
        Qwen2VLVideoProcessor,
        WhisperFeatureExtractor,
    )

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True)
    return Qwen2_5OmniProcessor(
        image_processor=Qwen2VLImageProcessor(),
        # The reference (qwen-vl-utils) per-frame cap; setting it also silences a deprecation warning.
        video_processor=Qwen2VLVideoProcessor(cap_pixels_per_frame=True),
        feature_extractor=WhisperFeatureExtractor(feature_size=mel_bins),
        tokenizer=tokenizer,
        chat_template=tokenizer.chat_template,
    )


# ----------------------------------------------------------------------------------------------- checkpoint


def _checkpoint_processor(path: Path, mel_bins: int) -> Qwen2_5OmniProcessor:
    from transformers import Qwen2_5OmniProcessor

    if not path.exists():
        raise FileNotFoundError(
            f"features.tokenizer in params.yaml names {path}, which does not exist; set it to "
            f"{TINY_TOKENIZER!r} or to a local Qwen2.5-Omni checkpoint folder (nothing is downloaded)"
        )
    if not path.is_dir():
        raise NotADirectoryError(
            f"features.tokenizer in params.yaml names {path}, which is a file; set it to the checkpoint's "
            "folder (the one holding tokenizer_config.json and preprocessor_config.json)"
        )
    processor = Qwen2_5OmniProcessor.from_pretrained(str(path), local_files_only=True)
    found = int(processor.feature_extractor.feature_size)
    if found != mel_bins:
        raise ValueError(
            f"the checkpoint at {path} computes {found} mel bins but features.mel_bins in params.yaml is "
            f"{mel_bins}; set features.mel_bins to {found}"
        )
    return processor


def _set_pixel_budget(processor: Qwen2_5OmniProcessor, min_pixels: int, max_pixels: int) -> None:
    from transformers.image_utils import SizeDict

    size = {"shortest_edge": int(min_pixels), "longest_edge": int(max_pixels)}
    processor.image_processor.size = SizeDict(**size)
    processor.video_processor.size = SizeDict(**size)
    # An instance attribute shadows the class default that the processor passes on every call.
    processor.videos_kwargs = {"size": dict(size), "cap_pixels_per_frame": True}
