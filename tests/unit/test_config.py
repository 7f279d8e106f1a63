"""params.yaml <-> the frozen dataclass tree: defaults agree, and every mistake names the key and the fix."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from omni_r1.config import ConfigError, Params, load_params, params_from_dict, params_to_dict

REPO = Path(__file__).resolve().parents[2]


def test_params_yaml_matches_the_schema_defaults() -> None:
    assert params_to_dict(load_params(REPO / "params.yaml")) == params_to_dict(Params())


def test_params_are_frozen() -> None:
    params = load_params(REPO / "params.yaml")
    with pytest.raises(dataclasses.FrozenInstanceError):
        params.data.fps = 3.0  # type: ignore[misc]


def test_unknown_key_names_the_key_and_suggests_a_fix() -> None:
    with pytest.raises(ConfigError, match=r"unknown key 'data\.fsp' \(did you mean 'data\.fps'\?\)"):
        params_from_dict({"data": {"fsp": 2}})


def test_unknown_section_is_an_error() -> None:
    with pytest.raises(ConfigError, match="unknown key 'trian'"):
        params_from_dict({"trian": {}})


def test_wrong_type_names_the_key() -> None:
    with pytest.raises(ConfigError, match=r"'shard\.videos_per_shard' must be int, got str"):
        params_from_dict({"shard": {"videos_per_shard": "many"}})
    with pytest.raises(ConfigError, match=r"'data\.max_frames' must be int, got bool"):
        params_from_dict({"data": {"max_frames": True}})


def test_choice_and_range_errors() -> None:
    with pytest.raises(ConfigError, match=r"'shard\.fanout\.task_runner' is 'spark'; use one of"):
        params_from_dict({"shard": {"fanout": {"task_runner": "spark"}}})
    with pytest.raises(ConfigError, match=r"'validate\.max_bad_fraction' must be within \[0, 1\]"):
        params_from_dict({"validate": {"max_bad_fraction": 2}})


def test_int_is_accepted_for_float_and_overrides_parse_as_yaml(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("data:\n  fps: 1\n")
    params = load_params(path, ["data.low_res=112", "validate.require_audio=never"])
    assert params.data.fps == 1.0 and isinstance(params.data.fps, float)
    assert params.data.low_res == 112 and params.validate.require_audio == "never"


def test_malformed_override_is_explained() -> None:
    with pytest.raises(ConfigError, match="must look like 'section.key=value'"):
        load_params(REPO / "params.yaml", ["data.fps"])
