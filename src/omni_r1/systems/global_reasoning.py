"""The Global Reasoning System (System 1): the Qwen2.5-Omni thinker, fed cached features.

- ``build_tiny_thinker``: a real ``Qwen2_5OmniThinkerForConditionalGeneration`` with random
  weights, small enough for CPU tests and the demo (design.md section 4), its special token ids
  taken from the processor's tokenizer.
- ``load_thinker``: ``global_reasoning.checkpoint`` -> the tiny model, or a local full Qwen2.5-Omni or
  thinker-only folder loaded strictly (``omni_r1.models.checkpoints``), after checking that its
  vocabulary is ``features.tokenizer``'s.
- ``freeze_towers``: freeze the vision and audio encoders (Omni-R1 trains the language model only).
- ``GlobalReasoner``: builds the thinker's inputs from a cached ``FeatureRecord`` and a prompt,
  samples completions, and parses them into ``KeyframeSelection`` records.

The cached features are exactly what the processor would compute (``data/features.py``); the
prompt's ``<|VIDEO|>`` / ``<|AUDIO|>`` placeholders are expanded by the processor's own
``replace_video_token`` / ``replace_audio_token`` and ``get_text_with_replacements``, with counts
taken from the cached grid and log-mel length, so no video is decoded at training time.
Sampling is deterministic under a seed: it runs inside ``torch.random.fork_rng``, so the global
random state is left as it was.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import torch

from omni_r1.config import GlobalReasoningParams
from omni_r1.systems.answer import AnswerParseError, Task, try_parse
from omni_r1.systems.prompts import refavs_prompt, revos_prompt
from omni_r1.systems.system1 import PromptEncoding, encode_prompt, sample_completions, towers_frozen
from omni_r1.types import KeyframeSelection

if TYPE_CHECKING:
    from transformers import Qwen2_5OmniProcessor, Qwen2_5OmniThinkerForConditionalGeneration

    from omni_r1.data.features import FeatureRecord

TINY_CHECKPOINT = "builtin:tiny"
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}

# The tiny thinker (design.md section 4): 2 text layers at hidden 64 with 4 heads of 16, so
# sum(mrope_section) == head_dim / 2 == 8; vision depth 2 at hidden 32; audio 2 layers at 32.
# Both towers project to the text hidden size.
_TEXT_HIDDEN = 64
_TEXT_HEADS = 4
_MROPE_SECTION = [2, 3, 3]
_VISION_HIDDEN = 32
_AUDIO_HIDDEN = 32


# ----------------------------------------------------------------------------------------------- building


def build_tiny_thinker(processor: Qwen2_5OmniProcessor, *, seed: int) -> Qwen2_5OmniThinkerForConditionalGeneration:
    """A randomly initialised tiny thinker whose vocabulary and special tokens match ``processor``.

    The same ``seed`` gives the same weights; the global random state is left untouched.
    """
    from transformers import Qwen2_5OmniThinkerConfig, Qwen2_5OmniThinkerForConditionalGeneration

    tokenizer = processor.tokenizer
    config = Qwen2_5OmniThinkerConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": _TEXT_HIDDEN,
            "intermediate_size": 2 * _TEXT_HIDDEN,
            "num_hidden_layers": 2,
            "num_attention_heads": _TEXT_HEADS,
            "num_key_value_heads": 2,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1_000_000.0, "mrope_section": _MROPE_SECTION},
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        },
        vision_config={
            "depth": 2,
            "hidden_size": _VISION_HIDDEN,
            "intermediate_size": 2 * _VISION_HIDDEN,
            "num_heads": 2,
            "out_hidden_size": _TEXT_HIDDEN,
            "fullatt_block_indexes": [1],
            "patch_size": int(processor.video_processor.patch_size),
            "temporal_patch_size": int(processor.video_processor.temporal_patch_size),
            "spatial_merge_size": int(processor.video_processor.merge_size),
        },
        audio_config={
            "num_mel_bins": int(processor.feature_extractor.feature_size),
            "encoder_layers": 2,
            "encoder_attention_heads": 2,
            "encoder_ffn_dim": 2 * _AUDIO_HIDDEN,
            "d_model": _AUDIO_HIDDEN,
            "output_dim": _TEXT_HIDDEN,
        },
        audio_token_index=processor.audio_token_id,
        image_token_index=processor.image_token_id,
        video_token_index=processor.video_token_id,
        audio_start_token_id=_token_id(tokenizer, processor.audio_bos_token),
        audio_end_token_id=_token_id(tokenizer, processor.audio_eos_token),
        # Not a declared field, but the multimodal rope index reads it from the config.
        vision_start_token_id=_token_id(tokenizer, processor.vision_bos_token),
        vision_end_token_id=_token_id(tokenizer, processor.vision_eos_token),
        # Only recorded by the config (the thinker never reads it); the tiny vocabulary has no "user" token.
        user_token_id=tokenizer("user", add_special_tokens=False)["input_ids"][0],
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2_5OmniThinkerForConditionalGeneration(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model.eval()


def load_thinker(
    params: GlobalReasoningParams, processor: Qwen2_5OmniProcessor, *, key: str = "global_reasoning.checkpoint"
) -> Qwen2_5OmniThinkerForConditionalGeneration:
    """The thinker that ``params.checkpoint`` names, on ``params.device`` in ``params.dtype``, eval mode.

    A local folder may hold a full Qwen2.5-Omni (the thinker is taken out, the talker stays on disk)
    or a thinker alone; either loads strictly. ``key`` is the params.yaml key that named the checkpoint
    (errors name it). The towers are not frozen here: training calls ``freeze_towers`` with the flags.
    """
    dtype = _DTYPES[params.dtype]
    checkpoint = str(params.checkpoint)
    if checkpoint == TINY_CHECKPOINT:
        model = build_tiny_thinker(processor, seed=params.seed)
    elif checkpoint.startswith("builtin:"):
        raise ValueError(
            f"{key} in params.yaml is {checkpoint!r}, an unknown built-in; "
            f"use {TINY_CHECKPOINT!r} or the path of a local Qwen2.5-Omni (or thinker) checkpoint folder"
        )
    else:
        model = _load_checkpoint(Path(checkpoint).expanduser(), dtype, key)
    check_vocabulary(model, processor, checkpoint, key)
    return model.to(device=torch.device(params.device), dtype=dtype).eval()


def _load_checkpoint(path: Path, dtype: torch.dtype, key: str) -> Qwen2_5OmniThinkerForConditionalGeneration:
    from omni_r1.models.checkpoints import load_omni_thinker

    if not path.exists():
        raise FileNotFoundError(
            f"{key} in params.yaml names {path}, which does not exist; set it to "
            f"{TINY_CHECKPOINT!r} or to a local Qwen2.5-Omni checkpoint folder (nothing is downloaded)"
        )
    if not path.is_dir():
        raise NotADirectoryError(
            f"{key} in params.yaml names {path}, which is a file; set it to the "
            "checkpoint's folder (the one holding config.json and the safetensors weights)"
        )
    return load_omni_thinker(path, dtype, key)


# The thinker's config fields that must name the same tokens as the processor's tokenizer.
_SPECIAL_IDS = {"video_token_index": "video_token_id", "audio_token_index": "audio_token_id",
                "image_token_index": "image_token_id"}


def check_vocabulary(model: Any, processor: Qwen2_5OmniProcessor, checkpoint: str,
                     key: str = "global_reasoning.checkpoint") -> None:
    """Refuse a thinker whose vocabulary is not the tokenizer's (``features.tokenizer``) before any forward.

    The embedding must cover every token, and the placeholder ids the thinker reads from its config
    (video, audio, image) must be the tokenizer's. A real checkpoint with the tiny tokenizer, or the tiny
    thinker with a real tokenizer, fails here naming both keys instead of deep inside transformers.
    """
    tokenizer = processor.tokenizer
    rows = int(model.get_input_embeddings().weight.shape[0])
    fix = (f"set features.tokenizer in params.yaml to the tokenizer that ships with the checkpoint (for a "
           f"downloaded Qwen2.5-Omni: its folder), or {key} to a policy trained with features.tokenizer's vocabulary")
    if rows < len(tokenizer):
        raise ValueError(f"the thinker of {key} ({checkpoint}) embeds {rows} tokens but the tokenizer of "
                         f"features.tokenizer has {len(tokenizer)}; {fix}")
    config = model.config
    for field, attribute in _SPECIAL_IDS.items():
        want, have = getattr(config, field, None), getattr(processor, attribute, None)
        if want is not None and have is not None and int(want) != int(have):
            raise ValueError(f"the thinker of {key} ({checkpoint}) reads {field}={want} but the tokenizer of "
                             f"features.tokenizer has id {have} for that token; {fix}")


def _token_id(tokenizer: Any, token: str) -> int:
    token_id = tokenizer.convert_tokens_to_ids(token)
    if not isinstance(token_id, int) or token_id == tokenizer.unk_token_id:
        raise ValueError(f"the tokenizer has no token {token!r}; rebuild it (features.tokenizer in params.yaml)")
    return token_id


def to_device(inputs: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """Model inputs moved to ``device`` (a no-op for tensors already there)."""
    return {name: tensor.to(device) for name, tensor in inputs.items()}


class FreezeCounts(NamedTuple):
    """Parameter counts (elements) after ``freeze_towers``."""

    frozen: int
    trainable: int


def towers(model: Qwen2_5OmniThinkerForConditionalGeneration) -> dict[str, torch.nn.Module]:
    """The thinker's encoders: ``{"vision": model.model.visual, "audio": model.model.audio_tower}``."""
    return {"vision": model.model.visual, "audio": model.model.audio_tower}


def freeze_towers(model: Qwen2_5OmniThinkerForConditionalGeneration, vision: bool, audio: bool) -> FreezeCounts:
    """Turn off gradients of the vision and/or audio encoder; a tower not asked for is left as it is."""
    encoders = towers(model)
    for name, wanted in (("vision", vision), ("audio", audio)):
        if wanted:
            encoders[name].requires_grad_(False)
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return FreezeCounts(frozen=frozen, trainable=trainable)


# ----------------------------------------------------------------------------------------------- the system


@dataclass
class GlobalReasoner:
    """System 1: a thinker, its processor and the ``global_reasoning`` params.

    ``build_inputs`` turns a cached ``FeatureRecord`` and a prompt into model inputs; ``generate``
    samples completions; ``select`` does both for one expression and parses the answers.
    """

    model: Qwen2_5OmniThinkerForConditionalGeneration
    processor: Qwen2_5OmniProcessor
    params: GlobalReasoningParams

    @classmethod
    def from_params(cls, params: GlobalReasoningParams, processor: Qwen2_5OmniProcessor) -> GlobalReasoner:
        return cls(model=load_thinker(params, processor), processor=processor, params=params)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def chat_text(self, prompt: str, *, video: bool = True, audio: bool = False) -> str:
        """The chat-templated user turn (video, then audio, then ``prompt``) up to the assistant's reply."""
        content: list[dict[str, str]] = []
        if video:
            content.append({"type": "video"})
        if audio:
            content.append({"type": "audio"})
        content.append({"type": "text", "text": prompt})
        messages = [{"role": "user", "content": content}]
        return str(self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))

    def build_inputs(
        self, record: FeatureRecord, prompt: str, *, use_audio: bool | None = None
    ) -> dict[str, torch.Tensor]:
        """Model inputs for one cached video (and its audio, by default when it has some) and ``prompt``.

        Returns ``input_ids``/``attention_mask`` (1, L); ``pixel_values_videos`` (patches, dim);
        ``video_grid_thw`` (1, 3); ``video_second_per_grid`` (1,); with audio also
        ``input_features`` (1, mel_bins, frames) and ``feature_attention_mask`` (1, frames). The tensors stay
        on the CPU; whatever runs the model moves them (``to_device``).
        """
        audio = record.has_audio if use_audio is None else use_audio
        if audio and not record.has_audio:
            raise ValueError(f"feature record {record.key!r} has no audio; build its inputs with use_audio=False")
        text = self.chat_text(prompt, video=True, audio=audio)
        self._check_placeholder_text(text, audio)
        grid = np.asarray(record.video_grid_thw, dtype=np.int64)
        video_tokens = self.processor.replace_video_token(
            {"video_grid_thw": grid[None]}, video_idx=0, load_audio_from_video=False
        )
        audio_tokens = [self._audio_placeholder(record.audio_feature_length)] if audio else []
        [expanded], _ = self.processor.get_text_with_replacements([text], [], [video_tokens], audio_tokens)
        encoded = self.processor.tokenizer(expanded, return_tensors="pt")
        self._check_placeholders(encoded["input_ids"], grid, record.audio_feature_length if audio else 0)
        inputs: dict[str, torch.Tensor] = {
            "input_ids": encoded["input_ids"],
            "attention_mask": encoded["attention_mask"],
            "pixel_values_videos": torch.from_numpy(record.pixel_values_videos).to(self.dtype),
            "video_grid_thw": torch.from_numpy(grid[None].copy()),
            "video_second_per_grid": torch.tensor([record.video_second_per_grid], dtype=torch.float32),
        }
        if audio:
            mel = torch.from_numpy(record.input_features)[None].to(self.dtype)
            inputs["input_features"] = mel
            # Only valid frames are cached, so the mask is all ones.
            inputs["feature_attention_mask"] = torch.ones((1, mel.shape[-1]), dtype=torch.long)
        return inputs  # on the CPU until used: a run holds many prompts, the model moves one at a time

    def generate_ids(
        self,
        inputs: dict[str, torch.Tensor],
        *,
        num_return_sequences: int = 1,
        do_sample: bool = True,
        seed: int | None = None,
        max_new_tokens: int | None = None,
    ) -> torch.Tensor:
        """The new tokens only: (num_return_sequences, new_tokens), padded after EOS with the pad id.

        Sampling uses ``params.temperature`` and ``params.top_p`` (no top-k cut); greedy decoding
        gives one sequence repeated ``num_return_sequences`` times.
        """
        if num_return_sequences < 1:
            raise ValueError(f"num_return_sequences={num_return_sequences} must be at least 1 (the group size G)")
        tokenizer = self.processor.tokenizer
        options: dict[str, Any] = {
            "max_new_tokens": max_new_tokens or self.params.max_new_tokens,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
            "do_sample": do_sample,
        }
        if do_sample:
            options |= {
                "temperature": self.params.temperature,
                "top_p": self.params.top_p,
                "top_k": None,
                "num_return_sequences": num_return_sequences,
            }
        inputs = to_device(inputs, self.device)
        prompt_length = inputs["input_ids"].shape[1]
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.no_grad(), torch.random.fork_rng(devices=devices):
            torch.manual_seed(self.params.seed if seed is None else seed)
            sequences = self.model.generate(**inputs, **options)
        new_tokens = sequences[:, prompt_length:]
        if not do_sample and num_return_sequences > 1:
            new_tokens = new_tokens.expand(num_return_sequences, -1)
        return new_tokens

    def sample_ids(
        self,
        inputs: dict[str, torch.Tensor],
        *,
        num_return_sequences: int = 1,
        do_sample: bool = True,
        seed: int | None = None,
        max_new_tokens: int | None = None,
        encoding: PromptEncoding | None = None,
        all_done: Callable[[bool], bool] | None = None,
    ) -> torch.Tensor:
        """System 1's completions (num_return_sequences, C) on the CPU, through the engine of
        ``omni_r1.systems.system1``: the one sampler of training, held-out evaluation and predict.

        ``encoding`` is the prompt's cached ``PromptEncoding`` (encoded here when not given); the sampling
        follows ``params.temperature`` / ``params.top_p`` under a generator seeded with ``seed`` (default
        ``params.seed``), by the sampler ``params.sampler`` names (``static``: ``omni_r1.rl.static_sampler``).
        With trainable towers nothing can be cached: transformers' ``generate``.
        """
        if not towers_frozen(self.model):
            return self.generate_ids(inputs, num_return_sequences=num_return_sequences, do_sample=do_sample,
                                     seed=seed, max_new_tokens=max_new_tokens).detach().cpu()
        if self.params.sampler == "static":  # one batch on a static KV cache (greedy ids equal the plain path's)
            from omni_r1.rl.static_sampler import sample_for_reasoner

            [ids] = sample_for_reasoner(self, [encoding or encode_prompt(self.model, inputs)],
                                        num=num_return_sequences, do_sample=do_sample,
                                        seeds=[self.params.seed if seed is None else seed],
                                        max_new_tokens=max_new_tokens or self.params.max_new_tokens, all_done=all_done)
            return ids
        tokenizer = self.processor.tokenizer
        generator = torch.Generator(device=self.device).manual_seed(self.params.seed if seed is None else seed)
        ids = sample_completions(self.model, encoding or encode_prompt(self.model, inputs), num=num_return_sequences,
                                 max_new_tokens=max_new_tokens or self.params.max_new_tokens,
                                 eos_id=int(tokenizer.eos_token_id), pad_id=int(tokenizer.pad_token_id),
                                 do_sample=do_sample, temperature=self.params.temperature, top_p=self.params.top_p,
                                 generator=generator, all_done=all_done)
        return ids.cpu()

    def decode(self, token_ids: torch.Tensor) -> list[str]:
        """Completions as text; special tokens dropped, the reasoning tags (plain tokens) kept."""
        return self.processor.tokenizer.batch_decode(
            token_ids, skip_special_tokens=True, clean_up_tokenization_spaces=False
        )

    def generate(
        self,
        inputs: dict[str, torch.Tensor],
        *,
        num_return_sequences: int = 1,
        do_sample: bool = True,
        seed: int | None = None,
        max_new_tokens: int | None = None,
    ) -> list[str]:
        """``num_return_sequences`` decoded completions for ``inputs``, sampled by the engine (``sample_ids``)."""
        return self.decode(
            self.sample_ids(
                inputs,
                num_return_sequences=num_return_sequences,
                do_sample=do_sample,
                seed=seed,
                max_new_tokens=max_new_tokens,
            )
        )

    def prompt_for(
        self, record: FeatureRecord, expression: str, *, task: Task, seed: int | None = None,
        num_frames: int | None = None,
    ) -> str:
        """The task's prompt for ``record``: the clip's duration (ReVOS) or audio length (RefAVS) filled in.

        ``num_frames`` is the sample's sampled frame count (the official duration is that / 2); by
        default the frames the thinker sees, which the processor pads to an even count.
        """
        if task == "refavs":
            return refavs_prompt(expression, self.audio_seconds(record))
        rng = random.Random(self.params.seed if seed is None else seed)
        frames = self.clip_frames(record) if num_frames is None else num_frames
        return revos_prompt(expression, frames, rng, fps=self.sample_fps(record))

    def clip_seconds(self, record: FeatureRecord, num_frames: int | None = None) -> float:
        """The duration the prompt states: ``num_frames`` (the sample's sampled frames, as the official
        ``len(frames) / 2``; by default the thinker's padded frame count) / the sample fps."""
        frames = self.clip_frames(record) if num_frames is None else num_frames
        return frames / self.sample_fps(record)

    def clip_frames(self, record: FeatureRecord) -> int:
        """Frames the thinker sees: temporal patches x temporal patch size (an even count)."""
        return int(record.video_grid_thw[0]) * self._temporal_patch

    def sample_fps(self, record: FeatureRecord) -> float:
        """The rate the frames are treated as (2 in Omni-R1), recovered from the cached grid timing."""
        return self._temporal_patch / float(record.video_second_per_grid)

    def audio_seconds(self, record: FeatureRecord) -> float:
        extractor = self.processor.feature_extractor
        return record.audio_feature_length * int(extractor.hop_length) / int(extractor.sampling_rate)

    def select(
        self,
        record: FeatureRecord,
        expression: str,
        *,
        task: Task = "revos",
        num_frames: int | None = None,
        num_return_sequences: int = 1,
        do_sample: bool = False,
        seed: int | None = None,
        use_audio: bool | None = None,
    ) -> list[KeyframeSelection | AnswerParseError]:
        """Prompt, generate and parse: one ``KeyframeSelection`` or parse error per completion.

        ``num_frames`` is the sample's real frame count (chosen frames are clipped to its last
        frame); by default the frames the thinker saw. The prompt's example timestamps and the
        sampling both follow ``seed`` (default ``params.seed``).
        """
        seed = self.params.seed if seed is None else seed
        prompt = self.prompt_for(record, expression, task=task, seed=seed, num_frames=num_frames)
        inputs = self.build_inputs(record, prompt, use_audio=use_audio)
        completions = self.generate(
            inputs, num_return_sequences=num_return_sequences, do_sample=do_sample, seed=seed
        )
        frames = self.clip_frames(record) if num_frames is None else num_frames
        return [
            try_parse(
                text,
                task=task,
                duration=self.clip_seconds(record, num_frames),
                num_frames=frames,
                fps=self.sample_fps(record),
                max_keyframes=self.params.max_keyframes,
            )
            for text in completions
        ]

    @property
    def _temporal_patch(self) -> int:
        return int(self.processor.video_processor.temporal_patch_size)

    def _audio_placeholder(self, mel_frames: int) -> str:
        from transformers.models.qwen2_5_omni.processing_qwen2_5_omni import _get_feat_extract_output_lengths

        tokens = int(_get_feat_extract_output_lengths(np.asarray([mel_frames]))[0])
        return self.processor.replace_audio_token({"num_audio_tokens": [tokens]}, audio_idx=0)

    def _check_placeholder_text(self, text: str, audio: bool) -> None:
        found = (text.count(self.processor.video_token), text.count(self.processor.audio_token))
        if found != (1, int(audio)):
            raise ValueError(
                f"the chat text holds {found[0]} video and {found[1]} audio placeholders, want 1 and {int(audio)}; "
                "the prompt text holds a placeholder token of its own: clean it with prompts.clean_text"
            )

    def _check_placeholders(self, input_ids: torch.Tensor, grid: np.ndarray, mel_frames: int) -> None:
        merge = int(self.processor.video_processor.merge_size)
        want_video = int(np.prod(grid)) // (merge * merge)
        want_audio = int(self._audio_placeholder(mel_frames).count(self.processor.audio_token)) if mel_frames else 0
        got_video = int((input_ids == self.processor.video_token_id).sum())
        got_audio = int((input_ids == self.processor.audio_token_id).sum())
        if (got_video, got_audio) != (want_video, want_audio):
            raise ValueError(
                f"the prompt tokenised to {got_video} video and {got_audio} audio tokens, but the cached features "
                f"need {want_video} and {want_audio}; the prompt text holds a placeholder token of its own: "
                "clean it with prompts.clean_text"
            )

