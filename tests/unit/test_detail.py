"""System 2 (omni_r1.systems.detail, omni_r1.systems.light): factory errors, SAM2 propagation, the light models.

Samples are built straight from the synthetic generator (``describe_scene`` + ``render``), which
gives frames and exact visible masks without the shard pipeline. ``OracleBoxGrounderForTests`` is
a test double that reads those masks: it stands in for a grounding model so that the real SAM2
propagation (tiny random weights) and the light U-Net can be exercised with known boxes.
"""

from __future__ import annotations

import inspect
from pathlib import Path

import numpy as np
import pytest
import torch

from omni_r1.config import DetailParams
from omni_r1.data.masks import encode_rle
from omni_r1.data.synthetic import SynthSpec, describe_scene, render, split_of
from omni_r1.detail_training import train_light_models
from omni_r1.systems import light as lm
from omni_r1.systems.detail import (
    Box,
    DetailSetupError,
    KeyframePrompt,
    LightSegmenter,
    ModelBoxGrounder,
    Sam2Segmenter,
    SegmentResult,
    VlmGrounder,
    build_sam2_predictor,
    build_segmenter,
)
from omni_r1.types import MaskTrack, ObjectMasks, Sample


def synthetic_samples(videos: int, *, width: int = 96, height: int = 64, frames: int = 6, stride: int = 2,
                      seed: int = 4) -> list[Sample]:
    """One Sample per (video, expression): ``frames`` sampled frames, every ``stride``-th native frame."""
    spec = SynthSpec(videos=videos, seed=seed, width=width, height=height, fps=10,
                     seconds=max(1.0, frames * stride / 10))
    samples = []
    for index in range(videos):
        scene = describe_scene(spec, index)
        native, visible = render(scene, spec.num_frames)
        picked = tuple(range(0, frames * stride, stride))
        high = np.ascontiguousarray(native[list(picked)])
        for exp in scene.expressions:
            objects = tuple(ObjectMasks(str(t), tuple(encode_rle(m) if m.any() else None for m in visible[t]))
                            for t in exp.targets)
            meta = {"split": split_of(index, videos), "expression": exp.text, "cue": exp.cue,
                    "exp_type": exp.exp_type, "video_id": scene.video_id}
            samples.append(Sample(f"{scene.video_id}/{exp.exp_id}", meta, picked, tuple(p / 10 for p in picked),
                                  high, high, np.zeros(0, np.float32),
                                  MaskTrack(height, width, spec.num_frames, objects)))
    return samples


class OracleBoxGrounderForTests:
    """Test double for a grounder: returns the true box of the sample's target on the frame it is shown.

    It reads ground truth, which only a test double may do; it finds the frame by its pixels.
    """

    def __init__(self, sample: Sample, pad: float = 2.0) -> None:
        self.frames = sample.high_res
        self.masks = sample.target_masks()
        self.pad = pad
        self.calls = 0

    def ground(self, frame: np.ndarray, description: str, task: str = "revos") -> list[Box]:
        self.calls += 1
        t = next(i for i, f in enumerate(self.frames) if np.array_equal(f, frame))
        ys, xs = np.nonzero(self.masks[t])
        if ys.size == 0:
            return []
        h, w = self.masks.shape[1:]
        return [Box(max(0.0, xs.min() - self.pad), max(0.0, ys.min() - self.pad),
                    min(float(w), xs.max() + 1 + self.pad), min(float(h), ys.max() + 1 + self.pad))]


def _appearance(samples: list[Sample]) -> Sample:
    """A referring appearance sample whose target shows on every sampled frame."""
    for s in samples:
        shown = s.target_masks().any(axis=(1, 2))
        if s.meta["cue"] == "appearance" and s.meta["exp_type"] == "referring" and shown.all():
            return s
    raise AssertionError("no suitable synthetic sample; change the seed")


def _tiny_params(tmp_path: Path, **overrides) -> DetailParams:
    values = dict(light_checkpoint=str(tmp_path / "detail"), light_size=32, light_steps=3, light_batch=4,
                  light_lr=0.003, seed=0)
    values.update(overrides)
    return DetailParams(**values)


def _check_result(result: SegmentResult, frames: np.ndarray) -> None:
    t, h, w = frames.shape[:3]
    assert result.masks.shape == (t, h, w) and result.masks.dtype == bool
    assert result.object_masks.ndim == 4 and result.object_masks.shape[1:] == (t, h, w)
    assert result.object_masks.dtype == bool
    assert result.object_masks.shape[0] == sum(len(b) for b in result.boxes.values())
    np.testing.assert_array_equal(result.masks, result.object_masks.any(axis=0))
    assert set(result.timings) == {"ground", "segment", "propagate"}
    assert all(v >= 0 for v in result.timings.values())


# ----------------------------------------------------------------------------------------------- factory


def test_factory_light_without_checkpoint_names_the_key(tmp_path: Path) -> None:
    with pytest.raises(DetailSetupError, match=r"detail\.light_checkpoint.*train"):
        build_segmenter(DetailParams(backend="light", light_checkpoint=str(tmp_path / "none")))


def test_factory_sam2_without_grounder_names_the_key(tmp_path: Path) -> None:
    for value in ("", str(tmp_path / "missing")):
        with pytest.raises(DetailSetupError, match=r"detail\.grounder_checkpoint.*detail\.backend: light"):
            build_segmenter(DetailParams(backend="sam2", grounder_checkpoint=value))


def test_factory_sam2_with_missing_sam2_checkpoint_names_the_key(tmp_path: Path) -> None:
    params = DetailParams(backend="sam2", grounder_checkpoint=str(tmp_path), sam2_checkpoint=str(tmp_path / "x.pt"))
    with pytest.raises(DetailSetupError, match=r"detail\.sam2_checkpoint.*does not exist"):
        build_segmenter(params)


@pytest.fixture(scope="module")
def small_samples() -> list[Sample]:
    return synthetic_samples(5, frames=4)


@pytest.fixture(scope="module")
def tiny_light(tmp_path_factory: pytest.TempPathFactory, small_samples) -> DetailParams:
    """Light models trained for 3 steps at 32 px: weights to exercise the code, not to be good."""
    params = _tiny_params(tmp_path_factory.mktemp("light"))
    train_light_models(small_samples, params, Path(params.light_checkpoint))
    return params


def test_factory_builds_the_light_backend(tiny_light: DetailParams) -> None:
    segmenter = build_segmenter(tiny_light)
    assert isinstance(segmenter, LightSegmenter)
    assert isinstance(segmenter.grounder, ModelBoxGrounder)


def test_sam2_checkpoint_is_loaded_strictly(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pt"
    torch.save({"model": {"not_a_sam2_key": torch.zeros(1)}}, bad)
    params = DetailParams(backend="sam2", sam2_checkpoint=str(bad), sam2_image_size=256)
    with pytest.raises(DetailSetupError, match=r"detail\.sam2_checkpoint.*strictly"):
        build_sam2_predictor(params)


# ----------------------------------------------------------------------------------------------- sam2


class PredictorSpy:
    """Wraps the real SAM2 predictor, counting image encoder passes and frames yielded."""

    def __init__(self, predictor) -> None:
        self.predictor = predictor
        self.device = predictor.device
        self.encoder_passes = 0
        self.frames: list[tuple[int, bool]] = []
        original = type(predictor).forward_image.__get__(predictor)  # not an earlier spy's counter

        def counted(img_batch):
            self.encoder_passes += 1
            return original(img_batch)

        predictor.forward_image = counted
        self.image_size = predictor.image_size

    def forward_image(self, img_batch):
        return self.predictor.forward_image(img_batch)

    def add_new_points_or_box(self, *args, **kwargs):
        return self.predictor.add_new_points_or_box(*args, **kwargs)

    def propagate_in_video(self, state, **kwargs):
        for out in self.predictor.propagate_in_video(state, **kwargs):
            self.frames.append((out[0], bool(kwargs.get("reverse", False))))
            yield out


@pytest.fixture(scope="module")
def tiny_sam2():
    """Random-weight SAM2.1 hiera-t at image_size 256 on CPU (design.md section 4)."""
    torch.manual_seed(0)
    return build_sam2_predictor(DetailParams(backend="sam2", sam2_checkpoint="random", sam2_image_size=256,
                                             device="cpu"))


@pytest.fixture(scope="module")
def square_samples() -> list[Sample]:
    return synthetic_samples(3, width=256, height=256, frames=3, stride=3, seed=4)


@pytest.mark.slow
def test_sam2_propagates_box_prompts_to_every_frame(tiny_sam2, square_samples) -> None:
    sample = _appearance(square_samples)
    spy = PredictorSpy(tiny_sam2)
    grounder = OracleBoxGrounderForTests(sample)
    segmenter = Sam2Segmenter(spy, grounder, max_objects=3, reverse_pass=True)
    result = segmenter.segment(sample.high_res, [KeyframePrompt(1, sample.expression)])
    _check_result(result, sample.high_res)
    assert list(result.boxes) == [1] and len(result.boxes[1]) == 1
    assert result.object_masks.shape[0] == 1
    # detail.reverse_pass: forward from the keyframe over frames 1..2, then reverse from it to frame 0
    assert spy.frames == [(1, False), (2, False), (1, True), (0, True)]
    assert spy.encoder_passes == 3  # each frame's features once, shared by the forward and the reverse pass
    # the official default: one forward pass; the frame before the keyframe stays empty
    forward = PredictorSpy(tiny_sam2)
    official = Sam2Segmenter(forward, OracleBoxGrounderForTests(sample), max_objects=3)
    result = official.segment(sample.high_res, [KeyframePrompt(1, sample.expression)])
    assert forward.frames == [(1, False), (2, False)] and not result.masks[0].any()


def test_sam2_gets_only_the_first_k_entries_per_keyframe(tiny_sam2, square_samples) -> None:
    sample = _appearance(square_samples)
    spy = PredictorSpy(tiny_sam2)
    segmenter = Sam2Segmenter(spy, OracleBoxGrounderForTests(sample), max_objects=3)
    [result] = segmenter.segment_batch(sample.high_res, [[KeyframePrompt(1, sample.expression)]],
                                       boxes_per_keyframe=0)
    assert result.object_masks.shape[0] == 0 and result.boxes == {} and len(result.entries[1]) == 1


@pytest.mark.slow
def test_sam2_group_shares_one_pass(tiny_sam2, square_samples) -> None:
    sample = _appearance(square_samples)
    text = sample.expression
    widest = [KeyframePrompt(0, text), KeyframePrompt(2, text)]
    alone = PredictorSpy(tiny_sam2)
    Sam2Segmenter(alone, OracleBoxGrounderForTests(sample), max_objects=3).segment(sample.high_res, widest)

    grounder = OracleBoxGrounderForTests(sample)
    spy = PredictorSpy(tiny_sam2)
    group = [[KeyframePrompt(0, text)], widest, [KeyframePrompt(0, text)], []]
    results = Sam2Segmenter(spy, grounder, max_objects=3).segment_batch(sample.high_res, group)
    assert len(results) == 4
    for result in results:
        _check_result(result, sample.high_res)
    assert [r.object_masks.shape[0] for r in results] == [1, 2, 1, 0]
    assert not results[3].masks.any()
    assert grounder.calls == 2  # (frame 0, text) and (frame 2, text), each grounded once for the group
    # the group of four answers costs the image encoder no more than its widest answer alone
    assert spy.encoder_passes == alone.encoder_passes


def test_sam2_empty_group_skips_the_predictor(square_samples) -> None:
    sample = _appearance(square_samples)

    class NoPredictor:
        device = torch.device("cpu")

        def init_state(self, folder):
            raise AssertionError("no box, no SAM2 pass")

    class NothingFound:
        def ground(self, frame, description, task="revos"):
            return []

    result = Sam2Segmenter(NoPredictor(), NothingFound(), 3).segment(sample.high_res, [KeyframePrompt(0, "x")])
    _check_result(result, sample.high_res)
    assert result.object_masks.shape[0] == 0 and not result.masks.any() and result.boxes == {}


# ----------------------------------------------------------------------------------------------- grounding VLM


class ScriptedVlmForTests:
    """Test double for a transformers VLM + processor: answers a fixed text, records what it was asked."""

    def __init__(self, answer: str, grid: tuple[int, int, int] | None = (1, 8, 10)) -> None:
        self.answer = answer
        self.grid = grid
        self.device = torch.device("cpu")
        self.image_processor = type("P", (), {"patch_size": 14})()
        self.prompts: list[str] = []
        self.generate_kwargs: dict = {}

    def apply_chat_template(self, messages, tokenize, add_generation_prompt):
        self.prompts.append(messages[0]["content"][1]["text"])
        return "prompt"

    def __call__(self, text, images, return_tensors):
        out = {"input_ids": torch.zeros(1, 5, dtype=torch.long)}
        if self.grid is not None:
            out["image_grid_thw"] = torch.tensor([self.grid])
        return out

    def generate(self, **kwargs):
        self.generate_kwargs = kwargs
        return torch.zeros(1, 9, dtype=torch.long)

    def batch_decode(self, ids, skip_special_tokens):
        assert ids.shape == (1, 4)  # only the new tokens are decoded
        return [self.answer]


def test_vlm_grounder_scales_boxes_from_resized_pixels() -> None:
    # resized image: grid 8 x 10 patches of 14 -> 140 x 112 pixels; original frame 280 x 224
    answer = '```json\n[{"bbox_2d": [14, 28, 70, 56], "label": "red circle"}, {"bbox_2d": [0, 0, 7, 7]}]\n```'
    vlm = ScriptedVlmForTests(answer)
    grounder = VlmGrounder(vlm, vlm, max_objects=1)
    boxes = grounder.ground(np.zeros((224, 280, 3), np.uint8), "The red circle", "refavs")
    assert vlm.prompts == ["Please find the bounding box of 'the red circle' with json format"]
    assert vlm.generate_kwargs["do_sample"] is False
    # Every entry comes back, in answer order (the rewards count them; System 2 uses the first K)
    assert len(boxes) == 2
    assert (boxes[0].x1, boxes[0].y1, boxes[0].x2, boxes[0].y2) == pytest.approx((28, 56, 140, 112))
    assert (boxes[1].x1, boxes[1].y1, boxes[1].x2, boxes[1].y2) == pytest.approx((0, 0, 14, 14))


def test_vlm_grounder_asks_revos_for_all_referred_objects() -> None:
    vlm = ScriptedVlmForTests("[]")
    assert VlmGrounder(vlm, vlm, max_objects=3).ground(np.zeros((224, 280, 3), np.uint8), " Two Dogs ") == []
    assert vlm.prompts == ["Given the expression: 'two dogs', ground all the referred objects with json bboxs"]


@pytest.mark.parametrize("answer,entries,failures", [
    ('[{"bbox_2d": [-3, 0, 10, 10]}]', [None], 1),
    ('[{"bbox_2d": [20, 0, 10, 10]}]', [None], 1),
    ('[{"bbox": [1, 2, 3, 4]}, {"bbox_2d": [14, 28, 70, 56]}]', [None, "box"], 1),
    ("no idea", [], 0),  # no entry at all: a valid "nothing here", not a failure
])
def test_vlm_grounder_keeps_bad_entries_as_none(answer: str, entries: list, failures: int) -> None:
    vlm = ScriptedVlmForTests(answer)
    grounder = VlmGrounder(vlm, vlm, max_objects=3)
    found = grounder.ground(np.zeros((224, 280, 3), np.uint8), "the red circle")
    assert [None if e is None else "box" for e in found] == entries
    assert grounder.parse_failures == failures


# ----------------------------------------------------------------------------------------------- light models


def test_light_training_saves_and_loads_bit_identically(tmp_path: Path, small_samples) -> None:
    params = _tiny_params(tmp_path)
    seen = []
    metrics = train_light_models(small_samples, params, tmp_path / "a", progress=lambda *a: seen.append(a))
    assert [s[:3] for s in seen if s[0] == "grounder"] == [("grounder", i, 3) for i in (1, 2, 3)]
    assert metrics["train_samples"] > 0 and metrics["heldout_samples"] > 0
    for key in ("grounder_box_iou", "grounder_null_reject_rate", "segmenter_mask_iou", "box_as_mask_iou",
                "e2e_j_oracle_visible", "e2e_j_uniform", "e2e_j_absent", "e2e_j_oracle_visible_1kf"):
        assert key in metrics
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["config.json", "grounder.safetensors",
                                                                  "segmenter.safetensors"]
    first = lm.load_light_models(tmp_path / "a")
    # the same seed trains the same weights
    train_light_models(small_samples, params, tmp_path / "b")
    second = lm.load_light_models(tmp_path / "b")
    for a, b in ((first.grounder, second.grounder), (first.segmenter, second.segmenter)):
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys()
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert sum(p.numel() for p in first.segmenter.parameters()) < 200_000


def test_light_load_is_strict(tmp_path: Path, small_samples) -> None:
    from safetensors.torch import load_file, save_file

    train_light_models(small_samples[:4], _tiny_params(tmp_path, light_steps=1), tmp_path / "m")
    weights = load_file(str(tmp_path / "m" / lm.SEGMENTER_WEIGHTS))
    weights["extra.weight"] = torch.zeros(1)
    save_file(weights, str(tmp_path / "m" / lm.SEGMENTER_WEIGHTS))
    with pytest.raises(RuntimeError, match="Unexpected key"):
        lm.load_light_models(tmp_path / "m")


def test_light_segmenter_shapes_and_group(tiny_light: DetailParams, small_samples) -> None:
    params = tiny_light
    models = lm.load_light_models(params.light_checkpoint)
    sample = _appearance(small_samples)
    frames = sample.high_res
    oracle = OracleBoxGrounderForTests(sample)
    segmenter = LightSegmenter(models, oracle, max_objects=3)
    result = segmenter.segment(frames, [KeyframePrompt(0, sample.expression), KeyframePrompt(3, sample.expression)])
    _check_result(result, frames)
    assert sorted(result.boxes) == [k for k in (0, 3) if sample.target_masks()[k].any()]
    group = segmenter.segment_batch(frames, [[KeyframePrompt(1, "a")], [KeyframePrompt(1, "a")], []])
    assert oracle.calls == len(result.boxes) + 1  # the group grounded (1, "a") once
    np.testing.assert_array_equal(group[0].masks, group[1].masks)
    assert group[2].object_masks.shape == (0, *frames.shape[:3])
    # the model grounder end to end (it may find nothing after 3 steps: shapes only)
    model_result = build_segmenter(params).segment(frames, [KeyframePrompt(2, sample.expression)])
    _check_result(model_result, frames)


def test_light_inference_takes_no_ground_truth() -> None:
    assert list(inspect.signature(LightSegmenter.segment).parameters) == ["self", "frames", "prompts"]
    assert list(inspect.signature(LightSegmenter.__init__).parameters) == ["self", "models", "grounder", "max_objects"]
    source = inspect.getsource(LightSegmenter) + inspect.getsource(ModelBoxGrounder) + inspect.getsource(lm.LightModels)
    assert "target_masks" not in source and "Sample" not in source and "MaskTrack" not in source


def test_prompts_outside_the_clip_are_refused(tiny_light: DetailParams, small_samples) -> None:
    segmenter = build_segmenter(tiny_light)
    frames = small_samples[0].high_res
    with pytest.raises(ValueError, match="outside the 4 sampled frames"):
        segmenter.segment(frames, [KeyframePrompt(4, "the red circle")])


def test_owners_split_frames_between_nearest_keyframes() -> None:
    from omni_r1.systems.detail import _owners

    assert _owners([2, 5], 8) == {2: (0, 3), 5: (4, 7)}
    assert _owners([0, 3, 7], 9) == {0: (0, 1), 3: (2, 5), 7: (6, 8)}
    assert _owners([4], 6) == {4: (0, 5)}


@pytest.mark.slow
def test_light_models_learn_on_synthetic_data(tmp_path: Path) -> None:
    # Uncompressed frames straight from the renderer (the shard-pipeline version, with keyframe
    # policies, is tests/unit/test_light_models.py). The crop U-Net from a true box must beat the
    # box itself by a wide margin, and System 2 must find the target from its description.
    samples = synthetic_samples(30, width=256, height=192, frames=12, stride=5, seed=0)
    params = DetailParams(light_size=128, light_steps=300, light_batch=16, seed=0)
    metrics = train_light_models(samples, params, tmp_path / "detail")
    assert metrics["segmenter_mask_iou"] > 0.85
    assert metrics["segmenter_mask_iou"] > metrics["box_as_mask_iou"] + 0.1
    assert metrics["grounder_box_iou"] > 0.5
    assert metrics["e2e_j_oracle_visible"] > metrics["e2e_j_absent"]
