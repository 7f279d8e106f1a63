"""Bootstrap confidence intervals over samples: so a reader can tell a difference from noise.

``bootstrap_interval(groups)`` resamples each group of per-sample values with replacement (stratified:
each group keeps its size), takes the mean of the group means of every resample, and returns the
percentile interval. One group is the plain bootstrap of a mean (a J&F per expression type); two
groups give the interval of the ReVOS "overall", the mean of the referring and reasoning means. Pure
and seeded: the same values and seed give the same interval.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def bootstrap_interval(groups: Sequence[Sequence[float]], *, resamples: int = 1000, confidence: float = 0.95,
                       seed: int = 0) -> tuple[float, float]:
    """(low, high) percentile interval of the mean of group means, from ``resamples`` stratified resamples."""
    if not groups or any(len(g) == 0 for g in groups):
        raise ValueError("bootstrap_interval needs at least one group and no empty group")
    if resamples < 1 or not 0.0 < confidence < 1.0:
        raise ValueError(f"bootstrap_interval needs resamples >= 1 and 0 < confidence < 1, got {resamples}, "
                         f"{confidence}")
    rng = np.random.default_rng(seed)
    means = np.zeros(resamples, dtype=np.float64)
    for group in groups:
        values = np.asarray(group, dtype=np.float64)
        picks = rng.integers(0, len(values), size=(resamples, len(values)))
        means += values[picks].mean(axis=1)
    means /= len(groups)
    tail = (1.0 - confidence) / 2
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return float(low), float(high)
