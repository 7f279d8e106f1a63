"""Bootstrap 95% intervals over samples (omni_r1.eval.bootstrap): seeded, stratified, honest about width."""

from __future__ import annotations

import numpy as np
import pytest

from omni_r1.eval.bootstrap import bootstrap_interval


def test_interval_is_seeded_and_contains_the_mean() -> None:
    values = np.random.default_rng(1).normal(50, 10, size=40).tolist()
    low, high = bootstrap_interval([values], seed=3)
    assert bootstrap_interval([values], seed=3) == (low, high)
    assert bootstrap_interval([values], seed=4) != (low, high)
    assert low < float(np.mean(values)) < high
    # about mean +- 1.96 standard errors for a normal sample
    se = float(np.std(values) / np.sqrt(len(values)))
    assert abs((high - low) - 2 * 1.96 * se) < 0.25 * (high - low)


def test_more_samples_give_a_narrower_interval_and_constants_none() -> None:
    rng = np.random.default_rng(0)
    few, many = rng.uniform(0, 100, 8).tolist(), rng.uniform(0, 100, 200).tolist()
    assert np.subtract(*bootstrap_interval([many])[::-1]) < np.subtract(*bootstrap_interval([few])[::-1])
    assert bootstrap_interval([[42.0] * 5]) == (42.0, 42.0)


def test_groups_are_resampled_apart_for_a_mean_of_means() -> None:
    # referring all 100, reasoning all 0: the overall (mean of type means) is exactly 50 in every resample,
    # whereas pooling the 11 samples would move with the mix drawn
    assert bootstrap_interval([[100.0] * 10, [0.0]]) == (50.0, 50.0)


@pytest.mark.parametrize("groups, kwargs", [([], {}), ([[1.0], []], {}), ([[1.0]], {"resamples": 0}),
                                            ([[1.0]], {"confidence": 1.0})])
def test_bad_arguments_are_refused(groups: list[list[float]], kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="bootstrap_interval"):
        bootstrap_interval(groups, **kwargs)


def test_the_report_says_plainly_whether_the_pipeline_beats_both_baselines() -> None:
    from omni_r1.eval.tables import collaboration_verdict

    def policy(low: float, high: float) -> dict:
        return {t: {"JF": (low + high) / 2, "JF_ci": [low, high]} for t in ("referring", "reasoning")}

    beats = {"global_reasoning": policy(60, 70), "uniform_keyframes": policy(20, 40), "predict_nothing": policy(30, 50)}
    assert collaboration_verdict(beats).count("lies above") == 2
    overlaps = {**beats, "predict_nothing": policy(30, 65)}
    assert collaboration_verdict(overlaps).count("does **not** lie above") == 2
    assert collaboration_verdict({"global_reasoning": policy(1, 2)}) == ""
