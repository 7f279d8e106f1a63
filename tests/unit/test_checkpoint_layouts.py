"""Checkpoint folders in the layouts users download (tests/layouts.py), loaded through the real code paths.

A full Qwen2.5-Omni folder (talker, token2wav, ``spk_dict.pt``) serves as the starting policy and as
the grounder, with the thinker taken out in code; a thinker-only folder and a Qwen2.5-VL folder load as
what they are; an official SAM2.1 ``.pt`` loads strictly into the predictor. Settings that would run on
garbage fail at start naming the key: an empty ``detail.sam2_checkpoint``, a policy of another kind,
a policy whose vocabulary is not ``features.tokenizer``'s.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from omni_r1.config import DetailParams, GlobalReasoningParams
from omni_r1.models.checkpoints import CheckpointFolderError, model_type
from omni_r1.models.processor import build_processor
from omni_r1.systems.detail import DetailSetupError, Sam2Segmenter, VlmGrounder, build_sam2_predictor, build_segmenter
from omni_r1.systems.global_reasoning import load_thinker
from tests.layouts import save_full_omni, save_qwen2_5_vl, save_sam2_checkpoint, save_thinker


@pytest.fixture(scope="module")
def processor():
    return build_processor("builtin:tiny", min_pixels=16 * 28 * 28, max_pixels=128 * 28 * 28)


@pytest.fixture(scope="module")
def folders(processor, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("layouts")
    save_full_omni(root / "Qwen2.5-Omni", processor, seed=3)
    save_thinker(root / "thinker", processor, seed=3)
    save_qwen2_5_vl(root / "Qwen2.5-VL", processor, seed=1)
    return {"omni": root / "Qwen2.5-Omni", "thinker": root / "thinker", "vl": root / "Qwen2.5-VL", "root": root}


def _states_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_the_layouts_are_the_published_ones(folders) -> None:
    omni = folders["omni"]
    assert model_type(omni, "k") == "qwen2_5_omni" and (omni / "spk_dict.pt").is_file()
    config = json.loads((omni / "config.json").read_text())
    assert {"thinker_config", "talker_config", "token2wav_config"} <= config.keys()
    assert model_type(folders["thinker"], "k") == "qwen2_5_omni_thinker"
    assert model_type(folders["vl"], "k") == "qwen2_5_vl"


def test_a_full_omni_folder_is_a_starting_policy(processor, folders) -> None:
    params = GlobalReasoningParams(checkpoint=str(folders["omni"]))
    policy = load_thinker(params, processor, key="train.init_checkpoint")
    assert type(policy).__name__ == "Qwen2_5OmniThinkerForConditionalGeneration"
    thinker_only = load_thinker(dataclasses.replace(params, checkpoint=str(folders["thinker"])), processor)
    assert _states_equal(policy, thinker_only)  # the same thinker, taken out of the full folder in code


def test_a_grounder_folder_is_refused_as_policy_naming_the_key(processor, folders) -> None:
    with pytest.raises(CheckpointFolderError, match=r"train\.init_checkpoint.*'qwen2_5_vl'.*thinker"):
        load_thinker(GlobalReasoningParams(checkpoint=str(folders["vl"])), processor, key="train.init_checkpoint")


def test_a_policy_with_another_vocabulary_is_refused_naming_features_tokenizer(processor, folders, tmp_path) -> None:
    # What a real Qwen2.5-Omni thinker with features.tokenizer: builtin:tiny looks like: its placeholder
    # ids are not the tiny tokenizer's.
    folder = tmp_path / "other-vocab"
    save_thinker(folder, processor, seed=0)
    config = json.loads((folder / "config.json").read_text())
    config["video_token_index"] = 151656
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"video_token_index=151656.*features\.tokenizer.*train\.init_checkpoint"):
        load_thinker(GlobalReasoningParams(checkpoint=str(folder)), processor, key="train.init_checkpoint")


@pytest.mark.parametrize("name,model_class,processor_class", [
    ("omni", "Qwen2_5OmniThinkerForConditionalGeneration", "Qwen2_5OmniProcessor"),
    ("vl", "Qwen2_5_VLForConditionalGeneration", "Qwen2_5_VLProcessor"),
])
def test_omni_and_qwen2_5_vl_folders_are_grounders(folders, name, model_class, processor_class) -> None:
    grounder = VlmGrounder.from_checkpoint(folders[name], "cpu", max_objects=3)
    grounder.max_new_tokens = 6
    assert type(grounder.model).__name__ == model_class and type(grounder.processor).__name__ == processor_class
    assert not any(p.requires_grad for p in grounder.model.parameters())
    frame = np.random.default_rng(0).integers(0, 255, (64, 96, 3), dtype=np.uint8)
    entries = grounder.ground(frame, "the red circle")  # random weights: whatever it says, it parses or counts
    assert isinstance(entries, list)


def test_the_omni_grounder_is_the_folders_thinker(processor, folders) -> None:
    grounder = VlmGrounder.from_checkpoint(folders["omni"], "cpu", max_objects=3)
    policy = load_thinker(GlobalReasoningParams(checkpoint=str(folders["thinker"])), processor)
    assert _states_equal(grounder.model, policy)


def test_a_broken_grounder_folder_names_the_key(tmp_path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen2_5_vl"}))
    with pytest.raises(DetailSetupError, match=r"detail\.grounder_checkpoint"):
        VlmGrounder.from_checkpoint(tmp_path, "cpu", max_objects=3)


def test_an_official_sam2_checkpoint_loads_through_the_factory(folders) -> None:
    pt = folders["root"] / "sam2.1_hiera_tiny.pt"
    saved = save_sam2_checkpoint(pt, seed=5)
    loaded = torch.load(pt, map_location="cpu", weights_only=True)
    assert set(loaded) == {"model"}
    segmenter = build_segmenter(DetailParams(backend="sam2", grounder_checkpoint=str(folders["omni"]),
                                             sam2_checkpoint=str(pt), sam2_image_size=256))
    assert isinstance(segmenter, Sam2Segmenter) and isinstance(segmenter.grounder, VlmGrounder)
    state = segmenter.predictor.state_dict()
    assert state.keys() == saved.keys() and all(torch.equal(state[k], saved[k]) for k in saved)


def test_an_empty_sam2_checkpoint_is_an_error_unless_it_says_random(folders) -> None:
    with pytest.raises(DetailSetupError, match=r"detail\.sam2_checkpoint is empty.*'random'"):
        build_segmenter(DetailParams(backend="sam2", grounder_checkpoint=str(folders["vl"]), sam2_checkpoint=""))
    with pytest.raises(DetailSetupError, match=r"detail\.sam2_checkpoint is empty"):
        build_sam2_predictor(DetailParams(backend="sam2", sam2_image_size=256))
    predictor = build_sam2_predictor(DetailParams(backend="sam2", sam2_checkpoint="random", sam2_image_size=256))
    assert sum(p.numel() for p in predictor.parameters()) > 0
