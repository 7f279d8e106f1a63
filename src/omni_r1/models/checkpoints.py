"""Local checkpoint folders as they are published, and what this project takes out of each.

Users point ``params.yaml`` at folders they downloaded; nothing downloads here. A folder's
``config.json`` says what it holds (``model_type``):

- ``qwen2_5_omni``: the full Qwen2.5-Omni (thinker + talker + token2wav, and ``spk_dict.pt``). The
  thinker is taken out in code: its class loads the ``thinker.*`` weights of the folder and leaves
  the talker and token2wav on disk.
- ``qwen2_5_omni_thinker``: a thinker saved on its own (``thinker.save_pretrained``, or this
  project's exported policy).
- ``qwen2_5_vl`` (and any other image-text-to-text model): a grounding VLM for System 2.

Weights load through ``from_pretrained`` (safetensors) and are checked strictly: a missing,
unexpected or mis-shaped weight of the part we use is an error naming the key to change.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

OMNI_FULL = "qwen2_5_omni"
OMNI_THINKER = "qwen2_5_omni_thinker"
OMNI_TYPES = (OMNI_FULL, OMNI_THINKER)


class CheckpointFolderError(ValueError):
    """A checkpoint folder that is missing, of the wrong kind, or does not load strictly; names the key."""


def model_type(path: Path, key: str) -> str:
    """The ``model_type`` in ``path/config.json``; errors name the params.yaml ``key`` that points here."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointFolderError(
            f"{key} in params.yaml names {path}, which is not a local folder; set it to a downloaded checkpoint "
            "folder (the one holding config.json and the safetensors weights); nothing is downloaded"
        )
    config = path / "config.json"
    try:
        found = json.loads(config.read_text()).get("model_type")
    except (OSError, json.JSONDecodeError) as error:
        raise CheckpointFolderError(f"{key}: {config} is missing or not JSON ({error}); point {key} at a "
                                    "transformers checkpoint folder") from error
    if not isinstance(found, str):
        raise CheckpointFolderError(f"{key}: {config} names no model_type; point {key} at a transformers "
                                    "checkpoint folder")
    return found


def thinker_config(path: Path, key: str) -> Any:
    """The thinker's config of a full Qwen2.5-Omni or a thinker-only folder; any other kind is refused."""
    from transformers import AutoConfig

    kind = model_type(path, key)
    if kind not in OMNI_TYPES:
        raise CheckpointFolderError(
            f"{key} names {path}, a {kind!r} checkpoint; System 1 is the Qwen2.5-Omni thinker: use a full "
            f"Qwen2.5-Omni folder ({OMNI_FULL}) or a thinker folder ({OMNI_THINKER})"
        )
    config = AutoConfig.from_pretrained(str(path), local_files_only=True)
    return config.thinker_config if kind == OMNI_FULL else config


def check_loading_info(info: dict[str, Any], path: Path, key: str, what: str) -> None:
    """Refuse a load that left weights missing, unexpected or mis-shaped (``output_loading_info``)."""
    problems = {name: list(info.get(name) or []) for name in ("missing_keys", "unexpected_keys", "mismatched_keys",
                                                               "error_msgs")}
    if any(problems.values()):
        found = "; ".join(f"{name}: {values[:5]}" for name, values in problems.items() if values)
        raise CheckpointFolderError(
            f"{key}: the {what} at {path} does not match its config ({found}); point {key} at a complete "
            "checkpoint folder, not a partial or different model"
        )


def load_omni_thinker(path: Path, dtype: torch.dtype, key: str) -> Any:
    """The Qwen2.5-Omni thinker of a full or thinker-only folder, loaded strictly, eval mode."""
    from transformers import Qwen2_5OmniThinkerForConditionalGeneration

    path = Path(path)
    config = thinker_config(path, key)
    model, info = Qwen2_5OmniThinkerForConditionalGeneration.from_pretrained(
        str(path), config=config, local_files_only=True, dtype=dtype, output_loading_info=True
    )
    check_loading_info(info, path, key, "thinker")
    return model.eval()


def load_grounder(path: Path, dtype: torch.dtype, key: str = "detail.grounder_checkpoint") -> tuple[Any, Any]:
    """(model, processor) of a grounding VLM folder: Qwen2.5-VL or any image-text-to-text model, or the
    thinker of a Qwen2.5-Omni folder (full or thinker-only) with its Omni processor."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    path = Path(path)
    kind = model_type(path, key)
    try:
        processor = AutoProcessor.from_pretrained(str(path), local_files_only=True)
        if kind in OMNI_TYPES:
            return load_omni_thinker(path, dtype, key), processor
        model, info = AutoModelForImageTextToText.from_pretrained(str(path), local_files_only=True, dtype=dtype,
                                                                  output_loading_info=True)
    except (OSError, ValueError, KeyError) as error:
        if isinstance(error, CheckpointFolderError):
            raise
        raise CheckpointFolderError(
            f"{key}: {path} ({kind}) does not load as a grounding VLM ({str(error)[:300]}); point it at a local "
            "Qwen2.5-VL, Qwen2.5-Omni or other image-text-to-text checkpoint folder with its processor"
        ) from error
    check_loading_info(info, path, key, "grounder")
    return model.eval(), processor
